"""Pictures of explanations: what is drawn where, in which colour, rendered headlessly."""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402

from skbilrp.pairs import PairExplanation, PairExplanations  # noqa: E402
from skbilrp.plot import (  # noqa: E402
    LINK_GID,
    MARK_GID,
    as_image,
    group_centers,
    plot_kernel,
    plot_decision,
    plot_marginals,
    plot_pair,
    plot_tokens,
)
from skbilrp.pooling import make_pooling  # noqa: E402

RED, BLUE = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _explanation(relevance, sample_shape=(1, 4, 4), patch=2, kernel="linear"):
    """A hand-made explanation: 2×2 patches of 4×4 images, known relevance."""
    pooling = make_pooling(patch, sample_shape, channel_axis=0)
    rel = np.asarray(relevance, dtype=np.float64)
    return PairExplanation(rel, float(rel.sum()) + 0.01, -0.01, pooling, pooling, kernel)


# R[0, 3] = +2 (strongest, red), R[1, 2] = -1 (blue), R[2, 2] = +0.5 (red), others zero
KNOWN = np.zeros((4, 4))
KNOWN[0, 3], KNOWN[1, 2], KNOWN[2, 2] = 2.0, -1.0, 0.5


def _links(fig):
    return [p for ax in fig.axes for p in ax.patches if p.get_gid() == LINK_GID]


def _endpoints(patch):
    verts = patch.get_path().vertices
    return verts[0], verts[-1]


def _pixel_center(image_artist, row, col):
    """Data coordinates of pixel (row, col) of a drawn image, from its extent."""
    left, right, bottom, top = image_artist.get_extent()
    h, w = image_artist.get_array().shape[:2]
    return np.array([left + (col + 0.5) * (right - left) / w, top + (row + 0.5) * (bottom - top) / h])


# ------------------------------------------------------------------ centres of groups


def test_group_centers_of_patches_are_pixel_centroids():
    pooling = make_pooling(2, (3, 4, 6), channel_axis=0)  # 2 × 3 grid of 2×2 patches
    expected = [[0.5, 0.5], [2.5, 0.5], [4.5, 0.5], [0.5, 2.5], [2.5, 2.5], [4.5, 2.5]]
    np.testing.assert_allclose(group_centers(pooling), expected)


def test_group_centers_of_partial_patches_and_label_maps():
    # 5×5 positions with 2×2 patches: the last row/column of patches holds one pixel
    pooling = make_pooling(2, (1, 5, 5), channel_axis=0)
    centers = group_centers(pooling)
    np.testing.assert_allclose(centers[2], [4.0, 0.5])
    np.testing.assert_allclose(centers[8], [4.0, 4.0])
    # an L-shaped group {(0,0), (1,0), (1,1)} and the rest
    labels = np.array([[7, 3, 3], [7, 7, 3], [3, 3, 3]])
    pooling = make_pooling(labels, (1, 3, 3), channel_axis=0)  # renumbered: 3 -> 0, 7 -> 1
    np.testing.assert_allclose(group_centers(pooling)[1], [1 / 3, 2 / 3])
    np.testing.assert_allclose(group_centers(pooling)[0], [(1 + 2 + 2 + 0 + 1 + 2) / 6, (0 + 0 + 1 + 2 + 2 + 2) / 6])


def test_group_centers_scale_to_a_larger_image():
    pooling = make_pooling(2, (1, 4, 4), channel_axis=0)
    # patch 0 covers pixels 0..3 of an 8×8 rendering: centre 1.5
    np.testing.assert_allclose(group_centers(pooling, (8, 8))[0], [1.5, 1.5])
    np.testing.assert_allclose(group_centers(pooling, (8, 8))[3], [5.5, 5.5])


def test_group_centers_reject_sequences():
    pooling = make_pooling(None, (5, 8), channel_axis=-1)
    with pytest.raises(ValueError, match="plot_tokens"):
        group_centers(pooling)


# ------------------------------------------------------------------------- plot_pair


