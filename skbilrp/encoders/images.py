"""Images (and any fixed-shape array samples): the encoder behind :class:`~skbilrp.DeepKernel`.

Samples are float arrays of one shape, ``(n, *input_shape)`` or flat rows; the model
is a frozen eval-mode copy; the groups are input positions pooled into patches (or
given as a label array) by :mod:`skbilrp.pooling`. Tasks are picklable so the
estimator runs them in joblib workers and caches their results per sample.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import warnings
from typing import Any, Optional, Union

import numpy as np
import torch
from sklearn.utils.validation import check_array, validate_data
from torch import nn

from .._checks import check_model_weights, check_same_shape
from ..engine.network import reused_copy
from ..explainer import Explainer
from ..pooling import Pooling, PoolingSpec, check_pooling, make_pooling
from ..relevance import SampleRelevance
from ..rules import RuleSpec
from .base import Encoder, Part, explanation_dtype, index_list, model_dtype

__all__ = ["ImageEncoder"]


class ImageEncoder(Encoder):
    """Fixed-shape array samples through an ``nn.Module``; groups are pooled positions.

    Parameters
    ----------
    model : torch.nn.Module
        Feature extractor: a batch ``(N, *input_shape)`` to features ``(N, ...)``.
    input_shape : tuple of int, optional
        Shape of one sample; None: read off the samples at fit.
    rules, pooling, attention, batch_size
        See :class:`~skbilrp.DeepKernel`.
    device : str or torch.device, default="cpu"
        Where the copy computes features.
    owner_name : str, default="DeepKernel"
        The estimator named in messages.
    """

    modality = "images"

    def __init__(self, model: nn.Module, input_shape: Optional[tuple] = None, rules: RuleSpec = "zero",
                 pooling: PoolingSpec = None, attention: str = "cp", batch_size: int = 64,
                 device: Union[str, torch.device] = "cpu", owner_name: str = "DeepKernel") -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        check_model_weights(model)
        check_pooling(pooling)
        if input_shape is not None:
            shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
            if not shape or not all(isinstance(s, (int, np.integer)) and s > 0 for s in shape):
                raise ValueError(
                    f"input_shape must be a tuple of positive ints (one sample, e.g. (1, 8, 8)), "
                    f"got {input_shape!r}."
                )
        try:
            torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device {device!r} is not a torch device: {err}") from err
        self.model = model
        self.input_shape = input_shape
        self.rules = rules
        self.pooling = pooling
        self.attention = attention
        self.batch_size = batch_size
        self.device = device
        self.owner_name = owner_name
        self.input_shape_: Optional[tuple] = None
        self._task: Optional[_RelevanceTask] = None

    # ------------------------------------------------------------------ samples

    def validate(self, X: Any, reset: bool = False, owner: Any = None) -> np.ndarray:
        """Float64 samples of shape ``(n, *input_shape_)``, scikit-learn's checks on the way.

        With ``owner`` (the estimator) scikit-learn's ``validate_data`` keeps
        ``n_features_in_`` and feature names on it; without, ``check_array`` checks the
        values and every call is held against ``input_shape`` (or takes its own shape).
        """
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
        if isinstance(X, (list, tuple)) and len(X):  # a list of samples, e.g. images
            check_same_shape(X)
            if (X[0].ndim if hasattr(X[0], "ndim") else np.ndim(X[0])) > 1:  # images: one batch (n, *sample_shape)
                X = np.stack([x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in X])
        fixed = owner is not None and not reset  # held against the shape seen at fit
        sample_shape = None
        if hasattr(X, "ndim") and hasattr(X, "shape") and X.ndim > 2:
            X = np.asarray(X)
            sample_shape = tuple(X.shape[1:])
            expected = self.input_shape_ if fixed else (
                tuple(self.input_shape) if self.input_shape is not None else sample_shape)
            if sample_shape != expected:
                raise ValueError(
                    f"X has samples of shape {sample_shape}, but {self.owner_name} expects samples of "
                    f"shape {expected} (flat rows of {math.prod(expected)} values are accepted too)."
                )
            X = X.reshape(X.shape[0], math.prod(sample_shape))  # -1 fails on 0 samples
        if owner is not None:
            X = validate_data(owner, X, reset=reset, dtype=np.float64, ensure_min_samples=1)
        else:
            X = check_array(X, dtype=np.float64, ensure_min_samples=1, input_name="X")
        if not fixed:
            if self.input_shape is not None:
                shape = tuple(int(s) for s in self.input_shape)
                if X.shape[1] != math.prod(shape):
                    raise ValueError(
                        f"X has {X.shape[1]} features per sample, but input_shape={shape} needs "
                        f"{math.prod(shape)}; fix input_shape or pass X of shape (n, *input_shape)."
                    )
            else:
                shape = sample_shape or (X.shape[1],)
            if reset:
                self.input_shape_ = shape
        else:
            shape = self.input_shape_
        _check_representable(X, model_dtype(self.model if self.model_ is None else self.model_))
        return X.reshape((X.shape[0],) + tuple(shape))

    def holds(self, x: np.ndarray) -> bool:
        return x.dtype != object

    def load(self) -> dict:
        if self.input_shape_ is not None:  # a patch size or label array that fits the samples
            make_pooling(self.pooling, self.input_shape_)
        _warn_if_training(self.model)
        device = torch.device(self.device)  # an unchanged model keeps its copy, and the graphs exported for it
        self.model_ = reused_copy(self.model, lambda: _frozen_copy(self.model, device), device)
        self._forget_explainer()
        return {"model_": self.model_, "input_shape_": self.input_shape_}

    def cache_key(self, kind: str) -> Optional[tuple]:
        dtype = str(model_dtype(self.model_))
        if kind == "features":
            return (dtype,)
        ex = self.explainer
        return (sorted(ex.network.rules.items()), self.pooling, tuple(self.input_shape_), ex.method, dtype,
                self.attention)

    # ------------------------------------------------------------------ features

    def feature_task(self) -> "_FeatureTask":
        hint = ""
        if self.input_shape is None and self.input_shape_ is not None and len(self.input_shape_) == 1:
            hint = (f". X was given flat ({self.input_shape_[0]} values per sample) and input_shape "
                    f"is not set: pass {self.owner_name}(..., input_shape=<shape of one sample, e.g. (1, 8, 8)>) "
                    "or X of shape (n_samples, *sample_shape).")
        return _FeatureTask(self.model_, int(self.batch_size), torch.device(self.device), hint)

    def feature_dim(self) -> Optional[int]:
        shape = self.input_shape_ or (tuple(self.input_shape) if self.input_shape is not None else None)
        if shape is None or len(shape) < 2:  # flat rows may not be what the model takes
            return None
        (features,) = self.feature_task()(np.zeros((1,) + tuple(shape)))
        return int(features.shape[1])

    # ----------------------------------------------------------------- relevance

    def _relevance_runner(self) -> "_RelevanceTask":
        if self._task is None:
            self._task = _RelevanceTask(self.model_, self.rules, self.pooling, int(self.batch_size), self.attention)
        return self._task

    @property
    def explainer(self) -> Explainer:
        return self._relevance_runner().explainer

    def relevance_task(self, verbose: bool = False) -> "_RelevanceTask":
        runner = self._relevance_runner()
        runner.explainer  # built here, before any worker thread could race to build it
        return runner

    def pooling_for(self, sample_shape: tuple) -> Pooling:
        """The groups of one sample of this shape."""
        return self.explainer.computer.pooling_for(tuple(sample_shape))

    def stack(self, parts: list[Part], sample_shape: tuple) -> SampleRelevance:
        rel = np.stack([r for r, _ in parts])
        feats = np.stack([f for _, f in parts])
        return SampleRelevance(torch.from_numpy(rel), torch.from_numpy(feats), self.pooling_for(sample_shape))

    def _forget_explainer(self) -> None:
        self._task = None


# ------------------------------------------------------------------- the model copy


def _frozen_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """A copy in eval mode without gradients; the user's model is never touched."""
    frozen = copy.deepcopy(model).eval().to(device)
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


