"""skbilrp: verifiable deep-feature kernels for scikit-learn, explained with BiLRP."""

from .audits import (
    ClusterAudit,
    DatasetAudit,
    DecisionExplanation,
    NeighborExplanation,
    SuspiciousRegion,
    audit_clusters,
    audit_dataset,
    explain_decision,
    explain_neighbors,
)
from .cross_modal import CrossModalKernel
from .explainer import Explainer, bilrp
from .kernel import DeepKernel
from .pairs import PairExplanation, PairExplanations
from .relevance import SampleRelevance
from .rules import Epsilon, Gamma, Rule, ZBox, Zero
from .text import TextKernel, TextPairExplanation, TextPairExplanations

__version__ = "0.1.0"

__all__ = [
    "Explainer",
    "DeepKernel",
    "TextKernel",
    "CrossModalKernel",
    "TextPairExplanation",
    "TextPairExplanations",
    "explain_neighbors",
    "explain_decision",
    "audit_clusters",
    "audit_dataset",
    "NeighborExplanation",
    "DecisionExplanation",
    "ClusterAudit",
    "DatasetAudit",
    "SuspiciousRegion",
    "bilrp",
    "PairExplanation",
    "PairExplanations",
    "SampleRelevance",
    "Rule",
    "Zero",
    "Epsilon",
    "Gamma",
    "ZBox",
]
