"""LRP rules on a 2-layer toy network, against relevance computed by hand.

Network (bias-free): ``a = ReLU(W1 x)``, ``phi = W2 a`` with

    x  = (1/2, 1)
    W1 = [[2, -1/2],          z1 = W1 x = (1 - 1/2, 1/2 + 1) = (1/2, 3/2)  (both active)
          [1,    1]]          a  = (1/2, 3/2)
    W2 = [[2,   -1/2],        phi_0 = 1 - 3/4   =  1/4
          [1/2, -1  ]]        phi_1 = 1/4 - 3/2 = -5/4   (negative: tests the sign of ε)

LRP redistributes ``R_out = phi_m`` through ``R_j = sum_k a_j rho(w_kj) / den_k R_k``.
The expected values below are the arithmetic written out; every one conserves
(the two entries sum to phi_m), which is checked as well.
"""

from __future__ import annotations

from fractions import Fraction as Fr

import numpy as np
import pytest
import torch
from torch import nn

from skbilrp import Epsilon, Explainer, Gamma, ZBox, Zero

X = [0.5, 1.0]
W1 = [[2.0, -0.5], [1.0, 1.0]]
W2 = [[2.0, -0.5], [0.5, -1.0]]
PHI = [Fr(1, 4), Fr(-5, 4)]

# --- LRP-0 on both layers --------------------------------------------------------
# layer 2 (den = z = phi): R_a = a_j w_mj          phi_0: (1/2*2, 3/2*(-1/2)) = (1, -3/4)
#                                                   phi_1: (1/2*1/2, 3/2*(-1)) = (1/4, -3/2)
# layer 1: contributions x_i w_ki / z1_k:  k=0: (1, -1/2)/(1/2) = (2, -1)
#                                          k=1: (1/2, 1)/(3/2) = (1/3, 2/3)
# phi_0: (2, -1)*1 + (1/3, 2/3)*(-3/4)   = (2 - 1/4, -1 - 1/2) = (7/4, -3/2)
# phi_1: (2, -1)*1/4 + (1/3, 2/3)*(-3/2) = (1/2 - 1/2, -1/4 - 1) = (0, -5/4)
LRP0 = [[Fr(7, 4), Fr(-3, 2)], [Fr(0), Fr(-5, 4)]]

# --- LRP-ε, ε = 1/10 on both layers (den = z + ε sign z) -------------------------
# layer 2: phi_0: den = 1/4 + 1/10 = 7/20;  R_a = (1, -3/4) * (1/4)/(7/20) = (5/7, -15/28)
#          phi_1: den = -5/4 - 1/10 = -27/20; R_a = (1/4, -3/2) * (-5/4)/(-27/20) = (25/108, -25/18)
# layer 1: den = (1/2 + 1/10, 3/2 + 1/10) = (3/5, 8/5)
#          k=0: (1, -1/2)/(3/5) = (5/3, -5/6);   k=1: (1/2, 1)/(8/5) = (5/16, 5/8)
# phi_0: (5/3, -5/6)*5/7 + (5/16, 5/8)*(-15/28)
# phi_1: (5/3, -5/6)*25/108 + (5/16, 5/8)*(-25/18)
EPS = [
    [Fr(25, 21) - Fr(75, 448), Fr(-25, 42) - Fr(75, 224)],
    [Fr(125, 324) - Fr(125, 288), Fr(-125, 648) - Fr(125, 144)],
]
# ε absorbs relevance: the sums are phi * z/(z+ε) at the top times what layer 1 keeps,
# so they are not checked against phi here.

