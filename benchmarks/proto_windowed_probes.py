"""Prototype: push each patch probe only on the window where its flow can be non-zero.

In forward mode the engine pushes one probe per patch through the linearised relevance
network; each probe costs about one forward pass. In the early layers of a CNN, though,
a probe's flow is exactly zero outside the receptive-field footprint of its patch. This
script measures, outside the engine, whether carrying only that window pays:

* a recording of one forward (activation ratios f(z)/z, max-pool winner indices) in
  plain torch, BatchNorm folded into its conv as the engine folds it;
* the dense push (what the engine does for LRP-0 with biases absorbed): per layer the
  conv without bias on the full map, times the recorded ratio, gather of the max-pool
  winners, residual adds, the global mean; checked once against
  ``ExportedNetwork(model, "zero", float64)``;
* the windowed push: each probe carries a square crop of the map and its offset; a conv
  maps it to the outputs whose inputs meet it (3×3, padding 1: one pixel more per side;
  the ratio crop, zero off the map, kills what falls off the map), a 2×2 max-pool maps
  it to the pooled crop by gathering each output's recorded winner (zero where the
  winner lies outside the crop), a residual add pads the skip's crop into the branch's.
  Every probe's crop has the same size (crops may hang over the map border), so each
  layer is one batched conv. At a switch layer the crops are scattered into full maps
  and the rest of the network runs dense; the switch is chosen by timing candidates;
* exactness in float64: each windowed op against the dense op on the same input, to
  16 × eps times its sum of |terms| (``|W| |u|``); no crop entry off the map non-zero
  in the chained push; the end-to-end difference within 1000 eps of max |dense|;
* timing side by side (1 and 2 torch threads, median of the rounds, methods alternated):
  a plain batched forward of as many images as probes, the dense push, the windowed push.

Cases: VGG-16 to pool5 (random weights) at 224 px with 16-px patches (196 probes) and at
128 px with 8-px patches (256 probes); MobileNetV2 (ImageNet weights) at 224 px with
16-px patches. Run ``python benchmarks/proto_windowed_probes.py`` (about 6 minutes on 2
cores) or ``--quick`` (a smoke run on a quarter of the sizes, about 1.5 min). The script
re-executes itself with passive OpenMP waiting and glibc's malloc tunables, as
bench_engine.py does (``--as-is`` keeps the environment). Results: docs/performance.rst,
"Probes on their windows (prototype)".
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "--as-is" not in sys.argv and "OMP_WAIT_POLICY" not in os.environ:
    # see bench_engine.py's TUNED_ENV: spinning OpenMP threads and page-faulted frees distort timings
    os.environ.update(OMP_WAIT_POLICY="PASSIVE",
                      GLIBC_TUNABLES="glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1000000000000")
    os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])

import argparse  # noqa: E402
import datetime  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.fx.experimental.optimization import fuse  # noqa: E402

from skbilrp.engine import ExportedNetwork  # noqa: E402
from skbilrp.layers import Normalize  # noqa: E402
from skbilrp.models import mobilenet_v2, vgg16  # noqa: E402
from skbilrp.models.mobilenet import ConvBNReLU6, InvertedResidual  # noqa: E402

TARGET = 0.5  # windowed push per probe ÷ forward per image, VGG-16 224 px, 16-px patches
EXACT_FACTOR = 16  # allowed error per op: this many eps times the magnitude of the summed terms
END_FACTOR = 1000  # allowed error end to end (float64): this many eps times max |dense|


# ------------------------------------------------------------------ recording


@dataclass
class Conv:
    """A convolution (BatchNorm folded in), then its activation's recorded ratio f(z)/z
    (ReLU: the 0/1 mask; ReLU6: 6/z above 6; None without activation)."""

    name: str
    weight: torch.Tensor  # (C_out, C_in / groups, k, k)
    mask: torch.Tensor | None  # (1, C_out, H, W)
    stride: int = 1
    padding: int = 1
    groups: int = 1


@dataclass
class Pool:
    """A 2×2 max-pool with stride 2: the recorded winner of each output (flat index)."""

    name: str
    index: torch.Tensor  # (1, C, H/2, W/2) into the (H, W) input plane
    in_size: int  # H (= W) of its input


@dataclass
class Save:
    """Keep the flow for a residual :class:`Add`."""

    name: str


@dataclass
class Add:
    """Add the flow kept by the last :class:`Save` (a residual connection)."""

    name: str


@dataclass
class Mean:
    """Global average pooling to (P, C)."""

    name: str


@dataclass
class Recording:
    scale: torch.Tensor  # (1, 3, H, W): x / std, the input part that carries relevance
    layers: list  # Conv, Pool, Save, Add, Mean, in order


@torch.no_grad()
def record(model: nn.Sequential, x: torch.Tensor) -> Recording:
    """One forward of ``vgg16(...)`` on one image ``x`` (1, 3, H, W) with plain torch ops."""
    norm, features = model.normalize, model.features
    assert isinstance(norm, Normalize)
    z = (x - norm.mean) / norm.std
    layers: list = []
    modules = list(features)
    block, conv = 1, 0
    for i, m in enumerate(modules):
        if isinstance(m, nn.Conv2d):
            assert m.kernel_size == (3, 3) and m.padding == (1, 1) and m.stride == (1, 1)
            assert isinstance(modules[i + 1], nn.ReLU)
            z = F.conv2d(z, m.weight, m.bias, padding=1)
            conv += 1
            layers.append(Conv(f"conv{block}_{conv}", m.weight.detach(), (z > 0).to(z.dtype)))
            z = z.clamp(min=0)
        elif isinstance(m, nn.MaxPool2d):
            assert m.kernel_size == 2 and m.stride == 2 and m.padding == 0
            size = z.shape[-1]
            z, idx = F.max_pool2d(z, 2, 2, return_indices=True)
            layers.append(Pool(f"pool{block}", idx, size))
            block, conv = block + 1, 0
        else:
            assert isinstance(m, nn.ReLU), f"unexpected module {m}"
    # LRP-0 with the Normalize shift absorbed: the input flow is probe ⊙ x / std
    return Recording(x / norm.std, layers)


@torch.no_grad()
def record_mobilenet(model: nn.Sequential, x: torch.Tensor) -> Recording:
    """One forward of ``mobilenet_v2(...)`` on one image, each BatchNorm folded into its
    conv (as the engine folds them); ReLU6 recorded as its ratio f(z)/z."""
    norm = model.normalize
    z = (x - norm.mean) / norm.std
    layers: list = []

    def conv_bn(name: str, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: bool) -> None:
        nonlocal z
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w = conv.weight * scale[:, None, None, None]
        conf = dict(stride=conv.stride[0], padding=conv.padding[0], groups=conv.groups)
        z = F.conv2d(z, w, bn.bias - bn.running_mean * scale, **conf)
        ratio = None
        if act:
            a = z.clamp(0, 6)
            ratio = torch.where(z != 0, a / torch.where(z != 0, z, 1), 0)
            z = a
        layers.append(Conv(name, w, ratio, **conf))

    for b, block in enumerate(model.features):
        if isinstance(block, ConvBNReLU6):
            conv_bn(f"features.{b}", block[0], block[1], True)
            continue
        assert isinstance(block, InvertedResidual)
        skip = z
        if block.use_res_connect:
            layers.append(Save(f"features.{b} (skip)"))
        mods = list(block.conv)
        for j, m in enumerate(mods):
            if isinstance(m, ConvBNReLU6):
                conv_bn(f"features.{b}.conv.{j}", m[0], m[1], True)
            elif isinstance(m, nn.Conv2d):
                conv_bn(f"features.{b}.conv.{j}", m, mods[j + 1], False)
        if block.use_res_connect:
            z = z + skip
            layers.append(Add(f"features.{b} (add)"))
    assert torch.allclose(z.mean((2, 3)), model(x), rtol=1e-4, atol=1e-4 * float(z.abs().max())), \
        "the recorded forward is not the model's"
    layers.append(Mean("pool"))
    return Recording(x / norm.std, layers)


def patch_probes(size: int, patch: int, dtype: torch.dtype) -> torch.Tensor:
    """Indicators of the patches (row-major), all channels: (P, 3, size, size)."""
    g = size // patch
    labels = (torch.arange(size) // patch)[:, None] * g + (torch.arange(size) // patch)[None, :]
    return (labels[None] == torch.arange(g * g)[:, None, None]).to(dtype)[:, None].expand(-1, 3, -1, -1)


# ------------------------------------------------------------------ dense push


def push_dense(rec: Recording, u: torch.Tensor, layers: Sequence | None = None, absolute: bool = False,
               saved: list | None = None):
    """The engine's push for one sample: ``u`` (P, C, H, W) through ``layers``; ``saved``
    holds the flows kept for residual adds still open."""
    saved = [] if saved is None else saved
    for layer in rec.layers if layers is None else layers:
        if isinstance(layer, Conv):
            w = layer.weight.abs() if absolute else layer.weight
            u = F.conv2d(u, w, stride=layer.stride, padding=layer.padding, groups=layer.groups)
            if layer.mask is not None:
                u = u.mul_(layer.mask)
        elif isinstance(layer, Pool):
            p, c = u.shape[:2]
            idx = layer.index.flatten(2).expand(p, -1, -1)
            u = u.flatten(2).gather(2, idx).reshape(p, c, *layer.index.shape[2:])
        elif isinstance(layer, Save):
            saved.append(u)
        elif isinstance(layer, Add):
            u = u + saved.pop()
        else:
            u = u.mean((2, 3))
    return u


# ------------------------------------------------------------------ windowed push


@dataclass
class Window:
    """Square crops of one size ``s``, probe ``p``'s at rows ``row[p] .. row[p] + s`` and
    columns ``col[p] ..``, on a map of ``size`` (crops may hang over its border)."""

    row: torch.Tensor  # (P,) int64
    col: torch.Tensor
    s: int
    size: int

    def rows(self) -> torch.Tensor:
        return self.row[:, None] + torch.arange(self.s)

    def cols(self) -> torch.Tensor:
        return self.col[:, None] + torch.arange(self.s)

    def on_map(self) -> torch.Tensor:
        """(P, 1, s, s): whether each crop entry lies on the map."""
        r, c = self.rows(), self.cols()
        inside = lambda i: (i >= 0) & (i < self.size)  # noqa: E731
        return (inside(r)[:, :, None] & inside(c)[:, None, :])[:, None]


def _padded_grid(win: Window, plane: torch.Tensor, fill: float) -> tuple:
    """``plane`` (C, H, W) padded by ``s`` on each side (a crop starts at most s - 1 before
    the map: it always overlaps it), and the crop rows and columns in the padded plane."""
    m = win.s
    padded = F.pad(plane, (m, m, m, m), value=fill)
    rows, cols = win.rows() + m, win.cols() + m
    # negative indices would wrap around silently
    assert int(rows.min()) >= 0 and int(cols.min()) >= 0 and int(rows.max()) < padded.shape[-2] \
        and int(cols.max()) < padded.shape[-1], "crop outside its padded plane"
    return padded, rows[:, :, None], cols[:, None, :]


def crop(plane: torch.Tensor, win: Window, fill: float) -> torch.Tensor:
    """Each probe's crop of one recorded ``plane`` (1, C, H, W): (P, C, s, s), ``fill`` off the map."""
    padded, rows, cols = _padded_grid(win, plane[0], fill)
    return padded[:, rows, cols].transpose(0, 1)  # (C, P, s, s) -> (P, C, s, s)


