"""Every refusal path of the export engine, triggered from a plain torch model the way a
user would (``Explainer(model).relevance(x)``).

An operator refusal names the ATen op, the node, the module path and class it came from,
the cause, and the hook that makes the op work
(``@skbilrp.engine.ops.relevance_op(torch.ops.aten.<op>.<overload>)``). Model-level
refusals (outputs, tracing) name the cause and the fix. The offending op sits in a named
submodule ``'1.0'`` (``nn.Sequential(nn.Linear(4, 8), nn.Sequential(Block()))``), so the
module path is not the root's.

Open problems are strict xfails (a fix shows up as an XPASS failure).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skbilrp import Explainer
from skbilrp.engine import ExportedNetwork, UnsupportedModelError, UnsupportedOperatorError, relevance_op
from skbilrp.engine.ops import OPS, RelevanceOp, aten
from skbilrp.rules import ZBox, Zero

warnings.filterwarnings("ignore", category=FutureWarning)

N = 2  # batch size
PATH = "1.0"  # module path of the offending block


class Fn(nn.Module):
    """A block whose forward is ``fn``; subclassed per case so the class name is the case's."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def block(name: str, fn) -> nn.Module:
    return type(name, (Fn,), {})(fn)


def model_with(name: str, fn, width: int = 8) -> nn.Module:
    """``Linear(4, width)`` then the block ``name`` at module path '1.0'."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, width), nn.Sequential(block(name, fn)))


def refusal(model: nn.Module, rules="zero", n: int = N, error=UnsupportedOperatorError, **options) -> str:
    x = torch.rand(n, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(error) as info:
        Explainer(model, rules=rules, **options).relevance(x)
    assert isinstance(info.value, UnsupportedModelError)  # one base class for users to catch
    return str(info.value)


def assert_names(message: str, op: str, cls: str, path: str = PATH) -> None:
    """``op`` as ``"div.Tensor"``: the op, its node, its module path and class, the hook."""
    assert f"aten.{op} (node '" in message, message
    assert f"module '{path}', {cls})" in message, message
    assert extension_hint(f"aten.{op}") in message, message


def extension_hint(op: str) -> str:
    """How a refusal of ``op`` (``"aten.div.Tensor"``) says to extend the table: register a
    new entry, or, for an op that has one (registering again raises), replace it."""
    namespace, name, overload = op.split(".")
    if getattr(getattr(getattr(torch.ops, namespace), name), overload) in OPS:
        return f"skbilrp.engine.ops.OPS[torch.ops.{op}] = "
    return f"@skbilrp.engine.ops.relevance_op(torch.ops.{op})"


def check(name, fn, op, cause, rules="zero", width=8, n=N):
    message = refusal(model_with(name, fn, width), rules, n)
    assert_names(message, op, name)
    for words in [cause] if isinstance(cause, str) else cause:
        assert words in message, message
    return message


def heads(h, *shape):
    return h.reshape(h.shape[0], *shape)


# ------------------------------------------------------------ products (attention.py)


def test_einsum_of_two_carrying_operands():
    check("Outer", lambda h: torch.einsum("ni,nj->nij", h, h).flatten(1), "einsum.default",
          ["einsum of several relevance-carrying operands", "Detach all but one operand"])


@pytest.mark.parametrize("fn", [
    lambda h: heads(h, 2, 4) @ torch.ones(4),
    lambda h: torch.ones(2) @ heads(h, 2, 4),
    lambda h: heads(h, 2, 4) @ h[0, :4],  # two carrying operands, one a vector
], ids=["matrix @ vector", "vector @ matrix", "carrying matrix @ carrying vector"])
def test_product_with_a_vector_operand(fn):
    check("VectorProduct", fn, "matmul.default",
          ["a product with a vector operand is not supported", "unsqueeze the vector"])


def _qkv(h):
    t = heads(h, 1, 2, 4)  # (N, heads, tokens, dim)
    return t, t, t


def test_attention_dropout_is_refused_in_eval_mode():
    # a dropout_p written into the forward reaches the graph even in eval mode
    check("DropAttention", lambda h: F.scaled_dot_product_attention(*_qkv(h), dropout_p=0.1).flatten(1),
          "scaled_dot_product_attention.default", ["random ops make the explanation irreproducible", "eval mode"])


def test_grouped_query_attention():
    def gqa(h):
        q = heads(h, 4, 1, 2)
        return F.scaled_dot_product_attention(q, q[:, :2], q[:, :2], enable_gqa=True).flatten(1)

    check("GroupedQuery", gqa, "scaled_dot_product_attention.default", "grouped-query attention is not supported")


def test_attention_without_relevance_in_the_values():
    def constant_values(h):
        q = heads(h, 1, 2, 4)
        kv = torch.ones(1, 1, 2, 4)
        return F.scaled_dot_product_attention(q, kv, kv).flatten(1)

    check("QueryOnly", constant_values, "scaled_dot_product_attention.default",
          ["no relevance reaches the values", "Explain an input that feeds them"])


@pytest.mark.parametrize("constant", ["k and v", "v"])
def test_attnlrp_attention_needs_relevance_in_q_k_and_v(constant):
    def attend(h):
        q = heads(h, 1, 2, 4)
        c = torch.ones(1, 1, 2, 4)
        return F.scaled_dot_product_attention(q, c if constant == "k and v" else q, c).flatten(1)

    message = refusal(model_with("PartialAttention", attend), rules="zero", attention="attnlrp")
    assert_names(message, "scaled_dot_product_attention.default", "PartialAttention")
    assert "attention='attnlrp' needs relevance to reach q, k and v" in message


def test_unknown_softmax_rule():
    with pytest.raises(ValueError, match="attention must be 'cp' or 'attnlrp', got 'constant'"):
        Explainer(nn.Sequential(nn.Linear(4, 3)), attention="constant")


# --------------------------------------------------- non-linear arguments (flows_only_through)


@pytest.mark.parametrize("name, fn, op, arg", [
    ("DynamicLinear", lambda h: F.linear(h, h), "linear.default", 1),
    ("DynamicLayerNorm", lambda h: F.layer_norm(h, (8,), weight=h[0]), "layer_norm.default", 2),
    ("DynamicMask", lambda h: F.scaled_dot_product_attention(
        *_qkv(h), attn_mask=heads(h, 1, 2, 4)[..., :2]).flatten(1), "scaled_dot_product_attention.default", 3),
])
def test_relevance_reaching_an_argument_the_op_is_not_linear_in(name, fn, op, arg):
    check(name, fn, op, [f"relevance reaches argument {arg} of aten.{op}, which is not linear in it",
                         "Detach that argument"])


# ------------------------------------------------------------ sums and products (combine.py)


@pytest.mark.parametrize("fn", [
    lambda h: h[:, :4] / h[:, 4:],
    lambda h: torch.ones(8) / h,
], ids=["carrying / carrying", "constant / carrying"])
def test_division_by_a_carrying_tensor(fn):
    check("Quotient", fn, "div.Tensor", ["division by a relevance-carrying tensor is not linear",
                                          "Detach the divisor"])


@pytest.mark.parametrize("fn, op", [
    (lambda h: torch.div(h, 2, rounding_mode="floor"), "div.Tensor_mode"),
    (lambda h: torch.div(h, torch.full((8,), 2.0), rounding_mode="trunc"), "div.Tensor_mode"),
    (lambda h: h // 2, "floor_divide.default"),
], ids=["floor", "trunc", "floordiv"])
def test_rounding_division(fn, op):
    # export gives rounding division its own overloads, which have no entry: the
    # rounding_mode branch of ops.combine.Scale (div.Tensor / div.Scalar) is unreachable
    check("RoundingDivision", fn, op, "has no relevance operator")


# ----------------------------------------------------- reductions and layout (shape.py, pooling.py)


@pytest.mark.parametrize("fn, op", [
    (lambda h: h.sum(0, keepdim=True), "sum.dim_IntList"),
    (lambda h: h.sum(-2, keepdim=True), "sum.dim_IntList"),
    (lambda h: h.sum((0, 1), keepdim=True), "sum.dim_IntList"),
    (lambda h: h.sum([], keepdim=True), "sum.dim_IntList"),  # no dims: every axis
    (lambda h: h.mean(0, keepdim=True), "mean.dim"),
    (lambda h: h.amax(0, keepdim=True), "amax.default"),
    (lambda h: h.amax([], keepdim=True), "amax.default"),
    (lambda h: h.max(0, keepdim=True).values, "max.dim"),
], ids=["sum", "sum-negative-axis", "sum-two-axes", "sum-no-dims", "mean", "amax", "amax-no-dims", "max-dim"])
def test_reduction_over_the_batch_axis(fn, op):
    check("BatchReduction", fn, op, ["axis 0, the batch axis", "mixes samples"])


def test_roll_without_dims():
    check("FlatRoll", lambda h: torch.roll(h, 1), "roll.default", "a roll without dims rolls across samples")


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_that_copies_input_values(mode):
    check("CopyPad", lambda h: F.pad(heads(h, 1, 8), (1, 1), mode=mode).flatten(1), "pad.default",
          [f"'{mode}' padding copies input values", "mode='constant'"])


_FILLS = [
    pytest.param(lambda h: F.pad(h, (1, 1), value=1.0), "pad.default", id="F.pad"),
    pytest.param(lambda h: torch.constant_pad_nd(h, (1, 1), 1.0), "constant_pad_nd.default", id="constant_pad_nd"),
]


@pytest.mark.parametrize("mode", ["share", "flat"])
@pytest.mark.parametrize("fn, op", _FILLS)
def test_constant_padding_with_a_fill_under_a_bias_passing_mode(fn, op, mode):
    check("FillPad", fn, op, ["padding with the constant 1.0 cannot pass its share to the input",
                              f"bias={mode!r}", "Pad with zeros or use bias='absorb'"], rules=Zero(bias=mode))


@pytest.mark.parametrize("fn, op", _FILLS)
def test_constant_padding_with_a_fill_is_absorbed_under_absorb(fn, op):
    # control for the refusal above: the refusal is the bias mode's
    rel = Explainer(model_with("FillPad", fn), rules=Zero(bias="absorb")).relevance(torch.rand(N, 4))
    assert torch.isfinite(rel.relevance).all()


# ---------------------------------------------------------------- weighted layers (z^B)


def test_zbox_on_a_layer_not_fed_by_the_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.ReLU(), nn.Linear(8, 3)))
    message = refusal(model, rules={"1.1": ZBox(0.0, 1.0)})
    assert_names(message, "linear.default", "Linear", path="1.1")
    assert "the z^B rule applies only to a layer fed by the model input" in message
    assert "Assign another rule to this layer" in message


# ------------------------------------------------------------ ops refused by name (refused.py)


_NOT_LINEAR = [
    ("exp.default", torch.exp), ("log.default", torch.log), ("pow.Tensor_Scalar", lambda h: h ** 2),
    ("sqrt.default", torch.sqrt), ("rsqrt.default", torch.rsqrt), ("reciprocal.default", lambda h: 1 / h),
]
_RANDOM = [
    ("rand_like.default", lambda h: torch.rand_like(h) * h),
    ("randn_like.default", lambda h: torch.randn_like(h) * h),
    ("bernoulli.p", lambda h: torch.bernoulli(h, 0.5)),
    # an in-place op on a view makes the export decompose: aten.dropout(train=True) becomes native_dropout
    ("native_dropout.default", lambda h: F.dropout(h.clone().transpose(0, 1).relu_().transpose(0, 1), 0.5,
                                                   training=True)),
    ("bernoulli.default", lambda h: torch.bernoulli(torch.sigmoid(h))),
    ("normal_functional.default", lambda h: h.clone().normal_() * h),
]


@pytest.mark.parametrize("op, fn", _NOT_LINEAR, ids=[op for op, _ in _NOT_LINEAR])
def test_not_linear_op_on_a_carrying_tensor(op, fn):
    check("NotLinearBlock", fn, op, ["this op has no relevance rule on a relevance-carrying input",
                                     "not a ratio-rule activation", "Detach its input"])


@pytest.mark.parametrize("op, fn", _RANDOM, ids=[op for op, _ in _RANDOM])
def test_random_op_in_eval_mode(op, fn):
    check("RandomBlock", fn, op, ["random ops make the explanation irreproducible", "eval mode"])


def test_dropout_hard_wired_to_training():
    # the export's own IR keeps aten.dropout(train=True) (no decomposition needed): a
    # random op by torch's tag, its training flag on; a graph decomposed for another
    # reason would show native_dropout, refused alike
    check("RandomBlock", lambda h: F.dropout(h, 0.5, training=True), "dropout.default",
          ["random ops make the explanation irreproducible", "eval mode"])


def test_dropout_hard_wired_where_no_relevance_flows():
    """Under CP-LRP the attention probabilities are constants and carry no relevance, so
    no operator reads them; dropout on them in training mode would still make the
    features random."""
    def attention(h):
        q = heads(h, 2, 4)
        p = F.dropout(torch.softmax(q @ q.transpose(-1, -2), -1), 0.5, training=True)
        return (p @ q).flatten(1)

    message = refusal(model_with("RandomBlock", attention, 8))
    assert_names(message, "dropout.default", "RandomBlock")
    assert "random ops make the explanation irreproducible" in message, message


class TrainBatchNorm(nn.Module):
    """BatchNorm with ``training=True`` written out: batch statistics even in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(8))
        self.register_buffer("var", torch.ones(8))

    def forward(self, x):
        return F.batch_norm(x, self.mean, self.var, training=True)


