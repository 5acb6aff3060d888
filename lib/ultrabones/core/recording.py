"""``recording.yaml`` of a layout-C folder: the probe calibration and the transform chain to the CT.

See :mod:`ultrabones.core.sequence` for the file format and the conventions.
``image_to_probe`` in pixel units is PLUS's ``ImageToProbe`` (pixel indices ->
mm, the pixel size inside); :func:`calibration_from_plus` turns it into this
project's rigid ``calib`` and ``(sx, sy)`` and :func:`plus_image_to_probe` back.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ultrabones.core.calibration_file import read_calibration_file
from ultrabones.core.errors import DatasetError

RECORDING = "recording.yaml"


# ----------------------------------------------------------------------------- matrices and conventions


def parse_matrix(text, where: str) -> np.ndarray:
    """A 4x4 matrix from 16 numbers (a string or a list, row by row, or a 4x4 list).

    Raises
    ------
    DatasetError
        Naming ``where`` (file and field) if there are not 16 finite numbers or
        the last row is not ``0 0 0 1``.
    """
    try:
        vals = np.array(str(text).split() if isinstance(text, str) else text, dtype=float).ravel()
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: not a list of numbers ({str(text)[:60]!r})") from None
    if vals.size != 16:
        raise DatasetError(f"{where}: {vals.size} numbers, expected 16 (a 4x4 matrix, row by row)")
    m = vals.reshape(4, 4)
    if not np.isfinite(m).all():
        raise DatasetError(f"{where}: holds a value that is not a finite number")
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-9):
        raise DatasetError(f"{where}: last row is {m[3].tolist()}, expected [0, 0, 0, 1] (an affine transform)")
    return m


def format_matrix(m: np.ndarray) -> str:
    """16 numbers row by row, each with ``repr`` precision (round trips exactly)."""
    return " ".join(repr(float(v)) for v in np.asarray(m, dtype=float).ravel())


def plus_image_to_probe(calib: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """PLUS's ``ImageToProbe`` (pixel indices -> mm) of this project's rigid ``calib`` and pixel size.

    ``calib @ diag(sx, sy, 1, 1) @ T(0.5, 0.5, 0)``: pixel ``(u, v)``'s centre is
    ``(u, v)`` in PLUS's Image frame and ``(u + 0.5, v + 0.5)`` in Eq. 1.
    """
    shift = np.eye(4)
    shift[:2, 3] = 0.5
    return np.asarray(calib, dtype=float) @ np.diag([spacing[0], spacing[1], 1.0, 1.0]) @ shift


def calibration_from_plus(m: np.ndarray, where: str = "ImageToProbe",
                          max_shear_cos: float = 1e-3) -> tuple[np.ndarray, tuple[float, float]]:
    """This project's rigid ``calib`` and ``(sx, sy)`` from PLUS's ``ImageToProbe`` (inverse of :func:`plus_image_to_probe`).

    The pixel size is the length of the matrix's first two columns; the third
    column of ``calib`` is their cross product. A calibration whose x and y
    axes are not perpendicular (|cos| above ``max_shear_cos``, 0.06 degrees)
    cannot be written as a rotation and a pixel size and is refused; below that,
    the nearest rotation is kept.

    Raises
    ------
    DatasetError
        Naming ``where`` for a zero-length axis or a sheared calibration.
    """
    m = np.asarray(m, dtype=float)
    cx, cy = m[:3, 0], m[:3, 1]
    # 12 significant digits: a column norm carries rounding noise (1e-17 mm) that is not a pixel size
    sx, sy = (float(f"{float(np.linalg.norm(c)):.12g}") for c in (cx, cy))
    if min(sx, sy) <= 0:
        raise DatasetError(f"{where}: an image axis has zero length (no pixel size)")
    cos = abs(float(cx @ cy)) / (sx * sy)
    if cos > max_shear_cos:
        raise DatasetError(f"{where}: image x and y axes are {np.degrees(np.arccos(cos)):.3f} degrees apart, "
                           "not 90: a sheared calibration is not a rotation and a pixel size")
    ex, ey = cx / sx, cy / sy
    rot = np.stack([ex, ey, np.cross(ex, ey)], axis=1)
    u, _, vt = np.linalg.svd(rot)
    rot = u @ vt
    shift = np.eye(4)
    shift[:2, 3] = -0.5
    origin = (m @ shift)[:3, 3]
    calib = np.eye(4)
    calib[:3, :3] = rot
    calib[:3, 3] = origin
    return calib, (sx, sy)


# ----------------------------------------------------------------------------- recording.yaml


@dataclass(frozen=True)
class Recording:
    """A layout-C folder's ``recording.yaml``, resolved.

    Attributes
    ----------
    path : the ``recording.yaml``.
    calib : (4, 4) rigid image-plane-to-probe-marker transform (mm), Eq. 1's ``calib``.
    spacing : (sx, sy) mm per pixel, or None: from the sequence files' headers.
    pose : transform names whose product (left to right) maps the probe marker to CT.
    fixed : name -> (4, 4) matrix of the fixed transforms of ``pose``.
    sources : every file read: the ``recording.yaml`` and the files it names.
    """

    path: Path
    calib: np.ndarray
    spacing: tuple[float, float] | None
    pose: tuple[str, ...]
    fixed: dict
    sources: tuple[Path, ...] = ()

    def frame_names(self) -> tuple[str, ...]:
        """The names of ``pose`` read per frame from the sequence files."""
        return tuple(n for n in self.pose if n not in self.fixed)


def _matrix_source(spec, folder: Path, where: str) -> np.ndarray:
    """A 4x4 matrix from ``{matrix: ...}`` or ``{file: ...}`` (16 numbers in a text file)."""
    if not isinstance(spec, dict) or len(set(spec) & {"matrix", "file"}) != 1:
        raise DatasetError(f"{where}: give exactly one of matrix: (16 numbers) or file: (a path)")
    if "matrix" in spec:
        return parse_matrix(spec["matrix"], where)
    f = folder / str(spec["file"])
    if not f.is_file():
        raise DatasetError(f"{where}: file {f} not found")
    return parse_matrix(f.read_text(), f"{f}")


def _plus_config_matrix(f: Path, name: str) -> np.ndarray:
    """``<Transform From="A" To="B" Matrix="...">`` of a PLUS device-set configuration file (``name``: ``AToB``)."""
    try:
        tree = ET.parse(f)
    except ET.ParseError as exc:
        raise DatasetError(f"{f}: not a readable XML file ({exc})") from None
    for el in tree.iter("Transform"):
        if f"{el.get('From')}To{el.get('To')}" == name and el.get("Matrix") is not None:
            return parse_matrix(el.get("Matrix"), f"{f} Transform {name}")
    raise DatasetError(f"{f}: no <Transform From=... To=... Matrix=...> named {name}")


def _calibration(spec, units: str, folder: Path, where: str):
    """(calib, spacing or None) from ``image_to_probe`` and its units."""
    if isinstance(spec, dict) and "file" in spec and str(spec["file"]).lower().endswith(".json"):
        calib, spacing, _ = read_calibration_file(folder / str(spec["file"]))
        return calib, spacing
    if isinstance(spec, dict) and "file" in spec and str(spec["file"]).lower().endswith(".xml"):
        f = folder / str(spec["file"])
        if not f.is_file():
            raise DatasetError(f"{where}: file {f} not found")
        m = _plus_config_matrix(f, "ImageToProbe")
        where = f"{f} Transform ImageToProbe"
    else:
        m = _matrix_source(spec, folder, where)
    if units == "pixel":
        return calibration_from_plus(m, where)
    rot = m[:3, :3]
    if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-6) or np.linalg.det(rot) <= 0:
        raise DatasetError(f"{where}: image_to_probe_units is mm but the matrix is not rigid "
                           "(a PLUS ImageToProbe holds the pixel size: use units pixel)")
    return m, None


def read_recording(folder: Path | str) -> Recording:
    """Read and validate ``<folder>/recording.yaml``.

    Raises
    ------
    DatasetError
        Naming the file and the key for a missing or malformed entry.
    """
    f = Path(folder) / RECORDING
    if not f.is_file():
        raise DatasetError(f"{f}: not found (layout C needs it beside the sequence files)")
    try:
        data = yaml.safe_load(f.read_text())
    except yaml.YAMLError as exc:
        raise DatasetError(f"{f}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{f}: expected a mapping with image_to_probe, pose and transforms")
    known = {"image_to_probe", "image_to_probe_units", "pose", "transforms", "spacing_mm"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise DatasetError(f"{f}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    for key in ("image_to_probe", "pose"):
        if key not in data:
            raise DatasetError(f"{f}: {key} missing")
    units = data.get("image_to_probe_units", "pixel")
    if units not in ("pixel", "mm"):
        raise DatasetError(f"{f}: image_to_probe_units is {units!r}, expected pixel or mm")
    calib, spacing = _calibration(data["image_to_probe"], units, f.parent, f"{f} image_to_probe")
    sources = [f] + [f.parent / str(spec["file"]) for spec in [data["image_to_probe"], *(data.get("transforms") or {}).values()]
                     if isinstance(spec, dict) and "file" in spec]
    pose = data["pose"]
    if isinstance(pose, str) or not pose or not all(isinstance(n, str) and "To" in n for n in pose):
        raise DatasetError(f"{f}: pose must be a list of transform names such as [TrackerToCT, ProbeToTracker]")
    fixed = {name: _matrix_source(spec, f.parent, f"{f} transforms.{name}")
             for name, spec in (data.get("transforms") or {}).items()}
    if not any(n not in fixed for n in pose):
        raise DatasetError(f"{f}: pose names no per-frame transform (every name is in transforms)")
    if data.get("spacing_mm") is not None:
        sp = data["spacing_mm"]
        if spacing is not None:
            raise DatasetError(f"{f}: spacing_mm given, but image_to_probe is in pixel units and holds the pixel size")
        try:
            spacing = (float(sp[0]), float(sp[1]))
            ok = len(sp) == 2 and min(spacing) > 0 and np.isfinite(spacing).all()
        except (TypeError, ValueError, IndexError, KeyError):
            ok = False
        if not ok:
            raise DatasetError(f"{f}: spacing_mm must be two positive numbers (mm per pixel), got {sp!r}")
    return Recording(f, calib, spacing, tuple(pose), fixed, tuple(sources))


