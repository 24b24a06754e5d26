"""skbilrp's first-order LRP maps against independent LRP libraries.

zennit 0.5.1 implements the rules with backward hooks on the unmodified model,
captum 0.9 with weight manipulation and hooks: entirely different code paths from
skbilrp's linearised relevance network. BiLRP is ``A(x)^T A(x')`` with ``A``'s rows
these single-feature maps, so agreement here pins down everything but the product.
"""

from __future__ import annotations

import copy
import importlib
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from skbilrp import Epsilon, Explainer, Gamma, ZBox

DT = torch.float64


@pytest.fixture(scope="module")
def zennit():
    """Import zennit, stubbing torchvision only if it cannot be imported.

    ``zennit/__init__`` imports ``zennit.torchvision``, which imports
    ``torchvision.models.resnet`` for its ResNet canonizers; torchvision does not
    import beside this CPU torch build. None of that is used here, so minimal stand-in
    modules (with dummy ``Bottleneck``/``BasicBlock`` classes) let zennit import. The
    stubs are removed again afterwards so no other test sees a fake torchvision.
    """
    stubbed = []
    try:
        importlib.import_module("torchvision")
    except Exception:
        for name in ("torchvision", "torchvision.models", "torchvision.models.resnet"):
            if name in sys.modules:
                stubbed.append((name, sys.modules[name]))
            else:
                stubbed.append((name, None))
            sys.modules[name] = types.ModuleType(name)
        resnet = sys.modules["torchvision.models.resnet"]
        resnet.Bottleneck = type("Bottleneck", (nn.Module,), {})
        resnet.BasicBlock = type("BasicBlock", (nn.Module,), {})
        sys.modules["torchvision"].models = sys.modules["torchvision.models"]
        sys.modules["torchvision.models"].resnet = resnet
    try:
        zen = importlib.import_module("zennit")
        for sub in ("composites", "attribution", "rules"):
            importlib.import_module(f"zennit.{sub}")
    except ImportError as err:  # zennit is an optional test dependency
        zen, reason = None, f"zennit is not importable: {err}"
    try:
        if zen is None:
            pytest.skip(reason)
        yield zen
    finally:
        for name, previous in stubbed:
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def vgg_like(seed: int = 0) -> nn.Module:
    """convs with ReLU and max-pools, then linear layers, all with biases.

    Both skbilrp's and zennit's z^B leave the bias out of the denominator.
    """
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),  # 0
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 2
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 5
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 8), nn.ReLU(),  # 9
        nn.Linear(8, 5),  # 11: no ReLU, so no feature is dead and some are negative
    )
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.1, 0.1)
    return net.to(DT).eval()


def zennit_maps(zennit, model, x, name_map) -> np.ndarray:
    """zennit's LRP map of every output feature, seeded with the feature's value:
    ``(N, h, *sample_shape)``."""
    from zennit.attribution import Gradient
    from zennit.composites import NameMapComposite

    model = copy.deepcopy(model)  # zennit registers hooks on the model it explains
    composite = NameMapComposite(name_map=name_map)
    maps = []
    with Gradient(model=model, composite=composite) as attributor:
        h = model(x).shape[1]
        for m in range(h):
            def seed(out, m=m):
                onehot = torch.zeros_like(out)
                onehot[:, m] = 1
                return out * onehot
            _, rel = attributor(x.clone(), seed)
            maps.append(rel.detach())
    return torch.stack(maps, dim=1).numpy()


def skbilrp_maps(model, x, rules, mode) -> np.ndarray:
    """skbilrp's per-feature maps, unpooled and with channels kept: ``(N, h, d)``."""
    ex = Explainer(model, rules=rules, pooling=None, channel_axis=None, mode=mode)
    return ex.relevance(x).relevance.numpy()


def assert_maps_close(ours, theirs, rtol=1e-9):
    theirs = theirs.reshape(ours.shape)
    scale = np.abs(theirs).max()
    assert scale > 0
    # every feature must carry relevance, or the comparison is partly vacuous
    assert np.all(np.abs(theirs).reshape(theirs.shape[0], theirs.shape[1], -1).max(-1) > 0)
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("bounds", ["scalar", "per-channel"])
@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_zbox_gamma_epsilon_match_zennit(zennit, bounds, mode):
    from zennit.rules import Epsilon as ZEpsilon
    from zennit.rules import Gamma as ZGamma
    from zennit.rules import ZBox as ZZBox

    model = vgg_like()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 12, 12, generator=gen, dtype=DT)
    if bounds == "scalar":
        low, high = 0.0, 1.0
        z_low, z_high = low, high
    else:  # inputs normalised per channel: bounds of (x - mean) / std for x in [0, 1]
        mean = torch.tensor([0.4, 0.5, 0.6], dtype=DT).reshape(3, 1, 1)
        std = torch.tensor([0.2, 0.25, 0.3], dtype=DT).reshape(3, 1, 1)
        x = (x - mean) / std
        low, high = (0 - mean) / std, (1 - mean) / std
        z_low, z_high = low[None], high[None]  # zennit wants a batch axis
    tiny = 1e-30  # zennit's stabilisers only to avoid 0/0; skbilrp's γ and z^B have none
    name_map = [
        (["0"], ZZBox(z_low, z_high, stabilizer=tiny)),
        (["2", "5"], ZGamma(gamma=0.25, stabilizer=tiny)),
        (["9", "11"], ZEpsilon(epsilon=1e-6)),
    ]
    rules = {"0": ZBox(low, high), "2": Gamma(0.25), "5": Gamma(0.25), nn.Linear: Epsilon(1e-6)}
    theirs = zennit_maps(zennit, model, x, name_map)
    ours = skbilrp_maps(model, x, rules, mode)
    assert_maps_close(ours, theirs)
    # and channel-summed, as BiLRP uses them by default
    summed = Explainer(model, rules=rules, mode=mode).relevance(x).relevance.numpy()
    assert_maps_close(summed, theirs.sum(axis=2))