def crop_each(u: torch.Tensor, win: Window) -> torch.Tensor:
    """Probe ``p``'s crop of its own map ``u[p]`` (P, C, H, W): (P, C, s, s), zero off the map."""
    padded, rows, cols = _padded_grid(win, u.transpose(0, 1), 0.0)  # (C, P, H + 2s, W + 2s)
    return padded[:, torch.arange(u.shape[0])[:, None, None], rows, cols].transpose(0, 1)


def _uniform(values: torch.Tensor) -> int:
    """The one value all probes share (their crops move alike: patches on a grid)."""
    assert bool((values == values[0]).all()), "probes' crops do not move alike"
    return int(values[0])


def align_to_stride(u: torch.Tensor, win: Window, st: int, pad: int) -> tuple[torch.Tensor, Window]:
    """Crops whose offsets differ modulo a conv's stride read the input grid at different
    phases, so one batched conv cannot serve them: widen every crop by ``st - 1`` zero
    rows and columns, put in front where needed, so that all start on one phase."""
    dr, dc = (win.row + pad) % st, (win.col + pad) % st
    if bool((dr == dr[0]).all() and (dc == dc[0]).all()):
        return u, win
    out = u.new_zeros(*u.shape[:2], win.s + st - 1, win.s + st - 1)
    for a in range(st):
        for b in range(st):
            rows = ((dr == a) & (dc == b)).nonzero().flatten()
            out[rows, :, a:a + win.s, b:b + win.s] = u[rows]
    return out, Window(win.row - dr, win.col - dc, win.s + st - 1, win.size)


