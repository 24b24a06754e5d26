"""The stabiliser of a normalisation layer's Rule, on every layout it normalises over.

Oracle: with the layer last, Epsilon's flows are LRP-0's flows times ``y / (y + eps
sign(y))``, with ``y`` the model's own output (the stabiliser divides by its output).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import close, probes
from torch import nn

from skbilrp.engine import ExportedNetwork
from skbilrp.rules import Epsilon, Zero

warnings.filterwarnings("ignore", category=FutureWarning)

CASES = {
    "group_norm": (lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4)), (2, 5, 5)),
    "layer_norm_two_axes": (lambda: nn.Sequential(nn.Linear(3, 3), nn.LayerNorm((4, 3))), (4, 3)),
    "layer_norm_last_axis": (lambda: nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5)), (4, 3)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_epsilon_on_a_normalisation_scales_lrp0_by_its_stabiliser(name):
    make, shape = CASES[name]
    torch.manual_seed(0)
    model = make().double().eval()
    x = torch.randn((2,) + shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    p = probes(x, 3)
    eps = 0.5
    zero = ExportedNetwork(model, Zero(), torch.float64).record(x).push(p, None)
    ours = ExportedNetwork(model, {"1": Epsilon(eps)}, torch.float64).record(x).push(p, None)
    with torch.no_grad():
        y = model(x).flatten(1)
    ratio = (y / (y + eps * torch.sign(y))).repeat(3, 1)  # probe-major, like the flows
    close(ours, zero * ratio, terms=zero, k=64)
