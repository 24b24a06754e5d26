"""skbilrp.audits.audit_dataset: aggregation against a dense oracle, entry modes, refusals,
and the shortcut benchmark (a planted marker the audit must name, and only there)."""

from __future__ import annotations

import copy
import dataclasses
import json
import time

import numpy as np
import pytest
import torch
from sklearn.cluster import AgglomerativeClustering
from sklearn.exceptions import NotFittedError
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC
from torch import nn

from skbilrp import DeepKernel
from skbilrp.audits import DatasetAudit, audit_dataset
from skbilrp.shortcuts import class_similarity, marked_digits, shortcut_rules, train_shortcut_cnn

# ------------------------------------------------------------------ tiny data


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    X = rng.random((24, 16))  # 24 images of 1 x 4 x 4, flat
    y = np.repeat([0, 1, 2], 8)
    X[y == 1, :4] += 1.0  # some structure, so that neighbours are mostly within a class
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 6, bias=False), nn.ReLU()).double()
    return X, y, model


def _kernel(model, output="kernel"):
    return DeepKernel(model, kernel="cosine", output=output, input_shape=(1, 4, 4))


def _dense_audit(kern, X_rows, X_cols, pairs, weights, regions):
    """Relevance map and region pairs from the whole (n, p, p) pair relevance."""
    rel = kern.explain_pairs(X_rows, X_cols, pairs=[tuple(p) for p in pairs]).relevance
    total = rel.sum(axis=(1, 2))
    shares = 0.5 * (rel.sum(axis=2) + rel.sum(axis=1)) / total[:, None]
    w = np.asarray(weights) / np.sum(weights)
    onehot = np.eye(regions.max() + 1)[regions.reshape(-1)]  # (p, n_regions)
    blocks = np.einsum("kpq,pr,qs->krs", rel, onehot, onehot) / total[:, None, None]
    blocks = 0.5 * (blocks + blocks.transpose(0, 2, 1))
    return (w @ shares).reshape(regions.shape), np.einsum("k,krs->rs", w, blocks)


@pytest.mark.parametrize("mode", ["clusters", "neighbors"])
def test_aggregation_matches_dense(tiny, mode):
    X, y, model = tiny
    if mode == "clusters":
        est = _kernel(model).fit(X)
        audit = audit_dataset(est, y=y, entries="clusters", max_pairs=10**6, verbose=False)
    else:
        est = make_pipeline(_kernel(model, "distance"), KNeighborsClassifier(3, metric="precomputed")).fit(X, y)
        audit = audit_dataset(est, max_pairs=10**6, verbose=False)
    kern = est if mode == "clusters" else est[0]
    tol = 100 * np.finfo(np.float64).eps * 16
    for g in audit.groups:
        pairs = audit.pairs[g]
        if mode == "clusters":
            assert len(pairs) == 8 * 7 // 2 == audit.n_candidates[g]  # every distinct within-class pair
            assert np.all(pairs[:, 0] < pairs[:, 1]) and np.all(y[pairs] == g)
        else:  # the k-NN's own neighbours, self left out
            ind = est[-1].kneighbors(n_neighbors=3, return_distance=False)
            rows = np.flatnonzero(y == g)
            np.testing.assert_array_equal(pairs, np.stack([np.repeat(rows, 3), ind[rows].ravel()], 1))
        rel_map, blocks = _dense_audit(kern, X, X, pairs, np.ones(len(pairs)), audit.regions)
        np.testing.assert_allclose(audit.relevance_maps[g], rel_map, rtol=tol, atol=tol)
        np.testing.assert_allclose(audit.region_pairs[g], blocks, rtol=tol, atol=tol)
        assert abs(audit.relevance_maps[g].sum() - 1) < tol and abs(audit.region_pairs[g].sum() - 1) < tol
        np.testing.assert_allclose(audit.region_pairs[g].sum(1), audit.region_share(g), atol=tol)
        signal = np.abs(X[pairs[:, 0]]) / np.abs(X[pairs[:, 0]]).sum(1, keepdims=True)
        signal += np.abs(X[pairs[:, 1]]) / np.abs(X[pairs[:, 1]]).sum(1, keepdims=True)
        np.testing.assert_allclose(audit.signal_maps[g].ravel(), signal.mean(0) / 2, atol=tol)
        assert audit.conservation_error[g] < tol  # bias-free, LRP-0


