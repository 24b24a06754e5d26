"""What the HTML report shows, computed in Python: heatmap, entries, images, audit.

The report never embeds a whole kernel's explanations: the heatmap is an image of
block means (at most ``max_heatmap`` cells per side), and pair explanations are
precomputed for at most ``max_entries`` chosen entries, each kept as its similarity,
conservation error, strongest ``n_links`` group pairs and marginal maps (text: the
token matrix, at most ``max_tokens`` per side). Every cap that cut something is
named in :attr:`ReportSummary.capped` and in the report itself.
"""

from __future__ import annotations

import base64
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..kernel import DeepKernel, features_kernel, kernel_to_distance, self_similarity
from ._cross import check_cross_rows, cross_record, is_cross_modal, text_labels

__all__ = ["write_report", "ReportSummary"]

#: Samples shown as images are downsampled (by index sampling) to at most this side.
MAX_IMAGE_SIDE = 128
#: Characters of each text embedded.
MAX_TEXT_CHARS = 400


@dataclass
class ReportSummary:
    """What :func:`write_report` wrote.

    Attributes
    ----------
    path : str
        The HTML file.
    n_rows, n_cols : int
        Kernel rows (the samples ``X``) and columns (the kernel's training samples).
    heatmap_shape : tuple of int
        Cells of the embedded heatmap image (block means when smaller than the kernel).
    n_entries : int
        Kernel entries with a precomputed pair explanation.
    queries : list of int
        Rows whose nearest neighbours are explained.
    audit : bool
        Whether a dataset audit is in the report.
    max_conservation_error : float
        Largest ``|k - sum R|`` over the precomputed entries.
    capped : list of str
        Every cap that cut what is shown, in words.
    notes : list of str
        Other remarks (e.g. why there is no audit).
    seconds : float
        Time taken.
    n_bytes : int
        Size of the file.
    """

    path: str
    n_rows: int
    n_cols: int
    heatmap_shape: tuple
    n_entries: int
    queries: list
    audit: bool
    max_conservation_error: float
    capped: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    seconds: float = 0.0
    n_bytes: int = 0

    def line(self) -> str:
        """The summary in one line: file, size, time, kernel, entries, queries, conservation."""
        return (f"report written to {self.path} ({self.n_bytes / 2**20:.2f} MiB) in {self.seconds:.1f} s: kernel "
                f"{self.n_rows} x {self.n_cols}, {self.n_entries} explained entries, {len(self.queries)} queries, "
                f"largest conservation error {self.max_conservation_error:.2g}")

    def __str__(self) -> str:
        lines = [f"report written to {self.path} ({self.n_bytes / 2**20:.2f} MiB) in {self.seconds:.1f} s",
                 f"  kernel {self.n_rows} x {self.n_cols}, heatmap {self.heatmap_shape[0]} x {self.heatmap_shape[1]} "
                 f"cells, {self.n_entries} explained entries, {len(self.queries)} queries, "
                 f"largest conservation error {self.max_conservation_error:.2g}"]
        lines += [f"  capped: {c}" for c in self.capped]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ------------------------------------------------------------------ helpers


def _log(verbose: bool, message: str) -> None:
    if verbose:
        print(message, flush=True)


def _split(estimator: Any) -> tuple[Any, DeepKernel, Any]:
    """``(X -> kernel input, the fitted DeepKernel, the final estimator or None)``."""
    from sklearn.utils.validation import check_is_fitted

    from ..audits._pipeline import _split_pipeline

    if isinstance(estimator, DeepKernel):
        check_is_fitted(estimator)
    pre, kern, after = _split_pipeline(estimator)
    return pre, kern, (after[-1] if after else None)


def _fit_labels(final: Any, n_fit: int) -> Optional[np.ndarray]:
    """Training labels a fitted neighbour classifier keeps (``classes_[_y]``), else None."""
    y = getattr(final, "_y", None)
    classes = getattr(final, "classes_", None)
    if y is None or classes is None or np.ndim(y) != 1 or len(y) != n_fit:
        return None
    try:
        return np.asarray(classes)[np.asarray(y, dtype=np.int64)]
    except (IndexError, ValueError, TypeError):
        return None


