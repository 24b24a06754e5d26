"""Pictures of BiLRP explanations: linked patches, token maps, patch × word maps, marginals, kernels.

matplotlib is an optional extra (``pip install "skbilrp[plot]"``); it is imported
inside the functions, so ``import skbilrp.plot`` works without it. Every function
draws into a given ``ax`` or a new figure and returns the figure; none calls
``plt.show()``.

Colours follow the BiLRP paper: red for positive relevance (the pair of groups
makes the inputs more similar), blue for negative, opacity proportional to
``|relevance| / max |relevance|`` among the drawn links.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np

from .pairs import PairExplanation
from .pooling import Pooling
from .words import Words, merge_tokens

__all__ = [
    "PLOT_INSTALL",
    "LINK_GID",
    "ENDPOINT_GID",
    "MARK_GID",
    "SPECIAL_COLOR",
    "group_centers",
    "as_image",
    "plot_pair",
    "plot_tokens",
    "plot_image_text",
    "plot_marginals",
    "plot_kernel",
    "plot_decision",
    "plot_audit",
    "SUSPICIOUS_GID",
]

#: How to install the plotting extra.
PLOT_INSTALL = 'pip install "skbilrp[plot]"'
#: ``gid`` of the link curves drawn by :func:`plot_pair` and :func:`plot_tokens`.
LINK_GID = "skbilrp-link"
#: ``gid`` of the dots at the ends of the links.
ENDPOINT_GID = "skbilrp-link-end"
#: ``gid`` of the rectangles marking entries in :func:`plot_kernel`.
MARK_GID = "skbilrp-mark"
#: ``gid`` of the rectangles outlining suspicious regions in :func:`plot_audit`.
SUSPICIOUS_GID = "skbilrp-suspicious"

POSITIVE_COLOR = "red"
NEGATIVE_COLOR = "blue"
#: Colour of the labels of special tokens (``[CLS]``, ``<s>`` ...) in :func:`plot_tokens`.
SPECIAL_COLOR = "0.55"


def _pyplot() -> Any:
    """matplotlib.pyplot, or an ImportError that says how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(f"Plotting needs matplotlib; install it with: {PLOT_INSTALL}") from err
    return plt


def _figure_and_axes(ax: Any, n: int, figsize: tuple) -> tuple[Any, list]:
    """The figure and ``n`` axes: the given ones, or a new row of ``n``."""
    if ax is None:
        fig, axes = _pyplot().subplots(1, n, figsize=figsize, squeeze=False, layout="constrained")
        return fig, list(axes[0])
    axes = [ax] if n == 1 and not isinstance(ax, (list, tuple, np.ndarray)) else list(np.ravel(ax))
    if len(axes) != n:
        raise ValueError(f"ax must be {'an Axes' if n == 1 else f'a sequence of {n} Axes'}, got {len(axes)}.")
    return axes[0].figure, axes


def as_image(image: Any) -> np.ndarray:
    """An image array for ``imshow``: ``(H, W)`` grey or ``(H, W, 3)`` colour in [0, 1].

    Parameters
    ----------
    image : array-like or torch.Tensor
        ``(H, W)``, ``(H, W, 1 | 3 | 4)`` or ``(1 | 3, H, W)``, values in [0, 1]; a
        leading batch axis of size one is dropped. Values outside [0, 1] are clipped.

    Returns
    -------
    ndarray of float

    Raises
    ------
    ValueError
        If the shape is not one of those.
    """
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    channels_last = arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) and arr.shape[0] not in (1, 3)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and not channels_last:
        arr = np.moveaxis(arr, 0, -1)  # torch's channels-first layout wins when ambiguous
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]  # drop alpha
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise ValueError(
            f"Cannot show an image of shape {np.shape(image)}; give (H, W), (H, W, 3) or (C, H, W) "
            "with C = 1 or 3."
        )
    return np.clip(arr, 0.0, 1.0)


