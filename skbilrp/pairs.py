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

__all__ = ["PairExplanation", "PairExplanations", "pair_relevance", "Kernel"]

Kernel = Literal["linear", "cosine"]


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
                   pairs: Optional[Sequence[tuple[int, int]]] = None, method: str = "bilrp") -> PairExplanations:
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
