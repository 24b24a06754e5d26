"""What the similarities within each cluster of a clustering rest on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from ..kernel import DeepKernel, features_kernel
from ..pairs import PairExplanations, pair_relevance, scaled_factors
from ..pooling import Pooling
from ._pipeline import _split_pipeline

__all__ = ["ClusterAudit", "audit_clusters"]

#: members whose relevance audit_clusters holds at once (bounds memory)
_PARTNER_CHUNK = 64


@dataclass
class ClusterAudit:
    """What the similarities within one cluster rest on.

    Attributes
    ----------
    label : hashable
        The cluster label, as given (an int, a str, ...).
    members : ndarray of int
        Rows of ``X_fit_`` in the cluster.
    medoid : int
        The member with the largest mean kernel similarity to the other members.
    prototypes : ndarray of int
        The ``n_prototypes`` most central members (medoid first), rows of ``X_fit_``.
    mean_similarity : float
        Mean kernel entry between distinct members (1.0 for a singleton's self-pair).
    medoid_similarity : ndarray of shape (n_members,)
        ``k(medoid, member)`` for each member.
    prototype_explanations : PairExplanations
        BiLRP explanations of the pairs among prototypes; ``pairs`` index ``prototypes``.
    medoid_relevance : ndarray of shape (p,)
        Mean over members of the first-order relevance on the medoid's groups, in the
        pairs (medoid, member): which parts of the medoid the cluster's similarity uses.
    member_relevance : ndarray of shape (p,)
        Mean first-order relevance on the members' groups in the same pairs.
    interactions : ndarray of shape (p, p)
        Mean pair relevance over the pairs (medoid, member); sums to
        ``medoid_similarity`` averaged over those members up to ``conservation_error``.
    conservation_error : float
    pooling : Pooling
    """

    label: Any
    members: np.ndarray
    medoid: int
    prototypes: np.ndarray
    mean_similarity: float
    medoid_similarity: np.ndarray
    prototype_explanations: PairExplanations
    medoid_relevance: np.ndarray
    member_relevance: np.ndarray
    interactions: np.ndarray
    conservation_error: float
    pooling: Pooling


def _cluster_labels(clusters: Any, n_fit: int) -> np.ndarray:
    est = clusters[-1] if isinstance(clusters, Pipeline) else clusters
    labels = getattr(est, "labels_", None) if not isinstance(est, (np.ndarray, list, tuple)) else est
    if labels is None:
        raise TypeError(
            f"Expected cluster labels or a fitted clusterer with labels_, got {type(est).__name__}."
        )
    values = labels
    labels = np.asarray(values)
    if labels.dtype.kind in "US" and isinstance(values, (list, tuple)):
        labels = np.asarray(values, dtype=object)  # numpy would turn ["a", -1] into ["a", "-1"]
    labels = labels.reshape(-1)
    if labels.shape[0] != n_fit:
        raise ValueError(
            f"Got {labels.shape[0]} cluster labels but the DeepKernel was fit on {n_fit} samples; "
            "the labels must be those of the kernel's training samples (X_fit_)."
        )
    missing = np.flatnonzero([_is_missing(v) for v in labels.tolist()])
    if missing.size:
        raise ValueError(
            f"{missing.size} cluster label(s) are missing (NaN or None), at rows "
            f"{missing[:5].tolist()}{' ...' if missing.size > 5 else ''} of X_fit_; every training "
            "sample needs a label. Label them -1 (noise) to leave them out of the audit, e.g. "
            "np.where(np.isnan(labels), -1, labels)."
        )
    return labels


def _is_missing(value: Any) -> bool:
    """None, NaN, NaT or pandas.NA."""
    if value is None:
        return True
    try:
        return bool(value != value)  # only NaN-like values differ from themselves
    except (TypeError, ValueError):
        return True  # pandas.NA: its comparisons have no truth value


def _is_noise(value: Any) -> bool:
    """The numeric label -1 (noise of DBSCAN, HDBSCAN, OPTICS); the string "-1" is a label."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and value == -1


def audit_clusters(clusters: Any, kernel: Any, n_prototypes: int = 3) -> list[ClusterAudit]:
    """Explain what the within-cluster similarities of a clustering rest on.

    For each cluster: its medoid and most central members (by the kernel), the BiLRP
    explanations of the pairs among these prototypes, and the first-order relevance
    and pair relevance averaged over the pairs (medoid, member). Label ``-1`` (noise,
    e.g. DBSCAN) is left out (the list is empty when every sample is noise); missing
    labels (NaN, None) are refused. Costs one relevance computation per clustered sample.

    Parameters
    ----------
    clusters : array-like of shape (n_fit,), fitted clusterer, or Pipeline
        Labels of the kernel's training samples ``X_fit_`` (ints, strings or any
        hashable, sortable values), or an estimator (or the last step of a pipeline)
        holding them in ``labels_``.
    kernel : DeepKernel or Pipeline
        The fitted DeepKernel the clustering was computed with (or a pipeline holding it).
    n_prototypes : int, default=3
        Central members per cluster (fewer for small clusters).

    Returns
    -------
    list of ClusterAudit
        One per cluster, by increasing label.

    Raises
    ------
    ValueError
        If a label is missing (NaN or None), or the labels are not one per ``X_fit_`` row.
    TypeError
        If the labels mix kinds that cannot be sorted together (e.g. str and int).
    """
    _, kern, _ = _split_pipeline(kernel)
    check_is_fitted(kern)
    if int(n_prototypes) < 1:
        raise ValueError(f"n_prototypes must be at least 1, got {n_prototypes!r}.")
    labels = _cluster_labels(clusters, len(kern.X_fit_))
    # noise is dropped before sorting, so that e.g. ["a", -1, "b"] needs no order between kinds
    kept = labels[~np.array([_is_noise(v) for v in labels.tolist()], dtype=bool)]
    try:
        distinct = np.unique(kept)
    except TypeError as err:
        kinds = sorted({type(v).__name__ for v in kept.tolist()})
        raise TypeError(
            f"Cluster labels must be of one sortable kind, got a mix of {', '.join(kinds)}; "
            "convert them to one kind first, e.g. np.asarray(labels).astype(str)."
        ) from err
    audits = []
    for label in distinct:
        members = np.flatnonzero(labels == label)
        value = label.item() if isinstance(label, np.generic) else label  # np.str_ -> str, np.int64 -> int
        audits.append(_audit_one(kern, value, members, int(n_prototypes)))
    return audits


def _audit_one(kern: DeepKernel, label: Any, members: np.ndarray, n_prototypes: int) -> ClusterAudit:
    feats = kern.features_fit_[members]
    k = features_kernel(feats, feats, kern.kernel)
    n = len(members)
    off_diag = (k.sum(axis=1) - np.diag(k)) / max(n - 1, 1)
    order = np.argsort(-off_diag if n > 1 else -np.diag(k), kind="stable")
    prototypes = members[order[:n_prototypes]]
    medoid = int(prototypes[0])
    partners = members[members != medoid] if n > 1 else members
    rel_medoid = kern.fit_sample_relevance([medoid])
    # mean of A_med^T B_m over partners = A_med^T (mean of B_m): one (h, q) sum, no blocks
    partner_sum = 0.0
    for start in range(0, len(partners), _PARTNER_CHUNK):
        chunk, _ = scaled_factors(kern.fit_sample_relevance(partners[start:start + _PARTNER_CHUNK]), kern.kernel)
        partner_sum = partner_sum + chunk.sum(0)
    med, _ = scaled_factors(rel_medoid, kern.kernel)
    interactions = (med[0].T @ partner_sum).numpy() / len(partners)
    med_sim = k[order[0]]
    rel_protos = kern.fit_sample_relevance(prototypes)
    proto_pairs = [(a, b) for a in range(len(prototypes)) for b in range(a + 1, len(prototypes))] or [(0, 0)]
    mean_partner_sim = float(np.mean(med_sim[members != medoid])) if n > 1 else float(med_sim[0])
    return ClusterAudit(
        label=label, members=members, medoid=medoid, prototypes=prototypes,
        mean_similarity=float(off_diag.mean()) if n > 1 else float(k[0, 0]),
        medoid_similarity=med_sim,
        prototype_explanations=pair_relevance(rel_protos, rel_protos, kern.kernel, proto_pairs),
        medoid_relevance=interactions.sum(axis=1), member_relevance=interactions.sum(axis=0),
        interactions=interactions, conservation_error=mean_partner_sim - float(interactions.sum()),
        pooling=rel_medoid.pooling,
    )