def conv_window(u: torch.Tensor, layer: Conv, win: Window) -> tuple[torch.Tensor, Window]:
    """Conv on crops: output ``o`` reads inputs ``o*st - pad .. o*st - pad + k - 1``, so the
    crop [a, a + s) reaches outputs ceil((a + pad - k + 1) / st) .. floor((a + s - 1 + pad) / st).
    Zero-padding the crop to the inputs those outputs read gives them exactly (the flow is
    zero outside the crop, as the map's own zero padding is); the mask crop (zero off the
    map) then removes what falls outside the map (3×3, padding 1: a crop two pixels wider)."""
    k, st, pad = layer.weight.shape[-1], layer.stride, layer.padding
    u, win = align_to_stride(u, win, st, pad)
    first = [-torch.div(-(a + pad - k + 1), st, rounding_mode="floor") for a in (win.row, win.col)]
    last = [torch.div(a + win.s - 1 + pad, st, rounding_mode="floor") for a in (win.row, win.col)]
    s = int(max((last[0] - first[0]).max(), (last[1] - first[1]).max())) + 1
    out = Window(first[0], first[1], s, (win.size + 2 * pad - k) // st + 1)
    before = _uniform(torch.cat([win.row - first[0] * st + pad, win.col - first[1] * st + pad]))
    after = (s - 1) * st + k - before - win.s  # negative: the last inputs are not read
    if before == after:  # the conv pads itself (a separate F.pad copy made VGG's push 1.4x slower)
        u = F.conv2d(u, layer.weight, stride=st, padding=before, groups=layer.groups)
    else:
        u = F.conv2d(F.pad(u, (before, after, before, after)), layer.weight, stride=st, groups=layer.groups)
    if layer.mask is None:  # no activation: the input is zero off the map, so is a 1×1 conv's output
        assert k == 1, "a conv without activation must be 1×1 here"
        return u, out
    return u.mul_(crop(layer.mask, out, 0.0)), out


def add_window(u: torch.Tensor, win: Window, kept: tuple) -> torch.Tensor:
    """Residual add on crops: the kept crop, padded into the (larger) current one."""
    v, vwin = kept
    before = _uniform(torch.cat([vwin.row - win.row, vwin.col - win.col]))
    after = win.s - vwin.s - before
    assert before >= 0 and after >= 0, "the kept crop must lie inside the current one"
    return u + F.pad(v, (before, after, before, after))


def pool_window(u: torch.Tensor, layer: Pool, win: Window) -> tuple[torch.Tensor, Window]:
    """2×2 max-pool on crops: each pooled output whose block meets the crop takes the flow
    at its recorded winner, zero where the winner lies outside the crop."""
    row0, col0 = torch.div(win.row, 2, rounding_mode="floor"), torch.div(win.col, 2, rounding_mode="floor")
    last = torch.div(torch.stack([win.row, win.col]) + win.s - 1, 2, rounding_mode="floor")
    s = int((last - torch.stack([row0, col0])).max()) + 1
    out = Window(row0, col0, s, win.size // 2)
    idx = crop(layer.index, out, -1)  # (P, C, s, s) flat winners in the input plane; -1 off the map
    r = torch.div(idx, layer.in_size, rounding_mode="floor") - win.row[:, None, None, None]
    c = idx % layer.in_size - win.col[:, None, None, None]
    inside = (idx >= 0) & (r >= 0) & (r < win.s) & (c >= 0) & (c < win.s)
    local = torch.where(inside, r * win.s + c, 0)
    p, ch = u.shape[:2]
    v = u.reshape(p, ch, -1).gather(2, local.reshape(p, ch, -1)).reshape(p, ch, s, s)
    return v.mul_(inside.to(v.dtype)), out


def scatter_dense(u: torch.Tensor, win: Window) -> torch.Tensor:
    """Crops (P, C, s, s) into full maps (P, C, size, size); off-map entries are zero."""
    p, c, s, m = *u.shape[:3], win.s
    full = u.new_zeros(p, c, win.size + 2 * m, win.size + 2 * m)
    flat = ((win.rows() + m)[:, :, None] * full.shape[-1] + (win.cols() + m)[:, None, :]).reshape(p, 1, -1)
    full.view(p, c, -1).scatter_(2, flat.expand(p, c, -1), u.reshape(p, c, -1))
    return full[:, :, m:m + win.size, m:m + win.size]


def step_window(u: torch.Tensor, layer, win: Window, saved: list) -> tuple[torch.Tensor, Window]:
    """One layer on crops; ``saved`` holds the (crops, window) kept for residual adds."""
    if isinstance(layer, Conv):
        return conv_window(u, layer, win)
    if isinstance(layer, Pool):
        return pool_window(u, layer, win)
    if isinstance(layer, Save):
        saved.append((u, win))
        return u, win
    if isinstance(layer, Add):
        return add_window(u, win, saved.pop()), win
    return u.sum((2, 3)) / win.size ** 2, win  # Mean: zero off the map, so the crop's sum


def push_windowed(rec: Recording, probes: torch.Tensor, k: torch.Tensor, patch: int, switch: int):
    """Windowed push of the indicators ``probes`` of patches ``k`` (row-major indices)
    through ``rec.layers[:switch]``, then dense through the rest."""
    size = rec.scale.shape[-1]
    g = size // patch
    win = Window(k // g * patch, k % g * patch, patch, size)
    u = crop(rec.scale, win, 0.0) * crop_each(probes, win)
    saved: list = []
    for layer in rec.layers[:switch]:
        u, win = step_window(u, layer, win, saved)
    if u.dim() == 2:  # pooled to (P, C) on the crops
        return u
    return push_dense(rec, scatter_dense(u, win), rec.layers[switch:], saved=[scatter_dense(*v) for v in saved])


def window_sizes(rec: Recording, patch: int) -> list[tuple[int, int]]:
    """(crop size, map size) entering each layer, and after the last, for an aligned patch."""
    s, size, out = patch, rec.scale.shape[-1], []
    row = 0
    for layer in rec.layers:
        out.append((s, size))
        if isinstance(layer, Conv):
            row, s = row - 1, s + 2
        else:
            # patches start on multiples of the patch size: their crops share the parity of row
            row0 = row // 2
            s, row, size = (row + s - 1) // 2 - row0 + 1, row0, size // 2
    out.append((s, size))
    return out


def flops(rec: Recording, patch: int, switch: int) -> float:
    """Multiply-adds of the convolutions of one probe pushed with the given switch."""
    total = 0.0
    sizes = window_sizes(rec, patch)
    for i, layer in enumerate(rec.layers):
        if isinstance(layer, Conv):
            c_out, c_in = layer.weight.shape[:2]
            s_out, size = sizes[i + 1]
            side = s_out if i < switch else size
            total += c_out * c_in * 9 * side * side
    return total


def footprint_ratio(model: nn.Module, size: int, patch: int) -> tuple[float, float]:
    """Multiply-adds of every conv of ``model`` on the probes' windows ÷ dense, for patch
    probes at ``size`` px: (uniform crops of the widest window, capped at the map; the
    exact footprint of each probe, clipped to the map, averaged over the probes). Windows
    follow the convs and max-pools in execution order (a residual add's window is its
    longer branch's, which contains the skip's); only their geometry counts. On VGG-16 the
    uniform ratio is :func:`flops`' all-windowed one, reached independently."""
    convs: list[tuple] = []
    hooks = [m.register_forward_hook(lambda m, i, o: convs.append((m, o.shape[-1])))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    g = size // patch
    lo, hi = torch.arange(g) * patch, torch.arange(g) * patch + patch - 1  # per patch row/column
    uniform = clipped = dense = 0.0
    for m, n_out in convs:
        k, st, pad = (nn.modules.utils._pair(v)[0] for v in (m.kernel_size, m.stride, m.padding))
        macs = m.out_channels * m.in_channels // m.groups * k * k if isinstance(m, nn.Conv2d) else 0
        # output o reads inputs o*st - pad .. o*st - pad + k - 1
        lo = torch.div(lo + pad - k + 1 + st - 1, st, rounding_mode="floor")
        hi = torch.div(hi + pad, st, rounding_mode="floor")
        side = hi.clamp(max=n_out - 1) - lo.clamp(min=0) + 1  # clipped footprint per row/column
        uniform += macs * min(int((hi - lo).max()) + 1, n_out) ** 2
        clipped += macs * float((side[:, None] * side[None, :]).float().mean())
        dense += macs * n_out ** 2
    return uniform / dense, clipped / dense


# ------------------------------------------------------------------ checks


@dataclass
class Net:
    """A network of the study: the model, its plain-torch recorder, the model its
    reference forward runs (BatchNorms folded, as the engine folds them), and which
    switch layers to time."""

    title: str
    model: nn.Sequential
    recorder: Callable[[nn.Sequential, torch.Tensor], Recording]
    forward: nn.Module
    candidates: Callable[[Recording, int], list]


def check_engine(net: Net, x: torch.Tensor, patch: int, picks: Sequence[int]) -> float:
    """Dense push against the engine in float64 on a few probes: max error ÷ max |engine|."""
    m64, x64 = net.model.double(), x.double()
    try:
        rec = net.recorder(m64, x64)
        probes = patch_probes(x.shape[-1], patch, torch.float64)[list(picks)]
        ours = push_dense(rec, probes * rec.scale).flatten(1)
        ref = ExportedNetwork(m64, "zero", torch.float64).record(x64).push(probes.contiguous(), channel_axis=1)
    finally:
        net.model.float()
    return float((ours - ref).abs().max() / ref.abs().max())


def check_windowed(net: Net, x: torch.Tensor, patch: int, picks: Sequence[int], switch: int) -> dict:
    """Windowed against dense in float64 on the given probes, pushed as one batch.

    Per op: each windowed op, fed the crops of the dense flow, must give the dense op's
    output (scattered back, so any flow outside the crops shows up as an error) to
    ``EXACT_FACTOR`` eps times the sum of |terms| of that op (``|W| |u|``; for the exact
    gathers of a pool, ``|u|`` gathered). Chained: in the windowed push itself, every
    crop entry off the map must be zero (else it would leak into the next op; the
    scatter to dense drops it). Both together make the chain the dense push up to
    rounding. End to end, the per-op roundings propagate through the later layers:
    reported relative to max |dense|, and held to ``END_FACTOR`` eps of it (the sum of
    |terms| of the whole network, ``|W|`` all through, is about 1e16 times the flows on
    the random VGG, so it bounds nothing useful).
    """
    m64, x64 = net.model.double(), x.double()
    try:
        rec = net.recorder(m64, x64)
        k = torch.tensor(list(picks))
        g = x.shape[-1] // patch
        probes = patch_probes(x.shape[-1], patch, torch.float64)[k]
        eps, tiny = torch.finfo(torch.float64).eps, torch.finfo(torch.float64).tiny
        worst, leaks, u = 0.0, 0, probes * rec.scale
        win = Window(k // g * patch, k % g * patch, patch, x.shape[-1])
        chain, kept, chain_kept = crop_each(u, win), [], []
        for layer in rec.layers[:switch]:
            if isinstance(layer, Save):
                kept.append((u, win))
                chain, _ = step_window(chain, layer, win, chain_kept)
                continue
            if isinstance(layer, Add):
                v, vwin = kept.pop()
                out, out_win = add_window(crop_each(u, win), win, (crop_each(v, vwin), vwin)), win
                dense, terms = u + v, u.abs() + v.abs()
            else:
                out, out_win = step_window(crop_each(u, win), layer, win, [])
                dense = push_dense(rec, u, [layer])
                terms = push_dense(rec, u.abs(), [layer], absolute=True)
            err = ((out if out.dim() == 2 else scatter_dense(out, out_win)) - dense).abs()
            worst = max(worst, float((err / (eps * terms).clamp(min=tiny)).max()))
            chain, _ = step_window(chain, layer, win, chain_kept)
            if chain.dim() == 4:
                leaks += int((~out_win.on_map() & (chain != 0)).sum())
            u, win = dense, out_win
        dense = push_dense(rec, probes * rec.scale).flatten(1)
        end = push_windowed(rec, probes, k, patch, switch).flatten(1)
    finally:
        net.model.float()
    end_err = float((end - dense).abs().max() / dense.abs().max())
    return {
        "per_op_eps": worst,  # largest per-op error in units of eps x sum of |terms|
        "leaks": leaks,  # non-zero crop entries off the map in the chained push
        "end_to_end": end_err,
        "within": worst <= EXACT_FACTOR and leaks == 0 and end_err <= END_FACTOR * eps,
        "probes": len(picks),
    }


# ------------------------------------------------------------------ timing


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def vgg_candidates(rec: Recording, patch: int) -> list:
    """Switch layers whose multiply-adds are within twice the fewest (others cannot win)."""
    cost = {j: flops(rec, patch, j) for j in range(len(rec.layers) + 1)}
    return [j for j, f in cost.items() if f <= 2 * min(cost.values())]


def block_candidates(rec: Recording, patch: int) -> list:
    """Switch layers at block boundaries (before a block's skip or its first conv), and the end."""
    starts = [j for j, layer in enumerate(rec.layers)
              if isinstance(layer, Save) or (layer.name.endswith(".conv.0") and not isinstance(rec.layers[j - 1], Save))
              or (isinstance(layer, Conv) and "conv" not in layer.name)]
    return starts + [len(rec.layers)]


def choose_switch(net: Net, rec: Recording, probes: torch.Tensor, k: torch.Tensor, patch: int,
                  repeats: int) -> tuple[int, dict]:
    """The candidate switch layer with the fastest windowed push (best of ``repeats``)."""
    times = {}
    with torch.no_grad():
        for j in net.candidates(rec, patch):
            push_windowed(rec, probes, k, patch, j)
            times[j] = min(timed(lambda: push_windowed(rec, probes, k, patch, j)) for _ in range(repeats))
    return min(times, key=times.get), times


def layer_name(rec: Recording, j: int) -> str:
    return "end (all windowed)" if j >= len(rec.layers) else f"before {rec.layers[j].name}"


def measure(net: Net, x: torch.Tensor, patch: int, batch: int, rounds: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    rec = net.recorder(net.model, x)
    k = torch.arange(batch)
    probes = patch_probes(x.shape[-1], patch, x.dtype)[k].contiguous()
    images = x.expand(batch, -1, -1, -1).contiguous() + 0.01 * torch.rand(batch, *x.shape[1:])
    switch, calib = choose_switch(net, rec, probes, k, patch, 2)
    methods = {
        "forward": lambda: net.forward(images),
        "dense": lambda: push_dense(rec, probes * rec.scale),
        "windowed": lambda: push_windowed(rec, probes, k, patch, switch),
    }
    times: dict[str, list[float]] = {k: [] for k in methods}
    with torch.no_grad():
        for fn in methods.values():
            fn()  # warm-up
        for r in range(rounds):
            order = list(methods) if r % 2 == 0 else list(reversed(methods))
            for name in order:
                times[name].append(timed(methods[name]))
    return {"times": times, "switch": switch, "calib": calib, "rec": rec}


def ratio(times: dict, a: str, b: str) -> str:
    per = [x / y for x, y in zip(times[a], times[b])]
    return (f"{statistics.median(times[a]) / statistics.median(times[b]):5.3f} "
            f"[{min(per):.3f}-{max(per):.3f}]")


def vgg_net() -> Net:
    model = vgg16(cut="pool5")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        # non-zero biases, so that the masks are not those of a bias-free net
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.data.uniform_(-0.05, 0.05)
    return Net("VGG-16 to pool5 (random weights)", model, record, model, vgg_candidates)


def mobilenet_net() -> Net:
    model = mobilenet_v2()
    return Net("MobileNetV2 (ImageNet weights)", model, record_mobilenet, fuse(model), block_candidates)


def run_case(net: Net, name: str, size: int, patch: int, batch: int, rounds: int, threads: Sequence[int],
             picks: Sequence[int]) -> dict:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        x = torch.rand(1, 3, size, size)
    p = (size // patch) ** 2
    print(f"\n== {name}: {net.title}, {size} px, {patch}-px patches, {p} probes; "
          f"timed on {batch} probes (every probe costs the same: crops are uniform)")
    rec = net.recorder(net.model, x)
    is_vgg = net.recorder is record
    if is_vgg:
        print("crop size entering each layer / map size: "
              + ", ".join(f"{s}/{m}" for s, m in window_sizes(rec, patch)))
    uniform, clipped = footprint_ratio(net.model, size, patch)
    print(f"conv multiply-adds on the windows / dense, all layers windowed: uniform crops {uniform:.3f}, "
          f"each probe's clipped footprint {clipped:.3f}")
    results = {}
    for t in threads:
        results[t] = measure(net, x, patch, batch, rounds, t)
        res = results[t]
        print(f"[{t} thread(s)] switch candidates (best of 2, s): "
              + ", ".join(f"{layer_name(rec, j)} {v:.3f}" for j, v in res["calib"].items()))
        macs = (f"; windowed conv multiply-adds / dense: {flops(rec, patch, res['switch']) / flops(rec, patch, 0):.3f}"
                if is_vgg else "")
        print(f"[{t} thread(s)] chosen switch: {layer_name(rec, res['switch'])} (layer {res['switch']}){macs}")
    print(f"peak RSS after the timings: {peak_rss_mib():.0f} MiB")
    eps = torch.finfo(torch.float64).eps
    with torch.no_grad():
        err = check_engine(net, x, patch, picks[:3])
    print(f"dense push vs skbilrp engine (float64, {len(picks[:3])} probes): max err / max |engine| = {err:.2e} "
          f"(limit {END_FACTOR} eps): {'OK' if err <= END_FACTOR * eps else 'FAILED'}")
    if err > END_FACTOR * eps:
        raise SystemExit("the dense push is not the engine's")
    # the chosen switches, and all layers windowed (so that every window rule is checked)
    for switch in sorted({res["switch"] for res in results.values()} | {len(rec.layers)}):
        with torch.no_grad():
            check = check_windowed(net, x, patch, picks, switch)
        print(f"windowed vs dense (float64, {check['probes']} probes incl. corners and edges, switch "
              f"{layer_name(rec, switch)}): per op, max err = {check['per_op_eps']:.2f} eps x sum of |terms| "
              f"(limit {EXACT_FACTOR}); off-map crop entries non-zero in the chain: {check['leaks']}; end to end, "
              f"max err / max |dense| = {check['end_to_end']:.2e} = {check['end_to_end'] / eps:.1f} eps "
              f"(limit {END_FACTOR}): {'OK' if check['within'] else 'FAILED'}")
        if not check["within"]:
            raise SystemExit("windowed push differs from the dense push beyond rounding")
    print(f"    threads  forward s  dense s  windowed s   windowed/dense        windowed/forward      "
          f"dense/forward   (medians of {rounds} rounds; ratio of medians [per-round range])")
    for t, res in results.items():
        tm = res["times"]
        print(f"    {t:7d}  {statistics.median(tm['forward']):9.3f}  {statistics.median(tm['dense']):7.3f}  "
              f"{statistics.median(tm['windowed']):10.3f}   {ratio(tm, 'windowed', 'dense')}  "
              f"{ratio(tm, 'windowed', 'forward')}  {ratio(tm, 'dense', 'forward')}")
    if is_vgg and (size, patch) == (224, 16):
        worst = max(statistics.median(r["times"]["windowed"]) / statistics.median(r["times"]["forward"])
                    for r in results.values())
        print(f"    target windowed/forward < {TARGET}: {'met' if worst < TARGET else 'MISSED'} (worst {worst:.3f})")
    return results


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def edge_picks(size: int, patch: int) -> list[int]:
    """Probe indices at the corners, the edge middles and the centre, plus an off-centre one."""
    g = size // patch
    pos = [(0, 0), (g // 2, g // 2), (g - 1, g - 1), (0, g - 1), (g - 1, 0), (0, g // 2), (g // 2, 0),
           (g - 1, g // 2), (g // 2, g - 1), (1, 2)]
    return list(dict.fromkeys(r * g + c for r, c in pos))


CASES = {
    "vgg224": (vgg_net, "224 px / 16-px patches", 224, 16),
    "vgg128": (vgg_net, "128 px / 8-px patches", 128, 8),
    "mnv2": (mobilenet_net, "224 px / 16-px patches", 224, 16),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: a quarter of the sizes, 3 rounds")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per method (default 5)")
    ap.add_argument("--batch", type=int, default=16, help="probes per timed push (default 16)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts (default 1 2)")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES),
                    help="vgg224: VGG-16, 224 px, 16-px patches; vgg128: 128 px, 8-px patches; "
                         "mnv2: MobileNetV2, 224 px, 16-px patches (default: all)")
    ap.add_argument("--as-is", action="store_true", help="keep the environment (no OMP/malloc tuning)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    print(f"windowed probe push prototype, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"torch {torch.__version__}, threads {args.threads}, {os.cpu_count()} CPUs")
    print(f"environment: OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES')}")
    print(f"command: python {' '.join(sys.argv)}")
    print("load average at start (1, 5, 15 min): " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    rounds = 3 if args.quick else args.rounds
    for key in args.cases:
        make, name, size, patch = CASES[key]
        if args.quick:  # a quarter of the size (at least 4 patches a side)
            size = max(size // 4, 4 * patch)
            name = f"{size} px / {patch}-px patches (quick)"
        run_case(make(), name, size, patch, args.batch, rounds, args.threads, edge_picks(size, patch))
    print(f"\npeak RSS {peak_rss_mib():.0f} MiB (float64 checks included); total {time.perf_counter() - t0:.0f} s; "
          "load average at end: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
