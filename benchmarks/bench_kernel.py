"""Benchmark of DeepKernel: ratios measured side by side in one run (no absolute claims).

(a) ``transform()`` throughput relative to a plain batched forward of the same model
    (target >= 0.9): the digits CNN, and VGG-16 cut at pool3 on 64 px images (random
    weights). Runs alternate between the two and the median of the repeats is taken.
(b) Cost of ``explain_pairs`` on an N x N block, N = 8 relative to N = 2, with the
    digits CNN and 2x2 patch pooling: per-sample relevance is computed once per sample,
    so the cost grows like N (ratio ~4), not like the N^2 pairs (~16).

Run: ``.venv/bin/python benchmarks/bench_kernel.py [--repeats 7] [--threads 1]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from skbilrp.kernel import DeepKernel
from skbilrp.models import digits_cnn, load_digits_images, vgg16


def plain_forward(model: nn.Module, x: np.ndarray, input_shape: tuple, batch_size: int) -> np.ndarray:
    """The baseline: a batched forward under no_grad, features back as numpy."""
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            batch = torch.from_numpy(x[start:start + batch_size].reshape(-1, *input_shape))
            out.append(model(batch).flatten(1).numpy())
    return np.concatenate(out)


def median_times(funcs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each function, runs interleaved so drifts hit all alike."""
    for f in funcs.values():  # warm-up
        f()
    times: dict[str, list[float]] = {name: [] for name in funcs}
    for r in range(repeats):
        order = list(funcs) if r % 2 == 0 else list(funcs)[::-1]
        for name in order:
            t0 = time.perf_counter()
            funcs[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def transform_throughput(name: str, model: nn.Module, x: np.ndarray, input_shape: tuple,
                         batch_size: int, repeats: int) -> None:
    model.eval()
    x32 = x.astype(np.float32)
    dk = DeepKernel(model, input_shape=input_shape, batch_size=batch_size).fit(x[:16])
    t = median_times({
        "plain": lambda: plain_forward(model, x32, input_shape, batch_size),
        "transform": lambda: dk.transform(x),
    }, repeats)
    print(f"(a) {name:<28} n={len(x):<5} transform throughput / plain forward = "
          f"{t['plain'] / t['transform']:.3f}   (target >= 0.9)")


def block_cost(repeats: int) -> None:
    images, _ = load_digits_images("test")
    x = images.reshape(len(images), -1).astype(np.float64)
    sizes = (2, 4, 8, 16)
    # batch_size=64: all samples of a block in one relevance batch (the default use);
    # batch_size=1: one sample at a time, which exposes the per-sample cost itself
    for batch_size in (64, 1):
        dk = DeepKernel(digits_cnn(), input_shape=(1, 8, 8), pooling=2, batch_size=batch_size).fit(x[:4])
        # Y given: nothing is reused from earlier calls, every sample is explained afresh
        funcs = {n: (lambda n=n: dk.explain_pairs(x[:n], x[100:100 + n])) for n in sizes}
        t = median_times(funcs, repeats)
        for n in sizes[1:]:
            print(f"(b) batch_size={batch_size:<2} explain_pairs {n:>2}x{n:<2} block / 2x2 block cost = "
                  f"{t[n] / t[2]:6.2f}   (linear in N: {n / 2:.0f}, per pair: {(n / 2) ** 2:.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice); 1 is steadier on a busy machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.repeats} runs")

    images, _ = load_digits_images("all")
    digits = images.reshape(len(images), -1).astype(np.float64)
    transform_throughput("digits CNN (1x8x8)", digits_cnn(), digits, (1, 8, 8), 64, args.repeats)

    torch.manual_seed(0)
    vgg = vgg16(cut="pool3")
    rng = np.random.default_rng(0)
    pictures = rng.random((96, 3 * 64 * 64))
    transform_throughput("VGG-16 to pool3 (3x64x64)", vgg, pictures, (3, 64, 64), 32, max(3, args.repeats // 2))

    block_cost(args.repeats)


if __name__ == "__main__":
    main()
