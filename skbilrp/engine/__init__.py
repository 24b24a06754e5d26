"""The export-based relevance engine.

Data path: :mod:`.trace` (torch.export to functional ATen, module path per node) →
:mod:`.canonicalize` (fold BatchNorms, refuse mutable ops) → :mod:`.ops` (one table
keyed by exact ``OpOverload``) → :mod:`.network` (record, then push probes).

``ExportedNetwork`` has the interface of :class:`skbilrp.network.RelevanceNetwork`
(constructor ``(model, rules, dtype)``, ``.model``, ``.rules``, ``.record(x, context)``
returning a Recording with ``.push(probe, channel_axis)``).
"""

from .network import ExportedNetwork, ExportedRecording
from .ops import OPS, UnsupportedOperatorError, relevance_op
from .trace import UnsupportedModelError

__all__ = ["ExportedNetwork", "ExportedRecording", "OPS", "relevance_op", "UnsupportedModelError",
           "UnsupportedOperatorError"]
