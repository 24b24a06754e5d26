"""
Which patches make two photos similar?
======================================

A pretrained MobileNetV2 maps an image to 1280 features; the cosine similarity of two
feature vectors is a common way to compare images (image retrieval, near-duplicate
detection, kernel methods on top of deep features). BiLRP decomposes that number
onto pairs of 32×32 px patches, one from each image: a red curve joins two patches
that make the images more similar, a blue one two patches that make them less
similar.

We compare a crop of scikit-image's *chelsea* (a cat) with a mirrored crop of the same
photo, shifted by exactly one patch, and with *coffee* (a cup of coffee).
"""

# %%
# Three 160 px inputs
# -------------------
# The photo is resized to a height of 160 px (MobileNetV2 takes any multiple of
# 32). The second crop starts one patch (32 px) to the right of the first and is
# mirrored, so patch column ``c`` of the first crop shows the same content as patch
# column ``5 - c`` of the second.
import matplotlib.pyplot as plt
import numpy as np
import torch
from skimage import data

from skbilrp import Explainer
from skbilrp.io import resize_center_crop
from skbilrp.models import mobilenet_v2, mobilenet_v2_rules
from skbilrp.plot import plot_marginals, plot_pair

PATCH = 32
SIDE = 160  # 5 x 5 patches


def as_input(rgb_uint8: np.ndarray) -> torch.Tensor:
    """An ``(H, W, 3)`` uint8 photo as a ``(3, H, W)`` float tensor in [0, 1]."""
    return torch.from_numpy(rgb_uint8.astype(np.float32) / 255.0).permute(2, 0, 1)


cat = as_input(data.chelsea())
height, width = SIDE, round(SIDE * cat.shape[2] / cat.shape[1])
cat = torch.nn.functional.interpolate(cat[None], size=(height, width), mode="bilinear",
                                      antialias=True, align_corners=False)[0].clamp(0, 1)
left = 16
cat_a = cat[:, :, left:left + SIDE]
cat_b = cat[:, :, left + PATCH:left + PATCH + SIDE].flip(-1)
coffee = resize_center_crop(as_input(data.coffee()), SIDE)

fig, axes = plt.subplots(1, 3, figsize=(9, 3.2), layout="constrained")
for ax, img, name in zip(axes, (cat_a, cat_b, coffee), ("cat", "cat, shifted and mirrored", "coffee")):
    ax.imshow(img.permute(1, 2, 0).numpy())
    ax.set_title(name)
    ax.set_axis_off()

# %%
# Explain two cosine similarities
# -------------------------------
# :func:`~skbilrp.models.mobilenet_v2_rules` assigns z\ :sup:`B` to the first conv,
# LRP-γ to the depthwise convs and LRP-ε elsewhere. The cat crop's relevance is
# computed once and reused for both pairs. With 5 × 5 = 25 patches against 1280
# features, the explainer pushes 25 probes forward per image instead of 1280 seeds
# backward.
model = mobilenet_v2(pretrained=True)
explainer = Explainer(model, rules=mobilenet_v2_rules(model), pooling=PATCH)
explanations = explainer.explain(cat_a[None], torch.stack([cat_b, coffee]), kernel="cosine")
cat_cat, cat_coffee = explanations.pair(0, 0), explanations.pair(0, 1)
for name, e in (("cat / mirrored cat", cat_cat), ("cat / coffee", cat_coffee)):
    print(f"{name:20s} cosine {e.similarity:.3f}   sum of pair relevance "
          f"{e.relevance.sum():.3f}   conservation error {e.conservation_error:.3f}")

# %%
# MobileNetV2's BatchNorm layers are folded into biases that carry most of each
# feature. The preset passes each bias's share of the relevance to the image region
# under its unit (``bias="flat"``), so the pair relevance sums to the cosine; with
# ``mobilenet_v2_rules(model, bias="absorb")`` the biases would keep about three
# quarters of it, and ``conservation_error`` would say so.
#
# The cat and its mirror image
# ----------------------------
# The strongest links join the eyes and the nose of one crop to the same parts of
# the other, across the mirror axis.
# sphinx_gallery_thumbnail_number = 2
plot_pair(cat_cat, cat_a, cat_b, n_links=25)

# %%
# How much of the positive relevance lies on pairs of corresponding patches (patch
# ``(r, c)`` of the first crop with patch ``(r, 5 - c)`` of the second)? These are 20
# of the 625 patch pairs, about 3 %; relevance that ignored where things are would
# give them about that share.
grid = cat_cat.pooling_a.grid_shape
rel = cat_cat.relevance.reshape(grid + grid)
corresponding = sum(rel[r, c, r, grid[1] - c] for r in range(grid[0]) for c in range(1, grid[1]))
positive = rel[rel > 0].sum()
n_corresponding = grid[0] * (grid[1] - 1)
print(f"{n_corresponding} corresponding patch pairs ({n_corresponding / rel.size:.1%} of all "
      f"pairs) hold {corresponding / positive:.0%} of the positive relevance")

# %%
# Cat and coffee
# --------------
# A much lower similarity, spread over many weak links, with negative (blue)
# pairs that pull the images apart.
plot_pair(cat_coffee, cat_a, coffee, n_links=25)

# %%
# First-order maps
# ----------------
# Summing the pair relevance over the partner's patches gives one map per image:
# which part of each input takes part in the similarity at all.
plot_marginals(cat_cat, cat_a, cat_b, titles=("cat", "mirrored cat"))
plt.show()
