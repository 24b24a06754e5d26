"""Where a layer's units sit on the model input: what ``Rule(bias="flat")`` spreads a
bias over. Plus the one division the operators share."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from .trace import UnsupportedModelError

__all__ = ["InputCells", "ProbeCells", "CellsError", "safe_divide"]


def safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` with zero where ``den`` is exactly zero."""
    zero = den == 0  # the inner where keeps 0/0 out of the quotient (and of its gradient)
    return torch.where(zero, 0.0, num / torch.where(zero, 1.0, den))


class InputCells:
    """Where the units of a layer sit on the model input, for ``Rule(bias="flat")``.

    :meth:`coverage` gives, per probe and unit, the fraction of the input region under
    the unit that the probe covers: the probe averaged over the input's channel axis
    and pooled (adaptive average) from the input's positions onto the layer's grid.
    Units without a grid (e.g. after global pooling), or on a grid of another rank
    than the input's positions, cover the whole input: its real positions, where
    ``real`` marks them (padding tokens, on which the output does not depend, take
    nothing). Over probes that partition the input the coverage sums to one, so a flat
    bias share conserves.

    Parameters
    ----------
    probe : torch.Tensor
        ``(K * N, *sample_shape)``, as pushed through the network.
    channel_axis : int, optional
        The channel axis of one input sample (``0`` for images, ``-1`` for token
        embeddings). None: assume the input is laid out like each layer's output,
        channels first for convolutions and last for Linear layers.
    real : torch.Tensor, optional
        ``(K * N, T)``: which token positions of a ``(T, D)`` sample are real (non-zero)
        rather than padding; None: all of them.
    """

    def __init__(self, probe: torch.Tensor, channel_axis: Optional[int] = None,
                 real: Optional[torch.Tensor] = None) -> None:
        self.probe = probe
        self.channel_axis = channel_axis
        self.real = real
        self._pooled: dict[tuple, torch.Tensor] = {}  # one pooling per grid and channel axis
        self._positions: dict[int, torch.Tensor] = {}  # probe averaged over a channel axis

    def coverage(self, like: torch.Tensor, channels_first: bool) -> torch.Tensor:
        """Coverage broadcastable to ``like`` ``(K*N, ...)``, a layer's output flow."""
        grid = tuple(like.shape[2:]) if channels_first else tuple(like.shape[1:-1])
        rank = self.probe.dim() - 1
        axis = self.channel_axis if self.channel_axis is not None else (0 if channels_first else -1)
        key = (grid, axis % rank if rank else 0)
        if key not in self._pooled:
            self._pooled[key] = self._pool(*key)
        cov = self._pooled[key]
        return cov.unsqueeze(1) if channels_first else cov.unsqueeze(-1)

    def _pool(self, grid: tuple, axis: int) -> torch.Tensor:
        p = self.probe
        if not 1 <= len(grid) <= 3 or p.dim() != len(grid) + 2:
            return self._whole().reshape((-1,) + (1,) * len(grid))
        positions = self._per_position(axis)
        if tuple(positions.shape[2:]) == grid:
            return positions[:, 0]
        pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[len(grid) - 1]
        return pool(positions, grid)[:, 0]

    def _per_position(self, axis: int) -> torch.Tensor:
        """The probe averaged over the input's channel axis ``axis``: ``(K*N, 1, *positions)``,
        computed once."""
        if axis not in self._positions:
            self._positions[axis] = self.probe.mean(1 + axis)[:, None]
        return self._positions[axis]

    def _whole(self) -> torch.Tensor:
        """Each probe's share of the whole input (of its real positions where ``real``
        marks them): ``(K*N,)``."""
        if self.real is None:
            return self.probe.flatten(1).mean(1)
        per_token = self._per_position(1)[:, 0]  # (K*N, T): real is set for (T, D) samples only
        real = self.real.to(per_token.dtype)
        return safe_divide((per_token * real).sum(1), real.sum(1))


class CellsError(UnsupportedModelError):
    """A bias-passing mode cannot place a constant on the input (re-raised naming the op)."""


