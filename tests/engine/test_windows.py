"""Probes pushed on their windows (engine/windows.py) give the dense push's flows.

Oracles: the plain torch op on the dense map (F.conv2d, max-pool winners, the sum), and
the engine's own dense push (``windows=False``), which the rest of the suite checks
against autograd, zennit and hand-computed cases. Float64; each op within 16 eps of the
magnitude of the terms it sums, end to end within 1000 eps of the largest flow."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skbilrp.engine import ExportedNetwork, windows
from skbilrp.engine.windows import Window, WindowFlow
from skbilrp.models import efficientnet_lite0, efficientnet_lite0_rules, mobilenet_v2, mobilenet_v2_rules, vgg16, vgg16_rules
from skbilrp.pooling import make_pooling
from skbilrp.engine.trace import UnsupportedModelError
from skbilrp.rules import ZBox

from helpers import EPS64, close


def _crops(k: int, n: int, c: int, size: tuple, grid: tuple, seed: int, starts: tuple | None = None) -> WindowFlow:
    """Random crops of ``size`` on a ``grid`` map, zero off the map, at random starts that
    may hang over the border."""
    g = torch.Generator().manual_seed(seed)
    if starts is None:
        starts = tuple(torch.randint(-s + 1, m, (k,), generator=g) for s, m in zip(size, grid))
    win = Window(starts[0], starts[1], size, grid)
    data = torch.randn(k, n, c, *size, generator=g, dtype=torch.float64) * win.on_map(torch.float64)
    return WindowFlow(data, win)


CONVS = [  # kernel, stride, padding, dilation, groups
    ((3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((3, 3), (2, 2), (1, 1), (1, 1), 1),  # crops at both phases of the stride
    ((1, 1), (2, 2), (0, 0), (1, 1), 1),
    ((5, 3), (3, 2), (0, 2), (2, 1), 1),  # rectangular, dilated, uneven
    ((3, 3), (2, 2), (1, 1), (1, 1), 4),  # depthwise-like groups
    ((7, 7), (2, 2), (3, 3), (1, 1), 1),
]


@pytest.mark.parametrize("kernel, stride, padding, dilation, groups", CONVS)
def test_conv_on_crops_equals_the_dense_conv(kernel, stride, padding, dilation, groups):
    flow = _crops(k=6, n=2, c=4, size=(5, 4), grid=(17, 13), seed=sum(kernel) + stride[0])
    w = torch.randn(8, 4 // groups, *kernel, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = windows.conv2d(flow, w, stride, padding, dilation, groups)
    dense_in = flow.materialize()
    expected = F.conv2d(dense_in.flatten(0, 1), w, None, stride, padding, dilation, groups).unflatten(0, (6, 2))
    terms = F.conv2d(dense_in.abs().flatten(0, 1), w.abs(), None, stride, padding, dilation, groups)
    got = WindowFlow(out.data * out.win.on_map(out.data.dtype), out.win).materialize()
    close(got, expected, terms, k=16)
    # nothing of the dense output lies outside the crops
    assert out.win.grid == tuple(expected.shape[-2:])


@pytest.mark.parametrize("kernel, stride, padding, ceil", [(2, 2, 0, False), (3, 2, 1, False), (3, 2, 0, True),
                                                          (3, 1, 1, False)])
def test_max_pool_on_crops_takes_the_recorded_winners(kernel, stride, padding, ceil):
    g = torch.Generator().manual_seed(kernel + stride)
    x = torch.randn(2, 3, 15, 14, generator=g, dtype=torch.float64)
    out, idx = torch.ops.aten.max_pool2d_with_indices.default(x, [kernel] * 2, [stride] * 2, [padding] * 2, [1, 1],
                                                              ceil)
    flow = _crops(k=5, n=2, c=3, size=(4, 6), grid=(15, 14), seed=kernel)
    got = windows.max_pool2d(flow, idx, [kernel], [stride], [padding], [1])
    got = got if isinstance(got, torch.Tensor) else got.materialize()
    dense = flow.materialize()
    expected = dense.flatten(3).gather(3, idx.flatten(2).expand(5, -1, -1, -1)).reshape(5, *out.shape)
    assert torch.equal(got, expected)  # a gather: no arithmetic


def test_sum_of_crops_on_the_box_holding_both():
    a = _crops(k=4, n=1, c=2, size=(5, 5), grid=(12, 12), seed=0)
    b = _crops(k=4, n=1, c=2, size=(3, 4), grid=(12, 12), seed=1, starts=(a.win.row + 3, a.win.col - 2))
    got = windows.add(a, b, coef=-2.0)
    got = got if isinstance(got, torch.Tensor) else got.materialize()
    assert torch.equal(got, a.materialize() - 2.0 * b.materialize())
    # crops that do not move alike: dense, and still the sum
    c = _crops(k=4, n=1, c=2, size=(3, 4), grid=(12, 12), seed=2, starts=(a.win.row.flip(0), a.win.col))
    assert torch.equal(windows.add(a, c), a.materialize() + c.materialize())


def test_start_crops_each_probe_to_the_bounding_box_of_its_support():
    value = torch.randn(2, 3, 20, 16, dtype=torch.float64)
    probe = torch.zeros(3, 2, 3, 20, 16, dtype=torch.float64)
    probe[0, :, :, 2:5, 3:6] = 1  # a patch
    probe[1, :, :, 15, 0] = 1  # a pixel and a far one: an irregular group
    probe[1, :, :, 17, 2] = 1
    probe[2, :, 1, 19, 15] = 1  # one channel at the corner
    # probe 3 is empty (a group with no pixels): any crop holds its zero flow
    probe = torch.cat([probe, torch.zeros_like(probe[:1])])
    flow = windows.start(value, probe)
    assert flow.win.size == (3, 3)
    assert flow.win.row.tolist() == [2, 15, 19, 0] and flow.win.col.tolist() == [3, 0, 15, 0]
    assert torch.equal(flow.materialize(), probe * value)
    # a probe over half the image or more does not pay: dense
    assert windows.start(value, torch.ones(1, 2, 3, 20, 16, dtype=torch.float64)) is None
    # reverse mode differentiates the push through zero probes: dense
    assert windows.start(value, probe.clone().requires_grad_(True)) is None


# ------------------------------------------------------------------ end to end


def _push_both(model: nn.Module, rules, x: torch.Tensor, patch, probes: torch.Tensor | None = None):
    """The pushes with and without crops; asserts that the first did crop."""
    real, started = windows.start, []

    def spy(*args):
        out = real(*args)
        started.append(out is not None)
        return out

    net = ExportedNetwork(model, rules, dtype=torch.float64)
    rec = net.record(x)
    if probes is None:
        pool = make_pooling(patch, tuple(x.shape[1:]), 0)
        probes = pool.probes(0, pool.n_groups, torch.float64)
    k, n = probes.shape[0], x.shape[0]
    probes = probes[:, None].expand(k, n, *probes.shape[1:]).reshape(-1, *probes.shape[1:])
    windows.start = spy
    try:
        got = rec.push(probes, 0, windows=True)
    finally:
        windows.start = real
    assert any(started), "the push never cropped"
    return got, rec.push(probes, 0, windows=False)


class _Odd(nn.Module):
    """Strides, dilation, a residual sum of branches with different reach, a ReLU after
    the sum (not fused into a conv), a ceil-mode max-pool and a conv without activation."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = nn.Conv2d(3, 6, 3, stride=2, padding=0)
        self.b = nn.Conv2d(6, 6, 3, padding=2, dilation=2)
        self.c = nn.Conv2d(6, 6, 1)
        self.d = nn.Conv2d(6, 8, (5, 3), stride=(1, 2), padding=(2, 1))
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = torch.relu(self.b(h) + self.c(h))
        h = F.max_pool2d(h, 3, 2, 1, ceil_mode=True)
        return self.d(h).mean((2, 3))


