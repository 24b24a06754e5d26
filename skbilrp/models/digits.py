"""A small CNN for scikit-learn's 8×8 digits, with trained weights shipped in the package.

The weights come from ``scripts/train_digits_cnn.py`` (deterministic, a few seconds on
a CPU). The feature extractor has no biases: with biases, part of the relevance goes
to them and BiLRP explanations then sum to less (or more) than the similarity; without
them, LRP-0/γ/z^B conserve and the explanation sums exactly to the similarity.
"""

from __future__ import annotations

from collections import OrderedDict
from importlib import resources

import numpy as np
import torch
from torch import nn

from ..rules import Epsilon, Gamma, Rule, ZBox

__all__ = [
    "DigitsCNN",
    "digits_cnn",
    "digits_cnn_rules",
    "load_digits_images",
    "DIGITS_SPLIT",
]

#: The held-out split used for training and evaluation, passed to
#: ``sklearn.model_selection.train_test_split`` together with ``stratify=y``.
DIGITS_SPLIT: dict[str, float | int] = {"test_size": 0.25, "random_state": 0}

_WEIGHTS = "weights/digits_cnn.pt"


def load_shipped_weights(model: nn.Module, name: str) -> None:
    """Load a state dict shipped in ``skbilrp/models/`` (e.g. ``"weights/digits_cnn.pt"``)."""
    ref = resources.files("skbilrp.models").joinpath(name)
    with resources.as_file(ref) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)


class DigitsCNN(nn.Module):
    """Bias-free CNN feature extractor (64-d, non-negative) plus a linear head.

    ``features``: conv(1→16) ReLU conv(16→32) ReLU maxpool conv(32→64) ReLU maxpool
    flatten linear(256→64) ReLU, all 3×3 convs with padding 1 and no bias (so that
    BiLRP conserves exactly). ``head``: linear(64→10) with bias, used for training
    only.

    Parameters
    ----------
    num_classes : int, default=10
        Outputs of the head.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(1, 16, 3, padding=1, bias=False)),
                    ("relu1", nn.ReLU()),
                    ("conv2", nn.Conv2d(16, 32, 3, padding=1, bias=False)),
                    ("relu2", nn.ReLU()),
                    ("pool1", nn.MaxPool2d(2)),
                    ("conv3", nn.Conv2d(32, 64, 3, padding=1, bias=False)),
                    ("relu3", nn.ReLU()),
                    ("pool2", nn.MaxPool2d(2)),
                    ("flatten", nn.Flatten()),
                    ("fc", nn.Linear(64 * 2 * 2, 64, bias=False)),
                    ("relu4", nn.ReLU()),
                ]
            )
        )
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores of images ``x`` of shape (N, 1, 8, 8) with values in [0, 1]."""
        return self.head(self.features(x))


def digits_cnn(pretrained: bool = True, features_only: bool = True) -> nn.Module:
    """The digits CNN, with the weights shipped in ``skbilrp/models/weights``.

    Parameters
    ----------
    pretrained : bool, default=True
        Load the trained weights (test accuracy recorded in
        ``scripts/train_digits_cnn.py``); else torch's default random initialisation.
    features_only : bool, default=True
        Return only the bias-free feature extractor, (N, 1, 8, 8) → (N, 64); else the
        whole :class:`DigitsCNN`, (N, 1, 8, 8) → (N, 10) logits.

    Returns
    -------
    nn.Module
        In eval mode.

    Examples
    --------
    >>> X, y = load_digits_images()
    >>> digits_cnn()(torch.from_numpy(X[:5])).shape
    torch.Size([5, 64])
    """
    model = DigitsCNN()
    if pretrained:
        load_shipped_weights(model, _WEIGHTS)
    model.eval()
    return model.features if features_only else model


def digits_cnn_rules(model: nn.Module, gamma: float = 0.25) -> dict[str, Rule]:
    """Rules for :func:`digits_cnn`: z^B on the first conv, γ on the others, ε on linears.

    Pixels lie in [0, 1], hence z^B with those bounds on the first conv. The other
    convs see ReLU outputs, so γ (which needs non-negative inputs) applies and gives
    less noisy maps than LRP-0. Linear layers get ε = 1e-6, practically LRP-0. With
    the bias-free extractor all of these conserve.

    Parameters
    ----------
    model : nn.Module
        The extractor or the whole :class:`DigitsCNN`.
    gamma : float, default=0.25
        γ of the convs after the first.

    Returns
    -------
    dict
        Module name → :class:`~skbilrp.rules.Rule`, usable as ``rules=``.
    """
    rules: dict[str, Rule] = {}
    first = True
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            rules[name] = ZBox(0.0, 1.0) if first else Gamma(gamma)
            first = False
        elif isinstance(module, nn.Linear):
            rules[name] = Epsilon(1e-6)
    return rules


def load_digits_images(subset: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 digits as images for :func:`digits_cnn`.

    Parameters
    ----------
    subset : {"all", "train", "test"}, default="all"
        All 1797 images, or one side of the stratified split :data:`DIGITS_SPLIT`
        that the shipped weights were trained (``"train"``) and evaluated
        (``"test"``) on.

    Returns
    -------
    X : ndarray of shape (n, 1, 8, 8), float32
        Pixel intensities divided by 16, in [0, 1].
    y : ndarray of shape (n,), int64
        Digit labels.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if subset not in ("all", "train", "test"):
        raise ValueError(f"subset must be 'all', 'train' or 'test', got {subset!r}.")
    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    if subset == "all":
        return X, y
    X_train, X_test, y_train, y_test = train_test_split(X, y, stratify=y, **DIGITS_SPLIT)
    return (X_train, y_train) if subset == "train" else (X_test, y_test)
