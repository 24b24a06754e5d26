"""
Explaining an SVM decision on a deep kernel
===========================================

A kernel SVM decides with a weighted sum of similarities to its support vectors,

.. math::

   f(x) = \\sum_i \\alpha_i\\, k(x, x_i) + b .

With :class:`~skbilrp.kernel.DeepKernel` each :math:`k(x, x_i)` is a deep-feature
similarity that BiLRP decomposes onto pairs of input pixels, so the whole decision
decomposes too: :func:`~skbilrp.audits.explain_decision` gives each support vector's
share :math:`\\alpha_i k(x, x_i)` and a relevance map on :math:`x` that sums to
:math:`f(x) - b`.

We separate the digits 3 and 8 of scikit-learn's 8×8 digits with an SVC on the
cosine kernel of the shipped bias-free digits CNN.
"""

# %%
# An SVC on a deep kernel
# -----------------------
import matplotlib.pyplot as plt
import numpy as np
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC

from skbilrp.audits import explain_decision
from skbilrp.kernel import DeepKernel
from skbilrp.models import digits_cnn, digits_cnn_rules, load_digits_images
from skbilrp.plot import plot_pair

X_train, y_train = load_digits_images("train")
X_test, y_test = load_digits_images("test")
train, test = np.isin(y_train, (3, 8)), np.isin(y_test, (3, 8))
X_train, y_train, X_test, y_test = X_train[train], y_train[train], X_test[test], y_test[test]

phi = digits_cnn()
svm = make_pipeline(DeepKernel(phi, kernel="cosine", rules=digits_cnn_rules(phi)),
                    SVC(kernel="precomputed"))
svm.fit(X_train, y_train)
print(f"{len(svm[-1].support_)} support vectors of {len(y_train)} training digits; "
      f"test accuracy {svm.score(X_test, y_test):.3f}")

# %%
# Decompose the decision for four test digits
# -------------------------------------------
# The least confident decisions (closest to the boundary) of each class, and the most
# confident ones. ``decision`` is ``decision_function``: positive for an 8.
scores = svm.decision_function(X_test)
picks = [int(np.argmin(np.where(y_test == 3, np.abs(scores), np.inf))),
         int(np.argmin(np.where(y_test == 8, np.abs(scores), np.inf))),
         int(np.argmin(scores)), int(np.argmax(scores))]
explanation = explain_decision(svm, X_test[picks])
np.testing.assert_allclose(explanation.decision, scores[picks], atol=1e-5)  # same f(x)
for n, idx in enumerate(picks):
    print(f"test digit {idx} (true {y_test[idx]}): f(x) = {explanation.decision[n]:+.3f} "
          f"= relevance {explanation.relevance[n].sum():+.3f} + intercept "
          f"{explanation.intercept:+.3f}   (conservation error "
          f"{explanation.conservation_error[n]:.1e})")

# %%
# Relevance maps
# --------------
# Red pixels push the decision towards 8, blue ones towards 3. For each digit, the
# map sums to ``f(x) - b``; below it, the three support vectors with the largest
# share ``|alpha_i k(x, x_i)|``, with their share in the title.
fig, axes = plt.subplots(4, 4, figsize=(8, 8.4), layout="constrained")
pooling = explanation.pooling
for n, idx in enumerate(picks):
    rel = pooling.to_positions(explanation.relevance[n])
    vmax = np.abs(rel).max()
    ax = axes[0, n]
    ax.imshow(rel, cmap="bwr", vmin=-vmax, vmax=vmax)
    ax.contour(X_test[idx, 0], levels=[0.5], colors="k", linewidths=0.8)  # the strokes
    ax.set_title(f"digit {y_test[idx]}: f(x) = {explanation.decision[n]:+.2f}\n"
                 f"map sums to {rel.sum():+.2f}", fontsize=9)
    for row, (sv, share) in enumerate(explanation.top_support(n, k=3), start=1):
        ax = axes[row, n]
        ax.imshow(svm[0].X_fit_[sv, 0], cmap="gray_r")
        ax.set_title(f"SV, digit {y_train[sv]}: share {share:+.2f}", fontsize=9)
for ax in axes.ravel():
    ax.set_axis_off()
fig.suptitle("relevance of the decision (top row) and the support vectors with the largest shares")

# %%
# Which pixels of a support vector matter?
# ----------------------------------------
# :meth:`~skbilrp.audits.DecisionExplanation.pair` gives the BiLRP explanation of one
# term ``alpha_i k(x, x_i)``: here the hardest 3 against its most influential
# support vector. Support vectors of the class 3 have ``alpha_i < 0``, so their
# terms are negative and the pixel pairs that make ``x`` resemble them are drawn in
# blue: they push the decision towards 3.
sv_index = int(np.argmax(np.abs(explanation.contributions[0])))
term = explanation.pair(0, sv_index)
plot_pair(term, X_test[picks[0]], svm[0].X_fit_[explanation.support[sv_index]], n_links=40,
          title=f"alpha_i k(x, x_i) = {term.similarity:+.3f} for a support vector "
                f"of digit {y_train[explanation.support[sv_index]]}")
plt.show()
