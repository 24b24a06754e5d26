"""torch.export to functional ATen; the module path of each node.

``export(model, args, kwargs)`` runs ``torch.export.export(strict=False)``; its
training IR is used as it is where the explained input's descendants hold only table
entries and ops the decomposition keeps, and in-place ops write only tensors no view
shares (rewritten out of place, see ``_functional``), else
``run_decompositions({})`` functionalises in-place ops
(``silu_`` → ``silu``) and rewrites composite ones (``square`` → ``pow``). Both keep
``aten.detach.default`` nodes (checked in tests/engine): a detached tensor carries no
relevance.

With ``dynamic=True`` every axis of every tensor input is declared ``Dim.AUTO``: the
export keeps symbolic the sizes the model lets vary (batch, tokens, image height and
width) and fixes the others (channels; the spatial size of a model with a Linear
classifier), so one graph serves every input that :meth:`Traced.bind` accepts. Sizes
are traced size-obliviously (``backed_size_oblivious``): a batch of one does not
specialise the graph to one sample. Symbolic sizes then appear as ``aten.sym_size``
nodes and plain arithmetic on them; they carry no relevance.
"""

from __future__ import annotations

import inspect
import operator
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import sympy
import torch
from torch import fx, nn

from . import inplace

__all__ = ["Traced", "export", "module_of"]


class UnsupportedModelError(TypeError):
    """The model cannot be traced, or has an op without a relevance operator."""


@dataclass
class Traced:
    graph: fx.Graph
    #: placeholder name -> tensor, for parameters, buffers and lifted constants
    constants: dict[str, torch.Tensor]
    #: user-input placeholder names, in order (first: the explained input)
    inputs: list[str]
    #: names of the keyword user inputs
    input_names: list[str]
    #: per user input name: its shape, ints where fixed and sympy expressions where symbolic
    shapes: dict[str, tuple] = field(default_factory=dict)
    #: per size symbol: the inclusive range of sizes the export is valid for
    ranges: dict[Any, tuple[int, float]] = field(default_factory=dict)

    @property
    def dynamic(self) -> bool:
        """Whether any input size is symbolic."""
        return bool(self.ranges)

    def bind(self, values: dict[str, Any]) -> Optional[dict[Any, int]]:
        """The value of each size symbol for these user inputs (name -> value), or None
        if the graph does not cover them (a fixed size differs, a shared size is not
        shared, a size is out of range)."""
        sizes: dict[Any, int] = {}
        checks = []
        for name, shape in self.shapes.items():
            value = values.get(name)
            if not isinstance(value, torch.Tensor) or value.dim() != len(shape):
                return None
            for expected, got in zip(shape, value.shape):
                if isinstance(expected, int):
                    if expected != got:
                        return None
                elif isinstance(expected, sympy.Symbol):
                    if sizes.setdefault(expected, int(got)) != got:
                        return None
                else:
                    checks.append((expected, int(got)))
        for sym, value in sizes.items():
            low, high = self.ranges.get(sym, (0, float("inf")))
            if not low <= value <= high:
                return None
        for expr, got in checks:  # a size derived from others (rare: AUTO found a relation)
            if expr.free_symbols - set(sizes) or int(expr.subs(sizes)) != got:
                return None
        return sizes


