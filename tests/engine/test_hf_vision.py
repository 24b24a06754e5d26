"""The export engine on Hugging Face vision backbones (tiny configs, random weights, no
download), each wrapped to return the embedding its users take.

Checks, as in test_zoo.py: the features are the wrapper's own forward; forward mode is
the transpose of reverse mode (``<s, push(p)> == <push^T(s), p>`` with random probes p
and random seeds s, since push is linear in the probe); bias-passing rules conserve
(indicator probes that cover the input: the flows sum to the features); the user's
model is left as it was.

Where a model fails, the case is a strict xfail naming the cause (``_KNOWN``), so a fix
in the engine shows up as an XPASS.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from helpers import EPS64, close, indicator_probes, probes
from torch import nn

from skbilrp.engine import ExportedNetwork, UnsupportedOperatorError
from skbilrp.rules import Gamma, Zero

T = pytest.importorskip("transformers")

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)


class Pooled(nn.Module):
    """``pooler_output`` flattened (ResNet, ConvNeXt, EfficientNet, Swin: the pooled map;
    DINOv2, CLIP: the normalised class token)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, pixel_values):
        return self.backbone(pixel_values=pixel_values).pooler_output.flatten(1)


class ClassToken(nn.Module):
    """The class token of ``last_hidden_state`` (after the final LayerNorm): ViT."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, pixel_values):
        return self.backbone(pixel_values=pixel_values).last_hidden_state[:, 0]


def _randomize(model: nn.Module) -> None:
    """Weights of order one (HF's init, std 0.02, zero biases, identity norms, layer
    scales 1e-6, would leave tiny features and untested bias terms): He-normal convs
    and linears with small random biases, random norm affines and BatchNorm statistics,
    every other parameter (class token, position embeddings, layer scales, relative
    position bias tables) normal(0, 0.5)."""
    with torch.no_grad():
        for m in model.modules():
            own = dict(m.named_parameters(recurse=False))
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    m.bias.normal_(0, 0.1)
            elif "Norm" in type(m).__name__:
                if own.get("weight") is not None:
                    own["weight"].uniform_(0.5, 1.5)
                if own.get("bias") is not None:
                    own["bias"].normal_(0, 0.1)
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
            else:
                for p in own.values():
                    p.normal_(0, 0.5)


# name -> (config class, config kwargs, model class, wrapper, input shape (C, H, W))
_EAGER = {"attn_implementation": "eager"}
_VIT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16,
            patch_size=8)
_DINO = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, image_size=16, patch_size=8)
_CLIP = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16,
             patch_size=8)
# 8x8 tokens, window 2: shifted windows with the attention mask (the second block of
# stage one), patch merging, then one plain block (a second one there would only add
# another export of the same ops)
_SWIN = dict(image_size=16, patch_size=2, embed_dim=8, depths=[2, 1], num_heads=[2, 2], window_size=2, mlp_ratio=2.0)
SPECS = {
    "resnet_bottleneck": ("ResNetConfig", dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                               layer_type="bottleneck"), "ResNetModel", Pooled, (3, 32, 32)),
    "resnet_basic": ("ResNetConfig", dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                          layer_type="basic"), "ResNetModel", Pooled, (3, 32, 32)),
    "convnext": ("ConvNextConfig", dict(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=16),
                 "ConvNextModel", Pooled, (3, 16, 16)),
    # default attention implementation (SDPA), and the eager one (matmul, softmax, matmul)
    "vit_sdpa": ("ViTConfig", _VIT, "ViTModel", ClassToken, (3, 16, 16)),
    "vit_eager": ("ViTConfig", {**_VIT, **_EAGER}, "ViTModel", ClassToken, (3, 16, 16)),
    "dinov2_sdpa": ("Dinov2Config", _DINO, "Dinov2Model", Pooled, (3, 16, 16)),
    "dinov2_eager": ("Dinov2Config", {**_DINO, **_EAGER}, "Dinov2Model", Pooled, (3, 16, 16)),
    "clip_sdpa": ("CLIPVisionConfig", _CLIP, "CLIPVisionModel", Pooled, (3, 16, 16)),
    "clip_eager": ("CLIPVisionConfig", {**_CLIP, **_EAGER}, "CLIPVisionModel", Pooled, (3, 16, 16)),
    "swin_sdpa": ("SwinConfig", _SWIN, "SwinModel", Pooled, (3, 16, 16)),
    "swin_eager": ("SwinConfig", {**_SWIN, **_EAGER}, "SwinModel", Pooled, (3, 16, 16)),
    # width 1/8: stem 8 channels, MBConv blocks 8 -> 8 (k3) and 8 -> 16 (k5, stride 2), head 160
    "efficientnet": ("EfficientNetConfig", dict(image_size=32, width_coefficient=0.125, depth_coefficient=1.0,
                                                kernel_sizes=[3, 5], in_channels=[32, 64], out_channels=[64, 128],
                                                strides=[1, 2], num_block_repeats=[1, 1], expand_ratios=[1, 2],
                                                hidden_dim=160),
                     "EfficientNetModel", Pooled, (3, 32, 32)),
}

# open problems: name -> (the checks that fail, or None for all; why). strict, so a fix
# shows up as a failure of its xfail mark (raises=: a different error is a failure too).
_KNOWN: dict = {}


def names(check: str) -> list:
    out = []
    for n in SPECS:
        failing, why = _KNOWN.get(n, (set(), ""))
        known = failing is None or check in failing
        mark = pytest.mark.xfail(reason=why, strict=True, raises=UnsupportedOperatorError)
        out.append(pytest.param(n, marks=mark) if known else n)
    return out


def build(name: str, seed: int = 0) -> tuple[nn.Module, tuple]:
    config_cls, kwargs, model_cls, wrap, shape = SPECS[name]
    config = getattr(T, config_cls)(num_channels=shape[0], **kwargs)
    torch.manual_seed(seed)
    model = wrap(getattr(T, model_cls)(config))
    _randomize(model)
    return model.double().eval(), shape


def batch(shape, n=2, seed=1):
    return torch.randn((n,) + shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


_RECORDS: dict = {}


def _state(model: nn.Module) -> tuple:
    """What exporting must leave as it was: parameters and buffers (values and dtypes),
    requires_grad flags, training flags, forward hooks and the config."""
    return (copy.deepcopy(model.state_dict()), {k: p.requires_grad for k, p in model.named_parameters()},
            [m.training for m in model.modules()], len(model._forward_hooks), model.backbone.config.to_dict())


def recorded(name: str):
    """(model, x, recording under Zero(bias='share'), the user's model state before and
    after the export), built once per model: one export serves every check. The export
    runs on the model as a user hands it over: in training mode, with a frozen stem weight
    and a forward hook, put back in eval mode afterwards for the feature checks."""
    if name not in _RECORDS:
        model, shape = build(name)
        x = batch(shape)
        model.train()
        next(model.parameters()).requires_grad_(False)  # a frozen stem weight: flags must survive as they are
        handle = model.register_forward_hook(lambda m, i, o: None)
        before = _state(model)
        try:
            rec = ExportedNetwork(model, Zero(bias="share"), torch.float64).record(x)
        except UnsupportedOperatorError as err:  # a refused export: refuse again without re-exporting
            rec = err
        after = _state(model)
        handle.remove()
        model.eval()
        _RECORDS[name] = model, x, rec, before, after
    return _RECORDS[name]


def _recording(name: str):
    """(model, x, recording); a refused export raises its error again."""
    model, x, rec, _, _ = recorded(name)
    if isinstance(rec, Exception):
        raise rec
    return model, x, rec


@pytest.mark.parametrize("name", names("features"))
def test_features_equal_forward(name):
    model, x, rec = _recording(name)
    with torch.no_grad():
        close(rec.features, model(x).flatten(1), k=16)


@pytest.mark.parametrize("name", names("fwd_rev"))
def test_forward_mode_equals_reverse_mode(name):
    model, x, rec = _recording(name)
    k = 3
    p = probes(x, k, seed=2)  # (K*N, ...)
    seeds = torch.randn(rec.features.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    seeds = seeds.repeat(k, 1)  # (K*N, h), probe-major like the flows
    fwd = rec.push(p, None)  # forward mode
    q = torch.zeros_like(p, requires_grad=True)
    (grad,) = torch.autograd.grad((rec.push(q, None) * seeds).sum(), q)  # reverse mode: push^T(seeds)
    lhs = (seeds * fwd).reshape(k, -1).sum(1)  # <s, push(p)> per probe
    rhs = (grad * p).reshape(k, -1).sum(1)  # <push^T(s), p> per probe
    # what cancels: the summed |products| of the two inner products (1e3 eps of them)
    terms = torch.cat([(seeds * fwd).abs().reshape(k, -1).sum(1), (grad * p).abs().reshape(k, -1).sum(1)])
    close(lhs, rhs, terms=terms)


@pytest.mark.parametrize("name", names("conserve"))
def test_bias_share_conserves(name):
    model, x, rec = _recording(name)
    eye = indicator_probes(x, 0)  # one probe per pixel (channels together)
    flows = rec.push(eye, 0).reshape(-1, x.shape[0], rec.features.shape[1])
    total = flows.sum(0)
    err = float((total - rec.features).abs().max())
    assert err <= 1e-6 * float(flows.abs().sum(0).max()), err
    # and not trivially: the features are of order one
    assert float(rec.features.abs().max()) > 1e3 * EPS64


@pytest.mark.parametrize("name", names("unchanged"))
def test_user_model_unchanged(name):
    """The export (a deep copy put in eval mode and canonised) and a push under another
    rule leave the user's model as it was."""
    model, x, rec, before, after = recorded(name)
    (state, grads, training, hooks, config), (state_after, *rest) = before, after
    assert all(training) and hooks == 1
    assert state_after.keys() == state.keys()
    for k, v in state_after.items():
        assert v.dtype == state[k].dtype and torch.equal(v, state[k]), k
    assert rest == [grads, training, hooks, config]
    if isinstance(rec, Exception):
        raise rec
    model.train()  # the push: on the same (cached) export, under another rule
    snapshot = copy.deepcopy(model.state_dict())
    try:
        ExportedNetwork(model, Gamma(0.25), torch.float64).record(batch(x.shape[1:])).push(probes(x, 1), 0)
        assert model.training and all(m.training for m in model.modules())
        for k, v in model.state_dict().items():
            assert torch.equal(v, snapshot[k]), k
    finally:
        model.eval()
