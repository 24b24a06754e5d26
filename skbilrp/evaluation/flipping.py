"""Faithfulness of pair explanations: remove evidence in ranked order, watch the similarity.

An explanation of a similarity ``y = k(x, x')`` ranks groups of input positions
(patches). If the ranking is faithful, perturbing the top-ranked groups first makes
``y`` drop fastest. Two protocols:

``"pairwise"`` flipping
    Walk through the group *pairs* ``(g, g')`` in decreasing order of ``R[g, g']`` and
    perturb ``g`` in ``x`` and ``g'`` in ``x'`` together. Each group is perturbed once,
    the first time a pair holding it comes up, so the pair ranking induces a ranking
    of all ``p + q`` groups of both inputs. The curve is read at equally spaced
    fractions of those ``p + q`` groups.
``"marginal"`` flipping
    Rank the groups of ``x`` by the marginal relevance ``R.sum(axis=1)`` and perturb
    them with ``x'`` intact; separately, the same for ``x'`` with ``R.sum(axis=0)``.
    The curve is the mean of the two one-sided curves.

Perturbed groups are replaced by a *baseline* image computed once per input:

``"mean"``
    the per-channel mean of that input (a flat grey/colour patch);
``"blur"``
    a Gaussian blur of that input (``blur_sigma`` pixels), which removes detail but
    keeps the colour and rough shading, so it creates fewer artificial edges.

Every ordering starts from the same input and ends at the same fully perturbed
input, so orderings differ only in the path between. Two scores, lower = the
explanation found the evidence the model uses sooner = more faithful:

:func:`flipping_endpoint_area` (main)
    the area between the curve and the straight line from its start to its end (the
    fully perturbed similarity), divided by the distance between the two: 0 for a
    straight line, negative below it, positive above it, so a curve that climbs
    above its start counts against the ranking.
:func:`flipping_auc`
    the area under the curve divided by the unperturbed similarity (kept for
    continuity). For one pair both scores are increasing functions of the same area
    with the same end points for every ordering, so pair-by-pair comparisons (which
    method is lower) agree; the means weigh the pairs differently.

The explanation methods compared by :func:`evaluate` are small callables (see
:class:`ExplanationMethod`): :class:`BiLRPMethod`, :class:`HessianProductMethod`,
:class:`SaliencyOuterProductMethod` (the rank-1 product of two gradient×input maps of
the similarity) and :class:`RandomMethod`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Protocol, Union

import numpy as np
import torch
from scipy import ndimage, stats
from torch import nn

from ..explainer import Explainer
from ..pairs import Kernel
from ..pooling import Pooling, PoolingSpec, make_pooling
from ..rules import RuleSpec

__all__ = [
    "FlippingMode",
    "Perturbation",
    "ExplanationMethod",
    "BiLRPMethod",
    "HessianProductMethod",
    "SaliencyOuterProductMethod",
    "RandomMethod",
    "default_methods",
    "explain_pairs",
    "flipping_curve",
    "flipping_auc",
    "flipping_endpoint_area",
    "evaluate",
    "FaithfulnessResults",
]

FlippingMode = Literal["pairwise", "marginal"]
Perturbation = Literal["mean", "blur"]

_MODES = ("pairwise", "marginal")
_PERTURBATIONS = ("mean", "blur")


# ----------------------------------------------------------------------------- methods


class ExplanationMethod(Protocol):
    """A way to explain similarities on pairs of input groups.

    ``method(model, X, X2, pooling=..., kernel=..., channel_axis=...)`` explains
    ``k(phi(X[n]), phi(X2[n]))`` for every ``n`` and returns an ndarray of shape
    ``(n, p, q)`` (``p``, ``q``: groups of ``X[n]`` and ``X2[n]``). Only the order of
    the entries matters for flipping.
    """

    def __call__(self, model: nn.Module, X: torch.Tensor, X2: torch.Tensor, *,
                 pooling: PoolingSpec, kernel: Kernel, channel_axis: Optional[int]) -> np.ndarray: ...


def _diagonal(n: int) -> list[tuple[int, int]]:
    return [(i, i) for i in range(n)]


@dataclass
class BiLRPMethod:
    """BiLRP with the given rules (:class:`skbilrp.Explainer`).

    Parameters
    ----------
    rules : str, Rule, mapping or callable, default="zero"
        Rule assignment, e.g. ``skbilrp.models.mobilenet_v2_rules(model)``.
    batch_size : int, default=16
        Samples recorded at once.
    attention : {"cp", "attnlrp"}, default="cp"
        Attention rule (see :class:`skbilrp.Explainer`).
    """

    rules: RuleSpec = "zero"
    batch_size: int = 16
    attention: str = "cp"

    def __call__(self, model: nn.Module, X: torch.Tensor, X2: torch.Tensor, *,
                 pooling: PoolingSpec, kernel: Kernel, channel_axis: Optional[int]) -> np.ndarray:
        ex = Explainer(model, rules=self.rules, pooling=pooling, channel_axis=channel_axis,
                       batch_size=self.batch_size, attention=self.attention)
        return ex.explain(X, X2, kernel=kernel, pairs=_diagonal(len(X))).relevance


@dataclass
class HessianProductMethod:
    """Hessian×Product, ``R[i, i'] = x_i x'_i' d²y / dx_i dx'_i'``, from plain autograd.

    ``Explainer(method="hp")``: one Jacobian-vector product per group of positions
    when there are fewer groups than features (one backward pass per feature
    otherwise).

    Parameters
    ----------
    batch_size : int, default=16
        Samples explained at once.
    """

    batch_size: int = 16

    def __call__(self, model: nn.Module, X: torch.Tensor, X2: torch.Tensor, *,
                 pooling: PoolingSpec, kernel: Kernel, channel_axis: Optional[int]) -> np.ndarray:
        ex = Explainer(model, method="hp", pooling=pooling, channel_axis=channel_axis,
                       batch_size=self.batch_size)
        return ex.explain(X, X2, kernel=kernel, pairs=_diagonal(len(X))).relevance


@dataclass
class SaliencyOuterProductMethod:
    """Rank-1 "explanation": the outer product of two first-order saliency maps.

    ``s = x ⊙ ∇_x y`` and ``s' = x' ⊙ ∇_x' y`` for ``y = k(phi(x), phi(x'))`` (gradient
    × input of the similarity itself, pooled into groups), then ``R = s s'^T``. Some
    code presents this as BiLRP; it cannot express *which* parts of ``x`` match which
    parts of ``x'``.
    """

    def __call__(self, model: nn.Module, X: torch.Tensor, X2: torch.Tensor, *,
                 pooling: PoolingSpec, kernel: Kernel, channel_axis: Optional[int]) -> np.ndarray:
        pool_a = make_pooling(pooling, tuple(X.shape[1:]), channel_axis)
        pool_b = make_pooling(pooling, tuple(X2.shape[1:]), channel_axis)
        a = X.detach().clone().requires_grad_(True)
        b = X2.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            y = _kernel_rows(model(a).flatten(1), model(b).flatten(1), kernel)
            grad_a, grad_b = torch.autograd.grad(y.sum(), (a, b))
        s_a = pool_a.pool((grad_a * a).detach()).double().numpy()
        s_b = pool_b.pool((grad_b * b).detach()).double().numpy()
        return s_a[:, :, None] * s_b[:, None, :]


@dataclass
class RandomMethod:
    """Random relevance (a random ranking), seeded: the baseline every method must beat.

    Parameters
    ----------
    seed : int, default=0
    """

    seed: int = 0

    def __call__(self, model: nn.Module, X: torch.Tensor, X2: torch.Tensor, *,
                 pooling: PoolingSpec, kernel: Kernel, channel_axis: Optional[int]) -> np.ndarray:
        p = make_pooling(pooling, tuple(X.shape[1:]), channel_axis).n_groups
        q = make_pooling(pooling, tuple(X2.shape[1:]), channel_axis).n_groups
        return np.random.default_rng(self.seed).random((len(X), p, q))


def default_methods(rules: RuleSpec = "zero", seed: int = 0) -> dict[str, ExplanationMethod]:
    """The four methods of the faithfulness benchmark.

    Parameters
    ----------
    rules : str, Rule, mapping or callable, default="zero"
        BiLRP's rules (use the model's preset, e.g. ``mobilenet_v2_rules(model)``).
    seed : int, default=0
        Seed of the random ordering.

    Returns
    -------
    dict
        ``{"bilrp": ..., "hp": ..., "saliency_outer": ..., "random": ...}``.
    """
    return {
        "bilrp": BiLRPMethod(rules),
        "hp": HessianProductMethod(),
        "saliency_outer": SaliencyOuterProductMethod(),
        "random": RandomMethod(seed),
    }


# ---------------------------------------------------------------------------- flipping


def _kernel_rows(fa: torch.Tensor, fb: torch.Tensor, kernel: Kernel) -> torch.Tensor:
    """``k(fa[n], fb[n])`` for every row ``n``."""
    if kernel == "linear":
        return (fa * fb).sum(1)
    if kernel == "cosine":
        tiny = torch.finfo(fa.dtype).tiny
        return (fa * fb).sum(1) / (fa.norm(dim=1).clamp_min(tiny) * fb.norm(dim=1).clamp_min(tiny))
    raise ValueError(f"kernel must be 'linear' or 'cosine', got {kernel!r}.")


def _features(model: nn.Module, X: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(X[i:i + batch_size]).flatten(1) for i in range(0, len(X), batch_size)])


def _baseline(x: torch.Tensor, pool: Pooling, perturbation: Perturbation,
              blur_sigma: Optional[float]) -> torch.Tensor:
    """The replacement for perturbed groups of one sample ``x``."""
    axis = pool.channel_axis
    position_axes = tuple(i for i in range(x.dim()) if i != axis)
    if perturbation == "mean":
        return x.mean(dim=position_axes, keepdim=True).expand_as(x)
    sigma = blur_sigma if blur_sigma is not None else max(pool.position_shape) / 8
    sigmas = [0.0 if i == axis else float(sigma) for i in range(x.dim())]
    blurred = ndimage.gaussian_filter(x.detach().cpu().double().numpy(), sigmas, mode="reflect")
    return torch.from_numpy(blurred).to(x.dtype)


def _perturbed(x: torch.Tensor, baseline: torch.Tensor, pool: Pooling, group_masks: np.ndarray) -> torch.Tensor:
    """``x`` with the groups flagged in each row of ``group_masks`` ``(s, p)`` replaced."""
    pos = torch.from_numpy(group_masks[:, pool.labels])  # (s, *positions)
    if pool.channel_axis is not None:
        pos = pos.unsqueeze(1 + pool.channel_axis)
    return torch.where(pos, baseline[None], x[None])


def _budgets(total: int, steps: int) -> np.ndarray:
    return np.round(np.linspace(0, total, steps + 1)).astype(np.int64)


def _pairwise_ranks(rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank of every group of ``x`` and of ``x'`` in the joint order the pairs induce.

    Pairs are visited by decreasing relevance (ties in row-major order); visiting
    ``(g, g')`` lists ``g`` then ``g'``, and each group keeps its first place.
    """
    p, q = rel.shape
    order = np.argsort(-rel, axis=None, kind="stable")
    rows, cols = np.unravel_index(order, rel.shape)
    events = np.stack([rows, p + cols], axis=1).reshape(-1)  # x groups 0..p-1, x' groups p..
    _, first = np.unique(events, return_index=True)  # first visit of every group, by id
    rank = np.empty(p + q, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(p + q)
    return rank[:p], rank[p:]


def _marginal_ranks(marginal: np.ndarray) -> np.ndarray:
    rank = np.empty(marginal.size, dtype=np.int64)
    rank[np.argsort(-marginal, kind="stable")] = np.arange(marginal.size)
    return rank


def _check_args(mode: str, perturbation: str, steps: int) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be 'pairwise' or 'marginal', got {mode!r}.")
    if perturbation not in _PERTURBATIONS:
        raise ValueError(f"perturbation must be 'mean' or 'blur', got {perturbation!r}.")
    if int(steps) < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}.")


