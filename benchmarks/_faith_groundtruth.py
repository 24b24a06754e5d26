"""Ground-truth section of the faithfulness benchmark: precision@k where the truth is known.

Two tasks whose true pair interactions are known by construction
(:mod:`skbilrp.evaluation.groundtruth`): the table-similarity bigram network and a
small siamese network trained on patch-glyph images. Every method of
:func:`skbilrp.evaluation.default_methods` (plus BiLRP with z^B + γ rules, to show
the rule choice) explains the same pairs; each explanation is scored by precision@k
against the true pairs.

Run alone (one torch thread, about 40 s on a quiet core)::

    .venv/bin/python benchmarks/_faith_groundtruth.py [n_pairs]
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import torch

from skbilrp import Gamma, ZBox, Zero
from skbilrp.evaluation import (
    BiLRPMethod,
    GroundTruthResults,
    PatchFit,
    PatchTask,
    default_methods,
    make_patch_pair,
    patch_truth_mask,
    score_methods,
    train_patch_network,
)
from skbilrp.pooling import PoolingSpec
from skbilrp.rules import RuleSpec

KS = ("n_true", 5, 10)
REFERENCE = "bilrp"


@dataclass
class Task:
    """Pairs, their true interactions and the model that explains them."""

    name: str
    description: str
    model: torch.nn.Module
    X: torch.Tensor
    X2: torch.Tensor
    truth: np.ndarray
    pooling: PoolingSpec
    rules: RuleSpec
    variant: RuleSpec
    fit: Optional[PatchFit] = None


def table_task(n_pairs: int, seed: int) -> Task:
    """Table pairs sharing 3 numbers, explained per cell with the bigram network."""
    from skbilrp.tables import bigram_network, cell_labels, make_table_pair, same_bigram_mask

    rng = np.random.default_rng(seed)
    pairs = [make_table_pair(rows=5, fields=3, n_shared=3, random_state=rng) for _ in range(n_pairs)]
    description = (
        "Two synthetic tables of 5 × 3 two- and three-digit numbers drawn with scikit-learn's 8×8 digit "
        "glyphs (`skbilrp.tables.make_table_pair`); 3 numbers of the first are copied into the second (same "
        "or another place, other glyphs) and no other digit pair occurs in both. The model is "
        "`bigram_network()` (a bias-free per-cell digit detector, products of adjacent detections summed "
        "into a histogram of the 100 digit pairs). One group per cell (5 × 11 cells); true pairs = cells of "
        "the same digit bigram in both tables (`same_bigram_mask`).")
    return Task("tables", description, bigram_network(),
                torch.from_numpy(np.stack([p.a.image for p in pairs])),
                torch.from_numpy(np.stack([p.b.image for p in pairs])),
                np.stack([same_bigram_mask(p.a.digits, p.b.digits) for p in pairs]),
                cell_labels(pairs[0].a.digits.shape), "zero",
                {"detector.conv1": ZBox(0.0, 1.0), "detector.conv2": Gamma(0.25)})


def patch_task(n_pairs: int, seed: int) -> Task:
    """Patch-glyph pairs sharing 1 to 3 counting classes, explained per patch by a trained net."""
    task = PatchTask()
    model, fit = train_patch_network(task, seed=seed)
    rng = np.random.default_rng([seed, 3])
    pairs = [make_patch_pair(task, int(rng.integers(1, 4)), rng) for _ in range(n_pairs)]
    description = (
        f"Images of {task.grid} × {task.grid} patches of {task.patch} × {task.patch} px (one channel): a "
        f"patch is faint noise (uniform in [0, {task.noise}]) or one of {task.n_classes} counting or "
        f"{task.n_distractors} distractor glyph classes (random binary {task.glyph} × {task.glyph} "
        f"patterns at a random offset in the patch), each class at most once per image "
        f"(`make_patch_pair`). The target similarity is the number of counting classes both images hold; "
        "distractors the two share must not count. A bias-free ReLU conv net (a 7 × 7 stride-5 conv, so "
        "each unit also sees a 1-px border of the neighbouring patches, two 1 × 1 convs, sum over the grid; "
        "`train_patch_network`) is trained so that <phi(x), phi(x')> regresses the target (MSE over all "
        "pairs of random batches, 1000 Adam steps). Pairs share 1–3 counting classes; one group per patch; "
        "true pairs = the two patches of each shared counting class (`patch_truth_mask`).")
    return Task("patch glyphs", description, model,
                torch.from_numpy(np.concatenate([a.images for a, _ in pairs])),
                torch.from_numpy(np.concatenate([b.images for _, b in pairs])),
                np.stack([patch_truth_mask(a.labels[0], b.labels[0], task.n_classes) for a, b in pairs]),
                task.patch, "zero", {"conv1": ZBox(0.0, 1.0), "conv2": Gamma(0.25), "conv3": Zero()},
                fit)


def run_task(task: Task, seed: int) -> GroundTruthResults:
    """Every default method, plus BiLRP with the task's z^B + γ variant, on the task's pairs."""
    methods = default_methods(task.rules, seed=seed)
    methods["bilrp_zb_gamma"] = BiLRPMethod(task.variant)
    return score_methods(task.model, task.X, task.X2, task.truth, methods, task.pooling, ks=KS)


def _fit_sentence(fit: PatchFit) -> str:
    return (f"Model fit on {fit.n_pairs} held-out random pairs of fresh images: R² = {fit.r2:.3f}, "
            f"correlation {fit.correlation:.3f} (the constant predictor, the mean training similarity: "
            f"R² = {fit.baseline_r2:.3f}); trained in {fit.seconds:.1f} s.")


def _task_markdown(task: Task, res: GroundTruthResults) -> str:
    parts = [f"### {task.name}", task.description,
             f"{res.n_true.size} pairs, {res.n_true.mean():.1f} true pairs on average "
             f"(min {res.n_true.min()}, max {res.n_true.max()}) out of {task.truth[0].size}."]
    if task.fit is not None:
        parts.append(_fit_sentence(task.fit))
    parts.append(res.to_markdown(reference=REFERENCE))
    return "\n\n".join(parts)


PROTOCOL = """\
On models whose true pair interactions are known by construction, how many of an
explanation's top pairs are true? **precision@k** = share of the k most relevant group
pairs that are true interactions (`skbilrp.evaluation.precision_at_k`), read at
k = the pair's number of true pairs (R-precision: 1 = every true pair ranked first)
and at k = 5 and 10. Pairs tied with the k-th value count with the mean truth of the
tied block (the expected precision over every order of the ties), so a constant map
scores chance. Mean ± s.e. over pairs; "bilrp higher" gives on how many pairs BiLRP
is strictly more precise than the method of the row and the one-sided sign-test
p-value (equal pairs left out). "ideal" is the ceiling min(n_true, k) / k; "chance"
is the expected precision of a random ranking. Time: wall time of each method's
explanations of all pairs, one torch thread.

