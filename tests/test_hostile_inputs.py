"""Hostile inputs that used to end badly (issue 21, part 2): each now fails early with a
message that names the cause and the fix, or works.

One test (or group) per numbered item:
1. materialising a factored result over ``max_memory``;  2. ``pooling=3.5``;
3. ``TextKernel.fit(sparse)``;  4. a pipeline whose DeepKernel step was refitted alone;
5. a model on the meta device;  6. images of different sizes in one list;
7. ``memory=`` a read-only directory;  8. ``skbilrp report/explain/text/demo`` with a bad
``--output`` or argument: refused before any work.
"""

from __future__ import annotations

import errno
import os
import warnings

import numpy as np
import pytest
import torch
from conftest import assert_round_off_equal
from torch import nn

from skbilrp import DeepKernel, Explainer
from skbilrp.io import resize_center_crop
from skbilrp.pairs import pair_relevance
from skbilrp.pooling import make_pooling
from skbilrp.relevance import SampleRelevance


def _phi(in_features: int = 64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 6, bias=False), nn.ReLU()).double()


def _images(n: int, side: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, side, side))


# ------------------------------------------------- 1. materialisation guard


@pytest.fixture
def factored():
    """A factored result whose one entry is a 256 x 256 matrix (512 KiB in float64),
    under a budget of 64 KiB: what pooling=None on a large image is, scaled down."""
    rng = np.random.default_rng(0)
    pooling = make_pooling(None, (16, 16), None)
    a = SampleRelevance(torch.from_numpy(rng.random((2, 3, 256))), torch.from_numpy(rng.random((2, 3))), pooling)
    b = SampleRelevance(torch.from_numpy(rng.random((3, 3, 256))), torch.from_numpy(rng.random((3, 3))), pooling)
    return a, b


_GUARD = r"256 x 256.*GiB.*max_memory=65536 bytes.*pooling.*max_memory=.*top_interactions"


def test_pair_and_iteration_are_refused_over_max_memory(factored):
    a, b = factored
    expl = pair_relevance(a, b, "cosine", max_memory=2**16)
    with pytest.raises(MemoryError, match=r"1 kernel entries on " + _GUARD):
        expl.pair(0, 0)
    with pytest.raises(MemoryError, match=_GUARD):
        next(iter(expl))
    with pytest.raises(MemoryError, match=_GUARD):
        expl[1, 2].pair(0, 0)  # a sub-block shares the factors and the budget
    chosen = pair_relevance(a, b, "linear", pairs=[(0, 1), (1, 2)], max_memory=2**16)
    with pytest.raises(MemoryError, match=_GUARD):
        chosen.pair(1)
    with pytest.raises(MemoryError, match=_GUARD):
        chosen[0].relevance


def test_alternatives_named_by_the_guard_work(factored):
    a, b = factored
    expl = pair_relevance(a, b, "cosine", max_memory=2**16)
    tops = expl.top_interactions(3)  # streams over tiles: no 256 x 256 matrix
    assert len(tops) == 2 and len(tops[0]) == 3 and len(tops[0][0]) == 3
    marg_a, marg_b = expl[0, 1].marginals()  # (1, 1, 256) each: within the budget
    assert marg_a.shape == marg_b.shape == (1, 1, 256)
    roomy = pair_relevance(a, b, "cosine", max_memory=2**20)
    one = roomy.pair(0, 1)
    assert one.relevance.shape == (256, 256)
    assert_round_off_equal(one.relevance.sum(axis=1), marg_a[0, 0], np.float64, k=4 * 3 * 256)  # h = 3 features, 256 groups
    # the tiled top-k finds the strongest values of the built matrix (compared as values:
    # ranks of near-ties may differ between the two summation orders)
    assert_round_off_equal([v for _, _, v in tops[0][1]], [v for _, _, v in one.top_interactions(3)], np.float64, k=4 * 3)
    assert_round_off_equal([v for _, _, v in tops[0][1]], [one.relevance[g, h] for g, h, _ in tops[0][1]], np.float64, k=4 * 3)
    coarse = make_pooling(4, (16, 16), None)  # what pooling=4 would give: 16 groups per side
    pooled = SampleRelevance(torch.from_numpy(coarse.pool(a.relevance.reshape(-1, 16, 16)).numpy().reshape(2, 3, 16)),
                             a.features, coarse)
    assert pair_relevance(pooled, pooled, max_memory=2**16).pair(0, 1).relevance.shape == (16, 16)


