"""Writing PLUS sequence files, and converting datasets between layout A and layout C on request.

``python -m ultrabones convert SRC DST``: a layout-A/B dataset becomes one
sequence file per record (layout C, with ``recording.yaml``,
``ImageToProbe.txt`` and ``TrackerToCT.txt``); a layout-C dataset becomes
layout A (PNG frames, ``tracking.csv`` at full precision, ``calibration.json``).
The stages read layout C directly; converting is never needed to run them.

Writers use SimpleITK (MetaImage ``.mha``/``.mhd`` and NRRD) and, for
PLUS's own NRRD layout (columns x rows x 1 x frames, ``kinds: domain domain
domain list``), pynrrd. See :mod:`ultrabones.core.sequence` for the fields.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import yaml

from ultrabones.core import dataset as ds
from ultrabones.core import recording, sequence
from ultrabones.core.calibration_file import write_calibration
from ultrabones.core.errors import DatasetError
from ultrabones.core.geometry import invert_transform


def _frame_fields(transforms: dict, timestamps_ms, statuses: dict | None, image_status) -> dict[str, str]:
    fields = {}
    n = len(timestamps_ms)
    for k in range(n):
        pre = f"Seq_Frame{k:04d}_"
        fields[pre + "FrameNumber"] = str(k)
        fields[pre + "Timestamp"] = repr(float(timestamps_ms[k]) / 1000.0)
        fields[pre + "UnfilteredTimestamp"] = fields[pre + "Timestamp"]
        fields[pre + "ImageStatus"] = "OK" if image_status is None else str(image_status[k])
        for name, mats in transforms.items():
            fields[pre + f"{name}Transform"] = recording.format_matrix(mats[k])
            st = "OK" if statuses is None or name not in statuses else str(statuses[name][k])
            fields[pre + f"{name}TransformStatus"] = st
    return fields


def _to_stored(frames: np.ndarray, orientation: str) -> np.ndarray:
    flip_cols, flip_rows = sequence.ORIENTATIONS[orientation]
    out = frames
    if flip_cols:
        out = out[:, :, ::-1]
    if flip_rows:
        out = out[:, ::-1, :]
    return np.ascontiguousarray(out, dtype=np.uint8)


def write_sequence(path: Path | str, frames, timestamps_ms, transforms: dict, *, statuses: dict | None = None,
                   image_status=None, spacing=(1.0, 1.0), orientation: str = "MF", compress: bool = False,
                   extra: dict | None = None) -> Path:
    """Write a PLUS sequence file with SimpleITK (MetaImage or NRRD, by the suffix of ``path``).

    Parameters
    ----------
    frames : (N, H, W) uint8 frames in MF orientation (rows: depth).
    timestamps_ms : (N,) frame times (ms); written as seconds.
    transforms : name (``ProbeToTracker``) -> (N, 4, 4) matrices, one field per frame.
    statuses : name -> N status strings (default all ``OK``).
    image_status : N ``ImageStatus`` strings, or None (all ``OK``).
    spacing : ``ElementSpacing`` of x and y (mm per pixel; PLUS writes 1 1).
    orientation : stored orientation; frames are flipped from MF to it.
    compress : zlib-compressed pixel data.
    extra : further header fields.

    Returns
    -------
    The path written (a single-file format is written atomically).
    """
    import SimpleITK as sitk

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_sequence: frames must be (N, H, W) uint8, got {frames.dtype} {frames.shape}")
    img = sitk.GetImageFromArray(_to_stored(frames, orientation))
    img.SetSpacing((float(spacing[0]), float(spacing[1]), 1.0))
    meta = {"UltrasoundImageOrientation": orientation, "UltrasoundImageType": "BRIGHTNESS",
            **_frame_fields(transforms, timestamps_ms, statuses, image_status), **(extra or {})}
    for key, value in meta.items():
        img.SetMetaData(key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.lower().endswith(".mhd"):
        sitk.WriteImage(img, str(path), useCompression=compress)
        return path
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        sitk.WriteImage(img, str(tmp), useCompression=compress)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_sequence_nrrd(path: Path | str, frames, timestamps_ms, transforms: dict, *, statuses: dict | None = None,
                        spacing=(1.0, 1.0), orientation: str = "MF") -> Path:
    """Write a ``.seq.nrrd`` in PLUS's NRRD layout with pynrrd (columns x rows x 1 x frames, a list axis).

    Parameters as for :func:`write_sequence`; the orientation field is PLUS's
    NRRD spelling, ``ultrasound image orientation``.
    """
    import nrrd

    path = Path(path)
    data = np.transpose(_to_stored(np.asarray(frames), orientation), (2, 1, 0))[:, :, None, :]
    header = {"kinds": ["domain", "domain", "domain", "list"], "encoding": "raw", "space": "left-posterior-superior",
              "space directions": np.array([[spacing[0], 0, 0], [0, spacing[1], 0], [0, 0, 1.0], [np.nan] * 3]),
              "ultrasound image orientation": orientation, "ultrasound image type": "BRIGHTNESS",
              **_frame_fields(transforms, timestamps_ms, statuses, None)}
    path.parent.mkdir(parents=True, exist_ok=True)
    nrrd.write(str(path), data, header, index_order="F")
    return path


def write_recording(folder: Path | str, calib: np.ndarray, spacing, tracker_to_ct: np.ndarray | None = None,
                    pose_names=("TrackerToCT", "ProbeToTracker")) -> Path:
    """Write ``recording.yaml`` with ``ImageToProbe.txt`` (PLUS convention, pixel units) and ``TrackerToCT.txt``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ImageToProbe.txt").write_text(
        recording.format_matrix(recording.plus_image_to_probe(calib, spacing)) + "\n")
    data = {"image_to_probe": {"file": "ImageToProbe.txt"}, "image_to_probe_units": "pixel", "pose": list(pose_names)}
    if tracker_to_ct is not None:
        (folder / "TrackerToCT.txt").write_text(recording.format_matrix(tracker_to_ct) + "\n")
        data["transforms"] = {"TrackerToCT": {"file": "TrackerToCT.txt"}}
    out = folder / sequence.RECORDING
    out.write_text("# written by python -m ultrabones convert (see docs/slicer.md)\n" + yaml.safe_dump(data, sort_keys=False))
    return out


