"""Pair explanations whose groups are tokens: text × text, or patches × tokens.

:class:`TextPairExplanations` is a factored :class:`~skbilrp.pairs.PairExplanations`
that also knows the tokens (and word boundaries) of the samples on each labelled side;
a side without labels (images) keeps its pooling as it is. Entries are trimmed to the
real tokens of their texts, and :meth:`TextPairExplanations.words` sums the pieces of
each word on the labelled sides.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from .pairs import PairExplanation, PairExplanations
from .pooling import Pooling, make_pooling

__all__ = ["TextPairExplanation", "TextPairExplanations", "token_pooling", "word_pooling"]

#: what TextPairExplanation.words() needs that a result may lack
_NO_WORDS = ("These explanations carry no word boundaries; they come from TextKernel.explain_pairs, "
             "which records them.")


def token_pooling(n_tokens: int, dim: int) -> Pooling:
    """One group per token of an ``(T, D)`` embedding."""
    return make_pooling(None, (n_tokens, dim), channel_axis=-1)


def word_pooling(words: Any, dim: int) -> Pooling:
    """One group per word of an ``(T, D)`` embedding."""
    return make_pooling(words.word_of_token, (words.n_tokens, dim), channel_axis=-1)


def _merge_entry(relevance: np.ndarray, words_a: Any, words_b: Any) -> np.ndarray:
    """One entry's matrix summed over the words of its labelled sides (None: kept)."""
    from .words import merge_tokens

    out = np.asarray(relevance)
    if words_a is not None:
        out = merge_tokens(out, words_a, axis=0)
    if words_b is not None:
        out = merge_tokens(out, words_b, axis=1)
    return out


@dataclass
class TextPairExplanation(PairExplanation):
    """BiLRP explanation of one similarity on pairs of tokens (or of words).

    Attributes
    ----------
    relevance : ndarray of shape (T_a, T_b)
        ``relevance[s, t]``: contribution of token ``s`` of text a jointly with token
        ``t`` of text b (real tokens only, special tokens included); on word level
        ``(W_a, W_b)``, summed over the pieces of each word. A side that is no text
        (an image) keeps its groups (patches).
    tokens_a, tokens_b : list of str or None
        The tokens (word level: the words) of each text, matching rows and columns;
        None for a side that is no text.
    words_a, words_b : skbilrp.words.Words or None
        Which tokens make up each word of each text (see :meth:`words`).
    special_a, special_b : list of bool or None
        On word level: which words are special tokens (``[CLS]``, ``<s>`` ...).
    level : {"tokens", "words"}
    """

    tokens_a: Optional[list] = field(default_factory=list)
    tokens_b: Optional[list] = field(default_factory=list)
    words_a: Any = None
    words_b: Any = None
    special_a: Optional[list] = None
    special_b: Optional[list] = None
    level: str = "tokens"

    def top_token_pairs(self, k: int = 10, by: str = "abs") -> list[tuple[Any, Any, float]]:
        """The ``k`` strongest pairs of rows and columns as ``(token_a, token_b, relevance)``
        (word level: words; a side that is no text: its group index)."""
        label_a = self.tokens_a if self.tokens_a is not None else None
        label_b = self.tokens_b if self.tokens_b is not None else None
        return [(i if label_a is None else label_a[i], j if label_b is None else label_b[j], r)
                for i, j, r in self.top_interactions(k, by)]

    def words(self) -> "TextPairExplanation":
        """This explanation on pairs of words: each word's pieces summed.

        Sums are unchanged (``similarity``, ``conservation_error``); a word-level
        explanation returns itself.

        Returns
        -------
        TextPairExplanation
            ``level="words"``, ``tokens_a`` / ``tokens_b`` the word labels,
            ``special_a`` / ``special_b`` their special-token flags.

        Raises
        ------
        ValueError
            If the explanation carries no word boundaries.
        """
        if self.level == "words":
            return self
        if (self.tokens_a is not None and self.words_a is None) or (self.tokens_b is not None and self.words_b is None):
            raise ValueError(_NO_WORDS)
        changes: dict = {"relevance": _merge_entry(self.relevance, self.words_a, self.words_b), "level": "words"}
        for side in ("a", "b"):
            words = getattr(self, f"words_{side}")
            if words is not None:
                dim = getattr(self, f"pooling_{side}").sample_shape[-1]
                changes.update({f"pooling_{side}": word_pooling(words, dim), f"tokens_{side}": list(words.labels),
                                f"special_{side}": list(words.special)})
        return dataclasses.replace(self, **changes)


