"""Cross-modal pointing-game section of the faithfulness benchmark (FIxLIP's protocol).

Collages of four offline sample photos (the image pointing game's pool) in a 2×2 grid,
each paired with a prompt "a photo of <name>" naming one of them
(:func:`skbilrp.evaluation.make_named_collages`), explained patch × token by the shipped
zero-shot model (``zero_shot_imagenet("mobilenet_v2")`` for images, all-MiniLM-L6-v2 for
texts) through :class:`skbilrp.CrossModalKernel`; score: the share of positive relevance
on the named tile (:func:`skbilrp.evaluation.cross_pointing_game`).

Which photos: every sample photo with an unambiguous English name (:data:`NAMES`) takes
part when the model itself finds it, i.e. when its prompt ranks it first among all the
named photos, each shown alone at the tile's size; the others are left out (named on
the page), since a model that does not match the name to the photo gives the
explanation nothing to find.

Run it alone (one torch thread)::

    .venv/bin/python benchmarks/_faith_cross_pointing.py 6
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from _faith_pointing import PointingRun

#: sample photo (a key of ``_faith_images.sample_images()``) -> the phrase naming it
NAMES = {
    "astronaut": "an astronaut", "chelsea": "a cat", "coffee": "a cup of coffee", "rocket": "a rocket",
    "motorcycle": "a motorcycle", "camera": "a man with a camera", "clock": "a clock", "china": "a palace",
    "flower": "a flower", "hubble_deep_field": "galaxies in space", "horse": "a horse", "brick": "a brick wall",
    "coins": "coins", "checkerboard": "a checkerboard", "grass": "grass", "gravel": "gravel",
    "moon": "the surface of the moon", "page": "a page of text",
}
TEMPLATE = "a photo of {}"
#: the model's input size; 28-px patches: an 8 × 8 grid (4 × 4 per 112-px tile), close to the
#: 7 × 7 patches of the ViT-B/32 CLIP that FIxLIP explains (16-px patches cost three times as much)
SIDE, PATCH = 224, 28


def model_and_rules() -> tuple[torch.nn.Module, dict]:
    """The shipped zero-shot model and the README's rules: MobileNetV2's preset on the
    image tower, LRP-0 with the biases' share passed on for the rest (the text tower)."""
    from skbilrp.models import mobilenet_v2_rules, zero_shot_imagenet
    from skbilrp.rules import Zero, rule_targets

    model = zero_shot_imagenet("mobilenet_v2")
    return model, {**mobilenet_v2_rules(model), rule_targets(): Zero(bias="share")}


def found_photos(kern, pics: dict[str, np.ndarray], tile: int) -> tuple[list[str], dict[str, int]]:
    """The photos whose prompt ranks them first among all named photos, each alone at ``tile`` px,
    and every photo's rank."""
    from skbilrp.evaluation.pointing import _tile

    names = list(pics)
    X = torch.stack([_tile(torch.as_tensor(pics[n]), tile, 1.0, False) for n in names])
    scores = kern.transform(X)  # (photos, prompts), prompts in NAMES order
    ranks = {n: int((scores[:, j] > scores[j, j]).sum()) + 1 for j, n in enumerate(names)}
    return [n for n in names if ranks[n] == 1], ranks


def cross_modal_pointing(n_pairs: int, seed: int = 0) -> PointingRun:
    """The zero-shot MobileNetV2 × MiniLM model on collage-prompt pairs."""
    from _faith_images import sample_images

    from skbilrp import CrossModalKernel
    from skbilrp.evaluation import cross_pointing_game, default_cross_methods, make_named_collages

    start = time.perf_counter()
    model, rules = model_and_rules()
    samples = sample_images()
    pics = {n: samples[n].transpose(2, 0, 1) for n in NAMES}
    kern = CrossModalKernel(model, rules=rules, pooling=PATCH).fit([TEMPLATE.format(NAMES[n]) for n in pics])
    kept, ranks = found_photos(kern, pics, SIDE // 2)
    collages = make_named_collages([pics[n] for n in kept], n_pairs, SIDE, random_state=seed)
    names = [NAMES[kept[i]] for i in collages.named_photo]
    prompts = [TEMPLATE.format(name) for name in names]
    res = cross_pointing_game(kern, collages, prompts, default_cross_methods(seed=seed), names=names)
    dropped = ", ".join(f"{n} ({ranks[n]})" for n in NAMES if n not in kept)
    tile = SIDE // 2
    detail = (
        f"{n_pairs} pairs of a {SIDE}×{SIDE} collage of four distinct photos in a 2×2 grid (each a {tile}-px "
        f"central square; photos, places and the named tile drawn with seed {seed}) and the prompt "
        f"“{TEMPLATE.format('<name>')}” naming one of them, explained by `zero_shot_imagenet(\"mobilenet_v2\")` "
        f"× all-MiniLM-L6-v2 through `CrossModalKernel` (cosine; rules `{{**mobilenet_v2_rules(m), "
        f"rule_targets(): Zero(bias=\"share\")}}`, the README's), {PATCH}-px patches ({(tile // PATCH) ** 2} per "
        f"tile) × all tokens of the prompt ([CLS] and [SEP] included). Photos: the {len(kept)} sample photos "
        f"whose prompt ranks them first among the {len(NAMES)} named ones, each alone at {tile} px: "
        f"{', '.join(f'{n} ({NAMES[n]!r})' for n in kept)}; left out (rank of the photo for its own prompt): "
        f"{dropped or 'none'}. `gradxinput_outer`: the outer product of the two gradient × input maps of the "
        "cosine (pixels summed per patch; MiniLM at the input of its first transformer layer), plain autograd. "
        "Chance: the named tile's share of the patches, 0.25. Second column: explanation and truth restricted "
        "to the tokens of the name's content words (e.g. *cup*, *coffee*).")
    return PointingRun("zero-shot MobileNetV2 × all-MiniLM-L6-v2 (image × text, patch × token)", detail, res,
                       time.perf_counter() - start)


if __name__ == "__main__":
    torch.set_num_threads(1)
    from _faith_pointing import markdown

    run = cross_modal_pointing(int(sys.argv[1]) if len(sys.argv) > 1 else 6)
    print(markdown(run), f"\n{run.wall:.0f} s")
