"""Image pairs and the per-model run of the faithfulness benchmark.

Pairs, all built offline:

- ImageNet models: for every scikit-image / scikit-learn sample image, three pairs of
  two crops of that image (a shift and a zoom; a mirrored shift; a strong zoom), plus
  pairs of two different faces of ``skimage.data.lfw_subset()``.
- digits models: pairs of two different test-split digits of the same class.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from skbilrp.evaluation import FaithfulnessResults, evaluate, explain_pairs
from skbilrp.models import load_digits_images

#: scikit-image sample images that load without a download (``cat`` is ``chelsea``)
SKIMAGE_IMAGES = (
    "astronaut", "brick", "camera", "cell", "checkerboard", "chelsea", "clock", "coffee", "coins",
    "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
    "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text")


def _rgb(img: np.ndarray) -> np.ndarray:
    from skimage.color import gray2rgb

    img = np.asarray(img, dtype=np.float32)
    if img.max() > 1.0:
        img = img / 255.0
    return gray2rgb(img) if img.ndim == 2 else img[..., :3]


def sample_images() -> dict[str, np.ndarray]:
    """Every offline sample image of scikit-image and scikit-learn, RGB float in [0, 1]."""
    import skimage.data as data
    from sklearn.datasets import load_sample_images

    images = {name: getattr(data, name)() for name in SKIMAGE_IMAGES}
    images["motorcycle"] = data.stereo_motorcycle()[0]
    samples = load_sample_images()
    for fname, img in zip(samples.filenames, samples.images):
        images[fname.rsplit("/", 1)[-1].split(".")[0]] = img
    return {name: _rgb(img) for name, img in sorted(images.items())}


def _crop(img: np.ndarray, top: float, left: float, size: float, flip: bool, side: int) -> np.ndarray:
    """Square crop (``size``: fraction of the shorter side; ``top``/``left``: fraction of
    the free room), resized to ``side`` pixels, as (3, side, side)."""
    from skimage.transform import resize

    h, w = img.shape[:2]
    s = int(size * min(h, w))
    t, l = int(np.clip(top, 0, 1) * (h - s)), int(np.clip(left, 0, 1) * (w - s))
    patch = resize(img[t:t + s, l:l + s], (side, side), anti_aliasing=True)
    if flip:
        patch = patch[:, ::-1]
    return np.ascontiguousarray(patch.transpose(2, 0, 1), dtype=np.float32)


def image_pairs(side: int, n_faces: int = 100, seed: int = 0) -> tuple[list, list[str]]:
    """Three crop pairs per sample image and ``n_faces`` pairs of two different faces.

    The face pairs are distinct unordered pairs of the 100 faces of
    ``skimage.data.lfw_subset()`` (a face may occur in several pairs).

    Returns
    -------
    pairs : list of (ndarray, ndarray)
        Images (3, side, side) in [0, 1].
    kinds : list of str
        ``"shift"``, ``"mirror"``, ``"zoom"`` or ``"faces"`` per pair.
    """
    import skimage.data as data

    rng = np.random.default_rng(seed)
    pairs, kinds = [], []
    for img in sample_images().values():
        top, left = rng.uniform(0.2, 0.8, size=2)
        a = _crop(img, top, left, 0.8, False, side)
        for kind in ("shift", "mirror", "zoom"):
            if kind == "zoom":
                b = _crop(img, 0.5, 0.5, rng.uniform(0.4, 0.55), False, side)
            else:
                dt, dl = rng.uniform(-0.3, 0.3, size=2)
                b = _crop(img, top + dt, left + dl, rng.uniform(0.6, 0.8), kind == "mirror", side)
            pairs.append((a, b))
            kinds.append(kind)
    faces = data.lfw_subset()[:100]  # the first 100 are faces, the rest are not
    couples = np.array([(i, j) for i in range(len(faces)) for j in range(i + 1, len(faces))])
    for i, j in couples[rng.choice(len(couples), size=n_faces, replace=False)]:
        pairs.append((_crop(_rgb(faces[i]), 0, 0, 1, False, side), _crop(_rgb(faces[j]), 0, 0, 1, False, side)))
        kinds.append("faces")
    return pairs, kinds


def digit_pairs(n_per_class: int = 10, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs of two different test-split digits of the same class."""
    X, y = load_digits_images("test")
    rng = np.random.default_rng(seed)
    pairs = []
    for c in range(10):
        for i, j in (rng.choice(np.flatnonzero(y == c), 2, replace=False) for _ in range(n_per_class)):
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


