"""The twin's file writers: the same data give the same bytes, and no reader sees a half-written file.

Compressed arrays with fixed zip timestamps (:func:`save_npz`), pose streams as tables of the released pose
columns (:func:`pose_frame`) and CSV files with a fixed float format (:func:`write_csv`), every one written
atomically.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from ultrabones.core import atomic, geometry


def save_npz(path: Path, **arrays) -> Path:
    """``np.savez_compressed`` with fixed zip timestamps (same arrays, same bytes), atomically."""
    with atomic.atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, buf.getvalue(), compresslevel=1)
    return Path(path)


def pose_frame(times: np.ndarray, cols: dict[str, np.ndarray], time_col: str = "time_ms") -> pd.DataFrame:
    """Pose streams as one table: a time column, then six pose columns per stream.

    Parameters
    ----------
    times : (N,) sample times (ms).
    cols : column prefix -> (N, 4, 4) poses (mm); the prefix ``""`` gives the released pose columns
        (``x, y, z, euler_x, euler_y, euler_z``), another prefix ``p`` gives ``px, py, pz, peuler_x, ...``.
    time_col : name of the time column.

    Returns
    -------
    DataFrame: the times, then per stream the translation (mm) and the Euler angles (degrees).
    """
    df = pd.DataFrame({time_col: times})
    for prefix, poses in cols.items():
        p = geometry.params_from_pose(poses)
        names = geometry.POSE_COLUMNS if prefix == "" else (
            f"{prefix}x", f"{prefix}y", f"{prefix}z", f"{prefix}euler_x", f"{prefix}euler_y", f"{prefix}euler_z")
        for k, c in enumerate(names):
            df[c] = p[:, k]
    return df


def write_csv(path: Path, df: pd.DataFrame) -> None:
    """``df`` as CSV at ``path`` (no index, floats to six decimals: micrometres for mm), atomically.

    Parameters
    ----------
    path : the file to write; its folder is made if missing.
    df : the table.
    """
    with atomic.atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6f")
