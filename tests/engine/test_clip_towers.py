"""The image towers of CLIP and SigLIP (``skbilrp.models.image_tower``), tiny random configs, float64.

Oracles, none using skbilrp's relevance code:

* the model's own ``get_image_features`` (``image_embeds`` of
  ``CLIPVisionModelWithProjection``, ``pooler_output`` of ``SiglipVisionModel``);
* CP-LRP with ``rules="zero"`` against plain-autograd gradient × input of the detach-trick
  twin (the model's own modules with ``.detach()`` written in by hooks,
  tests/test_text_families.py; SigLIP's pooling head is an ``nn.MultiheadAttention``,
  whose softmax the twin detaches too);
* conservation under ``"zero-share"``, both attention rules; forward mode against reverse
  mode; the user's model, byte for byte, and the tower's parameters being the model's.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import pytest
import torch
from test_hf_vision import _randomize
from test_text_families import _safe_ratio, detach_trick
from torch import nn

from skbilrp import Explainer
from skbilrp.models import image_tower

T = pytest.importorskip("transformers")

warnings.filterwarnings("ignore", category=UserWarning)

_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16,
               patch_size=8)
_TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
             max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0)
SHAPE = (3, 16, 16)


def _dual(family: str, attn: str):
    config = getattr(T, f"{family}Config")(vision_config=_VISION, text_config=_TEXT,
                                           **({"projection_dim": 8} if family == "CLIP" else {}))
    config.vision_config._attn_implementation = attn
    return getattr(T, f"{family}Model")(config)


BUILDERS = {
    "clip": lambda: _dual("CLIP", "sdpa"),
    "clip_vision_projection": lambda: T.CLIPVisionModelWithProjection(T.CLIPVisionConfig(projection_dim=8, **_VISION)),
    "siglip": lambda: _dual("Siglip", "sdpa"),
    "siglip_vision": lambda: T.SiglipVisionModel(T.SiglipVisionConfig(**_VISION)),
}
#: explained by the engine: one tower per family (each export takes seconds; the eager
#: attention code of the vision transformers is tested in test_hf_vision.py)
EXPLAINED = ["clip", "siglip"]


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = BUILDERS[name]()
    _randomize(model)
    return model.double()


def batch(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn((n,) + SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def own_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "get_image_features"):
        return model.get_image_features(pixel_values=x).pooler_output
    out = model(pixel_values=x)
    return out.image_embeds if hasattr(out, "image_embeds") else out.pooler_output


def assert_relative(actual: torch.Tensor, expected: torch.Tensor, rtol: float, terms=None) -> None:
    """``|actual - expected| <= rtol * max|terms|`` (terms: what cancels; default expected)."""
    scale = float((expected if terms is None else terms).abs().max())
    assert scale > 0, "degenerate comparison: all zero"
    err = float((actual - expected).abs().max())
    assert err <= rtol * scale, f"max error {err:.3g} vs scale {scale:.3g}"


_MODELS: dict = {}


def model_and_tower(name: str):
    """The model, its tower and a snapshot of the model, built once per module (the
    engine prepares a model once). The model is in training mode with a frozen weight,
    as a user's may be: the explainer must leave both so (no dropout in these configs,
    so training mode computes what evaluation does)."""
    if name not in _MODELS:
        model = build(name).train()
        next(model.parameters()).requires_grad_(False)
        snapshot = (copy.deepcopy(model.state_dict()), {k: p.requires_grad for k, p in model.named_parameters()},
                    model.config.to_dict())
        _MODELS[name] = model, image_tower(model), snapshot
    return _MODELS[name][:2]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_tower_equals_get_image_features(name):
    model, tower = model_and_tower(name)
    x = batch()
    with torch.no_grad():
        assert_relative(tower(x), own_features(model, x), 1e-10)


@pytest.mark.parametrize("name", EXPLAINED)
def test_engine_features_equal_get_image_features(name):
    model, tower = model_and_tower(name)
    x = batch()
    rec = Explainer(tower, rules="zero-share", pooling=8, dtype=torch.float64).relevance(x)
    with torch.no_grad():
        assert_relative(rec.features, own_features(model, x), 1e-10)


@contextlib.contextmanager
def ratio_activations(model: nn.Module):
    """The twin's ratio rule, ``z * (f(z) / z).detach()``, on the activations of these
    families that the text families' twin does not list (CLIP's quick GELU, SigLIP's
    tanh GELU)."""
    act = T.activations
    kinds = tuple(getattr(act, n) for n in ("QuickGELUActivation", "GELUTanh", "PytorchGELUTanh") if hasattr(act, n))
    handles = [m.register_forward_hook(lambda m, args, out: args[0] * _safe_ratio(out, args[0]).detach())
               for m in model.modules() if isinstance(m, kinds)]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def gradient_times_input(tower: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(N, h, H*W)``: per feature, gradient × input of the twin, summed over channels."""
    x = x.clone().requires_grad_(True)
    with torch.enable_grad(), detach_trick(tower), ratio_activations(tower):
        feats = tower(x)
        maps = [torch.autograd.grad(feats[:, m].sum(), x, retain_graph=True)[0] for m in range(feats.shape[1])]
    return torch.stack([(g * x).sum(1).flatten(1) for g in maps], dim=1).detach()


