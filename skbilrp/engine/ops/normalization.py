"""Normalisation layers with a constant scale (CP-LRP): LayerNorm's standard deviation
is a constant of the forward pass, so the layer is linear in its input,
``y_k = sum_j s_k (delta_jk - 1/n) x_j + b_k`` with ``s = weight / std``.

Its module's Rule gives the stabiliser and the bias mode (gamma and z^B have no meaning
here): ``bias="absorb"`` keeps ``b``'s share, ``"flat"`` spreads it over the input
region under the unit, ``"share"`` follows the contribution sizes
``|s_k| |delta_jk - 1/n| |x_j|`` (bounded, :func:`~.weighted.bounded_share`). Since
``|delta_jk - 1/n| = 1/n + (1 - 2/n) delta_jk``, that share costs O(n), not O(n^2):
``share_k |s_k| ((1 - 2/n) w_k + mean(w))`` with ``w = sign(x) ⊙ u``, the unit's size
``|s_k| S_k`` and ``S_k = (1 - 2/n) |x_k| + mean(|x|)``. ``"mass"`` follows the input
sizes ``|x_j|`` instead (every input of the group reaches every unit through the mean):
``mass_k sum(w)`` with ``mass_k = b_k / max(sum |x|, |b_k|)``.
"""

from __future__ import annotations

import torch

from . import RelevanceOp, aten, flows_only_through, materialize, relevance_op, safe_divide
from .refused import Refused
from .weighted import bounded_mass, bounded_share


class Centred(RelevanceOp):
    """Shared by LayerNorm and GroupNorm: ``y = (x - mean) * inv_std * w + b`` over the
    trailing axis of a grouped view ``(..., n)`` of the input."""

    def __init__(self, node, network) -> None:
        super().__init__(node, network)
        self.rule = network.rule_for(node)

    def centred_state(self, x, y, w, b, eps) -> dict:
        """``x``, ``w``, ``b`` in the grouped view (``w``, ``b`` broadcastable to it); ``y``,
        the output, in the layer's own shape (the stabiliser's scale multiplies the flow
        there)."""
        inv_std = torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + eps)
        gain = inv_std if w is None else w * inv_std  # s_k
        den = self.rule.stabilize(y)
        state = {"gain": gain, "scale": None if den is y else safe_divide(y, den), "share": None}
        if self.rule.bias == "share" and b is not None:
            n = x.shape[-1]
            size = gain.abs() * ((1 - 2 / n) * x.abs() + x.abs().mean(-1, keepdim=True))
            share, state["remainder"] = bounded_share(b.expand_as(size), size)
            sign = torch.sign(x)
            state["sign"], state["share"] = sign, share * gain.abs()
            # the flow's own coefficient, both terms' diagonal parts in one: one pass in the push
            state["direct"] = gain + (1 - 2 / n) * sign * state["share"]
        elif self.rule.bias == "mass" and b is not None:
            state["sign"] = torch.sign(x)
            state["inv_size"], share, state["remainder"] = bounded_mass(b, x.abs().sum(-1, keepdim=True), x)
            state["mass"] = b if share is None else share  # the coefficient of the signed sum
        return state

    def centred_push(self, flow, state):
        """The flow through the layer (grouped view), bias share included, flat term not."""
        gain, mean = state["gain"], flow.mean(-1, keepdim=True)
        if state["share"] is None:
            out = (flow - mean) * gain
            if "mass" in state:
                signed_sum = torch.linalg.vecdot(flow, state["sign"]).unsqueeze(-1)
                if state["inv_size"] is not None:
                    signed_sum.mul_(state["inv_size"])
                out.addcmul_(signed_sum, state["mass"])
            return out
        # s_k (u_k - mean(u)) + share_k ((1 - 2/n) sign_k u_k + mean(sign ⊙ u)), spelled
        # with three passes over the flow instead of ten (LayerNorms are a tenth of a text push)
        out = flow * state["direct"]
        out.addcmul_(mean, gain, value=-1)
        signed_mean = torch.linalg.vecdot(flow, state["sign"]).unsqueeze(-1).div_(flow.shape[-1])
        return out.addcmul_(signed_mean, state["share"])

    def finish(self, out, state, b, channels_first, cells):
        if self.rule.bias == "flat" and b is not None:
            out = out + b * cells.coverage(out, channels_first, self.node)
        elif state.get("remainder") is not None:
            out = out + state["remainder"].reshape(out.shape[1:]) * cells.coverage(out, channels_first, self.node)
        return out if state["scale"] is None else out * state["scale"]


@relevance_op(aten.layer_norm.default)
class LayerNorm(Centred):
    """``(x - mean) / std * w + b`` over the trailing ``normalized_shape`` axes."""

    def record(self, args, kwargs):
        x, shape, w, b, eps = args[:5]
        y = self.op(*args)
        lead = x.shape[:x.dim() - len(shape)]
        flat = (lambda t: None if t is None else t.reshape(-1))
        state = self.centred_state(x.reshape(*lead, -1), y, flat(w), flat(b), eps)
        return y, state

    def push(self, state, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        shape, b = args[1], args[3]
        flow = materialize(flows[0])
        grouped = flow.reshape(*flow.shape[:flow.dim() - len(shape)], -1)
        out = self.centred_push(grouped, state).reshape(flow.shape)
        return self.finish(out, state, b, False, cells)


@relevance_op(aten.group_norm.default)
class GroupNorm(Centred):
    """``(x - mean_g) / std_g * w_c + b_c`` over each group of channels (and positions)."""

    def record(self, args, kwargs):
        x, groups, w, b, eps = args[:5]
        y = self.op(*args)
        n = x.shape[0]
        grid = (1, -1) + (1,) * (x.dim() - 2)
        view = (lambda t: None if t is None else t.reshape(grid).expand_as(x).reshape(n, groups, -1))
        return y, self.centred_state(x.reshape(n, groups, -1), y, view(w), view(b), eps)

    def push(self, state, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        groups, b = args[1], args[3]
        flow = materialize(flows[0])
        grouped = flow.reshape(flow.shape[0], flow.shape[1], groups, -1)
        out = self.centred_push(grouped, state).reshape(flow.shape)
        if b is not None:
            b = b.reshape((-1,) + (1,) * (flow.dim() - 3))
        return self.finish(out, state, b, True, cells)


@relevance_op(aten.rms_norm.default)
class RMSNorm(RelevanceOp):
    """``x / rms(x) * w`` with a constant rms: the flow is scaled."""

    def record(self, args, kwargs):
        x, shape, w, eps = args[:4]
        dims = tuple(range(-len(shape), 0))
        eps = torch.finfo(x.dtype).eps if eps is None else eps
        return self.op(*args), torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)

    def push(self, inv_rms, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        out = materialize(flows[0]) * inv_rms
        return out if args[2] is None else out * args[2]


@relevance_op(aten.linalg_vector_norm.default)
class Norm(Refused):
    """A vector norm that normalises its own input (``F.normalize``, ``x / x.norm()``) is
    held constant by the canonicalisation (:mod:`skbilrp.engine.norms`) and never reaches
    the table; any other use of it on a carrying tensor is refused."""

    why = ("a vector norm of a relevance-carrying tensor has a rule only where it normalises that "
           "tensor (x / norm(x) over axes other than the batch axis)")
    fix = "Detach the norm in the model if it is meant as a constant"
