"""Equivalences the engine must satisfy, and layer coverage against oracles.

* forward mode == reverse mode (the same linear map, computed two ways);
* pooling before the outer product == pooling after it (done by hand with numpy);
* a batched block == separate single-pair calls; chosen pairs == block entries;
* BatchNorm folding changes nothing about the function and nothing of the user's model;
* layer coverage (residual add, cat, depthwise/strided/dilated/padded convs, average
  pools, Conv1d, LeakyReLU, ReLU6, GELU, functional ops): forward == reverse,
  conservation when bias-free, and an independent autograd oracle.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skbilrp import Epsilon, Explainer, Gamma, ZBox, Zero, bilrp
from skbilrp.engine import ExportedNetwork

DT = torch.float64


def relevance(model, x, mode, **kwargs) -> np.ndarray:
    return Explainer(model, mode=mode, **kwargs).relevance(x).relevance.numpy()


def assert_close(actual, expected, rtol=1e-10):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 0, "degenerate reference: all zero"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def features(model, x) -> np.ndarray:
    with torch.no_grad():
        return model(x).flatten(1).numpy()


def check_forward_reverse_conservation(model, x, pooling=None, bias_free=True, **kwargs):
    """forward == reverse (full relevance tensors); sums == phi when bias-free."""
    fwd = relevance(model, x, "forward", pooling=pooling, **kwargs)
    rev = relevance(model, x, "reverse", pooling=pooling, **kwargs)
    assert_close(fwd, rev)
    if bias_free:
        phi = features(model, x)
        assert np.abs(phi).max() > 0
        np.testing.assert_allclose(fwd.sum(-1), phi, rtol=1e-10, atol=1e-12 * np.abs(phi).max())
    return fwd


# --------------------------------------------------------------- forward == reverse

MIXED_RULES = {"0": ZBox(0.0, 1.0), "3": Gamma(0.5), "6": Epsilon(0.1)}


@pytest.mark.parametrize("pooling", [None, 2, (4, 2)], ids=["unpooled", "patch2", "patch4x2"])
@pytest.mark.parametrize("rules", ["zero", MIXED_RULES], ids=["zero", "zB-gamma-eps"])
@pytest.mark.parametrize("bias", [False, True])
def test_forward_equals_reverse(relu_cnn, images, pooling, rules, bias):
    model = relu_cnn(bias=bias)
    x = images(3)
    fwd = relevance(model, x, "forward", rules=rules, pooling=pooling)
    rev = relevance(model, x, "reverse", rules=rules, pooling=pooling)
    assert_close(fwd, rev)


def test_forward_equals_reverse_unsummed_channels(relu_cnn, images):
    model = relu_cnn(bias=True)
    x = images(2)
    fwd = relevance(model, x, "forward", rules=MIXED_RULES, channel_axis=None)
    rev = relevance(model, x, "reverse", rules=MIXED_RULES, channel_axis=None)
    assert fwd.shape == (2, 6, 128)
    assert_close(fwd, rev)


# ------------------------------------------------------------------------ pooling


@pytest.mark.parametrize("rules", ["zero", MIXED_RULES], ids=["zero", "zB-gamma-eps"])
def test_patch_pooling_equals_summing_unpooled(relu_cnn, images, rules):
    model = relu_cnn(bias=True)
    x, y = images(2, seed=2), images(2, seed=3)
    full = Explainer(model, rules=rules).explain(x, y)  # (2, 2, 64, 64)
    pooled = Explainer(model, rules=rules, pooling=2).explain(x, y)  # (2, 2, 16, 16)
    r = full.relevance.reshape(2, 2, 4, 2, 4, 2, 4, 2, 4, 2)
    by_hand = r.sum(axis=(3, 5, 7, 9)).reshape(2, 2, 16, 16)
    assert_close(pooled.relevance, by_hand)
    np.testing.assert_allclose(pooled.similarity, full.similarity, rtol=1e-14)


def test_label_pooling_equals_grouping_by_hand(relu_cnn, images):
    model = relu_cnn()
    x, y = images(2, seed=4), images(1, seed=5)
    rng = np.random.default_rng(0)
    labels = rng.choice([-3, 5, 11, 40], size=(8, 8))  # arbitrary, non-contiguous ids
    groups = np.unique(labels)
    onehot = (labels.reshape(-1)[:, None] == groups[None, :]).astype(float)  # (64, 4)
    full = Explainer(model).explain(x, y).relevance  # (2, 1, 64, 64)
    pooled = Explainer(model, pooling=labels).explain(x, y).relevance
    by_hand = np.einsum("ip,nmij,jq->nmpq", onehot, full, onehot)
    assert pooled.shape == (2, 1, 4, 4)
    assert_close(pooled, by_hand)


# ----------------------------------------------------------- batching and pairs


def test_block_entries_equal_single_pair_calls(relu_cnn, images):
    model = relu_cnn(bias=True)
    x, y = images(3, seed=6), images(2, seed=7)
    for kernel in ("linear", "cosine"):
        block = Explainer(model, rules=MIXED_RULES, pooling=2, batch_size=2).explain(x, y, kernel=kernel)
        assert block.relevance.shape == (3, 2, 16, 16)
        for i in range(3):
            for j in range(2):
                single = bilrp(model, x[i], y[j], kernel=kernel, rules=MIXED_RULES, pooling=2)
                assert_close(block.relevance[i, j], single.relevance, rtol=1e-12)
                assert np.isclose(block.similarity[i, j], single.similarity, rtol=1e-12)
                assert np.isclose(block.conservation_error[i, j], single.conservation_error,
                                  rtol=1e-8, atol=1e-13)


def test_pairs_equal_block_entries(relu_cnn, images):
    model = relu_cnn()
    x, y = images(3, seed=8), images(4, seed=9)
    ex = Explainer(model, pooling=2)
    block = ex.explain(x, y, kernel="cosine")
    pairs = [(2, 0), (0, 3), (1, 1), (2, 0)]
    chosen = ex.explain(x, y, kernel="cosine", pairs=pairs)
    assert chosen.relevance.shape == (4, 16, 16)
    for k, (i, j) in enumerate(pairs):
        assert_close(chosen.relevance[k], block.relevance[i, j], rtol=1e-13)
        assert chosen.similarity[k] == pytest.approx(block.similarity[i, j], rel=1e-13)
        assert chosen.pair(k).similarity == pytest.approx(block.pair(i, j).similarity, rel=1e-13)
    # y=None explains x against itself
    self_block = ex.explain(x)
    assert_close(self_block.relevance, np.transpose(self_block.relevance, (1, 0, 3, 2)))


# --------------------------------------------------------------- BatchNorm folding


def conv_bn_net(seed: int = 0) -> nn.Module:
    """conv-BN-ReLU (foldable) blocks with random BN statistics and affine parameters,
    then a BN after a ReLU (not foldable) and a Dropout: in train mode both would
    change the function, so they catch a canonised copy left in train mode."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(64, 5), nn.BatchNorm1d(5), nn.ReLU(),
        nn.BatchNorm1d(5), nn.Dropout(0.5),
    ).to(DT)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.3)
    return net