class _Stem(nn.Module):
    """A patchify stem on a size no multiple of its stride, then a conv padded by more
    than its reach: the probes' coverage of their units (where a flat bias goes) reaches
    outputs whose inputs miss the probe."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.a = nn.Conv2d(3, 6, 4, stride=4)
        self.b = nn.Conv2d(6, 6, 1, padding=3)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g)
        self.a.bias.data *= 20  # biases over the contributions: a share's remainder is spread flat too

    def forward(self, x):
        return self.b(torch.relu(self.a(x))).mean((2, 3))


class _Grouped(nn.Module):
    """Convolutions whose groups hold several output channels each (3 groups of 2, 2 of
    3): under bias="mass" one input size per group serves all of its units."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.a = nn.Conv2d(3, 6, 3, stride=2, groups=3)
        self.b = nn.Conv2d(6, 6, 3, padding=1, groups=2)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))).mean((2, 3))


CASES = {
    "vgg-pool3-zero": lambda: (vgg16(cut="pool3"), "zero", 40, 8),
    "vgg-pool3-zero-share": lambda: (vgg16(cut="pool3"), "zero-share", 40, 8),
    "vgg-pool3-zero-flat": lambda: (vgg16(cut="pool3"), "zero-flat", 40, 8),
    "vgg-pool3-preset-zB": lambda: (vgg16(cut="pool3"), None, 40, 8),
    "vgg-pool2-gamma-uneven-patches": lambda: (vgg16(cut="pool2"), "gamma", (36, 28), 12),
    "mobilenet-preset": lambda: (mobilenet_v2(), None, 64, 16),
    "mobilenet-zero-share": lambda: (mobilenet_v2(), "zero-share", 48, 12),
    "efficientnet-preset": lambda: (efficientnet_lite0(), None, 48, 16),
    "odd-strides-zero-share": lambda: (_Odd().double(), "zero-share", (29, 23), 5),
    "odd-strides-zero-mass": lambda: (_Odd().double(), "zero-mass", (29, 23), 5),
    "odd-strides-epsilon": lambda: (_Odd().double(), "epsilon", (29, 23), 4),
    "stem-zero-flat": lambda: (_Stem().double(), "zero-flat", 30, 5),
    "stem-zero-share": lambda: (_Stem().double(), "zero-share", 30, 5),
    "stem-zero-mass": lambda: (_Stem().double(), "zero-mass", 30, 5),
    "grouped-zero-mass": lambda: (_Grouped().double(), "zero-mass", 27, 6),
    "grouped-zero-share": lambda: (_Grouped().double(), "zero-share", 27, 6),
    "stem-zero": lambda: (_Stem().double(), "zero", 30, 5),
}
PRESETS = {"vgg": vgg16_rules, "mobilenet": mobilenet_v2_rules, "efficientnet": efficientnet_lite0_rules}


