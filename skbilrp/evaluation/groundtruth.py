"""Ground truth for pair explanations: models whose true interactions are known.

Flipping (:mod:`.flipping`) asks whether removing what an explanation ranks first
changes the similarity. Here the question is direct: on a task built so that only
known pairs of input groups can interact, what share of an explanation's ``k``
strongest pairs are true ones (:func:`precision_at_k`)?

Two tasks serve as ground truth:

tables
    :func:`skbilrp.tables.bigram_network` on table pairs that share known numbers
    (:func:`skbilrp.tables.make_table_pair`); true pairs are the cells of the same
    digit bigram in both tables (:func:`skbilrp.tables.same_bigram_mask`).
patch glyphs
    Images made of a grid of patches, each blank (faint noise) or holding one glyph;
    some glyph classes *count* and others are distractors. The target similarity of
    two images is the number of counting classes they both hold
    (:func:`make_patch_pair`, :func:`patch_truth_mask`), and a small bias-free
    convolutional network is trained to regress it with ``<phi(x), phi(x')>``
    (:func:`train_patch_network`). True pairs are the two patches of each shared
    counting class: distractors shared by both images look just as alike but must
    not interact.

:func:`score_methods` explains the same pairs with every method (e.g.
:func:`skbilrp.evaluation.default_methods`) and returns a
:class:`GroundTruthResults` of per-pair precisions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import numpy as np
import torch
from scipy import stats
from torch import nn

from ..pairs import Kernel
from ..pooling import PoolingSpec
from .flipping import ExplanationMethod, explain_pairs

__all__ = [
    "Ties",
    "precision_at_k",
    "PatchTask",
    "PatchImages",
    "render_patch_images",
    "make_patch_images",
    "make_patch_pair",
    "patch_truth_mask",
    "class_counts",
    "PatchNetwork",
    "PatchFit",
    "train_patch_network",
    "KSpec",
    "GroundTruthResults",
    "score_methods",
]

Ties = Literal["average", "first"]


# --------------------------------------------------------------------------- precision


def _as_k(k: Union[int, Sequence[int], np.ndarray], n: int, m: int) -> np.ndarray:
    """``k`` as an int array of shape ``(n,)``, each in ``[1, m]``."""
    ks = np.broadcast_to(np.asarray(k), (n,)).astype(np.int64)
    if np.any(ks < 1) or np.any(ks > m):
        raise ValueError(f"k must be in [1, p * q = {m}] for every pair, got {np.unique(ks).tolist()}.")
    return ks


def precision_at_k(relevance: np.ndarray, truth_mask: np.ndarray, k: Union[int, Sequence[int], np.ndarray],
                   ties: Ties = "average") -> Union[float, np.ndarray]:
    """Share of the ``k`` most relevant group pairs that are true interactions.

    Parameters
    ----------
    relevance : ndarray of shape (p, q) or (n, p, q)
        Pair explanations (any scale; larger = more relevant, signed values are
        ranked as they are, so negative relevance comes last).
    truth_mask : ndarray of bool, same shape as ``relevance``
        The true interactions.
    k : int or array-like of shape (n,)
        How many top pairs to read, the same for every explanation or one per
        explanation (e.g. ``truth_mask.sum((1, 2))``: R-precision).
    ties : {"average", "first"}, default="average"
        Pairs tied with the ``k``-th largest relevance. "average": the tied block
        counts with its mean truth for the places left in the top ``k``, i.e. the
        expected precision over every order of the ties, so a constant explanation
        scores the base rate of true pairs and no method gains from where its ties
        happen to lie. "first": ties are taken in row-major order of ``(p, q)``.
        Both are deterministic.

    Returns
    -------
    float or ndarray of shape (n,)
        Float for one ``(p, q)`` explanation, one value per explanation otherwise.

    Raises
    ------
    ValueError
        For shapes that differ, ``k`` outside ``[1, p * q]`` or an unknown ``ties``.

    Examples
    --------
    >>> rel = np.array([[3.0, 1.0], [1.0, 0.0]])
    >>> truth = np.array([[True, False], [True, False]])
    >>> precision_at_k(rel, truth, 2)  # 3 is true; one of the two 1s is: (1 + 1/2) / 2
    0.75
    >>> precision_at_k(rel, truth, 2, ties="first")  # row-major: (0, 1) comes first
    0.5
    """
    relevance = np.asarray(relevance, dtype=np.float64)
    truth = np.asarray(truth_mask, dtype=bool)
    if relevance.shape != truth.shape:
        raise ValueError(f"relevance {relevance.shape} and mask {truth.shape} must have the same shape.")
    if relevance.ndim not in (2, 3):
        raise ValueError(f"relevance must have shape (p, q) or (n, p, q), got {relevance.shape}.")
    if ties not in ("average", "first"):
        raise ValueError(f"ties must be 'average' or 'first', got {ties!r}.")
    single = relevance.ndim == 2
    rel = relevance.reshape(-1 if not single else 1, relevance.shape[-2] * relevance.shape[-1])
    hit = truth.reshape(rel.shape).astype(np.float64)
    ks = _as_k(k, *rel.shape)
    # stable sort of -rel: decreasing relevance, ties in row-major order
    order = np.argsort(-rel, axis=1, kind="stable")
    if ties == "first":
        in_top = np.arange(rel.shape[1])[None] < ks[:, None]
        out = (np.take_along_axis(hit, order, axis=1) * in_top).sum(1) / ks
    else:
        kth = np.take_along_axis(np.take_along_axis(rel, order, axis=1), ks[:, None] - 1, axis=1)
        above, tied = rel > kth, rel == kth
        n_tied = tied.sum(1)
        share = (hit * tied).sum(1) / n_tied  # mean truth of the tied block
        out = ((hit * above).sum(1) + (ks - above.sum(1)) * share) / ks
    return float(out[0]) if single else out


# --------------------------------------------------------------------- patch-glyph task


@dataclass(frozen=True)
class PatchTask:
    """Layout and glyphs of the patch-glyph task.

    An image is ``grid × grid`` patches of ``patch × patch`` pixels, one channel. A
    patch is blank (uniform noise in ``[0, noise]``) or holds a ``glyph × glyph``
    glyph at a random offset inside the patch, ink 1 over the noise. Classes
    ``0 .. n_classes - 1`` count towards the similarity; the next ``n_distractors`` classes are distractors. Each class occurs
    at most once per image, so "how many counting classes both images hold" is also
    the dot product of their class-count vectors.

    Parameters
    ----------
    grid : int, default=6
    patch : int, default=5
    glyph : int, default=4
        At most ``patch``; the glyph is placed at one of ``(patch - glyph + 1)²`` offsets.
    n_classes : int, default=6
    n_distractors : int, default=3
    per_image : (int, int), default=(2, 4)
        Range (inclusive) of counting glyphs per image.
    distractors_per_image : (int, int), default=(1, 3)
        Range (inclusive) of distractor glyphs per image.
    noise : float, default=0.1
        Upper bound of the background noise. The ink is fixed at 1 because a
        bias-free ReLU network scales its features with the ink and the target does not.
    seed : int, default=0
        Seed of the glyph shapes (random binary patterns, linearly independent).
    """

    grid: int = 6
    patch: int = 5
    glyph: int = 4
    n_classes: int = 6
    n_distractors: int = 3
    per_image: tuple[int, int] = (2, 4)
    distractors_per_image: tuple[int, int] = (1, 3)
    noise: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.glyph <= self.patch:
            raise ValueError(f"PatchTask needs 1 <= glyph <= patch, got glyph={self.glyph}, patch={self.patch}.")
        if self.n_classes + self.n_distractors > self.glyph ** 2:
            raise ValueError(f"{self.n_classes + self.n_distractors} glyph classes cannot be linearly independent "
                             f"{self.glyph}×{self.glyph} patterns; use fewer classes or a larger glyph.")
        if self.per_image[1] > self.n_classes or self.distractors_per_image[1] > self.n_distractors:
            raise ValueError("per_image and distractors_per_image cannot exceed the number of classes.")
        if self.per_image[1] + self.distractors_per_image[1] > self.grid ** 2:
            raise ValueError(f"{self.grid}×{self.grid} patches cannot hold that many glyphs.")

    @property
    def side(self) -> int:
        """Image side in pixels."""
        return self.grid * self.patch

    @property
    def n_patches(self) -> int:
        return self.grid * self.grid

    def templates(self) -> np.ndarray:
        """Glyph shapes ``(n_classes + n_distractors, glyph, glyph)`` in {0, 1}.

        Random patterns with about half the pixels on, redrawn until they are
        linearly independent (so a linear detector can tell them apart exactly).
        """
        rng = np.random.default_rng(self.seed)
        n = self.n_classes + self.n_distractors
        while True:
            shapes = (rng.random((n, self.glyph, self.glyph)) < 0.5).astype(np.float32)
            if np.linalg.matrix_rank(shapes.reshape(n, -1)) == n:
                return shapes


@dataclass
class PatchImages:
    """A batch of patch-glyph images and what they hold.

    Attributes
    ----------
    images : ndarray of shape (n, 1, side, side), float32
        Pixels in ``[0, 1]``.
    labels : ndarray of shape (n, grid, grid), int
        Class of each patch, ``-1`` for blank patches.
    """

    images: np.ndarray
    labels: np.ndarray


def _pick(rng: np.random.Generator, n: int, bounds: tuple[int, int], pool: np.ndarray) -> list[np.ndarray]:
    """For each of ``n`` images, a random subset of ``pool`` of a size within ``bounds``."""
    sizes = rng.integers(bounds[0], bounds[1] + 1, size=n)
    return [rng.choice(pool, size=s, replace=False) for s in sizes]


def _place(rng: np.random.Generator, task: PatchTask, classes: Sequence[np.ndarray]) -> np.ndarray:
    """Label grids ``(n, grid, grid)`` with the given classes at random distinct patches."""
    labels = np.full((len(classes), task.n_patches), -1, dtype=np.int64)
    for i, cls in enumerate(classes):
        labels[i, rng.choice(task.n_patches, size=len(cls), replace=False)] = cls
    return labels.reshape(-1, task.grid, task.grid)


def render_patch_images(task: PatchTask, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw label grids ``(n, grid, grid)`` as images ``(n, 1, side, side)``, float32 in [0, 1]."""
    shapes = task.templates()
    images = rng.uniform(0.0, task.noise, size=(len(labels), task.side, task.side)).astype(np.float32)
    room = task.patch - task.glyph + 1
    for i, r, c in zip(*np.nonzero(labels >= 0)):
        y, x = r * task.patch + rng.integers(room), c * task.patch + rng.integers(room)
        window = images[i, y:y + task.glyph, x:x + task.glyph]
        np.maximum(window, shapes[labels[i, r, c]], out=window)  # ink over the noise
    return images[:, None]


