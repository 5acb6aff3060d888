"""A record's poses: the probe marker in CT at every image, and its images, as the released dataset holds them.

The tracker streams are interpolated at each image's time plus the temporal offset and composed through the
CT-to-marker registration (:func:`record_poses`, layout A ``tracking.csv`` rows); the record's images are
linked into the dataset beside them (:func:`link_images`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from ultrabones.calibration.acquisitions import SPECIMEN_COLUMNS, read_tracker
from ultrabones.core.errors import DatasetError
from ultrabones.core.geometry import POSE_COLUMNS, interpolate_poses, invert_transform, params_from_pose


def record_poses(tracker_csv: Path, image_ts: np.ndarray, offset_ms: float, ct_from_marker: np.ndarray) -> pd.DataFrame:
    """Probe-marker poses in CT at each image, for one record (layout A ``tracking.csv`` rows).

    ``pose(t) = ct_from_marker @ inv(marker_in_tracker(t + dt)) @ probe_in_tracker(t + dt)``,
    the tracker interpolated (linear translation, slerp rotation) at ``t + dt``.
    Images whose ``t + dt`` falls outside the tracked range get no row.

    Returns
    -------
    DataFrame: ``timestamp`` (int ms, image clock) and ``x..euler_z`` (mm, degrees).
    """
    times, streams = read_tracker(tracker_csv, {"probe": POSE_COLUMNS, "marker": SPECIMEN_COLUMNS})
    ts = np.asarray(image_ts, dtype=np.int64)
    q = ts + offset_ms
    ok = (q >= times[0]) & (q <= times[-1])
    if not ok.any():
        raise DatasetError(f"{tracker_csv}: no image time + offset lies in the tracked range")
    probe = interpolate_poses(times, streams["probe"], q[ok])
    marker = interpolate_poses(times, streams["marker"], q[ok])
    pose = ct_from_marker @ invert_transform(marker) @ probe
    df = pd.DataFrame(params_from_pose(pose), columns=list(POSE_COLUMNS))
    df.insert(0, "timestamp", ts[ok])
    return df


def link_images(src_dir: Path, dst_dir: Path, timestamps: np.ndarray) -> int:
    """Hard-link (or copy, across file systems) ``<t>.png`` images into ``dst_dir``; returns the count."""
    dst_dir = Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    for t in np.asarray(timestamps, dtype=np.int64):
        src, dst = Path(src_dir) / f"{t}.png", dst_dir / f"{t}.png"
        if dst.exists():
            if os.path.samefile(src, dst):
                continue
            dst.unlink()
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    return len(timestamps)