# --- LRP-γ, γ = 1/2 on both layers (rho(w) = w + γ w⁺) ---------------------------
# rho(W2) = [[3, -1/2], [3/4, -1]]: z_rho = (3/2 - 3/4, 3/8 - 3/2) = (3/4, -9/8)
# layer 2: phi_0: R_a = (3/2, -3/4)/(3/4) * 1/4  = (1/2, -1/4)
#          phi_1: R_a = (3/8, -3/2)/(-9/8) * (-5/4) = (5/12, -5/3)
# rho(W1) = [[3, -1/2], [3/2, 3/2]]: z_rho = (3/2 - 1/2, 3/4 + 3/2) = (1, 9/4)
#          k=0: (3/2, -1/2)/1 = (3/2, -1/2);   k=1: (3/4, 3/2)/(9/4) = (1/3, 2/3)
# phi_0: (3/2, -1/2)*1/2 + (1/3, 2/3)*(-1/4)  = (3/4 - 1/12, -1/4 - 1/6) = (2/3, -5/12)
# phi_1: (3/2, -1/2)*5/12 + (1/3, 2/3)*(-5/3) = (5/8 - 5/9, -5/24 - 10/9) = (5/72, -95/72)
GAMMA = [[Fr(2, 3), Fr(-5, 12)], [Fr(5, 72), Fr(-95, 72)]]

# --- z^B on layer 1 (LRP-0 on layer 2, so R_a as for LRP-0) ----------------------
# terms_ki = x_i w_ki - low_i w⁺_ki - high_i w⁻_ki, den_k = sum_i terms_ki
# low=0, high=1:  k=0: (1 - 0, -1/2 + 1/2) = (1, 0), den 1
#                 k=1: (1/2, 1), den 3/2 → (1/3, 2/3)
#   phi_0: (1, 0)*1 + (1/3, 2/3)*(-3/4)    = (3/4, -1/2)
#   phi_1: (1, 0)*1/4 + (1/3, 2/3)*(-3/2)  = (-1/4, -1)
ZB_01 = [[Fr(3, 4), Fr(-1, 2)], [Fr(-1, 4), Fr(-1)]]
# low=-1, high=2: k=0: (1 + 2, -1/2 + 1) = (3, 1/2), den 7/2 → (6/7, 1/7)
#                 k=1: (1/2 + 1, 1 + 1) = (3/2, 2), den 7/2 → (3/7, 4/7)
#   phi_0: (6/7, 1/7)*1 + (3/7, 4/7)*(-3/4)   = (15/28, -2/7)
#   phi_1: (6/7, 1/7)*1/4 + (3/7, 4/7)*(-3/2) = (3/14 - 9/14, 1/28 - 6/7) = (-3/7, -23/28)
ZB_WIDE = [[Fr(15, 28), Fr(-2, 7)], [Fr(-3, 7), Fr(-23, 28)]]


def toy_net() -> nn.Module:
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(W1))
        net[2].weight.copy_(torch.tensor(W2))
    return net


def first_order(rules, mode: str) -> np.ndarray:
    """skbilrp's per-feature relevance of the toy input, ``(2 features, 2 inputs)``."""
    ex = Explainer(toy_net(), rules=rules, pooling=None, channel_axis=None, mode=mode,
                   dtype=torch.float64)
    out = ex.relevance(torch.tensor([X]))
    np.testing.assert_allclose(out.features[0].numpy(), [float(p) for p in PHI], rtol=1e-15)
    return out.relevance[0].numpy()


CASES = {
    "lrp0": (Zero(), LRP0, True),
    "epsilon": (Epsilon(0.1), EPS, False),
    "gamma": (Gamma(0.5), GAMMA, True),
    "zbox-0-1": ({"0": ZBox(0.0, 1.0), "2": Zero()}, ZB_01, True),
    "zbox-wide": ({"0": ZBox(-1.0, 2.0), "2": Zero()}, ZB_WIDE, True),
}


@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize("case", list(CASES))
def test_rule_matches_hand_computation(case, mode):
    rules, expected, conserves = CASES[case]
    expected_f = np.array([[float(v) for v in row] for row in expected])
    np.testing.assert_allclose(first_order(rules, mode), expected_f, rtol=1e-12, atol=1e-14)
    if conserves:  # the hand arithmetic itself must conserve (guards typos above)
        assert [sum(row) for row in expected] == PHI

