"""The user's own data as samples and labels: a folder of images, a file of texts.

The layouts are the conventional ones: a folder of images, with one subfolder per
class when there are labels (torchvision's ``ImageFolder``, Keras's
``image_dataset_from_directory``); a ``.txt`` file with one text per line, or a
``.csv``/``.tsv`` file with a header, a text column and an optional label column.

Everything that can be checked without decoding pixels or running a model is checked
by :func:`find_images` and :func:`read_texts` (image headers are read, not the pixels),
so the ``skbilrp`` command refuses a bad input before any work. Messages name the file
and the fix; they are one line each.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = ["IMAGE_EXTENSIONS", "TEXT_EXTENSIONS", "Dataset", "check_image_files", "find_images", "load_images",
           "read_texts"]

#: File name endings read as images (case-insensitive); other files in an image folder are skipped, with a note.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".pgm", ".ppm", ".tif", ".tiff", ".webp")
#: File name endings read as texts: one text per line, or a table with a header.
TEXT_EXTENSIONS = (".txt", ".csv", ".tsv")


@dataclass
class Dataset:
    """Samples found in the user's files, before any pixel is decoded.

    Attributes
    ----------
    items : list of str
        Image paths (sorted) or the texts themselves.
    labels : ndarray of str or None
        One label per item: the first subfolder of each image, or the label column.
    kind : {"images", "texts"}
    notes : list of str
        What the reader did that the user should know (skipped files, mixed sizes).
    """

    items: list
    labels: Optional[np.ndarray]
    kind: str
    notes: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def find_images(folder: str, what: str = "--images", labels_file: Optional[str] = None) -> Dataset:
    """List the images under ``folder`` (recursively) and their labels, reading headers only.

    Labels are the names of the first-level subfolders when the images lie in
    subfolders, or those of ``labels_file``; images directly in ``folder`` have no
    label otherwise. Hidden files and folders
    (names starting with a dot) are skipped, so are files whose name does not end in
    one of :data:`IMAGE_EXTENSIONS` (named in a note).

    Parameters
    ----------
    folder : str
    what : str, default="--images"
        How messages name the argument.
    labels_file : str, optional
        A ``.csv`` or ``.tsv`` file with a header row and two columns: each image's path
        relative to ``folder`` (``/`` as separator) and its label. Every image needs
        a row; rows of files that are not there are refused.

    Returns
    -------
    Dataset
        Its ``notes`` say which files were skipped and whether the images differ in
        size or colour mode (they are all resized by :func:`load_images`).

    Raises
    ------
    FileNotFoundError, NotADirectoryError
        If ``folder`` is not a folder.
    ValueError
        If it holds no image, mixes images with and without a class subfolder (and
        there is no ``labels_file``), a file cannot be read as an image (its header is
        checked with Pillow), or ``labels_file`` and the images do not match.
    """
    if not os.path.exists(folder):
        raise FileNotFoundError(f"{what} {folder!r}: no such folder; check the path.")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{what} {folder!r} is a file, not a folder; give the folder that holds the "
                                 "images (one subfolder per class for labels).")
    paths, skipped = [], []
    for root, dirs, files in os.walk(folder, onerror=_raise):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))  # sorted: the same order on every machine
        for name in sorted(files):
            if _hidden(name):
                continue
            path = os.path.join(root, name)
            (paths if name.lower().endswith(IMAGE_EXTENSIONS) else skipped).append(path)
    if not paths:
        found = f" (only {len(skipped)} other files, e.g. {os.path.basename(skipped[0])!r})" if skipped else ""
        raise ValueError(f"{what} {folder!r} holds no image{found}; put image files ({', '.join(IMAGE_EXTENSIONS)}) "
                         "in it, one subfolder per class for labels.")
    parts = [os.path.relpath(p, folder).split(os.sep) for p in paths]
    loose = [p for p, rel in zip(paths, parts) if len(rel) == 1]
    labels = None
    if labels_file is not None:
        labels = _labels_from_file(labels_file, ["/".join(rel) for rel in parts], folder, what)
    elif len(loose) < len(paths):
        if loose:
            raise ValueError(f"{what} {folder!r} has {len(loose)} images directly in it (e.g. "
                             f"{os.path.basename(loose[0])!r}) beside {len(paths) - len(loose)} in subfolders, whose "
                             "names are the labels; move the loose images into a subfolder of their class.")
        labels = np.array([rel[0] for rel in parts])
    notes = []
    if skipped:
        notes.append(f"skipped {len(skipped)} files under {folder!r} that are no images by their name "
                     f"(e.g. {os.path.relpath(skipped[0], folder)!r})")
    notes += _check_headers(paths)
    return Dataset(paths, labels, "images", notes)


def _labels_from_file(path: str, names: list, folder: str, what: str) -> np.ndarray:
    """The label of each image (``names``: paths relative to the folder, ``/``-separated)
    from a table of two columns: image path, label."""
    if not path.lower().endswith((".csv", ".tsv")):
        raise ValueError(f"--labels {path!r} is no .csv or .tsv file; give a table with a header row and two "
                         "columns: the image path relative to the folder, and its label.")
    header = _header(path)
    if header is None:  # missing, a folder, not UTF-8, bad quoting: read_texts names which
        read_texts(path, what="--labels")
        raise ValueError(f"--labels {path!r} cannot be read as a table.")
    if len(header) != 2:
        raise ValueError(f"--labels {path!r} has {len(header)} columns ({', '.join(map(repr, header))}); give two: "
                         "the image path relative to the folder, and its label.")
    table = read_texts(path, header[0], header[1], what="--labels")
    given: dict = {}
    for f, label in zip(table.items, table.labels):
        name = os.path.normpath(f).replace(os.sep, "/")
        if given.get(name, label) != label:
            raise ValueError(f"--labels {path!r} gives {name!r} two labels ({str(given[name])!r} and {str(label)!r}); keep "
                             "one row per image.")
        given[name] = label
    missing = [n for n in names if n not in given]
    if missing:
        raise ValueError(f"{len(missing)} images under {what} {folder!r} have no row in --labels {path!r} (e.g. "
                         f"{missing[0]!r}); add a row for each: its path relative to the folder, and a label.")
    extra = sorted(set(given) - set(names))
    if extra:
        raise ValueError(f"--labels {path!r} names {len(extra)} files that are no images under {what} {folder!r} "
                         f"(e.g. {extra[0]!r}); fix the paths (relative to the folder) or delete those rows.")
    return np.array([given[n] for n in names])


def _header(path: str) -> Optional[list]:
    """The first non-blank row of a table, or None if it cannot be read."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            for row in csv.reader(fh, delimiter="\t" if path.lower().endswith(".tsv") else ","):
                if _filled(row):
                    return [c.strip() for c in row]
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return None


