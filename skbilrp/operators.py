"""Linear relevance operators: what each graph node does to relevance.

For fixed activations, every LRP rule is linear in the relevance it redistributes. So
each node of a network gets an operator with two steps:

``record(*inputs)``
    run the node's forward on real inputs, return ``(output, state)``; ``state`` holds
    what the linear map needs (ratios, winner indices, ...), per sample.
``push(state, *flows)``
    map the *contribution flows* of the inputs to the flow of the output.

A flow is the part of a tensor that one probe (a group of input positions) accounts
for: summed over all probes it gives back the tensor, minus what biases and
stabilisers absorb. Flows carry ``K`` probes for each of ``N`` samples, stacked
probe-major along the batch axis: shape ``(K * N, ...)``, while states keep shape
``(N, ...)``; :func:`per_sample` broadcasts one against the other. The LRP backward
pass is the transpose of this forward map, so reverse mode is autograd through
``push``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Normalize
from .rules import Rule, ZBox, Zero, add_rule_target

__all__ = [
    "RelevanceOperator",
    "InputFlow",
    "InputCells",
    "register_operator",
    "operator_for_module",
    "operator_for_function",
    "per_sample",
    "materialize",
    "safe_divide",
]


def per_sample(flow: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """Multiply a probe-major flow ``(K*N, ...)`` by a per-sample tensor ``(N, ...)``.

    ``state`` may broadcast against one sample's flow (e.g. a mask of shape ``(N, T, 1)``).
    """
    n = state.shape[0]
    return (flow.reshape(-1, n, *flow.shape[1:]) * state).reshape(flow.shape)


def safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` with zero where ``den`` is exactly zero."""
    return torch.where(den == 0, torch.zeros_like(num), num / torch.where(den == 0, 1, den))


@dataclass
class InputFlow:
    """The flow of the model input, kept as ``value ⊙ probe`` until a layer needs it.

    The z^B rule needs the probe itself; every other operator gets ``value * probe``.
    Position-wise pass-through modules (Normalize, Identity, Dropout) keep the pair.
    """

    value: torch.Tensor
    probe: torch.Tensor

    def materialize(self) -> torch.Tensor:
        return per_sample(self.probe, self.value)


def materialize(flow: Any) -> Any:
    """A flow as a tensor (an :class:`InputFlow` becomes ``value * probe``)."""
    return flow.materialize() if isinstance(flow, InputFlow) else flow


class InputCells:
    """Where the units of a layer sit on the model input, for ``Rule(bias="flat")``.

    :meth:`coverage` gives, per probe and unit, the fraction of the input region under
    the unit that the probe covers: the probe averaged over the input's channel axis
    and pooled (adaptive average) from the input's positions onto the layer's grid.
    Units without a grid (e.g. after global pooling), or on a grid of another rank
    than the input's positions, cover the whole input. Over probes that partition the
    input the coverage sums to one, so a flat bias share conserves.

    Parameters
    ----------
    probe : torch.Tensor
        ``(K * N, *sample_shape)``, as pushed through the network.
    channel_axis : int, optional
        The channel axis of one input sample (``0`` for images, ``-1`` for token
        embeddings). None: assume the input is laid out like each layer's output,
        channels first for convolutions and last for Linear layers.
    """

    def __init__(self, probe: torch.Tensor, channel_axis: Optional[int] = None) -> None:
        self.probe = probe
        self.channel_axis = channel_axis
        self._pooled: dict[tuple, torch.Tensor] = {}  # one pooling per grid and channel axis
        self._positions: dict[int, torch.Tensor] = {}  # probe averaged over a channel axis

    def coverage(self, like: torch.Tensor, channels_first: bool) -> torch.Tensor:
        """Coverage broadcastable to ``like`` ``(K*N, ...)``, a layer's output flow."""
        grid = tuple(like.shape[2:]) if channels_first else tuple(like.shape[1:-1])
        rank = self.probe.dim() - 1
        axis = self.channel_axis if self.channel_axis is not None else (0 if channels_first else -1)
        key = (grid, axis % rank if rank else 0)
        if key not in self._pooled:
            self._pooled[key] = self._pool(*key)
        cov = self._pooled[key]
        return cov.unsqueeze(1) if channels_first else cov.unsqueeze(-1)

    def _pool(self, grid: tuple, axis: int) -> torch.Tensor:
        p = self.probe
        if not 1 <= len(grid) <= 3 or p.dim() != len(grid) + 2:
            return p.flatten(1).mean(1).reshape((-1,) + (1,) * len(grid))
        if axis not in self._positions:
            self._positions[axis] = p.mean(1 + axis)[:, None]  # (K*N, 1, *positions)
        positions = self._positions[axis]
        if tuple(positions.shape[2:]) == grid:
            return positions[:, 0]
        pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[len(grid) - 1]
        return pool(positions, grid)[:, 0]


