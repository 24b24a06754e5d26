"""The exported relevance network: record a forward pass, then push probes.

``ExportedNetwork(model, rules, dtype)`` is the engine :class:`skbilrp.Explainer` runs
on. It exports the model to functional ATen (:mod:`.trace`), canonicalises the graph
(:mod:`.canonicalize`) and gives each node that carries relevance to the output its
operator from the one table (:mod:`.ops`). ``record`` runs the graph and keeps each
operator's state; the returned :class:`ExportedRecording` pushes probes (forward mode)
and is differentiable in the probe (reverse mode).

Exports are expensive (seconds: 10-30 forwards) and do not depend on the rules, so they
are prepared once per model and shared (:func:`prepared`): the frozen copy of the user's
model and its canonical graphs, exported with symbolic batch, sequence and spatial
sizes where the model allows. Every network builds its own operators on them (rules
and attention are per network); nothing a network builds is shared.
"""

from __future__ import annotations

import copy
import itertools
import os
import threading
import weakref
from typing import Any, Callable, Optional

import torch
from torch import fx, nn

from ..rules import Rule, RuleSpec, Zero, resolve_rules
from .canonicalize import canonical_modules, canonicalize
from .ops import OPS, CellsError, InputFlow, ProbeCells, aten, lookup, materialize
from .ops.refused import Random, is_random
from .ops.weighted import Weighted
from .spellings import LIKE, RESHAPES, SAME_VALUES
from .trace import Traced, UnsupportedModelError, export, is_size, module_of
from .windows import WindowFlow

__all__ = ["ExportedNetwork", "ExportedRecording", "clear_cache", "prepared", "reused_copy"]

#: ops through which a gate factor may pass on its way to the product it scales (a
#: dynamic export keeps the full slice of ``g[:, :, None, None]``, a static one drops it)
_GATE_PATH = RESHAPES | SAME_VALUES | LIKE | {aten.permute.default, aten.transpose.int, aten.slice.Tensor,
                                              aten.narrow.default, aten.select.int, aten.repeat.default}
_GATES = {aten.sigmoid.default, aten.hardsigmoid.default}


def fingerprint(model: nn.Module) -> tuple:
    """What changes when the model's weights or structure change: the identity, version
    counter, storage, dtype and shape of every parameter and buffer, the identity of
    every module and its plain settings (numbers, strings, flags: a pooling mode, an
    epsilon). In-place updates (``load_state_dict``, optimiser steps, ``.data =``,
    ``.to(device)``) change it; other attributes (a config object) are not part of it."""
    tensors = tuple((name, id(t), _version(t), t.data_ptr(), t.dtype, t.device, tuple(t.shape))
                    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()))
    return tensors, tuple((name, id(m), _settings(m)) for name, m in model.named_modules())


#: attribute values that are a module's plain settings
_PLAIN = (bool, int, float, str, type(None))


def _settings(module: nn.Module) -> tuple:
    # not ``training``: every copy is put in eval mode (and encode() switches the user's model)
    return tuple((k, v) for k, v in vars(module).items() if k != "training" and (
        type(v) in _PLAIN or type(v) is tuple and all(type(e) in _PLAIN for e in v)))


def reused_copy(source: Any, build: Callable[[], nn.Module], *key: Any) -> nn.Module:
    """``build()``, a frozen copy of ``source`` for a kernel's ``fit``, or the copy made
    last time for the same ``source`` object and ``key`` (compared by identity; devices by
    value) while ``source`` is unchanged (:func:`fingerprint`): a refit then reuses the
    copy, and with it the graphs exported for it. Kept weakly (an entry goes with its
    source) until :func:`clear_cache`. A source that is no module (a path: what it names
    on disk can change; None) or a path as key is copied every time."""
    if not isinstance(source, nn.Module) or any(isinstance(k, (str, os.PathLike)) for k in key):
        return build()
    stamp = fingerprint(source)
    with _LOCK:
        entries = _COPIES.setdefault(source, [])
        for i, (old_key, old_stamp, copy_) in enumerate(entries):
            if len(old_key) == len(key) and all(a is b or isinstance(a, torch.device) and a == b
                                                for a, b in zip(old_key, key)):
                if old_stamp == stamp:
                    return copy_
                del entries[i]
                break
    copy_ = build()
    with _LOCK:
        _COPIES.setdefault(source, []).append((key, stamp, copy_))
    return copy_


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # an inference tensor has no version counter; it cannot change outside inference mode
        return -1