Rules: `bilrp` uses LRP-0 on both models. Both are bias-free ReLU networks (the
bigram network then multiplies detections, split uniformly), so LRP-0 conserves
exactly and equals Hessian×Product up to a constant factor; `bilrp_zb_gamma` (z^B on
the first layer for pixels in [0, 1], γ = 0.25 above) ranks the pairs the same here:
each first-layer window lies (almost) inside one group, so any conserving rule only
moves relevance within a group, which pooling sums anyway. LRP-0 is kept as the
simpler choice that is exact."""


def groundtruth_section(n_pairs: int = 100, seed: int = 0) -> tuple[str, dict[str, Any]]:
    """The ground-truth section of the faithfulness page, and its raw numbers.

    Parameters
    ----------
    n_pairs : int, default=100
        Pairs per task.
    seed : int, default=0
        Seed of the pairs, of the patch network's training and of the random method.

    Returns
    -------
    markdown : str
        Protocol, then per task its construction, the model fit (patch task) and a
        table of precision@k, time and sign tests per method. No top heading (the
        page puts it under "## Ground truth").
    raw : dict
        Per task: per-pair ``precision[k][method]`` lists, ``n_true``, ``seconds`` per
        method and, for the patch task, ``fit``; ``seconds`` of the whole section.
    """
    start = time.perf_counter()
    parts, raw = [PROTOCOL], {}
    for build in (table_task, patch_task):
        task = build(n_pairs, seed)
        res = run_task(task, seed)
        parts.append(_task_markdown(task, res))
        raw[task.name] = {
            "precision": {k: {m: v.tolist() for m, v in by.items()} for k, by in res.precision.items()},
            "n_true": res.n_true.tolist(), "seconds": res.seconds,
            "fit": asdict(task.fit) if task.fit is not None else None}
    raw["seconds"] = time.perf_counter() - start
    parts.append(f"Section time: {raw['seconds']:.0f} s.")
    return "\n\n".join(parts), raw


if __name__ == "__main__":
    torch.set_num_threads(1)
    markdown, _ = groundtruth_section(n_pairs=int(sys.argv[1]) if len(sys.argv) > 1 else 100)
    print(markdown)
