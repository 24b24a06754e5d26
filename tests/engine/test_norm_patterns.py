"""Normalisations recognised by what they compute (``skbilrp.engine.norms``).

Oracle: the fused layers (``nn.RMSNorm``, ``nn.LayerNorm``, whose entries are checked
against their detach-trick twins in test_op_entries.py). Each written-out spelling
computes the same function; with its statistic held constant it must give the same
relevance as the fused layer, probe by probe, under every bias mode where the two
rules coincide. A statistic that does not normalise its own input stays refused.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import close, probes
from torch import nn

from skbilrp.engine import ExportedNetwork
from skbilrp.engine.ops import UnsupportedOperatorError
from skbilrp.rules import Zero

warnings.filterwarnings("ignore", category=FutureWarning)

D, EPS = 6, 1e-5


class Spelled(nn.Module):
    """``Linear -> norm(h) -> Linear`` with the norm given as a function of ``(self, h)``."""

    def __init__(self, norm, fused: nn.Module) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.fused, self.norm = nn.Linear(D, D), nn.Linear(D, 3), fused, norm
        with torch.no_grad():
            self.fused.weight.uniform_(0.5, 1.5)
            if getattr(self.fused, "bias", None) is not None:
                self.fused.bias.normal_(0, 0.3)

    def forward(self, x):
        return self.b(self.norm(self, self.a(x)))


def _rsqrt_pow(m, h):  # LlamaRMSNorm's spelling, without its float32 cast
    return m.fused.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS))


def _div_sqrt_square(m, h):
    return h / torch.sqrt((h * h).sum(-1, keepdim=True) / D + EPS) * m.fused.weight


def _gemma(m, h):  # GemmaRMSNorm: (1 + w) with w = weight - 1
    w = m.fused.weight - 1
    return (h * torch.reciprocal(torch.sqrt(h.pow(2).mean(-1, keepdim=True) + EPS))) * (1.0 + w)


def _ln_var(m, h):
    mu = h.mean(-1, keepdim=True)
    return (h - mu) / torch.sqrt(h.var(-1, keepdim=True, unbiased=False) + EPS) * m.fused.weight + m.fused.bias


def _ln_centred_square(m, h):
    c = h - h.mean(-1, keepdim=True)
    return c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + EPS) * m.fused.weight + m.fused.bias


def _fused(m, h):
    return m.fused(h)


RMS = {"rsqrt_pow": _rsqrt_pow, "div_sqrt_square_sum": _div_sqrt_square, "gemma_one_plus_w": _gemma}
LN = {"var": _ln_var, "centred_square": _ln_centred_square}


def _flows(model, bias):
    x = torch.randn(2, 4, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rec = ExportedNetwork(model, Zero(bias=bias), torch.float64).record(x)
    return rec.push(probes(x, 3), -1), rec.features


@pytest.mark.parametrize("bias", ["absorb", "share", "flat"])
def test_written_out_rms_norms_equal_the_fused_one(bias):
    fused = Spelled(_fused, nn.RMSNorm(D, eps=EPS)).double()
    want, feats = _flows(fused, bias)
    for name, spelling in RMS.items():
        ours, ours_feats = _flows(Spelled(spelling, nn.RMSNorm(D, eps=EPS)).double(), bias)
        close(ours_feats, feats)
        close(ours, want, k=64)


@pytest.mark.parametrize("bias", ["absorb", "flat"])  # share: see docs/operators.rst
def test_written_out_layer_norms_equal_the_fused_one(bias):
    fused = Spelled(_fused, nn.LayerNorm(D, eps=EPS)).double()
    want, feats = _flows(fused, bias)
    for name, spelling in LN.items():
        ours, ours_feats = _flows(Spelled(spelling, nn.LayerNorm(D, eps=EPS)).double(), bias)
        close(ours_feats, feats)
        close(ours, want, k=64)


def test_normalize_and_a_norm_quotient_hold_the_norm_constant():
    """``F.normalize`` and ``h / h.norm()`` against ``h / norm(h).detach()`` (plain jvp).
    The export's own IR spells ``F.normalize`` with ``expand_as(h)`` and a cast back may
    read ``type_as(h)``: ``h`` gives only a shape or dtype there."""
    x = torch.randn(2, 4, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for f in (lambda m, h: F.normalize(h, dim=-1), lambda m, h: h / h.norm(dim=-1, keepdim=True),
              lambda m, h: h / h.norm(dim=-1, keepdim=True).type_as(h)):
        model = Spelled(f, nn.RMSNorm(D)).double().eval()
        p = probes(x, 3)
        ours = ExportedNetwork(model, "zero", torch.float64).record(x).push(p, -1).reshape(3, 2, -1)

        def twin(inp):
            h = model.a(inp)
            return model.b(h / torch.linalg.vector_norm(h.detach(), dim=-1, keepdim=True)).flatten(1)

        refs = torch.stack([torch.func.jvp(twin, (x,), (pk * x,))[1] for pk in p.reshape(3, *x.shape)])
        close(ours, refs.detach())


@pytest.mark.parametrize("name, spelling, op", [
    ("cubic", lambda m, h: h * h.pow(2).mean(-1, keepdim=True), "pow.Tensor_Scalar"),
    ("statistic_added", lambda m, h: h + torch.rsqrt(h.pow(2).mean(-1, keepdim=True)), "pow.Tensor_Scalar"),
    ("over_the_batch", lambda m, h: h / h.norm(), "linalg_vector_norm.default"),
])
def test_a_statistic_that_does_not_normalise_is_refused(name, spelling, op):
    model = Spelled(spelling, nn.RMSNorm(D)).double()
    x = torch.randn(2, 4, D, dtype=torch.float64)
    with pytest.raises(UnsupportedOperatorError, match=rf"aten\.{op}.*module '<root>'"):
        ExportedNetwork(model, "zero", torch.float64).record(x).push(probes(x, 1), -1)