@pytest.mark.parametrize("name", EXPLAINED)
def test_cp_lrp_is_gradient_times_input_of_the_detach_trick_twin(name):
    _, tower = model_and_tower(name)
    x = batch()
    lrp0 = Explainer(tower, rules="zero", mode="forward", dtype=torch.float64).relevance(x)
    oracle = gradient_times_input(tower, x)
    assert_relative(lrp0.relevance, oracle, 1e-10)


@pytest.mark.parametrize("attention", ["cp", "attnlrp"])
@pytest.mark.parametrize("name", EXPLAINED)
def test_zero_share_conserves(name, attention):
    _, tower = model_and_tower(name)
    x = batch()
    rel = Explainer(tower, rules="zero-share", pooling=8, attention=attention, dtype=torch.float64).relevance(x)
    assert_relative(rel.relevance.sum(-1), rel.features, 1e-8, terms=rel.relevance.abs().sum(-1))
    assert float(rel.features.abs().max()) > 1e-3  # and not trivially


@pytest.mark.parametrize("name", EXPLAINED)
def test_forward_mode_equals_reverse_mode(name):
    _, tower = model_and_tower(name)
    x = batch()
    runs = [Explainer(tower, rules="zero-share", pooling=8, mode=mode, dtype=torch.float64).relevance(x)
            for mode in ("forward", "reverse")]
    assert_relative(runs[0].relevance, runs[1].relevance, 1e-10)


@pytest.mark.parametrize("name", EXPLAINED)
def test_model_is_shared_and_left_unchanged(name):
    model, tower = model_and_tower(name)
    state, grads, config = _MODELS[name][2]
    assert {id(p) for p in tower.parameters()} <= {id(p) for p in model.parameters()}  # shared, not copied
    Explainer(tower, rules="zero-share", pooling=8, dtype=torch.float64).explain(batch(1), batch(1, seed=3))
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert after.keys() == state.keys()
    for k, v in after.items():
        assert v.dtype == state[k].dtype and torch.equal(v, state[k]), k
    assert grads == {k: p.requires_grad for k, p in model.named_parameters()}
    assert model.config.to_dict() == config


def test_other_models_are_refused_by_name():
    with pytest.raises(TypeError, match="CLIPModel, CLIPVisionModelWithProjection, SiglipModel"):
        image_tower(T.CLIPVisionModel(T.CLIPVisionConfig(**_VISION)))
    headless = T.SiglipVisionModel(T.SiglipVisionConfig(vision_use_head=False, **_VISION))
    with pytest.raises(ValueError, match="vision_use_head=False"):
        image_tower(headless)
