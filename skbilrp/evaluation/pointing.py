"""Second-order pointing game: does a pair explanation link the parts that correspond?

Flipping (:mod:`.flipping`) measures how fast a similarity falls; it cannot say
whether the parts an explanation links are the ones that match. Here the match is
known by construction:

collages
    Two images, each a ``grid × grid`` collage of the same ``grid²`` photos; the
    second has the tiles permuted (and optionally mirrored or zoomed), so tile ``t``
    of the first shows the same photo as tile ``perm[t]`` of the second
    (:func:`make_collage_pairs`). The truth is that tile correspondence
    (:func:`collage_masks`).

The score of one explanation ``R`` (``(p, q)`` over the groups of both inputs) is
the **share of its positive relevance that lies on true pairs**,
``sum(max(R, 0) * truth) / sum(max(R, 0))`` (:func:`pointing_share`): 1 when every
positive entry links corresponding parts, the share of true cells among all cells
("chance") for a relevance that ignores the content. For collages a second share is
reported: relevance that links a tile to the tile at the *same grid position* of
the other collage ("mirrored"), which a model that matches positions rather than
content would maximise. With a derangement (no tile keeps its place, the default)
the two masks are disjoint.

Groups must not straddle two tiles (:func:`group_tiles` checks it): choose a patch
size that divides the tile side.

:func:`pointing_game` explains the pairs with every method (e.g.
:func:`skbilrp.evaluation.default_methods`) and returns a :class:`PointingResults`.
The text analogue is in :mod:`.text_pointing`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..pairs import Kernel
from ..pooling import PoolingSpec, make_pooling
from .flipping import ExplanationMethod, _mean_sem, explain_pairs
from .groundtruth import _sign_test_greater

__all__ = [
    "pointing_share",
    "PointingResults",
    "score_pointing",
    "CollagePairs",
    "make_collage_pairs",
    "group_tiles",
    "collage_masks",
    "pointing_game",
]


# ------------------------------------------------------------------------------ score


def pointing_share(relevance: np.ndarray, mask: np.ndarray) -> Union[float, np.ndarray]:
    """Share of the positive relevance of a pair explanation that lies on ``mask``.

    Parameters
    ----------
    relevance : ndarray of shape (p, q) or (n, p, q)
        Pair explanations; negative entries are left out (set to 0).
    mask : ndarray of bool, same shape
        The group pairs that count as hits (e.g. corresponding tiles).

    Returns
    -------
    float or ndarray of shape (n,)
        In [0, 1]; NaN for an explanation without any positive entry.

    Raises
    ------
    ValueError
        If the shapes differ.

    Examples
    --------
    >>> rel = np.array([[3.0, -1.0], [1.0, 0.0]])
    >>> pointing_share(rel, np.eye(2, dtype=bool))  # 3 of the positive 3 + 1
    0.75
    """
    rel = np.asarray(relevance, dtype=np.float64)
    hit = np.asarray(mask, dtype=bool)
    if rel.shape != hit.shape or rel.ndim not in (2, 3):
        raise ValueError(f"relevance {rel.shape} and mask {hit.shape} must have the same shape, (p, q) or "
                         "(n, p, q).")
    positive = np.clip(rel, 0.0, None)
    total = positive.sum((-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, (positive * hit).sum((-2, -1)) / np.where(total > 0, total, 1.0), np.nan)
    return float(share) if rel.ndim == 2 else share


@dataclass
class PointingResults:
    """Per-pair pointing shares of several explanation methods on the same pairs.

    Attributes
    ----------
    methods : list of str
    columns : list of str
        The masks scored, e.g. ``["corresponding", "mirrored"]``; the first is the
        truth, the others diagnostics.
    share : dict
        ``share[column][method]``: ndarray ``(n_pairs,)`` of :func:`pointing_share`.
    chance : dict
        ``chance[column]``: ndarray ``(n_pairs,)``, the share of the mask's cells
        among all cells (the expected share of a relevance whose entries are
        exchangeable, e.g. i.i.d. random).
    seconds : dict
        ``seconds[method]``: wall time of that method's explanations.
    """

    methods: list[str]
    columns: list[str]
    share: dict[str, dict[str, np.ndarray]]
    chance: dict[str, np.ndarray]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def n_pairs(self) -> int:
        return int(self.chance[self.columns[0]].size)

    def mean_share(self, column: str, method: str) -> tuple[float, float]:
        """Mean share over pairs (NaNs left out) and its standard error."""
        return _mean_sem(self.share[column][method])

    def wins(self, column: str, method: str, other: str) -> int:
        """On how many pairs ``method`` has a strictly higher share than ``other``."""
        return int(np.sum(self.share[column][method] > self.share[column][other]))

    def sign_test(self, column: str, method: str, other: str) -> float:
        """One-sided sign-test p-value of "``method`` has the higher share more often".

        Pairs with equal shares, or where either share is NaN (no positive
        relevance), are left out; 1.0 when no pair is left.
        """
        a, b = self.share[column][method], self.share[column][other]
        both = np.isfinite(a) & np.isfinite(b)
        return _sign_test_greater(a[both], b[both])

    def to_markdown(self, reference: Union[None, str, Sequence[str]] = None) -> str:
        """A markdown table: mean ± s.e. share per method (rows) and mask (columns).

        Parameters
        ----------
        reference : str or sequence of str, optional
            Methods; adds, per reference, on how many pairs its share of the first
            column (the truth) is higher than each other method's, with the
            one-sided sign-test p-value.
        """
        refs = [] if reference is None else [reference] if isinstance(reference, str) else list(reference)
        truth = self.columns[0]
        head = ["method"] + [f"{c} share" for c in self.columns] + ["time (s)"]
        head += [f"{ref} higher ({truth})" for ref in refs]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for method in self.methods:
            cells = [method] + ["{:.3f} ± {:.3f}".format(*self.mean_share(c, method)) for c in self.columns]
            cells.append(f"{self.seconds.get(method, float('nan')):.1f}")
            cells += ["—" if method == ref else
                      f"{self.wins(truth, ref, method)}/{self.n_pairs} (p={self.sign_test(truth, ref, method):.2g})"
                      for ref in refs]
            lines.append("| " + " | ".join(cells) + " |")
        row = ["chance (expected)"] + [f"{self.chance[c].mean():.3f}" for c in self.columns] + ["—"]
        lines.append("| " + " | ".join(row + ["—"] * len(refs)) + " |")
        return "\n".join(lines)


def score_pointing(explanations: Mapping[str, Sequence[np.ndarray]], masks: Mapping[str, Sequence[np.ndarray]],
                   seconds: Optional[Mapping[str, float]] = None) -> PointingResults:
    """Pointing shares of precomputed explanations against one or more masks.

    Parameters
    ----------
    explanations : mapping of str to sequence of ndarray
        Method name → one ``(p_n, q_n)`` explanation per pair (an ``(n, p, q)``
        array works too; the shapes may differ between pairs, as for texts).
    masks : mapping of str to sequence of ndarray
        Column name → one boolean mask per pair, shaped like the explanation; the
        first column is the truth.
    seconds : mapping of str to float, optional
        Time per method, kept in the results.

    Returns
    -------
    PointingResults

    Raises
    ------
    ValueError
        If a method covers another number of pairs than the masks, or a shape differs.
    """
    n = len(next(iter(masks.values())))
    for name, rel in explanations.items():
        if len(rel) != n:
            raise ValueError(f"The explanations of {name!r} cover {len(rel)} pairs, not {n}.")
    share = {col: {name: np.array([pointing_share(r, m) for r, m in zip(rel, mask)])
                   for name, rel in explanations.items()}
             for col, mask in masks.items()}
    chance = {col: np.array([np.asarray(m, dtype=bool).mean() for m in mask]) for col, mask in masks.items()}
    return PointingResults(list(explanations), list(masks), share, chance, dict(seconds or {}))


# --------------------------------------------------------------------------- collages


@dataclass
class CollagePairs:
    """Pairs of collages of the same photos, and where each photo went.

    Attributes
    ----------
    X, X2 : torch.Tensor of shape (n, C, side, side), float32
        The first and second collage of every pair.
    photos_a, photos_b : ndarray of shape (n, grid²), int
        Index (into the photos given) of the photo in each tile, row-major tiles.
    grid : int
    """

    X: torch.Tensor
    X2: torch.Tensor
    photos_a: np.ndarray
    photos_b: np.ndarray
    grid: int

    def __len__(self) -> int:
        return len(self.X)


def _square(photo: torch.Tensor, fraction: float) -> torch.Tensor:
    """The central square of ``photo`` (C, H, W) whose side is ``fraction`` of the shorter side."""
    h, w = photo.shape[-2:]
    s = max(1, int(round(fraction * min(h, w))))
    top, left = (h - s) // 2, (w - s) // 2
    return photo[:, top:top + s, left:left + s]


def _tile(photo: torch.Tensor, tile: int, fraction: float, flip: bool) -> torch.Tensor:
    square = _square(photo, fraction)[None].float()
    out = F.interpolate(square, size=(tile, tile), mode="bilinear", antialias=True, align_corners=False)[0]
    return out.flip(-1) if flip else out


def _derangement(rng: np.random.Generator, n: int) -> np.ndarray:
    while True:
        perm = rng.permutation(n)
        if n < 2 or np.all(perm != np.arange(n)):
            return perm


def _assemble(tiles: list[torch.Tensor], grid: int) -> torch.Tensor:
    rows = [torch.cat(tiles[r * grid:(r + 1) * grid], dim=-1) for r in range(grid)]
    return torch.cat(rows, dim=-2)


def _collage_photos(photos: Sequence[np.ndarray], side: int, grid: int) -> list[torch.Tensor]:
    """The photos as float32 tensors, checked for a ``grid × grid`` collage of ``side`` px."""
    if len(photos) < grid * grid:
        raise ValueError(f"A {grid}×{grid} collage needs {grid * grid} distinct photos, got {len(photos)}.")
    if side % grid:
        raise ValueError(f"side {side} is not a multiple of grid {grid}; tiles must have equal sides.")
    pics = [torch.as_tensor(np.asarray(p, dtype=np.float32)) for p in photos]
    if any(p.ndim != 3 or p.shape[0] != pics[0].shape[0] for p in pics):
        raise ValueError("photos must all have shape (C, H, W) with the same C.")
    return pics


def make_collage_pairs(photos: Sequence[np.ndarray], n_pairs: int, side: int, grid: int = 2,
                       derangement: bool = True, flip: float = 0.0, rescale: Optional[tuple[float, float]] = None,
                       random_state: Union[None, int, np.random.Generator] = None) -> CollagePairs:
    """Pairs of collages of the same ``grid²`` photos, the second with the tiles permuted.

    Every tile of the first collage shows the central square of a photo resized to
    ``side // grid`` pixels; the second collage shows the same photos in a random
    permutation of the tiles, each optionally mirrored (probability ``flip``) and
    zoomed in (a central square of a random fraction in ``rescale`` of the photo).

    Parameters
    ----------
    photos : sequence of ndarray of shape (C, H, W)
        At least ``grid²`` photos, all with the same channels, values as the model
        expects them; each pair draws ``grid²`` distinct ones.
    n_pairs : int
    side : int
        Collage side in pixels, a multiple of ``grid``.
    grid : int, default=2
    derangement : bool, default=True
        No tile keeps its grid position, so "corresponding" and "mirrored"
        (same position) are disjoint.
    flip : float, default=0.0
        Probability that a tile of the second collage is mirrored left-right.
    rescale : (float, float), optional
        Range of the fraction of the photo's central square shown by a tile of the
        second collage (1 = the whole square, as in the first); default no zoom.
    random_state : None, int or numpy.random.Generator

    Returns
    -------
    CollagePairs

    Raises
    ------
    ValueError
        For too few photos, a side that is not a multiple of ``grid``, photos with
        different channels, or a ``flip`` / ``rescale`` out of range.
    """
    k = grid * grid
    if not 0.0 <= flip <= 1.0:
        raise ValueError(f"flip is a probability in [0, 1], got {flip}.")
    if rescale is not None and not 0.0 < rescale[0] <= rescale[1] <= 1.0:
        raise ValueError(f"rescale must be a range (lo, hi) with 0 < lo <= hi <= 1, got {rescale}.")
    pics = _collage_photos(photos, side, grid)
    rng = np.random.default_rng(random_state)
    tile = side // grid
    X, X2, idx_a, idx_b = [], [], [], []
    for _ in range(n_pairs):
        chosen = rng.choice(len(pics), size=k, replace=False)
        perm = _derangement(rng, k) if derangement else rng.permutation(k)
        order_b = np.empty(k, dtype=np.int64)
        order_b[perm] = chosen  # tile t of the first goes to tile perm[t] of the second
        X.append(_assemble([_tile(pics[i], tile, 1.0, False) for i in chosen], grid))
        fractions = rng.uniform(*rescale, size=k) if rescale is not None else np.ones(k)
        flips = rng.random(k) < flip
        X2.append(_assemble([_tile(pics[i], tile, f, m) for i, f, m in zip(order_b, fractions, flips)], grid))
        idx_a.append(chosen)
        idx_b.append(order_b)
    return CollagePairs(torch.stack(X), torch.stack(X2), np.stack(idx_a), np.stack(idx_b), grid)


def group_tiles(pooling: PoolingSpec, sample_shape: tuple, grid: int, channel_axis: Optional[int] = 0) -> np.ndarray:
    """Tile (row-major, from ``0`` to ``grid² - 1``) of every group of ``pooling``.

    Parameters
    ----------
    pooling : None, int, tuple or array
        Groups of input positions, as given to the explainer.
    sample_shape : tuple
        Shape of one collage, e.g. ``(3, side, side)``.
    grid : int
    channel_axis : int or None, default=0

    Returns
    -------
    ndarray of shape (n_groups,), int

    Raises
    ------
    ValueError
        If a group holds pixels of two tiles (the pair relevance of such a group
        cannot be attributed to one tile pair: choose a patch that divides the tile
        side), or the image is not square in ``grid`` equal tiles.
    """
    pool = make_pooling(pooling, tuple(sample_shape), channel_axis)
    labels = pool.labels
    if labels.ndim != 2 or labels.shape[0] != labels.shape[1] or labels.shape[0] % grid:
        raise ValueError(f"Collages are square images of {grid}×{grid} equal tiles; got positions {labels.shape}.")
    tile = labels.shape[0] // grid
    rows, cols = np.indices(labels.shape) // tile
    tiles = (rows * grid + cols).ravel()
    flat = labels.ravel()
    _, first_pixel = np.unique(flat, return_index=True)
    first = tiles[first_pixel]  # the tile of each group's first pixel
    straddling = np.unique(flat[first[flat] != tiles])
    if straddling.size:
        raise ValueError(f"Groups {straddling[:5].tolist()} (of {straddling.size}) hold pixels of two tiles of "
                         f"{tile} px; use a patch size that divides {tile}.")
    return first


def collage_masks(pairs: CollagePairs, pooling: PoolingSpec, channel_axis: Optional[int] = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """True and same-position group pairs of every collage pair.

    Parameters
    ----------
    pairs : CollagePairs
    pooling : None, int, tuple or array
    channel_axis : int or None, default=0

    Returns
    -------
    corresponding : ndarray of shape (n, p, q), bool
        Group ``g`` of the first and ``g'`` of the second collage show the same photo.
    mirrored : ndarray of shape (n, p, q), bool
        ``g`` and ``g'`` lie in tiles at the same grid position.
    """
    tiles = group_tiles(pooling, tuple(pairs.X.shape[1:]), pairs.grid, channel_axis)
    photo_a = pairs.photos_a[:, tiles]  # (n, p)
    photo_b = pairs.photos_b[:, tiles]  # (n, q)
    corresponding = photo_a[:, :, None] == photo_b[:, None, :]
    mirrored = np.broadcast_to(tiles[:, None] == tiles[None, :], corresponding.shape).copy()
    return corresponding, mirrored


def pointing_game(model: nn.Module, pairs: CollagePairs,
                  methods: Mapping[str, Union[ExplanationMethod, np.ndarray]], pooling: PoolingSpec,
                  kernel: Kernel = "linear", channel_axis: Optional[int] = 0) -> PointingResults:
    """Explain every collage pair with every method and score the tile correspondence.

    Parameters
    ----------
    model : nn.Module
        Feature extractor ``phi`` in eval mode.
    pairs : CollagePairs
        From :func:`make_collage_pairs`.
    methods : mapping of str to ExplanationMethod or ndarray
        E.g. :func:`skbilrp.evaluation.default_methods`; an ndarray ``(n, p, q)``
        gives precomputed explanations.
    pooling : None, int, tuple or array
        Groups; none may straddle two tiles (:func:`group_tiles`).
    kernel : {"linear", "cosine"}, default="linear"
    channel_axis : int or None, default=0

    Returns
    -------
    PointingResults
        Columns ``"corresponding"`` (the truth) and ``"mirrored"``.
    """
    corresponding, mirrored = collage_masks(pairs, pooling, channel_axis)
    to_compute = {name: m for name, m in methods.items() if not isinstance(m, np.ndarray)}
    computed, seconds = explain_pairs(model, list(zip(pairs.X, pairs.X2)), to_compute, pooling, kernel,
                                      channel_axis)
    explanations = {name: computed.get(name, m) for name, m in methods.items()}
    return score_pointing(explanations, {"corresponding": corresponding, "mirrored": mirrored}, seconds)