def flipping_curve(model: nn.Module, x: Any, x2: Any, relevance: np.ndarray, pooling: PoolingSpec = None,
                   mode: FlippingMode = "pairwise", steps: int = 16, perturbation: Perturbation = "mean",
                   kernel: Kernel = "linear", channel_axis: Optional[int] = 0,
                   blur_sigma: Optional[float] = None, batch_size: int = 32) -> np.ndarray:
    """Similarity ``k(x, x')`` while groups are perturbed in the order ``relevance`` ranks them.

    Parameters
    ----------
    model : nn.Module
        Feature extractor ``phi`` (in eval mode), ``(N, ...) -> (N, h)``.
    x, x2 : array-like or torch.Tensor
        One sample each, without a batch axis.
    relevance : ndarray of shape (p, q)
        Pair explanation of ``k(x, x2)`` over the groups of ``pooling``; only the order
        of its entries is used (most relevant first).
    pooling : None, int, tuple or array, default=None
        Groups of input positions, as given to the explainer.
    mode : {"pairwise", "marginal"}, default="pairwise"
        "pairwise": perturb ``g`` in ``x`` and ``g'`` in ``x2`` together, pairs in
        decreasing ``relevance[g, g']``; the curve is read at ``steps + 1`` equally
        spaced numbers of perturbed groups out of ``p + q``. "marginal": perturb ``x``
        alone in decreasing ``relevance.sum(1)``, and ``x2`` alone in decreasing
        ``relevance.sum(0)``; the curve is the mean of the two.
    steps : int, default=16
        Number of intervals of the curve.
    perturbation : {"mean", "blur"}, default="mean"
        Replace a perturbed group by the input's per-channel mean, or by a Gaussian
        blur of the input.
    kernel : {"linear", "cosine"}, default="linear"
        The similarity of the feature vectors. The linear kernel is the one whose
        evidence perturbation removes: with the cosine, two fully perturbed (flat)
        inputs look alike again, so the curve climbs back towards its start.
    channel_axis : int or None, default=0
        Channel axis of one sample.
    blur_sigma : float, optional
        Standard deviation in positions of the blur; default: one eighth of the
        largest side of the input.
    batch_size : int, default=32
        Perturbed inputs per forward pass.

    Returns
    -------
    ndarray of shape (steps + 1,)
        ``curve[0] = k(x, x2)``; ``curve[-1]`` is the similarity with everything
        perturbed (the same for every ranking).

    Raises
    ------
    ValueError
        For an unknown mode, kernel or perturbation, or a relevance matrix that does
        not match the pooling.
    """
    _check_args(mode, perturbation, steps)
    x = torch.as_tensor(x).detach()
    x2 = torch.as_tensor(x2).detach()
    pool_a = make_pooling(pooling, tuple(x.shape), channel_axis)
    pool_b = make_pooling(pooling, tuple(x2.shape), channel_axis)
    rel = np.asarray(relevance, dtype=np.float64)
    if rel.shape != (pool_a.n_groups, pool_b.n_groups):
        raise ValueError(
            f"relevance has shape {rel.shape} but the pooling gives {pool_a.n_groups} groups "
            f"for x and {pool_b.n_groups} for x2; pass the pooling the explanation was computed with."
        )
    base_a = _baseline(x, pool_a, perturbation, blur_sigma)
    base_b = _baseline(x2, pool_b, perturbation, blur_sigma)
    p, q = rel.shape
    if mode == "pairwise":
        rank_a, rank_b = _pairwise_ranks(rel)
        budgets = _budgets(p + q, steps)[:, None]
        xa = _perturbed(x, base_a, pool_a, rank_a[None] < budgets)
        xb = _perturbed(x2, base_b, pool_b, rank_b[None] < budgets)
        fa, fb = _features(model, xa, batch_size), _features(model, xb, batch_size)
        return _kernel_rows(fa, fb, kernel).double().numpy()
    xa = _perturbed(x, base_a, pool_a, _marginal_ranks(rel.sum(1))[None] < _budgets(p, steps)[:, None])
    xb = _perturbed(x2, base_b, pool_b, _marginal_ranks(rel.sum(0))[None] < _budgets(q, steps)[:, None])
    fa, fb = _features(model, xa, batch_size), _features(model, xb, batch_size)
    # fa[0] and fb[0] are the unperturbed inputs: the intact partner of each side
    curve_a = _kernel_rows(fa, fb[:1].expand_as(fb), kernel)
    curve_b = _kernel_rows(fa[:1].expand_as(fa), fb, kernel)
    return (0.5 * (curve_a + curve_b)).double().numpy()


