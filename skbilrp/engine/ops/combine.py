"""Sums and products: split kind (add/sub of carrying tensors), constant kind (a constant
added to a carrying tensor follows the bias mode like a bias), scaling by constants,
and BatchNorm that could not be folded (an affine map whose shift follows the bias mode).
"""

from __future__ import annotations

import torch

from .. import windows
from . import InputFlow, RelevanceOp, align, aten, flows_only_through, materialize, relevance_op
from .weighted import bounded_share


class BiasLike(RelevanceOp):
    """A constant term ``c`` in ``out = a + c``: absorbed, shared with ``a`` in proportion
    to its contributions (``u ⊙ out / a``), or spread flat over the input region under
    each unit, as the Rule's bias mode of the node's module says (:func:`shared_as`)."""

    def __init__(self, node, network) -> None:
        super().__init__(node, network)
        self.mode = shared_as(network.bias_mode_for(node))

    def constant_term(self, flow, a, out, c, cells):
        """Flow of ``a + c`` given the flow of ``a``."""
        if isinstance(flow, InputFlow) and out.dim() == flow.value.dim():
            # position-wise preprocessing of the model input: a new value, and what of it
            # carries relevance (absorb: x's part only; share / flat: the constant's too,
            # which at the input itself is the same under both)
            if self.mode == "absorb":
                carried = flow.value if flow.carried is None else flow.carried
                return InputFlow(out, flow.probe, carried.expand(out.shape))  # x may broadcast up
            return InputFlow(out, flow.probe, None if flow.carried is None else flow.carried + (out - flow.value))
        flow = align(materialize(flow), out.dim())
        if self.mode == "absorb":
            return _full(flow, out)
        # entries of the dtype's lowest value (or -inf) mask (Hugging Face's attention masks):
        # no contribution to pass on, and an infinite factor would poison gradients
        masking = is_masking(c)
        if self.mode == "share":
            ratio, rest = shared_ratio(torch.as_tensor(a), torch.as_tensor(out - a), masking)
            shared = flow * ratio
            return shared if rest is None else shared + spread_flat(cells, rest, flow, out, self.node)
        c = torch.as_tensor(c, dtype=flow.dtype, device=flow.device)
        if masking is not None:
            c = torch.where(masking, torch.zeros_like(c), c)
        return flow + spread_flat(cells, c, flow, out, self.node)


def shared_as(mode: str) -> str:
    """The bias mode of a term that has no weights to skip: ``"mass"`` saves a second pass
    through a layer's weights and is ``"share"`` elsewhere. A constant add reads one input
    (its size is its contribution); the softmax under AttnLRP weighs its logits by the
    Jacobian, and by size alone its bias would go to keys of negligible probability."""
    return "share" if mode == "mass" else mode


def spread_flat(cells, const, flow: torch.Tensor, out: torch.Tensor, node=None) -> torch.Tensor:
    """The flow of a constant added to a carrying tensor under ``bias="flat"``: over the
    input region under each unit (:meth:`~..cells.ProbeCells.coverage`: on a token input
    the token the graph puts the unit on, the key of attention logits ``(N, H, T, T)``,
    so that padding, on which the output does not depend, takes none of it). Where the
    graph fixes the token count, logits of four or more axes have their keys last."""
    tokens = cells.channel_axis is not None and cells.probe.dim() == 3
    if tokens and out.dim() >= 4 and cells.token_axes(node) is None:
        return spread_on_keys(cells, torch.as_tensor(const).expand(out.shape), out.dim() - 1)
    return const * cells.coverage(_full(flow, out), out.dim() >= 4, node)


def spread_on_keys(cells, const: torch.Tensor, dim: int) -> torch.Tensor:
    """The flow of a constant on attention logits or probabilities (``const``, keys on
    axis ``dim``) under ``bias="flat"``: each entry goes to the input position of its
    key when the keys are the input's token positions (an input ``(N, T, D)`` with its
    channels on an axis, ``T`` keys), so that a masked key (padding) takes nothing;
    over the whole input otherwise (images: a key has no single place on the input).
    Over probes that partition the input the parts sum to ``const`` either way."""
    probe = cells.probe
    if cells.channel_axis is None or probe.dim() != 3 or dim == 0:
        return cells.spread(const)
    tokens = probe.shape[1] if cells.channel_axis % 2 else probe.shape[2]  # (K*N, T, D) or (K*N, D, T)
    return cells.spread(const) if tokens != const.shape[dim] else const * cells.on_tokens(const.dim(), dim)