def test_whole_relevance_and_marginals_keep_their_refusals(factored):
    a, b = factored
    expl = pair_relevance(a, b, "linear", max_memory=2**16)
    with pytest.raises(MemoryError, match=r"6 kernel entries.*GiB.*pairs=.*pooling.*top_interactions"):
        expl.relevance
    with pytest.raises(MemoryError, match=r"marginals.*top_interactions"):
        pair_relevance(a, b, "linear", max_memory=2**12).marginals()


# --------------------------------------------------------- 2. pooling type


@pytest.mark.parametrize("bad", [3.5, "patches", (2.0, 2.0), True, np.zeros((8, 8)), ()],
                         ids=["float", "str", "float-tuple", "bool", "float-labels", "empty-tuple"])
def test_pooling_of_the_wrong_type_is_refused_at_fit(bad):
    kern = DeepKernel(_phi(), pooling=bad)
    with pytest.raises(ValueError, match=r"pooling must be None.*positive int.*tuple of positive ints.*"
                                         r"integer label array"):
        kern.fit(_images(3))
    with pytest.raises(ValueError, match="pooling must be None"):
        Explainer(_phi(), pooling=bad).relevance(_images(1))


def test_pooling_that_does_not_fit_the_samples_is_refused_at_fit():
    with pytest.raises(ValueError, match=r"label array has shape \(4, 4\)"):
        DeepKernel(_phi(), pooling=np.zeros((4, 4), dtype=int)).fit(_images(3))
    with pytest.raises(ValueError, match="Patch size"):
        DeepKernel(_phi(), pooling=0).fit(_images(3))
    labels = np.arange(64).reshape(8, 8) // 16  # a valid label array and patch sizes still fit
    for ok in (None, 2, (4, 2), labels, torch.from_numpy(labels)):
        assert DeepKernel(_phi(), pooling=ok).fit(_images(3)).transform(_images(1)).shape == (1, 3)


# ------------------------------------------------------------ 5. meta model


def _meta_model() -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def test_meta_model_is_refused_at_fit_and_explainer_naming_the_fix():
    match = r"no weights.*'1\.weight'.*meta tensors.*load_state_dict\(.*assign=True\)"
    with pytest.raises(ValueError, match=match):
        DeepKernel(_meta_model()).fit(_images(3))
    with pytest.raises(ValueError, match=match):
        Explainer(_meta_model())
    model = _meta_model()  # the fix as the message gives it
    model.load_state_dict({"1.weight": torch.ones(3, 64), "1.bias": torch.zeros(3)}, assign=True)
    assert DeepKernel(model).fit(_images(2).astype(np.float32)).transform(_images(1)).shape == (1, 2)


# ------------------------------------------------------- 6. ragged samples