def group_centers(pooling: Pooling, image_shape: Optional[tuple] = None) -> np.ndarray:
    """Pixel coordinates ``(x, y)`` of the centroid of every group of a 2-D pooling.

    Parameters
    ----------
    pooling : Pooling
        Its ``labels`` must be a 2-D map over image positions ``(h, w)``.
    image_shape : tuple of int, optional
        ``(H, W)`` of the image the points are drawn on, if it has another resolution
        than the positions; the centres are scaled to it.

    Returns
    -------
    ndarray of shape (n_groups, 2)
        Column (x) then row (y), in ``imshow``'s data coordinates (pixel ``i`` spans
        ``i - 0.5 .. i + 0.5``).
    """
    labels = np.asarray(pooling.labels)
    if labels.ndim != 2:
        raise ValueError(
            f"Image plots need a pooling over 2-D positions, got positions of shape {labels.shape}; "
            "use plot_tokens for sequences."
        )
    rows, cols = np.indices(labels.shape)
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=pooling.n_groups).astype(np.float64)
    counts[counts == 0] = np.nan  # a label with no position has no centre
    cy = np.bincount(flat, weights=rows.ravel(), minlength=pooling.n_groups) / counts
    cx = np.bincount(flat, weights=cols.ravel(), minlength=pooling.n_groups) / counts
    if image_shape is not None:
        sy, sx = image_shape[0] / labels.shape[0], image_shape[1] / labels.shape[1]
        cy, cx = (cy + 0.5) * sy - 0.5, (cx + 0.5) * sx - 0.5
    return np.stack([cx, cy], axis=1)


def _pair_relevance(explanation: Any) -> np.ndarray:
    """The ``(p, q)`` relevance of one explained pair, or a ValueError saying how to get it."""
    rel = np.asarray(getattr(explanation, "relevance", None))
    if rel.ndim != 2:
        raise ValueError(
            f"Expected the explanation of one pair, with relevance of shape (p, q), got shape {rel.shape}; "
            "pick one entry with explanations.pair(i, j) (or .pair(k) for chosen pairs)."
        )
    return rel


def _strongest(relevance: np.ndarray, n_links: int) -> list[tuple[int, int, float]]:
    """The ``n_links`` nonzero entries of largest ``|relevance|``, weakest first."""
    flat = np.abs(relevance).ravel()
    order = np.argsort(flat, kind="stable")[::-1][: max(0, int(n_links))]
    order = order[flat[order] > 0][::-1]  # drawn weakest first, so strong links lie on top
    rows, cols = np.unravel_index(order, relevance.shape)
    return [(int(r), int(c), float(relevance[r, c])) for r, c in zip(rows, cols)]


def _draw_links(ax: Any, links: list, start: np.ndarray, end: np.ndarray, control: Any,
                linewidth: float, max_alpha: float, marker_size: float = 0.0) -> list:
    """Bezier curves from ``start[g]`` to ``end[g']`` for each link ``(g, g', r)``.

    ``control(p, q)`` gives the inner control points of the curve between points
    ``p`` and ``q`` (one point: quadratic, two: cubic). Dots of ``marker_size``
    points mark the ends (none if 0).
    """
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path

    scale = max((abs(r) for _, _, r in links), default=1.0)
    artists = []
    for g, h, r in links:
        p, q = start[g], end[h]
        inner = [tuple(c) for c in control(p, q)]
        codes = [Path.MOVETO] + [Path.CURVE3 if len(inner) == 1 else Path.CURVE4] * (len(inner) + 1)
        patch = PathPatch(
            Path([tuple(p), *inner, tuple(q)], codes), fill=False, linewidth=linewidth,
            edgecolor=POSITIVE_COLOR if r > 0 else NEGATIVE_COLOR,
            alpha=max_alpha * abs(r) / scale, gid=LINK_GID, capstyle="round",
        )
        ax.add_patch(patch)
        artists.append(patch)
        if marker_size > 0:
            ax.scatter([p[0], q[0]], [p[1], q[1]], s=marker_size ** 2, color=patch.get_edgecolor(),
                       alpha=patch.get_alpha(), linewidths=0, gid=ENDPOINT_GID)
    return artists


def _image_extent(shape: tuple, x0: float, height: float) -> tuple[float, float, float, float]:
    """``imshow`` extent placing an image of ``shape`` at ``x0``, scaled to ``height``."""
    s = height / shape[0]
    return (x0 - 0.5 * s, x0 + (shape[1] - 0.5) * s, height - 0.5 * s, -0.5 * s)