def _raise(err: OSError) -> None:
    raise err


def check_image_files(paths: list) -> list:
    """Image files given one by one exist and open as images (headers only, no pixels decoded).

    Parameters
    ----------
    paths : list of str

    Returns
    -------
    list of str
        A note if they differ in size or colour mode (they are all resized when loaded).

    Raises
    ------
    FileNotFoundError, IsADirectoryError
        A path that is no file.
    ValueError
        A file that Pillow cannot open.
    """
    from .io import _check_file

    for path in paths:
        _check_file(path)
    return _check_headers(paths)


def _check_headers(paths: list) -> list:
    """Open every image's header (no pixels decoded): unreadable files fail here, before any work."""
    try:
        from PIL import Image
    except ImportError as err:
        from .io import IMAGES_INSTALL

        raise ImportError(f"Reading images ({paths[0]!r}, ...) needs Pillow; install it with: {IMAGES_INSTALL}") \
            from err
    sizes, modes = {}, {}
    for path in paths:
        try:
            with Image.open(path) as img:
                sizes.setdefault(img.size, path)
                modes.setdefault(img.mode, path)
        except Exception as err:  # noqa: BLE001 - Pillow raises many types on bad bytes; all mean "no image"
            if isinstance(err, MemoryError):
                raise
            cause = " ".join(str(err).split()) or type(err).__name__
            raise ValueError(f"Cannot read {path!r} as an image ({cause}); remove it or replace it with a "
                             "PNG or JPEG file.") from err
    notes = []
    if len(sizes) > 1 or len(modes) > 1:
        shown = ", ".join(f"{w}x{h}" for w, h in list(sizes)[:3]) + (", ..." if len(sizes) > 3 else "")
        notes.append(f"the images differ in size ({len(sizes)} sizes: {shown}) or colour mode "
                     f"({', '.join(sorted(modes))}): each is converted, its shorter side resized to --size and "
                     "the centre square cropped")
    return notes


def load_images(paths: list, size: int, grayscale: bool = False, progress: bool = False) -> np.ndarray:
    """Decode images as model inputs ``(n, C, size, size)`` in [0, 1].

    Parameters
    ----------
    paths : list of str
    size : int
        Each image's shorter side is resized to it and the centre square cropped
        (:func:`skbilrp.io.load_image`).
    grayscale : bool, default=False
        One channel instead of RGB.
    progress : bool, default=False
        A progress bar on stderr.

    Returns
    -------
    ndarray of float32
    """
    from tqdm.auto import tqdm

    from .io import load_image

    bar = tqdm(paths, desc="reading images", unit="img", file=sys.stderr, disable=not progress)
    return np.stack([load_image(p, size=size, grayscale=grayscale) for p in bar])


