"""Texts: the encoder behind :class:`~skbilrp.TextKernel`.

Samples are strings; the explained input is the sentence encoder's input embeddings
``(T, D)`` with the attention mask as context (see
:class:`~skbilrp.models.sentence.SentenceEncoder`); the groups are tokens, labelled by
their strings and merged into words on demand. Texts are sorted by length across a
whole call and padded per batch; padding tokens get exactly zero relevance and are
trimmed from each text's factors.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..engine.network import reused_copy
from ..explainer import Explainer
from ..models.sentence import minilm, sentence_encoder
from ..relevance import SampleRelevance
from ..rules import TEXT_RULES, RuleSpec
from ..token_pairs import token_pooling
from .base import Encoder, Part, check_positive_int, explanation_dtype

__all__ = ["TextEncoder"]


class TextEncoder(Encoder):
    """Strings through a sentence encoder; groups are tokens (or words).

    Parameters
    ----------
    model : None, SentenceTransformer, Hugging Face model, SentenceEncoder, str or path
        None: all-MiniLM-L6-v2 (offline); see :class:`~skbilrp.TextKernel`.
    tokenizer : None, str or transformers tokenizer
    rules, attention, max_length, batch_size
        See :class:`~skbilrp.TextKernel`.
    owner_name : str, default="TextKernel"
        The estimator named in messages.
    """

    modality = "texts"

    def __init__(self, model: Union[None, str, os.PathLike, nn.Module] = None, tokenizer: Any = None,
                 rules: RuleSpec = TEXT_RULES, attention: str = "cp", max_length: Optional[int] = None,
                 batch_size: int = 32, owner_name: str = "TextKernel") -> None:
        super().__init__()
        if model is not None and not isinstance(model, (str, os.PathLike, nn.Module)):
            raise TypeError(
                "model must be None (all-MiniLM-L6-v2), a SentenceTransformer, a Hugging Face model, a "
                f"SentenceEncoder or a local model folder, got {type(model).__name__}."
            )
        if max_length is not None:  # None: the model's
            check_positive_int("max_length", max_length)
        self.model = model
        self.tokenizer = tokenizer
        self.rules = rules
        self.attention = attention
        self.max_length = max_length
        self.batch_size = batch_size
        self.owner_name = owner_name
        self.verbose = False
        self._explainer: Optional[Explainer] = None

    def __getstate__(self) -> dict:
        # the traced explainer is rebuilt on demand rather than pickled
        state = self.__dict__.copy()
        state["_explainer"] = None
        return state

    # ------------------------------------------------------------------ samples

    def validate(self, X: Any, reset: bool = False, owner: Any = None) -> np.ndarray:
        """Texts as a 1-D object array of str (a one-column DataFrame stands for its column)."""
        name = self.owner_name
        if isinstance(X, (str, bytes)):
            raise TypeError("X must be a list of texts, got a single string; wrap it as [text].")
        if hasattr(X, "columns") and hasattr(X, "iloc"):  # a pandas DataFrame, without importing pandas
            if X.shape[1] != 1:
                raise ValueError(
                    f"X is a DataFrame with {X.shape[1]} columns {list(X.columns)[:5]}, but {name} "
                    "takes one text per sample; pass the text column, X['column'] (or a "
                    "one-column DataFrame X[['column']])."
                )
            X = X.iloc[:, 0]
        if hasattr(X, "tocsr") and hasattr(X, "nnz"):  # scipy.sparse, e.g. a vectorizer's output
            raise TypeError(
                f"X is a scipy.sparse matrix of shape {X.shape}, but {name} takes the texts "
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
        if reset and owner is not None:
            owner.n_features_in_ = 1
        out = np.empty(len(texts), dtype=object)
        out[:] = texts
        return out

    def holds(self, x: np.ndarray) -> bool:
        return x.dtype == object

    def load(self) -> dict:
        source = self.model if self.model is not None else minilm()[0]
        # an unchanged model keeps its copy, and the graphs exported for it
        self.model_ = reused_copy(self.model, lambda: sentence_encoder(source, self.tokenizer),
                                  self.tokenizer)
        self.tokenizer_ = self.model_.tokenizer
        if self.tokenizer_ is None:
            raise ValueError("The model has no tokenizer to split texts with; pass tokenizer= (a "
                             "transformers tokenizer or the local folder it was saved to).")
        self.max_length_ = int(self.max_length) if self.max_length is not None else self.model_.max_seq_length
        special = self.tokenizer_.num_special_tokens_to_add() + self.model_.prompt_length
        if self.max_length_ <= special:
            raise ValueError(f"max_length must leave room for a word after the {special} special and prompt "
                             f"tokens (> {special}), got {self.max_length_}.")
        self._forget_explainer()
        return {"model_": self.model_, "tokenizer_": self.tokenizer_, "max_length_": self.max_length_}

    def chunk_size(self, batch_size: int, n_samples: int) -> int:
        # one task for the whole call: the length sort then pads as little as it can
        return max(1, n_samples)

    # ------------------------------------------------------------------- tokens

    def encode(self, texts: Sequence[str]) -> Any:
        """The tokenizer's encoding of texts, truncated to ``max_length_`` (unpadded)."""
        return self.model_.tokenize(list(texts), self.max_length_)

    def tokens(self, texts: Sequence[str]) -> list[list[str]]:
        """The tokens each text is explained on (special tokens included)."""
        return [self.tokenizer_.convert_ids_to_tokens(ids) for ids in self.encode(texts)["input_ids"]]

    def words(self, texts: Sequence[str]) -> list:
        """The :class:`~skbilrp.words.Words` of each text."""
        from ..words import words_from_encoding

        texts = list(texts)
        enc = self.encode(texts)
        prompt = self.model_.prompt
        return [words_from_encoding(enc, i, prompt + t, self.tokenizer_.convert_ids_to_tokens(ids))
                for i, (t, ids) in enumerate(zip(texts, enc["input_ids"]))]

    def labels(self, x: np.ndarray) -> dict:
        texts = list(x)
        return {"tokens": self.tokens(texts), "words": self.words(texts)}

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

    # ------------------------------------------------------------------ features

    def feature_task(self) -> Callable[[np.ndarray], tuple]:
        return self._features

    def feature_dim(self) -> Optional[int]:
        return int(self._features(np.array(["a"], dtype=object))[0].shape[1])

    @torch.no_grad()
    def _features(self, texts: np.ndarray) -> tuple[np.ndarray]:
        parts: list = [None] * len(texts)
        for idx, x, mask in self._batches(self.encode(texts)):
            for row, f in zip(idx, self.model_(x, mask).double().numpy()):
                parts[row] = f
        return (np.stack(parts),)

    # ----------------------------------------------------------------- relevance

    @property
    def explainer(self) -> Explainer:
        if self._explainer is None:
            self._explainer = Explainer(self.model_, rules=self.rules, channel_axis=-1, batch_size=int(self.batch_size),
                                        dtype=explanation_dtype(self.model_), verbose=self.verbose,
                                        attention=self.attention)
        self._explainer.computer.verbose = self.verbose  # read live: set_params(verbose=) needs no rebuild
        return self._explainer

    def relevance_task(self, verbose: bool = False) -> Callable[[np.ndarray], tuple]:
        self.verbose = bool(verbose)
        return self._relevance

    def _relevance(self, texts: np.ndarray) -> tuple[list, np.ndarray]:
        """``(relevance (h, T_i) per text, features (n, h))``, real tokens only."""
        enc = self.encode(texts)
        rels: list = [None] * len(texts)
        feats: list = [None] * len(texts)
        for idx, x, mask in self._batches(enc):
            rel = self.explainer.relevance(x, {"attention_mask": mask})
            if not torch.isfinite(rel.relevance).all():
                bad = sorted(int(idx[r]) for r in range(len(idx)) if not torch.isfinite(rel.relevance[r]).all())
                raise ValueError(
                    f"The relevance of texts {bad} is not finite (NaN or inf): a relevance operator of the "
                    f"engine overflowed on this model with attention={self.attention!r} and rules={self.rules!r}; "
                    "try attention='cp' or rules='zero', and report the model if that does not help."
                )
            for row, i in enumerate(idx):  # real tokens, on either padding side
                rels[i] = rel.relevance[row][:, mask[row].bool()].numpy()
                feats[i] = rel.features[row].numpy()
        return rels, np.stack(feats)

    def stack(self, parts: list[Part], sample_shape: tuple) -> SampleRelevance:
        """Per-text relevance zero-padded to the longest text (padding adds nothing)."""
        width = max(r.shape[1] for r, _ in parts)
        rel = np.zeros((len(parts), parts[0][0].shape[0], width), dtype=parts[0][0].dtype)
        for n, (r, _) in enumerate(parts):
            rel[n, :, : r.shape[1]] = r
        feats = np.stack([f for _, f in parts])
        return SampleRelevance(torch.from_numpy(rel), torch.from_numpy(feats), token_pooling(width, self.model_.input_dim))

    def _forget_explainer(self) -> None:
        self._explainer = None