class TextPairExplanations(PairExplanations):
    """BiLRP explanations of many kernel entries on tokens (text × text, or patches × tokens).

    Factored as :class:`~skbilrp.pairs.PairExplanations`. ``relevance`` (built when
    read) is zero-padded to the longest text on each text side, ``(n, m, T_a, T_b)``
    (or ``(n_pairs, T_a, T_b)``); :meth:`pair` and iteration give one entry trimmed to
    its real tokens, with the token strings. :meth:`words` gives the same on words.
    A side whose samples are no texts (images, in a cross-modal kernel) has no tokens
    (None) and keeps its groups (patches).

    Parameters
    ----------
    *args, **kwargs
        As :class:`~skbilrp.pairs.PairExplanations`.
    tokens_a, tokens_b : list of list of str, optional
        Tokens of every row text and every column text; None for a side of no texts.
    words_a, words_b : list of skbilrp.words.Words, optional
        Words of every row text and every column text.

    Attributes
    ----------
    tokens_a, tokens_b : list of list of str or None
        Tokens (word level: words) of every row text and every column text (for chosen
        pairs, indexed by the texts named in ``pairs``).
    words_a, words_b : list of Words or None
    special_a, special_b : list of list of bool or None
        On word level: which words are special tokens.
    level : {"tokens", "words"}
    """

    def __init__(self, *args: Any, tokens_a: Optional[list] = None, tokens_b: Optional[list] = None,
                 words_a: Optional[list] = None, words_b: Optional[list] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tokens_a = list(tokens_a or [])
        self.tokens_b = list(tokens_b or [])
        self.words_a = None if words_a is None else list(words_a)
        self.words_b = None if words_b is None else list(words_b)
        self.special_a = self.special_b = None
        self.level = "tokens"

    def pair(self, i: int, j: Optional[int] = None) -> TextPairExplanation:
        """One entry, trimmed to real tokens: ``pair(i, j)`` of a block, ``pair(k)`` of ``pairs``."""
        return super().pair(i, j)

    def _texts(self, k: int) -> tuple[int, int]:
        """Row and column sample of the entry at row-major position ``k``."""
        return divmod(k, self.shape[1]) if self.pairs is None else self.pairs[k]

    def _side(self, side: str, sample: int, words_level: bool) -> tuple:
        """``(tokens, words, special, pooling)`` of one side of an entry."""
        tokens = getattr(self, f"tokens_{side}")
        pooling = getattr(self, f"pooling_{side}")
        if tokens is None:  # no text: the side's groups as they are
            return None, None, None, pooling
        all_words = getattr(self, f"words_{side}")
        words = None if all_words is None else all_words[sample]
        dim = pooling.sample_shape[-1]
        if words_level:
            special = list(getattr(self, f"special_{side}")[sample])
            return list(tokens[sample]), words, special, word_pooling(words, dim)
        return list(tokens[sample]), words, None, token_pooling(len(tokens[sample]), dim)

    def _one(self, k: int, rel: np.ndarray, similarity: float, error: float) -> TextPairExplanation:
        a, b = self._texts(k)
        words = self.level == "words"
        ta, wa, sa, pa = self._side("a", a, words)
        tb, wb, sb, pb = self._side("b", b, words)
        rows = rel.shape[0] if ta is None else len(ta)
        cols = rel.shape[1] if tb is None else len(tb)
        return TextPairExplanation(rel[:rows, :cols], similarity, error, pa, pb, self.kernel, self.method,
                                   tokens_a=ta, tokens_b=tb, words_a=wa, words_b=wb, special_a=sa, special_b=sb,
                                   level=self.level)

    def _subset(self, rows: np.ndarray, cols: np.ndarray) -> None:
        # a sub-block's rows and columns are its own samples
        for side, picked in (("a", rows), ("b", cols)):
            for name in ("tokens", "words", "special"):
                values = getattr(self, f"{name}_{side}")
                if values is not None:
                    setattr(self, f"{name}_{side}", [values[r] for r in picked])

    def words(self) -> "TextPairExplanations":
        """These explanations on pairs of words: each word's pieces summed.

        Pooling is linear, so the per-sample factors are summed over each word's
        pieces and the word × word entries are their products, as for tokens; sums
        (``similarity``, ``conservation_error``, totals) are unchanged. Word-level
        explanations return themselves; a side of no texts keeps its groups.

        Returns
        -------
        TextPairExplanations
            ``level="words"``; ``tokens_a`` / ``tokens_b`` hold the word labels,
            ``special_a`` / ``special_b`` their special-token flags.

        Raises
        ------
        ValueError
            If the explanations carry no word boundaries.
        """
        if self.level == "words":
            return self
        texts = [s for s in ("a", "b") if getattr(self, f"tokens_{s}") is not None]
        if any(getattr(self, f"words_{s}") is None for s in texts):
            raise ValueError(_NO_WORDS)
        words_a = self.words_a if "a" in texts else None
        words_b = self.words_b if "b" in texts else None
        out = self._as(type(self))
        if self._factors is not None:
            from .words import merge_tokens

            rows_a, rows_b = self._factor_words()
            out._factors = dataclasses.replace(
                self._factors,
                a=self._factors.a if words_a is None else _merge_factors(self._factors.a, rows_a, merge_tokens),
                b=self._factors.b if words_b is None else _merge_factors(self._factors.b, rows_b, merge_tokens))
            out._dense = None
        else:  # built from arrays: merge entry by entry
            flat = self._dense.reshape(-1, *self._dense.shape[-2:])
            merged = []
            for k in range(len(flat)):
                a, b = self._texts(k)
                wa = None if words_a is None else words_a[a]
                wb = None if words_b is None else words_b[b]
                rows = flat.shape[1] if wa is None else wa.n_tokens
                cols = flat.shape[2] if wb is None else wb.n_tokens
                merged.append(_merge_entry(flat[k][:rows, :cols], wa, wb))
            width_a = max(m.shape[0] for m in merged)
            width_b = max(m.shape[1] for m in merged)
            dense = np.zeros((len(merged), width_a, width_b))
            for k, m in enumerate(merged):
                dense[k, : m.shape[0], : m.shape[1]] = m
            out._dense = dense.reshape(*self._dense.shape[:-2], width_a, width_b)
        for side, words, n in (("a", words_a, out.n_groups[0]), ("b", words_b, out.n_groups[1])):
            if words is None:
                continue
            dim = getattr(self, f"pooling_{side}").sample_shape[-1]
            setattr(out, f"pooling_{side}", token_pooling(n, dim))
            setattr(out, f"tokens_{side}", [list(w.labels) for w in words])
            setattr(out, f"special_{side}", [list(w.special) for w in words])
        out.level = "words"
        return out

    def _factor_words(self) -> tuple[dict, dict]:
        """The Words of each factor row of both text sides (rows no entry uses are left out)."""
        rows_a, rows_b = {}, {}
        if self.pairs is None:
            if self.words_a is not None:
                rows_a = {int(r): self.words_a[k] for k, r in enumerate(self._ia)}
            if self.words_b is not None:
                rows_b = {int(r): self.words_b[k] for k, r in enumerate(self._ib)}
        else:
            for k, (i, j) in enumerate(self.pairs):
                if self.words_a is not None:
                    rows_a[int(self._ia[k])] = self.words_a[i]
                if self.words_b is not None:
                    rows_b[int(self._ib[k])] = self.words_b[j]
        return rows_a, rows_b


def _merge_factors(factors: torch.Tensor, words: dict, merge_tokens: Any) -> torch.Tensor:
    """Per-sample factors ``(N, h, T)`` summed over each row's words, zero-padded ``(N, h, W)``.

    Summed in float64, as the token-level products are formed: pieces of one word can
    carry large relevance of opposite signs, which float32 sums would round off."""
    width = max((w.n_words for w in words.values()), default=0)
    out = torch.zeros(factors.shape[0], factors.shape[1], width, dtype=torch.float64)
    for r, w in words.items():
        rows = factors[r, :, : w.n_tokens].double().numpy()
        out[r, :, : w.n_words] = torch.from_numpy(merge_tokens(rows, w, axis=-1))
    return out
