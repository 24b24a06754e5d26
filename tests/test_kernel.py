"""DeepKernel: kernel values, explanations, validation, caching and persistence.

The oracles are closed forms: for ``phi(x) = relu(W x)`` without bias, LRP-0 gives
``A(x)[m, i] = W[m, i] x[i] 1[(W x)_m > 0]``, so BiLRP of the linear kernel is
``R[i, j] = sum_m A(x)[m, i] A(y)[m, j]`` and the cosine divides by both norms.
"""

from __future__ import annotations

import pickle

import joblib
import numpy as np
import pytest
import torch
from conftest import assert_round_off_equal
from scipy.spatial.distance import cdist
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from torch import nn

from skbilrp import bilrp
from skbilrp.encoders.images import _RelevanceTask
from skbilrp.kernel import DeepKernel

D_IN, H = 6, 5


def relu_linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D_IN, H, bias=False), nn.ReLU()).double()


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 6, bias=False), nn.ReLU(),
    ).double()
    with torch.no_grad():  # mostly positive weights: few dead units on inputs in [0, 1]
        for p in net.parameters():
            p.uniform_(-0.3, 1.0)
    return net


def weights(model: nn.Module) -> np.ndarray:
    return model[0].weight.detach().numpy()


def oracle_features(model: nn.Module, x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ weights(model).T, 0.0)


def oracle_lrp(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """``A(x)`` of relu(W x), shape (n, h, d)."""
    w = weights(model)
    active = (x @ w.T > 0).astype(float)
    return active[:, :, None] * w[None] * x[:, None, :]


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(7, D_IN)), rng.normal(size=(4, D_IN))


def kernel_space_features(model, x, kernel):
    """Features whose dot products are the kernel: normalised for the cosine."""
    f = oracle_features(model, x)
    return f / np.linalg.norm(f, axis=1, keepdims=True) if kernel == "cosine" else f


# ---------------------------------------------------------------- kernel values


