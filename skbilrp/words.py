"""Words, not only word pieces: sum token relevance over the pieces of each word.

Sub-word tokenizers split rare words into pieces ("unbelievably" -> ``un ##bel
##ie ##va ##bly``), so a token × token explanation spreads one word's relevance
over several rows. :class:`Words` records which token positions make up each word
of one text; :func:`merge_relevance` sums a ``(T_a, T_b)`` relevance matrix into a
``(W_a, W_b)`` one (and :func:`merge_tokens` one side of anything), so the total,
and hence conservation, is unchanged. Special tokens (``[CLS]``, ``<s>`` ...) stay
words of their own, marked ``special``, because they are model inputs that carry
relevance too.

:func:`words_from_encoding` reads the words off a fast (Rust) tokenizer's
``BatchEncoding`` (``word_ids`` and character offsets); for slow tokenizers, which
have neither, :func:`words_from_tokens` rebuilds them from the piece conventions:
WordPiece ``##`` continuations (BERT), SentencePiece ``▁`` word starts (XLM-R,
ALBERT, DeBERTa-v3, T5) and byte-level BPE ``Ġ`` word starts (RoBERTa, GPT-2,
ModernBERT).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Optional, Sequence

import numpy as np

__all__ = [
    "Words",
    "Scheme",
    "words_from_encoding",
    "words_from_tokens",
    "merge_tokens",
    "merge_relevance",
    "top_word_pairs",
    "word_level",
]

#: Piece conventions :func:`words_from_tokens` knows.
Scheme = Literal["wordpiece", "sentencepiece", "bytelevel"]
_SCHEMES = ("wordpiece", "sentencepiece", "bytelevel")

_SP_SPACE = "\u2581"  # "▁", SentencePiece's word-start mark
_BL_SPACE = "\u0120"  # "Ġ", the byte-level alphabet's space

# "[CLS]", "<s>", "</s>", "<pad>", "<|endoftext|>", "<extra_id_0>" ...; "[UNK]" and
# "<unk>" are not among them: they stand for a word of the text.
_SPECIAL_RE = re.compile(r"^(\[[A-Za-z_]+\]|<\|?/?[A-Za-z_][A-Za-z0-9_]*\|?>)$")
_UNKNOWN = {"[unk]", "<unk>", "<|unk|>"}


# ------------------------------------------------------------------------- Words


@dataclass(frozen=True)
class Words:
    """The words of one tokenized text: which token positions belong to each.

    Parameters
    ----------
    labels : list of str
        One string per word: its text (special tokens: their token string, e.g.
        ``"[CLS]"`` or ``"<s>"``).
    groups : list of list of int
        The token positions of each word, ascending; together they cover every
        position ``0 .. n_tokens - 1`` exactly once.
    special : list of bool
        True for special tokens (one-token words the tokenizer added).

    Raises
    ------
    ValueError
        If the three lists differ in length, a group is empty or unsorted, or the
        groups do not partition ``range(n_tokens)``.

    Examples
    --------
    >>> w = Words(["[CLS]", "unbelievably", "[SEP]"], [[0], [1, 2, 3], [4]], [True, False, True])
    >>> w.n_tokens, len(w)
    (5, 3)
    """

    labels: list[str]
    groups: list[list[int]]
    special: list[bool]

    def __post_init__(self) -> None:
        # private copies, so that a caller's lists cannot change a frozen object
        labels = [str(s) for s in self.labels]
        special = [bool(s) for s in self.special]
        groups = []
        for w, g in enumerate(self.groups):
            try:
                g = [int(p) for p in g]
            except TypeError as err:
                raise ValueError(f"Each group must be a list of token positions; group {w} is {g!r}.") from err
            if not g:
                raise ValueError(f"Word {w} has no token; every word needs at least one token position.")
            if any(b <= a for a, b in zip(g, g[1:])):
                raise ValueError(f"The token positions of word {w} must be strictly ascending, got {g}.")
            groups.append(g)
        if not len(labels) == len(groups) == len(special):
            raise ValueError(
                f"Words needs one label, one group and one special flag per word; got {len(labels)} "
                f"labels, {len(groups)} groups and {len(special)} special flags."
            )
        flat = [p for g in groups for p in g]
        if sorted(flat) != list(range(len(flat))):
            seen: set = set()
            twice = sorted({p for p in flat if p in seen or seen.add(p)})
            missing = sorted(set(range(len(flat))) - seen)
            why = (f"positions {twice} are in more than one word" if twice
                   else f"positions {[p for p in flat if p < 0]} are negative" if min(flat) < 0
                   else f"positions {missing} are in no word")
            raise ValueError(
                f"The groups must partition the token positions 0 .. n_tokens - 1 (each in exactly one "
                f"word), but {why}."
            )
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "special", special)

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def n_tokens(self) -> int:
        """Number of token positions covered."""
        return sum(len(g) for g in self.groups)

    @property
    def n_words(self) -> int:
        """Number of words (special tokens included)."""
        return len(self.groups)

    @property
    def word_of_token(self) -> np.ndarray:
        """``(n_tokens,)`` int array: the word each token position belongs to."""
        out = np.empty(self.n_tokens, dtype=np.int64)
        for w, g in enumerate(self.groups):
            out[g] = w
        return out

    def matrix(self, dtype: Any = np.float64) -> np.ndarray:
        """The ``(n_words, n_tokens)`` 0/1 summation matrix ``S``.

        ``S @ r`` sums a per-token vector over the pieces of each word, and
        ``S_a @ R @ S_b.T`` a token × token matrix; :func:`merge_tokens` does the same
        without multiplying by zeros (so a NaN stays in its own word).

        Parameters
        ----------
        dtype : numpy dtype, default=float64

        Returns
        -------
        ndarray of shape (n_words, n_tokens)
        """
        out = np.zeros((self.n_words, self.n_tokens), dtype=dtype)
        out[self.word_of_token, np.arange(self.n_tokens)] = 1
        return out


# ---------------------------------------------------------------- from a tokenizer


def words_from_encoding(encoding: Any, index: int, text: Optional[str], tokens: Sequence[str]) -> Words:
    """The words of text ``index`` of a tokenizer's batch output.

    Parameters
    ----------
    encoding : transformers BatchEncoding
        What ``tokenizer(texts, truncation=True, ...)`` returned for a batch of single
        texts (not text pairs), with or without ``return_offsets_mapping=True``.
        Fast tokenizers give ``word_ids`` and character spans; for a slow one the
        words are rebuilt from the pieces by :func:`words_from_tokens` (using the
        ``special_tokens_mask`` when it was asked for with
        ``return_special_tokens_mask=True``).
    index : int
        Which text of the batch.
    text : str or None
        The raw text, for the labels (each word's characters in it, with the original
        casing and accents). None: labels are rebuilt from the pieces.
    tokens : sequence of str
        The token strings of that text, e.g.
        ``tokenizer.convert_ids_to_tokens(encoding["input_ids"][index])``; padding
        may be left out (then the ``attention_mask`` says which positions are real).

    Returns
    -------
    Words
        Over ``len(tokens)`` positions. The words are the tokenizer's own (its
        pre-tokenizer's split: BERT's makes ``don't`` three words, ``don ' t``, and
        punctuation a word of its own). Tokens without a word id (``[CLS]``,
        ``[SEP]``, ``<s>``, padding) are special words of one token. A truncated text
        has only the words of its kept tokens; a word cut by truncation is labelled
        with its kept characters.

    Raises
    ------
    ValueError
        If ``tokens`` do not match text ``index`` of the encoding, or the character
        offsets do not fit ``text``.
    """
    tokens = [str(t) for t in tokens]
    word_ids = _word_ids(encoding, index)
    positions = _real_positions(encoding, index, len(tokens), len(word_ids) if word_ids is not None else None)
    if word_ids is None:  # a slow tokenizer: no alignment, read the pieces
        mask = _row(encoding, "special_tokens_mask", index)
        special = None if mask is None else [bool(mask[p]) for p in positions]
        return words_from_tokens(tokens, special=special, text=text)

    enc_tokens = _enc_tokens(encoding, index)
    if enc_tokens is not None:
        for k, p in enumerate(positions):
            # an unknown piece: Unigram encodings give its text where the vocabulary says "<unk>"
            if enc_tokens[p] != tokens[k] and tokens[k].lower() not in _UNKNOWN:
                raise ValueError(
                    f"tokens[{k}] is {tokens[k]!r} but token {p} of text {index} of the encoding is "
                    f"{enc_tokens[p]!r}; pass the tokens and the index of the same text, e.g. "
                    f"tokenizer.convert_ids_to_tokens(encoding['input_ids'][{index}])."
                )
    seq_ids = _sequence_ids(encoding, index)
    groups: list[list[int]] = []
    special: list[bool] = []
    where: dict = {}  # (sequence, word id) -> its group
    for k, p in enumerate(positions):
        wid = word_ids[p]
        if wid is None:
            groups.append([k])
            special.append(True)
            continue
        key = (None if seq_ids is None else seq_ids[p], wid)
        if key in where:
            groups[where[key]].append(k)
        else:
            where[key] = len(groups)
            groups.append([k])
            special.append(False)

    spans = _token_spans(encoding, index, positions)
    scheme = _detect_scheme(tokens, [word_ids[p] is None for p in positions])
    labels = []
    for g, is_special in zip(groups, special):
        label = ""
        if is_special:
            label = tokens[g[0]]
        else:
            if text is not None and spans is not None:
                label = _span_text(text, [spans[k] for k in g], index)
            if not label:  # no offsets, or a word of no characters: rebuild it from the pieces
                label = _join_pieces([tokens[k] for k in g], scheme)
        labels.append(label)
    return Words(labels, groups, special)


def words_from_tokens(tokens: Sequence[str], special: Optional[Sequence[bool]] = None,
                      text: Optional[str] = None, scheme: Optional[Scheme] = None) -> Words:
    """Words rebuilt from token strings alone, for tokenizers without ``word_ids``.

    Parameters
    ----------
    tokens : sequence of str
        Token strings as the vocabulary spells them (``convert_ids_to_tokens``).
    special : sequence of bool, optional
        Which tokens are special (the tokenizer's ``special_tokens_mask``). Default:
        those that look like ``[CLS]`` or ``<s>`` (``[UNK]`` and ``<unk>`` excepted:
        they stand for a word of the text).
    text : str, optional
        The raw text: each word's label is looked up in it, from left to right, to
        restore casing that an uncased tokenizer dropped (labels not found, e.g. with
        accents stripped, stay as rebuilt from the pieces).
    scheme : {"wordpiece", "sentencepiece", "bytelevel"}, optional
        How pieces mark words. "wordpiece": a token starting with ``##`` continues the
        previous word. "sentencepiece": a token starting with ``▁`` starts a word, any
        other continues it. "bytelevel": the pieces are decoded and split as GPT-2's
        pre-tokenizer splits text (a ``Ġ``, i.e. a space, starts a word, and so does a
        change between letters, digits and other characters); each piece goes to the
        word its first byte is in. Default: the convention whose mark most tokens
        carry; with none, every token is a word.

    Returns
    -------
    Words
        Special tokens are words of one token, and a token right after one always
        starts a word.

    Raises
    ------
    ValueError
        If ``special`` has another length than ``tokens`` or ``scheme`` is unknown.
    """
    tokens = [str(t) for t in tokens]
    if special is None:
        special = [_looks_special(t) for t in tokens]
    special = [bool(s) for s in special]
    if len(special) != len(tokens):
        raise ValueError(f"special must flag each of the {len(tokens)} tokens, got {len(special)} flags.")
    if scheme is None:
        scheme = _detect_scheme(tokens, special)
    elif scheme not in _SCHEMES:
        raise ValueError(f"scheme must be one of {_SCHEMES} or None (detect it), got {scheme!r}.")

    continues = _continuations(tokens, special, scheme)
    groups: list[list[int]] = []
    flags: list[bool] = []
    for k in range(len(tokens)):
        if continues[k]:
            groups[-1].append(k)
        else:
            groups.append([k])
            flags.append(special[k])
    labels = [tokens[g[0]] if s else _join_pieces([tokens[k] for k in g], scheme) for g, s in zip(groups, flags)]
    if text is not None:
        labels = _restore_from_text(labels, flags, text)
    return Words(labels, groups, flags)


# ------------------------------------------------------------------------ merging


def merge_tokens(relevance: Any, words: Words, axis: int = -1) -> np.ndarray:
    """Sum relevance over the pieces of each word along one axis.

    Parameters
    ----------
    relevance : array-like or torch.Tensor
        Any shape with ``words.n_tokens`` entries along ``axis``: a per-token vector
        ``(T,)``, the per-sample relevance factors ``(h, T)``, a batch ``(n, T)`` ...
    words : Words
    axis : int, default=-1

    Returns
    -------
    ndarray
        ``relevance``'s shape with ``words.n_words`` along ``axis``; the sum along that
        axis is preserved (up to float round-off). Floating dtypes are kept, others
        become float64.

    Raises
    ------
    ValueError
        If the axis does not have ``words.n_tokens`` entries.
    """
    rel = _as_array(relevance)
    if rel.ndim == 0:
        raise ValueError("relevance must have at least one axis of tokens, got a scalar.")
    ax = axis if axis >= 0 else rel.ndim + axis
    if not 0 <= ax < rel.ndim:
        raise ValueError(f"axis {axis} is out of range for relevance of shape {rel.shape}.")
    if rel.shape[ax] != words.n_tokens:
        raise ValueError(
            f"relevance has {rel.shape[ax]} entries along axis {axis} (shape {rel.shape}) but the words "
            f"cover {words.n_tokens} tokens; pass the Words of the text that was explained, built from "
            "the same (truncated) encoding."
        )
    if words.n_tokens == 0:  # reduceat needs at least one run
        return np.zeros(rel.shape, dtype=rel.dtype)
    order = np.fromiter((p for g in words.groups for p in g), dtype=np.int64, count=words.n_tokens)
    starts = np.cumsum([0] + [len(g) for g in words.groups[:-1]])
    # pieces of a word side by side, then one sum per run: no products with zeros
    return np.add.reduceat(np.take(rel, order, axis=ax), starts, axis=ax)


def merge_relevance(relevance: Any, words_a: Words, words_b: Words) -> np.ndarray:
    """Sum a token × token relevance matrix into a word × word one.

    Parameters
    ----------
    relevance : array-like or torch.Tensor of shape (..., T_a, T_b)
        One pair's ``(T_a, T_b)`` matrix, or a batch of them with leading axes.
    words_a, words_b : Words
        The words of the row text (``T_a`` tokens) and the column text (``T_b``).

    Returns
    -------
    ndarray of shape (..., W_a, W_b)
        ``out[..., v, w]`` is the sum of ``relevance[..., s, t]`` over the pieces ``s``
        of word ``v`` and ``t`` of word ``w``; the total is preserved (up to float
        round-off).

    Raises
    ------
    ValueError
        If the last two axes are not ``(words_a.n_tokens, words_b.n_tokens)``.

    Examples
    --------
    >>> a = Words(["[CLS]", "unbelievable"], [[0], [1, 2]], [True, False])
    >>> b = Words(["yes"], [[0]], [False])
    >>> merge_relevance(np.array([[0.5], [1.0], [2.0]]), a, b)
    array([[0.5],
           [3. ]])
    """
    rel = _as_array(relevance)
    want = (words_a.n_tokens, words_b.n_tokens)
    if rel.ndim < 2 or rel.shape[-2:] != want:
        raise ValueError(
            f"relevance must have shape (..., T_a, T_b) = (..., {want[0]}, {want[1]}) for these words, "
            f"got {rel.shape}; pass the token × token relevance of the pair whose texts the words were "
            "built from (same truncation), rows for words_a and columns for words_b."
        )
    return merge_tokens(merge_tokens(rel, words_a, axis=-2), words_b, axis=-1)


def top_word_pairs(relevance: Any, words_a: Words, words_b: Words, k: int = 10,
                   by: Literal["abs", "positive", "negative"] = "abs",
                   include_special: bool = True) -> list[tuple[str, str, float]]:
    """The ``k`` strongest word pairs as ``(word_a, word_b, relevance)``, strongest first.

    Parameters
    ----------
    relevance : array-like of shape (T_a, T_b) or (W_a, W_b)
        Token-level relevance (merged here) or already merged word-level relevance.
    words_a, words_b : Words
    k : int, default=10
    by : {"abs", "positive", "negative"}, default="abs"
        Rank by ``|relevance|``, by the largest, or by the most negative values.
    include_special : bool, default=True
        False: leave out pairs where either word is a special token.

    Returns
    -------
    list of (str, str, float)
        Ties go to the lower (row-major) word pair, as in
        :meth:`~skbilrp.PairExplanation.top_interactions`.

    Raises
    ------
    ValueError
        If the shape fits neither the tokens nor the words, or ``k`` or ``by`` is invalid.
    """
    from .pairs import _top  # the same ranking and tie rule as the token pairs

    rel = word_level(relevance, words_a, words_b)
    rows = np.array([i for i, s in enumerate(words_a.special) if include_special or not s], dtype=np.int64)
    cols = np.array([j for j, s in enumerate(words_b.special) if include_special or not s], dtype=np.int64)
    sub = np.ascontiguousarray(rel[np.ix_(rows, cols)], dtype=np.float64)
    if sub.size == 0:
        from .pairs import _check_top

        _check_top(k, by)
        return []
    return [(words_a.labels[rows[i]], words_b.labels[cols[j]], r) for i, j, r in _top(sub, k, by)]


def word_level(relevance: Any, words_a: Words, words_b: Words) -> np.ndarray:
    """``relevance`` as a ``(W_a, W_b)`` matrix: merged if token-level, as is if word-level.

    A shape that fits both (every word one token) is taken as token-level, which is
    then the same matrix.

    Raises
    ------
    ValueError
        If the shape is neither ``(T_a, T_b)`` nor ``(W_a, W_b)``.
    """
    rel = _as_array(relevance)
    if rel.shape == (words_a.n_tokens, words_b.n_tokens):
        return merge_relevance(rel, words_a, words_b)
    if rel.shape == (words_a.n_words, words_b.n_words):
        return rel
    raise ValueError(
        f"relevance of shape {rel.shape} fits neither the tokens ({words_a.n_tokens}, {words_b.n_tokens}) "
        f"nor the words ({words_a.n_words}, {words_b.n_words}) of the two texts; pass one pair's "
        "matrix with the Words of its texts."
    )


# ----------------------------------------------------------------------- helpers


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    return arr if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.float64)


def _row(encoding: Any, key: str, index: int) -> Optional[list]:
    """Row ``index`` of ``encoding[key]``, or None if it was not returned."""
    try:
        value = encoding[key]
    except (KeyError, TypeError, IndexError):
        return None
    if value is None:
        return None
    if hasattr(value, "tolist"):  # numpy arrays, torch tensors
        value = value.tolist()
    try:
        ids = encoding["input_ids"]
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        batched = len(ids) > 0 and isinstance(ids[0], (list, tuple))
    except (KeyError, TypeError, IndexError):
        batched = True
    if not batched:  # the encoding of one text, not of a batch
        if index != 0:
            raise ValueError(f"The encoding holds one text, not a batch; index must be 0, got {index}.")
        return list(value)
    return list(value[index])


def _word_ids(encoding: Any, index: int) -> Optional[list]:
    """``encoding.word_ids(index)``, or None for a slow tokenizer's encoding."""
    if not callable(getattr(encoding, "word_ids", None)) or getattr(encoding, "is_fast", True) is False:
        return None
    try:
        return list(encoding.word_ids(index))
    except ValueError:  # "word_ids() is not available when using ... Python based tokenizers"
        return None


def _enc_tokens(encoding: Any, index: int) -> Optional[list]:
    try:
        return list(encoding.tokens(index))
    except (AttributeError, ValueError, TypeError):
        return None


def _sequence_ids(encoding: Any, index: int) -> Optional[list]:
    try:
        return list(encoding.sequence_ids(index))
    except (AttributeError, ValueError, TypeError):
        return None


def _real_positions(encoding: Any, index: int, n_tokens: int, n_encoded: Optional[int]) -> list[int]:
    """Positions in the encoding of the given tokens: all of them, or the unpadded ones."""
    mask = _row(encoding, "attention_mask", index)
    n_enc = n_encoded if n_encoded is not None else (len(mask) if mask is not None else None)
    if n_enc is None or n_tokens == n_enc:
        return list(range(n_tokens))
    if mask is not None and int(np.sum(mask)) == n_tokens:
        return [int(p) for p in np.flatnonzero(np.asarray(mask))]  # right or left padding
    real = "" if mask is None else f", {int(np.sum(mask))} of them not padding"
    raise ValueError(
        f"{n_tokens} tokens were given but text {index} of the encoding has {n_enc} tokens{real}; pass "
        f"the tokens of that text, e.g. tokenizer.convert_ids_to_tokens(encoding['input_ids'][{index}])."
    )


def _token_spans(encoding: Any, index: int, positions: list[int]) -> Optional[list]:
    """``(start, end)`` character span of each token (None: no characters), or None if unknown."""
    offsets = _row(encoding, "offset_mapping", index)
    if offsets is not None:
        return [tuple(int(v) for v in offsets[p]) if offsets[p] is not None and offsets[p][1] > offsets[p][0]
                else None for p in positions]
    if not callable(getattr(encoding, "token_to_chars", None)):
        return None
    spans = []
    for p in positions:
        try:
            span = encoding.token_to_chars(index, p)
        except (ValueError, TypeError):
            return None
        spans.append(None if span is None or span[1] <= span[0] else (int(span[0]), int(span[1])))
    return spans


def _span_text(text: str, spans: list, index: int) -> str:
    """The characters of ``text`` from the first to the last span (whitespace trimmed)."""
    spans = [s for s in spans if s is not None]
    if not spans:
        return ""
    start, end = min(s[0] for s in spans), max(s[1] for s in spans)
    if end > len(text) or start < 0:
        raise ValueError(
            f"The encoding puts a word of text {index} at characters {start}..{end}, past the end of the "
            f"given text of {len(text)} characters; pass the raw text that was encoded as text {index}."
        )
    return text[start:end].strip()


def _looks_special(token: str) -> bool:
    return bool(_SPECIAL_RE.match(token)) and token.lower() not in _UNKNOWN


def _detect_scheme(tokens: list[str], special: list[bool]) -> Scheme:
    """The convention whose mark most (non-special) tokens carry; wordpiece when none does."""
    counts = {"wordpiece": 0, "sentencepiece": 0, "bytelevel": 0}
    for tok, s in zip(tokens, special):
        if s:
            continue
        if tok.startswith("##") and len(tok) > 2:
            counts["wordpiece"] += 1
        elif tok.startswith(_SP_SPACE):
            counts["sentencepiece"] += 1
        elif tok.startswith(_BL_SPACE):
            counts["bytelevel"] += 1
    best = max(counts, key=lambda s: counts[s])
    return best if counts[best] else "wordpiece"


def _continuations(tokens: list[str], special: list[bool], scheme: Scheme) -> list[bool]:
    """Per token: whether it continues the previous token's word (never next to a special one)."""
    out = [False] * len(tokens)
    if scheme == "bytelevel":
        # the word of a piece is the pre-token (GPT-2's split of the decoded text) its first byte is in
        start = 0
        for k in range(len(tokens) + 1):
            if k == len(tokens) or special[k]:
                word = _bytelevel_words(tokens[start:k])
                for j in range(1, len(word)):
                    out[start + j] = word[j] == word[j - 1]
                start = k + 1
        return out
    mark = "##" if scheme == "wordpiece" else _SP_SPACE
    for k in range(1, len(tokens)):
        if special[k] or special[k - 1]:
            continue
        if scheme == "wordpiece":
            out[k] = tokens[k].startswith(mark) and len(tokens[k]) > len(mark)
        else:
            out[k] = not tokens[k].startswith(mark)
    return out


def _bytelevel_words(pieces: list[str]) -> list[int]:
    """For each byte-level piece of one run of text, the index of its pre-token."""
    raw = [_bytes_of(p) for p in pieces]
    # surrogateescape: a byte that is no valid UTF-8 becomes one character of its own
    text = b"".join(raw).decode("utf-8", errors="surrogateescape")
    char_bytes = [1 if "\udc80" <= ch <= "\udcff" else len(ch.encode("utf-8")) for ch in text]
    char_start = np.concatenate([[0], np.cumsum(char_bytes)])[:-1]
    word_start = np.array([a for a, _ in _gpt2_pretokens(text)], dtype=np.int64)
    piece_start = np.concatenate([[0], np.cumsum([len(r) for r in raw])])[:-1]
    chars = np.searchsorted(char_start, piece_start, side="right") - 1  # the character a piece starts in
    return [int(w) for w in np.searchsorted(word_start, np.maximum(chars, 0), side="right") - 1]


_CONTRACTIONS = ("re", "ve", "ll", "s", "t", "m", "d")


def _gpt2_pretokens(s: str) -> list[tuple[int, int]]:
    """Character spans of GPT-2's pre-tokenizer, the regex
    ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``
    (written out: the standard ``re`` has no ``\\p{L}``)."""
    spans: list[tuple[int, int]] = []
    i, n = 0, len(s)
    while i < n:
        if s[i] == "'":
            suffix = next((x for x in _CONTRACTIONS if s.startswith(x, i + 1)), None)
            if suffix is not None:
                spans.append((i, i + 1 + len(suffix)))
                i += 1 + len(suffix)
                continue
        j = i + 1 if s[i] == " " and i + 1 < n and not s[i + 1].isspace() else i  # the optional space
        if not s[j].isspace():  # a run of letters, of digits, or of other characters
            kind, k = _char_class(s[j]), j + 1
            while k < n and not s[k].isspace() and _char_class(s[k]) == kind:
                k += 1
            spans.append((i, k))
            i = k
            continue
        k = i
        while k < n and s[k].isspace():
            k += 1
        if k < n and k - i > 1:
            k -= 1  # the last space before a word goes with the word (\\s+(?!\\S))
        spans.append((i, k))
        i = k
    return spans


def _char_class(ch: str) -> str:
    cat = unicodedata.category(ch)
    return "L" if cat.startswith("L") else "N" if cat.startswith("N") else "O"


def _join_pieces(pieces: list[str], scheme: Scheme) -> str:
    """A word's text rebuilt from its pieces (a word of whitespace keeps its pieces, e.g. "Ġ")."""
    if scheme == "bytelevel":
        word = b"".join(_bytes_of(p) for p in pieces).decode("utf-8", errors="replace").strip()
    elif scheme == "sentencepiece":
        word = "".join(pieces).replace(_SP_SPACE, " ").strip()
    else:
        word = "".join(p[2:] if k and p.startswith("##") and len(p) > 2 else p for k, p in enumerate(pieces))
    return word or "".join(pieces)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character of every byte, inverted."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def _bytes_of(piece: str) -> bytes:
    """The bytes a byte-level piece stands for (characters outside the alphabet as UTF-8)."""
    table = _byte_decoder()
    out = bytearray()
    for ch in piece:
        if ch in table:
            out.append(table[ch])
        else:
            out.extend(ch.encode("utf-8"))
    return bytes(out)


def _restore_from_text(labels: list[str], special: list[bool], text: str) -> list[str]:
    """Labels replaced by their occurrence in ``text`` (left to right, ignoring case)."""
    lowered = text.lower()
    if len(lowered) != len(text):  # lower() changed lengths (e.g. "İ"): positions would not match
        lowered = text
    out, cursor = [], 0
    for label, s in zip(labels, special):
        # the first match ignoring case: an exact one further on may belong to a later word
        pos = -1 if s or not label else lowered.find(label.lower(), cursor)
        if pos < 0:
            out.append(label)
            continue
        out.append(text[pos:pos + len(label)])
        cursor = pos + len(label)
    return out
