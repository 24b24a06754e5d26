"""In-place ops of an exported graph, rewritten out of place where nothing else aliases.

The export's training IR keeps in-place ops: ``relu_`` of ``nn.ReLU(inplace=True)``,
``out += identity`` in a residual block, ``scores += position_bias`` (MPNet), the
relative-position buckets of T5. ``run_decompositions({})`` functionalises them, and
costs as much as the export again. Most are on a tensor the graph has just made
(a convolution's output, a sum) that no view shares: the ``add_`` is then ``add`` with
every later reader of the tensor reading the sum. :func:`plan` finds those and refuses
the rest (a tensor a view taken before the write shares, a placeholder's storage, a
result of another dtype than the tensor's); :func:`rewrite` applies a plan.
"""

from __future__ import annotations

import operator
from typing import Any, Optional

import torch
from torch import fx

__all__ = ["Plan", "plan", "rewrite"]

_aten = torch.ops.aten
#: ops whose schema promises a new tensor but which hand back their input or a view of
#: it on CPU (eval-mode dropout returns its input): aliases for this module
SHARES_INPUT = frozenset({
    _aten.dropout.default, _aten.feature_dropout.default, _aten.alpha_dropout.default,
    _aten.feature_alpha_dropout.default, _aten.einsum.default, _aten.einsum.sublist, _aten.meshgrid.default,
    _aten.meshgrid.indexing, _aten.unsafe_chunk.default, _aten.unsafe_split.Tensor,
    _aten.unsafe_split_with_sizes.default})


class Plan:
    """The in-place ops of a graph and their out-of-place twins, grouped by the tensor
    they mutate (``root``: the op that made it; members: the root and its in-place ops,
    which all name one storage)."""

    def __init__(self) -> None:
        self.twin: dict[fx.Node, Any] = {}
        self.root: dict[fx.Node, fx.Node] = {}

    def members(self) -> dict[fx.Node, list[fx.Node]]:
        """Per root: the root and its in-place ops, in graph order."""
        groups: dict[fx.Node, list[fx.Node]] = {}
        for node, root in self.root.items():
            groups.setdefault(root, [root]).append(node)
        return groups


def in_place(node: fx.Node) -> bool:
    """An ATen op that writes its first argument and only it (``add_``, ``relu_``)."""
    op = node.target
    if node.op != "call_function" or not isinstance(op, torch._ops.OpOverload) or not op._schema.is_mutable:
        return False
    writes = [a.alias_info is not None and a.alias_info.is_write for a in op._schema.arguments]
    return bool(writes) and writes[0] and not any(writes[1:])


def plan(graph: fx.Graph) -> Optional[Plan]:
    """Twins for the graph's in-place ops on fresh tensors; None where one cannot be
    rewritten without changing a value. ``detach_`` is left out (it changes no value;
    the caller drops it), but counts as a view of a tensor another in-place op writes."""
    out = Plan()
    for node in graph.nodes:
        if not in_place(node) or node.target is torch.ops.aten.detach_.default:
            continue
        root = out.root.get(node.args[0], node.args[0])
        twin = _twin(node)
        if twin is None or not _fresh(root):
            return None
        out.twin[node], out.root[node] = twin, root
    order = {node: i for i, node in enumerate(graph.nodes)}
    for members in out.members().values():
        ours, last = set(members), order[members[-1]]
        for member in members:  # a view taken before the last write would see it
            if any(order[user] < last and _may_alias(user, member, ours) for user in member.users):
                return None
    return out


def rewrite(graph: fx.Graph, plan: Plan) -> None:
    """Apply ``plan``: each in-place op becomes its twin on the tensor's latest value,
    and each later reader of the tensor reads that value."""
    latest = {root: root for root in plan.members()}
    root_of = {**{root: root for root in latest}, **plan.root}

    def current(arg: Any) -> Any:
        return latest[root_of[arg]] if isinstance(arg, fx.Node) and arg in root_of else arg

    for node in list(graph.nodes):
        if node in plan.twin:
            with graph.inserting_before(node):
                new = graph.call_function(plan.twin[node], fx.node.map_arg(node.args, current),
                                          fx.node.map_arg(node.kwargs, current))
            new.meta = dict(node.meta)
            latest[root_of[node]] = new
        else:
            for arg in node.all_input_nodes:
                if arg in root_of and current(arg) is not arg:
                    node.replace_input_with(arg, current(arg))
    for node in reversed(list(plan.twin)):
        graph.erase_node(node)


def _twin(node: fx.Node) -> Any:
    """``add.Tensor`` for ``add_.Tensor``, if it takes the same arguments and gives the
    mutated tensor's dtype (``a.add_(b)`` keeps ``a``'s dtype, ``a + b`` promotes)."""
    op = node.target
    name = op.overloadpacket.__name__
    packet = getattr(torch.ops.aten, name[:-1], None) if name.endswith("_") else None
    twin = getattr(packet, op._overloadname, None) if packet is not None else None
    if twin is None or twin._schema.is_mutable or _signature(twin) != _signature(op):
        return None
    val = node.meta.get("val")
    try:
        with torch.no_grad():
            got = twin(*fx.node.map_arg(node.args, _stand_in), **fx.node.map_arg(node.kwargs, _stand_in))
    except Exception:  # noqa: BLE001 - a twin that cannot run on stand-ins is not used
        return None
    if not isinstance(val, torch.Tensor) or not isinstance(got, torch.Tensor) or got.dtype != val.dtype:
        return None
    return twin


def _signature(op: torch._ops.OpOverload) -> list:
    """Argument types and kinds (``dropout_`` names its first ``self``, ``dropout`` ``input``)."""
    return [(str(a.type), a.kwarg_only, a.name if a.kwarg_only else None) for a in op._schema.arguments]


def _stand_in(node: fx.Node) -> Any:
    """A value of ``node``'s type for dtype promotion: a meta tensor of its rank and
    dtype, or a number of its kind."""
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return torch.empty((1,) * val.dim(), dtype=val.dtype, device="meta")
    if isinstance(val, (torch.SymBool, bool)):
        return True
    if isinstance(val, (torch.SymInt, int)):
        return 1
    if isinstance(val, (torch.SymFloat, float)):
        return 1.0
    raise TypeError(f"no stand-in for {node.name}")


def _fresh(node: Any) -> bool:
    """Made in the graph by an op whose outputs share no input's storage."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return False
    if node.target is operator.getitem:
        return _fresh(node.args[0])
    op = node.target
    return (isinstance(op, torch._ops.OpOverload) and not op._schema.is_mutable and op not in SHARES_INPUT
            and all(r.alias_info is None for r in op._schema.returns))


def _may_alias(user: fx.Node, member: fx.Node, members: set) -> bool:
    """Whether ``user`` may keep a view or alias of ``member`` (other than being one of
    its in-place ops), or is not an ATen op whose schema says."""
    op = user.target
    if not isinstance(op, torch._ops.OpOverload) or op in SHARES_INPUT:
        return True
    schema = op._schema.arguments
    passed = [schema[i] for i, arg in enumerate(user.args) if _holds(arg, member)]
    passed += [a for a in schema if _holds(user.kwargs.get(a.name), member)]
    own = user in members and user.args[0] is member
    return any(a.alias_info is not None and not (own and a is schema[0]) for a in passed)


def _holds(arg: Any, member: fx.Node) -> bool:
    return arg is member or (isinstance(arg, (list, tuple)) and any(a is member for a in arg))
