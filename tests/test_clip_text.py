"""The text side of CLIP and SigLIP (``get_text_features``) in SentenceEncoder and TextKernel.

Small random two-tower models (float64; the vision side is never run) with tokenizers of
the installed transformers built from a small local vocabulary: CLIP's byte-pair
``CLIPTokenizer``, and for SigLIP a Unigram ``T5Tokenizer`` (SigLIP's own tokenizer is the
same kind of SentencePiece Unigram model but needs the sentencepiece package). Oracles,
none using skbilrp's relevance code:

* the model's own ``get_text_features`` (and ``CLIPTextModel``'s ``pooler_output``,
  ``CLIPTextModelWithProjection``'s ``text_embeds``) on each text tokenized alone;
* the detach-trick model of tests/test_text_families.py: its gradient × input is CP-LRP
  with ``rules="zero"`` (the position embeddings, a constant added to the explained
  token embeddings, keep their share, as gradient × input does);
* conservation over the real tokens under ``"zero-share"``, ``"zero-mass"`` and ``"zero-flat"``, both
  attention rules (padding takes nothing, AttnLRP's softmax bias included); forward mode
  against reverse mode; the user's model byte for byte.

One export per model (rule sets switched with set_params share it); CLIP by default, SigLIP
with the slow tests.
"""

from __future__ import annotations

import string

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from test_text_families import _assert_unchanged, _snapshot, gradient_times_input  # noqa: E402

from skbilrp import Explainer  # noqa: E402
from skbilrp.models.sentence import sentence_encoder, text_tower  # noqa: E402
from skbilrp.relevance import RelevanceComputer  # noqa: E402
from skbilrp.rules import Zero  # noqa: E402
from skbilrp.text import TextKernel  # noqa: E402

# one batch of (2, 8) tokens under both tokenizers: "hi" is padded
ROWS = ["The cat sat on the mat", "hi"]
COLS = ["A cat sat on a rug", "Stocks fell on Monday"]
WORDS = sorted({w.lower() for t in ROWS + COLS for w in t.split()})
RULES = [("cp", "share"), ("cp", "mass"), ("cp", "flat"), ("attnlrp", "share"), ("attnlrp", "mass"),
         ("attnlrp", "flat")]
TOL = 1e-10  # float64 throughout: relative round-off a few hundred ops deep


