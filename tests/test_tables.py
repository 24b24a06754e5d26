"""Synthetic tables and the bigram network: ground truth, custom rule, acceptance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skbilrp import Explainer
from skbilrp.models import digits_cnn_rules, load_digits_images
from skbilrp.tables import (
    GLYPH,
    ROW_PITCH,
    BigramProduct,
    bigram_cells,
    bigram_network,
    cell_labels,
    cnn_table_features,
    explain_table_pairs,
    make_table_pair,
    same_bigram_mask,
    top_interaction_precision,
)

DTYPE = torch.float64
SEEDS = range(8)


def _number_bigrams(number: str) -> set:
    return {(int(number[i]), int(number[i + 1])) for i in range(len(number) - 1)}


@pytest.fixture(scope="module")
def network():
    return bigram_network()


@pytest.fixture(scope="module")
def pairs():
    return [make_table_pair(random_state=seed) for seed in SEEDS]


def test_bigram_ground_truth_on_a_hand_made_grid():
    a = np.array([[1, 2, 3, -1, 4, 5],
                  [-1, 2, 3, -1, 1, 2]])
    b = np.array([[-1, 1, 2, -1, 9, 9],
                  [-1, 4, 5, -1, -1, 8]])
    cells = bigram_cells(a)
    assert cells == {(1, 2): {0, 1, 10, 11}, (2, 3): {1, 2, 7, 8}, (4, 5): {4, 5}}
    mask = same_bigram_mask(a, b)
    # shared: (1, 2) -> a {0, 1, 10, 11} x b {1, 2}; (4, 5) -> a {4, 5} x b {7, 8}
    expected = np.zeros((12, 12), dtype=bool)
    expected[np.ix_([0, 1, 10, 11], [1, 2])] = True
    expected[np.ix_([4, 5], [7, 8])] = True
    np.testing.assert_array_equal(mask, expected)


def test_generated_pairs_share_exactly_the_bigrams_of_the_copied_numbers(pairs):
    for pair in pairs:
        shared = set().union(*(_number_bigrams(s) for s, _, _ in pair.shared))
        assert bigram_cells(pair.a.digits).keys() & bigram_cells(pair.b.digits).keys() == shared
        for table in (pair.a, pair.b):
            # ink exactly in the glyph area of non-blank cells
            rows, cells = table.digits.shape
            assert table.image.shape == (1, rows * ROW_PITCH, cells * GLYPH)
            ink = table.image[0].reshape(rows, ROW_PITCH, cells, GLYPH).sum(axis=(1, 3)) > 0
            np.testing.assert_array_equal(ink, table.digits >= 0)


def test_cell_labels_group_each_cell():
    labels = cell_labels((2, 3))
    assert labels.shape == (2 * ROW_PITCH, 3 * GLYPH)
    assert labels[ROW_PITCH - 1, 2 * GLYPH] == 2
    assert labels[ROW_PITCH, GLYPH - 1] == 3
    assert np.bincount(labels.ravel()).tolist() == [ROW_PITCH * GLYPH] * 6


def test_detector_recognises_held_out_digits(network):
    X, y = load_digits_images("test")
    with torch.no_grad():
        presence = network.detector(torch.from_numpy(X)).flatten(1).numpy()
    assert (presence.argmax(1) == y).mean() > 0.95


def test_bigram_rule_splits_each_product_half_to_each_factor(network, pairs):
    """Per-feature relevance of cell c for feature (a, b), from the presence maps d:
    0.5 d_a(c) d_b(c+1) (c is the left digit) + 0.5 d_a(c-1) d_b(c) (the right one)."""
    table = pairs[0].a
    x = torch.from_numpy(table.image[None]).to(DTYPE)
    ex = Explainer(network, pooling=cell_labels(table.digits.shape), dtype=DTYPE)
    rel = ex.relevance(x).relevance[0].numpy().reshape(10, 10, -1)
    with torch.no_grad():
        d = network.detector.double()(x)[0].numpy()  # (10, R, C)
    left = np.zeros((10, 10) + d.shape[1:])
    right = np.zeros_like(left)
    left[..., :-1] = 0.5 * d[:, None, :, :-1] * d[None, :, :, 1:]
    right[..., 1:] = 0.5 * d[:, None, :, :-1] * d[None, :, :, 1:]
    expected = (left + right).reshape(10, 10, -1)
    np.testing.assert_allclose(rel, expected, rtol=1e-9, atol=1e-12)


def test_bigram_network_conserves_with_the_custom_rule(network, pairs):
    pair = pairs[1]
    ex = Explainer(network, pooling=cell_labels(pair.a.digits.shape), dtype=DTYPE)
    for mode in ("forward", "reverse"):
        ex.computer.mode = mode
        e = ex.explain(pair.a.image[None], pair.b.image[None]).pair(0, 0)
        assert e.similarity > 1.0  # the copied numbers make the histograms overlap
        assert e.relevance.sum() == pytest.approx(e.similarity, rel=1e-12)


def test_bigram_product_module_matches_its_definition():
    d = torch.rand(2, 10, 3, 4)
    out = BigramProduct()(d)
    assert out.shape == (2, 10, 10, 3, 3)
    assert out[1, 4, 7, 2, 1] == d[1, 4, 2, 1] * d[1, 7, 2, 2]


def _precisions(model, pairs, rules="zero") -> list[float]:
    explanations = explain_table_pairs(model, pairs, rules)
    return [top_interaction_precision(explanations.pair(i).relevance,
                                      same_bigram_mask(pair.a.digits, pair.b.digits), k=10)
            for i, pair in enumerate(pairs)]


def test_top_interactions_link_identical_digit_pairs(network, pairs):
    """Acceptance: >= 80 % of the 10 strongest cell interactions join cells of the same
    bigram in both tables (a random non-blank cell pair does so about 1 % of the time)."""
    precision = _precisions(network, pairs)
    assert np.mean(precision) >= 0.8, precision


def test_generic_cnn_similarity_does_not_link_bigrams(pairs):
    model = cnn_table_features()
    generic = _precisions(model, pairs[:4], rules=digits_cnn_rules(model))
    assert np.mean(generic) < 0.3, generic


def test_errors_name_the_cause():
    with pytest.raises(ValueError, match="n_shared"):
        make_table_pair(rows=1, fields=2, n_shared=3)
    with pytest.raises(ValueError, match="same shape"):
        top_interaction_precision(np.zeros((2, 3)), np.zeros((3, 2), dtype=bool))
    small, large = make_table_pair(rows=2, random_state=0), make_table_pair(rows=3, random_state=0)
    with pytest.raises(ValueError, match="same size"):
        explain_table_pairs(bigram_network(), [small, large])