#: module types whose forward differs between training and eval mode
_MODE_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm,
                   nn.modules.instancenorm._InstanceNorm, nn.RReLU, nn.MultiheadAttention)


@functools.lru_cache(maxsize=None)
def _forward_reads_training(cls: type) -> bool:
    """Whether a module class's own forward reads ``self.training`` (custom dropout, ...)."""
    forward = cls.forward
    if forward is nn.Module.forward or getattr(forward, "__module__", "").startswith("torch."):
        return False
    try:
        return "self.training" in inspect.getsource(forward)
    except (OSError, TypeError):
        return False


def _warn_if_training(model: nn.Module) -> None:
    """One warning when the model is in training mode and that changes what it computes."""
    differing = [name or type(model).__name__ for name, m in model.named_modules()
                 if m.training and (isinstance(m, _MODE_DEPENDENT) or _forward_reads_training(type(m)))]
    if differing:
        shown = ", ".join(repr(d) for d in differing[:3]) + (", ..." if len(differing) > 3 else "")
        warnings.warn(
            f"The model is in training mode, and {len(differing)} of its modules ({shown}) "
            "compute differently in eval mode (dropout, batch statistics). DeepKernel uses an "
            "eval-mode copy for the kernel and its explanations; call model.eval() before "
            "fit to silence this warning.",
            UserWarning, stacklevel=4,
        )


