"""Ops linear in their one carrying argument that treat samples alike (same kind):
the op itself applied to the flow. Views, permutes, slices, pads, concatenations.
The flow has one more axis in front (the probes): axis arguments are shifted by one and
size arguments (view, reshape, expand) get the probe count in front, so layout ops may
move or fold the batch axis freely (a window partition, timm's qkv permute).
"""

from __future__ import annotations

import torch

from . import _GETITEM, InputFlow, RelevanceOp, align, aten, flows_only_through, materialize, relevance_op, shift_dims


class Same(RelevanceOp):
    """``u_out = op(u_in, *args)`` with the recorded constant arguments."""

    #: index of an axis argument (int or list), shifted past the probe axis
    dim_arg: "int | None" = None
    #: number of axes the dims refer to, relative to the input's (unsqueeze, stack: +1)
    extra_dims = 0
    #: keeps the model input's (value, probe) pair (position-wise identity ops)
    identity = False

    def record(self, args, kwargs):
        self._check(args)
        return self.op(*args, **kwargs), self._ndim(args)

    def _ndim(self, args):
        return args[0].dim() + self.extra_dims if isinstance(args[0], torch.Tensor) else None

    def _check(self, args):
        return None

    def push(self, ndim, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        flow = flows[0]
        if self.identity and isinstance(flow, InputFlow):
            return flow
        flow = materialize(flow)
        args = list(args)
        args[0] = flow
        if self.dim_arg is not None and self.dim_arg < len(args) and args[self.dim_arg] is not None:
            args[self.dim_arg] = shift_dims(args[self.dim_arg], ndim)
        return self.op(*args, **kwargs)


def _refuse_batch_axis(op: RelevanceOp, dims, ndim: int, what: str) -> None:
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    if not dims or any(d % ndim == 0 for d in dims):
        raise op.refuse(f"it {what} axis 0, the batch axis, which mixes samples")


@relevance_op(aten.clone.default, aten.alias.default, aten.lift_fresh_copy.default, aten.contiguous.default)
class Identity(Same):
    identity = True

    def push(self, ndim, flows, args, kwargs, cells=None):
        # the values unchanged: a memory format (channels_last of a 4-d map) is no format
        # of the flow, which has the probes' axis in front
        return super().push(ndim, flows, args[:1], {}, cells)


@relevance_op(aten._to_copy.default, aten.to.dtype, aten.to.device, aten.to.dtype_layout)
class Cast(Same):
    """A dtype cast (``x.float()``, ``x.to(torch.float64)``): the flow is cast alike and
    keeps exactly the precision the value keeps. (``to`` is what the export's own IR
    writes; decomposed, it becomes ``_to_copy``.)"""


@relevance_op(aten.type_as.default)
class TypeAs(RelevanceOp):
    """``x.type_as(other)``: a cast of ``x``; only ``other``'s dtype is used, so relevance
    that reaches ``other`` (GemmaRMSNorm casts back to its own input's dtype) ends there."""

    @classmethod
    def ends(cls, network) -> frozenset:
        return frozenset({1})

    def push(self, state, flows, args, kwargs, cells=None):
        # only x's relevance goes on; the network holds the node constant unless x carries
        return materialize(flows[0]).to(self.node.meta["val"].dtype)


@relevance_op(aten.dropout.default)
class Dropout(Same):
    """Dropout in eval mode (``train=False``) is the identity (in training mode it is
    refused with the random ops, wherever it is: ``refused.is_random``)."""

    identity = True

    def record(self, args, kwargs):
        return args[0], None

    def push(self, state, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        return flows[0]


@relevance_op(aten.expand.default)
class Expand(Same):
    def push(self, ndim, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        flow = align(materialize(flows[0]), len(args[1]))
        return flow.expand([flow.shape[0], *args[1]])


@relevance_op(aten.expand_as.default)
class ExpandAs(RelevanceOp):
    """``x.expand_as(other)``: only ``other``'s shape is used, so relevance that reaches
    ``other`` ends here (as in the ``expand`` the decomposition writes, with ``other``'s
    sizes): ``param.expand_as(x)`` is a constant."""

    @classmethod
    def ends(cls, network) -> frozenset:
        return frozenset({1})

    def record(self, args, kwargs):
        return self.op(*args, **kwargs), tuple(args[1].shape)

    def push(self, shape, flows, args, kwargs, cells=None):
        flow = align(materialize(flows[0]), len(shape))  # x carries, or the node is a constant
        return flow.expand([flow.shape[0], *shape])


@relevance_op(aten.repeat.default)
class Repeat(Same):
    """Tiling copies the value, so the flow is tiled alike (the probe axis once)."""

    def push(self, ndim, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        flow = align(materialize(flows[0]), len(args[1]))
        return flow.repeat([1, *args[1]])


@relevance_op(aten.gather.default)
class Gather(Same):
    """Gathering at constant indices."""

    def push(self, ndim, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        flow, index = materialize(flows[0]), args[2]
        return flow.gather(shift_dims(args[1], ndim), index.expand(flow.shape[0], *index.shape))


@relevance_op(aten.view.default, aten._unsafe_view.default, aten.reshape.default)
class Resize(Same):
    """Views as reshapes: a flow's memory layout need not be the value's (the export
    chose ``view`` for the value's strides), the shape is what matters."""

    def push(self, ndim, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        flow = materialize(flows[0])
        return flow.reshape([flow.shape[0], *args[1]])


@relevance_op(aten.flatten.using_ints)
class Flatten(Same):
    """``x.flatten(start, end)``, as the export's own IR writes it (decomposed: a view);
    the flow takes the value's new shape behind its probe axis."""

    def record(self, args, kwargs):
        out = self.op(*args, **kwargs)
        return out, tuple(out.shape)

    def push(self, shape, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        flow = materialize(flows[0])
        return flow.reshape([flow.shape[0], *shape])


@relevance_op(aten.permute.default)
class Permute(Same):
    def push(self, ndim, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        return materialize(flows[0]).permute(0, *shift_dims(args[1], ndim))


@relevance_op(aten.transpose.int)
class Transpose(Same):
    def push(self, ndim, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        return materialize(flows[0]).transpose(shift_dims(args[1], ndim), shift_dims(args[2], ndim))


_DIM_AT = {aten.slice.Tensor: 1, aten.select.int: 1, aten.squeeze.dim: 1, aten.squeeze.dims: 1,
           aten.narrow.default: 1, aten.unbind.int: 1, aten.flip.default: 1, aten.split.Tensor: 2,
           aten.split_with_sizes.default: 2, aten.chunk.default: 2, aten.roll.default: 2}


@relevance_op(*_DIM_AT)
class Along(Same):
    """Ops along given axes (slice, select, squeeze, split, roll, flip)."""

    def __init__(self, node, network) -> None:
        super().__init__(node, network)
        self.dim_arg = _DIM_AT[self.op]

    def _check(self, args):
        if self.op is aten.roll.default and not args[2]:
            raise self.refuse("a roll without dims rolls across samples")


@relevance_op(aten.unsqueeze.default)
class Unsqueeze(Same):
    dim_arg, extra_dims = 1, 1


@relevance_op(aten.constant_pad_nd.default, aten.pad.default)
class Pad(Same):
    """Constant padding: the flow is padded with zeros. A non-zero fill value is a
    constant, absorbed (refused under a bias-passing mode, which would have to place it
    on the input). Reflect / replicate / circular padding copy input values: refused."""

    def __init__(self, node, network) -> None:
        super().__init__(node, network)
        self.mode = network.bias_mode_for(node)

    def _check(self, args):
        if self.op is aten.pad.default and args[2] != "constant":
            raise self.refuse(f"{args[2]!r} padding copies input values",
                              "Pad with mode='constant' or register an operator")
        fill = args[2] if self.op is aten.constant_pad_nd.default else args[3]
        if fill and self.mode != "absorb":
            raise self.refuse(f"padding with the constant {fill} cannot pass its share to the input "
                              f"(bias={self.mode!r})", "Pad with zeros or use bias='absorb'")

    def push(self, state, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        return aten.constant_pad_nd.default(materialize(flows[0]), list(args[1]), 0.0)


@relevance_op(aten.index.Tensor)
class Index(Same):
    """Indexing with constant index tensors."""

    def push(self, state, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        out = aten.index.Tensor(materialize(flows[0]), [None, *args[1]])
        at = [i for i, t in enumerate(args[1]) if t is not None]
        if at and at[-1] - at[0] + 1 != len(at):
            # index tensors apart: torch puts their axes first, ahead of the probe axis
            ndim = max(t.dim() for t in args[1] if t is not None)
            out = out.movedim(ndim, 0)
        return out


@relevance_op(aten.cat.default, aten.stack.default)
class Cat(RelevanceOp):
    """Concatenation: flows concatenate. A constant part (a class token) is absorbed, or
    under a bias-passing mode spread over the whole input (it has no position there)."""

    def __init__(self, node, network) -> None:
        super().__init__(node, network)
        self.mode = network.bias_mode_for(node)

    def record(self, args, kwargs):
        dim = args[1] if len(args) > 1 else 0
        out = self.op(*args, **kwargs)
        return out, shift_dims(dim, out.dim())  # not a part's: a skipped empty one is 1-d

    def push(self, dim, flows, args, kwargs, cells=None):
        flows_only_through(self, flows, 0)
        # torch's cat skips 1-d empty tensors whatever the others' rank (a KV cache's first
        # step); with the probe axis in front they would be 2-d and no longer skipped
        kept = [(f, t) for f, t in zip(flows[0], args[0])
                if not (f is None and t.dim() == 1 and t.numel() == 0)]
        parts = [materialize(f) for f, _ in kept]
        k = next(p for p in parts if p is not None).shape[0]
        for i, (p, (_, t)) in enumerate(zip(parts, kept)):
            if p is None:
                parts[i] = t.expand((k,) + tuple(t.shape)) * 0 if self.mode == "absorb" else cells.spread(t)
        return self.op(parts, dim)


@relevance_op(_GETITEM)
class GetItem(RelevanceOp):
    """An element of a multi-output op (split, BatchNorm, max with indices)."""

    def record(self, args, kwargs):
        return args[0][args[1]], None

    def push(self, state, flows, args, kwargs, cells=None):
        parts = flows[0]
        return None if parts is None else parts[args[1]]

