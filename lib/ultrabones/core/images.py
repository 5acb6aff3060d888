"""Ultrasound images and labels as files: 8-bit grey PNGs read and validated, written atomically.

A frame is ``UltrasoundImages/<timestamp>.png`` (layouts A and B, :mod:`ultrabones.core.dataset`); a label is a
0/255 PNG of the same size, read as a bool mask. Every reader raises
:class:`~ultrabones.core.errors.DatasetError` naming the file (and pixel); every writer is atomic.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ultrabones.core import atomic
from ultrabones.core.errors import DatasetError


def image_timestamps(folder: Path) -> np.ndarray:
    """Integer timestamps (ms) of ``<timestamp>.png`` files in ``folder``, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: image folder not found")
    ts = [int(f.stem) for f in folder.iterdir() if f.suffix == ".png" and f.stem.isdigit()]
    return np.array(sorted(ts), dtype=np.int64)


def read_image(path: Path | str) -> np.ndarray:
    """Read an 8-bit single-channel ultrasound PNG as a (H, W) uint8 array.

    Raises
    ------
    DatasetError
        If the file is missing, not a readable image, or not 8-bit grayscale.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from None
    if mode != "L" or arr.dtype != np.uint8 or arr.ndim != 2:
        raise DatasetError(f"{path}: expected an 8-bit single-channel image, got mode {mode} shape {arr.shape}")
    return arr


def read_label(path: Path | str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a 0/255 label PNG as a (H, W) bool array.

    Parameters
    ----------
    shape : the image's (H, W); the label must match it.

    Raises
    ------
    DatasetError
        If unreadable, not single channel, holding values other than 0 and 255,
        or of another size than the image.
    """
    path = Path(path)
    arr = read_image(path)
    bad = (arr != 0) & (arr != 255)
    if bad.any():
        v, u = np.argwhere(bad)[0]
        raise DatasetError(
            f"{path}: label is not binary: pixel (row {v}, col {u}) is {arr[v, u]} (allowed: 0 and 255)"
        )
    if shape is not None and arr.shape != tuple(shape):
        raise DatasetError(f"{path}: label size {arr.shape[::-1]} (W x H) differs from the image's {tuple(shape)[::-1]}")
    return arr == 255


def encode_png(arr: np.ndarray) -> bytes:
    """PNG bytes of a (H, W) uint8 or bool array (bool written as 0/255)."""
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ValueError(f"encode_png: expected a (H, W) uint8 or bool array, got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_image(path: Path | str, arr: np.ndarray) -> Path:
    """Write a (H, W) uint8 image (or bool label as 0/255) as PNG, atomically."""
    return atomic.write_bytes(path, encode_png(arr))


def write_label(path: Path | str, mask: np.ndarray) -> Path:
    """Write a (H, W) bool mask as a 0/255 PNG, atomically."""
    return write_image(path, np.asarray(mask, dtype=bool))
