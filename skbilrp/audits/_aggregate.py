"""Bounded-memory sums of many pair explanations: marginal shares and region blocks.

For entry ``R = A^T B`` (``A (h, p)``, ``B (h, q)`` the factors of
:class:`~skbilrp.pairs.PairExplanations`), everything the dataset audit needs is a
contraction of the factors, never the ``p × q`` matrix:

- total ``sum R = (A 1)^T (B 1)``;
- marginals ``R 1 = A^T (B 1)`` and ``R^T 1 = B^T (A 1)``;
- region blocks ``P_r^T R P_r = (A P_r)^T (B P_r)`` with ``P_r`` the ``p × n_regions``
  region membership of the groups.

Entries are processed in chunks, so memory is ``O(chunk · h · p)`` whatever their number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..pairs import PairExplanations

#: entries whose float64 factors one chunk holds
_CHUNK = 256


@dataclass
class GroupSums:
    """Weighted means over a group's entries (each entry's values divided by its total)."""

    share: np.ndarray  # (p,) mean of (R 1 + R^T 1) / (2 sum R), per group of positions
    region_pairs: np.ndarray  # (r, r) mean of the symmetrised region block / sum R
    n_used: int  # entries with a non-zero total
    conservation_error: float  # max |k - sum R| / |k|


def aggregate(expl: PairExplanations, weights: np.ndarray, group_region: np.ndarray, n_regions: int) -> GroupSums:
    """Mean marginal share and region-pair share over the entries of ``expl`` (chosen pairs).

    Both sides of a pair are read on the same position grid, so the share of a pair
    averages its two marginals: the map then does not depend on which sample is the
    query. An entry whose relevance sums to zero has no shares and is left out.
    """
    f = expl._factors
    index = torch.from_numpy(np.asarray(group_region, dtype=np.int64))
    weights = np.asarray(weights, dtype=np.float64)
    sim = np.asarray(expl.similarity, dtype=np.float64)
    share = torch.zeros(expl.n_groups[0], dtype=torch.float64)
    blocks = torch.zeros(n_regions, n_regions, dtype=torch.float64)
    used, total_weight, worst = 0, 0.0, 0.0
    for start in range(0, len(expl._ia), _CHUNK):
        a = f.rows_a(expl._ia[start:start + _CHUNK])  # (c, h, p) float64
        b = f.rows_b(expl._ib[start:start + _CHUNK])
        sa, sb = a.sum(-1), b.sum(-1)
        total = (sa * sb).sum(-1)  # sum of each entry's relevance
        k = torch.from_numpy(sim[start:start + _CHUNK])
        err = (k - total).abs() / k.abs().clamp_min(torch.finfo(torch.float64).tiny)
        worst = max(worst, float(err.max()))
        ok = total.abs() > torch.finfo(torch.float64).eps * (sa.abs() * sb.abs()).sum(-1)
        w = torch.from_numpy(weights[start:start + _CHUNK]) * ok / torch.where(ok, total, 1.0)
        marg = torch.einsum("chp,ch->cp", a, sb) + torch.einsum("chp,ch->cp", b, sa)
        share += 0.5 * (w[:, None] * marg).sum(0)
        ra = _regions(a, index, n_regions)
        rb = _regions(b, index, n_regions)
        block = torch.einsum("chr,chs,c->rs", ra, rb, w)
        blocks += 0.5 * (block + block.T)
        used += int(ok.sum())
        total_weight += float((torch.from_numpy(weights[start:start + _CHUNK]) * ok).sum())
    scale = 1.0 / total_weight if total_weight > 0 else float("nan")
    return GroupSums((share * scale).numpy(), (blocks * scale).numpy(), used, worst)


def _regions(r: torch.Tensor, index: torch.Tensor, n_regions: int) -> torch.Tensor:
    """``r P``: relevance ``(c, h, p)`` summed into regions, ``(c, h, n_regions)``."""
    out = r.new_zeros(r.shape[0], r.shape[1], n_regions)
    return out.index_add_(2, index, r)


def signal_share(x: np.ndarray, pooling_positions) -> np.ndarray:
    """Per sample, ``|x|`` summed over channels per position, as a share of its total ``(n, n_positions)``.

    A blank sample (no signal) counts as uniform.
    """
    pos = pooling_positions(torch.from_numpy(np.abs(np.asarray(x, dtype=np.float64)))).numpy()
    total = pos.sum(axis=1, keepdims=True)
    uniform = np.full_like(pos, 1.0 / max(pos.shape[1], 1))
    return np.where(total > 0, pos / np.where(total > 0, total, 1.0), uniform)