def test_batchnorm_in_training_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Sequential(TrainBatchNorm()))
    message = refusal(model)
    assert_names(message, "_native_batch_norm_legit_functional.default", "TrainBatchNorm")
    for words in ["batch statistics", "mixes samples", "eval mode"]:
        assert words in message, message


def test_batchnorm_without_running_statistics_names_the_cause():
    bn = nn.BatchNorm1d(8, track_running_stats=False)
    check("StatlessBatchNorm", lambda h: bn(h), "_native_batch_norm_legit.no_stats",
          ["batch statistics", "mixes samples"])


def test_random_constant_is_refused():
    check("RandomMask", lambda h: torch.rand(N, 8) * h, "rand.default",
          "random ops make the explanation irreproducible")


# ------------------------------------------------------------ the table lookup (ops.lookup)


@pytest.mark.parametrize("op, fn", [
    ("sin.default", torch.sin),
    ("t.default", lambda h: h.t().t()),
], ids=["sin", "t"])
def test_op_without_an_entry(op, fn):
    message = check("Unregistered", fn, op, "has no relevance operator")
    assert "skbilrp.engine.ops.OPS" in message


@torch.library.custom_op("skbilrp_tests::twice", mutates_args=())
def _twice(t: torch.Tensor) -> torch.Tensor:
    return 2 * t


