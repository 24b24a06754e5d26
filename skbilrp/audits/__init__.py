"""Model-level explanations of scikit-learn estimators built on a :class:`DeepKernel`.

Every kernel method's output is a combination of kernel entries, and every kernel
entry has a BiLRP explanation, so the whole model can be explained on input groups:

- :func:`explain_neighbors`: which training samples a query is close to, and why;
- :func:`explain_decision`: ``f(x) = sum_i alpha_i k(x, x_i) + b`` split into each
  support vector's share and into first-order relevance on ``x``;
- :func:`audit_clusters`: what the similarities within each cluster rest on;
- :func:`audit_dataset`: over all the kernel entries a fitted model uses, where the
  similarity of each class or cluster comes from, and which input regions carry far
  more of it than of the input signal (shortcut evidence).
"""

from .clusters import ClusterAudit, audit_clusters
from .dataset import DatasetAudit, SuspiciousRegion, audit_dataset
from .decisions import DecisionExplanation, explain_decision
from .neighbors import NeighborExplanation, explain_neighbors

__all__ = [
    "NeighborExplanation",
    "DecisionExplanation",
    "ClusterAudit",
    "DatasetAudit",
    "SuspiciousRegion",
    "explain_neighbors",
    "explain_decision",
    "audit_clusters",
    "audit_dataset",
]
