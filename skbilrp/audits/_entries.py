"""Which kernel entries a fitted model uses, grouped by class or cluster.

:func:`choose_entries` reads them off the estimator after the DeepKernel step:
neighbour pairs of a k-NN, support-vector terms of a kernel machine, within-cluster
pairs of a clustering; :func:`sample_entries` caps them per group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ..kernel import DeepKernel, features_kernel, kernel_to_distance, self_similarity
from ._pipeline import _only_estimator_after, _split_pipeline
from .clusters import _cluster_labels, _is_noise
from .decisions import _KERNEL_MACHINES

#: the values of ``audit_dataset(entries=...)``
ENTRY_KINDS = ("auto", "neighbors", "support", "clusters")

#: neighbours per sample when no neighbour estimator says how many (scikit-learn's default)
_DEFAULT_NEIGHBORS = 5


@dataclass
class Entries:
    """Kernel entries ``k(rows[i], cols[j])`` to aggregate, per group.

    ``rows`` index ``queries`` (the audited samples as kernel inputs, or None for
    ``X_fit_``); ``cols`` index ``X_fit_``, or ``queries`` too when ``cols_are_queries``.
    ``pairs[g]`` is an ``(n, 2)`` int array of ``(row, col)``, ``weights[g]`` its weights.
    """

    kind: str
    kernel: DeepKernel
    queries: Optional[np.ndarray]
    cols_are_queries: bool
    pairs: dict
    weights: dict


def choose_entries(estimator: Any, X: Any, y: Any, entries: str, n_neighbors: Optional[int]) -> Entries:
    """The kernel entries of ``estimator`` on ``X`` (or its training set), grouped.

    Raises
    ------
    ValueError, TypeError, NotFittedError
        Naming the cause and the fix (see :func:`skbilrp.audits.audit_dataset`).
    """
    if entries not in ENTRY_KINDS:
        raise ValueError(
            f"entries must be one of {', '.join(map(repr, ENTRY_KINDS))}, got {entries!r}; 'auto' picks "
            "'neighbors' for a k-NN, 'support' for a kernel machine and 'clusters' for a clustering."
        )
    pre, kern, after = _split_pipeline(estimator)
    check_is_fitted(kern)  # a bare DeepKernel is not checked by _split_pipeline
    est = _only_estimator_after(after, "estimator") if after else None
    if est is not None:
        check_is_fitted(est)
    kind = _auto_kind(est) if entries == "auto" else entries
    queries = None if X is None else kern._validate_samples(pre(X), reset=False)
    n = len(kern.X_fit_) if queries is None else len(queries)
    labels = None if y is None else _given_labels(y, n, X is None)
    if kind == "neighbors":
        pairs, weights = _neighbor_entries(kern, est, queries, labels, n_neighbors)
    elif kind == "support":
        pairs, weights = _support_entries(kern, est, queries, labels)
    else:
        pairs, weights = _cluster_entries(est, queries, labels, len(kern.X_fit_))
    return Entries(kind, kern, queries, kind == "clusters" and queries is not None, pairs, weights)


def _auto_kind(est: Any) -> str:
    if est is None:
        return "clusters"  # a bare DeepKernel: within-group pairs of the labels y
    if hasattr(est, "kneighbors"):
        return "neighbors"
    if isinstance(est, _KERNEL_MACHINES):
        return "support"
    if hasattr(est, "labels_"):
        return "clusters"
    raise TypeError(
        f"entries='auto' cannot tell which kernel entries {type(est).__name__} uses; pass "
        "entries='neighbors', 'support' or 'clusters' (with y for the groups)."
    )


def _given_labels(y: Any, n: int, of_fit: bool) -> np.ndarray:
    labels = np.asarray(y).reshape(-1) if not isinstance(y, (list, tuple)) else np.asarray(y, dtype=object)
    if labels.shape[0] != n:
        which = "the kernel's training samples (X_fit_), since X is None" if of_fit else "the rows of X"
        raise ValueError(f"Got {labels.shape[0]} labels in y but {n} samples to audit: y must label {which}.")
    return labels


def _missing_y(why: str) -> ValueError:
    return ValueError(
        f"y is required here: {why}. Pass y= the class labels of X (of the training samples when "
        "X is None), or audit a fitted pipeline whose last step holds labels."
    )


def _group(pairs: np.ndarray, weights: np.ndarray, labels: np.ndarray) -> tuple[dict, dict]:
    """Split entries by the label of their row (noise, label -1, is left out)."""
    row_labels = labels[pairs[:, 0]] if len(pairs) else labels[:0]
    out_pairs, out_weights = {}, {}
    for label in _sorted_labels(row_labels):
        keep = row_labels == label
        value = label.item() if isinstance(label, np.generic) else label
        out_pairs[value], out_weights[value] = pairs[keep], weights[keep]
    return out_pairs, out_weights


def _sorted_labels(labels: np.ndarray) -> list:
    kept = [v for v in labels.tolist() if not _is_noise(v)]
    try:
        return sorted(set(kept))
    except TypeError as err:
        raise TypeError("Labels must be of one sortable kind (e.g. all int or all str); convert them, "
                        "e.g. np.asarray(y).astype(str).") from err


# ------------------------------------------------------------------ neighbours


def _neighbor_entries(kern: DeepKernel, est: Any, queries: Optional[np.ndarray], labels: Optional[np.ndarray],
                      n_neighbors: Optional[int]) -> tuple[dict, dict]:
    k = int(n_neighbors if n_neighbors is not None else getattr(est, "n_neighbors", None) or _DEFAULT_NEIGHBORS)
    n_fit = len(kern.X_fit_)
    limit = n_fit - 1 if queries is None else n_fit  # the training set's own neighbours leave self out
    if not 1 <= k <= limit:
        raise ValueError(f"n_neighbors must lie in [1, {limit}], got {k}.")
    if est is not None:
        if not hasattr(est, "kneighbors") or getattr(est, "metric", None) != "precomputed":
            raise ValueError(f"entries='neighbors' needs a neighbour estimator with metric='precomputed' after "
                             f"the DeepKernel, got {type(est).__name__}; use entries='support' or 'clusters'.")
        if kern.output != "distance":
            raise ValueError("The DeepKernel step feeds a neighbour estimator, so it must give distances: "
                             "use DeepKernel(..., output='distance').")
    if labels is None:
        labels = _neighbor_labels(kern, est, queries)
    if est is not None:  # the neighbours the estimator itself uses (its own tie-breaking)
        dist = None if queries is None else kern.transform(queries)
        ind = est.kneighbors(dist, n_neighbors=k, return_distance=False)
    else:
        feats = kern.features_fit_ if queries is None else kern.features(queries)
        sim = features_kernel(feats, kern.features_fit_, kern.kernel)
        dist = kernel_to_distance(sim, self_similarity(feats, kern.kernel),
                                  self_similarity(kern.features_fit_, kern.kernel))
        if queries is None:
            np.fill_diagonal(dist, np.inf)
        ind = np.argsort(dist, axis=1, kind="stable")[:, :k]
    pairs = np.stack([np.repeat(np.arange(len(ind)), k), ind.reshape(-1)], axis=1).astype(np.int64)
    return _group(pairs, np.ones(len(pairs)), labels)


def _neighbor_labels(kern: DeepKernel, est: Any, queries: Optional[np.ndarray]) -> np.ndarray:
    if est is None:
        raise _missing_y("a bare DeepKernel holds no labels")
    if queries is None:
        fit_y, classes = getattr(est, "_y", None), getattr(est, "classes_", None)
        if fit_y is None or classes is None or np.ndim(fit_y) != 1:
            raise _missing_y(f"{type(est).__name__} holds no single-output training labels")
        return np.asarray(classes)[fit_y]
    if not hasattr(est, "predict") or not hasattr(est, "classes_"):
        raise _missing_y(f"{type(est).__name__} does not predict class labels")
    return np.asarray(est.predict(kern.transform(queries)))


# ------------------------------------------------------------- support vectors


def _support_entries(kern: DeepKernel, est: Any, queries: Optional[np.ndarray],
                     labels: Optional[np.ndarray]) -> tuple[dict, dict]:
    if not isinstance(est, _KERNEL_MACHINES):
        raise ValueError(f"entries='support' needs a kernel machine after the DeepKernel (SVC, NuSVC, SVR, NuSVR, "
                         f"OneClassSVM, KernelRidge), got {type(est).__name__ if est is not None else 'none'}; "
                         "use entries='neighbors' or 'clusters'.")
    if getattr(est, "kernel", None) != "precomputed" or kern.output != "kernel":
        raise ValueError("entries='support' needs DeepKernel(output='kernel') followed by a kernel machine with "
                         "kernel='precomputed'.")
    support, weights, sv_labels = _support_terms(est, len(kern.X_fit_))
    if labels is None:
        if not hasattr(est, "classes_"):
            raise _missing_y(f"{type(est).__name__} predicts no class labels")
        labels = np.asarray(est.predict(kern.transform(kern.X_fit_ if queries is None else queries)))
    n = len(labels)
    rows = np.repeat(np.arange(n), len(support))
    cols = np.tile(np.arange(len(support)), n)
    # the terms alpha_s k(x, x_s) that pull x toward its own class (every term without classes)
    keep = weights[cols] > 0
    if sv_labels is not None:
        keep &= sv_labels[cols] == labels[rows]
    if queries is None:
        keep &= support[cols] != rows  # no self-pairs
    pairs = np.stack([rows[keep], support[cols[keep]]], axis=1).astype(np.int64)
    return _group(pairs, weights[cols[keep]], labels)


def _support_terms(est: Any, n_fit: int) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Rows of ``X_fit_`` with a coefficient, ``|alpha|`` (summed over one-vs-one rows or
    targets) and their class labels (None when the estimator has no classes)."""
    coef = np.abs(np.asarray(est.dual_coef_, dtype=np.float64))
    if hasattr(est, "support_"):  # libsvm keeps the support vectors ordered by class
        support = np.asarray(est.support_, dtype=np.int64)
        weights = coef.reshape(-1, len(support)).sum(axis=0)
        classes = getattr(est, "classes_", None)
        sv_labels = None if classes is None else np.repeat(np.asarray(classes), est.n_support_)
        return support, weights, sv_labels
    return np.arange(n_fit), coef.reshape(n_fit, -1).sum(axis=1), None  # KernelRidge


