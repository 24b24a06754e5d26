"""Constants mixed into a relevance-carrying tensor follow the bias mode, as biases do.

The rule (docs/operators.rst, "Constants"): a constant term is absorbed under
``bias="absorb"`` (LRP-0 is then gradient × input, the model input included: position
embeddings added to explained token embeddings, preprocessing inside the model), and
passed on under ``"share"`` / ``"flat"``, so that relevance conserves. Oracles: the
features (conservation: indicator probes that partition the input sum to them), and
plain autograd gradient × input of the detach-trick twin for a BERT explained at
``inputs_embeds`` (tests/test_text_families.py's hooks; no engine code).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers import indicator_probes
from torch import nn

from skbilrp import Explainer
from skbilrp.engine import ExportedNetwork, UnsupportedModelError
from skbilrp.rules import Zero

warnings.filterwarnings("ignore", category=FutureWarning)

D = 6


class Mixed(nn.Module):
    """Per mix ``f``, ``Linear -> f(h) -> Linear`` (bias-free; ``f`` on the model input
    itself when ``at_input``), the branches side by side: one export checks them all,
    each on its own three output columns."""

    def __init__(self, at_input=False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.at_input = nn.Linear(D, D, bias=False), nn.Linear(D, 3, bias=False), at_input
        self.register_buffer("c", torch.randn(D))
        self.register_buffer("keep", torch.rand(D) > 0.4)

    def forward(self, x):
        f = [MIXES[k] for k in sorted(MIXES)]
        return torch.cat([self.b(self.a(g(self, x))) if self.at_input else self.b(g(self, self.a(x))) for g in f], 1)


MIXES = {
    "rsub": lambda m, h: 1 - h,
    "rsub_alpha": lambda m, h: torch.rsub(h, 1.5, alpha=2.0),
    "add_number": lambda m, h: h + 1.5,
    "add_tensor": lambda m, h: h + m.c,
    "sub_from_tensor": lambda m, h: m.c - h,
    "where": lambda m, h: torch.where(m.keep, h, m.c),
    "masked_fill": lambda m, h: h.masked_fill(~m.keep, 0.7),
    "one_plus_w_scale": lambda m, h: h * (1 + m.c),
    "standardise": lambda m, h: (h - m.c) / 2.0,
}


def _missing(model, bias):
    """Per mix, the relative part of its features that the relevance misses."""
    x = torch.randn(2, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rec = ExportedNetwork(model, Zero(bias=bias), torch.float64).record(x)
    flows = rec.push(indicator_probes(x, None), None).reshape(-1, 2, len(MIXES), 3)
    feats = rec.features.reshape(2, len(MIXES), 3)
    err = (flows.sum(0) - feats).abs().amax((0, 2)) / feats.abs().amax((0, 2))
    return dict(zip(sorted(MIXES), err.tolist()))


@pytest.mark.parametrize("at_input", [False, True], ids=["inside", "at_input"])
def test_a_constant_conserves_under_share_and_flat_and_is_absorbed_otherwise(at_input):
    model = Mixed(at_input).double().eval()
    for bias in ("share", "flat"):
        missing = _missing(model, bias)
        assert all(v < 1e-13 for v in missing.values()), (bias, missing)
    absorbed = _missing(model, "absorb")
    assert all(v > 1e-3 for k, v in absorbed.items() if k != "one_plus_w_scale"), absorbed  # a scale adds nothing


class EmbedsBert(nn.Module):
    """A user's BERT explained at its ``inputs_embeds``: position and token-type
    embeddings are constants added to the explained input."""

    def __init__(self, bert) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, x, attention_mask):
        return self.bert(inputs_embeds=x, attention_mask=attention_mask).last_hidden_state.mean(1)


def test_position_embeddings_at_the_explained_input_are_absorbed_under_zero():
    """LRP-0 with the constants absorbed is gradient × input at ``inputs_embeds`` (it was
    3-8 times off when constants at the input were folded into it)."""
    transformers = pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from test_text_families import gradient_times_input

    config = transformers.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=16)
    torch.manual_seed(0)
    model = EmbedsBert(transformers.BertModel(config, add_pooling_layer=False)).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.5) if "embeddings" in name else None
    x = torch.randn(2, 5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 3:] = 0
    ours = Explainer(model, rules="zero", channel_axis=-1, mode="forward").relevance(x, {"attention_mask": mask})
    oracle = gradient_times_input(model, x, mask)
    torch.testing.assert_close(ours.relevance, oracle, rtol=0, atol=1e-10 * oracle.abs().max())
    share = Explainer(model, rules="zero-share", channel_axis=-1).relevance(x, {"attention_mask": mask})
    missing = (share.relevance.sum(-1) - share.features).abs().max() / share.features.abs().max()
    assert missing < 1e-10  # the constants' shares passed on instead


@pytest.mark.parametrize("name, attention", [("deit", "attnlrp"), ("beit", "attnlrp"), ("vit_zero_class_token", "cp"),
                                             ("vit_zero_class_token", "attnlrp")])
def test_vision_transformers_conserve_under_share(name, attention):
    """DeiT's pooler (dense + tanh), BEiT (layer scale, relative position bias) and a ViT
    whose class token and position embeddings are zero (its row has no input
    contribution: its biases have nothing to share with and are spread as under "flat")
    conserve under ``zero-share``, the AttnLRP softmax bias included."""
    from test_hf_vision import SPECS, _VIT, ClassToken, Pooled, batch, build

    specs = {"deit": ("DeiTConfig", _VIT, "DeiTModel", Pooled, (3, 16, 16)),
             "beit": ("BeitConfig", dict(_VIT, use_relative_position_bias=True, layer_scale_init_value=0.1,
                                         use_mean_pooling=True), "BeitModel", Pooled, (3, 16, 16)),
             "vit_zero_class_token": ("ViTConfig", _VIT, "ViTModel", ClassToken, (3, 16, 16))}
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(SPECS, name, specs[name])
        model, shape = build(name)
    if name == "vit_zero_class_token":
        with torch.no_grad():
            model.backbone.embeddings.cls_token.zero_()
            model.backbone.embeddings.position_embeddings.zero_()
    x = batch(shape)
    rec = ExportedNetwork(model, Zero(bias="share"), torch.float64, attention=attention).record(x)
    flows = rec.push(indicator_probes(x, 0), 0).reshape(-1, 2, rec.features.shape[1]).sum(0)
    sim = (rec.features * rec.features.flip(0)).sum(1)  # k(x_0, x_1), both ways
    missing = ((flows * rec.features.flip(0)).sum(1) - sim).abs() / sim.abs()
    assert float(missing.max()) < 1e-12, missing


class PerHeadBias(nn.Module):
    """Tokens ``(N, T, D)`` through a bias-free Linear, a constant added in another layout
    (per head ``(N, H, T, d)`` as DeBERTa adds its value bias, the bias of a Linear applied
    per head, or channels first ``(N, D, T)``), then the first token's state: only the
    first token's constant reaches the output. ``fixed``: a ``(T, D)`` table of zeros added
    to the input fixes the token count in the exported graph."""

    def __init__(self, layout: str, fixed: int = 0, heads: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.layout, self.heads = nn.Linear(D, D, bias=False), layout, heads
        self.head = nn.Linear(D // heads, D // heads)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(D // heads))
        self.register_buffer("c", self.head.bias.detach().repeat(heads))
        self.register_buffer("table", torch.zeros(fixed, D) if fixed else None)

    def forward(self, x):
        h = self.lin(x if self.table is None else x + self.table)
        n, t, _ = h.shape
        if self.layout == "channels-first":
            return (h.transpose(1, 2) + self.c[:, None]).transpose(1, 2)[:, 0]
        split = h.view(n, t, self.heads, D // self.heads).transpose(1, 2)
        split = self.head(split) if self.layout == "heads-linear" else split + self.c.view(self.heads, 1, -1)
        return split.transpose(1, 2).reshape(n, t, D)[:, 0]


@pytest.mark.parametrize("fixed", [False, True], ids=["symbolic", "fixed"])
@pytest.mark.parametrize("tokens", [5, D // 2])  # D // 2: the token count equals the head size
@pytest.mark.parametrize("layout", ["heads", "heads-linear", "channels-first"])
def test_a_constant_in_another_layout_stays_on_its_token(layout, tokens, fixed):
    """Hand-computed: under bias="flat" the output's relevance is the first token's
    contribution plus the whole constant, all on the first token; nothing on the others.
    (Before the token axis was read from the graph, the constant was spread over every
    token, or, where the token count equals the head size, put on the token of its
    head-dimension index.) Where the graph fixes the token count and it equals the head
    size, the axis cannot be told: the test then only checks conservation."""
    model = PerHeadBias(layout, tokens if fixed else 0).double()
    x = torch.randn(2, tokens, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rel = Explainer(model, rules="zero-flat", channel_axis=-1, mode="forward").relevance(x)
    torch.testing.assert_close(rel.relevance.sum(-1), rel.features, rtol=0, atol=1e-12)
    if fixed and layout != "channels-first" and tokens == D // 2:
        return
    expected = torch.zeros(2, D, tokens, dtype=torch.float64)
    expected[:, :, 0] = model.lin(x[:, 0]).detach() + model.c
    torch.testing.assert_close(rel.relevance, expected, rtol=0, atol=1e-12)


def test_a_constant_on_a_sequence_first_tensor_is_refused():
    """``(T, N, D)``: its first axis is the tokens; a batch of 3 and 3 tokens made it look
    batch-first by size, and the constant was spread evenly instead of refused."""

    class SequenceFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(D, D, bias=False)
            self.register_buffer("c", torch.randn(D))

        def forward(self, x):
            return (self.lin(x).transpose(0, 1) + self.c).transpose(0, 1)[:, 0]

    x = torch.randn(3, 3, D, dtype=torch.float64)
    with pytest.raises(UnsupportedModelError, match="first axis is the tokens.*bias='absorb'"):
        Explainer(SequenceFirst().double(), rules="zero-flat", channel_axis=-1).relevance(x)


class MaskedWhole(nn.Module):
    """Attention whose padded queries are masked whole by an additive mask of the lowest
    float (their softmax is uniform: a constant), read at a padded query."""

    def __init__(self, sdpa: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v = (nn.Linear(D, D, bias=False) for _ in range(3))
        self.sdpa = sdpa

    def forward(self, x, attention_mask):
        m = attention_mask.to(x.dtype)
        add = (1 - m[:, None, :, None] * m[:, None, None, :]) * torch.finfo(x.dtype).min
        q, k, v = self.q(x)[:, None], self.k(x)[:, None], self.v(x)[:, None]
        if self.sdpa:
            out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=add)
        else:
            out = (q @ k.transpose(-1, -2) / D ** 0.5 + add).softmax(-1) @ v
        return out[:, 0, -1]


class EmptyMaskPooled(nn.Module):
    """Masked mean pooling (clamped, as sentence-transformers pools) then a Dense bias."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(D, D, bias=False), nn.Linear(D, 3)

    def forward(self, x, attention_mask):
        m = attention_mask[..., None].to(x.dtype)
        return self.b((self.a(x) * m).sum(1) / m.sum(1).clamp(min=1e-9))


