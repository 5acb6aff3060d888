"""The calibration stage's input: the raw acquisitions (``raw/``, docs/twin_format.md), read and validated.

The system description (image size, pixel spacing), the phantom's design, the tracker streams (one pose per
marker and sample), a specimen's marker description and record folders, and the raw specimens themselves; and
a 4x4 matrix stored as JSON. Every reader raises :class:`~ultrabones.core.errors.DatasetError` naming the file
and what is wrong with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ultrabones.calibration.phantom import NWirePhantom
from ultrabones.core.errors import DatasetError
from ultrabones.core.geometry import pose_from_params
from ultrabones.core.tracking_table import read_csv

#: Columns of the phantom-marker pose in ``raw/phantom/tracker.csv``.
PHANTOM_COLUMNS = ("px", "py", "pz", "peuler_x", "peuler_y", "peuler_z")
#: Columns of the specimen-marker pose in ``raw/<specimen>/<record>/tracker.csv``.
SPECIMEN_COLUMNS = ("sx", "sy", "sz", "seuler_x", "seuler_y", "seuler_z")


def read_system(raw: Path) -> dict:
    """``raw/system.json``: image size (px), ``spacing_mm`` (sx, sy), fiducials, rates.

    Raises
    ------
    DatasetError
        If missing or lacking ``spacing_mm``.
    """
    f = Path(raw) / "system.json"
    if not f.is_file():
        raise DatasetError(f"{f}: system description not found (run notebook 00 for the twin)")
    try:
        data = json.loads(f.read_text())
        spacing = [float(v) for v in data["spacing_mm"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{f}: not a valid system file ({type(exc).__name__}: {exc})") from None
    if len(spacing) != 2 or min(spacing) <= 0:
        raise DatasetError(f"{f}: spacing_mm must be two positive numbers, got {data['spacing_mm']}")
    data["spacing_mm"] = spacing
    return data


def read_phantom(raw: Path) -> NWirePhantom:
    """``raw/phantom/phantom.json`` as a validated :class:`~ultrabones.calibration.phantom.NWirePhantom`."""
    f = Path(raw) / "phantom" / "phantom.json"
    if not f.is_file():
        raise DatasetError(f"{f}: phantom description not found")
    try:
        data = json.loads(f.read_text())
    except ValueError as exc:
        raise DatasetError(f"{f}: not valid JSON ({exc})") from None
    return NWirePhantom.from_dict(data, where=str(f))


def read_tracker(path: Path, streams: dict[str, tuple[str, ...]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A raw tracker stream: times (ms) and one (N, 4, 4) pose array per named stream.

    Parameters
    ----------
    path : ``tracker.csv`` with ``time_ms`` and the six columns of every stream.
    streams : stream name -> its six columns (``x..euler_z`` order).

    Raises
    ------
    DatasetError
        Naming the file and the column or row at fault (missing column, NaN,
        times not strictly increasing).
    """
    path = Path(path)
    need = ["time_ms"] + [c for cols in streams.values() for c in cols]
    df = read_csv(path, need, "tracker stream")
    vals = df[need].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(vals)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DatasetError(f"{path} row {row + 1}: {need[col]} is {df[need[col]].iloc[row]!r} (not a finite number)")
    t = vals[:, 0]
    if len(t) < 2 or np.any(np.diff(t) <= 0):
        row = int(np.flatnonzero(np.diff(t) <= 0)[0]) + 2 if len(t) >= 2 else 1
        raise DatasetError(f"{path} row {row}: time_ms must be strictly increasing with at least two rows")
    out = {name: pose_from_params(df[list(cols)].to_numpy(dtype=float)) for name, cols in streams.items()}
    return t, out


def read_marker(raw_specimen: Path) -> tuple[np.ndarray, float]:
    """``raw/<specimen>/marker.json``: fiducials (F, 3) in the marker frame (mm) and their radius (mm)."""
    f = Path(raw_specimen) / "marker.json"
    if not f.is_file():
        raise DatasetError(f"{f}: specimen marker description not found")
    try:
        data = json.loads(f.read_text())
        fid = np.asarray(data.get("fiducials_mm", data.get("fiducials")), dtype=float)
        radius = float(data.get("fiducial_radius_mm", data.get("radius_mm")))
    except (ValueError, TypeError) as exc:
        raise DatasetError(f"{f}: not a valid marker file ({type(exc).__name__}: {exc})") from None
    if fid.ndim != 2 or fid.shape[1] != 3 or len(fid) < 3 or not radius > 0:
        raise DatasetError(f"{f}: need fiducials_mm as (F >= 3, 3) and a positive fiducial_radius_mm")
    return fid, radius


def raw_records(raw_specimen: Path) -> list[Path]:
    """Record folders of a raw specimen (those holding ``tracker.csv``), sorted."""
    return sorted(d for d in Path(raw_specimen).iterdir() if d.is_dir() and (d / "tracker.csv").is_file())


def raw_specimens(raw: Path, specimens: list[str] | None = None) -> list[str]:
    """Specimens of the raw acquisitions (folders holding ``ct.npz``), or the named ones (checked)."""
    raw = Path(raw)
    found = sorted(d.name for d in raw.iterdir() if d.is_dir() and (d / "ct.npz").is_file()) if raw.is_dir() else []
    if specimens is not None:
        missing = [s for s in specimens if s not in found]
        if missing:
            raise DatasetError(f"{raw}: no raw recordings (ct.npz) for specimen(s) {', '.join(missing)}")
        return list(specimens)
    if not found:
        raise DatasetError(f"{raw}: no raw specimen folders (with ct.npz); run notebook 00 first")
    return found


def read_matrix_json(path: Path, key: str) -> np.ndarray:
    """A 4x4 matrix stored as JSON: the nested list itself, or under ``key`` (or ``matrix``) of an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            data = data.get(key, data.get("matrix"))
        m = np.asarray(data, dtype=float)
    except (OSError, ValueError, TypeError) as exc:
        raise DatasetError(f"{path}: not readable as a 4x4 matrix ({exc})") from None
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise DatasetError(f"{path}: expected a finite 4x4 matrix, got shape {m.shape}")
    return m
