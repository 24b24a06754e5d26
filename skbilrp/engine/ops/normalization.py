"""Normalisation layers with a constant scale (CP-LRP): LayerNorm's standard deviation
is a constant of the forward pass, so the layer is linear in its input,
``y_k = sum_j s_k (delta_jk - 1/n) x_j + b_k`` with ``s = weight / std``.

Its module's Rule gives the stabiliser and the bias mode (gamma and z^B have no meaning
here): ``bias="absorb"`` keeps ``b``'s share, ``"flat"`` spreads it over the input
region under the unit, ``"share"`` follows the contribution sizes
``|s_k| |delta_jk - 1/n| |x_j|``. Since ``|delta_jk - 1/n| = 1/n + (1 - 2/n) delta_jk``,
that share costs O(n), not O(n^2): ``b_k / S_k ((1 - 2/n) w_k + mean(w))`` with
``w = sign(x) ⊙ u`` and ``S_k = (1 - 2/n) |x_k| + mean(|x|)``.
"""

from __future__ import annotations

import math

import torch

from . import RelevanceOp, aten, flows_only_through, materialize, relevance_op, safe_divide


@relevance_op(aten.layer_norm.default)
class LayerNorm(RelevanceOp):
    """``(x - mean) / std * w + b`` over the trailing ``normalized_shape`` axes."""

    takes_rule = True

    def __init__(self, node, network) -> None:
        super().__init__(node, network)
        self.rule = network.rule_for(node)

    def record(self, args, kwargs):
        x, shape, w, b, eps = args[:5]
        dims = tuple(range(-len(shape), 0))
        y = self.op(*args)
        inv_std = torch.rsqrt(x.var(dims, keepdim=True, unbiased=False) + eps)
        den = self.rule.stabilize(y)
        state = {"dims": dims, "inv_std": inv_std, "scale": None if den is y else safe_divide(y, den),
                 "share": None}
        if self.rule.bias == "share" and b is not None:
            n = math.prod(shape)
            size = (1 - 2 / n) * x.abs() + x.abs().mean(dims, keepdim=True)
            bias = b if w is None else b * (w != 0)  # a unit of weight 0 has no contributions
            state["sign"], state["share"] = torch.sign(x), safe_divide(bias.expand_as(size), size)
        return y, state

    def push(self, state, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        dims, w, b = state["dims"], args[2], args[3]
        flow = materialize(flows[0])
        out = (flow - flow.mean(dims, keepdim=True)) * state["inv_std"]
        if w is not None:
            out = out * w
        if state["share"] is not None:
            sized = flow * state["sign"]
            n = math.prod(args[1])
            out = out + ((1 - 2 / n) * sized + sized.mean(dims, keepdim=True)) * state["share"]
        elif self.rule.bias == "flat" and b is not None:
            out = out + b * cells.coverage(out, channels_first=False)
        return out if state["scale"] is None else out * state["scale"]