class RelevanceOperator:
    """Base class: the linear relevance map of one graph node.

    ``record(args, kwargs)`` gets the node's recorded arguments (tensors and
    constants) and returns ``(output, state)``. ``push(state, flows, args, kwargs)``
    gets, parallel to ``args``, the flow of each argument, or ``None`` where no
    relevance flows (constants, masks, other model inputs); for a list argument, a list.
    An operator with ``uses_cells = True`` also gets ``cells=``, the
    :class:`InputCells` of the probe, to give relevance to the input region under a
    unit (as ``Rule(bias="flat")`` does).
    """

    #: operators whose push is ``flow * state`` elementwise (fusable into a producer)
    elementwise_scale = False
    #: operators whose push also takes ``cells=``, the :class:`InputCells` of the probe
    uses_cells = False

    def record(self, args: tuple, kwargs: dict) -> tuple[Any, Any]:
        raise NotImplementedError

    def push(self, state: Any, flows: list, args: tuple, kwargs: dict) -> Any:
        raise NotImplementedError


class UnaryOperator(RelevanceOperator):
    """An operator whose relevance flows through its first argument only."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def record(self, args: tuple, kwargs: dict) -> tuple[Any, Any]:
        out = self.fn(*args, **kwargs)
        return out, self.state(args[0], out)

    def state(self, x: torch.Tensor, out: Any) -> Any:
        return None

    def push(self, state: Any, flows: list, args: tuple, kwargs: dict) -> Any:
        if any(f is not None for f in flows[1:]):
            raise ValueError(
                f"Relevance can flow only through the first argument of {self.fn!r}; "
                "register an operator for a module that combines several inputs."
            )
        return self.apply(state, flows[0], args, kwargs)

    def apply(self, state: Any, flow: Any, args: tuple, kwargs: dict) -> Any:
        raise NotImplementedError


def _check_batch(x: torch.Tensor, out: Any, what: str) -> None:
    if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"{what} changes the batch axis ({tuple(x.shape)} -> {shape}); skbilrp needs "
            "every operation to treat samples independently, batch axis first "
            "(e.g. x.flatten(1), x.mean(dim=1), x.view(x.size(0), -1))."
        )


# ---------------------------------------------------------------------------- weighted


@dataclass
class _WeightedState:
    scale: Optional[torch.Tensor]  # z / z_rho per sample, None when identically one
    bounds: Optional[tuple] = None  # (low, high) of one sample, for z^B only
    sign: Optional[torch.Tensor] = None  # sign of the input, for bias sharing only
    share: Optional[torch.Tensor] = None  # rho(b) / sum_j |a_j rho(w_j)| per output unit


class WeightedOperator(RelevanceOperator):
    """Linear and convolution layers under an LRP rule.

    Flow: ``u_out = (z / z^rho) ⊙ rho(W) u_in`` (no bias term: with ``rule.bias ==
    "absorb"`` the bias keeps its share).
    With ``rule.bias == "share"`` the bias's part follows the sizes of the
    contributions: ``+ (z / z^rho) ⊙ rho(b) / (|rho(W)| |x|) ⊙ |rho(W)| (sign(x) ⊙ u_in)``;
    with ``"flat"`` it follows the input region under each unit:
    ``+ (z / z^rho) ⊙ rho(b) ⊙ coverage``. Summed over probes either adds ``rho(b)``,
    so the layer conserves.
    For z^B: ``u_out = (z / z^B) ⊙ (W (x ⊙ v) - W⁺ (low ⊙ v) - W⁻ (high ⊙ v))``.
    """

    def __init__(self, module: nn.Module, rule: Rule) -> None:
        if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.padding_mode != "zeros":
            raise ValueError(
                f"padding_mode={module.padding_mode!r} is not supported; use 'zeros'."
            )
        self.module = module
        self.rule = rule
        weight = module.weight.detach()
        bias = None if module.bias is None else module.bias.detach()
        self.weight_rho = rule.modify(weight)
        self.bias_rho = None if bias is None else rule.modify(bias)
        has_bias_share = bias is not None and not isinstance(rule, ZBox)  # z^B has no bias term
        self.shares_bias = rule.bias == "share" and has_bias_share
        if self.shares_bias:
            self.weight_abs = self.weight_rho.abs()
        self.uses_cells = rule.bias == "flat" and has_bias_share
        self.channels_first = not isinstance(module, nn.Linear)
        if has_bias_share:  # rho(b) broadcastable to the layer's output
            self.bias_grid = self.bias_rho.reshape((-1,) + (1,) * (weight.dim() - 2)) \
                if self.channels_first else self.bias_rho
        if isinstance(rule, ZBox):
            self.weight_pos = weight.clamp(min=0)
            self.weight_neg = weight.clamp(max=0)
            # the three z^B terms as one layer over stacked inputs [x v, low v, high v]
            self.weight_zbox = torch.cat([weight, -self.weight_pos, -self.weight_neg], dim=1)
            self.stack_dim = -1 if isinstance(module, nn.Linear) else 1

    def _apply(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        m = self.module
        if isinstance(m, nn.Linear):
            return F.linear(x, weight, bias)
        conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
        return conv(x, weight, bias, m.stride, m.padding, m.dilation, m.groups)

    def record(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, _WeightedState]:
        (x,) = args
        z = self._apply(x, self.module.weight.detach(), None if self.module.bias is None else self.module.bias.detach())
        if isinstance(self.rule, ZBox):
            low, high = self.rule.bounds(x)
            low, high = low.expand(x.shape[1:])[None], high.expand(x.shape[1:])[None]
            # no bias in z^B (as in DESIGN §3 and zennit): the first layer conserves
            z_rho = (
                self._apply(x, self.module.weight.detach(), None)
                - self._apply(low, self.weight_pos, None)
                - self._apply(high, self.weight_neg, None)
            )
            return z, _WeightedState(safe_divide(z, self.rule.stabilize(z_rho)), bounds=(low, high))
        z_rho = self._apply(x, self.weight_rho, self.bias_rho) if self.rule.modifies_params else z
        den = self.rule.stabilize(z_rho)
        # LRP-0: the ratio is one wherever it is defined
        state = _WeightedState(None if den is z else safe_divide(z, den))
        if self.shares_bias:
            size = self._apply(x.abs(), self.weight_abs, None)
            state.sign, state.share = torch.sign(x), safe_divide(self.bias_grid.expand_as(size), size)
        return z, state

    def push(self, state: _WeightedState, flows: list, args: tuple, kwargs: dict,
             cells: Optional[InputCells] = None) -> torch.Tensor:
        flow = flows[0]
        if isinstance(self.rule, ZBox):
            if not isinstance(flow, InputFlow):
                raise ValueError(
                    "The z^B rule applies only to a layer fed by the model input "
                    "(through position-wise modules); assign another rule to this layer."
                )
            probe = flow.probe
            low, high = state.bounds
            if getattr(self.module, "groups", 1) == 1:
                stacked = torch.cat([flow.materialize(), probe * low, probe * high], dim=self.stack_dim)
                out = self._apply(stacked, self.weight_zbox, None)
            else:  # grouped convs would mix the stacked channels across groups
                out = (
                    self._apply(flow.materialize(), self.module.weight.detach(), None)
                    - self._apply(probe * low, self.weight_pos, None)
                    - self._apply(probe * high, self.weight_neg, None)
                )
        else:
            flow = materialize(flow)
            out = self._apply(flow, self.weight_rho, None)
            if state.share is not None:
                sized = self._apply(per_sample(flow, state.sign), self.weight_abs, None)
                out = out + per_sample(sized, state.share)
            elif self.uses_cells:  # in place: a fresh tensor, and memory-bound on CPU
                out.addcmul_(self.bias_grid, cells.coverage(out, self.channels_first))
        if state.scale is not None:
            n = state.scale.shape[0]
            out.view(-1, n, *out.shape[1:]).mul_(state.scale)
        return out


# ------------------------------------------------------------------------- elementwise


class RatioOperator(UnaryOperator):
    """Elementwise activation ``a = f(z)``: the flow is scaled by ``f(z) / z``.

    For ReLU this is the gradient mask; for any other activation it still conserves,
    since the flows of ``z`` sum to ``z``.
    """

    elementwise_scale = True

    def state(self, z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return safe_divide(out, z)

    def apply(self, state: torch.Tensor, flow: Any, args: tuple, kwargs: dict) -> torch.Tensor:
        return per_sample(materialize(flow), state)


class AffineOperator(UnaryOperator):
    """BatchNorm that could not be folded: ``y = s x + t`` per channel.

    LRP-0: the flow is scaled by ``s``; the shift ``t`` absorbs relevance.
    """

    def state(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        m = self.fn
        scale = 1 / torch.sqrt(m.running_var + m.eps)
        if m.affine:
            scale = m.weight * scale
        return scale.detach().reshape((1, -1) + (1,) * (x.dim() - 2))

    def apply(self, state: torch.Tensor, flow: Any, args: tuple, kwargs: dict) -> torch.Tensor:
        return materialize(flow) * state


class PassOperator(UnaryOperator):
    """Nodes that change nothing about relevance (Identity, Dropout in eval, contiguous)."""

    def apply(self, state: None, flow: Any, args: tuple, kwargs: dict) -> Any:
        if isinstance(flow, InputFlow):
            return InputFlow(self.fn(flow.value, *args[1:], **kwargs), flow.probe)
        return flow


class NormalizeOperator(UnaryOperator):
    """:class:`skbilrp.layers.Normalize`: the model input keeps its positions.

    Applied to an intermediate tensor it scales the flow by ``1 / std`` and the shift
    absorbs relevance, like any affine map.
    """

    def apply(self, state: None, flow: Any, args: tuple, kwargs: dict) -> Any:
        if isinstance(flow, InputFlow):
            return InputFlow(self.fn(flow.value), flow.probe)
        return flow / self.fn.std


# ----------------------------------------------------------------------------- pooling


class MaxPoolOperator(UnaryOperator):
    """Max-pooling: winner takes all (gather at the recorded argmax).

    ``fn`` must return ``(output, indices)``.
    """

    def record(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, Any]:
        out, idx = self.fn(*args, **kwargs)
        return out, (idx.flatten(2), tuple(out.shape[1:]))

    def apply(self, state: Any, flow: Any, args: tuple, kwargs: dict) -> torch.Tensor:
        idx, out_shape = state
        flow = materialize(flow)
        n, c = idx.shape[:2]
        flat = flow.reshape(-1, n, c, flow[0, 0].numel())
        out = flat.gather(3, idx.expand(flat.shape[0], *idx.shape))
        return out.reshape(-1, *out_shape)


class LinearFunctionOperator(UnaryOperator):
    """Operations linear in one tensor argument, applied to each sample alike.

    Average pooling, mean/sum over non-batch axes, transposes, slicing: relevance is
    redistributed in proportion to the contributions, which is the same function
    applied to the flow.
    """

    def state(self, x: torch.Tensor, out: Any) -> None:
        _check_batch(x, out, "An operation")

    def apply(self, state: None, flow: Any, args: tuple, kwargs: dict) -> torch.Tensor:
        return self.fn(materialize(flow), *args[1:], **kwargs)


class ReshapeOperator(UnaryOperator):
    """Reshapes that keep the batch axis: the flow takes the recorded output shape."""

    def state(self, x: torch.Tensor, out: Any) -> tuple:
        _check_batch(x, out, "A reshape")
        return tuple(out.shape[1:])

    def apply(self, shape: tuple, flow: Any, args: tuple, kwargs: dict) -> torch.Tensor:
        flow = materialize(flow)
        return flow.reshape(flow.shape[0], *shape)


# ----------------------------------------------------------------------- combinations


class AddOperator(RelevanceOperator):
    """``a + b`` (or ``a - b``): flows add, which splits relevance in proportion to the
    terms. A term without flow (a constant, a bias tensor) absorbs its share.
    """

    def __init__(self, sign: float = 1.0) -> None:
        self.sign = sign

    def record(self, args: tuple, kwargs: dict) -> tuple[Any, None]:
        a, b = args[:2]
        return (a + b if self.sign > 0 else a - b), None

    def push(self, state: None, flows: list, args: tuple, kwargs: dict) -> Any:
        fa, fb = materialize(flows[0]), materialize(flows[1])
        if fb is None:
            return fa
        if fa is None:
            return fb * self.sign
        return fa + fb if self.sign > 0 else fa - fb


class ScaleOperator(RelevanceOperator):
    """Product (or quotient) with a tensor or number that carries no relevance."""

    def __init__(self, divide: bool = False) -> None:
        self.divide = divide

    def record(self, args: tuple, kwargs: dict) -> tuple[Any, int]:
        a, b = args[:2]
        out = a / b if self.divide else a * b
        return out, (out.shape[0] if isinstance(out, torch.Tensor) and out.dim() else 0)

    def push(self, n: int, flows: list, args: tuple, kwargs: dict) -> Any:
        fa, fb = materialize(flows[0]), materialize(flows[1])
        if fa is not None and fb is not None:
            raise ValueError(
                "A product of two tensors that both carry relevance is not linear; "
                "detach one factor (as for attention probabilities) or register an operator."
            )
        if fb is not None and self.divide:
            raise ValueError("Division by a tensor that carries relevance is not supported.")
        flow, other = (fa, args[1]) if fa is not None else (fb, args[0])
        if flow is None:
            return None
        if isinstance(other, torch.Tensor) and other.dim() == flow.dim() and other.shape[0] == n:
            return per_sample(flow, 1 / other if self.divide else other)
        return flow / other if self.divide else flow * other


class CatOperator(RelevanceOperator):
    """Concatenation along a non-batch axis: flows concatenate (zero where none flows)."""

    @staticmethod
    def _dim(args: tuple, kwargs: dict) -> int:
        return args[1] if len(args) > 1 else kwargs.get("dim", 0)

    def record(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, list]:
        tensors, dim = args[0], self._dim(args, kwargs)
        if dim == 0 or dim == -tensors[0].dim():
            raise ValueError("Concatenation along the batch axis is not supported.")
        return torch.cat(tensors, dim), [t.shape for t in tensors]

    def push(self, shapes: list, flows: list, args: tuple, kwargs: dict) -> torch.Tensor:
        parts = [materialize(f) for f in flows[0]]
        like = next(p for p in parts if p is not None)
        k = like.shape[0] // shapes[0][0]
        parts = [
            p if p is not None else like.new_zeros((k * shape[0],) + tuple(shape[1:]))
            for p, shape in zip(parts, shapes)
        ]
        return torch.cat(parts, self._dim(args, kwargs))


# --------------------------------------------------------------------------- registry

ModuleFactory = Callable[[nn.Module, Optional[Rule]], RelevanceOperator]

_MODULE_OPERATORS: dict[type, ModuleFactory] = {}
_FUNCTION_OPERATORS: dict[Any, Callable[[], RelevanceOperator]] = {}
_METHOD_OPERATORS: dict[str, Callable[[], RelevanceOperator]] = {}


def register_operator(module_type: type, factory: ModuleFactory, takes_rule: bool = False) -> None:
    """Teach skbilrp how relevance flows through a module type of your own.

    Parameters
    ----------
    module_type : type
        An ``nn.Module`` subclass; modules of this type (and subclasses) are treated as
        one graph node and are not traced into.
    factory : callable
        ``factory(module, rule) -> RelevanceOperator``; ``rule`` is the Rule assigned to
        that module (or None when it takes none). The operator's ``record`` and
        ``push`` must implement a map that is linear in the flow.
    takes_rule : bool, default=False
        Assign a Rule to modules of this type as to weighted layers (by type, name or
        as the single rule of a spec), e.g. for a layer with a bias whose
        ``Rule.bias`` mode matters; unassigned ones get ``Zero()``.

    Examples
    --------
    >>> from skbilrp.operators import register_operator, RatioOperator
    >>> class Square(torch.nn.Module):
    ...     def forward(self, x):
    ...         return x * x
    >>> register_operator(Square, lambda module, rule: RatioOperator(module))
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"register_operator needs an nn.Module subclass, got {module_type!r}.")
    _MODULE_OPERATORS[module_type] = factory
    if takes_rule:
        add_rule_target(module_type)


