"""Pair relevance: the BiLRP explanation of kernel entries.

``R[n, m] = A_n^T B_m`` from cached per-sample relevance, so explaining an
``N × M`` block costs ``N + M`` relevance computations and cheap products. The
products are formed on demand: a result keeps the factors, and what reduces the
``p × p'`` matrices (similarity, conservation error, marginals) never builds them.
Cosine similarity treats the norms as constants: ``R_cos = R_dot / (|phi| |phi'|)``,
which sums exactly to the cosine when the rules conserve.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence

import numpy as np
import torch

from .pooling import Pooling
from .relevance import SampleRelevance

__all__ = ["PairExplanation", "PairExplanations", "pair_relevance", "check_result_size", "Kernel",
           "DEFAULT_MAX_MEMORY", "scaled_factors"]

Kernel = Literal["linear", "cosine"]

#: default budget of one materialised explanation array, in bytes
DEFAULT_MAX_MEMORY = 2 * 2**30


def check_result_size(n_entries: int, groups_a: int, groups_b: int, max_memory: int,
                      bytes_per_value: int = 8, hint: str = "", fewer_entries: bool = True) -> None:
    """Refuse, before any work, an explanation array larger than the memory budget.

    Parameters
    ----------
    n_entries : int
        Kernel entries explained.
    groups_a, groups_b : int
        Groups of input positions per sample on each side (``p`` and ``p'``).
    max_memory : int
        Budget in bytes.
    bytes_per_value : int, default=8
        Bytes each relevance value costs while it is built (float64 result plus any
        intermediate copy).
    hint : str, default=""
        Appended to the message: further ways to do without the array.
    fewer_entries : bool, default=True
        Whether asking for fewer entries is a way out (not for one entry).

    Raises
    ------
    MemoryError
        Naming the size asked for (in GiB), the budget, and the ways to ask for less:
        fewer entries, a coarser pooling, a larger ``max_memory``, and ``hint``.
    """
    n_values = int(n_entries) * int(groups_a) * int(groups_b)
    needed = n_values * int(bytes_per_value)
    if needed > max_memory:
        fewer = "pass pairs=[(i, j), ...] for the entries you need or fewer rows, " if fewer_entries else ""
        raise MemoryError(
            f"Explaining {n_entries} kernel entries on {groups_a} x {groups_b} groups of input "
            f"positions builds {n_values:.3g} relevance values ({_gib(needed)}), over the budget "
            f"max_memory={int(max_memory)} bytes ({_gib(max_memory)}). Ask for less: {fewer}use a coarser "
            "pooling (e.g. pooling=8 for 8-pixel patches), or pass a larger max_memory= "
            "(DeepKernel(max_memory=...), or set E.max_memory) if the machine has the memory." + hint
        )


def _gib(n_bytes: float) -> str:
    """A byte count in GiB, three significant digits (a tiny budget stays visible)."""
    return f"{n_bytes / 2**30:.3g} GiB"


@dataclass
class PairExplanation:
    """BiLRP explanation of one similarity ``k(x, x')``.

    Attributes
    ----------
    relevance : ndarray of shape (p, p')
        ``relevance[g, g']``: contribution of group ``g`` of ``x`` jointly with group
        ``g'`` of ``x'``.
    similarity : float
        The kernel value explained.
    conservation_error : float
        ``similarity - relevance.sum()``: what biases and stabilisers absorbed.
    pooling_a, pooling_b : Pooling
        Groups of input positions of ``x`` and ``x'`` (for plotting).
    kernel, method : str
    """

    relevance: np.ndarray
    similarity: float
    conservation_error: float
    pooling_a: Pooling
    pooling_b: Pooling
    kernel: str = "linear"
    method: str = "bilrp"

    def marginals(self) -> tuple[np.ndarray, np.ndarray]:
        """First-order relevance of each side: the sum over the partner's groups."""
        return self.relevance.sum(axis=1), self.relevance.sum(axis=0)

    def top_interactions(self, k: int = 10, by: Literal["abs", "positive", "negative"] = "abs") -> list[tuple[int, int, float]]:
        """The ``k`` strongest group pairs as ``(g, g', relevance)``, strongest first (ties: lower position)."""
        return _top(self.relevance, k, by)


class PairExplanations:
    """BiLRP explanations of many kernel entries, computed on demand from per-sample factors.

    A result of :func:`pair_relevance` keeps the per-sample relevance of both sides
    (``A_n`` of shape ``(h, p)`` and ``B_m`` of shape ``(h, p')``, divided by the feature
    norms for the cosine kernel) rather than the ``(n, m, p, p')`` product, which for
    whole kernel blocks does not fit memory. Entry ``(n, m)`` is ``A_n^T B_m``; what
    reduces it is computed without building it: ``similarity`` and
    ``conservation_error`` in ``O(h)`` per entry, :meth:`marginals` in ``O(h p)``;
    :meth:`pair` builds one ``p × p'`` matrix, :meth:`top_interactions` and iteration
    stream over entries in chunks, and :attr:`relevance` builds the whole array only
    when read (refused over ``max_memory``).

    Constructed from arrays, ``PairExplanations(relevance, similarity,
    conservation_error, pooling_a, pooling_b)``, it holds them as given.

    Parameters
    ----------
    relevance : ndarray, optional
        ``(n, m, p, p')`` or ``(n_pairs, p, p')``; None for a factored result (built by
        :func:`pair_relevance`).
    similarity, conservation_error : ndarray, optional
        ``(n, m)`` or ``(n_pairs,)``, with ``relevance``.
    pooling_a, pooling_b : Pooling
    kernel, method : str
    pairs : list of (int, int) or None
        The chosen entries, or None for a full block.
    max_memory : int, default=2 GiB
        Budget of every array built per entry (see :func:`check_result_size`): the whole
        :attr:`relevance`, :meth:`marginals`, the matrix of :meth:`pair` and of each entry
        iteration yields (larger ones are refused before anything is allocated); also of
        each chunk that :meth:`top_interactions` and iteration build.

    Attributes
    ----------
    shape : tuple of int
        ``(n, m)`` for a block, ``(n_pairs,)`` for chosen pairs.

    Notes
    -----
    ``len(E)`` is the number of rows (of pairs, for chosen pairs); iterating runs over
    every entry, row-major, yielding :class:`PairExplanation`. Indexing ``E[rows]``,
    ``E[rows, cols]`` (or ``E[ks]`` for chosen pairs) with ints, slices, index lists or
    boolean masks gives a :class:`PairExplanations` of the sub-block, sharing the
    factors; an int keeps its axis (length one). Use :meth:`pair` for one entry.
    """

    def __init__(self, relevance: Optional[np.ndarray] = None, similarity: Optional[np.ndarray] = None,
                 conservation_error: Optional[np.ndarray] = None, pooling_a: Optional[Pooling] = None,
                 pooling_b: Optional[Pooling] = None, kernel: str = "linear", method: str = "bilrp",
                 pairs: Optional[list] = None, max_memory: int = DEFAULT_MAX_MEMORY) -> None:
        self.pooling_a = pooling_a
        self.pooling_b = pooling_b
        self.kernel = kernel
        self.method = method
        self.pairs = pairs
        self.max_memory = int(max_memory)
        self._factors: Optional[_Factors] = None
        self._ia = self._ib = None  # factor rows of each side: of the block, or of each pair
        self._dense = None if relevance is None else np.asarray(relevance)
        self._similarity = None if similarity is None else np.asarray(similarity)
        self._error = None if conservation_error is None else np.asarray(conservation_error)

    @classmethod
    def _from_factors(cls, factors: "_Factors", ia: np.ndarray, ib: np.ndarray, pooling_a: Pooling,
                      pooling_b: Pooling, kernel: str, method: str, pairs: Optional[list],
                      max_memory: int) -> "PairExplanations":
        out = cls(None, None, None, pooling_a, pooling_b, kernel, method, pairs, max_memory)
        out._factors, out._ia, out._ib = factors, np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)
        return out

    def _as(self, cls: type, **extra: Any) -> "PairExplanations":
        """This result as an instance of the subclass ``cls``, with ``extra`` attributes."""
        out = cls.__new__(cls)
        out.__dict__.update(self.__dict__)
        out.__dict__.update(extra)
        return out

    # ------------------------------------------------------------------ shape

    @property
    def _is_block(self) -> bool:
        if self._dense is not None:
            return self.pairs is None and self._dense.ndim == 4
        return self.pairs is None

    @property
    def shape(self) -> tuple[int, ...]:
        """``(n, m)`` for a block of entries, ``(n_pairs,)`` for chosen pairs."""
        if self._dense is not None:
            return tuple(self._dense.shape[:2] if self._is_block else self._dense.shape[:1])
        return (len(self._ia), len(self._ib)) if self._is_block else (len(self._ia),)

    @property
    def n_groups(self) -> tuple[int, int]:
        """``(p, p')``: groups of input positions on each side."""
        if self._dense is not None:
            return tuple(self._dense.shape[-2:])
        return self._factors.a.shape[-1], self._factors.b.shape[-1]

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        what = "x".join(str(s) for s in self.shape)
        kind = "block" if self._is_block else "pairs"
        p, q = self.n_groups
        return (f"{type(self).__name__}({kind} of {what} entries on {p} x {q} groups, "
                f"kernel={self.kernel!r}, method={self.method!r})")

    def _entry_indices(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Factor rows ``(ia, ib)`` of entries given by their row-major position."""
        if self._is_block:
            m = len(self._ib)
            return self._ia[flat // m], self._ib[flat % m]
        return self._ia[flat], self._ib[flat]

    # ------------------------------------------------------------ reductions

    @property
    def similarity(self) -> np.ndarray:
        """The kernel values explained, ``(n, m)`` or ``(n_pairs,)``, float64."""
        if self._similarity is None:
            f = self._factors
            self._similarity = self._contract(f.fa, f.fb)
        return self._similarity

    @property
    def conservation_error(self) -> np.ndarray:
        """``similarity`` minus the sum of each entry's relevance, ``(n, m)`` or ``(n_pairs,)``.

        From the factors: the sum of ``A_n^T B_m`` is ``(A_n 1)^T (B_m 1)``.
        """
        if self._error is None:
            f = self._factors
            self._error = self.similarity - self._contract(f.sa, f.sb)
        return self._error

    def _contract(self, u: torch.Tensor, v: torch.Tensor) -> np.ndarray:
        """``<u[ia], v[ib]>`` over the feature axis, for every entry."""
        ia, ib = torch.from_numpy(self._ia), torch.from_numpy(self._ib)
        if self._is_block:
            return (u[ia] @ v[ib].T).numpy()
        return (u[ia] * v[ib]).sum(1).numpy()

    def marginals(self) -> tuple[np.ndarray, np.ndarray]:
        """First-order maps: sums over the partner's groups, ``(..., p)`` and ``(..., p')``.

        ``A_n^T (B_m 1)`` and ``B_m^T (A_n 1)``: ``O(h p)`` per entry, no ``p × p'`` matrix.

        Returns
        -------
        marginal_a : ndarray of shape (n, m, p) or (n_pairs, p)
        marginal_b : ndarray of shape (n, m, p') or (n_pairs, p')
        """
        if self._dense is not None:
            return self._dense.sum(axis=-1), self._dense.sum(axis=-2)
        # not cached: for a whole kernel block they are large, and the caller holds them
        p, q = self.n_groups
        self._check_budget(math.prod(self.shape), (p + q, 1), 8, _MARGINALS_HINT)
        f = self._factors
        sa, sb = f.sa[torch.from_numpy(self._ia)], f.sb[torch.from_numpy(self._ib)]
        if self._is_block:  # (m, h) @ (h, p) per row, (n, h) @ (h, p') per column
            n, m = self.shape
            marg_a = _weighted_rows(f.a, f.norm_a, self._ia, sb.expand(n, m, -1))
            marg_b = _weighted_rows(f.b, f.norm_b, self._ib, sa.expand(m, n, -1)).transpose(0, 1)
        else:
            marg_a = _weighted_rows(f.a, f.norm_a, self._ia, sb[:, None])[:, 0]
            marg_b = _weighted_rows(f.b, f.norm_b, self._ib, sa[:, None])[:, 0]
        return marg_a.numpy(), marg_b.numpy()

    # --------------------------------------------------------------- entries

    @property
    def relevance(self) -> np.ndarray:
        """The whole ``(n, m, p, p')`` (or ``(n_pairs, p, p')``) array, built on first read.

        Raises
        ------
        MemoryError
            If it is larger than ``max_memory`` (see :func:`check_result_size`); the
            reductions, :meth:`pair` and iteration need no such array.
        """
        if self._dense is None:
            self._check_budget(math.prod(self.shape), self.n_groups, 16, _STREAM_HINT)
            f = self._factors
            a, b = f.rows_a(self._ia), f.rows_b(self._ib)
            spec = "nhp,mhq->nmpq" if self._is_block else "khp,khq->kpq"
            self._dense = torch.einsum(spec, a, b).numpy()
        return self._dense

    def _check_budget(self, n_entries: int, groups: tuple[int, int], bytes_per_value: int, hint: str) -> None:
        """The one size check of everything that builds an array per entry (:attr:`relevance`,
        :meth:`marginals`, :meth:`pair`, iteration): refused over ``max_memory`` by
        :func:`check_result_size`, before the allocator is asked."""
        check_result_size(n_entries, groups[0], groups[1], self.max_memory, bytes_per_value, hint=hint,
                          fewer_entries=n_entries > 1)

    def _build(self, flat: np.ndarray) -> np.ndarray:
        """``(len(flat), p, p')``: the entries at these row-major positions (within ``max_memory``)."""
        if self._dense is not None:
            return self._dense.reshape(-1, *self._dense.shape[-2:])[flat]
        self._check_budget(len(flat), self.n_groups, 8, _ENTRY_HINT)
        ia, ib = self._entry_indices(flat)
        f = self._factors
        return torch.bmm(f.rows_a(ia).transpose(1, 2), f.rows_b(ib)).numpy()

    def _entry_bytes(self) -> int:
        """Streaming cost of one entry: its matrix, two same-sized temporaries (top-k
        keys) and its gathered factors."""
        p, q = self.n_groups
        h = 0 if self._factors is None else self._factors.a.shape[1]
        return 8 * (3 * p * q + h * (p + q))

    def _stream_budget(self) -> int:
        return min(self.max_memory, _STREAM_BYTES)

    def _top_by_tiles(self, position: int, k: int, by: str) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of one entry too large to build whole: per tile ``A[:, rows]^T B[:, cols]``
        its own top-k (ties to the lower position), then the top-k of those candidates,
        kept in position order so that ties still go to the lower position. Only a tile's
        factor blocks are converted to float64 at a time."""
        ia, ib = self._entry_indices(np.array([position]))
        f, i, j = self._factors, int(ia[0]), int(ib[0])
        a, b = f.a[i], f.b[j]  # (h, p), (h, q), own dtype
        h, p, q = a.shape[0], a.shape[1], b.shape[1]
        budget = self._stream_budget()
        n_cols = max(1, min(q, budget // (4 * 8 * h)))  # a quarter for the columns of B
        n_rows = max(1, min(p, budget // (4 * 8 * h), budget // (2 * 24 * n_cols)))  # and of A; half: the tile
        positions, values = [], []
        for c0 in range(0, q, n_cols):
            b_cols = b[:, c0:c0 + n_cols].double() / f.norm_b[j]
            for r0 in range(0, p, n_rows):
                tile = (a[:, r0:r0 + n_rows].double() / f.norm_a[i]).T @ b_cols
                order = _top_order(tile.reshape(1, -1).numpy(), k, by)[0]
                rows, cols = np.divmod(order, tile.shape[1])
                positions.append((rows + r0) * q + cols + c0)
                values.append(tile.numpy()[rows, cols])
        positions, values = np.concatenate(positions), np.concatenate(values)
        in_order = np.argsort(positions, kind="stable")
        positions, values = positions[in_order], values[in_order]
        best = _top_order(values[None], k, by)[0]
        return positions[best][None], values[best][None]

    def _chunks(self) -> Iterator[np.ndarray]:
        """Row-major entry positions, in chunks whose matrices fit the streaming budget."""
        step = max(1, self._stream_budget() // self._entry_bytes())
        total = math.prod(self.shape)
        for start in range(0, total, step):
            yield np.arange(start, min(total, start + step))

    def __iter__(self) -> Iterator[PairExplanation]:
        """Every entry, row-major, as a :class:`PairExplanation` (built chunk by chunk;
        an entry larger than ``max_memory`` is refused, as by :meth:`pair`)."""
        sim, err = self.similarity.reshape(-1), self.conservation_error.reshape(-1)
        for flat in self._chunks():
            for k, rel in zip(flat, self._build(flat)):
                yield self._one(int(k), rel, float(sim[k]), float(err[k]))

    def _one(self, k: int, rel: np.ndarray, similarity: float, error: float) -> PairExplanation:
        """Entry at row-major position ``k`` from its matrix (subclasses trim it)."""
        return PairExplanation(rel, similarity, error, self.pooling_a, self.pooling_b, self.kernel, self.method)

    def _position(self, i: int, j: Optional[int]) -> int:
        """Row-major position of ``pair(i, j)`` (block) or ``pair(k)`` (chosen pairs)."""
        shape = self.shape
        if (j is None) != (len(shape) == 1):
            raise ValueError("Use pair(i, j) for a block of entries and pair(k) for the k-th of pairs=.")
        idx = (i,) if j is None else (i, j)
        for v, n in zip(idx, shape):
            if not -n <= int(v) < n:
                raise IndexError(f"Entry {idx} is out of range for explanations of shape {shape}.")
        idx = tuple(int(v) % n for v, n in zip(idx, shape))
        return int(np.ravel_multi_index(idx, shape))

    def pair(self, i: int, j: Optional[int] = None) -> PairExplanation:
        """One entry: ``pair(i, j)`` of a block, or ``pair(k)`` for the k-th chosen pair.

        Builds only that entry's ``p × p'`` matrix.

        Raises
        ------
        MemoryError
            If that matrix alone is larger than ``max_memory`` (e.g. ``pooling=None`` on
            large images); the message names :meth:`top_interactions`, a coarser pooling
            and a larger budget.
        """
        k = self._position(i, j)
        flat = np.array([k])
        return self._one(k, self._build(flat)[0], float(self.similarity.reshape(-1)[k]),
                         float(self.conservation_error.reshape(-1)[k]))

    def top_interactions(self, k: int = 10, by: Literal["abs", "positive", "negative"] = "abs") -> list[list]:
        """Per entry, the ``k`` strongest group pairs ``(g, g', relevance)``, strongest first.

        Streams over the entries in chunks; ties go to the lower (row-major) group pair.

        Returns
        -------
        list
            ``tops[i][j]`` for a block, ``tops[k]`` for chosen pairs.
        """
        _check_top(k, by)
        q = self.n_groups[1]
        tops: list = []
        for flat in self._chunks():
            if len(flat) == 1 and self._factors is not None and self._entry_bytes() > self._stream_budget():
                order, values = self._top_by_tiles(int(flat[0]), int(k), by)
            else:
                rel = self._build(flat).reshape(len(flat), -1)
                order = _top_order(rel, int(k), by)
                values = np.take_along_axis(rel, order, axis=1)
            rows, cols = np.divmod(order, q)
            tops.extend(list(zip(r, c, v)) for r, c, v in zip(rows.tolist(), cols.tolist(), values.tolist()))
        if self._is_block:
            n, m = self.shape
            return [tops[i * m:(i + 1) * m] for i in range(n)]
        return tops

    # --------------------------------------------------------------- indexing

    def __getitem__(self, index: Any) -> "PairExplanations":
        """Sub-block ``E[rows]``, ``E[rows, cols]`` (or ``E[ks]`` of chosen pairs)."""
        index = index if isinstance(index, tuple) else (index,)
        shape = self.shape
        if len(index) > len(shape):
            raise IndexError(
                f"Too many indices for explanations of shape {shape}"
                + ("; chosen pairs take one index, E[k] or E[ks]." if len(shape) == 1 else ".")
            )
        picks = [_positions(ix, n) for ix, n in zip(index, shape)] + [np.arange(n) for n in shape[len(index):]]
        out = copy.copy(self)
        if len(shape) == 2:  # a sub-block: rows and columns picked independently
            rows, cols = picks
            entries = np.ix_(rows, cols)
            out._subset(rows, cols)
        else:  # chosen pairs: both sides follow the pair index
            rows = cols = entries = picks[0]
            out.pairs = None if self.pairs is None else [self.pairs[k] for k in rows]
        if self._dense is not None:
            out._dense = self._dense[entries]
        if self._factors is not None:
            out._ia, out._ib = self._ia[rows], self._ib[cols]
        out._similarity = None if self._similarity is None else self._similarity[entries]
        out._error = None if self._error is None else self._error[entries]
        return out

    def _subset(self, rows: np.ndarray, cols: np.ndarray) -> None:
        """Hook: restrict per-row and per-column attributes of a sub-block (see text)."""


#: what :attr:`PairExplanations.relevance` suggests instead of the whole array
_STREAM_HINT = (" Or use what builds no such array: E.pair(i, j), E[rows, cols], E.marginals(), "
                "E.top_interactions(k), or iterate over E.")
#: what :meth:`PairExplanations.pair` and iteration suggest instead of one entry's matrix
_ENTRY_HINT = (" Or do without the p x p' matrices: E.top_interactions(k) streams the strongest "
               "group pairs over tiles, E.marginals() gives one map per side.")
#: what :meth:`PairExplanations.marginals` suggests
_MARGINALS_HINT = (" (marginals: one value per group and entry.) Or take them for a sub-block, "
                   "E[rows, cols].marginals(), or the strongest group pairs with E.top_interactions(k).")
#: cap of one streamed chunk: larger ones do not speed the products up, they only raise the peak memory
_STREAM_BYTES = 2**26


@dataclass(frozen=True)
class _Factors:
    """Per-sample factors of a factored result, shared by its sub-blocks.

    ``a (N, h, p)``, ``b (M, h, p')``: the relevance as computed, kept in its own dtype
    (a float32 model's stays float32: half the memory of a float64 copy); ``norm_a``,
    ``norm_b``: float64 divisors of each sample's relevance and features (the feature
    norms for the cosine kernel, ones for the linear one), applied in float64 to the
    rows a product reads (:meth:`rows_a`, :meth:`rows_b`). ``fa``, ``fb``: the divided
    features; ``sa``, ``sb``: divided relevance summed over groups (``A 1``), float64.
    """

    a: torch.Tensor
    b: torch.Tensor
    norm_a: torch.Tensor
    norm_b: torch.Tensor
    fa: torch.Tensor
    fb: torch.Tensor
    sa: torch.Tensor
    sb: torch.Tensor

    def rows_a(self, idx: np.ndarray) -> torch.Tensor:
        """``a[idx]`` divided by its norms, float64 ``(len(idx), h, p)``."""
        return _divided(self.a, self.norm_a, idx)

    def rows_b(self, idx: np.ndarray) -> torch.Tensor:
        """``b[idx]`` divided by its norms, float64 ``(len(idx), h, p')``."""
        return _divided(self.b, self.norm_b, idx)

    @classmethod
    def of(cls, a: "SampleRelevance", b: "SampleRelevance", kernel: Kernel) -> "_Factors":
        ra, fa, norm_a = _unscaled(a, kernel)
        sa = _group_sums(ra) / norm_a[:, None]
        if b is a:
            return cls(ra, ra, norm_a, norm_a, fa / norm_a[:, None], fa / norm_a[:, None], sa, sa)
        rb, fb, norm_b = _unscaled(b, kernel)
        sb = _group_sums(rb) / norm_b[:, None]
        return cls(ra, rb, norm_a, norm_b, fa / norm_a[:, None], fb / norm_b[:, None], sa, sb)


def _unscaled(rel: SampleRelevance, kernel: Kernel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Relevance (own dtype, CPU), float64 features and the float64 divisor of each sample."""
    f = rel.features.detach().cpu().double()
    if kernel == "cosine":
        norm = f.norm(dim=1).clamp_min(torch.finfo(f.dtype).tiny)
    else:
        norm = torch.ones(len(f), dtype=torch.float64)
    return rel.relevance.detach().cpu(), f, norm


def _divided(r: torch.Tensor, norm: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    idx_t = torch.from_numpy(np.asarray(idx, dtype=np.int64))
    return r[idx_t].double() / norm[idx_t][:, None, None]


def _weighted_rows(r: torch.Tensor, norm: torch.Tensor, idx: np.ndarray, weights: torch.Tensor) -> torch.Tensor:
    """``out[t] = weights[t] @ (r[idx[t]] / norm[idx[t]])``, float64 ``(len(idx), m, p)``, with
    at most a streamed chunk of groups of ``r`` converted to float64 at a time."""
    m, p = weights.shape[1], r.shape[-1]
    out = torch.empty(len(idx), m, p, dtype=torch.float64)
    step = max(1, _STREAM_BYTES // (8 * max(1, r.shape[1])))
    for t, i in enumerate(idx.tolist()):
        for s in range(0, p, step):
            torch.mm(weights[t], r[i, :, s:s + step].double() / norm[i], out=out[t, :, s:s + step])
    return out


def _group_sums(r: torch.Tensor) -> torch.Tensor:
    """``r.sum(-1)`` in float64, converting at most a streamed chunk at a time."""
    if r.dtype == torch.float64:
        return r.sum(-1)
    step = max(1, _STREAM_BYTES // (8 * max(1, r[..., :1].numel())))
    return sum(r[..., s:s + step].double().sum(-1) for s in range(0, r.shape[-1], step))


def scaled_factors(rel: SampleRelevance, kernel: Kernel) -> tuple[torch.Tensor, torch.Tensor]:
    """``(relevance, features)`` in float64, divided by the feature norms for the cosine kernel.

    Pair relevance is then ``A_n^T B_m`` for both kernels (norms held constant). A zero
    feature vector stays zero (similarity 0 with everything).
    """
    r, f, norm = _unscaled(rel, kernel)
    if kernel != "cosine":
        return r.double(), f
    return r.double() / norm[:, None, None], f / norm[:, None]


def _check_top(k: int, by: str) -> None:
    if by not in ("abs", "positive", "negative"):
        raise ValueError(f"by must be 'abs', 'positive' or 'negative', got {by!r}.")
    if int(k) < 0:
        raise ValueError(f"k must be a non-negative number of group pairs, got {k!r}.")


def _top_order(rel: np.ndarray, k: int, by: str) -> np.ndarray:
    """``(c, min(k, L))`` positions of the strongest values of each row of ``rel (c, L)``.

    Strongest first, ties to the lower position. ``torch.topk`` finds them (in parallel);
    rows where it had to choose among values tied at the boundary are redone with a
    stable sort, so the choice never depends on the selection algorithm.
    """
    rel_t = torch.from_numpy(np.ascontiguousarray(rel))
    key = {"abs": rel_t.abs(), "positive": rel_t, "negative": -rel_t}[by]  # larger = stronger
    n_rows, n = key.shape
    k = min(k, n)
    if k == 0:
        return np.zeros((n_rows, 0), dtype=np.int64)
    if k == n:
        return torch.sort(key, dim=1, descending=True, stable=True).indices.numpy()
    vals, idx = torch.topk(key, k, dim=1, largest=True, sorted=False)
    tied = torch.nonzero((key >= vals.min(dim=1).values[:, None]).sum(dim=1) > k).flatten()
    if tied.numel():
        idx[tied] = torch.sort(key[tied], dim=1, descending=True, stable=True).indices[:, :k]
        vals[tied] = torch.gather(key[tied], 1, idx[tied])
    idx_np, vals_np = idx.numpy(), vals.numpy()
    return np.take_along_axis(idx_np, np.lexsort((idx_np, -vals_np), axis=1), axis=1)


def _positions(index: Any, n: int) -> np.ndarray:
    """Positions along an axis of length ``n`` picked by an int, slice, list or mask."""
    if isinstance(index, (int, np.integer)):
        if not -n <= int(index) < n:
            raise IndexError(f"Index {int(index)} is out of range for an axis of {n} entries.")
        return np.array([int(index) % n])
    picked = np.arange(n)[index]
    return np.atleast_1d(picked).astype(np.int64)


def _top(rel: np.ndarray, k: int, by: str) -> list[tuple[int, int, float]]:
    _check_top(k, by)
    order = _top_order(rel.reshape(1, -1), int(k), by)[0]
    rows, cols = np.unravel_index(order, rel.shape)
    return [(int(r), int(c), float(rel[r, c])) for r, c in zip(rows, cols)]


def pair_relevance(a: SampleRelevance, b: SampleRelevance, kernel: Kernel = "linear",
                   pairs: Optional[Sequence[tuple[int, int]]] = None, method: str = "bilrp",
                   max_memory: int = DEFAULT_MAX_MEMORY, labels: Optional[list] = None) -> PairExplanations:
    """Explain the kernel entries between two batches from their per-sample relevance.

    Nothing of size ``p × p'`` per entry is built here: the result keeps both batches'
    relevance and computes entries on demand (see :class:`PairExplanations`). The
    relevance tensors are kept, not copied (a float32 batch stays float32): do not
    change them in place afterwards.

    Parameters
    ----------
    a, b : SampleRelevance
        Relevance of the two batches (same feature map).
    kernel : {"linear", "cosine"}
    pairs : sequence of (i, j), optional
        Explain only these entries (rows of ``a``, rows of ``b``); default: the whole
        ``len(a) × len(b)`` block.
    method : str
        Recorded on the result.
    max_memory : int, default=2 GiB
        Budget of the result's :attr:`~PairExplanations.relevance` array in bytes, see
        :func:`check_result_size`, and of its streamed chunks.
    labels : list of (int, int), optional
        What the result reports as ``pairs`` (e.g. indices into the caller's batches);
        default ``pairs``.

    Returns
    -------
    PairExplanations
    """
    if kernel not in ("linear", "cosine"):
        raise ValueError(f"kernel must be 'linear' or 'cosine', got {kernel!r}.")
    if a.features.shape[1] != b.features.shape[1]:
        raise ValueError(f"Both batches must come from the same feature map (or two maps into one space), "
                         f"got features of {a.features.shape[1]} and {b.features.shape[1]} dimensions.")
    factors = _Factors.of(a, b, kernel)
    if pairs is None:
        ia, ib = np.arange(len(a)), np.arange(len(b))
    else:
        pairs = [(int(i), int(j)) for i, j in pairs]
        ia = np.array([i for i, _ in pairs], dtype=np.int64)
        ib = np.array([j for _, j in pairs], dtype=np.int64)
        for side, idx, n in (("row", ia, len(a)), ("column", ib, len(b))):
            if idx.size and (idx.min() < -n or idx.max() >= n):
                raise IndexError(f"pairs name a {side} out of range [0, {n}).")
        ia, ib = ia % len(a), ib % len(b)
    reported = pairs if labels is None else [(int(i), int(j)) for i, j in labels]
    return PairExplanations._from_factors(factors, ia, ib, a.pooling, b.pooling, kernel, method,
                                          reported, max_memory)