# -------------------------------------------------------------------- clusters


def _cluster_entries(est: Any, queries: Optional[np.ndarray], labels: Optional[np.ndarray],
                     n_fit: int) -> tuple[dict, dict]:
    if labels is None:
        if queries is not None or est is None or not hasattr(est, "labels_"):
            raise _missing_y("entries='clusters' groups by the labels_ of a clusterer fitted on the "
                             "training samples (X=None), and there is none here")
        labels = _cluster_labels(est, n_fit)
    pairs, weights = {}, {}
    for label in _sorted_labels(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            continue  # a singleton has no within-cluster pair
        value = label.item() if isinstance(label, np.generic) else label
        pairs[value] = members  # expanded lazily by sample_entries: n (n - 1) / 2 pairs
        weights[value] = None
    return pairs, weights


def sample_entries(entries: Entries, max_pairs: int, rng: np.random.Generator) -> tuple[dict, dict, dict]:
    """At most ``max_pairs`` entries per group, drawn without replacement.

    Returns ``(pairs, weights, n_candidates)`` per group; within-cluster pairs are
    drawn by their index in the upper triangle, never listed in full.
    """
    pairs, weights, n_candidates = {}, {}, {}
    for group, value in entries.pairs.items():
        if entries.weights[group] is None:  # cluster members: all pairs i < j
            n = len(value)
            total = n * (n - 1) // 2
            flat = np.sort(rng.choice(total, size=min(max_pairs, total), replace=False))
            i, j = _triangle_pair(flat, n)
            pairs[group], weights[group] = np.stack([value[i], value[j]], axis=1), np.ones(len(flat))
        else:
            total = len(value)
            pick = np.sort(rng.choice(total, size=min(max_pairs, total), replace=False))
            pairs[group], weights[group] = value[pick], entries.weights[group][pick]
        n_candidates[group] = int(total)
    return pairs, weights, n_candidates


def _triangle_pair(flat: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(i, j)``, ``i < j < n``, of the row-major index ``flat`` into the strict upper triangle."""
    flat = np.asarray(flat, dtype=np.int64)
    # rows start at s(i) = i (2n - i - 1) / 2; solve s(i) <= flat, then fix float rounding
    i = np.floor((2 * n - 1 - np.sqrt((2 * n - 1) ** 2 - 8.0 * flat)) / 2).astype(np.int64)
    start = lambda r: r * (2 * n - r - 1) // 2  # noqa: E731
    i = np.where(start(i) > flat, i - 1, i)
    i = np.where(start(i + 1) <= flat, i + 1, i)
    return i, flat - start(i) + i + 1
