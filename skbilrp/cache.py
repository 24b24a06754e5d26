"""On-disk cache of per-sample results, keyed by everything they depend on.

A cached result is only as right as its key: the key of a model must change whenever
its forward can change. :func:`fingerprint` therefore hashes the *whole pickled state*
of what it is given (a model's plain attributes such as a Python float scale factor
included), with tensors and arrays hashed by value, so the key is the same in every
process. What cannot be pickled cannot be keyed: :class:`Unkeyable` is raised, and the
caller computes without the cache rather than risk a stale hit.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

__all__ = ["SampleStore", "Unkeyable", "fingerprint"]


class Unkeyable(TypeError):
    """An object that cannot be hashed by value (e.g. a lambda in a model or a rule)."""


def _tensor_digest(t: torch.Tensor) -> tuple:
    flat = t.detach().cpu().contiguous().reshape(-1)
    digest = hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()
    return (type(t).__name__, str(t.dtype), tuple(t.shape), digest)


def _array_digest(a: np.ndarray) -> tuple:
    a = np.ascontiguousarray(a)
    if a.dtype.hasobject:  # object arrays (e.g. texts) pickle their items instead
        return ("object-array", a.shape, fingerprint(*a.tolist()))
    return ("ndarray", a.dtype.str, a.shape, hashlib.sha256(a.tobytes()).hexdigest())


def _rebuild(*parts: Any) -> None:  # pragma: no cover - never unpickled
    raise RuntimeError("fingerprint pickles are not meant to be loaded")


class _ValuePickler(pickle.Pickler):
    """Pickles tensors and arrays as digests of their bytes (not of their storage's address)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return _rebuild, _tensor_digest(obj)
        if isinstance(obj, np.ndarray):
            return _rebuild, _array_digest(obj)
        return NotImplemented


def fingerprint(*parts: Any) -> str:
    """Stable hash of ``parts``: the same value gives the same key in any process.

    Parameters
    ----------
    *parts : picklable objects
        Models, rules, pooling specifications, shapes ... Tensors and arrays are hashed
        by value; everything else by its pickled state.

    Returns
    -------
    str
        40 hexadecimal digits.

    Raises
    ------
    Unkeyable
        If a part cannot be pickled (a lambda, a local function, an open file ...).
    """
    buffer = io.BytesIO()
    try:
        _ValuePickler(buffer, protocol=4).dump(parts)
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        raise Unkeyable(str(err)) from err
    return hashlib.sha256(buffer.getvalue()).hexdigest()[:40]


class SampleStore:
    """Per-sample results on disk, keyed by the sample's bytes, so long jobs resume.

    Each sample's arrays live in one ``.npz`` file written atomically (temporary file
    then rename): an interrupted job leaves only complete entries behind. An entry that
    cannot be read (truncated or corrupted by something else) counts as a miss; it is
    recomputed and overwritten, and :meth:`warn_unreadable` reports it once.

    A store that cannot be written (read-only directory or file system, disk full)
    still serves what it holds; results are then computed without being stored, with
    one warning per ``warned`` set (an estimator passes its own, so it warns once).

    Parameters
    ----------
    root : Path
        Folder of this kind of result.
    location : Path, optional
        The cache directory the user gave, named by the warning; default ``root``.
    warned : set, optional
        Locations already warned about as unwritable; shared between the stores of one
        estimator.
    """

    def __init__(self, root: Path, location: Optional[Path] = None, warned: Optional[set] = None) -> None:
        self.root = root
        self.location = root if location is None else location
        self.warned = set() if warned is None else warned
        self.unreadable: list[str] = []
        self.writable = True
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            self._unwritable(err)

    @staticmethod
    def key(sample: Any) -> str:
        """Key of one sample (an array, or any picklable sample such as a text)."""
        if isinstance(sample, np.ndarray) and not sample.dtype.hasobject:
            sample = np.ascontiguousarray(sample, dtype=np.float64)
            digest = hashlib.sha256(repr(sample.shape).encode())
            digest.update(sample.tobytes())
            return digest.hexdigest()[:40]
        return fingerprint(sample)

    def load(self, key: str) -> Optional[tuple[np.ndarray, ...]]:
        """The arrays stored under ``key``, or None (absent or unreadable)."""
        path = self.root / f"{key}.npz"
        if not path.exists():
            return None
        try:
            with np.load(path) as data:
                return tuple(data[f"arr_{i}"] for i in range(len(data.files)))
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError):
            self.unreadable.append(path.name)
            return None

    def save(self, key: str, arrays: tuple[np.ndarray, ...]) -> None:
        """Store ``arrays`` under ``key`` atomically (replacing any unreadable entry).

        Does nothing once the store was found unwritable (see :meth:`_unwritable`).
        """
        if not self.writable:
            return
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, *arrays)
            os.replace(tmp, self.root / f"{key}.npz")
        except OSError as err:
            if tmp is not None and os.path.exists(tmp):
                try:
                    os.remove(tmp)
                except OSError:
                    pass
            self._unwritable(err)

    def _unwritable(self, err: OSError) -> None:
        """Stop writing: warn once per ``warned`` set, naming the directory and the cause."""
        self.writable = False
        if str(self.location) in self.warned:
            return
        self.warned.add(str(self.location))
        cause = f"{err.strerror or type(err).__name__}: {err.filename!r}" if err.filename else str(err)
        warnings.warn(
            f"memory: the cache directory {str(self.location)!r} cannot be written ({cause}); results "
            "are computed without being stored there, and entries it already holds are still read. "
            "Pass a writable directory as memory= to store them, or memory=None to silence this warning.",
            UserWarning, stacklevel=4,
        )

    def warn_unreadable(self) -> None:
        """One warning for all entries found unreadable since the last call."""
        if self.unreadable:
            names = ", ".join(self.unreadable[:3]) + (" ..." if len(self.unreadable) > 3 else "")
            warnings.warn(
                f"{len(self.unreadable)} cache entries in {self.root} could not be read "
                f"({names}); they were recomputed and overwritten.",
                RuntimeWarning, stacklevel=3,
            )
            self.unreadable = []
