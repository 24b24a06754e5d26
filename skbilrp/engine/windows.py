"""Probes on their windows: a patch probe's flow is exactly zero outside the part of a
map that its patch can reach, so until that part covers most of the map each probe
carries only its crop.

In forward mode the engine pushes one probe per patch, each at the cost of about one
forward pass. In the early layers of a CNN a probe's flow is non-zero only on the
receptive-field footprint of its patch (a 16-px patch of a 224-px image reaches 18 × 18
pixels after VGG-16's first conv, 1/150 of the map). A :class:`WindowFlow` holds one crop
per probe, all of one size (crops move with their patches and may hang over the map's
border, where they are zero), and the 2-D convolutions, max-pools, activations and
residual sums that know windows map crops to crops: a convolution to the outputs whose
inputs meet the crop, a max-pool by gathering each output's recorded winner (zero where
it lies outside the crop), a sum of two crops into the box that holds both. Every other
operator gets the dense flow (:meth:`WindowFlow.materialize`); so does every operator
once the crops cover :data:`DENSE_AT` of the map. Nothing is approximated: off the crop
the dense flow is zero, and on it the windowed op sums the same terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["Window", "WindowFlow", "DENSE_AT", "start", "crop", "crop_each", "conv2d", "max_pool2d", "add", "finish"]

#: crops stop (the flow becomes dense) once they cover this share of the map: above it
#: the gathers of recorded states cost more than the conv work saved
DENSE_AT = 0.5


@dataclass(frozen=True, eq=False)  # holds tensors: compared by identity
class Window:
    """Crops of one size ``(h, w)``: probe ``k``'s covers rows ``row[k] .. row[k] + h - 1``
    and columns ``col[k] .. col[k] + w - 1`` of a map of size ``grid``."""

    row: torch.Tensor  # (K,) int64, may be negative (the crop hangs over the border)
    col: torch.Tensor
    size: tuple[int, int]
    grid: tuple[int, int]

    @property
    def share(self) -> float:
        """The share of the map one crop covers (crops hanging over the border count whole)."""
        return self.size[0] * self.size[1] / (self.grid[0] * self.grid[1])

    @cached_property
    def margin(self) -> tuple[int, int]:
        """Padding on each side of the map that holds every crop."""
        return tuple(max(0, -int(first.min()), int(first.max()) + s - g)
                     for first, s, g in zip((self.row, self.col), self.size, self.grid))

    @cached_property
    def indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column indices ``(K, h, 1)``, ``(K, 1, w)`` of each crop in the map
        padded by :attr:`margin` on each side (an op crops several states on one window)."""
        mh, mw = self.margin
        rows = self.row[:, None] + torch.arange(self.size[0], device=self.row.device) + mh
        cols = self.col[:, None] + torch.arange(self.size[1], device=self.col.device) + mw
        return rows[:, :, None], cols[:, None, :]

    def on_map(self, dtype: torch.dtype) -> torch.Tensor:
        """``(K, 1, 1, h, w)``: one where a crop entry lies on the map, zero off it."""
        inside = []
        for first, s, g in zip((self.row, self.col), self.size, self.grid):
            i = first[:, None] + torch.arange(s, device=first.device)
            inside.append((i >= 0) & (i < g))
        return (inside[0][:, :, None] & inside[1][:, None, :]).to(dtype)[:, None, None]


class WindowFlow:
    """A flow ``(K, N, C, H, W)`` kept as its crops ``data`` ``(K, N, C, h, w)`` on ``win``
    (zero off the crops and off the map)."""

    __slots__ = ("data", "win")

    def __init__(self, data: torch.Tensor, win: Window) -> None:
        self.data, self.win = data, win

    def materialize(self) -> torch.Tensor:
        """The dense flow ``(K, N, C, H, W)``."""
        k, n, c = self.data.shape[:3]
        (mh, mw), (gh, gw) = self.win.margin, self.win.grid
        full = self.data.new_zeros(k, n, c, gh + 2 * mh, gw + 2 * mw)
        rows, cols = self.win.indices
        full[torch.arange(k, device=rows.device)[:, None, None], :, :, rows, cols] = self.data.permute(0, 3, 4, 1, 2)
        return full[..., mh:mh + gh, mw:mw + gw]


def _dense_if_wide(data: torch.Tensor, win: Window) -> "WindowFlow | torch.Tensor":
    flow = WindowFlow(data, win)
    return flow.materialize() if win.share >= DENSE_AT else flow


