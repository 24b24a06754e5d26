"""Pooling: which input positions are explained together.

Relevance is summed over the channel axis and over groups of positions (image
patches, superpixels, tokens) before the outer product; sum-pooling first is exact
and makes the pair relevance ``(A P)^T (A' P')`` small.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch

__all__ = ["Pooling", "PoolingSpec", "make_pooling", "check_pooling"]

#: None (every position its own group), an int or (ph, pw) patch size, or an integer
#: label array over the positions (superpixels, words, custom groups).
PoolingSpec = Union[None, int, tuple, np.ndarray, torch.Tensor]


class Pooling:
    """Groups of input positions, with channels summed.

    Parameters
    ----------
    labels : ndarray of int
        Group index ``0 .. n_groups - 1`` of every position (shape ``position_shape``).
    sample_shape : tuple of int
        Shape of one input sample.
    channel_axis : int or None
        Axis of ``sample_shape`` summed over (None: no channel axis).
    grid_shape : tuple of int, optional
        For patch pooling, the shape of the patch grid (groups in row-major order).

    Attributes
    ----------
    n_groups : int
    """

    def __init__(self, labels: np.ndarray, sample_shape: tuple, channel_axis: Optional[int],
                 grid_shape: Optional[tuple] = None) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.sample_shape = tuple(sample_shape)
        self.channel_axis = channel_axis
        self.grid_shape = grid_shape
        self.n_groups = int(self.labels.max()) + 1 if self.labels.size else 0

    @property
    def position_shape(self) -> tuple:
        """Shape of the positions (the sample shape without the channel axis)."""
        return self.labels.shape

    def _to_positions(self, rel: torch.Tensor) -> torch.Tensor:
        """``(B, *sample_shape)`` → ``(B, n_positions)``, channels summed."""
        if self.channel_axis is not None:
            rel = rel.sum(dim=1 + self.channel_axis)
        return rel.reshape(rel.shape[0], -1)

    def pool(self, rel: torch.Tensor) -> torch.Tensor:
        """Sum input relevance ``(B, *sample_shape)`` into groups, ``(B, n_groups)``."""
        pos = self._to_positions(rel)
        index = torch.as_tensor(self.labels.reshape(-1), device=pos.device)
        out = pos.new_zeros(pos.shape[0], self.n_groups)
        return out.index_add_(1, index, pos)

    def probes(self, start: int, stop: int, dtype: torch.dtype, device: Optional[torch.device] = None) -> torch.Tensor:
        """Indicator probes of groups ``start .. stop - 1``, shape ``(k, *sample_shape)``."""
        labels = torch.as_tensor(self.labels, device=device)
        groups = torch.arange(start, stop, device=device).reshape((-1,) + (1,) * labels.dim())
        mask = (labels[None] == groups).to(dtype)
        if self.channel_axis is not None:
            axis = 1 + self.channel_axis
            mask = mask.unsqueeze(axis).expand((-1,) + self.sample_shape)
        return mask

    def to_positions(self, values: np.ndarray) -> np.ndarray:
        """Spread per-group values ``(..., n_groups)`` back onto positions."""
        values = np.asarray(values)
        return values[..., self.labels]


def check_pooling(spec: PoolingSpec) -> None:
    """Refuse a pooling specification of the wrong type, before anything is computed.

    Parameters
    ----------
    spec : object
        What the user passed as ``pooling``.

    Raises
    ------
    ValueError
        Unless ``spec`` is None, an int, a non-empty tuple of ints, or an integer label
        array (numpy array, tensor or nested list). Whether a patch size is positive
        and fits the sample, or a label array has its shape, :func:`make_pooling` checks.
    """
    def is_int(v: object) -> bool:  # sizes are checked against the sample by make_pooling
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

    if spec is None or is_int(spec):
        return
    if isinstance(spec, tuple):
        if spec and all(is_int(s) for s in spec):
            return
        problem = "; a tuple must hold ints only, one patch side per spatial axis"
    elif isinstance(spec, (np.ndarray, torch.Tensor, list)):
        dtype = spec.dtype if hasattr(spec, "dtype") else np.asarray(spec).dtype
        integral = (not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool
                    if isinstance(dtype, torch.dtype) else np.issubdtype(dtype, np.integer))
        if integral:
            return
        problem = f"; a label array must hold integers, got dtype {dtype}"
    else:
        problem = ""
    shown = f"an array of shape {tuple(spec.shape)}" if hasattr(spec, "shape") else repr(spec)[:80]
    raise ValueError(
        f"pooling must be None (every position its own group), a positive int patch side (e.g. "
        f"pooling=4), a tuple of positive ints (e.g. pooling=(4, 2)), or an integer label array of "
        f"the sample's spatial shape (superpixels, words); got {shown} of type "
        f"{type(spec).__name__}{problem}."
    )


def make_pooling(spec: PoolingSpec, sample_shape: tuple, channel_axis: Optional[int] = 0) -> Pooling:
    """Build a :class:`Pooling` from a user specification.

    Parameters
    ----------
    spec : None, int, tuple or array
        None: every position is a group. int ``s`` or ``(ph, pw)``: patches of that
        size over the trailing positions (a partial last patch is kept). Array: an
        integer label per position (any values; they are renumbered in sorted order).
    sample_shape : tuple of int
        Shape of one input sample, e.g. ``(3, 224, 224)``.
    channel_axis : int or None, default=0
        Axis of ``sample_shape`` that holds channels (``-1`` for token embeddings
        ``(T, D)``); None when every entry is a position.

    Returns
    -------
    Pooling

    Raises
    ------
    ValueError
        If ``spec`` has the wrong type (see :func:`check_pooling`), or the patch size or
        label array does not fit the positions.
    """
    check_pooling(spec)
    sample_shape = tuple(int(s) for s in sample_shape)
    if channel_axis is not None:
        if len(sample_shape) < 2:
            channel_axis = None
        else:
            channel_axis = channel_axis % len(sample_shape)
    positions = tuple(s for i, s in enumerate(sample_shape) if i != channel_axis)
    if spec is None:
        return Pooling(np.arange(math.prod(positions)).reshape(positions), sample_shape, channel_axis)
    if isinstance(spec, (int, np.integer)) or (isinstance(spec, tuple) and all(isinstance(s, (int, np.integer)) for s in spec)):
        size = (spec,) * len(positions) if isinstance(spec, (int, np.integer)) else tuple(spec)
        if len(size) != len(positions) or any(s < 1 for s in size):
            raise ValueError(
                f"Patch size {spec!r} does not fit positions of shape {positions}; give a "
                f"positive int or a tuple of {len(positions)} positive ints."
            )
        grid = tuple(math.ceil(n / s) for n, s in zip(positions, size))
        coords = np.meshgrid(*[np.arange(n) // s for n, s in zip(positions, size)], indexing="ij")
        labels = np.ravel_multi_index(tuple(coords), grid)
        return Pooling(labels, sample_shape, channel_axis, grid_shape=grid)
    labels = spec.detach().cpu().numpy() if isinstance(spec, torch.Tensor) else np.asarray(spec)
    if labels.shape != positions:
        raise ValueError(
            f"The label array has shape {labels.shape} but the positions have shape {positions} "
            f"(input sample {sample_shape}, channel axis {channel_axis})."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"The label array must hold integers, got dtype {labels.dtype}.")
    _, inverse = np.unique(labels, return_inverse=True)
    return Pooling(inverse.reshape(positions), sample_shape, channel_axis)
