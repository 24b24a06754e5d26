"""Ops with weights, under their module's Rule (bias modes absorb / share / mass / flat).

``z = W a + b``: ``u_out = (z / z^rho) ⊙ rho(W) u_in``; ``bias="share"`` adds
``(z / z^rho) ⊙ (s ⊙ |rho(W)| (sign(a) ⊙ u_in) + r ⊙ coverage)`` with the bounded share
``s = rho(b) / max(|rho(W)| |a|, |rho(b)|)`` and its remainder ``r = rho(b) - s |rho(W)| |a|``
(:func:`bounded_share`); ``"mass"`` adds the same with ``|rho(W)|`` replaced by ``1_W``,
the layer's connectivity (ones where ``W`` connects an input to a unit): for a Linear a
sum over the input features, for a convolution one output channel per group, so no
second pass through the weights; ``"flat"`` adds ``(z / z^rho) ⊙ rho(b) ⊙ coverage``;
z^B: ``(z / z^B) ⊙ (W (x ⊙ v) - W⁺ (l ⊙ v) - W⁻ (h ⊙ v))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ...rules import ZBox
from .. import windows
from ..windows import WindowFlow
from . import InputFlow, RelevanceOp, aten, flat_apply, flows_only_through, materialize, relevance_op, safe_divide


def bounded_share(bias: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Under ``bias="share"``, how a unit's bias ``b`` is passed on: ``(share, remainder)``.

    Each input ``j`` of the unit takes ``share * |c_j|`` of it, ``c_j`` its contribution
    and ``size = sum_j |c_j|``, with ``share = b / max(size, |b|)``: in proportion to the
    contribution sizes, and at most one-to-one. Without the bound a unit whose inputs
    nearly cancel or vanish (depthwise convs with folded BatchNorm: ``|b| / size`` up
    to 4e6 on MobileNetV2) hands each input many times its own contribution, and deep
    stacks multiply that up to garbage (float32 relevance of 1e17 and more). The
    remainder ``b - share * size``, non-zero only where ``|b| > size`` (all of ``b`` where
    the unit has no contributions), is spread over the input region under the unit as
    ``"flat"`` does, so relevance still conserves. ``remainder`` is None where it is zero
    everywhere (no flat term to add then)."""
    share = safe_divide(bias, torch.maximum(size, bias.abs()))
    over = bias.abs() > size
    if not bool(over.any()):
        return share, None
    return share, torch.where(over, bias - share * size, torch.zeros_like(bias))


def bounded_mass(bias: torch.Tensor, size: torch.Tensor, like: torch.Tensor) -> tuple:
    """Under ``bias="mass"``, how the biases ``bias`` of units with input sizes ``size``
    (both broadcastable to ``like``, the units) are passed on: ``(1 / size, None, None)``
    where no bias exceeds its sizes, the share being ``bias ⊗ (1 / size)`` (rank one, no
    tensor of the units' size); else ``(None, share, remainder)`` of :func:`bounded_share`."""
    if 0 < (float(bias.abs().max()) if bias.numel() else 0.0) <= float(size.min()):
        return 1 / size, None, None
    return (None, *bounded_share(bias.expand_as(like), size.expand_as(like)))


@dataclass
class WeightedState:
    scale: Optional[torch.Tensor]
    bounds: Optional[tuple] = None
    sign: Optional[torch.Tensor] = None
    share: Optional[torch.Tensor] = None
    #: what the bounded share leaves of the bias (spread as under "flat"): see bounded_share
    remainder: Optional[torch.Tensor] = None
    #: "mass" on a Linear where no bias exceeds its unit's input sizes: ``1 / sizes`` per
    #: token, the share being ``b ⊗ (1 / sizes)`` (rank one, no tensor of the output's size)
    inv_size: Optional[torch.Tensor] = None


@relevance_op(aten.linear.default, aten.conv1d.default, aten.conv2d.default, aten.conv2d.padding,
              aten.conv1d.padding)