@_twice.register_fake
def _(t):
    return torch.empty_like(t)


@torch.library.custom_op("skbilrp_tests::double_", mutates_args=("t",))
def _double_(t: torch.Tensor) -> None:
    t.mul_(2)


@_double_.register_fake
def _(t):
    return None


def test_custom_op_without_an_entry():
    message = refusal(model_with("CustomBlock", lambda h: _twice(h)))
    assert "skbilrp_tests.twice.default (node '" in message and "module '1.0', CustomBlock)" in message
    assert "has no relevance operator" in message


def test_custom_op_refusal_names_its_own_namespace_in_the_hook():
    message = refusal(model_with("CustomBlock", lambda h: _twice(h)))
    assert "@skbilrp.engine.ops.relevance_op(torch.ops.skbilrp_tests.twice.default)" in message


def _double_copy(h):
    c = h.clone()
    _double_(c)
    return c


def test_mutating_custom_op_refusal_names_the_op_and_the_mutation():
    # functionalisation wraps it in the higher-order op auto_functionalized_v2 (aten's own
    # in-place ops become their out-of-place forms); the refusal names the wrapped op
    message = refusal(model_with("MutatingBlock", _double_copy))
    assert "skbilrp_tests.double_.default" in message and "mutates" in message
    assert "relevance_op(torch.ops.skbilrp_tests.double_.default)" in message