def read_texts(path: str, text_column: Optional[str] = None, label_column: Optional[str] = None,
               what: str = "--texts") -> Dataset:
    """Read texts (and labels) from a ``.txt``, ``.csv`` or ``.tsv`` file in UTF-8.

    A ``.txt`` file holds one text per line (blank lines are skipped, with a note).
    A ``.csv`` (comma) or ``.tsv`` (tab) file has a header row naming its columns;
    ``text_column`` names the texts (it may be left out when there is one column),
    ``label_column`` the labels.

    Parameters
    ----------
    path : str
    text_column, label_column : str, optional
        Column names, for ``.csv``/``.tsv`` only.
    what : str, default="--texts"
        How messages name the argument.

    Returns
    -------
    Dataset

    Raises
    ------
    FileNotFoundError, IsADirectoryError
        If there is no file at ``path``.
    ValueError
        For another file type, a file that is no UTF-8 text, an unknown column, a row
        with a missing or empty text or label, or a file without texts.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path!r}: no such file; check the path.")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path!r} is a folder; give a .txt file (one text per line) or a .csv/.tsv "
                                "file with a header.")
    ext = os.path.splitext(path)[1].lower()
    if ext not in TEXT_EXTENSIONS:
        raise ValueError(f"{what} {path!r} is no .txt, .csv or .tsv file; save the texts one per line as .txt, "
                         "or as a table with a header as .csv or .tsv.")
    if ext == ".txt" and (text_column or label_column):
        flag = "--text-column" if text_column else "--label-column"
        raise ValueError(f"{flag} names a column of a .csv/.tsv file, but {what} {path!r} is a .txt file (one text "
                         f"per line, no columns); drop {flag} or give a table.")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            content = fh.read()
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path!r} is not UTF-8 text (byte {err.start} cannot be decoded); save it as "
                         "UTF-8.") from err
    if ext == ".txt":
        lines = content.splitlines()
        texts = [line.strip() for line in lines if line.strip()]
        if not texts:
            raise ValueError(f"{what} {path!r} holds no text; write one text per line.")
        blank = sum(1 for line in lines if not line.strip())
        notes = [f"skipped {blank} blank lines of {path!r}"] if blank else []
        return Dataset(texts, None, "texts", notes)
    return _read_table(path, content, "\t" if ext == ".tsv" else ",", text_column, label_column, what)


def _filled(row: list) -> bool:
    return any(cell.strip() for cell in row)


def _read_table(path: str, content: str, delimiter: str, text_column: Optional[str],
                label_column: Optional[str], what: str) -> Dataset:
    try:  # a StringIO, not splitlines(): quoted cells may hold line breaks
        rows = list(csv.reader(io.StringIO(content, newline=""), delimiter=delimiter, strict=True))
    except csv.Error as err:
        raise ValueError(f"{what} {path!r} is no valid {'TSV' if delimiter == chr(9) else 'CSV'} table ({err}); "
                         "check its quoting.") from err
    if not any(_filled(r) for r in rows):
        raise ValueError(f"{what} {path!r} is empty; give a table with a header row and one text per row.")
    while not _filled(rows[0]):  # blank lines above the header
        rows.pop(0)
    header = [h.strip() for h in rows[0]]
    columns = ", ".join(repr(h) for h in header)
    if text_column is None:
        if len(header) != 1:
            raise ValueError(f"{what} {path!r} has the columns {columns}; name the one with the texts with "
                             "--text-column (and the labels with --label-column).")
        text_column = header[0]
    index = {}
    for flag, name in (("--text-column", text_column), ("--label-column", label_column)):
        if name is None:
            continue
        if name not in header:
            raise ValueError(f"{flag} {name!r} is no column of {what} {path!r}; its columns are {columns}.")
        index[flag] = header.index(name)
    texts, labels, blank = [], [], 0
    for line, row in enumerate(rows[1:], start=2):  # numbered as a spreadsheet shows them
        if not _filled(row):
            blank += 1
            continue
        if len(row) > len(header) and _filled(row[len(header):]):  # cells past the header's: an unquoted separator
            sep = "tab" if delimiter == chr(9) else "comma"
            raise ValueError(f"Row {line} of {what} {path!r} has {len(row)} cells for the {len(header)} columns "
                             f"{columns}: a text holding a {sep} must be quoted (\"...\"); quote it or remove "
                             "the extra cells.")
        for flag, i in index.items():
            if i >= len(row) or not row[i].strip():
                raise ValueError(f"Row {line} of {what} {path!r} has no {header[i]!r} value ({flag}); fill it in "
                                 "or delete the row.")
        texts.append(row[index["--text-column"]].strip())
        if "--label-column" in index:
            labels.append(row[index["--label-column"]].strip())
    if not texts:
        raise ValueError(f"{what} {path!r} has a header but no rows; add one text per row.")
    notes = [f"skipped {blank} blank rows of {path!r}"] if blank else []
    return Dataset(texts, np.array(labels) if labels else None, "texts", notes)
