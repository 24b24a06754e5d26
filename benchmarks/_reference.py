"""The reference BiLRP algorithm, re-implemented as the baseline of ``bench_engine.py``.

The reference code (Eberle et al., ``oeberle/BiLRP_explain_similarity``,
``model/bilrp.py``) explains one pair at a time and shares nothing between features
or pairs: for every pair ``(x, x')`` and every feature ``m`` of ``phi`` it runs one
LRP pass for ``x`` and one for ``x'``, each at batch size 1 with its own forward
pass, and accumulates ``outer(pool(R_m(x)), pool(R_m(x')))``. Relevance is summed
over channels and over square patches (the reference average-pools, i.e. sums
divided by the patch area; we sum so that the numbers equal skbilrp's).

One LRP pass comes in two versions, both computing the same maps:

:func:`lrp_gradient_trick`
    the cheapest way to write the reference algorithm: one modified forward pass
    (every conv/linear layer becomes ``out = z_rho * (z / z_rho).detach()``, the first
    conv the same with the z^B denominator) and one backward from ``phi_m``;
    relevance is input times gradient. The benchmark's headline ratios use this
    version, so they are lower bounds on the speed-up over the reference code.
:func:`lrp_layerwise`
    the reference code literally: a plain forward pass that stores every activation,
    then, layer by layer from the top, a deep copy of the layer with modified
    parameters (``newlayer``), its forward and a one-layer backward.

Numerical details kept from the reference: the z^B denominator is
``W x - W⁺ l - W⁻ h`` without the bias (the reference's ``newlayer`` modifies the
bias too, so ``b - b⁺ - b⁻`` cancels); γ-layers use ``rho(p) = p + γ p⁺`` for weights
and biases; ReLU passes relevance unchanged; max-pool is winner-takes-all. The
reference assigns γ by layer index with boundaries that are off by one block; here
γ comes from the rules given (skbilrp's block-wise VGG preset), so both sides apply
the same rules.

This module deliberately does not use skbilrp's engine: it is the independent
oracle that the benchmark checks skbilrp's per-sample relevance against.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from skbilrp.layers import Normalize
from skbilrp.rules import Gamma, Rule, ZBox, Zero

__all__ = [
    "ReferenceNet",
    "reference_net",
    "lrp_gradient_trick",
    "lrp_layerwise",
    "sum_pool",
    "reference_bilrp",
]

#: stabilisers of the reference code (γ-layers and the z^B layer)
_EPS_GAMMA = 1e-9
_EPS_ZB = 1e-6


@dataclass
class ReferenceNet:
    """A plain layer list with one LRP setting per layer, as the reference code uses.

    Attributes
    ----------
    normalize : Normalize or None
        Applied to the raw image before any LRP pass (the reference feeds normalised
        images); relevance is computed in the normalised space, position by position.
    layers : list of nn.Module
        Conv2d / ReLU / MaxPool2d / Flatten, optionally a final bias-free Linear
        (the random projection).
    gammas : list of float
        γ of each layer (0 for LRP-0 and for layers without weights).
    low, high : torch.Tensor
        Bounds ``(1, C, 1, 1)`` of the first conv's (normalised) input, for z^B.
    modified : dict
        Layer index → modified parameters, computed once (unlike the reference,
        which copies and modifies every layer in every pass; precomputing them keeps
        the gradient-trick baseline conservative): ``(W⁺, W⁻)`` for the z^B layer,
        ``(rho(W), rho(b))`` for γ-layers.
    """

    normalize: Optional[Normalize]
    layers: list
    gammas: list
    low: torch.Tensor
    high: torch.Tensor
    modified: dict = field(default_factory=dict)

    @torch.no_grad()
    def __post_init__(self) -> None:
        for i, (layer, gamma) in enumerate(zip(self.layers, self.gammas)):
            if i == 0:
                self.modified[i] = (layer.weight.clamp(min=0), layer.weight.clamp(max=0))
            elif gamma:
                rho = _rho(gamma)
                self.modified[i] = (rho(layer.weight), None if layer.bias is None else rho(layer.bias))


def reference_net(extractor: nn.Module, rules: Mapping[str, Rule],
                  projection: Optional[torch.Tensor] = None) -> ReferenceNet:
    """Unroll a :func:`skbilrp.models.vgg16` extractor into a :class:`ReferenceNet`.

    Parameters
    ----------
    extractor : nn.Module
        ``Sequential(normalize, features, flatten)`` as built by ``vgg16``.
    rules : mapping
        Module name → rule, e.g. ``vgg16_rules(extractor)``: ZBox on the first conv,
        Gamma or Zero on the others. Only the parameters are read (γ, bounds); the
        LRP maths is this module's own.
    projection : torch.Tensor, optional
        ``(d, h)`` matrix of a random projection ``phi' = W phi`` on top of the
        flattened features (LRP-0 through it, as in the reference).

    Returns
    -------
    ReferenceNet
    """
    extractor = copy.deepcopy(extractor)  # its parameters are frozen below
    normalize = getattr(extractor, "normalize", None)
    layers, gammas = [], []
    low = high = None
    for name, module in extractor.named_modules():
        if isinstance(module, (nn.Sequential, Normalize)):
            continue
        if isinstance(module, nn.Conv2d):
            rule = rules.get(name, Zero())
            if not layers:
                if not isinstance(rule, ZBox):
                    raise ValueError(f"The first conv {name!r} needs a ZBox rule, got {rule!r}.")
                shape = (1, -1, 1, 1)
                low = torch.as_tensor(rule.low, dtype=torch.float32).reshape(shape)
                high = torch.as_tensor(rule.high, dtype=torch.float32).reshape(shape)
                gammas.append(0.0)
            elif isinstance(rule, Gamma):
                gammas.append(float(rule.gamma))
            elif type(rule) is Zero:
                gammas.append(0.0)
            else:
                raise ValueError(f"The reference supports z^B, γ and LRP-0 only; {name!r} has {rule!r}.")
        elif isinstance(module, (nn.ReLU, nn.MaxPool2d, nn.Flatten)):
            gammas.append(0.0)
        else:
            raise ValueError(f"The reference does not know module {name!r} ({type(module).__name__}).")
        layers.append(module)
    if projection is not None:
        proj = nn.Linear(projection.shape[1], projection.shape[0], bias=False)
        proj.weight.data.copy_(projection)
        layers.append(proj)
        gammas.append(0.0)
    for layer in layers:
        for p in layer.parameters():
            p.requires_grad_(False)
    return ReferenceNet(normalize, layers, gammas, low, high)


def _normalized(net: ReferenceNet, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.normalize(x) if net.normalize is not None else x.clone()


def _rho(gamma: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda p: p + gamma * p.clamp(min=0)


def _weighted(layer: nn.Module, a: torch.Tensor, weight: torch.Tensor,
              bias: Optional[torch.Tensor]) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(a, weight, bias)
    return F.conv2d(a, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den == 0, torch.zeros_like(num), num / torch.where(den == 0, 1, den))


def lrp_gradient_trick(net: ReferenceNet, x: torch.Tensor, m: int) -> torch.Tensor:
    """LRP map of feature ``m`` of one sample: modified forward + backward.

    Parameters
    ----------
    net : ReferenceNet
    x : torch.Tensor
        One raw image ``(1, C, H, W)``.
    m : int
        Index of the (flattened) output feature.

    Returns
    -------
    torch.Tensor
        ``(1, C, H, W)`` relevance, summing to ``phi_m(x)`` (up to what biases absorb).
    """
    xn = _normalized(net, x).requires_grad_(True)
    low = (xn.detach() * 0 + net.low).requires_grad_(True)
    high = (xn.detach() * 0 + net.high).requires_grad_(True)
    a = xn
    with torch.enable_grad():
        for i, (layer, gamma) in enumerate(zip(net.layers, net.gammas)):
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                w = layer.weight
                z = _weighted(layer, a, w, layer.bias)
                if i == 0:
                    w_pos, w_neg = net.modified[i]
                    z_rho = (_weighted(layer, a, w, None)
                             - _weighted(layer, low, w_pos, None)
                             - _weighted(layer, high, w_neg, None))
                elif gamma:
                    z_rho = _weighted(layer, a, *net.modified[i])
                else:
                    z_rho = z
                a = z_rho * _ratio(z, z_rho).detach()
            else:
                a = layer(a)
        (gx, gl, gh) = torch.autograd.grad(a.flatten()[m], (xn, low, high), allow_unused=True)
    rel = xn.detach() * gx
    if gl is not None:
        rel = rel + low.detach() * gl + high.detach() * gh
    return rel


def _newlayer(layer: nn.Module, g: Callable[[torch.Tensor], torch.Tensor]) -> nn.Module:
    """The reference's ``newlayer``: a deep copy with modified weight and bias."""
    layer = copy.deepcopy(layer)
    if getattr(layer, "weight", None) is not None:
        layer.weight = nn.Parameter(g(layer.weight))
    if getattr(layer, "bias", None) is not None:
        layer.bias = nn.Parameter(g(layer.bias))
    return layer


