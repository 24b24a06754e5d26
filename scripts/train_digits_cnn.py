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

import argparse
from pathlib import Path

import torch
from torch import nn

from skbilrp.models.digits import DigitsCNN, load_digits_images

DEFAULT_OUTPUT = (
    Path(__file__).resolve().parents[1] / "skbilrp" / "models" / "weights" / "digits_cnn.pt"
)


def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``X`` that ``model`` classifies as ``y``."""
    model.eval()
    with torch.no_grad():
        return (model(X).argmax(1) == y).float().mean().item()


def train(epochs: int = 40, seed: int = 0) -> tuple[DigitsCNN, float]:
    """Train a :class:`DigitsCNN` on the training split; return it and its test accuracy."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # a fixed reduction order, hence bitwise-reproducible

    X_train, y_train = (torch.from_numpy(a) for a in load_digits_images("train"))
    X_test, y_test = (torch.from_numpy(a) for a in load_digits_images("test"))

    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(X_train), generator=generator)
        total = 0.0
        for batch in order.split(32):
            optimizer.zero_grad()
            loss = loss_fn(model(X_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        if (epoch + 1) % 10 == 0:
            print(
                f"epoch {epoch + 1:3d}  loss {total / len(X_train):.4f}  "
                f"test accuracy {accuracy(model, X_test, y_test):.4f}"
            )
    return model, accuracy(model, X_test, y_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model, acc = train(args.epochs, args.seed)
    print(f"test accuracy: {acc:.4f}")
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.output)
    print(f"saved {args.output} ({args.output.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
