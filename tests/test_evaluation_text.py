"""Text flipping against hand-simulated orders; integrated Jacobians and HP against oracles."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from skbilrp.evaluation import (
    BiLRPTextMethod,
    HessianProductTextMethod,
    IntegratedJacobiansMethod,
    RandomTextMethod,
    evaluate_text,
    flipping_auc,
    integrated_jacobian_factors,
    pair_products,
    quadrature,
    text_flipping_curve,
    tokenize_texts,
)

DTYPE = torch.float64
EPS = torch.finfo(DTYPE).eps
CLS, SEP, PAD, MASK, UNK = 1, 2, 0, 3, 4


class BagEncoder(nn.Module):
    """Toy sentence encoder: ``f(text) = Σ_t mask_t x_t`` with ``x_t = table[id_t]``, so the
    linear kernel of two texts is the dot product of their summed token embeddings."""

    def __init__(self, vocab: list[str], dim: int = 4, seed: int = 0, mask_token: bool = True) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.vocab = {w: i + 5 for i, w in enumerate(vocab)}
        self.table = torch.rand(5 + len(vocab), dim, generator=g, dtype=DTYPE) + 0.1
        self.tokenizer = SimpleNamespace(cls_token_id=CLS, sep_token_id=SEP, pad_token_id=PAD,
                                         mask_token_id=MASK if mask_token else None, unk_token_id=UNK)

    def tokenize(self, texts: list[str], max_length: int | None = None) -> dict:
        return {"input_ids": [[CLS] + [self.vocab[w] for w in t.split()] + [SEP] for t in texts]}

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.table[ids], mask

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return (x * attention_mask[..., None].to(x.dtype)).sum(1)


def _bag_similarity(enc: BagEncoder, ids_a: list, ids_b: list) -> float:
    """Dot product of the summed embeddings; ``None`` entries are deleted tokens."""
    sa = sum(enc.table[i] for i in ids_a if i is not None)
    sb = sum(enc.table[i] for i in ids_b if i is not None)
    return float(sa @ sb)


def _simulate(enc: BagEncoder, ids_a: list, ids_b: list, events: list[tuple[int, int]], perturbation: str,
              replacement: int = MASK) -> list[float]:
    """Similarity after each event ``(side, position)``, perturbing one token at a time."""
    sides = [list(ids_a), list(ids_b)]
    out = [_bag_similarity(enc, *sides)]
    for side, pos in events:
        sides[side][pos] = replacement if perturbation == "mask" else None
        out.append(_bag_similarity(enc, *sides))
    return out


# three ordinary tokens on each side, framed by [CLS] ... [SEP]
IDS_A = [CLS, 5, 6, 7, SEP]
IDS_B = [CLS, 8, 9, 10, SEP]
BLOCK = np.array([[0.2, 0.9, 0.1],
                  [0.4, 0.3, 0.8],
                  [0.7, 0.0, 0.6]])


def _full_relevance() -> np.ndarray:
    """BLOCK on the ordinary tokens; special rows and columns hold the largest values, so
    ranking them would change every order."""
    rel = np.full((5, 5), 100.0)
    rel[1:4, 1:4] = BLOCK
    return rel


@pytest.fixture
def bag() -> BagEncoder:
    return BagEncoder([f"w{i}" for i in range(6)])


@pytest.mark.parametrize("perturbation", ["mask", "delete"])
def test_pairwise_curve_follows_the_hand_order(bag, perturbation):
    # pairs by value: 0.9 (a0, b1), 0.8 (a1, b2), 0.7 (a2, b0): tokens a0 b1 a1 b2 a2 b0
    events = [(0, 1), (1, 2), (0, 2), (1, 3), (0, 3), (1, 1)]  # (side, position incl. [CLS])
    expected = _simulate(bag, IDS_A, IDS_B, events, perturbation)
    curve = text_flipping_curve(bag, IDS_A, IDS_B, _full_relevance(), mode="pairwise", steps=6,
                                perturbation=perturbation)
    tol = 16 * EPS * max(abs(v) for v in expected)
    np.testing.assert_allclose(curve, expected, rtol=0, atol=tol)


@pytest.mark.parametrize("perturbation", ["mask", "delete"])
def test_marginal_curve_follows_the_hand_order(bag, perturbation):
    # row sums 1.2, 1.5, 1.3 -> a1 a2 a0; column sums 1.3, 1.2, 1.5 -> b2 b0 b1
    curve_a = _simulate(bag, IDS_A, IDS_B, [(0, 2), (0, 3), (0, 1)], perturbation)
    curve_b = _simulate(bag, IDS_A, IDS_B, [(1, 3), (1, 1), (1, 2)], perturbation)
    expected = 0.5 * (np.array(curve_a) + np.array(curve_b))
    curve = text_flipping_curve(bag, IDS_A, IDS_B, _full_relevance(), mode="marginal", steps=3,
                                perturbation=perturbation)
    np.testing.assert_allclose(curve, expected, rtol=0, atol=16 * EPS * np.abs(expected).max())


def test_mask_falls_back_to_unk_and_specials_stay(bag):
    no_mask = BagEncoder([f"w{i}" for i in range(6)], mask_token=False)
    events = [(0, 1), (1, 2), (0, 2), (1, 3), (0, 3), (1, 1)]
    expected = _simulate(no_mask, IDS_A, IDS_B, events, "mask", replacement=UNK)
    curve = text_flipping_curve(no_mask, IDS_A, IDS_B, _full_relevance(), steps=6)
    np.testing.assert_allclose(curve, expected, rtol=0, atol=16 * EPS * max(map(abs, expected)))
    # everything deleted leaves [CLS] [SEP] on both sides: the end point is theirs
    end = text_flipping_curve(bag, IDS_A, IDS_B, _full_relevance(), steps=6, perturbation="delete")[-1]
    assert end == pytest.approx(_bag_similarity(bag, [CLS, SEP], [CLS, SEP]), rel=16 * EPS)


def test_relevance_over_ordinary_tokens_only_is_refused(bag):
    with pytest.raises(ValueError, match="special ones included"):
        text_flipping_curve(bag, IDS_A, IDS_B, BLOCK)


def test_evaluate_text_scores_precomputed_explanations(bag):
    pairs = [("w0 w1 w2", "w3 w4 w5"), ("w1 w2", "w0 w5 w3")]
    a = tokenize_texts(bag, [p for p, _ in pairs])
    assert [s.tolist() for s in a.special] == [[True, False, False, False, True], [True, False, False, True]]
    b = tokenize_texts(bag, [q for _, q in pairs])
    rel = RandomTextMethod(3)(bag, a, b, kernel="linear")
    res = evaluate_text(bag, pairs, {"given": rel}, steps=4, perturbation="delete")
    for n in range(len(pairs)):
        for mode in ("pairwise", "marginal"):
            curve = text_flipping_curve(bag, a.ids[n], b.ids[n], rel[n], mode=mode, steps=4, perturbation="delete")
            np.testing.assert_array_equal(res.curves[mode]["given"][n], curve)
            assert res.auc[mode]["given"][n] == flipping_auc(curve)


# -------------------------------------------------------------- integrated Jacobians


class SmoothTokens(nn.Module):
    """A smooth token model with interaction between tokens (tanh MLP, masked sum, tanh)."""

    def __init__(self, dim: int = 3, hidden: int = 5, out: int = 4, seed: int = 1) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(dim, hidden, generator=g, dtype=DTYPE)
        self.c = torch.randn(hidden, generator=g, dtype=DTYPE)
        self.w2 = torch.randn(hidden, out, generator=g, dtype=DTYPE) / 2

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(x @ self.w1 + self.c) * attention_mask[..., None].to(x.dtype)
        return torch.tanh(h.sum(1) @ self.w2)


class LinearTokens(nn.Module):
    def __init__(self, dim: int = 3, out: int = 4) -> None:
        super().__init__()
        self.w = torch.randn(dim, out, generator=torch.Generator().manual_seed(2), dtype=DTYPE)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return (x * attention_mask[..., None].to(x.dtype)).sum(1) @ self.w


def _inputs(n: int = 2, t: int = 4, d: int = 3, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor, dict]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, t, d, generator=g, dtype=DTYPE)
    ref = 0.3 * torch.randn(n, t, d, generator=g, dtype=DTYPE)
    ref[:, 0] = x[:, 0]  # a "special" token kept in the reference
    return x, ref, {"attention_mask": torch.ones(n, t, dtype=torch.long)}


def _side_error(model: nn.Module, steps: int, rule: str) -> float:
    x, ref, ctx = _inputs()
    ij = integrated_jacobian_factors(model, x, ref, ctx, steps, rule)
    return float((ij.factors.sum(-1) - (ij.features - ij.reference_features)).norm())


@pytest.mark.parametrize("rule,order", [("midpoint", 2), ("trapezoid", 2), ("right", 1)])
def test_ij_completeness_error_shrinks_with_the_rule_order(rule, order):
    model = SmoothTokens()
    errors = [_side_error(model, n, rule) for n in (16, 32, 64)]
    observed = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    # asymptotic regime: the observed order approaches the rule's from either side
    assert np.all(np.abs(observed - order) < 0.25), observed
    assert errors[-1] > 1e3 * EPS  # still well above rounding, so the orders are meaningful


def test_ij_pair_sum_is_complete_up_to_the_side_errors():
    model = SmoothTokens()
    x, ref, ctx = _inputs()
    ij = integrated_jacobian_factors(model, x, ref, ctx, steps=32)
    a, b = slice(0, 1), slice(1, 2)
    rel = pair_products(ij.factors[a], ij.factors[b], ij.features[a], ij.features[b])[0]
    da = (ij.features - ij.reference_features)[0]
    db = (ij.features - ij.reference_features)[1]
    ea = (ij.factors.sum(-1)[0] - da).norm()
    eb = (ij.factors.sum(-1)[1] - db).norm()
    bound = float(ea * db.norm() + eb * da.norm() + ea * eb) + 64 * EPS * float(da.norm() * db.norm())
    assert abs(rel.sum() - float(da @ db)) <= bound
    assert np.all(rel[0] == 0) and np.all(rel[:, 0] == 0)  # the unmoved token gets nothing


@pytest.mark.parametrize("rule", ["midpoint", "trapezoid", "right"])
def test_ij_is_exact_for_a_linear_model(rule):
    model = LinearTokens()
    x, ref, ctx = _inputs()
    ij = integrated_jacobian_factors(model, x, ref, ctx, steps=1, rule=rule)
    rel = pair_products(ij.factors[:1], ij.factors[1:], ij.features[:1], ij.features[1:])[0]
    diff = ij.features - ij.reference_features
    scale = float((ij.factors[0].abs().sum(-1) @ ij.factors[1].abs().sum(-1)))
    terms = x.shape[1] * x.shape[2] * ij.factors.shape[1]
    assert abs(rel.sum() - float(diff[0] @ diff[1])) <= terms * EPS * scale


def test_ij_matches_a_brute_force_jacobian():
    model = SmoothTokens()
    x, ref, ctx = _inputs()
    steps, rule = 5, "trapezoid"
    ij = integrated_jacobian_factors(model, x, ref, ctx, steps, rule)
    nodes, weights = quadrature(steps, rule)
    for n in range(len(x)):
        delta = x[n] - ref[n]
        mask = ctx["attention_mask"][n:n + 1]
        jbar = sum(w * torch.autograd.functional.jacobian(lambda z: model(z[None], mask)[0], ref[n] + a * delta)
                   for a, w in zip(nodes, weights))  # (h, T, D)
        expected = (jbar * delta[None]).sum(-1)
        tol = 64 * EPS * float((jbar.abs() * delta.abs()[None]).sum(-1).max())
        torch.testing.assert_close(ij.factors[n], expected, rtol=0, atol=tol)


def test_quadrature_rejects_unknown_rules():
    with pytest.raises(ValueError, match="rule must be"):
        quadrature(4, "simpson")
    np.testing.assert_allclose(quadrature(7, "trapezoid")[1].sum(), 1.0, rtol=8 * EPS)


# ---------------------------------------------------------------- Hessian x Product


class ReluBag(BagEncoder):
    """Bias-free ReLU network on token embeddings (masked sum pooling): LRP-0 = HP."""

    def __init__(self, vocab: list[str]) -> None:
        super().__init__(vocab, dim=4)
        g = torch.Generator().manual_seed(5)
        self.l1 = nn.Linear(4, 6, bias=False, dtype=DTYPE)
        self.l2 = nn.Linear(6, 5, bias=False, dtype=DTYPE)
        with torch.no_grad():
            self.l1.weight.copy_(torch.randn(6, 4, generator=g, dtype=DTYPE))
            self.l2.weight.copy_(torch.randn(5, 6, generator=g, dtype=DTYPE))
        self.table = self.table - 0.3  # signed embeddings: some units switch off

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.l1(x)) * attention_mask[..., None].to(x.dtype)
        return torch.relu(self.l2(h.sum(1)))


def _hp_oracle(model: nn.Module, xa: torch.Tensor, xb: torch.Tensor) -> np.ndarray:
    """``Σ_{d,d'} a_id b_jd' ∂²(f(a)·f(b))/∂a_id ∂b_jd'`` from autograd's mixed Hessian."""
    ones_a = torch.ones(1, xa.shape[0], dtype=torch.long)
    ones_b = torch.ones(1, xb.shape[0], dtype=torch.long)

    def grad_a(b: torch.Tensor) -> torch.Tensor:
        a = xa.clone().requires_grad_(True)
        y = model(a[None], ones_a)[0] @ model(b[None], ones_b)[0]
        return torch.autograd.grad(y, a, create_graph=True)[0]

    mixed = torch.autograd.functional.jacobian(grad_a, xb)  # (Ta, D, Tb, D)
    return torch.einsum("id,idje,je->ij", xa, mixed, xb).numpy()


def test_hp_equals_the_hessian_oracle_and_lrp0():
    enc = ReluBag([f"w{i}" for i in range(6)])
    a = tokenize_texts(enc, ["w0 w1 w2", "w3 w4"])
    b = tokenize_texts(enc, ["w5 w2", "w1 w0 w3"])
    hp = HessianProductTextMethod(at=None)(enc, a, b, kernel="linear")
    lrp0 = BiLRPTextMethod(rules="zero")(enc, a, b, kernel="linear")
    for n in range(len(a)):
        xa, xb = enc.table[torch.as_tensor(a.ids[n])], enc.table[torch.as_tensor(b.ids[n])]
        oracle = _hp_oracle(enc, xa, xb)
        assert np.abs(oracle).max() > 0
        tol = 64 * EPS * np.abs(oracle).sum()
        np.testing.assert_allclose(hp[n], oracle, rtol=0, atol=tol)
        np.testing.assert_allclose(lrp0[n], oracle, rtol=0, atol=tol)


def test_ij_method_references_pad_and_skips_specials():
    enc = ReluBag([f"w{i}" for i in range(6)])
    a = tokenize_texts(enc, ["w0 w1 w2"])
    b = tokenize_texts(enc, ["w5 w2"])
    rel = IntegratedJacobiansMethod(steps=64, at=None)(enc, a, b, kernel="linear")[0]
    assert np.all(rel[[0, -1]] == 0) and np.all(rel[:, [0, -1]] == 0)
    fa = enc(enc.table[torch.as_tensor(a.ids[0])][None], torch.ones(1, 5, dtype=torch.long))[0]
    ra = enc(enc.table[torch.as_tensor([CLS, PAD, PAD, PAD, SEP])][None], torch.ones(1, 5, dtype=torch.long))[0]
    fb = enc(enc.table[torch.as_tensor(b.ids[0])][None], torch.ones(1, 4, dtype=torch.long))[0]
    rb = enc(enc.table[torch.as_tensor([CLS, PAD, PAD, SEP])][None], torch.ones(1, 4, dtype=torch.long))[0]
    target = float((fa - ra) @ (fb - rb))
    # piecewise-linear model: the midpoint rule is only first order at the kinks, so
    # compare at a tolerance that scales with 1/steps
    assert rel.sum() == pytest.approx(target, abs=abs(target) * 8 / 64 + 64 * EPS)