def _clip_tokenizer(max_length: int = 16):
    """CLIP's BPE on letters, with merges that spell the test words whole."""
    vocab: dict = {}
    for c in string.ascii_lowercase:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list = []
    for w in WORDS:
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            parts = [pair[0] + pair[1]] + parts[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):  # the end of text is the largest id, as in CLIP
        vocab[special] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def _unigram_tokenizer(max_length: int = 16):
    """A SentencePiece-style Unigram tokenizer (SigLIP's kind): the test words, then letters."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    words = sorted({w for t in ROWS + COLS for w in t.split()})  # no lowercasing in a Unigram model
    pieces += [("▁" + w, -1.0) for w in words] + [(c, -5.0) for c in string.ascii_letters]
    return transformers.T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


_VISION = dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=8,
               patch_size=4)


def _model(family: str, tokenizer, seed: int = 0, **text):
    """CLIPModel / SiglipModel (or, with ``family`` a text class name, that class) with
    weights of order one (biases and norms included)."""
    torch.manual_seed(seed)
    small = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=16, pad_token_id=tokenizer.pad_token_id,
                 eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id or 0)
    small.update(text)
    if family.startswith("clip") or family.startswith("CLIP"):
        config = transformers.CLIPTextConfig(**small, projection_dim=16)
        model = (transformers.CLIPModel(transformers.CLIPConfig(text_config=config.to_dict(), vision_config=_VISION,
                                                                projection_dim=16))
                 if family == "clip" else getattr(transformers, family)(config))
    else:
        config = transformers.SiglipTextConfig(**small, projection_size=16)
        model = (transformers.SiglipModel(transformers.SiglipConfig(text_config=config.to_dict(),
                                                                    vision_config=_VISION))
                 if family == "siglip" else getattr(transformers, family)(config))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.double().eval()


def _reference(model, tokenizer, texts) -> torch.Tensor:
    """What the model computes for each text tokenized alone (SigLIP: padded to its length
    and attending to the padding, as it is trained)."""
    out = []
    siglip = "Siglip" in type(model).__name__
    with torch.no_grad():
        for t in texts:
            batch = tokenizer([t], return_tensors="pt", padding="max_length") if siglip else \
                tokenizer([t], return_tensors="pt")
            batch = {"input_ids": batch["input_ids"]} if siglip else batch
            if hasattr(model, "get_text_features"):
                out.append(model.get_text_features(**batch).pooler_output)
            else:
                result = model(**batch)
                out.append(result.text_embeds if hasattr(result, "text_embeds") else result.pooler_output)
    return torch.cat(out)


@pytest.fixture(scope="module")
def tokenizers():
    return {"clip": _clip_tokenizer(), "siglip": _unigram_tokenizer()}


# ------------------------------------------------------------------------- features

_CLASSES = ["clip", "CLIPTextModel", "CLIPTextModelWithProjection", "siglip", "SiglipTextModel"]


@pytest.mark.parametrize("family", _CLASSES)
def test_features_equal_get_text_features_and_model_unchanged(family, tokenizers):
    tokenizer = tokenizers["clip" if family.lower().startswith("clip") else "siglip"]
    model = _model(family, tokenizer)
    before = _snapshot(model)
    kern = TextKernel(model=model, tokenizer=tokenizer, kernel="linear").fit(COLS)
    ref = _reference(model, tokenizer, COLS + ROWS).numpy()
    scale = np.abs(ref).max()
    np.testing.assert_allclose(kern.features_fit_, ref[:2], rtol=0, atol=TOL * scale)
    np.testing.assert_allclose(kern.features(ROWS), ref[2:], rtol=0, atol=TOL * scale)
    ends = kern.tokens("hi")[-1], kern.tokens("hi")[-2]
    assert ends[0] == tokenizer.eos_token if family.lower().startswith("clip") else ends == (tokenizer.pad_token,) * 2
    _assert_unchanged(before, model)


def test_clip_pools_by_the_rule_of_the_installed_transformers(tokenizers):
    """The legacy rule (``eos_token_id == 2``: the largest id) and the current one (the first
    end-of-text id) on a batch with an end-of-text token inside a text: TextTower ends the
    mask there (causal attention hides the tokens after it from the pooled one) and equals
    the model; SentenceEncoder refuses such a text, whose tail would be shown but unread."""
    tokenizer = tokenizers["clip"]
    texts = ["the cat <|endoftext|> sat on", "hi"]
    for eos in (tokenizer.eos_token_id, 2):
        model = _model("CLIPTextModel", tokenizer, eos_token_id=eos)
        tower = text_tower(model)
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        x, mask = tower.embed(batch["input_ids"], batch["attention_mask"])
        assert mask.tolist() == [[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0]]
        with torch.no_grad():
            ref = model(**batch).pooler_output
            torch.testing.assert_close(tower(x, mask), ref, rtol=0, atol=TOL * ref.abs().max())
        with pytest.raises(ValueError, match="Text 0 has its end-of-text token .* pools token 3 of its 7"):
            sentence_encoder(model, tokenizer).tokenize(texts)


def test_refusals(tokenizers):
    model = _model("CLIPTextModel", tokenizers["clip"])
    with pytest.raises(ValueError, match="pools its text itself"):
        sentence_encoder(model, tokenizers["clip"], pooling="mean")
    with pytest.raises(TypeError, match="leave input_module=None"):
        sentence_encoder(model, tokenizers["clip"], input_module="embeddings")
    with pytest.raises(TypeError, match="text side of"):
        text_tower(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------- relevance


@pytest.fixture(scope="module")
def explained(request, tokenizers):
    """(model, snapshot before, TextKernel, {(attention, bias): explanation of ROWS x COLS}):
    the rule sets are switched with set_params, so one export of the kernel's encoder
    serves them all, the oracles' explainers included."""
    family = request.param
    tokenizer = tokenizers[family]
    model = _model(family, tokenizer)
    before = _snapshot(model)
    kern = TextKernel(model=model, tokenizer=tokenizer).fit(COLS)
    runs = {}
    for attention, bias in RULES:
        kern.set_params(attention=attention, rules=Zero(bias=bias))
        runs[(attention, bias)] = kern.explain_pairs(ROWS)
    return model, before, kern, runs


_FAMILIES = ["clip", pytest.param("siglip", marks=pytest.mark.slow)]


def _inputs(kern):
    return kern.model_.embed(*kern.model_.pad(kern.model_.tokenize(ROWS))[:2])


