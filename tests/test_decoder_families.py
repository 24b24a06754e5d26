"""Decoder embedders and T5 encoders, with their norms exactly as transformers ships them.

Llama, Qwen2, Qwen3 (q/k norms), Mistral (sliding window), Gemma (``(1 + w)`` RMSNorm,
embedding scale), Gemma 2 (soft-capping, eager attention), Gemma 3 (local/global rotary
bases) and T5 encoders (relu and gated-gelu, relative position bias) from small random
configs (2 layers, hidden 32, 4 query / 2 key-value heads), float64, weights of order one.
Each is wrapped as a SentenceTransformer (decoders: last-token pooling over an
instruction prompt that stays in the pooling, ``include_prompt=True``; T5: mean pooling)
and, for DeepKernel, as a user would write it, ``m(inputs_embeds=x).last_hidden_state``
pooled. Oracles, none using skbilrp's relevance code:

* sentence-transformers' ``encode`` and the model's own forward for the features;
* the detach-trick model of tests/test_text_families.py (hooks on the model's own
  modules: probabilities from detached q and k, RMS norms and activations as
  ``x * (y / x).detach()``, gated MLPs split uniformly): its gradient × input is CP-LRP
  with ``rules="zero"``;
* conservation under ``"zero-share"``, ``"zero-mass"`` and ``"zero-flat"``, both attention rules; forward
  mode against reverse mode; the user's model byte for byte.

Precision: ``LlamaRMSNorm`` and its copies (Qwen2/3, Mistral, Gemma 1-3) compute in
float32 whatever the model's dtype, and the engine's flows are cast as the values are,
so those families are checked to float32 round-off (``PRECISION``): that error is the
model's own float32 arithmetic, and with the norm spelled in float64 the engine conserves
to float64 round-off (the last test). T5 computes only its statistic in float32 and is
checked to float64 round-off.

The gated MLP ``act(gate(x)) * up(x)`` is a product of two carrying tensors: the engine
splits it uniformly under both attention rules, as LXT's AttnLRP map does; LXT's CP-LRP
map detaches the gate branch instead (tests/engine/test_lxt_oracle.py keeps that
difference as a strict xfail).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_round_off_equal
from test_text_families import (COLS, ROWS, _assert_unchanged, _sentence_transformer, _snapshot,  # noqa: F401
                                gradient_times_input, tokenizer)
from torch import nn

transformers = pytest.importorskip("transformers")
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling  # noqa: E402

from skbilrp import DeepKernel, Explainer  # noqa: E402
from skbilrp.models.sentence import sentence_encoder  # noqa: E402
from skbilrp.relevance import RelevanceComputer  # noqa: E402
from skbilrp.rules import Zero  # noqa: E402
from skbilrp.text import TextKernel  # noqa: E402

PROMPT = "Instruct: find the same topic\nQuery: "


def _config(family: str, vocab: int):
    small = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64, head_dim=8)
    if family == "llama":
        return transformers.LlamaConfig(**small)
    if family == "qwen2":  # biases on q, k, v
        return transformers.Qwen2Config(**small)
    if family == "qwen3":
        return transformers.Qwen3Config(**small)
    if family == "mistral":
        return transformers.MistralConfig(**small, sliding_window=4)
    if family == "gemma":
        return transformers.GemmaConfig(**small)
    if family.startswith("gemma2"):  # a window longer than the texts
        return transformers.Gemma2Config(**small, sliding_window=16)
    if family == "gemma3":
        return transformers.Gemma3TextConfig(**small, sliding_window=4)
    gated = family == "t5-gated"
    return transformers.T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                 feed_forward_proj="gated-gelu" if gated else "relu", relative_attention_num_buckets=8)


MODELS = {"llama": "LlamaModel", "qwen2": "Qwen2Model", "qwen3": "Qwen3Model", "mistral": "MistralModel",
          "gemma": "GemmaModel", "gemma2": "Gemma2Model", "gemma2-left": "Gemma2Model", "gemma3": "Gemma3TextModel",
          "t5": "T5EncoderModel", "t5-gated": "T5EncoderModel"}
#: padding side of each family's tokenizer (decoder embedders pad on the left)
LEFT = {"llama", "qwen2", "qwen3", "gemma2-left", "gemma3"}
#: the model's dtype: float64, but Gemma 2 with left padding in float32, because its eager
#: attention casts the float64 mask (the dtype's lowest) to float32 for the softmax, where
#: it is -inf: the rows of left padding, masked whole, are NaN and reach every row through
#: ``P @ v`` (0 * NaN) in the model itself, with no explainer involved
DTYPE = {"gemma2-left": torch.float32}
#: families whose norms compute in float32: the tolerance of their relevance
PRECISION = {f: torch.float32 for f in MODELS if not f.startswith("t5")}


def _tol(family: str) -> float:
    return 1e-10 if PRECISION.get(family, torch.float64) == torch.float64 else 1e-5


def _feature_tol(family: str) -> float:
    return 1e-10 if DTYPE.get(family, torch.float64) == torch.float64 else 1e-5


def _order_one(model: nn.Module, seed: int) -> None:
    """Weights of order one (HF's std-0.02 init and unit norms would hide what rules do)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            for name, p in m.named_parameters(recurse=False):
                if "Norm" in type(m).__name__:
                    offset = 0.0 if "Gemma" in type(m).__name__ else 1.0  # Gemma scales by 1 + w
                    p.copy_(offset + torch.rand(p.shape, generator=g, dtype=p.dtype) - 0.5)
                elif isinstance(m, nn.Linear) and name == "weight":
                    p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * p.shape[1] ** -0.5)
                elif name == "bias":
                    p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
                else:
                    p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