def hooks_of(model: nn.Module) -> list:
    return [(name, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for name, m in model.named_modules()]


@pytest.mark.parametrize("training", [False, True])
def test_batchnorm_folding_keeps_function_and_user_model(images, hessian_product, training):
    model = conv_bn_net().train(training)
    reference = copy.deepcopy(model).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [(name, m.training) for name, m in model.named_modules()]
    hooks = hooks_of(model)
    x = images(3, seed=10)

    ex = Explainer(model, pooling=2)
    e = ex.explain(x)
    bilrp(model, x[0], x[1], method="hp")

    # the canonical graph computes the same function as the model in eval mode ...
    canon = ex.network
    graph = canon.program(x, {}).graph
    unfolded = [n for n in graph.nodes if n.op == "call_function" and "batch_norm" in str(n.target)]
    assert len(unfolded) == 1  # only the BN after a ReLU remains
    assert not any(m.training for m in canon.model.modules())
    assert_close(canon.record(x).features, features(reference, x), rtol=1e-12)
    np.testing.assert_allclose(np.diag(e.similarity), (features(reference, x) ** 2).sum(1), rtol=1e-12)
    # ... and the user's model is untouched: parameters, statistics, mode, hooks
    after = model.state_dict()
    assert list(after) == list(state)
    for key, value in state.items():
        assert torch.equal(after[key], value), key
    assert [(name, m.training) for name, m in model.named_modules()] == modes
    assert hooks_of(model) == hooks
    # LRP-0 on a ReLU net is gradient×input, also after folding: BiLRP-0 == HP oracle
    hp = hessian_product(reference, x[0], x[1])
    single = bilrp(model, x[0], x[1], channel_axis=None)
    assert_close(single.relevance, hp)


def fold_by_hand(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    std = torch.sqrt(bn.running_var + bn.eps)
    scale = bn.weight / std
    folded = copy.deepcopy(conv)
    with torch.no_grad():
        folded.weight.mul_(scale[:, None, None, None])
        bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
        folded.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
    return folded


def test_batchnorm_folding_under_gamma_equals_hand_folded_net(images):
    """γ modifies the folded weights: the BN net must explain like its folded twin."""
    model = conv_bn_net().eval()
    m = model
    twin = nn.Sequential(
        fold_by_hand(m[0], m[1]), nn.ReLU(), nn.MaxPool2d(2),
        fold_by_hand(m[4], m[5]), nn.ReLU(), nn.Flatten(), copy.deepcopy(m[8]), copy.deepcopy(m[9]),
        nn.ReLU(), copy.deepcopy(m[11]),
    ).eval()
    x = images(2, seed=11)
    assert_close(features(twin, x), features(model, x), rtol=1e-12)
    rules = {nn.Conv2d: Gamma(0.5), nn.Linear: Epsilon(0.01)}
    got = relevance(model, x, "forward", rules=rules, pooling=2)
    want = relevance(twin, x, "reverse", rules=rules, pooling=2)
    assert_close(got, want)


def test_unfoldable_batchnorm_is_lrp0_affine(images, hessian_product):
    """A BN after a ReLU cannot be folded; LRP-0 through it is still gradient×input."""
    model = seeded(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(3),
                                 nn.Conv2d(3, 3, 3, stride=2, bias=False), nn.ReLU(), nn.Flatten()))
    with torch.no_grad():
        model[2].running_mean.uniform_(-0.3, 0.3)
        model[2].running_var.uniform_(0.5, 2.0)
        model[2].weight.uniform_(0.5, 1.5)
    model.eval()
    x = images(2, seed=12)
    check_forward_reverse_conservation(model, x, pooling=2, bias_free=False)
    assert_close(bilrp(model, x[0], x[1], channel_axis=None).relevance, hessian_product(model, x[0], x[1]))


# ------------------------------------------------------------------ layer coverage


class Residual(nn.Module):
    """``x + conv(x)``: relevance splits between the skip and the branch."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class Concat(nn.Module):
    """Two branches concatenated along channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(channels, 2, 3, padding=1, bias=False)
        self.b = nn.Conv2d(channels, 3, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu(self.a(x)), self.b(x)], dim=1)