def test_support_entries_weighted_by_alpha(tiny):
    X, y, model = tiny
    pipe = make_pipeline(_kernel(model), SVC(kernel="precomputed", C=10.0)).fit(X, y)
    audit = audit_dataset(pipe, y=y, max_pairs=10**6, verbose=False)
    svc = pipe[-1]
    assert audit.entries == "support"
    alpha = np.abs(svc.dual_coef_).sum(0)
    sv_labels = np.repeat(svc.classes_, svc.n_support_)
    for g in audit.groups:
        pairs = audit.pairs[g]
        assert set(pairs[:, 1]) <= set(svc.support_[sv_labels == g])  # support vectors of the own class
        assert np.all(pairs[:, 0] != pairs[:, 1]) and np.all(y[pairs[:, 0]] == g)
        w = alpha[np.searchsorted(svc.support_, pairs[:, 1])]
        rel_map, blocks = _dense_audit(pipe[0], X, X, pairs, w, audit.regions)
        np.testing.assert_allclose(audit.relevance_maps[g], rel_map, atol=1e-12)
        np.testing.assert_allclose(audit.region_pairs[g], blocks, atol=1e-12)


def test_modes_and_auto(tiny):
    X, y, model = tiny
    knn = make_pipeline(_kernel(model, "distance"), KNeighborsClassifier(3, metric="precomputed")).fit(X, y)
    svm = make_pipeline(_kernel(model), SVC(kernel="precomputed")).fit(X, y)
    clu = make_pipeline(_kernel(model, "distance"),
                        AgglomerativeClustering(3, metric="precomputed", linkage="average")).fit(X)
    bare = _kernel(model).fit(X)
    for est, kind in ((knn, "neighbors"), (svm, "support"), (clu, "clusters")):
        auto = audit_dataset(est, verbose=False)
        assert auto.entries == kind and sum(auto.n_pairs.values()) > 0
    assert audit_dataset(bare, y=y, verbose=False).entries == "clusters"
    assert audit_dataset(bare, y=y, entries="neighbors", n_neighbors=2, verbose=False).n_pairs == {0: 16, 1: 16, 2: 16}
    assert audit_dataset(clu, verbose=False).groups == sorted(set(clu[-1].labels_.tolist()))
    # new queries: neighbours in X_fit_, grouped by the k-NN's predictions (or y)
    queries = audit_dataset(knn, X[:6], verbose=False)
    assert sum(queries.n_pairs.values()) == 6 * 3
    assert audit_dataset(knn, X[:6], y[:6], verbose=False).groups == [0]
    # the cap: at most max_pairs per group, drawn with random_state
    a = audit_dataset(bare, y=y, max_pairs=5, random_state=1, verbose=False)
    b = audit_dataset(bare, y=y, max_pairs=5, random_state=1, verbose=False)
    assert a.n_pairs == {0: 5, 1: 5, 2: 5} and a.n_candidates == {0: 28, 1: 28, 2: 28}
    assert all(np.array_equal(a.pairs[g], b.pairs[g]) for g in a.groups)
    json.dumps(a.to_dict())  # JSON-ready for the report
    assert a.to_dict()["groups"] == ["0", "1", "2"] and len(a.to_dict()["regions"]) == 4


def test_errors_name_cause_and_fix(tiny):
    X, y, model = tiny
    with pytest.raises(NotFittedError, match="not fitted"):
        audit_dataset(_kernel(model), y=y)
    with pytest.raises(NotFittedError):
        audit_dataset(make_pipeline(_kernel(model, "distance"), KNeighborsClassifier(metric="precomputed")))
    bare = _kernel(model).fit(X)
    with pytest.raises(ValueError, match=r"entries must be one of .*'auto'.*got 'pairs'"):
        audit_dataset(bare, y=y, entries="pairs")
    with pytest.raises(ValueError, match=r"y is required.*Pass y="):
        audit_dataset(bare)
    with pytest.raises(ValueError, match=r"region=3 does not divide the input positions \(4, 4\).*region=2"):
        audit_dataset(bare, y=y, region=3)
    with pytest.raises(ValueError, match="y must label the rows of X"):
        audit_dataset(bare, X[:5], y)
    with pytest.raises(ValueError, match="max_pairs must be a positive int"):
        audit_dataset(bare, y=y, max_pairs=0)
    patched = DeepKernel(model, input_shape=(1, 4, 4), pooling=2).fit(X)
    with pytest.raises(ValueError, match="covers regions"):
        audit_dataset(patched, y=y, region=1)


