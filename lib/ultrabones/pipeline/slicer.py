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
from ultrabones.core import recording
from ultrabones.core.mesh import decimate
from ultrabones.core.overlay import overlay
from ultrabones.core.paths import Paths
from ultrabones.core.tracking_table import OPTIMIZED_COLUMNS
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
        if all(c in tab.columns for c in OPTIMIZED_COLUMNS):
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
        (d / "ImageToProbe.txt").write_text(recording.format_matrix(recording.plus_image_to_probe(calib, spacing)) + "\n")
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


def preview_figure(export_dir: Path | str, record: str, frame: int | None = None, max_faces: int = 6000):
    """A picture of exported data read back from the export (not a 3D Slicer screenshot).

    Left: one frame of ``<record>_image.igs.mha`` with the label of
    ``<record>_labels.igs.mha`` over it. Right: the CT model (``CT_bone_model.stl``)
    and every exported label pixel placed in CT through its frame's
    ``ImageToCTTransform``, with notebook 06's reconstruction from the labels and
    optimised poses when exported (matplotlib; the model decimated to ``max_faces``
    triangles).

    Parameters
    ----------
    export_dir : a specimen folder of :func:`export_run`'s output.
    record : the record name.
    frame : the frame index shown (default: the labelled frame with most label pixels).
    """
    import matplotlib.pyplot as plt
    import SimpleITK as sitk
    import trimesh

    d = Path(export_dir)
    img = sitk.ReadImage(str(d / f"{record}_image.igs.mha"))
    lab = sitk.ReadImage(str(d / f"{record}_labels.igs.mha"))
    frames, labels = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(lab).astype(bool)
    sx, sy = lab.GetSpacing()[:2]
    counts = labels.reshape(len(labels), -1).sum(axis=1)
    k = int(np.argmax(counts)) if frame is None else int(frame)
    fig = plt.figure(figsize=(11, 4.6))
    ax = fig.add_subplot(1, 2, 1)
    ax.imshow(overlay(frames[k], [(labels[k], (1.0, 0.2, 0.1), 0.8)]),
              extent=(0, frames.shape[2] * sx, frames.shape[1] * sy, 0))
    t = float(lab.GetMetaData(f"Seq_Frame{k:04d}_Timestamp"))
    ax.set_title(f"{record} frame {k} (t = {t:.3f} s) and its exported label", fontsize=9)
    ax.set(xlabel="mm", ylabel="depth (mm)")
    pts = []
    for i in np.flatnonzero(counts):
        v, u = np.nonzero(labels[i])
        m = recording.parse_matrix(lab.GetMetaData(f"Seq_Frame{i:04d}_ImageToCTTransform"), "export")
        phys = np.c_[u * sx, v * sy, np.zeros(len(u)), np.ones(len(u))]
        pts.append((m @ phys.T).T[:, :3])
    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    mesh = trimesh.load_mesh(d / "CT_bone_model.stl")
    verts, faces = decimate(np.asarray(mesh.vertices), np.asarray(mesh.faces), max_faces)
    ax3.plot_trisurf(*verts.T, triangles=faces, color=(0.85, 0.82, 0.72), alpha=0.35, linewidth=0)
    if pts:
        p = np.concatenate(pts)
        p = p[:: max(1, len(p) // 20000)]
        ax3.scatter(*p.T, s=0.2, c="tab:red", alpha=0.25, depthshade=False, label="label pixels via ImageToCT")
    cloud = d / "reconstruction_labels_optimized_all.ply"
    if cloud.is_file():  # notebook 06's surface from the labels and the optimised poses
        import open3d as o3d

        rp = np.asarray(o3d.io.read_point_cloud(str(cloud)).points)
        ax3.scatter(*rp.T, s=4.0, c="tab:blue", depthshade=False, label="reconstruction (06), 0.25 mm voxels")
    ax3.legend(loc="upper left", fontsize=7)
    if pts:
        centre, half = p.mean(axis=0), max(15.0, float(np.ptp(p, axis=0).max()))
        for setlim, c in zip((ax3.set_xlim, ax3.set_ylim, ax3.set_zlim), centre):
            setlim(c - half, c + half)
    ax3.set_title("CT model (CT frame, mm) with the exported labels", fontsize=9)
    ax3.set(xlabel="x", ylabel="y", zlabel="z")
    fig.tight_layout()
    return fig