def shared_ratio(a: torch.Tensor, c: torch.Tensor, masking: "torch.Tensor | None" = None) -> tuple:
    """Under ``bias="share"``, the flow of ``a + c`` is ``ratio`` times the flow of ``a``
    (``a`` its one contribution, of size ``|a|``, and ``c`` a constant term, the bias),
    plus ``remainder`` (None where zero) spread as ``"flat"`` does: ``ratio = 1 + share
    sign(a)`` with the bounded share of :func:`~.weighted.bounded_share` (``c / a`` where
    ``|c| <= |a|``). Masked entries (``masking``) pass nothing."""
    if masking is not None:
        c = torch.where(masking, torch.zeros_like(c), c)
    share, remainder = bounded_share(c, a.abs())
    ratio = 1 + share * torch.sign(a)
    if masking is not None:
        ratio = torch.where(masking, torch.zeros_like(ratio), ratio)
    return ratio, remainder


def is_masking(c) -> "torch.Tensor | None":
    """Where a constant term masks rather than adds (the dtype's lowest value or -inf), or
    None for a constant that is no floating-point tensor."""
    if not (isinstance(c, torch.Tensor) and c.is_floating_point()):
        return None
    return c <= torch.finfo(c.dtype).min / 2


def _scaled(flow, coef, out):
    """``coef`` times a summand's flow; the model input itself stays a pair (value, probe)
    when the sum only relabels it (``c - x``, preprocessing), as for ``x + c``."""
    if isinstance(flow, InputFlow) and flow.value.dim() == out.dim():
        return flow.scaled(lambda t: t * coef)
    return materialize(flow) * coef


def _full(flow: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """A flow broadcast to the shape of ``out`` (``a`` may broadcast up in ``a + c``)."""
    shape = (flow.shape[0],) + tuple(out.shape)
    return flow if flow.shape == shape else flow.expand(shape)


@relevance_op(aten.add.Tensor, aten.sub.Tensor, aten.add.Scalar, aten.sub.Scalar, aten.rsub.Scalar)
class Add(BiasLike):
    """``self + alpha * other`` (sub: ``- alpha``): flows add, which splits relevance in
    proportion to the terms; a term without flow is a constant (bias mode)."""

    windowed = True

    def record(self, args, kwargs):
        out = self.op(*args, **kwargs)
        sign = -1.0 if self.op in (aten.sub.Tensor, aten.sub.Scalar) else 1.0
        alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)  # positional in *.Scalar
        if self.op is aten.rsub.Scalar:  # other - alpha * self
            return out, (out, args[0], -alpha, args[1])
        return out, (out, args[0], sign * alpha, None)

    def push(self, state, flows, args, kwargs, cells=None):
        out, a, coef, _ = state
        fa, fb = flows[0], flows[1] if len(flows) > 1 else None
        if self.op is aten.rsub.Scalar:
            return self.constant_term(_scaled(fa, coef, out), coef * a, out, args[1], cells)
        if isinstance(fa, windows.WindowFlow) and isinstance(fb, windows.WindowFlow) and out.dim() == 4:
            return windows.add(fa, fb, coef)
        if fa is not None and fb is not None:
            return materialize(fa) + materialize(fb) * coef if coef != 1 else materialize(fa) + materialize(fb)
        if fa is not None:
            return self.constant_term(fa, a, out, args[1] * coef, cells)
        # only other carries: out = c + coef * b
        return self.constant_term(_scaled(fb, coef, out), out - a, out, a, cells)


