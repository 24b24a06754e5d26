"""Model-level explanations: neighbours, kernel-machine decisions, clusters.

Oracles: scikit-learn's own ``decision_function`` / ``predict`` / ``kneighbors``, and
kernel values recomputed with numpy from the model's features. The digits CNN is
bias-free, so every decomposition must add up (float32 model: to ~1e-6 relative).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import round_off
from sklearn.cluster import SpectralClustering
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.svm import SVC, OneClassSVM

from skbilrp.audits import audit_clusters, explain_decision, explain_neighbors
from skbilrp.kernel import DeepKernel
from skbilrp.models import digits_cnn, load_digits_images


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    images, y = load_digits_images("test")
    return images.reshape(len(images), -1).astype(np.float64), y


@pytest.fixture(scope="module")
def cnn():
    return digits_cnn(pretrained=True)


def deep_kernel(model, **params) -> DeepKernel:
    return DeepKernel(model, input_shape=(1, 8, 8), pooling=4, **params)


def assert_adds_up(expl, scale):
    """relevance sums to f(x) - b, to 1e-5 of the size of the terms that cancel."""
    np.testing.assert_allclose(expl.relevance.sum(axis=1), expl.decision - expl.intercept,
                               rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(expl.conservation_error, 0.0, atol=1e-5 * scale)


# ------------------------------------------------------------- decisions


def test_binary_svc_decision_is_decomposed_exactly(digits, cnn):
    X, y = digits
    sel = np.flatnonzero(np.isin(y, [3, 8]))
    fit, query = sel[:60], sel[60:66]
    pipe = make_pipeline(deep_kernel(cnn), SVC(kernel="precomputed", C=10)).fit(X[fit], y[fit])
    e = explain_decision(pipe, X[query])
    svc = pipe[-1]
    np.testing.assert_array_equal(e.support, svc.support_)
    np.testing.assert_allclose(e.decision, pipe.decision_function(X[query]), rtol=1e-10, atol=1e-12)
    assert e.intercept == pytest.approx(svc.intercept_[0])
    np.testing.assert_allclose(e.contributions.sum(axis=1), e.decision - e.intercept, rtol=1e-10)
    scale = np.abs(e.contributions).sum(axis=1).max()
    assert_adds_up(e, scale)
    assert e.relevance.shape == (6, 4) and e.support_relevance.shape == (6, len(svc.support_), 4)
    np.testing.assert_allclose(e.support_relevance.sum(axis=2), e.contributions, atol=1e-5 * scale)
    one = e.pair(2, 5)  # alpha-weighted pair relevance of one support vector
    # float32 relevance (times alpha) against the float64 kernel entry of float32 features:
    # round-off on the scale of the terms that cancel, not a bare 1e-6 on a value of ~10
    assert one.relevance.sum() == pytest.approx(e.contributions[2, 5],
                                                abs=round_off(one.relevance, torch.float32))
    assert e.top_support(0, 3)[0][0] in svc.support_


def test_multiclass_svc_explains_one_vs_one_decisions(digits, cnn):
    X, y = digits
    pipe = make_pipeline(deep_kernel(cnn), SVC(kernel="precomputed", decision_function_shape="ovo"))
    pipe.fit(X[:90], y[:90])
    ovo = pipe.decision_function(X[90:94])
    column = [(i, j) for i in range(10) for j in range(i + 1, 10)].index((2, 5))
    towards_5 = explain_decision(pipe, X[90:94], classes=(2, 5))
    towards_2 = explain_decision(pipe, X[90:94], classes=(5, 2))
    # libsvm's one-vs-one value is positive for the first class of the pair (2)
    np.testing.assert_allclose(towards_5.decision, -ovo[:, column], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(towards_2.decision, ovo[:, column], rtol=1e-9, atol=1e-12)
    assert set(towards_5.support) <= set(np.flatnonzero(np.isin(y[:90], [2, 5])))
    assert_adds_up(towards_5, np.abs(towards_5.contributions).sum(axis=1).max())
    with pytest.raises(ValueError, match=r"classes=\(a, b\)"):
        explain_decision(pipe, X[90:94])


def test_one_class_svm_decision_is_decomposed_exactly(digits, cnn):
    X, y = digits
    pipe = make_pipeline(deep_kernel(cnn), OneClassSVM(kernel="precomputed", nu=0.3)).fit(X[y == 0][:40])
    e = explain_decision(pipe, X[:5])
    np.testing.assert_allclose(e.decision, pipe.decision_function(X[:5]), rtol=1e-10, atol=1e-12)
    assert e.intercept == pytest.approx(-pipe[-1].offset_[0])
    assert_adds_up(e, np.abs(e.contributions).sum(axis=1).max())


def test_kernel_ridge_prediction_is_decomposed_over_all_training_points(digits, cnn):
    X, y = digits
    model = digits_cnn(pretrained=True).double()  # ridge weights cancel a lot: float64
    pipe = make_pipeline(deep_kernel(model, kernel="linear"), KernelRidge(kernel="precomputed", alpha=1.0))
    pipe.fit(X[:30], y[:30].astype(float))
    e = explain_decision(pipe, X[30:33])
    np.testing.assert_array_equal(e.support, np.arange(30))
    assert e.intercept == 0.0
    np.testing.assert_allclose(e.decision, pipe.predict(X[30:33]), rtol=1e-10)
    np.testing.assert_allclose(e.relevance.sum(axis=1), pipe.predict(X[30:33]), rtol=1e-9)
    two = make_pipeline(deep_kernel(cnn), KernelRidge(kernel="precomputed")).fit(X[:20], np.eye(10)[y[:20]])
    with pytest.raises(ValueError, match="target="):
        explain_decision(two, X[:2])
    assert explain_decision(two, X[:2], target=3).decision == pytest.approx(two.predict(X[:2])[:, 3])


def test_steps_before_the_kernel_are_applied(digits, cnn):
    X, y = digits
    halve = FunctionTransformer(lambda a: a / 2)
    pipe = make_pipeline(halve, deep_kernel(cnn), SVC(kernel="precomputed")).fit(X[:40], y[:40] == 1)
    e = explain_decision(pipe, X[40:42])
    np.testing.assert_allclose(e.decision, pipe.decision_function(X[40:42]), rtol=1e-10)


def test_decision_errors_name_the_fix(digits, cnn):
    X, y = digits
    rbf = make_pipeline(deep_kernel(cnn), SVC()).fit(X[:30], y[:30] > 4)
    with pytest.raises(ValueError, match="kernel='precomputed'"):
        explain_decision(rbf, X[:2])
    dist = make_pipeline(deep_kernel(cnn, output="distance"), SVC(kernel="precomputed")).fit(X[:30], y[:30] > 4)
    with pytest.raises(ValueError, match="output='kernel'"):
        explain_decision(dist, X[:2])
    with pytest.raises(ValueError, match="no DeepKernel"):
        explain_decision(make_pipeline(LogisticRegression()).fit(X[:30], y[:30] > 4), X[:2])
    with pytest.raises(TypeError, match="Pipeline"):
        explain_decision(SVC(), X[:2])


# ------------------------------------------------------------- neighbours


def test_neighbors_of_a_knn_pipeline_match_kneighbors(digits, cnn):
    X, y = digits
    pipe = make_pipeline(deep_kernel(cnn, output="distance"),
                         KNeighborsClassifier(n_neighbors=3, metric="precomputed")).fit(X[:80], y[:80])
    ne = explain_neighbors(pipe, X[80:84], n_neighbors=3)
    dist, ind = pipe[-1].kneighbors(pipe[0].transform(X[80:84]))
    np.testing.assert_array_equal(ne.indices, ind)
    np.testing.assert_allclose(ne.distances, dist, rtol=1e-12)
    assert (y[:80][ne.indices] == y[80:84, None]).mean() > 0.9
    # similarities: cosine of the CNN features, recomputed with numpy
    f = pipe[0].features(X[80:84]), pipe[0].features_fit_
    cos = (f[0] / np.linalg.norm(f[0], axis=1, keepdims=True)) @ (f[1] / np.linalg.norm(f[1], axis=1, keepdims=True)).T
    np.testing.assert_allclose(ne.similarities, np.take_along_axis(cos, ind, axis=1), rtol=1e-12)
    np.testing.assert_allclose(ne.distances, np.sqrt(np.maximum(2 - 2 * ne.similarities, 0)), atol=1e-7)
    assert ne.explanations.pairs[4] == (1, int(ind[1, 1]))
    np.testing.assert_allclose(ne.pair(1, 1).relevance.sum(), ne.similarities[1, 1], rtol=1e-5)
    np.testing.assert_allclose(ne.explanations.relevance.sum(axis=(1, 2)), ne.similarities.ravel(), rtol=1e-5)


def test_neighbors_of_a_kernel_alone_are_the_most_similar(digits, cnn):
    X, _ = digits
    dk = deep_kernel(cnn, output="kernel").fit(X[:50])
    ne = explain_neighbors(dk, X[50:53], n_neighbors=4)
    k = dk.transform(X[50:53])
    np.testing.assert_array_equal(ne.indices, np.argsort(-k, axis=1)[:, :4])
    assert np.all(np.diff(ne.similarities, axis=1) <= 0)


def test_neighbors_need_distances_for_a_neighbor_estimator(digits, cnn):
    X, y = digits
    pipe = make_pipeline(deep_kernel(cnn), KNeighborsClassifier(metric="precomputed")).fit(X[:20], y[:20])
    with pytest.raises(ValueError, match="output='distance'"):
        explain_neighbors(pipe, X[:2])


# ------------------------------------------------------------- clusters


def test_cluster_audit_finds_medoids_and_conserves(digits, cnn):
    X, y = digits
    sel = np.flatnonzero(np.isin(y, [0, 1, 6]))[:45]
    dk = deep_kernel(cnn).fit(X[sel])
    spectral = SpectralClustering(3, affinity="precomputed", random_state=0).fit(dk.transform(X[sel]))
    audits = audit_clusters(spectral, dk, n_prototypes=3)
    assert [a.label for a in audits] == [0, 1, 2]
    assert sorted(np.concatenate([a.members for a in audits]).tolist()) == list(range(45))
    k = dk.transform(X[sel])
    for a in audits:
        within = k[np.ix_(a.members, a.members)]
        mean_to_others = (within.sum(axis=1) - np.diag(within)) / (len(a.members) - 1)
        assert a.medoid == a.members[np.argmax(mean_to_others)]
        assert a.prototypes[0] == a.medoid and len(a.prototypes) == 3
        others = a.members[a.members != a.medoid]
        assert a.interactions.sum() == pytest.approx(k[a.medoid, others].mean(), rel=1e-5)
        assert abs(a.conservation_error) < 1e-5
        np.testing.assert_allclose(a.medoid_relevance, a.interactions.sum(axis=1))
        p = a.prototypes
        np.testing.assert_allclose(a.prototype_explanations.similarity, [k[p[0], p[1]], k[p[0], p[2]], k[p[1], p[2]]],
                                   rtol=1e-5)
        assert np.bincount(y[sel][a.members]).max() / len(a.members) > 0.9  # one digit per cluster


def test_cluster_audit_skips_noise_and_checks_labels(digits, cnn):
    X, _ = digits
    dk = deep_kernel(cnn).fit(X[:12])
    labels = np.array([0, 0, 0, -1, 1, 1, 1, 1, -1, 2, 0, 1])
    audits = audit_clusters(labels, make_pipeline(dk), n_prototypes=5)
    assert [a.label for a in audits] == [0, 1, 2]
    assert audits[2].members.tolist() == [9] and audits[2].medoid == 9
    assert len(audits[0].prototypes) == 4  # fewer members than prototypes asked for
    with pytest.raises(ValueError, match="12 samples"):
        audit_clusters(labels[:10], dk)
