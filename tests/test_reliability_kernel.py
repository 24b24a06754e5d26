"""DeepKernel on hostile input: stale or corrupted caches, overflow, empty and flat X,
oversized explanations, parameters changed after fit, half precision, training mode.

Each test reproduces a way main used to be silently wrong or crash unhelpfully.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import round_off
from sklearn.exceptions import NotFittedError
from torch import nn

import skbilrp
from skbilrp import Explainer
from skbilrp.encoders.images import _RelevanceTask
from skbilrp.kernel import DeepKernel
from skbilrp.models import digits_cnn, load_digits_images


class Scaled(nn.Module):
    """``relu(W x) * scale`` with ``scale`` a plain Python float: not in the state dict."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.base = nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU()).double()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * self.scale


@pytest.fixture
def x6() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (7, 6))


def count_relevance_calls(monkeypatch) -> list:
    """Patch the relevance task so each call records its number of samples."""
    calls: list = []
    original = _RelevanceTask.__call__
    monkeypatch.setattr(_RelevanceTask, "__call__", lambda self, xs: calls.append(len(xs)) or original(self, xs))
    return calls


# ------------------------------------------------------------------------ cache


def test_cache_key_covers_plain_attributes_of_the_model(x6, tmp_path):
    one = DeepKernel(Scaled(1.0), kernel="linear", memory=str(tmp_path)).fit(x6)
    e_one = one.explain_pairs(x6[:2])
    three = DeepKernel(Scaled(3.0), kernel="linear", memory=str(tmp_path)).fit(x6)
    fresh = DeepKernel(Scaled(3.0), kernel="linear").fit(x6)
    np.testing.assert_array_equal(three.features_fit_, fresh.features_fit_)
    np.testing.assert_array_equal(three.transform(x6), fresh.transform(x6))
    e_three = three.explain_pairs(x6[:2])
    np.testing.assert_array_equal(e_three.relevance, fresh.explain_pairs(x6[:2]).relevance)
    # linear kernel, bias-free: relevance scales with scale**2
    np.testing.assert_allclose(e_three.relevance, 9 * e_one.relevance, rtol=1e-12)


_SECOND_PROCESS = textwrap.dedent("""
    import sys, numpy as np, torch
    from torch import nn
    from skbilrp.encoders.images import _RelevanceTask
    from skbilrp.kernel import DeepKernel
    from skbilrp.rules import ZBox, Zero
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.ReLU(), nn.Flatten()).double()
    # rules holding tensors: joblib used to hash them by storage address
    rules = {"0": ZBox(torch.zeros(1, 1, 1), torch.ones(1, 1, 1)), "*": Zero()}
    x = np.random.default_rng(0).uniform(0, 1, (4, 1, 5, 5))
    if sys.argv[2] == "forbid":
        def fail(self, xs):
            raise AssertionError(f"relevance recomputed for {len(xs)} samples")
        _RelevanceTask.__call__ = fail
    e = DeepKernel(model, memory=sys.argv[1], rules=rules).fit(x).explain_pairs(x[:2])
    np.save(sys.argv[3], e.relevance)
""")