@pytest.mark.parametrize("explained", _FAMILIES, indirect=True)
def test_relevance_conserves_on_the_real_tokens_modes_agree_model_unchanged(explained):
    model, before, kern, runs = explained
    for (attention, bias), expl in runs.items():
        assert np.isfinite(expl.relevance).all()
        # TextKernel keeps the real tokens only: padding took nothing, AttnLRP's softmax bias included
        relative = np.abs(expl.conservation_error).max() / np.abs(expl.similarity).max()
        assert relative < 1e-8, (attention, bias, relative)
    pair = runs[("attnlrp", "flat")].pair(1, 0)
    assert pair.relevance.shape == (len(kern.tokens(ROWS[1])), len(kern.tokens(COLS[0])))
    np.testing.assert_allclose(pair.words().relevance.sum(), pair.relevance.sum(), rtol=1e-12)
    x, mask = _inputs(kern)
    modes = {mode: RelevanceComputer(kern.explainer_.network, None, -1, mode)(x, {"attention_mask": mask}).relevance
             for mode in ("forward", "reverse")}
    torch.testing.assert_close(modes["reverse"], modes["forward"], rtol=0, atol=TOL * modes["forward"].abs().max())
    _assert_unchanged(before, model)


@pytest.mark.parametrize("explained", _FAMILIES, indirect=True)
def test_cp_lrp_is_gradient_times_input_of_the_detach_trick_model(explained):
    _, _, kern, _ = explained
    encoder = kern.model_
    x, mask = _inputs(kern)
    lrp0 = Explainer(encoder, rules="zero", channel_axis=-1, mode="forward").relevance(x, {"attention_mask": mask})
    oracle = gradient_times_input(encoder, x, mask)
    torch.testing.assert_close(lrp0.relevance, oracle, rtol=0, atol=TOL * oracle.abs().max())
    with torch.no_grad():
        torch.testing.assert_close(lrp0.features, encoder(x, mask), rtol=0, atol=TOL * lrp0.features.abs().max())
    # CLIP: "hi" is padded and its padding gets nothing; SigLIP: its padding is explained input
    assert bool(mask[1].all()) == (encoder.transformer.kind == "siglip")
    assert encoder.transformer.kind == "siglip" or not lrp0.relevance[1][:, ~mask[1].bool()].any()


# ------------------------------------------------------------- as a SentenceTransformer


def _sentence_transformer(family, tokenizers, folder):
    """A SentenceTransformer over the two-tower model saved in ``folder`` (with its
    processor, as sentence-transformers loads one), then Normalize on the embedding."""
    st = pytest.importorskip("sentence_transformers")
    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Transformer
    except ImportError:  # sentence-transformers before 6
        pytest.skip("sentence-transformers 6 runs CLIP and SigLIP through its Transformer module")
    tokenizer = tokenizers[family]
    _model(family, tokenizer).save_pretrained(folder)
    if family == "clip":
        images = transformers.CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
        transformers.CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    else:
        images = transformers.SiglipImageProcessor(size={"height": 8, "width": 8})
        transformers.SiglipProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    # in eval mode, as encode leaves it (encode switches the model, not skbilrp)
    return st.SentenceTransformer(modules=[Transformer(str(folder)), Normalize()], device="cpu").double().eval()


def test_a_sentence_transformer_over_clip_is_explained_as_its_encode(tokenizers, tmp_path):
    st = _sentence_transformer("clip", tokenizers, tmp_path)
    before = _snapshot(st)
    kern = TextKernel(model=st, kernel="linear").fit(COLS)
    alone = np.concatenate([st.encode([t], convert_to_numpy=True) for t in ROWS + COLS])
    features = kern.features(ROWS + COLS)
    np.testing.assert_allclose(features, alone, rtol=0, atol=TOL * np.abs(alone).max())
    expl = kern.explain_pairs(ROWS)
    np.testing.assert_allclose(expl.similarity, alone[:2] @ alone[2:].T, rtol=0, atol=TOL)
    # Normalize ran as the head: unit embeddings, and relevance conserves through it
    assert np.abs(expl.conservation_error).max() < 1e-8 * np.abs(expl.similarity).max()
    _assert_unchanged(before, st)


def test_a_sentence_transformer_over_siglip_is_refused_with_what_to_do(tokenizers, tmp_path):
    st = _sentence_transformer("siglip", tokenizers, tmp_path)
    with pytest.raises(TypeError, match=r"depends on its batch\). Explain the SiglipModel itself"):
        TextKernel(model=st).fit(COLS)