# ------------------------------------------------------------ bias modes (cells.py, re-raised)


@pytest.mark.parametrize("mode", ["share", "flat"])
def test_constant_joining_away_from_the_batch_axis(mode):
    # a constant part of a concatenation is spread over the input under a bias-passing
    # mode, which needs its batch axis first (the batch axis of h moved to axis 1 here)
    def cat_across(h):
        return torch.cat([h.transpose(0, 1), torch.ones(2, h.shape[0])], 0).transpose(0, 1)

    check("CatAcross", cat_across, "cat.default",
          ["a constant of shape (2, 3) joins a relevance-carrying tensor away from its batch axis",
           "use bias='absorb'"], rules=Zero(bias=mode), n=3)


# ----------------------------------------------------------------- model level (network.py)


def test_model_returning_several_outputs():
    message = refusal(model_with("TwoHeads", lambda h: (h, 2 * h)), error=UnsupportedModelError)
    assert "must return one tensor of features, got 2 outputs" in message
    assert "wrap it in a module that returns the embedding tensor" in message


@pytest.mark.parametrize("fn, got", [
    (lambda h: h.sum(1), f"({N},)"),
    (lambda h: h.reshape(1, -1), f"(1, {8 * N})"),
    (lambda h: h.reshape(-1), f"({8 * N},)"),
], ids=["scalar-per-sample", "batch-folded", "flat"])
def test_model_not_returning_a_batch_of_features(fn, got):
    message = refusal(model_with("BadOutput", fn), error=UnsupportedModelError)
    assert f"must return features of shape (N, ...), got {got} for a batch of {N}" in message


