"""Normalisations recognised by what they compute, whatever their spelling.

A normalisation scales a tensor by a function of its own statistics,
``x * g(s(x))`` or ``(x - mean(x)) / g(s(x))``: ``s`` reduces ``x`` over axes other than
the batch axis (mean or sum of squares, variance, a vector norm) and ``g`` is elementwise
(``+ eps``, ``rsqrt``, ``sqrt``, reciprocal, casts, clamps, broadcasts, products with
constants). Hugging Face spells RMSNorm in many ways (``LlamaRMSNorm`` computes in
float32 and casts back, ``GemmaRMSNorm`` scales by ``1 + w``, ``T5LayerNorm`` has no
mean), LayerNorm and ``F.normalize`` are written out in others. Every one gets the
same rule as the fused ``aten.layer_norm`` / ``aten.rms_norm`` entries: the factor
``g(s(x))`` is a constant of the forward pass (CP-LRP; AttnLRP's rule for norms is the
same), so the layer is linear in ``x``.

:func:`hold_statistics_constant` finds each join ``x * g`` (or ``x / g``) in a graph and
puts an ``aten.detach`` node, tagged with the join's module, on its ``g`` operand. A
statistic used any other way is left alone: its ``pow`` / ``rsqrt`` / norm then meets
its refusal, naming op and module, instead of a silently wrong split.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import fx

from .spellings import LIKE, RESHAPES, SAME_VALUES

aten = torch.ops.aten

__all__ = ["hold_statistics_constant", "STATISTIC_TAG"]

#: node.meta key set on the detach nodes this pass inserts (value: the join's module path)
STATISTIC_TAG = "skbilrp_norm_statistic"

#: reductions of a square: ``mean(x**2)``, ``sum(x*x)``
_REDUCE_SQUARE = {aten.mean.dim, aten.sum.dim_IntList}
#: reductions that are statistics of their input itself
_REDUCE_OWN = {aten.var.correction, aten.var.dim, aten.std.correction, aten.std.dim,
               aten.linalg_vector_norm.default}
#: value-preserving relabelling of a tensor (the source of a statistic may be a cast of x)
_RELABEL = SAME_VALUES | {aten.type_as.default}
#: elementwise maps of a statistic (with constants): g's vocabulary
_ELEMENTWISE = {
    aten.add.Tensor, aten.add.Scalar, aten.sub.Tensor, aten.sub.Scalar, aten.rsub.Scalar, aten.rsub.Tensor,
    aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar, aten.rsqrt.default, aten.sqrt.default,
    aten.reciprocal.default, aten.pow.Tensor_Scalar, aten.clamp.default, aten.clamp_min.default,
    aten.clamp_max.default, aten.abs.default,
} | RESHAPES | _RELABEL | LIKE
_JOINS = {aten.mul.Tensor, aten.div.Tensor}


def hold_statistics_constant(graph: fx.Graph, constants: dict) -> int:
    """Detach the scale ``g(s(x))`` of every normalisation ``x * g(s(x))`` in ``graph``.

    Parameters
    ----------
    graph : torch.fx.Graph
        A functional ATen graph (edited in place).
    constants : dict
        Placeholder name -> tensor for parameters, buffers and lifted constants; other
        placeholders are inputs.

    Returns
    -------
    int
        The number of joins whose scale was detached.
    """
    inputs = {n for n in graph.nodes if n.op == "placeholder" and n.name not in constants}
    varying = _descendants(graph, inputs)
    count = 0
    for node in list(graph.nodes):
        source = _statistic_source(node)
        if source is None or node not in varying:
            continue
        for join, pos in _joins(node, _root(source), varying):
            scale = join.args[pos]
            with graph.inserting_before(join):
                held = graph.call_function(aten.detach.default, (scale,))
            held.meta = {k: v for k, v in scale.meta.items() if k == "val"}
            held.meta["nn_module_stack"] = join.meta.get("nn_module_stack", {})
            path = list(held.meta["nn_module_stack"].values())
            held.meta[STATISTIC_TAG] = path[-1][0] if path else ""
            args = list(join.args)
            args[pos] = held
            join.args = tuple(args)
            count += 1
    return count


def _descendants(graph: fx.Graph, roots: set) -> set:
    out = set(roots)
    for n in graph.nodes:
        if n.op == "call_function" and any(a in out for a in n.all_input_nodes):
            out.add(n)
    return out


def _is_tensor(node) -> bool:
    return isinstance(node, fx.Node) and isinstance(node.meta.get("val"), torch.Tensor)


def _statistic_source(node: fx.Node) -> Optional[fx.Node]:
    """The tensor ``x`` a reduction node takes a statistic of, or None."""
    if node.op != "call_function" or node.target not in _REDUCE_OWN | _REDUCE_SQUARE:
        return None
    if not _is_tensor(node.args[0]) or not _keeps_batch_axis(node):
        return None
    if node.target in _REDUCE_OWN:
        return node.args[0]
    if node.target in _REDUCE_SQUARE:
        sq = node.args[0]
        if sq.op != "call_function":
            return None
        if sq.target is aten.pow.Tensor_Scalar and sq.args[1] == 2:
            return sq.args[0]
        if sq.target is aten.mul.Tensor and sq.args[0] is sq.args[1]:
            return sq.args[0]
        if sq.target is aten.abs.default:  # L1 statistics
            return sq.args[0]
    return None


def _keeps_batch_axis(node: fx.Node) -> bool:
    """A reduction that leaves axis 0 alone (a statistic across samples is no constant of one)."""
    x = node.args[0].meta["val"]
    dims = node.args[1] if len(node.args) > 1 else None
    if node.target is aten.linalg_vector_norm.default:
        dims = node.args[2] if len(node.args) > 2 else None
    dims = [dims] if isinstance(dims, int) else dims
    if not isinstance(dims, (list, tuple)):
        return False
    return bool(dims) and all(isinstance(d, int) and d % x.dim() != 0 for d in dims)


def _root(node) -> fx.Node:
    """``node`` with casts and centring ``a - mean(a)`` peeled off."""
    while isinstance(node, fx.Node) and node.op == "call_function":
        if node.target in _RELABEL:
            node = node.args[0]
        elif node.target is aten.sub.Tensor and _is_mean_of(node.args[1], node.args[0]):
            node = node.args[0]
        else:
            break
    return node


def _is_mean_of(m, a) -> bool:
    return (isinstance(m, fx.Node) and m.op == "call_function" and m.target is aten.mean.dim
            and _keeps_batch_axis(m) and _root(m.args[0]) is _root(a))


def _joins(stat: fx.Node, source: fx.Node, varying: set) -> list:
    """``(node, position)`` where ``g(stat)`` divides ``source``: a product with an
    inverted statistic (``rsqrt``, reciprocal, a negative power, a constant over it) or a
    quotient by one that is not. Follows ``g`` through elementwise maps whose other
    operands are constants; any other use of the statistic is not followed (so
    ``x * mean(x**2)``, no normalisation, stays refused)."""
    joins, todo, seen = [], [(stat, False)], {(stat, False)}
    while todo:
        n, inverted = todo.pop()
        for user in n.users:
            if user.op != "call_function":
                continue
            pos = [i for i, a in enumerate(user.args) if a is n]
            others = [a for i, a in enumerate(user.args) if i not in pos and _is_tensor(a)]
            if len(pos) != 1:
                continue
            divides = user.target in (aten.div.Tensor, aten.div.Scalar) and pos[0] == 1
            if user.target in _JOINS and len(others) == 1 and _root(others[0]) is source:
                if inverted != divides:
                    joins.append((user, pos[0]))
                continue
            if user.target in LIKE:
                if pos != [0]:
                    continue  # only the statistic's shape or dtype is used
                others = []
            if user.target not in _ELEMENTWISE or any(a in varying for a in others):
                continue
            flips = divides or user.target in (aten.rsqrt.default, aten.reciprocal.default) or (
                user.target is aten.pow.Tensor_Scalar and user.args[1] < 0)
            item = (user, inverted != flips)
            if item not in seen:
                seen.add(item)
                todo.append(item)
    return joins
