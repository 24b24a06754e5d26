"""Pointing-game sections of the faithfulness benchmark: is the known correspondence found?

- images: collage pairs (:func:`skbilrp.evaluation.make_collage_pairs`) of the
  offline sample photos and LFW faces, explained by MobileNetV2 and
  EfficientNet-Lite0 (preset rules); collages of four test digits of different
  classes for the digits CNN and the digits ViT (CP-LRP and AttnLRP).
- text: sentence pairs sharing exactly one content word
  (:func:`skbilrp.evaluation.make_shared_word_pairs`) on all-MiniLM-L6-v2 and
  all-mpnet-base-v2.
- image × text (``_faith_cross_pointing``): a collage of four photos and a prompt naming
  one of them, on the shipped zero-shot model (FIxLIP's protocol).

Run one alone (one torch thread)::

    .venv/bin/python benchmarks/_faith_pointing.py mobilenet_v2 6

``bias_minilm`` / ``bias_mpnet`` (not a section of the page) compares the bias modes of
LRP-0 on text: ``"zero-mass"`` (TextKernel's default), ``"zero-share"``, ``"zero-flat"``
and ``"zero"``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from skbilrp.evaluation import (
    PointingResults,
    make_collage_pairs,
    make_shared_word_pairs,
    pointing_game,
    text_pointing_game,
)

#: the second collage: each tile mirrored with this probability and zoomed in to a
#: central square of this fraction of the photo (the first shows the whole square)
FLIP = 0.5
RESCALE = (0.6, 1.0)
N_FACES = 20


@dataclass
class PointingRun:
    """One model's pointing game."""

    title: str
    detail: str
    results: PointingResults
    wall: float


def references(run: PointingRun) -> tuple[str, ...]:
    return tuple(m for m in run.results.methods if m.startswith("bilrp"))


def markdown(run: PointingRun) -> str:
    return "\n".join([f"### {run.title}", "", run.detail, "", run.results.to_markdown(references(run))])


def summary_lines(run: PointingRun) -> list[str]:
    """Per reference: rank by mean corresponding share, and wins against every method."""
    res, col = run.results, run.results.columns[0]
    order = sorted(res.methods, key=lambda m: -res.mean_share(col, m)[0])
    lines = []
    for ref in references(run):
        wins = ", ".join(f"{res.wins(col, ref, m)}/{res.n_pairs} vs {m} (p={res.sign_test(col, ref, m):.2g})"
                         for m in res.methods if m != ref)
        lines.append(f"- {run.title.split(' (')[0]}, pointing game: `{ref}` ranks {order.index(ref) + 1} of "
                     f"{len(order)} by mean {col} share (order: {' > '.join(order)}; chance "
                     f"{res.chance[col].mean():.3f}); higher on {wins}.")
    return lines


def photos() -> tuple[list[np.ndarray], int, int]:
    """The offline sample photos and the first ``N_FACES`` LFW faces, (3, H, W) in [0, 1]."""
    import skimage.data as data
    from _faith_images import _rgb, sample_images

    samples = [img.transpose(2, 0, 1) for img in sample_images().values()]
    faces = [_rgb(face).transpose(2, 0, 1) for face in data.lfw_subset()[:N_FACES]]
    return samples + faces, len(samples), len(faces)


def _collage_detail(n: int, side: int, patch: int, source: str) -> str:
    tile = side // 2
    return (f"{n} pairs of {side}×{side} collages of four {source} in a 2×2 grid; the second collage "
            f"holds the same four with the tiles permuted so that none keeps its place, each tile mirrored "
            f"with probability {FLIP} and zoomed to a central square of {RESCALE[0]:g}–{RESCALE[1]:g} of the "
            f"photo. {patch}-px patches ({(tile // patch) ** 2} per {tile}-px tile, none straddles two tiles).")


def imagenet_pointing(which: str, n_pairs: int, side: int = 96, patch: int = 16, seed: int = 0) -> PointingRun:
    """MobileNetV2 or EfficientNet-Lite0 (preset rules) on collages of photos and faces."""
    from _faith_images import imagenet_model

    start = time.perf_counter()
    title, model, methods = imagenet_model(which)
    pics, n_samples, n_faces = photos()
    pairs = make_collage_pairs(pics, n_pairs, side, flip=FLIP, rescale=RESCALE, random_state=seed)
    res = pointing_game(model, pairs, methods, pooling=patch)
    detail = _collage_detail(n_pairs, side, patch, f"photos drawn from {n_samples} scikit-image / scikit-learn "
                             f"sample images and {n_faces} faces of `skimage.data.lfw_subset()`")
    return PointingRun(title, detail, res, time.perf_counter() - start)


