"""Vision transformers explained patch × patch through DeepKernel / Explainer.

Models: Hugging Face ViT, DINOv2 and CLIP vision towers (tiny configs, random weights of
order one, no download) wrapped to return their embedding, a ViT block built on torch's
``nn.MultiheadAttention`` (tests/engine/zoo.py), and the shipped digits ViT
(:func:`skbilrp.models.digits_vit.digits_vit`). Each runs in float64 under both
attention rules.

Checks: the engine's features are the model's own forward; forward mode (one probe per
patch) equals reverse mode (one seed per feature); with ``rules="zero-share"`` the pair
relevance sums to the explained similarity, the class token and the position embedding
following the bias mode like biases; ``pooling=<patch size>`` groups the pixels exactly
as the model's patch embedding does; DeepKernel's kernel is the cosine of the model's
features and its explanations are (patches × patches) matrices; the user's model is
left as it was. The engine-level checks of these backbones are in
tests/engine/test_hf_vision.py; this file is about the kernel level.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).with_name("engine")))  # tests/engine's shared helpers and zoo
from helpers import EPS64, close  # noqa: E402
from zoo import ViTBlock  # noqa: E402

from skbilrp import DeepKernel, Explainer  # noqa: E402
from skbilrp.models.digits import load_digits_images  # noqa: E402
from skbilrp.models.digits_vit import DigitsViT, digits_vit, digits_vit_rules  # noqa: E402
from skbilrp.relevance import RelevanceComputer  # noqa: E402
from skbilrp.rules import Zero  # noqa: E402

try:  # the Hugging Face wrappers and their order-one initialisation
    from test_hf_vision import T, ClassToken, Pooled, _randomize
except pytest.skip.Exception:  # no transformers: the digits ViT is still tested
    T = ClassToken = Pooled = _randomize = None

warnings.filterwarnings("ignore", category=FutureWarning)

ATTENTION = ["cp", "attnlrp"]
N = 3  # samples per batch: one batch shape, so one export per explainer

_HF = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8,
           num_channels=3)


def _hf(config: str, model: str, wrap, model_kwargs=None, **kwargs):
    return lambda: wrap(getattr(T, model)(getattr(T, config)(**_HF, **kwargs), **(model_kwargs or {})))


# name -> (builder, sample shape, patch size, randomise weights); 16 patches each
SPECS = {
    "hf_vit": (_hf("ViTConfig", "ViTModel", ClassToken, {"add_pooling_layer": False}, intermediate_size=64),
               (3, 32, 32), 8, True),
    "hf_dinov2": (_hf("Dinov2Config", "Dinov2Model", Pooled, mlp_ratio=2), (3, 32, 32), 8, True),
    "hf_clip": (_hf("CLIPVisionConfig", "CLIPVisionModel", Pooled, intermediate_size=64), (3, 32, 32), 8, True),
    "torch_mha_vit": (lambda: ViTBlock(c=3, torch_mha=True, d=32, patch=8, size=32), (3, 32, 32), 8, True),
    "digits_vit": (lambda: digits_vit(pretrained=True), (1, 8, 8), 2, False),
}
_NEEDS_HF = {"hf_vit", "hf_dinov2", "hf_clip", "torch_mha_vit"}  # the last for _randomize

def needs(name: str) -> None:
    if T is None and name in _NEEDS_HF:
        pytest.skip("needs transformers")


def build(name: str) -> nn.Module:
    make, _, _, randomize = SPECS[name]
    torch.manual_seed(0)
    model = make()
    if randomize:
        _randomize(model)
    return model.double().eval()


def batch(name: str) -> torch.Tensor:
    """Three images: held-out digits for the digits ViT, uniform noise in [0, 1] else."""
    if name == "digits_vit":
        return torch.from_numpy(load_digits_images("test")[0][:N]).double()
    return torch.rand((N,) + SPECS[name][1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _params() -> list:
    return [pytest.param((name, attention), id=f"{name}-{attention}",
                         marks=pytest.mark.skipif(T is None and name in _NEEDS_HF, reason="needs transformers"))
            for name in SPECS for attention in ATTENTION]


@pytest.fixture(scope="module", params=_params())
def explained(request):
    """(name, attention, model, x, explainer, forward-mode relevance of x, the model's
    state before and after), one model at a time (pytest groups the tests by it). The
    explainer is built on the model as a user may leave it (:func:`left_by_a_user`);
    the model is then put back into eval mode for the comparisons."""
    name, attention = request.param
    model, x = build(name), batch(name)
    handle = left_by_a_user(model)
    before = state(model)
    ex = Explainer(model, rules="zero-share", pooling=SPECS[name][2], mode="forward",
                   dtype=torch.float64, attention=attention)
    rel = ex.relevance(x)
    after = state(model)
    handle.remove()
    return name, attention, model.eval(), x, ex, rel, (before, after)


def left_by_a_user(model: nn.Module):
    """Training mode, a frozen first weight and a forward hook; returns the hook's handle."""
    model.train()
    next(model.parameters()).requires_grad_(False)
    return model.register_forward_hook(lambda m, i, o: None)


