"""LRP rules for layers with weights, and how rules are assigned to layers.

A rule decides how a linear layer ``z = W a + b`` redistributes relevance onto its
input: ``R_j = sum_k a_j rho(w_jk) / z_k^rho R_k``. Every rule is linear in the
relevance it redistributes, which is what lets skbilrp propagate many probes at once.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Union

import torch
from torch import nn

__all__ = [
    "Rule",
    "Zero",
    "Epsilon",
    "Gamma",
    "ZBox",
    "BiasMode",
    "RuleSpec",
    "PRESETS",
    "vgg_preset",
    "resolve_rules",
]


BiasMode = Literal["absorb", "share", "mass", "flat"]
BIAS_MODES = ("absorb", "share", "mass", "flat")


@dataclass(frozen=True)
class Rule:
    """Base class of the LRP rules for layers with weights.

    Subclasses override :meth:`modify` (the weight/bias map ``rho``) and
    :meth:`stabilize` (the map applied to the denominator ``z^rho``).

    Parameters
    ----------
    bias : {"absorb", "share", "mass", "flat"}, default="absorb", keyword-only
        What happens to the bias's part ``rho(b_k) / z_k^rho R_k`` of a unit's
        relevance.

        - ``"absorb"``: textbook LRP. The bias keeps it, and it shows up in
          ``conservation_error``.
        - ``"share"``: it is passed on to the layer's inputs in proportion to the size
          of their contributions, ``s_k |a_j rho(w_jk)|`` with
          ``s_k = rho(b_k) / max(sum_j |a_j rho(w_jk)|, |rho(b_k)|)``: bounded, so that
          no input takes more of the bias than the size of its own contribution.
          Where the bias is larger than all contributions together, what exceeds
          them (``rho(b_k)`` less the shared part; all of it for a unit whose inputs
          contribute nothing) is spread as under ``"flat"``. Sizes rather than signed
          contributions keep the rule's own denominators (a bias-free ``z_k - b_k``
          can be near zero where ``z_k`` is not). Costs a second pass through the
          layer with ``|rho(W)|`` per probe, and a flat term where a bias exceeds.
        - ``"mass"``: as ``"share"``, in proportion to the sizes of the inputs a unit
          reads, ``s_k |a_j|`` with ``s_k = rho(b_k) / max(sum_j |a_j|, |rho(b_k)|)``
          over the inputs ``j`` that the layer connects to unit ``k`` (all features of
          a Linear; a convolution's window over its group's channels; a norm layer's
          group). A unit that reads one input (a constant add) treats it as
          ``"share"`` does, and so does the softmax under AttnLRP: weighed by size
          alone, its bias would go to the logits of keys of negligible probability.
          No second pass through the weights: a sum over each unit's inputs, one
          channel per group.
        - ``"flat"``: it goes straight to the model input, spread evenly over the
          region under the unit: the input positions that the layer's grid maps onto
          the unit's position (all of the input for units without position, such as
          those after global pooling). Costs one average pooling of the probe per
          layer grid.

        With ``"share"``, ``"mass"`` or ``"flat"`` the layer conserves relevance.

    Notes
    -----
    ``"share"`` follows the inputs that carry a unit's output (all-MiniLM-L6-v2: the
    relevance sums to the cosine to 1e-7, token ranking unchanged). The bound matters
    on deep CNNs with folded BatchNorm: depthwise units of MobileNetV2 with ImageNet
    weights have biases up to millions of times their contributions, and sharing in
    plain proportion (``rho(b_k) / sum_j |a_j rho(w_jk)|`` per unit of size) made
    relevance of order 1e23; bounded, ``"zero-share"`` on a 224-px pair stays below
    1e-2 per pair of 32-px patches for a cosine of 0.39, and sums to it within 4e-8
    of it in float32. A unit whose inputs are all zero (common in depthwise convs after
    ReLU6; a class token of zero) has nothing to share with: all of its bias is spread
    as under ``"flat"``. ``"flat"`` adds a bounded term per unit, so it is stable on any
    network; its share of the explanation does not depend on the input's content, only
    on where the unit sits.
    """

    bias: BiasMode = field(default="absorb", kw_only=True)

    def __post_init__(self) -> None:
        if self.bias not in BIAS_MODES:
            raise ValueError(f"bias must be one of {BIAS_MODES}, got {self.bias!r}.")

    def modify(self, param: torch.Tensor) -> torch.Tensor:
        """Return ``rho(param)``; the identity for LRP-0."""
        return param

    def stabilize(self, z: torch.Tensor) -> torch.Tensor:
        """Return the stabilised denominator; divisions by exact zeros give zero."""
        return z

    @property
    def modifies_params(self) -> bool:
        """Whether ``rho`` differs from the identity (an extra forward is then needed)."""
        return False


@dataclass(frozen=True)
class Zero(Rule):
    """LRP-0: ``rho(w) = w``. With ReLU networks this equals gradient × input."""


@dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-ε: the denominator is moved away from zero, ``z + ε sign(z)``.

    Parameters
    ----------
    epsilon : float, default=1e-6
        Stabiliser; it absorbs relevance, so conservation holds only up to it.
    """

    epsilon: float = 1e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.epsilon >= 0:
            raise ValueError(f"Epsilon needs epsilon >= 0, got {self.epsilon!r}.")

    def stabilize(self, z: torch.Tensor) -> torch.Tensor:
        sign = torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
        return z + self.epsilon * sign