def lrp_layerwise(net: ReferenceNet, x: torch.Tensor, m: int) -> torch.Tensor:
    """LRP map of feature ``m`` of one sample, as the reference code computes it.

    A plain forward pass storing every activation, then one modified forward and a
    one-layer backward per layer, from the top; the seed is ``phi_m(x)`` at feature
    ``m``. Same arguments and result as :func:`lrp_gradient_trick`.
    """
    acts = [_normalized(net, x)]
    with torch.no_grad():
        for layer in net.layers:
            acts.append(layer(acts[-1]))
    top = acts[-1].flatten()
    r = torch.zeros_like(top)
    r[m] = top[m]
    r = r.reshape(acts[-1].shape)
    for i in reversed(range(len(net.layers))):
        layer = net.layers[i]
        a = acts[i].clone().detach().requires_grad_(True)
        if isinstance(layer, nn.Flatten):
            r = r.reshape(a.shape)
            continue
        if not isinstance(layer, (nn.Conv2d, nn.Linear, nn.MaxPool2d)):
            continue  # ReLU: relevance passes unchanged
        with torch.enable_grad():
            if i > 0:
                z = _newlayer(layer, _rho(net.gammas[i])).forward(a) + _EPS_GAMMA
                (z * (r / z).detach()).sum().backward()
                r = (a * a.grad).detach()
            else:
                low = (a.detach() * 0 + net.low).requires_grad_(True)
                high = (a.detach() * 0 + net.high).requires_grad_(True)
                z = (layer.forward(a)
                     - _newlayer(layer, lambda p: p.clamp(min=0)).forward(low)
                     - _newlayer(layer, lambda p: p.clamp(max=0)).forward(high))
                (z * (r / (z + _EPS_ZB)).detach()).sum().backward()
                r = (a * a.grad + low * low.grad + high * high.grad).detach()
    return r


