"""What both digits training scripts share: deterministic set-up, the training loop,
the accuracy and the command line that saves the weights."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from skbilrp.models.digits import load_digits_images

WEIGHTS = Path(__file__).resolve().parents[1] / "skbilrp" / "models" / "weights"


def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``X`` that ``model`` classifies as ``y``."""
    model.eval()
    with torch.no_grad():
        return (model(X).argmax(1) == y).float().mean().item()


def train(model: nn.Module, make_optimizer: Callable, epochs: int, seed: int,
          augment: Optional[Callable] = None, batch_size: int = 32) -> tuple[nn.Module, float]:
    """Train ``model`` on the training split; return it and its test accuracy.

    ``make_optimizer(model, steps)`` returns ``(optimizer, schedule or None)``;
    ``augment(x, generator)`` transforms each training batch. Bitwise reproducible:
    seeded, deterministic algorithms, one thread (a fixed reduction order). The model
    must be built after :func:`seeded` for its initialisation to be reproducible too.
    """
    X_train, y_train = (torch.from_numpy(a) for a in load_digits_images("train"))
    X_test, y_test = (torch.from_numpy(a) for a in load_digits_images("test"))
    optimizer, schedule = make_optimizer(model, epochs * -(-len(X_train) // batch_size))
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(X_train), generator=generator)
        total = 0.0
        for batch in order.split(batch_size):
            optimizer.zero_grad()
            x = X_train[batch] if augment is None else augment(X_train[batch], generator)
            loss = loss_fn(model(x), y_train[batch])
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            total += loss.item() * len(batch)
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1:3d}  loss {total / len(X_train):.4f}  "
                  f"test accuracy {accuracy(model, X_test, y_test):.4f}", flush=True)
    return model, accuracy(model, X_test, y_test)


def seeded(seed: int) -> None:
    """Seed torch and make it deterministic, before the model is built."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def main(description: str, default_output: Path, default_epochs: int,
         fit: Callable[[int, int], tuple[nn.Module, float]]) -> None:
    """Parse ``--output --epochs --seed``, run ``fit(epochs, seed)``, save float32 weights."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--output", type=Path, default=default_output)
    parser.add_argument("--epochs", type=int, default=default_epochs)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    model, acc = fit(args.epochs, args.seed)
    print(f"test accuracy: {acc:.4f} ({time.perf_counter() - start:.0f} s)")
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.output)
    print(f"saved {args.output} ({args.output.stat().st_size / 1024:.0f} KiB)")