def _codes(labels: Optional[np.ndarray], n: int) -> tuple[np.ndarray, list]:
    """Integer group code of every sample and the sorted group names (one group: no labels)."""
    if labels is None:
        return np.zeros(n, dtype=np.int64), [""]
    labels = np.asarray(labels)
    if len(labels) != n:
        raise ValueError(f"Expected {n} labels, got {len(labels)}.")
    names, codes = np.unique(labels, return_inverse=True)
    return codes.astype(np.int64), [_label(v) for v in names]


def _label(value: Any) -> str:
    if isinstance(value, (np.integer, int)):
        return str(int(value))
    if isinstance(value, (np.floating, float)):
        return f"{float(value):g}"
    return str(value)


def _b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode("ascii")


def _round(values: Any, digits: int = 5) -> list:
    """Floats to ``digits`` significant digits, for a compact JSON."""
    return [float(f"{float(v):.{digits}g}") for v in np.ravel(values)]


def _edges(n: int, cells: int) -> np.ndarray:
    return np.unique(np.round(np.linspace(0, n, cells + 1)).astype(np.int64))


def _block_means(K: np.ndarray, row_edges: np.ndarray, col_edges: np.ndarray) -> np.ndarray:
    sums = np.add.reduceat(np.add.reduceat(K, row_edges[:-1], axis=0), col_edges[:-1], axis=1)
    return sums / np.outer(np.diff(row_edges), np.diff(col_edges))


def _bands(codes_sorted: np.ndarray, names: list) -> list:
    """``[name, start, stop]`` of each group's run in the sorted order."""
    out = []
    for c in np.unique(codes_sorted):
        where = np.flatnonzero(codes_sorted == c)
        out.append([names[int(c)], int(where[0]), int(where[-1]) + 1])
    return out


def _display_image(sample: np.ndarray, absolute: bool) -> Optional[dict]:
    """A sample as ``{"h", "w", "c", "data"}`` (uint8 base64), or None if it is no image."""
    arr = np.asarray(sample, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
    elif arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] in (1, 3):
        arr = np.moveaxis(arr, 0, -1)  # ambiguous (e.g. 3 × 8 × 3): channels first, as torch
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        return None
    h, w = arr.shape[:2]
    if max(h, w) > MAX_IMAGE_SIDE:
        s = MAX_IMAGE_SIDE / max(h, w)
        rows = np.minimum((np.arange(max(1, round(h * s))) / s).astype(int), h - 1)
        cols = np.minimum((np.arange(max(1, round(w * s))) / s).astype(int), w - 1)
        arr = arr[np.ix_(rows, cols)]
    if not absolute:
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    img = np.round(np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8)
    return {"h": int(img.shape[0]), "w": int(img.shape[1]), "c": int(img.shape[2]), "data": _b64(img)}


def _embed_images(samples: dict, sides: dict, capped: list, notes: list) -> None:
    """Put the shown images of each side ``{key: (images, indices)}`` into ``samples[key]``,
    on one intensity scale: [0, 1] as is when every image lies in it, else each rescaled."""
    absolute = all(arr.min() >= 0.0 and arr.max() <= 1.0 for arr, _ in sides.values())
    big = False
    for key, (arr, idx) in sides.items():
        for i in idx:
            img = _display_image(arr[i], absolute)
            if img is not None:
                samples[key][str(i)] = img
                big = big or max(np.shape(arr[i])[-2:]) > MAX_IMAGE_SIDE
    if big:
        capped.append(f"images: shown downsampled to at most {MAX_IMAGE_SIDE} pixels per side")
    if not absolute:
        notes.append("inputs lie outside [0, 1]: each image is shown rescaled to its own range")