def state(model: nn.Module) -> dict:
    """What explaining must leave alone: values, dtypes, requires_grad, training flags, hooks."""
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": [m.training for m in model.modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()],
    }


def assert_unchanged(before: dict, after: dict) -> None:
    assert after["tensors"].keys() == before["tensors"].keys()
    for k, v in after["tensors"].items():
        assert v.dtype == before["tensors"][k].dtype and torch.equal(v, before["tensors"][k]), k
    assert after["grads"] == before["grads"]
    assert after["training"] == before["training"] and all(after["training"])
    assert after["hooks"] == before["hooks"]


def relative(k: float) -> float:
    """``k`` relative to the scale, as the ``k`` (units of eps64) that ``close`` takes."""
    return k / EPS64


def test_features_equal_the_models_forward(explained):
    _, _, model, x, _, rel, _ = explained
    with torch.no_grad():
        close(rel.features, model(x).flatten(1), k=relative(1e-10))


def test_forward_mode_equals_reverse_mode(explained):
    name, _, _, x, ex, rel, _ = explained
    reverse = RelevanceComputer(ex.network, SPECS[name][2], mode="reverse")(x)  # the same exported network
    assert rel.relevance.shape == (N, rel.features.shape[1], 16)
    close(reverse.relevance, rel.relevance, k=relative(1e-8))


@pytest.mark.parametrize("kernel", ["linear", "cosine"])
def test_pair_relevance_sums_to_the_similarity(explained, kernel):
    name, attention, _, x, ex, _, _ = explained
    e = ex.explain(x, kernel=kernel)  # all 3 x 3 pairs of the batch
    assert e.relevance.shape == (N, N, 16, 16)
    total, sim = e.relevance.sum((-2, -1)), e.similarity
    assert np.abs(sim).min() > 1e-3  # not trivially: similarities of order one
    err = float(np.max(np.abs(total - sim) / np.abs(sim)))
    assert err <= 1e-6, f"relative conservation error {err:.3g}"


def test_explainer_leaves_the_users_model_alone(explained):
    assert_unchanged(*explained[-1])


@pytest.mark.skipif(T is None, reason="needs transformers")
@pytest.mark.parametrize("mode", ["absorb", "share", "flat"])
def test_class_token_and_position_embedding_follow_the_bias_mode(mode):
    """A ViT whose only constants are its class token and position embedding: they absorb
    relevance under bias="absorb" and pass it on to the pixels under "share" / "flat"."""
    model, x = build("hf_vit"), batch("hf_vit")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm)) and m.bias is not None:
                m.bias.zero_()
    e = Explainer(model, rules=Zero(bias=mode), pooling=8, dtype=torch.float64).explain(x, kernel="cosine")
    err = float(np.max(np.abs(e.relevance.sum((-2, -1)) - e.similarity) / np.abs(e.similarity)))
    if mode == "absorb":
        assert err > 1e-2, err
    else:
        assert err <= 1e-6, err


@pytest.mark.parametrize("name", list(SPECS))
def test_patch_pooling_groups_pixels_as_the_models_patch_embedding(name):
    """Group g of ``pooling=<patch>`` is the set of pixels that token g of the model's
    patch embedding (its first conv, tokens in the models' ``flatten(2)`` order) reads."""
    needs(name)
    model, x = build(name), batch(name)[:1]
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    jac = torch.autograd.functional.jacobian(lambda t: conv(t).flatten(2)[0], x)  # (D, T, 1, C, H, W)
    reads = jac.abs().sum((0, 2, 3)) != 0  # (T, H, W): the pixels each token reads
    pooling = Explainer(model, pooling=SPECS[name][2]).computer.pooling_for(tuple(x.shape[1:]))
    labels = torch.as_tensor(pooling.labels)
    assert pooling.n_groups == reads.shape[0] == 16
    for t in range(reads.shape[0]):
        assert torch.equal(reads[t], labels == t), t


