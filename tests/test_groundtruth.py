"""Ground-truth benchmark: precision@k by hand, the patch-glyph task, and an exact oracle model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from skbilrp.evaluation import (
    BiLRPMethod,
    HessianProductMethod,
    PatchTask,
    RandomMethod,
    class_counts,
    make_patch_images,
    make_patch_pair,
    patch_truth_mask,
    precision_at_k,
    render_patch_images,
    score_methods,
    train_patch_network,
)
from skbilrp.tables import top_interaction_precision

# ------------------------------------------------------------------------- precision@k

REL = np.array([[0.9, 0.5, 0.5],
                [0.1, 0.5, 0.0]])
TRUTH = np.array([[True, False, True],
                  [False, False, True]])


# row-major: 0.9 T | 0.5 F, 0.5 T, 0.5 F (tied) | 0.1 F | 0.0 T
@pytest.mark.parametrize("k, average, first", [
    (1, 1.0, 1.0),
    (2, (1 + 1 / 3) / 2, 1 / 2),  # one place for the tied block of mean truth 1/3; "first" takes (0, 1)
    (3, (1 + 2 / 3) / 3, 2 / 3),  # two places; "first" takes (0, 1) and (0, 2)
    (4, 2 / 4, 2 / 4),            # the whole tied block is in: nothing to break
    (6, 3 / 6, 3 / 6),
])
def test_precision_by_hand(k, average, first):
    assert precision_at_k(REL, TRUTH, k) == pytest.approx(average)
    assert precision_at_k(REL, TRUTH, k, ties="first") == pytest.approx(first)


def test_precision_is_vectorised_with_one_k_per_pair():
    rel = np.stack([REL, -REL, np.zeros_like(REL)])
    truth = np.stack([TRUTH, TRUTH, TRUTH])
    out = precision_at_k(rel, truth, [1, 2, 3])
    # -REL ranks 0.0 (T) then 0.1 (F); a constant map scores the base rate 3/6
    np.testing.assert_allclose(out, [1.0, 0.5, 0.5])
    np.testing.assert_allclose(precision_at_k(rel, truth, 2),
                               [precision_at_k(r, t, 2) for r, t in zip(rel, truth)])


def test_tables_precision_is_the_same_function():
    rng = np.random.default_rng(0)
    rel, mask = rng.random((5, 7)), rng.random((5, 7)) < 0.3
    assert top_interaction_precision(rel, mask, k=4) == precision_at_k(rel, mask, 4)
    top = np.argsort(-rel, axis=None)[:4]
    assert top_interaction_precision(rel, mask, k=4) == mask.ravel()[top].mean()


def test_precision_errors_name_the_cause():
    with pytest.raises(ValueError, match="same shape"):
        precision_at_k(np.zeros((2, 3)), np.zeros((3, 2), dtype=bool), 1)
    with pytest.raises(ValueError, match=r"k must be in \[1, p \* q = 6\]"):
        precision_at_k(REL, TRUTH, 7)
    with pytest.raises(ValueError, match="ties"):
        precision_at_k(REL, TRUTH, 1, ties="random")


# ---------------------------------------------------------------------- patch-glyph task


def test_truth_mask_by_hand():
    a = np.array([[0, -1], [7, 2]])  # classes 0 and 2 count (n_classes=3), 7 is a distractor
    b = np.array([[2, 7], [-1, 1]])
    expected = np.zeros((4, 4), dtype=bool)
    expected[3, 0] = True  # a's patch 3 (class 2) with b's patch 0 (class 2); the shared 7 does not count
    np.testing.assert_array_equal(patch_truth_mask(a, b, n_classes=3), expected)
    assert class_counts(a[None], 3) @ class_counts(b[None], 3).T == expected.sum()


def test_rendering_draws_each_glyph_in_its_patch():
    task = PatchTask(grid=2, patch=4, glyph=4, n_classes=2, n_distractors=1, per_image=(1, 2),
                     distractors_per_image=(0, 1), noise=0.0)
    labels = np.array([[[1, -1], [-1, 2]]])
    image = render_patch_images(task, labels, np.random.default_rng(0))[0, 0]
    shapes = task.templates()
    np.testing.assert_array_equal(image[:4, :4], shapes[1])
    np.testing.assert_array_equal(image[4:, 4:], shapes[2])
    assert not image[:4, 4:].any() and not image[4:, :4].any()


@pytest.mark.parametrize("n_shared", [0, 1, 3])
def test_pairs_share_exactly_the_requested_counting_classes(n_shared):
    task = PatchTask()
    a, b = make_patch_pair(task, n_shared, random_state=n_shared)
    shared = set(a.labels.ravel()) & set(b.labels.ravel()) & set(range(task.n_classes))
    assert len(shared) == n_shared
    truth = patch_truth_mask(a.labels[0], b.labels[0], task.n_classes)
    assert truth.sum() == n_shared  # each class occurs at most once per image
    for i, j in zip(*np.nonzero(truth)):
        assert a.labels[0].ravel()[i] == b.labels[0].ravel()[j] in shared
    assert a.images.shape == (1, 1, task.side, task.side) and 0 <= a.images.min() and a.images.max() <= 1


@pytest.fixture(scope="module")
def trained():
    return train_patch_network(seed=0)


def test_training_is_deterministic_for_a_seed():
    first, _ = train_patch_network(steps=30, n_images=300, n_eval=10, seed=3)
    second, _ = train_patch_network(steps=30, n_images=300, n_eval=10, seed=3)
    other, _ = train_patch_network(steps=30, n_images=300, n_eval=10, seed=4)
    for p, q, r in zip(first.parameters(), second.parameters(), other.parameters()):
        assert torch.equal(p, q)
    assert not all(torch.equal(p, r) for p, r in zip(first.parameters(), other.parameters()))


def test_siamese_network_learns_the_similarity(trained):
    """Held-out R² well above the constant predictor (R² ≈ 0) and above the best affine
    map of a similarity that also counts shared distractors (R² ≈ 0.5), i.e. what
    looking alike alone would give."""
    model, fit = trained
    task = PatchTask()
    assert abs(fit.baseline_r2) < 0.01
    rng = np.random.default_rng(11)
    a, b = make_patch_images(task, 500, rng), make_patch_images(task, 500, rng)
    target = (class_counts(a.labels, task.n_classes) * class_counts(b.labels, task.n_classes)).sum(1)
    n_all = task.n_classes + task.n_distractors
    look_alike = (class_counts(a.labels, n_all) * class_counts(b.labels, n_all)).sum(1)
    look_alike_r2 = np.corrcoef(look_alike, target)[0, 1] ** 2
    assert fit.r2 > 0.95 > look_alike_r2 + 0.3, (fit, look_alike_r2)
    assert fit.correlation > 0.97


def test_trained_network_conserves_under_lrp0(trained):
    from skbilrp import Explainer

    model, _ = trained
    a, b = make_patch_pair(PatchTask(), 2, random_state=0)
    e = Explainer(model, pooling=5, dtype=torch.float64).explain(a.images, b.images).pair(0, 0)
    assert e.relevance.sum() == pytest.approx(e.similarity, rel=1e-9)


# --------------------------------------------------------------------------- the oracle


class _OneHotDetector(nn.Module):
    """phi(x) = counts of the counting classes, exactly, on noise-free unjittered images:
    a bias-free patch-stride conv whose filters are the dual basis of the glyphs, summed."""

    def __init__(self, task: PatchTask) -> None:
        super().__init__()
        shapes = task.templates().reshape(task.n_classes + task.n_distractors, -1).astype(np.float64)
        dual = np.linalg.pinv(shapes).T[:task.n_classes]  # dual[c] @ shapes[d] = [c == d]
        self.conv = nn.Conv2d(1, task.n_classes, task.patch, stride=task.patch, bias=False).double()
        with torch.no_grad():
            self.conv.weight.copy_(torch.from_numpy(dual).view_as(self.conv.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).sum(dim=(2, 3))


def test_oracle_bilrp_finds_every_true_pair():
    task = PatchTask(patch=4, glyph=4, noise=0.0)
    model = _OneHotDetector(task).eval()
    rng = np.random.default_rng(0)
    pairs = [make_patch_pair(task, int(rng.integers(1, 4)), rng) for _ in range(20)]
    X = torch.from_numpy(np.concatenate([a.images for a, _ in pairs])).double()
    X2 = torch.from_numpy(np.concatenate([b.images for _, b in pairs])).double()
    truth = np.stack([patch_truth_mask(a.labels[0], b.labels[0], task.n_classes) for a, b in pairs])
    with torch.no_grad():  # the model computes the target exactly
        np.testing.assert_allclose((model(X) * model(X2)).sum(1).numpy(), truth.sum((1, 2)), atol=1e-9)
    methods = {"bilrp": BiLRPMethod("zero"), "hp": HessianProductMethod(), "random": RandomMethod(0)}
    res = score_methods(model, X, X2, truth, methods, pooling=task.patch, ks=("n_true", 1))
    for k in res.ks:
        np.testing.assert_array_equal(res.precision[k]["bilrp"], 1.0)
        np.testing.assert_array_equal(res.precision[k]["hp"], 1.0)
        assert res.mean_precision(k, "random")[0] < 0.2
    assert res.sign_test("k=n_true", "bilrp", "random") < 1e-3
    assert res.sign_test("k=n_true", "bilrp", "hp") == 1.0
    assert "| bilrp |" in res.to_markdown("bilrp")


def test_score_methods_refuses_pairs_without_truth():
    task = PatchTask(patch=4, glyph=4, noise=0.0)
    a, b = make_patch_pair(task, 0, random_state=0)
    truth = patch_truth_mask(a.labels, b.labels, task.n_classes)
    with pytest.raises(ValueError, match="no true interaction"):
        score_methods(_OneHotDetector(task), torch.from_numpy(a.images).double(),
                      torch.from_numpy(b.images).double(), truth, {"random": RandomMethod(0)}, pooling=4)
