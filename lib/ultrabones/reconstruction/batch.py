"""The reconstruction stage (notebook 06): a dataset of specimens reconstructed, the metrics, checks and figures.

The stage contract (docs/architecture.md): :data:`Params` (:class:`ReconstructionParams`), :func:`run`,
:data:`Result` (:class:`ReconstructionResult`), :func:`metrics`, :func:`check` and :func:`figures`.
:func:`run` reconstructs every specimen
(:func:`~ultrabones.reconstruction.specimen.reconstruct_specimen`: its label frames in voxel accumulators,
merged per bone and for the whole specimen, group ``all``, every cloud measured against the CT bone model),
resumable: each specimen's result is cached with ``cache.SpecimenCache``, keyed on its parameters and the
content digest of the files it reads (CT models, the derived tracking tables and labels, the calibration); it
also decides the render (open3d, falling back to matplotlib). :func:`metrics` pools the comparison grid
{CT-derived, predicted labels} x {original, optimised poses} over specimens, and :func:`check` is what the
notebook asserts.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from typing import ClassVar, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ultrabones.core.cache import SpecimenCache
from ultrabones.core.calibration_file import CALIBRATION
from ultrabones.core.dataset import discover, read_calibration
from ultrabones.core.dataset import specimen as dataset_specimen
from ultrabones.core.errors import DatasetError
from ultrabones.core.params import SectionParams
from ultrabones.reconstruction import figures as rfig
from ultrabones.reconstruction.specimen import dataset_fingerprint, reconstruct_specimen, skipped_result
from ultrabones.reconstruction.record_points import read_record_bones
from ultrabones.reconstruction.surface import ALL, HIST_BIN_MM, cell_name, histogram_quantile

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


Params = ReconstructionParams


# ----------------------------------------------------------------------------- a dataset


@dataclass(frozen=True)
class ReconstructionResult:
    """What stage 06 computed over a dataset.

    Attributes
    ----------
    specimens : one JSON-able dict per specimen (:func:`reconstruct_specimen`, as cached), skipped ones included
        with their reason.
    pending : specimens with no result yet (``only`` was set and they are not in the cache).
    params : the parameters of the run.
    seconds : wall time of the reconstruction in :func:`run` (s; the render not included).
    on_twin : the run's input is the digital twin's dataset (:func:`check` then judges the optimised poses).
    render : the example render (:func:`~ultrabones.reconstruction.figures.example_render`), or None when no
        point cloud was written.
    """

    specimens: tuple[dict, ...]
    pending: tuple[str, ...]
    params: ReconstructionParams
    seconds: float
    on_twin: bool = False
    render: rfig.ExampleRender | None = None

    def table(self) -> pd.DataFrame:
        """:func:`results_table` of the specimens."""
        return results_table(self.specimens)


Result = ReconstructionResult


def run(
    paths,
    params: ReconstructionParams,
    *,
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
    labelled frame, or a :class:`DatasetError` such as a missing CT model or a broken tracking table), and the
    example render (``params.render``: open3d offscreen here, where it works; else matplotlib in :func:`figures`).

    Raises
    ------
    DatasetError
        If ``only`` is not one of the specimens.
    """
    from tqdm import tqdm

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
            results.append(skipped_result(sid, str(exc)))
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
            result = skipped_result(sid, str(exc))
        else:
            cache.put(sid, key, result)
        if result["skipped"]:
            warnings.warn(f"reconstruction: specimen {sid} skipped: {result['skipped']}", stacklevel=2)
        results.append(result)
    seconds = time.perf_counter() - t0
    render = rfig.example_render(results, params.pose_methods, paths.dataset, backend=params.render)
    return ReconstructionResult(tuple(results), tuple(pending), params, seconds, paths.is_twin, render)


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


