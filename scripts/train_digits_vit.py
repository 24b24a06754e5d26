"""Train the digits ViT shipped as ``skbilrp/models/weights/digits_vit.pt``.

Deterministic: fixed seed, deterministic algorithms, one thread, the fixed stratified
split ``skbilrp.models.digits.DIGITS_SPLIT`` (1347 training / 450 test images), the
architecture ``skbilrp.models.digits_vit.DIGITS_VIT_CONFIG``. AdamW (lr 2e-3, weight
decay 0.05, cosine decay), batch 32, 120 epochs; each training image is shifted by
up to one pixel (zero fill), drawn from the seeded generator.

Result of the run that produced the shipped file (torch 2.13.0 CPU):
test accuracy 0.9822 (442 / 450), about 60 s on 2 idle CPU cores (one thread); the
saved file is bitwise reproducible (``torch.save`` names its archive after the file,
so compare files of the same name).

Usage::

    python scripts/train_digits_vit.py [--output PATH] [--epochs N] [--seed S]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _digits_training import WEIGHTS, main, seeded, train  # noqa: E402

from skbilrp.models.digits_vit import DigitsViT  # noqa: E402


def shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Each image moved by up to ``max_shift`` pixels along each axis, zero-filled."""
    n, _, h, w = x.shape
    m = max_shift
    padded = F.pad(x, (m, m, m, m))
    dy, dx = torch.randint(0, 2 * m + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w))[:, None, :].expand(n, h, w)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


def _adamw_cosine(model: DigitsViT, steps: int) -> tuple:
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)


def fit(epochs: int = 120, seed: int = 0) -> tuple[DigitsViT, float]:
    """Train a :class:`DigitsViT` (AdamW, cosine decay, shifted images); return it and its test accuracy."""
    seeded(seed)
    model = DigitsViT()
    return train(model, _adamw_cosine, epochs, seed, augment=shift)


if __name__ == "__main__":
    main(__doc__.splitlines()[0], WEIGHTS / "digits_vit.pt", 120, fit)
