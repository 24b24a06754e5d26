"""Pair relevance: the BiLRP explanation of kernel entries.

``R[n, m] = A_n^T B_m`` from cached per-sample relevance, so explaining an
``N × M`` block costs ``N + M`` relevance computations and cheap products.
Cosine similarity treats the norms as constants: ``R_cos = R_dot / (|phi| |phi'|)``,
which sums exactly to the cosine when the rules conserve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import numpy as np
import torch

from .pooling import Pooling
from .relevance import SampleRelevance

__all__ = ["PairExplanation", "PairExplanations", "pair_relevance", "check_result_size", "Kernel",
           "DEFAULT_MAX_MEMORY"]

Kernel = Literal["linear", "cosine"]

#: default budget of one materialised explanation array, in bytes
DEFAULT_MAX_MEMORY = 2 * 2**30


def check_result_size(n_entries: int, groups_a: int, groups_b: int, max_memory: int,
                      bytes_per_value: int = 8) -> None:
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

    Raises
    ------
    MemoryError
        Naming the size asked for and the ways to ask for less.
    """
    n_values = int(n_entries) * int(groups_a) * int(groups_b)
    needed = n_values * int(bytes_per_value)
    if needed > max_memory:
        raise MemoryError(
            f"Explaining {n_entries} kernel entries on {groups_a} x {groups_b} groups of input "
            f"positions builds {n_values:.3g} relevance values ({needed / 2**30:.1f} GiB), over "
            f"the budget of {max_memory / 2**30:.1f} GiB. Ask for less: pass pairs=[(i, j), ...] "
            "for the entries you need, fewer rows, or a coarser pooling (e.g. pooling=8 for "
            "8-pixel patches); or raise max_memory if the machine has the memory."
        )


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
        """The ``k`` strongest group pairs as ``(g, g', relevance)``, strongest first."""
        return _top(self.relevance, k, by)


@dataclass
class PairExplanations:
    """BiLRP explanations of many kernel entries.

    Attributes
    ----------
    relevance : ndarray
        ``(n, m, p, p')`` for a block of entries, or ``(n_pairs, p, p')`` when
        ``pairs`` was given.
    similarity, conservation_error : ndarray
        ``(n, m)`` or ``(n_pairs,)``.
    pairs : list of (int, int) or None
        The chosen entries, or None for a full block.
    pooling_a, pooling_b : Pooling
    kernel, method : str
    """

    relevance: np.ndarray
    similarity: np.ndarray
    conservation_error: np.ndarray
    pooling_a: Pooling
    pooling_b: Pooling
    kernel: str = "linear"
    method: str = "bilrp"
    pairs: Optional[list] = field(default=None)

    def __len__(self) -> int:
        return len(self.similarity)

    def pair(self, i: int, j: Optional[int] = None) -> PairExplanation:
        """One entry: ``pair(i, j)`` of a block, or ``pair(k)`` for the k-th chosen pair."""
        idx = (i,) if j is None else (i, j)
        return PairExplanation(self.relevance[idx], float(self.similarity[idx]),
                               float(self.conservation_error[idx]), self.pooling_a, self.pooling_b,
                               self.kernel, self.method)

    def marginals(self) -> tuple[np.ndarray, np.ndarray]:
        """First-order maps: sums over the partner axis, ``(..., p)`` and ``(..., p')``."""
        return self.relevance.sum(axis=-1), self.relevance.sum(axis=-2)

    def top_interactions(self, k: int = 10, by: Literal["abs", "positive", "negative"] = "abs") -> list[list]:
        """Per entry, the ``k`` strongest group pairs ``(g, g', relevance)``."""
        flat = self.relevance.reshape(-1, *self.relevance.shape[-2:])
        tops = [_top(r, k, by) for r in flat]
        if self.pairs is None and self.relevance.ndim == 4:
            n, m = self.relevance.shape[:2]
            return [tops[i * m:(i + 1) * m] for i in range(n)]
        return tops


def _top(rel: np.ndarray, k: int, by: str) -> list[tuple[int, int, float]]:
    if by not in ("abs", "positive", "negative"):
        raise ValueError(f"by must be 'abs', 'positive' or 'negative', got {by!r}.")
    key = {"abs": np.abs(rel), "positive": rel, "negative": -rel}[by]
    order = np.argsort(key, axis=None)[::-1][: int(k)]
    rows, cols = np.unravel_index(order, rel.shape)
    return [(int(r), int(c), float(rel[r, c])) for r, c in zip(rows, cols)]


def pair_relevance(a: SampleRelevance, b: SampleRelevance, kernel: Kernel = "linear",
                   pairs: Optional[Sequence[tuple[int, int]]] = None, method: str = "bilrp",
                   max_memory: int = DEFAULT_MAX_MEMORY) -> PairExplanations:
    """Explain the kernel entries between two batches from their per-sample relevance.

    Parameters
    ----------
    a, b : SampleRelevance
        Relevance of the two batches (same feature map).
    kernel : {"linear", "cosine"}
    pairs : sequence of (i, j), optional
        Explain only these entries; default: the whole ``len(a) × len(b)`` block.
    method : str
        Recorded on the result.
    max_memory : int, default=2 GiB
        Budget of the explanation array in bytes, see :func:`check_result_size`.

    Returns
    -------
    PairExplanations
    """
    if kernel not in ("linear", "cosine"):
        raise ValueError(f"kernel must be 'linear' or 'cosine', got {kernel!r}.")
    if a.features.shape[1] != b.features.shape[1]:
        raise ValueError("Both batches must come from the same feature map.")
    ra, rb = a.relevance, b.relevance
    fa, fb = a.features, b.features
    n_entries = len(a) * len(b) if pairs is None else len(pairs)
    # the product is built in the relevance dtype, then copied to float64
    check_result_size(n_entries, ra.shape[-1], rb.shape[-1], max_memory, 8 + ra.element_size())
    if kernel == "cosine":
        na = fa.norm(dim=1).clamp_min(torch.finfo(fa.dtype).tiny)
        nb = fb.norm(dim=1).clamp_min(torch.finfo(fb.dtype).tiny)
        ra, fa = ra / na[:, None, None], fa / na[:, None]
        rb, fb = rb / nb[:, None, None], fb / nb[:, None]
    if pairs is None:
        rel = torch.einsum("nhp,mhq->nmpq", ra, rb)
        sim = fa @ fb.T
    else:
        pairs = [(int(i), int(j)) for i, j in pairs]
        idx_a = torch.tensor([i for i, _ in pairs], dtype=torch.long)
        idx_b = torch.tensor([j for _, j in pairs], dtype=torch.long)
        rel = torch.einsum("khp,khq->kpq", ra[idx_a], rb[idx_b])
        sim = (fa[idx_a] * fb[idx_b]).sum(1)
    rel_np = rel.double().cpu().numpy()
    sim_np = sim.double().cpu().numpy()
    err = sim_np - rel_np.sum(axis=(-2, -1))
    return PairExplanations(rel_np, sim_np, err, a.pooling, b.pooling, kernel, method, pairs)