def test_zennit_comparison_is_sensitive_to_gamma(zennit):
    """A different γ in skbilrp must not match zennit: the comparison has teeth."""
    from zennit.rules import Epsilon as ZEpsilon
    from zennit.rules import Gamma as ZGamma
    from zennit.rules import ZBox as ZZBox

    model = vgg_like()
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(1), dtype=DT)
    name_map = [(["0"], ZZBox(0.0, 1.0, stabilizer=1e-30)),
                (["2", "5"], ZGamma(gamma=0.25, stabilizer=1e-30)),
                (["9", "11"], ZEpsilon(epsilon=1e-6))]
    theirs = zennit_maps(zennit, model, x, name_map).reshape(1, 5, -1)
    rules = {"0": ZBox(0.0, 1.0), "2": Gamma(0.5), "5": Gamma(0.5), nn.Linear: Epsilon(1e-6)}
    ours = skbilrp_maps(model, x, rules, "reverse")
    assert np.abs(ours - theirs).max() > 1e-3 * np.abs(theirs).max()


# ------------------------------------------------------------------------ captum
# captum's LRP has no rule for nn.Flatten (it refuses unknown leaf modules), so its
# comparison runs on an MLP; convs, pools and z^B are covered by zennit above.


def captum_maps(model, x, layer_rules) -> np.ndarray:
    """captum's LRP map of every output feature (seeded with its value), ``(N, h, d)``.

    A fresh copy of the model and of the rules for every feature: captum keeps state
    on both between ``attribute`` calls, and a second call on the same objects gives
    different maps.
    """
    captum_attr = pytest.importorskip("captum.attr")
    with torch.no_grad():
        h = model(x).shape[1]
    maps = []
    for m in range(h):
        fresh = copy.deepcopy(model)
        for index, rule in layer_rules.items():
            fresh[index].rule = copy.deepcopy(rule)
        lrp = captum_attr.LRP(fresh)
        maps.append(lrp.attribute(x.clone().requires_grad_(True), target=m).detach())
    return torch.stack(maps, dim=1).numpy()


def mlp(bias: bool, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(7, 6, bias=bias), nn.ReLU(), nn.Linear(6, 6, bias=bias), nn.ReLU(),
                        nn.Linear(6, 4, bias=bias))
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return net.to(DT).eval()


@pytest.mark.parametrize("epsilon", [1e-9, 0.25])
def test_epsilon_matches_captum(epsilon):
    """Signed inputs, biases, and a non-negligible ε (output features may be negative)."""
    from captum.attr._utils.lrp_rules import EpsilonRule

    model = mlp(bias=True)
    x = torch.randn(3, 7, generator=torch.Generator().manual_seed(2), dtype=DT)
    theirs = captum_maps(model, x, {0: EpsilonRule(epsilon), 2: EpsilonRule(epsilon), 4: EpsilonRule(epsilon)})
    for mode in ("forward", "reverse"):
        ours = skbilrp_maps(model, x, Epsilon(epsilon), mode)
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12 * np.abs(theirs).max())


def test_gamma_matches_captum():
    """captum's γ leaves biases unmodified (skbilrp's modifies them as the paper does),
    so the comparison uses a bias-free net; inputs are non-negative as γ assumes."""
    from captum.attr._utils.lrp_rules import EpsilonRule, GammaRule

    model = mlp(bias=False)
    x = torch.rand(3, 7, generator=torch.Generator().manual_seed(3), dtype=DT)
    gammas = GammaRule(0.5), GammaRule(0.25)
    for rule in gammas:  # captum adds 1e-9 sign(z) to γ denominators; skbilrp adds nothing
        rule.STABILITY_FACTOR = 1e-30
    theirs = captum_maps(model, x, {0: gammas[0], 2: gammas[1], 4: EpsilonRule(1e-9)})
    rules = {"0": Gamma(0.5), "2": Gamma(0.25), "4": Epsilon(1e-9)}
    for mode in ("forward", "reverse"):
        ours = skbilrp_maps(model, x, rules, mode)
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12 * np.abs(theirs).max())
    lrp0 = skbilrp_maps(model, x, "zero", "reverse")
    assert np.abs(lrp0 - theirs).max() > 1e-3 * np.abs(theirs).max()  # γ really matters