def registered_module_types() -> tuple[type, ...]:
    """Module types with an operator; the tracer keeps them as single nodes."""
    return tuple(_MODULE_OPERATORS)


def operator_for_module(module: nn.Module, rule: Optional[Rule]) -> Optional[RelevanceOperator]:
    """The operator for ``module`` (most specific registered type), or None."""
    for cls in type(module).__mro__:
        if cls in _MODULE_OPERATORS:
            return _MODULE_OPERATORS[cls](module, rule)
    return None


def operator_for_function(target: Any, is_method: bool) -> Optional[RelevanceOperator]:
    """The operator for a traced function or tensor method, or None."""
    table = _METHOD_OPERATORS if is_method else _FUNCTION_OPERATORS
    factory = table.get(target)
    return None if factory is None else factory()


def _maxpool_module(module: nn.Module, rule: Optional[Rule]) -> RelevanceOperator:
    m = module
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
        pool = F.max_pool1d if isinstance(m, nn.MaxPool1d) else F.max_pool2d
        return MaxPoolOperator(lambda x: pool(
            x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True))
    pool = F.adaptive_max_pool1d if isinstance(m, nn.AdaptiveMaxPool1d) else F.adaptive_max_pool2d
    return MaxPoolOperator(lambda x: pool(x, m.output_size, return_indices=True))