class Weighted(RelevanceOp):
    """Linear and convolution layers (any stride, padding, dilation, groups)."""

    windowed = True

    def __init__(self, node, network) -> None:
        super().__init__(node, network)
        self.rule = network.rule_for(node)
        self.channels_first = node.target is not aten.linear.default
        self._params: Optional[tuple] = None

    def _apply(self, x, w, b, conf):
        return self.op(x, w, b, *conf)

    def _apply_flow(self, flow, w, conf):
        """The layer without bias on a flow ``(K, *value.shape)``."""
        if self.channels_first:
            return flat_apply(self.op, flow, w, None, *conf)
        return self.op(flow, w, None)

    def _prepare(self, w: torch.Tensor, b: Optional[torch.Tensor]) -> tuple:
        if self._params is None or self._params[0] is not w:
            rule = self.rule
            w_rho = rule.modify(w)
            b_rho = None if b is None else rule.modify(b)
            has_bias = b is not None and not isinstance(rule, ZBox)
            extra = {}
            if has_bias:
                extra["bias_grid"] = b_rho.reshape((-1,) + (1,) * (w.dim() - 2)) if self.channels_first else b_rho
            if rule.bias == "share" and has_bias:
                extra["w_abs"] = w_rho.abs()
            if rule.bias == "mass" and has_bias:
                extra["w_ones"] = torch.ones_like(w[:1]).expand((-1,) + tuple(w.shape[1:]))
            if isinstance(rule, ZBox):
                extra["w_pos"], extra["w_neg"] = w.clamp(min=0), w.clamp(max=0)
                extra["w_zbox"] = torch.cat([w, -extra["w_pos"], -extra["w_neg"]], dim=1)
            self._params = (w, b, w_rho, b_rho, has_bias, extra)
        return self._params

    def record(self, args: list, kwargs: dict):
        x, w, b, *conf = args
        z = self._apply(x, w, b, conf)
        w, b, w_rho, b_rho, has_bias, extra = self._prepare(w, b)
        rule = self.rule
        if isinstance(rule, ZBox):
            low, high = rule.bounds(x)
            low, high = low.expand(x.shape[1:])[None], high.expand(x.shape[1:])[None]
            z_rho = (self._apply(x, w, None, conf) - self._apply(low, extra["w_pos"], None, conf)
                     - self._apply(high, extra["w_neg"], None, conf))
            return z, WeightedState(safe_divide(z, rule.stabilize(z_rho)), bounds=(low, high))
        z_rho = self._apply(x, w_rho, b_rho, conf) if rule.modifies_params else z
        den = rule.stabilize(z_rho)
        state = WeightedState(None if den is z else safe_divide(z, den))
        if "w_abs" in extra or self.rule.bias == "mass" and has_bias:
            state.sign = torch.sign(x)
            size = self._sizes(x.abs(), conf, flow=False)
            if "w_abs" in extra or self.channels_first:  # a conv's windows take the full share
                state.share, state.remainder = bounded_share(extra["bias_grid"].expand_as(z), size.expand_as(z))
            else:
                state.inv_size, state.share, state.remainder = bounded_mass(extra["bias_grid"], size, z)
        return z, state

    def _sizes(self, a: torch.Tensor, conf: list, flow: bool) -> torch.Tensor:
        """Per unit, ``a`` summed over the unit's inputs as the bias mode weighs them:
        ``|rho(W)| a`` ("share"); ``1_W a`` ("mass"), one feature for a Linear, one channel
        per group of a convolution (a group's units read the same inputs), broadcastable to
        the units. ``flow``: ``a`` has the probes' leading axis."""
        extra = self._params[-1]
        if "w_abs" in extra:
            return self._apply_flow(a, extra["w_abs"], conf) if flow else self._apply(a, extra["w_abs"], None, conf)
        if not self.channels_first:
            return a.sum(-1, keepdim=True)
        ones = self._ones(conf[-1])
        return self._per_unit(self._apply_flow(a, ones, conf) if flow else self._apply(a, ones, None, conf))

    def _ones(self, groups: int) -> torch.Tensor:
        """The connectivity ``1_W`` of a convolution, one output channel per group."""
        ones = self._params[-1]["w_ones"]
        return ones.expand((groups,) + tuple(ones.shape[1:]))

    def _per_unit(self, sizes: torch.Tensor) -> torch.Tensor:
        """Sizes with one channel per group repeated to the group's units (the channel axis
        counted from the right: a flow's probe axis or crops do not move it)."""
        axis, units = 1 - self.node.meta["val"].dim(), self._params[0].shape[0]
        groups = sizes.shape[axis]
        return sizes if groups in (1, units) else sizes.repeat_interleave(units // groups, dim=axis)

    def push(self, state: WeightedState, flows: list, args: list, kwargs: dict, cells=None) -> Any:
        flows_only_through(self, flows, 0)
        flow = flows[0]
        _, _, _, *conf = args
        if self.op is aten.conv2d.default and (isinstance(flow, WindowFlow) or isinstance(flow, InputFlow)
                                               and cells is not None and cells.windows):
            out = self._push_windows(state, flow, conf, cells)
            if out is not None:
                return out
        w, b, w_rho, b_rho, has_bias, extra = self._params
        if isinstance(self.rule, ZBox):
            if not isinstance(flow, InputFlow):
                raise self.refuse("the z^B rule applies only to a layer fed by the model input "
                                  "(through position-wise ops)", "Assign another rule to this layer")
            probe, (low, high) = flow.probe, state.bounds
            groups = conf[-1] if conf and self.channels_first else 1
            if groups == 1 and not isinstance(conf[1] if len(conf) > 1 else 0, str):
                # z^B passes on all relevance, the preprocessing constants' too: the value itself
                stacked = torch.cat([probe * flow.value, probe * low, probe * high],
                                    dim=2 if self.channels_first else -1)
                out = self._apply_flow(stacked, extra["w_zbox"], conf)
            else:
                out = (self._apply_flow(probe * flow.value, w, conf)
                       - self._apply_flow(probe * low, extra["w_pos"], conf)
                       - self._apply_flow(probe * high, extra["w_neg"], conf))
        else:
            flow = materialize(flow)  # a WindowFlow too, where it reaches a layer without windows
            out = self._apply_flow(flow, w_rho, conf)
            if state.inv_size is not None:
                out.addcmul_(self._sizes(flow * state.sign, conf, flow=True).mul_(state.inv_size), b_rho)
            elif state.share is not None:
                out.addcmul_(self._sizes(flow * state.sign, conf, flow=True), state.share)
                if state.remainder is not None:
                    out.addcmul_(state.remainder, cells.coverage(out, self.channels_first, self.node))
            elif self.rule.bias == "flat" and has_bias:
                out.addcmul_(extra["bias_grid"], cells.coverage(out, self.channels_first, self.node))
        if state.scale is not None:
            out.mul_(state.scale)
        return out

    def _push_windows(self, state: WeightedState, flow: Any, conf: list, cells) -> Any:
        """:meth:`push` of a 2-D convolution on the probes' crops (:mod:`..windows`): the
        same terms as the dense push, on the outputs each probe's crop reaches; None where
        the model input's probes do not pay to crop."""
        w, b, w_rho, b_rho, has_bias, extra = self._params
        stride, padding, dilation, groups = conf

        def conv(f: WindowFlow, weight: torch.Tensor) -> WindowFlow:
            return windows.conv2d(f, weight, stride, padding, dilation, groups)

        if isinstance(flow, InputFlow):
            value = flow.value if flow.carried is None or isinstance(self.rule, ZBox) else flow.carried
            start = windows.start(value, flow.probe)
            if start is None:
                return None
            if isinstance(self.rule, ZBox):
                low, high = state.bounds
                probe = windows.crop_each(flow.probe, start.win)
                if groups != 1:
                    return None  # the dense push says what z^B needs
                # the box rule: the input, minus W+ on its lower and W- on its upper bound
                stacked = torch.cat([start.data, probe * windows.crop(low, start.win),
                                     probe * windows.crop(high, start.win)], dim=2)
                out = conv(WindowFlow(stacked, start.win), extra["w_zbox"])
                return windows.finish(out.data.mul_(windows.crop(state.scale, out.win)), out.win)
            flow = start
        elif isinstance(self.rule, ZBox):
            return None
        out = conv(flow, w_rho)
        data, win = out.data, out.win
        spread = state.remainder if state.share is not None else (
            extra["bias_grid"][None] if self.rule.bias == "flat" and has_bias else None)
        coverage = None
        if spread is not None:
            coverage = _coverage(cells, data, win)
            if coverage is None:  # the bias lands on units the crops do not hold: dense
                return None
        if state.share is not None:
            signed = WindowFlow(flow.data * windows.crop(state.sign, flow.win), flow.win)
            passed = conv(signed, extra["w_abs"]).data if "w_abs" in extra else self._per_unit(
                conv(signed, self._ones(groups)).data)
            data.addcmul_(passed, windows.crop(state.share, win))
        if spread is not None:
            data.addcmul_(windows.crop(spread, win), coverage)
        if state.scale is not None:
            data.mul_(windows.crop(state.scale, win))
        return windows.finish(data, win)


def _coverage(cells, data: torch.Tensor, win: "windows.Window") -> Optional[torch.Tensor]:
    """The probes' coverage of a layer's units (see :class:`~..cells.InputCells`) on their
    crops, or None where it reaches units outside them. The coverage pools each probe onto
    the layer's grid by cells that are not the layer's receptive fields (a 4×4 stride-4
    conv on 30 px, a 1×1 conv padded by 3), so a bias spread by it can land off the crop."""
    like = torch.empty(tuple(data.shape[:3]) + tuple(win.grid), device="meta")
    dense = cells.coverage(like, True).expand(*data.shape[:2], 1, *win.grid)
    cropped = windows.crop_each(dense, win)
    if not torch.equal(windows.WindowFlow(cropped, win).materialize(), dense):
        return None
    return cropped