def plot_pair(explanation: PairExplanation, image_a: Any, image_b: Any, n_links: int = 30,
              ax: Any = None, linewidth: float = 1.5, max_alpha: float = 1.0, gap: float = 0.4,
              bend: float = 0.3, marker_size: float = 4.0, show_grid: bool = True,
              title: Optional[str] = None) -> Any:
    """Two images side by side, with curves joining their most relevant group pairs.

    Parameters
    ----------
    explanation : PairExplanation
        An explanation with image poolings (``pooling_a.labels`` of shape ``(h, w)``).
    image_a, image_b : array-like or torch.Tensor
        The two inputs, ``(H, W)``, ``(H, W, 3)`` or ``(C, H, W)`` in [0, 1]; grey
        images are shown in grey. Their resolution may differ from the poolings'.
    n_links : int, default=30
        How many of the strongest (by ``|relevance|``) nonzero pairs to draw.
    ax : matplotlib Axes, optional
        Where to draw both images; default: a new figure.
    linewidth : float, default=1.5
    max_alpha : float, default=1.0
        Opacity of the strongest link; the others get ``max_alpha * |r| / max |r|``.
    gap : float, default=0.4
        Space between the images, as a fraction of their height.
    bend : float, default=0.3
        How far the curves bow upwards, as a fraction of the distance they span.
    marker_size : float, default=4.0
        Diameter in points of the dots at the ends of each link (0: none).
    show_grid : bool, default=True
        Outline the patches of a patch pooling.
    title : str, optional
        Default: the similarity and the conservation error.

    Returns
    -------
    matplotlib.figure.Figure
        The link curves are ``PathPatch`` artists with ``gid ==``
        :data:`LINK_GID`, red for positive and blue for negative relevance.
    """
    _pyplot()
    fig, (ax,) = _figure_and_axes(ax, 1, (9, 4.5))
    img_a, img_b = as_image(image_a), as_image(image_b)
    height = float(img_a.shape[0])
    ext_a = _image_extent(img_a.shape, 0.0, height)
    ext_b = _image_extent(img_b.shape, ext_a[1] + 0.5 * height / img_b.shape[0] + gap * height, height)
    for img, ext in ((img_a, ext_a), (img_b, ext_b)):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0, extent=ext,
                  interpolation="nearest")
    centers = []
    for pooling, img, ext in ((explanation.pooling_a, img_a, ext_a), (explanation.pooling_b, img_b, ext_b)):
        s = height / img.shape[0]
        c = group_centers(pooling, img.shape[:2]) * s
        centers.append(c + np.array([ext[0] + 0.5 * s, 0.0]))  # pixel (0, 0) of this image sits there
        if show_grid and pooling.grid_shape is not None:
            _outline_patches(ax, pooling, ext)

    def control(p: np.ndarray, q: np.ndarray) -> list:
        # one control point above the midpoint: an arc bowing up (y axis points down)
        mid = (p + q) / 2
        return [mid - np.array([0.0, bend * np.hypot(*(q - p))])]

    links = _strongest(_pair_relevance(explanation), n_links)
    _draw_links(ax, links, centers[0], centers[1], control, linewidth, max_alpha, marker_size)
    # the peak of a quadratic arc lies halfway to its control point
    peaks = [(centers[0][g][1] + centers[1][h][1]) / 2 - 0.5 * bend * np.hypot(*(centers[1][h] - centers[0][g]))
             for g, h, _ in links]
    top = min([ext_a[3], ext_b[3], *peaks])
    ax.set_xlim(ext_a[0], ext_b[1])
    ax.set_ylim(max(ext_a[2], ext_b[2]), top - 0.03 * height)
    ax.set_axis_off()
    ax.set_title(_summary(explanation) if title is None else title)
    return fig