def make_patch_images(task: PatchTask, n: int, random_state: Union[None, int, np.random.Generator] = None) -> PatchImages:
    """``n`` independent random images of ``task``.

    Parameters
    ----------
    task : PatchTask
    n : int
    random_state : None, int or numpy.random.Generator

    Returns
    -------
    PatchImages
    """
    rng = np.random.default_rng(random_state)
    counting = _pick(rng, n, task.per_image, np.arange(task.n_classes))
    extra = _pick(rng, n, task.distractors_per_image, np.arange(task.n_classes, task.n_classes + task.n_distractors))
    labels = _place(rng, task, [np.concatenate(pair) for pair in zip(counting, extra)])
    return PatchImages(render_patch_images(task, labels, rng), labels)


def make_patch_pair(task: PatchTask, n_shared: int,
                    random_state: Union[None, int, np.random.Generator] = None) -> tuple[PatchImages, PatchImages]:
    """Two images sharing exactly ``n_shared`` counting classes, at independent positions.

    Each image holds a number of counting glyphs drawn from ``task.per_image`` (at
    least ``n_shared``): the shared classes, then classes the other image lacks
    (as many as are left). Distractors are drawn independently per image, so the two
    often share some, which must not count.

    Parameters
    ----------
    task : PatchTask
    n_shared : int
        In ``[0, per_image[1]]``.
    random_state : None, int or numpy.random.Generator

    Returns
    -------
    (PatchImages, PatchImages)
        One image each (batch axis of length one).
    """
    if not 0 <= n_shared <= task.per_image[1]:
        raise ValueError(f"n_shared must be in [0, per_image[1] = {task.per_image[1]}], got {n_shared}.")
    rng = np.random.default_rng(random_state)
    perm = rng.permutation(task.n_classes)
    size_a, size_b = np.maximum(rng.integers(task.per_image[0], task.per_image[1] + 1, size=2), n_shared)
    own_a = perm[n_shared:size_a]
    own_b = perm[size_a:size_a + size_b - n_shared]  # classes ``a`` lacks, as many as are left
    pool = np.arange(task.n_classes, task.n_classes + task.n_distractors)
    out = []
    for own in (own_a, own_b):
        extra = _pick(rng, 1, task.distractors_per_image, pool)[0]
        labels = _place(rng, task, [np.concatenate([perm[:n_shared], own, extra])])
        out.append(PatchImages(render_patch_images(task, labels, rng), labels))
    return out[0], out[1]


