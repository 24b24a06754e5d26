"""Only the flows that reach the output are pushed.

Under CP-LRP the attention probabilities are constants, so the relevance of ``q`` and
``k`` ends at ``scaled_dot_product_attention``: their projections are never pushed (a
third of a BERT layer's Linear products under ``bias="share"``). The oracle is plain
autograd on a detach-trick twin (probabilities detached); under AttnLRP all three
projections carry relevance and are pushed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import close, gradient_times_input_flows, indicator_probes
from torch import nn

from skbilrp.engine import ExportedNetwork
from skbilrp.engine.ops.weighted import Weighted
from skbilrp.engine.trace import module_of


class SeparateProjections(nn.Module):
    """BERT-style attention: separate q, k, v projections, SDPA, an output projection;
    ``twin``: written out with the probabilities detached (CP-LRP as plain autograd)."""

    def __init__(self, d=8, heads=2, twin=False):
        super().__init__()
        self.heads, self.twin = heads, twin
        self.q, self.k, self.v, self.out = (nn.Linear(d, d, bias=False) for _ in range(4))

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = (f(x).reshape(n, t, self.heads, d // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
        if self.twin:
            p = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1).detach()
            a = p @ v
        else:
            a = F.scaled_dot_product_attention(q, k, v)
        return self.out(a.transpose(1, 2).reshape(n, t, d)).mean(1)


def pushed_modules(net: ExportedNetwork, x: torch.Tensor) -> set[str]:
    program = net.program(x, {})
    return {module_of(node)[0] for node, op in program.ops.items() if isinstance(op, Weighted)}


@pytest.mark.parametrize("attention, pushed", [("cp", {"v", "out"}), ("attnlrp", {"q", "k", "v", "out"})])
def test_q_and_k_are_pushed_only_where_their_relevance_goes_on(attention, pushed):
    model = SeparateProjections().double()
    x = torch.randn(2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert pushed_modules(ExportedNetwork(model, "zero", torch.float64, attention=attention), x) == pushed


def test_cp_lrp_without_the_q_k_flows_is_gradient_times_input_of_its_twin():
    torch.manual_seed(1)
    model = SeparateProjections().double()
    twin = SeparateProjections(twin=True).double()
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    rec = ExportedNetwork(model, "zero", torch.float64).record(x)
    with torch.no_grad():
        close(rec.features, twin(x), k=16)
    h = rec.features.shape[1]
    flows = rec.push(indicator_probes(x, None), None).reshape(-1, 2, h)  # (T*D, N, h)
    close(flows, gradient_times_input_flows(twin, x), k=1e3)
