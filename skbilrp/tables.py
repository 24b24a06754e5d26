"""Synthetic number tables and a bigram network: BiLRP's table-similarity experiment offline.

The BiLRP paper compares pages of historical astronomical tables with a "bigram
network": a digit detector, then products of the detections of two horizontally
adjacent digits, summed over the page into a histogram of digit pairs; two tables are
similar when their histograms overlap. Here the tables are synthetic: grids of 2- and
3-digit numbers drawn with scikit-learn's 8×8 digit glyphs, in pairs that share known
numbers, so that the explanation can be checked against the ground truth.

Layout: every table row is ``ROW_PITCH`` pixels high (a glyph and two blank rows);
every cell is one glyph wide; a number is right-aligned in a field of
``FIELD_WIDTH`` cells and fields are separated by one blank cell. The digit detector
reads each cell exactly once (an 8×8 kernel with the cell pitch as stride).

The product of two detections is a product of two relevance-carrying tensors, which
the engine's operator table splits uniformly (``aten.mul.Tensor``, see the docs page
"Operator table"): half of the relevance of ``a * b`` goes through each factor,
``u_out = (u_a ⊙ b + a ⊙ u_b) / 2``, which is linear in the incoming flows and
conserves, since ``(a b + a b) / 2 = a b``.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from .evaluation.groundtruth import precision_at_k
from .explainer import Explainer
from .models.digits import digits_cnn, load_digits_images
from .pairs import PairExplanations
from .rules import RuleSpec

__all__ = [
    "GLYPH",
    "ROW_PITCH",
    "FIELD_WIDTH",
    "Table",
    "TablePair",
    "render_table",
    "make_table_pair",
    "cell_labels",
    "bigram_cells",
    "same_bigram_mask",
    "top_interaction_precision",
    "DigitDetector",
    "train_digit_detector",
    "BigramProduct",
    "BigramNetwork",
    "bigram_network",
    "cnn_table_features",
    "explain_table_pairs",
]

#: side of a digit glyph (scikit-learn's digits), in pixels
GLYPH = 8
#: height of a table row: one glyph and two blank pixel rows
ROW_PITCH = 10
#: cells per number field (numbers have 2 or 3 digits, right-aligned)
FIELD_WIDTH = 3

BLANK = -1


# ------------------------------------------------------------------------------ tables


@dataclass
class Table:
    """One synthetic table.

    Attributes
    ----------
    digits : ndarray of shape (rows, cells), int
        The digit in every cell, ``-1`` for blank cells.
    image : ndarray of shape (1, rows * ROW_PITCH, cells * GLYPH), float32
        The rendered table, ink in [0, 1] on a zero background.
    """

    digits: np.ndarray
    image: np.ndarray


@dataclass
class TablePair:
    """Two tables that share some numbers.

    Attributes
    ----------
    a, b : Table
    shared : list of (str, (int, int), (int, int))
        Each number copied from ``a`` to ``b``, with its (row, field) in ``a`` and in ``b``.
    """

    a: Table
    b: Table
    shared: list


def _layout(numbers: np.ndarray) -> np.ndarray:
    """Digit grid ``(rows, cells)`` of a grid of number strings ``(rows, fields)``."""
    rows, fields = numbers.shape
    digits = np.full((rows, fields * (FIELD_WIDTH + 1) - 1), BLANK, dtype=np.int64)
    for r in range(rows):
        for f in range(fields):
            s = numbers[r, f]
            end = f * (FIELD_WIDTH + 1) + FIELD_WIDTH
            digits[r, end - len(s):end] = [int(ch) for ch in s]
    return digits


def render_table(digits: np.ndarray, glyphs: np.ndarray, labels: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Draw a digit grid with glyphs picked at random for every occurrence.

    Parameters
    ----------
    digits : ndarray of shape (rows, cells), int
        Digit per cell, ``-1`` for blank.
    glyphs : ndarray of shape (n, 1, 8, 8)
        Glyph images in [0, 1].
    labels : ndarray of shape (n,)
        Digit of each glyph.
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of shape (1, rows * ROW_PITCH, cells * GLYPH), float32
    """
    rows, cells = digits.shape
    image = np.zeros((1, rows * ROW_PITCH, cells * GLYPH), dtype=np.float32)
    by_digit = [np.flatnonzero(labels == d) for d in range(10)]
    for r, c in zip(*np.nonzero(digits >= 0)):
        glyph = glyphs[rng.choice(by_digit[digits[r, c]])][0]
        image[0, r * ROW_PITCH:r * ROW_PITCH + GLYPH, c * GLYPH:(c + 1) * GLYPH] = glyph
    return image