def patch_truth_mask(labels_a: np.ndarray, labels_b: np.ndarray, n_classes: int) -> np.ndarray:
    """True interactions of two label grids: patches of the same counting class.

    Parameters
    ----------
    labels_a, labels_b : ndarray of shape (grid, grid) or (n, grid, grid), int
        :attr:`PatchImages.labels` (``-1``: blank).
    n_classes : int
        Classes ``0 .. n_classes - 1`` count; higher ones are distractors.

    Returns
    -------
    ndarray of shape ([n,] grid², grid²), bool
        Row-major patches, the groups of ``pooling=task.patch``.
    """
    a = np.asarray(labels_a).reshape(*np.shape(labels_a)[:-2], -1)
    b = np.asarray(labels_b).reshape(*np.shape(labels_b)[:-2], -1)
    counts = (a >= 0) & (a < n_classes)
    return counts[..., :, None] & (a[..., :, None] == b[..., None, :])


def class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """How often each counting class occurs, ``(n, n_classes)`` float32 (0 or 1 here).

    The target similarity of two images is the dot product of their counts, which
    equals ``patch_truth_mask(a, b, n_classes).sum()``: the number of true pairs.
    """
    flat = np.asarray(labels).reshape(len(labels), -1)
    return (flat[:, :, None] == np.arange(n_classes)).sum(1).astype(np.float32)