# DeepKernel passes ``attention`` on to the Explainer checked above under both rules:
# AttnLRP here only on the shipped model, on the others in the slow run
@pytest.mark.parametrize("name, attention", [
    pytest.param(name, attention, id=f"{name}-{attention}",
                 marks=[pytest.mark.slow] if attention == "attnlrp" and name != "digits_vit" else [])
    for name in SPECS for attention in ATTENTION])
def test_deep_kernel_explains_patch_pairs_and_leaves_the_model_alone(name, attention):
    needs(name)
    model, x = build(name), batch(name).numpy()
    with torch.no_grad():
        f = nn.functional.normalize(model(torch.from_numpy(x)).flatten(1), dim=1)
    cosine = torch.from_numpy((f @ f.T).numpy())
    handle = left_by_a_user(model)
    before = state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # training-mode warning: test_reliability_kernel
        dk = DeepKernel(model, kernel="cosine", rules="zero-share", pooling=SPECS[name][2],
                        attention=attention).fit(x)
        K = dk.transform(x)
        E = dk.explain_pairs(x)
    close(torch.from_numpy(K), cosine, k=relative(1e-10))
    assert E.relevance.shape == (N, N, 16, 16)  # (patches of x_i) x (patches of x_j)
    close(torch.from_numpy(E.similarity), cosine, k=relative(1e-10))
    assert_unchanged(before, state(model))
    handle.remove()


# ------------------------------------------------------------- the shipped digits ViT

#: held-out accuracy of the shipped weights (scripts/train_digits_vit.py): 442 / 450
RECORDED_CORRECT = 442


def test_digits_vit_weights_are_a_small_float32_state_dict():
    path = Path(os.path.dirname(sys.modules[DigitsViT.__module__].__file__)) / "weights" / "digits_vit.pt"
    assert path.stat().st_size <= 1024 * 1024
    weights = torch.load(path, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float32 for v in weights.values())
    assert weights.keys() == DigitsViT().state_dict().keys()


def test_digits_vit_reaches_the_recorded_held_out_accuracy():
    X, y = load_digits_images("test")
    model = digits_vit(pretrained=True, features_only=False)
    assert not model.training
    with torch.no_grad():
        correct = int((model(torch.from_numpy(X)).argmax(1).numpy() == y).sum())
    assert correct >= RECORDED_CORRECT - 1  # one borderline image may flip with the BLAS


def test_digits_vit_features_classify_by_cosine_to_class_means():
    """The embedding itself (no head) separates the digits: nearest class mean by cosine."""
    X_train, y_train = load_digits_images("train")
    X_test, y_test = load_digits_images("test")
    phi = digits_vit()
    with torch.no_grad():
        f_train = nn.functional.normalize(phi(torch.from_numpy(X_train)), dim=1).numpy()
        f_test = nn.functional.normalize(phi(torch.from_numpy(X_test)), dim=1).numpy()
    means = np.stack([f_train[y_train == c].mean(0) for c in range(10)])
    assert ((f_test @ means.T).argmax(1) == y_test).mean() >= 0.95


def test_digits_vit_rules_pass_every_bias_on():
    model = digits_vit()
    rules = digits_vit_rules(model)
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm))]
    assert sorted(rules) == sorted(layers)
    assert set(rules.values()) == {Zero(bias="share")}


def test_shipped_digits_vit_kernel_and_explanations_in_float32():
    """As a user runs it: the float32 model, its rules, 2x2 patches; a kernel between
    held-out and training digits, explanations summing to it up to float32 round-off."""
    X_train, _ = load_digits_images("train")
    X_test, _ = load_digits_images("test")
    phi = digits_vit()
    dk = DeepKernel(phi, rules=digits_vit_rules(phi), pooling=2).fit(X_train[:N])
    K = dk.transform(X_test[:N])
    with torch.no_grad():
        fa = nn.functional.normalize(phi(torch.from_numpy(X_test[:N])).double(), dim=1)
        fb = nn.functional.normalize(phi(torch.from_numpy(X_train[:N])).double(), dim=1)
    assert np.abs(K - (fa @ fb.T).numpy()).max() <= 1e-6
    E = dk.explain_pairs(X_test[:N])
    assert E.relevance.shape == (N, N, 16, 16)
    assert np.abs(E.relevance.sum((-2, -1)) - K).max() <= 1e-5
