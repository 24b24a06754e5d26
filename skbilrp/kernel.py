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
import hashlib
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union

import joblib
import numpy as np
import torch
from joblib import Parallel, delayed, effective_n_jobs
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, check_memory, validate_data
from torch import nn
from tqdm.auto import tqdm

from .explainer import Explainer
from .pairs import PairExplanations, pair_relevance
from .pooling import Pooling, PoolingSpec
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


def _frozen_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """A copy in eval mode without gradients; the user's model is never touched."""
    frozen = copy.deepcopy(model).eval().to(device)
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


class _FeatureTask:
    """Feature vectors of a chunk of samples: a plain batched forward, no relevance."""

    def __init__(self, model: nn.Module, batch_size: int, device: torch.device) -> None:
        self.model = model
        self.batch_size = batch_size
        self.device = device

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> tuple[np.ndarray]:
        dtype = _model_dtype(self.model)
        parts = []
        for start in range(0, len(x), self.batch_size):
            batch = torch.tensor(x[start:start + self.batch_size], dtype=dtype, device=self.device)
            out = self.model(batch)
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

    def __init__(self, model: nn.Module, rules: RuleSpec, pooling: PoolingSpec, batch_size: int) -> None:
        self.model = model
        self.rules = rules
        self.pooling = pooling
        self.batch_size = batch_size
        self._explainer: Optional[Explainer] = None

    @property
    def explainer(self) -> Explainer:
        if self._explainer is None:
            model = self.model
            if any(t.device.type != "cpu" for t in model.parameters()):
                # the engine builds its probes on the CPU; explanations run there
                model = copy.deepcopy(model).to("cpu")
            self._explainer = Explainer(model, rules=self.rules, pooling=self.pooling,
                                        batch_size=self.batch_size)
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


# ------------------------------------------------------------------ on-disk cache


