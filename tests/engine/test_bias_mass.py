"""``bias="mass"`` in a transformer block, against its detach-trick twin.

Under ``"mass"`` a unit passes its bias on to the inputs it reads in proportion to their
sizes ``|a_j|``. Written as ``b * sum(sign(a) * a) / sum(|a|).detach()`` (its value is
``b``), plain autograd's gradient × input of that term is exactly that split, so a twin
with every bias, LayerNorm shift and (AttnLRP) softmax bias ``s - J z`` written this way
has gradient × input equal to the rule, as long as no bias exceeds the sizes of its
unit's inputs (agreement shows that the bound is not in play). CP-LRP and AttnLRP. No skbilrp code
is in the oracle; hand-computed single layers and explicit matrices are in
``tests/test_bias_share.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import close, gradient_times_input_flows, indicator_probes
from torch import nn

from skbilrp.engine import ExportedNetwork


def mass(a: torch.Tensor) -> torch.Tensor:
    """1 in value; its gradient × input splits 1 over ``a`` in proportion to ``|a_j|``."""
    return (torch.sign(a) * a).sum(-1, keepdim=True) / a.abs().sum(-1, keepdim=True).detach()


class Block(nn.Module):
    """Pre-norm attention and MLP on tokens ``(N, T, D)``, mean-pooled; ``twin``: the
    same values written so that gradient × input is LRP-0 with ``bias="mass"``."""

    def __init__(self, attention: str, twin: bool, d: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.attention, self.twin, self.heads = attention, twin, heads
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

    def softmax(self, z: torch.Tensor) -> torch.Tensor:
        if not self.twin:
            return z.softmax(-1)
        if self.attention == "cp":
            return z.detach().softmax(-1)
        s = z.softmax(-1)  # AttnLRP: its Jacobian, plus the bias s - J z passed on by mass
        bias = (s - s * (z - (s * z).sum(-1, keepdim=True))).detach()
        return s + bias * (mass(z) - 1)

    def product(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.twin and self.attention == "attnlrp":
            return 0.5 * (a @ b.detach() + a.detach() @ b)
        return a @ b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.linear(self.qkv, self.norm(self.norm1, x)).reshape(n, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        p = self.softmax(self.product(q, k.transpose(-2, -1)) * (d // self.heads) ** -0.5)
        x = x + self.linear(self.proj, self.product(p, v).transpose(1, 2).reshape(n, t, d))
        h = self.linear(self.fc1, self.norm(self.norm2, x))
        g = h * (F.gelu(h) / h).detach() if self.twin else F.gelu(h)
        return (x + self.linear(self.fc2, g)).mean(1)


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