def _hf_model(family: str, vocab: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = getattr(transformers, MODELS[family])(_config(family, vocab))
    _order_one(model, seed)
    return model.to(DTYPE.get(family, torch.float64)).eval()


@pytest.fixture(scope="module")
def family_model(request, tokenizer, tmp_path_factory):
    """(family, SentenceTransformer) built once per module."""
    family = request.param
    model = _hf_model(family, tokenizer.vocab_size)
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path, local_files_only=True,
                                              padding_side="left" if family in LEFT else "right")
    t5 = family.startswith("t5")

    def head(dim):
        return [Pooling(dim, "mean" if t5 else "lasttoken"), Normalize()]

    st = _sentence_transformer(model, tok, tmp_path_factory.mktemp(family), head=head,
                               prompts={"query": PROMPT}, default_prompt_name="query")
    assert st[0].tokenizer.padding_side == ("left" if family in LEFT else "right")
    return family, st


# --------------------------------------------------------------------------- features


@pytest.mark.parametrize("family_model", list(MODELS), indirect=True)
def test_features_equal_encode_and_prompt_tokens_are_explained(family_model):
    family, st = family_model
    kern = TextKernel(st).fit(COLS)
    ref = st.encode(COLS + ROWS, normalize_embeddings=True, convert_to_tensor=True).double().numpy()
    np.testing.assert_allclose(kern.features_fit_, ref[:2], rtol=0, atol=_feature_tol(family))
    np.testing.assert_allclose(kern.features(ROWS), ref[2:], rtol=0, atol=_feature_tol(family))
    prompted = kern.tokenizer_(PROMPT + "hi")["input_ids"]
    assert kern.tokens("hi") == kern.tokenizer_.convert_ids_to_tokens(prompted)  # the prompt is explained too
    assert kern.model_.prompt_length >= 6
    assert kern.model_.input_module is None  # no embedding norm: x is inputs_embeds


# -------------------------------------------------------------------------- relevance

#: (family, attention, bias): three families, each under one pair of rules, by default (the
#: suite's time budget: an export per case); every family under every pair when slow
_COMBOS = [("cp", "share"), ("attnlrp", "flat"), ("attnlrp", "share"), ("cp", "flat")]
_DEFAULT = {("llama", "cp", "share"), ("gemma3", "attnlrp", "flat"), ("t5-gated", "cp", "flat"),
            ("qwen2", "attnlrp", "mass")}
#: TextKernel's default "mass" where it has biases to pass on (Qwen2: on q, k and v)
_MASS = [("qwen2", "cp", "mass"), ("qwen2", "attnlrp", "mass")]
#: Gemma 2 with left padding: the rule pair that spreads over padding, the rest is Gemma 2's
_CASES = [pytest.param(f, a, b, id=f"{f}-{a}-{b}", marks=[] if (f, a, b) in _DEFAULT else [pytest.mark.slow])
          for f, a, b in [(f, a, b) for f in MODELS for a, b in _COMBOS
                          if f != "gemma2-left" or (a, b) == ("attnlrp", "flat")] + _MASS]
#: the detach-trick oracle by default on a base decoder, Gemma 2 ((1 + w) norms, eager
#: soft-capped attention) and gated T5; the others (q/k norms, ...) when slow
_ORACLE = [f if f in ("llama", "gemma2", "t5-gated") else pytest.param(f, marks=pytest.mark.slow) for f in MODELS
           if f != "gemma2-left"]


@pytest.mark.parametrize("family_model, attention, bias", _CASES, indirect=["family_model"])
def test_relevance_conserves_modes_agree_model_unchanged(family_model, attention, bias):
    family, st = family_model
    before = _snapshot(st)
    kern = TextKernel(st, attention=attention, rules=Zero(bias=bias)).fit(COLS)
    expl = kern.explain_pairs(ROWS)
    tol = _tol(family)
    assert np.isfinite(expl.relevance).all()
    # conserved up to the round-off of what the model computes in (float32 in its norms),
    # measured on what cancels: the similarity and every relevance term
    terms = np.abs(expl.similarity) + np.abs(expl.relevance).sum(axis=(2, 3))
    assert_round_off_equal(expl.conservation_error, np.zeros_like(terms), PRECISION.get(family, torch.float64),
                           k=64, terms=terms)
    # the prompt's tokens are part of the explanation, relevance on them reported
    assert expl.relevance.shape[2] == len(kern.tokens(ROWS[0]))
    x, mask = kern.model_.embed(*kern.model_.pad(kern.model_.tokenize(ROWS)))
    runs = {mode: RelevanceComputer(kern.explainer_.network, None, -1, mode)(x, {"attention_mask": mask})
            for mode in ("forward", "reverse")}
    scale = runs["forward"].relevance.abs().max()
    torch.testing.assert_close(runs["reverse"].relevance, runs["forward"].relevance, rtol=0, atol=tol * scale)
    _assert_unchanged(before, st)


