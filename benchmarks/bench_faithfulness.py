"""Faithfulness benchmark: pairwise and marginal flipping of similarity explanations.

For each model, pairs of related inputs are explained by BiLRP (the model's preset
rules), Hessian×Product, the rank-1 outer product of two gradient×input saliency maps
of the similarity, and a random ordering. Patches are then replaced by the baseline in
the order each explanation ranks them, and the area under the similarity curve is
reported (normalised by the unperturbed similarity; lower = more faithful).

Run from the repository root::

    .venv/bin/python benchmarks/bench_faithfulness.py --write docs/faithfulness.md

Each explanation is computed once and scored with both perturbations (mean and blur).

Models and pairs:

- MobileNetV2 (ImageNet weights), 112×112 inputs, 16-px patches (7×7 groups): two
  pairs per scikit-image / scikit-learn sample image (11 images), two crops of the
  same image that differ by a shift and a zoom, every other pair mirrored.
- digits CNN (shipped weights), 8×8 inputs, 2×2 patches (4×4 groups): ten pairs per
  class of two different test-split digits of the same class.

Takes about 3 minutes with one torch thread on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from skbilrp.evaluation import FaithfulnessResults, default_methods, evaluate, explain_pairs
from skbilrp.models import (
    digits_cnn,
    digits_cnn_rules,
    load_digits_images,
    mobilenet_v2,
    mobilenet_v2_rules,
)

IMAGE_SIZE = 112
IMAGE_PATCH = 16
DIGIT_PATCH = 2


def _sample_images() -> dict[str, np.ndarray]:
    """RGB float images in [0, 1] shipped with scikit-image and scikit-learn."""
    import skimage.data as data
    from skimage.color import gray2rgb
    from sklearn.datasets import load_sample_images

    images = {name: getattr(data, name)() for name in (
        "astronaut", "camera", "chelsea", "coffee", "rocket", "immunohistochemistry",
        "coins", "clock")}
    left, right, _ = data.stereo_motorcycle()
    images["motorcycle"] = left
    samples = load_sample_images()
    for fname, img in zip(samples.filenames, samples.images):
        images[fname.rsplit("/", 1)[-1].split(".")[0]] = img
    out = {}
    for name, img in images.items():
        img = np.asarray(img, dtype=np.float32) / 255.0
        out[name] = gray2rgb(img) if img.ndim == 2 else img[..., :3]
    return out


def _crop(img: np.ndarray, top: float, left: float, size: float, flip: bool) -> np.ndarray:
    """Square crop (fractions of the shorter side), resized to IMAGE_SIZE, (3, H, W)."""
    from skimage.transform import resize

    h, w = img.shape[:2]
    side = min(h, w)
    s = int(size * side)
    t, l = int(top * (h - s)), int(left * (w - s))
    patch = resize(img[t:t + s, l:l + s], (IMAGE_SIZE, IMAGE_SIZE), anti_aliasing=True)
    if flip:
        patch = patch[:, ::-1]
    return np.ascontiguousarray(patch.transpose(2, 0, 1), dtype=np.float32)


def image_pairs(n_per_image: int = 2, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs of two crops of the same image that differ by a shift and a zoom;
    every other pair is also mirrored."""
    rng = np.random.default_rng(seed)
    pairs = []
    for name, img in sorted(_sample_images().items()):
        for _ in range(n_per_image):
            top, left = rng.uniform(0.2, 0.8, size=2)
            a = _crop(img, top, left, 0.8, flip=False)
            shift = rng.uniform(-0.3, 0.3, size=2)
            b = _crop(img, np.clip(top + shift[0], 0, 1), np.clip(left + shift[1], 0, 1),
                      rng.uniform(0.6, 0.8), flip=len(pairs) % 2 == 1)
            pairs.append((a, b))
    return pairs