def _check_representable(x: np.ndarray, dtype: torch.dtype) -> None:
    """Refuse samples that overflow the model's dtype (they would give NaN features)."""
    if not dtype.is_floating_point:
        return
    limit = torch.finfo(dtype).max
    peak = np.abs(x.reshape(len(x), -1)).max(axis=1) if x.size else np.zeros(len(x))
    bad = np.flatnonzero(peak > limit)
    if bad.size:
        raise ValueError(
            f"Samples {index_list(bad)} hold values up to {peak[bad].max():.3g}, beyond the "
            f"largest {dtype} ({limit:.3g}) the model computes in; rescale X (e.g. to the "
            "range the model was trained on)."
        )


# ---------------------------------------------------------------------- the tasks


class _FeatureTask:
    """Feature vectors of a chunk of samples: a plain batched forward, no relevance."""

    def __init__(self, model: nn.Module, batch_size: int, device: torch.device, hint: str = "") -> None:
        self.model = model
        self.batch_size = batch_size
        self.device = device
        self.hint = hint  # appended when the model rejects the batch

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> tuple[np.ndarray]:
        dtype = model_dtype(self.model)
        parts = []
        for start in range(0, len(x), self.batch_size):
            batch = torch.tensor(x[start:start + self.batch_size], dtype=dtype, device=self.device)
            try:
                out = self.model(batch)
            except (RuntimeError, ValueError, IndexError, TypeError) as err:
                raise ValueError(
                    f"The model rejected a batch of shape {tuple(batch.shape)}: {err}{self.hint}"
                ) from err
            if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[0] != batch.shape[0]:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(
                    f"The model must map a batch (N, ...) to features (N, ...), got {got} for "
                    f"{batch.shape[0]} samples; wrap it in a module returning one feature tensor."
                )
            parts.append(out.flatten(1).to("cpu", torch.float64).numpy())
        return (np.concatenate(parts),)


class _RelevanceTask:
    """Per-sample BiLRP relevance ``(N, h, p)`` and features ``(N, h)`` of a chunk.

    Builds its :class:`~skbilrp.Explainer` on first use; the explainer is left out of
    the pickled state, so each joblib worker rebuilds it from the (picklable) model.
    """

    def __init__(self, model: nn.Module, rules: RuleSpec, pooling: PoolingSpec, batch_size: int,
                 attention: str = "cp") -> None:
        self.model = model
        self.rules = rules
        self.pooling = pooling
        self.batch_size = batch_size
        self.attention = attention
        self._explainer: Optional[Explainer] = None

    @property
    def explainer(self) -> Explainer:
        if self._explainer is None:
            model = self.model  # explanations run on the model's device
            self._explainer = Explainer(model, rules=self.rules, pooling=self.pooling,
                                        batch_size=self.batch_size, dtype=explanation_dtype(model),
                                        attention=self.attention)
        return self._explainer

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_explainer"] = None
        return state

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rel = self.explainer.relevance(x)
        return rel.relevance.cpu().numpy(), rel.features.cpu().numpy()