class ProbeCells(InputCells):
    """:class:`InputCells` for flows with a leading probe axis:
    coverage of a flow ``(K, N, ...)`` (the batch axis right after the probe axis)."""

    def __init__(self, probe: torch.Tensor, channel_axis: Optional[int] = None,
                 real: Optional[torch.Tensor] = None, token_size: Any = None) -> None:
        """``real``: ``(N, T)``, the real token positions of each sample (see InputCells);
        ``token_size``: the token count of a token input as the graph writes it (a SymInt)."""
        k = probe.shape[0]
        super().__init__(probe.flatten(0, 1), channel_axis, None if real is None else real.repeat(k, 1))
        self.k, self.n = probe.shape[:2]
        #: whether image probes may be pushed on their crops (see :mod:`.windows`)
        self.windows = True
        self.token_size = token_size

    def coverage(self, like: torch.Tensor, channels_first: bool,  # type: ignore[override]
                 node: Optional[torch.fx.Node] = None) -> torch.Tensor:
        """Coverage broadcastable to a flow ``like`` ``(K, N, ...)`` of ``node``'s value. On
        a token input, units on a token axis of the value (:meth:`token_axes`, per-head
        ``(N, H, T, d)`` included) are covered by the probes of their token."""
        if like.dim() < 2 or like.shape[1] != self.n:
            raise CellsError(
                "placing a bias on the input (bias='flat', and under bias='share' or 'mass' the part of a "
                "bias larger than its inputs' sizes) needs the layer's batch axis first "
                f"(this layer's output has shape {tuple(like.shape[1:])} for a batch of {self.n}); "
                "use bias='absorb' for this layer.")
        axes = self.token_axes(node)
        if axes:
            return self.on_tokens(like.dim() - 1, axes[-1])
        meta = torch.empty((self.k * self.n,) + tuple(like.shape[2:]), device="meta")
        cov = super().coverage(meta, channels_first)
        return cov.unflatten(0, (self.k, self.n))

    def token_axes(self, node: Optional[torch.fx.Node]) -> Optional[tuple]:
        """The axes of ``node``'s value (batch first) whose size the graph writes as the
        token count of the input, ``()`` for none; None where the graph does not say (no
        token input; a token count fixed in the graph that more than one axis, or none,
        matches)."""
        size = self.token_size
        val = None if node is None else node.meta.get("val")
        if size is None or not isinstance(val, torch.Tensor):
            return None
        if not isinstance(size, torch.SymInt) or size.node.expr.is_number:
            # the graph fixed the token count: an axis of that size says it only where it is the one
            fixed = [i for i, n in enumerate(val.shape) if i and not isinstance(n, torch.SymInt) and n == int(size)]
            return tuple(fixed) if len(fixed) == 1 else None
        axes = tuple(i for i, n in enumerate(val.shape) if isinstance(n, torch.SymInt) and n.node.expr == size.node.expr)
        if 0 in axes:
            raise CellsError(f"a constant joins a relevance-carrying tensor of shape {tuple(val.shape)} whose first "
                             "axis is the tokens (sequence first), not the batch; use bias='absorb' for this layer")
        return axes

    def on_tokens(self, ndim: int, dim: int) -> torch.Tensor:
        """Each probe's share of each token, along axis ``dim`` of a value of ``ndim``
        axes (batch first): ``(K, N, 1, ..., T, ..., 1)``."""
        positions = self._per_position(self.channel_axis % 2)[:, 0]  # (K*N, T)
        shape = [self.k, self.n] + [1] * (ndim - 1)
        shape[1 + dim] = positions.shape[1]
        return positions.reshape(shape)

    def spread(self, const: torch.Tensor) -> torch.Tensor:
        """Flow of a constant with no position on the input (a class token): spread over
        the whole input, each probe getting the fraction of the input it covers."""
        if const.dim() < 1 or const.shape[0] != self.n:
            raise CellsError(
                f"a constant of shape {tuple(const.shape)} joins a relevance-carrying tensor "
                f"away from its batch axis (batch of {self.n}); use bias='absorb'.")
        share = self._whole().reshape(self.k, self.n)
        return const * share.reshape(share.shape + (1,) * (const.dim() - 1))