def _random_number(rng: np.random.Generator) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, size=rng.integers(2, FIELD_WIDTH + 1)))


def _bigrams(number: str) -> set:
    return {number[i:i + 2] for i in range(len(number) - 1)}


@lru_cache(maxsize=2)
def _glyphs(subset: str) -> tuple[np.ndarray, np.ndarray]:
    return load_digits_images(subset)


def make_table_pair(rows: int = 5, fields: int = 3, n_shared: int = 3, same_position: float = 0.5,
                    random_state: Union[None, int, np.random.Generator] = None,
                    glyph_subset: str = "test") -> TablePair:
    """Two random tables sharing ``n_shared`` numbers, and no other digit pair.

    Table ``a`` holds random 2- and 3-digit numbers. ``n_shared`` of them are copied
    into ``b``, each at the same (row, field) with probability ``same_position`` and
    elsewhere otherwise. The other numbers of ``b`` are drawn so that none of their
    adjacent digit pairs (bigrams) occurs in ``a``: the shared bigrams are exactly
    those of the copied numbers. Every digit occurrence gets its own glyph, so copies
    look different.

    Parameters
    ----------
    rows, fields : int, default=5, 3
        Table size in rows and numbers per row.
    n_shared : int, default=3
        Numbers copied from ``a`` to ``b``; at most ``rows * fields``.
    same_position : float, default=0.5
        Probability that a copy keeps its position.
    random_state : None, int or numpy.random.Generator
    glyph_subset : {"test", "train", "all"}, default="test"
        Which side of :data:`skbilrp.models.digits.DIGITS_SPLIT` the glyphs come from
        (the detector of :func:`bigram_network` trains on "train").

    Returns
    -------
    TablePair

    Raises
    ------
    ValueError
        For sizes that cannot hold the shared numbers, or a table ``a`` whose
        bigrams leave no way to fill ``b`` (use fewer rows or fields).
    """
    if rows < 1 or fields < 1:
        raise ValueError(f"rows and fields must be positive, got {rows} and {fields}.")
    if not 0 <= n_shared <= rows * fields:
        raise ValueError(f"n_shared must be in [0, rows * fields = {rows * fields}], got {n_shared}.")
    rng = np.random.default_rng(random_state)
    glyphs, labels = _glyphs(glyph_subset)
    numbers_a = np.array([[_random_number(rng) for _ in range(fields)] for _ in range(rows)], dtype=object)
    taken = set().union(*(_bigrams(s) for s in numbers_a.ravel()))
    numbers_b = np.empty_like(numbers_a)
    sources = rng.choice(rows * fields, size=n_shared, replace=False)
    free = list(rng.permutation(rows * fields))
    shared = []
    for src in sources:
        dst = src if (rng.random() < same_position and src in free) else free[0]
        free.remove(dst)
        pos_a, pos_b = divmod(int(src), fields), divmod(int(dst), fields)
        numbers_b[pos_b] = numbers_a[pos_a]
        shared.append((numbers_a[pos_a], pos_a, pos_b))
    for dst in free:
        for _ in range(10_000):
            candidate = _random_number(rng)
            if not _bigrams(candidate) & taken:
                break
        else:  # pragma: no cover - needs a table holding nearly all 100 bigrams
            raise ValueError("Table a holds too many bigrams to fill table b; use a smaller table.")
        numbers_b[divmod(int(dst), fields)] = candidate
    tables = []
    for numbers in (numbers_a, numbers_b):
        digits = _layout(numbers)
        tables.append(Table(digits, render_table(digits, glyphs, labels, rng)))
    return TablePair(tables[0], tables[1], shared)


def cell_labels(digits_shape: tuple[int, int]) -> np.ndarray:
    """Pooling labels with one group per cell, row-major (``skbilrp`` ``pooling=``).

    Parameters
    ----------
    digits_shape : (int, int)
        ``(rows, cells)`` of the table.

    Returns
    -------
    ndarray of shape (rows * ROW_PITCH, cells * GLYPH), int
        Group ``r * cells + c`` for the pixels of cell ``(r, c)`` (the blank pixel rows
        below a glyph belong to its cell).
    """
    rows, cells = digits_shape
    r = np.arange(rows * ROW_PITCH) // ROW_PITCH
    c = np.arange(cells * GLYPH) // GLYPH
    return r[:, None] * cells + c[None, :]


