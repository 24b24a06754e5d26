"""The one operator table: exact ATen ``OpOverload`` → relevance operator.

Each entry is a class decorated with :func:`relevance_op`. ``record(args, kwargs)``
gets the node's arguments (tensors, numbers; schema defaults filled in) and returns
``(output, state)``; ``push(state, flows, args, kwargs, cells)`` gets, parallel to
``args``, the flow of each argument (None where no relevance flows; a list for a list
argument) and returns the output's flow. ``push`` is linear in the flows.

Layout: a flow is ``(K, *value.shape)``, one leading probe axis before the value's own
axes, wherever the value keeps its batch axis (timm's ``qkv.permute(2, 0, 3, 1, 4)``, a
Swin window partition that folds windows into it). States have the value's shape and
broadcast against the flow, so operators never need to know where the batch axis is.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import fx
from torch._ops import OpOverload

from ..cells import CellsError, ProbeCells, safe_divide
from ..trace import UnsupportedModelError, module_of
from ..windows import WindowFlow

__all__ = ["OPS", "relevance_op", "RelevanceOp", "UnsupportedOperatorError", "lookup",
           "InputFlow", "ProbeCells", "CellsError", "materialize", "safe_divide", "shift_dims", "flat_apply", "align"]

aten = torch.ops.aten

#: the table: exact overload -> operator class
OPS: dict[Any, type["RelevanceOp"]] = {}


class UnsupportedOperatorError(UnsupportedModelError):
    """A traced op has no relevance operator, or its operator refuses this use."""


def relevance_op(*overloads: OpOverload):
    """Class decorator: this class is the relevance operator of these exact overloads.

    Raises RuntimeError on a duplicate registration (never overrides silently).
    """
    def register(cls):
        for op in overloads:
            if not isinstance(op, OpOverload) and op is not _GETITEM:
                raise TypeError(f"relevance_op needs exact OpOverloads (aten.add.Tensor), got {op!r}.")
            if op in OPS:
                raise RuntimeError(f"duplicate registrations for {op}: already mapped to {OPS[op].__name__}")
            OPS[op] = cls
        return cls
    return register


import operator as _operator  # noqa: E402

_GETITEM = _operator.getitem


def describe(node: fx.Node) -> str:
    path, cls = module_of(node)
    return f"{wrapped_op(node)} (node {node.name!r}, module {path or '<root>'!r}, {cls})"


def _qualified(op: Any) -> str:
    return f"torch.ops.{op.namespace}.{op._opname}.{op._overloadname}" if isinstance(op, OpOverload) else str(op)


def hook(node: fx.Node) -> str:
    return f"@skbilrp.engine.ops.relevance_op({_qualified(wrapped_op(node))})"


def wrapped_op(node: fx.Node) -> Any:
    """The op of a node; for a functionalised mutating op, the op it wraps."""
    if "auto_functionalized" in str(node.target) and node.args and isinstance(node.args[0], OpOverload):
        return node.args[0]
    return node.target


class RelevanceOp:
    """Base class of an operator-table entry, built once per graph node."""

    #: push is ``flow * state`` elementwise (may be folded into its producer's scale)
    fusable = False
    #: the output carries no relevance (detach, norms): see :meth:`is_constant`
    constant = False
    #: push takes :class:`~..windows.WindowFlow` crops (else the network hands it dense flows)
    windowed = False

    @classmethod
    def is_constant(cls, network: Any) -> bool:
        """Whether this op's output carries no relevance in ``network``."""
        return cls.constant

    @classmethod
    def ends(cls, network: Any) -> frozenset:
        """Positions of arguments whose relevance this op takes in and passes on to no
        output in ``network`` (q and k of attention under CP-LRP). The network computes no
        flow for a node all of whose relevance ends so: it is never pushed."""
        return frozenset()

    def __init__(self, node: fx.Node, network: Any) -> None:
        self.node = node
        self.op = node.target
        #: per positional argument: does relevance reach it (set by the network)
        self.carrying: list[bool] = []

    def refuse(self, why: str, fix: str = "") -> "UnsupportedOperatorError":
        op = wrapped_op(self.node)
        entry = OPS.get(op)
        if entry is not None:  # an op with an entry refusing this use: a second registration would raise
            extend = (f" Its table entry is {entry.__module__}.{entry.__name__}; to explain this "
                      f"use, put another operator in its place: skbilrp.engine.ops.OPS[{_qualified(op)}] = YourOp "
                      "(docs page \"Operator table\").")
        else:
            extend = f" Register an operator with {hook(self.node)}."
        return UnsupportedOperatorError(f"{describe(self.node)}: {why}." + (f" {fix}." if fix else "") + extend)

    def record(self, args: list, kwargs: dict) -> tuple[Any, Any]:
        return self.op(*args, **kwargs), None

    def push(self, state: Any, flows: list, args: list, kwargs: dict, cells: Optional[ProbeCells]) -> Any:
        raise NotImplementedError