def test_images_of_different_sizes_name_the_shapes_and_the_resize_helper():
    kern = DeepKernel(_phi())
    mixed = [_images(1)[0], _images(1)[0], _images(1, side=16)[0]]
    match = (r"share one shape.*X\[0\] has shape \(1, 8, 8\).*X\[2\] has shape \(1, 16, 16\).*"
             r"skbilrp\.io\.resize_center_crop")
    with pytest.raises(ValueError, match=match):
        kern.fit(mixed)
    kern.fit(list(_images(3)))  # a list of same-shaped images is one batch
    assert kern.input_shape_ == (1, 8, 8)
    with pytest.raises(ValueError, match=match):
        kern.transform(mixed)
    with pytest.raises(ValueError, match=r"X\[1\] has shape \(3,\)"):
        DeepKernel(_phi(4)).fit([[0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    fixed = [resize_center_crop(x, 8).numpy() for x in mixed]  # the helper the message names
    assert kern.transform(fixed).shape == (3, 3)


# ------------------------------------------- 4. kernel step refitted alone


def _refitted_alone(final):
    """A pipeline fitted on 30 samples whose DeepKernel step was then refitted on 10."""
    from sklearn.pipeline import make_pipeline

    X, y = _images(30, seed=1).reshape(30, -1), np.arange(30) % 2
    output = "distance" if hasattr(final, "kneighbors") else "kernel"
    pipe = make_pipeline(DeepKernel(_phi(), input_shape=(1, 8, 8), output=output), final).fit(X, y)
    pipe[0].fit(X[:10])
    return pipe, X, y


_REFIT = r"fitted on a kernel of 30 training samples.*now holds 10.*Refit the whole pipeline, pipe\.fit\(X, y\)"


def test_explain_decision_after_the_kernel_step_was_refitted_alone():
    from sklearn.svm import SVC

    from skbilrp.audits import explain_decision

    pipe, X, _ = _refitted_alone(SVC(kernel="precomputed"))
    with pytest.raises(ValueError, match=_REFIT):
        explain_decision(pipe, X[:2])


@pytest.mark.parametrize("audit", ["neighbors", "dataset"])
def test_other_audits_share_the_refit_check(audit):
    from sklearn.neighbors import KNeighborsClassifier

    from skbilrp.audits import audit_dataset, explain_neighbors

    pipe, X, y = _refitted_alone(KNeighborsClassifier(n_neighbors=3, metric="precomputed"))
    with pytest.raises(ValueError, match="KNeighborsClassifier step.*" + _REFIT):
        if audit == "neighbors":
            explain_neighbors(pipe, X[:2])
        else:
            audit_dataset(pipe, X[:4], y[:4], verbose=False)
    pipe.fit(X, y)  # the fix the message gives
    assert explain_neighbors(pipe, X[:2], n_neighbors=2).indices.shape == (2, 2)


# ----------------------------------------------------- 3. sparse text input


@pytest.mark.parametrize("fmt", ["csr", "coo"])
def test_text_kernel_on_a_sparse_matrix_asks_for_texts(fmt):
    import scipy.sparse

    from skbilrp import TextKernel

    X = scipy.sparse.random(4, 50, density=0.1, format=fmt, random_state=0)
    with pytest.raises(TypeError, match=r"scipy\.sparse matrix of shape \(4, 50\).*texts.*list.*of str") as err:
        TextKernel().fit(X)  # refused before any model is loaded
    assert "X[:, 0]" not in str(err.value)


# ------------------------------------------------- 7. read-only memory= cache


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(path)``: make ``path`` a read-only directory, as root too.

    chmod 0o555 stops writes only for other users (the tests may run as root), so
    creating a folder or opening a file for writing under ``path`` is also made to fail
    with the error a read-only directory gives (EACCES), as the kernel would.
    """
    roots: list[str] = []
    real_mkdir, real_open, real_replace = os.mkdir, os.open, os.replace

    def under(path) -> bool:
        full = os.path.abspath(os.fspath(path))
        return any(full == r or full.startswith(r + os.sep) for r in roots)

    def denied(path):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    def mkdir(path, mode=0o777, *args, **kwargs):
        if under(path) and not os.path.exists(path):
            raise denied(path)
        return real_mkdir(path, mode, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise denied(path)
        return real_open(path, flags, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if under(dst):
            raise denied(dst)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "replace", replace)
    made: list = []

    def make(path):
        for folder, _, _ in os.walk(path):
            os.chmod(folder, 0o555)
            made.append(folder)
        roots.append(os.path.abspath(path))
        return path

    yield make
    for folder in made:
        os.chmod(folder, 0o755)


def _cache_warnings(record, folder) -> list:
    return [w for w in record if "cannot be written" in str(w.message) and str(folder) in str(w.message)]


def test_read_only_empty_cache_warns_once_and_computes(tmp_path, read_only):
    (tmp_path / "ro").mkdir()
    folder = read_only(tmp_path / "ro")  # exists, empty, cannot be written
    X = _images(4)
    plain = DeepKernel(_phi(), pooling=4).fit(X)
    kern = DeepKernel(_phi(), pooling=4, memory=str(folder))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        kern.fit(X)
        e = kern.explain_pairs(X[:2])
        kern.explain_pairs(X[2:])
    found = _cache_warnings(record, folder)
    assert len(found) == 1, [str(w.message) for w in record]  # one per estimator, not per store or call
    assert "computed without being stored" in str(found[0].message)
    assert not any(os.scandir(folder))  # nothing was written
    ref = plain.explain_pairs(X[:2])
    assert_round_off_equal(kern.features_fit_, plain.features_fit_, np.float64, k=4 * 8 * 64)  # the same forward (signed terms: 8x)
    assert_round_off_equal(e.similarity, ref.similarity, np.float64, k=4 * 6)


def test_read_only_cache_that_holds_the_fit_still_serves_it(tmp_path, read_only, monkeypatch):
    from skbilrp.encoders import images as image_encoder

    X = _images(5)
    folder = tmp_path / "cache"
    DeepKernel(_phi(), pooling=4, memory=str(folder)).fit(X)  # stores the features of X
    read_only(folder)
    calls = []
    real_call = image_encoder._FeatureTask.__call__
    monkeypatch.setattr(image_encoder._FeatureTask, "__call__", lambda self, x: calls.append(len(x)) or real_call(self, x))
    kern = DeepKernel(_phi(), pooling=4, memory=str(folder))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        kern.fit(X)
        assert calls == [] and not _cache_warnings(record, folder)  # read from the cache, nothing to write
        e = kern.explain_pairs(X[:2])  # relevance is not cached yet: computed, not stored
        e2 = kern.explain_pairs(X[:2], X[2:])
    assert len(_cache_warnings(record, folder)) == 1
    ref = DeepKernel(_phi(), pooling=4).fit(X)
    assert_round_off_equal(e.similarity, ref.explain_pairs(X[:2]).similarity, np.float64, k=4 * 6)
    assert e2.shape == (2, 3)


# --------------------------------------- 8. CLI arguments checked before work


@pytest.fixture
def two_digit_pngs(tmp_path):
    from PIL import Image

    paths = []
    for k in range(2):
        path = tmp_path / f"d{k}.png"
        Image.fromarray((_images(1, seed=k)[0, 0] * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _one_line_exit_2(capsys, argv, *needles):
    from skbilrp.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skbilrp: error: "), err
    for needle in needles:
        assert needle in err[0], err[0]


@pytest.fixture
def bad_outputs(tmp_path, monkeypatch):
    """Output paths that cannot be written, as root too: under a file, a folder where a
    file goes, and a folder os.access calls unwritable (a read-only mount)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if os.path.abspath(p) == str(locked)
                        else real_access(p, mode, *a, **k))
    return {"under a file": (str(blocker / "out.html"), "is a file, not a folder"),
            "a folder": (str(folder), "is a folder"),
            "read-only": (str(locked / "sub" / "out.html"), "no write permission")}


@pytest.mark.parametrize("case", ["under a file", "a folder", "read-only"])
def test_report_refuses_a_bad_output_before_any_work(no_work, bad_outputs, capsys, case):
    path, why = bad_outputs[case]
    _one_line_exit_2(capsys, ["report", "-o", path, "--no-audit"], repr(path), why)
    assert no_work == []


@pytest.mark.parametrize("case", ["under a file", "a folder", "read-only"])
def test_explain_text_and_demo_refuse_a_bad_output_before_any_work(no_work, bad_outputs, two_digit_pngs,
                                                                   capsys, case):
    path, why = bad_outputs[case]
    _one_line_exit_2(capsys, ["explain", *two_digit_pngs, "--model", "digits", "-o", path], repr(path), why)
    _one_line_exit_2(capsys, ["text", "a cat", "a dog", "-o", path], repr(path), why)
    if case != "a folder":  # demo writes a folder
        _one_line_exit_2(capsys, ["demo", "-o", path], repr(path))
    assert no_work == []


def test_other_arguments_are_checked_before_any_work(no_work, two_digit_pngs, tmp_path, capsys):
    out = str(tmp_path / "ok.png")
    _one_line_exit_2(capsys, ["report", "-o", str(tmp_path / "r.html"), "--n-train", "5"], "--n-train", "between 10")
    _one_line_exit_2(capsys, ["demo", "-o", str(tmp_path / "figs"), "--n-train", "100000"], "--n-train")
    _one_line_exit_2(capsys, ["demo", "-o", two_digit_pngs[0]], "is a file, not a folder")
    _one_line_exit_2(capsys, ["explain", *two_digit_pngs, "--model", "digits", "--weights", two_digit_pngs[0],
                              "-o", out], "--weights is only read with --model vgg16")
    _one_line_exit_2(capsys, ["explain", two_digit_pngs[0], str(tmp_path / "missing.png"), "--model", "vgg16",
                              "--weights", two_digit_pngs[0], "-o", out], "missing.png")
    _one_line_exit_2(capsys, ["explain", *two_digit_pngs, "--model", "vgg16", "--weights", str(tmp_path),
                              "-o", out], "is a folder, not a weights file")
    assert no_work == []
    with pytest.raises(SystemExit) as stop:  # argparse: usage and exit 2, before any work
        from skbilrp.cli import main
        main(["explain", *two_digit_pngs, "--model", "digits", "--top", "-1", "-o", out])
    assert stop.value.code == 2 and no_work == []
