"""Train the digits CNN shipped as ``skbilrp/models/weights/digits_cnn.pt``.

Deterministic: fixed seed, deterministic algorithms, one thread, the fixed stratified
split ``skbilrp.models.digits.DIGITS_SPLIT`` (1347 training / 450 test images). Adam,
lr 1e-3, batch 32, 40 epochs.

Result of the run that produced the shipped file (torch 2.13.0 CPU):
test accuracy 0.9844 (443 / 450), about 10 s on 2 CPU cores; the saved file is
bitwise reproducible.

Usage::

    python scripts/train_digits_cnn.py [--output PATH] [--epochs N]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _digits_training import WEIGHTS, main, seeded, train  # noqa: E402

from skbilrp.models.digits import DigitsCNN  # noqa: E402


def fit(epochs: int = 40, seed: int = 0) -> tuple[DigitsCNN, float]:
    """Train a :class:`DigitsCNN` (Adam, lr 1e-3); return it and its test accuracy."""
    seeded(seed)
    model = DigitsCNN()
    return train(model, lambda m, steps: (torch.optim.Adam(m.parameters(), lr=1e-3), None), epochs, seed)


if __name__ == "__main__":
    main(__doc__.splitlines()[0], WEIGHTS / "digits_cnn.pt", 40, fit)
