"""The export-based relevance engine.

Data path: :mod:`.trace` (torch.export to functional ATen, module path per node) →
:mod:`.canonicalize` (fold BatchNorms, refuse mutable ops) → :mod:`.ops` (one table
keyed by exact ``OpOverload``) → :mod:`.network` (record, then push probes).

``ExportedNetwork(model, rules, dtype, attention)`` is what :class:`skbilrp.Explainer`
runs on: ``.model``, ``.rules``, ``.record(x, context)`` returning an
:class:`ExportedRecording` with ``.push(probe, channel_axis)``.
"""

from .network import ExportedNetwork, ExportedRecording
from .ops import OPS, UnsupportedOperatorError, relevance_op
from .trace import UnsupportedModelError

__all__ = ["ExportedNetwork", "ExportedRecording", "OPS", "relevance_op", "UnsupportedModelError",
           "UnsupportedOperatorError"]
