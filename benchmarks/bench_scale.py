"""Scale of factored pair explanations: a whole test × train kernel block explained.

The digits CNN at pixel level (``pooling=None``: 64 groups per image, 64 features), cosine
kernel, the 450 test digits against the 1347 training digits: 606,150 entries whose
dense ``(450, 1347, 64, 64)`` relevance would take 20 GiB in float64. Printed, from one run:

(a) time of the per-sample relevance of both sets (``explain_pairs`` on a fresh kernel:
    relevance of 450 + 1347 digits, then the factors kept);
(b) time of ``similarity``, ``conservation_error`` and ``marginals()`` of every entry,
    and its ratio to (a) (target <= 3: reductions read the factors, no p x p' matrix);
(c) time of ``top_interactions(5)`` over every entry (streamed in chunks);
(d) the largest difference between ``similarity`` and ``transform`` (must be <= 1e-10);
(e) peak resident memory of the process (``ru_maxrss``; target < 1.5 GiB), with the
    marginals released before (c): the result does not keep them, the caller does.

Case ``mobilenet``: MobileNetV2 (ImageNet weights) at 224 px, ``pooling=None`` (50,176
positions a side), one pair: time and peak RSS of ``similarity``, ``marginals()`` and
``top_interactions(10)`` (target < 2 GiB), and ``.relevance`` (10 GB dense) refused before
any work.

Case ``decision``: ``explain_decision`` of the digits SVC (one-vs-one, classes 3 vs 8)
on all 450 test digits at pixel level: time and peak RSS (target < 1 GiB).

Each case runs in a process of its own, so each peak RSS is that case's.
Run: ``.venv/bin/python benchmarks/bench_scale.py [--case digits|mobilenet|decision] [--threads 2]``
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from skbilrp.kernel import DeepKernel
from skbilrp.models import digits_cnn, load_digits_images


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def digits_block() -> None:
    X_train, _ = load_digits_images("train")
    X_test, _ = load_digits_images("test")
    kern = DeepKernel(digits_cnn(), kernel="cosine", pooling=None).fit(X_train)
    print(f"digits CNN, cosine, pixel level: {len(X_test)} x {len(X_train)} = "
          f"{len(X_test) * len(X_train):,} entries, torch threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    expl = kern.explain_pairs(X_test)  # relevance of both sets; nothing per entry yet
    t_rel = time.perf_counter() - t0
    p, q = expl.n_groups
    print(f"(a) per-sample relevance of both sets:          {t_rel:8.2f} s   (groups {p} x {q})")

    t0 = time.perf_counter()
    sim = expl.similarity
    err = expl.conservation_error
    marg_a, marg_b = expl.marginals()
    t_red = time.perf_counter() - t0
    print(f"(b) similarity + conservation_error + marginals: {t_red:8.2f} s   "
          f"ratio to (a) {t_red / t_rel:.2f} (target <= 3)")
    print(f"    shapes {sim.shape}, {marg_a.shape}, {marg_b.shape}; "
          f"max |conservation error| {np.abs(err).max():.2e}")

    rss_marginals = peak_rss_gib()
    # the marginals (2 x 310 MB) are the caller's arrays, not kept by the result:
    # released here so that (e) is the peak of either step, not of holding both
    del marg_a, marg_b

    t0 = time.perf_counter()
    tops = expl.top_interactions(5)
    t_top = time.perf_counter() - t0
    print(f"(c) top_interactions(5) over all entries:        {t_top:8.2f} s   "
          f"({len(tops)} x {len(tops[0])} lists)")

    diff = float(np.abs(sim - kern.transform(X_test)).max())
    print(f"(d) max |similarity - transform| = {diff:.2e}  ({'ok' if diff <= 1e-10 else 'FAILS'} at 1e-10)")

    peak = peak_rss_gib()
    print(f"(e) peak RSS {peak:.2f} GiB  ({'under' if peak < 1.5 else 'OVER'} the 1.5 GiB target); "
          f"{rss_marginals:.2f} GiB when the marginals were computed")


def mobilenet_pair() -> None:
    from skbilrp.models import mobilenet_v2

    try:
        model = mobilenet_v2(pretrained=True)
    except ImportError as err:
        print(f"mobilenet: skipped ({err})")
        return
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 224, 224), dtype=np.float32)
    kern = DeepKernel(model, kernel="cosine", pooling=None).fit(x[:1])
    print(f"MobileNetV2, cosine, 224 px, pooling=None: one pair, torch threads {torch.get_num_threads()}")
    t0 = time.perf_counter()
    expl = kern.explain_pairs(x[1:])
    t_rel = time.perf_counter() - t0
    p, q = expl.n_groups
    print(f"(a) per-sample relevance of both images:     {t_rel:8.2f} s   (groups {p} x {q}, "
          f"dense pair matrix {p * q * 8 / 2**30:.1f} GiB)")
    t0 = time.perf_counter()
    sim, (ma, mb) = expl.similarity, expl.marginals()
    tops = expl.top_interactions(10)
    t_red = time.perf_counter() - t0
    print(f"(b) similarity, marginals, top_interactions(10): {t_red:6.2f} s   similarity {float(sim[0, 0]):.4f}, "
          f"marginal sums {ma.sum():.4f} / {mb.sum():.4f}, strongest pair {tops[0][0][0][:2]}")
    t0 = time.perf_counter()
    try:
        expl.relevance
        print("(c) .relevance was NOT refused")
    except (MemoryError, ValueError) as err:
        print(f"(c) .relevance refused in {time.perf_counter() - t0:.3f} s: {str(err)[:120]}...")
    peak = peak_rss_gib()
    print(f"(d) peak RSS {peak:.2f} GiB  ({'under' if peak < 2 else 'OVER'} the 2 GiB target)")


def decision_all_test() -> None:
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import SVC

    from skbilrp.audits import explain_decision

    X_train, y_train = load_digits_images("train")
    X_test, _ = load_digits_images("test")
    pipe = make_pipeline(DeepKernel(digits_cnn(), pooling=None), SVC(kernel="precomputed")).fit(X_train, y_train)
    print(f"digits SVC (10 classes, one-vs-one), pixel level: explain_decision(classes=(3, 8)) on {len(X_test)} digits")
    t0 = time.perf_counter()
    d = explain_decision(pipe, X_test, classes=(3, 8))
    elapsed = time.perf_counter() - t0
    print(f"(a) explain_decision: {elapsed:.2f} s; {len(d.support)} support vectors; relevance {d.relevance.shape}, "
          f"support_relevance {d.support_relevance.shape}; max |conservation error| "
          f"{np.abs(d.conservation_error).max():.2e}")
    peak = peak_rss_gib()
    print(f"(b) peak RSS {peak:.2f} GiB  ({'under' if peak < 1 else 'OVER'} the 1 GiB target)")


CASES = {"digits": digits_block, "mobilenet": mobilenet_pair, "decision": decision_all_test}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--case", choices=sorted(CASES), help="one case (default: each in its own process)")
    args = parser.parse_args()
    if args.case is None:
        for case in CASES:
            subprocess.run([sys.executable, __file__, "--case", case, "--threads", str(args.threads)], check=True)
            print()
        return
    torch.set_num_threads(args.threads)
    CASES[args.case]()


if __name__ == "__main__":
    main()
