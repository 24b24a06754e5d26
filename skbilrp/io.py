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
        are converted to RGB (alpha is dropped). An EXIF orientation (phone and camera
        JPEGs) is applied, so the array is upright as image viewers show it.

    Returns
    -------
    ndarray of float32
        Pixel values divided by the largest value of their bit depth: 255 for 8-bit
        images, 65535 for 16-bit grey (Pillow modes ``"I;16*"``, and ``"I"`` holding
        values up to 65535). Float images (mode ``"F"``) must already lie in [0, 1].
        Pillow reads 16-bit colour images (e.g. 48-bit RGB PNG) at 8 bits per channel,
        so these come out exact to 1/255.

    Raises
    ------
    FileNotFoundError, IsADirectoryError
        If there is no file at ``path``.
    ValueError
        If the file is not an image, or its values do not fit the range above.
    ImportError
        If Pillow is not installed (the ``skbilrp[images]`` extra).
    """
    path = _check_file(path)
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError as err:
        raise ImportError(
            f"Reading {os.path.basename(path)!r} needs Pillow; install it with: {IMAGES_INSTALL}"
        ) from err
    try:
        with Image.open(path) as opened:
            # as viewers show it: a camera's EXIF orientation turns the stored pixels upright
            img = ImageOps.exif_transpose(opened)
            img.load()
            if img.mode not in _WIDE_MODES:
                # 8 bits per channel (or palette/bilevel/CMYK, which Pillow maps to 8-bit RGB)
                return np.asarray(img.convert("RGB"), dtype=np.float32) / np.float32(255.0)
            values = np.asarray(img)
            mode = img.mode
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"Cannot read {path!r} as an image ({err}); it is damaged or no image file: re-save it "
                         "as PNG or JPEG, or remove it.") from err
    # convert("RGB") would clip these modes at 255 (a 16-bit image turns white): scale instead
    grey = _unit_range(values, mode, path)
    return np.repeat(grey[..., None], 3, axis=-1)


#: Pillow's one-channel modes wider than 8 bits; 16-bit colour is decoded to 8 bits by Pillow.
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _unit_range(values: np.ndarray, mode: str, path: str) -> np.ndarray:
    """Scale one channel of a wide Pillow mode to [0, 1] by the range of its bit depth."""
    if mode == "F":
        scaled = values.astype(np.float32)
        if not np.isfinite(scaled).all() or scaled.size and (scaled.min() < 0.0 or scaled.max() > 1.0):
            raise ValueError(
                f"{path!r} holds float pixels in [{np.nanmin(scaled):g}, {np.nanmax(scaled):g}], not in "
                "[0, 1]; rescale it to [0, 1] or save it with 8 or 16 bits per channel."
            )
        return scaled
    # mode "I" is 32-bit signed, but Pillow uses it for 16-bit files too (older Pillow opens
    # 16-bit PNGs as "I"); a wider range has no agreed white, so refuse it instead of guessing
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(
            f"{path!r} holds integer pixels in [{values.min()}, {values.max()}], beyond 16 bits "
            "(0 .. 65535); save it with 8 or 16 bits per channel."
        )
    return (values.astype(np.float64) / 65535.0).astype(np.float32)


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