def test_plot_pair_draws_one_link_per_nonzero_pair_with_sign_colours_and_alpha(tmp_path):
    e = _explanation(KNOWN)
    img = np.linspace(0, 1, 16).reshape(4, 4)
    fig = plot_pair(e, img, img[::-1], n_links=30)
    links = _links(fig)
    assert len(links) == 3  # only the nonzero pairs, although 30 were asked for
    ax = fig.axes[0]
    images = [a for a in ax.get_children() if isinstance(a, AxesImage)]
    assert len(images) == 2
    by_alpha = sorted(links, key=lambda p: p.get_alpha())
    # strongest |r| = 2 is opaque; the others are proportional: 1/2 and 0.5/2
    np.testing.assert_allclose([p.get_alpha() for p in by_alpha], [0.25, 0.5, 1.0])
    colours = [mcolors.to_rgb(p.get_edgecolor()) for p in by_alpha]
    assert colours == [RED, BLUE, RED]
    # the strongest link joins the centre of patch 0 of image a (pixels 0-1) with the
    # centre of patch 3 of image b (pixels 2-3), wherever image b was placed
    start, end = _endpoints(by_alpha[-1])
    np.testing.assert_allclose(start, (_pixel_center(images[0], 0, 0) + _pixel_center(images[0], 1, 1)) / 2)
    np.testing.assert_allclose(end, (_pixel_center(images[1], 2, 2) + _pixel_center(images[1], 3, 3)) / 2)
    # the negative link: patch 1 of a (top right) with patch 2 of b (bottom left)
    start, end = _endpoints(by_alpha[1])
    np.testing.assert_allclose(start, _pixel_center(images[0], 0.5, 2.5))
    np.testing.assert_allclose(end, _pixel_center(images[1], 2.5, 0.5))
    path = tmp_path / "pair.png"
    fig.savefig(path)
    assert mpimg.imread(path).shape[2] in (3, 4)


def test_plot_pair_places_links_on_an_image_of_another_resolution():
    # pooling over 4×4 positions, image b shown at 8×8 and scaled to image a's height
    e = _explanation(KNOWN)
    fig = plot_pair(e, np.zeros((4, 4)), np.zeros((8, 8)))
    images = fig.axes[0].get_images()
    strongest = max(_links(fig), key=lambda p: p.get_alpha())  # patch 0 of a, patch 3 of b
    start, end = _endpoints(strongest)
    np.testing.assert_allclose(start, _pixel_center(images[0], 0.5, 0.5))
    np.testing.assert_allclose(end, _pixel_center(images[1], 5.5, 5.5))  # rows/cols 4-7 of 8
    assert images[1].get_extent()[2] - images[1].get_extent()[3] == pytest.approx(4.0)  # same height


def test_plot_pair_keeps_the_n_strongest_links():
    rng = np.random.default_rng(0)
    rel = rng.normal(size=(4, 4))
    fig = plot_pair(_explanation(rel), np.zeros((4, 4)), np.zeros((4, 4)), n_links=5)
    links = _links(fig)
    assert len(links) == 5
    kept = sorted(p.get_alpha() for p in links)
    strongest = np.sort(np.abs(rel).ravel())[-5:]
    np.testing.assert_allclose(kept, strongest / strongest.max())
    assert sum(mcolors.to_rgb(p.get_edgecolor()) == RED for p in links) == sum(
        rel.ravel()[np.argsort(np.abs(rel).ravel())[-5:]] > 0)


def test_plot_pair_curves_stay_inside_the_view_and_are_rendered(tmp_path):
    # one strong link across the full width: its arc must not be clipped at the top
    rel = np.zeros((4, 4))
    rel[2, 1] = 1.0
    fig = plot_pair(_explanation(rel), np.zeros((4, 4)), np.zeros((4, 4)), n_links=1, show_grid=False, title="")
    ax = fig.axes[0]
    (link,) = _links(fig)
    box = link.get_path().get_extents()
    (x0, x1), (y_bottom, y_top) = ax.get_xlim(), ax.get_ylim()
    assert y_top < y_bottom  # image orientation: y grows downwards
    assert x0 <= box.x0 and box.x1 <= x1 and y_top <= box.y0 and box.y1 <= y_bottom
    path = tmp_path / "pair.png"
    fig.savefig(path, dpi=50)
    pixels = mpimg.imread(path)[..., :3]
    red = (pixels[..., 0] > 0.8) & (pixels[..., 1] < 0.3) & (pixels[..., 2] < 0.3)
    assert red.sum() > 20  # the curve is visible on the black images / white background


def test_plot_pair_accepts_channel_first_colour_images_and_tensors():
    torch = pytest.importorskip("torch")
    e = _explanation(KNOWN, sample_shape=(3, 4, 4))
    a = torch.rand(3, 4, 4)
    fig = plot_pair(e, a, a.numpy(), n_links=2)
    images = [c for c in fig.axes[0].get_children() if isinstance(c, AxesImage)]
    assert images[0].get_array().shape == (4, 4, 3)
    np.testing.assert_allclose(images[1].get_array(), np.moveaxis(a.numpy(), 0, -1), rtol=1e-6)


