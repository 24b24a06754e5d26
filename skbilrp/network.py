"""The linearised relevance network: record a forward pass, then push probes.

``RelevanceNetwork(model, rules)`` canonises and traces the model once and gives each
graph node its relevance operator. ``record(x)`` runs the forward pass on a batch and
keeps, per node, what its linear relevance map needs. The returned
:class:`Recording` then maps probes on input positions to contribution flows of the
output features (``push``): forward mode sends one probe per group of positions;
reverse mode differentiates the same linear map with autograd.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import fx, nn

from .canonize import UnsupportedModelError, canonize
from .operators import (
    InputCells,
    InputFlow,
    RelevanceOperator,
    WeightedOperator,
    operator_for_function,
    operator_for_module,
)
from .rules import Rule, RuleSpec, resolve_rules

__all__ = ["RelevanceNetwork", "Recording"]


class RelevanceNetwork:
    """A model prepared for relevance propagation.

    Parameters
    ----------
    model : nn.Module
        Feature extractor ``phi``; its first positional input is explained, any further
        inputs (e.g. an attention mask) are context without relevance. It is copied.
    rules : str, Rule, mapping or callable, default="zero"
        Rule assignment, see :func:`skbilrp.rules.resolve_rules`.
    dtype : torch.dtype, optional
        Compute dtype of the copy (default: the model's own).

    Attributes
    ----------
    model : nn.Module
        The canonised copy.
    rules : dict
        Module name → Rule for every layer that takes one (weighted layers and types
        registered with ``takes_rule=True``).
    """

    def __init__(self, model: nn.Module, rules: RuleSpec = "zero", dtype: Optional[torch.dtype] = None) -> None:
        self.model, self.graph = canonize(model, dtype)
        self.rules: dict[str, Rule] = resolve_rules(rules, self.model)
        self.nodes = list(self.graph.graph.nodes)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if not placeholders:
            raise UnsupportedModelError("The model takes no input.")
        self.input_node = placeholders[0]
        self.context_nodes = placeholders[1:]
        self.carries = self._carrying_nodes()
        self.ops: dict[fx.Node, RelevanceOperator] = {}
        modules = dict(self.graph.named_modules())
        for node in self.nodes:
            if node in self.carries and node.op in ("call_module", "call_function", "call_method"):
                self.ops[node] = self._operator(node, modules)
        self.last_use = {}
        for i, node in enumerate(self.nodes):
            for arg in node.all_input_nodes:
                self.last_use[arg] = i

    def _carrying_nodes(self) -> set:
        carries = {self.input_node}
        for node in self.nodes:
            if node.op in ("placeholder", "get_attr", "output"):
                continue
            if any(a in carries for a in node.all_input_nodes):
                if not _carries_no_relevance(node):
                    carries.add(node)
        return carries

    def _operator(self, node: fx.Node, modules: dict) -> RelevanceOperator:
        if node.op == "call_module":
            module = modules[node.target]
            op = operator_for_module(module, self.rules.get(node.target))
            if op is None:
                raise UnsupportedModelError(
                    f"Module {node.target!r} of type {type(module).__name__} has no relevance "
                    "rule. Register one with skbilrp.operators.register_operator("
                    f"{type(module).__name__}, factory) (see its docstring), or replace the module."
                )
            return op
        op = operator_for_function(node.target, node.op == "call_method")
        if op is None:
            name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
            raise UnsupportedModelError(
                f"Operation {name!r} (graph node {node.name!r}) has no relevance rule. Wrap it "
                "in a module and register an operator with skbilrp.operators.register_operator."
            )
        return op

    @torch.no_grad()
    def record(self, x: torch.Tensor, context: Optional[dict[str, Any]] = None) -> "Recording":
        """Run the forward pass on a batch and keep what the relevance maps need.

        Parameters
        ----------
        x : torch.Tensor
            Batch ``(N, ...)`` of inputs to explain.
        context : dict, optional
            Values of the model's further inputs, by argument name.

        Returns
        -------
        Recording
        """
        context = dict(context or {})
        values: dict[fx.Node, Any] = {}
        states: dict[fx.Node, Any] = {}
        numels = [x[0].numel()]
        for i, node in enumerate(self.nodes):
            if node.op == "placeholder":
                if node is self.input_node:
                    values[node] = x
                elif node.name in context or node.target in context:
                    values[node] = context.get(node.target, context.get(node.name))
                elif node.args:
                    values[node] = node.args[0]  # the argument's default
                else:
                    raise ValueError(f"The model needs its input {node.target!r}; pass it as context.")
            elif node.op == "get_attr":
                values[node] = _getattr(self.graph, node.target)
            elif node.op == "output":
                out = fx.node.map_arg(node.args[0], lambda n: values[n])
            else:
                args = fx.node.map_arg(node.args, lambda n: values[n])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n])
                if node in self.ops:
                    values[node], states[node] = self.ops[node].record(args, kwargs)
                    if isinstance(values[node], torch.Tensor) and values[node].dim():
                        numels.append(values[node][0].numel())
                else:
                    values[node] = _evaluate(node, self.graph, args, kwargs)
            for arg in node.all_input_nodes:
                if self.last_use[arg] == i and arg in self.carries:
                    del values[arg]
        if not isinstance(out, torch.Tensor):
            raise UnsupportedModelError(
                f"The model must return one tensor of features, got {type(out).__name__}; "
                "wrap it in a module that returns the embedding tensor."
            )
        if out.dim() < 2 or out.shape[0] != x.shape[0]:
            raise UnsupportedModelError(
                f"The model must return features of shape (N, ...), got {tuple(out.shape)} "
                f"for a batch of {x.shape[0]}."
            )
        fused = self._fuse(states)
        constants = {n: v for n, v in values.items() if n not in self.carries}
        rec = Recording(self, x, out.flatten(1), states, constants, fused)
        rec.max_numel, rec.total_numel = max(numels), sum(numels)
        return rec

    def _fuse(self, states: dict) -> set:
        """Fold each activation's ratio into the layer that alone feeds it (one multiply)."""
        fused = set()
        for node, op in self.ops.items():
            if not op.elementwise_scale:
                continue
            src = node.args[0]
            if isinstance(self.ops.get(src), WeightedOperator) and len(src.users) == 1:
                st = states[src]
                st.scale = states[node] if st.scale is None else st.scale * states[node]
                fused.add(node)
        return fused


def _carries_no_relevance(node: fx.Node) -> bool:
    """Detached tensors (e.g. attention probabilities) and shape queries such as
    ``x.size(0)`` or ``x.shape`` (used by ``x.view(x.size(0), -1)``) carry no relevance."""
    if node.op == "call_method":
        return node.target in ("detach", "size", "dim", "numel")
    if node.op == "call_function":
        return node.target is torch.detach or (
            node.target is getattr and node.args[1:2] in (("shape",), ("ndim",), ("dtype",), ("device",)))
    return False


def _flow_of(arg: Any, flows: dict) -> Any:
    """The flow of one node argument: None for constants (numbers, shapes, slices) and
    for nodes without relevance; a list for a list of tensors (as for ``torch.cat``)."""
    if isinstance(arg, fx.Node):
        return flows.get(arg)
    if isinstance(arg, (list, tuple)):
        parts = [_flow_of(a, flows) for a in arg]
        return None if all(p is None for p in parts) else parts
    return None


def _getattr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _evaluate(node: fx.Node, root: nn.Module, args: tuple, kwargs: dict) -> Any:
    if node.op == "call_module":
        return _getattr(root, node.target)(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


class Recording:
    """A forward pass of a :class:`RelevanceNetwork` on one batch, ready for probes.

    Attributes
    ----------
    x : torch.Tensor
        The recorded batch ``(N, ...)``.
    features : torch.Tensor
        ``phi(x)`` flattened, ``(N, h)``.
    """

    def __init__(self, network: RelevanceNetwork, x: torch.Tensor, features: torch.Tensor,
                 states: dict, constants: dict, fused: set) -> None:
        self.network = network
        self.x = x
        self.features = features
        self.states = states
        self.constants = constants
        self.fused = fused
        #: per-sample sizes of the largest and of all flows, for memory budgeting
        self.max_numel = self.total_numel = int(x[0].numel())

    def push(self, probe: torch.Tensor, channel_axis: Optional[int] = None) -> torch.Tensor:
        """Map probes on the input to the contribution flows of the features.

        Parameters
        ----------
        probe : torch.Tensor
            ``(K * N, *x.shape[1:])``, probe-major: row ``k * N + n`` is probe ``k`` of
            sample ``n``. Linear in ``probe``; autograd through it gives reverse mode.
        channel_axis : int, optional
            Channel axis of one input sample; tells ``Rule(bias="flat")`` which input
            positions lie under a unit (see :class:`~skbilrp.operators.InputCells`).

        Returns
        -------
        torch.Tensor
            ``(K * N, h)``: the part of each feature that each probe accounts for.
        """
        net = self.network
        flows: dict[fx.Node, Any] = {}
        cells = InputCells(probe, channel_axis)
        for i, node in enumerate(net.nodes):
            if node is net.input_node:
                flows[node] = InputFlow(self.x, probe)
            elif node.op == "output":
                out = flows[node.args[0]]
                out = out.materialize() if isinstance(out, InputFlow) else out
                if out is None:
                    raise UnsupportedModelError("No relevance reaches the model output.")
                return out.reshape(out.shape[0], -1)
            elif node in net.ops:
                src = node.args[0]
                if node in self.fused:
                    flows[node] = flows[src]
                else:
                    flow_args = [_flow_of(a, flows) for a in node.args]
                    args = fx.node.map_arg(node.args, lambda n: self.constants.get(n))
                    kwargs = fx.node.map_arg(node.kwargs, lambda n: self.constants.get(n))
                    op = net.ops[node]
                    extra = {"cells": cells} if op.uses_cells else {}
                    flows[node] = op.push(self.states[node], list(flow_args), args, kwargs, **extra)
            for arg in node.all_input_nodes:
                if net.last_use[arg] == i:
                    flows.pop(arg, None)
        raise AssertionError("graph has no output")  # pragma: no cover

