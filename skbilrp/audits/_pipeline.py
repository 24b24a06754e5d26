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
    return (before.transform if before is not None else (lambda X: X)), steps[k], after


def _only_estimator_after(kernel_steps: list, what: str) -> BaseEstimator:
    if len(kernel_steps) != 1:
        raise ValueError(
            f"Expected exactly one {what} right after the DeepKernel step, got "
            f"{[type(s).__name__ for s in kernel_steps]}."
        )
    return kernel_steps[0]
