"""The export's own graph, kept undecomposed (``skbilrp.engine.trace``), explains as the
decomposed graph does: spellings only that graph has (``expand_as``, eval-mode
``dropout``, ``flatten``, ``to``) must not hide a gate, a normalisation statistic or a
constant from the passes that recognise them.

Oracles: for LRP-0 the flows of a detach-trick twin (the gate or the statistic
detached; plain ``jvp``), and for every bias mode the same model explained through the
decomposed export (``run_decompositions({})`` forced), which the op-entry samples check
against their twins. Each case asserts that the export's own graph was kept.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import close, probes
from torch import nn

import skbilrp.engine.trace as trace
from skbilrp.engine import ExportedNetwork
from skbilrp.engine.network import clear_cache

N, C, D, EPS = 2, 4, 6, 1e-5


class Gated(nn.Module):
    """Squeeze-excitation: a sigmoid gate of pooled features scales the map it came from."""

    def __init__(self, spell) -> None:
        super().__init__()
        self.conv, self.fc, self.head = nn.Conv2d(2, C, 3, padding=1), nn.Linear(C, C), nn.Linear(C * 25, 3)
        self.spell = spell

    def gate(self, h):
        return torch.sigmoid(self.fc(h.mean((2, 3))))

    def forward(self, x, detached=False):
        h = self.conv(x)
        g = self.gate(h)
        return self.head(self.spell(h, g.detach() if detached else g).reshape(x.shape[0], -1))


class Normed(nn.Module):
    """``Linear -> norm -> Linear`` with the norm written out."""

    def __init__(self, norm) -> None:
        super().__init__()
        self.a, self.b, self.norm = nn.Linear(D, D), nn.Linear(D, 3), norm

    def forward(self, x, detached=False):
        return self.b(self.norm(self.a(x), detached)).flatten(1)


def _rms_through_dropout(h, detached):
    scale = F.dropout(torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS), 0.1, training=False)
    return h * (scale.detach() if detached else scale)


class Shifted(nn.Module):
    """A learned shift broadcast with ``expand_as`` (a constant whatever the input), and a
    random op whose result nothing uses."""

    def __init__(self) -> None:
        super().__init__()
        self.shift, self.l = nn.Parameter(torch.randn(1, 1, D)), nn.Linear(D, 3)

    def forward(self, x, detached=False):
        unused = torch.rand_like(x) * 2  # noqa: F841 (dead code the export still records)
        return self.l(x + self.shift.expand_as(x)).flatten(1)


class Lifted(nn.Module):
    """A tensor literal (``lift_fresh_copy``) detached in place, as a decoder's empty
    key/value cache is, joined to the input's flow; then a crop whose length is size
    arithmetic (``math.ceil``, ``max``) on the symbolic length, as EfficientNet's "same"
    subsampling computes it."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(D, 3)

    def forward(self, x, detached=False):
        row = torch.tensor([[0.5, -1.0, 0.25, 2.0, -0.5, 1.5]], dtype=x.dtype).detach_()
        h = torch.cat([row.expand(x.shape[0], 1, D), x], 1)
        keep = max(math.ceil(h.shape[1] / 2), 1)
        return self.l(h[:, :keep]).flatten(1)


class Residual(nn.Module):
    """A residual block as torchvision writes it: ``ReLU(inplace=True)`` after a
    BatchNorm and after a convolution, and ``out += identity``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.conv1, self.conv2 = (nn.Conv2d(2, C, 3, padding=1), nn.Conv2d(C, C, 3, padding=1),
                                             nn.Conv2d(C, C, 3, padding=1))
        self.bn, self.relu = nn.BatchNorm2d(C), nn.ReLU(inplace=True)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5), self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x, detached=False):
        identity = self.relu(self.stem(x))
        out = self.conv2(self.relu(self.bn(self.conv1(identity))))
        out += identity
        return self.relu(out).mean((2, 3))


class DroppedInPlace(nn.Module):
    """``nn.Dropout(inplace=True)`` in eval mode, then ``relu_``: ``dropout_`` written as
    ``dropout`` (whose argument has another name)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.drop = nn.Linear(D, D), nn.Linear(D, 3), nn.Dropout(0.2, inplace=True)

    def forward(self, x, detached=False):
        h = self.a(x)
        self.drop(h)
        return self.b(h.relu_()).flatten(1)