def _signature(x: torch.Tensor, context: dict) -> tuple:
    """What of the inputs fixes an exported graph besides the sizes it keeps symbolic."""
    return (x.dtype, x.dim()) + tuple(
        (k, (v.dtype, v.dim()) if isinstance(v, torch.Tensor) else repr(v)) for k, v in context.items())


def _user_values(traced: Traced, x: torch.Tensor, context: dict) -> dict[str, Any]:
    """User-input placeholder name -> value: ``x`` first, context by name, else by position."""
    names = traced.inputs
    out = {names[0]: x}
    for i, (name, value) in enumerate(context.items()):
        if name in names[1:]:
            out[name] = value
        elif i + 1 < len(names):
            out[names[i + 1]] = value
    return out


class _Prepared:
    """A model's frozen copy and its canonical exported graphs, shared by the networks
    built on the same model and dtype (read-only once built)."""

    def __init__(self, model: nn.Module, dtype: Optional[torch.dtype], stamp: tuple) -> None:
        self.fingerprint = stamp
        frozen = copy.deepcopy(model).eval()
        if dtype is not None:
            frozen = frozen.to(dtype)
        for p in frozen.parameters():
            p.requires_grad_(False)
        canonical_modules(frozen)
        self.model = frozen
        self._graphs: dict[tuple, list[Traced]] = {}  # per input signature, in export order
        self._static: set[tuple] = set()  # signatures whose dynamic export failed
        #: (graph, its sizes of at most one) checked against the model's forward: True if it agreed
        self._small: dict[tuple[int, frozenset], bool] = {}
        self._lock = threading.RLock()

    def traced(self, x: torch.Tensor, context: dict) -> tuple[Traced, frozenset]:
        """A graph covering these inputs (exported on first need), and its size symbols
        that take the value 0 or 1 here."""
        key = _signature(x, context)
        with self._lock:
            for traced in self._graphs.get(key, ()):
                sizes = traced.bind(_user_values(traced, x, context))
                if sizes is None:
                    continue
                small = frozenset(s for s, v in sizes.items() if v <= 1)
                if self._small.get((id(traced), small), True):
                    return traced, small
            graphs = self._graphs.setdefault(key, [])
            # one symbolic graph per signature; beyond what it covers, one graph per shape
            dynamic = key not in self._static and not any(t.dynamic for t in graphs)
            if dynamic:
                try:
                    traced = export(self.model, (x,), context, True)
                except UnsupportedModelError:
                    self._static.add(key)  # e.g. data-dependent sizes: one graph per shape, as before
                    dynamic = False
            if not dynamic:
                traced = export(self.model, (x,), context, False)
            canonicalize(traced.graph, traced.constants)
            graphs.append(traced)
            sizes = traced.bind(_user_values(traced, x, context)) or {}
            return traced, frozenset(s for s, v in sizes.items() if v <= 1)

    def __getstate__(self) -> dict:  # copies (deepcopy of an Explainer) get their own lock
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def checked(self, traced: Traced, small: frozenset) -> Optional[bool]:
        return self._small.get((id(traced), small))

    def check(self, traced: Traced, small: frozenset, agrees: bool) -> None:
        """Record whether a graph computed the model's features (for a symbolic graph:
        with these sizes at 0 or 1, where an eager model could branch differently)."""
        with self._lock:
            self._small[(id(traced), small)] = agrees


#: user model (weakly: an entry dies with the model) -> {dtype: _Prepared}
_PREPARED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
#: user model (weakly) -> [(key, fingerprint, frozen copy)] made by reused_copy
_COPIES: "weakref.WeakKeyDictionary[nn.Module, list]" = weakref.WeakKeyDictionary()


def prepared(model: nn.Module, dtype: Optional[torch.dtype] = None) -> _Prepared:
    """The shared preparation of ``model`` in ``dtype``: reused while the model's
    :func:`fingerprint` is unchanged, rebuilt (copy and exports) when it changed."""
    stamp = fingerprint(model)
    with _LOCK:
        entries = _PREPARED.get(model)
        if entries is None:
            entries = _PREPARED[model] = {}
        entry = entries.get(dtype)
        if entry is None or entry.fingerprint != stamp:
            entry = entries[dtype] = _Prepared(model, dtype, stamp)
        return entry


def clear_cache() -> None:
    """Forget every prepared model (frozen copies and exported graphs); the next
    network on a model, and the next fit of a kernel (:func:`reused_copy`), copies and
    exports it again. Networks and fitted kernels already built keep theirs."""
    with _LOCK:
        _PREPARED.clear()
        _COPIES.clear()