@pytest.mark.parametrize("kernel", ["linear", "cosine"])
def test_transform_matches_closed_form_kernel(data, kernel):
    x_fit, x = data
    model = relu_linear()
    fa, fb = kernel_space_features(model, x, kernel), kernel_space_features(model, x_fit, kernel)
    k = DeepKernel(model, kernel=kernel).fit(x_fit).transform(x)
    assert k.dtype == np.float64 and k.shape == (4, 7)
    np.testing.assert_allclose(k, fa @ fb.T, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kernel", ["linear", "cosine"])
def test_distance_output_is_euclidean_distance_in_feature_space(data, kernel):
    x_fit, x = data
    model = relu_linear()
    fa, fb = kernel_space_features(model, x, kernel), kernel_space_features(model, x_fit, kernel)
    d = DeepKernel(model, kernel=kernel, output="distance").fit(x_fit).transform(x)
    np.testing.assert_allclose(d, cdist(fa, fb), rtol=1e-9, atol=1e-7)
    d_self = DeepKernel(model, kernel=kernel, output="distance").fit_transform(x_fit)
    np.testing.assert_allclose(np.diag(d_self), 0.0, atol=1e-6)


def test_cosine_of_zero_feature_vector_is_zero():
    model = relu_linear()
    x_dead = np.zeros((1, D_IN))  # relu(W 0) = 0: a zero feature vector
    k = DeepKernel(model).fit(np.vstack([x_dead, np.ones((1, D_IN))])).transform(x_dead)
    np.testing.assert_array_equal(k, [[0.0, 0.0]])


def test_flat_and_image_inputs_give_the_same_kernel():
    rng = np.random.default_rng(1)
    images = rng.random((5, 2, 8, 8))
    flat = images.reshape(5, -1)
    by_shape = DeepKernel(tiny_cnn(), input_shape=(2, 8, 8)).fit(flat)
    by_array = DeepKernel(tiny_cnn()).fit(images)
    assert by_shape.input_shape_ == by_array.input_shape_ == (2, 8, 8)
    assert by_shape.n_features_in_ == 128
    np.testing.assert_allclose(by_shape.transform(images[:2]), by_array.transform(flat[:2]), rtol=1e-12)
    np.testing.assert_allclose(by_shape.features(flat), by_array.features(images), rtol=1e-12)


def test_threading_backend_gives_identical_results(data):
    x_fit, x = data
    seq = DeepKernel(tiny_cnn(), input_shape=(2, 8, 8), batch_size=2)
    rng = np.random.default_rng(2)
    imgs = rng.random((9, 128))
    k_seq = seq.fit(imgs).transform(imgs[:5])
    e_seq = seq.explain_pairs(imgs[:3], pairs=[(0, 1), (2, 8)])
    with joblib.parallel_backend("threading", n_jobs=2):
        par = clone(seq).fit(imgs)
        k_par = par.transform(imgs[:5])
        e_par = par.explain_pairs(imgs[:3], pairs=[(0, 1), (2, 8)])
    # other threads may reduce in another order: identical up to float64 round-off
    assert_round_off_equal(k_par, k_seq, torch.float64)
    assert_round_off_equal(e_par.relevance, e_seq.relevance, torch.float64, entry_axes=2)


# ---------------------------------------------------------------- explanations


@pytest.mark.parametrize("kernel", ["linear", "cosine"])
def test_explain_pairs_matches_closed_form_bilrp(data, kernel):
    x_fit, x = data
    model = relu_linear()
    a, b = oracle_lrp(model, x), oracle_lrp(model, x_fit)
    expected = np.einsum("nhi,mhj->nmij", a, b)
    if kernel == "cosine":
        na = np.linalg.norm(oracle_features(model, x), axis=1)
        nb = np.linalg.norm(oracle_features(model, x_fit), axis=1)
        expected = expected / (na[:, None, None, None] * nb[None, :, None, None])
    dk = DeepKernel(model, kernel=kernel).fit(x_fit)
    e = dk.explain_pairs(x)
    assert e.relevance.shape == (4, 7, D_IN, D_IN)
    np.testing.assert_allclose(e.relevance, expected, rtol=1e-10, atol=1e-13)
    # conservation: the explanations sum to the very numbers transform() gives
    np.testing.assert_allclose(e.relevance.sum(axis=(2, 3)), dk.transform(x), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kernel", ["linear", "cosine"])
def test_explanations_of_a_cnn_sum_to_the_transform_entries(kernel):
    rng = np.random.default_rng(3)
    imgs = rng.random((6, 2, 8, 8))
    dk = DeepKernel(tiny_cnn(), kernel=kernel, pooling=2).fit(imgs)
    e = dk.explain_pairs(imgs[:2])
    assert e.relevance.shape == (2, 6, 16, 16)
    k = dk.transform(imgs[:2])
    assert np.abs(k).min() > 1e-3  # entries worth explaining
    np.testing.assert_allclose(e.relevance.sum(axis=(2, 3)), k, rtol=1e-9)
    np.testing.assert_allclose(e.similarity, k, rtol=1e-9)


def test_pairs_and_y_select_the_same_entries_as_the_block(data):
    x_fit, x = data
    dk = DeepKernel(relu_linear()).fit(x_fit)
    block = dk.explain_pairs(x)
    chosen = [(3, 0), (0, 6), (3, 2)]
    some = dk.explain_pairs(x, pairs=chosen)
    assert some.pairs == chosen and some.relevance.shape == (3, D_IN, D_IN)
    for k, (i, j) in enumerate(chosen):
        np.testing.assert_allclose(some.relevance[k], block.relevance[i, j], rtol=1e-12)
    # explicit Y: the block K(X, Y); Y = X_fit_ gives the default block back
    np.testing.assert_allclose(dk.explain_pairs(x, x_fit).relevance, block.relevance, rtol=1e-12)
    xy = dk.explain_pairs(x, x[:2], pairs=[(1, 1)])
    np.testing.assert_allclose(xy.similarity, [1.0], rtol=1e-12)  # cosine of a sample with itself


def test_distance_output_explains_kernel_entries(data):
    x_fit, x = data
    model = relu_linear()
    e = DeepKernel(model, output="distance").fit(x_fit).explain_pairs(x)
    k = DeepKernel(model, output="kernel").fit(x_fit).transform(x)
    np.testing.assert_allclose(e.similarity, k, rtol=1e-12)


def test_training_relevance_is_computed_once(data, monkeypatch):
    x_fit, x = data
    explained = []
    original = _RelevanceTask.__call__
    monkeypatch.setattr(_RelevanceTask, "__call__", lambda self, xs: explained.append(len(xs)) or original(self, xs))
    dk = DeepKernel(relu_linear()).fit(x_fit)
    dk.explain_pairs(x, pairs=[(0, 1), (1, 1)])
    assert sum(explained) == 2 + 1  # the named rows of x and X_fit_ only
    explained.clear()
    dk.explain_pairs(x[:1])
    assert sum(explained) == 1 + 6  # x[0] again, and the six training rows not yet explained


# ---------------------------------------------------------------- validation


def test_bad_input_raises_sklearn_style_errors(data):
    x_fit, x = data
    dk = DeepKernel(relu_linear())
    with pytest.raises(NotFittedError):
        dk.transform(x)
    with pytest.raises(NotFittedError):
        dk.explain_pairs(x)
    with pytest.raises(ValueError, match="NaN"):
        dk.fit(np.where(np.eye(7, D_IN) > 0, np.nan, x_fit))
    dk.fit(x_fit)
    with pytest.raises(ValueError, match="X has 5 features, but DeepKernel is expecting 6 features"):
        dk.transform(x[:, :5])
    with pytest.raises(ValueError, match="NaN"):
        dk.transform(np.full((1, D_IN), np.nan))
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*expects samples of shape \(6,\)"):
        dk.transform(x.reshape(4, 2, 3))


def test_input_shape_errors_name_expected_and_actual_shapes():
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError, match=r"130 features.*input_shape=\(2, 8, 8\) needs 128"):
        DeepKernel(tiny_cnn(), input_shape=(2, 8, 8)).fit(rng.random((3, 130)))
    dk = DeepKernel(tiny_cnn(), input_shape=(2, 8, 8)).fit(rng.random((3, 128)))
    with pytest.raises(ValueError, match=r"shape \(8, 8, 2\).*shape \(2, 8, 8\)"):
        dk.transform(rng.random((1, 8, 8, 2)))
    with pytest.raises(ValueError, match="input_shape must be a tuple of positive ints"):
        DeepKernel(tiny_cnn(), input_shape=(2, -8, 8)).fit(rng.random((3, 128)))


@pytest.mark.parametrize("params, match", [
    ({"kernel": "rbf"}, "kernel must be 'linear' or 'cosine'"),
    ({"output": "similarity"}, "output must be 'kernel' or 'distance'"),
    ({"batch_size": 0}, "batch_size must be a positive int"),
    ({"device": "tpu:x"}, "not a torch device"),
    ({"attention": "softmax"}, "attention must be 'cp' or 'attnlrp'"),
])
def test_bad_parameters_are_reported_at_fit(data, params, match):
    dk = DeepKernel(relu_linear(), **params)  # stored verbatim, checked in fit
    with pytest.raises(ValueError, match=match):
        dk.fit(data[0])


def test_model_must_be_a_module(data):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        DeepKernel(lambda x: x).fit(data[0])


@pytest.mark.parametrize("pairs, error", [
    ([(0, 7)], IndexError), ([(-1, 0)], IndexError), ([], ValueError), ([(0.5, 1)], ValueError),
])
def test_bad_pairs_are_rejected(data, pairs, error):
    dk = DeepKernel(relu_linear()).fit(data[0])
    with pytest.raises(error, match="(out of range|index pairs)"):
        dk.explain_pairs(data[1], pairs=pairs)


# ---------------------------------------------------------------- the user's model


def test_users_model_is_left_unchanged(data):
    x_fit, x = data
    model = relu_linear().train()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dk = DeepKernel(model).fit(x_fit)
    dk.transform(x)
    dk.explain_pairs(x[:2])
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    assert len(model._forward_hooks) == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert dk.model_ is not model and not dk.model_.training
    assert dk.get_params()["model"] is model


# ---------------------------------------------------------------- persistence, caching


def test_pickle_and_joblib_round_trips_give_identical_results(data, tmp_path):
    x_fit, x = data
    dk = DeepKernel(relu_linear(), pooling=None).fit(x_fit)
    k, e = dk.transform(x), dk.explain_pairs(x)  # also fills the relevance cache
    for restored in (pickle.loads(pickle.dumps(dk)), _joblib_round_trip(dk, tmp_path)):
        np.testing.assert_array_equal(restored.transform(x), k)
        np.testing.assert_array_equal(restored.explain_pairs(x).relevance, e.relevance)


def _joblib_round_trip(est, tmp_path):
    joblib.dump(est, tmp_path / "dk.joblib")
    return joblib.load(tmp_path / "dk.joblib")


def test_clone_is_unfitted_with_the_same_parameters(data):
    dk = DeepKernel(relu_linear(), kernel="linear", input_shape=(6,), pooling=2).fit(data[0])
    twin = clone(dk)
    assert not hasattr(twin, "X_fit_")
    assert {k: v for k, v in twin.get_params().items() if k != "model"} == \
        {k: v for k, v in dk.get_params().items() if k != "model"}
    np.testing.assert_array_equal(twin.fit(data[0]).transform(data[1]), dk.transform(data[1]))


def test_feature_names_out_name_training_samples(data):
    dk = DeepKernel(relu_linear()).fit(data[0])
    assert list(dk.get_feature_names_out()) == [f"deepkernel{i}" for i in range(7)]


def test_tags_mark_raw_sample_input_not_pairwise():
    tags = DeepKernel(relu_linear()).__sklearn_tags__()
    assert not tags.input_tags.pairwise and tags.input_tags.three_d_array


class CountingRelu(nn.Module):
    """relu(W x) that counts the samples of its forward passes."""

    calls = 0

    def __init__(self) -> None:
        super().__init__()
        self.inner = relu_linear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).calls += x.shape[0]
        return self.inner(x)


