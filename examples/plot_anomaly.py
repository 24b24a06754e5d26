"""
Explaining an anomaly
=====================

A one-class SVM on a deep kernel scores how much a sample resembles the training
data,

.. math::

   f(x) = \\sum_i \\alpha_i\\, k(x, x_i) - \\rho, \\qquad \\alpha_i \\ge 0,

and flags samples with :math:`f(x) < 0` as anomalies. With
:func:`~skbilrp.audits.explain_decision`, BiLRP splits :math:`f(x) + \\rho` onto the
pixels of :math:`x`: the map shows where the evidence of *normality* lies. Comparing
it with the average map of normal samples shows where an anomaly lacks that
evidence, and both maps add up: their difference sums to the difference of the
scores.

Normal data: the 7s of scikit-learn's 8×8 digits; kernel: cosine similarity of the
shipped bias-free digits CNN.
"""

# %%
# A one-class SVM on the 7s
# -------------------------
import matplotlib.pyplot as plt
import numpy as np
from sklearn.pipeline import make_pipeline
from sklearn.svm import OneClassSVM

from skbilrp.audits import explain_decision, explain_neighbors
from skbilrp.kernel import DeepKernel
from skbilrp.models import digits_cnn, digits_cnn_rules, load_digits_images
from skbilrp.plot import plot_pair

X_train, y_train = load_digits_images("train")
X_test, y_test = load_digits_images("test")

phi = digits_cnn()
detector = make_pipeline(DeepKernel(phi, kernel="cosine", rules=digits_cnn_rules(phi)),
                         OneClassSVM(kernel="precomputed", nu=0.05))
detector.fit(X_train[y_train == 7])

scores = detector.decision_function(X_test)
for digit in range(10):
    flagged = np.mean(scores[y_test == digit] < 0)
    print(f"test {digit}s flagged as anomalies: {flagged:.0%}")

# %%
# Explain the scores
# ------------------
# All test 7s, to know what the map of a normal sample looks like, and four digits
# to look at: the most typical test 7, the least typical one, and the highest-scoring
# 1 and 4 (the digits most easily mistaken for a 7).
sevens = np.flatnonzero(y_test == 7)
picks = [sevens[np.argmax(scores[sevens])], sevens[np.argmin(scores[sevens])]]
for digit in (1, 4):
    others = np.flatnonzero(y_test == digit)
    picks.append(others[np.argmax(scores[others])])
explanation = explain_decision(detector, X_test[np.concatenate([picks, sevens])])
maps = explanation.pooling.to_positions(explanation.relevance)   # (n, 8, 8)
typical_map = maps[len(picks):].mean(axis=0)
typical_score = explanation.decision[len(picks):].mean()
rho = -explanation.intercept
print(f"rho = {rho:.3f}; mean score of the test 7s {typical_score:+.3f}; largest "
      f"|conservation error| {np.abs(explanation.conservation_error).max():.1e}")
for n, idx in enumerate(picks):
    print(f"test digit {idx} (true {y_test[idx]}): f(x) = {explanation.decision[n]:+.3f}, "
          f"relevance {maps[n].sum():.3f}")

# %%
# Middle row: the relevance of ``f(x) + rho`` on each digit. Any two digits have a
# high cosine similarity in this kernel (ReLU features are non-negative), so all
# maps sum to about the same value and differ in where the evidence lies. Bottom row:
# the map minus the average map of the test 7s; it sums to ``f(x)`` minus the mean
# score of the 7s. Blue marks where a digit lacks the evidence a typical 7 has, red
# where it has more. Black contours outline the strokes.
fig, axes = plt.subplots(3, 4, figsize=(8, 7.2), layout="constrained")
vmax = np.abs(maps[:len(picks)]).max()
dmax = np.abs(maps[:len(picks)] - typical_map).max()
for n, idx in enumerate(picks):
    axes[0, n].imshow(X_test[idx, 0], cmap="gray_r")
    axes[0, n].set_title(f"digit {y_test[idx]}\nf(x) = {explanation.decision[n]:+.3f}", fontsize=9)
    im = axes[1, n].imshow(maps[n], cmap="bwr", vmin=-vmax, vmax=vmax)
    axes[1, n].set_title(f"relevance\nsum {maps[n].sum():.3f}", fontsize=9)
    diff = maps[n] - typical_map
    im_diff = axes[2, n].imshow(diff, cmap="bwr", vmin=-dmax, vmax=dmax)
    axes[2, n].set_title(f"minus typical 7\nsum {diff.sum():+.3f}", fontsize=9)
    for ax in axes[1:, n]:
        ax.contour(X_test[idx, 0], levels=[0.5], colors="k", linewidths=0.8)
for ax in axes.ravel():
    ax.set_axis_off()
fig.colorbar(im, ax=axes[1], shrink=0.8)
fig.colorbar(im_diff, ax=axes[2], shrink=0.8)

# %%
# Which normal sample is the anomaly closest to?
# ----------------------------------------------
# The one-class SVM's kernel step is a :class:`~skbilrp.kernel.DeepKernel` fitted on
# the 7s, so :func:`~skbilrp.audits.explain_neighbors` finds the 7 most similar to
# the 4 and explains that similarity pixel pair by pixel pair: the shared strokes
# are linked, the rest of the 4 is not.
neighbors = explain_neighbors(detector[0], X_test[picks[3:]], n_neighbors=1)
nearest = detector[0].X_fit_[neighbors.indices[0, 0]]
plot_pair(neighbors.pair(0, 0), X_test[picks[3]], nearest, n_links=40,
          title=f"the 4 and its most similar 7 (cosine {neighbors.similarities[0, 0]:.3f})")
plt.show()