@pytest.mark.parametrize("family_model", _ORACLE, indirect=True)
def test_cp_lrp_is_gradient_times_input_of_the_detach_trick_model(family_model):
    family, st = family_model
    encoder = sentence_encoder(st)
    x, mask = encoder.embed(*encoder.pad(encoder.tokenize(ROWS)))
    lrp0 = Explainer(encoder, rules="zero", channel_axis=-1, mode="forward").relevance(x, {"attention_mask": mask})
    # three random directions of feature space: three backward passes instead of h
    directions = torch.randn(lrp0.features.shape[1], 3, dtype=x.dtype, generator=torch.Generator().manual_seed(0))
    oracle = gradient_times_input(encoder, x, mask, directions)
    ours = torch.einsum("nhp,hk->nkp", lrp0.relevance, directions)
    torch.testing.assert_close(ours, oracle, rtol=0, atol=_tol(family) * oracle.abs().max())
    with torch.no_grad():
        torch.testing.assert_close(lrp0.features, encoder(x, mask), rtol=0, atol=1e-12)


# ------------------------------------------------------------- the user's own wrapper


class LastToken(nn.Module):
    """What a user writes: token embeddings in, the last token's hidden state out."""

    def __init__(self, model: nn.Module, pool: str) -> None:
        super().__init__()
        self.model, self.pool = model, pool

    def forward(self, x):
        h = self.model(inputs_embeds=x).last_hidden_state
        return h.mean(1) if self.pool == "mean" else h[:, -1]


@pytest.mark.parametrize("family", ["qwen3"] + [pytest.param(f, marks=pytest.mark.slow) for f in ("gemma", "t5")])
def test_deep_kernel_on_a_user_wrapper(family):
    model = LastToken(_hf_model(family, 50, seed=1), "mean" if family.startswith("t5") else "last")
    before = _snapshot(model)
    x = torch.randn(3, 4, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).numpy()
    kern = DeepKernel(model, kernel="linear", rules="zero-share").fit(x[:2])  # groups: channels (axis 0 summed)
    with torch.no_grad():
        feats = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(kern.transform(x[2:]), feats[2:] @ feats[:2].T, rtol=1e-10)
    expl = kern.explain_pairs(x[2:])
    relative = np.abs(expl.conservation_error).max() / np.abs(expl.similarity).max()
    assert relative < _tol(family), relative
    _assert_unchanged(before, model)


class _IdsOnly(nn.Module):
    """A Hugging Face-style model (it has a config) whose forward takes token ids only."""

    def __init__(self) -> None:
        super().__init__()
        self.config = transformers.BertConfig(vocab_size=50, hidden_size=8)
        self.embed = nn.Embedding(50, 8)

    def forward(self, input_ids, attention_mask=None):
        return self.embed(input_ids)


def test_a_model_without_inputs_embeds_is_refused_with_what_to_do(tokenizer):
    """A model that takes ids only (and is no CLIP or SigLIP tower, which are fed through
    their embeddings): TextKernel says so and names the way out (no parameter TextKernel
    lacks, such as input_module)."""
    with pytest.raises(TypeError, match=r"_IdsOnly\.forward takes no inputs_embeds.*Explainer\(wrapper") as err:
        TextKernel(_IdsOnly(), tokenizer=tokenizer).fit(COLS)
    assert "input_module" not in str(err.value)


def _float64_rms_norm(self, hidden_states):
    """LlamaRMSNorm's forward without its float32 round trip (the same formula in float64)."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


@pytest.mark.slow
def test_the_engine_conserves_to_float64_round_off_when_the_norm_computes_in_float64():
    """The float32-level conservation error of the decoder families (``PRECISION``) is the
    model's own: LlamaRMSNorm casts to float32 and back, so features and relevance are
    float32 computations. With the same norm spelled in float64, every rule conserves to
    float64 round-off."""
    model = _hf_model("llama", 50, seed=1)
    for m in model.modules():
        if type(m).__name__ == "LlamaRMSNorm":
            m.forward = _float64_rms_norm.__get__(m)
    wrapper = LastToken(model, "last")  # one object: the explainers share its export
    x = torch.randn(3, 4, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for attention in ("cp", "attnlrp"):
        for rules in ("zero-share", "zero-mass", "zero-flat"):
            expl = Explainer(wrapper, rules=rules, attention=attention, channel_axis=-1).explain(x[2:], x[:2])
            terms = np.abs(expl.similarity) + np.abs(expl.relevance).sum(axis=(2, 3))
            assert_round_off_equal(expl.conservation_error, np.zeros_like(terms), torch.float64, k=64, terms=terms)