@dataclass(frozen=True)
class Gamma(Rule):
    """LRP-γ: favour positive contributions, ``rho(w) = w + γ w⁺`` (bias alike).

    Meant for layers whose inputs are non-negative (after ReLU): there
    ``z^rho >= z`` wherever a unit is active, so no stabiliser is needed and
    conservation is exact; exact zeros divide to zero.

    Parameters
    ----------
    gamma : float, default=0.25
        Weight of the positive part; ``gamma=0`` is LRP-0.
    epsilon : float, default=0.0
        Optional stabiliser of the denominator (absorbs relevance when positive).
    """

    gamma: float = 0.25
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.gamma >= 0:
            raise ValueError(f"Gamma needs gamma >= 0, got {self.gamma!r}.")

    def modify(self, param: torch.Tensor) -> torch.Tensor:
        return param + self.gamma * param.clamp(min=0)

    def stabilize(self, z: torch.Tensor) -> torch.Tensor:
        if self.epsilon == 0:
            return z
        sign = torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
        return z + self.epsilon * sign

    @property
    def modifies_params(self) -> bool:
        return self.gamma != 0


@dataclass(frozen=True)
class ZBox(Rule):
    """The z^B rule for a first layer whose input is bounded, ``low <= x <= high``.

    ``z_k = sum_j x_j w_jk - low_j w⁺_jk - high_j w⁻_jk``, without the bias, so
    this layer passes on all the relevance it receives. Every term is non-negative for
    inputs within the bounds, so no stabiliser is needed. Bounds are given in the
    space of the layer's input: floats, or tensors broadcastable to one input sample
    (e.g. shape ``(C, 1, 1)`` for per-channel bounds of an image).

    Parameters
    ----------
    low, high : float or torch.Tensor
        Lower and upper bound of the layer input.
    bias : {"absorb", "share", "mass", "flat"}, keyword-only
        Has no effect: z^B leaves the bias out and always passes on all relevance.
    """

    low: Union[float, torch.Tensor] = 0.0
    high: Union[float, torch.Tensor] = 1.0

    @classmethod
    def from_normalization(
        cls,
        mean: "float | list[float] | torch.Tensor",
        std: "float | list[float] | torch.Tensor",
        low: float = 0.0,
        high: float = 1.0,
    ) -> "ZBox":
        """Bounds of ``(x - mean) / std`` for raw pixels ``low <= x <= high``.

        ``mean`` and ``std`` are per-channel sequences (or scalars) as in image
        normalisation; the bounds get shape ``(C, 1, 1)``.
        """
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        if torch.any(std_t <= 0):
            raise ValueError("from_normalization needs std > 0 for every channel.")
        return cls(low=(low - mean_t) / std_t, high=(high - mean_t) / std_t)

    def bounds(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The bounds as tensors broadcastable to ``like`` (batch axis first)."""
        low = torch.as_tensor(self.low, dtype=like.dtype, device=like.device)
        high = torch.as_tensor(self.high, dtype=like.dtype, device=like.device)
        return low.expand(like.shape[1:]), high.expand(like.shape[1:])

    def __hash__(self) -> int:  # tensors are not hashable by value
        return id(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ZBox):
            return NotImplemented
        return bool(
            torch.equal(torch.as_tensor(self.low), torch.as_tensor(other.low))
            and torch.equal(torch.as_tensor(self.high), torch.as_tensor(other.high))
        )


WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)

# module types a rule is assigned to: the weighted layers, LayerNorm and GroupNorm (their
# stabiliser and bias mode) and types registered with ``add_rule_target``
_RULE_TARGETS: list[type] = [*WEIGHTED, nn.LayerNorm, nn.GroupNorm]


def add_rule_target(module_type: type) -> None:
    """Let :func:`resolve_rules` assign a Rule to modules of ``module_type`` too."""
    if module_type not in _RULE_TARGETS:
        _RULE_TARGETS.append(module_type)


def rule_targets() -> tuple[type, ...]:
    """Module types that take a Rule: weighted layers, then registered types."""
    return tuple(_RULE_TARGETS)


#: A rule assignment: a preset name, one Rule for every layer that takes one, a
#: mapping from module type or module-name pattern (``fnmatch``) to Rule, or a
#: callable ``(name, module) -> Rule | None``.
RuleSpec = Union[str, Rule, Mapping, Callable[[str, nn.Module], "Rule | None"]]


def _conv_blocks(model: nn.Module) -> dict[str, int]:
    """Number every conv layer by its block: a block ends at each max-pool.

    Counting by block rather than by list index is what the paper means; index
    boundaries shift as soon as a network has a different number of layers per block.
    """
    blocks: dict[str, int] = {}
    block = 1
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            blocks[name] = block
        elif isinstance(module, (nn.MaxPool1d, nn.MaxPool2d)):
            block += 1
    return blocks


def vgg_preset(
    model: nn.Module,
    low: "float | torch.Tensor" = 0.0,
    high: "float | torch.Tensor" = 1.0,
    gammas: tuple[float, ...] = (0.5, 0.5, 0.25, 0.1, 0.0),
    linear_rule: Rule = Epsilon(1e-6),
) -> dict[str, Rule]:
    """The BiLRP paper's rules for VGG-type networks, keyed by module name.

    z^B on the first conv; γ by conv block (0.5 / 0.5 / 0.25 / 0.1 / 0 for blocks
    1–5, blocks delimited by max-pools, deeper blocks take the last value); ``linear_rule``
    on linear layers.

    Parameters
    ----------
    model : nn.Module
        The feature extractor (conv layers in forward order).
    low, high : float or torch.Tensor
        Bounds of the first conv's input, see :meth:`ZBox.from_normalization`.
    gammas : tuple of float
        γ per conv block.
    linear_rule : Rule
        Rule for ``nn.Linear`` layers.

    Returns
    -------
    dict
        Module name → Rule, usable as ``rules=``.
    """
    rules: dict[str, Rule] = {}
    blocks = _conv_blocks(model)
    for i, (name, block) in enumerate(blocks.items()):
        if i == 0:
            rules[name] = ZBox(low, high)
        else:
            gamma = gammas[min(block, len(gammas)) - 1]
            rules[name] = Gamma(gamma) if gamma > 0 else Zero()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            rules[name] = linear_rule
    return rules


#: The rules of TextKernel and of the command line's text kernels: LRP-0, the biases passed
#: on in proportion to their units' input sizes (one pass per Linear, conserving).
TEXT_RULES = "zero-mass"

PRESETS: dict[str, Callable[[nn.Module], Mapping]] = {
    "zero": lambda model: {WEIGHTED: Zero()},
    # LRP-0 on every layer that takes a rule, the biases passing their share on
    "zero-share": lambda model: {rule_targets(): Zero(bias="share")},
    # the same, the biases passed on in proportion to their units' input sizes: one pass per Linear
    "zero-mass": lambda model: {rule_targets(): Zero(bias="mass")},
    "zero-flat": lambda model: {rule_targets(): Zero(bias="flat")},
    "epsilon": lambda model: {WEIGHTED: Epsilon()},
    "gamma": lambda model: {(nn.Conv1d, nn.Conv2d): Gamma(), nn.Linear: Epsilon()},
    "vgg": vgg_preset,
}


def resolve_rules(spec: RuleSpec, model: nn.Module) -> dict[str, Rule]:
    """Assign a Rule to every layer of ``model`` that takes one, keyed by module name.

    Those are the weighted layers (Linear, Conv1d, Conv2d), LayerNorm, GroupNorm and
    module types registered with ``add_rule_target``. Layers the spec leaves open get
    LRP-0; a single Rule applies to all of them. Name patterns take precedence over
    types, and the first matching entry of a mapping wins.

    Raises
    ------
    ValueError
        For an unknown preset name or an entry that is not a Rule.
    """
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(
                f"Unknown rules preset {spec!r}; choose one of {sorted(PRESETS)}, "
                "or pass a Rule, a mapping {type or name pattern: Rule}, or a callable."
            )
        spec = PRESETS[spec](model)
    targets = rule_targets()
    if isinstance(spec, Rule):
        spec = {targets: spec}
    assigned: dict[str, Rule] = {}
    for name, module in model.named_modules():
        if not isinstance(module, targets):
            continue
        rule = _lookup(spec, name, module)
        if rule is None:
            rule = Zero()
        if not isinstance(rule, Rule):
            raise ValueError(
                f"The rule for layer {name!r} is {rule!r}, not a skbilrp.rules.Rule."
            )
        assigned[name] = rule
    return assigned


def _lookup(spec: "Mapping | Callable", name: str, module: nn.Module) -> "Rule | None":
    if callable(spec) and not isinstance(spec, Mapping):
        return spec(name, module)
    by_name = [k for k in spec if isinstance(k, str)]
    for key in by_name:
        if key == name or fnmatch.fnmatchcase(name, key):
            return spec[key]
    for key, rule in spec.items():
        if isinstance(key, str):
            continue
        if isinstance(module, key):
            return rule
    return None