def pooled_grid(result: ReconstructionResult, reference: Mapping | None = None) -> dict[str, dict]:
    """The comparison grid pooled over specimens (:func:`aggregate`), per cell ``<source>_<poses>``, with the
    reference's keys (``reference["grid"]``, see :func:`metrics`) merged in: the ``grid`` of :func:`metrics`."""
    summary = aggregate(result.specimens, result.params.sources, result.params.pose_methods)
    grid = {cell: {k: v for k, v in vals.items() if k != "specimens"} for cell, vals in summary["grid"].items()}
    ref_grid = (reference or {}).get("grid", {})
    for cell in grid:
        grid[cell].update(ref_grid.get(cell, {}))
    return grid


def metrics(result: ReconstructionResult, reference: Mapping | None = None) -> dict:
    """The metrics of notebook 06 (``build/<profile>/metrics/06_reconstruction.json``).

    Parameters
    ----------
    result : the stage's result (:func:`run`).
    reference : measurements against an independent reference surface, e.g.
        :func:`ultrabones.twin.measure.reconstruction_vs_truth` on the twin:
        ``{"grid": {cell: {key: value}}, "per_specimen": {specimen: {cell: {...}}}, ...}``;
        its keys are merged into ``grid`` and ``per_specimen``, the rest is kept under ``vs_truth``.

    Returns
    -------
    dict: ``grid`` (per cell ``<source>_<poses>``: the CT-model keys :data:`CT_MODEL_KEYS` in mm (coverage a
    share), counts, and the reference's keys), ``self_consistency_vs_ct_model`` (the CT-model keys per cell
    with :data:`SELF_CONSISTENCY_NOTE`), ``optimized_lower_mean`` (per source: the optimised poses' mean
    distance below the original ones', against the reference where given, else against the CT model), the
    counts of :func:`aggregate`, ``pending``, ``per_specimen``, ``vs_truth``, ``render`` (the renderer of the
    example: ``open3d``, ``matplotlib (why)``, or ``none`` without a point cloud), ``seconds`` (wall time of the
    reconstruction).
    """
    summary = aggregate(result.specimens, result.params.sources, result.params.pose_methods)
    table = results_table(result.specimens)
    grid = pooled_grid(result, reference)
    ref_grid = (reference or {}).get("grid", {})
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
        "render": result.render.used if result.render is not None else "none",
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


def check(result: ReconstructionResult, reference: Mapping | None = None) -> None:
    """What notebook 06 asserts: some specimen was reconstructed; every measured cell is sane (:func:`check_grid`,
    on :func:`metrics` with the reference's keys); on the twin, the optimised poses bring the CT-derived labels'
    reconstruction closer than the original ones to the *true* surface (``reference``:
    :func:`ultrabones.twin.measure.reconstruction_vs_truth`), or to the CT model where nothing was measured.

    Raises
    ------
    AssertionError
        Naming what failed.
    """
    m = metrics(result, reference)
    if not m["n_specimens"]:
        raise AssertionError(f"no specimen reconstructed (skipped: {m['skipped']})")
    check_grid(m["grid"])
    lower = m["optimized_lower_mean"]
    if result.on_twin and "labels" in lower and not lower["labels"]:
        raise AssertionError(f"the optimised poses do not bring the CT-derived labels closer to the "
                             f"{m['optimized_lower_against']} than the original ones: "
                             f"{m['grid']['labels_optimized']} vs {m['grid']['labels_original']}")


# ----------------------------------------------------------------------------- figures

def figures(result: ReconstructionResult) -> dict:
    """Notebook 06's figures of its result (the twin's grid against the true surface is drawn in its own cell).

    ``fig_reconstruction_grid``: the grid per specimen and bone against the CT model (mean distance);
    ``fig_reconstruction_distance``: the distance histograms pooled over specimens; ``fig_reconstruction_render``:
    one specimen's reconstructions over its CT model (:attr:`ReconstructionResult.render`; left out when no point
    cloud was written).
    """
    out = {"fig_reconstruction_grid": rfig.plot_grid(result.table(), "mean_mm"),
           "fig_reconstruction_distance": rfig.plot_histograms(result.specimens)}
    if result.render is not None:
        out["fig_reconstruction_render"] = rfig.draw_example(result.render)
    return out
