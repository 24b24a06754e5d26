"""Shared checks for the export engine's tests (no skbilrp relevance code in oracles)."""

from __future__ import annotations

import numpy as np
import torch

EPS64 = float(np.finfo(np.float64).eps)


def close(actual: torch.Tensor, expected: torch.Tensor, terms: torch.Tensor | None = None, k: float = 1e3):
    """Agreement to ``k * eps64 * max|terms|`` (terms: what cancels; default expected)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = float((expected if terms is None else terms).abs().max())
    assert scale > 0, "degenerate comparison: all zero"
    err = float((actual - expected).abs().max())
    assert err <= k * EPS64 * scale, f"max error {err:.3g} vs scale {scale:.3g}"


def probes(x: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((k * x.shape[0],) + tuple(x.shape[1:]), generator=g, dtype=x.dtype)


def indicator_probes(x: torch.Tensor, channel_axis: int | None) -> torch.Tensor:
    """One probe per position (channels together), summing to one: (P*N, ...)."""
    shape = tuple(x.shape[1:])
    n = x.shape[0]
    if channel_axis is None:
        eye = torch.eye(int(np.prod(shape)), dtype=x.dtype).reshape(-1, *shape)
    else:
        ax = channel_axis % len(shape)
        pos = shape[:ax] + shape[ax + 1:]
        eye = torch.eye(int(np.prod(pos)), dtype=x.dtype).reshape(-1, *pos).unsqueeze(1 + ax).expand(-1, *shape)
    return eye.repeat_interleave(n, 0)


def gradient_times_input_flows(twin, x: torch.Tensor) -> torch.Tensor:
    """The oracle of indicator-probe flows: per input entry of each sample, the twin's
    gradient × input of every feature, ``(T*D, N, h)`` (plain autograd)."""
    n = x.shape[0]
    jac = torch.autograd.functional.jacobian(twin, x)  # (N, h, N, *sample)
    idx = torch.arange(n)
    jac = jac[idx, :, idx].reshape(n, jac.shape[1], -1)  # (N, h, T*D)
    return (jac * x.reshape(n, 1, -1)).permute(2, 0, 1)
