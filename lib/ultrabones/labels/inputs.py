"""The stage's inputs: the clouds ``C``, the frames labelled in each record, and their images read safely.

What the labelling reads from the dataset before any frame is optimised: ``C`` sampled on each specimen's CT
bone model and cached (:func:`surface_cloud`, :func:`released_cloud`); the rows of each record's tracking
table that are labelled (:func:`selected_rows`, :func:`records_to_label`); a record's usual image size, and
its images read one at a time with the reason when one is unusable (:func:`record_image_shape`,
:func:`read_image_or_none`); the digest of the images that the cache keys include (:func:`images_digest`);
and a record named in a task's plain data (:func:`task_record`, :func:`task_recording`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from ultrabones.core import atomic, dataset
from ultrabones.core.cache import file_digest, files_digest, params_hash
from ultrabones.core.errors import DatasetError
from ultrabones.core.paths import Paths
from ultrabones.labels import cloud

#: The stage's name: its cache folder (``build/<profile>/cache/02_labeling``) and its digests file.
STEM = "02_labeling"


def surface_cloud(paths: Paths, specimen: dataset.Specimen, density: float, seed: int) -> Path:
    """``C`` of a specimen, sampled once and cached as ``.npz`` (points, normals; CT, mm).

    The cache key hashes the mesh file's bytes, the density and the seed.
    """
    stl = specimen.ct_model
    digest = file_digest(stl)
    key = params_hash({"mesh": digest, "density": density, "seed": seed})
    out = paths.cache(STEM) / specimen.name / f"surface_{key}.npz"
    if not out.is_file():
        mesh = dataset.read_mesh(stl)
        pts, nrm = cloud.surface_points(mesh, density, seed)
        buf = io.BytesIO()
        np.savez(buf, points=pts, normals=nrm)
        atomic.write_bytes(out, buf.getvalue())
    return out


def released_cloud(paths: Paths, specimen: dataset.Specimen, n_samples: int, seed: int) -> Path:
    """The dense ``C`` of ``objective: released`` (``n_samples`` points on the CT bone model), cached as
    :func:`surface_cloud` caches (:func:`ultrabones.labels.released.sample_ct`)."""
    mesh = dataset.read_mesh(specimen.ct_model)
    area = float(np.asarray(mesh.area_faces, float).sum())
    if not area > 0:
        raise DatasetError(f"{specimen.ct_model}: the CT bone model has no surface area (empty or degenerate mesh)")
    return surface_cloud(paths, specimen, int(n_samples) / area, seed)


def selected_rows(n_rows: int, stride: int, max_frames: int | None) -> np.ndarray:
    """Rows labelled in a record: every ``stride``-th, at most ``max_frames`` (spread evenly)."""
    rows = np.arange(0, n_rows, stride)
    if max_frames is not None and len(rows) > max_frames:
        rows = rows[np.unique(np.linspace(0, len(rows) - 1, max_frames).round().astype(int))]
    return rows


def record_tracking(rec: dataset.Record) -> pd.DataFrame:
    """A record's tracking table (rows without a pose kept, so that row numbers are the recording's)."""
    return rec.read_tracking(allow_missing_pose=True)


def records_to_label(specs, spec_params: Mapping[str, Any]) -> list[tuple]:
    """Every record of ``specs`` as ``(specimen, record, tracking table, rows to label)``, the rows by its
    specimen's :class:`~ultrabones.labels.batch.LabelingParams` (``frame_stride``, ``max_frames_per_record``)."""
    out = []
    for s in specs:
        P = spec_params[s.name]
        for rec in s.records:
            tab = record_tracking(rec)
            out.append((s, rec, tab, selected_rows(len(tab), P.frame_stride, P.max_frames_per_record)))
    return out


def task_recording(rec: dataset.Record) -> str | None:
    """A task's ``recording``: where a layout-C record's recording lives, as plain data for a task.

    Parameters
    ----------
    rec : the record.

    Returns
    -------
    The folder of its ``recording.yaml`` (a path string), or None for a record of layout A or B.
    """
    return None if rec.recording is None else str(rec.recording)


def task_record(task: dict) -> dataset.Record:
    """The :class:`~ultrabones.core.dataset.Record` a task names (``specimen``, ``record``, ``record_dir``, ``recording``)."""
    rec = task.get("recording")
    return dataset.Record(task["specimen"], task["record"], Path(task["record_dir"]),
                          recording=None if rec is None else Path(rec))


def read_image_or_none(rec: dataset.Record, ts: int,
                       shape: tuple[int, int] | None = None) -> tuple[np.ndarray | None, str | None]:
    """``(image, None)``, or ``(None, message)`` for a missing, unreadable or wrongly sized image.

    Parameters
    ----------
    rec, ts : the record and the frame's timestamp (ms).
    shape : the record's (H, W) (pixels; :func:`record_image_shape`); an image of
        another size is refused with its file named, so that one odd frame
        is reported as ``bad_image`` instead of breaking its chunk.

    Returns
    -------
    ``(image, None)`` with the (H, W) uint8 image, or ``(None, message)`` naming the file and the reason.
    """
    path = rec.path if rec.is_sequence else rec.image_path(ts)
    try:
        img = rec.read_image(ts)
    except DatasetError as exc:
        return None, str(exc)
    if shape is not None and img.shape != tuple(shape):
        h, w = img.shape
        return None, (f"{path}: image size {w}x{h} (W x H) differs from its record's {shape[1]}x{shape[0]}"
                      " (the size of most of its frames)")
    return img, None


def record_image_shape(rec: dataset.Record, timestamps: Iterable[int]) -> list[int] | None:
    """The (H, W) that most of these frames' images have (PNG headers only), or None if none is readable.

    Ties go to the size met first along the sweep. Unreadable files are
    ignored here; they are reported per frame when labelled.
    """
    counts: dict[tuple[int, int], int] = {}
    for ts in timestamps:
        try:
            h, w = rec.image_shape(int(ts))
        except (OSError, ValueError, SyntaxError, DatasetError):
            continue
        counts[(h, w)] = counts.get((h, w), 0) + 1
    if not counts:
        return None
    best = max(counts.values())
    return list(next(k for k, v in counts.items() if v == best))


def images_digest(rec: dataset.Record, timestamps: Iterable[int]) -> str:
    """Digest of the image files of these frames (names and contents): the input part of a cache key.

    Parameters
    ----------
    rec : the record; timestamps : the frames' timestamps (ms).

    Returns
    -------
    A hex digest (:func:`ultrabones.core.cache.files_digest`): an image replaced on disk changes it.
    """
    return files_digest(rec.input_files(timestamps), rec.path if not rec.is_sequence else rec.path.parent)