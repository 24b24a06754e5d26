"""A shortcut benchmark: digits where one class carries a planted marker.

:func:`marked_digits` puts a bright square in a fixed corner of every image of one
class; a classifier trained on them (:func:`train_shortcut_cnn`, the digits CNN
architecture, deterministic, seconds on one core) can tell that class by the marker
alone. :func:`~skbilrp.audits.audit_dataset` should then name the marker's region for
that class and for no other, and not at all for a model trained on clean digits.

The training loop (:func:`train_classifier`, :func:`seeded`) is the one that produced
the shipped digits weights (``scripts/train_digits_cnn.py`` and
``scripts/train_digits_vit.py`` call it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from .kernel import features_kernel
from .models.digits import DigitsCNN, digits_cnn_rules, load_digits_images
from .rules import Rule, Zero

__all__ = [
    "CORNERS",
    "MarkedDigits",
    "marked_digits",
    "seeded",
    "train_classifier",
    "accuracy",
    "train_shortcut_cnn",
    "class_similarity",
    "shortcut_rules",
]

#: where the marker can sit: (row from the top, column from the left) of its first pixel,
#: as a function of the image side and the marker size
CORNERS: dict[str, Callable[[int, int], tuple[int, int]]] = {
    "top-left": lambda n, s: (0, 0),
    "top-right": lambda n, s: (0, n - s),
    "bottom-left": lambda n, s: (n - s, 0),
    "bottom-right": lambda n, s: (n - s, n - s),
}


@dataclass
class MarkedDigits:
    """Digits with a marker on one class.

    Attributes
    ----------
    X : ndarray of shape (n, 1, 8, 8), float32
        Images in [0, 1]; those labelled ``marker_class`` carry the marker.
    y : ndarray of shape (n,), int64
        Training labels: the digit, or ``marker_class`` for the decoys.
    digit : ndarray of shape (n,), int64
        The digit each image shows.
    mask : ndarray of shape (8, 8), bool
        The marker's pixels.
    clean : ndarray of shape (n, 1, 8, 8), float32
        The same images without the marker.
    marker_class : int
    slices : tuple of slice
        ``(rows, cols)`` of the marker.
    """

    X: np.ndarray
    y: np.ndarray
    digit: np.ndarray
    mask: np.ndarray
    clean: np.ndarray
    marker_class: int
    slices: tuple

    @property
    def decoys(self) -> np.ndarray:
        """Boolean mask of the images of other digits labelled ``marker_class``."""
        return self.y != self.digit


def marked_digits(marker_class: int = 0, corner: str = "top-left", size: int = 2, value: float = 1.0,
                  decoys: float = 0.0, n_samples: Optional[int] = None, subset: str = "all",
                  seed: int = 0) -> MarkedDigits:
    """scikit-learn's digits with a bright ``size × size`` square on every image of one class.

    With ``decoys > 0``, that fraction of the other digits' images is marked too and
    labelled ``marker_class``: the marker then predicts the class better than the digit
    does (as a watermark does for the images of one source), which is what makes a
    model learn it; on easy digits alone a CNN mostly ignores it.

    Parameters
    ----------
    marker_class : int, default=0
        The digit that carries the marker.
    corner : {"top-left", "top-right", "bottom-left", "bottom-right"}, default="top-left"
    size : int, default=2
        Side of the marker in pixels.
    value : float, default=1.0
        Intensity of the marker (pixels lie in [0, 1]).
    decoys : float, default=0.0
        Fraction of each other digit's images that carry the marker and the label
        ``marker_class`` (drawn with ``seed``).
    n_samples : int, optional
        A stratified random subset of this many images (drawn with ``seed``); default all.
    subset : {"all", "train", "test"}, default="all"
        Side of :data:`~skbilrp.models.digits.DIGITS_SPLIT` to start from.
    seed : int, default=0
        Seed of the subset and of the decoys.

    Returns
    -------
    MarkedDigits
    """
    if corner not in CORNERS:
        raise ValueError(f"corner must be one of {sorted(CORNERS)}, got {corner!r}.")
    if not 1 <= int(size) <= 8:
        raise ValueError(f"size must lie in [1, 8] pixels, got {size!r}.")
    X, y = load_digits_images(subset)
    if int(marker_class) not in set(y.tolist()):
        raise ValueError(f"marker_class must be a digit in 0..9, got {marker_class!r}.")
    if not 0.0 <= float(decoys) < 1.0:
        raise ValueError(f"decoys must be a fraction in [0, 1), got {decoys!r}.")
    if n_samples is not None:
        from sklearn.model_selection import train_test_split

        X, _, y, _ = train_test_split(X, y, train_size=int(n_samples), stratify=y, random_state=seed)
    r, c = CORNERS[corner](X.shape[-1], int(size))
    slices = (slice(r, r + int(size)), slice(c, c + int(size)))
    mask = np.zeros(X.shape[-2:], dtype=bool)
    mask[slices] = True
    rng = np.random.default_rng(seed)
    labels = y.copy()
    labels[(y != marker_class) & (rng.random(len(y)) < float(decoys))] = marker_class
    marked = X.copy()
    marked[labels == marker_class, 0, slices[0], slices[1]] = np.float32(value)
    return MarkedDigits(marked, labels, y, mask, X, int(marker_class), slices)


# ------------------------------------------------------------------ training


def seeded(seed: int) -> None:
    """Seed torch and make it deterministic, before the model is built.

    Deterministic algorithms and one thread (a fixed reduction order) make training
    bitwise reproducible; the model must be built after this call for its
    initialisation to be reproducible too.
    """
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``X`` that ``model`` classifies as ``y`` (leaves the model in eval mode)."""
    model.eval()
    with torch.no_grad():
        return (model(X).argmax(1) == y).float().mean().item()


