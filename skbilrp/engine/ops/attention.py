"""Attention (CP-LRP): softmax probabilities are constants; relevance flows through the
values. Products with one constant operand (matmul, bmm, einsum) are linear.
"""

from __future__ import annotations

import math

import torch

from ..spellings import LIKE, SAME_VALUES
from . import RelevanceOp, aten, flows_only_through, materialize, relevance_op
from .combine import is_masking, shared_as, shared_ratio, spread_on_keys
from .weighted import bounded_share


@relevance_op(aten.detach.default)
class Constant(RelevanceOp):
    """Detached tensors carry no relevance; the network never pushes through them."""

    constant = True


@relevance_op(aten.softmax.int, aten._softmax.default, aten._safe_softmax.default)
class Softmax(RelevanceOp):
    """Softmax probabilities: constants (CP-LRP, the default: relevance flows through the
    values only), or with ``attention="attnlrp"`` AttnLRP's rule, the softmax's Jacobian
    ``u_out = s ⊙ (u - <s, u>)``, with the products of two carrying operands that follow
    (``q @ k^T``) split uniformly. Its bias part follows the bias mode (:class:`SoftmaxRule`)."""

    def __init__(self, node, network) -> None:
        super().__init__(node, network)
        self.rule = SoftmaxRule(network.bias_mode_for(node))

    @classmethod
    def is_constant(cls, network) -> bool:
        return network.attention == "cp"

    def record(self, args, kwargs):
        out = self.op(*args, **kwargs)
        return out, self.rule.record(args[0], out, args[1] % out.dim())

    def push(self, state, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        return self.rule.push(state, materialize(flows[0]), cells)


class SoftmaxRule:
    """AttnLRP's softmax rule ``u_out = J u`` (``J = diag(s) - s s^T``), plus its bias
    ``b = s - J z`` (``z``: the logits) as the bias mode says: absorbed (AttnLRP as
    published); shared with the logits in proportion to their contributions
    ``|J| |z|``, as Linear layers share theirs (bounded, what exceeds the contributions
    placed as under ``flat``; ``mass`` does the same); or, ``flat``, placed on the input
    where its key is (:func:`spread_on_keys`). Probabilities that are exactly zero
    (masked logits: padding, the future of causal attention) pass nothing, their bias
    included, so neither an infinite masked logit nor a share of the bias reaches them."""

    def __init__(self, mode: str) -> None:
        self.mode = shared_as(mode)

    def record(self, z: torch.Tensor, s: torch.Tensor, dim: int) -> tuple:
        # masked: no contribution, no inf (a row masked whole, as DeBERTa masks padded
        # queries, has uniform probabilities over logits of the dtype's lowest value)
        masked = is_masking(z)
        dead = (s == 0) | masked if masked is not None else s == 0
        z = torch.where(dead, torch.zeros_like(s), z)
        bias = None
        if self.mode != "absorb":
            jz = s * (z - (s * z).sum(dim, keepdim=True))
            bias = s - jz
            if self.mode == "share":
                size = s * ((1 - 2 * s) * z.abs() + (s * z.abs()).sum(dim, keepdim=True))
                share, remainder = bounded_share(bias, size)
                coef = share * s
                bias = (coef, coef * (1 - 2 * s), torch.sign(z), remainder)
        return s, dim, bias, dead

    def push(self, state: tuple, u: torch.Tensor, cells) -> torch.Tensor:
        s, dim, bias, dead = state
        dim = dim + 1  # the flow's probe axis
        u = torch.where(dead, torch.zeros_like(u), u)  # masked logits pass nothing
        out = s * (u - (s * u).sum(dim, keepdim=True))
        if self.mode == "share":
            coef, coef_diag, sign, remainder = bias
            w = sign * u
            out = out + coef_diag * w + coef * (s * w).sum(dim, keepdim=True)
            if remainder is not None:
                out = out + spread_on_keys(cells, remainder, dim - 1)
        elif self.mode == "flat":
            out = out + spread_on_keys(cells, bias, dim - 1)
        return out


@relevance_op(aten.matmul.default, aten.bmm.default, aten.mm.default, aten.einsum.default)
class Product(RelevanceOp):
    """A matrix product with one constant operand: the product applied to the flow.
    Two carrying operands (``q @ k^T`` under ``attention="attnlrp"``, bilinear layers)
    split uniformly, as AttnLRP does: ``(u_a @ b + a @ u_b) / 2``."""

    def __init__(self, node, network) -> None:
        super().__init__(node, network)
        probs = _softmax_output(node.args[0]) if node.args else False
        self.mode = network.bias_mode_for(node) if probs and network.attention == "attnlrp" else "absorb"

    def record(self, args, kwargs):
        out = self.op(*args, **kwargs)
        both = self.op is not aten.einsum.default and all(self.carrying[:2])
        return out, (args[0], args[1], lone_weight(args[0], self.mode)) if both else None

    def push(self, state, flows, args, kwargs, cells=None):
        if self.op is aten.einsum.default:
            parts = flows[1]
            carrying = [i for i, f in enumerate(parts or []) if f is not None]
            if len(carrying) != 1:
                raise self.refuse("einsum of several relevance-carrying operands is not supported",
                                  "Detach all but one operand, or write the product with matmul")
            ops = list(args[1])
            ops[carrying[0]] = materialize(parts[carrying[0]])
            return torch.einsum(_with_probe_axis(args[0], carrying[0]), *ops)
        fa, fb = flows[0], flows[1]
        if fa is not None and fb is not None:
            a, b, (w_a, w_b) = state  # probabilities @ values: see lone_weight
            if a.dim() < 2 or b.dim() < 2:
                raise self.refuse("a product with a vector operand is not supported",
                                  "Write it with a matrix (unsqueeze the vector)")
            return matmul_flow(materialize(fa) * w_a, b, first=True) + matmul_flow(materialize(fb), a * w_b, first=False)
        i = 0 if fa is not None else 1
        flow, const = materialize(fa if fa is not None else fb), args[1 - i]
        if flow.dim() < 3 or const.dim() < 2:
            raise self.refuse("a product with a vector operand is not supported",
                              "Write it with a matrix (unsqueeze the vector)")
        return matmul_flow(flow, const, first=i == 0)


#: value-preserving ops between a softmax and the product with the values (eager attention
#: casts float32 probabilities back, applies dropout: a clone in eval mode, once decomposed)
_PASS = SAME_VALUES | LIKE
_SOFTMAX = {aten.softmax.int, aten._softmax.default, aten._safe_softmax.default}


def _softmax_output(node) -> bool:
    while getattr(node, "op", None) == "call_function" and node.target in _PASS:
        node = node.args[0]
    return getattr(node, "target", None) in _SOFTMAX


def matmul_flow(flow: torch.Tensor, const: torch.Tensor, first: bool) -> torch.Tensor:
    """``value @ const`` (``first``) or ``const @ value`` for a flow ``(K, *value.shape)``:
    singleton axes after the probe axis align the value's batch axes with the constant's."""
    extra = (const.dim() - 2) - (flow.dim() - 3)
    if extra > 0:
        flow = flow.reshape((flow.shape[0],) + (1,) * extra + tuple(flow.shape[1:]))
    return torch.matmul(flow, const) if first else torch.matmul(const, flow)


def _with_probe_axis(equation: str, operand: int) -> str:
    """An einsum equation with a new leading axis on one operand and on the output."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    letter = next(c for c in "ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkjihgfedcba" if c not in eq)
    if not arrow:  # implicit output: "..." then the letters used once, sorted
        letters = [c for c in lhs if c.isalpha()]
        rhs = ("..." if "..." in lhs else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    terms[operand] = letter + terms[operand]
    return ",".join(terms) + "->" + letter + rhs


@relevance_op(aten.scaled_dot_product_attention.default)
class SDPA(RelevanceOp):
    """``softmax(q k^T / sqrt(d) + mask) v``: with constant probabilities ``P @ u_v``;
    under ``attention="attnlrp"`` the composition of the rules of its parts (uniform
    products, the softmax Jacobian), as if it had been decomposed."""

    def __init__(self, node, network) -> None:
        super().__init__(node, network)
        self.attnlrp = network.attention == "attnlrp"
        self.rule = SoftmaxRule(network.bias_mode_for(node))

    @classmethod
    def ends(cls, network) -> frozenset:
        # CP-LRP: q and k only shape the probabilities, constants: their flows end here
        return frozenset({0, 1}) if network.attention == "cp" else frozenset()

    def record(self, args, kwargs):
        q, k, v, mask, dropout_p, is_causal = (list(args) + [None] * 6)[:6]
        scale = kwargs.get("scale", args[6] if len(args) > 6 else None)  # keyword-only in the schema
        if kwargs.get("enable_gqa"):
            raise self.refuse("grouped-query attention is not supported")
        scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
        s = q @ k.transpose(-2, -1) * scale
        if is_causal:
            s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1), float("-inf"))
        # an additive mask is a constant added to the logits (bias mode); -inf ones mask
        logits = s
        if mask is not None:
            logits = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
        p = aten._safe_softmax.default(logits, -1)  # rows masked whole: zeros, as SDPA gives
        if not self.attnlrp:
            return self.op(*args, **kwargs), (p, scale, None)
        added = None
        if mask is not None and mask.dtype != torch.bool:
            masking = is_masking(mask)
            added = (torch.where(masking, 0.0, mask), shared_ratio(s, mask, masking))
        state = (q, k, v, self.rule.record(logits, p, p.dim() - 1), added, lone_weight(p, self.rule.mode))
        return self.op(*args, **kwargs), (p, scale, state)

    def push(self, state, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0, 1, 2)
        p, scale, qkv = state
        fq, fk, fv = (materialize(f) for f in flows[:3])
        if not self.attnlrp:  # q and k: see ends (the network computes no flow for them)
            if fv is None:
                raise self.refuse("no relevance reaches the values", "Explain an input that feeds them")
            return matmul_flow(fv, p, first=False)
        if fq is None or fk is None or fv is None:
            raise self.refuse("attention='attnlrp' needs relevance to reach q, k and v")
        q, k, v, softmax, added, (w_p, w_v) = qkv
        kt = k.transpose(-2, -1)
        u_s = (matmul_flow(fq, kt, first=True) + matmul_flow(fk.transpose(-2, -1), q, first=False)) * (0.5 * scale)
        if added is not None and self.rule.mode == "share":
            ratio, remainder = added[1]
            u_s = u_s * ratio
            if remainder is not None:
                u_s = u_s + spread_on_keys(cells, remainder, p.dim() - 1)
        elif added is not None and self.rule.mode == "flat":
            u_s = u_s + spread_on_keys(cells, added[0].expand(p.shape), p.dim() - 1)
        u_p = self.rule.push(softmax, u_s, cells)
        return matmul_flow(u_p * w_p, v, first=True) + matmul_flow(fv, p * w_v, first=False)


def lone_weight(p: torch.Tensor, mode: str) -> tuple:
    """Weights ``(w_p, w_v)`` of the uniform split of ``p @ v`` per row of probabilities.

    A row with one visible key (the first query of causal attention) is 1 there whatever
    the logits: the softmax rule gives it no contributions, only its bias. AttnLRP as
    published (``bias="absorb"``) splits it ``1/2, 1/2`` all the same and so loses half of
    that row; under a bias-passing mode the row is a constant and the values take all of
    it, so the product conserves without inventing a share for the logits. Such a row is
    one with a single non-zero probability: a row that only saturates rounds its top
    probability to exactly 1 in float32 and not in float64, and must not change rule."""
    if mode == "absorb":
        return 0.5, 0.5
    lone = (p != 0).sum(-1, keepdim=True) == 1
    return torch.where(lone, 0.0, 0.5).to(p.dtype), torch.where(lone, 1.0, 0.5).to(p.dtype)
