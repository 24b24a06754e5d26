"""Small modules that skbilrp models use and whose relevance rules skbilrp knows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["Normalize"]


class Normalize(nn.Module):
    """Per-channel input normalisation ``(x - mean) / std`` as a module.

    Putting it inside the feature extractor lets users feed raw images in
    ``[0, 1]``. Relevance passes through it position by position (it mixes nothing),
    so the z^B rule of the next layer sees the bounds of the normalised input.

    Parameters
    ----------
    mean, std : sequence of float
        One value per channel.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if mean_t.shape != std_t.shape:
            raise ValueError("Normalize needs as many mean values as std values.")
        if torch.any(std_t <= 0):
            raise ValueError("Normalize needs std > 0 for every channel.")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
