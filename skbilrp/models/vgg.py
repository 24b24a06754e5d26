"""VGG networks with torchvision's state_dict layout, and VGG-16 feature extractors.

torchvision cannot be imported next to the CPU build of torch used here, so the
architecture is defined again. Module names follow torchvision (``features.N``,
``avgpool``, ``classifier.N``), hence torchvision checkpoints load unchanged.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Union

import torch
from torch import nn

from ..layers import Normalize
from ..rules import Rule, ZBox, vgg_preset

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CFGS",
    "VGG",
    "make_layers",
    "vgg16",
    "vgg16_rules",
]

#: Per-channel mean of ImageNet images in [0, 1] (RGB), as torchvision uses it.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: Per-channel standard deviation of ImageNet images in [0, 1] (RGB).
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Layer configurations: an int is a 3×3 conv with that many output channels
#: (followed by ReLU), ``"M"`` a 2×2 max-pool.
CFGS: dict[str, list[Union[int, str]]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [
        64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
        512, 512, 512, "M", 512, 512, 512, "M",
    ],  # fmt: skip
    "vgg19": [
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
    ],  # fmt: skip
}

#: A state_dict, or the path of a file holding one.
WeightsSpec = Union[None, str, "os.PathLike[str]", Mapping[str, torch.Tensor]]


def make_layers(cfg: Sequence[Union[int, str]], in_channels: int = 3) -> nn.Sequential:
    """Build the convolutional part of a VGG network from a configuration.

    Parameters
    ----------
    cfg : sequence of int or "M"
        Output channels of each 3×3 conv (each followed by a ReLU), ``"M"`` for a
        2×2 max-pool with stride 2; see :data:`CFGS`.
    in_channels : int, default=3
        Channels of the input image.

    Returns
    -------
    nn.Sequential
        The layers, indexed as in torchvision (conv, ReLU and pool each take an index).
    """
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1))
            # not in-place (unlike torchvision): the explainer reads stored activations
            layers.append(nn.ReLU())
            in_channels = int(v)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG classifier with torchvision's module names.

    Parameters
    ----------
    cfg : str or sequence, default="vgg16"
        A key of :data:`CFGS` or a layer configuration for :func:`make_layers`.
    num_classes : int, default=1000
        Outputs of the last linear layer.
    dropout : float, default=0.5
        Dropout probability in the classifier.
    init_weights : bool, default=True
        Initialise as torchvision does (Kaiming-normal convs, N(0, 0.01) linears,
        zero biases). Seed torch's global generator beforehand for reproducibility.
    """

    def __init__(
        self,
        cfg: Union[str, Sequence[Union[int, str]]] = "vgg16",
        num_classes: int = 1000,
        dropout: float = 0.5,
        init_weights: bool = True,
    ) -> None:
        super().__init__()
        layers = CFGS[cfg] if isinstance(cfg, str) else cfg
        self.features = make_layers(layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        if init_weights:
            _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (logits) of normalised images ``x`` of shape (N, 3, H, W)."""
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _init_weights(module: nn.Module) -> None:
    """torchvision's VGG initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def _pool_cuts(features: nn.Sequential) -> dict[str, int]:
    """Map ``"poolK"`` to the index of the K-th max-pool in ``features``."""
    pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
    return {f"pool{k + 1}": i for k, i in enumerate(pools)}


def _load_features(features: nn.Sequential, weights: WeightsSpec) -> None:
    """Load the ``features.*`` entries of a VGG state_dict into ``features``.

    The ``classifier.*`` entries of a full checkpoint are accepted and ignored (the
    extractor has no classifier); any other key, a missing entry or a tensor of the
    wrong shape is an error naming the entry, never silently dropped.
    """
    if isinstance(weights, (str, os.PathLike)):
        state = torch.load(weights, map_location="cpu", weights_only=True)
    else:
        state = weights
    if not isinstance(state, Mapping):
        raise TypeError(
            f"VGG weights must be a state_dict (a dict from parameter names to tensors), got "
            f"{type(state).__name__}."
        )
    unknown = [k for k in state if not (isinstance(k, str) and k.startswith(("features.", "classifier.")))]
    if unknown:
        raise ValueError(
            "These entries are not part of a torchvision VGG state_dict: "
            f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}"
        )
    expected = features.state_dict()
    missing = [k for k in expected if f"features.{k}" not in state]
    if missing:
        raise ValueError(
            f"{len(missing)} of the {len(expected)} convolution entries of a VGG state_dict are "
            f"missing, e.g. 'features.{missing[0]}'."
        )
    own: dict[str, torch.Tensor] = {}
    for key, ours in expected.items():
        value = state[f"features.{key}"]
        if not isinstance(value, torch.Tensor) or value.shape != ours.shape:
            got = f"has shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else \
                f"is a {type(value).__name__}"
            raise ValueError(
                f"Entry 'features.{key}' {got}; VGG-16 needs a tensor of shape {tuple(ours.shape)}."
            )
        own[key] = value
    features.load_state_dict(own, strict=True)


