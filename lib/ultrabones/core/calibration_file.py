"""This project's calibration file, ``calibration.json``: the image-to-probe calibration read, validated and written.

Notebook 01 writes it at the dataset root (:func:`write_calibration`); :func:`ultrabones.core.dataset.read_calibration`
finds it there, and a layout-C ``recording.yaml`` may name it as its ``image_to_probe``
(:mod:`ultrabones.core.recording`). Its keys: ``calibration`` (a 4x4 matrix, image plane -> probe marker, mm),
``spacing_mm`` (``[sx, sy]``, mm per pixel) and ``temporal_offset_ms`` (or null), with any provenance beside them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ultrabones.core import atomic
from ultrabones.core.errors import DatasetError

CALIBRATION = "calibration.json"


def read_calibration_file(f: Path | str) -> tuple[np.ndarray, tuple[float, float], float | None]:
    """Read and validate a ``calibration.json``.

    Parameters
    ----------
    f : the file.

    Returns
    -------
    calib : (4, 4) array, image plane -> probe marker (mm).
    spacing : (sx, sy) mm per pixel.
    temporal_offset_ms : the offset found by calibration (ms), or None.

    Raises
    ------
    DatasetError
        If the file is missing, not JSON, lacks a key, or holds a matrix that is not a finite 4x4 or a
        spacing that is not two positive numbers.
    """
    f = Path(f)

    if not f.is_file():
        raise DatasetError(f"{f}: calibration file not found")
    try:
        data = json.loads(f.read_text())
        calib = np.asarray(data["calibration"], dtype=float)
        spacing = tuple(float(v) for v in data["spacing_mm"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{f}: not a valid calibration file ({exc})") from None
    if calib.shape != (4, 4) or not np.isfinite(calib).all() or len(spacing) != 2 or min(spacing) <= 0:
        raise DatasetError(f"{f}: calibration must be a finite 4x4 matrix and spacing_mm two positive numbers")
    return calib, spacing, data.get("temporal_offset_ms")


def write_calibration(root: Path | str, calib: np.ndarray, spacing, temporal_offset_ms: float | None, **extra) -> Path:
    """Write ``<root>/calibration.json`` atomically (``extra`` keys are kept as provenance)."""
    data = {"calibration": np.asarray(calib).tolist(), "spacing_mm": [float(v) for v in spacing],
            "temporal_offset_ms": temporal_offset_ms, **extra}
    return atomic.write_json(Path(root) / CALIBRATION, data)