def digits_pointing(n_pairs: int, seed: int = 0, patch: int = 2) -> list[PointingRun]:
    """The digits CNN and the digits ViT (both attention rules) on collages of four digits."""
    from _faith_images import _image_methods

    from skbilrp.evaluation import BiLRPMethod
    from skbilrp.models import digits_cnn, digits_cnn_rules, digits_vit, digits_vit_rules, load_digits_images

    X, y = load_digits_images("test")
    rng = np.random.default_rng(seed)
    # one test digit per class, so the four tiles of a collage are four different digits
    pics = [X[rng.choice(np.flatnonzero(y == c))] for c in range(10)]
    pairs = make_collage_pairs(pics, n_pairs, 8, flip=0.0, random_state=seed)
    detail = (f"{n_pairs} pairs of 8×8 collages of four test digits of different classes (one digit per class, "
              f"each downscaled to 4×4, the models' input size); the second with the tiles permuted so that "
              f"none keeps its place (no mirroring or zoom at this size). {patch}×{patch}-px patches "
              f"(4 per tile).")
    runs = []
    cnn, vit = digits_cnn(), digits_vit()
    vit_rules = digits_vit_rules(vit)
    for title, model, bilrp in (
            ("digits CNN (shipped weights, `digits_cnn_rules`)", cnn, {"bilrp": BiLRPMethod(digits_cnn_rules(cnn))}),
            ("digits ViT (shipped weights, `digits_vit_rules`)", vit,
             {"bilrp_cp": BiLRPMethod(vit_rules, attention="cp"),
              "bilrp_attnlrp": BiLRPMethod(vit_rules, attention="attnlrp")})):
        start = time.perf_counter()
        res = pointing_game(model, pairs, _image_methods(bilrp, 4096), pooling=patch)
        runs.append(PointingRun(title, detail, res, time.perf_counter() - start))
    return runs


def text_pointing(model: str, n_pairs: int, ij_steps: int = 8, seed: int = 0) -> PointingRun:
    """all-MiniLM-L6-v2 or all-mpnet-base-v2 on sentence pairs sharing one content word."""
    from skbilrp.evaluation import default_text_methods
    from skbilrp.models import minilm, mpnet

    start = time.perf_counter()
    title, encoder = {"minilm": ("all-MiniLM-L6-v2", lambda: minilm()[0]),
                      "mpnet": ("all-mpnet-base-v2", lambda: mpnet()[0])}[model]
    pairs = make_shared_word_pairs(n_pairs, random_state=seed)
    res = text_pointing_game(encoder(), pairs, default_text_methods(ij_steps, seed))
    detail = (f"{n_pairs} sentence pairs built from `skbilrp/data/sentences.txt` (`make_shared_word_pairs`): two "
              "sentences of different topics without a common content word, one content word of the first "
              "put in place of a content word of the second (same ending class, another word position). "
              "Truth: the token pairs of that word; shares over the ordinary tokens. "
              f"Integrated Jacobians with {ij_steps} intervals. Example: “{pairs[0].text_a}” / "
              f"“{pairs[0].text_b}” (shared: *{pairs[0].word}*).")
    return PointingRun(f"{title} (sentence-transformers weights, token pairs)", detail, res,
                       time.perf_counter() - start)


def bias_pointing(model: str, n_pairs: int, seed: int = 0) -> PointingRun:
    """The bias modes of LRP-0 on the shared-word pairs of :func:`text_pointing`: BiLRP
    (CP-LRP) with ``"zero-mass"`` (TextKernel's default: biases passed on by input size,
    one push per Linear), ``"zero-share"`` (by contribution size: each Linear pushed
    twice), ``"zero-flat"`` (spread over the input under the unit, one push) and
    ``"zero"`` (the biases absorb their share). Not a section of the results page: run
    it alone."""
    from skbilrp.evaluation.text import BiLRPTextMethod
    from skbilrp.models import minilm, mpnet

    start = time.perf_counter()
    title, encoder = {"minilm": ("all-MiniLM-L6-v2", lambda: minilm()[0]),
                      "mpnet": ("all-mpnet-base-v2", lambda: mpnet()[0])}[model]
    pairs = make_shared_word_pairs(n_pairs, random_state=seed)
    methods = {f"bilrp_{rules}": BiLRPTextMethod("cp", rules)
               for rules in ("zero-mass", "zero-share", "zero-flat", "zero")}
    res = text_pointing_game(encoder(), pairs, methods)
    detail = (f"{n_pairs} sentence pairs of `make_shared_word_pairs` (as in the text pointing game), CP-LRP, "
              "four bias modes of LRP-0; times of the whole explanation of every pair, batches of 16 texts.")
    return PointingRun(f"{title}: bias modes (token pairs)", detail, res, time.perf_counter() - start)


def run(name: str, args: Any) -> list[PointingRun]:
    """The benchmark section ``name`` ("pointing_<model>")."""
    which = name[len("pointing_"):]
    if which == "cross_modal":
        import _faith_cross_pointing

        return [_faith_cross_pointing.cross_modal_pointing(args.pointing_pairs)]
    if which in ("mobilenet_v2", "efficientnet_lite0"):
        return [imagenet_pointing(which, args.pointing_pairs, args.side, args.patch)]
    if which == "digits":
        return digits_pointing(args.pointing_pairs)
    if which.startswith("bias_"):
        return [bias_pointing(which[len("bias_"):], args.pointing_pairs)]
    kwargs = {} if args.ij_steps is None else {"ij_steps": args.ij_steps}
    return [text_pointing(which[len("text_"):], args.pointing_pairs, **kwargs)]


if __name__ == "__main__":
    torch.set_num_threads(1)
    name, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 6
    from types import SimpleNamespace

    for r in run(f"pointing_{name}", SimpleNamespace(pointing_pairs=n, side=96, patch=16, ij_steps=None)):
        print(markdown(r), "", *summary_lines(r), f"\n{r.wall:.0f} s", sep="\n")
