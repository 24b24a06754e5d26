"""Ops linear in their one carrying argument that treat samples alike (same kind):
the op itself applied to the flow. Views, permutes, slices, pads, concatenations.
Size arguments recorded for the batch ``N`` are re-batched to ``K*N``; an op acting on
the batch axis is refused.
"""

from __future__ import annotations

import torch

from . import (_GETITEM, InputFlow, RelevanceOp, aten, flows_only_through, materialize, rebatch,
               relevance_op)


class Same(RelevanceOp):
    """``u_out = op(u_in, *args)`` with the recorded constant arguments."""

    #: index of a size argument whose first entry is the batch size
    size_arg: "int | None" = None
    #: index of a dim argument (int or list) that must not be the batch axis
    dim_arg: "int | None" = None
    #: keeps the model input's (value, probe) pair (position-wise identity ops)
    identity = False

    def record(self, args, kwargs):
        out = self.op(*args, **kwargs)
        self._check(args)
        return out, None

    def _check(self, args):
        if self.dim_arg is not None and self.dim_arg < len(args):
            dims = args[self.dim_arg]
            nd = args[0].dim()
            dims = [dims] if isinstance(dims, int) else list(dims or [])
            if any(d % nd == 0 for d in dims if isinstance(d, int)):
                raise self.refuse("it acts on the batch axis; skbilrp needs every op to treat "
                                  "samples independently, batch axis first")
        if self.size_arg is not None:
            size = args[self.size_arg]
            if not size or (size[0] not in (args[0].shape[0], -1) and args[0].shape[0] != 1):
                raise self.refuse(f"it changes the batch axis ({tuple(args[0].shape)} -> {list(size)})",
                                  "Keep the batch axis first, e.g. x.flatten(1) or x.view(x.size(0), -1)")

    def push(self, state, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        flow = flows[0]
        if self.identity and isinstance(flow, InputFlow):
            return flow
        flow = materialize(flow)
        args = list(args)
        args[0] = flow
        if self.size_arg is not None:
            args[self.size_arg] = rebatch(args[self.size_arg], flow.shape[0])
        return self.op(*args, **kwargs)


@relevance_op(aten.clone.default, aten.alias.default, aten.lift_fresh_copy.default)
class Identity(Same):
    identity = True

    def record(self, args, kwargs):
        # clone / contiguous / alias: a layout change at most, the values are unchanged
        return self.op(*args, **kwargs), None


@relevance_op(aten.dropout.default)
class Dropout(Same):
    """Dropout in eval mode (``train=False``) is the identity."""

    identity = True

    def record(self, args, kwargs):
        if args[2]:
            raise self.refuse("dropout in training mode is random", "Put the model in eval mode")
        return args[0], None

    def push(self, state, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        return flows[0]


@relevance_op(aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.expand.default)
class Resize(Same):
    size_arg = 1


@relevance_op(aten.permute.default)
class Permute(Same):
    def _check(self, args):
        if args[1][0] % args[0].dim() != 0:
            raise self.refuse("it moves the batch axis")


@relevance_op(aten.transpose.int)
class Transpose(Same):
    def _check(self, args):
        nd = args[0].dim()
        if args[1] % nd == 0 or args[2] % nd == 0:
            raise self.refuse("it moves the batch axis")


_DIM_AT = {aten.slice.Tensor: 1, aten.select.int: 1, aten.squeeze.dim: 1, aten.squeeze.dims: 1,
           aten.narrow.default: 1, aten.unbind.int: 1, aten.flip.default: 1, aten.split.Tensor: 2,
           aten.split_with_sizes.default: 2, aten.chunk.default: 2, aten.roll.default: 2}


@relevance_op(*_DIM_AT, aten.unsqueeze.default)
class Along(Same):
    """Ops along given non-batch axes (slice, select, squeeze, split, roll, flip)."""

    def _check(self, args):
        nd = args[0].dim()
        if self.op is aten.unsqueeze.default:
            if args[1] % (nd + 1) == 0:
                raise self.refuse("it inserts an axis before the batch axis")
            return
        dims = args[_DIM_AT[self.op]]
        dims = [dims] if isinstance(dims, int) else list(dims)
        if (self.op is aten.roll.default and not dims) or any(d % nd == 0 for d in dims):
            raise self.refuse("it acts on the batch axis; skbilrp needs every op to treat samples "
                              "independently, batch axis first")


@relevance_op(aten.constant_pad_nd.default)
class Pad(Same):
    """Padding: the flow is padded with zeros (a non-zero fill value is a constant)."""

    def push(self, state, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        pad = list(args[1])
        if len(pad) // 2 >= args[0].dim() if isinstance(args[0], torch.Tensor) else False:
            raise self.refuse("it pads the batch axis")
        return aten.constant_pad_nd.default(materialize(flows[0]), pad, 0.0)


@relevance_op(aten.index.Tensor)
class Index(Same):
    """Indexing with constant index tensors on non-batch axes."""

    def _check(self, args):
        if args[1] and args[1][0] is not None:
            raise self.refuse("it indexes the batch axis")

    def push(self, state, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        return aten.index.Tensor(materialize(flows[0]), args[1])


@relevance_op(aten.cat.default, aten.stack.default)
class Cat(RelevanceOp):
    """Concatenation along a non-batch axis: flows concatenate, zeros where none flows."""

    def record(self, args, kwargs):
        tensors = args[0]
        dim = args[1] if len(args) > 1 else 0
        nd = tensors[0].dim() + (self.op is aten.stack.default)
        if dim % nd == 0:
            raise self.refuse("it concatenates along the batch axis")
        return self.op(*args, **kwargs), [t.shape for t in tensors]

    def push(self, shapes, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        parts = [materialize(f) for f in flows[0]]
        like = next(p for p in parts if p is not None)
        k = like.shape[0] // shapes[0][0]
        parts = [p if p is not None else like.new_zeros((k * s[0],) + tuple(s[1:]))
                 for p, s in zip(parts, shapes)]
        return self.op(parts, *args[1:], **kwargs)


@relevance_op(_GETITEM)
class GetItem(RelevanceOp):
    """An element of a multi-output op (split, BatchNorm, max with indices)."""

    def record(self, args, kwargs):
        return args[0][args[1]], None

    def push(self, state, flows, args, kwargs, cells=None):
        parts = flows[0]
        return None if parts is None else parts[args[1]]