def _outline_patches(ax: Any, pooling: Pooling, extent: tuple) -> None:
    """Thin lines along the patch borders of a patch pooling."""
    h, w = pooling.labels.shape
    gh, gw = pooling.grid_shape
    x0, x1, y1, y0 = extent
    sx, sy = (x1 - x0) / w, (y1 - y0) / h
    ph, pw = -(-h // gh), -(-w // gw)
    kw = dict(color="white", linewidth=0.5, alpha=0.4)
    for k in range(1, gw):
        ax.plot([x0 + k * pw * sx] * 2, [y0, y1], **kw)
    for k in range(1, gh):
        ax.plot([x0, x1], [y0 + k * ph * sy] * 2, **kw)


def _summary(explanation: Any) -> str:
    return (f"{explanation.kernel} similarity {explanation.similarity:.4g}, "
            f"conservation error {explanation.conservation_error:.2g}")


def _symmetric_limit(*arrays: np.ndarray) -> float:
    """``max |value|`` over the arrays (1 when all are zero), for ``vmin = -vmax``."""
    vmax = max(float(np.nanmax(np.abs(a))) if np.size(a) else 0.0 for a in arrays)
    return vmax if vmax > 0 else 1.0


def _side_labels(rel: np.ndarray, labels: Union[Sequence[str], Words], axis: int) -> tuple:
    """``(rel, labels, special flags)`` of one side; Words sum a token-level axis into words."""
    if not isinstance(labels, Words):
        labels = [str(t) for t in labels]
        return rel, labels, [False] * len(labels)
    if rel.shape[axis] == labels.n_tokens:  # token-level relevance: one row per word instead
        rel = merge_tokens(rel, labels, axis=axis)
    return rel, list(labels.labels), list(labels.special)


def plot_tokens(explanation: PairExplanation, tokens_a: Union[Sequence[str], Words],
                tokens_b: Union[Sequence[str], Words], kind: str = "matrix", n_links: int = 30,
                ax: Any = None, cmap: str = "bwr", linewidth: float = 2.0, title: Optional[str] = None) -> Any:
    """Token × token (or word × word) relevance of two sequences.

    Parameters
    ----------
    explanation : PairExplanation
        ``relevance`` of shape ``(len(tokens_a), len(tokens_b))``; with Words, either
        that (word-level) or ``(n_tokens_a, n_tokens_b)`` (token-level).
    tokens_a, tokens_b : sequence of str or skbilrp.words.Words
        Labels of the groups of each side. A :class:`~skbilrp.words.Words` labels that
        side by words: a token-level ``relevance`` is summed over the pieces of each
        word first (:func:`~skbilrp.words.merge_tokens`, which keeps the total), and
        the labels of special tokens are drawn in :data:`SPECIAL_COLOR` (grey).
    kind : {"matrix", "arcs"}, default="matrix"
        "matrix": a heatmap, symmetric colour scale centred at zero, rows ``tokens_a``.
        "arcs": ``tokens_a`` in a top row, ``tokens_b`` in a bottom row, curves joining
        the ``n_links`` strongest pairs (red positive, blue negative).
    n_links : int, default=30
        Links drawn with ``kind="arcs"``.
    ax : matplotlib Axes, optional
    cmap : str, default="bwr"
        Colormap of the matrix.
    linewidth : float, default=2.0
        Width of the arcs.
    title : str, optional
        Default: the similarity and the conservation error.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _pyplot()
    rel = _pair_relevance(explanation)
    rel, tokens_a, special_a = _side_labels(rel, tokens_a, 0)
    rel, tokens_b, special_b = _side_labels(rel, tokens_b, 1)
    if rel.shape != (len(tokens_a), len(tokens_b)):
        raise ValueError(
            f"The relevance has shape {rel.shape} but {len(tokens_a)} × {len(tokens_b)} tokens were "
            "given; pass one label per group of each side (or the Words of each text)."
        )
    if kind not in ("matrix", "arcs"):
        raise ValueError(f"kind must be 'matrix' or 'arcs', got {kind!r}.")
    longest = max(map(len, tokens_a + tokens_b), default=1)
    if kind == "matrix":
        size = (max(4.0, 0.35 * len(tokens_b) + 0.1 * longest + 2), max(3.0, 0.35 * len(tokens_a) + 0.1 * longest + 1))
        fig, (ax,) = _figure_and_axes(ax, 1, size)
        vmax = _symmetric_limit(rel)
        im = ax.imshow(rel, cmap=cmap, vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(len(tokens_b)), tokens_b, rotation=60, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(len(tokens_a)), tokens_a)
        for ticks, special in ((ax.get_xticklabels(), special_b), (ax.get_yticklabels(), special_a)):
            for tick, is_special in zip(ticks, special):
                if is_special:
                    tick.set_color(SPECIAL_COLOR)
        fig.colorbar(im, ax=ax, label="relevance")
    else:
        fig, (ax,) = _figure_and_axes(ax, 1, (max(5.0, 0.7 * max(len(tokens_a), len(tokens_b))), 3.0))
        xa = np.arange(len(tokens_a)) - (len(tokens_a) - 1) / 2
        xb = np.arange(len(tokens_b)) - (len(tokens_b) - 1) / 2
        top, bottom = np.stack([xa, np.ones_like(xa)], 1), np.stack([xb, np.zeros_like(xb)], 1)
        _draw_links(ax, _strongest(rel, n_links), top, bottom,
                    lambda p, q: [(p[0], 0.5), (q[0], 0.5)], linewidth, 1.0)
        tilt = longest > 6 or max(len(xa), len(xb)) > 12  # tilt long labels so they don't overlap
        for xs, y, toks, special, va, ha in ((xa, 1.0, tokens_a, special_a, "bottom", "left"),
                                             (xb, 0.0, tokens_b, special_b, "top", "right")):
            for x, t, is_special in zip(xs, toks, special):
                ax.text(x, y + (0.03 if va == "bottom" else -0.03), t, va=va, ha=ha if tilt else "center",
                        rotation=45 if tilt else 0, rotation_mode="anchor",
                        color=SPECIAL_COLOR if is_special else None)
        width = max(len(xa), len(xb)) / 2 + 0.5
        ax.set_xlim(-width, width)
        ax.set_ylim(-0.4, 1.4)
        ax.set_axis_off()
    ax.set_title(_summary(explanation) if title is None else title)
    return fig


def _image_and_text_sides(explanation: Any) -> tuple[np.ndarray, Pooling, list, list]:
    """``(relevance (patches, words), image pooling, labels, special flags)`` of an
    image × text explanation, whichever side the image is on."""
    rel = _pair_relevance(explanation)
    tokens_a, tokens_b = getattr(explanation, "tokens_a", None), getattr(explanation, "tokens_b", None)
    if (tokens_a is None) == (tokens_b is None):
        raise ValueError(
            "plot_image_text needs the explanation of an image × text entry (one side with tokens, the other "
            "an image), e.g. CrossModalKernel(...).explain_pairs(images, texts).pair(i, j); use plot_pair "
            "for two images and plot_tokens for two texts."
        )
    if tokens_a is None:
        pooling, labels, special = explanation.pooling_a, tokens_b, getattr(explanation, "special_b", None)
    else:
        rel, pooling, labels, special = rel.T, explanation.pooling_b, tokens_a, getattr(explanation, "special_a", None)
    special = list(special) if special is not None else [False] * len(labels)
    return rel, pooling, [str(t) for t in labels], special


def plot_image_text(explanation: PairExplanation, image: Any, n_maps: int = 4, n_links: int = 20,
                    show_special: bool = False, cmap: str = "bwr", alpha: float = 0.6, linewidth: float = 2.0,
                    title: Optional[str] = None) -> Any:
    """Patch × word relevance of an image and a text: links, and one heatmap per word.

    The top panel shows the image and the words of the text in a column beside it,
    with curves from the patches to the words of the ``n_links`` strongest pairs (red
    positive, blue negative). Below, one heatmap per word: that word's column of the
    relevance spread over its patches, drawn over the image (symmetric colour scale
    shared by all maps).

    Parameters
    ----------
    explanation : TextPairExplanation
        One image × text entry (either side the image), e.g.
        ``CrossModalKernel.explain_pairs(images, texts, words=True).pair(i, j)``;
        token-level entries are drawn per token.
    image : array-like or torch.Tensor
        The image, ``(H, W)``, ``(H, W, 3)`` or ``(C, H, W)`` in [0, 1]; its
        resolution may differ from the pooling's positions.
    n_maps : int, default=4
        Heatmaps drawn: the words with the largest total ``|relevance|``, in text order.
    n_links : int, default=20
        Links drawn between patches and words.
    show_special : bool, default=False
        Whether special tokens (``[CLS]``, ``[SEP]``) may get links and maps.
    cmap : str, default="bwr"
    alpha : float, default=0.6
        Opacity of the heatmaps over the image.
    linewidth : float, default=2.0
    title : str, optional
        Default: the similarity and the conservation error.

    Returns
    -------
    matplotlib.figure.Figure
        The links are ``PathPatch`` artists with ``gid ==`` :data:`LINK_GID`.

    Raises
    ------
    ValueError
        If the explanation is not of an image and a text, or the image pooling is not 2-D.

    Examples
    --------
    >>> E = kern.explain_pairs(images[:1], ["a cat on a mat"], words=True)  # doctest: +SKIP
    >>> fig = plot_image_text(E.pair(0, 0), images[0])                     # doctest: +SKIP
    """
    plt = _pyplot()
    rel, pooling, labels, special = _image_and_text_sides(explanation)
    img = as_image(image)
    shown = [w for w in range(len(labels)) if show_special or not special[w]]
    weight = np.abs(rel).sum(axis=0)
    maps = sorted(sorted(shown, key=lambda w: -weight[w])[: max(0, int(n_maps))])
    n_cols = max(1, len(maps))
    fig = plt.figure(figsize=(max(6.0, 2.2 * n_cols), 6.0), layout="constrained")
    grid = fig.add_gridspec(2, n_cols, height_ratios=[1.3, 1.0])
    ax = fig.add_subplot(grid[0, :])
    height = float(img.shape[0])
    ext = _image_extent(img.shape, 0.0, height)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0, extent=ext, interpolation="nearest")
    s = height / img.shape[0]
    centers = group_centers(pooling, img.shape[:2]) * s + np.array([ext[0] + 0.5 * s, 0.0])
    x_words = ext[1] + 0.6 * height
    y_words = (np.arange(len(labels)) + 0.5) * height / max(1, len(labels)) - 0.5 * s
    ends = np.stack([np.full(len(labels), x_words), y_words], axis=1)
    masked = np.zeros_like(rel)
    masked[:, shown] = rel[:, shown]
    links = _strongest(masked, n_links)
    _draw_links(ax, links, centers, ends, lambda p, q: [((p[0] + q[0]) / 2, p[1]), ((p[0] + q[0]) / 2, q[1])],
                linewidth, 1.0)
    for w, (label, y) in enumerate(zip(labels, y_words)):
        ax.text(x_words + 0.02 * height, y, label, va="center", ha="left",
                color=SPECIAL_COLOR if special[w] else None)
    ax.set_xlim(ext[0], x_words + 0.6 * height)
    ax.set_ylim(ext[2], ext[3])
    ax.set_axis_off()
    ax.set_title(_summary(explanation) if title is None else title)
    vmax = _symmetric_limit(rel[:, maps]) if maps else 1.0
    for k, w in enumerate(maps):
        sub = fig.add_subplot(grid[1, k])
        sub.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0, extent=ext, interpolation="nearest")
        im = sub.imshow(pooling.to_positions(rel[:, w]), cmap=cmap, vmin=-vmax, vmax=vmax, alpha=alpha,
                        extent=ext, interpolation="nearest")
        sub.set_title(labels[w])
        sub.set_axis_off()
    if maps:
        fig.colorbar(im, ax=fig.axes[1:], label="relevance", shrink=0.8)
    return fig

def plot_marginals(explanation: PairExplanation, image_a: Any = None, image_b: Any = None,
                   ax: Any = None, cmap: str = "bwr", titles: Sequence[str] = ("first input", "second input")) -> Any:
    """First-order relevance maps of both inputs, on one symmetric colour scale.

    Each map is :meth:`PairExplanation.marginals` spread back onto the pixels with
    ``pooling.to_positions`` (every pixel of a group shows the group's value); the
    group values sum to the similarity when the rules conserve.

    Parameters
    ----------
    explanation : PairExplanation
        With image poolings (labels over ``(h, w)`` positions).
    image_a, image_b : array-like, optional
        The inputs, drawn in a row above the maps when both are given.
    ax : sequence of Axes, optional
        Two Axes for the maps, or four for image a, image b, map a, map b.
        Default: a new figure (2 × 2 with images, else 1 × 2).
    cmap : str, default="bwr"
        Colormap, with ``vmin = -vmax`` so that white is zero.
    titles : pair of str
        Names of the inputs.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    with_images = image_a is not None and image_b is not None
    if ax is None:
        rows = 2 if with_images else 1
        fig, grid = plt.subplots(rows, 2, figsize=(7, 3.2 * rows + 0.3), squeeze=False, layout="constrained")
        axes = list(grid.ravel())
    else:
        axes = list(np.ravel(ax))
        if len(axes) not in (2, 4) or (len(axes) == 4 and not with_images):
            raise ValueError("ax must hold 2 Axes (maps), or 4 (images then maps) when both images are given.")
        fig = axes[0].figure
    if len(axes) == 4:
        for a, image, name in zip(axes[:2], (image_a, image_b), titles):
            img = as_image(image)
            a.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
            a.set_title(name)
            a.set_axis_off()
        axes = axes[2:]
    _pair_relevance(explanation)  # one pair, not a block
    marg = explanation.marginals()
    maps = [p.to_positions(m) for p, m in zip((explanation.pooling_a, explanation.pooling_b), marg)]
    for m in maps:
        if m.ndim != 2:
            raise ValueError(f"plot_marginals needs image poolings over 2-D positions, got {m.shape}.")
    vmax = _symmetric_limit(*maps)
    im = None
    for a, m, g, name in zip(axes, maps, marg, titles):
        im = a.imshow(m, cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
        a.set_title(f"relevance of {name}\n(sum {np.sum(g):.4g})")
        a.set_axis_off()
    fig.colorbar(im, ax=axes, label="relevance", shrink=0.8)
    fig.suptitle(_summary(explanation))
    return fig


def plot_kernel(K: Any, marked: Sequence[tuple[int, int]] = (), ax: Any = None, cmap: str = "viridis",
                labels: Optional[tuple[Sequence, Sequence]] = None, edgecolor: str = "red",
                title: Optional[str] = "kernel matrix") -> Any:
    """A kernel (or distance) matrix, with explained entries outlined.

    Parameters
    ----------
    K : array-like of shape (n, m)
    marked : sequence of (i, j), default=()
        Entries to outline with a rectangle (``gid ==`` :data:`MARK_GID`).
    ax : matplotlib Axes, optional
    cmap : str, default="viridis"
    labels : pair of sequences, optional
        Class labels of the rows and the columns, sorted: the boundaries between
        classes are drawn as thin lines and each block is labelled by its class.
    edgecolor : str, default="red"
        Colour of the rectangles.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    _pyplot()  # the install hint, before any other matplotlib import
    from matplotlib.patches import Rectangle

    K = np.asarray(K, dtype=np.float64)
    if K.ndim != 2:
        raise ValueError(f"K must be a 2-D matrix, got shape {K.shape}.")
    fig, (ax,) = _figure_and_axes(ax, 1, (6, 5))
    im = ax.imshow(K, cmap=cmap, aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax)
    # a box at least ~2 % of the matrix wide, so that single entries stay visible
    pad_r, pad_c = max(0.5, K.shape[0] / 100), max(0.5, K.shape[1] / 100)
    for i, j in marked:
        if not (0 <= i < K.shape[0] and 0 <= j < K.shape[1]):
            raise ValueError(f"Marked entry {(i, j)} lies outside K of shape {K.shape}.")
        ax.add_patch(Rectangle((j - pad_c, i - pad_r), 2 * pad_c, 2 * pad_r, fill=False,
                               edgecolor=edgecolor, linewidth=1.5, gid=MARK_GID))
    if labels is not None:
        for axis, (lab, line, ticks) in enumerate(zip(labels, (ax.axhline, ax.axvline),
                                                      (ax.set_yticks, ax.set_xticks))):
            lab = np.asarray(lab)
            if len(lab) != K.shape[axis]:
                raise ValueError(f"labels must give one label per row and per column of K {K.shape}.")
            bounds = np.flatnonzero(lab[1:] != lab[:-1]) + 0.5
            for b in bounds:
                line(b, color="white", linewidth=0.4, alpha=0.6)
            edges = np.concatenate([[-0.5], bounds, [len(lab) - 0.5]])
            ticks((edges[:-1] + edges[1:]) / 2, [str(lab[int(np.ceil(e))]) for e in edges[:-1]])
    if title:
        ax.set_title(title)
    return fig


def plot_decision(decision: Any, image: Any, train_images: Any, query: int = 0, n_support: int = 4,
                  train_labels: Optional[Sequence] = None, ax: Any = None, cmap: str = "bwr") -> Any:
    """A kernel machine's decision on one input, split over support vectors and pixels.

    Top row: the input and its ``n_support`` support vectors with the largest
    ``|alpha_i k(x, x_i)|`` (titled with that share of ``f(x) - b``). Bottom row: the
    first-order relevance on the input (sums to ``f(x) - b`` when the rules conserve),
    then ``alpha_i`` times each support vector's marginal.

    Parameters
    ----------
    decision : skbilrp.audits.DecisionExplanation
        From :func:`skbilrp.audits.explain_decision`, with image poolings.
    image : array-like
        The explained input ``query`` (``(H, W)``, ``(H, W, 3)`` or ``(C, H, W)``).
    train_images : array-like
        The kernel's training samples, indexed like ``X_fit_`` (e.g. ``kernel.X_fit_``).
    query : int, default=0
        Which explained input.
    n_support : int, default=4
        Support vectors shown.
    train_labels : sequence, optional
        Labels of the training samples, shown in the titles.
    ax : array of Axes of shape (2, 1 + n_support), optional
    cmap : str, default="bwr"
        Symmetric colormap (``vmin = -vmax``): one scale for the input's map, one
        shared by the support vectors' maps.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    contrib = np.asarray(decision.contributions)[query]
    order = np.argsort(-np.abs(contrib), kind="stable")[: max(1, int(n_support))]
    cols = 1 + len(order)
    if ax is None:
        fig, axes = plt.subplots(2, cols, figsize=(1.9 * cols + 0.8, 4.4), squeeze=False, layout="constrained")
    else:
        axes = np.asarray(ax, dtype=object).reshape(2, -1)
        if axes.shape[1] != cols:
            raise ValueError(f"ax must be a 2 × {cols} array of Axes, got shape {axes.shape}.")
        fig = axes[0, 0].figure
    pooling = decision.pooling
    query_map = pooling.to_positions(np.asarray(decision.relevance)[query])
    support_maps = [pooling.to_positions(np.asarray(decision.support_relevance)[query, k]) for k in order]
    if query_map.ndim != 2:
        raise ValueError(f"plot_decision needs an image pooling over 2-D positions, got {query_map.shape}.")
    shown = [(axes[0, 0], image, "input")] + [
        (axes[0, c + 1], np.asarray(train_images)[decision.support[k]],
         f"train #{decision.support[k]}"
         + ("" if train_labels is None else f" ({np.asarray(train_labels)[decision.support[k]]})")
         + f"\nα·k = {contrib[k]:+.3g}") for c, k in enumerate(order)]
    for a, img, title in shown:
        img = as_image(img)
        a.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
        a.set_title(title, fontsize=9)
    vq, vs = _symmetric_limit(query_map), _symmetric_limit(*support_maps)
    im_q = axes[1, 0].imshow(query_map, cmap=cmap, vmin=-vq, vmax=vq, interpolation="nearest")
    axes[1, 0].set_title(f"relevance on input\n(sum = f(x) − b = {np.sum(decision.relevance[query]):.3g})",
                         fontsize=9)
    im_s = None
    for c, m in enumerate(support_maps):
        im_s = axes[1, c + 1].imshow(m, cmap=cmap, vmin=-vs, vmax=vs, interpolation="nearest")
        axes[1, c + 1].set_title("α · marginal", fontsize=9)
    for a in axes.ravel():
        a.set_axis_off()
    fig.colorbar(im_q, ax=axes[1, 0], shrink=0.8)
    if im_s is not None:
        fig.colorbar(im_s, ax=list(axes[1, 1:]), shrink=0.8)
    which = "" if decision.classes is None else f" ({decision.classes[1]} vs {decision.classes[0]})"
    fig.suptitle(f"decision{which}: f(x) = {np.ravel(decision.decision)[query]:.3g}, intercept "
                 f"{decision.intercept:.3g}, conservation error {np.ravel(decision.conservation_error)[query]:.1e}",
                 fontsize=10)
    return fig


def plot_audit(audit: Any, groups: Optional[Sequence] = None, ax: Any = None, cmap: str = "bwr",
               signal: bool = False, edgecolor: str = "gold") -> Any:
    """Per-group relevance maps of a dataset audit, suspicious regions outlined.

    Each map is :attr:`DatasetAudit.relevance_maps` of a group (the mean share of its
    similarities per position; it sums to 1), on one symmetric colour scale for all
    groups; every suspicious region of that group gets a rectangle (``gid ==``
    :data:`SUSPICIOUS_GID`) labelled with its ratio.

    Parameters
    ----------
    audit : skbilrp.audits.DatasetAudit
        With 2-D positions (images).
    groups : sequence, optional
        Groups to draw, default all.
    ax : sequence of Axes, optional
        One per group (two per group, maps then signal maps, with ``signal=True``).
    cmap : str, default="bwr"
    signal : bool, default=False
        Add a second row with the groups' signal maps (share of ``|x|``), on their own scale.
    edgecolor : str, default="gold"
        Colour of the outlines.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    groups = list(audit.groups if groups is None else groups)
    missing = [g for g in groups if g not in audit.relevance_maps]
    if missing or not groups:
        raise ValueError(f"groups must be among the audit's groups {audit.groups}, got {missing or groups}.")
    if len(audit.position_shape) != 2:
        raise ValueError(f"plot_audit needs 2-D positions (images), got {audit.position_shape}.")
    rows = 2 if signal else 1
    if ax is None:
        fig, grid = plt.subplots(rows, len(groups), figsize=(1.6 * len(groups) + 1.2, 1.9 * rows + 0.4),
                                 squeeze=False, layout="constrained")
    else:
        grid = np.asarray(ax, dtype=object).reshape(rows, -1)
        if grid.shape[1] != len(groups):
            raise ValueError(f"ax must hold {rows} x {len(groups)} Axes, got {grid.size}.")
        fig = grid[0, 0].figure
    vmax = _symmetric_limit(*(audit.relevance_maps[g] for g in groups))
    im = None
    for a, g in zip(grid[0], groups):
        im = a.imshow(audit.relevance_maps[g], cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
        a.set_title(f"{g} ({audit.n_pairs[g]} pairs)", fontsize=9)
        for s in (s for s in audit.suspicious if s.group == g):
            rs, cs = s.slices
            a.add_patch(Rectangle((cs.start - 0.5, rs.start - 0.5), cs.stop - cs.start, rs.stop - rs.start,
                                  fill=False, edgecolor=edgecolor, linewidth=2, gid=SUSPICIOUS_GID))
            a.text(cs.start - 0.4, rs.start - 0.4, f"{s.ratio:.1f}x", color="black", fontsize=7, va="top",
                   bbox=dict(facecolor=edgecolor, edgecolor="none", pad=0.5))
    fig.colorbar(im, ax=list(grid[0]), label="share of similarity", shrink=0.8)
    if signal:
        smax = max(float(np.max(audit.signal_maps[g])) for g in groups) or 1.0
        for a, g in zip(grid[1], groups):
            im_s = a.imshow(audit.signal_maps[g], cmap="Greys", vmin=0.0, vmax=smax, interpolation="nearest")
            a.set_title("share of |x|", fontsize=8)
        fig.colorbar(im_s, ax=list(grid[1]), label="share of signal", shrink=0.8)
    for a in grid.ravel():
        a.set_axis_off()
    fig.suptitle(f"where the similarity comes from ({audit.entries} entries); outlined: share of similarity "
                 f">= {audit.threshold:g} x max(share of signal, uniform share)", fontsize=10)
    return fig
