"""The exported relevance network: record a forward pass, then push probes.

``ExportedNetwork(model, rules, dtype)`` is the engine :class:`skbilrp.Explainer` runs
on. Per input shape it exports the model to
functional ATen (:mod:`.trace`), canonicalises the graph (:mod:`.canonicalize`) and
gives each node that carries relevance to the output its operator from the one table
(:mod:`.ops`). ``record`` runs the graph and keeps each operator's state; the returned
:class:`ExportedRecording` pushes probes (forward mode) and is differentiable in the
probe (reverse mode).
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import fx, nn

from ..rules import Rule, RuleSpec, Zero, resolve_rules
from .canonicalize import canonical_modules, canonicalize
from .ops import OPS, CellsError, InputFlow, ProbeCells, aten, lookup
from .ops.refused import RANDOM, Random
from .ops.weighted import Weighted
from .trace import UnsupportedModelError, export, module_of

__all__ = ["ExportedNetwork", "ExportedRecording"]

#: ops through which a gate factor may pass on its way to the product it scales
_GATE_PATH = {aten.view.default, aten.expand.default, aten.unsqueeze.default, aten.reshape.default,
              aten.permute.default, aten.clone.default, aten._unsafe_view.default, aten.squeeze.dim}
_GATES = {aten.sigmoid.default, aten.hardsigmoid.default}


class _Program:
    """One exported graph (for one input shape) with its operators."""

    def __init__(self, network: "ExportedNetwork", x: torch.Tensor, context: dict) -> None:
        self.network = network
        traced = export(network.model, (x,), context)
        self.graph, self.constants = traced.graph, traced.constants
        canonicalize(self.graph, self.constants)
        self.nodes = list(self.graph.nodes)
        for node in self.nodes:  # a random tensor is no constant, wherever it is
            if node.target in RANDOM:
                raise Random(node, network).refuse(Random.why, Random.fix)
        users = [n for n in self.nodes if n.op == "placeholder" and n.name in traced.inputs]
        self.input_node = users[0]
        self.context_nodes = users[1:]
        self.carries = self._carrying(set())
        gates = {n for n in self.nodes if n.target in _GATES and n in self.carries and self._is_gate(n)}
        if gates:
            self.carries = self._carrying(gates)
        self.live = self._live()
        self.ops = {}
        for node in self.nodes:
            if node in self.live and node.op == "call_function":
                op = self.ops[node] = lookup(node)(node, network)
                op.carrying = [isinstance(a, fx.Node) and a in self.carries for a in node.args]
        self.fused = {}
        for node, op in self.ops.items():
            src = node.args[0]
            if op.fusable and isinstance(self.ops.get(src), Weighted) and len(src.users) == 1:
                self.fused[node] = src
        self.last_use = {}
        for i, node in enumerate(self.nodes):
            for arg in node.all_input_nodes:
                self.last_use[arg] = i

    def _carrying(self, gates: set) -> set:
        carries = {self.input_node}
        for node in self.nodes:
            if node.op != "call_function" or node in gates:
                continue
            entry = OPS.get(node.target)
            if entry is not None and entry.is_constant(self.network):
                continue
            if any(a in carries for a in node.all_input_nodes):
                carries.add(node)
        return carries

    def _is_gate(self, node: fx.Node) -> bool:
        """A sigmoid/hardsigmoid whose every use is a factor of a product with a carrying
        tensor (squeeze-excitation, LSTM-style gates): it is then a constant."""
        seen, todo = [], [node]
        while todo:
            n = todo.pop()
            for u in n.users:
                if u.target in _GATE_PATH:
                    todo.append(u)
                elif u.target is aten.mul.Tensor:
                    other = u.args[1] if u.args[0] is n else u.args[0]
                    if not (isinstance(other, fx.Node) and other in self.carries and other is not n):
                        return False
                    seen.append(u)
                else:
                    return False
        return bool(seen)

    def _live(self) -> set:
        out = next(n for n in self.nodes if n.op == "output")
        live = set()
        todo = [a for a in out.all_input_nodes if a in self.carries]
        while todo:
            n = todo.pop()
            if n in live:
                continue
            live.add(n)
            todo.extend(a for a in n.all_input_nodes if a in self.carries)
        return live


class ExportedNetwork:
    """A model prepared for relevance propagation, traced with torch.export.

    Parameters
    ----------
    model : nn.Module
        Feature extractor ``phi``; its first positional input is explained, further
        inputs (keyword ``context``) carry no relevance. It is copied, never changed.
    rules : str, Rule, mapping or callable, default="zero"
        Rule assignment, see :func:`skbilrp.rules.resolve_rules` (keyed by module name).
    dtype : torch.dtype, optional
        Compute dtype of the copy.
    attention : {"cp", "attnlrp"}, default="cp"
        Attention probabilities as constants (CP-LRP: relevance flows through the
        values), or AttnLRP's softmax rule with uniform splits of ``q @ k^T``.
    """

    def __init__(self, model: nn.Module, rules: RuleSpec = "zero", dtype: Optional[torch.dtype] = None,
                 attention: str = "cp") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if attention not in ("cp", "attnlrp"):
            raise ValueError(f"attention must be 'cp' or 'attnlrp', got {attention!r}.")
        self.attention = attention
        frozen = copy.deepcopy(model).eval()
        if dtype is not None:
            frozen = frozen.to(dtype)
        for p in frozen.parameters():
            p.requires_grad_(False)
        canonical_modules(frozen)
        self.model = frozen
        self.rules: dict[str, Rule] = resolve_rules(rules, frozen)
        self._single = rules if isinstance(rules, Rule) else None
        modes = {r.bias for r in self.rules.values()}
        self._default_mode = self._single.bias if self._single else (modes.pop() if len(modes) == 1 else "absorb")
        self._programs: dict[tuple, _Program] = {}

    def rule_for(self, node: fx.Node) -> Rule:
        path, _ = module_of(node)
        rule = self.rules.get(path)
        if rule is None:  # an op outside every rule target: LRP-0, biases as the rules agree
            rule = self._single if self._single is not None else Zero(bias=self._default_mode)
        return rule

    def bias_mode_for(self, node: fx.Node) -> str:
        """Bias mode of a constant term (constant add, BatchNorm or LayerNorm shift): the
        Rule of its module if it has one, else the mode all assigned rules share."""
        path, _ = module_of(node)
        rule = self.rules.get(path)
        return rule.bias if rule is not None else self._default_mode

    def program(self, x: torch.Tensor, context: dict) -> _Program:
        key = (tuple(x.shape), x.dtype) + tuple(
            (k, tuple(v.shape) if isinstance(v, torch.Tensor) else repr(v)) for k, v in sorted(context.items()))
        if key not in self._programs:
            self._programs[key] = _Program(self, x, context)
        return self._programs[key]

    @torch.no_grad()
    def record(self, x: torch.Tensor, context: Optional[dict[str, Any]] = None) -> "ExportedRecording":
        """Run the forward pass on a batch and keep what the relevance maps need."""
        context = dict(context or {})
        prog = self.program(x, context)
        values: dict[fx.Node, Any] = {}
        states: dict[fx.Node, Any] = {}
        numels = [x[0].numel()]
        ctx_by_name = {n.name: n for n in prog.context_nodes}
        inputs = {prog.input_node: x}
        for i, (name, value) in enumerate(context.items()):
            node = ctx_by_name.get(name) or (prog.context_nodes[i] if i < len(prog.context_nodes) else None)
            if node is not None:
                inputs[node] = value
        out = None
        for i, node in enumerate(prog.nodes):
            if node.op == "placeholder":
                values[node] = inputs[node] if node in inputs else prog.constants[node.name]
            elif node.op == "output":
                out = fx.node.map_arg(node.args[0], lambda n: values[n])
            else:
                args = fx.node.map_arg(node.args, lambda n: values[n])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n])
                if node in prog.ops:
                    values[node], states[node] = prog.ops[node].record(list(args), kwargs)
                    v = values[node]
                    if isinstance(v, torch.Tensor) and v.dim():
                        numels.append(v[0].numel())
                else:
                    values[node] = node.target(*args, **kwargs)
            for arg in node.all_input_nodes:
                if prog.last_use.get(arg) == i and arg in prog.carries:
                    values.pop(arg, None)
        if isinstance(out, (tuple, list)):
            if len(out) != 1:
                raise UnsupportedModelError(
                    f"The model must return one tensor of features, got {len(out)} outputs; "
                    "wrap it in a module that returns the embedding tensor.")
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UnsupportedModelError(
                f"The model must return features of shape (N, ...), got {shape} for a batch of {x.shape[0]}.")
        for node, src in prog.fused.items():
            st = states[src]
            st.scale = states[node] if st.scale is None else st.scale * states[node]
        constants = {n: v for n, v in values.items() if n not in prog.carries}
        rec = ExportedRecording(self, prog, x, out.flatten(1), states, constants)
        rec.max_numel, rec.total_numel = max(numels), sum(numels)
        return rec


def _flow_of(arg: Any, flows: dict) -> Any:
    if isinstance(arg, fx.Node):
        return flows.get(arg)
    if isinstance(arg, (list, tuple)):
        parts = [_flow_of(a, flows) for a in arg]
        return None if all(p is None for p in parts) else parts
    return None


class ExportedRecording:
    """A forward pass of an :class:`ExportedNetwork` on one batch, ready for probes.

    Attributes: ``x`` (the batch), ``features`` (``(N, h)``), ``max_numel`` and
    ``total_numel`` (per-sample sizes of the largest and of all flows).
    """

    def __init__(self, network, program, x, features, states, constants) -> None:
        self.network, self.program = network, program
        self.x, self.features = x, features
        self.states, self.constants = states, constants
        self.max_numel = self.total_numel = int(x[0].numel())

    def push(self, probe: torch.Tensor, channel_axis: Optional[int] = None) -> torch.Tensor:
        """Map probes ``(K*N, *x.shape[1:])`` (probe-major) to feature flows ``(K*N, h)``."""
        prog = self.program
        flows: dict[fx.Node, Any] = {}
        probe = probe.reshape((-1,) + tuple(self.x.shape))  # (K, N, ...): see ops' layout
        cells = ProbeCells(probe, channel_axis)
        const = self.constants
        for i, node in enumerate(prog.nodes):
            if node is prog.input_node:
                flows[node] = InputFlow(self.x, probe)
            elif node.op == "output":
                out = node.args[0]
                out = out[0] if isinstance(out, (tuple, list)) else out
                flow = flows.get(out)
                if flow is None:
                    raise UnsupportedModelError("No relevance reaches the model output.")
                flow = flow.materialize() if isinstance(flow, InputFlow) else flow
                return flow.reshape(flow.shape[0] * flow.shape[1], -1)
            elif node in prog.ops:
                if node in prog.fused:
                    flows[node] = flows[node.args[0]]
                else:
                    flow_args = [_flow_of(a, flows) for a in node.args]
                    args = fx.node.map_arg(node.args, lambda n: const.get(n))
                    kwargs = fx.node.map_arg(node.kwargs, lambda n: const.get(n))
                    try:
                        flows[node] = prog.ops[node].push(self.states[node], flow_args, list(args), kwargs, cells)
                    except CellsError as err:
                        raise prog.ops[node].refuse(str(err).rstrip(".")) from None
            for arg in node.all_input_nodes:
                if prog.last_use.get(arg) == i:
                    flows.pop(arg, None)
        raise AssertionError("graph has no output")  # pragma: no cover

