"""Checks of what enters skbilrp from outside: models, lists of samples, output paths.

Each check runs before any work and names what is wrong, why, and what to do, so a
hostile or mistaken input never ends in a third-party error (torch's meta-tensor copy,
numpy's "inhomogeneous shape", a path found unwritable after minutes of computation).
"""

from __future__ import annotations

import os
from typing import Any, Literal, Sequence

import numpy as np

__all__ = ["check_model_weights", "check_same_shape", "check_output_path"]


def check_model_weights(model: Any) -> None:
    """Refuse a model whose parameters or buffers are meta tensors (shapes without values).

    A model built under ``torch.device("meta")`` (or by "empty weights" helpers) has no
    numbers to compute with; torch's own error advises ``to_empty()``, which gives
    uninitialised memory, i.e. explanations of garbage.

    Parameters
    ----------
    model : torch.nn.Module
        The model as given by the user; anything else is left to the caller's checks.

    Raises
    ------
    ValueError
        Naming the first meta tensors and how to load weights.
    """
    named = getattr(model, "named_parameters", None)
    if named is None:
        return
    meta = [name for name, t in list(model.named_parameters()) + list(model.named_buffers())
            if getattr(t, "is_meta", False)]
    if meta:
        shown = ", ".join(repr(n) for n in meta[:3]) + (", ..." if len(meta) > 3 else "")
        raise ValueError(
            f"The model has no weights: {len(meta)} of its tensors ({shown}) are meta tensors, "
            "shapes without values (made under torch.device('meta') or an empty-weights loader). "
            "Load them first, e.g. model.load_state_dict(state_dict, assign=True), then pass the model."
        )


#: how to bring images to one size, named by :func:`check_same_shape`
_RESIZE_HINT = ("resize them to one size first, e.g. [skbilrp.io.resize_center_crop(x, 224).numpy() "
                "for x in X] for (C, H, W) images, or load files with skbilrp.io.load_image(path, "
                "size=224); skimage.transform.resize does it for other layouts")


def check_same_shape(samples: Sequence[Any], what: str = "X") -> None:
    """Refuse a list of samples whose shapes differ, naming the first two shapes found.

    Parameters
    ----------
    samples : sequence
        Samples (arrays, tensors or nested lists), one per entry.
    what : str, default="X"
        How the message names the sequence.

    Raises
    ------
    ValueError
        If two samples differ in shape (or one is itself ragged), with their indices and
        how to resize them.
    """
    first = None
    for i, sample in enumerate(samples):
        shape = getattr(sample, "shape", None)
        if shape is None:
            try:
                shape = np.shape(sample)
            except ValueError:  # a ragged nested list
                raise ValueError(
                    f"{what}[{i}] is ragged (its rows differ in length); every sample must be one "
                    f"array of one shape: {_RESIZE_HINT}."
                ) from None
        shape = tuple(int(s) for s in shape)
        if first is None:
            first = shape
        elif shape != first:
            raise ValueError(
                f"The samples of {what} must share one shape, but {what}[0] has shape {first} and "
                f"{what}[{i}] has shape {shape}; {_RESIZE_HINT}."
            )


def check_output_path(path: Any, kind: Literal["file", "folder"] = "file", name: str = "--output") -> str:
    """Check, before any work, that an output file (or folder) can be written.

    Missing folders on the way are allowed (they are created when writing); the nearest
    existing one must be a folder this process can write in, and the output itself
    must not exist as the other kind (a folder where a file goes, or a file where a
    folder goes).

    Parameters
    ----------
    path : str or path-like
    kind : {"file", "folder"}, default="file"
        What will be written at ``path``.
    name : str, default="--output"
        How messages name the argument.

    Returns
    -------
    str
        ``path`` as a string.

    Raises
    ------
    ValueError
        If ``path`` is empty, or exists as the other kind.
    PermissionError
        If the nearest existing folder is not writable (permissions, a read-only file
        system), or a file stands where a folder is needed.
    """
    path = os.fspath(path)
    if not path:
        example = "report.html" if kind == "file" else "figures"
        raise ValueError(f"{name} is empty; give a path such as {example!r}.")
    full = os.path.abspath(path)
    if kind == "file" and os.path.isdir(full):
        raise ValueError(f"{name} {path!r} is a folder; give a file path inside it, e.g. "
                         f"{os.path.join(path, 'out' + (os.path.splitext(path)[1] or '.html'))!r}.")
    if kind == "folder" and os.path.exists(full) and not os.path.isdir(full):
        raise ValueError(f"{name} {path!r} is a file, not a folder; give a folder path (created if missing).")
    existing = full if kind == "folder" else os.path.dirname(full)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise PermissionError(f"{name} {path!r} cannot be written: {existing!r} is a file, not a folder; "
                              "choose another path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{name} {path!r} cannot be written: no write permission in {existing!r} "
                              "(or it is on a read-only file system); choose a writable folder.")
    return path