def flipping_auc(curve: np.ndarray) -> float:
    """Area under a flipping curve, normalised by the unperturbed similarity.

    The curve is divided by ``curve[0]`` and integrated with the trapezoidal rule over
    the perturbed fraction in [0, 1]. Lower means the similarity dropped sooner, i.e.
    the ranking is more faithful.

    Parameters
    ----------
    curve : ndarray of shape (steps + 1,)
        From :func:`flipping_curve`.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If the curve has fewer than two points or does not start at a positive
        similarity (normalising by it would flip or blow up the area).
    """
    curve = np.asarray(curve, dtype=np.float64)
    if curve.ndim != 1 or curve.size < 2:
        raise ValueError(f"curve must be 1-d with at least two points, got shape {curve.shape}.")
    if not curve[0] > 0:
        raise ValueError(
            f"The curve starts at similarity {curve[0]:.3g}; the normalised area needs a positive "
            "starting similarity (explain pairs that the model finds similar)."
        )
    y = curve / curve[0]
    return float(np.sum(0.5 * (y[1:] + y[:-1])) / (y.size - 1))


def flipping_endpoint_area(curve: np.ndarray) -> float:
    """Area between a flipping curve and the line from its start to its fully perturbed end.

    With ``y0 = curve[0]`` (unperturbed) and ``y1 = curve[-1]`` (everything
    perturbed, the same for every ordering) the line is ``y0 + (y1 - y0) t`` over the
    perturbed fraction ``t`` in [0, 1]; the score is ``∫ (curve - line) dt / |y0 - y1|``
    (trapezoidal rule). 0 for a straight line; positive when the curve lies above
    the line (the similarity holds up or rises above its start: the ranking found
    little of what the model uses); negative below it. Where the end lies below the
    start, the best value (a drop to ``y1`` at the first point, never below it) is
    ``-(1 - 1/steps) / 2``. Where the fully perturbed inputs are *more* alike than the
    intact ones (``y1 > y0``, e.g. unit-normalised embeddings), the line climbs, a
    curve that first dips below its start scores lower still, and the division by
    ``|y0 - y1|`` magnifies every value when the end nears the start: compare
    methods pair by pair (sign tests) there rather than by the mean.

    Parameters
    ----------
    curve : ndarray of shape (steps + 1,)
        From :func:`flipping_curve`.

    Returns
    -------
    float
        NaN when ``y0 == y1`` (no difference to normalise by).

    Raises
    ------
    ValueError
        If the curve has fewer than two points.

    Examples
    --------
    >>> flipping_endpoint_area(np.array([1.0, 0.5, 0.0]))  # the straight line
    0.0
    >>> flipping_endpoint_area(np.array([1.0, 0.0, 0.0]))  # drops at once
    -0.25
    >>> flipping_endpoint_area(np.array([1.0, 1.5, 0.0]))  # rises above its start
    0.5
    """
    curve = np.asarray(curve, dtype=np.float64)
    if curve.ndim != 1 or curve.size < 2:
        raise ValueError(f"curve must be 1-d with at least two points, got shape {curve.shape}.")
    y0, y1 = curve[0], curve[-1]
    if y0 == y1:
        return float("nan")
    gap = curve - np.linspace(y0, y1, curve.size)
    return float(np.sum(0.5 * (gap[1:] + gap[:-1])) / (curve.size - 1) / abs(y0 - y1))


