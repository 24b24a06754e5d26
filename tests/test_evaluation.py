"""Flipping benchmark: curves against hand-simulated orders, methods against oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from skbilrp.evaluation import (
    BiLRPMethod,
    HessianProductMethod,
    RandomMethod,
    SaliencyOuterProductMethod,
    evaluate,
    explain_pairs,
    flipping_auc,
    flipping_curve,
)

DTYPE = torch.float64


def identity_features() -> nn.Module:
    """phi(x) = x flattened: the linear kernel is sum_i x_i x'_i."""
    return nn.Flatten()


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(a * b))


def _simulate(x: np.ndarray, x2: np.ndarray, ranking: list[tuple[int, int]]) -> list[float]:
    """Similarity of identity features after perturbing, one by one, the (side, index)
    entries of ``ranking`` with each side's mean."""
    a, b = x.copy(), x2.copy()
    out = [_dot(a, b)]
    for side, i in ranking:
        if side == 0:
            a[i] = x.mean()
        else:
            b[i] = x2.mean()
        out.append(_dot(a, b))
    return out


# three positions per input (shape (1, 1, 3): one channel), relevance with repeats
X = np.array([4.0, 1.0, 2.0])
X2 = np.array([1.0, 3.0, 5.0])
REL = np.array([[9.0, 8.0, 0.0],
                [0.0, 0.0, 7.0],
                [0.0, 6.0, 0.0]])


def test_pairwise_curve_follows_the_pair_order_and_perturbs_each_group_once():
    # pairs by relevance: (0,0) -> x0, x'0; (0,1) -> x'1 (x0 done); (1,2) -> x1, x'2;
    # (2,1) -> x2 (x'1 done)
    ranking = [(0, 0), (1, 0), (1, 1), (0, 1), (1, 2), (0, 2)]
    curve = flipping_curve(identity_features(), torch.tensor(X).reshape(1, 1, 3),
                           torch.tensor(X2).reshape(1, 1, 3), REL, mode="pairwise", steps=6,
                           perturbation="mean", kernel="linear")
    np.testing.assert_allclose(curve, _simulate(X, X2, ranking), rtol=1e-12)


def test_marginal_curve_averages_the_two_one_sided_curves():
    # row sums 17, 7, 6 -> x order 0, 1, 2; column sums 9, 14, 7 -> x' order 1, 0, 2
    side_a = _simulate(X, X2, [(0, 0), (0, 1), (0, 2)])
    side_b = _simulate(X, X2, [(1, 1), (1, 0), (1, 2)])
    curve = flipping_curve(identity_features(), torch.tensor(X).reshape(1, 1, 3),
                           torch.tensor(X2).reshape(1, 1, 3), REL, mode="marginal", steps=3,
                           kernel="linear")
    np.testing.assert_allclose(curve, 0.5 * (np.array(side_a) + np.array(side_b)), rtol=1e-12)


@pytest.mark.parametrize("perturbation", ["mean", "blur"])
def test_curve_ends_at_the_fully_perturbed_inputs(relu_cnn, images, perturbation):
    model = relu_cnn()
    x, x2 = images(2)
    rel = np.random.default_rng(0).random((16, 16))
    curve = flipping_curve(model, x, x2, rel, pooling=2, steps=5, perturbation=perturbation,
                           kernel="cosine", blur_sigma=1.5)

    def baseline(v: torch.Tensor) -> torch.Tensor:
        arr = v.numpy()
        if perturbation == "mean":
            return torch.from_numpy(np.broadcast_to(arr.mean(axis=(1, 2), keepdims=True), arr.shape).copy())
        return torch.from_numpy(ndimage.gaussian_filter(arr, (0, 1.5, 1.5), mode="reflect"))

    @torch.no_grad()
    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        fa, fb = model(a[None]).flatten(), model(b[None]).flatten()
        return float(fa @ fb / (fa.norm() * fb.norm()))

    assert curve.shape == (6,)
    assert curve[0] == pytest.approx(cosine(x, x2), rel=1e-12)
    assert curve[-1] == pytest.approx(cosine(baseline(x), baseline(x2)), rel=1e-10)


def test_flipping_auc_is_the_normalised_trapezoid_area():
    assert flipping_auc(np.array([2.0, 1.0, 0.0])) == pytest.approx(0.5)
    assert flipping_auc(np.array([3.0, 3.0, 3.0, 3.0])) == pytest.approx(1.0)
    # a drop straight to zero after the start: half of the first interval only
    assert flipping_auc(np.array([1.0, 0.0, 0.0, 0.0, 0.0])) == pytest.approx(0.125)


def test_hessian_product_method_matches_double_backward_oracle(relu_cnn, images, hessian_product):
    # biases make HP differ from LRP-0, so this checks the forward-mode route itself
    model = relu_cnn(bias=True)
    x, x2 = images(2, seed=3)
    rel = HessianProductMethod(batch_size=1)(model, x[None], x2[None], pooling=None,
                                             kernel="linear", channel_axis=0)
    oracle = hessian_product(model, x, x2).reshape(2, 64, 2, 64).sum(axis=(0, 2))
    assert rel.shape == (1, 64, 64)
    np.testing.assert_allclose(rel[0], oracle, rtol=1e-9, atol=1e-12)