def test_cache_resumes_in_a_new_process_with_tensor_rules(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(_SECOND_PROCESS)
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(Path(skbilrp.__file__).resolve().parents[1])}

    def run(mode: str, out: str) -> None:
        done = subprocess.run([sys.executable, str(script), str(cache), mode, str(tmp_path / out)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]

    run("compute", "first.npy")
    entries = sorted(p.name for p in cache.rglob("*.npz"))
    run("forbid", "second.npy")  # fails if anything is recomputed
    assert sorted(p.name for p in cache.rglob("*.npz")) == entries
    np.testing.assert_array_equal(np.load(tmp_path / "first.npy"), np.load(tmp_path / "second.npy"))


def test_corrupted_cache_entry_is_recomputed_with_one_warning(x6, tmp_path, monkeypatch):
    model = Scaled(2.0)
    expected = DeepKernel(model).fit(x6).explain_pairs(x6[:3])
    DeepKernel(model, memory=str(tmp_path)).fit(x6).explain_pairs(x6[:3])
    for kind in ("features", "relevance"):  # truncate two entries of each kind
        for path in sorted(tmp_path.rglob(f"{kind}/*/*.npz"))[:2]:
            path.write_bytes(path.read_bytes()[:20])
    calls = count_relevance_calls(monkeypatch)
    with pytest.warns(RuntimeWarning, match="could not be read") as record:
        again = DeepKernel(model, memory=str(tmp_path)).fit(x6).explain_pairs(x6[:3])
    assert sum(calls) >= 1
    assert len([w for w in record if "could not be read" in str(w.message)]) <= 2  # once per store
    # recomputed in a smaller batch: equal up to float64 round-off of the largest entry
    np.testing.assert_allclose(again.relevance, expected.relevance, rtol=0,
                               atol=round_off(np.abs(expected.relevance).max(), np.float64, k=16))
    with warnings.catch_warnings():  # overwritten: read cleanly the next time
        warnings.simplefilter("error")
        DeepKernel(model, memory=str(tmp_path)).fit(x6).explain_pairs(x6[:3])


def test_unpicklable_model_is_not_cached_and_says_so(x6, tmp_path):
    model = Scaled(1.0)
    model.hook = lambda t: t  # a lambda cannot be pickled: no way to key the cache
    with pytest.warns(UserWarning, match="not cached") as record:
        kern = DeepKernel(model, memory=str(tmp_path)).fit(x6)
        k = kern.transform(x6)
        kern.transform(x6)
    assert len([w for w in record if "not cached" in str(w.message)]) == 1
    assert not list(tmp_path.rglob("*.npz"))
    np.testing.assert_array_equal(k, DeepKernel(model).fit(x6).transform(x6))


# ------------------------------------------------------------------ bad inputs


def test_values_overflowing_the_model_dtype_are_refused():
    net = nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU())  # float32
    x = np.random.default_rng(0).uniform(0, 1, (4, 6))
    kern = DeepKernel(net).fit(x)
    bad = x.copy()
    bad[2] *= 1e39
    with pytest.raises(ValueError, match=r"Samples \[2\].*float32.*rescale"):
        kern.transform(bad)
    with pytest.raises(ValueError, match=r"Samples \[2\]"):
        DeepKernel(net).fit(bad)