def start(value: torch.Tensor, probe: torch.Tensor) -> Optional[WindowFlow]:
    """The flow ``probe * value`` of an image input as crops: each probe's crop is the
    bounding box of its support (one size for all, the largest); None where that does not
    pay (crops of :data:`DENSE_AT` of the image or more, no spatial axes)."""
    if probe.dim() != 5 or probe.requires_grad:  # reverse mode differentiates the push: keep it dense
        return None
    support = (probe != 0).any(2).any(1)  # (K, H, W)
    grid = tuple(support.shape[1:])
    some = support.flatten(1).any(1)
    if not bool(some.any()):
        return None
    firsts, sizes = [], []
    for axis in (2, 1):  # rows: any over columns; columns: any over rows
        hit = support.any(axis)  # (K, H) or (K, W)
        idx = torch.arange(hit.shape[1], device=hit.device)
        first = torch.where(hit, idx, hit.shape[1]).amin(1)
        last = torch.where(hit, idx, -1).amax(1)
        first = torch.where(some, first, 0)  # an empty probe: any crop holds its zero flow
        firsts.append(first)
        sizes.append(int((last - first)[some].max()) + 1)
    win = Window(firsts[0], firsts[1], tuple(sizes), grid)
    if win.share >= DENSE_AT:
        return None
    return WindowFlow(crop_each(probe, win) * crop(value, win), win)


def crop(plane: torch.Tensor, win: Window, fill: float = 0.0) -> torch.Tensor:
    """Each probe's crop of a recorded tensor ``(N|1, C|1, H|1, W|1)`` that broadcasts
    against the map: ``(K, N|1, C|1, h, w)``, ``fill`` off the map; a tensor without
    spatial extent is returned with a probe axis added."""
    if plane.dim() < 4:
        plane = plane.reshape((1,) * (4 - plane.dim()) + tuple(plane.shape))
    if plane.shape[-2:] == (1, 1):
        return plane[None]
    plane = plane.expand(*plane.shape[:2], *win.grid)
    mh, mw = win.margin
    padded = F.pad(plane, (mw, mw, mh, mh), value=fill) if mh or mw else plane
    rows, cols = win.indices
    return padded[:, :, rows, cols].permute(2, 0, 1, 3, 4)  # (N, C, K, h, w) -> (K, N, C, h, w)


def crop_each(flow: torch.Tensor, win: Window) -> torch.Tensor:
    """Probe ``k``'s crop of its own map ``flow[k]`` ``(K, N, C, H, W)``: ``(K, N, C, h, w)``,
    zero off the map."""
    mh, mw = win.margin
    padded = F.pad(flow, (mw, mw, mh, mh)) if mh or mw else flow
    rows, cols = win.indices
    k = torch.arange(flow.shape[0], device=rows.device)[:, None, None]
    return padded[k, :, :, rows, cols].permute(0, 3, 4, 1, 2)


def _alike(values: torch.Tensor) -> bool:
    """Whether all probes share one value (an offset, a phase): their crops move alike."""
    return bool((values == values[0]).all())


def _uniform(values: torch.Tensor) -> int:
    """The one value all probes share (their crops move alike), asserted."""
    if not _alike(values):  # pragma: no cover - every caller aligns first
        raise AssertionError("probes' crops do not move alike")
    return int(values[0])


def _phase_aligned(flow: WindowFlow, stride: tuple, padding: tuple) -> WindowFlow:
    """Crops whose starts differ modulo a stride read the input grid at different phases,
    and one batched conv cannot serve them: widen every crop by ``stride - 1`` zero rows
    (columns), put in front where needed, so that all start on one phase."""
    win, data = flow.win, flow.data
    starts = [win.row, win.col]
    shifts = [(first + p) % s for first, s, p in zip(starts, stride, padding)]
    if all(_alike(d) for d in shifts):
        return flow
    h, w = win.size
    out = data.new_zeros(*data.shape[:3], h + stride[0] - 1, w + stride[1] - 1)
    for a in range(stride[0]):
        for b in range(stride[1]):
            pick = ((shifts[0] == a) & (shifts[1] == b)).nonzero().flatten()
            out[pick, :, :, a:a + h, b:b + w] = data[pick]
    grown = Window(win.row - shifts[0], win.col - shifts[1], (h + stride[0] - 1, w + stride[1] - 1), win.grid)
    return WindowFlow(out, grown)


def _reach(first: torch.Tensor, size: int, k: int, stride: int, pad: int, dil: int) -> tuple:
    """Outputs ``o`` of a sliding window (read inputs ``o*stride - pad + dil*i``, ``i < k``)
    whose inputs meet ``[first, first + size)``: their first index per probe, their count,
    and how many inputs before and after the crop they read (negative: fewer)."""
    lo = first + pad - dil * (k - 1)
    o0 = -torch.div(-lo, stride, rounding_mode="floor")  # ceil
    o1 = torch.div(first + size - 1 + pad, stride, rounding_mode="floor")
    count = _uniform(o1 - o0) + 1
    before = _uniform(first + pad - o0 * stride)
    after = (count - 1) * stride + dil * (k - 1) + 1 - before - size
    return o0, count, before, after


def _out_grid(n_in: int, k: int, stride: int, pad: int, dil: int) -> int:
    """Outputs of a convolution along one axis."""
    return (n_in + 2 * pad - dil * (k - 1) - 1) // stride + 1


