"""skbilrp: verifiable deep-feature kernels for scikit-learn, explained with BiLRP."""

from .explainer import Explainer, bilrp
from .pairs import PairExplanation, PairExplanations
from .relevance import SampleRelevance
from .rules import Epsilon, Gamma, Rule, ZBox, Zero

__version__ = "0.1.0"

__all__ = [
    "Explainer",
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
