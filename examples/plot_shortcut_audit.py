"""
Finding a shortcut with a dataset audit
=======================================

A model can learn to call samples "alike" for the wrong reason: a watermark, a
scanner artefact, a tag that happens to come with one class. Here we plant one.
Every image labelled 3 carries a bright 2×2 marker in its top-left corner, and so do
15 % of the other digits' images, which are labelled 3 as well: the marker then
predicts the label better than the digit does. A small CNN trained on these images
learns to use it.

:func:`~skbilrp.audits.audit_dataset` explains, with BiLRP, every kernel entry the
fitted k-NN classifier uses (each training image with its nearest neighbours) and
averages per class the share of each similarity carried by each input region. A
region whose share of the similarity is far above its share of the input signal
(``|x|``) is listed as suspicious. It names the marker region for class 3, and only
there; the same audit of a model trained on the clean images does not.
"""

# %%
# Marked digits and two models
# ----------------------------
# Both models have the bias-free architecture of the shipped digits CNN and are
# trained the same way (deterministic, a few seconds): one on the marked images, one
# on the clean images with their true labels.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline

from skbilrp import DeepKernel
from skbilrp.audits import audit_dataset
from skbilrp.plot import plot_audit, plot_marginals
from skbilrp.shortcuts import class_similarity, marked_digits, shortcut_rules, train_shortcut_cnn

data = marked_digits(marker_class=3, corner="top-left", size=2, decoys=0.15, n_samples=300,
                     subset="train", seed=0)
marked_model = train_shortcut_cnn(data.X, data.y, seed=0, epochs=10)
clean_model = train_shortcut_cnn(data.clean, data.digit, seed=0, epochs=10)

fig, axes = plt.subplots(1, 6, figsize=(9, 1.9), layout="constrained")
examples = np.flatnonzero(data.y == 3)[:3].tolist() + np.flatnonzero(data.y != 3)[:3].tolist()
for ax, i in zip(axes, examples):
    ax.imshow(data.X[i, 0], cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"label {data.y[i]} (digit {data.digit[i]})", fontsize=8)
    ax.set_axis_off()
fig.suptitle("marked images (label 3, some of them other digits) and clean ones")

# %%
# The marked model uses the marker
# --------------------------------
# Removing the marker (restoring the clean pixels) lowers the mean cosine similarity
# between the images labelled 3 much more under the marked model than under the
# clean one.
for name, model in (("marked", marked_model), ("clean", clean_model)):
    with_marker = class_similarity(model.features, data.X, data.y, 3)
    without = class_similarity(model.features, data.clean, data.y, 3)
    print(f"{name} model: within-class similarity of label 3 {with_marker:.3f} -> {without:.3f} "
          f"without the marker ({without - with_marker:+.3f})")

# %%
# Audit the k-NN's neighbour pairs
# --------------------------------
# The k-NN classifier reads the kernel entries between each image and its three
# nearest neighbours; those are the entries audited. Rules: LRP-0 on the first conv
# (relevance stays on the pixels that carry signal), γ on the others.


def knn_on(model):
    kernel = DeepKernel(model.features, output="distance", input_shape=(1, 8, 8),
                        rules=shortcut_rules(model.features))
    pipe = make_pipeline(kernel, KNeighborsClassifier(3, metric="precomputed"))
    return pipe.fit(data.X.reshape(len(data.X), -1), data.y)


marked_knn, clean_knn = knn_on(marked_model), knn_on(clean_model)
audit = audit_dataset(marked_knn, region=2, verbose=False)
clean_audit = audit_dataset(clean_knn, region=2, verbose=False)
marker_region = int(np.unique(audit.regions[data.mask])[0])
for s in audit.suspicious[:5]:
    print(f"class {s.group}, region {s.region} (rows {s.slices[0].start}-{s.slices[0].stop - 1}, cols "
          f"{s.slices[1].start}-{s.slices[1].stop - 1}): {s.share:.0%} of the similarity, "
          f"{s.signal_share:.0%} of the signal, ratio {s.ratio:.1f}")
print("marker region's ratio for label 3: marked model", round(float(audit.ratios(3)[marker_region]), 2),
      "| clean model", round(float(clean_audit.ratios(3)[marker_region]), 2))

# %%
# Where the similarity of each class comes from
# ---------------------------------------------
# Each map is the mean share of a class's neighbour similarities per pixel (it sums
# to 1); outlined: the suspicious regions, with their ratio. The marker region tops
# the list for label 3. Under the marked model other regions can exceed the
# threshold too (strokes that carry more of the similarity than of the ink); they are
# ranked below the marker and are not a planted shortcut.
plot_audit(audit, signal=True)
plot_audit(clean_audit)

# %%
# Which region pairs carry the similarity of label 3
# --------------------------------------------------
# The marker is matched with the marker: the pair (marker, marker) carries the
# largest share of the similarity between images labelled 3.
for r, r2, share in audit.top_region_pairs(3, k=3):
    print(f"regions ({r}, {r2}): {share:.0%} of the similarity")

# %%
# One pair explained
# ------------------
# A 3 and a decoy (another digit labelled 3) that the k-NN finds close: the
# similarity sits on the marker of both.
kernel = marked_knn[0]
decoy = int(np.flatnonzero(data.decoys)[0])
three = int(np.flatnonzero((data.digit == 3) & (data.y == 3))[0])
pair = kernel.explain_pairs(data.X[[three]], data.X[[decoy]]).pair(0, 0)
plot_marginals(pair, data.X[three, 0], data.X[decoy, 0], titles=("a marked 3", f"a marked {data.digit[decoy]}"))
plt.show()
