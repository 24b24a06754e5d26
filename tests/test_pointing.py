"""Pointing games and the end-point flipping score on cases whose answer is known."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from skbilrp.evaluation import (
    FaithfulnessResults,
    BiLRPMethod,
    BiLRPTextMethod,
    HessianProductMethod,
    HessianProductTextMethod,
    RandomMethod,
    collage_masks,
    content_words,
    flipping_auc,
    flipping_endpoint_area,
    group_tiles,
    make_collage_pairs,
    make_shared_word_pairs,
    pointing_game,
    pointing_share,
    shared_word_masks,
    text_pointing_game,
)

DTYPE = torch.float64
EPS = torch.finfo(DTYPE).eps
SIDE, GRID, TILE = 8, 2, 4


class TileSum(nn.Module):
    """``phi(x) = Σ_tiles W x_tile`` with one weight block per channel (grouped conv):
    the linear kernel is a sum of terms that each join one channel of one tile of
    ``x`` with the same channel of one tile of ``x'``."""

    def __init__(self, channels: int = 4, per_channel: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels * per_channel, TILE, stride=TILE, groups=channels, bias=False,
                              dtype=DTYPE)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=torch.Generator().manual_seed(0),
                                               dtype=DTYPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).sum((2, 3))


class TileConcat(TileSum):
    """``phi(x)`` = the per-tile features concatenated: tiles interact only with the
    tile at the same grid position."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1)


def _channel_photos(rng: np.random.Generator) -> list[np.ndarray]:
    """Four photos, photo ``k`` positive in channel ``k`` and zero elsewhere: only the
    same photo can meet in the same channel."""
    photos = np.zeros((4, 4, 12, 10))
    for k in range(4):
        photos[k, k] = rng.uniform(0.1, 1.0, size=(12, 10))
    return list(photos)


@pytest.mark.parametrize("method", [BiLRPMethod("zero"), HessianProductMethod()], ids=["lrp0", "hp"])
def test_exact_explanation_of_a_tile_sum_links_only_corresponding_tiles(method):
    pairs = make_collage_pairs(_channel_photos(np.random.default_rng(1)), 6, SIDE, GRID, flip=0.5,
                               rescale=(0.5, 1.0), random_state=2)
    pairs.X, pairs.X2 = pairs.X.double(), pairs.X2.double()
    res = pointing_game(TileSum(), pairs, {"exact": method}, pooling=2)
    np.testing.assert_allclose(res.share["corresponding"]["exact"], 1.0, rtol=64 * EPS)
    # a derangement: no tile keeps its place, so no relevance links same positions
    np.testing.assert_allclose(res.share["mirrored"]["exact"], 0.0, atol=64 * EPS)
    np.testing.assert_array_equal(res.chance["corresponding"], 0.25)


def test_exact_explanation_of_per_position_features_links_same_positions():
    photos = list(np.random.default_rng(3).uniform(0.1, 1.0, size=(6, 1, 12, 10)))
    pairs = make_collage_pairs(photos, 6, SIDE, GRID, random_state=4)
    pairs.X, pairs.X2 = pairs.X.double(), pairs.X2.double()
    res = pointing_game(TileConcat(channels=1), pairs, {"exact": BiLRPMethod("zero")}, pooling=2)
    np.testing.assert_allclose(res.share["mirrored"]["exact"], 1.0, rtol=64 * EPS)
    np.testing.assert_allclose(res.share["corresponding"]["exact"], 0.0, atol=64 * EPS)


def test_random_relevance_scores_chance_within_a_hoeffding_bound():
    n, delta = 40, 1e-6  # failure probability of the whole test at most delta
    pairs = make_collage_pairs(_channel_photos(np.random.default_rng(5)), n, SIDE, GRID, random_state=6)
    res = pointing_game(TileSum().float(), pairs, {"random": RandomMethod(7)}, pooling=1)
    truth, _ = collage_masks(pairs, pooling=1)
    cells = truth[0].size
    c = truth[0].mean()
    np.testing.assert_array_equal(res.chance["corresponding"], c)
    # share - c = D / S with D = Σ (h_i - c) U_i (mean 0) and S = Σ U_i, U_i ~ U[0, 1] i.i.d.;
    # Hoeffding bounds |D| and S - cells / 2, each with failure probability delta / (2 n) per pair
    log_term = math.log(4 * n / delta)
    d = math.sqrt(0.5 * np.sum((truth[0] - c) ** 2) * log_term)
    s = math.sqrt(0.5 * cells * log_term)
    tolerance = d / (cells / 2 - s)
    assert tolerance < 0.1  # the bound is informative: an exact explanation scores 1
    assert np.all(np.abs(res.share["corresponding"]["random"] - c) <= tolerance)


def _tiles(x: torch.Tensor) -> torch.Tensor:
    """Tiles of one collage ``(C, side, side)`` as ``(C, grid², tile, tile)``, row-major."""
    return x.unfold(1, TILE, TILE).unfold(2, TILE, TILE).reshape(x.shape[0], GRID * GRID, TILE, TILE)


def test_second_collage_holds_the_same_tiles_elsewhere():
    photos = list(np.random.default_rng(8).uniform(size=(5, 3, 9, 13)))
    pairs = make_collage_pairs(photos, 4, SIDE, GRID, random_state=9)
    for n in range(len(pairs)):
        a, b = _tiles(pairs.X[n]), _tiles(pairs.X2[n])
        assert sorted(pairs.photos_a[n]) == sorted(pairs.photos_b[n])
        assert not np.any(pairs.photos_a[n] == pairs.photos_b[n])  # a derangement
        for t, photo in enumerate(pairs.photos_a[n]):
            np.testing.assert_array_equal(a[:, t], b[:, list(pairs.photos_b[n]).index(photo)])
    with pytest.raises(ValueError, match="distinct photos"):
        make_collage_pairs(photos[:3], 1, SIDE, GRID)
    with pytest.raises(ValueError, match="rescale"):
        make_collage_pairs(photos, 1, SIDE, GRID, rescale=(0.5, 1.5))


def test_groups_straddling_two_tiles_are_refused():
    rows = np.repeat(np.arange(SIDE), SIDE).reshape(SIDE, SIDE)  # one group per pixel row: across both tiles
    with pytest.raises(ValueError, match="hold pixels of two tiles"):
        group_tiles(rows, (1, SIDE, SIDE), GRID)
    np.testing.assert_array_equal(group_tiles(2, (1, SIDE, SIDE), GRID),
                                  [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3])


def test_pointing_share_by_hand():
    rel = np.array([[3.0, -1.0], [1.0, 0.0]])
    assert pointing_share(rel, np.eye(2, dtype=bool)) == pytest.approx(0.75, rel=4 * EPS)
    assert math.isnan(pointing_share(-rel ** 2, np.eye(2, dtype=bool)))
    with pytest.raises(ValueError, match="same shape"):
        pointing_share(rel, np.eye(3, dtype=bool))


# --------------------------------------------------------------------------- text


class OneHotBag(nn.Module):
    """``f(text) = Σ_t onehot(id_t)``: two texts interact only through equal tokens."""

    def __init__(self, vocab: list[str]) -> None:
        super().__init__()
        self.vocab = {w: i + 3 for i, w in enumerate(vocab)}
        self.table = torch.eye(3 + len(vocab), dtype=DTYPE)
        self.tokenizer = SimpleNamespace(cls_token_id=1, sep_token_id=2, pad_token_id=0, mask_token_id=None,
                                         unk_token_id=None)

    def tokenize(self, texts: list[str], max_length: int | None = None) -> dict:
        ids, offsets = [], []
        for t in texts:
            spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", t)]
            ids.append([1] + [self.vocab[t[s:e]] for s, e in spans] + [2])
            offsets.append([(0, 0)] + spans + [(0, 0)])
        return {"input_ids": ids, "offset_mapping": offsets}

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.table[ids], mask

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return (x * attention_mask[..., None].to(x.dtype)).sum(1)


SENTENCES = ["Alpha bravo charlie delta", "Echo foxtrot golf hotel", "India juliet kilo lima",
             "Mike november oscar papa"]


@pytest.mark.parametrize("method", [BiLRPTextMethod(rules="zero"), HessianProductTextMethod(at=None)],
                         ids=["lrp0", "hp"])
def test_exact_text_explanation_points_at_the_shared_word(method):
    pairs = make_shared_word_pairs(6, SENTENCES, random_state=0)
    enc = OneHotBag(sorted({w for s in SENTENCES for w in s.split()}))
    res = text_pointing_game(enc, pairs, {"exact": method})
    np.testing.assert_allclose(res.share["shared word"]["exact"], 1.0, rtol=64 * EPS)
    # four ordinary tokens each, one true pair: chance is 1 / 16
    np.testing.assert_allclose(res.chance["shared word"], 1 / 16, rtol=4 * EPS)


def test_shared_word_pairs_share_exactly_one_content_word_elsewhere():
    pairs = make_shared_word_pairs(40, random_state=1)
    assert len({(p.text_a, p.text_b) for p in pairs}) == 40
    for p in pairs:
        assert p.text_a[slice(*p.span_a)] == p.word == p.text_b[slice(*p.span_b)]
        words_a = {w.lower().rstrip("s") for w, _, _ in content_words(p.text_a)}
        words_b = {w.lower().rstrip("s") for w, _, _ in content_words(p.text_b)}
        assert words_a & words_b == {p.word.lower().rstrip("s")}
        place_a = [s for _, s, _ in content_words(p.text_a)].index(p.span_a[0])
        place_b = [s for _, s, _ in content_words(p.text_b)].index(p.span_b[0])
        assert place_a != place_b


def test_shared_word_masks_need_character_offsets():
    enc = OneHotBag(sorted({w for s in SENTENCES for w in s.split()}))
    pairs = make_shared_word_pairs(1, SENTENCES, random_state=0)
    mask = shared_word_masks(enc, pairs)[0]
    assert mask.sum() == 1 and not mask[[0, -1]].any() and not mask[:, [0, -1]].any()
    enc.tokenize = lambda texts, max_length=None: {"input_ids": [[1, 2]] * len(texts)}
    with pytest.raises(ValueError, match="offset"):
        shared_word_masks(enc, pairs)


# ------------------------------------------------------------- end-point flipping score


def test_endpoint_area_by_hand():
    steps = 4
    line = np.linspace(2.0, 0.5, steps + 1)
    assert flipping_endpoint_area(line) == pytest.approx(0.0, abs=16 * EPS)
    drop = np.array([2.0, 0.5, 0.5, 0.5, 0.5])  # the best: falls to the end point at once
    assert flipping_endpoint_area(drop) == pytest.approx(-(1 - 1 / steps) / 2, rel=16 * EPS)
    # rises above its start: gap to the line 0, 1.375, 0.75, 0.375, 0 -> area 1.25 / 4, / 1.5
    rise = np.array([2.0, 3.0, 2.0, 1.25, 0.5])
    assert flipping_endpoint_area(rise) == pytest.approx((1.375 + 0.75 + 0.375) / 4 / 1.5, rel=16 * EPS)
    # an end above the start: the line climbs; a dip below it still scores well
    assert flipping_endpoint_area(np.array([1.0, 0.0, 2.0])) == pytest.approx(-0.75, rel=16 * EPS)
    assert math.isnan(flipping_endpoint_area(np.array([1.0, 0.3, 1.0])))


def test_endpoint_area_orders_curves_like_the_auc_for_shared_end_points():
    rng = np.random.default_rng(0)
    curves = np.concatenate([np.full((20, 1), 2.0), rng.uniform(0, 3, size=(20, 7)), np.full((20, 1), 0.7)], 1)
    endpoint = np.array([flipping_endpoint_area(c) for c in curves])
    auc = np.array([flipping_auc(c) for c in curves])
    assert np.array_equal(np.argsort(endpoint), np.argsort(auc))


def test_flipping_table_reports_the_endpoint_score_next_to_the_auc():
    curves = {"pairwise": {"a": np.array([[2.0, 0.5, 0.5], [1.0, 0.5, 0.0]]),
                           "b": np.array([[2.0, 1.25, 0.5], [1.0, 1.5, 0.0]])}}
    auc = {mode: {m: np.array([flipping_auc(c) for c in cs]) for m, cs in per.items()} for mode, per in curves.items()}
    res = FaithfulnessResults(["a", "b"], ["pairwise"], np.linspace(0, 1, 3), curves, auc)
    # a: -0.25 (drops at once) and 0 (straight); b: 0 (straight) and +0.5 (rises above its start)
    np.testing.assert_allclose(res.endpoint("pairwise", "a"), [-0.25, 0.0], atol=16 * EPS)
    np.testing.assert_allclose(res.endpoint("pairwise", "b"), [0.0, 0.5], atol=16 * EPS)
    table = res.to_markdown("a")
    assert "| pairwise vs line | pairwise AUC | a lower (pairwise) |" in table
    assert "| b | +0.250 ± 0.250 |" in table and "2/2" in table