def test_plot_pair_shows_grey_images_in_grey():
    fig = plot_pair(_explanation(KNOWN), np.zeros((1, 4, 4)), np.ones((4, 4, 1)))
    images = [c for c in fig.axes[0].get_children() if isinstance(c, AxesImage)]
    assert [im.get_cmap().name for im in images] == ["gray", "gray"]
    assert images[0].get_array().shape == (4, 4)


def test_plot_pair_draws_into_a_given_axes():
    fig, ax = plt.subplots()
    assert plot_pair(_explanation(KNOWN), np.zeros((4, 4)), np.zeros((4, 4)), ax=ax) is fig
    assert len([p for p in ax.patches if p.get_gid() == LINK_GID]) == 3


def test_plots_ask_for_one_pair_not_a_block():
    e = _explanation(KNOWN)
    block = PairExplanations(KNOWN[None, None], np.ones((1, 1)), np.zeros((1, 1)), e.pooling_a, e.pooling_b)
    with pytest.raises(ValueError, match=r"pair\(i, j\)"):
        plot_pair(block, np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"pair\(i, j\)"):
        plot_marginals(block)
    assert len(_links(plot_pair(block.pair(0, 0), np.zeros((4, 4)), np.zeros((4, 4))))) == 3


def test_as_image_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        as_image(np.zeros((2, 5, 5)))
    np.testing.assert_allclose(as_image(np.full((4, 4), 2.0)), 1.0)  # clipped into [0, 1]


# ----------------------------------------------------------------------- plot_tokens


def test_plot_tokens_matrix_has_symmetric_limits_and_token_labels():
    rel = np.array([[0.3, -0.1, 0.0], [0.05, 0.2, -0.6]])
    pooling = make_pooling(None, (2, 4), channel_axis=-1)
    e = PairExplanation(rel, 0.0, 0.15, pooling, make_pooling(None, (3, 4), channel_axis=-1))
    fig = plot_tokens(e, ["a", "dog"], ["the", "cat", "runs"], kind="matrix")
    ax = fig.axes[0]
    (im,) = ax.get_images()
    assert im.get_clim() == (-0.6, 0.6)
    assert im.get_cmap().name == "bwr"
    np.testing.assert_array_equal(im.get_array(), rel)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "dog"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["the", "cat", "runs"]


def test_plot_tokens_arcs_join_the_token_labels():
    rel = np.array([[0.3, -0.1, 0.0], [0.05, 0.2, -0.6]])
    pooling = make_pooling(None, (2, 4), channel_axis=-1)
    e = PairExplanation(rel, 0.0, 0.15, pooling, make_pooling(None, (3, 4), channel_axis=-1))
    fig = plot_tokens(e, ["a", "dog"], ["the", "cat", "runs"], kind="arcs", n_links=3)
    links = _links(fig)
    assert len(links) == 3
    texts = {t.get_text(): t.get_position() for t in fig.axes[0].texts}
    strongest = max(links, key=lambda p: p.get_alpha())  # -0.6: "dog" with "runs"
    assert mcolors.to_rgb(strongest.get_edgecolor()) == BLUE
    start, end = _endpoints(strongest)
    assert start[0] == pytest.approx(texts["dog"][0]) and end[0] == pytest.approx(texts["runs"][0])
    assert start[1] > end[1]  # first sentence on top


def test_plot_tokens_checks_the_number_of_labels():
    pooling = make_pooling(None, (2, 4), channel_axis=-1)
    e = PairExplanation(np.ones((2, 2)), 4.0, 0.0, pooling, pooling)
    with pytest.raises(ValueError, match="one label per group"):
        plot_tokens(e, ["a"], ["b", "c"])
    with pytest.raises(ValueError, match="kind"):
        plot_tokens(e, ["a", "b"], ["b", "c"], kind="pie")


# -------------------------------------------------------------------- plot_marginals


def test_plot_marginals_spreads_group_sums_to_pixels_on_a_symmetric_scale(tmp_path):
    e = _explanation(KNOWN)
    fig = plot_marginals(e, np.zeros((4, 4)), np.ones((4, 4)))
    heatmaps = [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name == "bwr"]
    assert len(heatmaps) == 2
    # side a: row sums [2, -1, 0.5, 0]; side b: column sums [0, 0, -0.5, 2]
    expected_a = np.array([[2, 2, -1, -1], [2, 2, -1, -1], [0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0]])
    expected_b = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [-0.5, -0.5, 2, 2], [-0.5, -0.5, 2, 2]])
    np.testing.assert_allclose(heatmaps[0].get_array(), expected_a)
    np.testing.assert_allclose(heatmaps[1].get_array(), expected_b)
    assert heatmaps[0].get_clim() == heatmaps[1].get_clim() == (-2.0, 2.0)
    fig.savefig(tmp_path / "marginals.png")


