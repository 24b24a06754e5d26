"""scikit-learn estimator: a deep-feature kernel whose every entry BiLRP can explain.

:class:`DeepKernel` turns raw samples into the precomputed kernel ``K(X, X_fit_)``
(or the kernel-induced distance) that scikit-learn's kernel and neighbour methods
take with ``kernel="precomputed"`` / ``metric="precomputed"``, and explains any of
those entries on pairs of input groups with :meth:`DeepKernel.explain_pairs`.

The estimator is written once over an encoder (:mod:`skbilrp.encoders`), which says
what a sample is: :class:`~skbilrp.encoders.ImageEncoder` here,
:class:`~skbilrp.encoders.TextEncoder` for :class:`~skbilrp.TextKernel`. Features come
from a plain batched forward of the encoder's frozen copy of the user's model;
per-sample relevance (the expensive part) is computed only when explanations are
asked for, once per sample, and reused for every pair a sample takes part in.
Both can be cached on disk per sample (``memory``) so that long jobs resume.
"""

from __future__ import annotations

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
from sklearn.utils.validation import check_is_fitted, check_memory
from torch import nn
from tqdm.auto import tqdm

from .cache import SampleStore, Unkeyable, fingerprint
from .encoders import Encoder, ImageEncoder, modality
from .encoders.base import check_finite, check_positive_int
from .pairs import DEFAULT_MAX_MEMORY, PairExplanations, pair_relevance
from .pooling import Pooling, PoolingSpec
from .relevance import SampleRelevance
from .rules import RuleSpec
from .token_pairs import TextPairExplanations

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


# ------------------------------------------------------------------ execution

