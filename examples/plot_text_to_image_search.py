"""
Text-to-image search with an ImageNet classifier in the MiniLM sentence space
=============================================================================

A CLIP-style model embeds images and texts in one space, so that a text query finds the
photos it describes. No such weights ship with skbilrp, but an ImageNet classifier and
a sentence encoder do, and zero-shot learning joined the two before CLIP (DeViSE, Frome
et al. 2013; ConSE, Norouzi et al. 2014): :func:`~skbilrp.models.zero_shot_imagenet`
maps MobileNetV2's 1000 class scores into the all-MiniLM-L6-v2 space through the MiniLM
embeddings of the class names, "a photo of a tabby." and so on. Its last layer is
linear, so the whole image side stays a network that BiLRP explains.

Here seven photos that ship with scikit-image are searched with a few queries, by the
cosine similarity of the image vectors to the MiniLM embeddings of the queries.
"""

# %%
# The photos and the two encoders
# -------------------------------
# Images are RGB in [0, 1], resized and centre-cropped to 224 px, as the ImageNet
# models of :mod:`skbilrp.models` take them. The class-name embeddings are computed
# once and cached (``$SKBILRP_CACHE`` or ``~/.cache/skbilrp``).
import matplotlib.pyplot as plt
import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from skimage import data
from sklearn.metrics.pairwise import cosine_similarity

from skbilrp import CrossModalKernel
from skbilrp.io import resize_center_crop
from skbilrp.models import mobilenet_v2_rules, zero_shot_imagenet
from skbilrp.models.sentence import minilm_path
from skbilrp.plot import plot_image_text
from skbilrp.rules import Zero, rule_targets

names = ["astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field", "camera"]


def load(name: str) -> torch.Tensor:
    """A scikit-image photo as a (3, 224, 224) float tensor in [0, 1]."""
    image = getattr(data, name)()
    image = image[0] if isinstance(image, tuple) else image  # the motorcycle is a stereo pair
    image = np.stack([image] * 3, -1) if image.ndim == 2 else image  # the camera man is grey
    return resize_center_crop(np.transpose(image, (2, 0, 1)) / 255.0, 224)


photos = torch.stack([load(n) for n in names])
image_model = zero_shot_imagenet("mobilenet_v2")
text_model = SentenceTransformer(minilm_path(), device="cpu")
print(image_model.embed)

# %%
# Search
# ------
# Each query is embedded by MiniLM, each photo by the image model; the photos are
# ranked by cosine similarity. The image vectors are not normalised (the head is
# linear), so compare them by cosine, not by dot product. An image vector sums all
# 1000 class-name embeddings, weighted by the centred class scores: the cosines are
# small and can be negative, and what they tell is their order, here the photos'
# order for each query.
queries = ["a cat", "a cup of coffee", "a rocket", "a motorcycle", "galaxies in space"]
with torch.no_grad():
    image_vectors = image_model(photos).numpy()
text_vectors = text_model.encode(queries)
cosine = cosine_similarity(text_vectors, image_vectors)  # (queries, photos)

hits = np.argsort(-cosine, axis=1)[:, :3]
for query, row, top in zip(queries, cosine, hits):
    print(f"{query!r:22} " + "  ".join(f"{names[j]} {row[j]:.3f}" for j in top))

# %%
# Which patches match which words
# -------------------------------
# :class:`~skbilrp.CrossModalKernel` is this search as a scikit-learn kernel:
# ``fit(queries).transform(photos)`` is the cosine matrix above, transposed, and
# :meth:`~skbilrp.CrossModalKernel.explain_pairs` splits each cosine into the
# relevance of (patch, word) pairs with BiLRP, summing to the cosine. The image side
# takes MobileNetV2's own rules (:func:`~skbilrp.models.mobilenet_v2_rules`, whose
# names the zero-shot model keeps), the MiniLM side LRP-0 with the biases' share
# passed on. The best hits of the first two queries are explained on 32-px patches.
rules = {**mobilenet_v2_rules(image_model), rule_targets(): Zero(bias="share")}
kern = CrossModalKernel(image_model=image_model, text_model=text_model, pooling=32, rules=rules)
kern.fit(queries[:2])
np.testing.assert_allclose(kern.transform(photos), cosine[:2].T, atol=1e-5)  # float32 round-off
best = hits[:2, 0]
explanations = kern.explain_pairs(photos[best], pairs=[(0, 0), (1, 1)], words=True)

# %%
# Each figure links the strongest (patch, word) pairs (red positive, blue negative) and
# maps the relevance of each word over the photo. The cosines are small, and the cat's
# is negative: its relevance says which patches and words pull it up or down, its rank
# among the photos comes from the other photos being further away.
for k, (query, j) in enumerate(zip(queries, best)):
    e = explanations.pair(k)
    print(f"{query!r} x {names[j]}: cosine {e.similarity:.3f}, sum of the relevance {e.relevance.sum():.3f}")
    plot_image_text(e, photos[j], n_maps=3, n_links=12, title=f"{query!r} and {names[j]}: cosine {e.similarity:.3f}")

# %%
# The three best hits of each query
# ---------------------------------
fig, axes = plt.subplots(len(queries), 3, figsize=(6.4, 2.2 * len(queries)), layout="constrained")
for q, (query, top) in enumerate(zip(queries, hits)):
    for rank, j in enumerate(top):
        ax = axes[q, rank]
        ax.imshow(photos[j].permute(1, 2, 0).numpy())
        ax.set_title(f"{rank + 1}. cos {cosine[q, j]:.2f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[q, 0].set_ylabel(query, fontsize=10)
plt.show()