@pytest.mark.parametrize("case", sorted(CASES))
def test_windowed_push_equals_the_dense_push(case):
    model, rules, size, patch = CASES[case]()
    if rules is None:
        rules = PRESETS[case.split("-")[0]](model)
    h, w = size if isinstance(size, tuple) else (size, size)
    x = torch.rand(2, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    got, dense = _push_both(model, rules, x, patch)
    close(got, dense, k=1e3)


def test_irregular_probes_equal_the_dense_push():
    """Groups that are no patches (scattered pixels, one channel) still crop exactly."""
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    probes = torch.zeros(4, 3, 32, 32, dtype=torch.float64)
    probes[0, :, 0:3, 29:32] = 1
    probes[1, 1, 10, 10] = 1
    probes[1, 1, 13, 8] = 1
    probes[2, :, 31, 0] = 1
    probes[3, :, 16:20, 5:7] = 1
    model = vgg16(cut="pool2")
    got, dense = _push_both(model, "zero-share", x, None, probes)
    close(got, dense, k=1e3)


def test_a_reach_one_output_short_is_caught(monkeypatch):
    """The end-to-end check can fail: crops that miss the last output they reach differ."""
    real = windows._reach

    def short(*args):
        o0, count, before, after = real(*args)
        return o0, count - 1, before, after - args[3]

    monkeypatch.setattr(windows, "_reach", short)
    x = torch.rand(1, 3, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with pytest.raises(AssertionError, match="max error"):
        close(*_push_both(vgg16(cut="pool1"), "zero", x, 4), k=1e3)


def test_bilrp_relevance_is_unchanged_and_conserves():
    """Through the public path (forward mode, default windows): the pair relevance of the
    dense push, and under a conserving rule set it sums to the kernel entry."""
    from skbilrp import Explainer

    model = mobilenet_v2()
    x = torch.rand(2, 3, 48, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    explainer = Explainer(model, rules="zero-share", pooling=12, dtype=torch.float64)
    rel = explainer.relevance(x)
    rec = explainer.network.record(x)
    pool = make_pooling(12, (3, 48, 48), 0)
    probes = pool.probes(0, pool.n_groups, torch.float64)
    probes = probes[:, None].expand(-1, 2, -1, -1, -1).reshape(-1, 3, 48, 48)
    dense = rec.push(probes, 0, windows=False).reshape(pool.n_groups, 2, -1).permute(1, 2, 0)
    close(rel.relevance, dense, k=1e3)
    pair = torch.einsum("hp,hq->pq", rel.relevance[0], rel.relevance[1])
    entry = rel.features[0] @ rel.features[1]
    assert abs(float(pair.sum() - entry)) <= 1e3 * EPS64 * float(pair.abs().sum())


def test_z_box_away_from_the_input_refuses_on_crops_too():
    """z^B needs the probe itself; on a crop of a later layer it refuses as on dense flows."""
    model = vgg16(cut="pool1")
    rules = {"features.2": ZBox(-3.0, 3.0)}
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    net = ExportedNetwork(model, rules, dtype=torch.float64)
    rec = net.record(x)
    probes = make_pooling(4, (3, 16, 16), 0).probes(0, 16, torch.float64)
    for windowed in (True, False):
        with pytest.raises(UnsupportedModelError, match="z\\^B rule applies only"):
            rec.push(probes, 0, windows=windowed)
