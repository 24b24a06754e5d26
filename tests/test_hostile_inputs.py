"""Hostile inputs that used to end badly (issue 21, part 2): each now fails early with a
message that names the cause and the fix, or works.

One test (or group) per numbered item:
1. materialising a factored result over ``max_memory``;  2. ``pooling=3.5``;
3. ``TextKernel.fit(sparse)``;  4. a pipeline whose DeepKernel step was refitted alone;
5. a model on the meta device;  6. images of different sizes in one list;
7. ``memory=`` a read-only directory;  8. ``skbilrp report/explain/text/demo`` with a bad
``--output`` or argument: refused before any work.
"""

from __future__ import annotations

import errno
import os
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from skbilrp import DeepKernel, Explainer
from skbilrp.io import resize_center_crop
from skbilrp.pairs import pair_relevance
from skbilrp.pooling import make_pooling
from skbilrp.relevance import SampleRelevance


def _phi(in_features: int = 64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 6, bias=False), nn.ReLU()).double()


def _images(n: int, side: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, side, side))


# ------------------------------------------------- 1. materialisation guard


@pytest.fixture
def factored():
    """A factored result whose one entry is a 256 x 256 matrix (512 KiB in float64),
    under a budget of 64 KiB: what pooling=None on a large image is, scaled down."""
    rng = np.random.default_rng(0)
    pooling = make_pooling(None, (16, 16), None)
    a = SampleRelevance(torch.from_numpy(rng.random((2, 3, 256))), torch.from_numpy(rng.random((2, 3))), pooling)
    b = SampleRelevance(torch.from_numpy(rng.random((3, 3, 256))), torch.from_numpy(rng.random((3, 3))), pooling)
    return a, b


_GUARD = r"256 x 256.*GiB.*max_memory=65536 bytes.*pooling.*max_memory=.*top_interactions"


def test_pair_and_iteration_are_refused_over_max_memory(factored):
    a, b = factored
    expl = pair_relevance(a, b, "cosine", max_memory=2**16)
    with pytest.raises(MemoryError, match=r"1 kernel entries on " + _GUARD):
        expl.pair(0, 0)
    with pytest.raises(MemoryError, match=_GUARD):
        next(iter(expl))
    with pytest.raises(MemoryError, match=_GUARD):
        expl[1, 2].pair(0, 0)  # a sub-block shares the factors and the budget
    chosen = pair_relevance(a, b, "linear", pairs=[(0, 1), (1, 2)], max_memory=2**16)
    with pytest.raises(MemoryError, match=_GUARD):
        chosen.pair(1)
    with pytest.raises(MemoryError, match=_GUARD):
        chosen[0].relevance


def test_alternatives_named_by_the_guard_work(factored):
    a, b = factored
    expl = pair_relevance(a, b, "cosine", max_memory=2**16)
    tops = expl.top_interactions(3)  # streams over tiles: no 256 x 256 matrix
    assert len(tops) == 2 and len(tops[0]) == 3 and len(tops[0][0]) == 3
    marg_a, marg_b = expl[0, 1].marginals()  # (1, 1, 256) each: within the budget
    assert marg_a.shape == marg_b.shape == (1, 1, 256)
    roomy = pair_relevance(a, b, "cosine", max_memory=2**20)
    one = roomy.pair(0, 1)
    assert one.relevance.shape == (256, 256)
    np.testing.assert_allclose(one.relevance.sum(axis=1), marg_a[0, 0], rtol=1e-12, atol=0)
    assert [(g, h) for g, h, _ in tops[0][1]] == [(g, h) for g, h, _ in one.top_interactions(3)]
    coarse = make_pooling(4, (16, 16), None)  # what pooling=4 would give: 16 groups per side
    pooled = SampleRelevance(torch.from_numpy(coarse.pool(a.relevance.reshape(-1, 16, 16)).numpy().reshape(2, 3, 16)),
                             a.features, coarse)
    assert pair_relevance(pooled, pooled, max_memory=2**16).pair(0, 1).relevance.shape == (16, 16)


def test_whole_relevance_and_marginals_keep_their_refusals(factored):
    a, b = factored
    expl = pair_relevance(a, b, "linear", max_memory=2**16)
    with pytest.raises(MemoryError, match=r"6 kernel entries.*GiB.*pairs=.*pooling.*top_interactions"):
        expl.relevance
    with pytest.raises(MemoryError, match=r"marginals.*top_interactions"):
        pair_relevance(a, b, "linear", max_memory=2**12).marginals()
