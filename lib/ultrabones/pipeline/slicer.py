"""A run's results as files 3D Slicer opens: label sequences, pose sequences and surfaces in the CT frame.

``python -m ultrabones export-slicer --profile P [-p data_root=...] --out DIR``
writes, per specimen (``DIR/<specimen>/``):

- ``<record>_image.igs.mha``: the input frames (MF) with ``ElementSpacing``
  the pixel size (mm), and per frame ``ImageToCTTransform`` (the frame's
  physical coordinates as ITK reads them, ``(u sx, v sy, 0)`` at pixel
  ``(u, v)``'s centre, to CT mm, through the optimised pose, else the recorded
  one), ``ProbeToCTTransform`` (the optimised pose, status ``INVALID`` where
  notebook 02 discarded the frame, the recorded pose standing in) and
  ``RecordedProbeToCTTransform`` (the recorded pose).
- ``<record>_labels.igs.mha``: the optimised labels (``Labels/``, 0/1),
  one frame per input frame (zeros and ``ImageStatus INVALID`` where the frame
  has no label), the same timestamps and transforms, so that Slicer's
  Sequences module replays image and label together.
- ``<record>_labels_full.igs.mha`` and ``<record>_predictions.igs.mha``:
  ``Labels_full/`` and the model's ``Labels_pred/``, where they exist.
- ``ImageToProbe.txt``: the calibration in PLUS's convention (pixel indices -> mm).
- ``CT_bone_model.stl`` and ``.ply``: the CT model (CT frame, mm).
- ``reconstruction_<source>_<poses>_<group>.ply``: notebook 06's point clouds
  (CT frame, mm), where it ran.

Nothing is written into the input or the derived dataset.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ultrabones.core import dataset as ds
from ultrabones.core import sequence
from ultrabones.core.paths import Paths
from ultrabones.pipeline.convert import label_frames, write_sequence

KINDS = {ds.LABELS: "labels", ds.LABELS_FULL: "labels_full", ds.LABELS_PRED: "predictions"}


def _shift(x: float, y: float) -> np.ndarray:
    m = np.eye(4)
    m[:2, 3] = x, y
    return m


def record_transforms(rec: ds.Record, calib: np.ndarray, spacing) -> tuple[np.ndarray, dict, dict]:
    """(timestamps, transforms, statuses) of a record's input frames for the exported sequences."""
    ts = rec.timestamps()
    recorded = ds.poses(rec.read_tracking().set_index("timestamp").reindex(ts).reset_index(), "initial")
    if not np.isfinite(recorded).all():
        raise ds.DatasetError(f"{rec.key}: a frame has no recorded pose; cannot export its sequence")
    opt = np.full_like(recorded, np.nan)
    if rec.poses_csv.is_file() and rec.poses_csv != rec.tracking_source:
        tab = ds.read_tracking(rec.poses_csv, allow_missing_pose=True).set_index("timestamp").reindex(ts)
        if all(c in tab.columns for c in ds.OPTIMIZED_COLUMNS):
            opt = ds.poses(tab.reset_index(), "optimized")
    ok = np.isfinite(opt).all(axis=(1, 2))
    best = np.where(ok[:, None, None], opt, recorded)
    # Eq. 1: pose @ calib @ [(u + 0.5) sx, (v + 0.5) sy] = pose @ calib @ T(sx / 2, sy / 2) @ [u sx, v sy]
    i2p = np.asarray(calib, dtype=float) @ _shift(0.5 * spacing[0], 0.5 * spacing[1])
    transforms = {"ImageToCT": best @ i2p, "ProbeToCT": best, "RecordedProbeToCT": recorded}
    statuses = {"ProbeToCT": np.where(ok, "OK", "INVALID")}
    return ts, transforms, statuses


def export_record(rec: ds.Record, out: Path, calib: np.ndarray, spacing, compress: bool = True) -> list[Path]:
    """Write one record's image and label sequences into ``out``; returns the files written."""
    ts, transforms, statuses = record_transforms(rec, calib, spacing)
    name = f"{rec.bone}_{rec.name}" if rec.bone else rec.name
    frames = np.stack([rec.read_image(int(t)) for t in ts])
    written = [write_sequence(out / f"{name}_image.igs.mha", frames, ts, transforms, statuses=statuses,
                              spacing=spacing, compress=compress)]
    for kind, stem in KINDS.items():
        if not rec.label_dir(kind).is_dir():
            continue
        labels, have = label_frames(rec, kind, ts)
        written.append(write_sequence(out / f"{name}_{stem}.igs.mha", labels, ts, transforms, statuses=statuses,
                                      image_status=np.where(have, "OK", "INVALID"), spacing=spacing,
                                      compress=compress))
    return written


def export_run(paths: Paths, out: Path | str, specimens: list[str] | None = None, compress: bool = True) -> list[Path]:
    """Export a run (its input and derived datasets, notebook 06's point clouds) for 3D Slicer.

    Parameters
    ----------
    paths : the run's paths (``Paths.for_profile``).
    out : the export folder (created; files in it are replaced).
    specimens : restrict to these specimens.
    compress : zlib-compress the sequences' pixel data.
    """
    import trimesh

    out = Path(out)
    calib, spacing, _ = ds.read_calibration(paths.dataset)
    written = []
    for spec in ds.discover(paths.dataset, specimens, paths.derived):
        d = out / spec.name
        d.mkdir(parents=True, exist_ok=True)
        (d / "ImageToProbe.txt").write_text(sequence.format_matrix(sequence.plus_image_to_probe(calib, spacing)) + "\n")
        written.append(d / "ImageToProbe.txt")
        for rec in spec.records:
            written += export_record(rec, d, calib, spacing, compress)
        if "merged" in spec.ct_models:
            shutil.copyfile(spec.ct_model, d / "CT_bone_model.stl")
            mesh = trimesh.load_mesh(spec.ct_model, process=False)
            mesh.export(d / "CT_bone_model.ply")
            written += [d / "CT_bone_model.stl", d / "CT_bone_model.ply"]
        clouds = paths.cache("06_reconstruction") / "point_clouds" / spec.name
        for f in sorted(clouds.glob("*.ply")) if clouds.is_dir() else []:
            shutil.copyfile(f, d / f"reconstruction_{f.name}")
            written.append(d / f"reconstruction_{f.name}")
    return written