class Functional(nn.Module):
    """Functional ops with constant arguments and shape queries."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4 * 4 * 4, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv(x)), 2)
        h = 0.5 * h.view(h.size(0), -1) * 3.0
        h = torch.flatten(h.reshape(h.shape[0], 4, 16), 1)
        return F.relu(self.fc(h / 2.0))


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model.to(DT).eval()


PIECEWISE_LINEAR = {
    "residual-cat": lambda: nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.ReLU(), Residual(3), nn.ReLU(), Concat(3),
        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(5 * 16, 6, bias=False), nn.ReLU()),
    "depthwise-dilated-strided-avg": lambda: nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.LeakyReLU(0.1),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4, bias=False), nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(6, 6, 1, bias=False), nn.LeakyReLU(0.2), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    "functional": Functional,
}


@pytest.mark.parametrize("name", list(PIECEWISE_LINEAR))
def test_piecewise_linear_layers(name, images, hessian_product):
    """Piecewise-linear nets through the origin: LRP-0 is gradient×input, so BiLRP-0
    equals the autograd HP oracle; bias-free, it conserves; forward == reverse."""
    model = seeded(PIECEWISE_LINEAR[name]())
    x = images(2, seed=13)
    check_forward_reverse_conservation(model, x, pooling=2)
    check_forward_reverse_conservation(model, x, pooling=2, rules=Gamma(0.25))
    e = bilrp(model, x[0], x[1], channel_axis=None)
    assert_close(e.relevance, hessian_product(model, x[0], x[1]))
    assert e.relevance.sum() == pytest.approx(e.similarity, rel=1e-10)


class RatioOracle(nn.Module):
    """``z * (f(z) / z).detach()``: the ratio rule as a gradient (independent of skbilrp)."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.act = act

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        ratio = torch.where(z == 0, torch.zeros_like(z), self.act(z) / z)
        return z * ratio.detach()


def gradient_times_input(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """``(N, h, *sample_shape)``: x ⊙ d phi_m / dx for every feature, plain autograd."""
    rows = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: model(v[None]).flatten(), xi)
        rows.append((jac * xi).numpy())
    return np.stack(rows)