def _method(name: str) -> Callable[..., Any]:
    return lambda x, *a, **k: getattr(x, name)(*a, **k)


def _with_indices(fn: Callable[..., Any]) -> Callable[..., Any]:
    return lambda *a, **k: fn(*a, **{**k, "return_indices": True})


for _t in (nn.Linear, nn.Conv1d, nn.Conv2d):
    register_operator(_t, lambda m, rule: WeightedOperator(m, rule if rule is not None else Zero()))
for _t in (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Hardtanh, nn.GELU, nn.SiLU, nn.Tanh, nn.ELU,
           nn.Softplus, nn.Hardswish, nn.Mish, nn.Sigmoid):
    register_operator(_t, lambda m, rule: RatioOperator(m))
for _t in (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d):
    register_operator(_t, _maxpool_module)
for _t in (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d):
    register_operator(_t, lambda m, rule: LinearFunctionOperator(m))
for _t in (nn.Flatten, nn.Unflatten):
    register_operator(_t, lambda m, rule: ReshapeOperator(m))
for _t in (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout):
    register_operator(_t, lambda m, rule: PassOperator(m))
for _t in (nn.BatchNorm1d, nn.BatchNorm2d):
    register_operator(_t, lambda m, rule: AffineOperator(m))
register_operator(Normalize, lambda m, rule: NormalizeOperator(m))