def _chunks(n: int, chunk_size: int, n_tasks: int) -> list[tuple[int, int]]:
    """Contiguous chunks made of whole batches, so every model call sees the same
    batches whatever the number of workers (results do not depend on ``n_jobs``)."""
    n_batches = math.ceil(n / chunk_size)
    cuts = np.linspace(0, n_batches, min(n_tasks, n_batches) + 1).round().astype(int)
    return [(int(a) * chunk_size, min(n, int(b) * chunk_size)) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def _map_chunks(task: Callable[[np.ndarray], tuple], x: np.ndarray, chunk_size: int,
                n_jobs: Optional[int], verbose: bool, desc: str) -> Iterator[tuple[int, int, tuple]]:
    """Run ``task`` over chunks of ``x``, in order, yielding ``(start, stop, result)``.

    Goes through joblib when it offers more than one worker (``n_jobs``, or an active
    ``joblib.parallel_backend`` such as dask); in-process otherwise.
    """
    workers = effective_n_jobs(n_jobs)
    n_tasks = math.ceil(len(x) / chunk_size) if workers == 1 else workers * _TASKS_PER_WORKER
    chunks = _chunks(len(x), chunk_size, n_tasks)
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

    def _check_kernel_params(self, positive_ints: tuple[str, ...] = ("batch_size", "max_memory")) -> None:
        """The checks every kernel estimator shares: kernel, output, attention and positive ints."""
        if self.kernel not in ("linear", "cosine"):
            raise ValueError(f"kernel must be 'linear' or 'cosine', got {self.kernel!r}.")
        if self.output not in ("kernel", "distance"):
            raise ValueError(f"output must be 'kernel' or 'distance', got {self.output!r}.")
        for name in positive_ints:
            check_positive_int(name, getattr(self, name))
        if self.attention not in ("cp", "attnlrp"):
            raise ValueError(f"attention must be 'cp' or 'attnlrp', got {self.attention!r}.")

    def _new_encoder(self) -> Encoder:
        """The encoder of the samples, built from the parameters (it checks its own)."""
        return ImageEncoder(self.model, self.input_shape, self.rules, self.pooling, self.attention,
                            self.batch_size, self.device, owner_name=type(self).__name__)

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
        self._check_kernel_params()
        X = self._fit_encoders(X)
        self.X_fit_ = X
        self._fitted_with = self._fit_dependent_params()
        self._reset_explanations()
        self._model_keys: dict[str, str] = {}  # fingerprints for `memory`, made on first use
        self._uncached: set[str] = set()  # kinds of results `memory` cannot key
        self.features_fit_ = self._features(X)
        return self

    def _fit_encoders(self, X: Any) -> np.ndarray:
        """Build the encoder from the parameters, validate the training samples with it
        and copy the model; returns the validated samples."""
        encoder = self._new_encoder()
        X = encoder.validate(X, reset=True, owner=self)
        for name, value in encoder.load().items():  # model_, and input_shape_ or tokenizer_, max_length_
            setattr(self, name, value)
        self._sides = {encoder.modality: encoder}
        return X

    def _check_fitted(self) -> None:
        check_is_fitted(self)
        self._check_params_unchanged()

    # parameters that the fitted state depends on, and those the explanations depend on
    # (the latter are the encoder's settings of the same names)
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
        """Forget the explainers and the cached relevance and labels of the training samples."""
        self._fit_relevance: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._fit_labels: Optional[dict] = None
        settings = {name: getattr(self, name) for name in self._EXPLAIN_PARAMS}
        for encoder in self._encoders():
            encoder.reconfigure(**settings)

    def _encoders(self) -> list[Encoder]:
        """Every encoder of the fitted estimator, one per modality (none before fit)."""
        return list(getattr(self, "_sides", {}).values())

    def _encoder_of(self, x: np.ndarray) -> Encoder:
        """The encoder of validated samples ``x``."""
        return next(encoder for encoder in self._sides.values() if encoder.holds(x))

    def _validate_samples(self, X: Any, reset: bool = False) -> np.ndarray:
        """The samples of ``X`` as their encoder validates them (float64 ``(n, *input_shape_)``
        for images, a 1-D object array for texts).

        With one encoder, scikit-learn's input bookkeeping (``n_features_in_``, feature
        names) is this estimator's; with several, ``X`` says which encoder
        (:func:`~skbilrp.encoders.modality`), and samples of the two differ in width.
        """
        if len(self._sides) == 1:
            (encoder,) = self._sides.values()
            return encoder.validate(X, reset=reset, owner=self)
        return self._sides[modality(X)].validate(X, reset=reset)

    # --------------------------------------------------------------- features

    def _cache_location(self) -> Optional[Path]:
        """The directory ``memory`` names (nothing is created here: a read-only one still serves reads)."""
        memory = getattr(self, "memory", None)  # estimators without the parameter cache nothing
        if memory is None:
            return None
        if isinstance(memory, (str, os.PathLike)):  # check_memory would create <dir>/joblib
            return Path(memory)
        location = check_memory(memory).location
        return None if location is None else Path(location)

    def _cache_root(self) -> Optional[Path]:
        location = self._cache_location()
        return None if location is None else location / "skbilrp_deepkernel"

    def _store(self, encoder: Encoder, kind: str) -> Optional[SampleStore]:
        """The cache of one kind of result, or None (no ``memory``, or nothing to key it by)."""
        root = self._cache_root()
        if root is None:
            return None
        depends = encoder.cache_key(kind)
        if depends is None:
            return None
        try:
            if encoder.modality not in self._model_keys:
                self._model_keys[encoder.modality] = fingerprint(type(encoder.model_).__qualname__, encoder.model_)
            if getattr(self, "_unwritable_warned", None) is None:
                self._unwritable_warned: set = set()  # one warning per estimator for an unwritable cache
            return SampleStore(root / kind / fingerprint(self._model_keys[encoder.modality], *depends),
                               self._cache_location(),
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

    def _run(self, encoder: Encoder, task: Callable[[np.ndarray], tuple], x: np.ndarray,
             store: Optional[SampleStore], desc: str) -> list[tuple]:
        """Per-sample results of ``task`` on ``x``, taken from ``store`` where present."""
        n_jobs = getattr(self, "n_jobs", None)  # estimators without the parameter run in-process
        chunk = encoder.chunk_size(int(self.batch_size), len(x))
        if store is None:
            return [tuple(r[offset] for r in result)
                    for a, b, result in _map_chunks(task, x, chunk, n_jobs, self.verbose, desc)
                    for offset in range(b - a)]
        keys = [store.key(s) for s in x]
        per_sample: list[Optional[tuple]] = [store.load(k) for k in keys]
        todo = np.array([i for i, hit in enumerate(per_sample) if hit is None], dtype=np.int64)
        if len(todo):
            for a, b, result in _map_chunks(task, x[todo], chunk, n_jobs, self.verbose, desc):
                for offset, i in enumerate(todo[a:b]):
                    per_sample[i] = tuple(r[offset] for r in result)
                    store.save(keys[i], per_sample[i])  # saved as chunks arrive: jobs resume
        store.warn_unreadable()
        return per_sample

    def _features(self, x: np.ndarray) -> np.ndarray:
        encoder = self._encoder_of(x)
        parts = self._run(encoder, encoder.feature_task(), x, self._store(encoder, "features"), "features")
        features = np.stack([f for (f,) in parts])
        check_finite(features, "features", "the model overflowed or produced NaN on them; check "
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

    def _pooling(self) -> Pooling:
        """The groups of one training sample (images)."""
        return self._encoder_of(self.X_fit_).pooling_for(tuple(self.input_shape_))

    def _sample_parts(self, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(relevance (h, p), features (h,))`` of each validated sample, for the cache."""
        encoder = self._encoder_of(x)
        task = encoder.relevance_task(self.verbose)  # builds the explainer the cache key names
        parts = self._run(encoder, task, x, self._store(encoder, "relevance"), "relevance")
        check_finite([r for r, _ in parts], "relevance", "a rule divided by a near-zero denominator or "
                     "the model overflowed; try rules='epsilon' or check the inputs' scale.")
        return parts

    def _relevance(self, x: np.ndarray) -> SampleRelevance:
        return self._encoder_of(x).stack(self._sample_parts(x), x.shape[1:])

    def _relevance_of_both(self, xa: np.ndarray, xb: np.ndarray) -> tuple[SampleRelevance, SampleRelevance]:
        """The relevance of two sides; in the same passes where one encoder holds both (one
        pair of texts: one recording and one push of both, not two of each)."""
        encoder = self._encoder_of(xa)
        if encoder is not self._encoder_of(xb) or xa.shape[1:] != xb.shape[1:]:
            return self._relevance(xa), self._relevance(xb)
        parts = self._sample_parts(np.concatenate([xa, xb]))
        return encoder.stack(parts[:len(xa)], xa.shape[1:]), encoder.stack(parts[len(xa):], xb.shape[1:])

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
        return self._encoder_of(self.X_fit_).stack([self._fit_relevance[int(i)] for i in idx],
                                                    self.X_fit_.shape[1:])

    def _labels(self, x: Optional[np.ndarray]) -> Optional[dict]:
        """Group labels (tokens, words) of validated samples, or of the training samples
        (``x`` None, kept); None for samples whose groups are positions (images)."""
        if x is not None:
            return self._encoder_of(x).labels(x)
        if self._fit_labels is None:
            self._fit_labels = self._encoder_of(self.X_fit_).labels(self.X_fit_) or {}
        return self._fit_labels or None

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
        if xb is None:
            a, b = self._relevance(xa[rows]), self.fit_sample_relevance(cols)
        elif xb is xa and np.array_equal(rows, cols):
            a = b = self._relevance(xa[rows])
        else:
            a, b = self._relevance_of_both(xa[rows], xb[cols])
        method = self._encoder_of(xa).method
        if pairs is None:
            expl = pair_relevance(a, b, self.kernel, method=method, max_memory=self.max_memory)
        else:
            row_pos = {int(r): k for k, r in enumerate(rows)}
            col_pos = {int(c): k for k, c in enumerate(cols)}
            local = [(row_pos[i], col_pos[j]) for i, j in pairs]
            expl = pair_relevance(a, b, self.kernel, local, method=method, max_memory=self.max_memory,
                                  labels=pairs)
        return _labelled(expl, self._labels(xa), self._labels(xb))


def _labelled(expl: PairExplanations, labels_a: Optional[dict], labels_b: Optional[dict]) -> PairExplanations:
    """Explanations with the group labels of the sides that have them (tokens, words);
    as they are when neither side has any (patches × patches)."""
    if labels_a is None and labels_b is None:
        return expl
    sides = {}
    for side, labels in (("a", labels_a), ("b", labels_b)):
        sides[f"tokens_{side}"] = None if labels is None else labels["tokens"]
        sides[f"words_{side}"] = None if labels is None else labels["words"]
    return expl._as(TextPairExplanations, special_a=None, special_b=None, level="tokens", **sides)


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
