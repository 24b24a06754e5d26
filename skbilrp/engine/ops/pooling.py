"""Pooling and reductions: winner kind (max) and same kind (averages, sums)."""

from __future__ import annotations

from .. import windows
from . import RelevanceOp, aten, flat_apply, flows_only_through, materialize, relevance_op, shift_dims
from .shape import Same, _refuse_batch_axis


@relevance_op(aten.max_pool2d.default, aten.max_pool1d.default)
class MaxPool(RelevanceOp):
    """Winner takes all: recorded with ``max_pool*_with_indices``, push gathers."""

    windowed = True

    def record(self, args, kwargs):
        fn = aten.max_pool2d_with_indices.default if self.op is aten.max_pool2d.default else None
        x = args[0]
        if fn is None:  # 1d: through the 2d op on a unit height
            out, idx = aten.max_pool2d_with_indices.default(
                x.unsqueeze(-2), [1, *args[1]], [1, *(args[2] or args[1])], [0, *args[3]],
                [1, *args[4]], args[5])
            out, idx = out.squeeze(-2), idx.squeeze(-2)
        else:
            out, idx = fn(*args, **kwargs)
        return out, (idx.flatten(2), tuple(out.shape))

    def push(self, state, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        idx, out_shape = state
        if isinstance(flows[0], windows.WindowFlow) and self.op is aten.max_pool2d.default:
            _, kernel, stride, padding, dilation, _ = args
            return windows.max_pool2d(flows[0], idx.reshape(out_shape), kernel, stride or kernel, padding, dilation)
        flow = materialize(flows[0])
        k, (n, c) = flow.shape[0], idx.shape[:2]
        flat = flow.reshape(k, n, c, -1)
        return flat.gather(3, idx.expand(k, *idx.shape)).reshape(k, *out_shape)


@relevance_op(aten.amax.default)
class AMax(RelevanceOp):
    """``amax``: the winners take the relevance (ties share it evenly)."""

    def record(self, args, kwargs):
        x, dims, keepdim = args
        nd = x.dim()
        _refuse_batch_axis(self, dims, nd, "reduces over")
        out = self.op(*args)
        mask = (x == aten.amax.default(x, dims, True)).to(x.dtype)
        return out, mask / mask.sum(dims, keepdim=True)

    def push(self, mask, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        return (materialize(flows[0]) * mask).sum(shift_dims(args[1], mask.dim()), keepdim=args[2])


@relevance_op(aten.max.dim)
class MaxDim(RelevanceOp):
    """``max(x, dim)`` → (values, indices): gather at the recorded indices."""

    def record(self, args, kwargs):
        x, dim, keepdim = args
        _refuse_batch_axis(self, dim, x.dim(), "reduces over")
        values, idx = self.op(*args)
        return (values, idx), idx if keepdim else idx.unsqueeze(dim)

    def push(self, idx, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        flow = materialize(flows[0])
        _, dim, keepdim = args
        out = flow.gather(shift_dims(dim, idx.dim()), idx.expand(flow.shape[0], *idx.shape))
        return (out if keepdim else out.squeeze(shift_dims(dim, idx.dim()))), None


@relevance_op(aten.mean.dim, aten.sum.dim_IntList)
class MeanSum(Same):
    """Means and sums over axes other than the batch axis: linear, the op on the flow."""

    dim_arg = 1

    def _check(self, args):
        _refuse_batch_axis(self, args[1], args[0].dim(), "reduces over")


@relevance_op(aten.avg_pool2d.default, aten.avg_pool1d.default, aten.adaptive_avg_pool2d.default,
              aten.adaptive_avg_pool1d.default, aten._adaptive_avg_pool2d.default,
              aten.upsample_nearest2d.vec, aten.upsample_bilinear2d.vec, aten.upsample_nearest2d.default,
              aten.upsample_bilinear2d.default, aten.upsample_nearest1d.vec, aten.upsample_linear1d.vec)
class Pool(Same):
    """Average pools and upsampling: linear, position-wise weights shared by samples."""

    def push(self, state, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        return flat_apply(self.op, materialize(flows[0]), *args[1:], **kwargs)