def digit_pairs(n_per_class: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs of two different test-split digits of the same class."""
    X, y = load_digits_images("test")
    rng = np.random.default_rng(seed)
    pairs = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        for _ in range(n_per_class):
            i, j = rng.choice(idx, 2, replace=False)
            pairs.append((X[i], X[j]))
    return pairs


@dataclass
class ModelRun:
    """Results of one model: one FaithfulnessResults per perturbation."""

    title: str
    detail: str
    results: dict[str, FaithfulnessResults]
    seconds: dict[str, float]
    wall: float


def run_model(title: str, detail: str, model: torch.nn.Module, rules: dict, pairs: list,
              patch: int, args: argparse.Namespace, hp_batch: int) -> ModelRun:
    """Explain the pairs once with every method, then score them per perturbation."""
    start = time.perf_counter()
    methods = default_methods(rules, seed=0)
    methods["hp"].batch_size = hp_batch
    explanations, seconds = explain_pairs(model, pairs, methods, pooling=patch)
    results = {}
    for perturbation in args.perturbations:
        results[perturbation] = evaluate(model, pairs, explanations, pooling=patch, steps=args.steps,
                                         perturbation=perturbation)
    run = ModelRun(title, detail, results, seconds, time.perf_counter() - start)
    print(f"\n## {title}: {detail}\n{run.wall:.0f} s; explanations: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    for perturbation, res in results.items():
        print(f"\nperturbation={perturbation!r}\n{res.to_markdown(reference='bilrp')}")
    return run


def summary(runs: list) -> str:
    """One line per model, mode and perturbation: BiLRP's rank and its wins."""
    lines = []
    for run in runs:
        for perturbation, res in run.results.items():
            n = len(res.auc[res.modes[0]]["bilrp"])
            for mode in res.modes:
                order = sorted(res.methods, key=lambda m: res.mean_auc(mode, m)[0])
                wins = ", ".join(f"{res.wins(mode, 'bilrp', m)}/{n} vs {m}" for m in res.methods if m != "bilrp")
                lines.append(f"- {run.title.split(' (')[0]}, {mode}, {perturbation}: BiLRP ranks "
                             f"{order.index('bilrp') + 1} of {len(order)} by mean AUC "
                             f"(order: {' < '.join(order)}); lower on {wins}.")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--perturbations", nargs="+", choices=("mean", "blur"), default=["mean", "blur"])
    parser.add_argument("--image-pairs-per-image", type=int, default=2)
    parser.add_argument("--digit-pairs-per-class", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 stays fast when other jobs share the cores)")
    parser.add_argument("--write", metavar="PATH", help="also write the tables as markdown")
    return parser


def main(argv: Optional[list[str]] = None) -> None:
    """Run both models, print the tables, optionally write them (``--write``)."""
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    mnet = mobilenet_v2(pretrained=True)
    mnet_pairs = image_pairs(args.image_pairs_per_image)
    n_groups = (IMAGE_SIZE // IMAGE_PATCH) ** 2
    runs = [run_model(
        "MobileNetV2 (ImageNet weights, `mobilenet_v2_rules`)",
        f"{len(mnet_pairs)} pairs of {IMAGE_SIZE}×{IMAGE_SIZE} crops of the 11 scikit-image / "
        "scikit-learn sample images (two crops of one image differing by a shift and a zoom, every "
        f"other pair mirrored); {IMAGE_PATCH}-px patches ({n_groups} groups per image).",
        mnet, mobilenet_v2_rules(mnet), mnet_pairs, IMAGE_PATCH, args, hp_batch=64)]
    digits = digits_cnn()
    dig_pairs = digit_pairs(args.digit_pairs_per_class)
    runs.append(run_model(
        "digits CNN (shipped weights, `digits_cnn_rules`)",
        f"{len(dig_pairs)} pairs of two different test-split digits of the same class; "
        f"{DIGIT_PATCH}×{DIGIT_PATCH}-px patches ({(8 // DIGIT_PATCH) ** 2} groups per image).",
        digits, digits_cnn_rules(digits), dig_pairs, DIGIT_PATCH, args, hp_batch=4096))
    total = time.perf_counter() - start
    print(f"\n{summary(runs)}\n\ntotal {total:.0f} s")
    if args.write:
        write_markdown(args, runs, total)


def write_markdown(args: argparse.Namespace, runs: list, total: float) -> None:
    """The results page: protocol, tables, summary and the command that made it."""
    cmd = ".venv/bin/python benchmarks/bench_faithfulness.py --write " + args.write
    defaults = vars(_parser().parse_args([]))
    for key, value in vars(args).items():
        if key != "write" and value != defaults[key]:
            value = " ".join(value) if isinstance(value, list) else value
            cmd += f" --{key.replace('_', '-')} {value}"
    sections = []
    for run in runs:
        parts = [f"### {run.title}", "", run.detail, "",
                 "Time to explain all pairs: " + ", ".join(f"{k} {v:.1f} s" for k, v in run.seconds.items()) + "."]
        for perturbation, res in run.results.items():
            parts += ["", f"Perturbation `{perturbation}`:", "", res.to_markdown(reference="bilrp")]
        sections.append("\n".join(parts))
    text = TEMPLATE.format(
        steps=args.steps, results="\n\n".join(sections), summary=summary(runs), total=total,
        threads=args.threads, torch=torch.__version__, python=platform.python_version(), cmd=cmd)
    with open(args.write, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(f"wrote {args.write}")


TEMPLATE = """\
# Faithfulness of similarity explanations

Does an explanation point at the evidence the model actually uses? Following the
pixel-flipping idea, we remove evidence in the order an explanation ranks it and
watch the similarity ``y = <phi(x), phi(x')>`` fall. The faster it falls, the more
faithful the ranking. Implemented in `skbilrp.evaluation`; the numbers below come from
`benchmarks/bench_faithfulness.py`.

## Protocol

- **Pairwise flipping**: walk through patch pairs ``(P, P')`` in decreasing order of
  ``R[P, P']`` and perturb ``P`` in ``x`` and ``P'`` in ``x'`` together (each patch once,
  when it first comes up). The curve is read at {steps} + 1 equally spaced fractions of all
  patches of both images.
- **Marginal flipping**: perturb the patches of ``x`` alone in decreasing order of the
  marginal relevance ``R.sum(1)``, and separately those of ``x'`` by ``R.sum(0)``; the
  curve is the mean of the two.
- **Perturbation** (`perturbation=` of `flipping_curve` and `evaluate`): `"mean"`
  replaces a patch by the per-channel mean of its image; `"blur"` by the same patch of
  a Gaussian blur of the image (σ = 1/8 of the image side by default), which keeps
  colour and rough shading and creates fewer artificial edges. The same explanations
  are scored with both.
- **Kernel**: the linear kernel (dot product of the features). With the cosine, two
  fully perturbed (flat) images look alike again and the curve climbs back up.
- **Score**: area under the curve divided by the unperturbed similarity (trapezoid
  rule over the perturbed fraction in [0, 1]). Every ordering starts and ends at the
  same inputs, so orderings differ only in the path. **Lower is more faithful.**
- **Methods**: `bilrp` = BiLRP with the model's preset rules; `hp` = Hessian×Product
  (gradient × input of every feature, from plain autodiff, computed in forward mode;
  equal to BiLRP with LRP-0 on bias-free ReLU networks); `saliency_outer` = the rank-1
  outer product of the two gradient×input saliency maps of the similarity; `random` =
  a seeded random ordering.
- Cells: mean ± standard error over pairs; the last columns count the pairs on
  which BiLRP's area is strictly lower than that method's, with the one-sided
  sign-test p-value (ties left out).

## Results

{results}

## Summary

{summary}

Notes for reading the tables:

- On the digits CNN (bias-free ReLU network) `hp` and `saliency_outer` have identical
  marginal scores: ``y`` is then homogeneous of degree one in each input, so the
  row sums of the HP matrix are ``x ⊙ ∇_x y``, the same ranking as the saliency map.
  BiLRP differs from both only through its rules (z^B and γ instead of LRP-0).
- On MobileNetV2, HP is not LRP-0: ReLU6 saturates and the folded BatchNorms add
  biases; `bilrp` uses z^B on the first conv, γ on the depthwise convs and ε elsewhere,
  and hands each folded bias's share of the relevance to the image region under its
  unit (`bias="flat"`), so the explanations sum to the similarity.

Measured in {total:.0f} s on a 2-core CPU (torch threads: {threads}; torch {torch},
Python {python}).

## Regenerate

From the repository root:

    {cmd}
"""


if __name__ == "__main__":
    main(sys.argv[1:])