def test_memory_resumes_features_and_relevance(data, tmp_path, monkeypatch):
    x_fit, x = data
    explained = []
    original = _RelevanceTask.__call__
    monkeypatch.setattr(_RelevanceTask, "__call__", lambda self, xs: explained.append(len(xs)) or original(self, xs))
    CountingRelu.calls = 0
    first = DeepKernel(CountingRelu(), memory=str(tmp_path), batch_size=2).fit(x_fit)
    k_first = first.transform(x[:2])
    e_first = DeepKernel(relu_linear(), memory=joblib.Memory(tmp_path, verbose=0)).fit(x_fit).explain_pairs(x[:2])
    assert CountingRelu.calls == 7 + 2 and sum(explained) == 2 + 7

    # a fresh estimator with the same memory: only unseen samples are computed
    CountingRelu.calls, explained[:] = 0, []
    second = DeepKernel(CountingRelu(), memory=str(tmp_path), batch_size=2).fit(x_fit)
    # cached and new rows meet in one product of another shape: equal up to round-off
    assert_round_off_equal(second.transform(x), np.vstack([k_first, first.transform(x[2:])]), torch.float64)
    assert CountingRelu.calls == 2  # x[2:] once: first.transform then finds it cached
    e_second = DeepKernel(relu_linear(), memory=str(tmp_path)).fit(x_fit).explain_pairs(x)
    assert sum(explained) == 2  # x[2:] only
    assert_round_off_equal(e_second.relevance[:2], e_first.relevance, torch.float64, entry_axes=2)

    # a different model gets its own entries
    explained[:] = []
    DeepKernel(relu_linear(seed=1), memory=str(tmp_path)).fit(x_fit).explain_pairs(x[:1])
    assert sum(explained) == 1 + 7


