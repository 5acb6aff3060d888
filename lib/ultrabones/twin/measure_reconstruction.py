"""Notebook 06's reconstructions measured against the twin's true bone surface: the truly imaged surface and
the grid's distances, coverage and Chamfer against it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ultrabones.core import dataset
from ultrabones.core.executor import executor
from ultrabones.core.geometry import POSE_COLUMNS, pose_from_params
from ultrabones.core.paths import Paths
from ultrabones.reconstruction import surface as rc
from ultrabones.reconstruction.point_clouds import read_ply
from ultrabones.reconstruction.record_points import label_points
from ultrabones.twin.truth_reader import true_label, true_system, truth_root


def true_imaged_points(paths: Paths, specimen: str, frame_step: int = 1, kind: str = dataset.LABELS) -> np.ndarray:
    """(N, 3) CT points (mm) of the bone surface the sweeps truly imaged.

    The twin's true visible labels (``truth/<specimen>/<record>/Labels/``) of
    the frames the reconstruction used (those with a ``kind`` label in the
    dataset, every ``frame_step``-th), mapped to CT with the *true* probe
    poses (``truth/.../poses.csv``) and the true calibration (Eq. 1). Empty
    when the specimen has no such frame.
    """
    root = truth_root(paths)
    calib = true_system(paths)["calibration"]
    _, spacing, _ = dataset.read_calibration(paths.dataset)
    spec = dataset.read_specimen(paths.dataset / specimen, paths.derived / specimen)
    out = []
    for rec in spec.records:
        ts = rec.labelled_timestamps(kind)[:: max(1, int(frame_step))]
        f = root / specimen / rec.name / "poses.csv"
        if not len(ts) or not f.is_file():
            continue
        true = pd.read_csv(f).set_index("timestamp")
        for t in ts:
            lab = true_label(paths, specimen, rec.name, int(t), kind, None)
            if lab is None or int(t) not in true.index or not lab.any():
                continue
            pose = pose_from_params(true.loc[int(t), list(POSE_COLUMNS)].to_numpy(float)[None])[0]
            out.append(label_points(lab, pose, calib, spacing))
    return np.concatenate(out) if out else np.zeros((0, 3))


def reconstruction_vs_truth(paths: Paths, result, sample_mm: float = 0.2, crop_mm: float = 1.0,
                            seed: int = 0, *, n_workers: int = 1, scheduler: str | None = None) -> dict | None:
    """Notebook 06's grid measured against the twin's *true* bone surface (None off the twin).

    For each reconstructed specimen and grid cell (group ``all``), the
    point cloud the stage wrote (its ``"ply"`` files) is compared with
    ``truth/<specimen>/bone_model.stl`` by
    :func:`ultrabones.reconstruction.surface.compare_to_surface`:

    - ``mean_true_mm``, ``median_true_mm``, ``p95_true_mm``: exact
      point-to-mesh distance of each reconstruction point to the true bones;
    - the *truly imaged surface* ``V*``: samples of the true bones (about one
      per ``sample_mm`` squared) within ``crop_mm`` of the true visible label
      points at the true poses (:func:`true_imaged_points`), the same for every
      cell of a specimen;
    - ``coverage_true``: share of ``V*`` within the stage's ``coverage_mm``;
    - ``chamfer_true_mm``: UltraBoneUDF's Chamfer form,
      ``(mean_R d(r, V*) + mean_V* d(v, R)) / 2`` on point sets;
    - ``chamfer_true_udf_crop_mm``: UltraBoneUDF's exact protocol, the true
      samples within ``crop_mm`` of the reconstruction itself as the
      reference (it does not see what the reconstruction misses).

    Parameters
    ----------
    paths : the run's paths.
    result : the stage's :class:`~ultrabones.reconstruction.batch.ReconstructionResult` (its parameters give
        ``coverage_mm`` and ``frame_step``).
    sample_mm : spacing of the true-surface samples (mm).
    crop_mm : distance of the imaged-part crop (mm; UltraBoneUDF: 1).
    seed : seed of the surface sampling.
    n_workers, scheduler : specimens are measured as independent tasks on the package's executor (local
        processes, or a Dask scheduler); the result does not depend on it.

    Returns
    -------
    ``{"grid": {cell: {mean_true_mm, median_true_mm, p95_true_mm,
    chamfer_true_mm, chamfer_true_udf_crop_mm, coverage_true, n_specimens_true}},
    "per_specimen": {specimen: {cell: {...same keys}}}, "n_true_imaged": {specimen: n},
    "missing": [why a cell or specimen could not be measured], "sample_mm", "crop_mm"}``,
    or None without ``truth/``.
    """
    root = truth_root(paths)
    if root is None:
        return None
    rows: dict[str, list] = {}
    per_specimen, n_imaged, missing = {}, {}, []
    results, params = result.specimens, result.params
    tasks = [(paths, root, r, params.frame_step, params.coverage_mm, sample_mm, crop_mm, seed)
             for r in results if not r.get("skipped")]
    with executor("auto", scheduler, n_workers, progress=False) as ex:
        done = ex.map(specimen_vs_truth, tasks, desc="reconstruction vs truth", unit="specimen")
    for sid, cells, n, why in done:
        missing += why
        if n is not None:
            n_imaged[sid] = n
        for cell, row in cells.items():
            rows.setdefault(cell, []).append(row)
            pooled = rc.pool_comparisons([row])
            per_specimen.setdefault(sid, {})[cell] = {TRUE_NAMES[k]: pooled[k] for k in TRUE_NAMES
                                                      if k != "n_specimens"}
    if not any(r.get("ply") for r in results if not r.get("skipped")):
        missing.append("no point cloud written (reconstruction.save_ply is false): nothing measured against truth")
    grid = {}
    for cell, cell_rows in rows.items():
        pooled = rc.pool_comparisons(cell_rows)
        grid[cell] = {TRUE_NAMES[k]: pooled[k] for k in TRUE_NAMES}
    return {"grid": grid, "per_specimen": per_specimen, "n_true_imaged": n_imaged, "missing": missing,
            "sample_mm": sample_mm, "crop_mm": crop_mm}


#: The reconstruction-vs-truth keys of :func:`reconstruction_vs_truth`, by their name in the stage's grid.
TRUE_NAMES = {"mean_mm": "mean_true_mm", "median_mm": "median_true_mm", "p95_mm": "p95_true_mm",
              "chamfer_mm": "chamfer_true_mm", "chamfer_udf_crop_mm": "chamfer_true_udf_crop_mm",
              "coverage": "coverage_true", "n_specimens": "n_specimens_true"}


def specimen_vs_truth(task: tuple) -> tuple[str, dict, int | None, list[str]]:
    """One specimen of :func:`reconstruction_vs_truth` (a task of the executor): ``(specimen, {cell: row of
    compare_to_surface}, number of truly imaged samples or None, [why something was not measured])``."""
    paths, root, r, frame_step, coverage_mm, sample_mm, crop_mm, seed = task
    sid = r["specimen"]
    mesh_file = root / sid / "bone_model.stl"
    if not mesh_file.is_file():
        return sid, {}, None, [f"{mesh_file}: no true bone model"]
    true_mesh = dataset.read_mesh(mesh_file)
    surf = rc.SurfaceDistance.from_mesh(true_mesh)
    clouds, missing = {}, []
    for key, ply in sorted(r.get("ply", {}).items()):
        src, method, group = key.split("/")
        if group != rc.ALL:
            continue
        if not Path(ply).is_file():
            missing.append(f"{ply}: point cloud missing (rerun 06)")
            continue
        clouds[rc.cell_name(src, method)] = read_ply(ply)[0]
    true_pts = true_imaged_points(paths, sid, frame_step)
    # every crop below keeps samples within crop_mm of the imaged points or of a cloud: crop once to their union
    samples = rc.sample_surface(true_mesh, sample_mm, seed=seed).points
    samples = rc.points_within(samples, np.concatenate([true_pts, *clouds.values()]), crop_mm)
    imaged = rc.points_within(samples, true_pts, crop_mm)
    cells = {cell: rc.compare_to_surface(pts, surf, imaged, coverage_mm, samples, crop_mm)
             for cell, pts in clouds.items()}
    return sid, cells, len(imaged), missing