def _geometry(pooling: Any) -> Optional[dict]:
    """Group centres (normalised to [0, 1]) and the map from positions to groups."""
    from ..plot import group_centers

    labels = np.asarray(pooling.labels)
    if labels.ndim != 2:
        return None
    h, w = labels.shape
    centers = group_centers(pooling)
    norm = np.stack([(centers[:, 0] + 0.5) / w, (centers[:, 1] + 0.5) / h], axis=1)
    geo = {"h": int(h), "w": int(w), "centers": [_round(c, 4) for c in norm]}
    grid = getattr(pooling, "grid_shape", None)
    if grid is not None:
        geo["grid"] = [int(grid[0]), int(grid[1])]
    elif labels.size <= 2**16:
        geo["labels"] = [int(v) for v in labels.ravel()]
    return geo


def _pick_queries(queries: Union[int, Sequence[int]], codes: np.ndarray, n_rows: int) -> list:
    """Rows to explain the neighbours of: given indices, or the first of each class in turn."""
    if isinstance(queries, (int, np.integer)):
        n = min(int(queries), n_rows)
        if n < 0:
            raise ValueError(f"queries must be >= 0 or a list of row indices, got {queries}.")
        per_class = [list(np.flatnonzero(codes == c)) for c in np.unique(codes)]
        out: list = []
        depth = 0
        while len(out) < n:
            for members in per_class:
                if depth < len(members) and len(out) < n:
                    out.append(int(members[depth]))
            depth += 1
        return out
    out = [int(q) for q in queries]
    bad = [q for q in out if not 0 <= q < n_rows]
    if bad:
        raise IndexError(f"Query rows must lie in [0, {n_rows}), got {bad[:5]}.")
    return list(dict.fromkeys(out))


def _block_sample(codes_r: np.ndarray, codes_c: np.ndarray, budget: int, taken: set, same: bool,
                  rng: np.random.Generator) -> list:
    """Up to ``budget`` entries spread evenly over the (row class, column class) blocks,
    diagonal blocks first, random within each block."""
    if budget <= 0:
        return []
    classes_r, classes_c = np.unique(codes_r), np.unique(codes_c)
    blocks = [(a, b) for a in classes_r for b in classes_c]
    blocks.sort(key=lambda ab: (ab[0] != ab[1], ab))
    members_r = {a: np.flatnonzero(codes_r == a) for a in classes_r}
    members_c = {b: np.flatnonzero(codes_c == b) for b in classes_c}
    out: list = []
    rounds = 0
    while len(out) < budget and rounds < 64:
        added = False
        for a, b in blocks:
            if len(out) >= budget:
                break
            rows, cols = members_r[a], members_c[b]
            for _ in range(8):  # a few tries to find an entry not taken yet
                i, j = int(rng.choice(rows)), int(rng.choice(cols))
                if (i, j) not in taken and not (same and i == j):
                    taken.add((i, j))
                    out.append((i, j))
                    added = True
                    break
        rounds += 1
        if not added:
            break
    return out