# -------------------------------------------------------------------------- evaluation


@dataclass
class FaithfulnessResults:
    """Flipping curves and areas of several explanation methods on the same pairs.

    Attributes
    ----------
    methods : list of str
    modes : list of str
    fractions : ndarray of shape (steps + 1,)
        Perturbed fraction at each point of the curves.
    curves : dict
        ``curves[mode][method]``: ndarray ``(n_pairs, steps + 1)`` of similarities.
    auc : dict
        ``auc[mode][method]``: ndarray ``(n_pairs,)`` of :func:`flipping_auc` values.
    seconds : dict
        ``seconds[method]``: wall time spent computing that method's explanations.
    """

    methods: list[str]
    modes: list[str]
    fractions: np.ndarray
    curves: dict[str, dict[str, np.ndarray]]
    auc: dict[str, dict[str, np.ndarray]]
    seconds: dict[str, float] = field(default_factory=dict)

    def mean_auc(self, mode: FlippingMode, method: str) -> tuple[float, float]:
        """Mean area over pairs and its standard error."""
        return _mean_sem(self.auc[mode][method])

    def endpoint(self, mode: FlippingMode, method: str) -> np.ndarray:
        """:func:`flipping_endpoint_area` of every pair's curve, ``(n_pairs,)``."""
        return np.array([flipping_endpoint_area(c) for c in self.curves[mode][method]])

    def mean_endpoint(self, mode: FlippingMode, method: str) -> tuple[float, float]:
        """Mean :func:`flipping_endpoint_area` over pairs (NaNs left out) and its standard error."""
        return _mean_sem(self.endpoint(mode, method))

    def wins(self, mode: FlippingMode, method: str, other: str) -> int:
        """On how many pairs ``method`` has a strictly lower area than ``other``."""
        return int(np.sum(self.auc[mode][method] < self.auc[mode][other]))

    def sign_test(self, mode: FlippingMode, method: str, other: str) -> float:
        """One-sided sign-test p-value of "``method`` has the lower area more often".

        Pairs with equal areas are left out; 1.0 when all are equal.
        """
        a, b = self.auc[mode][method], self.auc[mode][other]
        n = int(np.sum(a != b))
        return float(stats.binomtest(self.wins(mode, method, other), n, 0.5, alternative="greater").pvalue) if n else 1.0

    def to_markdown(self, reference: Union[None, str, Sequence[str]] = None) -> str:
        """A markdown table: mean ± s.e. scores per method (rows) and mode (columns).

        Per mode, the area relative to the straight line to the fully perturbed end
        (:func:`flipping_endpoint_area`, "vs line") and the old normalised area
        (:func:`flipping_auc`, "AUC").

        Parameters
        ----------
        reference : str or sequence of str, optional
            Methods; adds, per reference and mode, on how many pairs the reference has
            the lower area than each other method, with the one-sided sign-test p-value
            (the same for both scores: per pair they order the methods alike).
        """
        refs = [] if reference is None else [reference] if isinstance(reference, str) else list(reference)
        n = len(next(iter(self.auc[self.modes[0]].values())))
        head = ["method"] + [f"{mode} vs line" for mode in self.modes] + [f"{mode} AUC" for mode in self.modes]
        head += [f"{ref} lower ({mode})" for ref in refs for mode in self.modes]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for method in self.methods:
            cells = [method] + ["{:+.3f} ± {:.3f}".format(*self.mean_endpoint(mode, method)) for mode in self.modes]
            cells += ["{:.3f} ± {:.3f}".format(*self.mean_auc(mode, method)) for mode in self.modes]
            cells += ["—" if method == ref else
                      f"{self.wins(mode, ref, method)}/{n} (p={self.sign_test(mode, ref, method):.2g})"
                      for ref in refs for mode in self.modes]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _mean_sem(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard error over the finite values."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return float("nan"), float("nan")
    sem = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else float("nan")
    return float(values.mean()), sem


def _stack_pairs(pairs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = list(pairs)
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise ValueError("pairs must be a non-empty sequence of (x, x2) samples.")
    X = torch.stack([torch.as_tensor(a).detach() for a, _ in pairs])
    X2 = torch.stack([torch.as_tensor(b).detach() for _, b in pairs])
    return X, X2


def explain_pairs(model: nn.Module, pairs: Sequence[tuple[Any, Any]], methods: Mapping[str, ExplanationMethod],
                  pooling: PoolingSpec = None, kernel: Kernel = "linear",
                  channel_axis: Optional[int] = 0) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Explain every pair with every method, timing each method.

    Parameters
    ----------
    model, pairs, methods, pooling, kernel, channel_axis
        See :func:`evaluate`.

    Returns
    -------
    explanations : dict
        Method name → ndarray ``(n_pairs, p, q)``; pass it as ``methods`` to
        :func:`evaluate` to score the same explanations several ways.
    seconds : dict
        Method name → wall time of its explanations.
    """
    X, X2 = _stack_pairs(pairs)
    explanations, seconds = {}, {}
    for name, method in methods.items():
        start = time.perf_counter()
        explanations[name] = np.asarray(method(model, X, X2, pooling=pooling, kernel=kernel,
                                               channel_axis=channel_axis))
        seconds[name] = time.perf_counter() - start
    return explanations, seconds


def evaluate(model: nn.Module, pairs: Sequence[tuple[Any, Any]],
             methods: Mapping[str, Union[ExplanationMethod, np.ndarray]], pooling: PoolingSpec = None,
             kernel: Kernel = "linear", modes: Sequence[FlippingMode] = ("pairwise", "marginal"),
             steps: int = 16, perturbation: Perturbation = "mean", channel_axis: Optional[int] = 0,
             blur_sigma: Optional[float] = None, batch_size: int = 32) -> FaithfulnessResults:
    """Flipping benchmark of several explanation methods on the same input pairs.

    Each method explains every pair once; each explanation is then scored by
    :func:`flipping_curve` in each mode and summarised by :func:`flipping_auc`.

    Parameters
    ----------
    model : nn.Module
        Feature extractor ``phi`` in eval mode.
    pairs : sequence of (x, x2)
        Samples without batch axis, all of the same shape.
    methods : mapping of str to ExplanationMethod or ndarray
        E.g. :func:`default_methods`; an ndarray ``(n_pairs, p, q)`` gives that
        method's explanations precomputed (see :func:`explain_pairs`).
    pooling : None, int, tuple or array, default=None
        Groups of input positions, shared by explanations and perturbations.
    kernel : {"linear", "cosine"}, default="linear"
        Explained and tracked similarity (see :func:`flipping_curve`).
    modes : sequence of {"pairwise", "marginal"}, default=("pairwise", "marginal")
    steps, perturbation, channel_axis, blur_sigma, batch_size
        See :func:`flipping_curve`.

    Returns
    -------
    FaithfulnessResults
        ``seconds`` holds the time of the explanations computed here.
    """
    for mode in modes:
        _check_args(mode, perturbation, steps)
    X, X2 = _stack_pairs(pairs)
    to_compute = {name: m for name, m in methods.items() if not isinstance(m, np.ndarray)}
    computed, seconds = explain_pairs(model, pairs, to_compute, pooling, kernel, channel_axis)
    curves: dict = {mode: {} for mode in modes}
    auc: dict = {mode: {} for mode in modes}
    for name, method in methods.items():
        rel = computed[name] if name in computed else method
        if len(rel) != len(X):
            raise ValueError(f"The explanations of {name!r} cover {len(rel)} pairs, not {len(X)}.")
        for mode in modes:
            c = np.stack([flipping_curve(model, X[i], X2[i], rel[i], pooling, mode, steps, perturbation,
                                         kernel, channel_axis, blur_sigma, batch_size)
                          for i in range(len(X))])
            curves[mode][name] = c
            auc[mode][name] = np.array([flipping_auc(row) for row in c])
    return FaithfulnessResults(list(methods), list(modes), np.linspace(0, 1, steps + 1), curves, auc, seconds)