def conv2d(flow: WindowFlow, weight: torch.Tensor, stride, padding, dilation, groups: int) -> WindowFlow:
    """``F.conv2d`` without bias on crops: the crops of the outputs their inputs reach.

    Zero-padding each crop to the inputs those outputs read gives them exactly (the flow
    is zero off the crop, as the map's own zero padding is). Outputs off the map are not
    zeroed here: the caller multiplies by a state cropped with zero fill or by
    :meth:`Window.on_map`."""
    stride, padding, dilation = (tuple(v) if len(v) == 2 else (v[0],) * 2 for v in (stride, padding, dilation))
    flow = _phase_aligned(flow, stride, padding)
    win, data = flow.win, flow.data
    ks = tuple(weight.shape[-2:])
    reach = [_reach(first, s, k, st, p, d)
             for first, s, k, st, p, d in zip((win.row, win.col), win.size, ks, stride, padding, dilation)]
    (r0, h, bh, ah), (c0, w, bw, aw) = reach
    kk, n = data.shape[:2]
    x = data.flatten(0, 1)
    if bh == ah and bw == aw and bh >= 0 and bw >= 0:  # the conv pads itself (a separate pad copies)
        out = F.conv2d(x, weight, None, stride, (bh, bw), dilation, groups)
    else:
        out = F.conv2d(F.pad(x, (bw, aw, bh, ah)), weight, None, stride, 0, dilation, groups)
    grid = tuple(_out_grid(g, k, st, p, d) for g, k, st, p, d in zip(win.grid, ks, stride, padding, dilation))
    return WindowFlow(out.unflatten(0, (kk, n)), Window(r0, c0, (h, w), grid))


def finish(data: torch.Tensor, win: Window) -> "WindowFlow | torch.Tensor":
    """Crops of an op's output with what lies off the map zeroed; dense once they cover
    :data:`DENSE_AT` of it."""
    return _dense_if_wide(data.mul_(win.on_map(data.dtype)), win)


def max_pool2d(flow: WindowFlow, index: torch.Tensor, kernel, stride, padding,
               dilation) -> "WindowFlow | torch.Tensor":
    """Max-pool on crops: each output whose window meets a crop takes the flow at its
    recorded winner (``index`` ``(N, C, Ho, Wo)``, flat in the input map), zero where
    the winner lies outside the crop."""
    out_grid = tuple(index.shape[-2:])
    kernel, stride, padding, dilation = (tuple(v) if len(v) == 2 else (v[0],) * 2
                                         for v in (kernel, stride, padding, dilation))
    flow = _phase_aligned(flow, stride, padding)
    win, data = flow.win, flow.data
    reach = [_reach(first, s, k, st, p, d) for first, s, k, st, p, d
             in zip((win.row, win.col), win.size, kernel, stride, padding, dilation)]
    (r0, h, _, _), (c0, w, _, _) = reach
    out = Window(r0, c0, (h, w), tuple(out_grid))
    idx = crop(index, out, -1)  # (K, N, C, h, w); -1 off the map
    width = win.grid[1]
    r = torch.div(idx, width, rounding_mode="floor") - win.row[:, None, None, None, None]
    c = idx % width - win.col[:, None, None, None, None]
    inside = (idx >= 0) & (r >= 0) & (r < win.size[0]) & (c >= 0) & (c < win.size[1])
    local = torch.where(inside, r * win.size[1] + c, 0)
    k, n, ch = data.shape[:3]
    picked = data.reshape(k, n, ch, -1).gather(3, local.expand(k, n, ch, h, w).reshape(k, n, ch, -1))
    picked = picked.reshape(k, n, ch, h, w).mul_(inside.to(data.dtype))
    return _dense_if_wide(picked, out)


def add(a: WindowFlow, b: WindowFlow, coef: float = 1.0) -> "WindowFlow | torch.Tensor":
    """``a + coef * b`` on the box that holds both crops; dense where the crops of the two
    do not move alike (their offset differs between probes) or the maps differ."""
    wa, wb = a.win, b.win
    if wa.grid != wb.grid or a.data.shape[1:3] != b.data.shape[1:3]:
        return a.materialize() + b.materialize() * coef
    dr, dc = wb.row - wa.row, wb.col - wa.col
    if not (_alike(dr) and _alike(dc)):
        return a.materialize() + b.materialize() * coef
    dr, dc = int(dr[0]), int(dc[0])
    top, left = min(0, dr), min(0, dc)
    h = max(wa.size[0], dr + wb.size[0]) - top
    w = max(wa.size[1], dc + wb.size[1]) - left
    win = Window(wa.row + top, wa.col + left, (h, w), wa.grid)

    def placed(data, r, c):
        return F.pad(data, (c, w - c - data.shape[-1], r, h - r - data.shape[-2]))

    out = placed(a.data, -top, -left) + placed(b.data, dr - top, dc - left) * coef  # * 1.0 is exact
    return _dense_if_wide(out, win)
