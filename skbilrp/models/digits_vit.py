"""A tiny vision transformer for scikit-learn's 8×8 digits, trained weights shipped.

Written in plain torch the way timm writes ViTs (``timm.models.vision_transformer``):
a patch-embedding conv, a learned position embedding, pre-norm blocks (LayerNorm,
multi-head attention written out as ``q @ k.transpose`` → softmax → ``@ v``, LayerNorm,
GELU MLP) with residual adds, a final LayerNorm, and the mean of the patch tokens as
the embedding (timm's ``class_token=False, global_pool="avg"``).

The input convention is that of :func:`~skbilrp.models.digits.digits_cnn`: images
``(N, 1, 8, 8)`` in [0, 1] from :func:`~skbilrp.models.digits.load_digits_images`,
trained and evaluated on the split :data:`~skbilrp.models.digits.DIGITS_SPLIT`.
The weights come from ``scripts/train_digits_vit.py`` (deterministic, about a minute
on 2 CPU cores): held-out accuracy 0.9822 (442 / 450). 26,698 parameters, 118 KiB.

Why the mean of patch tokens, and why a normalised input. With bias-passing rules
(``Zero(bias="share")``, see :func:`digits_vit_rules`) every constant of the network
(biases, LayerNorm shifts, the position embedding) passes its share of relevance on
to the inputs in proportion to their contributions, so explanations sum to the
similarity. That needs every unit to have a contribution to share with:

- a class token is a constant with no position on the image; its part of the
  embedding can only be spread evenly over all pixels (or absorbed), blank
  background included. Mean pooling over patch tokens instead keeps each token's
  relevance anchored to its own 2×2 patch from the start;
- pixels of value 0 (most of a digit) contribute nothing, so the position embedding
  (and the patch-embedding bias) of a blank patch would have nothing to share with,
  and its relevance would be lost. The model's first module maps [0, 1] to [-1, 1]
  (:class:`~skbilrp.layers.Normalize` with mean and std 0.5, as Hugging Face's ViT
  image processors do), so that every patch contributes and "no ink here" is
  evidence too.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..layers import Normalize
from ..rules import Rule, resolve_rules
from .digits import load_shipped_weights

__all__ = [
    "DigitsViT",
    "ViTFeatures",
    "digits_vit",
    "digits_vit_rules",
    "DIGITS_VIT_CONFIG",
]

_WEIGHTS = "weights/digits_vit.pt"

#: Architecture of the shipped weights: 2×2 patches of the 8×8 image (16 tokens).
DIGITS_VIT_CONFIG: dict[str, int] = {"patch_size": 2, "dim": 32, "depth": 3, "heads": 4, "mlp_ratio": 2}


class Attention(nn.Module):
    """timm's multi-head self-attention, written out.

    Parameters
    ----------
    dim : int
        Token width, a multiple of ``heads``.
    heads : int
        Number of heads.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim must be a multiple of heads, got dim={dim}, heads={heads}.")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``(N, T, D)`` → ``(N, T, D)``."""
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    Parameters
    ----------
    dim, heads : int
        See :class:`Attention`.
    mlp_ratio : int
        Hidden width of the MLP over ``dim``.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(dim, mlp_ratio * dim)),
            ("act", nn.GELU()),
            ("fc2", nn.Linear(mlp_ratio * dim, dim)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTFeatures(nn.Module):
    """The ViT feature extractor: images ``(N, 1, S, S)`` in [0, 1] → ``(N, dim)``.

    ``normalize`` ([0, 1] → [-1, 1]), ``patch_embed`` (conv with kernel and stride
    ``patch_size``; tokens in row-major patch order, as ``pooling=patch_size`` groups
    pixels), ``+ pos_embed``, ``blocks``, ``norm``, then the mean over tokens.

    Parameters
    ----------
    image_size : int, default=8
    patch_size, dim, depth, heads, mlp_ratio : int
        See :data:`DIGITS_VIT_CONFIG`.
    """

    def __init__(self, image_size: int = 8, patch_size: int = 2, dim: int = 32, depth: int = 3,
                 heads: int = 4, mlp_ratio: int = 2) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}.")
        self.patch_size = patch_size
        self.normalize = Normalize([0.5], [0.5])
        self.patch_embed = nn.Conv2d(1, dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.randn(1, (image_size // patch_size) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(N, dim)`` of images ``(N, 1, S, S)`` with values in [0, 1]."""
        tokens = self.patch_embed(self.normalize(x)).flatten(2).transpose(1, 2) + self.pos_embed
        return self.norm(self.blocks(tokens)).mean(1)


class DigitsViT(nn.Module):
    """:class:`ViTFeatures` plus a linear head (used for training only).

    Parameters
    ----------
    num_classes : int, default=10
        Outputs of the head.
    **config
        Architecture, see :class:`ViTFeatures`; default :data:`DIGITS_VIT_CONFIG`.
    """

    def __init__(self, num_classes: int = 10, **config: int) -> None:
        super().__init__()
        config = {**DIGITS_VIT_CONFIG, **config}
        self.features = ViTFeatures(**config)
        self.head = nn.Linear(config["dim"], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores of images ``x`` of shape (N, 1, 8, 8) with values in [0, 1]."""
        return self.head(self.features(x))


def digits_vit(pretrained: bool = True, features_only: bool = True) -> nn.Module:
    """The digits ViT, with the weights shipped in ``skbilrp/models/weights``.

    Parameters
    ----------
    pretrained : bool, default=True
        Load the trained weights (held-out accuracy recorded in
        ``scripts/train_digits_vit.py``); else torch's default random initialisation.
    features_only : bool, default=True
        Return only the feature extractor, (N, 1, 8, 8) → (N, 32); else the whole
        :class:`DigitsViT`, (N, 1, 8, 8) → (N, 10) logits.

    Returns
    -------
    nn.Module
        In eval mode.

    Examples
    --------
    >>> from skbilrp.models.digits import load_digits_images
    >>> X, y = load_digits_images()
    >>> digits_vit()(torch.from_numpy(X[:5])).shape
    torch.Size([5, 32])
    """
    model = DigitsViT()
    if pretrained:
        load_shipped_weights(model, _WEIGHTS)
    model.eval()
    return model.features if features_only else model


def digits_vit_rules(model: nn.Module) -> dict[str, Rule]:
    """Rules for :func:`digits_vit`: LRP-0 with biases passing their share on.

    ``Zero(bias="share")`` on the patch embedding, every Linear and every LayerNorm
    (the ``"zero-share"`` preset): the biases, LayerNorm shifts and the position
    embedding (a constant added to the patch tokens, which follows the mode of the
    rules) hand their relevance to the inputs in proportion to their contributions,
    so explanations sum to the similarity. With the default ``"zero"`` they absorb it
    and the difference shows up as ``conservation_error``. The first layer needs no
    z^B: its patches do not overlap, so whatever a rule does inside a patch, patch
    pooling (``pooling=2``) sees the same relevance.

    Parameters
    ----------
    model : nn.Module
        The extractor or the whole :class:`DigitsViT`.

    Returns
    -------
    dict
        Module name → :class:`~skbilrp.rules.Rule`, usable as ``rules=``.
    """
    return resolve_rules("zero-share", model)