def _audit_payload(audit: Any, estimator: Any, X: Any, y: Any, audit_max_pairs: int,
                   random_state: int, verbose: bool, notes: list, capped: list) -> Optional[dict]:
    """The audit as a JSON-ready dict: given, computed (``"auto"``) or None."""
    if audit is None:
        return None
    if isinstance(audit, str):
        if audit != "auto":
            raise ValueError(f"audit must be None, 'auto', a DatasetAudit or its to_dict(), got {audit!r}.")
        from ..audits import audit_dataset

        kern = _split(estimator)[1]
        if is_cross_modal(kern):
            notes.append("no dataset audit: it compares where the similarity between members of one group comes "
                         "from on both samples of each entry, and a cross-modal entry pairs an image with a text "
                         "(the entries show each pair's patch heatmap per word instead)")
            return None
        if getattr(kern, "input_shape_", None) is None:
            # the audit averages relevance maps over fixed input positions; texts have none
            notes.append("no dataset audit: it maps relevance over the positions of fixed-shape inputs, and "
                         "texts differ in length (the entries show each pair's token matrix instead)")
            return None
        _log(verbose, f"auditing the dataset (at most {audit_max_pairs} kernel entries per group) ...")
        audit = audit_dataset(estimator, X, y, region=_audit_region(kern), max_pairs=audit_max_pairs,
                              random_state=random_state, verbose=verbose)
        if any(n > audit_max_pairs for n in audit.n_candidates.values()):
            capped.append(f"audit: at most {audit_max_pairs} kernel entries per group were aggregated "
                          "(audit_max_pairs)")
        left_out = _left_out_groups(audit, y)
        if left_out:
            notes.append(f"dataset audit: {len(left_out)} groups have no kernel entries to aggregate and are left "
                         f"out ({', '.join(map(repr, left_out[:5]))}{', ...' if len(left_out) > 5 else ''}): "
                         + ("a group needs entries between two of its samples, here two of its queries; give more "
                            "queries per group" if audit.entries == "clusters" else
                            "its samples take part in no entry the estimator uses"))
    data = audit if isinstance(audit, dict) else audit.to_dict()
    return _jsonable(data)


def _names(given: Optional[Sequence[str]], n: int, used: Sequence[int], what: str) -> dict:
    """``{index: name}`` of the samples shown, from one name per sample (or none)."""
    if given is None:
        return {}
    if len(given) != n:
        raise ValueError(f"{what} must hold one name per sample, {n}, got {len(given)}.")
    return {str(i): str(given[i])[:MAX_TEXT_CHARS] for i in used}


def _left_out_groups(audit: Any, y: Any) -> list:
    """The groups of ``y`` (noise, label -1, aside) that the audit has nothing on."""
    if y is None:
        return []
    audited = {str(g) for g in audit.groups}
    labels = [g.item() if isinstance(g, np.generic) else g for g in np.unique(np.asarray(y))]
    return [g for g in labels if str(g) not in audited and not (isinstance(g, (int, np.integer)) and g == -1)]


def _audit_region(kern: DeepKernel) -> Any:
    """Audit regions the kernel's groups fit in: its patches when it pools patches, else
    the audit's default of 2 x 2 positions (the digits demo explains single pixels)."""
    pooling = getattr(kern, "pooling", None)
    if isinstance(pooling, (int, np.integer)) or (isinstance(pooling, tuple) and len(pooling) == 2):
        return pooling
    return 2


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {_label(k) if not isinstance(k, str) else k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, slice):
        return [value.start, value.stop]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


# --------------------------------------------------------------------- main