def test_verbose_shows_progress_bars(data, capsys):
    x_fit, x = data
    DeepKernel(relu_linear(), batch_size=2, verbose=True).fit(x_fit).explain_pairs(x)
    err = capsys.readouterr().err
    assert "features" in err and "relevance" in err


class TinyAttention(nn.Module):
    """One softmax attention over 4 tokens of 3 dims, mean-pooled."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.q, self.k, self.v = (nn.Linear(3, 3, bias=False) for _ in range(3))
        for lin in (self.q, self.k, self.v):
            lin.weight.data = torch.randn(3, 3, generator=gen, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2), dim=-1)
        return (probs @ self.v(x)).mean(1)


@pytest.mark.parametrize("attention", ["cp", "attnlrp"])
def test_attention_rule_reaches_the_explanations(attention):
    rng = np.random.default_rng(0)
    x_fit, x = rng.normal(size=(3, 4, 3)), rng.normal(size=(2, 4, 3))
    dk = DeepKernel(TinyAttention(), kernel="linear", attention=attention).fit(x_fit)
    got = dk.explain_pairs(x).pair(1, 2)
    want = bilrp(TinyAttention(), x[1], x_fit[2], rules="zero", attention=attention)
    np.testing.assert_allclose(got.relevance, want.relevance, rtol=1e-10, atol=1e-12 * np.abs(want.relevance).max())
    # the rules differ on attention: CP-LRP's maps are not AttnLRP's
    other = bilrp(TinyAttention(), x[1], x_fit[2], attention="attnlrp" if attention == "cp" else "cp")
    assert np.abs(other.relevance - want.relevance).max() > 1e-3 * np.abs(want.relevance).max()


def test_changing_the_attention_rule_after_fit_recomputes_explanations():
    rng = np.random.default_rng(0)
    x_fit = rng.normal(size=(3, 4, 3))
    dk = DeepKernel(TinyAttention(), kernel="linear").fit(x_fit)
    cp = dk.explain_pairs(x_fit[:1]).pair(0, 1).relevance
    dk.set_params(attention="attnlrp")
    attn = dk.explain_pairs(x_fit[:1]).pair(0, 1).relevance
    np.testing.assert_allclose(attn, bilrp(TinyAttention(), x_fit[0], x_fit[1], attention="attnlrp").relevance,
                               rtol=1e-10, atol=1e-12 * np.abs(attn).max())
    assert not np.allclose(cp, attn)
