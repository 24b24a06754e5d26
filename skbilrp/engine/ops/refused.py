"""Ops refused by name, each with why and fix (refusals are entries too)."""

from __future__ import annotations

import torch
from torch import fx

from . import RelevanceOp, aten, relevance_op


class Refused(RelevanceOp):
    why = ""
    fix = ""

    def record(self, args, kwargs):
        raise self.refuse(self.why, self.fix)


@relevance_op(aten.native_batch_norm.default, aten._native_batch_norm_legit.default,
              aten._native_batch_norm_legit_functional.default, aten._native_batch_norm_legit.no_stats)
class TrainingBatchNorm(Refused):
    why = "BatchNorm in training mode, or without running statistics, uses batch statistics, which mixes samples"
    fix = "Put the model in eval mode (and track running statistics)"


#: random ops refused by name; :func:`is_random` finds every random op, wherever it is
RANDOM = (aten.bernoulli.p, aten.bernoulli.default, aten.rand_like.default, aten.randn_like.default,
          aten.native_dropout.default, aten.rand.default, aten.randn.default, aten.randint.low,
          aten.randint.default, aten.randint_like.default, aten.randperm.default, aten.normal_functional.default,
          aten.uniform.default, aten.multinomial.default)


def is_random(node: fx.Node) -> bool:
    """Whether ``node`` draws random numbers, wherever it is in the graph (a random mask
    is no constant): an op torch tags ``nondeterministic_seeded``, unless its training
    flag is off or its dropout probability zero (``dropout`` and ``rrelu`` in eval mode,
    dropout of ``p=0``, attention without dropout compute no random number)."""
    op = node.target
    if not isinstance(op, torch._ops.OpOverload) or torch.Tag.nondeterministic_seeded not in op.tags:
        return False
    values = {arg.name: node.kwargs.get(arg.name, node.args[i] if i < len(node.args) else arg.default_value)
              for i, arg in enumerate(op._schema.arguments)}
    trains = values.get("train", values.get("training"))
    if trains is False or values.get("dropout_p", 1) == 0:
        return False
    return not (trains is not None and "dropout" in op._schema.name and values.get("p") == 0)


@relevance_op(*RANDOM)
class Random(Refused):
    why = "random ops make the explanation irreproducible"
    fix = "Put the model in eval mode or remove the random op"


@relevance_op(aten.exp.default, aten.log.default, aten.pow.Tensor_Scalar, aten.sqrt.default,
              aten.rsqrt.default, aten.reciprocal.default)
class NotLinear(Refused):
    why = ("this op has no relevance rule on a relevance-carrying input (it is not a ratio-rule activation, "
           "nor part of a normalisation x * g(statistic of x) that skbilrp recognises)")
    fix = "Detach its input if it computes a scale"
