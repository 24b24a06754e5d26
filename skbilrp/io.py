"""Loading image files as model inputs: float arrays ``(C, H, W)`` in [0, 1].

Files are read with Pillow (the ``skbilrp[images]`` extra; matplotlib's own reader
needs Pillow too, so it is no fallback). Resizing is torch's antialiased bilinear
interpolation, the same filter as Pillow's ``BILINEAR`` resize.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import numpy as np
import torch

__all__ = ["IMAGES_INSTALL", "read_image", "resize_center_crop", "load_image"]

#: How to install the image-reading extra.
IMAGES_INSTALL = 'pip install "skbilrp[images]"'

PathLike = Union[str, "os.PathLike[str]"]


def _check_file(path: PathLike) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such image file: {path!r}; check the path.")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a folder, not an image file; give the path of an image.")
    return path


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as an RGB array ``(H, W, 3)`` of floats in [0, 1].

    Parameters
    ----------
    path : str or path-like
        Any format Pillow reads (PNG, JPEG, TIFF, ...); grey, palette and RGBA images
        are converted to RGB.

    Returns
    -------
    ndarray of float32

    Raises
    ------
    FileNotFoundError, IsADirectoryError
        If there is no file at ``path``.
    ValueError
        If the file is not an image.
    ImportError
        If Pillow is not installed (the ``skbilrp[images]`` extra).
    """
    path = _check_file(path)
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as err:
        raise ImportError(
            f"Reading {os.path.basename(path)!r} needs Pillow; install it with: {IMAGES_INSTALL}"
        ) from err
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"Cannot read {path!r} as an image ({err}); give a PNG or JPEG file.") from err


def resize_center_crop(image: Any, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` and crop the centre square.

    Parameters
    ----------
    image : array-like or torch.Tensor of shape (C, H, W)
    size : int
        Side of the output.

    Returns
    -------
    torch.Tensor of shape (C, size, size)
        Bilinear with antialiasing, clipped to [0, 1].
    """
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be a positive int, got {size}.")
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) != (h, w):
        x = torch.nn.functional.interpolate(x[None], size=(new_h, new_w), mode="bilinear",
                                            align_corners=False, antialias=True)[0]
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return x[:, top:top + size, left:left + size].clamp(0.0, 1.0)


def load_image(path: PathLike, size: Optional[int] = 224, grayscale: bool = False) -> np.ndarray:
    """Load an image file as a model input ``(C, size, size)`` with values in [0, 1].

    Parameters
    ----------
    path : str or path-like
    size : int or None, default=224
        Side of the centre crop after resizing the shorter side to it; None keeps the
        original size.
    grayscale : bool, default=False
        Return one channel (ITU-R 601 luma) instead of RGB.

    Returns
    -------
    ndarray of float32, shape (3 or 1, size, size)

    Raises
    ------
    FileNotFoundError, ValueError, ImportError
        See :func:`read_image`.
    """
    rgb = np.moveaxis(read_image(path), -1, 0)
    if grayscale:
        rgb = np.tensordot(np.array([0.299, 0.587, 0.114], dtype=np.float32), rgb, axes=1)[None]
    if size is None:
        return np.ascontiguousarray(rgb, dtype=np.float32)
    return resize_center_crop(rgb, size).numpy()
