"""Shared fixtures: tiny random networks in float64 and their inputs.

Everything here is float64 so that the engine can be compared with independent
oracles (autograd Hessians, zennit, captum, hand arithmetic) to ~1e-10.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

DTYPE = torch.float64


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs ``-n 2``), the workers share the cores:
    one torch thread pool per core, not one per worker and core."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        torch.set_num_threads(max(1, torch.get_num_threads() // int(workers)))


def _seeded(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Build a module under a fixed seed, in float64 and eval mode.

    Weights get He initialisation so activations stay of order one through the
    layers (PyTorch's default shrinks them, and tiny features would let LRP-ε's
    stabiliser absorb a visible share of relevance).
    """

    def make(*args, seed: int = 0, **kwargs) -> nn.Module:
        torch.manual_seed(seed)
        model = build(*args, **kwargs)
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        return model.to(DTYPE).eval()

    return make


@_seeded
def _relu_cnn(bias: bool = False, in_channels: int = 2) -> nn.Module:
    """conv, ReLU, max-pool, conv, ReLU, flatten, linear, ReLU on 8x8 inputs (6 features)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, bias=bias), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 6, bias=bias), nn.ReLU(),
    )


@_seeded
def _relu_mlp(bias: bool = False) -> nn.Module:
    """A 3-layer ReLU MLP on 10-vectors (5 features)."""
    return nn.Sequential(
        nn.Linear(10, 8, bias=bias), nn.ReLU(),
        nn.Linear(8, 8, bias=bias), nn.ReLU(),
        nn.Linear(8, 5, bias=bias), nn.ReLU(),
    )


@pytest.fixture
def relu_cnn() -> Callable[..., nn.Module]:
    """``relu_cnn(bias=False, in_channels=2, seed=0)``: a small VGG-like ReLU CNN, float64."""
    return _relu_cnn


@pytest.fixture
def relu_mlp() -> Callable[..., nn.Module]:
    """``relu_mlp(bias=False, seed=0)``: a small ReLU MLP, float64."""
    return _relu_mlp


@pytest.fixture
def images() -> Callable[..., torch.Tensor]:
    """``images(n, channels=2, size=8, seed=1)``: a float64 batch in [0, 1]."""

    def make(n: int, channels: int = 2, size: int = 8, seed: int = 1) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(n, channels, size, size, generator=gen, dtype=DTYPE)

    return make


def hessian_product_oracle(model: nn.Module, x: torch.Tensor, x2: torch.Tensor) -> np.ndarray:
    """``x_i x'_j d²<phi(x), phi(x')>/dx_i dx'_j`` over all input entries, ``(d, d')``.

    Plain double backward: the gradient of ``y`` w.r.t. ``x`` (kept differentiable),
    then the gradient of each of its entries w.r.t. ``x'`` (batched over entries).
    """
    a = x.detach().clone().requires_grad_(True)
    b = x2.detach().clone().requires_grad_(True)
    y = (model(a[None]).flatten() * model(b[None]).flatten()).sum()
    (grad_a,) = torch.autograd.grad(y, a, create_graph=True)
    grad_a = grad_a.flatten()
    seeds = torch.eye(grad_a.numel(), dtype=grad_a.dtype)
    (cross,) = torch.autograd.grad(grad_a, b, seeds, is_grads_batched=True)
    cross = cross.reshape(x.numel(), x2.numel())
    return (x.flatten()[:, None] * cross * x2.flatten()[None, :]).detach().numpy()


@pytest.fixture
def hessian_product() -> Callable[[nn.Module, torch.Tensor, torch.Tensor], np.ndarray]:
    """``hessian_product(model, x, x2)``: the HP oracle from plain autograd, ``(d, d')``."""
    return hessian_product_oracle


def round_off(terms, dtype, k: float = 8.0) -> float:
    """Round-off tolerance ``k * eps(dtype) * sum(|terms|)`` for a sum computed in ``dtype``.

    Adding up ``n`` terms in floating point makes an error of at most about
    ``n * eps * sum(|terms|)`` for a naive loop, ``log2(n) * eps * sum(|terms|)`` for the
    pairwise/blocked sums of numpy and BLAS, and about ``sqrt(n) * eps * sum(|terms|)``
    typically. What cancels sets the scale, not the (possibly much smaller) result, so
    conservation checks (a similarity minus many relevance terms of both signs) must be
    measured against ``sum(|terms|)``. The order of the additions, and so the error,
    depends on the BLAS kernel and the number of threads: a bare absolute tolerance tuned
    on one machine can fail on another. ``k`` (a few units, more for deep chains of float32
    products such as LRP through several layers) absorbs the accumulation length.
    ``dtype`` is the precision the compared quantities were *computed* in (a float32 model
    gives float32 round-off even if its outputs are cast to float64); numpy or torch dtypes.
    """
    if isinstance(dtype, torch.dtype):
        eps = torch.finfo(dtype).eps
    else:
        eps = float(np.finfo(dtype).eps)
    if isinstance(terms, torch.Tensor):
        terms = terms.detach().double().cpu().numpy()
    return float(k * eps * np.abs(np.asarray(terms, dtype=np.float64)).sum())


def assert_round_off_equal(got, want, dtype, k: float = 16.0, entry_axes: int = 0, terms=None) -> None:
    """``got`` and ``want`` are one quantity computed along two code paths (chunks, batch
    sizes, thread counts, processes): equal up to the round-off of ``dtype``.

    Two paths add the same terms in another order, so they may differ in the last bits
    and never in more: each value within :func:`round_off` of the absolute values it is
    made of. ``entry_axes`` trailing axes form one entry (a ``p x p'`` relevance
    matrix: 2), whose absolute sum sets that entry's scale; 0 uses each value's own
    magnitude, floored by the largest one (a tiny value may be the cancellation of
    large terms). ``terms``, when given, is that absolute sum for each value (e.g. a
    conservation error: the similarity plus every relevance term, in absolute value).
    """
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    if terms is not None:
        scale = np.broadcast_to(np.asarray(terms, dtype=np.float64), want.shape)
    elif entry_axes:
        axes = tuple(range(want.ndim - entry_axes, want.ndim))
        scale = np.abs(want).sum(axis=axes, keepdims=True)
    else:
        scale = np.maximum(np.abs(want), np.abs(want).max(initial=0.0))
    atol = np.vectorize(lambda s: round_off(s, dtype, k))(scale) if scale.size else scale
    bad = np.abs(got - want) > atol
    assert not bad.any(), (f"{bad.sum()} of {bad.size} values differ beyond round-off of {dtype}: "
                           f"largest difference {np.abs(got - want).max():.3g}")


def assert_tops_match(got, want, atol: float) -> None:
    """Two top-interaction lists (``[(g, g', r), ...]``, nested per entry) of one quantity
    computed along two code paths: values equal within ``atol`` rank by rank, and a rank
    may name another group pair only where the two tie within ``atol`` (round-off may
    order a tie either way; nothing else may change)."""
    assert len(got) == len(want)
    if got and not isinstance(got[0], tuple):
        for g, w in zip(got, want):
            assert_tops_match(g, w, atol)
        return
    where = {(g, h): r for g, h, r in want}
    for (g, h, r), (g2, h2, r2) in zip(got, want):
        assert abs(r - r2) <= atol, ((g, h, r), (g2, h2, r2))
        if (g, h) != (g2, h2):  # only a tie may swap: the pair is in want with the same value, or ties the cut
            other = where.get((g, h), want[-1][2])
            assert abs(abs(other) - abs(r)) <= atol, ((g, h, r), (g2, h2, r2))


@pytest.fixture
def no_work(monkeypatch):
    """Every entry into computation of the command-line tools (model loading, reading
    images, fitting, the demo, the report, the text kernel, explaining a pair or a
    query's neighbours), replaced by a counter that
    fails the test if reached: a refusal must come before all of them. The list of
    calls reached is returned (empty when the refusal came first)."""
    import skbilrp.audits
    import skbilrp.cli
    import skbilrp.datasets
    import skbilrp.demo
    import skbilrp.explainer
    import skbilrp.kernel
    import skbilrp.report

    calls: list[str] = []

    def counter(name):
        def reached(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was reached: work started before the arguments were checked")
        return reached

    for module, name in ((skbilrp.cli, "_image_model"), (skbilrp.cli, "_check_size_fits"),
                         (skbilrp.datasets, "load_images"), (skbilrp.kernel.DeepKernel, "fit"),
                         (skbilrp.demo, "digits_pipelines"), (skbilrp.demo, "run_demo"),
                         (skbilrp.report, "write_report"), (skbilrp.explainer.Explainer, "relevance"),
                         (skbilrp.audits, "explain_neighbors")):
        monkeypatch.setattr(module, name, counter(name))
    try:
        import skbilrp.text
    except ImportError:  # no text extra: the text commands refuse before importing it anyway
        pass
    else:
        monkeypatch.setattr(skbilrp.text, "TextKernel", counter("TextKernel"))
    return calls


@pytest.fixture(scope="session")
def digits_small():
    """The demo's SVM and k-NN pipelines fitted on 100 training digits, 40 held-out queries."""
    from sklearn.model_selection import train_test_split

    from skbilrp.demo import digits_pipelines
    from skbilrp.models import load_digits_images

    X_train, y_train = load_digits_images("train")
    X_test, y_test = load_digits_images("test")
    X_train, _, y_train, _ = train_test_split(X_train, y_train, train_size=100, stratify=y_train, random_state=0)
    X_test, _, y_test, _ = train_test_split(X_test, y_test, train_size=40, stratify=y_test, random_state=0)
    svm, knn = digits_pipelines(verbose=False)
    flat_train, flat_test = X_train.reshape(len(X_train), -1), X_test.reshape(len(X_test), -1)
    knn.fit(flat_train, y_train)
    svm.fit(flat_train, y_train)
    K = svm[0].transform(flat_test)  # the kernel itself (knn's step gives distances)
    return {"knn": knn, "svm": svm, "X": flat_test, "y": y_test, "y_fit": y_train, "K": K}