class _SampleStore:
    """Per-sample results on disk, keyed by the sample's bytes, so long jobs resume.

    Each sample's arrays live in one ``.npz`` file written atomically (temporary file
    then rename): an interrupted job leaves only complete entries behind.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(sample: np.ndarray) -> str:
        sample = np.ascontiguousarray(sample, dtype=np.float64)
        digest = hashlib.sha256(repr(sample.shape).encode())
        digest.update(sample.tobytes())
        return digest.hexdigest()[:40]

    def load(self, key: str) -> Optional[tuple[np.ndarray, ...]]:
        path = self.root / f"{key}.npz"
        if not path.exists():
            return None
        with np.load(path) as data:
            return tuple(data[f"arr_{i}"] for i in range(len(data.files)))

    def save(self, key: str, arrays: tuple[np.ndarray, ...]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, *arrays)
        os.replace(tmp, self.root / f"{key}.npz")


def _fingerprint(*parts: Any) -> str:
    """Stable hash of the things a cached result depends on."""
    try:
        return joblib.hash(parts)
    except Exception:  # e.g. an unpicklable rule callable: its repr is the next best
        return hashlib.sha256(repr(parts).encode()).hexdigest()


def _model_fingerprint(model: nn.Module) -> str:
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return _fingerprint(type(model).__qualname__, repr(model), state)


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
        Groups of input positions explained together, see :class:`skbilrp.Explainer`.
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
                 pooling: PoolingSpec = None, batch_size: int = 64,
                 device: Union[str, torch.device] = "cpu", n_jobs: Optional[int] = None,
                 memory: Union[None, str, joblib.Memory] = None, verbose: bool = False) -> None:
        self.model = model
        self.kernel = kernel
        self.output = output
        self.input_shape = input_shape
        self.rules = rules
        self.pooling = pooling
        self.batch_size = batch_size
        self.device = device
        self.n_jobs = n_jobs
        self.memory = memory
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

    def _check_params(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(self.model).__name__}.")
        if self.kernel not in ("linear", "cosine"):
            raise ValueError(f"kernel must be 'linear' or 'cosine', got {self.kernel!r}.")
        if self.output not in ("kernel", "distance"):
            raise ValueError(f"output must be 'kernel' or 'distance', got {self.output!r}.")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, (int, np.integer)) \
                or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}.")
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
            Training samples; flat rows are reshaped to ``input_shape``.
        y : None
            Ignored.

        Returns
        -------
        self : DeepKernel
        """
        self._check_params()
        X = self._validate_samples(X, reset=True)
        self.model_ = _frozen_copy(self.model, torch.device(self.device))
        self.X_fit_ = X
        self._relevance_task = None
        self._fit_relevance: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._model_key: Optional[str] = None  # fingerprint for `memory`, made on first use
        self.features_fit_ = self._features(X)
        return self

    def _validate_samples(self, X: Any, reset: bool) -> np.ndarray:
        """sklearn validation of ``X``, returned as float64 of shape ``(n, *input_shape_)``."""
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
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
            X = X.reshape(X.shape[0], -1)
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
        return X.reshape((X.shape[0],) + tuple(self.input_shape_))

    # --------------------------------------------------------------- features

    def _cache_root(self) -> Optional[Path]:
        location = check_memory(self.memory).location
        return None if location is None else Path(location) / "skbilrp_deepkernel"

    def _store(self, kind: str, *depends: Any) -> Optional[_SampleStore]:
        root = self._cache_root()
        if root is None:
            return None
        if getattr(self, "_model_key", None) is None:
            self._model_key = _model_fingerprint(self.model_)
        return _SampleStore(root / kind / _fingerprint(self._model_key, *depends))

    def _run(self, task: Callable[[np.ndarray], tuple], x: np.ndarray, store: Optional[_SampleStore],
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
        return tuple(np.stack(c) for c in zip(*per_sample))

    def _features(self, x: np.ndarray) -> np.ndarray:
        task = _FeatureTask(self.model_, int(self.batch_size), torch.device(self.device))
        store = self._store("features", str(_model_dtype(self.model_)))
        (features,) = self._run(task, x, store, "features")
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
        check_is_fitted(self)
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
            self._relevance_task = _RelevanceTask(self.model_, self.rules, self.pooling, int(self.batch_size))
        return self._relevance_task

    def _pooling(self) -> Pooling:
        return self._relevance_runner().explainer.computer.pooling_for(tuple(self.input_shape_))

    def _relevance(self, x: np.ndarray) -> SampleRelevance:
        runner = self._relevance_runner()
        ex = runner.explainer  # built here, before any worker thread could race to build it
        store = None
        if self._cache_root() is not None:
            store = self._store("relevance", sorted(ex.network.rules.items()), self.pooling,
                                tuple(self.input_shape_), ex.method, str(_model_dtype(self.model_)))
        rel, feats = self._run(runner, x, store, "relevance")
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
        check_is_fitted(self)
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
        check_is_fitted(self)
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
            ``relevance`` of shape ``(n, m, p, q)`` (or ``(n_pairs, p, q)``), summing to
            ``similarity`` up to ``conservation_error`` (zero for bias-free models with
            conserving rules).
        """
        check_is_fitted(self)
        xa = self._validate_samples(X, reset=False)
        xb = None if Y is None else (xa if Y is X else self._validate_samples(Y, reset=False))
        n_b = len(self.X_fit_) if xb is None else len(xb)
        if pairs is None:
            rows, cols = np.arange(len(xa)), np.arange(n_b)
        else:
            pairs = _check_pairs(pairs, len(xa), n_b)
            rows = np.unique([i for i, _ in pairs])
            cols = np.unique([j for _, j in pairs])
        a = self._relevance(xa[rows])
        if xb is None:
            b = self.fit_sample_relevance(cols)
        elif xb is xa and np.array_equal(rows, cols):
            b = a
        else:
            b = self._relevance(xb[cols])
        method = self._relevance_runner().explainer.method
        if pairs is None:
            return pair_relevance(a, b, self.kernel, method=method)
        row_pos = {int(r): k for k, r in enumerate(rows)}
        col_pos = {int(c): k for k, c in enumerate(cols)}
        local = [(row_pos[i], col_pos[j]) for i, j in pairs]
        expl = pair_relevance(a, b, self.kernel, local, method=method)
        expl.pairs = pairs
        return expl


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
