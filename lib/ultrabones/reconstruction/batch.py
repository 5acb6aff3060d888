"""The reconstruction stage (notebook 06): one specimen, a dataset of them, the metrics and their checks.

:func:`reconstruct_specimen` streams a specimen's label frames into voxel
accumulators per record, merges them per bone and for the whole specimen
(group ``all``), and measures every cloud against the CT bone model
(definitions in :mod:`ultrabones.reconstruction.surface`). :func:`run` does
that over a dataset, resumable: each specimen's result is cached with
``cache.SpecimenCache``, keyed on its parameters and the content digest of the
files it reads (CT models, the derived tracking tables and labels, the
calibration). It returns a :class:`ReconstructionResult`; :func:`metrics`
pools the comparison grid {CT-derived, predicted labels} x {original,
optimised poses} over specimens, and :func:`check` is what the notebook
asserts. The parameters arrive as one :class:`ReconstructionParams`.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ultrabones.core.calibration_file import CALIBRATION
from ultrabones.core.dataset import LABELS, LABELS_PRED, Specimen, read_mesh
from ultrabones.core.errors import DatasetError
from ultrabones.core.mesh import SurfaceDistance
from ultrabones.core.params import SectionParams
from ultrabones.reconstruction.point_clouds import write_ply
from ultrabones.reconstruction.record_points import read_record_bones, reconstruct_record, record_frames
from ultrabones.reconstruction.surface import (ALL, HIST_BIN_MM, SOURCES, SurfaceSamples, VoxelAccumulator,
                                               backward_distances, cell_name, distance_histogram,
                                               distance_summary, histogram_quantile, sample_surface,
                                               visible_surface)

#: Notebook stem of the stage, and its section of the profile.
STEM = "06_reconstruction"
SECTION = "reconstruction"


@dataclass(frozen=True)
class ReconstructionParams(SectionParams):
    """The ``reconstruction`` section of a profile, validated (:data:`ultrabones.core.schema.SCHEMA`).

    Attributes
    ----------
    sources : label sources of the grid (``labels``: CT-derived ``Labels/``; ``predicted``: ``Labels_pred/``).
    pose_methods : poses of the grid (``original``: recorded; ``optimized``).
    voxel_mm : voxel edge of the point-cloud downsampling (mm).
    frame_step : every n-th labelled frame is used.
    surface_sample_mm : spacing of the CT surface samples for coverage and Chamfer (mm).
    visibility_gamma_mm : a surface sample within this of an image plane is swept (mm).
    max_incidence_deg : largest incidence angle of a visible surface sample (degrees).
    coverage_mm : a visible sample within this of the reconstruction is covered (mm).
    save_ply : write the point clouds as PLY files.
    render : renderer of the 3D figure (``open3d``, falling back to ``matplotlib``).

    Validation on construction, :meth:`from_section`, :meth:`for_specimen` and :meth:`as_dict` come from
    :class:`~ultrabones.core.params.SectionParams`.
    """

    SECTION: ClassVar[str] = SECTION

    sources: tuple[str, ...]
    pose_methods: tuple[str, ...]
    voxel_mm: float
    frame_step: int
    surface_sample_mm: float
    visibility_gamma_mm: float
    max_incidence_deg: float
    coverage_mm: float
    save_ply: bool
    render: str


# ----------------------------------------------------------------------------- one specimen


def reconstruct_specimen(
    specimen: Specimen,
    params: ReconstructionParams,
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
    params : the stage's parameters (``render`` is not used here).
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


# ----------------------------------------------------------------------------- a dataset


def dataset_fingerprint(specimen: Specimen, calibration_file: Path | None = None) -> dict:
    """Content digests of what a specimen's reconstruction reads, for the cache key.

    The CT models, each record's tracking table with the optimised poses
    (:attr:`Record.poses_csv`, in the derived dataset), every label PNG of
    ``Labels/`` and ``Labels_pred/`` (names and bytes) and the calibration
    file: when an earlier stage changes any of them, the cached result is stale
    (:func:`ultrabones.core.cache.files_digest`; unchanged files are not re-read).
    """
    from ultrabones.core.cache import file_digest, files_digest

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


def _skipped(specimen: str, reason: str) -> dict:
    """The result of a specimen that could not be reconstructed."""
    return {"specimen": specimen, "skipped": reason, "rows": [], "groups": {}, "notes": [], "bad_frames": [],
            "n_label_points": 0, "n_queries": 0, "query_seconds": 0.0, "ply": {}}


@dataclass(frozen=True)
class ReconstructionResult:
    """What stage 06 computed over a dataset.

    Attributes
    ----------
    specimens : one JSON-able dict per specimen (:func:`reconstruct_specimen`, as cached), skipped ones included
        with their reason.
    pending : specimens with no result yet (``only`` was set and they are not in the cache).
    params : the parameters of the run.
    seconds : wall time of :func:`run` (s).
    """

    specimens: tuple[dict, ...]
    pending: tuple[str, ...]
    params: ReconstructionParams
    seconds: float

    def table(self) -> pd.DataFrame:
        """:func:`results_table` of the specimens."""
        return results_table(self.specimens)


def run(
    paths,
    params: ReconstructionParams,
    specimens: Sequence[str] | None = None,
    only: str | None = None,
    specimen_overrides: Mapping | None = None,
    seed: int = 0,
    progress: bool = True,
) -> ReconstructionResult:
    """Run :func:`reconstruct_specimen` over a dataset, resumable through ``cache.SpecimenCache``.

    Parameters
    ----------
    paths : the run's :class:`~ultrabones.core.paths.Paths`.
    params : the stage's parameters.
    specimens : specimen folder names of the run (default: every specimen of ``paths.dataset``).
    only : process only this specimen (always recomputed); the others are
        read from the cache, and those not there yet are returned as pending.
    specimen_overrides : per-specimen section overrides (:meth:`ReconstructionParams.for_specimen`).
    seed : the run's seed (surface sampling).
    progress : progress bars.

    Returns
    -------
    :class:`ReconstructionResult`: a result per specimen (skipped ones included, with their reason: no
    labelled frame, or a :class:`DatasetError` such as a missing CT model or a broken tracking table).

    Raises
    ------
    DatasetError
        If ``only`` is not one of the specimens.
    """
    from tqdm import tqdm

    from ultrabones.core.cache import SpecimenCache
    from ultrabones.core.dataset import discover, read_calibration
    from ultrabones.core.dataset import specimen as dataset_specimen

    t0 = time.perf_counter()
    specimens = list(specimens) if specimens is not None else [s.name for s in discover(paths.dataset)]
    if only is not None and only not in specimens:
        raise DatasetError(f"specimen {only!r} is not one of the run's specimens {specimens}")
    cache = SpecimenCache(paths, STEM)
    calib, spacing, _ = read_calibration(paths.dataset)
    results, pending = [], []
    for sid in tqdm(specimens, desc="reconstruction", disable=not progress):
        try:
            spec = dataset_specimen(paths.dataset, sid, paths.derived)
        except DatasetError as exc:
            results.append(_skipped(sid, str(exc)))
            continue
        p = params.for_specimen(specimen_overrides, sid)
        key = {"params": dataclasses.asdict(p), "seed": seed, "dataset": str(paths.dataset),
               "derived": str(paths.derived), "inputs": dataset_fingerprint(spec, paths.dataset / CALIBRATION)}
        cached = cache.get(sid, key) if sid != only else None
        if cached is not None:
            results.append(cached)
            continue
        if only is not None and sid != only:
            pending.append(sid)
            continue
        try:
            bones = read_record_bones(paths.raw / sid if paths.is_twin else None, spec)
            result = reconstruct_specimen(spec, p, calib, spacing, bones, out_dir=paths.cache(STEM) / "point_clouds",
                                          seed=seed, progress=progress)
        except DatasetError as exc:  # a broken input file: report, skip, do not cache
            result = _skipped(sid, str(exc))
        else:
            cache.put(sid, key, result)
        if result["skipped"]:
            warnings.warn(f"reconstruction: specimen {sid} skipped: {result['skipped']}", stacklevel=2)
        results.append(result)
    return ReconstructionResult(tuple(results), tuple(pending), params, time.perf_counter() - t0)


def report(result: ReconstructionResult) -> str:
    """What a reader should know of a run, one line each: skipped and pending specimens, notes."""
    lines = [f"skipped: {r['specimen']} - {r['skipped']}" for r in result.specimens if r.get("skipped")]
    if result.pending:
        lines.append(f"not yet reconstructed (run without `specimen`): {', '.join(result.pending)}")
    lines += [f"{r['specimen']}: {note}" for r in result.specimens for note in r.get("notes", [])]
    return "\n".join(lines) or "every specimen reconstructed, nothing to note"


# ----------------------------------------------------------------------------- metrics


def results_table(results: Iterable[Mapping]) -> pd.DataFrame:
    """One row per specimen x source x pose method x group (skipped specimens left out)."""
    cols = ["specimen", "source", "poses", "group", "n_frames", "n_label_points", "n_points", "mean_mm",
            "median_mm", "p95_mm", "chamfer_mm", "coverage", "n_visible"]
    rows = [{"specimen": r["specimen"], **row} for r in results if not r.get("skipped") for row in r["rows"]]
    return pd.DataFrame(rows).reindex(columns=cols)


def aggregate(results: Iterable[Mapping], sources: Sequence[str], methods: Sequence[str]) -> dict:
    """Metrics of the comparison grid pooled over specimens (group :data:`ALL`).

    ``mean_mm`` is the mean over every reconstruction point of every specimen;
    ``median_mm`` and ``p95_mm`` come from the pooled histogram (within
    0.005 mm); ``coverage`` is covered over visible samples, pooled;
    ``chamfer_mm`` pools both terms. A cell without data has null values and
    ``n_specimens`` 0.
    """
    results = list(results)
    done = [r for r in results if not r.get("skipped")]
    cells = {}
    for s in sources:
        for m in methods:
            rows = [row for r in done for row in r["rows"] if row["source"] == s and row["poses"] == m
                    and row["group"] == ALL]
            n = sum(row["n_points"] for row in rows)
            nv = sum(row["n_visible"] for row in rows)
            hist = np.sum([row["hist"] for row in rows], axis=0) if rows else np.zeros(1)
            cell = {
                "n_specimens": len(rows),
                "specimens": [r["specimen"] for r in done for row in r["rows"]
                              if row["source"] == s and row["poses"] == m and row["group"] == ALL],
                "n_points": int(n),
                "n_label_points": int(sum(row["n_label_points"] for row in rows)),
                "mean_mm": sum(row["sum_mm"] for row in rows) / n if n else None,
                "median_mm": histogram_quantile(hist, 0.5) if n else None,
                "p95_mm": histogram_quantile(hist, 0.95) if n else None,
                "coverage": sum(row["n_covered"] for row in rows) / nv if nv else None,
                "chamfer_mm": (0.5 * (sum(row["sum_mm"] for row in rows) / n + sum(row["sum_back_mm"] for row in rows)
                                      / nv) if n and nv else None),
            }
            cells[cell_name(s, m)] = cell
    n_queries = sum(r.get("n_queries", 0) for r in done)
    seconds = sum(r.get("query_seconds", 0.0) for r in done)
    return {
        "grid": cells,
        "n_specimens": len(done),
        "specimens": [r["specimen"] for r in done],
        "skipped": [{"specimen": r["specimen"], "reason": r["skipped"]} for r in results if r.get("skipped")],
        "n_points": int(sum(c["n_label_points"] for c in cells.values())),
        "n_points_reconstruction": int(sum(c["n_points"] for c in cells.values())),
        "n_distance_queries": int(n_queries),
        "points_per_second": n_queries / seconds if seconds > 0 else None,
        "bad_frames": int(sum(len(r.get("bad_frames", [])) for r in done)),
    }


#: What the grid's CT-model keys measure, written beside them in the metrics (``self_consistency_vs_ct_model``).
SELF_CONSISTENCY_NOTE = (
    "distances to the CT bone model the labels were drawn from: for the labels cells a self-consistency check "
    "(every label pixel lies within gamma of that model at the optimised pose by construction), not a result; "
    "on the twin the results are the *_true keys (against the true bone surface)")

#: The CT-model keys of a grid cell (kept in ``grid.<cell>`` for the summary and real data).
CT_MODEL_KEYS = ("mean_mm", "median_mm", "p95_mm", "chamfer_mm", "coverage")


def reference_table(per_specimen: Mapping[str, Mapping[str, Mapping]]) -> pd.DataFrame:
    """``{specimen: {cell: {key: value}}}`` as rows (``specimen``, ``source``, ``poses``, ``group`` = ``all``, keys).

    The shape of :func:`results_table`, so :func:`~ultrabones.reconstruction.figures.plot_grid` draws it;
    cells are named ``<source>_<poses>`` (:func:`~ultrabones.reconstruction.surface.cell_name`).
    """
    rows = []
    for sid, cells in per_specimen.items():
        for cell, vals in cells.items():
            src, poses_ = cell.rsplit("_", 1)
            rows.append({"specimen": sid, "source": src, "poses": poses_, "group": ALL, **vals})
    return pd.DataFrame(rows)


def metrics(result: ReconstructionResult, reference: Mapping | None = None, render: str = "none") -> dict:
    """The metrics of notebook 06 (``build/<profile>/metrics/06_reconstruction.json``).

    Parameters
    ----------
    result : the stage's result (:func:`run`).
    reference : measurements against an independent reference surface, e.g.
        :func:`ultrabones.twin.measure.reconstruction_vs_truth` on the twin:
        ``{"grid": {cell: {key: value}}, "per_specimen": {specimen: {cell: {...}}}, ...}``;
        its keys are merged into ``grid`` and ``per_specimen``, the rest is kept under ``vs_truth``.
    render : the renderer of the figure (``open3d``, ``matplotlib (why)`` or ``none``).

    Returns
    -------
    dict: ``grid`` (per cell ``<source>_<poses>``: the CT-model keys :data:`CT_MODEL_KEYS` in mm (coverage a
    share), counts, and the reference's keys), ``self_consistency_vs_ct_model`` (the CT-model keys per cell
    with :data:`SELF_CONSISTENCY_NOTE`), ``optimized_lower_mean`` (per source: the optimised poses' mean
    distance below the original ones', against the reference where given, else against the CT model), the
    counts of :func:`aggregate`, ``pending``, ``per_specimen``, ``vs_truth``, ``render``, ``seconds``
    (wall time of :func:`run`).
    """
    summary = aggregate(result.specimens, result.params.sources, result.params.pose_methods)
    table = results_table(result.specimens)
    grid = {cell: {k: v for k, v in vals.items() if k != "specimens"} for cell, vals in summary["grid"].items()}
    ref_grid = dict((reference or {}).get("grid", {}))
    for cell in grid:
        grid[cell].update(ref_grid.get(cell, {}))
    key = "mean_true_mm" if ref_grid else "mean_mm"
    lower = {}
    for src in sorted({c.rsplit("_", 1)[0] for c in grid}):
        a, b = grid.get(cell_name(src, "optimized")), grid.get(cell_name(src, "original"))
        if a and b and a.get(key) is not None and b.get(key) is not None:
            lower[src] = bool(a[key] < b[key])
    per_specimen: dict = {}
    for _, row in table[table["group"] == ALL].iterrows():
        per_specimen.setdefault(row["specimen"], {})[cell_name(row["source"], row["poses"])] = {
            k: row[k] for k in (*CT_MODEL_KEYS, "n_points")}
    for sid, cells in (reference or {}).get("per_specimen", {}).items():
        for cell, vals in cells.items():
            per_specimen.setdefault(sid, {}).setdefault(cell, {}).update(vals)
    return {
        "grid": grid,
        "self_consistency_vs_ct_model": {"note": SELF_CONSISTENCY_NOTE,
                                         "cells": {c: {k: v.get(k) for k in CT_MODEL_KEYS} for c, v in grid.items()}},
        "optimized_lower_mean": lower,
        "optimized_lower_against": "true bone surface" if ref_grid else "CT bone model",
        **{k: summary[k] for k in ("n_points", "n_points_reconstruction", "n_distance_queries", "points_per_second",
                                   "n_specimens", "specimens", "skipped", "bad_frames")},
        "pending": list(result.pending),
        "per_specimen": per_specimen,
        "vs_truth": {k: v for k, v in (reference or {}).items() if k not in ("grid", "per_specimen")} or None,
        "render": render,
        "seconds": result.seconds,
    }


#: The keys a reference measurement (the twin's truth) adds to a grid cell.
TRUE_KEYS = ("mean_true_mm", "median_true_mm", "p95_true_mm", "chamfer_true_mm", "chamfer_true_udf_crop_mm",
             "coverage_true")


def grid_table(grid: Mapping[str, Mapping], keys: Sequence[str]) -> pd.DataFrame:
    """The pooled grid as a table: one row per cell (``<source>_<poses>``), the given keys and ``n_specimens``."""
    return pd.DataFrame({cell: {k: vals.get(k) for k in (*keys, "n_specimens")} for cell, vals in grid.items()}).T


def check_grid(grid: Mapping[str, Mapping], tol_mm: float = HIST_BIN_MM) -> None:
    """Sanity of every measured cell: finite non-negative distances, median <= p95, coverages in [0, 1].

    Checks the CT-model keys of cells with ``n_specimens`` and the keys of
    :data:`TRUE_KEYS` where present and not None.

    Raises
    ------
    AssertionError
        Naming the cell and the key.
    """
    for cell, v in grid.items():
        for prefix, n in (("", v.get("n_specimens")), ("_true", v.get("n_specimens_true"))):
            mean = v.get(f"mean{prefix}_mm")
            if not n or mean is None:
                continue
            for k in (f"mean{prefix}_mm", f"median{prefix}_mm", f"p95{prefix}_mm", f"chamfer{prefix}_mm"):
                if v.get(k) is not None and not (np.isfinite(v[k]) and v[k] >= 0):
                    raise AssertionError(f"reconstruction grid {cell}: {k} = {v[k]} is not a finite distance >= 0")
            if v[f"median{prefix}_mm"] > v[f"p95{prefix}_mm"] + tol_mm:
                raise AssertionError(f"reconstruction grid {cell}: median{prefix} above p95{prefix}")
            cov = v.get("coverage" + prefix)
            if cov is not None and not 0.0 <= cov <= 1.0:
                raise AssertionError(f"reconstruction grid {cell}: coverage{prefix} = {cov} outside [0, 1]")


def check(m: Mapping, on_twin: bool) -> None:
    """What notebook 06 asserts on its metrics (:func:`metrics`).

    Some specimen was reconstructed; every measured cell is sane (:func:`check_grid`); on the twin, the optimised
    poses bring the CT-derived labels' reconstruction closer to the *true* surface than the original ones.

    Raises
    ------
    AssertionError
        Naming what failed.
    """
    if not m["n_specimens"]:
        raise AssertionError(f"no specimen reconstructed (skipped: {m['skipped']})")
    check_grid(m["grid"])
    lower = m["optimized_lower_mean"]
    if on_twin and "labels" in lower and not lower["labels"]:
        raise AssertionError(f"the optimised poses do not bring the CT-derived labels closer to the "
                             f"{m['optimized_lower_against']} than the original ones: "
                             f"{m['grid']['labels_optimized']} vs {m['grid']['labels_original']}")