def vgg16(
    weights: WeightsSpec = None,
    cut: str = "pool5",
    normalize: bool = True,
    seed: int = 0,
) -> nn.Sequential:
    """A VGG-16 feature extractor: images in [0, 1] to flattened conv features.

    Parameters
    ----------
    weights : None, path or state_dict, default=None
        ``None`` for a random (seeded, torchvision-style) initialisation; otherwise a
        torchvision-format VGG-16 state_dict or the path of a file holding one. Only
        the ``features.*`` entries are used.
    cut : {"pool1", "pool2", "pool3", "pool4", "pool5"}, default="pool5"
        The last layer kept: the features run up to and including this max-pool.
    normalize : bool, default=True
        Put ``Normalize(IMAGENET_MEAN, IMAGENET_STD)`` first, so that inputs are raw
        RGB images in [0, 1] (as pretrained torchvision weights expect).
    seed : int, default=0
        Seed of the random initialisation; torch's global generator is left as it was.

    Returns
    -------
    nn.Sequential
        In eval mode, with children ``normalize`` (if requested), ``features``
        (torchvision indices, so rules can name e.g. ``"features.0"``) and
        ``flatten``. Input (N, 3, H, W); output (N, C * (H / 2^K) * (W / 2^K)) with
        C = 64, 128, 256, 512, 512 for poolK.

    Examples
    --------
    >>> phi = vgg16(cut="pool3")
    >>> phi(torch.rand(2, 3, 64, 64)).shape
    torch.Size([2, 16384])
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        features = make_layers(CFGS["vgg16"])
        _init_weights(features)
    if weights is not None:
        _load_features(features, weights)
    cuts = _pool_cuts(features)
    if cut not in cuts:
        raise ValueError(f"cut must be one of {sorted(cuts)}, got {cut!r}.")
    modules: list[tuple[str, nn.Module]] = []
    if normalize:
        modules.append(("normalize", Normalize(IMAGENET_MEAN, IMAGENET_STD)))
    modules.append(("features", features[: cuts[cut] + 1]))
    modules.append(("flatten", nn.Flatten()))
    return nn.Sequential(OrderedDict(modules)).eval()


Bound = Union[float, torch.Tensor]


def _input_bounds(model: nn.Module) -> tuple[Bound, Bound]:
    """Bounds of the first conv's input for raw images in [0, 1].

    With a :class:`~skbilrp.layers.Normalize` in ``model`` (before the first conv)
    the bounds are the normalised images of 0 and 1, shape (C, 1, 1); else (0, 1).
    """
    for module in model.modules():
        if isinstance(module, Normalize):
            zbox = ZBox.from_normalization(module.mean.flatten(), module.std.flatten())
            return zbox.low, zbox.high
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            break
    return 0.0, 1.0


def vgg16_rules(extractor: nn.Module) -> dict[str, Rule]:
    """The BiLRP paper's rules for a VGG-16 extractor from :func:`vgg16`.

    z^B on the first conv, with bounds in the normalised space when the extractor
    normalises its input (raw pixels in [0, 1]); LRP-γ with γ = 0.5 / 0.25 / 0.1 / 0
    for conv blocks 1–2 / 3 / 4 / 5 (see :func:`skbilrp.rules.vgg_preset`).

    Parameters
    ----------
    extractor : nn.Module
        A model returned by :func:`vgg16` (any cut, with or without ``normalize``).

    Returns
    -------
    dict
        Module name → :class:`~skbilrp.rules.Rule`, usable as ``rules=``.
    """
    low, high = _input_bounds(extractor)
    return vgg_preset(extractor, low, high)