class _Program:
    """One network's operators on one shared canonical graph (read, never changed)."""

    def __init__(self, network: "ExportedNetwork", traced: Traced) -> None:
        self.network = network
        self.traced = traced
        self.graph, self.constants = traced.graph, traced.constants
        self.nodes = list(self.graph.nodes)
        for node in self.nodes:  # a random tensor is no constant, wherever it is
            if is_random(node):
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
            if node.op != "call_function" or node in gates or is_size(node):
                continue
            entry = OPS.get(node.target)
            if entry is not None and entry.is_constant(self.network):
                continue
            # type_as / expand_as read only the dtype or shape of their second operand
            inputs = node.args[:1] if node.target in LIKE else node.all_input_nodes
            if any(a in carries for a in inputs):
                carries.add(node)
        return carries

    def _is_gate(self, node: fx.Node) -> bool:
        """A sigmoid/hardsigmoid whose every use is a factor of a product with a carrying
        tensor (squeeze-excitation, LSTM-style gates): it is then a constant."""
        seen, todo = [], [node]
        while todo:
            n = todo.pop()
            for u in n.users:
                if is_size(u) or u.target in LIKE and u.args[0] is not n:
                    continue  # its size or dtype read: no use of its values
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
        """The carrying nodes whose relevance reaches the output (the only ones pushed)."""
        out = next(n for n in self.nodes if n.op == "output")
        live = set()
        todo = [a for a in out.all_input_nodes if a in self.carries]
        while todo:
            n = todo.pop()
            if n in live:
                continue
            live.add(n)
            todo.extend(a for a in self._passing_inputs(n) if a in self.carries)
        return live

    def _passing_inputs(self, node: fx.Node) -> list:
        """Input nodes of ``node`` whose relevance it passes on (all but those it ends)."""
        entry = OPS.get(node.target) if node.op == "call_function" else None
        ended = entry.ends(self.network) if entry is not None else frozenset()
        if not ended:
            return node.all_input_nodes
        kept: list = []
        args = [a for i, a in enumerate(node.args) if i not in ended]
        fx.node.map_arg((args, node.kwargs), kept.append)
        return kept


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
        self._prepared = prepared(model, dtype)
        self.model = frozen = self._prepared.model  # shared: never changed
        self.rules: dict[str, Rule] = resolve_rules(rules, frozen)
        self._single = rules if isinstance(rules, Rule) else None
        modes = {r.bias for r in self.rules.values()}
        self._default_mode = self._single.bias if self._single else (modes.pop() if len(modes) == 1 else "absorb")
        self._programs: dict[int, _Program] = {}  # id of a shared graph -> this network's operators

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
        """This network's program for inputs like ``x`` and ``context``."""
        return self._program(x, context)[0]

    def _program(self, x: torch.Tensor, context: dict) -> tuple[_Program, frozenset]:
        traced, small = self._prepared.traced(x, context)
        prog = self._programs.get(id(traced))
        if prog is None:
            prog = self._programs[id(traced)] = _Program(self, traced)
        return prog, small

    @torch.no_grad()
    def record(self, x: torch.Tensor, context: Optional[dict[str, Any]] = None) -> "ExportedRecording":
        """Run the forward pass on a batch and keep what the relevance maps need."""
        context = dict(context or {})
        prog, small = self._program(x, context)
        values: dict[fx.Node, Any] = {}
        states: dict[fx.Node, Any] = {}
        numels = [x[0].numel()]
        by_name = _user_values(prog.traced, x, context)
        inputs = {n: by_name[n.name] for n in [prog.input_node, *prog.context_nodes] if n.name in by_name}
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
        out = _features(out, x)
        if self._prepared.checked(prog.traced, small) is None:
            # once per graph, and per set of sizes that are 0 or 1 (traced size-obliviously,
            # the model's own code could have branched there: squeeze, broadcasting), the
            # graph's features against the model's own forward
            ref = _features(self.model(x, **context), x)
            tol = 1e-4 * float(ref.abs().max()) if ref.numel() else 0.0
            agrees = ref.shape == out.shape and bool(torch.allclose(out, ref, rtol=1e-4, atol=tol))
            self._prepared.check(prog.traced, small, agrees)
            if not agrees and small:  # export a graph for this shape instead
                return self.record(x, context)
            if not agrees:
                raise _not_the_model(self.model, out, ref)
        for node, src in prog.fused.items():
            st = states[src]
            st.scale = states[node] if st.scale is None else st.scale * states[node]
        constants = {n: v for n, v in values.items() if n not in prog.carries}
        rec = ExportedRecording(self, prog, x, out, states, constants)
        rec.max_numel, rec.total_numel = max(numels), sum(numels)
        mask = context.get("attention_mask")
        if (isinstance(mask, torch.Tensor) and x.dim() == 3 and tuple(mask.shape) == tuple(x.shape[:2])
                and bool(((mask == 0) | (mask == 1)).all()) and bool(mask.any(1).all())):
            rec.real = mask != 0  # Hugging Face's padding mask (ones and zeros): the tokens the output depends on
        return rec


