"""One specimen of the reconstruction stage (notebook 06): its point clouds, their distances, its cache inputs.

:func:`reconstruct_specimen` streams a specimen's label frames into voxel
accumulators per record, merges them per bone and for the whole specimen
(group ``all``), and measures every cloud against the CT bone model
(definitions in :mod:`ultrabones.reconstruction.surface`).
:func:`dataset_fingerprint` is the content digest of what it reads, for the
cache key of :func:`ultrabones.reconstruction.batch.run`; :func:`skipped_result`
is the result of a specimen that could not be reconstructed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

import numpy as np

from ultrabones.core.cache import file_digest, files_digest
from ultrabones.core.dataset import LABELS, LABELS_PRED, Specimen, read_mesh
from ultrabones.core.mesh import SurfaceDistance
from ultrabones.reconstruction.point_clouds import write_ply
from ultrabones.reconstruction.record_points import reconstruct_record, record_frames
from ultrabones.reconstruction.surface import (ALL, SOURCES, SurfaceSamples, VoxelAccumulator, backward_distances,
                                               distance_histogram, distance_summary, sample_surface,
                                               visible_surface)


# ----------------------------------------------------------------------------- one specimen


def reconstruct_specimen(
    specimen: Specimen,
    params,
    calib: np.ndarray,
    spacing: tuple[float, float],
    record_bones: Mapping[str, str] | None = None,
    out_dir: Path | str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Reconstruct one specimen for every grid cell and group, and measure it against the CT model.

    Parameters
    ----------
    specimen : the specimen (``dataset.read_specimen``).
    params : the stage's parameters (:class:`~ultrabones.reconstruction.batch.ReconstructionParams`;
        ``render`` is not used here).
    calib, spacing : image-to-probe calibration (4x4, mm) and pixel spacing (mm).
    record_bones : record name -> bone (:func:`read_record_bones`); default all :data:`ALL`.
    out_dir : where the PLY files go (``<source>_<method>_<group>.ply``).
    seed : seed of the surface sampling.
    progress : progress bars.

    Returns
    -------
    A JSON-able dict: ``specimen``, ``skipped`` (None, or why the specimen was
    skipped), ``rows`` (one per source x method x group with the distance
    statistics, histogram and coverage), ``groups`` (visible samples per
    group), ``n_label_points``, ``n_queries``, ``query_seconds``, ``bad_frames``,
    ``notes``.
    """
    t_start = time.perf_counter()
    sources = list(params.sources)
    methods = list(params.pose_methods)
    voxel_mm = params.voxel_mm
    record_bones = dict(record_bones or {})
    result: dict = {"specimen": specimen.name, "skipped": None, "rows": [], "groups": {}, "notes": [],
                    "bad_frames": [], "n_label_points": 0, "n_queries": 0, "query_seconds": 0.0, "ply": {}}
    # Frames of every source (tracking is read once per record and source).
    frames = {s: [record_frames(r, SOURCES[s], methods, params.frame_step) for r in specimen.records]
              for s in sources}
    if "labels" in sources:
        n_labelled = sum(len(f.timestamps) for f in frames["labels"])
    else:
        n_labelled = sum(len(f.timestamps) for s in sources for f in frames[s])
    if n_labelled == 0:
        result["skipped"] = (
            f"{specimen.path}: no labelled frame with a finite {' and '.join(methods)} pose "
            f"(in {', '.join(SOURCES[s] + '/' for s in sources)} of {len(specimen.records)} record(s))"
        )
        return result
    merged = read_mesh(specimen.ct_model)
    surface = SurfaceDistance.from_mesh(merged)
    bone_of = {r.name: record_bones.get(r.name, r.bone or ALL) for r in specimen.records}
    groups = {ALL: [r.name for r in specimen.records]}
    for name, bone in bone_of.items():
        if bone != ALL:
            groups.setdefault(bone, []).append(name)

    # Stream every source's frames into per-record accumulators (one per pose method).
    per_record: dict[str, dict[str, dict[str, VoxelAccumulator]]] = {s: {} for s in sources}
    n_frames: dict[str, dict[str, int]] = {s: {} for s in sources}
    image_size: dict[str, tuple[int, int]] = {}
    for s in sources:
        for f in frames[s]:
            if not len(f.timestamps):
                continue
            acc, size, bad = reconstruct_record(f, SOURCES[s], calib, spacing, voxel_mm, progress=progress)
            result["bad_frames"] += bad
            if size is None:
                continue
            image_size.setdefault(s, size)
            per_record[s][f.record.name] = acc
            n_frames[s][f.record.name] = len(f.timestamps) - len(bad)
    vis_source = "labels" if "labels" in sources else sources[0]
    if vis_source not in image_size:
        result["skipped"] = f"{specimen.path}: no readable {SOURCES[vis_source]}/ frame ({len(result['bad_frames'])} unreadable)"
        return result

    # Visible surface per group, from the planes of the frames that carry a CT-derived label.
    vis_method = "optimized" if "optimized" in methods else methods[0]
    visible: dict[str, SurfaceSamples] = {}
    for g, names in groups.items():
        mesh = merged
        if g != ALL and g in specimen.ct_models:
            mesh = read_mesh(specimen.ct_models[g])
        elif g != ALL:
            result["notes"].append(f"no CT_bone_model_{g}.stl: group '{g}' is covered against the merged model")
        samples = sample_surface(mesh, params.surface_sample_mm, seed=seed)
        plane = [f.poses[vis_method] for f in frames[vis_source] if f.record.name in names]
        plane = np.concatenate(plane) @ np.asarray(calib, dtype=float) if plane else np.zeros((0, 4, 4))
        mask = visible_surface(samples, plane, image_size[vis_source], spacing, surface,
                               params.visibility_gamma_mm, params.max_incidence_deg)
        visible[g] = SurfaceSamples(samples.points[mask], samples.normals[mask])
        result["groups"][g] = {"records": names, "n_samples": len(samples), "n_visible": int(mask.sum()),
                               "visible_area_mm2": float(mask.mean() * mesh.area),
                               "mesh": "merged" if mesh is merged else g,
                               "view_direction": (samples.normals[mask].mean(axis=0) if mask.any()
                                                  else np.array([0.0, 0.0, 1.0])).tolist()}

    for s in sources:
        for m in methods:
            for g, names in groups.items():
                acc = VoxelAccumulator(voxel_mm)
                for name in names:
                    if name in per_record[s]:
                        acc.merge(per_record[s][name][m])
                if acc.n_added == 0:
                    continue
                pts = acc.centroids()
                d = surface(pts)
                back = backward_distances(visible[g].points, pts)
                nv = len(visible[g])
                row = {"source": s, "poses": m, "group": g,
                       "n_frames": int(sum(n_frames[s].get(n, 0) for n in names)),
                       "n_label_points": int(acc.n_added), "n_points": len(pts), **distance_summary(d),
                       "n_visible": nv, "n_covered": int((back <= params.coverage_mm).sum()),
                       "sum_mm": float(d.sum()), "sum_back_mm": float(back.sum()) if nv else 0.0,
                       "hist": distance_histogram(d).tolist()}
                row["coverage"] = row["n_covered"] / nv if nv else float("nan")
                row["chamfer_mm"] = 0.5 * (row["mean_mm"] + row["sum_back_mm"] / nv) if nv else float("nan")
                result["rows"].append(row)
                if g == ALL:
                    result["n_label_points"] += int(acc.n_added)
                if params.save_ply and out_dir is not None:
                    ply = write_ply(Path(out_dir) / specimen.name / f"{s}_{m}_{g}.ply", pts, d)
                    result["ply"][f"{s}/{m}/{g}"] = str(ply)
    for s in sources:
        if s != vis_source and not per_record[s]:
            result["notes"].append(f"no {SOURCES[s]}/ frames (e.g. not a test specimen): '{s}' cells left empty")
    result["n_queries"] = surface.n_queries
    result["query_seconds"] = surface.seconds
    result["seconds"] = time.perf_counter() - t_start
    return result