@pytest.mark.parametrize("rules", ["zero-flat", "zero-share", "zero-mass"])
@pytest.mark.parametrize("model", [MaskedWhole(False), MaskedWhole(True), EmptyMaskPooled()],
                         ids=["eager-masked-row", "sdpa-masked-row", "empty-mask-row"])
def test_conserves_where_the_mask_leaves_a_row_or_a_sample_empty(model, rules):
    """Conservation (relevance over tokens sums to the features) and forward = reverse:
    a query row masked whole under AttnLRP (its flow used to pass through the uniform
    softmax), and a sample whose attention_mask is all zeros (its Dense bias had no real
    token to go to and was lost)."""
    x = torch.randn(2, 5, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]] if isinstance(model, MaskedWhole)
                        else [[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    runs = {mode: Explainer(model.double(), rules=rules, channel_axis=-1, mode=mode, attention="attnlrp")
            .relevance(x, {"attention_mask": mask}) for mode in ("forward", "reverse")}
    rel = runs["forward"]
    tol = 1e-12 * float(rel.features.abs().max())
    torch.testing.assert_close(rel.relevance.sum(-1), rel.features, rtol=0, atol=tol)
    torch.testing.assert_close(runs["reverse"].relevance, rel.relevance, rtol=0, atol=tol)
