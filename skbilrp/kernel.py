"""scikit-learn estimator: a deep-feature kernel whose every entry BiLRP can explain.

:class:`DeepKernel` turns raw samples into the precomputed kernel ``K(X, X_fit_)``
(or the kernel-induced distance) that scikit-learn's kernel and neighbour methods
take with ``kernel="precomputed"`` / ``metric="precomputed"``, and explains any of
those entries on pairs of input groups with :meth:`DeepKernel.explain_pairs`.

Features come from a plain batched forward of a frozen copy of the user's model;
per-sample relevance (the expensive part) is computed only when explanations are
asked for, once per sample, and reused for every pair a sample takes part in.
Both can be cached on disk per sample (``memory``) so that long jobs resume.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union

import joblib
import numpy as np
import torch
from joblib import Parallel, delayed, effective_n_jobs
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted, check_memory, validate_data
from torch import nn
from tqdm.auto import tqdm

from ._checks import check_model_weights, check_same_shape
from .cache import SampleStore, Unkeyable, fingerprint
from .explainer import Explainer
from .pairs import DEFAULT_MAX_MEMORY, PairExplanations, pair_relevance
from .pooling import Pooling, PoolingSpec, check_pooling, make_pooling
from .relevance import SampleRelevance
from .rules import RuleSpec

__all__ = ["DeepKernel", "features_kernel", "self_similarity", "kernel_to_distance"]

KernelName = Literal["linear", "cosine"]
OutputName = Literal["kernel", "distance"]

#: tasks per joblib worker: enough for load balancing and for ``memory`` to save
#: progress often, few enough that the model is not shipped once per batch
_TASKS_PER_WORKER = 4


# --------------------------------------------------------------------------- kernels


def _normalized(features: np.ndarray, kernel: KernelName) -> np.ndarray:
    """Features whose dot products give the kernel; zero vectors stay zero."""
    if kernel == "linear":
        return features
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, np.finfo(features.dtype).tiny)


def features_kernel(fa: np.ndarray, fb: np.ndarray, kernel: KernelName = "cosine") -> np.ndarray:
    """Kernel matrix between two sets of feature vectors.

    Parameters
    ----------
    fa, fb : ndarray of shape (n, h) and (m, h)
        Feature vectors ``phi(x)``.
    kernel : {"linear", "cosine"}, default="cosine"
        Dot product, or dot product of unit vectors (a zero vector has similarity 0
        with everything, as in :func:`skbilrp.pairs.pair_relevance`).

    Returns
    -------
    ndarray of shape (n, m), float64
    """
    fa = _normalized(np.asarray(fa, dtype=np.float64), kernel)
    fb = _normalized(np.asarray(fb, dtype=np.float64), kernel)
    return fa @ fb.T


def self_similarity(features: np.ndarray, kernel: KernelName = "cosine") -> np.ndarray:
    """``k(x, x)`` of each feature vector, shape (n,)."""
    f = _normalized(np.asarray(features, dtype=np.float64), kernel)
    return np.einsum("nh,nh->n", f, f)


def kernel_to_distance(k: np.ndarray, diag_a: np.ndarray, diag_b: np.ndarray) -> np.ndarray:
    """Kernel-induced distance ``sqrt(max(k(x,x) + k(y,y) - 2 k(x,y), 0))``.

    Parameters
    ----------
    k : ndarray of shape (n, m)
        Kernel entries ``k(x_i, y_j)``.
    diag_a, diag_b : ndarray of shape (n,) and (m,)
        Self-similarities ``k(x_i, x_i)`` and ``k(y_j, y_j)``.

    Returns
    -------
    ndarray of shape (n, m)
    """
    sq = diag_a[:, None] + diag_b[None, :] - 2.0 * k
    return np.sqrt(np.maximum(sq, 0.0))


# ------------------------------------------------------------------ per-batch work


def _model_dtype(model: nn.Module) -> torch.dtype:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def _explanation_dtype(model: nn.Module) -> Optional[torch.dtype]:
    """Compute dtype of explanations: float32 for a half-precision model, else its own.

    LRP divides by stabilised pre-activations; in float16 / bfloat16 those ratios lose
    most of their digits (relative errors of 3e-4 to 9e-2 were measured on small
    CNNs), so relevance is computed on a float32 copy while features and kernel values
    come from the model as given.
    """
    return torch.float32 if _model_dtype(model) in (torch.float16, torch.bfloat16) else None


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
            UserWarning, stacklevel=3,
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
            f"Samples {_index_list(bad)} hold values up to {peak[bad].max():.3g}, beyond the "
            f"largest {dtype} ({limit:.3g}) the model computes in; rescale X (e.g. to the "
            "range the model was trained on)."
        )


def _check_finite(values: np.ndarray, what: str, hint: str) -> None:
    """Name the samples whose ``values`` (features or relevance) are NaN or infinite."""
    bad = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
    if bad.size:
        raise ValueError(f"The {what} of samples {_index_list(bad)} are not finite (NaN or inf); {hint}")


def _index_list(indices: np.ndarray, shown: int = 5) -> str:
    listed = ", ".join(str(int(i)) for i in indices[:shown])
    return f"[{listed}{', ...' if len(indices) > shown else ''}] ({len(indices)} in all)"


class _FeatureTask:
    """Feature vectors of a chunk of samples: a plain batched forward, no relevance."""

    def __init__(self, model: nn.Module, batch_size: int, device: torch.device, hint: str = "") -> None:
        self.model = model
        self.batch_size = batch_size
        self.device = device
        self.hint = hint  # appended when the model rejects the batch

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> tuple[np.ndarray]:
        dtype = _model_dtype(self.model)
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
                                        batch_size=self.batch_size, dtype=_explanation_dtype(model),
                                        attention=self.attention)
        return self._explainer

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_explainer"] = None
        return state

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rel = self.explainer.relevance(x)
        return rel.relevance.cpu().numpy(), rel.features.cpu().numpy()


def _chunks(n: int, batch_size: int, n_tasks: int) -> list[tuple[int, int]]:
    """Contiguous chunks made of whole batches, so every model call sees the same
    batches whatever the number of workers (results do not depend on ``n_jobs``)."""
    n_batches = math.ceil(n / batch_size)
    cuts = np.linspace(0, n_batches, min(n_tasks, n_batches) + 1).round().astype(int)
    return [(int(a) * batch_size, min(n, int(b) * batch_size)) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def _map_chunks(task: Callable[[np.ndarray], tuple], x: np.ndarray, batch_size: int,
                n_jobs: Optional[int], verbose: bool, desc: str) -> Iterator[tuple[int, int, tuple]]:
    """Run ``task`` over chunks of ``x``, in order, yielding ``(start, stop, result)``.

    Goes through joblib when it offers more than one worker (``n_jobs``, or an active
    ``joblib.parallel_backend`` such as dask); in-process otherwise.
    """
    workers = effective_n_jobs(n_jobs)
    n_tasks = math.ceil(len(x) / batch_size) if workers == 1 else workers * _TASKS_PER_WORKER
    chunks = _chunks(len(x), batch_size, n_tasks)
    if workers == 1 or len(chunks) == 1:
        results: Any = (task(x[a:b]) for a, b in chunks)
    else:
        results = Parallel(n_jobs=n_jobs, return_as="generator")(delayed(task)(x[a:b]) for a, b in chunks)
    bar = tqdm(results, total=len(chunks), desc=desc, disable=not verbose or len(chunks) < 2, leave=False)
    try:
        for (a, b), result in zip(chunks, bar):
            yield a, b, result
    finally:
        bar.close()


# ------------------------------------------------------------------- the estimator


class DeepKernel(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Deep-feature kernel ``k(x, x') = <phi(x), phi(x')>`` as a scikit-learn transformer.

    ``transform(X)`` returns ``K(X, X_fit_)``, the precomputed kernel (or distance)
    that scikit-learn estimators take with ``kernel="precomputed"`` or
    ``metric="precomputed"``; :meth:`explain_pairs` explains any of those entries
    with BiLRP on pairs of input groups.

    Parameters
    ----------
    model : torch.nn.Module
        Feature extractor ``phi``: a batch ``(N, *input_shape)`` to features ``(N, ...)``
        (flattened to ``(N, h)``). It is copied in :meth:`fit` and never modified.
        Use a bias-free model for explanations that sum exactly to the kernel.
    kernel : {"linear", "cosine"}, default="cosine"
        Dot product of the features, or of the unit-normalised features.
    output : {"kernel", "distance"}, default="kernel"
        What :meth:`transform` returns: the kernel (for SVC, KernelRidge, KernelPCA,
        SpectralClustering, ...) or the kernel-induced distance
        ``d(x, y) = sqrt(max(k(x,x) + k(y,y) - 2 k(x,y), 0))`` (for k-NN, LOF, DBSCAN,
        agglomerative clustering). Explanations always explain kernel entries.
    input_shape : tuple of int, optional
        Shape of one sample as the model takes it, e.g. ``(1, 8, 8)``. Lets flat 2-D
        ``X`` (one row per image) flow through Pipelines and cross-validation; ``X``
        shaped ``(n, *input_shape)`` is accepted too. Default: ``X.shape[1:]`` at fit.
    rules : str, Rule, mapping or callable, default="zero"
        LRP rules, see :class:`skbilrp.Explainer`.
    pooling : None, int, tuple or array, optional
        Groups of input positions explained together, see :class:`skbilrp.Explainer`:
        None, a positive int patch side, a tuple of them, or an integer label array of
        the sample's positions. Checked in :meth:`fit` against the samples.
    attention : {"cp", "attnlrp"}, default="cp"
        How relevance passes attention layers, see :class:`skbilrp.Explainer`: "cp"
        keeps the softmax probabilities constant (CP-LRP, the rule of the NAACL 2024
        BiLRP paper); "attnlrp" also propagates through the probabilities (AttnLRP).
        Models without attention give the same result either way.
    batch_size : int, default=64
        Samples per forward pass (and per relevance batch).
    device : str or torch.device, default="cpu"
        Where the model copy computes features; relevance is computed on the CPU.
    n_jobs : int, optional
        Joblib workers over chunks of batches, for features and relevance. None means 1
        unless in a :func:`joblib.parallel_backend` context (e.g. ``"dask"``).
    memory : str, joblib.Memory or None, default=None
        Directory (or a Memory's location) caching per-sample features and per-sample
        relevance on disk, so a long job resumes where it stopped. None: no cache.
        Entries are keyed by the model's whole pickled state (parameters, buffers and
        plain attributes, tensors by value), the rules, the pooling and the sample; a
        model or rule that cannot be pickled (e.g. holding a lambda) is not cached,
        with a warning. Unreadable entries are recomputed and overwritten. A directory
        that cannot be written (read-only, full) still serves the entries it holds;
        new results are computed without being stored, with one warning.
    max_memory : int, default=2 GiB
        Largest whole explanation array, in bytes, that the ``relevance`` of an
        :meth:`explain_pairs` result may build (a larger one is refused, with what to ask
        for instead); also the budget of the chunks its entries are streamed in.
    verbose : bool, default=False
        Show progress bars over batches.

    Attributes
    ----------
    model_ : torch.nn.Module
        The frozen copy of ``model`` (eval mode, no gradients) on ``device``.
    input_shape_ : tuple of int
        Shape of one sample as given to the model.
    X_fit_ : ndarray of shape ``(n_fit, *input_shape_)``, float64
        The training samples: the columns of :meth:`transform`.
    features_fit_ : ndarray of shape (n_fit, h), float64
        Their features ``phi(X_fit_)``.
    n_features_in_ : int
        Values per sample (columns of flat ``X``).
    feature_names_in_ : ndarray of str
        Column names, when ``X`` was a DataFrame with string column names.

    Notes
    -----
    Precision: features and kernel values come from the model in its own dtype.
    Explanations of a float16 or bfloat16 model are computed on a float32 copy (LRP's
    ratios lose most of their digits in half precision), so their ``similarity`` can
    differ from :meth:`transform` by the model's rounding.

    Models in training mode are used as an eval-mode copy (dropout off, BatchNorm on
    its running statistics); :meth:`fit` warns when that changes what the model computes.

    ``DeepKernel`` is *not* a pairwise estimator: it takes raw samples, and its output
    is the pairwise (precomputed) input of the next estimator. Cross-validation thus
    splits its ``X`` by rows only, as it must.

    Examples
    --------
    >>> import torch
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.svm import SVC
    >>> phi = torch.nn.Sequential(torch.nn.Linear(4, 8, bias=False), torch.nn.ReLU())
    >>> X, y = torch.rand(20, 4).numpy(), [0, 1] * 10
    >>> pipe = make_pipeline(DeepKernel(phi), SVC(kernel="precomputed")).fit(X, y)
    >>> E = pipe[0].explain_pairs(X[:2])          # entries K(X[:2], X_fit_)
    >>> E.relevance.shape
    (2, 20, 4, 4)
    """

    def __init__(self, model: nn.Module, kernel: KernelName = "cosine", output: OutputName = "kernel",
                 input_shape: Optional[tuple] = None, rules: RuleSpec = "zero",
                 pooling: PoolingSpec = None, attention: str = "cp", batch_size: int = 64,
                 device: Union[str, torch.device] = "cpu", n_jobs: Optional[int] = None,
                 memory: Union[None, str, joblib.Memory] = None, max_memory: int = DEFAULT_MAX_MEMORY,
                 verbose: bool = False) -> None:
        self.model = model
        self.kernel = kernel
        self.output = output
        self.input_shape = input_shape
        self.rules = rules
        self.pooling = pooling
        self.attention = attention
        self.batch_size = batch_size
        self.device = device
        self.n_jobs = n_jobs
        self.memory = memory
        self.max_memory = max_memory
        self.verbose = verbose

    def __sklearn_tags__(self):
        """Tags: raw (possibly n-D) samples in, float64 kernel out; not pairwise."""
        tags = super().__sklearn_tags__()
        # Raw samples in, precomputed kernel out: the *next* estimator is pairwise.
        tags.input_tags.pairwise = False
        tags.input_tags.three_d_array = True  # image batches (n, c, h, w) are accepted
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = ["float64"]  # output is always float64
        return tags

    # ------------------------------------------------------------------ fitting

    def _check_kernel_params(self, positive_ints: tuple[str, ...]) -> None:
        """The checks every kernel estimator shares: kernel, output and positive ints."""
        if self.kernel not in ("linear", "cosine"):
            raise ValueError(f"kernel must be 'linear' or 'cosine', got {self.kernel!r}.")
        if self.output not in ("kernel", "distance"):
            raise ValueError(f"output must be 'kernel' or 'distance', got {self.output!r}.")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")

    def _check_params(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(self.model).__name__}.")
        check_model_weights(self.model)
        check_pooling(self.pooling)
        self._check_kernel_params(("batch_size", "max_memory"))
        if self.attention not in ("cp", "attnlrp"):
            raise ValueError(f"attention must be 'cp' or 'attnlrp', got {self.attention!r}.")
        if self.input_shape is not None:
            shape = tuple(self.input_shape) if isinstance(self.input_shape, (tuple, list)) else None
            if not shape or not all(isinstance(s, (int, np.integer)) and s > 0 for s in shape):
                raise ValueError(
                    f"input_shape must be a tuple of positive ints (one sample, e.g. (1, 8, 8)), "
                    f"got {self.input_shape!r}."
                )
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device {self.device!r} is not a torch device: {err}") from err

    def fit(self, X: Any, y: Any = None) -> "DeepKernel":
        """Copy the model, validate and store the training samples and their features.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or ``(n_samples, *input_shape)``
            Training samples; flat rows are reshaped to ``input_shape``. A list of
            same-shaped arrays (e.g. images) is taken as one batch.
        y : None
            Ignored.

        Returns
        -------
        self : DeepKernel
        """
        self._check_params()
        X = self._validate_samples(X, reset=True)
        make_pooling(self.pooling, self.input_shape_)  # a patch size or label array that fits the samples
        _warn_if_training(self.model)
        self.model_ = _frozen_copy(self.model, torch.device(self.device))
        self.X_fit_ = X
        self._fitted_with = self._fit_dependent_params()
        self._reset_explanations()
        self._model_key: Optional[str] = None  # fingerprint for `memory`, made on first use
        self._uncached: set[str] = set()  # kinds of results `memory` cannot key
        self.features_fit_ = self._features(X)
        return self

    def _check_fitted(self) -> None:
        check_is_fitted(self)
        self._check_params_unchanged()

    # parameters that the fitted state depends on, and those the explanations depend on
    _FIT_PARAMS = ("model", "input_shape")
    _EXPLAIN_PARAMS = ("rules", "pooling", "attention", "batch_size")

    def _fit_dependent_params(self) -> dict:
        return {name: getattr(self, name) for name in self._FIT_PARAMS + self._EXPLAIN_PARAMS}

    def _check_params_unchanged(self) -> None:
        """Refit-or-rebuild after ``set_params``: never explain with stale parameters.

        A changed ``model`` or ``input_shape`` invalidates the fitted state (features of
        the training samples): raise scikit-learn's not-fitted error. Changed rules,
        pooling or batch size only invalidate the explanations: rebuild them.
        """
        fitted_with = getattr(self, "_fitted_with", None)
        if fitted_with is None:
            return
        changed = [n for n, v in fitted_with.items() if not _same_param(getattr(self, n), v)]
        stale = [n for n in changed if n in self._FIT_PARAMS]
        if stale:
            raise NotFittedError(
                f"{', '.join(stale)} changed (set_params) since this {type(self).__name__} was "
                "fitted; call fit again before using it."
            )
        if changed:
            self._reset_explanations()
            self._fitted_with = self._fit_dependent_params()

    def _reset_explanations(self) -> None:
        """Forget the explainer and the cached relevance of the training samples."""
        self._relevance_task = None
        self._fit_relevance = {}

    def _validate_samples(self, X: Any, reset: bool) -> np.ndarray:
        """sklearn validation of ``X``, returned as float64 of shape ``(n, *input_shape_)``."""
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
        if isinstance(X, (list, tuple)) and len(X):  # a list of samples, e.g. images
            check_same_shape(X)
            if (X[0].ndim if hasattr(X[0], "ndim") else np.ndim(X[0])) > 1:  # images: one batch (n, *sample_shape)
                X = np.stack([x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in X])
        sample_shape = None
        if hasattr(X, "ndim") and hasattr(X, "shape") and X.ndim > 2:
            X = np.asarray(X)
            sample_shape = tuple(X.shape[1:])
            expected = self.input_shape_ if not reset else (
                tuple(self.input_shape) if self.input_shape is not None else sample_shape)
            if sample_shape != expected:
                raise ValueError(
                    f"X has samples of shape {sample_shape}, but DeepKernel expects samples of "
                    f"shape {expected} (flat rows of {math.prod(expected)} values are accepted too)."
                )
            X = X.reshape(X.shape[0], math.prod(sample_shape))  # -1 fails on 0 samples
        X = validate_data(self, X, reset=reset, dtype=np.float64, ensure_min_samples=1)
        if reset:
            if self.input_shape is not None:
                shape = tuple(int(s) for s in self.input_shape)
                if X.shape[1] != math.prod(shape):
                    raise ValueError(
                        f"X has {X.shape[1]} features per sample, but input_shape={shape} needs "
                        f"{math.prod(shape)}; fix input_shape or pass X of shape (n, *input_shape)."
                    )
            else:
                shape = sample_shape or (X.shape[1],)
            self.input_shape_ = shape
        _check_representable(X, _model_dtype(self.model if reset else self.model_))
        return X.reshape((X.shape[0],) + tuple(self.input_shape_))

    # --------------------------------------------------------------- features

    def _cache_location(self) -> Optional[Path]:
        """The directory ``memory`` names (nothing is created here: a read-only one still serves reads)."""
        if self.memory is None:
            return None
        if isinstance(self.memory, (str, os.PathLike)):  # check_memory would create <dir>/joblib
            return Path(self.memory)
        location = check_memory(self.memory).location
        return None if location is None else Path(location)

    def _cache_root(self) -> Optional[Path]:
        location = self._cache_location()
        return None if location is None else location / "skbilrp_deepkernel"

    def _store(self, kind: str, *depends: Any) -> Optional[SampleStore]:
        """The cache of one kind of result, or None (no ``memory``, or nothing to key it by)."""
        root = self._cache_root()
        if root is None:
            return None
        try:
            if getattr(self, "_model_key", None) is None:
                self._model_key = fingerprint(type(self.model_).__qualname__, self.model_)
            if getattr(self, "_unwritable_warned", None) is None:
                self._unwritable_warned: set = set()  # one warning per estimator for an unwritable cache
            return SampleStore(root / kind / fingerprint(self._model_key, *depends), self._cache_location(),
                               self._unwritable_warned)
        except Unkeyable as err:
            if kind in self._uncached:
                return None
            self._uncached.add(kind)  # warn once per kind, not on every call
            warnings.warn(
                f"memory: {kind} are not cached, because the model or its rules cannot be "
                f"pickled to key the cache ({err}); make them picklable (no lambdas or local "
                "functions) to cache them.", UserWarning, stacklevel=3)
            return None

    def _run(self, task: Callable[[np.ndarray], tuple], x: np.ndarray, store: Optional[SampleStore],
             desc: str) -> tuple[np.ndarray, ...]:
        """Per-sample results of ``task`` on ``x``, taken from ``store`` where present."""
        if store is None:
            parts = [r for _, _, r in _map_chunks(task, x, self.batch_size, self.n_jobs, self.verbose, desc)]
            return tuple(np.concatenate(c) for c in zip(*parts))
        keys = [store.key(s) for s in x]
        per_sample: list[Optional[tuple]] = [store.load(k) for k in keys]
        todo = np.array([i for i, hit in enumerate(per_sample) if hit is None], dtype=np.int64)
        if len(todo):
            for a, b, result in _map_chunks(task, x[todo], self.batch_size, self.n_jobs, self.verbose, desc):
                for offset, i in enumerate(todo[a:b]):
                    per_sample[i] = tuple(r[offset] for r in result)
                    store.save(keys[i], per_sample[i])  # saved as chunks arrive: jobs resume
        store.warn_unreadable()
        return tuple(np.stack(c) for c in zip(*per_sample))

    def _features(self, x: np.ndarray) -> np.ndarray:
        hint = ""
        if self.input_shape is None and len(self.input_shape_) == 1:
            hint = (f". X was given flat ({self.input_shape_[0]} values per sample) and input_shape "
                    "is not set: pass DeepKernel(..., input_shape=<shape of one sample, e.g. (1, 8, 8)>) "
                    "or X of shape (n_samples, *sample_shape).")
        task = _FeatureTask(self.model_, int(self.batch_size), torch.device(self.device), hint)
        store = self._store("features", str(_model_dtype(self.model_)))
        (features,) = self._run(task, x, store, "features")
        _check_finite(features, "features", "the model overflowed or produced NaN on them; check "
                      "their scale and the model's numerics (e.g. a float16 model on large inputs).")
        return features

    def features(self, X: Any) -> np.ndarray:
        """Feature vectors ``phi(X)`` of the frozen model, float64 of shape (n, h).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or ``(n_samples, *input_shape_)``

        Returns
        -------
        ndarray of shape (n_samples, h)
        """
        self._check_fitted()
        return self._features(self._validate_samples(X, reset=False))

    def transform(self, X: Any) -> np.ndarray:
        """Kernel (or kernel-induced distance) between ``X`` and the training samples.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or ``(n_samples, *input_shape_)``

        Returns
        -------
        ndarray of shape (n_samples, n_fit), float64
            ``K(X, X_fit_)``, or distances when ``output="distance"``.
        """
        return self._pairwise(self.features(X))

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> np.ndarray:
        """Fit, then return ``K(X, X)`` without a second forward pass over ``X``."""
        return self.fit(X, y)._pairwise(self.features_fit_)

    def _pairwise(self, features: np.ndarray) -> np.ndarray:
        k = features_kernel(features, self.features_fit_, self.kernel)
        if self.output == "kernel":
            return k
        return kernel_to_distance(k, self_similarity(features, self.kernel),
                                  self_similarity(self.features_fit_, self.kernel))

    @property
    def _n_features_out(self) -> int:
        """One output column per training sample (names ``deepkernel0``, ...)."""
        return len(self.X_fit_)

    # ------------------------------------------------------------- relevance

    def _relevance_runner(self) -> _RelevanceTask:
        if getattr(self, "_relevance_task", None) is None:
            self._relevance_task = _RelevanceTask(self.model_, self.rules, self.pooling, int(self.batch_size),
                                                  self.attention)
        return self._relevance_task

    def _pooling(self) -> Pooling:
        return self._relevance_runner().explainer.computer.pooling_for(tuple(self.input_shape_))

    def _relevance(self, x: np.ndarray) -> SampleRelevance:
        runner = self._relevance_runner()
        ex = runner.explainer  # built here, before any worker thread could race to build it
        store = None
        if self._cache_root() is not None:
            store = self._store("relevance", sorted(ex.network.rules.items()), self.pooling,
                                tuple(self.input_shape_), ex.method, str(_model_dtype(self.model_)), self.attention)
        rel, feats = self._run(runner, x, store, "relevance")
        _check_finite(rel, "relevance", "a rule divided by a near-zero denominator or the model "
                      "overflowed; try rules='epsilon' or check the inputs' scale.")
        return SampleRelevance(torch.from_numpy(rel), torch.from_numpy(feats), self._pooling())

    def sample_relevance(self, X: Any) -> SampleRelevance:
        """Per-sample pooled relevance ``A(x) P`` of new samples, ``(n, h, p)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or ``(n_samples, *input_shape_)``

        Returns
        -------
        SampleRelevance
        """
        self._check_fitted()
        return self._relevance(self._validate_samples(X, reset=False))

    def fit_sample_relevance(self, indices: Optional[Sequence[int]] = None) -> SampleRelevance:
        """Per-sample relevance of training samples, computed once and kept.

        Parameters
        ----------
        indices : sequence of int, optional
            Rows of ``X_fit_``; default all.

        Returns
        -------
        SampleRelevance
            In the order of ``indices``.
        """
        self._check_fitted()
        n_fit = len(self.X_fit_)
        idx = np.arange(n_fit) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n_fit):
            raise IndexError(f"Training sample indices must lie in [0, {n_fit}), got {idx.min()}..{idx.max()}.")
        missing = sorted(set(idx.tolist()) - set(self._fit_relevance))
        if missing:
            for i, part in zip(missing, self._sample_parts(self.X_fit_[missing])):
                self._fit_relevance[int(i)] = part
        return self._stack([self._fit_relevance[int(i)] for i in idx])

    def _sample_parts(self, X: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(relevance (h, p), features (h,))`` of each validated sample, for the cache."""
        new = self._relevance(X)
        return [(new.relevance[k].numpy(), new.features[k].numpy()) for k in range(len(new))]

    def _stack(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> SampleRelevance:
        """Join cached per-sample parts into one :class:`SampleRelevance`."""
        rel = np.stack([r for r, _ in parts])
        feats = np.stack([f for _, f in parts])
        return SampleRelevance(torch.from_numpy(rel), torch.from_numpy(feats), self._pooling())

    def explain_pairs(self, X: Any, Y: Any = None,
                      pairs: Optional[Sequence[tuple[int, int]]] = None) -> PairExplanations:
        """Explain kernel entries with BiLRP on pairs of input groups.

        Per-sample relevance is computed once per sample and reused across all pairs;
        that of the training samples is kept between calls (and in ``memory``).
        With ``output="distance"`` the underlying *kernel* entries are explained.

        Parameters
        ----------
        X : array-like of shape (n, n_features) or ``(n, *input_shape_)``
            Rows of the explained block.
        Y : array-like, optional
            Columns; default the training samples, i.e. the entries of ``transform(X)``.
        pairs : sequence of (i, j), optional
            Explain only these entries (row of ``X``, column of ``Y`` or ``X_fit_``);
            only the samples they name are explained.

        Returns
        -------
        PairExplanations
            Factored: it keeps the per-sample relevance and computes entries on demand.
            ``relevance`` (built when read) has shape ``(n, m, p, q)`` (or
            ``(n_pairs, p, q)``); each entry sums to ``similarity`` up to
            ``conservation_error`` (zero for bias-free models with conserving rules).
        """
        self._check_fitted()
        xa = self._validate_samples(X, reset=False)
        xb = None if Y is None else (xa if Y is X else self._validate_samples(Y, reset=False))
        n_b = len(self.X_fit_) if xb is None else len(xb)
        if pairs is None:
            rows, cols = np.arange(len(xa)), np.arange(n_b)
        else:
            pairs = _check_pairs(pairs, len(xa), n_b)
            rows = np.unique([i for i, _ in pairs])
            cols = np.unique([j for _, j in pairs])
        # no size check here: the result keeps per-sample factors, and only reading its
        # whole ``relevance`` array is refused over ``max_memory``
        a = self._relevance(xa[rows])
        if xb is None:
            b = self.fit_sample_relevance(cols)
        elif xb is xa and np.array_equal(rows, cols):
            b = a
        else:
            b = self._relevance(xb[cols])
        method = self._relevance_runner().explainer.method
        if pairs is None:
            return pair_relevance(a, b, self.kernel, method=method, max_memory=self.max_memory)
        row_pos = {int(r): k for k, r in enumerate(rows)}
        col_pos = {int(c): k for k, c in enumerate(cols)}
        local = [(row_pos[i], col_pos[j]) for i, j in pairs]
        return pair_relevance(a, b, self.kernel, local, method=method, max_memory=self.max_memory,
                              labels=pairs)


def _same_param(a: Any, b: Any) -> bool:
    """Whether a parameter still holds the value it had at fit (the same object, or an
    equal plain value: strings, numbers, tuples)."""
    if a is b:
        return True
    plain = (str, int, float, bool, type(None), tuple)
    return isinstance(a, plain) and isinstance(b, plain) and type(a) is type(b) and a == b


def _check_pairs(pairs: Any, n_a: int, n_b: int) -> list[tuple[int, int]]:
    """Validate ``pairs`` as a non-empty list of in-range ``(row, column)`` indices."""
    arr = np.asarray(pairs)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0 or arr.dtype.kind not in "iu":
        raise ValueError(
            "pairs must be a non-empty sequence of (i, j) integer index pairs, e.g. "
            f"[(0, 3), (1, 5)]; got an array of shape {arr.shape} and dtype {arr.dtype}."
        )
    bad = (arr[:, 0] < 0) | (arr[:, 0] >= n_a) | (arr[:, 1] < 0) | (arr[:, 1] >= n_b)
    if bad.any():
        i, j = arr[np.argmax(bad)]
        raise IndexError(
            f"Pair ({i}, {j}) is out of range: rows must lie in [0, {n_a}) and columns in [0, {n_b})."
        )
    return [(int(i), int(j)) for i, j in arr]
