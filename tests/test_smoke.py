"""A first end-to-end check of the public entry point on a tiny ReLU CNN."""

import numpy as np
import torch
from torch import nn

from skbilrp import bilrp


def test_bilrp_conserves_and_matches_hp_on_tiny_cnn():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, 5, bias=False), nn.ReLU(),
    )
    x, x2 = torch.rand(1, 8, 8), torch.rand(1, 8, 8)
    e = bilrp(net, x, x2, dtype=torch.float64)
    hp = bilrp(net, x, x2, method="hp", dtype=torch.float64)
    with torch.no_grad():
        y = float(net.double()(x[None].double()).flatten() @ net(x2[None].double()).flatten())
    assert e.relevance.shape == (64, 64)
    assert np.isclose(e.similarity, y, rtol=1e-12)
    assert np.isclose(e.relevance.sum(), y, rtol=1e-10)
    np.testing.assert_allclose(e.relevance, hp.relevance, rtol=1e-9, atol=1e-15)
