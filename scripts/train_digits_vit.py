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

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from skbilrp.models.digits import load_digits_images
from skbilrp.models.digits_vit import DigitsViT

DEFAULT_OUTPUT = (
    Path(__file__).resolve().parents[1] / "skbilrp" / "models" / "weights" / "digits_vit.pt"
)


def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``X`` that ``model`` classifies as ``y``."""
    model.eval()
    with torch.no_grad():
        return (model(X).argmax(1) == y).float().mean().item()


def shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Each image moved by up to ``max_shift`` pixels along each axis, zero-filled."""
    n, _, h, w = x.shape
    m = max_shift
    padded = F.pad(x, (m, m, m, m))
    dy, dx = torch.randint(0, 2 * m + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w))[:, None, :].expand(n, h, w)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


def train(epochs: int = 120, seed: int = 0) -> tuple[DigitsViT, float]:
    """Train a :class:`DigitsViT` on the training split; return it and its test accuracy."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # a fixed reduction order, hence bitwise-reproducible

    X_train, y_train = (torch.from_numpy(a) for a in load_digits_images("train"))
    X_test, y_test = (torch.from_numpy(a) for a in load_digits_images("test"))

    model = DigitsViT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = epochs * -(-len(X_train) // 32)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(X_train), generator=generator)
        total = 0.0
        for batch in order.split(32):
            optimizer.zero_grad()
            loss = loss_fn(model(shift(X_train[batch], generator)), y_train[batch])
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        if (epoch + 1) % 10 == 0:
            print(
                f"epoch {epoch + 1:3d}  loss {total / len(X_train):.4f}  "
                f"test accuracy {accuracy(model, X_test, y_test):.4f}", flush=True
            )
    return model, accuracy(model, X_test, y_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    model, acc = train(args.epochs, args.seed)
    print(f"test accuracy: {acc:.4f} ({time.perf_counter() - start:.0f} s)")
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.output)
    print(f"saved {args.output} ({args.output.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