def test_saliency_outer_product_is_rank_one_and_sums_to_y_squared(relu_cnn, images):
    # bias-free ReLU features are 1-homogeneous, so y = <phi(x), phi(x')> is
    # 1-homogeneous in each input: sum(x * grad_x y) = y (Euler) on both sides
    model = relu_cnn()
    X_, X2_ = images(2, seed=4), images(2, seed=5)
    rel = SaliencyOuterProductMethod()(model, X_, X2_, pooling=2, kernel="linear", channel_axis=0)
    for n in range(2):
        with torch.no_grad():
            y = float(model(X_[n:n + 1]).flatten() @ model(X2_[n:n + 1]).flatten())
        assert rel[n].sum() == pytest.approx(y * y, rel=1e-10)
        assert np.linalg.matrix_rank(rel[n], tol=1e-10 * np.abs(rel[n]).max()) == 1


def test_bilrp_method_explains_the_matching_pair_of_each_row():
    # identity features, linear kernel: R[i, i'] = x_i x'_i [i == i']
    gen = torch.Generator().manual_seed(0)
    X_, X2_ = torch.rand(3, 1, 2, 2, generator=gen, dtype=DTYPE), torch.rand(3, 1, 2, 2, generator=gen, dtype=DTYPE)
    rel = BiLRPMethod()(identity_features(), X_, X2_, pooling=None, kernel="linear", channel_axis=0)
    for n in range(3):
        np.testing.assert_allclose(rel[n], np.diag((X_[n] * X2_[n]).flatten().numpy()), atol=1e-15)


def test_random_method_is_seeded():
    x = torch.zeros(2, 1, 4, 4)
    a = RandomMethod(seed=1)(None, x, x, pooling=2, kernel="linear", channel_axis=0)
    b = RandomMethod(seed=1)(None, x, x, pooling=2, kernel="linear", channel_axis=0)
    c = RandomMethod(seed=2)(None, x, x, pooling=2, kernel="linear", channel_axis=0)
    assert a.shape == (2, 4, 4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_evaluate_bilrp_beats_random_on_identity_features():
    gen = torch.Generator().manual_seed(0)
    pairs = [(torch.rand(1, 6, 6, generator=gen, dtype=DTYPE), torch.rand(1, 6, 6, generator=gen, dtype=DTYPE))
             for _ in range(4)]
    methods = {"bilrp": BiLRPMethod(), "random": RandomMethod(0)}
    res = evaluate(identity_features(), pairs, methods, pooling=None, steps=8)
    assert res.fractions.shape == (9,)
    for mode in ("pairwise", "marginal"):
        assert res.curves[mode]["bilrp"].shape == (4, 9)
        assert res.wins(mode, "bilrp", "random") == 4
        assert res.mean_auc(mode, "bilrp")[0] < res.mean_auc(mode, "random")[0]
    # 4 wins out of 4: one-sided sign test p = 0.5 ** 4
    assert res.sign_test("marginal", "bilrp", "random") == pytest.approx(0.0625)
    assert res.sign_test("marginal", "bilrp", "bilrp") == 1.0
    table = res.to_markdown(reference="bilrp")
    assert "| random |" in table and "4/4 (p=0.062)" in table
    # precomputed explanations score the same; a wrong number of them is refused
    explanations, seconds = explain_pairs(identity_features(), pairs, methods)
    again = evaluate(identity_features(), pairs, explanations, steps=8)
    assert set(seconds) == {"bilrp", "random"} and again.seconds == {}
    np.testing.assert_array_equal(again.auc["marginal"]["bilrp"], res.auc["marginal"]["bilrp"])
    with pytest.raises(ValueError, match="cover 3 pairs, not 4"):
        evaluate(identity_features(), pairs, {"bilrp": explanations["bilrp"][:3]})


def test_errors_name_the_cause():
    x = torch.rand(1, 4, 4)
    model = identity_features()
    with pytest.raises(ValueError, match="pass the pooling"):
        flipping_curve(model, x, x, np.zeros((3, 3)), pooling=2)
    with pytest.raises(ValueError, match="mode must be"):
        flipping_curve(model, x, x, np.zeros((4, 4)), pooling=2, mode="joint")
    with pytest.raises(ValueError, match="perturbation must be"):
        flipping_curve(model, x, x, np.zeros((4, 4)), pooling=2, perturbation="zero")
    with pytest.raises(ValueError, match="kernel must be"):
        flipping_curve(model, x, x, np.zeros((4, 4)), pooling=2, kernel="rbf")
    with pytest.raises(ValueError, match="positive starting similarity"):
        flipping_auc(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="non-empty sequence"):
        evaluate(model, [], {"random": RandomMethod()})
