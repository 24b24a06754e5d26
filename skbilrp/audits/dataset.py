"""Dataset-level audit: where a fitted model's similarities come from, and shortcut evidence.

A kernel method only ever reads certain kernel entries: a k-NN the pairs (query,
neighbour), an SVM the terms ``alpha_s k(x, x_s)``, a clustering the pairs within each
cluster. :func:`audit_dataset` explains those entries with BiLRP and averages, per
class or cluster, the share of each entry's similarity that every input position
carries (from the pair marginals) and that every pair of regions carries (from region
blocks). A region whose share of the similarity is far above its share of the input
signal is listed as suspicious: the model's notion of "alike" leans on it more than
its content explains, the signature of a shortcut such as a watermark or a marker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from tqdm.auto import tqdm

from ..kernel import DeepKernel
from ..pairs import pair_relevance
from ..pooling import Pooling, PoolingSpec, make_pooling
from ._aggregate import aggregate, signal_share
from ._entries import Entries, choose_entries, sample_entries

__all__ = ["SuspiciousRegion", "DatasetAudit", "audit_dataset"]

#: a region's signal share is floored at this multiple of a uniform share (1 / n_regions)
#: before the ratio is taken: a region without signal (a blank corner) would otherwise
#: get an unbounded ratio from stray relevance, so a flagged region must also carry at
#: least ``ratio`` times a uniform share of the similarity
SIGNAL_FLOOR = 1.0


@dataclass
class SuspiciousRegion:
    """A region whose share of a group's similarity is far above its share of the signal.

    Attributes
    ----------
    group : hashable
        The class or cluster label.
    region : int
        Index into :attr:`DatasetAudit.regions`.
    slices : tuple of slice
        Bounding box of the region in the position grid, e.g. ``(rows, cols)``.
    share : float
        Share of the group's similarity carried by the region (the marginal relevance
        of its positions, averaged over the group's entries); shares sum to 1.
    signal_share : float
        Share of the group's input signal (``|x|``, channels summed) in the region.
    ratio : float
        ``share / max(signal_share, signal_floor)`` (see :attr:`DatasetAudit.signal_floor`).
    """

    group: Any
    region: int
    slices: tuple
    share: float
    signal_share: float
    ratio: float


@dataclass
class DatasetAudit:
    """What the similarities a fitted model uses rest on, per class or cluster.

    Attributes
    ----------
    groups : list
        Labels with at least one entry, sorted.
    entries : {"neighbors", "support", "clusters"}
        Which kernel entries were aggregated.
    n_pairs : dict
        Group → number of kernel entries aggregated (after the ``max_pairs`` cap).
    position_shape : tuple of int
        Shape of the input's position grid, e.g. ``(8, 8)``.
    relevance_maps : dict
        Group → ndarray of shape ``position_shape``: the mean share of each entry's
        similarity carried by each position (both samples' marginals averaged; a group
        of the kernel's pooling spreads its share evenly over its positions). Sums to 1.
    signal_maps : dict
        Group → ndarray of shape ``position_shape``: the mean share of ``|x|`` per
        position over the same entries' samples. Sums to 1.
    regions : ndarray of int, shape ``position_shape``
        Region label of every position.
    region_pairs : dict
        Group → ndarray ``(n_regions, n_regions)``: mean share of similarity carried by
        each pair of regions (symmetrised); sums to 1, rows sum to :meth:`region_share`.
    suspicious : list of SuspiciousRegion
        Every (group, region) whose ratio is at least ``threshold``, by decreasing ratio.
    conservation_error : dict
        Group → max over the entries of ``|k - sum R| / |k|``.
    pairs : dict
        Group → ``(n, 2)`` int array of the aggregated entries ``(row, col)``: rows of
        ``X`` (of ``X_fit_`` when X is None), columns of ``X_fit_`` (of ``X`` for
        ``"clusters"`` with X given).
    n_candidates : dict
        Group → entries available before the ``max_pairs`` cap (sampled with
        ``random_state`` when larger).
    threshold : float
        The ``ratio`` asked for.
    signal_floor : float
        Smallest signal share a ratio is divided by.
    """

    groups: list
    entries: str
    n_pairs: dict
    position_shape: tuple
    relevance_maps: dict
    signal_maps: dict
    regions: np.ndarray
    region_pairs: dict
    suspicious: list
    conservation_error: dict
    n_candidates: dict = field(default_factory=dict)
    pairs: dict = field(default_factory=dict, repr=False)
    threshold: float = 2.0
    signal_floor: float = 0.0

    @property
    def n_regions(self) -> int:
        """Number of regions."""
        return int(self.regions.max()) + 1

    def region_share(self, group: Any) -> np.ndarray:
        """``(n_regions,)``: share of the group's similarity carried by each region."""
        return _region_sums(self.relevance_maps[group], self.regions, self.n_regions)

    def signal_region_share(self, group: Any) -> np.ndarray:
        """``(n_regions,)``: share of the group's input signal in each region."""
        return _region_sums(self.signal_maps[group], self.regions, self.n_regions)

    def ratios(self, group: Any) -> np.ndarray:
        """``(n_regions,)``: similarity share over (floored) signal share of each region."""
        return self.region_share(group) / np.maximum(self.signal_region_share(group), self.signal_floor)

    def region_slices(self, region: int) -> tuple:
        """Bounding box of a region in the position grid, one slice per axis."""
        where = np.nonzero(self.regions == int(region))
        return tuple(slice(int(w.min()), int(w.max()) + 1) for w in where)

    def top_region_pairs(self, group: Any, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` region pairs ``(r, r', share)`` (``r <= r'``) carrying most of the group's similarity.

        The share of ``(r, r')`` with ``r != r'`` counts both orders.
        """
        m = self.region_pairs[group]
        both = np.triu(m + m.T) - np.diag(np.diag(m))  # (r, r') and (r', r) together, diagonal once
        order = np.argsort(-both, axis=None, kind="stable")[: int(k)]
        rows, cols = np.unravel_index(order, both.shape)
        return [(int(r), int(c), float(both[r, c])) for r, c in zip(rows, cols)]

    def find_suspicious(self, ratio: Optional[float] = None) -> list[SuspiciousRegion]:
        """Every (group, region) whose ratio is at least ``ratio`` (default ``threshold``), by decreasing ratio.

        Recomputed from :attr:`relevance_maps` and :attr:`signal_maps`, so it also
        serves audits whose maps were replaced (e.g. by a baseline).
        """
        threshold = self.threshold if ratio is None else float(ratio)
        found = []
        for group in self.groups:
            share, signal, ratios = self.region_share(group), self.signal_region_share(group), self.ratios(group)
            for r in np.flatnonzero(ratios >= threshold):
                found.append(SuspiciousRegion(group, int(r), self.region_slices(r), float(share[r]),
                                              float(signal[r]), float(ratios[r])))
        return sorted(found, key=lambda s: -s.ratio)

    def to_dict(self) -> dict:
        """JSON-serialisable form: labels as str, arrays as nested lists, slices as ``[start, stop]``."""
        key = {g: str(g) for g in self.groups}
        per = lambda d: {key[g]: _plain(d[g]) for g in self.groups if g in d}  # noqa: E731
        return {
            "groups": [key[g] for g in self.groups],
            "entries": self.entries,
            "n_pairs": per(self.n_pairs),
            "n_candidates": per(self.n_candidates),
            "position_shape": list(self.position_shape),
            "relevance_maps": per(self.relevance_maps),
            "signal_maps": per(self.signal_maps),
            "regions": self.regions.tolist(),
            "region_pairs": per(self.region_pairs),
            "suspicious": [{"group": str(s.group), "region": int(s.region),
                            "slices": [[sl.start, sl.stop] for sl in s.slices], "share": float(s.share),
                            "signal_share": float(s.signal_share), "ratio": float(s.ratio)}
                           for s in self.suspicious],
            "conservation_error": per(self.conservation_error),
            "threshold": float(self.threshold),
            "signal_floor": float(self.signal_floor),
        }


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value.item() if isinstance(value, np.generic) else value


def _region_sums(values: np.ndarray, regions: np.ndarray, n_regions: int) -> np.ndarray:
    return np.bincount(regions.reshape(-1), weights=np.asarray(values).reshape(-1), minlength=n_regions)


def audit_dataset(estimator: Any, X: Any = None, y: Any = None, *, entries: str = "auto", region: PoolingSpec = 2,
                  max_pairs: int = 2000, ratio: float = 2.0, random_state: Optional[int] = 0,
                  verbose: bool = True, n_neighbors: Optional[int] = None) -> DatasetAudit:
    """Audit the kernel entries a fitted model uses: where similarity comes from, per group.

    For each class or cluster, over the kernel entries the model reads, the BiLRP
    explanation of each entry is reduced to shares of its similarity: per position
    (the marginals of both samples, averaged) and per pair of regions. Their means are
    the group's relevance map and region pairs. A region is suspicious when its share
    of the similarity is at least ``ratio`` times its share of the input signal.

    Signal is ``|x|`` (channels summed), averaged over the same entries' samples as a
    share of each sample's total: LRP relevance is first order in the input
    (``x_i`` times a derivative for LRP-0), so a model that weighs every part of the
    input evenly spreads similarity like ``|x|``; a region far above it is weighed more
    than its content explains. (Energy ``x²`` would over-weight bright regions.) The
    signal share is floored at a uniform share, ``1 / n_regions``, before dividing, so
    that a blank region is not flagged for stray relevance: a flagged region carries at
    least ``ratio`` times a uniform share of the similarity.

    Memory is bounded: explanations stay factored (per-sample relevance ``(h, p)``),
    entries are reduced in chunks, and no ``p × q`` matrix is built.

    Parameters
    ----------
    estimator : Pipeline or DeepKernel
        Fitted. A pipeline with a :class:`~skbilrp.DeepKernel` step followed by a
        neighbour estimator (``metric="precomputed"``, ``output="distance"``), a kernel
        machine (``kernel="precomputed"``: SVC, NuSVC, SVR, NuSVR, OneClassSVM,
        KernelRidge) or a clustering with ``labels_``; or a fitted DeepKernel with ``y``.
    X : array-like, optional
        Samples to audit, as the pipeline takes them; default the kernel's training
        samples (``X_fit_``).
    y : array-like, optional
        Labels of ``X`` (of ``X_fit_`` when X is None) that define the groups. Default:
        the estimator's own (a k-NN's training labels or predictions, a kernel machine's
        predictions, a clustering's ``labels_``). Required for a bare DeepKernel.
    entries : {"auto", "neighbors", "support", "clusters"}, default="auto"
        ``"neighbors"``: each sample with its ``n_neighbors`` nearest training samples
        (itself left out when X is None). ``"support"``: each sample with the support
        vectors of its own class (all of them for estimators without classes), weighted
        by ``|alpha|``. ``"clusters"``: distinct pairs within each group (label -1 is
        noise and left out). ``"auto"``: from the last step (a bare DeepKernel:
        ``"clusters"`` over the groups of ``y``).
    region : int, tuple or array, default=2
        Side (in positions) of the square regions the maps are summarised into, which
        must divide each side of the position grid; or a label array over the
        positions. Each group of the kernel's pooling must lie within one region.
    max_pairs : int, default=2000
        At most this many entries per group, sampled without replacement with
        ``random_state`` (``n_candidates`` records how many there were).
    ratio : float, default=2.0
        Threshold of the suspicion ratio.
    random_state : int, optional
        Seed of the sampling.
    verbose : bool, default=True
        Progress bar over the groups.
    n_neighbors : int, optional
        For ``"neighbors"``: default the estimator's ``n_neighbors`` (5 for a bare DeepKernel).

    Returns
    -------
    DatasetAudit

    Raises
    ------
    NotFittedError
        If the DeepKernel or the estimator after it is not fitted.
    ValueError
        For an unknown ``entries``, missing ``y`` where the estimator holds no labels,
        a ``region`` that does not divide the positions, or a bad ``max_pairs`` / ``ratio``.
    """
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, (int, np.integer)) or max_pairs < 1:
        raise ValueError(f"max_pairs must be a positive int, got {max_pairs!r}.")
    if not np.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"ratio must be a positive number (e.g. 2.0), got {ratio!r}.")
    chosen = choose_entries(estimator, X, y, entries, n_neighbors)
    kern = chosen.kernel
    pooling = kern._pooling()
    regions = _regions(region, pooling.position_shape)
    group_region = _group_regions(pooling, regions)
    n_regions = int(regions.max()) + 1
    pairs, weights, n_candidates = sample_entries(chosen, int(max_pairs), np.random.default_rng(random_state))
    sizes = np.bincount(pooling.labels.reshape(-1), minlength=pooling.n_groups)
    maps, signals, blocks, errors, used = {}, {}, {}, {}, {}
    for group in tqdm(list(pairs), desc="audit", disable=not verbose, leave=False):
        expl, x_rows, x_cols = _explain(chosen, pairs[group])
        sums = aggregate(expl, weights[group], group_region, n_regions)
        if sums.n_used == 0:
            continue  # every entry's relevance summed to zero: no shares
        maps[group] = pooling.to_positions(sums.share / sizes)
        w = weights[group] / weights[group].sum()
        sig = 0.5 * (signal_share(x_rows, pooling._to_positions) + signal_share(x_cols, pooling._to_positions))
        signals[group] = (w @ sig).reshape(pooling.position_shape)
        blocks[group], errors[group], used[group] = sums.region_pairs, sums.conservation_error, sums.n_used
    audit = DatasetAudit(
        groups=list(maps), entries=chosen.kind, n_pairs=used, position_shape=tuple(pooling.position_shape),
        relevance_maps=maps, signal_maps=signals, regions=regions, region_pairs=blocks, suspicious=[],
        conservation_error=errors, n_candidates={g: n_candidates[g] for g in maps}, pairs={g: pairs[g] for g in maps}, threshold=float(ratio),
        signal_floor=SIGNAL_FLOOR / n_regions)
    audit.suspicious = audit.find_suspicious()
    return audit


def _explain(chosen: Entries, pairs: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
    """Factored explanations of the entries, and the kernel inputs of each entry's two samples."""
    kern: DeepKernel = chosen.kernel
    rows, cols = pairs[:, 0], pairs[:, 1]
    row_source = kern.X_fit_ if chosen.queries is None else chosen.queries
    col_source = row_source if chosen.cols_are_queries else kern.X_fit_
    if col_source is row_source:  # one set of samples: each one's relevance computed once
        used, local = np.unique(pairs, return_inverse=True)
        rel = _relevance(kern, chosen.queries, used)
        expl = pair_relevance(rel, rel, kern.kernel, local.reshape(pairs.shape).tolist())
    else:
        used_a, local_a = np.unique(rows, return_inverse=True)
        used_b, local_b = np.unique(cols, return_inverse=True)
        a, b = _relevance(kern, chosen.queries, used_a), kern.fit_sample_relevance(used_b)
        expl = pair_relevance(a, b, kern.kernel, list(zip(local_a.tolist(), local_b.tolist())))
    return expl, row_source[rows], col_source[cols]


def _relevance(kern: DeepKernel, queries: Optional[np.ndarray], rows: np.ndarray):
    if queries is None:
        return kern.fit_sample_relevance(rows)  # kept by the kernel, shared between groups
    return kern.sample_relevance(queries[rows])


def _regions(spec: PoolingSpec, position_shape: tuple) -> np.ndarray:
    """Region label of every position, from a side, a tuple of sides or a label array."""
    sides = (spec,) * len(position_shape) if isinstance(spec, (int, np.integer)) else spec
    if isinstance(sides, tuple) and all(isinstance(s, (int, np.integer)) for s in sides):
        bad = [f"{n} % {s} = {n % s}" for n, s in zip(position_shape, sides) if s < 1 or n % s]
        if len(sides) != len(position_shape) or bad:
            divisors = sorted({d for d in range(1, min(position_shape) + 1) if all(n % d == 0 for n in position_shape)})
            raise ValueError(
                f"region={spec!r} does not divide the input positions {tuple(position_shape)}"
                + (f" ({', '.join(bad)})" if bad else "") + "; choose a side that divides every axis, "
                f"e.g. region={divisors[-2] if len(divisors) > 1 else 1} (divisors: {divisors}), or pass a label "
                f"array of shape {tuple(position_shape)}."
            )
    return make_pooling(spec, position_shape, channel_axis=None).labels


def _group_regions(pooling: Pooling, regions: np.ndarray) -> np.ndarray:
    """Region of each group of the kernel's pooling; a group across regions is refused."""
    groups, reg = pooling.labels.reshape(-1), regions.reshape(-1)
    first = np.full(pooling.n_groups, -1, dtype=np.int64)
    first[groups[::-1]] = reg[::-1]  # each group's region at its first position
    straddle = np.flatnonzero(first[groups] != reg)
    if straddle.size:
        g = int(groups[straddle[0]])
        raise ValueError(
            f"Group {g} of the DeepKernel's pooling covers regions {sorted(set(reg[groups == g].tolist()))}; "
            "every group must lie within one region. Use a region side that is a multiple of the "
            "kernel's patch size, or pooling=None on the DeepKernel."
        )
    return first
