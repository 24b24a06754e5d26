"""Second-order pointing game for sentence pairs: one shared word amid unrelated words.

The text analogue of the collage game (:mod:`.pointing`). Each pair is built from
two sentences that share no content word; one content word of the first then
replaces a content word of the second (:func:`make_shared_word_pairs`), so the pair
shares exactly one content word, at different places, amid unrelated words. The
truth is that word's token pairs (every sub-word token of it in one sentence with
every one in the other, :func:`shared_word_masks`).

The score is :func:`~skbilrp.evaluation.pointing_share` over the *ordinary* tokens:
special tokens (``[CLS]``, ``[SEP]``, ``<s>``, a prompt) are left out, as in token
flipping, because they carry relevance without being words of either sentence.
Function words ("the", "a", the full stop) occur in both sentences too; relevance
that links them is counted as a miss: they are not what makes two unrelated
sentences alike. The replacement may leave the second sentence less grammatical;
the test asks only where the explanation puts the similarity.

By default the sentences are those of ``skbilrp/data/sentences.txt``
(:func:`shipped_sentences`), so the pairs are built offline and the same for every
run with the same seed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Optional, Union

import numpy as np
from torch import nn

from ..pairs import Kernel
from .pointing import PointingResults, score_pointing
from .text import TextExplanationMethod, _ordinary, _tokenize_pairs, explain_text_pairs

__all__ = [
    "STOPWORDS",
    "shipped_sentences",
    "content_words",
    "SharedWordPair",
    "make_shared_word_pairs",
    "shared_word_masks",
    "text_pointing_game",
]

#: Function words (and numbers spelled out) that never count as content words.
STOPWORDS = frozenset("""
a about above across after again against all along also an and any are as at back be because been before
being below between both but by can could did do does down during each early every few for from further had
has have he her here hers him his how i if in into is it its itself last late least less more most much my
near never no nor not now of off on once one only or other our out over own same she should so some such
than that the their them then there these they this those through to too two three four five six seven eight
nine ten under until up very was we were what when where which while who whom why will with would you your
all its their them still just get got make made
""".split())

_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")


def shipped_sentences() -> list[str]:
    """The sentences of ``skbilrp/data/sentences.txt`` (one per line, blank lines left out)."""
    text = files("skbilrp.data").joinpath("sentences.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _stem(word: str) -> str:
    """A crude stem so that "dog" and "dogs" count as one word."""
    word = word.lower()
    for suffix in ("ies", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def content_words(sentence: str) -> list[tuple[str, int, int]]:
    """Content words of a sentence: ``(word, start, end)`` character spans.

    A content word is a run of letters (with an apostrophe suffix), at least three
    long, not in :data:`STOPWORDS`, and not the first word (its capital letter would
    differ when it is moved inside another sentence, and cased tokenizers would
    then see another token).

    Parameters
    ----------
    sentence : str

    Returns
    -------
    list of (str, int, int)
    """
    found = [(m.group(), m.start(), m.end()) for m in _WORD.finditer(sentence)]
    return [(w, s, e) for k, (w, s, e) in enumerate(found)
            if k > 0 and len(w) >= 3 and w.lower() not in STOPWORDS and w[0].islower()]


@dataclass(frozen=True)
class SharedWordPair:
    """Two sentences that share exactly one content word.

    Attributes
    ----------
    text_a, text_b : str
    word : str
        The shared word.
    span_a, span_b : (int, int)
        Its character span in each text.
    """

    text_a: str
    text_b: str
    word: str
    span_a: tuple[int, int]
    span_b: tuple[int, int]


def _word_class(word: str) -> str:
    """A crude word class from the ending, so that a replacement keeps the sentence
    readable more often (a past tense for a past tense, a plural for a plural)."""
    return next((suffix for suffix in ("ing", "ed", "ly", "s") if word.endswith(suffix)), "")


def _shared_stems(a: str, b: str) -> set:
    return {_stem(w) for w, _, _ in content_words(a)} & {_stem(w) for w, _, _ in content_words(b)}


def make_shared_word_pairs(n_pairs: int, sentences: Optional[Sequence[str]] = None,
                           topics: Optional[Sequence[Any]] = None,
                           random_state: Union[None, int, np.random.Generator] = None) -> list[SharedWordPair]:
    """Sentence pairs sharing exactly one content word, at different places.

    Draws two sentences of different topics without a common content word (compared
    by :func:`content_words` and a crude stem), a content word ``w`` of the first and a
    content word ``v`` of the second with the same ending class (-ing, -ed, -ly, -s
    or other), and replaces ``v`` by ``w`` in the second; draws where the word falls
    at the same word position in both, or where the pair would share another
    content word, are left out. No pair repeats.

    Parameters
    ----------
    n_pairs : int
    sentences : sequence of str, optional
        Default :func:`shipped_sentences`.
    topics : sequence, optional
        A topic label per sentence; pairs join sentences of different topics. Default
        for the shipped sentences: their blocks of ten lines (animals, weather,
        finance, sport, cooking); for other sentences: every sentence its own topic.
    random_state : None, int or numpy.random.Generator

    Returns
    -------
    list of SharedWordPair

    Raises
    ------
    ValueError
        If the sentences cannot give ``n_pairs`` distinct pairs.
    """
    if sentences is None:
        sentences = shipped_sentences()
        topics = [k // 10 for k in range(len(sentences))] if topics is None else topics
    sentences = list(sentences)
    topics = list(range(len(sentences))) if topics is None else list(topics)
    if len(topics) != len(sentences):
        raise ValueError(f"topics has {len(topics)} labels for {len(sentences)} sentences.")
    rng = np.random.default_rng(random_state)
    words = [content_words(s) for s in sentences]
    candidates = [(i, j) for i in range(len(sentences)) for j in range(len(sentences))
                  if topics[i] != topics[j] and words[i] and words[j]
                  and not _shared_stems(sentences[i], sentences[j])]
    out: list[SharedWordPair] = []
    seen: set = set()
    for index in np.tile(rng.permutation(len(candidates)), 4):  # a few draws per sentence pair
        if len(out) == n_pairs:
            break
        i, j = candidates[index]
        k, m = rng.integers(len(words[i])), rng.integers(len(words[j]))
        (w, sa, ea), (v, sb, eb) = words[i][k], words[j][m]
        text_b = sentences[j][:sb] + w + sentences[j][eb:]
        if (k == m or _word_class(w) != _word_class(v) or (i, j, w) in seen
                or _shared_stems(sentences[i], text_b) != {_stem(w)}):
            continue
        seen.add((i, j, w))
        out.append(SharedWordPair(sentences[i], text_b, w, (sa, ea), (sb, sb + len(w))))
    if len(out) < n_pairs:
        raise ValueError(f"Only {len(out)} distinct shared-word pairs can be built from {len(sentences)} "
                         f"sentences, {n_pairs} asked; pass more sentences.")
    return out


def _token_flags(offsets: Sequence[Sequence[int]], span: tuple[int, int], shift: int) -> np.ndarray:
    start, end = span[0] + shift, span[1] + shift
    return np.array([e > s and s < end and e > start for s, e in offsets], dtype=bool)


def shared_word_masks(encoder: nn.Module, pairs: Sequence[SharedWordPair],
                      max_length: Optional[int] = None) -> list[np.ndarray]:
    """The true token pairs of every pair: the shared word's tokens in both texts.

    Parameters
    ----------
    encoder : SentenceEncoder
        Or any module whose ``tokenize(texts, max_length)`` returns ``input_ids``
        and character ``offset_mapping`` (a fast tokenizer), with an optional
        ``prompt`` prepended to every text.
    pairs : sequence of SharedWordPair
    max_length : int, optional

    Returns
    -------
    list of ndarray of bool
        ``(T_a, T_b)`` over all tokens, special ones included (they are never true).

    Raises
    ------
    ValueError
        If the tokenizer gives no character offsets, or the shared word was
        truncated away.
    """
    shift = len(getattr(encoder, "prompt", "") or "")
    masks = []
    enc_a = encoder.tokenize([p.text_a for p in pairs], max_length)
    enc_b = encoder.tokenize([p.text_b for p in pairs], max_length)
    if "offset_mapping" not in enc_a:
        raise ValueError("The tokenizer gives no character offsets (offset_mapping); the shared word's tokens "
                         "cannot be found. Use a fast tokenizer.")
    for n, pair in enumerate(pairs):
        in_a = _token_flags(enc_a["offset_mapping"][n], pair.span_a, shift)
        in_b = _token_flags(enc_b["offset_mapping"][n], pair.span_b, shift)
        if not in_a.any() or not in_b.any():
            raise ValueError(f"The shared word {pair.word!r} of pair {n} has no token (truncated?).")
        masks.append(in_a[:, None] & in_b[None, :])
    return masks


def text_pointing_game(encoder: nn.Module, pairs: Sequence[SharedWordPair],
                       methods: Mapping[str, Union[TextExplanationMethod, Sequence[np.ndarray]]],
                       kernel: Kernel = "linear", max_length: Optional[int] = None) -> PointingResults:
    """Explain every shared-word pair with every method and score the shared word's share.

    Parameters
    ----------
    encoder : SentenceEncoder
        See :func:`shared_word_masks`.
    pairs : sequence of SharedWordPair
        From :func:`make_shared_word_pairs`.
    methods : mapping of str to TextExplanationMethod or list of ndarray
        E.g. :func:`skbilrp.evaluation.default_text_methods`; a list gives
        precomputed explanations over all tokens.
    kernel : {"linear", "cosine"}, default="linear"
    max_length : int, optional

    Returns
    -------
    PointingResults
        One column, ``"shared word"``, over the ordinary tokens.
    """
    texts = [(p.text_a, p.text_b) for p in pairs]
    a, b = _tokenize_pairs(encoder, texts, max_length)
    to_compute = {name: m for name, m in methods.items() if callable(m)}
    computed, seconds = explain_text_pairs(encoder, texts, to_compute, kernel, max_length)
    masks = shared_word_masks(encoder, pairs, max_length)

    def ordinary(items: Sequence[Any]) -> list[np.ndarray]:
        return [_ordinary(r, a.special[n], b.special[n]) for n, r in enumerate(items)]

    explanations = {name: ordinary(computed[name] if name in computed else list(m)) for name, m in methods.items()}
    return score_pointing(explanations, {"shared word": ordinary(masks)}, seconds)
