"""A record's labelled frames into CT points (Eq. 1): label pixels to points, which bone each record shows,
the frames used per pose method, and a record streamed into one voxel accumulator per pose method.

The definitions (cells, voxel accumulation, distances) are :mod:`ultrabones.reconstruction.surface`'s.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ultrabones.core.dataset import Record, Specimen, poses, read_label, read_tracking
from ultrabones.core.errors import DatasetError
from ultrabones.core.geometry import pixels_to_ct
from ultrabones.reconstruction.surface import ALL, DATASET_POSES, VoxelAccumulator


def label_points(mask: np.ndarray, pose: np.ndarray, calib: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """CT points (mm) of a label's pixels (Eq. 1).

    Parameters
    ----------
    mask : (H, W) bool array, the label.
    pose : (4, 4) array, probe marker in CT space.
    calib : (4, 4) array, image plane in probe-marker space (mm).
    spacing : (sx, sy) mm per pixel.

    Returns
    -------
    (N, 3) array, one point per label pixel.
    """
    v, u = np.nonzero(mask)
    if not len(u):
        return np.zeros((0, 3))
    return pixels_to_ct(np.stack([u, v], axis=1).astype(float), pose, calib, spacing)


def read_record_bones(raw_specimen_dir: Path | str | None, specimen: Specimen) -> dict[str, str]:
    """Record name -> bone for a specimen's records.

    In order: the twin's ``raw/<specimen>/records.json`` (``{"record01":
    "tibia"}``, ``{"records": {...}}`` or a list of ``{"name"|"record": ...,
    "bone": ...}``); the bone folder of layout B; else :data:`ALL` for every record.

    Raises
    ------
    DatasetError
        If ``records.json`` exists but cannot be read as one of those forms.
    """
    out = {r.name: (r.bone or ALL) for r in specimen.records}
    if raw_specimen_dir is None:
        return out
    f = Path(raw_specimen_dir) / "records.json"
    if not f.is_file():
        return out
    try:
        data = json.loads(f.read_text())
    except ValueError as exc:
        raise DatasetError(f"{f}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and "records" in data:
        data = data["records"]
    mapping: dict[str, str] = {}
    if isinstance(data, dict):
        for name, val in data.items():
            bone = val.get("bone") if isinstance(val, dict) else val
            if not isinstance(bone, str):
                raise DatasetError(f"{f}: record {name!r} has no bone name")
            mapping[name] = bone
    elif isinstance(data, list):
        for i, item in enumerate(data):
            name = item.get("name", item.get("record")) if isinstance(item, dict) else None
            bone = item.get("bone") if isinstance(item, dict) else None
            if not isinstance(name, str) or not isinstance(bone, str):
                raise DatasetError(f"{f} item {i}: expected {{'name': ..., 'bone': ...}}, got {item!r}")
            mapping[name] = bone
    else:
        raise DatasetError(f"{f}: expected a mapping record -> bone or a list of records")
    for name in out:
        if name in mapping:
            out[name] = mapping[name]
    return out


@dataclass
class RecordFrames:
    """The frames of one record used for one label source.

    Attributes
    ----------
    record : the record.
    timestamps : (K,) int64, image timestamps (ms).
    poses : method -> (K, 4, 4) probe-marker-in-CT poses (all finite).
    """

    record: Record
    timestamps: np.ndarray
    poses: dict = field(default_factory=dict)


def record_frames(record: Record, kind: str, methods: Sequence[str], frame_step: int = 1) -> RecordFrames:
    """Frames with a label of ``kind`` and a finite pose for every method (every ``frame_step``-th).

    ``methods`` are grid pose methods (:data:`POSE_METHODS`). Frames discarded by the pose optimisation (NaN ``*_optimized``) drop out
    for every method, so that the methods are compared on the same frames.
    A method whose columns the tracking table lacks leaves no frame.
    """
    unknown = [m for m in methods if m not in DATASET_POSES]
    if unknown:
        raise ValueError(f"record_frames: unknown pose method(s) {unknown}; one of {list(DATASET_POSES)}")
    labelled = record.labelled_timestamps(kind)
    empty = RecordFrames(record, np.zeros(0, dtype=np.int64), {m: np.zeros((0, 4, 4)) for m in methods})
    if not len(labelled):
        return empty
    df = read_tracking(record.poses_csv, allow_missing_pose=True)  # a bad_pose frame of 02: no pose, no label
    rows = pd.Index(df["timestamp"]).get_indexer(labelled)
    missing = labelled[rows < 0]
    if len(missing):
        warnings.warn(f"{record.poses_csv}: no row for {len(missing)} labelled frame(s), e.g. {missing[0]}; skipped",
                      stacklevel=2)
    ts, rows = labelled[rows >= 0], rows[rows >= 0]
    all_poses = {}
    ok = np.ones(len(rows), dtype=bool)
    for m in methods:
        try:
            p = poses(df, DATASET_POSES[m])[rows]
        except DatasetError:
            return empty
        all_poses[m] = p
        ok &= np.isfinite(p).all(axis=(1, 2))
    keep = np.flatnonzero(ok)[:: max(1, int(frame_step))]
    return RecordFrames(record, ts[keep], {m: p[keep] for m, p in all_poses.items()})


def reconstruct_record(
    frames: RecordFrames,
    kind: str,
    calib: np.ndarray,
    spacing: tuple[float, float],
    voxel_mm: float,
    progress: bool = False,
) -> tuple[dict[str, VoxelAccumulator], tuple[int, int] | None, list[str]]:
    """Stream a record's label frames into one voxel accumulator per pose method.

    Parameters
    ----------
    frames : from :func:`record_frames`.
    kind : label folder (``Labels`` or ``Labels_pred``).
    calib, spacing : the dataset's calibration (4x4, mm) and pixel spacing (mm).
    voxel_mm : voxel edge (mm).
    progress : show a progress bar.

    Returns
    -------
    accumulators : method -> accumulator of the record's label points.
    image_size : (width, height) of the labels in pixels (None if no frame was read).
    bad : one message per unreadable label (the frame is skipped).
    """
    from tqdm import tqdm

    acc = {m: VoxelAccumulator(voxel_mm) for m in frames.poses}
    size, bad = None, []
    for i, t in enumerate(tqdm(frames.timestamps, desc=f"{frames.record.key} {kind}", disable=not progress,
                               leave=False)):
        try:
            mask = read_label(frames.record.label_path(t, kind), shape=None if size is None else size[::-1])
        except DatasetError as exc:
            bad.append(str(exc))
            continue
        size = size or (mask.shape[1], mask.shape[0])
        v, u = np.nonzero(mask)
        if not len(u):
            continue
        uv = np.stack([u, v], axis=1).astype(float)
        for m, p in frames.poses.items():
            acc[m].add(pixels_to_ct(uv, p[i], calib, spacing))
    return acc, size, bad