def test_plot_marginals_without_images_and_into_given_axes():
    rel = np.array([[0.0, -0.3], [0.1, 0.0]])
    pooling = make_pooling(np.array([[0, 0], [1, 1]]), (1, 2, 2), channel_axis=0)
    e = PairExplanation(rel, -0.2, 0.0, pooling, pooling)
    fig, axes = plt.subplots(1, 2)
    assert plot_marginals(e, ax=axes) is fig
    clims = [ax.get_images()[0].get_clim() for ax in axes]
    assert clims == [(-0.3, 0.3), (-0.3, 0.3)]


# ----------------------------------------------------------------------- plot_kernel


def test_plot_kernel_marks_the_explained_entries(tmp_path):
    K = np.arange(30, dtype=float).reshape(5, 6)
    fig = plot_kernel(K, marked=[(0, 1), (4, 5), (2, 2)])
    marks = [p for p in fig.axes[0].patches if p.get_gid() == MARK_GID]
    assert len(marks) == 3
    centres = sorted((m.get_x() + m.get_width() / 2, m.get_y() + m.get_height() / 2) for m in marks)
    np.testing.assert_allclose(centres, [(1, 0), (2, 2), (5, 4)])  # (column, row)
    np.testing.assert_array_equal(fig.axes[0].get_images()[0].get_array(), K)
    fig.savefig(tmp_path / "kernel.png")
    with pytest.raises(ValueError, match="outside"):
        plot_kernel(K, marked=[(5, 0)])


# --------------------------------------------------------------------- plot_decision


def test_plot_decision_shows_the_largest_support_vectors_and_symmetric_maps():
    from skbilrp.audits import DecisionExplanation

    pooling = make_pooling(2, (1, 4, 4), channel_axis=0)
    contributions = np.array([[0.5, -2.0, 1.0]])  # by |share|: support 1, then 2, then 0
    support = np.array([7, 3, 5])  # rows of the training set
    relevance = np.array([[0.2, -0.4, 0.1, 0.0]])
    support_relevance = np.array([[[9.0, 0, 0, 0], [0, -1.5, 0, 0], [0, 0, 0.5, 0]]])
    d = DecisionExplanation(decision=np.array([0.4]), intercept=0.5, support=support,
                            dual_coef=np.array([1.0, -2.0, 1.0]), contributions=contributions,
                            relevance=relevance, support_relevance=support_relevance,
                            conservation_error=np.array([0.0]), pooling=pooling, classes=(3, 8))
    train = np.stack([np.full((1, 4, 4), k / 10) for k in range(10)])
    labels = np.arange(10) * 11
    fig = plot_decision(d, np.zeros((4, 4)), train, n_support=2, train_labels=labels)
    axes = np.array(fig.axes[:6]).reshape(2, 3)
    # top row: the input, then training rows 3 and 5 (supports 1 and 2)
    np.testing.assert_allclose(axes[0, 1].get_images()[0].get_array(), 0.3)
    np.testing.assert_allclose(axes[0, 2].get_images()[0].get_array(), 0.5)
    assert "#3 (33)" in axes[0, 1].get_title() and "-2" in axes[0, 1].get_title()
    # bottom row: relevance spread over the 2×2 patches, symmetric scales
    q = axes[1, 0].get_images()[0]
    np.testing.assert_allclose(q.get_array()[:2, 2:], -0.4)
    assert q.get_clim() == (-0.4, 0.4)
    shown = [axes[1, c].get_images()[0] for c in (1, 2)]
    np.testing.assert_allclose(shown[0].get_array()[:2, 2:], -1.5)
    assert [im.get_clim() for im in shown] == [(-1.5, 1.5)] * 2  # support 0 (9.0) is not shown


# ------------------------------------------------------------------ optional extra


def test_missing_matplotlib_names_the_install_command(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    for call in (lambda: plot_kernel(np.eye(2)),
                 lambda: plot_pair(_explanation(KNOWN), np.zeros((4, 4)), np.zeros((4, 4))),
                 lambda: plot_marginals(_explanation(KNOWN))):
        with pytest.raises(ImportError, match=r'pip install "skbilrp\[plot\]"'):
            call()
