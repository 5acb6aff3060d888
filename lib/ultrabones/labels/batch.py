"""Labelling a whole dataset: lambda selection, global registration, per-frame optimisation, outputs.

The maths lives in :mod:`ultrabones.labels.optimize`, :mod:`ultrabones.labels.sweep` and :mod:`ultrabones.labels.registration`;
this module runs it over every record of a dataset (layout A or B), on Dask. The parameters
arrive as one :class:`LabelingParams` (a specimen's overrides: :meth:`LabelingParams.for_specimen`);
:func:`run` returns a :class:`LabelingResult`, and :func:`metrics` gives notebook 02's metrics.

Work units and resuming
-----------------------
A record's labelled frames (every ``frame_stride``-th row of its
``tracking.csv``) are cut into chunks of ``chunk_size``; each chunk has one
result file ``build/<profile>/cache/02_labeling/<specimen>/<record>/chunk_XXXX.npz``
written atomically (a temporary file, then a rename) as soon as the chunk is
done, holding the per-frame report and the bit-packed labels. With
``optimizer: sweep`` (default) a sweep is one Dask task (:func:`label_sweep`):
its frames run in time order, each warm-started from its predecessor's kept
correction (local pattern search; differential evolution as cold start and
fallback; the report's ``path`` says which), and sweeps run in parallel. A
chunk's warm start comes from the previous chunk's file
(:func:`carry_warm_start`). With ``optimizer: de`` every frame is solved from
scratch and each chunk is its own task. A result file carries a key hashing the
parameters, lambda, calibration, registration, package sources and the chunk's
warm start (:func:`chunk_key`); only files with the current key count as done.
The keys (of chunks, registrations and the lambda trials) include the digest of
the input images they read (:func:`ultrabones.core.cache.files_digest`): an
image replaced on disk is labelled anew. A killed run therefore restarts with
exactly the chunks whose file is missing, from the warm start the last finished
chunk left: no frame is lost, redone or written twice.

With ``optimizer: de`` and ``device`` set (``"cuda"``, ``"cpu"``, or ``"auto"`` where torch sees CUDA;
:func:`frame_device`), a chunk's frames are optimised together, differential evolution in lock step on that
torch device (:func:`ultrabones.labels.torch_objective.optimize_frames_batched`, report ``path``
``de-batched``), then labelled and written as usual. The device is part of the chunk keys; ``device: null``
(default) is the numpy/scipy path, frame by frame, and needs no torch.

Outputs
-------
The input dataset is never written. The outputs go to the derived dataset
(``Paths.derived``, layout A mirrored): per record, ``tracking.csv`` (the
input's columns plus ``*_optimized`` and ``*_registered``), ``Labels/``,
``Labels_full/`` and ``labeling_report.csv``. They are written from the chunk
files by an idempotent merge in two steps: every record's products are first
written into a new folder beside its derived folder (:func:`stage_record`);
only when all records are staged is each swapped in, by renames
(:func:`commit_record`; label folders whole, :func:`ultrabones.core.atomic.swap_dir`,
so they hold exactly the frames this run kept). A full disk or any error while
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
import io
import json
import os
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

import numpy as np
import pandas as pd

from ultrabones.core import atomic
from ultrabones.core.executor import executor
from ultrabones.core import dataset
from ultrabones.core import geometry
from ultrabones.labels import cloud, label, optimize, registration, released, select
from ultrabones.labels.objective import FrameObjective
from ultrabones.labels.sweep import optimize_frame_warm
from ultrabones.core.errors import DatasetError, ParamsError
from ultrabones.core.paths import Paths
from ultrabones.core.cache import DigestStore, file_digest, files_digest, params_hash, source_hash
from ultrabones.core.params import SectionParams

STEM = "02_labeling"
SECTION = "labeling"
STATUSES = ("kept", "discarded", "no_bone", "bad_pose", "bad_image", "no_echo")
REPORT = "labeling_report.csv"


@dataclass(frozen=True)
class LabelingParams(SectionParams):
    """The ``labeling`` section of a profile, typed and validated (units and ranges: ``params.SCHEMA["labeling"]``).

    Build it with :meth:`from_section`; a specimen's overrides give :meth:`for_specimen`. Construction, and so
    ``dataclasses.replace``, validates every value; lists become tuples. :meth:`as_dict` gives the section back
    as plain data: what the cache keys hash and the metrics' provenance records (all from
    :class:`~ultrabones.core.params.SectionParams`).
    """

    SECTION: ClassVar[str] = SECTION

    objective: str
    released_ct_samples: int
    density_per_mm2: float
    label_density_per_mm2: float
    objective_region: str
    gamma_mm: float
    bound_deg: float
    bound_mm: float
    popsize: int
    maxiter: int
    tol: float
    lambdas: tuple[float, ...]
    lambda_frames: int
    selection_rule: str
    selection_eval_region: str
    selection_offset_frames: int
    fallback_region: str
    lambda_value: float | None
    selection_inseparable: str
    max_correction_mm: float
    min_label_fraction: float
    halves_check: str | None
    incidence_max_deg: float
    frame_stride: int
    max_frames_per_record: int | None
    chunk_size: int
    optimizer: str
    warm_step_deg: float
    warm_step_mm: float
    warm_min_step_deg: float
    warm_min_step_mm: float
    warm_max_calls: int
    warm_max_gap: int
    warm_cold_every: int
    registration_frames: int
    registration_bound_deg: float
    registration_bound_mm: float
    registration_maxiter: int
    precision_tolerance_mm: float
    executor: str
    compare_objectives_frames: int
    device: str | None
    min_echo_level: float

    def __post_init__(self):
        super().__post_init__()
        if self.device == "cuda":  # stop before any work where the asked-for GPU is missing
            torch_device("cuda")


@dataclass(frozen=True)
class LabelingResult:
    """What :func:`run` labelled.

    report : one row per labelled frame of every record, whatever its status (``labeling_report.csv``).
    lam : the lambda used (1/mm).
    objective_region : the region Eq. 2 averaged (``full`` or ``first_hit``).
    selection : the truth-free choice (:func:`_select_lambda`'s dict), None when lambda was given.
    registrations : record key -> the sweep's global registration (:func:`normalize_registration`).
    calibration : (4, 4) image plane -> probe marker (mm), and the pixel spacing (mm).
    skipped_inputs : folders of the dataset that are not specimens or records (``[{"path", "reason"}]``).
    settings : what later stages need to draw labels exactly as this stage did (``gamma_mm``,
        ``label_density_per_mm2``, ``label_cloud_seed``, ...; :func:`label_settings`).
    calibration_source : the calibration file used, or the released one (:func:`dataset.calibration_source`).
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


def label_settings(P: LabelingParams, seed: int) -> dict:
    """The settings with which labels were drawn, for the stages that redraw them (03, the twin's measurement)."""
    return {"objective": P.objective, "popsize": P.popsize, "maxiter": P.maxiter, "frame_stride": P.frame_stride,
            "max_frames_per_record": P.max_frames_per_record, "gamma_mm": P.gamma_mm,
            "label_density_per_mm2": P.label_density_per_mm2, "label_cloud_seed": seed + 1}


# ----------------------------------------------------------------------------- inputs


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


def _recording(rec: dataset.Record) -> str | None:
    """A task's ``recording``: the folder of a layout-C record's ``recording.yaml``, else None."""
    return None if rec.recording is None else str(rec.recording)


def task_record(task: dict) -> dataset.Record:
    """The :class:`~ultrabones.core.dataset.Record` a task names (``specimen``, ``record``, ``record_dir``, ``recording``)."""
    rec = task.get("recording")
    return dataset.Record(task["specimen"], task["record"], Path(task["record_dir"]),
                          recording=None if rec is None else Path(rec))


def _read_image_or_none(rec: dataset.Record, ts: int, shape: tuple[int, int] | None = None):
    """``(image, None)``, or ``(None, message)`` for a missing, unreadable or wrongly sized image.

    Parameters
    ----------
    rec, ts : the record and the frame's timestamp (ms).
    shape : the record's (H, W) (:func:`record_image_shape`); an image of
        another size is refused with its file named, so that one odd frame
        is reported as ``bad_image`` instead of breaking its chunk.
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


# ----------------------------------------------------------------------------- measuring on the twin


# ----------------------------------------------------------------------------- tasks


def label_sweep(task: Mapping[str, Any]) -> dict:
    """Label one record's chunks in time order and write each chunk's result file when it is done (a Dask task).

    ``task`` holds the record folder, calibration, the registration
    correction, the cloud files, lambda, the specimen's parameters ``params``
    (:class:`LabelingParams`), the seed, the record's image size, and
    ``chunks``: a list of ``{"timestamps", "poses", "rows", "out", "key"}`` in
    time order (``key``: the chunk's key without its warm start). With
    ``params.optimizer == "sweep"`` each frame starts (:func:`ultrabones.labels.sweep.optimize_frame_warm`)
    from the correction of the last kept frame when that one lies at most
    ``warm_max_gap`` labelled frames before it, else it is solved cold by
    differential evolution (as :func:`ultrabones.labels.sweep.optimize_sweep`);
    a chunk's warm start is carried from the previous chunk's result file
    (:func:`carry_warm_start`) and is part of its key (:func:`chunk_key`), so
    a chunk whose file exists with that key is read, not redone. With
    ``"de"`` every frame is solved from scratch (no carry); with ``task["torch_device"]`` (:func:`frame_device`)
    a chunk's frames are optimised together on that torch device (:func:`_optimize_batched`).

    ``task["max_new_chunks"]`` (optional) stops after labelling that many
    chunks (the kill-and-resume tests).

    Returns
    -------
    dict with ``files`` [(path, key)] of the chunks done so far, in order,
    ``n_new`` (chunks labelled by this call), ``n_frames_new`` (their frames) and ``complete``.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    P: LabelingParams = task["params"]
    sweep = P.optimizer == "sweep"
    max_gap = P.warm_max_gap
    limit = task.get("max_new_chunks")
    x0, age = None, 0
    files, n_new, n_frames, ctx = [], 0, 0, None
    for ch in task["chunks"]:
        key = chunk_key(ch["key"], x0, age)
        done = read_chunk(ch["out"], key, labels=False)
        if done is None:
            if limit is not None and n_new >= limit:
                return {"files": files, "n_new": n_new, "n_frames_new": n_frames, "complete": False}
            if ctx is None:
                ctx = _sweep_context(task)
            rows, masks = _label_frames(task, ctx, ch, x0 if sweep else None, age, max_gap, sweep)
            _write_chunk(Path(ch["out"]), key, rows, masks)
            n_new += 1
            n_frames += len(rows)
        else:
            rows = done["report"]
        files.append((ch["out"], key))
        if sweep:
            x0, age = carry_warm_start(rows, x0, age, max_gap)
    return {"files": files, "n_new": n_new, "n_frames_new": n_frames, "complete": True}


def chunk_key(base_key: str, x0, age: int) -> str:
    """A chunk's key: its key without the warm start (parameters, inputs, sources) and the warm start it began from."""
    return params_hash({"chunk": base_key, "x0": None if x0 is None else [float(v) for v in x0],
                        "x0_age": int(age) if x0 is not None else 0})


def carry_warm_start(rows: list[Mapping[str, Any]], x0, age: int, max_gap: int) -> tuple[np.ndarray | None, int]:
    """The warm start after a chunk's frames: ``(x0, age)`` for the next chunk, or ``(None, 0)`` (cold).

    ``x0`` is the correction (rotation deg, translation mm) of the last kept
    frame and ``age`` the number of labelled frames from that frame to the
    next chunk's first one (1: the frame just before). Frames not kept (any
    status) break nothing but age the start; past ``max_gap`` the next frame
    is solved cold. ``x0, age`` passed in are the chunk's own start, so a
    chunk without a kept frame passes an older start on.
    """
    for k, r in enumerate(reversed(list(rows)), start=1):
        if r.get("status") == "kept":
            x = np.array([r[c] for c in _X_COLUMNS], float)
            return (x, k) if k <= max_gap else (None, 0)
    if x0 is None or age + len(rows) > max_gap:
        return None, 0
    return np.asarray(x0, float), age + len(rows)


_X_COLUMNS = ("rot_x_deg", "rot_y_deg", "rot_z_deg", "trans_x_mm", "trans_y_mm", "trans_z_mm")


def _sweep_context(task: Mapping[str, Any]) -> dict:
    """What every frame of a sweep task needs, loaded once: calibration, clouds, registration, record."""
    # Labels are drawn from a denser sampling of the same surface than the objective
    # uses, so that the drawn band is continuous (labeling.label_density_per_mm2).
    dense, dense_normals = cloud.load_cloud(task["label_cloud"])
    return {"calib": np.asarray(task["calib"]), "spacing": tuple(task["spacing"]),
            "points": cloud.load_cloud(task["cloud"])[0], "dense": dense, "dense_normals": dense_normals,
            "released_points": cloud.load_cloud(task["released_cloud"])[0] if task.get("released_cloud") else None,
            "g": np.asarray(task["registration"], float),
            "rec": task_record(task)}


def _label_frames(task, ctx, chunk, x0, age: int, max_gap: int, sweep: bool) -> tuple[list[dict], dict]:
    """Label one chunk's frames in order, warm-starting from ``x0`` (``age`` frames old); report rows and masks."""
    P: LabelingParams = task["params"]
    calib, spacing, points, g, rec = ctx["calib"], ctx["spacing"], ctx["points"], ctx["g"], ctx["rec"]
    dense, dense_normals = ctx["dense"], ctx["dense_normals"]
    warm = None if x0 is None else np.asarray(x0, float)
    rows, masks = [], {}
    batched = _optimize_batched(task, ctx, chunk) if task.get("torch_device") and not sweep else {}
    for ts, prm, row_no in zip(chunk["timestamps"], chunk["poses"], chunk["rows"]):
        t0 = time.process_time()
        row: dict[str, Any] = {"specimen": rec.specimen, "record": rec.name, "timestamp": int(ts), "message": ""}
        prm = np.asarray(prm, float)
        res = None
        if int(ts) in batched:  # optimised with the chunk's other frames; its time so far counts as the frame's
            img, res, seconds = batched[int(ts)]
            t0 -= seconds
        elif not np.isfinite(prm).all():
            row.update(status="bad_pose", message=f"{rec.tracking_source} row {row_no + 1}: pose is not finite")
        else:
            img, err = _read_image_or_none(rec, ts, task.get("image_shape"))
            if img is None:
                row.update(status="bad_image", message=err)
            elif (blank := cloud.no_echo_message(img, f"{rec.path} frame {int(ts)}" if rec.is_sequence
                                                 else rec.image_path(ts), P.min_echo_level)) is not None:
                row.update(status="no_echo", message=blank)
        if "status" in row:
            rows.append(row)
            age += 1
            continue
        pose0 = geometry.pose_from_params(prm)
        if res is None and P.objective == "released":
            res = optimize_released(P, ctx, img, prm, pose0)
        elif res is None:
            obj = _frame_objective(P, ctx, img, pose0)
            common = dict(gamma_mm=P.gamma_mm, bound_deg=P.bound_deg, bound_mm=P.bound_mm, popsize=P.popsize,
                          maxiter=P.maxiter, tol=P.tol, seed=optimize.frame_seed(task["seed"], rec.key, ts),
                          max_correction_mm=P.max_correction_mm, min_label_fraction=P.min_label_fraction,
                          objective=obj, halves_check=P.halves_check)
            every = P.warm_cold_every
            if warm is not None and age <= max_gap and not (every and row_no % every == 0):
                res = optimize_frame_warm(
                    img, pose0, calib, spacing, points, task["lambda"], x0=warm, step_deg=P.warm_step_deg,
                    step_mm=P.warm_step_mm, min_step_deg=P.warm_min_step_deg, min_step_mm=P.warm_min_step_mm,
                    max_calls=P.warm_max_calls, **common)
            else:
                res = optimize.optimize_frame(img, pose0, calib, spacing, points, task["lambda"], **common)
        if res.status == "kept" and sweep:
            warm, age = np.asarray(res.x, float).copy(), 1
        else:
            age += 1
        near = points_near(dense, img.shape, pose0, [g @ pose0, pose0 @ geometry.perturbation(res.x[:3], res.x[3:])],
                            calib, spacing, P.gamma_mm)
        pts_d, nrm_d = dense[near], dense_normals[near]
        full_init = label.full_label(img.shape, pose0, calib, spacing, pts_d, P.gamma_mm)
        full_reg = label.full_label(img.shape, g @ pose0, calib, spacing, pts_d, P.gamma_mm)
        full_opt = vis = None
        if res.status == "kept":
            full_opt = label.full_label(img.shape, res.pose, calib, spacing, pts_d, P.gamma_mm)
            v = label.visible_label(full_opt, res.pose, calib, spacing, pts_d, nrm_d, P.gamma_mm,
                                    P.incidence_max_deg)
            vis = v.visible
            masks[int(ts)] = (full_opt, vis)
        row.update(
            status=res.status, message=res.reason, correction_mm=res.correction_mm, rot_x_deg=res.x[0], rot_y_deg=res.x[1],
            rot_z_deg=res.x[2], trans_x_mm=res.x[3], trans_y_mm=res.x[4], trans_z_mm=res.x[5],
            intensity_initial=res.intensity_initial, intensity_optimized=res.intensity_optimized,
            objective_initial=res.objective_initial, objective_optimized=res.objective_optimized,
            n_label_initial=int(full_init.sum()), n_label_optimized=int(full_opt.sum()) if full_opt is not None else 0,
            n_label_registered=int(full_reg.sum()), n_label_visible=int(vis.sum()) if vis is not None else 0,
            has_initial=bool(full_init.any()), has_registered=bool(full_reg.any()),
            has_optimized=bool(full_opt is not None and full_opt.any()),
            generations=res.nfev, n_members=res.n_members, path=res.path, seconds_optimize=res.seconds,
            gain_left=res.gain_left, gain_right=res.gain_right,
        )
        row["seconds_total"] = time.process_time() - t0
        rows.append(row)
    return rows, masks


def torch_device(device: str | None) -> str | None:
    """``labeling.device`` resolved to a torch device, or None for the numpy/scipy path (torch imported only here).

    Returns
    -------
    ``"cuda"`` or ``"cpu"``; None for ``None``, and for ``"auto"`` where torch or a CUDA device is missing.

    Raises
    ------
    ParamsError
        Naming ``labeling.device``, for ``"cuda"`` where torch sees no CUDA device, or ``"cuda"``/``"cpu"``
        where torch does not import.
    """
    if device is None:
        return None
    try:
        from ultrabones.labels import torch_objective
    except ImportError as exc:
        if device == "auto":
            return None
        raise ParamsError(f"labeling.device: {device!r} needs torch, which does not import ({exc})") from None
    return torch_objective.resolve_device(device)


def frame_device(P: LabelingParams) -> str | None:
    """The torch device on which a chunk's frames are optimised together (:func:`torch_device` of
    ``P.device``), or None for the numpy/scipy path; always None with ``optimizer: sweep`` (its local searches
    stay on numpy)."""
    return torch_device(P.device) if P.optimizer == "de" and P.objective == "eq2" else None


def _frame_objective(P: LabelingParams, ctx: Mapping, img: np.ndarray, pose: np.ndarray) -> FrameObjective:
    """Eq. 2 of one frame of a sweep task (:func:`_sweep_context`) at the recorded ``pose``, with ``P``'s settings."""
    return FrameObjective(img, pose, ctx["calib"], ctx["spacing"], ctx["points"], P.gamma_mm, P.bound_deg,
                                P.bound_mm, region=P.objective_region)


def optimize_released(P: LabelingParams, ctx: Mapping, img: np.ndarray, prm: np.ndarray,
                      pose0: np.ndarray) -> optimize.FrameResult:
    """One frame by the released objective (:mod:`ultrabones.labels.released`), validated as Eq. 2's frames are.

    A frame whose recorded image plane meets no bone (Eq. 2's intersection is empty) is ``no_bone``; one that
    upstream skips (no image point, a dim frame, no image point within 0.9 mm of ``C``) is ``discarded`` with
    the rule in its reason (``released: ...``). The correction is then validated by
    :func:`ultrabones.labels.optimize.validated_result` (``max_correction_mm``, ``min_label_fraction``,
    ``halves_check``); the report's intensities are Eq. 2's mean over ``I_t`` (in ``objective_region``), its
    objective values the released objective's (to minimise). Differential evolution as upstream runs it:
    ``popsize``, ``maxiter``, ``tol`` from ``P``, polishing on, seed 0.

    Parameters
    ----------
    P : the labelling parameters; ctx : :func:`_sweep_context` (with ``released_points``).
    img : (H, W) uint8 image; prm : (6,) the recorded tracking parameters (mm, degrees); pose0 : their pose.
    """
    t0 = time.process_time()
    obj = _frame_objective(P, ctx, img, pose0)
    i0, n0 = obj.intensity(np.zeros((6, 1)))
    if obj.n_points == 0 or n0[0] == 0:
        return optimize.FrameResult("no_bone", seconds=time.process_time() - t0, path="released")
    fr = released.prepare_frame(img, prm, ctx["calib"], ctx["spacing"], ctx["released_points"])
    if fr.skip:
        return optimize.FrameResult("discarded", reason=fr.skip, intensity_initial=float(i0[0]), n_initial=int(n0[0]),
                                 seconds=time.process_time() - t0, path="released")
    fit = released.optimize_frame(fr, bound_deg=P.bound_deg, bound_mm=P.bound_mm, popsize=P.popsize,
                                  maxiter=P.maxiter, tol=P.tol, polish=released.UPSTREAM_DE["polish"],
                                  seed=released.UPSTREAM_DE["seed"])
    out = optimize.validated_result(obj, pose0, fit.x, 0.0, float(i0[0]), int(n0[0]), P.max_correction_mm,
                                 P.min_label_fraction, P.halves_check, nfev=fit.nfev, n_members=fit.nfev,
                                 path="released")
    out.objective_initial, out.objective_optimized = fit.score0, fit.score
    out.seconds = time.process_time() - t0
    return out


def _optimize_batched(task, ctx, chunk) -> dict[int, tuple]:
    """Optimise a chunk's frames together on ``task["torch_device"]`` (:func:`frame_device`), one batch.

    Only frames with a finite pose and a readable image of the record's size take part; the others are
    reported by :func:`_label_frames` as on the numpy path. Each frame keeps its own seed (:func:`~ultrabones.labels.optimize.frame_seed`).

    Returns
    -------
    dict timestamp -> (image, :class:`~ultrabones.labels.optimize.FrameResult` with path ``de-batched``, process
    seconds spent on the frame so far: reading, its objective, its share of the optimisation).
    """
    from ultrabones.labels import torch_objective

    P: LabelingParams = task["params"]
    rec = ctx["rec"]
    frames, objectives, seeds = [], [], []
    for ts, prm in zip(chunk["timestamps"], chunk["poses"]):
        t0 = time.process_time()
        prm = np.asarray(prm, float)
        if not np.isfinite(prm).all():
            continue
        img, _ = _read_image_or_none(rec, ts, task.get("image_shape"))
        if img is None or cloud.no_echo_message(img, "", P.min_echo_level) is not None:
            continue
        objectives.append(_frame_objective(P, ctx, img, geometry.pose_from_params(prm)))
        seeds.append(optimize.frame_seed(task["seed"], rec.key, ts))
        frames.append((int(ts), img, time.process_time() - t0))
    results = torch_objective.optimize_frames_batched(
        objectives, task["lambda"], popsize=P.popsize, maxiter=P.maxiter, tol=P.tol, seeds=seeds,
        device=task["torch_device"], bound_deg=P.bound_deg, bound_mm=P.bound_mm,
        max_correction_mm=P.max_correction_mm, min_label_fraction=P.min_label_fraction,
        halves_check=P.halves_check)
    return {ts: (img, res, before + res.seconds) for (ts, img, before), res in zip(frames, results)}


def points_near(points, shape, pose, others, calib, spacing, gamma_mm) -> np.ndarray:
    """Mask of the points that can lie within ``gamma`` of the image at ``pose`` or any of ``others``.

    A rigid motion moves the points of the image rectangle most at one of its
    corners (the displacement is convex), so the largest corner displacement
    from ``pose`` to each other pose, plus ``gamma``, bounds how far from the
    ``pose`` image a point can be and still be labelled at another pose.
    """
    h, w = shape
    sx, sy = spacing
    chain = np.asarray(pose) @ np.asarray(calib)
    ip_c = np.array([[0, 0, 0], [w * sx, 0, 0], [0, h * sy, 0], [w * sx, h * sy, 0]], float)
    ct_c = geometry.transform_points(chain, ip_c)
    reach = max([0.0] + [float(np.linalg.norm(geometry.transform_points(np.asarray(o) @ np.asarray(calib), ip_c) - ct_c,
                                              axis=1).max()) for o in others])
    index, _ = geometry.points_in_slab(geometry.invert_transform(chain), points, reach + gamma_mm + 1e-6,
                                       (w * sx, h * sy))
    near = np.zeros(len(points), bool)
    near[index] = True
    return near


def _write_chunk(path: Path, key: str, rows: list[dict], masks: dict) -> None:
    ts = np.array(sorted(masks), dtype=np.int64)
    shape = next(iter(masks.values()))[0].shape if masks else (0, 0)
    odd = [int(t) for t in ts if masks[t][0].shape != shape]
    if odd:  # label_chunk validates image sizes; this is a guard, not a path
        raise DatasetError(f"{path}: frames {odd} have labels of another size than {shape[::-1]} (W x H)")
    nbytes = (shape[0] * shape[1] + 7) // 8
    full = np.zeros((len(ts), nbytes), np.uint8)
    vis = np.zeros((len(ts), nbytes), np.uint8)
    for j, t in enumerate(ts):
        full[j], vis[j] = np.packbits(masks[t][0]), np.packbits(masks[t][1])
    buf = io.BytesIO()
    np.savez_compressed(buf, key=np.array(key), report=np.array(json.dumps(atomic.to_jsonable(rows))),
                        timestamps=ts, shape=np.array(shape), full=full, visible=vis)
    atomic.write_bytes(path, buf.getvalue())


def read_chunk(path: Path | str, key: str | None = None, labels: bool = True) -> dict | None:
    """A chunk result: ``report`` (list of dicts) and ``labels`` {timestamp: (full, visible)}.

    None when the file is missing, unreadable or made with another key.
    ``labels=False`` reads the report only (``labels`` is then None).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            if key is not None and str(z["key"]) != key:
                return None
            if not labels:
                return {"report": json.loads(str(z["report"])), "labels": None}
            shape = tuple(int(v) for v in z["shape"])
            n = shape[0] * shape[1]
            labels = {int(t): (np.unpackbits(f)[:n].reshape(shape).astype(bool),
                               np.unpackbits(v)[:n].reshape(shape).astype(bool))
                      for t, f, v in zip(z["timestamps"], z["full"], z["visible"])}
            return {"report": json.loads(str(z["report"])), "labels": labels}
    except (OSError, ValueError, KeyError, zlib.error):
        return None


def registration_task(task: Mapping[str, Any]) -> dict:
    """Register one sweep globally (a Dask task); returns the correction and its figures.

    ``task``: as :func:`label_sweep`'s, with the sweep's sampled ``timestamps`` and ``poses`` instead of chunks.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    P: LabelingParams = task["params"]
    calib, spacing = np.asarray(task["calib"]), tuple(task["spacing"])
    points, _ = cloud.load_cloud(task["cloud"])
    rec = task_record(task)
    images, poses = [], []
    for ts, prm in zip(task["timestamps"], task["poses"]):
        prm = np.asarray(prm, float)
        if not np.isfinite(prm).all():
            continue
        img, _ = _read_image_or_none(rec, ts, task.get("image_shape"))
        if img is not None and cloud.no_echo_message(img, "", P.min_echo_level) is None:
            images.append(img)
            poses.append(geometry.pose_from_params(prm))
    if not images:
        return empty_registration()
    reg = registration.register_sweep(
        images, np.array(poses), calib, spacing, points, gamma_mm=P.gamma_mm,
        bound_deg=P.registration_bound_deg, bound_mm=P.registration_bound_mm, popsize=P.popsize,
        maxiter=P.registration_maxiter, tol=P.tol, seed=optimize.frame_seed(task["seed"], rec.key, 0),
        region=P.objective_region)
    out = asdict(reg)
    out["transform"] = reg.transform.tolist()
    out["status"] = "registered"
    return atomic.to_jsonable(out)


#: Float fields of a registration result; JSON stores NaN as ``null``.
_REGISTRATION_FLOATS = ("similarity_initial", "similarity_registered", "mean_displacement_mm", "seconds")


def empty_registration() -> dict:
    """The registration result of a record with no usable frame: the identity, well-formed.

    Same keys and types as a real result, ``status`` ``"no_frames"``: the
    identity correction (``mean_displacement_mm`` 0), and NaN where nothing
    was measured (similarities, centre). A cache stores NaN as ``null``;
    :func:`normalize_registration` reads it back as NaN, so ``np.nanmean``
    over records skips such a record instead of failing on ``None``.
    """
    nan = float("nan")
    return {"transform": np.eye(4).tolist(), "x": [0.0] * 6, "centre": [nan] * 3, "similarity_initial": nan,
            "similarity_registered": nan, "n_frames": 0, "mean_displacement_mm": 0.0, "seconds": 0.0,
            "status": "no_frames"}


def normalize_registration(result: Any) -> dict | None:
    """A registration result as the rest of the stage expects it, or None if it is unusable.

    Tolerates what a cache may hold: ``null`` (or NaN) numbers become NaN
    floats, missing optional keys get defaults, an older result without
    ``status`` gets one. Returns None (recompute) when the result is not a
    mapping or its ``transform`` is not a finite 4x4 matrix.
    """
    if not isinstance(result, Mapping):
        return None
    try:
        g = np.asarray(result.get("transform"), dtype=float)
    except (TypeError, ValueError):
        return None
    if g.shape != (4, 4) or not np.isfinite(g).all():
        return None
    out = dict(empty_registration())
    out.update({k: v for k, v in result.items()})
    out["transform"] = g.tolist()
    for k in _REGISTRATION_FLOATS:
        v = out.get(k)
        try:
            out[k] = float(v) if v is not None else float("nan")
        except (TypeError, ValueError):
            out[k] = float("nan")
    for k, n in (("x", 6), ("centre", 3)):
        v = out.get(k)
        try:
            arr = np.array([np.nan if e is None else e for e in v], dtype=float) if v is not None else None
        except (TypeError, ValueError):
            arr = None
        out[k] = arr.tolist() if arr is not None and arr.shape == (n,) else [float("nan")] * n
    try:
        out["n_frames"] = int(out.get("n_frames") or 0)
    except (TypeError, ValueError):
        out["n_frames"] = 0
    if result.get("status") not in ("registered", "no_frames"):
        out["status"] = "registered" if out["n_frames"] else "no_frames"
    return out


def read_registration(path: Path | str, key: str) -> dict | None:
    """A cached ``registration.json`` made with ``key``, normalised; None when missing, stale or unusable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, Mapping) or data.get("key") != key:
        return None
    return normalize_registration(data.get("result"))


# ----------------------------------------------------------------------------- lambda selection


# ----------------------------------------------------------------------------- the whole dataset


def record_tracking(rec: dataset.Record) -> pd.DataFrame:
    """A record's tracking table (rows without a pose kept, so that row numbers are the recording's)."""
    return rec.read_tracking(allow_missing_pose=True)


def records_to_label(specs, spec_params: Mapping[str, LabelingParams]) -> list[tuple]:
    """Every record of ``specs`` as ``(specimen, record, tracking table, rows to label)``, the rows by its
    specimen's :class:`LabelingParams` (``frame_stride``, ``max_frames_per_record``)."""
    out = []
    for s in specs:
        P = spec_params[s.name]
        for rec in s.records:
            tab = record_tracking(rec)
            out.append((s, rec, tab, selected_rows(len(tab), P.frame_stride, P.max_frames_per_record)))
    return out


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
    :class:`LabelingResult`. A record with no usable frame gets :func:`empty_registration`; the
    skipped inputs are also warned about and kept in ``report.attrs`` for :func:`summarize`.
    """
    if timer is None:
        from ultrabones.core.timings import Phases

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
                lam, region, selection = _select_lambda(paths, params, records, clouds, base, run_tasks, seed)
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
                        record_dir=str(rec.path), recording=_recording(rec), cloud=clouds[s.name], image_shape=shapes[rec.key],
                        timestamps=tab.loc[pick, "timestamp"].tolist(), poses=frame_poses(tab, pick))
            key = params_hash({"task": _task_key(task), "src": source_hash(),
                               "inputs": _images_digest(rec, task["timestamps"])})
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
            common = dict(base, params=Ps, specimen=s.name, record=rec.name, record_dir=str(rec.path), recording=_recording(rec),
                          cloud=clouds[s.name], label_cloud=label_clouds[s.name], image_shape=shapes[rec.key],
                          registration=regs[rec.key]["transform"], torch_device=frame_device(Ps),
                          released_cloud=released_clouds.get(s.name), **{"lambda": lam})
            common_key = _task_key(common)
            size = Ps.chunk_size
            chunks = []
            for c0 in range(0, len(rows), size):
                part = rows[c0:c0 + size]
                ch = {"timestamps": tab.loc[part, "timestamp"].tolist(), "poses": frame_poses(tab, part),
                      "rows": part.tolist(), "out": str(cache / rec.key / f"chunk_{c0 // size:04d}.npz")}
                ch["key"] = params_hash({"task": common_key, "frames": {k: ch[k] for k in ("timestamps", "poses", "rows")},
                                         "src": source_hash(), "inputs": _images_digest(rec, ch["timestamps"])})
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
            import shutil

            for _, folder in staged:
                shutil.rmtree(folder, ignore_errors=True)
    report = pd.concat(reports, ignore_index=True) if reports else pd.DataFrame(columns=["status"])
    report.attrs["skipped_inputs"] = dataset.skipped_inputs(skipped)
    return LabelingResult(report=report, lam=lam, objective_region=region, selection=selection,
                          registrations=regs, calibration=(calib, spacing),
                          skipped_inputs=dataset.skipped_inputs(skipped), settings=label_settings(params, seed),
                          calibration_source=dataset.calibration_source(paths.dataset))


def _task_key(task: Mapping[str, Any]) -> dict:
    """A task as its cache key sees it: plain data (the parameters as their section), the record folder left out
    (the images' digest in the key names the input; a moved dataset keeps its cache)."""
    return {k: _params_key(v) if k == "params" else v for k, v in task.items() if k not in ("record_dir", "recording")}


#: Keys of the section that change no label (a report made after labelling): left out of the cache keys.
_NOT_IN_KEYS = ("compare_objectives_frames",)


def _params_key(P: LabelingParams) -> dict:
    """The parameters as the cache keys see them: the section less :data:`_NOT_IN_KEYS`."""
    return {k: v for k, v in P.as_dict().items() if k not in _NOT_IN_KEYS}


def _selection_tasks(P: LabelingParams, records, clouds, base, seed) -> list[dict]:
    """The truth-free selection's tasks: sampled frames (with held-out neighbours for the temporal rule)."""
    rule = P.selection_rule
    k = P.selection_offset_frames if rule == "temporal" else 0
    cols = list(geometry.POSE_COLUMNS)
    finite = [np.isfinite(tab[cols].to_numpy(float)).all(axis=1) for _, _, tab, _ in records]
    pick = select.sample_frames([len(tab) for _, _, tab, _ in records], [rows for *_, rows in records],
                                finite, P.lambda_frames, k, seed)
    regions = list(select.REGIONS) if P.objective_region == "auto" else [P.objective_region]
    tasks = []
    for i, r, nbs in pick:
        s, rec, tab, _ = records[i]
        tasks.append(dict(base, specimen=s.name, record=rec.name, record_dir=str(rec.path), recording=_recording(rec), cloud=clouds[s.name],
                          timestamp=int(tab.loc[r, "timestamp"]), pose=tab.loc[r, cols].to_numpy(float).tolist(),
                          neighbours=[(int(tab.loc[q, "timestamp"]), tab.loc[q, cols].to_numpy(float).tolist())
                                      for q in nbs],
                          lambdas=list(P.lambdas), regions=regions, split=rule == "split",
                          eval_regions=[P.selection_eval_region]))
    return tasks


#: Added to the master seed to draw the frames of :func:`heldout_fit_tasks` (not the selection's draw).
HELDOUT_SEED_OFFSET = 104729


def heldout_fit_tasks(paths: Paths, params: LabelingParams, *, seed: int = 0, n_frames: int = 96,
                      specimens: list[str] | None = None) -> list[dict]:
    """Fit tasks for every candidate (lambda, region) on frames the lambda selection did not see.

    For measuring a choice of lambda after the fact (on the twin: the oracle over more frames than the
    selection's; ``ultrabones.twin.measure.heldout_lambda_oracle``). The frames are drawn like the
    selection's (:func:`ultrabones.labels.select.sample_frames`) with the seed ``seed +``
    :data:`HELDOUT_SEED_OFFSET`, and the selection's own frames are left out. Each task is a
    :func:`ultrabones.labels.select.selection_task` with the full fits only (no split, no neighbours), so
    each candidate's fit is Eq. 2 on the whole frame, validated as the labelling validates it.

    Parameters
    ----------
    paths, params, seed, specimens : as for :func:`run` (the selection is drawn from ``params`` and ``seed``).
    n_frames : frames to draw (fewer when fewer qualify).

    Returns
    -------
    list of task dicts, sorted by record and row.
    """
    specs, _ = dataset.scan(paths.dataset, specimens, derived=paths.derived)
    calib, spacing, _ = dataset.read_calibration(paths.dataset)
    base = {"calib": calib.tolist(), "spacing": list(spacing), "params": params, "seed": seed}
    clouds = {s.name: str(surface_cloud(paths, s, params.density_per_mm2, seed)) for s in specs}
    records = records_to_label(specs, {s.name: params for s in specs})
    seen = {(t["record_dir"], t["timestamp"]) for t in _selection_tasks(params, records, clouds, base, seed)}
    wide = dataclasses.replace(params, lambda_frames=n_frames + len(seen))
    tasks = [t for t in _selection_tasks(wide, records, clouds, base, seed + HELDOUT_SEED_OFFSET)
             if (t["record_dir"], t["timestamp"]) not in seen]
    if len(tasks) > n_frames:  # the draw's surplus, dropped at random (not by record order)
        keep = np.random.default_rng(seed + HELDOUT_SEED_OFFSET).choice(len(tasks), n_frames, replace=False)
        tasks = [tasks[i] for i in sorted(keep)]
    return [dict(t, split=False, neighbours=[], eval_regions=[]) for t in tasks]


def _select_lambda(paths, P: LabelingParams, records, clouds, base, run_tasks, seed) -> tuple[float, str, dict]:
    """Choose lambda (and the region when ``objective_region`` is ``auto``) by held-out cross-validation, cached.

    Reads images, poses and the CT model only (:mod:`ultrabones.labels.select`). The trials are kept in
    the result so that, on the twin, :func:`ultrabones.twin.measure.lambda_oracle` can measure every
    candidate's delivered labels against the truth for the report; that never changes this decision.

    Returns
    -------
    lambda, region, and the selection dict: ``by`` (the rule in words), ``rule``, ``chosen``
    (lambda), ``region``, ``n_frames``, ``seconds_per_fit``, ``table`` (DataFrame: score per
    (region, lambda)) and ``trials`` (DataFrame: one row per frame and candidate, with the
    correction ``x`` each fit found).
    """
    tasks = _selection_tasks(P, records, clouds, base, seed)
    key = params_hash({"tasks": [_task_key(t) for t in tasks],
                       "src": source_hash(),
                       "inputs": [_images_digest(task_record(t),
                                                 [t["timestamp"]] + [n[0] for n in t["neighbours"]]) for t in tasks]})
    f = paths.cache(STEM) / "lambda_selection.json"
    rows = None
    if f.is_file():
        try:
            data = json.loads(f.read_text())
            rows = data["rows"] if data.get("key") == key else None
        except (OSError, ValueError, KeyError, TypeError):
            rows = None
    if rows is None:
        rows = [r for out in run_tasks(select.selection_task, tasks, "lambda") for r in out]
        atomic.write_json(f, {"key": key, "rows": rows})
    trials = pd.DataFrame(rows)
    region0 = P.objective_region if P.objective_region != "auto" else P.fallback_region
    if trials.empty:  # nothing could be scored: no correction is the safe choice
        lam = float(max(P.lambdas))
        return lam, region0, {"by": "no frame could be scored: the largest lambda (no correction)", "rule": None,
                              "chosen": lam, "region": region0, "n_frames": 0, "table": None, "trials": None}
    eval_region, rule = P.selection_eval_region, P.selection_rule
    scores = select.score_table(trials, eval_region, rule=rule)
    select.require_a_measured_gain(scores, P.max_correction_mm, P.min_label_fraction)
    lam, region, scores = select.choose(scores)
    sep = select.separation(trials, scores, eval_region, rule)
    by = ("truth-free: held-out gain of the {e} intensity on the other half of the bone's scan lines" if rule == "split"
          else "truth-free: held-out gain of the {e} intensity on frames +-{k}")
    by = by.format(e=eval_region, k=P.selection_offset_frames)
    rule_choice = {"lambda": lam, "region": region}
    if not sep["separable"] and P.selection_inseparable == "one_se":
        # the best candidates cannot be told apart on these frames: the documented default (select.one_se_choice)
        lam, region = select.one_se_choice(scores, sep["margin_se"], P.fallback_region)
        by += "; not separable from the runner-up (margin <= its standard error): the one-standard-error default"
        scores["chosen"] = (scores["region"] == region) & np.isclose(scores["lambda"], lam, rtol=1e-12, atol=0)
    return lam, region, {"by": by, "rule": rule, "chosen": lam, "region": region,
                         "n_frames": int(trials["timestamp"].nunique()),
                         "seconds_per_fit": float(trials["seconds"].mean()), "rule_choice": rule_choice,
                         "separation": sep, "table": scores, "trials": trials}


def _images_digest(rec: dataset.Record, timestamps: Iterable[int]) -> str:
    """Digest of the image files of these frames (names and contents): the input part of a cache key."""
    return files_digest(rec.input_files(timestamps), rec.path if not rec.is_sequence else rec.path.parent)


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
    ``tracking.csv`` and ``labeling_report.csv`` are replaced together. :func:`run` stages every record
    before it commits any.
    """
    report, folder = stage_record(rec, tab, files, reg)
    try:
        commit_record(rec, folder)
    finally:
        import shutil

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
    for j, c in enumerate(dataset.OPTIMIZED_COLUMNS):
        out[c] = opt[:, j]
    for j, c in enumerate(dataset.REGISTERED_COLUMNS):
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
            (folder / dataset.LABELS_FULL / name).write_bytes(dataset.encode_png(full))
            target = rec.label_path(ts, dataset.LABELS)
            (folder / dataset.LABELS / name).write_bytes(dataset.encode_png(vis))
        target = rec.poses_csv
        dataset.write_tracking(folder / dataset.TRACKING, out)
        target = rec.out / REPORT
        atomic.write_text(folder / REPORT, report.to_csv(index=False))
    except OSError as exc:
        import errno
        import shutil

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

    ``selection`` is :func:`_select_lambda`'s dict; ``measured`` what a measurement of the trials
    against a reference added (on the twin :func:`ultrabones.twin.measure.lambda_oracle`: ``oracle``,
    ``oracle_region``, ``oracle_gap_mm``, ``true_contour_initial_mm``, ``table``, kept as ``oracle_table``
    beside the rule's own ``table`` of scores per lambda and region). Tables become dicts of lists; the
    per-trial rows are left out.
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
