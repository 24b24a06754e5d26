"""What one side of a kernel is: the contract every encoder fulfils.

An encoder turns the user's samples (images, texts) into what the model explains: it
validates them, computes their features, their per-sample relevance factors (through
:class:`~skbilrp.Explainer`), stacks those into a :class:`~skbilrp.SampleRelevance`
over its groups (patches, tokens) and labels the groups. The estimators of
:mod:`skbilrp.kernel` are written once over this contract: caching, parallel chunks,
validation of parameters changed after fit, factored explanations.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ..explainer import Explainer
from ..relevance import SampleRelevance

__all__ = ["Encoder", "modality"]

#: a per-sample result: ``(relevance (h, p), features (h,))``
Part = tuple[np.ndarray, np.ndarray]


class Encoder(ABC):
    """One side of a deep kernel: samples in, features and relevance factors out.

    Life cycle: built from the estimator's parameters (which it checks), then
    :meth:`validate` with ``reset=True`` and :meth:`load` in ``fit``; afterwards
    :meth:`validate`, the tasks and :meth:`stack` serve ``transform`` and
    ``explain_pairs``. :meth:`reconfigure` takes explanation parameters changed
    after fit (``set_params``) and forgets the explainer built with the old ones.

    Tasks are picklable callables on a chunk of validated samples, so that the
    estimator can run them through joblib and cache their results per sample.
    """

    #: what one sample is, in messages ("images", "texts")
    modality = "samples"

    def __init__(self) -> None:
        self.model_: Optional[nn.Module] = None

    # ------------------------------------------------------------------ samples

    @abstractmethod
    def validate(self, X: Any, reset: bool = False, owner: Any = None) -> np.ndarray:
        """Validated samples, samples first (what ``X_fit_`` holds).

        ``owner``: the estimator that records scikit-learn's input bookkeeping
        (``n_features_in_``, feature names), or None for an encoder that is one of
        several sides of an estimator.
        """

    @abstractmethod
    def holds(self, x: np.ndarray) -> bool:
        """Whether validated samples ``x`` are of this encoder's modality."""

    @abstractmethod
    def load(self) -> dict:
        """Make the frozen copy of the model (``model_``); returns the fitted attributes
        the estimator shows (``model_`` and what else the modality has)."""

    def chunk_size(self, batch_size: int, n_samples: int) -> int:
        """Samples per task: whole batches, so results do not depend on the workers."""
        return batch_size

    def cache_key(self, kind: str) -> Optional[tuple]:
        """What results of ``kind`` ("features", "relevance") depend on besides the model
        and the sample; None: they are not cached."""
        return None

    def labels(self, x: np.ndarray) -> Optional[dict]:
        """Per-sample labels of the groups for explanations (tokens, words), or None
        when the groups are positions of the input (patches)."""
        return None

    # ------------------------------------------------------------------ features

    @abstractmethod
    def feature_task(self) -> Callable[[np.ndarray], tuple]:
        """A task: chunk of samples -> ``(features (n, h),)``."""

    def feature_dim(self) -> Optional[int]:
        """Length ``h`` of the feature vectors, from one probe forward; None when no
        sample can be made up (an image size not yet known)."""
        return None

    # ----------------------------------------------------------------- relevance

    @property
    @abstractmethod
    def explainer(self) -> Explainer:
        """The :class:`~skbilrp.Explainer` of the model (built on first use)."""

    @property
    def method(self) -> str:
        return self.explainer.method

    @abstractmethod
    def relevance_task(self, verbose: bool = False) -> Callable[[np.ndarray], tuple]:
        """A task: chunk of samples -> ``(relevance, features)``, indexable per sample
        (``relevance[i]`` of shape ``(h, p_i)``)."""

    @abstractmethod
    def stack(self, parts: list[Part], sample_shape: tuple) -> SampleRelevance:
        """Per-sample parts as one :class:`~skbilrp.SampleRelevance` (groups padded to the
        widest where they differ; padding adds nothing)."""

    def reconfigure(self, **settings: Any) -> None:
        """Take explanation parameters changed after fit (those this encoder has); the
        explainer is rebuilt."""
        for name, value in settings.items():
            if name in vars(self):
                setattr(self, name, value)
        self._forget_explainer()

    @abstractmethod
    def _forget_explainer(self) -> None:
        """Drop the explainer (rebuilt on demand, never pickled)."""


# ----------------------------------------------------------------------- helpers


def modality(X: Any) -> str:
    """Which modality a batch of samples is: ``"texts"`` or ``"images"``.

    Strings are texts (a batch holding strings is taken for texts, so that a missing
    text is named by the text checks); numbers, arrays and tensors are images.

    Parameters
    ----------
    X : sequence of str, array-like, tensor, pandas Series or DataFrame

    Returns
    -------
    {"texts", "images"}

    Raises
    ------
    ValueError
        If ``X`` holds both strings and arrays (images), naming a position of each.
    """
    if isinstance(X, (str, bytes)):
        return "texts"  # the text checks refuse a lone string with the fix
    if isinstance(X, torch.Tensor):
        return "images"
    if hasattr(X, "columns") and hasattr(X, "dtypes"):  # a DataFrame: texts if its columns hold objects
        return "texts" if all(getattr(d, "kind", "O") in "OUS" for d in X.dtypes) else "images"
    kind = getattr(getattr(X, "dtype", None), "kind", "O")
    if kind in "US":
        return "texts"
    if kind != "O":
        return "images"
    try:
        items = list(X)
    except TypeError:
        return "images"  # array checks name what it is
    texts = [i for i, v in enumerate(items) if isinstance(v, str)]
    arrays = [i for i, v in enumerate(items) if np.ndim(v) > 0 or isinstance(v, torch.Tensor)]
    if texts and arrays:
        raise ValueError(
            f"X mixes texts (e.g. at position {texts[0]}) and images or arrays (e.g. at position {arrays[0]}); "
            "a kernel on both (CrossModalKernel) takes one modality per call: pass the texts and the "
            "images separately (fit on one, transform or explain the other)."
        )
    return "texts" if texts else "images"


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of a model's parameters or buffers (the default one without)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def explanation_dtype(model: nn.Module) -> Optional[torch.dtype]:
    """Compute dtype of explanations: float32 for a half-precision model, else its own.

    LRP divides by stabilised pre-activations; in float16 / bfloat16 those ratios lose
    most of their digits (relative errors of 3e-4 to 9e-2 were measured on small
    CNNs), so relevance is computed on a float32 copy while features and kernel values
    come from the model as given.
    """
    return torch.float32 if model_dtype(model) in (torch.float16, torch.bfloat16) else None


def index_list(indices: np.ndarray, shown: int = 5) -> str:
    """``[0, 3, ...] (7 in all)``: the first few of many sample indices, for messages."""
    listed = ", ".join(str(int(i)) for i in indices[:shown])
    return f"[{listed}{', ...' if len(indices) > shown else ''}] ({len(indices)} in all)"


def check_finite(values: list, what: str, hint: str) -> None:
    """Name the samples whose ``values`` (features or relevance) are NaN or infinite."""
    bad = np.flatnonzero([not np.isfinite(v).all() for v in values])
    if bad.size:
        raise ValueError(f"The {what} of samples {index_list(bad)} are not finite (NaN or inf); {hint}")


def check_positive_int(name: str, value: Any) -> None:
    """Refuse a parameter that is not a positive int (bools included)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
