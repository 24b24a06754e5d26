"""The export engine on a zoo of modern blocks written in plain torch (tests/engine/zoo.py).

Oracles: the model's own forward; the same model written out-of-place with alpha spelled
out; autograd (reverse mode = the transpose of forward mode; gradient × input = LRP-0 on
bias-free ReLU variants, the first-order form of the Hessian×Product theorem); and
conservation (bias-passing rules: the flows of probes that cover the input sum to the
features, unfoldable BatchNorms and added constants included).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from helpers import EPS64, close, indicator_probes, probes
from zoo import ZOO, build

from skbilrp.engine import ExportedNetwork, UnsupportedOperatorError
from skbilrp.rules import Gamma, Zero

warnings.filterwarnings("ignore", category=FutureWarning)

# open problems, reported: (the checks that fail, or None for all; why). strict, so a
# fix shows up as a failure of its xfail mark
_KNOWN: dict = {}
RELU_NAMES = [n for n in sorted(ZOO) if ZOO[n][2]]


def names(check: str) -> list:
    """Every zoo block, with a strict xfail where ``check`` is known to fail on it."""
    out = []
    for n in sorted(ZOO):
        failing, why = _KNOWN.get(n, (set(), ""))
        known = failing is None or check in failing
        out.append(pytest.param(n, marks=pytest.mark.xfail(reason=why, strict=True)) if known else n)
    return out


_SHARED: dict = {}


def shared(name: str):
    """``build(name)``, one per block for the checks that leave it as it is: the engine
    shares a model's export between the networks built on it while it is unchanged, so
    each block is exported once (test_user_model_unchanged builds its own, as a user's)."""
    if name not in _SHARED:
        _SHARED[name] = build(name)
    return _SHARED[name]


def batch(shape, n=2, seed=1):
    return torch.randn((n,) + shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", names("features"))
def test_features_equal_forward(name):
    model, shape = shared(name)
    x = batch(shape)
    rec = ExportedNetwork(model, "zero", torch.float64).record(x)
    with torch.no_grad():
        close(rec.features, model(x).flatten(1), k=16)


#: blocks whose layers sit away from the batch axis (windows folded into it): no input
#: grid to spread a bias over, so bias="flat" is refused there (tested below)
NO_FLAT = {"swin_window"}


def modes(name):
    return ["share"] + (["flat"] if name not in NO_FLAT else [])


@pytest.mark.parametrize("name", names("inplace"))
def test_inplace_and_alpha_change_nothing(name):
    a, shape = build(name, inplace=True)
    b, _ = build(name, inplace=False)
    x = batch(shape)
    p = probes(x, 3)
    for rules in ["zero"] + [Zero(bias=m) for m in modes(name)]:
        ra = ExportedNetwork(a, rules, torch.float64).record(x)
        rb = ExportedNetwork(b, rules, torch.float64).record(x)
        close(ra.features, rb.features, k=16)
        fa, fb = ra.push(p, 0), rb.push(p, 0)
        close(fa, fb, k=1e3)


@pytest.mark.slow
@pytest.mark.parametrize("name", names("fwd_rev"))
def test_forward_mode_equals_reverse_mode(name):
    model, shape = shared(name)
    x = batch(shape)
    rec = ExportedNetwork(model, Zero(bias="share"), torch.float64).record(x)
    eye = indicator_probes(x, None)  # (d*N, ...): forward mode, one probe per entry
    fwd = rec.push(eye, None).reshape(-1, x.shape[0], rec.features.shape[1])  # (d, N, h)
    h = rec.features.shape[1]
    seeds = torch.eye(h, dtype=x.dtype).repeat_interleave(x.shape[0], 0)  # (h*N, h)
    probe = torch.zeros((h * x.shape[0],) + shape, dtype=x.dtype, requires_grad=True)
    out = rec.push(probe, None)
    (grad,) = torch.autograd.grad((out * seeds).sum(), probe)  # reverse: (h*N, ...)
    rev = grad.reshape(h, x.shape[0], -1).permute(2, 1, 0)  # (d, N, h)
    close(fwd, rev, terms=fwd, k=1e5)


@pytest.mark.parametrize("name", RELU_NAMES)
def test_lrp0_is_gradient_times_input_on_relu_variants(name):
    model, shape = build(name, relu_only=True)
    for m in model.modules():  # bias-free: every layer a linear map through a ReLU mask
        if getattr(m, "bias", None) is not None and isinstance(m.bias, torch.nn.Parameter):
            torch.nn.init.zeros_(m.bias)
    x = batch(shape)
    rec = ExportedNetwork(model, "zero", torch.float64).record(x)
    eye = indicator_probes(x, None)
    a = rec.push(eye, None).reshape(-1, x.shape[0], rec.features.shape[1])  # (d, N, h)
    jac = torch.autograd.functional.jacobian(lambda t: model(t).flatten(1), x)  # (N, h, N, ...)
    idx = torch.arange(x.shape[0])
    jac = jac[idx, :, idx].reshape(x.shape[0], rec.features.shape[1], -1)  # (N, h, d)
    oracle = (jac * x.reshape(x.shape[0], 1, -1)).permute(2, 0, 1)
    close(a, oracle, k=1e4)


@pytest.mark.parametrize("name", names("conserve"))
@pytest.mark.parametrize("mode", ["share", pytest.param("flat", marks=pytest.mark.slow)])
def test_bias_passing_rules_conserve(name, mode):
    if mode not in modes(name):
        pytest.skip("bias='flat' is refused on this block (test_flat_bias_refused_off_the_batch_axis)")
    model, shape = shared(name)
    x = batch(shape)
    rec = ExportedNetwork(model, Zero(bias=mode), torch.float64).record(x)
    eye = indicator_probes(x, 0)
    flows = rec.push(eye, 0).reshape(-1, x.shape[0], rec.features.shape[1])
    total = flows.sum(0)
    err = float((total - rec.features).abs().max())
    assert err <= 1e-6 * float(flows.abs().sum(0).max()), err


@pytest.mark.parametrize("name", ["preact_resnet", "convnext"])
def test_constants_and_unfolded_batchnorm_absorb_under_absorb(name):
    model, shape = shared(name)
    x = batch(shape)
    rec = ExportedNetwork(model, "zero", torch.float64).record(x)
    total = rec.push(indicator_probes(x, 0), 0).reshape(-1, x.shape[0], rec.features.shape[1]).sum(0)
    assert float((total - rec.features).abs().max()) > 1e3 * EPS64 * float(rec.features.abs().max())


@pytest.mark.parametrize("name", names("unchanged"))
def test_user_model_unchanged(name):
    model, shape = build(name)
    model.train()
    handle = model.register_forward_hook(lambda m, i, o: None)
    before = copy.deepcopy(model.state_dict())
    grads = {k: p.requires_grad for k, p in model.named_parameters()}
    net = ExportedNetwork(model, Gamma(0.25), torch.float64)
    net.record(batch(shape)).push(probes(batch(shape), 1), 0)
    assert model.training
    assert len(model._forward_hooks) == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert grads == {k: p.requires_grad for k, p in model.named_parameters()}
    handle.remove()


def test_flat_bias_refused_off_the_batch_axis():
    model, shape = shared("swin_window")
    x = batch(shape)
    rec = ExportedNetwork(model, Zero(bias="flat"), torch.float64).record(x)
    with pytest.raises(UnsupportedOperatorError) as err:
        rec.push(indicator_probes(x, 0), 0)
    msg = str(err.value)
    assert "bias='flat'" in msg and "module 'norm'" in msg and "aten.layer_norm.default" in msg
    # layer_norm has an entry (registering another raises): the hint is to put one in its place
    assert "skbilrp.engine.ops.OPS[torch.ops.aten.layer_norm.default] = " in msg and "relevance_op(" not in msg
