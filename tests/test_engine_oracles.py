"""The engine against independent oracles: autograd Hessian×Product and conservation.

For a bias-free ReLU network, BiLRP with LRP-0 equals the Hessian×Product
``R[i, j] = x_i x'_j d²y / dx_i dx'_j`` with ``y = <phi(x), phi(x')>``. The oracle
(fixture ``hessian_product`` in conftest.py) is plain autograd double backward; nothing
of skbilrp is used to compute it (pooling of the oracle is done here with numpy).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import round_off
from torch import nn

from skbilrp import Explainer, Gamma, Zero, bilrp


def sum_channels(rel: np.ndarray, shape: tuple) -> np.ndarray:
    """``(C*H*W, C*H*W)`` → ``(H*W, H*W)``, channels summed on both sides."""
    c, h, w = shape
    return rel.reshape(c, h * w, c, h * w).sum(axis=(0, 2))


def sum_patches(rel: np.ndarray, size: int, patch: int) -> np.ndarray:
    """``(H*W, H*W)`` → ``(P, P)`` with P row-major ``patch``×``patch`` patches."""
    g = size // patch
    r = rel.reshape(g, patch, g, patch, g, patch, g, patch)
    return r.sum(axis=(1, 3, 5, 7)).reshape(g * g, g * g)


def similarity(model: nn.Module, x: torch.Tensor, x2: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(x[None]).flatten() @ model(x2[None]).flatten())


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-10) -> None:
    """Elementwise agreement relative to the largest entry (float64 round-off level)."""
    assert actual.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 0, "degenerate oracle: all zero"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


# ------------------------------------------------------------------ HP oracle


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_lrp0_equals_hessian_product_cnn_unpooled(relu_cnn, images, mode, hessian_product):
    model = relu_cnn()
    x, x2 = images(2)
    oracle = hessian_product(model, x, x2)  # (128, 128): 2 channels × 8 × 8
    # channel_axis=None: every (channel, row, col) entry is its own group
    full = bilrp(model, x, x2, rules="zero", mode=mode, channel_axis=None)
    assert_close(full.relevance, oracle)
    # default channel_axis=0: channels summed on both sides
    summed = bilrp(model, x, x2, rules="zero", mode=mode)
    assert_close(summed.relevance, sum_channels(oracle, (2, 8, 8)))
    assert np.isclose(oracle.sum(), similarity(model, x, x2), rtol=1e-10)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_lrp0_equals_hessian_product_cnn_pooled(relu_cnn, images, mode, hessian_product):
    model = relu_cnn()
    x, x2 = images(2, seed=3)
    expected = sum_patches(sum_channels(hessian_product(model, x, x2), (2, 8, 8)), 8, 2)
    e = bilrp(model, x, x2, rules="zero", mode=mode, pooling=2)
    assert e.relevance.shape == (16, 16)
    assert_close(e.relevance, expected)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_hp_method_equals_hessian_product_oracle(relu_cnn, images, hessian_product, mode):
    # forward: one Jacobian-vector product per group; reverse: one backward per feature
    model = relu_cnn()
    x, x2 = images(2, seed=4)
    oracle = sum_channels(hessian_product(model, x, x2), (2, 8, 8))
    e = bilrp(model, x, x2, method="hp", mode=mode)
    assert e.method == "hp"
    assert_close(e.relevance, oracle)
    pooled = bilrp(model, x, x2, method="hp", mode=mode, pooling=(2, 4))
    g = oracle.reshape(4, 2, 2, 4, 4, 2, 2, 4).sum(axis=(1, 3, 5, 7)).reshape(8, 8)
    assert_close(pooled.relevance, g)


@pytest.mark.parametrize("method, mode", [("bilrp", "forward"), ("bilrp", "reverse"), ("hp", "forward"), ("hp", "reverse")])
def test_lrp0_equals_hessian_product_mlp(relu_mlp, method, mode, hessian_product):
    model = relu_mlp()
    gen = torch.Generator().manual_seed(5)
    x, x2 = torch.randn(2, 10, generator=gen, dtype=torch.float64)  # signed inputs
    oracle = hessian_product(model, x, x2)
    e = bilrp(model, x, x2, method=method, mode=mode)
    assert_close(e.relevance, oracle)
    # pooled with a label array: the same grouping done by hand on the oracle
    labels = np.array([4, 4, 9, 1, 1, 1, 9, 0, 4, 0])
    groups = np.unique(labels)
    onehot = (labels[:, None] == groups[None, :]).astype(float)  # (10, 4)
    pooled = bilrp(model, x, x2, method=method, mode=mode, pooling=labels)
    assert_close(pooled.relevance, onehot.T @ oracle @ onehot)


def test_hessian_product_holds_with_biases_for_lrp0(relu_cnn, images, hessian_product):
    """LRP-0 is gradient×input on ReLU nets even with biases, so BiLRP-0 equals HP;
    only conservation breaks (checked below)."""
    model = relu_cnn(bias=True)
    x, x2 = images(2, seed=6)
    e = bilrp(model, x, x2, channel_axis=None)
    assert_close(e.relevance, hessian_product(model, x, x2))


# --------------------------------------------------------------- conservation


GAMMA_CONVS = {nn.Conv2d: Gamma(0.5), nn.Linear: Zero()}


@pytest.mark.parametrize("rules", ["zero", "gamma", GAMMA_CONVS], ids=["zero", "gamma", "gamma-mapping"])
@pytest.mark.parametrize("kernel", ["linear", "cosine"])
def test_conservation_bias_free(relu_cnn, images, rules, kernel):
    model = relu_cnn()
    x, y = images(3, seed=7), images(2, seed=8)
    with torch.no_grad():
        fx, fy = model(x).flatten(1).numpy(), model(y).flatten(1).numpy()
    norms = np.outer(np.linalg.norm(fx, axis=1), np.linalg.norm(fy, axis=1))
    expected = fx @ fy.T if kernel == "linear" else fx @ fy.T / norms
    e = Explainer(model, rules=rules, pooling=2).explain(x, y, kernel=kernel)
    sums = e.relevance.sum(axis=(-2, -1))
    np.testing.assert_allclose(e.similarity, expected, rtol=1e-12)
    # the two differences agree up to the float64 round-off of the two similarities
    # (independent forwards, norms, a dot product): a few eps of |expected|, not a bare 1e-15
    np.testing.assert_allclose(e.conservation_error, expected - sums, rtol=1e-9,
                               atol=round_off(np.abs(expected).max(), torch.float64, k=16))
    if rules == "gamma":
        # The preset puts LRP-ε (ε=1e-6) on the last linear layer (followed by ReLU):
        # each feature keeps f * f / (f + ε) of its relevance, the rest is absorbed.
        # Convs under γ conserve exactly, so this predicts the sums exactly.
        kx, ky = fx * fx / (fx + 1e-6), fy * fy / (fy + 1e-6)
        exact = kx @ ky.T if kernel == "linear" else kx @ ky.T / norms
        np.testing.assert_allclose(sums, exact, rtol=1e-10)
        # ... which is within 1e-5 relative of the kernel (features are not tiny)
        np.testing.assert_allclose(sums, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    else:
        np.testing.assert_allclose(sums, expected, rtol=1e-10)
    if kernel == "cosine":
        assert np.all(np.abs(sums) <= 1 + 1e-9)


def test_gamma_relevance_differs_from_lrp0(relu_cnn, images):
    """Guards the conservation test against a Gamma rule that silently does nothing."""
    model = relu_cnn()
    x, y = images(1, seed=7), images(1, seed=8)
    r0 = Explainer(model, rules="zero", pooling=2).explain(x, y).relevance
    rg = Explainer(model, rules=GAMMA_CONVS, pooling=2).explain(x, y).relevance
    assert np.abs(r0 - rg).max() > 1e-3 * np.abs(r0).max()


def test_biases_absorb_relevance_and_error_is_reported(relu_cnn, images):
    model = relu_cnn(bias=True)
    with torch.no_grad():  # make the biases matter
        for m in model.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.add_(0.3)
    x, x2 = images(2, seed=9)
    y = similarity(model, x, x2)
    for kernel in ("linear", "cosine"):
        e = bilrp(model, x, x2, kernel=kernel, pooling=2)
        with torch.no_grad():
            a, b = model(x[None]).flatten(), model(x2[None]).flatten()
        expected = y if kernel == "linear" else y / float(a.norm() * b.norm())
        assert np.isclose(e.similarity, expected, rtol=1e-12)
        assert np.isclose(e.conservation_error, expected - e.relevance.sum(), rtol=1e-9,
                          atol=round_off(expected, torch.float64, k=16))
        assert abs(e.conservation_error) > 1e-6 * abs(expected)
