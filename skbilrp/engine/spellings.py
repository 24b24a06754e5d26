"""Ops that pass a tensor's values on unchanged, in every spelling an export writes (its
own graph and the decomposed one): the vocabulary of the passes that recognise what a
graph computes (gates, normalisation statistics, attention probabilities), so that
``dropout`` in eval mode and ``contiguous`` read as the ``clone`` they decompose to,
``flatten`` as a ``view``, ``to`` as ``_to_copy``."""

from __future__ import annotations

import torch

aten = torch.ops.aten

#: the same values as another tensor: casts, copies and dropout (in eval mode: in
#: training mode it is refused as random, ``ops.refused.is_random``)
SAME_VALUES = frozenset({aten._to_copy.default, aten.to.dtype, aten.to.device, aten.to.dtype_layout,
                         aten.clone.default, aten.alias.default, aten.contiguous.default, aten.dropout.default})
#: ops whose second operand gives only its dtype or shape (it may vary with the input)
LIKE = frozenset({aten.type_as.default, aten.expand_as.default})
#: the same values in another shape (broadcasts included)
RESHAPES = frozenset({aten.view.default, aten._unsafe_view.default, aten.reshape.default,
                      aten.flatten.using_ints, aten.expand.default, aten.unsqueeze.default,
                      aten.squeeze.dim, aten.squeeze.dims})