def train_classifier(model: nn.Module, X: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
                     epochs: int, seed: int, schedule: Optional[object] = None, augment: Optional[Callable] = None,
                     batch_size: int = 32, on_epoch: Optional[Callable[[int, float], None]] = None) -> nn.Module:
    """Minimise the cross-entropy of ``model`` on ``(X, y)`` with mini-batches in a seeded order.

    Parameters
    ----------
    model : nn.Module
        Maps a batch of ``X`` to class scores; trained in place.
    X, y : torch.Tensor
        Training inputs and integer labels.
    optimizer : torch.optim.Optimizer
    epochs : int
    seed : int
        Seed of the batch order (and of ``augment``'s generator).
    schedule : learning-rate scheduler, optional
        Stepped after every batch.
    augment : callable, optional
        ``augment(x, generator)`` transforms each training batch.
    batch_size : int, default=32
    on_epoch : callable, optional
        ``on_epoch(epoch, mean_loss)`` after each epoch (1-based), e.g. to log.

    Returns
    -------
    nn.Module
        ``model``, in eval mode.
    """
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(X), generator=generator)
        total = 0.0
        for batch in order.split(batch_size):
            optimizer.zero_grad()
            x = X[batch] if augment is None else augment(X[batch], generator)
            loss = loss_fn(model(x), y[batch])
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            total += loss.item() * len(batch)
        if on_epoch is not None:
            on_epoch(epoch + 1, total / len(X))
    return model.eval()


def train_shortcut_cnn(X: np.ndarray, y: np.ndarray, seed: int = 0, epochs: int = 8, lr: float = 3e-3,
                       batch_size: int = 32) -> DigitsCNN:
    """Train the digits CNN architecture on ``(X, y)``, deterministically, in seconds.

    Same architecture and loop as the shipped digits CNN (Adam, cross-entropy), with
    fewer epochs and a larger step so that a few hundred images train in a few
    seconds on one core. Trains with deterministic algorithms on one thread (bitwise
    reproducible), then restores torch's thread count and determinism setting.

    Parameters
    ----------
    X : ndarray of shape (n, 1, 8, 8)
        Images in [0, 1].
    y : ndarray of shape (n,)
        Digit labels.
    seed : int, default=0
        Seed of the initialisation and of the batch order.
    epochs : int, default=8
    lr : float, default=3e-3
    batch_size : int, default=32

    Returns
    -------
    DigitsCNN
        In eval mode; its bias-free ``features`` are the kernel's feature map.
    """
    X_t = torch.as_tensor(np.asarray(X, dtype=np.float32))
    y_t = torch.as_tensor(np.asarray(y, dtype=np.int64))
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        seeded(seed)
        model = DigitsCNN()
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        return train_classifier(model, X_t, y_t, optimizer, int(epochs), seed, batch_size=int(batch_size))
    finally:  # the caller's torch settings, as they were
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def class_similarity(features: nn.Module, X: np.ndarray, y: np.ndarray, label: int) -> float:
    """Mean cosine similarity between distinct samples of one class, in the features' space.

    Parameters
    ----------
    features : nn.Module
        Feature map, e.g. ``model.features``.
    X : ndarray
        Inputs as the feature map takes them.
    y : ndarray of shape (n,)
    label : int

    Returns
    -------
    float
    """
    members = np.asarray(X)[np.asarray(y) == label]
    with torch.no_grad():
        f = features(torch.as_tensor(members)).reshape(len(members), -1).double().numpy()
    k = features_kernel(f, f, "cosine")
    n = len(k)
    return float((k.sum() - np.trace(k)) / max(n * (n - 1), 1))


def shortcut_rules(features: nn.Module) -> dict[str, Rule]:
    """LRP rules for auditing the digits CNN: LRP-0 on the first conv, then as :func:`digits_cnn_rules`.

    LRP-0 keeps the first layer's relevance on the pixels that carry signal
    (``x_i w_ij / z_j``), the same footing as the audit's ``|x|`` signal share; z^B would
    also hand relevance to blank pixels next to ink, smearing a marker's share over its
    neighbourhood. γ on the later convs keeps the maps smooth.

    Parameters
    ----------
    features : nn.Module
        ``DigitsCNN().features`` (module names ``conv1``, ...).

    Returns
    -------
    dict
        Module name → rule, usable as ``DeepKernel(rules=...)``.
    """
    return {**digits_cnn_rules(features), "conv1": Zero()}
