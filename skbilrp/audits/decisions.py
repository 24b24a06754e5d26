"""Kernel-machine decisions ``f(x) = sum_i alpha_i k(x, x_i) + b``, decomposed with BiLRP."""

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

from ..kernel import features_kernel
from ..pairs import PairExplanation, pair_relevance, scaled_factors
from ..pooling import Pooling
from ..relevance import SampleRelevance
from ._pipeline import _only_estimator_after, _split_pipeline

__all__ = ["DecisionExplanation", "explain_decision"]


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