class ReadThenAdded(nn.Module):
    """An in-place add whose operand read the tensor before: the rewritten graph must
    give that read the old value and every later one the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(D, D), nn.Linear(D, 3)

    def forward(self, x, detached=False):
        h = self.a(x)
        half = h * 0.5
        h.add_(half).relu_()
        return self.b(h + half).flatten(1)


class Attention(nn.Module):
    """Eager attention as Hugging Face writes it: softmax, dropout (eval), product with v."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = nn.Linear(D, 4), nn.Linear(D, 4), nn.Linear(D, 4), nn.Linear(4, 3)
        self.drop = nn.Dropout(0.1)

    def forward(self, x, detached=False):
        p = torch.softmax(self.q(x) @ self.k(x).transpose(-2, -1) / 2.0, -1)
        return self.o(self.drop(p.detach() if detached else p) @ self.v(x)).flatten(1)


CASES = {
    "attention_eval_dropout": (lambda: Attention(), (N, 3, D)),
    "gate_expand_as": (lambda: Gated(lambda h, g: h * g[:, :, None, None].expand_as(h)), (N, 2, 5, 5)),
    "gate_eval_dropout": (lambda: Gated(lambda h, g: h * F.dropout(g[:, :, None, None], 0.2, training=False)),
                          (N, 2, 5, 5)),
    "gate_flatten": (lambda: Gated(lambda h, g: (h.flatten(2) * g[:, :, None].flatten(1)[..., None])
                                   .reshape(h.shape)), (N, 2, 5, 5)),
    # narrow is a slice once decomposed; transpose / select / repeat are layouts of the gate
    "gate_narrow": (lambda: Gated(lambda h, g: h * g.narrow(1, 0, C)[:, :, None, None]), (N, 2, 5, 5)),
    "gate_transpose_select_repeat": (lambda: Gated(
        lambda h, g: h * g[:, None, :].transpose(1, 2).repeat(1, 1, 2).select(-1, 1)[:, :, None, None]),
        (N, 2, 5, 5)),
    "norm_through_eval_dropout": (lambda: Normed(_rms_through_dropout), (N, 3, D)),
    "shift_expand_as_and_dead_random_op": (lambda: Shifted(), (N, 3, D)),
    "literal_detached_in_place_and_size_arithmetic": (lambda: Lifted(), (N, 5, D)),
    "in_place_relu_and_residual_add": (lambda: Residual(), (N, 2, 5, 5)),
    "in_place_add_after_a_read": (lambda: ReadThenAdded(), (N, 3, D)),
    "in_place_eval_dropout_then_relu": (lambda: DroppedInPlace(), (N, 3, D)),
}


def _explain(model, x, rules, decompose: bool, attention: str = "cp"):
    """Features and flows of three probes, and whether the export kept its own graph."""
    kept = []
    real = trace._functional

    def watched(ep):
        out = ep.run_decompositions({}) if decompose else real(ep)
        kept.append(out is ep)
        return out

    clear_cache()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trace, "_functional", watched)
        rec = ExportedNetwork(copy.deepcopy(model), rules, torch.float64, attention=attention).record(x)
    return rec.features, rec.push(probes(x, 3)).reshape(3, x.shape[0], -1), kept == [True]


@pytest.fixture(params=sorted(CASES))
def case(request):
    build, shape = CASES[request.param]
    torch.manual_seed(0)
    return build().double().eval(), torch.randn(shape, dtype=torch.float64)


def test_lrp0_equals_the_detach_trick_twin(case):
    model, x = case
    features, flows, kept = _explain(model, x, "zero", decompose=False)
    assert kept, "the export's own graph was decomposed: the case tests nothing new"
    with torch.no_grad():
        close(features, model(x).flatten(1))
    twin = lambda inp: model(inp, detached=True).flatten(1)  # noqa: E731
    refs = torch.stack([torch.func.jvp(twin, (x,), (p * x,))[1] for p in probes(x, 3).reshape(3, *x.shape)])
    close(flows, refs.detach())


@pytest.mark.parametrize("rules", ["zero", "zero-share", "zero-flat"])
def test_kept_graph_explains_as_the_decomposed_one(case, rules):
    model, x = case
    features, flows, kept = _explain(model, x, rules, decompose=False)
    want_features, want, _ = _explain(model, x, rules, decompose=True)
    assert kept
    close(features, want_features)
    close(flows, want)


def test_attnlrp_reads_probabilities_through_eval_dropout():
    """AttnLRP's rule for ``p @ v`` needs to know ``p`` is a softmax output."""
    torch.manual_seed(0)
    model, x = Attention().double().eval(), torch.randn(N, 3, D, dtype=torch.float64)
    _, flows, kept = _explain(model, x, "zero", decompose=False, attention="attnlrp")
    _, want, _ = _explain(model, x, "zero", decompose=True, attention="attnlrp")
    assert kept
    close(flows, want)


