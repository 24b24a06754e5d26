"""``bias="mass"`` in a transformer block, against its detach-trick twin.

Under ``"mass"`` a unit passes its bias on to the inputs it reads in proportion to their
sizes ``|a_j|``. Written as ``b * sum(sign(a) * a) / sum(|a|).detach()`` (its value is
``b``), plain autograd's gradient × input of that term is exactly that split, so a twin
with every bias and LayerNorm shift written this way has gradient × input equal to the
rule, as long as no bias exceeds the sizes of its unit's inputs (agreement shows that
the bound is not in play). Under AttnLRP the softmax's bias ``s - J z`` is shared by
its contributions ``|J| |z|`` as under ``"share"`` (sizes of logits alone would hand it
to keys of negligible probability): the twin writes that split the same way, bound and
remainder (spread over the input) included. CP-LRP and AttnLRP. No skbilrp code is in the
oracle; hand-computed single layers and explicit matrices are in
``tests/test_bias_share.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import close, gradient_times_input_flows, indicator_probes
from torch import nn

from skbilrp import Explainer
from skbilrp.engine import ExportedNetwork


def mass(a: torch.Tensor) -> torch.Tensor:
    """1 in value; its gradient × input splits 1 over ``a`` in proportion to ``|a_j|``."""
    return (torch.sign(a) * a).sum(-1, keepdim=True) / a.abs().sum(-1, keepdim=True).detach()


class Block(nn.Module):
    """Pre-norm attention and MLP on tokens ``(N, T, D)``, mean-pooled; ``twin``: the
    same values written so that gradient × input is LRP-0 with ``bias="mass"``."""

    def __init__(self, attention: str, twin: bool, d: int = 8, heads: int = 2, pool: bool = True) -> None:
        super().__init__()
        self.attention, self.twin, self.heads, self.pool = attention, twin, heads, pool
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def linear(self, m: nn.Linear, a: torch.Tensor) -> torch.Tensor:
        return F.linear(a, m.weight) + m.bias * mass(a) if self.twin else m(a)

    def norm(self, m: nn.LayerNorm, a: torch.Tensor) -> torch.Tensor:
        if not self.twin:
            return m(a)
        inv = torch.rsqrt(a.detach().var(-1, unbiased=False, keepdim=True) + m.eps)
        return (a - a.mean(-1, keepdim=True)) * inv * m.weight + m.bias * mass(a)

    def softmax(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x``: the block's input, where the part of a bias over its bound goes."""
        if not self.twin:
            return z.softmax(-1)
        if self.attention == "cp":
            return z.detach().softmax(-1)
        # AttnLRP: its Jacobian, plus the bias b = s - J z shared by |J| |z|, bounded: the
        # part of b over the sizes is spread evenly over the input (probes of single
        # entries, no channel axis: a key has no token to go to)
        s = z.softmax(-1)
        bias = (s - s * (z - (s * z).sum(-1, keepdim=True))).detach()
        eye = torch.eye(z.shape[-1], dtype=z.dtype)
        jabs = (s[..., :, None] * (eye - s[..., None, :]).abs()).detach()  # |J_kj| per row
        size = (jabs * z.abs()[..., None, :]).sum(-1).detach()
        share = bias / torch.maximum(size, bias.abs())
        shared = share * (jabs * (torch.sign(z) * z)[..., None, :]).sum(-1)  # value share * size
        spread = (x / x.detach()).mean((1, 2))[:, None, None, None]  # value 1, over the input
        return s + (shared - share * size) + (bias - share * size) * (spread - 1)

    def product(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.twin and self.attention == "attnlrp":
            return 0.5 * (a @ b.detach() + a.detach() @ b)
        return a @ b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.linear(self.qkv, self.norm(self.norm1, x)).reshape(n, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        p = self.softmax(self.product(q, k.transpose(-2, -1)) * (d // self.heads) ** -0.5, x)
        x = x + self.linear(self.proj, self.product(p, v).transpose(1, 2).reshape(n, t, d))
        h = self.linear(self.fc1, self.norm(self.norm2, x))
        g = h * (F.gelu(h) / h).detach() if self.twin else F.gelu(h)
        x = x + self.linear(self.fc2, g)
        return x.mean(1) if self.pool else x


def build(attention: str, twin: bool) -> Block:
    torch.manual_seed(0)
    m = Block(attention, twin).double().eval()
    with torch.no_grad():
        m.qkv.weight.mul_(4.0)  # logits of a few units: the softmax bias stays below their sizes
        for ln in (m.norm1, m.norm2):
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.normal_(0, 0.3)
    return m


@pytest.mark.parametrize("attention", ["cp", "attnlrp"])
def test_mass_equals_gradient_times_input_of_its_twin(attention):
    model, twin = build(attention, False), build(attention, True)
    x = torch.randn(2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    rec = ExportedNetwork(model, "zero-mass", torch.float64, attention=attention).record(x)
    with torch.no_grad():
        close(rec.features, twin(x), k=16)
    h = rec.features.shape[1]
    flows = rec.push(indicator_probes(x, None), None).reshape(-1, 2, h)  # (T*D, N, h)
    expected = gradient_times_input_flows(twin, x)
    close(flows, expected, k=1e4)
    close(flows.sum(0), rec.features, terms=flows.abs().sum(0), k=1e3)  # and so it conserves


def test_mass_differs_from_share_where_weights_differ():
    """The two modes agree on the similarity and differ in how it is split."""
    model = build("cp", False)
    x = torch.randn(2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    probe = indicator_probes(x, -1)
    flows = {mode: ExportedNetwork(model, f"zero-{mode}", torch.float64).record(x).push(probe, None)
             for mode in ("mass", "share")}
    torch.testing.assert_close(flows["mass"].reshape(5, 2, -1).sum(0), flows["share"].reshape(5, 2, -1).sum(0),
                               rtol=0, atol=1e-12)
    assert float((flows["mass"] - flows["share"]).abs().max()) > 1e-3


def test_attnlrp_does_not_jump_where_a_row_saturates():
    """Rows of these two blocks come within rounding of a probability of one: float32
    rounds their top probability to 1, float64 does not. A row is lone (the values take
    all of it) by its count of non-zero probabilities, not by ``p == 1``, so both dtypes
    apply the same rules and agree to float32 round-off."""
    torch.manual_seed(0)
    blocks = [Block("attnlrp", False, pool=False) for _ in range(2)]
    with torch.no_grad():
        for b in blocks:
            b.qkv.weight.mul_(4.5)
    model = nn.Sequential(*blocks, _Mean()).double().eval()
    x = torch.randn(3, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for rules in ("zero-mass", "zero-share"):
        runs = {dtype: Explainer(model, rules=rules, channel_axis=-1, dtype=dtype, attention="attnlrp")
                .relevance(x.to(dtype)).relevance.double() for dtype in (torch.float32, torch.float64)}
        scale = float(runs[torch.float64].abs().max())
        err = float((runs[torch.float32] - runs[torch.float64]).abs().max())
        assert err <= 1e3 * torch.finfo(torch.float32).eps * scale, (rules, err, scale)


class _Mean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)


class _FiniteMask(nn.Module):
    """The block's attention with its last two keys masked by a finite constant (-100):
    their probabilities are tiny but not zero, and the output does not depend on them."""

    def __init__(self) -> None:
        super().__init__()
        self.block = build("attnlrp", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, (n, t, d) = self.block, x.shape
        qkv = b.qkv(b.norm1(x)).reshape(n, t, 3, b.heads, d // b.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        masked = torch.arange(t) >= t - 2
        z = (q @ k.transpose(-2, -1)) * (d // b.heads) ** -0.5 + masked.to(x.dtype) * -100.0
        return b.proj((z.softmax(-1) @ v).transpose(1, 2).reshape(n, t, d))[:, :-2].mean(1)


@pytest.mark.parametrize("rules", ["zero-mass", "zero-share"])
def test_keys_masked_by_a_finite_constant_take_no_softmax_bias(rules):
    model = _FiniteMask().double().eval()
    x = torch.randn(2, 6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    moved = x.clone()
    moved[:, -2:] += 1.0
    with torch.no_grad():
        assert torch.equal(model(moved), model(x))  # the case this test is about
    rel = Explainer(model, rules=rules, channel_axis=-1, dtype=torch.float64, attention="attnlrp").relevance(x)
    on_padding = float(rel.relevance[:, :, -2:].abs().max())
    assert on_padding <= 1e-12 * float(rel.relevance.abs().max()), on_padding
    torch.testing.assert_close(rel.relevance.sum(-1), rel.features, rtol=0,
                               atol=1e3 * torch.finfo(torch.float64).eps * float(rel.relevance.abs().sum(-1).max()))