def _not_the_model(model: nn.Module, out: torch.Tensor, ref: torch.Tensor) -> UnsupportedModelError:
    """The refusal of a graph whose features are not the model's."""
    diff = float((out - ref).abs().max()) if out.shape == ref.shape else float("nan")
    return UnsupportedModelError(
        f"The exported graph of {type(model).__name__} computes other features than the model's own forward "
        f"(largest difference {diff:.3g}, features up to {float(ref.abs().max()):.3g}; shapes {tuple(out.shape)} "
        f"and {tuple(ref.shape)}), so skbilrp will not explain it. torch.export can lose an in-place write "
        "through a tensor that an op hands back unchanged in eager mode (eval-mode dropout, einsum of one "
        "operand, meshgrid). Write the model's in-place ops out of place (nn.ReLU(inplace=False), "
        "x = x + y for x += y) and explain it again.")


def _features(out: Any, x: torch.Tensor) -> torch.Tensor:
    """The model's output as features ``(N, h)``, or an error saying what it must return."""
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
    return out.flatten(1)


def _dense(flow: Any) -> Any:
    """A flow with its :class:`~.windows.WindowFlow` crops made dense (lists: each part)."""
    if isinstance(flow, WindowFlow):
        return flow.materialize()
    if isinstance(flow, list):
        return [_dense(f) for f in flow]
    return flow


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
    ``total_numel`` (per-sample sizes of the largest and of all flows), ``real``
    (``(N, T)``, the real tokens of a token batch ``(N, T, D)`` by its context's
    ``attention_mask``, or None: a constant without position is spread over those only).
    """

    def __init__(self, network, program, x, features, states, constants) -> None:
        self.network, self.program = network, program
        self.x, self.features = x, features
        self.states, self.constants = states, constants
        self.max_numel = self.total_numel = int(x[0].numel())
        self.real: Optional[torch.Tensor] = None

    def push(self, probe: torch.Tensor, channel_axis: Optional[int] = None, windows: bool = True) -> torch.Tensor:
        """Map probes ``(K*N, *x.shape[1:])`` (probe-major) to feature flows ``(K*N, h)``.

        ``windows``: push image probes on their crops through the early 2-D convolutions
        and pools (:mod:`.windows`; the same result as the dense push, for less work
        where the probes cover small patches). False pushes every flow dense."""
        prog = self.program
        flows: dict[fx.Node, Any] = {}
        probe = probe.reshape((-1,) + tuple(self.x.shape))  # (K, N, ...): see ops' layout
        tokens = self.real is not None and channel_axis is not None and channel_axis % 2 == 1
        val = prog.input_node.meta.get("val")
        size = None  # the graph's T of an input (N, T, D) or (N, D, T)
        if self.x.dim() == 3 and channel_axis is not None and val is not None:
            size = val.shape[1 if channel_axis % 2 == 1 else 2]
        cells = ProbeCells(probe, channel_axis, self.real if tokens else None, size)
        cells.windows = windows
        cropped = False  # whether a WindowFlow is about: only then do flows need making dense
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
                flow = materialize(flow)
                return flow.reshape(flow.shape[0] * flow.shape[1], -1)
            elif node in prog.ops:
                if node in prog.fused:
                    flows[node] = flows[node.args[0]]
                else:
                    flow_args = [_flow_of(a, flows) for a in node.args]
                    if cropped and not prog.ops[node].windowed:
                        flow_args = [_dense(f) for f in flow_args]
                    args = fx.node.map_arg(node.args, lambda n: const.get(n))
                    kwargs = fx.node.map_arg(node.kwargs, lambda n: const.get(n))
                    try:
                        flows[node] = prog.ops[node].push(self.states[node], flow_args, list(args), kwargs, cells)
                        cropped = cropped or type(flows[node]) is WindowFlow
                    except CellsError as err:
                        raise prog.ops[node].refuse(str(err).rstrip(".")) from None
            for arg in node.all_input_nodes:
                if prog.last_use.get(arg) == i:
                    flows.pop(arg, None)
        raise AssertionError("graph has no output")  # pragma: no cover

