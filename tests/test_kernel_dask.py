"""DeepKernel under joblib's dask backend: the work runs on the cluster's worker
processes, and the results equal those of an in-process run."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
import torch
from conftest import assert_round_off_equal, assert_tops_match, round_off

from skbilrp.kernel import DeepKernel
from skbilrp.models import digits_cnn, load_digits_images

distributed = pytest.importorskip(
    "dask.distributed", reason="dask.distributed is not installed (pip install 'dask[distributed]')"
)

# starting two worker processes that import torch takes several seconds
pytestmark = pytest.mark.slow

PAIRS = [(0, 1), (1, 2), (3, 50), (2, 99)]


def make_kernel() -> DeepKernel:
    # digits_cnn is importable on the workers (a module in skbilrp), unlike test-local classes
    return DeepKernel(digits_cnn(), input_shape=(1, 8, 8), pooling=4, batch_size=16)


def test_transform_and_explain_pairs_run_on_dask_workers_with_identical_results():
    images, _ = load_digits_images("test")
    X = images.reshape(len(images), -1)[:200]
    local = make_kernel().fit(X[:100])
    k_local = local.transform(X[100:])
    e_local = local.explain_pairs(X[100:104], pairs=PAIRS)
    b_local = local.explain_pairs(X[100:112])  # a factored block: 12 x 100 entries

    with distributed.LocalCluster(n_workers=2, processes=True, host="127.0.0.1", threads_per_worker=1,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        remote = make_kernel()
        with joblib.parallel_backend("dask"), distributed.get_task_stream(client) as stream:
            remote.fit(X[:100])
            k_remote = remote.transform(X[100:])
            e_remote = remote.explain_pairs(X[100:104], pairs=PAIRS)
            b_remote = remote.explain_pairs(X[100:112])
        workers = set(cluster.workers[name].worker_address for name in cluster.workers)

    ran_on = {task["worker"] for task in stream.data}
    assert ran_on == workers, "both worker processes should have taken tasks"
    assert len(stream.data) >= 4  # several chunks for features, and for relevance
    # other processes and thread counts add the same float32 terms in another order
    f32 = torch.float32
    assert_round_off_equal(k_remote, k_local, f32)
    assert_round_off_equal(e_remote.relevance, e_local.relevance, f32, entry_axes=2)
    assert_round_off_equal(e_remote.similarity, e_local.similarity, f32)
    assert e_remote.pairs == PAIRS
    # the factored block: factors computed on the workers, entries read from them here
    assert b_remote._dense is None and b_remote.shape == (12, 100)
    assert_round_off_equal(b_remote.similarity, b_local.similarity, f32)
    abs_terms = np.abs(b_local.relevance).sum(axis=(-2, -1)) + np.abs(b_local.similarity)
    assert_round_off_equal(b_remote.conservation_error, b_local.conservation_error, f32, terms=abs_terms)
    for got, want in zip(b_remote.marginals(), b_local.marginals()):
        assert_round_off_equal(got, want, f32)
    assert_tops_match(b_remote.top_interactions(5), b_local.top_interactions(5),
                      round_off(np.abs(b_local.relevance).sum(axis=(-2, -1)).max(), f32, k=16))
    assert_round_off_equal(b_remote[3:5, 10:20].relevance, b_local[3:5, 10:20].relevance, f32, entry_axes=2)
