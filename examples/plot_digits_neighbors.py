"""
Why is this digit the nearest neighbour?
========================================

A k-nearest-neighbours classifier on deep features decides by similarity to training
samples. :class:`~skbilrp.kernel.DeepKernel` turns a feature extractor into the
precomputed distance that :class:`~sklearn.neighbors.KNeighborsClassifier` takes, and
:func:`~skbilrp.audits.explain_neighbors` explains each query's similarity to its
neighbours on pairs of pixels: which strokes of the query match which strokes of the
neighbour.

The feature extractor is the small bias-free CNN shipped with skbilrp
(:func:`~skbilrp.models.digits_cnn`), trained on the training half of scikit-learn's
8×8 digits; without biases, the explanations sum exactly to the similarities.
"""

# %%
# A k-NN classifier on a deep kernel
# ----------------------------------
import matplotlib.pyplot as plt
import numpy as np
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline

from skbilrp.audits import explain_neighbors
from skbilrp.kernel import DeepKernel
from skbilrp.models import digits_cnn, digits_cnn_rules, load_digits_images
from skbilrp.plot import plot_pair

X_train, y_train = load_digits_images("train")   # (n, 1, 8, 8), values in [0, 1]
X_test, y_test = load_digits_images("test")

phi = digits_cnn()
kernel = DeepKernel(phi, kernel="cosine", output="distance", rules=digits_cnn_rules(phi))
knn = make_pipeline(kernel, KNeighborsClassifier(n_neighbors=3, metric="precomputed"))
knn.fit(X_train, y_train)
predicted = knn.predict(X_test)
print(f"test accuracy: {np.mean(predicted == y_test):.3f} on {len(y_test)} digits")

# %%
# Explain the nearest neighbours of two queries
# ---------------------------------------------
# One correctly classified test digit and one mistake. Relevance is computed once per
# query and once per neighbour, then combined for every pair.
right = int(np.flatnonzero(predicted == y_test)[0])
wrong = int(np.flatnonzero(predicted != y_test)[0])
queries = X_test[[right, wrong]]
neighbors = explain_neighbors(knn, queries, n_neighbors=3)
for q, idx in enumerate((right, wrong)):
    labels = y_train[neighbors.indices[q]]
    print(f"test digit {idx} (true {y_test[idx]}, predicted {predicted[idx]}): neighbours are "
          f"{labels.tolist()}, cosine similarities {np.round(neighbors.similarities[q], 3).tolist()}")
errors = neighbors.explanations.conservation_error
print(f"largest |conservation error| over the {len(errors)} pairs: {np.abs(errors).max():.1e}")

# %%
# Every pixel is its own group here (64 per image). The links join the query's
# pixels (left) to those of its nearest training digit (right): red pairs make the
# two digits more similar, blue pairs less.
plot_pair(neighbors.pair(0, 0), queries[0], kernel.X_fit_[neighbors.indices[0, 0]], n_links=40,
          title=f"a test digit {y_test[right]} and its nearest neighbour "
                f"(cosine {neighbors.similarities[0, 0]:.3f})")

# %%
# The mistake: the vote went to a class the query does not belong to. The links to
# the nearest neighbour *of the predicted class* show which strokes the query shares
# with it.
rank = int(np.flatnonzero(y_train[neighbors.indices[1]] == predicted[wrong])[0])
plot_pair(neighbors.pair(1, rank), queries[1], kernel.X_fit_[neighbors.indices[1, rank]], n_links=40,
          title=f"a test digit {y_test[wrong]} and its neighbour no. {rank + 1}, a digit {predicted[wrong]} "
                f"(cosine {neighbors.similarities[1, rank]:.3f})")

# %%
# First-order maps of all six pairs
# ---------------------------------
# Summing each pair's relevance over the neighbour's pixels gives a map on the query
# (and vice versa): the parts of each digit that the similarity rests on. Each map
# sums to the similarity above it. Black contours outline the strokes.
fig, axes = plt.subplots(2, 6, figsize=(10, 3.8), layout="constrained")
for q in range(2):
    for r in range(3):
        e = neighbors.pair(q, r)
        on_query, on_neighbor = (e.pooling_a.to_positions(m) for m in e.marginals())
        vmax = max(np.abs(on_query).max(), np.abs(on_neighbor).max())
        for col, (img, m) in enumerate(((queries[q, 0], on_query),
                                        (kernel.X_fit_[neighbors.indices[q, r], 0], on_neighbor))):
            ax = axes[q, 2 * r + col]
            ax.imshow(m, cmap="bwr", vmin=-vmax, vmax=vmax)
            ax.contour(img, levels=[0.5], colors="k", linewidths=0.8)  # the strokes
            ax.set_title(f"{'query' if col == 0 else 'neighbour'}\nsum {m.sum():.3f}", fontsize=8)
            ax.set_axis_off()
fig.suptitle("relevance of query and neighbour, for the 3 nearest neighbours of each query")
plt.show()