def _copy_models(spec: ds.Specimen, dst: Path) -> None:
    for f in spec.ct_models.values():
        shutil.copyfile(f, dst / f.name)


def to_sequences(src: Path | str, dst: Path | str, suffix: str = ".igs.mha", tracker_to_ct: np.ndarray | None = None,
                 compress: bool = False) -> list[Path]:
    """Write a layout-A/B dataset as layout C: one sequence file per record, ``recording.yaml`` per specimen.

    The recorded pose (probe marker in CT) is stored as ``ProbeToTracker =
    inv(TrackerToCT) @ pose`` with ``TrackerToCT`` (identity by default) in
    ``TrackerToCT.txt``, so that ``recording.yaml``'s chain gives the pose back.
    Frames without a pose row are not written. ``.seq.nrrd`` is written with
    pynrrd in PLUS's layout, the rest with SimpleITK.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise DatasetError(f"{dst}: output folder is not empty")
    calib, spacing, _ = ds.read_calibration(src)
    t2c = np.eye(4) if tracker_to_ct is None else np.asarray(tracker_to_ct, dtype=float)
    written = []
    for spec in ds.discover(src):
        out = dst / spec.name
        out.mkdir(parents=True, exist_ok=True)
        _copy_models(spec, out)
        write_recording(out, calib, spacing, t2c)
        for rec in spec.records:
            tab = rec.read_tracking()
            have = np.isin(tab["timestamp"].to_numpy(), rec.timestamps())
            tab = tab[have]
            ts = tab["timestamp"].to_numpy(np.int64)
            poses = ds.poses(tab)
            frames = np.stack([rec.read_image(int(t)) for t in ts])
            probe_to_tracker = invert_transform(t2c) @ poses
            name = f"{rec.bone}_{rec.name}" if rec.bone else rec.name
            f = out / f"{name}{suffix}"
            if suffix.lower().endswith(".nrrd"):
                write_sequence_nrrd(f, frames, ts, {"ProbeToTracker": probe_to_tracker})
            else:
                write_sequence(f, frames, ts, {"ProbeToTracker": probe_to_tracker}, compress=compress)
            written.append(f)
    return written


def to_layout_a(src: Path | str, dst: Path | str) -> list[Path]:
    """Write a layout-C dataset as layout A: PNG frames, ``tracking.csv`` (full precision), ``calibration.json``."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise DatasetError(f"{dst}: output folder is not empty")
    calib, spacing, _ = ds.read_calibration(src)
    written = []
    for spec in ds.discover(src):
        out = dst / spec.name
        out.mkdir(parents=True, exist_ok=True)
        _copy_models(spec, out)
        for rec in spec.records:
            tab = rec.read_tracking()
            for t in tab["timestamp"]:
                ds.write_image(out / rec.name / ds.IMAGES / f"{int(t)}.png", rec.read_image(int(t)))
            tab.insert(1, "space_factor", float(spacing[0]))
            tab.to_csv(out / rec.name / ds.TRACKING, index=False)
            written.append(out / rec.name)
    write_calibration(dst, calib, spacing, None, source=f"converted from {src} (layout C)")
    return written


def convert(src: Path | str, dst: Path | str, suffix: str = ".igs.mha", compress: bool = False) -> list[Path]:
    """Layout C -> layout A, anything else -> layout C (``suffix``: the sequence-file format)."""
    specs, _ = ds.scan(src)
    if all(s.layout == "C" for s in specs):
        return to_layout_a(src, dst)
    return to_sequences(src, dst, suffix, compress=compress)


def label_frames(rec: ds.Record, kind: str, timestamps) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) uint8 label frames (0/1) of ``kind`` for every timestamp, zeros where there is none; and which exist."""
    h, w = rec.image_shape(int(timestamps[0]))
    out = np.zeros((len(timestamps), h, w), dtype=np.uint8)
    have = np.zeros(len(timestamps), dtype=bool)
    for i, t in enumerate(timestamps):
        f = rec.label_path(int(t), kind)
        if f.is_file():
            out[i] = ds.read_label(f, (h, w))
            have[i] = True
    return out, have

