"""The two towers of a Hugging Face dual encoder (CLIP, SigLIP) as explainable models.

A dual encoder embeds images and texts in one space. :func:`image_tower` returns its
image side, everything ``get_image_features`` runs, as an ``nn.Module``
``pixel_values -> image embedding`` holding the model's own submodules (no copy), so
that the engine traces the model's own code. :func:`text_tower` returns its text side
as a function of the token embeddings (below).

A CLIP or SigLIP text tower takes token ids only (its ``forward`` has no
``inputs_embeds``), adds its position embeddings itself and pools a position that it
finds from the ids. :class:`TextTower` runs the model's own tower on explained token
embeddings ``x`` ``(N, T, D)`` (the rows of its token-embedding table): a pre-hook on
the tower's ``embeddings`` module hands ``x`` to it as ``inputs_embeds``, so the
position embeddings are added by the model as shipped, a constant added to the
explained input (docs/operators.rst, "Constants"). Its output is what
``get_text_features`` returns for each text:

* CLIP (``CLIPModel``, ``CLIPTextModel``, ``CLIPTextModelWithProjection``): the final
  hidden state at the end-of-text token, then ``text_projection`` where the model has
  one. Which position that is, the installed transformers decides from the ids (the
  first ``eos_token_id``, or with the legacy ``eos_token_id == 2`` the largest id);
  :meth:`TextTower.embed` applies that rule to the real ids and ends the attention mask
  there. Attention is causal, so the tokens after the pooled one cannot change the
  features: masked out, they get no relevance. (A text whose pooled token is not its
  last is refused by :class:`~skbilrp.models.sentence.SentenceEncoder`, which would
  show those tokens.)
* SigLIP (``SiglipModel``, ``SiglipTextModel``): the final hidden state at the last
  position, then the tower's ``head``, of the text padded to ``max_length`` and
  attending to its padding, as SigLIP is trained (big_vision, open_clip) and as
  ``get_text_features(input_ids=tokenizer(texts, padding="max_length").input_ids)``
  computes it. The padding is part of the explained input (:attr:`TextTower.pads`):
  the pooled position is a padding token of every shorter text. A tokenizer that also
  returns an attention mask makes ``get_text_features(**inputs)`` mask the padding
  out of attention instead: a different function, not this one.

Both families number positions from the first token: texts are padded on the right.
:func:`text_tower` builds one from a model (a copy; the model is never modified).
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import nn

__all__ = ["ImageTower", "image_tower", "is_image_tower", "TextTower", "text_tower", "is_text_tower"]

#: model class -> (kind, path of the text tower in it, path of the projection or None)
_TOWERS = {
    "CLIPModel": ("clip", "text_model", "text_projection"),
    "CLIPTextModelWithProjection": ("clip", "text_model", "text_projection"),
    "CLIPTextModel": ("clip", "", None),
    "SiglipModel": ("siglip", "text_model", None),
    "SiglipTextModel": ("siglip", "", None),
}


def is_text_tower(model: Any) -> bool:
    """Whether ``model`` is a CLIP or SigLIP model whose text side :class:`TextTower` explains."""
    return tower_kind(model) is not None


def tower_kind(model: Any) -> Optional[str]:
    """``"clip"`` or ``"siglip"`` for a model whose text side :class:`TextTower` explains, else None."""
    entry = _TOWERS.get(type(model).__name__) if isinstance(model, nn.Module) else None
    return entry[0] if entry else None


class TextTower(nn.Module):
    """``get_text_features`` of a CLIP or SigLIP model, as a function of token embeddings.

    ``forward(x, attention_mask)`` maps the token embeddings ``x`` ``(N, T, D)`` (from
    :meth:`embed`) and the mask ``(N, T)`` (1 on real tokens, padded on the right) to
    the text features ``(N, P)``: the final hidden state of the last real token of the
    mask, through the model's projection. See the module documentation for the token
    each family pools.

    Parameters
    ----------
    model : CLIPModel, CLIPTextModel, CLIPTextModelWithProjection, SiglipModel or SiglipTextModel
        Its text tower and projection are deep-copied (a two-tower model's vision side
        is not); the model is never modified.

    Attributes
    ----------
    tower : CLIPTextModel or SiglipTextModel
        The copy that runs (a pre-hook on its ``embeddings`` feeds it ``x``).
    projection : nn.Linear
        CLIP's ``text_projection``, SigLIP's ``head``, or ``nn.Identity`` (a
        ``CLIPTextModel``'s features are its pooled state).
    kind : {"clip", "siglip"}
    pads : bool
        Whether texts are padded to the model's length and the padding explained as
        tokens (SigLIP); the mask is then 1 on the padding too.

    Raises
    ------
    TypeError
        If ``model`` is no CLIP or SigLIP model.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        name = type(model).__name__
        if name not in _TOWERS:
            raise TypeError(f"TextTower explains the text side of {sorted(_TOWERS)}, got {name}.")
        self.kind, path, projection = _TOWERS[name]
        self.tower = copy.deepcopy(model.get_submodule(path))
        self.projection = copy.deepcopy(model.get_submodule(projection)) if projection else (
            self.tower.head if self.kind == "siglip" else nn.Identity())
        self._substitute: Optional[torch.Tensor] = None
        self.pads = self.kind == "siglip"
        self.tower.embeddings.register_forward_pre_hook(self._inputs_embeds, with_kwargs=True)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def config(self) -> Any:
        """The text tower's config."""
        return self.tower.config

    def get_input_embeddings(self) -> nn.Embedding:
        """The token-embedding table whose rows are the explained input."""
        return self.tower.embeddings.token_embedding

    def _inputs_embeds(self, module: nn.Module, args: tuple, kwargs: dict) -> Optional[tuple]:
        """Pre-hook on the tower's embeddings: ``x`` as its ``inputs_embeds`` (the model
        then adds the position embeddings to it, as it does to its own lookup)."""
        if self._substitute is None:
            return None
        x, self._substitute = self._substitute, None
        return args, {**kwargs, "inputs_embeds": x}

    @torch.no_grad()
    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The explained input ``x`` (token embeddings) and the mask ``forward`` takes.

        CLIP: the mask ends at the token the installed transformers pools (see the
        module documentation); SigLIP: unchanged.

        Parameters
        ----------
        input_ids : LongTensor of shape (N, T)
        attention_mask : tensor of shape (N, T)
            1 on real tokens, padded on the right.

        Returns
        -------
        x : Tensor (N, T, D)
        attention_mask : LongTensor (N, T)
        """
        ids, mask = torch.as_tensor(input_ids), torch.as_tensor(attention_mask).long()
        if self.kind == "clip":
            end = self._clip_pooled_position(ids)
            mask = mask * (torch.arange(ids.shape[1], device=ids.device)[None] <= end[:, None])
        return self.get_input_embeddings()(ids), mask

    def check_texts(self, input_ids: list) -> None:
        """Refuse texts (unpadded id lists) whose pooled token is not their last: CLIP's
        rule picks the first end-of-text token (or the largest id), and the tokens after
        it never reach the features.

        Raises
        ------
        ValueError
            Naming the text, the position its rule pools and the fix.
        """
        if self.kind != "clip":
            return
        for i, ids in enumerate(input_ids):
            at = int(self._clip_pooled_position(torch.as_tensor(ids)[None])[0])
            if at != len(ids) - 1:
                raise ValueError(
                    f"Text {i} has its end-of-text token {self.config.eos_token_id} before its end: "
                    f"{type(self.tower).__name__} pools token {at} of its {len(ids)} (rule of eos_token_id="
                    f"{self.config.eos_token_id}), so the tokens after it never reach the features; remove the "
                    "end-of-text token from the text.")

    def _clip_pooled_position(self, ids: torch.Tensor) -> torch.Tensor:
        """The position CLIPTextModel pools, by its rule on the ids (transformers >= 4.31)."""
        eos = self.config.eos_token_id
        if eos == 2:  # configs saved before transformers' PR #24773: the largest id is the end of text
            return ids.to(torch.int).argmax(dim=-1)
        return (ids.to(torch.int) == eos).int().argmax(dim=-1)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text features ``(N, P)`` of token embeddings ``x`` ``(N, T, D)``."""
        # placeholder ids: the tower needs ids for their shape; x replaces their lookup
        ids = torch.zeros(attention_mask.shape, dtype=torch.long, device=x.device)
        self._substitute = x
        try:
            hidden = self.tower(input_ids=ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
        finally:
            self._substitute = None
        t = hidden.shape[1]
        last = t - 1 - attention_mask.flip(1).to(torch.int).argmax(1)
        pick = (torch.arange(t, device=x.device)[None] == last[:, None]).to(hidden.dtype)[..., None]
        # projected on every token, then the pooled one kept (exact zeros elsewhere): the
        # projection's bias sits on the pooled token, so bias="flat" places it there and
        # not over the whole input, padding included
        return (self.projection(hidden) * pick).sum(1)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


def text_tower(model: nn.Module) -> TextTower:
    """The text side of a CLIP or SigLIP model as the function the engine explains.

    Parameters
    ----------
    model : CLIPModel, CLIPTextModel, CLIPTextModelWithProjection, SiglipModel or SiglipTextModel
        Copied, never modified.

    Returns
    -------
    TextTower
        ``tower(*tower.embed(ids, mask))`` equals ``get_text_features`` of each text
        tokenized on its own, for a batch padded on the right.

    Examples
    --------
    >>> tower = text_tower(clip_model)                             # doctest: +SKIP
    >>> x, mask = tower.embed(batch["input_ids"], batch["attention_mask"])  # doctest: +SKIP
    >>> features = tower(x, mask)                                  # doctest: +SKIP
    """
    if not is_text_tower(model):
        raise TypeError(f"text_tower explains the text side of {sorted(_TOWERS)}, got {type(model).__name__}.")
    return TextTower(model)


#: (class names, whether the image embedding is the pooled output's projection)
_FAMILIES = {("CLIPModel", "CLIPVisionModelWithProjection"): True, ("SiglipModel", "SiglipVisionModel"): False}


class ImageTower(nn.Module):
    """``pixel_values`` ``(N, C, H, W)`` → the image embedding ``(N, h)`` of a dual encoder.

    The vision transformer's ``pooler_output``, then ``projection`` if any: CLIP's
    class token after ``post_layernorm``, through ``visual_projection``; SigLIP's
    attention-pooling head (a learned probe attending over the patches, then
    LayerNorm and MLP with a residual), which its ``get_image_features`` returns as it
    is. Build one with :func:`image_tower`.

    Parameters
    ----------
    vision_model : nn.Module
        The Hugging Face vision model, called as ``vision_model(pixel_values=x)``.
    projection : nn.Module, optional
        Applied to ``pooler_output`` (CLIP's ``visual_projection``).
    """

    def __init__(self, vision_model: nn.Module, projection: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.projection = projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The image embeddings ``(N, h)`` of ``pixel_values`` ``(N, C, H, W)``."""
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return pooled if self.projection is None else self.projection(pooled)


def _family(model: Any) -> Optional[bool]:
    """Whether the model's image embedding is projected (CLIP) or not (SigLIP); None if
    it is neither, by its class or a base class (subclasses keep the layout)."""
    names = {cls.__name__ for cls in type(model).__mro__}
    for family, projected in _FAMILIES.items():
        if names & set(family):
            return projected
    return None


def is_image_tower(model: Any) -> bool:
    """Whether ``model`` is a CLIP or SigLIP model whose image side :func:`image_tower` explains."""
    return isinstance(model, nn.Module) and _family(model) is not None


def image_tower(model: nn.Module) -> ImageTower:
    """The image side of a Hugging Face CLIP or SigLIP model: exactly ``get_image_features``.

    ``image_tower(model)(pixel_values)`` equals
    ``model.get_image_features(pixel_values=pixel_values).pooler_output`` for ``CLIPModel``,
    ``CLIPVisionModelWithProjection`` (its ``image_embeds``), ``SiglipModel`` and
    ``SiglipVisionModel`` (its ``pooler_output``). The tower holds the model's own
    submodules: their parameters are shared, not copied, and nothing of the model is
    changed (its training mode included; the explainer evaluates its own copy).
    ``logit_scale`` (and SigLIP's ``logit_bias``) belong to the loss, not to the
    embedding, and are left out. Inputs are the model's ``pixel_values``, as its image
    processor makes them (resized and normalised).

    Parameters
    ----------
    model : transformers CLIPModel, CLIPVisionModelWithProjection, SiglipModel or SiglipVisionModel

    Returns
    -------
    ImageTower

    Raises
    ------
    TypeError
        For another model, naming the classes taken.
    ValueError
        For a SigLIP vision config without the pooling head (``vision_use_head=False``):
        such a model returns no image embedding.

    Examples
    --------
    >>> from transformers import CLIPModel                       # doctest: +SKIP
    >>> from skbilrp import Explainer                             # doctest: +SKIP
    >>> model = CLIPModel.from_pretrained(folder, local_files_only=True)  # doctest: +SKIP
    >>> tower = image_tower(model)                                # doctest: +SKIP
    >>> ex = Explainer(tower, rules="zero-share", pooling=model.config.vision_config.patch_size)  # doctest: +SKIP
    """
    projected = _family(model)
    if projected is None or not isinstance(model, nn.Module):
        taken = ", ".join(name for family in _FAMILIES for name in family)
        raise TypeError(f"image_tower takes a Hugging Face {taken}, got {type(model).__name__}. For another "
                        "vision model, wrap it in an nn.Module whose forward maps pixel_values to the embedding.")
    if projected:
        return ImageTower(model.vision_model, model.visual_projection)
    config = getattr(model.config, "vision_config", model.config)
    if not getattr(config, "vision_use_head", True):
        raise ValueError(f"This {type(model).__name__} has no attention-pooling head (vision_use_head=False), so "
                         "get_image_features returns no embedding; explain a wrapper that pools last_hidden_state "
                         "as your application does.")
    # SiglipModel holds a SiglipVisionModel; a SiglipVisionModel is itself the transformer
    return ImageTower(getattr(model, "vision_model", model))
