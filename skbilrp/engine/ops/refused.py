"""Ops refused by name, each with why and fix (refusals are entries too)."""

from __future__ import annotations

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


#: random ops, refused wherever they are in the graph (a random mask is no constant)
RANDOM = (aten.bernoulli.p, aten.bernoulli.default, aten.rand_like.default, aten.randn_like.default,
          aten.native_dropout.default, aten.rand.default, aten.randn.default, aten.randint.low,
          aten.randint.default, aten.randint_like.default, aten.randperm.default, aten.normal_functional.default,
          aten.uniform.default, aten.multinomial.default)


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