def smooth_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, bias=False), nn.GELU(), nn.Conv2d(4, 4, 3, padding=1, bias=False),
        nn.ReLU6(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5, bias=False), nn.LeakyReLU(0.05))


def conv1d_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(3, 4, 3, padding=1, bias=False), nn.GELU(), nn.MaxPool1d(2),
        nn.Conv1d(4, 4, 3, stride=2, dilation=1, padding=1, bias=False), nn.ReLU6(),
        nn.AvgPool1d(2), nn.Flatten(), nn.Linear(8, 5, bias=False), nn.ReLU())


def with_ratio_oracles(model: nn.Module) -> nn.Module:
    oracle = copy.deepcopy(model)
    for i, m in enumerate(oracle):
        if isinstance(m, (nn.GELU, nn.ReLU6, nn.LeakyReLU, nn.ReLU)):
            oracle[i] = RatioOracle(m)
    return oracle


@pytest.mark.parametrize("build, shape", [(smooth_cnn, (2, 8, 8)), (conv1d_net, (3, 16))],
                         ids=["gelu-relu6-2d", "conv1d"])
def test_smooth_activations_follow_the_ratio_rule(build, shape):
    model = seeded(build())
    with torch.no_grad():  # large pre-activations so that ReLU6 saturates somewhere
        model[2].weight.mul_(4.0) if isinstance(model[2], nn.Conv2d) else model[3].weight.mul_(4.0)
    gen = torch.Generator().manual_seed(14)
    x = torch.rand(2, *shape, generator=gen, dtype=DT)
    fwd = check_forward_reverse_conservation(model, x, channel_axis=None)
    oracle = gradient_times_input(with_ratio_oracles(model), x).reshape(fwd.shape)
    assert_close(fwd, oracle)
    # plain gradient×input differs: the ratio rule really is used for the smooth layers
    plain = gradient_times_input(model, x).reshape(fwd.shape)
    assert np.abs(plain - fwd).max() > 1e-3 * np.abs(fwd).max()


def test_conv1d_patch_pooling(hessian_product):
    model = seeded(nn.Sequential(
        nn.Conv1d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(4, 4, 3, stride=2, padding=1, bias=False), nn.ReLU(), nn.Flatten()))
    gen = torch.Generator().manual_seed(15)
    x = torch.rand(2, 3, 16, generator=gen, dtype=DT)
    check_forward_reverse_conservation(model, x, pooling=4)
    e = bilrp(model, x[0], x[1], pooling=4)
    hp = hessian_product(model, x[0], x[1]).reshape(3, 4, 4, 3, 4, 4).sum(axis=(0, 2, 3, 5))
    assert e.relevance.shape == (4, 4)
    assert_close(e.relevance, hp)


def test_normalize_layer_with_zbox_equals_normalized_input(images):
    """A ``Normalize`` inside the model passes positions through: z^B with bounds from
    ``ZBox.from_normalization`` on raw input == z^B on pre-normalised input."""
    from skbilrp.layers import Normalize

    mean, std = [0.25, 0.625], [0.125, 0.5]  # exact in float32, as Normalize stores them
    body = seeded(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                                nn.Flatten(), nn.Linear(64, 5, bias=False), nn.ReLU()))
    with_norm = nn.Sequential(Normalize(mean, std), *body).to(DT).eval()
    x = images(2, seed=16)
    m, s = torch.tensor(mean, dtype=DT).reshape(2, 1, 1), torch.tensor(std, dtype=DT).reshape(2, 1, 1)
    zbox = ZBox.from_normalization(mean, std)
    raw = relevance(with_norm, x, "forward", rules={"1": zbox, "5": Zero()}, pooling=2)
    pre = relevance(body, (x - m) / s, "reverse", rules={"0": ZBox((0 - m) / s, (1 - m) / s)}, pooling=2)
    assert_close(raw, pre)
    np.testing.assert_allclose(raw.sum(-1), features(with_norm, x), rtol=1e-10)


def test_activation_after_folded_batchnorm_is_fused_into_its_conv():
    # folding removes the BatchNorm node; the activation then fuses into its conv
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.BatchNorm2d(3), nn.ReLU6(),
                          nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten()).eval()
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    net = ExportedNetwork(model, dtype=torch.float64)
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    rec = net.record(x)
    assert len(net.program(x, {}).fused) == 2
    torch.testing.assert_close(rec.features, model.double()(x).flatten(1))
