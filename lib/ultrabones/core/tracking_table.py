"""Tracking tables: a record's ``tracking.csv`` (one probe pose per image timestamp) read, validated and written.

Columns (see :mod:`ultrabones.core.dataset` for the file's place in the layouts): ``timestamp`` (integer ms,
strictly increasing), the recorded pose ``x, y, z`` (mm) and ``euler_x, euler_y, euler_z`` (degrees, extrinsic
xyz), and, written by the labelling stage, the same six with suffix ``_optimized`` (:data:`OPTIMIZED_COLUMNS`) and
``_registered`` (:data:`REGISTERED_COLUMNS`). :func:`poses` turns a table's columns into 4x4 poses.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from ultrabones.core import atomic
from ultrabones.core.errors import DatasetError
from ultrabones.core.geometry import POSE_COLUMNS, pose_from_params

#: The optimised poses of the labelling stage (``*_optimized``).
OPTIMIZED_COLUMNS = tuple(f"{c}_optimized" for c in POSE_COLUMNS)
#: The global-registration baseline's poses (this project's addition to the format).
REGISTERED_COLUMNS = tuple(f"{c}_registered" for c in POSE_COLUMNS)


def read_csv(path: Path | str, required: tuple[str, ...] | list[str], what: str = "CSV file") -> pd.DataFrame:
    """Read a CSV table that must hold the ``required`` columns.

    Raises
    ------
    DatasetError
        If the file is missing (``what`` names it), unreadable, or lacks a column.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: {what} not found")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def _check_field_counts(path: Path, n_columns: int) -> None:
    """Refuse a CSV row with fewer fields than the header (pandas would fill them with NaN): a file cut
    mid-row (an interrupted copy or export) must not pass as a frame without a pose.

    Raises
    ------
    DatasetError
        Naming the file, the row (1-based, header excluded, as the other messages) and its field count.
    """
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        for i, fields in enumerate(reader):
            if fields and len(fields) < n_columns:
                last = "the last row, " if next(reader, None) is None else ""
                raise DatasetError(
                    f"{path} row {i + 1} ({last}line {i + 2}): {len(fields)} of {n_columns} fields; the file looks "
                    f"truncated or damaged. Restore it from the recording, or delete that row")


def read_tracking(path: Path | str, allow_missing_pose: bool = False) -> pd.DataFrame:
    """Read and validate a ``tracking.csv``.

    Checks: required columns present; every row as many fields as the header
    (a file cut mid-row is refused, not read as NaN); ``timestamp`` integer and strictly
    increasing; no NaN or infinite pose value (in the original and, when
    present, the optimised columns).

    Parameters
    ----------
    allow_missing_pose : accept NaN (not infinite) values in the original pose
        columns too, for per-frame stages that report such a frame and go on.

    Returns
    -------
    DataFrame with ``timestamp`` as int64 and the pose columns as float.
    """
    path = Path(path)
    df = read_csv(path, ("timestamp",) + POSE_COLUMNS, "tracking file")
    _check_field_counts(path, len(df.columns))
    ts = pd.to_numeric(df["timestamp"], errors="coerce")
    bad = ts.isna() | (ts != np.round(ts))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DatasetError(f"{path} row {row + 1}: timestamp {df['timestamp'].iloc[row]} is not an integer")
    ts = ts.astype(np.int64)
    steps = np.diff(ts.to_numpy())
    if np.any(steps <= 0):
        row = int(np.flatnonzero(steps <= 0)[0]) + 1
        raise DatasetError(
            f"{path} row {row + 1}: timestamp {ts.iloc[row]} does not increase (previous {ts.iloc[row - 1]})"
        )
    df["timestamp"] = ts
    extra = OPTIMIZED_COLUMNS + REGISTERED_COLUMNS
    cols = list(POSE_COLUMNS) + [c for c in extra if c in df.columns]
    for c in cols:
        vals = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
        nonfinite = ~np.isfinite(vals)
        if c in extra or allow_missing_pose:
            # Discarded frames carry no optimised pose: NaN allowed there, inf not.
            nonfinite = np.isinf(vals) | (np.isnan(vals) & df[c].notna().to_numpy())
        if nonfinite.any():
            row = int(np.flatnonzero(nonfinite)[0])
            raise DatasetError(f"{path} row {row + 1}: {c} is {df[c].iloc[row]} (not a finite number)")
        df[c] = vals
    return df


def poses(df: pd.DataFrame, method: str = "initial") -> np.ndarray:
    """(N, 4, 4) probe-marker-in-CT poses from a tracking table.

    Parameters
    ----------
    method : ``"initial"`` (the recorded ``x..euler_z``), ``"optimized"``
        (``*_optimized``) or ``"registered"`` (``*_registered``). Rows without
        a pose (a discarded frame) give NaN matrices.
    """
    cols = list({"initial": POSE_COLUMNS, "optimized": OPTIMIZED_COLUMNS, "registered": REGISTERED_COLUMNS}[method])
    if not set(cols) <= set(df.columns):
        raise DatasetError(f"tracking table has no {cols[0]}.. columns (run notebook 02 first)")
    vals = df[cols].to_numpy(dtype=float)
    out = np.full((len(df), 4, 4), np.nan)
    ok = np.isfinite(vals).all(axis=1)
    if ok.any():
        out[ok] = pose_from_params(vals[ok])
    return out


def write_tracking(path: Path | str, df: pd.DataFrame) -> Path:
    """Write a tracking table atomically (columns as given, ``timestamp`` first)."""
    cols = ["timestamp"] + [c for c in df.columns if c != "timestamp"]
    with atomic.atomic_path(path) as tmp:
        df[cols].to_csv(tmp, index=False, float_format="%.10g")
    return Path(path)