def run_model(title: str, detail: str, model: torch.nn.Module, methods: dict, pairs: list, patch: int,
              steps: int, perturbations: list[str], log: Callable[[str], None] = print) -> ModelRun:
    """Explain the pairs once with every method, then score them per perturbation."""
    start = time.perf_counter()
    explanations, seconds = explain_pairs(model, pairs, methods, pooling=patch)
    results = {p: evaluate(model, pairs, explanations, pooling=patch, steps=steps, perturbation=p)
               for p in perturbations}
    run = ModelRun(title, detail, results, seconds, time.perf_counter() - start)
    log(f"\n## {title}: {detail}\n{run.wall:.0f} s; explanations: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    for perturbation, res in results.items():
        log(f"\nperturbation={perturbation!r}\n{res.to_markdown(reference=next(iter(methods)))}")
    return run


def summary_lines(run: ModelRun, references: tuple[str, ...] = ("bilrp",)) -> list[str]:
    """Per mode and perturbation: each reference's rank by mean AUC and its wins."""
    lines = []
    for perturbation, res in run.results.items():
        n = len(res.auc[res.modes[0]][references[0]])
        for mode in res.modes:
            order = sorted(res.methods, key=lambda m: res.mean_auc(mode, m)[0])
            for ref in references:
                wins = ", ".join(f"{res.wins(mode, ref, m)}/{n} vs {m}" for m in res.methods if m != ref)
                lines.append(f"- {run.title.split(' (')[0]}, {mode}, {perturbation}: `{ref}` ranks "
                             f"{order.index(ref) + 1} of {len(order)} by mean AUC "
                             f"(order: {' < '.join(order)}); lower on {wins}.")
    return lines


def markdown(run: ModelRun, references: tuple[str, ...] = ("bilrp",)) -> str:
    """The section of one model: setting, time per method, one table per perturbation."""
    parts = [f"### {run.title}", "", run.detail, "",
             "Time to explain all pairs: " + ", ".join(f"{k} {v:.1f} s" for k, v in run.seconds.items()) + "."]
    for perturbation, res in run.results.items():
        parts += ["", f"Perturbation `{perturbation}`:", "", res.to_markdown(reference=references)]
    return "\n".join(parts)


def _image_methods(bilrp: dict, hp_batch: int) -> dict:
    from skbilrp.evaluation import HessianProductMethod, RandomMethod, SaliencyOuterProductMethod

    return {**bilrp, "hp": HessianProductMethod(batch_size=hp_batch),
            "saliency_outer": SaliencyOuterProductMethod(), "random": RandomMethod(0)}


def evenly(items: list, limit: Optional[int]) -> list:
    """At most ``limit`` of ``items``, spread evenly over the list (all for None)."""
    if limit is None or limit >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).astype(int)]


def imagenet_model(which: str) -> tuple[str, torch.nn.Module, dict]:
    """Title, model and methods (BiLRP with the preset rules, HP, saliency product, random)
    of "mobilenet_v2" or "efficientnet_lite0"."""
    from skbilrp.evaluation import BiLRPMethod
    from skbilrp.models import efficientnet_lite0, efficientnet_lite0_rules, mobilenet_v2, mobilenet_v2_rules

    make, rules, title = {
        "mobilenet_v2": (mobilenet_v2, mobilenet_v2_rules, "MobileNetV2 (ImageNet weights, `mobilenet_v2_rules`)"),
        "efficientnet_lite0": (efficientnet_lite0, efficientnet_lite0_rules,
                               "EfficientNet-Lite0 (ImageNet weights, `efficientnet_lite0_rules`)"),
    }[which]
    model = make()
    return title, model, _image_methods({"bilrp": BiLRPMethod(rules(model))}, 64)


def imagenet_run(which: str, side: int, patch: int, steps: int, perturbations: list[str],
                 n_faces: int = 100, max_crops: Optional[int] = None) -> ModelRun:
    """MobileNetV2 or EfficientNet-Lite0 (ImageNet weights, preset rules) on the image pairs.

    ``max_crops`` keeps that many of the sample-image crop pairs (a quick check)."""
    title, model, methods = imagenet_model(which)
    pairs, kinds = image_pairs(side, n_faces)
    crops = evenly([k for k, kind in enumerate(kinds) if kind != "faces"], max_crops)
    keep = crops + [k for k, kind in enumerate(kinds) if kind == "faces"]
    pairs, kinds = [pairs[k] for k in keep], [kinds[k] for k in keep]
    counts = {k: kinds.count(k) for k in dict.fromkeys(kinds)}
    n_crops = len(pairs) - counts.get("faces", 0)
    detail = (f"{len(pairs)} pairs of {side}×{side} images: {n_crops} crop pairs of the scikit-image / "
              f"scikit-learn sample images (three kinds per image: a shifted and zoomed crop, the same mirrored, "
              f"a strong zoom on the centre), and {counts.get('faces', 0)} pairs of two different faces of "
              f"`skimage.data.lfw_subset()`; {patch}-px patches ({(side // patch) ** 2} groups per image).")
    return run_model(title, detail, model, methods, pairs, patch, steps, perturbations)


def digits_runs(steps: int, perturbations: list[str], n_per_class: int = 10, patch: int = 2) -> list[ModelRun]:
    """The digits CNN (preset rules) and the digits ViT under both attention rules."""
    from skbilrp.evaluation import BiLRPMethod
    from skbilrp.models import digits_cnn, digits_cnn_rules, digits_vit, digits_vit_rules

    pairs = digit_pairs(n_per_class)
    detail = (f"{len(pairs)} pairs of two different test-split digits of the same class; "
              f"{patch}×{patch}-px patches ({(8 // patch) ** 2} groups per image).")
    cnn = digits_cnn()
    vit = digits_vit()
    vit_rules = digits_vit_rules(vit)
    return [
        run_model("digits CNN (shipped weights, `digits_cnn_rules`)", detail, cnn,
                  _image_methods({"bilrp": BiLRPMethod(digits_cnn_rules(cnn))}, 4096), pairs, patch, steps,
                  perturbations),
        run_model("digits ViT (shipped weights, `digits_vit_rules`)", detail, vit,
                  _image_methods({"bilrp_cp": BiLRPMethod(vit_rules, attention="cp"),
                                  "bilrp_attnlrp": BiLRPMethod(vit_rules, attention="attnlrp")}, 4096),
                  pairs, patch, steps, perturbations),
    ]
