"""Elementwise activations ``a = f(z)`` (ratio kind): the flow times ``f(z) / z``.

For ReLU the ratio is the gradient mask; for any other f it still conserves, since the
flows of ``z`` sum to ``z``. Every schema argument (negative slope, bounds, approximation)
is passed to ``f`` at record time; push is linear in the flow.
"""

from __future__ import annotations

from .. import windows
from . import RelevanceOp, aten, flows_only_through, materialize, relevance_op, safe_divide

RATIO_OPS = (
    aten.relu.default, aten.leaky_relu.default, aten.hardtanh.default, aten.relu6.default,
    aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default, aten.gelu.default,
    aten.silu.default, aten.hardswish.default, aten.hardsigmoid.default, aten.sigmoid.default,
    aten.tanh.default, aten.elu.default, aten.softplus.default, aten.mish.default,
)


@relevance_op(*RATIO_OPS)
class Ratio(RelevanceOp):
    """``a = f(z, *args)``: ``u_out = (f(z) / z) ⊙ u_in``."""

    fusable = True
    windowed = True

    def record(self, args, kwargs):
        out = self.op(*args, **kwargs)
        return out, safe_divide(out, args[0])

    def push(self, ratio, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        flow = flows[0]
        if isinstance(flow, windows.WindowFlow) and ratio.dim() == 4:
            return windows.WindowFlow(flow.data * windows.crop(ratio, flow.win), flow.win)
        return materialize(flow) * ratio
