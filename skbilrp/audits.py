"""Model-level explanations of scikit-learn estimators built on a :class:`DeepKernel`.

Every kernel method's output is a combination of kernel entries, and every kernel
entry has a BiLRP explanation, so the whole model can be explained on input groups:

- :func:`explain_neighbors`: which training samples a query is close to, and why;
- :func:`explain_decision`: ``f(x) = sum_i alpha_i k(x, x_i) + b`` split into each
  support vector's share and into first-order relevance on ``x``;
- :func:`audit_clusters`: what the similarities within each cluster rest on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.kernel_ridge import KernelRidge
from sklearn.pipeline import Pipeline
from sklearn.svm import SVR, SVC, NuSVC, NuSVR, OneClassSVM
from sklearn.utils.validation import check_is_fitted

from .kernel import DeepKernel, features_kernel, kernel_to_distance, self_similarity
from .pairs import PairExplanation, PairExplanations, pair_relevance, scaled_factors
from .pooling import Pooling
from .relevance import SampleRelevance

__all__ = [
    "NeighborExplanation",
    "DecisionExplanation",
    "ClusterAudit",
    "explain_neighbors",
    "explain_decision",
    "audit_clusters",
]

#: members whose relevance audit_clusters holds at once (bounds memory)
_PARTNER_CHUNK = 64


# ------------------------------------------------------------- locating the kernel


def _split_pipeline(estimator: Any) -> tuple[Any, DeepKernel, list]:
    """``(X -> kernel input, the DeepKernel, the estimators after it)``."""
    if isinstance(estimator, DeepKernel):
        return (lambda X: X), estimator, []
    if not isinstance(estimator, Pipeline):
        raise TypeError(
            f"Expected a DeepKernel or a Pipeline containing one, got {type(estimator).__name__}; "
            "build it as make_pipeline(DeepKernel(model), estimator)."
        )
    steps = [s for _, s in estimator.steps]
    found = [k for k, s in enumerate(steps) if isinstance(s, DeepKernel)]
    if not found:
        raise ValueError("The pipeline has no DeepKernel step; put DeepKernel(model) before the kernel method.")
    k = found[0]
    check_is_fitted(steps[k])
    before = estimator[:k] if k else None
    after = [s for s in steps[k + 1:] if s not in (None, "passthrough")]
    return (before.transform if before is not None else (lambda X: X)), steps[k], after


def _only_estimator_after(kernel_steps: list, what: str) -> BaseEstimator:
    if len(kernel_steps) != 1:
        raise ValueError(
            f"Expected exactly one {what} right after the DeepKernel step, got "
            f"{[type(s).__name__ for s in kernel_steps]}."
        )
    return kernel_steps[0]


# ---------------------------------------------------------------- neighbours


@dataclass
class NeighborExplanation:
    """Nearest training samples of each query, with the BiLRP explanation of each similarity.

    Attributes
    ----------
    indices : ndarray of shape (n_queries, n_neighbors)
        Rows of the kernel's ``X_fit_``, nearest first.
    distances : ndarray of shape (n_queries, n_neighbors)
        Kernel-induced distances ``sqrt(k(x,x) + k(y,y) - 2 k(x,y))``.
    similarities : ndarray of shape (n_queries, n_neighbors)
        Kernel entries ``k(x, x_fit[indices])``.
    explanations : PairExplanations
        One pair per (query, neighbour), query-major: pair ``q * n_neighbors + r``.
    """

    indices: np.ndarray
    distances: np.ndarray
    similarities: np.ndarray
    explanations: PairExplanations

    def pair(self, query: int, rank: int = 0) -> PairExplanation:
        """Explanation of the similarity between a query and its ``rank``-th neighbour."""
        return self.explanations.pair(query * self.indices.shape[1] + rank)


def explain_neighbors(estimator: Any, X: Any, n_neighbors: int = 3) -> NeighborExplanation:
    """Find each query's nearest training samples and explain each similarity.

    Parameters
    ----------
    estimator : Pipeline or DeepKernel
        A fitted ``Pipeline`` whose :class:`DeepKernel` step (``output="distance"``) is
        followed by a neighbour estimator with ``metric="precomputed"``
        (``KNeighborsClassifier``, ``KNeighborsRegressor``, ``NearestNeighbors``,
        ``LocalOutlierFactor(novelty=True)``), or a fitted DeepKernel alone (neighbours by
        kernel-induced distance).
    X : array-like
        Queries, as the pipeline takes them.
    n_neighbors : int, default=3

    Returns
    -------
    NeighborExplanation
    """
    pre, kern, after = _split_pipeline(estimator)
    xk = pre(X)
    feats = kern.features(xk)
    k = features_kernel(feats, kern.features_fit_, kern.kernel)
    dist = kernel_to_distance(k, self_similarity(feats, kern.kernel), self_similarity(kern.features_fit_, kern.kernel))
    if int(n_neighbors) < 1 or int(n_neighbors) > len(kern.X_fit_):
        raise ValueError(f"n_neighbors must lie in [1, {len(kern.X_fit_)}], got {n_neighbors!r}.")
    if after:
        nn_est = _only_estimator_after(after, "neighbour estimator")
        if not hasattr(nn_est, "kneighbors") or getattr(nn_est, "metric", None) != "precomputed":
            raise ValueError(
                f"{type(nn_est).__name__} must be a neighbour estimator with metric='precomputed' "
                "(e.g. KNeighborsClassifier(metric='precomputed'))."
            )
        if kern.output != "distance":
            raise ValueError(
                "The DeepKernel step feeds a neighbour estimator, so it must give distances: "
                "use DeepKernel(..., output='distance')."
            )
        _, ind = nn_est.kneighbors(dist, n_neighbors=int(n_neighbors))
    else:
        ind = np.argsort(dist, axis=1, kind="stable")[:, : int(n_neighbors)]
    rows = np.arange(len(ind))[:, None]
    pairs = [(int(q), int(j)) for q in range(len(ind)) for j in ind[q]]
    return NeighborExplanation(ind, dist[rows, ind], k[rows, ind], kern.explain_pairs(xk, pairs=pairs))


# ------------------------------------------------------------------ decisions


@dataclass
class DecisionExplanation:
    """``f(x) = sum_i alpha_i k(x, x_i) + b``, decomposed with BiLRP.

    Attributes
    ----------
    decision : ndarray of shape (n,)
        ``f(x)``: ``decision_function`` (``predict`` for KernelRidge); for a pair of
        classes of a multi-class SVC, the one-vs-one decision, positive for the second.
    intercept : float
        ``b``.
    support : ndarray of shape (n_sv,)
        Rows of ``X_fit_`` that carry a coefficient (all of them for KernelRidge).
    dual_coef : ndarray of shape (n_sv,)
        ``alpha_i``.
    contributions : ndarray of shape (n, n_sv)
        ``alpha_i k(x, x_i)``: each support vector's share of ``f(x) - b``.
    relevance : ndarray of shape (n, p)
        First-order relevance on the groups of ``x``: the sum over support vectors of
        ``alpha_i`` times the marginal of the pair explanation of ``k(x, x_i)``.
    support_relevance : ndarray of shape (n, n_sv, q)
        ``alpha_i`` times the marginal on the groups of each support vector.
    conservation_error : ndarray of shape (n,)
        ``f(x) - b - relevance.sum(-1)``; zero for bias-free models with conserving rules.
    pooling : Pooling
        Groups of the input positions.
    classes : tuple or None
        The pair of classes explained, for a multi-class SVC.
    """

    decision: np.ndarray
    intercept: float
    support: np.ndarray
    dual_coef: np.ndarray
    contributions: np.ndarray
    relevance: np.ndarray
    support_relevance: np.ndarray
    conservation_error: np.ndarray
    pooling: Pooling
    classes: Optional[tuple] = None
    _queries: Optional[SampleRelevance] = field(default=None, repr=False)
    _supports: Optional[SampleRelevance] = field(default=None, repr=False)
    _kernel: str = field(default="cosine", repr=False)

    def pair(self, query: int, k: int) -> PairExplanation:
        """``alpha_k`` times the BiLRP explanation of ``k(x_query, x_support[k])``."""
        e = pair_relevance(self._queries[query], self._supports[k], self._kernel).pair(0, 0)
        a = float(self.dual_coef[k])
        return PairExplanation(a * e.relevance, a * e.similarity, a * e.conservation_error,
                               e.pooling_a, e.pooling_b, e.kernel, e.method)

    def top_support(self, query: int, k: int = 5) -> list[tuple[int, float]]:
        """The ``k`` support vectors with the largest ``|alpha_i k(x, x_i)|``: (row of ``X_fit_``, share)."""
        order = np.argsort(-np.abs(self.contributions[query]), kind="stable")[:k]
        return [(int(self.support[i]), float(self.contributions[query, i])) for i in order]


#: estimators whose output _dual_expansion reads as sum_i alpha_i k(x, x_i) + b
_KERNEL_MACHINES = (SVC, NuSVC, OneClassSVM, SVR, NuSVR, KernelRidge)


def _check_kernel_machine(est: Any) -> None:
    """Refuse an estimator whose output is not a kernel expansion, naming what to use instead.

    Raises
    ------
    TypeError
        If ``est`` is none of SVC, NuSVC, OneClassSVM, SVR, NuSVR, KernelRidge.
    """
    if isinstance(est, _KERNEL_MACHINES):
        return
    name = type(est).__name__
    if hasattr(est, "kneighbors"):
        fix = ("for a neighbour estimator, explain its neighbours with "
               "skbilrp.audits.explain_neighbors(pipe, X) (DeepKernel(output='distance'), "
               "metric='precomputed')")
    else:
        fix = (f"replace {name} with one of them, e.g. "
               "make_pipeline(DeepKernel(model), SVC(kernel='precomputed'))")
    raise TypeError(
        f"explain_decision cannot explain {name}: its output is not a kernel expansion "
        "f(x) = sum_i alpha_i k(x, x_i) + b. Supported after the DeepKernel step: SVC, NuSVC, "
        f"OneClassSVM, SVR, NuSVR and KernelRidge with kernel='precomputed'; {fix}."
    )


def _dual_expansion(est: BaseEstimator, n_fit: int, classes: Optional[Sequence], target: Optional[int]
                    ) -> tuple[np.ndarray, np.ndarray, float, Optional[tuple]]:
    """``(support rows, alpha, intercept, classes)`` with ``f = K[:, support] @ alpha + b``."""
    if getattr(est, "kernel", None) != "precomputed":
        raise ValueError(
            f"{type(est).__name__} must use kernel='precomputed' to be explained on the DeepKernel; "
            f"got kernel={getattr(est, 'kernel', None)!r}."
        )
    check_is_fitted(est)
    if hasattr(est, "support_"):  # libsvm: SVC, NuSVC, OneClassSVM, SVR, NuSVR
        labels = getattr(est, "classes_", None)
        if labels is not None and len(labels) > 2:
            return _ovo_expansion(est, classes)
        if classes is not None:
            raise ValueError("classes is only for multi-class SVC; this decision function is already one value.")
        return (np.asarray(est.support_), np.asarray(est.dual_coef_, dtype=np.float64)[0],
                float(np.ravel(est.intercept_)[0]), None)
    if hasattr(est, "dual_coef_"):  # KernelRidge: every training point, no intercept
        coef = np.asarray(est.dual_coef_, dtype=np.float64)
        if coef.ndim == 2:
            if coef.shape[1] > 1 and target is None:
                raise ValueError(f"The model has {coef.shape[1]} targets; choose one with target=.")
            coef = coef[:, 0 if target is None else int(target)]
        if coef.shape[0] != n_fit:
            raise ValueError(f"dual_coef_ has {coef.shape[0]} rows but the DeepKernel was fit on {n_fit} samples.")
        return np.arange(n_fit), coef, 0.0, None
    raise TypeError(
        f"Cannot read a kernel expansion from {type(est).__name__}; supported: SVC, NuSVC, "
        "OneClassSVM, SVR, NuSVR and KernelRidge with kernel='precomputed'."
    )


def _ovo_expansion(est: BaseEstimator, classes: Optional[Sequence]) -> tuple[np.ndarray, np.ndarray, float, tuple]:
    """One-vs-one decision between two classes of a multi-class libsvm classifier.

    libsvm's value for classes ``(i, j)``, ``i < j``, is positive for ``i``; it is
    returned with the sign that makes it positive for the *second* class asked for, as
    in the binary case.
    """
    labels = list(est.classes_)
    if classes is None or len(classes) != 2 or any(c not in labels for c in classes) or classes[0] == classes[1]:
        raise ValueError(
            f"{type(est).__name__} has {len(labels)} classes and its decision_function is not a kernel "
            f"expansion; explain one-vs-one between two classes with classes=(a, b), a != b in {labels}."
        )
    a, b = labels.index(classes[0]), labels.index(classes[1])
    i, j = min(a, b), max(a, b)
    n_cls = len(labels)
    starts = np.concatenate([[0], np.cumsum(est.n_support_)])
    sv_i, sv_j = np.arange(starts[i], starts[i + 1]), np.arange(starts[j], starts[j + 1])
    dual = np.asarray(est.dual_coef_, dtype=np.float64)
    alpha = np.concatenate([dual[j - 1, sv_i], dual[i, sv_j]])
    pair_index = sum(n_cls - 1 - r for r in range(i)) + (j - i - 1)
    intercept = float(est.intercept_[pair_index])
    sign = -1.0 if a < b else 1.0  # libsvm's value favours the first of (i, j)
    support = np.asarray(est.support_)[np.concatenate([sv_i, sv_j])]
    return support, sign * alpha, sign * intercept, (classes[0], classes[1])


def explain_decision(estimator: Pipeline, X: Any, classes: Optional[Sequence] = None,
                     target: Optional[int] = None) -> DecisionExplanation:
    """Decompose a kernel machine's output on a DeepKernel with BiLRP.

    ``f(x) = sum_i alpha_i k(x, x_i) + b`` is split into the share of each support vector
    (``alpha_i k(x, x_i)``) and into first-order relevance on the groups of ``x``:
    ``sum_i alpha_i`` times the marginal of the BiLRP explanation of ``k(x, x_i)``. With
    a bias-free feature model and conserving rules, ``relevance.sum(-1)`` equals
    ``f(x) - b``.

    Parameters
    ----------
    estimator : Pipeline
        Fitted, ending with ``DeepKernel(output="kernel")`` followed by ``SVC``, ``NuSVC``,
        ``OneClassSVM``, ``SVR``, ``NuSVR`` or ``KernelRidge`` with ``kernel="precomputed"``.
    X : array-like
        Samples to explain, as the pipeline takes them.
    classes : (a, b), optional
        For a multi-class SVC: the one-vs-one decision between classes ``a`` and ``b``
        (positive for ``b``). Required there; an error elsewhere.
    target : int, optional
        For a multi-output KernelRidge: which output.

    Returns
    -------
    DecisionExplanation

    Raises
    ------
    TypeError
        If the step after the DeepKernel is not one of the kernel machines above (for
        k-NN, use :func:`explain_neighbors`).
    """
    pre, kern, after = _split_pipeline(estimator)
    est = _only_estimator_after(after, "kernel machine (SVC, OneClassSVM, KernelRidge, ...)")
    _check_kernel_machine(est)  # before output=: a k-NN step needs another function, not distances
    if kern.output != "kernel":
        raise ValueError("The DeepKernel step must give output='kernel' to feed a kernel machine.")
    support, alpha, intercept, pair_classes = _dual_expansion(est, len(kern.X_fit_), classes, target)
    xk = pre(X)
    queries = kern.sample_relevance(xk)
    supports = kern.fit_sample_relevance(support)
    k = features_kernel(kern.features(xk), kern.features_fit_[support], kern.kernel)
    decision = k @ alpha + intercept
    # contractions of the factors, never the (n, n_sv, p, q) pair relevance:
    # sum_k alpha_k A_x^T (B_k 1) = A_x^T (sum_k alpha_k B_k 1), and the support side
    # alpha_k B_k^T (A_x 1)
    ra, _ = scaled_factors(queries, kern.kernel)
    rb, _ = scaled_factors(supports, kern.kernel)
    alpha_t = torch.as_tensor(np.ascontiguousarray(alpha, dtype=np.float64))
    weights = alpha_t @ rb.sum(-1)  # (h,)
    relevance_x = torch.einsum("nhp,h->np", ra, weights).numpy()
    support_relevance = (torch.einsum("nh,khq->nkq", ra.sum(-1), rb) * alpha_t[None, :, None]).numpy()
    return DecisionExplanation(
        decision=decision, intercept=intercept, support=support, dual_coef=alpha,
        contributions=k * alpha[None, :], relevance=relevance_x,
        support_relevance=support_relevance,
        conservation_error=decision - intercept - relevance_x.sum(axis=1),
        pooling=queries.pooling, classes=pair_classes,
        _queries=queries, _supports=supports, _kernel=kern.kernel,
    )


# ------------------------------------------------------------------- clusters


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