@relevance_op(aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar, aten.neg.default)
class Scale(RelevanceOp):
    """Product or quotient with a constant (number or tensor without relevance).

    Gates are constants: a factor that comes through sigmoid / hardsigmoid (squeeze-
    excitation, LSTM-style gates) carries no relevance (marked by the network). A product
    of two carrying tensors splits uniformly, as AttnLRP does:
    ``u_out = (u_a ⊙ b + a ⊙ u_b) / 2``, linear in the flows, and it conserves since
    ``(a b + a b) / 2 = a b``.
    """

    def record(self, args, kwargs):
        out = self.op(*args, **kwargs)
        both = self.op is aten.mul.Tensor and all(self.carrying[:2])
        return out, (args[0], args[1]) if both else None

    def push(self, state, flows, args, kwargs, cells=None):
        fa = flows[0]
        fb = flows[1] if len(flows) > 1 else None
        if self.op is aten.neg.default:
            if isinstance(fa, InputFlow):
                return fa.scaled(torch.neg)
            return -materialize(fa)
        divide = self.op in (aten.div.Tensor, aten.div.Scalar)
        if divide and fb is not None:
            raise self.refuse("division by a relevance-carrying tensor is not linear",
                              "Detach the divisor in the model")
        if fa is not None and fb is not None:
            a, b = state
            return (materialize(fa) * b + materialize(fb) * a) * 0.5
        if fb is not None:
            flow, c = fb, args[0]
        else:
            flow, c = fa, args[1]
        if divide and kwargs.get("rounding_mode") is not None:
            raise self.refuse("rounding division is not linear")
        if isinstance(flow, InputFlow):
            moved = flow.scaled((lambda t: t / c) if divide else (lambda t: t * c))
            if moved.value.shape == flow.value.shape:
                return moved
        flow = align(materialize(flow), c.dim() if isinstance(c, torch.Tensor) else 0)
        return flow / c if divide else flow * c


@relevance_op(aten._native_batch_norm_legit_no_training.default)
class BatchNorm(BiasLike):
    """BatchNorm not folded into a conv/linear: ``y = s x + t`` per channel; the flow is
    scaled by ``s`` and the shift follows the bias mode."""

    def record(self, args, kwargs):
        x, w, b, mean, var, momentum, eps = args
        out = self.op(*args)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        s = 1 / torch.sqrt(var + eps)
        if w is not None:
            s = s * w
        t = -mean * s + (b if b is not None else 0)
        return out, (s.reshape(shape), t.reshape(shape), x)

    def push(self, state, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        s, t, x = state
        scaled = materialize(flows[0]) * s
        if self.mode == "share":
            ratio, rest = shared_ratio(s * x, t)
            shared = scaled * ratio
            return (shared if rest is None else shared + rest * cells.coverage(shared, True, self.node), None, None)
        if self.mode == "absorb":
            return (scaled, None, None)
        return (scaled + t * cells.coverage(scaled, True, self.node), None, None)


@relevance_op(aten.masked_fill.Scalar, aten.masked_fill.Tensor, aten.where.self)
class Select(BiasLike):
    """``x.masked_fill(mask, value)`` and ``torch.where(cond, a, b)`` with a constant
    condition: each entry takes the flow of the tensor it comes from. An entry that comes
    from a constant is that constant alone, with no contribution to share with: absorbed,
    or under a bias-passing mode spread over the whole input as a constant part of a
    ``cat`` is (it has no position there). Masking values (-inf, the dtype's lowest:
    masked attention logits) and zeros carry nothing in every mode."""

    def record(self, args, kwargs):
        out = self.op(*args, **kwargs)
        return out, out.new_zeros(()).expand(out.shape)  # its shape and dtype, no memory (the graph's may be symbolic)

    def push(self, out, flows, args, kwargs, cells=None):
        where = self.op is aten.where.self
        cond, parts = (args[0], [(flows[1], args[1]), (flows[2], args[2])]) if where else (
            args[1], [(flows[0], args[0]), (None, args[2])])
        if where and flows[0] is not None or not where and flows[1] is not None:
            raise self.refuse("relevance reaches the condition, which is not linear", "Detach the condition")
        k = next(materialize(f) for f, _ in parts if f is not None).shape[0]
        taken = []
        for (flow, value), picks in zip(parts, (cond, ~cond) if where else (~cond, cond)):
            if flow is not None:
                taken.append(_full(align(materialize(flow), out.dim()), out) * picks)
            elif self.mode != "absorb":
                const = torch.as_tensor(value, dtype=out.dtype, device=cond.device)
                const = torch.where(picks & ~_masks(const), const, torch.zeros((), dtype=out.dtype))
                taken.append(cells.spread(const.expand(out.shape)))
        total = taken[0]
        for t in taken[1:]:
            total = total + t
        return total if total.shape[0] == k else total.expand(k, *out.shape)


def _masks(c: torch.Tensor) -> torch.Tensor:
    """Where a constant masks (see :func:`is_masking`), as a boolean tensor."""
    masking = is_masking(c)
    return torch.zeros(c.shape, dtype=torch.bool, device=c.device) if masking is None else masking