@pytest.mark.parametrize("fn", [
    lambda h: h.detach(),
    lambda h: torch.ones(h.shape[0], 3),
], ids=["detached", "constant"])
def test_no_relevance_reaches_the_output(fn):
    message = refusal(model_with("Disconnected", fn), error=UnsupportedModelError)
    assert "No relevance reaches the model output" in message


class DataDependent(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


def test_model_with_data_dependent_control_flow():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Sequential(DataDependent()))
    message = refusal(model, error=UnsupportedModelError)
    assert "Cannot export Sequential with torch.export" in message
    assert "data-dependent control flow" in message and "strict=False" in message


def test_input_that_does_not_fit_is_the_models_own_error():
    # the export failure is told apart from a bad input: the forward's own error comes back
    model = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.ReLU()))
    with pytest.raises(RuntimeError) as info:
        ExportedNetwork(model).record(torch.rand(N, 5))
    assert not isinstance(info.value, UnsupportedModelError)
    with pytest.raises(ValueError, match=r"Input of shape \(2, 5\) does not fit the model"):
        Explainer(model).relevance(torch.rand(N, 5))


def test_model_that_is_not_a_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got function"):
        Explainer(lambda x: x)


# ------------------------------------------------------------------ registration (relevance_op)


def test_registration_needs_an_exact_overload():
    with pytest.raises(TypeError, match=r"needs exact OpOverloads \(aten.add.Tensor\)"):
        relevance_op(aten.sin)(type("SinOp", (RelevanceOp,), {}))
    assert aten.sin not in OPS


def test_registration_never_overrides():
    before = OPS[aten.relu.default]
    with pytest.raises(RuntimeError, match="duplicate registrations for aten.relu.default: already mapped to Ratio"):
        relevance_op(aten.relu.default)(type("ReluAgain", (RelevanceOp,), {}))
    assert OPS[aten.relu.default] is before


# ------------------------------------------ module-level forms (canonicalize.BatchFirstAttention)


class SelfAttention(nn.Module):
    def __init__(self, **options) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, **options)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def attention_model(**options) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Unflatten(1, (2, 8)), SelfAttention(**options), nn.Flatten())


_MHA_OPTIONS = [{"add_bias_kv": True}, {"add_zero_attn": True}]


@pytest.mark.parametrize("options", _MHA_OPTIONS, ids=lambda o: next(iter(o)))
def test_batch_first_attention_refusal_names_the_module(options):
    with pytest.raises(UnsupportedModelError) as info:
        Explainer(attention_model(**options))
    message = str(info.value)
    assert "module '2.attn'" in message and next(iter(options)) in message


def test_batch_first_attention_without_options_is_explained():
    rel = Explainer(attention_model()).relevance(torch.rand(N, 4))
    assert torch.isfinite(rel.relevance).all()


def test_batch_first_attention_with_dropout_is_explained_in_eval_mode():
    rel = Explainer(attention_model(dropout=0.1)).relevance(torch.rand(N, 4))
    assert torch.isfinite(rel.relevance).all()


def _write_through_eval_dropout(h):
    """Eval-mode dropout hands back its input: the write to ``h`` shows in ``kept``, a
    change torch.export's graph loses (its dropout makes a new tensor)."""
    kept = F.dropout(h, 0.1, training=False)
    h.mul_(2.0)
    return kept


@pytest.mark.parametrize("n", [1, N], ids=["one sample", "a batch"])
def test_graph_that_is_not_the_model_is_refused(n):
    """Checked once per graph against the model's own forward: a graph the export got
    wrong is refused, whether its sizes are symbolic (a batch) or fixed (one sample:
    the symbolic graph is re-exported for that shape first)."""
    model = model_with("DropWrite", _write_through_eval_dropout).eval()
    message = refusal(model, n=n, error=UnsupportedModelError)
    assert "computes other features than the model's own forward" in message, message
    assert "inplace=False" in message, message