def sum_pool(rel: torch.Tensor, patch: int) -> torch.Tensor:
    """Sum ``(1, C, H, W)`` relevance over channels and ``patch × patch`` squares.

    Returns the ``(H/patch) * (W/patch)`` patch sums in row-major order.
    """
    r = rel.sum(1)[0]
    h, w = r.shape
    return r.reshape(h // patch, patch, w // patch, patch).sum((1, 3)).flatten()


LRPPass = Callable[[ReferenceNet, torch.Tensor, int], torch.Tensor]


def reference_bilrp(net: ReferenceNet, x1: torch.Tensor, x2: torch.Tensor, patch: int,
                    features: Sequence[int], lrp: LRPPass = lrp_gradient_trick,
                    maps: Optional[list] = None) -> torch.Tensor:
    """Pooled BiLRP relevance of one pair, summed over the given features.

    With ``features = range(h)`` this is the full explanation ``(p, p)``; the
    benchmark times a few features and extrapolates, since every feature costs the
    same (two LRP passes, each with its own forward).

    Parameters
    ----------
    net : ReferenceNet
    x1, x2 : torch.Tensor
        Raw images ``(1, C, H, W)``.
    patch : int
        Patch size of the pooling.
    features : sequence of int
        Features ``m`` to loop over.
    lrp : callable, default=lrp_gradient_trick
        One LRP pass, ``lrp(net, x, m) -> relevance``.
    maps : list, optional
        If given, the pooled maps ``(pool(R_m(x1)), pool(R_m(x2)))`` are appended.

    Returns
    -------
    torch.Tensor
        ``(p, p)``: ``sum_m outer(pool(R_m(x1)), pool(R_m(x2)))``.
    """
    total = None
    for m in features:
        r1 = sum_pool(lrp(net, x1, m), patch)
        r2 = sum_pool(lrp(net, x2, m), patch)
        outer = torch.outer(r1, r2)
        total = outer if total is None else total + outer
        if maps is not None:
            maps.append((r1, r2))
    return total