def lookup(node: fx.Node) -> type[RelevanceOp]:
    """The operator class of ``node``, or an error naming op, node, module and the hook."""
    op = wrapped_op(node)
    if isinstance(op, OpOverload) and op._schema.is_mutable:
        raise UnsupportedOperatorError(
            f"{describe(node)} mutates its input; skbilrp cannot follow "
            "relevance through in-place updates. Rewrite it out-of-place, or register an "
            f"operator with {hook(node)}."
        )
    cls = OPS.get(node.target)
    if cls is None:
        raise UnsupportedOperatorError(
            f"{describe(node)} has no relevance operator. Register one with {hook(node)}; "
            "supported ops: skbilrp.engine.ops.OPS (docs page \"Operator table\")."
        )
    return cls


def flows_only_through(op: RelevanceOp, flows: list, *positions: int) -> None:
    for i, f in enumerate(flows):
        if f is not None and i not in positions:
            raise op.refuse(f"relevance reaches argument {i} of {op.op}, which is not linear in it",
                            "Detach that argument in the model")


class InputFlow:
    """The flow of the model input, kept as ``carried ⊙ probe`` until an operator needs it
    (the z^B rule needs the probe itself; position-wise ops keep the pair).

    ``value`` is the input as position-wise preprocessing left it (``(x - mean) / std``:
    the z^B bounds are in its space); ``carried`` is the part of it that comes from ``x``
    when the constants mixed in were absorbed (``bias="absorb"``: LRP-0 is then gradient ×
    input at ``x``), None when it is all of ``value`` (the constants' shares passed on)."""

    __slots__ = ("value", "probe", "carried")

    def __init__(self, value: torch.Tensor, probe: torch.Tensor, carried: Optional[torch.Tensor] = None) -> None:
        self.value, self.probe, self.carried = value, probe, carried  # (N, ...), (K, N, ...), (N, ...)

    def scaled(self, fn) -> "InputFlow":
        """The flow of ``fn(input)`` for a position-wise linear ``fn`` (a sign, a scale)."""
        return InputFlow(fn(self.value), self.probe, None if self.carried is None else fn(self.carried))

    def materialize(self) -> torch.Tensor:
        return self.probe * (self.value if self.carried is None else self.carried)


def materialize(flow: Any) -> Any:
    """A flow as a tensor (an :class:`InputFlow` becomes ``value * probe``, a
    :class:`~..windows.WindowFlow` its dense map)."""
    return flow.materialize() if isinstance(flow, (InputFlow, WindowFlow)) else flow


def shift_dims(dims: Any, ndim: int) -> Any:
    """Axis arguments of a value with ``ndim`` axes, as axes of its flow (one more, in front)."""
    if isinstance(dims, int):
        return dims % ndim + 1
    return [d % ndim + 1 for d in dims]


def align(flow: torch.Tensor, ndim: int) -> torch.Tensor:
    """A flow ``(K, *value.shape)`` with singleton axes after the probe axis, so that it
    broadcasts like a value of ``ndim`` axes (torch puts new axes in front)."""
    extra = ndim - (flow.dim() - 1)
    return flow.reshape((flow.shape[0],) + (1,) * extra + tuple(flow.shape[1:])) if extra > 0 else flow


def flat_apply(fn, flow: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``fn`` on a flow, with the probe axis merged into the value's first axis (for ops
    such as convolutions and pools that take exactly one leading batch axis)."""
    k = flow.shape[0]
    out = fn(flow.flatten(0, 1), *args, **kwargs)
    return out.unflatten(0, (k, -1))


# the entries register themselves on import: the table is complete once these load
from . import attention, combine, elementwise, normalization, pooling, refused, shape, weighted  # noqa: E402,F401