class NaNAt(nn.Module):
    """Features that are NaN for samples whose first value exceeds 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x[:, :1] > 0.5, torch.nan, 1.0) * x


def test_non_finite_features_name_the_samples():
    x = np.array([[0.1, 0.2], [0.9, 0.2], [0.3, 0.3]])
    with pytest.raises(ValueError, match=r"features of samples \[1\].*not finite"):
        DeepKernel(NaNAt()).fit(x)


def test_empty_batch_of_images_gets_sklearns_message():
    x = np.random.default_rng(0).uniform(0, 1, (3, 1, 8, 8))
    kern = DeepKernel(digits_cnn()).fit(x)
    with pytest.raises(ValueError, match=r"0 sample\(s\)"):
        kern.transform(np.empty((0, 1, 8, 8)))
    with pytest.raises(ValueError, match=r"0 sample\(s\)"):
        DeepKernel(digits_cnn()).fit(np.empty((0, 1, 8, 8)))


def test_flat_images_on_a_conv_model_ask_for_input_shape():
    flat = np.random.default_rng(0).uniform(0, 1, (3, 64))
    with pytest.raises(ValueError, match=r"rejected a batch of shape \(3, 64\).*input_shape"):
        DeepKernel(digits_cnn()).fit(flat)
    assert DeepKernel(digits_cnn(), input_shape=(1, 8, 8)).fit(flat).transform(flat).shape == (3, 3)


# ---------------------------------------------------------- explanation size


def test_oversized_explanation_array_is_refused_but_entries_stay_available():
    # explain_pairs keeps per-sample factors, so it no longer refuses a big block up
    # front; reading the whole relevance array does, naming what to ask for instead
    X, _ = load_digits_images()
    kern = DeepKernel(digits_cnn(), max_memory=2**26).fit(X[:200])
    expl = kern.explain_pairs(X[-100:])
    with pytest.raises(MemoryError, match=r"20000 kernel entries on 64 x 64.*pairs=.*pooling.*pair\(i, j\)"):
        expl.relevance
    assert expl.pair(3, 7).relevance.shape == (64, 64) and expl.marginals()[0].shape == (100, 200, 64)
    # what the message suggests works: a coarser pooling, or a raised budget on a small block
    assert kern.set_params(pooling=4).explain_pairs(X[-2:]).relevance.shape == (2, 200, 4, 4)
    small = DeepKernel(digits_cnn(), max_memory=2**20).fit(X[:10])
    with pytest.raises(MemoryError, match="max_memory"):
        small.explain_pairs(X[:10]).relevance
    assert small.explain_pairs(X[:10], pairs=[(0, 1)]).relevance.shape == (1, 64, 64)


def test_pair_relevance_guards_explicit_materialisation_too():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(50, 4, bias=False), nn.ReLU())
    ex = Explainer(net)
    with pytest.raises(MemoryError, match="50 x 50"):
        from skbilrp.pairs import pair_relevance
        rel = ex.relevance(torch.rand(30, 50))
        pair_relevance(rel, rel, max_memory=2**20).relevance


# -------------------------------------------------------- set_params after fit


def test_set_params_after_fit_rebuilds_the_explanations(x6):
    model = Scaled(1.0)
    kern = DeepKernel(model, kernel="linear", rules="zero").fit(x6)
    kern.explain_pairs(x6[:2])  # builds and caches training-sample relevance
    kern.set_params(rules="epsilon", pooling=[0, 0, 0, 1, 1, 1])
    got = kern.explain_pairs(x6[:2])
    want = DeepKernel(model, kernel="linear", rules="epsilon", pooling=[0, 0, 0, 1, 1, 1]).fit(x6).explain_pairs(x6[:2])
    np.testing.assert_array_equal(got.relevance, want.relevance)
    assert got.relevance.shape == (2, 7, 2, 2)


def test_set_params_model_after_fit_requires_fit(x6):
    kern = DeepKernel(Scaled(1.0)).fit(x6)
    kern.set_params(model=Scaled(2.0))
    for call in (lambda: kern.transform(x6), lambda: kern.explain_pairs(x6[:1])):
        with pytest.raises(NotFittedError, match="model changed.*fit again"):
            call()
    kern.fit(x6)
    np.testing.assert_array_equal(kern.features_fit_, DeepKernel(Scaled(2.0)).fit(x6).features_fit_)


# ------------------------------------------------------------------ precision


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_models_are_explained_in_float32(half):
    X, _ = load_digits_images()
    x = X[:6]
    model = digits_cnn().to(half)
    kern = DeepKernel(model, kernel="linear").fit(x)
    e = kern.explain_pairs(x[:2])
    assert e.relevance.dtype == np.float64
    # relevance from a float32 copy: conserves to float32 round-off of its terms
    for err, terms in zip(e.conservation_error.ravel(), e.relevance.reshape(-1, 64 * 64)):
        assert abs(err) <= round_off(terms, torch.float32, k=64)
    # same model, computed in float32: identical explanation
    ref = DeepKernel(digits_cnn().to(half).float(), kernel="linear").fit(x).explain_pairs(x[:2])
    np.testing.assert_array_equal(e.relevance, ref.relevance)
    # features stay the half model's own: they agree with float32 to its rounding
    eps_half = float(torch.finfo(half).eps)
    k = kern.transform(x[:2])
    assert np.all(np.abs(k - e.similarity) <= 16 * eps_half * np.abs(e.similarity).max())


# ---------------------------------------------------------------- train mode


def test_training_mode_model_warns_once_and_is_left_as_is(x6):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.Dropout(0.5), nn.ReLU()).double()
    with pytest.warns(UserWarning, match=r"training mode.*'1'.*model.eval\(\)") as record:
        kern = DeepKernel(net).fit(x6)
    assert len([w for w in record if "training mode" in str(w.message)]) == 1
    assert net.training and not kern.model_.training
    np.testing.assert_array_equal(kern.transform(x6), DeepKernel(net.eval()).fit(x6).transform(x6))


def test_training_mode_without_mode_dependent_modules_is_quiet(x6):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DeepKernel(Scaled(1.0)).fit(x6)  # train mode, but nothing computes differently
        torch.manual_seed(0)
        DeepKernel(nn.Sequential(nn.Linear(6, 5), nn.Dropout()).double().eval()).fit(x6)
