"""The image tower of a Hugging Face dual encoder (CLIP, SigLIP) as an explainable model.

A dual encoder embeds images and texts in one space; its image side is everything
``get_image_features`` runs. :func:`image_tower` returns that side as an ``nn.Module``
``pixel_values -> image embedding``, so that the engine (:class:`~skbilrp.Explainer`,
:class:`~skbilrp.DeepKernel`) traces the model's own code: nothing is re-implemented,
and the tower holds the model's own submodules (no copy).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

__all__ = ["ImageTower", "image_tower"]

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
