"""Nearest training samples of each query, with the BiLRP explanation of each similarity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..kernel import features_kernel, kernel_to_distance, self_similarity
from ..pairs import PairExplanation, PairExplanations
from ._pipeline import _only_estimator_after, _split_pipeline

__all__ = ["NeighborExplanation", "explain_neighbors"]


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
