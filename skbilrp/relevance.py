"""Per-sample relevance ``A(x) P``: every feature's LRP map, pooled into groups.

Two ways to get the ``h × p`` matrix of one sample, both exact:

* forward mode: one probe per group of positions through the linearised relevance
  network (``p`` passes);
* reverse mode: one seed per feature, autograd through the same linear map
  (``h`` passes, each a forward and a backward).

``mode="auto"`` takes the cheaper. ``method="hp"`` computes the Hessian×Product
baseline instead, with plain autograd on the model (gradient × input per feature).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from .engine import ExportedNetwork, ExportedRecording
from .pooling import Pooling, PoolingSpec, make_pooling

__all__ = ["SampleRelevance", "RelevanceComputer", "as_tensor"]

Mode = Literal["auto", "forward", "reverse"]
Method = Literal["bilrp", "hp"]

#: cost of one reverse-mode seed relative to one forward-mode probe (forward + backward)
REVERSE_COST = 2.0


@dataclass
class SampleRelevance:
    """Pooled first-order relevance of every feature, for a batch of samples.

    Attributes
    ----------
    relevance : torch.Tensor
        ``(N, h, p)``: ``relevance[n, m, g]`` is how much group ``g`` of sample ``n``
        contributes to feature ``m``; sums over ``g`` to ``features[n, m]`` when the
        rules conserve.
    features : torch.Tensor
        ``(N, h)``, the feature vectors ``phi(x)``.
    pooling : Pooling
        The groups of input positions.
    """

    relevance: torch.Tensor
    features: torch.Tensor
    pooling: Pooling

    def __len__(self) -> int:
        return self.relevance.shape[0]

    def __getitem__(self, index: Any) -> "SampleRelevance":
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1)
        return SampleRelevance(self.relevance[index], self.features[index], self.pooling)

    @staticmethod
    def concatenate(parts: "list[SampleRelevance]") -> "SampleRelevance":
        """Join the batches of several results computed with the same pooling."""
        return SampleRelevance(
            torch.cat([p.relevance for p in parts]),
            torch.cat([p.features for p in parts]),
            parts[0].pooling,
        )


def as_tensor(x: Any, dtype: torch.dtype, name: str = "x") -> torch.Tensor:
    """Validate a batch of inputs and return it as a float tensor.

    Raises
    ------
    TypeError
        For non-numeric data (strings, objects, complex numbers).
    ValueError
        For an empty batch, a batch without a batch axis, or NaN/inf values.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise TypeError(
                f"{name} must hold real numbers, got dtype {arr.dtype}; convert it with "
                "np.asarray(x, dtype=np.float32)."
            )
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.bool, torch.uint8, torch.int8,
                                                                    torch.int16, torch.int32, torch.int64)):
        raise TypeError(f"{name} must hold real numbers, got {t.dtype}.")
    if t.dim() < 2:
        raise ValueError(
            f"{name} must be a batch with the samples along the first axis, got shape "
            f"{tuple(t.shape)}; use x[None] for a single sample."
        )
    if t.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(t.shape)}); pass at least one sample.")
    t = t.to(dtype)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values; clean or impute them first.")
    return t


