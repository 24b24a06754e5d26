"""Bad input and unsupported models fail early, naming the cause and the fix;
``relevance_op`` makes an unsupported op work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from skbilrp import Explainer, bilrp
from skbilrp.engine import OPS, UnsupportedModelError, relevance_op
from skbilrp.engine.ops import aten
from skbilrp.engine.ops.elementwise import Ratio
from skbilrp.pooling import make_pooling
from skbilrp.rules import PRESETS

DT = torch.float64


@pytest.fixture
def explainer(relu_cnn):
    return Explainer(relu_cnn(in_channels=1))


# ------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input(explainer, bad):
    x = np.random.default_rng(0).random((2, 1, 8, 8))
    x[1, 0, 3, 4] = bad
    with pytest.raises(ValueError, match="NaN"):
        explainer.relevance(x)
    with pytest.raises(ValueError, match="NaN"):
        explainer.explain(torch.as_tensor(x))


def test_wrong_number_of_channels(explainer):
    x = torch.rand(2, 3, 8, 8)  # the first conv takes 1 channel
    with pytest.raises(ValueError, match=r"shape \(2, 3, 8, 8\)"):
        explainer.relevance(x)


def test_wrong_number_of_channels_hp(relu_cnn):
    with pytest.raises(ValueError, match=r"shape \(1, 3, 8, 8\)"):
        bilrp(relu_cnn(in_channels=1), torch.rand(3, 8, 8), torch.rand(3, 8, 8), method="hp")


@pytest.mark.parametrize("bad", [
    np.array([[["a", "b"]]]),
    np.array([[object(), object()]], dtype=object),
    np.ones((1, 1, 8, 8), dtype=complex),
    torch.ones(1, 1, 8, 8, dtype=torch.complex64),
], ids=["str", "object", "complex-numpy", "complex-torch"])
def test_non_numeric_input(explainer, bad):
    with pytest.raises(TypeError, match="real numbers"):
        explainer.relevance(bad)


@pytest.mark.parametrize("empty", [np.zeros((0, 1, 8, 8)), torch.zeros(0, 1, 8, 8)])
def test_empty_batch(explainer, empty):
    with pytest.raises(ValueError, match="empty"):
        explainer.relevance(empty)


def test_integer_input_is_accepted(explainer):
    x = np.random.default_rng(1).integers(0, 2, size=(1, 1, 8, 8))
    out = explainer.relevance(x)
    assert out.relevance.dtype == torch.float64  # the model's dtype (fixtures are float64)
    assert torch.isfinite(out.relevance).all()


# ----------------------------------------------------------- unsupported models


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x
        return -x


class Exp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)


class Sin(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


@pytest.mark.parametrize("module, op", [
    (Exp(), "aten.exp.default"),  # in the table as a refusal: it is not a ratio-rule activation
    (Sin(), "aten.sin.default"),  # not in the table
    (nn.LSTM(8, 8), "aten.lstm.input"),
    (nn.GRU(8, 8), "aten.gru.input"),
])
def test_unsupported_op_names_op_module_path_and_hook(module, op):
    model = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.ReLU(), module))
    with pytest.raises(UnsupportedModelError) as info:
        Explainer(model).relevance(torch.rand(2, 4))
    message = str(info.value)
    assert op in message
    assert "module '1.1'" in message and type(module).__name__ in message
    # exp has an entry that refuses it (registering another raises): the hint is to replace it
    hint = f"OPS[torch.ops.{op}] = " if op == "aten.exp.default" else f"relevance_op(torch.ops.{op})"
    assert hint in message, message


def test_untraceable_model_names_the_cause():
    model = nn.Sequential(nn.Linear(4, 8), DataDependent())
    with pytest.raises(UnsupportedModelError, match="torch.export") as info:
        Explainer(model).relevance(torch.rand(2, 4))
    assert "data-dependent" in str(info.value)


def test_unknown_rules_preset():
    with pytest.raises(ValueError) as info:
        Explainer(nn.Sequential(nn.Linear(3, 2)), rules="lrp-magic")
    message = str(info.value)
    assert "lrp-magic" in message
    for name in PRESETS:
        assert repr(name) in message


@pytest.mark.parametrize("spec, shape, channel_axis, match", [
    ((2, 2, 2), (1, 8, 8), 0, "Patch size"),
    ((2,), (1, 8, 8), 0, "Patch size"),
    (0, (1, 8, 8), 0, "Patch size"),
    (np.zeros((8, 7), dtype=int), (1, 8, 8), 0, r"label array has shape \(8, 7\)"),
    (np.zeros((1, 8, 8), dtype=int), (1, 8, 8), 0, r"label array has shape \(1, 8, 8\)"),
    (np.zeros((8, 8)), (1, 8, 8), 0, "integers"),
])
def test_bad_pooling(spec, shape, channel_axis, match):
    with pytest.raises(ValueError, match=match):
        make_pooling(spec, shape, channel_axis)


def test_bad_pooling_through_explainer(explainer, relu_cnn):
    with pytest.raises(ValueError, match="Patch size"):
        Explainer(relu_cnn(in_channels=1), pooling=(2, 2, 2)).relevance(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="label array"):
        Explainer(relu_cnn(in_channels=1), pooling=np.zeros((4, 4), dtype=int)).explain(torch.rand(1, 1, 8, 8))


# ------------------------------------------------------------------ relevance_op


def sin_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5, bias=False), Sin(), nn.Linear(5, 3, bias=False)).to(DT)


@pytest.fixture
def unregister_sin():
    """Registration is global: undo it so the test also holds when run again."""
    yield
    OPS.pop(aten.sin.default, None)


def test_relevance_op_makes_an_unsupported_op_work(unregister_sin):
    model = sin_net()
    x = torch.rand(2, 6, dtype=DT)
    with pytest.raises(UnsupportedModelError, match="aten.sin.default"):
        Explainer(model).relevance(x)

    @relevance_op(aten.sin.default)
    class SinRatio(Ratio):
        """sin as a ratio-rule activation: ``u_out = sin(z) / z ⊙ u_in``."""

    fwd = Explainer(model, mode="forward").relevance(x)
    rev = Explainer(model, mode="reverse").relevance(x)
    np.testing.assert_allclose(fwd.relevance.numpy(), rev.relevance.numpy(), rtol=1e-12, atol=1e-14)
    with torch.no_grad():
        phi = model(x).numpy()
    np.testing.assert_allclose(fwd.features.numpy(), phi, rtol=1e-14)
    np.testing.assert_allclose(fwd.relevance.sum(-1).numpy(), phi, rtol=1e-10)  # conserves
    # the ratio rule by hand: R_mi = x_i sum_k W2_mk (sin(z_k) / z_k) W1_ki
    w1, w2 = model[0].weight.detach(), model[2].weight.detach()
    z = x @ w1.T
    expected = torch.einsum("mk,nk,ki,ni->nmi", w2, torch.sin(z) / z, w1, x)
    np.testing.assert_allclose(fwd.relevance.numpy(), expected.numpy(), rtol=1e-12)


def test_an_entry_that_refuses_can_be_replaced_as_its_message_says(monkeypatch):
    """exp has an entry that refuses it; the message says to put another in its place."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5, bias=False), Exp(), nn.Linear(5, 3, bias=False)).to(DT)
    x = torch.rand(2, 6, dtype=DT)
    with pytest.raises(UnsupportedModelError, match=r"OPS\[torch\.ops\.aten\.exp\.default\] = "):
        Explainer(model).relevance(x)

    class ExpRatio(Ratio):
        """exp as a ratio-rule activation, for this model only."""

    monkeypatch.setitem(OPS, aten.exp.default, ExpRatio)
    rel = Explainer(model).relevance(x)
    w1, w2 = model[0].weight.detach(), model[2].weight.detach()
    z = x @ w1.T
    expected = torch.einsum("mk,nk,ki,ni->nmi", w2, torch.exp(z) / z, w1, x)
    np.testing.assert_allclose(rel.relevance.numpy(), expected.numpy(), rtol=1e-12)


def test_relevance_op_refuses_duplicates_and_non_overloads():
    with pytest.raises(RuntimeError, match="duplicate"):
        relevance_op(aten.relu.default)(Ratio)
    with pytest.raises(TypeError, match="OpOverload"):
        relevance_op(torch.sin)(Ratio)