def write_report(path: Union[str, os.PathLike], estimator: Any, X: Any = None, y: Any = None, *,
                 y_fit: Any = None, queries: Union[int, Sequence[int]] = 10, n_neighbors: int = 5,
                 pairs: Optional[Sequence[tuple[int, int]]] = None, max_entries: int = 300,
                 max_heatmap: int = 512, n_links: int = 30, max_tokens: int = 64,
                 audit: Any = "auto", audit_max_pairs: int = 200, title: Optional[str] = None,
                 names: Optional[Sequence[str]] = None, names_fit: Optional[Sequence[str]] = None,
                 random_state: int = 0, verbose: bool = True) -> ReportSummary:
    """Write one self-contained interactive HTML report of a deep kernel and its explanations.

    The report shows the kernel ``K(X, X_fit_)`` as a heatmap sorted by class; clicking
    an entry with a precomputed explanation opens its pair view (the two images with
    links between their most relevant group pairs, in the style of the BiLRP paper, and
    marginal maps; for text the token × token matrix), with its similarity and
    conservation error. It also lists the nearest-neighbour explanations of chosen
    queries, the conservation errors, and the dataset audit (per-group relevance maps
    and suspicious regions). Everything is inline: no network access, no external file.

    A :class:`~skbilrp.CrossModalKernel` fitted on prompts is shown with the images
    ``X`` as rows and the prompts as columns (labelled with their texts): each entry's
    pair view draws the image with one patch heatmap per word, and the queries'
    neighbours are their zero-shot top prompts; fitted on images, the texts ``X`` are
    the rows. It has no dataset audit (the page says why).

    Parameters
    ----------
    path : str or path-like
        The HTML file to write.
    estimator : DeepKernel or Pipeline
        A fitted :class:`~skbilrp.DeepKernel` (or :class:`~skbilrp.TextKernel`, or
        :class:`~skbilrp.CrossModalKernel`), or a fitted Pipeline with one (e.g.
        ``make_pipeline(DeepKernel(...), SVC(kernel="precomputed"))``).
        With ``output="distance"`` the heatmap still shows the kernel.
    X : array-like, optional
        Rows of the kernel, as the estimator takes them; default the kernel's training
        samples (``X_fit_``). Required for a cross-modal kernel: the modality it was
        not fitted on.
    y : array-like of shape (n_rows,), optional
        Labels of ``X`` (of the training samples when ``X`` is None): rows are sorted by
        them and the entries sampled per class block.
    y_fit : array-like of shape (n_fit,), optional
        Labels of the training samples (columns); default ``y`` when ``X`` is None, else
        those a fitted neighbour classifier keeps, else none.
    queries : int or sequence of int, default=10
        Rows whose ``n_neighbors`` nearest training samples (by kernel-induced distance)
        are explained: that many rows (the first of each class in turn) or the row indices.
    n_neighbors : int, default=5
    pairs : sequence of (int, int), optional
        More entries ``(row, column)`` to explain; always included, even over ``max_entries``.
    max_entries : int, default=300
        Cap on the precomputed explanations: the queries' neighbour pairs first, then a
        sample spread evenly over the class blocks fills up to it.
    max_heatmap : int, default=512
        Most heatmap cells per side; a larger kernel is shown as block means.
    n_links : int, default=30
        Strongest group pairs embedded (and drawn) per image entry.
    max_tokens : int, default=64
        Text kernels: tokens per side of each embedded token matrix.
    audit : None, "auto", DatasetAudit or dict, default="auto"
        The dataset audit to show: computed with :func:`skbilrp.audits.audit_dataset`
        (``"auto"``, skipped with a note when that is not available), given (its
        ``to_dict()`` is embedded), or none.
    audit_max_pairs : int, default=200
        ``max_pairs`` of the audit computed with ``audit="auto"``.
    title : str, optional
    names, names_fit : sequence of str, optional
        Names of the rows' and the columns' samples (e.g. their file names), shown
        beside their index wherever a sample is named.
    random_state : int, default=0
        Seed of the entry sample.
    verbose : bool, default=True
        Print progress and the summary.

    Returns
    -------
    ReportSummary
        What was written and what was capped.

    Raises
    ------
    ValueError, PermissionError
        Before any work, if ``path`` is a folder or cannot be written (see
        :func:`skbilrp._checks.check_output_path`).
    ValueError
        If the kernel is cross-modal and ``X`` is missing or of the modality it was
        fitted on.
    """
    from .._checks import check_output_path
    from ._html import render

    check_output_path(path, "file", "path")  # before the work, not after it
    t0 = time.perf_counter()
    for name, value, low in (("max_entries", max_entries, 0), ("max_heatmap", max_heatmap, 1),
                             ("n_links", n_links, 1), ("max_tokens", max_tokens, 1), ("n_neighbors", n_neighbors, 1),
                             ("audit_max_pairs", audit_max_pairs, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")
    pre, kern, final = _split(estimator)
    capped: list = []
    notes: list = []
    cross = is_cross_modal(kern)
    modalities = check_cross_rows(kern, X) if cross else None

    # ---- the kernel
    same = X is None
    xk = kern.X_fit_ if same else pre(X)
    feats = kern.features_fit_ if same else kern.features(xk)
    K = features_kernel(feats, kern.features_fit_, kern.kernel)
    n_rows, n_cols = K.shape
    if y_fit is None:
        y_fit = y if same else _fit_labels(final, n_cols)
    codes_r, names_r = _codes(None if y is None else np.asarray(y), n_rows)
    codes_c, names_c = _codes(None if y_fit is None else np.asarray(y_fit), n_cols)
    text_bands = None  # the side whose bands are its texts (a cross-modal kernel's prompts)
    if cross:
        text_side = "rows" if modalities[0] == "texts" else "cols"
        given, texts, n = (y, xk, n_rows) if text_side == "rows" else (y_fit, kern.X_fit_, n_cols)
        labelled = text_labels(texts, n) if given is None else None
        if labelled is not None:
            text_bands = text_side
            if text_side == "rows":
                codes_r, names_r = labelled
            else:
                codes_c, names_c = labelled
    row_order = np.argsort(codes_r, kind="stable")
    col_order = np.argsort(codes_c, kind="stable")
    row_pos, col_pos = np.argsort(row_order), np.argsort(col_order)
    Ks = K[np.ix_(row_order, col_order)]
    row_edges = _edges(n_rows, min(n_rows, max_heatmap))
    col_edges = _edges(n_cols, min(n_cols, max_heatmap))
    H = _block_means(Ks, row_edges, col_edges)
    vmin, vmax = float(K.min()), float(K.max())
    q = np.round((H - vmin) / (vmax - vmin) * 255) if vmax > vmin else np.zeros_like(H)
    if len(row_edges) - 1 < n_rows or len(col_edges) - 1 < n_cols:
        capped.append(f"kernel heatmap: {n_rows} x {n_cols} entries shown as {len(row_edges) - 1} x "
                      f"{len(col_edges) - 1} cells, each the mean of up to {int(np.diff(row_edges).max())} x "
                      f"{int(np.diff(col_edges).max())} entries (max_heatmap={max_heatmap})")
    cell_row = np.searchsorted(row_edges, np.arange(n_rows), side="right") - 1  # sorted position -> cell
    cell_col = np.searchsorted(col_edges, np.arange(n_cols), side="right") - 1

    # ---- which entries to explain
    query_rows = _pick_queries(queries, codes_r, n_rows)
    if cross:  # zero-shot: the most similar prompts (images), whatever the norms
        dist = -K[query_rows]
    elif query_rows:
        dist = kernel_to_distance(K[query_rows], self_similarity(feats[query_rows], kern.kernel),
                                  self_similarity(kern.features_fit_, kern.kernel))
    else:
        dist = np.zeros((0, n_cols))
    entries: list = []  # (i, j, source, detail)
    taken: set = set()

    def add(i: int, j: int, source: str, detail: str) -> bool:
        if (i, j) in taken:
            return False
        taken.add((i, j))
        entries.append((i, j, source, detail))
        return True

    for i, j in (pairs or []):
        i, j = int(i), int(j)
        if not (0 <= i < n_rows and 0 <= j < n_cols):
            raise IndexError(f"Pair ({i}, {j}) is out of range: rows lie in [0, {n_rows}), columns in [0, {n_cols}).")
        add(i, j, "given", "pairs=")
    neighbours: list = []
    k_nn = min(int(n_neighbors), n_cols - (1 if same else 0))
    budget_nn = max(0, max_entries - len(entries))
    n_q_kept = 0
    for qi, row in enumerate(query_rows):
        d = dist[qi].copy()
        if same:
            d[row] = np.inf  # a training sample is not its own neighbour
        nearest = [int(j) for j in np.argsort(d, kind="stable")[:k_nn]]
        if len(entries) + len(nearest) > len(pairs or []) + budget_nn:
            break
        for rank, j in enumerate(nearest):
            add(row, j, "neighbour", f"neighbour {rank + 1} of query {row}")
        neighbours.append({"row": row, "neighbours": nearest})
        n_q_kept += 1
    if n_q_kept < len(query_rows):
        capped.append(f"queries: {n_q_kept} of {len(query_rows)} queries kept, as their {k_nn} neighbour "
                      f"pairs each fill max_entries={max_entries}")
        query_rows = query_rows[:n_q_kept]
    rng = np.random.default_rng(random_state)
    n_nn = len(entries)
    for i, j in _block_sample(codes_r, codes_c, max_entries - len(entries), set(taken), same, rng):
        add(i, j, "block", f"sample of block {names_r[codes_r[i]]} x {names_c[codes_c[j]]}")
    n_block = len(entries) - n_nn
    total = n_rows * n_cols
    if len(entries) < total:
        capped.append(f"explanations: precomputed for {len(entries)} of {total:,} kernel entries "
                      f"({n_nn} given or neighbour pairs of {len(query_rows)} queries, {n_block} sampled over "
                      f"the class blocks; max_entries={max_entries}); other cells say how to include them")

    # ---- explain them
    data: dict = {"title": title or f"skbilrp report: {type(kern).__name__} ({kern.kernel} kernel)",
                  "kernel": kern.kernel, "n_rows": n_rows, "n_cols": n_cols, "same": bool(same),
                  "row_names": names_r, "col_names": names_c,
                  "row_bands": _bands(codes_r[row_order], names_r), "col_bands": _bands(codes_c[col_order], names_c),
                  "row_order": row_order.tolist(), "col_order": col_order.tolist(),
                  "row_class": codes_r.tolist(), "col_class": codes_c.tolist(),
                  "heatmap": {"rows": int(H.shape[0]), "cols": int(H.shape[1]), "vmin": vmin, "vmax": vmax,
                              "row_edges": row_edges.tolist(), "col_edges": col_edges.tolist(),
                              "data": _b64(q.astype(np.uint8))}}
    records: list = []
    kind = "image"
    errors = np.zeros(0)
    cross_geometry = None
    if entries:
        _log(verbose, f"explaining {len(entries)} kernel entries with BiLRP ...")
        chosen = [(i, j) for i, j, _, _ in entries]
        E = kern.explain_pairs(xk, pairs=chosen, words=True) if cross else kern.explain_pairs(xk, pairs=chosen)
        data["method"] = E.method
        sums = np.asarray(E.similarity - E.conservation_error, dtype=np.float64)
        kij = np.array([K[i, j] for i, j, _, _ in entries])
        errors = kij - sums
        text = hasattr(E, "tokens_a")
        kind = "cross" if cross else "text" if text else "image"
        if not text:
            tops = E.top_interactions(n_links)
            ma, mb = E.marginals()
            p, pb = E.n_groups
            if p * pb > n_links:
                capped.append(f"links: the {n_links} strongest of {p * pb:,} group pairs of each entry are "
                              f"embedded (n_links={n_links})")
        n_cut = 0
        for k, (i, j, source, detail) in enumerate(entries):
            rec = {"id": k, "i": i, "j": j, "ci": int(codes_r[i]), "cj": int(codes_c[j]), "k": float(kij[k]),
                   "sum": float(sums[k]), "err": float(errors[k]), "src": source, "detail": detail,
                   "cell": [int(cell_row[row_pos[i]]), int(cell_col[col_pos[j]])]}
            if cross:
                piece, was_cut = cross_record(E.pair(k), max_tokens)
                rec.update(piece)
                n_cut += was_cut
            elif text:
                e = E.pair(k)
                ta, tb = list(e.tokens_a), list(e.tokens_b)
                rel = np.asarray(e.relevance)
                if len(ta) > max_tokens or len(tb) > max_tokens:
                    n_cut += 1
                rel = rel[:max_tokens, :max_tokens]
                rec.update(ta=ta[:max_tokens], tb=tb[:max_tokens], ntok=[len(ta), len(tb)],
                           rel=[_round(r, 4) for r in rel],
                           top=[[int(g), int(h), float(f"{r:.5g}")] for g, h, r in e.top_interactions(10)])
            else:
                rec.update(links=[[int(g), int(h), float(f"{r:.5g}")] for g, h, r in tops[k]],
                           ma=_round(ma[k], 4), mb=_round(mb[k], 4))
            records.append(rec)
        if n_cut:
            capped.append(f"tokens: {n_cut} entries have texts longer than max_tokens={max_tokens}; their "
                          f"matrices are cut to the first {'words' if cross else 'tokens'}")
        if cross:
            first = E.pair(0)
            cross_geometry = _geometry(first.pooling_a if first.tokens_a is None else first.pooling_b)
        elif not text:
            geo_a, geo_b = _geometry(E.pooling_a), _geometry(E.pooling_b)
            data["geometry"] = [geo_a, geo_b]
    if cross:
        kind = "cross"
        data["cross"] = {"image_side": "rows" if modalities[0] == "images" else "cols", "geometry": cross_geometry,
                         "text_bands": text_bands, "rows": modalities[0], "cols": modalities[1]}
    data["kind"] = kind
    data["entries"] = records
    data["queries"] = neighbours

    # ---- the samples shown
    rows_used = sorted({i for i, _, _, _ in entries} | set(query_rows))
    cols_used = sorted({j for _, j, _, _ in entries})
    samples: dict = {"rows": {}, "cols": {}}
    if cross:
        images_side = data["cross"]["image_side"]
        for key, values, idx in (("rows", xk, rows_used), ("cols", kern.X_fit_, cols_used)):
            if key == images_side:
                arr = kern._validate_samples(values, reset=False) if key == "rows" else np.asarray(values)
                _embed_images(samples, {key: (arr, idx)}, capped, notes)
            else:
                samples[key] = {str(i): str(values[i])[:MAX_TEXT_CHARS] for i in idx}
    elif kind == "text":
        texts_r = list(xk) if not same else list(kern.X_fit_)
        texts_c = list(kern.X_fit_)
        samples["rows"] = {str(i): str(texts_r[i])[:MAX_TEXT_CHARS] for i in rows_used}
        samples["cols"] = {str(j): str(texts_c[j])[:MAX_TEXT_CHARS] for j in cols_used}
    else:
        shape = tuple(kern.input_shape_)
        fit = np.asarray(kern.X_fit_, dtype=np.float64).reshape((n_cols,) + shape)
        rows_x = fit if same else kern._validate_samples(xk, reset=False)
        _embed_images(samples, {"rows": (rows_x, rows_used), "cols": (fit, cols_used)}, capped, notes)
    data["samples"] = samples
    data["sample_names"] = {side: _names(given, n, idx, what) for side, given, n, idx, what in
                            (("rows", names if not same else names_fit, n_rows, rows_used, "names"),
                             ("cols", names_fit, n_cols, cols_used, "names_fit"))}

    # ---- audit, conservation
    audit_data = _audit_payload(audit, estimator, X, y, audit_max_pairs, random_state, verbose, notes, capped)
    data["audit"] = audit_data
    max_err = float(np.abs(errors).max()) if errors.size else 0.0
    worst = np.argsort(-np.abs(errors), kind="stable")[:10]
    data["conservation"] = {"n": int(errors.size), "max_abs": max_err,
                            "mean_abs": float(np.abs(errors).mean()) if errors.size else 0.0,
                            "max_rel": float(np.max(np.abs(errors) / np.maximum(np.abs(kij), 1e-12))) if errors.size else 0.0,
                            "worst": [int(k) for k in worst]}
    data["capped"] = capped
    data["notes"] = notes
    data["seconds"] = round(time.perf_counter() - t0, 2)

    html = render(data)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(html)
    summary = ReportSummary(path=path, n_rows=n_rows, n_cols=n_cols, heatmap_shape=(int(H.shape[0]), int(H.shape[1])),
                            n_entries=len(records), queries=list(query_rows), audit=audit_data is not None,
                            max_conservation_error=max_err, capped=capped, notes=notes,
                            seconds=time.perf_counter() - t0, n_bytes=os.path.getsize(path))
    _log(verbose, str(summary))
    return summary
