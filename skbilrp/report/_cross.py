"""What the report shows of a cross-modal kernel: image × text entries, patch × word.

A :class:`~skbilrp.CrossModalKernel` fitted on texts (prompts) is shown with the
images ``X`` as rows and the prompts as columns; fitted on images, with the texts
``X`` as rows and the images as columns. Each explained entry is kept as its
``(patches, words)`` matrix (image side first, whichever side of the kernel it is on),
from which the page draws one patch heatmap per word over the image.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

__all__ = ["is_cross_modal", "check_cross_rows", "text_labels", "cross_record", "MAX_LABELLED_TEXTS"]

#: A text side with at most this many samples (and no labels given) is labelled with
#: its texts, one heatmap band each; more would not fit on the axis.
MAX_LABELLED_TEXTS = 64
#: Characters of each text used as an axis label.
MAX_LABEL_CHARS = 40


def is_cross_modal(kern: Any) -> bool:
    from ..cross_modal import CrossModalKernel

    return isinstance(kern, CrossModalKernel)


def check_cross_rows(kern: Any, X: Any) -> tuple[str, str]:
    """``(rows' modality, columns' modality)``; refuses rows of the training samples' modality.

    Raises
    ------
    ValueError
        If ``X`` is None or of the modality the kernel was fitted on: the report shows
        the image × text block ``K(X, X_fit_)``.
    """
    from ..encoders import modality

    cols = kern.fit_modality_
    other = "images" if cols == "texts" else "texts"
    if X is None or modality(X) == cols:
        given = "no X" if X is None else f"X of {cols}"
        raise ValueError(
            f"A report of a CrossModalKernel shows its image x text block K(X, X_fit_): the kernel was fitted on "
            f"{cols}, so X must hold the {other} (got {given}). Pass write_report(path, kernel, X={other}); for "
            f"{cols} x {cols} similarities report a DeepKernel (images) or a TextKernel (texts) instead.")
    return other, cols


def text_labels(texts: Any, n: int) -> Optional[tuple[np.ndarray, list]]:
    """One class per text, in the given order, named by its text (None: too many to label)."""
    if n > MAX_LABELLED_TEXTS:
        return None
    names = [str(t)[:MAX_LABEL_CHARS] for t in texts]
    return np.arange(n, dtype=np.int64), names


def cross_record(e: Any, max_tokens: int, n_top: int = 10) -> tuple[dict, bool]:
    """One image × text entry as ``{"rel", "tok", "spec", "ntok", "top"}`` (image side first)
    and whether its words were cut to ``max_tokens``.

    ``rel[g][w]`` is the relevance of patch ``g`` jointly with word ``w``; ``top`` the
    strongest ``[patch, word, relevance]`` triples.
    """
    from ._build import _round

    image_rows = e.tokens_a is None
    rel = np.asarray(e.relevance if image_rows else np.asarray(e.relevance).T)
    words = list(e.tokens_b if image_rows else e.tokens_a)
    special = e.special_b if image_rows else e.special_a
    special = [False] * len(words) if special is None else [bool(s) for s in special]
    cut = len(words) > max_tokens
    rel_kept = rel[:, :max_tokens]
    order = np.argsort(-np.abs(rel_kept), axis=None, kind="stable")[:n_top]
    top = [[int(g), int(w), float(f"{rel_kept[g, w]:.5g}")] for g, w in zip(*np.unravel_index(order, rel_kept.shape))]
    return {"rel": [_round(r, 4) for r in rel_kept], "tok": words[:max_tokens],
            "spec": special[:max_tokens], "ntok": len(words), "top": top}, cut