class PatchNetwork(nn.Module):
    """Bias-free ReLU conv net with global sum pooling, ``(N, 1, H, W) -> (N, features)``.

    ``conv (patch + 2)², stride patch, padding 1 (1→hidden)`` ReLU ``conv 1×1
    (hidden→hidden)`` ReLU ``conv 1×1 (hidden→features)`` ReLU, summed over the patch
    grid: a small perceptron per patch whose window also takes in a one-pixel border
    of the neighbouring patches, so evidence can leak across patch borders. Without
    biases a blank input gives exactly zero features, and LRP-0 equals
    Hessian×Product (the network is positively homogeneous).

    Parameters
    ----------
    patch : int, default=5
        Patch side (:attr:`PatchTask.patch`).
    hidden, features : int, default=32, 12
    """

    def __init__(self, patch: int = 5, hidden: int = 32, features: int = 12) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, hidden, patch + 2, stride=patch, padding=1, bias=False)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(hidden, hidden, 1, bias=False)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(hidden, features, 1, bias=False)
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv3(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        return h.sum(dim=(2, 3))


@dataclass
class PatchFit:
    """How well a trained :class:`PatchNetwork` regresses the target similarity.

    Attributes
    ----------
    r2 : float
        Coefficient of determination on held-out random pairs.
    correlation : float
        Pearson correlation of prediction and target on the same pairs.
    baseline_r2 : float
        R² of the constant predictor (the mean training target) on those pairs.
    n_pairs : int
        Held-out pairs.
    seconds : float
        Training time.
    """

    r2: float
    correlation: float
    baseline_r2: float
    n_pairs: int
    seconds: float


def _r2(pred: np.ndarray, target: np.ndarray) -> float:
    return float(1.0 - np.sum((pred - target) ** 2) / np.sum((target - target.mean()) ** 2))


def _pair_similarity(model: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (model(a) * model(b)).sum(1)


def _initialise(model: PatchNetwork, x: torch.Tensor, counts: torch.Tensor) -> None:
    """He initialisation, the last layer scaled so that ``|phi(x)|²`` starts at the target's scale."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    with torch.no_grad():
        ratio = model(x).pow(2).sum(1).mean() / counts.pow(2).sum(1).mean()
        model.conv3.weight.div_(ratio.sqrt())


def _fit(model: PatchNetwork, x: torch.Tensor, counts: torch.Tensor, steps: int, batch: int, lr: float,
         rng: np.random.Generator) -> None:
    """Adam on the MSE of every similarity ``<phi(x_i), phi(x_j)>`` of a random batch.

    A batch of ``batch`` images gives ``batch²`` pairs (self-pairs included) for the
    price of ``batch`` forward passes. A one-cycle learning rate and gradient
    clipping get the product-of-features loss past its early plateau on every seed
    tried (without clipping some seeds stall at R² ≈ 0.7 or lose all units).
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        i = torch.from_numpy(rng.choice(len(x), size=batch, replace=False))
        f, n = model(x[i]), counts[i]
        loss = torch.mean((f @ f.T - n @ n.T) ** 2)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()


def _evaluate_fit(model: nn.Module, task: PatchTask, baseline: float, n_pairs: int, seed: int,
                  seconds: float) -> PatchFit:
    """Fit on random pairs of fresh images (no image is in both halves)."""
    rng = np.random.default_rng([seed, 1])
    a, b = make_patch_images(task, n_pairs, rng), make_patch_images(task, n_pairs, rng)
    target = (class_counts(a.labels, task.n_classes) * class_counts(b.labels, task.n_classes)).sum(1)
    with torch.no_grad():
        pred = _pair_similarity(model, torch.from_numpy(a.images), torch.from_numpy(b.images)).numpy()
    target, pred = target.astype(np.float64), pred.astype(np.float64)
    return PatchFit(_r2(pred, target), float(np.corrcoef(pred, target)[0, 1]),
                    _r2(np.full_like(target, baseline), target), n_pairs, seconds)


def train_patch_network(task: Optional[PatchTask] = None, n_images: int = 2000, steps: int = 1000,
                        batch: int = 128, lr: float = 1e-2, hidden: int = 64, features: int = 12,
                        seed: int = 0, n_eval: int = 1000) -> tuple[PatchNetwork, PatchFit]:
    """Train a :class:`PatchNetwork` so that ``<phi(x), phi(x')>`` counts shared counting glyphs.

    Deterministic for a seed on a fixed number of torch threads: the data, batches
    and initial weights all come from ``seed`` (the global torch RNG is left as it
    was). About 5 s on one CPU thread with the defaults, held-out R² ≈ 0.995.

    Parameters
    ----------
    task : PatchTask, optional
        Default ``PatchTask()``.
    n_images : int, default=2000
        Training images, drawn by :func:`make_patch_images`.
    steps, batch, lr : int, int, float, default=1000, 128, 1e-2
        Adam steps, images per step (all their pairs are used) and peak learning rate.
    hidden, features : int, default=64, 12
        See :class:`PatchNetwork`.
    seed : int, default=0
    n_eval : int, default=1000
        Held-out random pairs of fresh images for :class:`PatchFit`.

    Returns
    -------
    model : PatchNetwork
        In eval mode.
    fit : PatchFit
    """
    task = task or PatchTask()
    start = time.perf_counter()
    data = make_patch_images(task, n_images, np.random.default_rng([seed, 0]))
    x = torch.from_numpy(data.images)
    counts = torch.from_numpy(class_counts(data.labels, task.n_classes))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = PatchNetwork(task.patch, hidden, features)
        _initialise(model, x[:256], counts[:256])
    _fit(model, x, counts, steps, batch, lr, np.random.default_rng([seed, 2]))
    model.eval()
    mean = counts.mean(0).double()
    baseline = float(mean @ mean)  # the constant predictor: mean similarity of two training images
    return model, _evaluate_fit(model, task, baseline, n_eval, seed, time.perf_counter() - start)


# ---------------------------------------------------------------------------- scoring


KSpec = Union[int, Literal["n_true"]]


def _k_label(k: KSpec) -> str:
    return f"k={k}"


def _sign_test_greater(a: np.ndarray, b: np.ndarray) -> float:
    """One-sided sign-test p-value of "``a > b`` more often than ``a < b``"; ties left out."""
    n = int(np.sum(a != b))
    return float(stats.binomtest(int(np.sum(a > b)), n, 0.5, alternative="greater").pvalue) if n else 1.0


@dataclass
class GroundTruthResults:
    """Per-pair precision@k of several explanation methods on the same pairs.

    Attributes
    ----------
    methods : list of str
    ks : list of str
        Labels of the ``k`` read, e.g. ``"k=n_true"``, ``"k=5"``.
    precision : dict
        ``precision[k][method]``: ndarray ``(n_pairs,)``.
    chance : dict
        ``chance[k]``: ndarray ``(n_pairs,)``, the expected precision of a uniformly
        random ranking (the share of true pairs among all ``p * q``, for every ``k``).
    ideal : dict
        ``ideal[k]``: ndarray ``(n_pairs,)``, the precision of a ranking that puts every
        true pair first, ``min(n_true, k) / k`` (below 1 where a pair has fewer than
        ``k`` true pairs).
    n_true : ndarray of shape (n_pairs,)
        True pairs per explained pair.
    seconds : dict
        ``seconds[method]``: wall time of that method's explanations.
    """

    methods: list[str]
    ks: list[str]
    precision: dict[str, dict[str, np.ndarray]]
    chance: dict[str, np.ndarray]
    ideal: dict[str, np.ndarray]
    n_true: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)

    def mean_precision(self, k: str, method: str) -> tuple[float, float]:
        """Mean precision over pairs and its standard error."""
        values = self.precision[k][method]
        sem = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else float("nan")
        return float(values.mean()), sem

    def wins(self, k: str, method: str, other: str) -> int:
        """On how many pairs ``method`` has a strictly higher precision than ``other``."""
        return int(np.sum(self.precision[k][method] > self.precision[k][other]))

    def sign_test(self, k: str, method: str, other: str) -> float:
        """One-sided sign-test p-value of "``method`` has the higher precision more often".

        Pairs with equal precision are left out; 1.0 when all are equal.
        """
        return _sign_test_greater(self.precision[k][method], self.precision[k][other])

    def to_markdown(self, reference: Optional[str] = None) -> str:
        """A markdown table: mean ± s.e. precision per method (rows) and ``k`` (columns).

        Parameters
        ----------
        reference : str, optional
            A method; adds, per ``k``, on how many pairs it is more precise than
            each other method, with the one-sided sign-test p-value.
        """
        n = self.n_true.size
        head = ["method"] + [f"precision@{k}" for k in self.ks] + ["time (s)"]
        head += [f"{reference} higher ({k})" for k in self.ks] if reference else []
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for method in self.methods:
            cells = [method] + ["{:.3f} ± {:.3f}".format(*self.mean_precision(k, method)) for k in self.ks]
            cells.append(f"{self.seconds.get(method, float('nan')):.1f}")
            if reference:
                cells += ["—" if method == reference else
                          f"{self.wins(k, reference, method)}/{n} (p={self.sign_test(k, reference, method):.2g})"
                          for k in self.ks]
            lines.append("| " + " | ".join(cells) + " |")
        for name, values in (("ideal (true pairs first)", self.ideal), ("chance (expected)", self.chance)):
            row = [name] + [f"{values[k].mean():.3f}" for k in self.ks] + ["—"]
            lines.append("| " + " | ".join(row + (["—"] * len(self.ks) if reference else [])) + " |")
        return "\n".join(lines)


def score_methods(model: nn.Module, X: torch.Tensor, X2: torch.Tensor, truth: np.ndarray,
                  methods: Mapping[str, Union[ExplanationMethod, np.ndarray]], pooling: PoolingSpec = None,
                  ks: Sequence[KSpec] = ("n_true", 5, 10), kernel: Kernel = "linear",
                  channel_axis: Optional[int] = 0, ties: Ties = "average") -> GroundTruthResults:
    """Explain pairs ``(X[n], X2[n])`` with every method and score them against ``truth``.

    Parameters
    ----------
    model : nn.Module
        Feature extractor ``phi`` in eval mode.
    X, X2 : torch.Tensor
        The two sides of the pairs, samples first.
    truth : ndarray of shape (n_pairs, p, q), bool
        True interactions between the groups of ``pooling``.
    methods : mapping of str to ExplanationMethod or ndarray
        E.g. :func:`skbilrp.evaluation.default_methods`; an ndarray
        ``(n_pairs, p, q)`` gives precomputed explanations.
    pooling : None, int, tuple or array, default=None
        Groups of input positions, the ones ``truth`` refers to.
    ks : sequence of int or "n_true", default=("n_true", 5, 10)
        ``"n_true"``: read as many top pairs as the pair has true ones (R-precision).
    kernel : {"linear", "cosine"}, default="linear"
    channel_axis : int or None, default=0
    ties : {"average", "first"}, default="average"
        See :func:`precision_at_k`.

    Returns
    -------
    GroundTruthResults

    Raises
    ------
    ValueError
        If a pair has no true interaction (precision@n_true is undefined) or an
        explanation does not match ``truth``.
    """
    truth = np.asarray(truth, dtype=bool)
    n_true = truth.sum((1, 2))
    if np.any(n_true == 0):
        raise ValueError(f"Pairs {np.flatnonzero(n_true == 0).tolist()} have no true interaction; "
                         "explain only pairs that share evidence.")
    to_compute = {name: m for name, m in methods.items() if not isinstance(m, np.ndarray)}
    computed, seconds = explain_pairs(model, list(zip(X, X2)), to_compute, pooling, kernel, channel_axis)
    k_values = {_k_label(k): n_true if k == "n_true" else np.full(n_true.shape, k) for k in ks}
    precision = {label: {name: precision_at_k(computed.get(name, method), truth, k, ties)
                         for name, method in methods.items()}
                 for label, k in k_values.items()}
    chance = {label: n_true / truth[0].size for label in k_values}
    ideal = {label: np.minimum(n_true, k) / k for label, k in k_values.items()}
    return GroundTruthResults(list(methods), list(k_values), precision, chance, ideal, n_true, seconds)
