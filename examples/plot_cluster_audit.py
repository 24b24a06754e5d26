"""
Auditing clusters of a deep kernel
==================================

Spectral clustering on a deep-feature kernel groups samples that the network finds
similar, but not necessarily for the reason one would hope. For each cluster,
:func:`~skbilrp.audits.audit_clusters` finds the medoid (the member most similar to
the others) and explains, with BiLRP, what the similarities between the medoid and
the other members rest on: which parts of the medoid the cluster's similarity uses,
and which pairs of parts.

Data: 300 of scikit-learn's 8×8 digits that the CNN was not trained on; kernel:
cosine similarity of the shipped bias-free digits CNN.
"""

# %%
# Cluster on the precomputed kernel
# ---------------------------------
import matplotlib.pyplot as plt
import numpy as np
from sklearn.cluster import SpectralClustering

from skbilrp.audits import audit_clusters
from skbilrp.kernel import DeepKernel
from skbilrp.models import digits_cnn, digits_cnn_rules, load_digits_images
from skbilrp.plot import plot_pair

X, y = load_digits_images("test")
X, y = X[:300], y[:300]

phi = digits_cnn()
kernel = DeepKernel(phi, kernel="cosine", rules=digits_cnn_rules(phi))
K = kernel.fit_transform(X)   # ReLU features: cosines lie in [0, 1], a valid affinity
clustering = SpectralClustering(n_clusters=10, affinity="precomputed", random_state=0).fit(K)

# %%
# Audit every cluster
# -------------------
# This computes the relevance of every clustered digit once, then combines it for
# the pairs (medoid, member).
audits = audit_clusters(clustering, kernel, n_prototypes=3)
for a in audits:
    counts = np.bincount(y[a.members], minlength=10)
    print(f"cluster {a.label}: {len(a.members):3d} digits, mostly {counts.argmax()}s "
          f"({counts.max() / len(a.members):.0%}), mean similarity {a.mean_similarity:.3f}, "
          f"conservation error {a.conservation_error:.1e}")

# %%
# What holds each cluster together
# --------------------------------
# Top row: each cluster's medoid. Bottom row: the medoid's relevance averaged over
# the pairs (medoid, member): red parts of the medoid make the members similar to
# it, blue parts make them less similar. Each map sums to the mean similarity of the
# medoid to the members.
fig, axes = plt.subplots(2, len(audits), figsize=(12, 3.2), layout="constrained")
for col, a in enumerate(audits):
    counts = np.bincount(y[a.members], minlength=10)
    axes[0, col].imshow(X[a.medoid, 0], cmap="gray_r")
    axes[0, col].set_title(f"cluster {a.label}\n{len(a.members)} digits,\n"
                           f"{counts.max() / len(a.members):.0%} {counts.argmax()}s", fontsize=8)
    rel = a.pooling.to_positions(a.medoid_relevance)
    vmax = np.abs(rel).max()
    axes[1, col].imshow(rel, cmap="bwr", vmin=-vmax, vmax=vmax)
    axes[1, col].contour(X[a.medoid, 0], levels=[0.5], colors="k", linewidths=0.6)
    axes[1, col].set_title(f"sum {rel.sum():.3f}", fontsize=8)
for ax in axes.ravel():
    ax.set_axis_off()

# %%
# An intruder in the least pure cluster
# -------------------------------------
# Which strokes does the network match between the medoid and a member of another
# digit class? :meth:`~skbilrp.kernel.DeepKernel.explain_pairs` explains that single
# kernel entry, reusing the relevance the audit already computed for the members.
impure = min(audits, key=lambda a: np.bincount(y[a.members]).max() / len(a.members))
majority = np.bincount(y[impure.members]).argmax()
intruders = impure.members[y[impure.members] != majority]
intruder = int(intruders[np.argmax(K[impure.medoid, intruders])])
pair = kernel.explain_pairs(X[[impure.medoid]], pairs=[(0, intruder)]).pair(0)
plot_pair(pair, X[impure.medoid], X[intruder], n_links=40,
          title=f"cluster {impure.label}: its medoid (a digit {y[impure.medoid]}) and a "
                f"digit {y[intruder]} (cosine {pair.similarity:.3f})")
plt.show()