def test_estimator_and_data_unchanged(tiny):
    X, y, model = tiny
    pipe = make_pipeline(_kernel(model, "distance"), KNeighborsClassifier(3, metric="precomputed")).fit(X, y)
    X_before, y_before, params = X.copy(), y.copy(), copy.deepcopy(pipe.get_params(deep=False)["steps"][1][1].get_params())
    pred, state = pipe.predict(X), {k: v.clone() for k, v in model.state_dict().items()}
    audit_dataset(pipe, X, y, verbose=False)
    np.testing.assert_array_equal(X, X_before)
    np.testing.assert_array_equal(y, y_before)
    np.testing.assert_array_equal(pipe.predict(X), pred)
    assert pipe[-1].get_params() == params
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    np.testing.assert_array_equal(pipe[0].X_fit_.reshape(len(X), -1), X)


# ---------------------------------------------------------- shortcut benchmark

MARKER_CLASS = 3
SEEDS = range(5)
#: removing the marker must lower the marked class's mean within-class similarity under
#: the marked model by at least this much (cosine), and by 1.5x what it does under the clean model
SIMILARITY_DROP = 0.1


def _audit(model, X, y):
    pipe = make_pipeline(DeepKernel(model.features, output="distance", input_shape=(1, 8, 8),
                                    rules=shortcut_rules(model.features)),
                         KNeighborsClassifier(3, metric="precomputed"))
    return audit_dataset(pipe.fit(X.reshape(len(X), -1), y), region=2, verbose=False)


@pytest.fixture(scope="module")
def shortcut_runs():
    """Per seed: marked digits, a model trained on them and one trained on the clean digits."""
    start, runs = time.perf_counter(), []
    for seed in SEEDS:
        data = marked_digits(MARKER_CLASS, corner="top-left", size=2, decoys=0.15, n_samples=300,
                             subset="train", seed=seed)
        marked = train_shortcut_cnn(data.X, data.y, seed=seed, epochs=10)
        clean = train_shortcut_cnn(data.clean, data.digit, seed=seed, epochs=10)
        runs.append({
            "data": data, "marked": _audit(marked, data.X, data.y), "clean": _audit(clean, data.X, data.y),
            "drop": {name: class_similarity(m.features, data.X, data.y, MARKER_CLASS)
                     - class_similarity(m.features, data.clean, data.y, MARKER_CLASS)
                     for name, m in (("marked", marked), ("clean", clean))},
        })
    print(f"shortcut benchmark: {time.perf_counter() - start:.1f} s for {len(runs)} seeds")
    return runs


def _marker_region(audit: DatasetAudit, data) -> int:
    region = np.unique(audit.regions[data.mask])
    assert len(region) == 1  # the 2x2 marker fills one region of side 2
    return int(region[0])


def shortcut_findings(audit: DatasetAudit, data) -> dict:
    """Whether the audit names the marker's region, for the marked class and for the others."""
    region = _marker_region(audit, data)
    named = {s.group for s in audit.find_suspicious() if s.region == region}
    top = audit.find_suspicious()[:1]
    return {"marked": MARKER_CLASS in named, "clean_classes": sorted(named - {MARKER_CLASS}),
            "top": bool(top) and (top[0].group, top[0].region) == (MARKER_CLASS, region)}


def check_shortcut(marked: DatasetAudit, clean: DatasetAudit, data) -> None:
    """The acceptance criterion of the benchmark, on one seed."""
    found = shortcut_findings(marked, data)
    assert found["marked"], "the marker region is not named for the marked class"
    assert found["top"], "the marker region is not the most suspicious of the marked model"
    assert found["clean_classes"] == [], f"the marker region is named for clean classes {found['clean_classes']}"
    assert shortcut_findings(clean, data) == {"marked": False, "clean_classes": [], "top": False}, \
        "the audit of the clean model names the marker region"


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_shortcut_audit_names_the_marker(shortcut_runs, seed):
    run = shortcut_runs[seed]
    check_shortcut(run["marked"], run["clean"], run["data"])


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_marked_model_uses_the_marker(shortcut_runs, seed):
    drop = shortcut_runs[seed]["drop"]
    assert drop["marked"] >= SIMILARITY_DROP and drop["marked"] >= 1.5 * drop["clean"], drop


def _uniform(audit: DatasetAudit) -> DatasetAudit:
    """The audit with every relevance map replaced by the uniform map."""
    flat = {g: np.full(audit.position_shape, 1.0 / audit.regions.size) for g in audit.groups}
    return dataclasses.replace(audit, relevance_maps=flat)


@pytest.mark.slow
def test_shortcut_check_fails_on_uniform_maps(shortcut_runs):
    """The criterion can fail: with uniform maps the marker is never named."""
    for run in shortcut_runs:
        with pytest.raises(AssertionError, match="not named for the marked class"):
            check_shortcut(_uniform(run["marked"]), run["clean"], run["data"])