for _f in (F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, torch.tanh, F.tanh,
           F.elu, F.softplus, F.hardswish, F.hardtanh, torch.sigmoid, F.mish):
    _FUNCTION_OPERATORS[_f] = (lambda f: lambda: RatioOperator(f))(_f)
for _f in (F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
           torch.mean, torch.sum, torch.transpose, torch.permute, torch.squeeze,
           torch.unsqueeze, operator.getitem, torch.narrow):
    _FUNCTION_OPERATORS[_f] = (lambda f: lambda: LinearFunctionOperator(f))(_f)
for _f in (F.max_pool1d, F.max_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d):
    _FUNCTION_OPERATORS[_f] = (lambda f: lambda: MaxPoolOperator(_with_indices(f)))(_f)
for _f in (torch.flatten, torch.reshape):
    _FUNCTION_OPERATORS[_f] = (lambda f: lambda: ReshapeOperator(f))(_f)
for _f in (F.dropout, F.dropout1d, F.dropout2d):
    _FUNCTION_OPERATORS[_f] = lambda: PassOperator(lambda x, *a, **k: x)
_FUNCTION_OPERATORS[operator.add] = lambda: AddOperator()
_FUNCTION_OPERATORS[torch.add] = lambda: AddOperator()
_FUNCTION_OPERATORS[operator.sub] = lambda: AddOperator(-1.0)
_FUNCTION_OPERATORS[torch.sub] = lambda: AddOperator(-1.0)
_FUNCTION_OPERATORS[operator.mul] = lambda: ScaleOperator()
_FUNCTION_OPERATORS[torch.mul] = lambda: ScaleOperator()
_FUNCTION_OPERATORS[operator.truediv] = lambda: ScaleOperator(divide=True)
_FUNCTION_OPERATORS[torch.cat] = lambda: CatOperator()
_FUNCTION_OPERATORS[torch.concat] = lambda: CatOperator()

for _name in ("relu", "sigmoid", "tanh"):
    _METHOD_OPERATORS[_name] = (lambda n: lambda: RatioOperator(_method(n)))(_name)
for _name in ("mean", "sum", "transpose", "permute", "squeeze", "unsqueeze", "narrow"):
    _METHOD_OPERATORS[_name] = (lambda n: lambda: LinearFunctionOperator(_method(n)))(_name)
for _name in ("view", "reshape", "flatten", "view_as", "reshape_as"):
    _METHOD_OPERATORS[_name] = (lambda n: lambda: ReshapeOperator(_method(n)))(_name)
for _name in ("contiguous", "clone"):
    _METHOD_OPERATORS[_name] = (lambda n: lambda: PassOperator(_method(n)))(_name)
_METHOD_OPERATORS["add"] = lambda: AddOperator()
_METHOD_OPERATORS["sub"] = lambda: AddOperator(-1.0)
_METHOD_OPERATORS["mul"] = lambda: ScaleOperator()
_METHOD_OPERATORS["div"] = lambda: ScaleOperator(divide=True)
