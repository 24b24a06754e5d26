"""What both digits training scripts share: the data, the logged training loop and the
command line that saves the weights. The deterministic set-up and the loop itself are
:func:`skbilrp.shortcuts.seeded` and :func:`skbilrp.shortcuts.train_classifier`."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from skbilrp.models.digits import load_digits_images
from skbilrp.shortcuts import accuracy, seeded, train_classifier

__all__ = ["WEIGHTS", "accuracy", "seeded", "train", "main"]

WEIGHTS = Path(__file__).resolve().parents[1] / "skbilrp" / "models" / "weights"


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

    def log(epoch: int, loss: float) -> None:
        if epoch % 10 == 0:
            print(f"epoch {epoch:3d}  loss {loss:.4f}  "
                  f"test accuracy {accuracy(model, X_test, y_test):.4f}", flush=True)

    train_classifier(model, X_train, y_train, optimizer, epochs, seed, schedule=schedule, augment=augment,
                     batch_size=batch_size, on_epoch=log)
    return model, accuracy(model, X_test, y_test)


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