def bigram_cells(digits: np.ndarray) -> dict[tuple[int, int], set]:
    """Cells (flat, row-major) taking part in each digit pair ``(a, b)`` of a table.

    A bigram ``(a, b)`` is digit ``a`` in cell ``(r, c)`` followed by digit ``b`` in
    ``(r, c + 1)``; both cells belong to it.
    """
    digits = np.asarray(digits)
    cells = digits.shape[1]
    out: dict[tuple[int, int], set] = {}
    left, right = digits[:, :-1], digits[:, 1:]
    for r, c in zip(*np.nonzero((left >= 0) & (right >= 0))):
        key = (int(left[r, c]), int(right[r, c]))
        out.setdefault(key, set()).update({r * cells + c, r * cells + c + 1})
    return out


def same_bigram_mask(digits_a: np.ndarray, digits_b: np.ndarray) -> np.ndarray:
    """Which cell pairs of two tables take part in occurrences of the same bigram.

    Parameters
    ----------
    digits_a, digits_b : ndarray of shape (rows, cells)
        Digit grids (:attr:`Table.digits`).

    Returns
    -------
    ndarray of shape (n_cells_a, n_cells_b), bool
    """
    cells_a, cells_b = bigram_cells(digits_a), bigram_cells(digits_b)
    mask = np.zeros((np.asarray(digits_a).size, np.asarray(digits_b).size), dtype=bool)
    for key in cells_a.keys() & cells_b.keys():
        mask[np.ix_(sorted(cells_a[key]), sorted(cells_b[key]))] = True
    return mask


def top_interaction_precision(relevance: np.ndarray, mask: np.ndarray, k: int = 10) -> float:
    """Share of the ``k`` most relevant cell pairs that ``mask`` marks.

    :func:`skbilrp.evaluation.precision_at_k` for one explanation: pairs tied with
    the ``k``-th value count with the mean of ``mask`` over the tied block.

    Parameters
    ----------
    relevance : ndarray of shape (p, q)
        A pair explanation pooled by :func:`cell_labels`.
    mask : ndarray of shape (p, q), bool
        E.g. :func:`same_bigram_mask`.
    k : int, default=10

    Returns
    -------
    float in [0, 1]
    """
    return float(precision_at_k(relevance, mask, k))


# ---------------------------------------------------------------------------- networks


class DigitDetector(nn.Module):
    """Bias-free per-cell digit detector: 10 non-negative digit-presence maps.

    ``conv(1→hidden, 8×8, stride (ROW_PITCH, GLYPH))`` ReLU ``conv(hidden→10, 1×1)``
    ReLU: a two-layer perceptron applied to every cell of the table. Without biases a
    blank cell gives exactly zero.

    Parameters
    ----------
    hidden : int, default=1024
    """

    def __init__(self, hidden: int = 1024) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, hidden, GLYPH, stride=(ROW_PITCH, GLYPH), bias=False)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(hidden, 10, 1, bias=False)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Presence maps ``(N, 10, R, C)`` of tables ``(N, 1, H, W)``."""
        return self.relu2(self.conv2(self.relu1(self.conv1(x))))


def train_digit_detector(hidden: int = 1024, alpha: float = 10.0, seed: int = 0) -> DigitDetector:
    """Fit :class:`DigitDetector` to the training split of scikit-learn's digits.

    The first layer is a fixed random projection (seeded Gaussian weights, then
    ReLU); the second layer is fitted in closed form by ridge regression of one-hot
    targets on those features, so a detection is about 1 for the drawn digit and
    about 0 otherwise (99.1 % test accuracy with the defaults). Deterministic, and
    instant: no iterative training.

    Parameters
    ----------
    hidden : int, default=1024
        Random ReLU features per cell.
    alpha : float, default=10.0
        Ridge penalty.
    seed : int, default=0
        Seed of the random projection.

    Returns
    -------
    DigitDetector
        In eval mode.
    """
    X, y = load_digits_images("train")
    glyphs = torch.from_numpy(X).flatten(1).double()
    target = torch.eye(10, dtype=torch.float64)[torch.from_numpy(y)]
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(hidden, GLYPH * GLYPH, generator=gen, dtype=torch.float64)
    features = (glyphs @ w1.T).relu()
    gram = features.T @ features + alpha * torch.eye(hidden, dtype=torch.float64)
    w2 = torch.linalg.solve(gram, features.T @ target).T
    model = DigitDetector(hidden)
    with torch.no_grad():
        model.conv1.weight.copy_(w1.view_as(model.conv1.weight))
        model.conv2.weight.copy_(w2.view_as(model.conv2.weight))
    return model.eval()


class BigramProduct(nn.Module):
    """Products of digit detections at horizontally adjacent cells.

    Maps presence maps ``d`` of shape ``(N, 10, R, C)`` to ``(N, 10, 10, R, C - 1)``
    with ``out[n, a, b, r, c] = d[n, a, r, c] * d[n, b, r, c + 1]``: the evidence for
    digit ``a`` followed by digit ``b``. Relevance splits evenly between the two
    factors (the uniform rule for products of two carrying tensors).
    """

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return d[..., :-1][:, :, None] * d[..., 1:][:, None, :]


class BigramNetwork(nn.Module):
    """Table features: a histogram of the 100 digit pairs, ``(N, 1, H, W) -> (N, 100)``.

    ``detector`` gives presence maps, :class:`BigramProduct` the pair evidence at every
    position, summed over the table. The linear kernel of two tables then counts
    (softly) the digit pairs they share.

    Parameters
    ----------
    detector : nn.Module
        Maps a table ``(N, 1, H, W)`` to presence maps ``(N, 10, R, C)``.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        self.bigram = BigramProduct()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bigram(self.detector(x)).sum(dim=(3, 4)).flatten(1)


