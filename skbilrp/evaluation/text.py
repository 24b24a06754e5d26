"""Faithfulness of token-pair explanations of sentence similarity: perturb tokens in ranked order.

The text counterpart of :mod:`skbilrp.evaluation.flipping`, with the same protocols,
orderings and scores (:func:`~skbilrp.evaluation.flipping_auc`,
:class:`~skbilrp.evaluation.FaithfulnessResults`); tokens take the place of patches.

An explanation of ``y = k(f(a), f(b))`` for two texts is a ``(T_a, T_b)`` matrix over
their tokens, as :meth:`skbilrp.TextKernel.explain_pairs` gives it: *all* tokens,
special tokens (``[CLS]``, ``[SEP]``, ``<s>``, a prompt) included, because they are
inputs of the model and BiLRP's conservation counts them. Special tokens are never
perturbed, though (a text without them is not an input the model was trained on), so
the protocols drop their rows and columns before ranking: only the ``p`` and ``q``
ordinary tokens of the two texts are ranked, and the curves run over those.

``"pairwise"`` flipping
    Token pairs by decreasing ``R[i, j]``; both tokens are perturbed, each the first
    time a pair holding it comes up; the curve is read at equally spaced numbers of
    perturbed tokens out of ``p + q``.
``"marginal"`` flipping
    Tokens of ``a`` by decreasing ``R.sum(1)`` with ``b`` intact, and of ``b`` by
    ``R.sum(0)`` with ``a`` intact; the mean of the two curves.

Perturbations, on token ids (the model re-embeds every variant, positions included,
and the curve is the encoder's own forward, i.e. ``SentenceTransformer.encode``):

``"mask"`` (main)
    The token is replaced by the tokenizer's mask token (``[MASK]``, ``<mask>``), or
    ``[UNK]`` for tokenizers without one: the length and positions stay.
``"delete"``
    The token is removed and the shorter sequence re-encoded.

The tracked similarity is the dot product of the sentence embeddings by default
(``kernel="linear"``, as for images). Difference from images: many sentence encoders
(all-MiniLM-L6-v2 among them) L2-normalise their embeddings, so there the dot product
*is* the cosine, and fully perturbed texts (all ``[MASK]``, or only the special tokens
left after deleting everything) still have a high similarity, since they look alike.
Every ordering shares both end points, so the area still compares orderings only.

Methods (see :class:`TextExplanationMethod`): :class:`BiLRPTextMethod` (CP-LRP or
AttnLRP), :class:`HessianProductTextMethod`, :class:`IntegratedJacobiansMethod`,
:class:`SaliencyOuterTextMethod`, :class:`RandomTextMethod`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional, Protocol, Union

import numpy as np
import torch
from torch import nn

from ..explainer import Explainer
from ..pairs import Kernel
from ..rules import TEXT_RULES, RuleSpec
from .flipping import (
    FaithfulnessResults,
    FlippingMode,
    _budgets,
    _kernel_rows,
    _marginal_ranks,
    _pairwise_ranks,
    flipping_auc,
)
from .integrated_jacobians import QuadratureRule, integrated_jacobian_factors, pair_products

__all__ = [
    "TextPerturbation",
    "TokenizedTexts",
    "tokenize_texts",
    "TextExplanationMethod",
    "BiLRPTextMethod",
    "HessianProductTextMethod",
    "IntegratedJacobiansMethod",
    "SaliencyOuterTextMethod",
    "RandomTextMethod",
    "default_text_methods",
    "explain_text_pairs",
    "text_flipping_curve",
    "evaluate_text",
]

TextPerturbation = Literal["mask", "delete"]

_MODES = ("pairwise", "marginal")
_PERTURBATIONS = ("mask", "delete")


# ------------------------------------------------------------------------- tokens


@dataclass
class TokenizedTexts:
    """Token ids of several texts, and which tokens are special (never perturbed).

    Attributes
    ----------
    ids : list of ndarray of int
        Token ids of every text, special tokens included, unpadded.
    special : list of ndarray of bool
        True on the tokens the tokenizer adds (``[CLS]``, ``[SEP]``, ``<s>`` ...) and
        on prompt tokens.
    """

    ids: list
    special: list

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: Sequence[int]) -> "TokenizedTexts":
        return TokenizedTexts([self.ids[r] for r in rows], [self.special[r] for r in rows])


def _special_ids(tokenizer: Any) -> set:
    """Ids of the tokens a tokenizer adds around a text (not ``[MASK]`` / ``[UNK]``,
    which may stand for real text)."""
    names = ("cls_token_id", "sep_token_id", "bos_token_id", "eos_token_id", "pad_token_id")
    return {int(v) for v in (getattr(tokenizer, n, None) for n in names) if v is not None}


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else 0


def _replacement_id(tokenizer: Any) -> int:
    for name in ("mask_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise ValueError("The tokenizer has neither a mask token nor an unknown token to replace perturbed tokens "
                     "with; use perturbation='delete'.")


def tokenize_texts(encoder: nn.Module, texts: Sequence[str], max_length: Optional[int] = None) -> TokenizedTexts:
    """Token ids of texts as the encoder tokenizes them, with their special-token flags.

    Parameters
    ----------
    encoder : SentenceEncoder
        Or any module with ``tokenize(texts, max_length)`` (returning ``input_ids``),
        ``tokenizer`` and optionally ``prompt_length``.
    texts : sequence of str
    max_length : int, optional
        Truncation length (default the encoder's).

    Returns
    -------
    TokenizedTexts
    """
    special_ids = _special_ids(encoder.tokenizer)
    prompt = int(getattr(encoder, "prompt_length", 0) or 0)
    ids = [np.asarray(s, dtype=np.int64) for s in encoder.tokenize(list(texts), max_length)["input_ids"]]
    special = [np.isin(s, list(special_ids)) | (np.arange(len(s)) < prompt) for s in ids]
    return TokenizedTexts(ids, special)


def _length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of similar length (little padding)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _padded(ids: Sequence[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in ids)
    out = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, s in enumerate(ids):
        out[row, : len(s)] = torch.as_tensor(s)
        mask[row, : len(s)] = 1
    return out, mask


def _embed(encoder: nn.Module, ids: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Explained input ``x`` ``(n, T, D)`` and attention mask of right-padded texts."""
    padded, mask = _padded(ids, _pad_id(encoder.tokenizer))
    return encoder.embed(padded, mask)


@torch.no_grad()
def _encode_ids(encoder: nn.Module, ids: Sequence[np.ndarray], batch_size: int) -> torch.Tensor:
    """Sentence embeddings ``(n, h)`` of token-id sequences, the encoder's own forward."""
    out: list = [None] * len(ids)
    for rows in _length_batches([len(s) for s in ids], batch_size):
        x, mask = _embed(encoder, [ids[r] for r in rows])
        for r, f in zip(rows, encoder(x, mask).flatten(1)):
            out[r] = f
    return torch.stack(out)


# ------------------------------------------------------------------------ methods

#: where gradient methods take their input on Hugging Face encoders (see HessianProductTextMethod)
FIRST_LAYER = "encoder.layer.0"


def _explained_at(encoder: nn.Module, at: Optional[str]) -> nn.Module:
    """The encoder, or a copy whose explained input is the input of module ``at``."""
    if at is None:
        return encoder
    from ..models.sentence import SentenceEncoder

    if not isinstance(encoder, SentenceEncoder):
        raise TypeError(f"at={at!r} needs a SentenceEncoder, got {type(encoder).__name__}; pass at=None.")
    return SentenceEncoder(encoder.transformer, encoder.tokenizer, list(encoder.head),
                           max_seq_length=encoder.max_seq_length, prompt=encoder.prompt, input_module=at)



class TextExplanationMethod(Protocol):
    """A way to explain sentence similarities on pairs of tokens.

    ``method(encoder, a, b, kernel=...)`` explains ``k(f(a[n]), f(b[n]))`` for every
    ``n`` (``a``, ``b``: :class:`TokenizedTexts` of the same length) and returns a list
    of ndarrays, the ``n``-th of shape ``(len(a.ids[n]), len(b.ids[n]))`` over all
    tokens, special ones included. Only the order of the entries of ordinary tokens
    matters for flipping.
    """

    def __call__(self, encoder: nn.Module, a: TokenizedTexts, b: TokenizedTexts, *,
                 kernel: Kernel) -> list[np.ndarray]: ...


class _FactorMethod:
    """A method whose pair matrix is ``M_a^T M_b`` of per-text factors ``(h, T)``."""

    batch_size: int = 16
    at: Optional[str] = None

    def _factors(self, encoder: nn.Module, texts: TokenizedTexts, x: torch.Tensor,
                 mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Factors ``(n, h, T)`` and features ``(n, h)`` of one padded batch."""
        raise NotImplementedError

    def _setup(self, encoder: nn.Module) -> None:
        """Per-call preparation (e.g. tracing the encoder once)."""

    def _side(self, encoder: nn.Module, texts: TokenizedTexts) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out: list = [None] * len(texts)
        for rows in _length_batches([len(s) for s in texts.ids], self.batch_size):
            part = texts.subset(rows)
            x, mask = _embed(encoder, part.ids)
            factors, feats = self._factors(encoder, part, x, mask)
            for k, r in enumerate(rows):
                out[r] = (factors[k, :, : len(part.ids[k])].detach(), feats[k].detach())
        return out

    def __call__(self, encoder: nn.Module, a: TokenizedTexts, b: TokenizedTexts, *,
                 kernel: Kernel) -> list[np.ndarray]:
        encoder = _explained_at(encoder, self.at)
        self._setup(encoder)
        side_a, side_b = self._side(encoder, a), self._side(encoder, b)
        return [pair_products(ma[None], mb[None], fa[None], fb[None], kernel)[0]
                for (ma, fa), (mb, fb) in zip(side_a, side_b)]


@dataclass
class BiLRPTextMethod(_FactorMethod):
    """BiLRP on the encoder (:class:`skbilrp.Explainer`, as :class:`skbilrp.TextKernel` uses it).

    Parameters
    ----------
    attention : {"cp", "attnlrp"}, default="cp"
        CP-LRP or AttnLRP through the attention layers.
    rules : str, Rule, mapping or callable, default="zero-mass"
        TextKernel's default: LRP-0 with the biases passed on by input size.
    batch_size : int, default=16
    """

    attention: str = "cp"
    rules: RuleSpec = TEXT_RULES
    batch_size: int = 16

    def _explainer(self, encoder: nn.Module) -> Explainer:
        return Explainer(encoder, rules=self.rules, channel_axis=-1, batch_size=self.batch_size,
                         attention=self.attention)

    def _setup(self, encoder: nn.Module) -> None:
        self._ex = self._explainer(encoder)  # traced once per call, reused for every batch

    def _factors(self, encoder: nn.Module, texts: TokenizedTexts, x: torch.Tensor,
                 mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rel = self._ex.relevance(x, {"attention_mask": mask})
        return rel.relevance, rel.features


@dataclass
class HessianProductTextMethod(BiLRPTextMethod):
    """Hessian×Product on the token embeddings, pooled per token, from plain autograd.

    ``HP[i, j] = Σ_{d, d'} x_{id} x'_{jd'} d²y / dx_{id} dx'_{jd'}``: for the dot product
    this is ``M_a^T M_b`` with ``M[k, i] = Σ_d x_{id} ∂f_k/∂x_{id}``, which is what
    ``Explainer(method="hp")`` computes (one Jacobian-vector product per token).

    Where: on :class:`~skbilrp.models.sentence.SentenceEncoder`'s own input (word +
    position + segment embeddings *before* the embedding LayerNorm) every per-token
    gradient × input is zero: LayerNorm is invariant to scaling its input, so
    ``Σ_d x_d ∂f/∂x_d = 0`` for each token (Euler), and HP would rank rounding noise.
    So by default the gradient methods take the input of the first transformer layer
    (the normalised embeddings, xsbert's attribution point for layer 0).

    Parameters
    ----------
    batch_size : int, default=16
    at : str or None, default="encoder.layer.0"
        Module of the Hugging Face model whose input is explained (None: the
        encoder's own input, e.g. for models without an embedding LayerNorm).
    """

    at: Optional[str] = FIRST_LAYER

    def _explainer(self, encoder: nn.Module) -> Explainer:
        return Explainer(encoder, method="hp", channel_axis=-1, batch_size=self.batch_size)


@dataclass
class IntegratedJacobiansMethod(_FactorMethod):
    """Integrated Jacobians (Moeller et al., EMNLP 2023), see :mod:`.integrated_jacobians`.

    The reference of a text is xsbert's: the same sequence with every ordinary token
    replaced by ``[PAD]`` (special tokens, positions and segments kept), embedded by
    the model. Special tokens therefore do not move along the path and get zero
    relevance.

    The path runs in the input of module ``at`` (default the first transformer layer,
    i.e. xsbert's layer 0: the normalised embeddings of the text and of the reference).

    Parameters
    ----------
    steps : int, default=8
        Quadrature intervals. Cost per text: ``steps × T`` Jacobian-vector products
        (``T`` ordinary tokens), each about three forward passes.
    rule : {"midpoint", "trapezoid", "right"}, default="midpoint"
        Quadrature rule ("right" is xsbert's Riemann sum).
    batch_size : int, default=16
    chunk : int, default=256
        Sequences per Jacobian-vector-product batch.
    at : str or None, default="encoder.layer.0"
        See :class:`HessianProductTextMethod`.
    """

    steps: int = 8
    rule: QuadratureRule = "midpoint"
    batch_size: int = 16
    chunk: int = 256
    at: Optional[str] = FIRST_LAYER

    def _factors(self, encoder: nn.Module, texts: TokenizedTexts, x: torch.Tensor,
                 mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pad = _pad_id(encoder.tokenizer)
        ref_ids = [np.where(s, ids, pad) for ids, s in zip(texts.ids, texts.special)]
        ref_padded, _ = _padded(ref_ids, pad)
        reference, _ = encoder.embed(ref_padded, mask)
        # padding positions: reference = x, so they never move (they are masked anyway)
        reference = torch.where(mask[..., None].bool(), reference, x)
        ij = integrated_jacobian_factors(encoder, x, reference, {"attention_mask": mask}, self.steps,
                                         self.rule, self.chunk)
        return ij.factors, ij.features


@dataclass
class SaliencyOuterTextMethod:
    """Rank-1 outer product of the two gradient × input maps of the similarity, per token.

    Parameters
    ----------
    batch_size : int, default=16
        Pairs per backward pass.
    at : str or None, default="encoder.layer.0"
        See :class:`HessianProductTextMethod`.
    """

    batch_size: int = 16
    at: Optional[str] = FIRST_LAYER

    def __call__(self, encoder: nn.Module, a: TokenizedTexts, b: TokenizedTexts, *,
                 kernel: Kernel) -> list[np.ndarray]:
        encoder = _explained_at(encoder, self.at)
        out: list = [None] * len(a)
        for rows in _length_batches([len(s) for s in a.ids], self.batch_size):
            xa, ma = _embed(encoder, [a.ids[r] for r in rows])
            xb, mb = _embed(encoder, [b.ids[r] for r in rows])
            xa, xb = xa.detach().requires_grad_(True), xb.detach().requires_grad_(True)
            with torch.enable_grad():
                y = _kernel_rows(encoder(xa, ma).flatten(1), encoder(xb, mb).flatten(1), kernel)
                ga, gb = torch.autograd.grad(y.sum(), (xa, xb))
            sa = (ga * xa).sum(-1).detach().double().numpy()
            sb = (gb * xb).sum(-1).detach().double().numpy()
            for k, r in enumerate(rows):
                out[r] = np.outer(sa[k, : len(a.ids[r])], sb[k, : len(b.ids[r])])
        return out


@dataclass
class RandomTextMethod:
    """Random token-pair relevance (a random ranking), seeded.

    Parameters
    ----------
    seed : int, default=0
    """

    seed: int = 0

    def __call__(self, encoder: nn.Module, a: TokenizedTexts, b: TokenizedTexts, *,
                 kernel: Kernel) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        return [rng.random((len(ia), len(ib))) for ia, ib in zip(a.ids, b.ids)]


def default_text_methods(ij_steps: int = 8, seed: int = 0) -> dict[str, TextExplanationMethod]:
    """The methods of the text faithfulness benchmark.

    Parameters
    ----------
    ij_steps : int, default=8
        Quadrature intervals of integrated Jacobians.
    seed : int, default=0
        Seed of the random ordering.

    Returns
    -------
    dict
        ``{"bilrp_cp", "bilrp_attnlrp", "hp", "ij", "saliency_outer", "random"}``.
    """
    return {
        "bilrp_cp": BiLRPTextMethod("cp"),
        "bilrp_attnlrp": BiLRPTextMethod("attnlrp"),
        "hp": HessianProductTextMethod(),
        "ij": IntegratedJacobiansMethod(ij_steps),
        "saliency_outer": SaliencyOuterTextMethod(),
        "random": RandomTextMethod(seed),
    }


# ----------------------------------------------------------------------- flipping


def _check_args(mode: str, perturbation: str, steps: int) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be 'pairwise' or 'marginal', got {mode!r}.")
    if perturbation not in _PERTURBATIONS:
        raise ValueError(f"perturbation must be 'mask' or 'delete', got {perturbation!r}.")
    if int(steps) < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}.")


def _flip_sets(rel: np.ndarray, mode: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Which ordinary tokens of each side are perturbed at every point, ``(steps + 1, p)``
    and ``(steps + 1, q)``, in the orders of :mod:`.flipping`."""
    p, q = rel.shape
    if mode == "pairwise":
        rank_a, rank_b = _pairwise_ranks(rel)
        budgets = _budgets(p + q, steps)[:, None]
        return rank_a[None] < budgets, rank_b[None] < budgets
    return (_marginal_ranks(rel.sum(1))[None] < _budgets(p, steps)[:, None],
            _marginal_ranks(rel.sum(0))[None] < _budgets(q, steps)[:, None])


def _variants(ids: np.ndarray, special: np.ndarray, flipped: np.ndarray, perturbation: str,
              replacement: int) -> list[np.ndarray]:
    """One id sequence per row of ``flipped`` (flags over the ordinary tokens)."""
    ordinary = np.flatnonzero(~special)
    out = []
    for row in flipped:
        hit = ordinary[row]
        if perturbation == "mask":
            v = ids.copy()
            v[hit] = replacement
        else:
            v = np.delete(ids, hit)
        out.append(v)
    return out


def _ordinary(rel: np.ndarray, special_a: np.ndarray, special_b: np.ndarray) -> np.ndarray:
    rel = np.asarray(rel, dtype=np.float64)
    if rel.shape != (len(special_a), len(special_b)):
        raise ValueError(f"relevance has shape {rel.shape} but the texts have {len(special_a)} and "
                         f"{len(special_b)} tokens; pass the explanation over all tokens, special ones included.")
    if special_a.all() or special_b.all():
        raise ValueError("A text has no ordinary (non-special) token to perturb.")
    return rel[~special_a][:, ~special_b]


class _FeatureCache:
    """Sentence embeddings of token-id sequences, each computed once, in length batches."""

    def __init__(self, encoder: nn.Module, batch_size: int) -> None:
        self.encoder, self.batch_size, self.store = encoder, batch_size, {}

    def __call__(self, seqs: Sequence[np.ndarray]) -> torch.Tensor:
        keys = [s.tobytes() for s in seqs]
        todo = {k: s for k, s in zip(keys, seqs) if k not in self.store}
        if todo:
            feats = _encode_ids(self.encoder, list(todo.values()), self.batch_size)
            self.store.update(zip(todo, feats))
        return torch.stack([self.store[k] for k in keys])


def _curve_variants(ids_a: np.ndarray, ids_b: np.ndarray, special_a: np.ndarray, special_b: np.ndarray,
                    rel: np.ndarray, mode: str, steps: int, perturbation: str,
                    replacement: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The ``steps + 1`` perturbed id sequences of each text along one curve."""
    flip_a, flip_b = _flip_sets(_ordinary(rel, special_a, special_b), mode, steps)
    return (_variants(ids_a, special_a, flip_a, perturbation, replacement),
            _variants(ids_b, special_b, flip_b, perturbation, replacement))


def _curve(features: _FeatureCache, variants: tuple[list, list], mode: str, kernel: Kernel) -> np.ndarray:
    fa, fb = features(variants[0]), features(variants[1])
    if mode == "pairwise":
        return _kernel_rows(fa, fb, kernel).double().numpy()
    # row 0 of each side is the intact text: the partner of the other side's curve
    curve_a = _kernel_rows(fa, fb[:1].expand_as(fb), kernel)
    curve_b = _kernel_rows(fa[:1].expand_as(fa), fb, kernel)
    return (0.5 * (curve_a + curve_b)).double().numpy()


def _as_ids(ids: Any, special: Any, tokenizer: Any) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(ids, dtype=np.int64)
    if special is None:
        special = np.isin(ids, list(_special_ids(tokenizer)))
    return ids, np.asarray(special, dtype=bool)


def text_flipping_curve(encoder: nn.Module, ids_a: Any, ids_b: Any, relevance: np.ndarray,
                        special_a: Optional[Any] = None, special_b: Optional[Any] = None,
                        mode: FlippingMode = "pairwise", steps: int = 10, perturbation: TextPerturbation = "mask",
                        kernel: Kernel = "linear", batch_size: int = 64) -> np.ndarray:
    """Similarity of two texts while tokens are perturbed in the order ``relevance`` ranks them.

    Parameters
    ----------
    encoder : SentenceEncoder
        Or any module with ``embed(input_ids, attention_mask) -> (x, mask)``,
        ``forward(x, attention_mask) -> (N, h)`` and ``tokenizer``.
    ids_a, ids_b : sequence of int
        Token ids of the two texts, special tokens included.
    relevance : ndarray of shape (len(ids_a), len(ids_b))
        Token-pair explanation over all tokens; rows and columns of special tokens
        are ignored (special tokens are never perturbed).
    special_a, special_b : sequence of bool, optional
        Special-token flags; default: the ids of the tokenizer's ``[CLS]``, ``[SEP]``,
        ``<s>``, ``</s>`` and ``[PAD]`` tokens.
    mode : {"pairwise", "marginal"}, default="pairwise"
        See the module docs.
    steps : int, default=10
        Intervals of the curve (points at ``round(k (p + q) / steps)`` perturbed tokens).
    perturbation : {"mask", "delete"}, default="mask"
        Replace a token by the mask token (``[UNK]`` without one), or delete it.
    kernel : {"linear", "cosine"}, default="linear"
    batch_size : int, default=64
        Texts per forward pass.

    Returns
    -------
    ndarray of shape (steps + 1,)
        ``curve[0] = k(a, b)``; ``curve[-1]``: every ordinary token perturbed.

    Raises
    ------
    ValueError
        For an unknown mode or perturbation, a relevance matrix that does not match
        the tokens, or a text without ordinary tokens.
    """
    _check_args(mode, perturbation, steps)
    ids_a, special_a = _as_ids(ids_a, special_a, encoder.tokenizer)
    ids_b, special_b = _as_ids(ids_b, special_b, encoder.tokenizer)
    replacement = _replacement_id(encoder.tokenizer) if perturbation == "mask" else -1
    variants = _curve_variants(ids_a, ids_b, special_a, special_b, relevance, mode, steps, perturbation,
                               replacement)
    return _curve(_FeatureCache(encoder, batch_size), variants, mode, kernel)


# --------------------------------------------------------------------- evaluation


def _tokenize_pairs(encoder: nn.Module, pairs: Sequence[tuple[str, str]],
                    max_length: Optional[int]) -> tuple[TokenizedTexts, TokenizedTexts]:
    pairs = list(pairs)
    if not pairs or any(len(p) != 2 or not all(isinstance(t, str) for t in p) for p in pairs):
        raise ValueError("pairs must be a non-empty sequence of (text_a, text_b) strings.")
    return (tokenize_texts(encoder, [a for a, _ in pairs], max_length),
            tokenize_texts(encoder, [b for _, b in pairs], max_length))


def explain_text_pairs(encoder: nn.Module, pairs: Sequence[tuple[str, str]],
                       methods: Mapping[str, TextExplanationMethod], kernel: Kernel = "linear",
                       max_length: Optional[int] = None) -> tuple[dict[str, list], dict[str, float]]:
    """Explain every text pair with every method, timing each method.

    Parameters
    ----------
    encoder, pairs, methods, kernel, max_length
        See :func:`evaluate_text`.

    Returns
    -------
    explanations : dict
        Method name → list of ``(T_a, T_b)`` ndarrays; pass it as ``methods`` to
        :func:`evaluate_text` to score the same explanations several ways.
    seconds : dict
        Method name → wall time of its explanations.
    """
    a, b = _tokenize_pairs(encoder, pairs, max_length)
    explanations, seconds = {}, {}
    for name, method in methods.items():
        start = time.perf_counter()
        explanations[name] = [np.asarray(r, dtype=np.float64) for r in method(encoder, a, b, kernel=kernel)]
        seconds[name] = time.perf_counter() - start
    return explanations, seconds


def evaluate_text(encoder: nn.Module, pairs: Sequence[tuple[str, str]],
                  methods: Mapping[str, Union[TextExplanationMethod, Sequence[np.ndarray]]],
                  kernel: Kernel = "linear", modes: Sequence[FlippingMode] = ("pairwise", "marginal"),
                  steps: int = 10, perturbation: TextPerturbation = "mask", batch_size: int = 64,
                  max_length: Optional[int] = None) -> FaithfulnessResults:
    """Token-flipping benchmark of several explanation methods on the same text pairs.

    Parameters
    ----------
    encoder : SentenceEncoder
        E.g. ``skbilrp.models.minilm()[0]`` or a fitted ``TextKernel().model_``.
    pairs : sequence of (str, str)
        Text pairs the model finds similar (the normalised area needs a positive
        starting similarity).
    methods : mapping of str to TextExplanationMethod or list of ndarray
        E.g. :func:`default_text_methods`; a list gives that method's explanations
        precomputed (see :func:`explain_text_pairs`).
    kernel : {"linear", "cosine"}, default="linear"
        Explained and tracked similarity.
    modes : sequence of {"pairwise", "marginal"}, default=("pairwise", "marginal")
    steps, perturbation, batch_size
        See :func:`text_flipping_curve`.
    max_length : int, optional
        Truncation length (default the encoder's).

    Returns
    -------
    FaithfulnessResults
        ``seconds`` holds the time of the explanations computed here.
    """
    for mode in modes:
        _check_args(mode, perturbation, steps)
    a, b = _tokenize_pairs(encoder, pairs, max_length)
    to_compute = {name: m for name, m in methods.items() if callable(m)}
    computed, seconds = explain_text_pairs(encoder, pairs, to_compute, kernel, max_length)
    explanations = {name: computed[name] if name in computed else list(m) for name, m in methods.items()}
    for name, rel in explanations.items():
        if len(rel) != len(a):
            raise ValueError(f"The explanations of {name!r} cover {len(rel)} pairs, not {len(a)}.")
    replacement = _replacement_id(encoder.tokenizer) if perturbation == "mask" else -1
    curves: dict = {mode: {name: [] for name in methods} for mode in modes}
    for n in range(len(a)):
        jobs = {(name, mode): _curve_variants(a.ids[n], b.ids[n], a.special[n], b.special[n], rel[n], mode,
                                              steps, perturbation, replacement)
                for name, rel in explanations.items() for mode in modes}
        features = _FeatureCache(encoder, batch_size)
        features([v for va, vb in jobs.values() for v in va + vb])  # one batched pass; variants recur
        for (name, mode), variants in jobs.items():
            curves[mode][name].append(_curve(features, variants, mode, kernel))
    curves = {mode: {name: np.stack(c) for name, c in per.items()} for mode, per in curves.items()}
    auc = {mode: {name: np.array([flipping_auc(row) for row in c]) for name, c in per.items()}
           for mode, per in curves.items()}
    return FaithfulnessResults(list(methods), list(modes), np.linspace(0, 1, steps + 1), curves, auc, seconds)