class ViewThenMultiplied(nn.Module):
    """An in-place product on a tensor a transposed view shares: the view reads the
    product, which an out-of-place rewrite would not give it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(D, D), nn.Linear(D, 3)

    def forward(self, x):
        h = self.a(x)
        view = h.transpose(1, 2)
        h.mul_(2.0)
        return self.b(view.transpose(1, 2)).flatten(1)


class Narrowed(nn.Module):
    """An in-place add whose result keeps the tensor's float32 where ``a + b`` would
    promote to float64."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(D, D), nn.Linear(D, 3)
        self.register_buffer("shift", torch.full((D,), 1 / 3, dtype=torch.float64))

    def forward(self, x):
        h = torch.relu(self.a(x).float())
        h.add_(self.shift)
        return self.b(h.double()).flatten(1)


@pytest.mark.parametrize("build", [ViewThenMultiplied, Narrowed])
def test_in_place_ops_a_rewrite_would_change_are_decomposed(build):
    """In-place ops that writing out of place would change (a view shares the tensor;
    the tensor keeps its narrower dtype) leave the graph to the decomposition."""
    torch.manual_seed(0)
    model, x = build().double().eval(), torch.randn(N, 3, D, dtype=torch.float64)
    features, flows, kept = _explain(model, x, "zero", decompose=False)
    assert not kept
    with torch.no_grad():
        close(features, model(x))
    twin = lambda inp: model(inp)  # noqa: E731 (no gate, no statistic: LRP-0 is the Jacobian)
    refs = torch.stack([torch.func.jvp(twin, (x,), (p * x,))[1] for p in probes(x, 3).reshape(3, *x.shape)])
    close(flows, refs.detach())


class Pooled(nn.Module):
    """An embedder as a user writes it: the hidden state of the last token (decoders) or
    of the first ([CLS])."""

    def __init__(self, model, last: bool) -> None:
        super().__init__()
        self.model, self.last = model, last

    def forward(self, x):
        return self.model(inputs_embeds=x).last_hidden_state[:, -1 if self.last else 0]


def _transformer(family: str) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    name, _, attention = family.partition("-")
    small = dict(vocab_size=16, hidden_size=D * 2, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=16, max_position_embeddings=32, attn_implementation=attention or "sdpa")
    encoders = ("bert", "mpnet", "t5")
    if name not in encoders:
        small.update(num_key_value_heads=1, head_dim=D)
    if name == "t5":
        small = dict(vocab_size=16, d_model=D * 2, d_kv=D, d_ff=16, num_layers=2, num_heads=2)
    config, model = {"llama": ("LlamaConfig", "LlamaModel"), "qwen3": ("Qwen3Config", "Qwen3Model"),
                     "gemma": ("GemmaConfig", "GemmaModel"), "bert": ("BertConfig", "BertModel"),
                     "mpnet": ("MPNetConfig", "MPNetModel"), "t5": ("T5Config", "T5EncoderModel")}[name]
    torch.manual_seed(0)
    module = getattr(transformers, model)(getattr(transformers, config)(**small))
    return Pooled(module, last=name not in encoders).double().eval()


@pytest.mark.parametrize("attention", ["cp", "attnlrp"])
@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma", "llama-eager", "bert-eager", "mpnet-eager", "t5"])
def test_transformers_keep_their_graph_and_explain_as_decomposed(family, attention):
    """Decoders as transformers ships them concatenate their keys to an empty cache
    tensor detached in place, eager attention makes its output ``contiguous`` and its
    mask with ops the operator table lacks (on no relevance path), MPNet adds its
    relative-position bias to the attention scores in place and T5 builds its position
    buckets in place: those graphs are kept (no run_decompositions) and explain as the
    decomposed ones."""
    model = _transformer(family)
    x = torch.randn(N, 5, D * 2, dtype=torch.float64)
    features, flows, kept = _explain(model, x, "zero-share", decompose=False, attention=attention)
    want_features, want, _ = _explain(model, x, "zero-share", decompose=True, attention=attention)
    assert kept
    with torch.no_grad():
        close(features, model(x))
    close(features, want_features)
    close(flows, want)


def test_efficientnet_keeps_its_graph_and_explains_as_decomposed():
    """EfficientNet-Lite0's "same" subsampling sizes its crops with ``math.ceil`` and
    ``max`` on the symbolic image size: arithmetic on sizes, kept as the decomposition
    keeps it. Shipped weights, the preset's rules (z^B, gamma, epsilon, flat biases)."""
    from skbilrp.models import efficientnet_lite0, efficientnet_lite0_rules

    model = efficientnet_lite0().double().eval()
    x = torch.rand(1, 3, 48, 48, dtype=torch.float64)
    rules = efficientnet_lite0_rules(model)
    features, flows, kept = _explain(model, x, rules, decompose=False)
    want_features, want, _ = _explain(model, x, rules, decompose=True)
    assert kept
    close(features, want_features)
    close(flows, want)
