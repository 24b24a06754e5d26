"""Locating the DeepKernel in a fitted pipeline: what comes before it and after it."""

from __future__ import annotations

from typing import Any

from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from ..kernel import DeepKernel


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
    _check_same_training_samples(steps[k], after)
    return (before.transform if before is not None else (lambda X: X)), steps[k], after


def _check_same_training_samples(kern: DeepKernel, after: list) -> None:
    """Refuse a pipeline whose DeepKernel step was refitted on its own after the pipeline.

    The step right after the DeepKernel was fitted on ``K(X, X_fit_)``, one column per
    training sample of the kernel at that time; its support vectors, neighbours or
    cluster members index those samples. If the kernel now holds a different number of
    training samples, every index read through it would point at the wrong sample (or
    past the end).
    """
    if not after:
        return
    n_seen = getattr(after[0], "n_features_in_", None)  # set by fit; columns of the kernel it saw
    n_fit = len(kern.X_fit_)
    if n_seen is not None and int(n_seen) != n_fit:
        raise ValueError(
            f"The {type(after[0]).__name__} step after the DeepKernel was fitted on a kernel of "
            f"{int(n_seen)} training samples, but the DeepKernel step now holds {n_fit}: it was "
            "refitted on its own after the pipeline (e.g. pipe[0].fit(X_new)), so the indices of "
            "support vectors, neighbours or clusters no longer point at its X_fit_. Refit the whole "
            "pipeline, pipe.fit(X, y), so that both steps see the same training samples."
        )


def _only_estimator_after(kernel_steps: list, what: str) -> BaseEstimator:
    if len(kernel_steps) != 1:
        raise ValueError(
            f"Expected exactly one {what} right after the DeepKernel step, got "
            f"{[type(s).__name__ for s in kernel_steps]}."
        )
    return kernel_steps[0]