@lru_cache(maxsize=4)
def _trained_detector(hidden: int, seed: int) -> DigitDetector:
    return train_digit_detector(hidden=hidden, seed=seed)


def bigram_network(hidden: int = 1024, seed: int = 0) -> BigramNetwork:
    """A :class:`BigramNetwork` with a digit detector fitted by :func:`train_digit_detector`.

    Parameters
    ----------
    hidden : int, default=1024
        Hidden units of the detector.
    seed : int, default=0
        Seed of the detector's random projection.

    Returns
    -------
    BigramNetwork
        In eval mode; its explanations conserve exactly with ``rules="zero"``.
    """
    return BigramNetwork(copy.deepcopy(_trained_detector(hidden, seed))).eval()


def cnn_table_features() -> nn.Sequential:
    """A generic similarity for comparison: digits-CNN conv features averaged over the table.

    The convolutional part of :func:`skbilrp.models.digits_cnn` (trained weights,
    bias-free) slides over the whole table; its 64 channels are averaged over
    positions. It knows strokes and digit shapes, not which digit follows which.

    Returns
    -------
    nn.Sequential
        ``(N, 1, H, W) -> (N, 64)``, in eval mode.
    """
    convs = [(name, module) for name, module in digits_cnn().named_children()
             if name not in ("flatten", "fc", "relu4")]
    return nn.Sequential(OrderedDict(
        convs + [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())])).eval()


def explain_table_pairs(model: nn.Module, pairs: list, rules: RuleSpec = "zero",
                        dtype: Optional[torch.dtype] = None) -> PairExplanations:
    """BiLRP explanations of ``k(a, b)`` (linear kernel) for table pairs, one group per cell.

    Parameters
    ----------
    model : nn.Module
        Table features, e.g. :func:`bigram_network` or :func:`cnn_table_features`.
    pairs : list of TablePair
        All tables of the same size.
    rules : str, Rule, mapping or callable, default="zero"
        Rules for the weighted layers (see :class:`skbilrp.Explainer`).
    dtype : torch.dtype, optional
        Compute dtype (``torch.float64`` for exact conservation checks).

    Returns
    -------
    PairExplanations
        ``.pair(i)`` explains pair ``i``; groups are the cells of :func:`cell_labels`.
    """
    shapes = {p.a.digits.shape for p in pairs} | {p.b.digits.shape for p in pairs}
    if len(shapes) != 1:
        raise ValueError(f"All tables must have the same size to be explained together, got {sorted(shapes)}.")
    ex = Explainer(model, rules=rules, pooling=cell_labels(shapes.pop()), dtype=dtype)
    a = np.stack([p.a.image for p in pairs])
    b = np.stack([p.b.image for p in pairs])
    return ex.explain(a, b, pairs=[(i, i) for i in range(len(pairs))])