class RelevanceComputer:
    """Computes :class:`SampleRelevance` for batches, in chunks that fit memory.

    Parameters
    ----------
    network : ExportedNetwork
        The prepared model.
    pooling : None, int, tuple or array
        See :func:`skbilrp.pooling.make_pooling`.
    channel_axis : int or None, default=0
        Channel axis of one input sample (``-1`` for token embeddings).
    mode : {"auto", "forward", "reverse"}
        How to compute BiLRP relevance; "auto" picks the cheaper of ``p`` probes and
        ``h`` seeds.
    method : {"bilrp", "hp"}
        "hp": Hessian×Product (gradient × input) with plain autograd instead.
    batch_size : int
        Samples recorded at once.
    max_memory : int
        Budget in bytes for the probe batches of one chunk.
    verbose : bool
        Show progress bars.
    """

    def __init__(self, network: ExportedNetwork, pooling: PoolingSpec = None, channel_axis: Optional[int] = 0,
                 mode: Mode = "auto", method: Method = "bilrp", batch_size: int = 16,
                 max_memory: int = 2**30, verbose: bool = False) -> None:
        if mode not in ("auto", "forward", "reverse"):
            raise ValueError(f"mode must be 'auto', 'forward' or 'reverse', got {mode!r}.")
        if method not in ("bilrp", "hp"):
            raise ValueError(f"method must be 'bilrp' or 'hp', got {method!r}.")
        if int(batch_size) < 1 or int(max_memory) < 1:
            raise ValueError("batch_size and max_memory must be positive.")
        self.network = network
        self.pooling_spec = pooling
        self.channel_axis = channel_axis
        self.mode = mode
        self.method = method
        self.batch_size = int(batch_size)
        self.max_memory = int(max_memory)
        self.verbose = verbose
        reference = next(iter(network.model.parameters()), torch.zeros(()))
        self.dtype, self.device = reference.dtype, reference.device

    def pooling_for(self, sample_shape: tuple) -> Pooling:
        """The pooling for inputs of one sample shape."""
        return make_pooling(self.pooling_spec, sample_shape, self.channel_axis)

    def __call__(self, x: Any, context: Optional[dict] = None) -> SampleRelevance:
        """Relevance of a batch ``x`` (array or tensor, samples first)."""
        x = as_tensor(x, self.dtype).to(self.device)  # everything runs on the model's device
        pooling = self.pooling_for(tuple(x.shape[1:]))
        context = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in (context or {}).items()}
        parts = []
        starts = range(0, x.shape[0], self.batch_size)
        for start in tqdm(starts, desc="relevance", disable=not self.verbose or len(starts) < 2, leave=False):
            sl = slice(start, start + self.batch_size)
            ctx = {k: (v[sl] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == x.shape[0] else v)
                   for k, v in context.items()}
            parts.append(self._batch(x[sl], ctx, pooling))
        return SampleRelevance.concatenate(parts)

    def _batch(self, x: torch.Tensor, context: dict, pooling: Pooling) -> SampleRelevance:
        if self.method == "hp":
            return self._hessian_product(x, context, pooling)
        try:
            rec = self.network.record(x, context)
        except (RuntimeError, IndexError) as err:
            raise ValueError(
                f"Input of shape {tuple(x.shape)} does not fit the model: {err}"
            ) from err
        mode = self._mode(rec.features.shape[1], pooling.n_groups)
        rel = self._forward(rec, pooling) if mode == "forward" else self._reverse(rec, pooling)
        return SampleRelevance(rel, rec.features, pooling)

    def _mode(self, h: int, p: int) -> str:
        """The requested mode, or the cheaper one: ``p`` probes against ``h`` seeds."""
        if self.mode != "auto":
            return self.mode
        return "forward" if p <= REVERSE_COST * h else "reverse"

    def _chunk(self, n: int, per_probe_numel: int, total: int) -> int:
        itemsize = torch.finfo(self.dtype).bits // 8
        return int(max(1, min(total, self.max_memory // max(1, n * per_probe_numel * itemsize))))

    @torch.no_grad()
    def _forward(self, rec: ExportedRecording, pooling: Pooling) -> torch.Tensor:
        n, h = rec.features.shape
        p = pooling.n_groups
        out = rec.features.new_empty(n, h, p)
        step = self._chunk(n, 3 * rec.max_numel, p)
        for g0 in range(0, p, step):
            g1 = min(p, g0 + step)
            probe = pooling.probes(g0, g1, self.dtype, rec.x.device)
            probe = probe[:, None].expand(g1 - g0, n, *probe.shape[1:]).reshape(-1, *probe.shape[1:])
            flow = rec.push(probe, self.channel_axis).reshape(g1 - g0, n, h)
            out[:, :, g0:g1] = flow.permute(1, 2, 0)
        return out

    def _reverse(self, rec: ExportedRecording, pooling: Pooling) -> torch.Tensor:
        n, h = rec.features.shape
        out = rec.features.new_empty(n, h, pooling.n_groups)
        step = self._chunk(n, 2 * rec.total_numel, h)
        sample_shape = tuple(rec.x.shape[1:])
        for m0 in range(0, h, step):
            m1 = min(h, m0 + step)
            k = m1 - m0
            probe = rec.x.new_zeros((k * n,) + sample_shape, requires_grad=True)
            with torch.enable_grad():
                flow = rec.push(probe, self.channel_axis).reshape(k, n, h)
                seed = torch.zeros_like(flow)
                seed[torch.arange(k), :, torch.arange(m0, m1)] = 1
                (grad,) = torch.autograd.grad(flow, probe, seed)
            out[:, m0:m1, :] = pooling.pool(grad).reshape(k, n, -1).permute(1, 0, 2)
        return out

    def _hessian_product(self, x: torch.Tensor, context: dict, pooling: Pooling) -> SampleRelevance:
        """Gradient × input of every feature with plain autodiff on the model.

        The pair products of these maps are ``x_i x'_j d²<phi(x), phi(x')>/dx_i dx'_j``.
        Forward mode: one Jacobian-vector product per group, tangent ``x ⊙ 1_g``;
        reverse mode: one backward pass per feature.
        """
        model = self.network.model

        def phi(inputs: torch.Tensor, ctx: dict) -> torch.Tensor:
            try:
                return model(inputs, **ctx).flatten(1)
            except (RuntimeError, IndexError) as err:
                raise ValueError(f"Input of shape {tuple(x.shape)} does not fit the model: {err}") from err

        with torch.no_grad():
            feats = phi(x, context)
        n, h = feats.shape
        out = feats.new_empty(n, h, pooling.n_groups)
        if self._mode(h, pooling.n_groups) == "forward":
            # no activation sizes without a recording: budget a generous 64 inputs per probe
            step = self._chunk(n, 64 * x[0].numel(), pooling.n_groups)
            for g0 in range(0, pooling.n_groups, step):
                g1 = min(pooling.n_groups, g0 + step)
                k = g1 - g0
                probe = pooling.probes(g0, g1, self.dtype, x.device)
                tangent = (probe[:, None] * x[None]).reshape(-1, *x.shape[1:])
                # forward AD rejects expanded (memory-sharing) primals: repeat, not expand
                ctx = {key: _repeat(v, k, n) for key, v in context.items()}
                # the CPU flash-attention kernel has no forward-mode derivative; math SDPA is the same function
                with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
                    _, jvp = torch.func.jvp(lambda inp: phi(inp, ctx), (_repeat(x, k, n),), (tangent,))
                out[:, :, g0:g1] = jvp.reshape(k, n, h).permute(1, 2, 0)
            return SampleRelevance(out, feats, pooling)
        x = x.clone().requires_grad_(True)
        with torch.enable_grad():
            feats_g = phi(x, context)
            for m in range(h):
                (grad,) = torch.autograd.grad(feats_g[:, m].sum(), x, retain_graph=m < h - 1)
                out[:, m] = pooling.pool(grad * x)
        return SampleRelevance(out.detach(), feats, pooling)


def _repeat(value: Any, k: int, n: int) -> Any:
    """Repeat a per-sample tensor ``(N, ...)`` for ``k`` probes (probe-major); others as is."""
    if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == n:
        return value.repeat(k, *([1] * (value.dim() - 1)))
    return value
