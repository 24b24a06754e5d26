"""AttnLRP (``attention="attnlrp"``) against its detach-trick twin.

The twin computes the same values, written so that plain autograd's gradient × input
*is* the rule: products of two carrying tensors as ``(a @ b.detach() + a.detach() @ b)
/ 2`` (uniform), LayerNorm with a detached standard deviation, GELU as ``z * (f(z) /
z).detach()``, softmax left alone (AttnLRP's softmax rule is its Jacobian). With LRP-0
(biases absorbed) the engine's flow of the probe ``e_i`` must be column ``i`` of the
twin's Jacobian times ``x_i``. No skbilrp code is in the oracle.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import close, gradient_times_input_flows, indicator_probes, probes
from torch import nn

from skbilrp import Explainer
from skbilrp.engine import ExportedNetwork

warnings.filterwarnings("ignore", category=FutureWarning)


def uniform(a, b, twin):
    return 0.5 * (a @ b.detach() + a.detach() @ b) if twin else a @ b


class Block(nn.Module):
    """A pre-norm transformer block on tokens ``(N, T, D)``, timm-style attention."""

    def __init__(self, d=8, heads=2, twin=False, sdpa=False):
        super().__init__()
        self.twin, self.sdpa, self.heads = twin, sdpa, heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def norm(self, m, x):
        if not self.twin:
            return m(x)
        mu = x.mean(-1, keepdim=True)
        std = torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + m.eps).detach()
        return (x - mu) / std * m.weight + m.bias

    def gelu(self, z):
        return z * (F.gelu(z) / z).detach() if self.twin else F.gelu(z)

    def forward(self, x):
        n, t, d = x.shape
        qkv = self.qkv(self.norm(self.norm1, x)).reshape(n, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.sdpa:
            a = F.scaled_dot_product_attention(q, k, v)
        else:
            s = uniform(q, k.transpose(-2, -1), self.twin) * (d // self.heads) ** -0.5
            a = uniform(s.softmax(-1), v, self.twin)
        x = x + self.proj(a.transpose(1, 2).reshape(n, t, d))
        x = x + self.fc2(self.gelu(self.fc1(self.norm(self.norm2, x))))
        return x.mean(1)


def build(**kw):
    torch.manual_seed(0)
    m = Block(**kw).double().eval()
    with torch.no_grad():
        for ln in (m.norm1, m.norm2):
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.normal_(0, 0.3)
    return m


@pytest.mark.parametrize("sdpa", [False, True], ids=["handwritten", "sdpa"])
def test_attnlrp_equals_gradient_times_input_of_its_twin(sdpa):
    model, twin = build(sdpa=sdpa), build(twin=True)
    x = torch.randn(2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    rec = ExportedNetwork(model, "zero", torch.float64, attention="attnlrp").record(x)
    with torch.no_grad():
        close(rec.features, twin(x), k=16)
    h = rec.features.shape[1]
    flows = rec.push(indicator_probes(x, None), None).reshape(-1, 2, h)  # (T*D, N, h)
    close(flows, gradient_times_input_flows(twin, x), k=1e4)


def test_attnlrp_differs_from_cp_lrp_and_is_reverse_mode_consistent():
    model = build()
    x = torch.randn(2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    cp = ExportedNetwork(model, "zero", torch.float64).record(x)
    at = ExportedNetwork(model, "zero", torch.float64, attention="attnlrp").record(x)
    p = probes(x, 3)
    assert float((cp.push(p, None) - at.push(p, None)).abs().max()) > 1e-3
    seed = torch.randn(3 * 2, at.features.shape[1], dtype=torch.float64)
    q = p.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((at.push(q, None) * seed).sum(), q)
    lhs = float((at.push(p, None) * seed).sum())
    assert abs(lhs - float((grad * p).sum())) <= 1e3 * torch.finfo(torch.float64).eps * float(
        (at.push(p, None) * seed).abs().sum())


def test_softmax_option_is_validated():
    with pytest.raises(ValueError, match="attnlrp"):
        ExportedNetwork(build(), attention="attn")
    assert Explainer(build(), attention="attnlrp").network.attention == "attnlrp"


class Masked(nn.Module):
    """Attention over padded tokens: an additive mask of ``finfo.min`` (Hugging Face's
    convention) or a boolean one (SDPA), then the mean of the outputs."""

    def __init__(self, block, kind):
        super().__init__()
        self.block, self.kind = block, kind

    def forward(self, x, keep):
        n, t, d = x.shape
        b = self.block
        qkv = b.qkv(b.norm1(x)).reshape(n, t, 3, b.heads, d // b.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        mask = keep[:, None, None, :]
        if self.kind == "sdpa":
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif self.kind == "sdpa_float":  # -inf where masked
            add = torch.zeros(mask.shape, dtype=x.dtype).masked_fill(~mask, float("-inf"))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=add)
        else:
            add = (~mask).to(x.dtype) * torch.finfo(x.dtype).min
            a = ((q @ k.transpose(-2, -1)) * (d // b.heads) ** -0.5 + add).softmax(-1) @ v
        return b.proj(a.transpose(1, 2).reshape(n, t, d)).mean(1)


@pytest.mark.parametrize("kind", ["additive", "sdpa", "sdpa_float"])
@pytest.mark.parametrize("bias", ["share", "mass", "flat"])
def test_attnlrp_softmax_bias_follows_the_bias_mode(kind, bias):
    """Under a bias-passing mode the softmax's bias ``s - J z`` is passed on too, so the
    flows of probes that partition the input sum to the features (conservation); under
    "absorb" exactly that bias is missing. Masked keys pass nothing and stay finite."""
    from skbilrp.rules import Zero

    model = Masked(build(), kind).double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    keep = torch.tensor([[True] * 5, [True, True, True, False, False]])
    probe = indicator_probes(x, None)
    k = probe.shape[0] // 2
    for mode, conserves in ((bias, True), ("absorb", False)):
        rec = ExportedNetwork(model, Zero(bias=mode), torch.float64, attention="attnlrp").record(x, {"keep": keep})
        flows = rec.push(probe, None).reshape(k, 2, -1)
        assert torch.isfinite(flows).all()
        seed = torch.randn(flows.shape, dtype=torch.float64)
        q = probe.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad((rec.push(q, None).reshape(k, 2, -1) * seed).sum(), q)
        assert torch.isfinite(grad).all()  # reverse mode too: no 0 * inf at masked entries
        err = float((flows.sum(0) - rec.features).abs().max() / rec.features.abs().max())
        if conserves:
            assert err <= 1e3 * torch.finfo(torch.float64).eps, err
        else:
            assert err > 1e-3  # the softmax bias (and the Linear biases) absorbed