# ----------------------------------------------------------------------------- its inputs, for the cache key


def dataset_fingerprint(specimen: Specimen, calibration_file: Path | None = None) -> dict:
    """Content digests of what a specimen's reconstruction reads, for the cache key.

    The CT models, each record's tracking table with the optimised poses
    (:attr:`Record.poses_csv`, in the derived dataset), every label PNG of
    ``Labels/`` and ``Labels_pred/`` (names and bytes) and the calibration
    file: when an earlier stage changes any of them, the cached result is stale
    (:func:`ultrabones.core.cache.files_digest`; unchanged files are not re-read).
    """
    out = {f"ct/{k}": file_digest(p) for k, p in sorted(specimen.ct_models.items())}
    for r in specimen.records:
        out[f"{r.key}/poses"] = file_digest(r.poses_csv)
        for kind in (LABELS, LABELS_PRED):
            folder = r.label_dir(kind)
            files = sorted(folder.glob("*.png")) if folder.is_dir() else []
            out[f"{r.key}/{kind}"] = files_digest(files, folder)
    if calibration_file is not None:
        out["calibration"] = file_digest(Path(calibration_file))
    return out


def skipped_result(specimen: str, reason: str) -> dict:
    """The result of a specimen that could not be reconstructed."""
    return {"specimen": specimen, "skipped": reason, "rows": [], "groups": {}, "notes": [], "bad_frames": [],
            "n_label_points": 0, "n_queries": 0, "query_seconds": 0.0, "ply": {}}