def export(model: nn.Module, args: tuple, kwargs: dict, dynamic: bool = False) -> Traced:
    """Export ``model`` to functional ATen: one graph for these input shapes, or with
    ``dynamic=True`` for every size the model lets vary (see the module docstring)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if dynamic:
                with torch.fx.experimental._config.patch(backed_size_oblivious=True):
                    ep = torch.export.export(model, args, kwargs, strict=False,
                                             dynamic_shapes=_all_axes_auto(model, args, kwargs))
                    ep = _functional(ep)
            else:
                ep = _functional(torch.export.export(model, args, kwargs, strict=False))
    except Exception as err:  # torch.export raises many types
        _raise_if_input_does_not_fit(model, args, kwargs)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsupportedModelError(
            f"Cannot export {type(model).__name__} with torch.export: {first} skbilrp needs a "
            "model torch.export can trace: no data-dependent control flow, no mutation of "
            "captured tensors (torch.export.export(model, args, strict=False) must succeed)."
        ) from err
    sig = ep.graph_signature
    state = dict(ep.state_dict)
    lookup: dict[str, torch.Tensor] = {}
    for ph, target in sig.inputs_to_parameters.items():
        lookup[ph] = state[target]
    for ph, target in sig.inputs_to_buffers.items():
        lookup[ph] = state[target] if target in state else ep.constants[target]
    for ph, target in sig.inputs_to_lifted_tensor_constants.items():
        lookup[ph] = ep.constants[target]
    user = list(sig.user_inputs)
    shapes = {}
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in user and isinstance(node.meta.get("val"), torch.Tensor):
            shapes[node.name] = tuple(_size(s) for s in node.meta["val"].shape)
    symbols = {e for shape in shapes.values() for d in shape if not isinstance(d, int) for e in d.free_symbols}
    ranges = {}
    for sym, vr in ep.range_constraints.items():
        if sym in symbols:
            ranges[sym] = (int(vr.lower), int(vr.upper) if vr.upper.is_Integer else float("inf"))
    return Traced(ep.graph, lookup, user, user, shapes, ranges)


#: ops the decomposition keeps, or turns into ops the table lacks too (a carrying input
#: is refused either way): the training IR may hold them
_AS_DECOMPOSED = frozenset({torch.ops.aten.__and__.Tensor, torch.ops.aten.__or__.Tensor})
#: table entries no decomposed graph holds and no oracle test reaches: decompose first
DECOMPOSE_FIRST = frozenset({torch.ops.aten.upsample_bilinear2d.default})


def _decomposes(op: torch._ops.OpOverload) -> bool:
    """Whether ``run_decompositions({})`` rewrites ``op`` (a C++ or Python
    CompositeImplicitAutograd kernel)."""
    return (torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeImplicitAutograd")
            or torch._C.DispatchKey.CompositeImplicitAutograd in op.py_kernels)


def _functional(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """The exported program in the functional ATen the operator table reads.

    ``run_decompositions({})`` costs more than the export itself (MiniLM: 2.0 s against
    1.1 s; EfficientNet-Lite0: 6.5 s against 4.3 s, ``bench_engine.py`` d). It is
    skipped where it would change nothing the engine reads: no op of the export's
    training IR wraps others, in-place ops write only tensors the graph made and no view
    shares (rewritten out of place, :mod:`.inplace`: ``relu_`` of ``ReLU(inplace=True)``,
    ``out += identity``), and each op that the explained input reaches is
    a table entry (whose rule is the op's,
    however spelled: ``reshape`` or ``view``, ``to`` or ``_to_copy``) or an op the
    decomposition keeps (eval-mode ``batch_norm`` is then rewritten to the
    decomposition's form); ops it does not reach (masks, positions) run as they are, and
    so does arithmetic on sizes (``math.ceil``, ``sym_max``: kept by the decomposition
    too). An in-place ``detach_`` of a tensor the explained input does not reach (the
    empty key/value cache a decoder concatenates to) changes no value and is dropped, as
    the decomposition drops it. Else (in-place ops on a view or an input, batch
    statistics, composite ops the table lacks such as ``square`` on the input's
    descendants, a ``detach_`` of one) the program is decomposed.
    """
    from .ops import OPS  # noqa: PLC0415 (the table imports this module)

    def decomposes(op: torch._ops.OpOverload, reached: bool) -> bool:
        return op in DECOMPOSE_FIRST or (reached and op not in OPS and op not in _AS_DECOMPOSED and _decomposes(op))

    mutations = inplace.plan(ep.graph)
    if mutations is None:  # an in-place op on a tensor some view shares
        return ep.run_decompositions({})
    explained = _reached_by_explained_input(ep, mutations.members().values())
    dropped = []
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        op = node.target
        if isinstance(op, torch._ops.HigherOrderOperator):
            return ep.run_decompositions({})
        if is_size(node):
            continue
        if not isinstance(op, torch._ops.OpOverload):
            if getattr(op, "__module__", None) != "_operator":  # a Python function on tensors
                return ep.run_decompositions({})
        elif op is _BATCH_NORM:
            if _full_args(node)[5] is not False:  # batch statistics: decomposed, then refused
                return ep.run_decompositions({})
        elif op is _DETACH_:
            if node.args[0] in explained:
                return ep.run_decompositions({})
            dropped.append(node)
        elif node in mutations.twin:
            if decomposes(mutations.twin[node], node in explained):
                return ep.run_decompositions({})
        elif op._schema.is_mutable or decomposes(op, node in explained):
            return ep.run_decompositions({})
    inplace.rewrite(ep.graph, mutations)
    for node in dropped:  # it returns its argument, unchanged
        node.replace_all_uses_with(node.args[0])
        ep.graph.erase_node(node)
    _drop_dead_code(ep.graph)
    _batch_norm_as_decomposed(ep.graph)
    return ep


_DETACH_ = torch.ops.aten.detach_.default
#: values of symbolic-size nodes (``aten.sym_size.int``, ``operator.mul`` on sizes, ``math.ceil``)
_SIZES = (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool)


def is_size(node: fx.Node) -> bool:
    """A node computing a size, not a tensor: a constant, whatever its inputs."""
    return isinstance(node.meta.get("val"), _SIZES)


def _reached_by_explained_input(ep: torch.export.ExportedProgram, aliases=()) -> set:
    """The nodes whose value depends on the explained input (the first user input): only
    these may carry relevance, so only these need operator-table entries. The others
    (masks, positions, caches: weights, constants and context only) run as they are.
    ``aliases``: groups of nodes naming one storage (a tensor and its in-place ops): one
    reached, all are, and so is each reader of any of them (more than the rewritten
    graph reaches: a reader before the in-place op reads the old value)."""
    first = ep.graph_signature.user_inputs[0] if ep.graph_signature.user_inputs else None
    reached = {n for n in ep.graph.nodes if n.op == "placeholder" and n.name == first}
    while True:
        for node in ep.graph.nodes:  # its sizes are no values of it (a causal mask from the length)
            if node.op == "call_function" and not is_size(node) and any(a in reached for a in node.all_input_nodes):
                reached.add(node)
        more = {m for group in aliases if not reached.isdisjoint(group) for m in group} - reached
        if not more:
            return reached
        reached |= more


def _drop_dead_code(graph: fx.Graph) -> None:
    """Nodes nothing uses, gone as the decomposition drops them: random ops too (fx keeps
    them as impure; unused, they change no output, and the table would refuse them)."""
    def impure(node: fx.Node) -> bool:
        op = node.target
        random = (isinstance(op, torch._ops.OpOverload) and torch.Tag.nondeterministic_seeded in op.tags
                  and not op._schema.is_mutable)
        return node.is_impure() and not random

    graph.eliminate_dead_code(is_impure_node=impure)


_BATCH_NORM = torch.ops.aten.batch_norm.default


def _full_args(node: fx.Node) -> list:
    from .canonicalize import full_args  # noqa: PLC0415 (it imports this module)

    return full_args(node)[0]


def _batch_norm_as_decomposed(graph: fx.Graph) -> None:
    """Eval-mode ``batch_norm`` spelled as the decomposition spells it,
    ``_native_batch_norm_legit_no_training(...)[0]``: the form the canonicalisation folds
    into the conv or linear before it (and the table's entry for a BatchNorm left alone)."""
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not _BATCH_NORM:
            continue
        x, w, b, mean, var, _, momentum, eps = _full_args(node)[:8]
        with graph.inserting_before(node):
            bn = graph.call_function(torch.ops.aten._native_batch_norm_legit_no_training.default,
                                     (x, w, b, mean, var, momentum, eps))
            out = graph.call_function(operator.getitem, (bn, 0))
        bn.meta = {k: v for k, v in node.meta.items() if k != "val"}  # a tuple: nothing reads it
        out.meta = dict(node.meta)
        node.replace_all_uses_with(out)
        graph.erase_node(node)


def _size(size: Any) -> Any:
    """An exported placeholder's size: an int, or its sympy expression when symbolic."""
    if isinstance(size, torch.SymInt):
        expr = size.node.expr
        return int(expr) if expr.is_number else expr
    return int(size)


def _all_axes_auto(model: nn.Module, args: tuple, kwargs: dict) -> dict:
    """``dynamic_shapes`` for torch.export: ``Dim.AUTO`` on every axis of every tensor input."""
    bound = inspect.signature(model.forward).bind(*args, **kwargs).arguments
    return torch.utils._pytree.tree_map(
        lambda v: {i: torch.export.Dim.AUTO for i in range(v.dim())} if isinstance(v, torch.Tensor) else None,
        dict(bound))


def _raise_if_input_does_not_fit(model: nn.Module, args: tuple, kwargs: dict) -> None:
    """Tell a bad input (the model's own forward fails) from an untraceable model."""
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except (RuntimeError, IndexError, ValueError):
        raise
    except Exception:  # noqa: BLE001 - any other failure is the export's to report
        return


def module_of(node: fx.Node) -> tuple[str, str]:
    """``(path, class name)`` of the innermost module a node came from ("" for the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", "<model>"
    path, cls = list(stack.values())[-1]
    name = cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))
    return path, name.rpartition(".")[2] if "." in name else name


def module_paths(node: fx.Node) -> list[str]:
    """Paths of all modules enclosing ``node``, outermost first."""
    return [p for p, _ in (node.meta.get("nn_module_stack") or {}).values()]
