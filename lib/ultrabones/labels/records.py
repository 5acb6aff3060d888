"""A record's outputs in the derived dataset, written from its chunk files: staged beside it, then swapped in.

:func:`stage_record` writes a record's ``tracking.csv`` (the input's columns plus ``*_optimized`` and
``*_registered``), ``Labels_full/``, ``Labels/`` and ``labeling_report.csv`` (:data:`REPORT`) into a new folder
beside its derived folder, and :func:`commit_record` swaps them in by renames (:func:`merge_record`: both, for
one record); before anything is written, :func:`require_bone_in_view` refuses a specimen none of whose frames
came near its CT bone model, from the report rows of the chunk files (:func:`chunk_report`).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ultrabones.core import atomic, dataset, geometry
from ultrabones.core.errors import DatasetError
from ultrabones.core.images import encode_png
from ultrabones.core.tracking_table import OPTIMIZED_COLUMNS, REGISTERED_COLUMNS
from ultrabones.labels.chunks import read_chunk

#: A record's per-frame report, in its derived folder.
REPORT = "labeling_report.csv"


def chunk_report(files: list[tuple[Path, str]]) -> pd.DataFrame:
    """The per-frame report rows of a record's chunk files (those missing or stale are left to
    :func:`merge_record`, which names them)."""
    rows = []
    for f, key in files:
        chunk = read_chunk(f, key)
        if chunk is not None:
            rows += chunk["report"]
    return pd.DataFrame(rows)


def require_bone_in_view(specs, reports: list[tuple[str, pd.DataFrame]]) -> None:
    """Refuse a specimen none of whose frames came near its CT bone model, before anything is written.

    Every labelled frame ``no_bone`` (none kept or discarded) means the CT model and the tracked image planes
    do not meet: a model in metres rather than mm, a model of another specimen, or the wrong calibration.
    Frames skipped as ``bad_pose``/``bad_image`` do not count either way.

    Raises
    ------
    DatasetError
        Naming the CT model file, its size (mm) and the likely causes.
    """
    by_spec: dict[str, list[pd.DataFrame]] = {}
    for name, rep in reports:
        by_spec.setdefault(name, []).append(rep)
    for s in specs:
        reps = [r for r in by_spec.get(s.name, []) if not r.empty]
        status = pd.concat(reps)["status"] if reps else pd.Series([], dtype=str)
        if (status == "no_bone").any() and not status.isin(["kept", "discarded"]).any():
            mesh = dataset.read_mesh(s.ct_model)
            size = np.asarray(mesh.extents, float)
            hint = (" (it is under 10 mm across: a model in metres? the dataset's unit is mm)"
                    if size.max() < 10.0 else "")
            raise DatasetError(
                f"{s.ct_model}: none of the {int((status == 'no_bone').sum())} labelled frames of specimen {s.name} "
                f"comes near this CT bone model (every frame no_bone; the model is "
                f"{' x '.join(f'{v:.3g}' for v in size)} mm{hint}). Check that the model is in mm and in the CT frame "
                f"of the tracking (the specimen's own model), and the calibration; nothing was written")


def merge_record(rec: dataset.Record, tab: pd.DataFrame, files: list[tuple[Path, str]], reg: Mapping) -> pd.DataFrame:
    """Write one record's outputs from its chunk files into its derived folder (idempotent); return its report.

    :func:`stage_record`, then :func:`commit_record`: the record's ``Labels_full/``, ``Labels/``,
    ``tracking.csv`` and ``labeling_report.csv`` are replaced together. :func:`ultrabones.labels.batch.run` stages every record
    before it commits any.
    """
    report, folder = stage_record(rec, tab, files, reg)
    try:
        commit_record(rec, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return report


#: What :func:`stage_record` writes for a record, and :func:`commit_record` swaps in.
RECORD_PRODUCTS = (dataset.LABELS_FULL, dataset.LABELS, dataset.TRACKING, REPORT)


def stage_record(rec: dataset.Record, tab: pd.DataFrame, files: list[tuple[Path, str]], reg: Mapping,
                 derived_root: Path | None = None) -> tuple[pd.DataFrame, Path]:
    """Write a record's outputs from its chunk files into a new folder beside its derived folder.

    The folder (``<derived>/<specimen>/.<record>.new-*``) holds :data:`RECORD_PRODUCTS`:
    ``tracking.csv`` (the input's columns plus ``*_optimized``, for kept frames and NaN otherwise, and
    ``*_registered``, for every frame with a pose), ``Labels_full/`` (optimised full label) and ``Labels/``
    (visible label) with exactly the kept frames, and ``labeling_report.csv``. Nothing in the derived
    folder itself changes until :func:`commit_record`; the input folder ``rec.path`` is only read.

    Returns
    -------
    The report, and the staged folder.

    Raises
    ------
    RuntimeError
        If a chunk file is missing or stale (the run did not finish).
    DatasetError
        If a file cannot be written (a full disk, a read-only folder), naming it; the staged folder is removed.
    """
    rows, labels = [], {}
    for f, key in files:
        chunk = read_chunk(f, key)
        if chunk is None:
            raise RuntimeError(f"{f}: chunk result missing or stale; rerun to finish the labelling")
        rows += chunk["report"]
        labels.update(chunk["labels"])
    report = pd.DataFrame(rows)
    out = tab.copy()
    init = out[list(geometry.POSE_COLUMNS)].to_numpy(float)
    ok = np.isfinite(init).all(axis=1)
    opt = np.full((len(out), 6), np.nan)
    regc = np.full((len(out), 6), np.nan)
    g = np.asarray(reg["transform"], float)
    if ok.any():
        regc[ok] = geometry.params_from_pose(g @ geometry.pose_from_params(init[ok]))
    if not report.empty:
        kept = report[report["status"] == "kept"]
        row_of = {int(t): i for i, t in enumerate(out["timestamp"])}
        for _, r in kept.iterrows():
            i = row_of[int(r["timestamp"])]
            x = np.array([r["rot_x_deg"], r["rot_y_deg"], r["rot_z_deg"], r["trans_x_mm"], r["trans_y_mm"],
                          r["trans_z_mm"]])
            opt[i] = geometry.params_from_pose(geometry.pose_from_params(init[i]) @ geometry.perturbation(x[:3], x[3:]))
    for j, c in enumerate(OPTIMIZED_COLUMNS):
        out[c] = opt[:, j]
    for j, c in enumerate(REGISTERED_COLUMNS):
        out[c] = regc[:, j]
    if rec.out.resolve() == rec.path.resolve() and rec.derived is not None:
        raise DatasetError(f"{rec.out}: the derived folder is the input folder; the input is read-only")
    folder = target = None
    try:
        target = rec.out
        folder = atomic.new_dir_beside(rec.out)
        for kind in (dataset.LABELS_FULL, dataset.LABELS):
            (folder / kind).mkdir()
        for ts, (full, vis) in labels.items():
            name = rec.label_path(ts).name
            target = rec.label_path(ts, dataset.LABELS_FULL)
            (folder / dataset.LABELS_FULL / name).write_bytes(encode_png(full))
            target = rec.label_path(ts, dataset.LABELS)
            (folder / dataset.LABELS / name).write_bytes(encode_png(vis))
        target = rec.poses_csv
        dataset.write_tracking(folder / dataset.TRACKING, out)
        target = rec.out / REPORT
        atomic.write_text(folder / REPORT, report.to_csv(index=False))
    except OSError as exc:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        reason = "no space left on the device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        where = derived_root if derived_root is not None else rec.out.parent
        raise DatasetError(
            f"{target}: could not be written ({reason}); nothing of this run was written into the derived dataset "
            f"{where} (it holds the previous run's records unchanged). Free space or choose another derived_root, "
            "and rerun: the labelled frames are cached") from None
    return report, folder


def commit_record(rec: dataset.Record, folder: Path) -> None:
    """Swap a record's staged products (:func:`stage_record`) into its derived folder: renames only.

    Each label folder is replaced as a whole (:func:`ultrabones.core.atomic.swap_dir`), so it holds exactly
    this run's kept frames; ``tracking.csv`` and ``labeling_report.csv`` are renamed over the old ones.
    Other files of the derived folder (``Labels_pred/`` of notebook 05) are left alone.
    """
    rec.out.mkdir(parents=True, exist_ok=True)
    for kind in (dataset.LABELS_FULL, dataset.LABELS):
        atomic.swap_dir(folder / kind, rec.label_dir(kind))
    os.replace(folder / dataset.TRACKING, rec.poses_csv)
    os.replace(folder / REPORT, rec.out / REPORT)


def write_report(rec: dataset.Record, report: pd.DataFrame) -> Path:
    """Write a record's ``labeling_report.csv`` into its derived folder (atomically)."""
    return atomic.write_text(rec.out / REPORT, report.to_csv(index=False))
