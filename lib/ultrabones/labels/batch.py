"""Labelling a whole dataset: lambda selection, global registration, per-frame optimisation, outputs.

The maths lives in :mod:`ultrabones.labels.optimize`, :mod:`ultrabones.labels.sweep` and :mod:`ultrabones.labels.registration`;
this module runs it over every record of a dataset (layout A or B), on Dask: the inputs
(:mod:`ultrabones.labels.inputs`), the lambda selection (:mod:`ultrabones.labels.lambda_selection`), the
tasks (:mod:`ultrabones.labels.tasks`), their result files (:mod:`ultrabones.labels.chunks`) and the
outputs (:mod:`ultrabones.labels.records`) each have their module. The stage contract
(docs/architecture.md): the parameters arrive as one :data:`Params`
(:class:`~ultrabones.labels.labeling_params.LabelingParams`; a specimen's overrides:
:meth:`~ultrabones.labels.labeling_params.LabelingParams.for_specimen`); :func:`run` returns a :data:`Result`
(:class:`LabelingResult`); :func:`metrics` gives notebook 02's metrics, :func:`check` what must hold and
:func:`figures` its figures (Figs. 3 and 4, the lambda selection).

Work units and resuming
-----------------------
A record's labelled frames (every ``frame_stride``-th row of its
``tracking.csv``) are cut into chunks of ``chunk_size``; each chunk has one
result file ``build/<profile>/cache/02_labeling/<specimen>/<record>/chunk_XXXX.npz``
written atomically (a temporary file, then a rename) as soon as the chunk is
done, holding the per-frame report and the bit-packed labels. With
``optimizer: sweep`` (default) a sweep is one Dask task
(:func:`~ultrabones.labels.tasks.label_sweep`): its frames run in time order,
each warm-started from its predecessor's kept correction (local pattern search;
differential evolution as cold start and fallback; the report's ``path`` says
which), and sweeps run in parallel. A chunk's warm start comes from the previous
chunk's file (:func:`~ultrabones.labels.tasks.carry_warm_start`). With
``optimizer: de`` every frame is solved from scratch and each chunk is its own
task. A result file carries a key hashing the parameters, lambda, calibration,
registration, package sources and the chunk's warm start
(:func:`~ultrabones.labels.tasks.chunk_key`); only files with the current key count as done.
The keys (of chunks, registrations and the lambda trials) include the digest of
the input images they read (:func:`ultrabones.core.cache.files_digest`): an
image replaced on disk is labelled anew. A killed run therefore restarts with
exactly the chunks whose file is missing, from the warm start the last finished
chunk left: no frame is lost, redone or written twice.

With ``optimizer: de`` and ``device`` set (``"cuda"``, ``"cpu"``, or ``"auto"`` where torch sees CUDA;
:func:`~ultrabones.labels.tasks.frame_device`), a chunk's frames are optimised together, differential
evolution in lock step on that torch device
(:func:`ultrabones.labels.torch_objective.optimize_frames_batched`, report ``path``
``de-batched``), then labelled and written as usual. The device is part of the chunk keys; ``device: null``
(default) is the numpy/scipy path, frame by frame, and needs no torch.

Outputs
-------
The input dataset is never written. The outputs go to the derived dataset
(``Paths.derived``, layout A mirrored): per record, ``tracking.csv`` (the
input's columns plus ``*_optimized`` and ``*_registered``), ``Labels/``,
``Labels_full/`` and ``labeling_report.csv``. They are written from the chunk
files by an idempotent merge in two steps: every record's products are first
written into a new folder beside its derived folder
(:func:`~ultrabones.labels.records.stage_record`); only when all records are
staged is each swapped in, by renames (:func:`~ultrabones.labels.records.commit_record`;
label folders whole, :func:`ultrabones.core.atomic.swap_dir`, so they hold
exactly the frames this run kept). A full disk or any error while
staging names the file and leaves the derived dataset as the previous run left
it, never one record new beside others old.

Per-frame status in the report: ``kept``, ``discarded`` (mean fiducial
correction above ``max_correction_mm``), ``no_bone`` (no CT surface near the
image plane: marked, not an error), ``bad_pose`` (NaN pose), ``bad_image``
(missing or unreadable PNG) and ``no_echo`` (a blank image: its brightest 1% of
pixels under ``min_echo_level``, :func:`ultrabones.labels.cloud.echo_level`):
reported with the message and skipped, the rest of the record still labelled.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ultrabones.core import atomic
from ultrabones.core.executor import executor
from ultrabones.core import dataset
from ultrabones.core import geometry
from ultrabones.core.paths import Paths
from ultrabones.core.cache import DigestStore, params_hash, source_hash
from ultrabones.core.timings import Phases
from ultrabones.labels import figures as label_figures
from ultrabones.labels import select
from ultrabones.labels.chunks import empty_registration, normalize_registration, read_registration
from ultrabones.labels.inputs import (STEM, images_digest, record_image_shape, records_to_label, released_cloud,
                                      surface_cloud, task_recording)
from ultrabones.labels.labeling_params import LabelingParams
from ultrabones.labels.lambda_selection import select_lambda
from ultrabones.labels.records import chunk_report, commit_record, require_bone_in_view, stage_record
from ultrabones.labels.tasks import REGISTRATION_FIELDS, frame_device, label_sweep, registration_task, task_key

SECTION = LabelingParams.SECTION
STATUSES = ("kept", "discarded", "no_bone", "bad_pose", "bad_image", "no_echo")
#: The figures of :func:`figures` that are the paper's: saved as PDF too.
PDF_FIGURES = ("fig3_labeling_pipeline", "fig4_before_after")
#: The stage's parameters (the stage contract's name).
Params = LabelingParams


@dataclass(frozen=True)
class LabelingResult:
    """What :func:`run` labelled.

    report : one row per labelled frame of every record, whatever its status (``labeling_report.csv``).
    lam : the lambda used (1/mm).
    objective_region : the region Eq. 2 averaged (``full`` or ``first_hit``).
    selection : the truth-free choice (:func:`~ultrabones.labels.lambda_selection.select_lambda`'s dict), None
        when lambda was given.
    registrations : record key -> the sweep's global registration
        (:func:`~ultrabones.labels.chunks.normalize_registration`).
    calibration : (4, 4) image plane -> probe marker (mm), and the pixel spacing (mm).
    skipped_inputs : folders of the dataset that are not specimens or records (``[{"path", "reason"}]``).
    settings : what later stages need to draw labels exactly as this stage did (``gamma_mm``,
        ``label_density_per_mm2``, ``label_cloud_seed``, ...; :func:`label_settings`).
    calibration_source : the calibration file used, or the released one (:func:`dataset.calibration_source`).
    params, paths, seed : what :func:`run` was called with, for :func:`check` and :func:`figures` (which redraw
        frames from the dataset and the stage's cache); None for a result made by hand.
    """

    report: pd.DataFrame
    lam: float
    objective_region: str
    selection: dict | None
    registrations: dict
    calibration: tuple
    skipped_inputs: list
    settings: dict
    calibration_source: str = ""
    params: LabelingParams | None = None
    paths: Paths | None = None
    seed: int = 0


#: What :func:`run` returns (the stage contract's name).
Result = LabelingResult


def label_settings(P: LabelingParams, seed: int) -> dict:
    """The settings with which labels were drawn, for the stages that redraw them (03, the twin's measurement)."""
    return {"objective": P.objective, "popsize": P.popsize, "maxiter": P.maxiter, "frame_stride": P.frame_stride,
            "max_frames_per_record": P.max_frames_per_record, "gamma_mm": P.gamma_mm,
            "label_density_per_mm2": P.label_density_per_mm2, "label_cloud_seed": seed + 1}


# ----------------------------------------------------------------------------- the whole dataset


def run(paths: Paths, params: LabelingParams, *, specimens: list[str] | None = None, seed: int = 0,
        dask_scheduler: str | None = None, n_workers: int = 1, only_specimen: str | None = None,
        specimen_overrides: Mapping[str, Mapping] | None = None, lambda_override: float | None = None,
        fail_after_chunks: int | None = None, timer=None) -> LabelingResult:
    """Label a dataset end to end; resumable.

    Parameters
    ----------
    paths : the run's paths (dataset at ``paths.dataset``). Nothing here reads the twin's truth.
    params : the stage's parameters (:meth:`LabelingParams.from_section`).
    specimens : specimen folders (None: all in the dataset).
    seed : master seed.
    dask_scheduler, n_workers : see :func:`ultrabones.core.executor.executor` (``params.executor`` picks Dask
        or synchronous).
    only_specimen : label only this specimen (``make specimen``).
    specimen_overrides : per-specimen section overrides (``params/specimens/``), applied to that specimen's
        clouds, frames and registration (:meth:`LabelingParams.for_specimen`); lambda and the objective region
        are chosen once for the dataset.
    lambda_override : use this lambda instead of ``params``' choice (tests).
    fail_after_chunks : stop with ``RuntimeError`` after this many chunks (tests of resuming).
    timer : a :class:`ultrabones.core.timings.Phases` that gets the wall and CPU time (this process and
        the Dask workers) of the phases ``inputs`` (scanning, the clouds ``C``), ``selection`` (lambda),
        ``registration``, ``frames`` (the per-frame optimisation and labels; ``frames``: those labelled
        by this call, cached chunks not counted) and ``writing`` (the derived dataset); None: not timed.

    Returns
    -------
    :class:`LabelingResult`. A record with no usable frame gets
    :func:`~ultrabones.labels.chunks.empty_registration`; the
    skipped inputs are also warned about and kept in ``report.attrs`` for :func:`summarize`.
    """
    if timer is None:
        timer = Phases()
    with timer.phase("inputs"):
        specs, skipped = dataset.scan(paths.dataset, specimens, derived=paths.derived)
        dataset.warn_skipped(paths.dataset, skipped)
        digests = DigestStore(paths.cache("digests") / f"{STEM}.json")
        if only_specimen is not None:
            specs = [s for s in specs if s.name == only_specimen]
        calib, spacing, _ = dataset.read_calibration(paths.dataset)
        cache = paths.cache(STEM)
        base = {"calib": calib.tolist(), "spacing": list(spacing), "params": params, "seed": seed}
        spec_params = {s.name: params.for_specimen(specimen_overrides, s.name) for s in specs}
        clouds = {s.name: str(surface_cloud(paths, s, spec_params[s.name].density_per_mm2, seed)) for s in specs}
        label_clouds = {s.name: str(surface_cloud(paths, s, spec_params[s.name].label_density_per_mm2, seed + 1))
                        for s in specs}
        released_clouds = {s.name: str(released_cloud(paths, s, spec_params[s.name].released_ct_samples, seed + 2))
                           for s in specs if spec_params[s.name].objective == "released"}

        records = records_to_label(specs, spec_params)  # (specimen, record, table, rows)
        # all the record's frames vote, not only the labelled ones (a record may label one frame)
        shapes = {rec.key: record_image_shape(rec, tab["timestamp"]) for _, rec, tab, _ in records}

        def frame_poses(tab, rows):
            return tab.loc[rows, list(geometry.POSE_COLUMNS)].to_numpy(float).tolist()

    with executor(params.executor, dask_scheduler, n_workers) as ex:
        run_tasks = ex.map
        clock = ex.cpu_seconds
        # 1. lambda, and the objective region when it is "auto": truth-free (ultrabones.labels.select)
        selection = None
        fixed = lambda_override if lambda_override is not None else params.lambda_value
        if params.objective == "released":  # its own weights (labels.released): no lambda to choose
            lam = float("nan") if fixed is None else float(fixed)
            region = params.fallback_region if params.objective_region == "auto" else params.objective_region
        elif fixed is not None:
            lam = float(fixed)
            region = params.fallback_region if params.objective_region == "auto" else params.objective_region
        else:
            with timer.phase("selection", clock=clock) as ph:
                lam, region, selection = select_lambda(paths, params, records, clouds, base, run_tasks, seed)
                ph["frames"] = selection["n_frames"]
        spec_params = {k: dataclasses.replace(v, objective_region=region) for k, v in spec_params.items()}
        # 2. global registration, one per record
        regs = {}
        reg_tasks, reg_keys = [], []
        for s, rec, tab, rows in records:
            ok = rows[np.isfinite(tab.loc[rows, list(geometry.POSE_COLUMNS)].to_numpy(float)).all(axis=1)]
            n_reg = min(spec_params[s.name].registration_frames, len(ok))
            pick = ok[np.unique(np.linspace(0, len(ok) - 1, n_reg).round().astype(int))] if len(ok) else ok
            task = dict(base, params=spec_params[s.name], specimen=s.name, record=rec.name,
                        record_dir=str(rec.path), recording=task_recording(rec), cloud=clouds[s.name],
                        image_shape=shapes[rec.key],
                        timestamps=tab.loc[pick, "timestamp"].tolist(), poses=frame_poses(tab, pick))
            key = params_hash({"task": task_key(task, REGISTRATION_FIELDS), "src": source_hash(),
                               "inputs": images_digest(rec, task["timestamps"])})
            f = cache / rec.key / "registration.json"
            cached = read_registration(f, key)
            if cached is not None:
                regs[rec.key] = cached
            else:
                reg_tasks.append(task)
                reg_keys.append((rec.key, f, key))
        with timer.phase("registration", frames=sum(len(t["timestamps"]) for t in reg_tasks), clock=clock):
            for (rkey, f, key), result in zip(reg_keys, run_tasks(registration_task, reg_tasks, "registration")):
                result = normalize_registration(result) or empty_registration()
                atomic.write_json(f, {"key": key, "result": result})
                regs[rkey] = result
        # 3. frames: one task per sweep (optimizer sweep: its chunks in time order, warm-started) or per chunk (de)
        frame_tasks, chunk_files = [], {}
        for s, rec, tab, rows in records:
            Ps = spec_params[s.name]
            common = dict(base, params=Ps, specimen=s.name, record=rec.name, record_dir=str(rec.path),
                          recording=task_recording(rec),
                          cloud=clouds[s.name], label_cloud=label_clouds[s.name], image_shape=shapes[rec.key],
                          registration=regs[rec.key]["transform"], torch_device=frame_device(Ps),
                          released_cloud=released_clouds.get(s.name), **{"lambda": lam})
            common_key = task_key(common)
            size = Ps.chunk_size
            chunks = []
            for c0 in range(0, len(rows), size):
                part = rows[c0:c0 + size]
                ch = {"timestamps": tab.loc[part, "timestamp"].tolist(), "poses": frame_poses(tab, part),
                      "rows": part.tolist(), "index": list(range(c0, c0 + len(part))),  # among the labelled frames
                      "out": str(cache / rec.key / f"chunk_{c0 // size:04d}.npz")}
                ch["key"] = params_hash({"task": common_key, "frames": {k: ch[k] for k in ("timestamps", "poses", "rows")},
                                         "src": source_hash(), "inputs": images_digest(rec, ch["timestamps"])})
                chunks.append(ch)
            groups = [chunks] if Ps.optimizer == "sweep" else [[c] for c in chunks]
            chunk_files[rec.key] = []
            for g in groups:
                task = dict(common, chunks=g)
                done = label_sweep(dict(task, max_new_chunks=0))  # reads the chunk files only
                if done["complete"]:
                    chunk_files[rec.key] += done["files"]
                else:
                    frame_tasks.append((rec.key, task))
        if fail_after_chunks is not None:
            left = fail_after_chunks
            for rkey, task in frame_tasks:
                if left <= 0:
                    break
                left -= run_tasks(label_sweep, [dict(task, max_new_chunks=left)], "frames")[0]["n_new"]
            raise RuntimeError(f"stopped after {fail_after_chunks} chunks (fail_after_chunks)")
        with timer.phase("frames", clock=clock) as ph:
            done = run_tasks(label_sweep, [t for _, t in frame_tasks], "frames")
            ph["frames"] = sum(r.get("n_frames_new", 0) for r in done)
        for (rkey, task), result in zip(frame_tasks, done):
            chunk_files[rkey] += result["files"]
        for s, rec, tab, rows in records:  # chunk tasks of one record may finish in any order
            chunk_files[rec.key].sort(key=lambda f: str(f[0]))
    digests.save()
    # 4. merge, record by record, into the derived dataset; the reports once every merge succeeded
    require_bone_in_view(specs, [(s.name, chunk_report(chunk_files[rec.key])) for s, rec, _, _ in records])
    # every record's products are staged first; only when all are, each record's are swapped in (renames only),
    # so that a full disk or an error leaves the derived dataset as the last run left it, never a mix
    staged: list[tuple[dataset.Record, Path]] = []
    reports = []
    with timer.phase("writing", frames=sum(len(rows) for *_, rows in records)):
        try:
            for s, rec, tab, rows in records:
                rep, folder = stage_record(rec, tab, chunk_files[rec.key], regs[rec.key], paths.derived)
                staged.append((rec, folder))
                reports.append(rep)
            for rec, folder in staged:
                commit_record(rec, folder)
        finally:
            for _, folder in staged:
                shutil.rmtree(folder, ignore_errors=True)
    report = pd.concat(reports, ignore_index=True) if reports else pd.DataFrame(columns=["status"])
    report.attrs["skipped_inputs"] = dataset.skipped_inputs(skipped)
    return LabelingResult(report=report, lam=lam, objective_region=region, selection=selection,
                          registrations=regs, calibration=(calib, spacing),
                          skipped_inputs=dataset.skipped_inputs(skipped), settings=label_settings(params, seed),
                          calibration_source=dataset.calibration_source(paths.dataset), params=params, paths=paths,
                          seed=seed)


# ----------------------------------------------------------------------------- metrics


def summarize(report: pd.DataFrame, skipped_inputs: list[dict] | None = None) -> dict:
    """The notebook's metrics from the per-frame report: what a user sees without any truth.

    ``skipped_inputs`` (unrecognised dataset folders) comes from the argument or, by default, from
    ``report.attrs`` as :func:`run` leaves it; ``skipped_frames`` lists each frame reported ``bad_image``
    or ``bad_pose`` with its message. Errors against the twin's truth are measured separately, on what
    this stage wrote (:func:`ultrabones.twin.measure.labels`).
    """
    rep = report
    if skipped_inputs is None:
        skipped_inputs = report.attrs.get("skipped_inputs", [])
    valid = rep[rep["status"].isin(["kept", "discarded"])]
    kept = rep[rep["status"] == "kept"]
    out: dict[str, Any] = {
        "n_frames": int(len(rep)),
        "status_counts": {s: int((rep["status"] == s).sum()) for s in STATUSES},
        "discard_rate": float((valid["status"] == "discarded").mean()) if len(valid) else float("nan"),
        "kept_mean_fiducial_correction_mm": float(kept["correction_mm"].mean()) if len(kept) else float("nan"),
        "discarded_for_correction": int(valid["message"].fillna("").str.startswith("mean fiducial").sum()),
        "discarded_for_shrinking": int(valid["message"].fillna("").str.startswith("label shrank").sum()),
        "discarded_for_halves": int(valid["message"].fillna("").str.startswith("the correction raises").sum()),
        # objective released: frames its preparation skips (no image point, dim, no point within 0.9 mm)
        "discarded_by_released_rules": int(valid["message"].fillna("").str.startswith("released:").sum()),
        "seconds_per_frame": float(valid["seconds_optimize"].mean()) if len(valid) else float("nan"),
        "seconds_per_frame_total": (float(valid["seconds_total"].mean()) if len(valid) and "seconds_total" in valid
                                    else float("nan")),
        # how each optimised frame was found: de (cold), warm (local search), warm+de (fallback)
        "path_share": ({str(k): float(v) for k, v in valid["path"].value_counts(normalize=True).sort_index().items()}
                       if len(valid) and "path" in valid else {}),
        "skipped_inputs": list(skipped_inputs),
    }
    bad = rep[rep["status"].isin(["bad_image", "bad_pose", "no_echo"])]
    out["skipped_frames"] = [
        {k: (int(r[k]) if k == "timestamp" else r[k]) for k in ("specimen", "record", "timestamp", "status", "message")
         if k in r.index} for _, r in bad.iterrows()]
    return out


def selection_metrics(selection: dict | None, measured: Mapping | None = None) -> dict | None:
    """The ``lambda_selection`` block of notebook 02's metrics (None when lambda was given).

    ``selection`` is :func:`~ultrabones.labels.lambda_selection.select_lambda`'s dict; ``measured`` what a
    measurement of the trials against a reference added (on the twin :func:`ultrabones.twin.measure.lambda_oracle`:
    ``oracle``, ``oracle_region``, ``oracle_gap_mm``, ``true_contour_initial_mm``, ``table``, kept as
    ``oracle_table`` beside the rule's own ``table`` of scores per lambda and region). Tables become dicts of
    lists; the per-trial rows are left out.
    """
    if selection is None:
        return None
    out = {k: v for k, v in selection.items() if k not in ("table", "trials")}
    if selection.get("table") is not None:
        out["table"] = selection["table"].to_dict(orient="list")
    for k, v in (measured or {}).items():  # the measurement's table beside the rule's, never over it
        out["oracle_table" if k == "table" else k] = v.to_dict(orient="list") if isinstance(v, pd.DataFrame) else v
    return out


def metrics(result: LabelingResult, measured_selection: Mapping | None = None) -> dict:
    """Notebook 02's metrics of a labelling, without any truth.

    :func:`summarize` of the report, ``lambda``, ``objective_region``, ``calibration`` (the file used, or
    the released one), ``lambda_selection``
    (:func:`selection_metrics`, with ``measured_selection`` beside the rule's table: on the twin
    :func:`ultrabones.twin.measure.lambda_oracle`), ``registration`` (mean over sweeps of the
    registration's fiducial displacement (mm) and its similarity before and after; ``n_sweeps``) and
    ``settings`` (:class:`LabelingResult`). The errors against the twin's truth are added by
    :func:`ultrabones.twin.measure.label_metrics`.
    """
    regs = list(result.registrations.values())

    def mean(key):
        vals = [r[key] for r in regs if r.get(key) is not None]
        return float(np.nanmean(vals)) if vals and np.isfinite(vals).any() else float("nan")

    return summarize(result.report, result.skipped_inputs) | {
        "lambda": result.lam, "objective_region": result.objective_region,
        "calibration": result.calibration_source,
        "lambda_selection": selection_metrics(result.selection, measured_selection),
        "registration": {"mean_displacement_mm": mean("mean_displacement_mm"),
                         "similarity_initial": mean("similarity_initial"),
                         "similarity_registered": mean("similarity_registered"), "n_sweeps": len(regs)},
        "settings": dict(result.settings)}


# ----------------------------------------------------------------------------- checks and figures


def check(result: LabelingResult) -> None:
    """What must hold for any labelling: every labelled frame reported once, the discard rate a share, the kept
    frames' mean correction within the validation limit (``max_correction_mm``). Bounds on the errors against
    the twin's truth belong in the tests, on several seeds.

    Raises
    ------
    AssertionError
        Naming what failed.
    """
    rep = result.report
    frame = ["specimen", "record", "timestamp"]
    if len(rep):
        twice = rep[rep.duplicated(frame, keep=False)]
        assert twice.empty, f"frames reported more than once:\n{twice[frame].drop_duplicates().head(10).to_string()}"
    m = summarize(rep, result.skipped_inputs)
    rate = m["discard_rate"]
    assert 0.0 <= rate <= 1.0, f"discard rate {rate} outside [0, 1] (no frame kept or discarded?)"
    if result.params is not None:
        limit, mean = result.params.max_correction_mm, m["kept_mean_fiducial_correction_mm"]
        assert mean <= limit + 1e-9, \
            f"kept frames' mean fiducial correction {mean:.4f} mm above max_correction_mm = {limit} mm"


def figures(result: LabelingResult, *, errors: pd.DataFrame | None = None,
            oracle_table: pd.DataFrame | None = None) -> dict:
    """Notebook 02's figures of a labelling: ``lambda_selection`` (when lambda was chosen,
    :func:`~ultrabones.labels.select.plot_scores`), ``fig3_labeling_pipeline`` and ``fig4_before_after``
    (:mod:`ultrabones.labels.figures`, redrawn from the dataset; they need ``result.paths`` and ``result.params``).

    ``errors`` and ``oracle_table``, when given, are measurements made elsewhere (on the twin
    :func:`ultrabones.twin.measure.labels` and :func:`ultrabones.twin.measure.lambda_oracle`'s ``table``): drawn
    beside the rule's scores and in Fig. 4's titles, never read otherwise. :data:`PDF_FIGURES` are the paper's.
    """
    out = {}
    if result.selection is not None:
        out["lambda_selection"] = select.plot_scores(result.selection["table"], result.lam, result.objective_region,
                                                     oracle_table)
    if result.paths is None or result.params is None:
        return out
    P, paths, seed = result.params, result.paths, result.seed
    out["fig3_labeling_pipeline"] = label_figures.fig3_pipeline(paths, result.report, P, seed)
    out["fig4_before_after"] = label_figures.fig4_before_after(paths, result.report, P, seed, errors=errors)
    return out
