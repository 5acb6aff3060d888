"""The stage's Dask tasks: labelling a sweep's chunks of frames, warm-started in time order, and registering a sweep.

A labelling task (:func:`label_sweep`) optimises each frame of its chunks (Eq. 2 from a cold start or warm from
the frame before, the released objective, or a chunk's frames together on a torch device), draws its labels and
writes each chunk's file as soon as the chunk is done (:mod:`ultrabones.labels.chunks`); the keys that tell a
done chunk from a stale one (:func:`chunk_key`, :func:`task_key`) and the warm start carried from one chunk to
the next (:func:`carry_warm_start`) are here with it, and so is the task that registers a sweep globally
(:func:`registration_task`). The parameters arrive in the task as a :class:`~ultrabones.labels.batch.LabelingParams`.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ultrabones.core import atomic, geometry
from ultrabones.core.cache import params_hash
from ultrabones.core.errors import ParamsError
from ultrabones.labels import cloud, label, optimize, registration, released
from ultrabones.labels.chunks import empty_registration, read_chunk, write_chunk
from ultrabones.labels.inputs import read_image_or_none, task_record
from ultrabones.labels.objective import FrameObjective
from ultrabones.labels.sweep import optimize_frame_warm, solved_cold


def label_sweep(task: Mapping[str, Any]) -> dict:
    """Label one record's chunks in time order and write each chunk's result file when it is done (a Dask task).

    ``task`` holds the record folder, calibration, the registration
    correction, the cloud files, lambda, the specimen's parameters ``params``
    (:class:`~ultrabones.labels.batch.LabelingParams`), the seed, the record's image size, and
    ``chunks``: a list of ``{"timestamps", "poses", "rows", "index", "out", "key"}`` in
    time order (``rows``: tracking-table rows; ``index``: positions among the record's labelled frames;
    ``key``: the chunk's key without its warm start). With
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
    P = task["params"]
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
            write_chunk(Path(ch["out"]), key, rows, masks)
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
    P = task["params"]
    calib, spacing, points, g, rec = ctx["calib"], ctx["spacing"], ctx["points"], ctx["g"], ctx["rec"]
    dense, dense_normals = ctx["dense"], ctx["dense_normals"]
    warm = None if x0 is None else np.asarray(x0, float)
    rows, masks = [], {}
    batched = _optimize_batched(task, ctx, chunk) if task.get("torch_device") and not sweep else {}
    for ts, prm, row_no, index in zip(chunk["timestamps"], chunk["poses"], chunk["rows"], chunk["index"]):
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
            img, err = read_image_or_none(rec, ts, task.get("image_shape"))
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
            common = dict(frame_settings(P), seed=optimize.frame_seed(task["seed"], rec.key, ts), objective=obj)
            if not solved_cold(warm, age, max_gap, index, P.warm_cold_every):
                res = optimize_frame_warm(img, pose0, calib, spacing, points, task["lambda"], x0=warm,
                                          **warm_settings(P), **common)
            else:
                res = optimize.optimize_frame(img, pose0, calib, spacing, points, task["lambda"], **common)
        if res.status == "kept" and sweep:
            warm, age = np.asarray(res.x, float).copy(), 1
        else:
            age += 1
        near = label.points_near(dense, img.shape, pose0,
                                 [g @ pose0, pose0 @ geometry.perturbation(res.x[:3], res.x[3:])],
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


def frame_device(P) -> str | None:
    """The torch device on which a chunk's frames are optimised together (:func:`torch_device` of
    ``P.device``), or None for the numpy/scipy path; always None with ``optimizer: sweep`` (its local searches
    stay on numpy)."""
    return torch_device(P.device) if P.optimizer == "de" and P.objective == "eq2" else None


def frame_settings(P) -> dict[str, Any]:
    """A frame's optimiser settings from the stage's parameters ``P``, as
    :func:`~ultrabones.labels.optimize.optimize_frame` and :func:`~ultrabones.labels.sweep.optimize_frame_warm`
    take them: intersection thickness, bounds, differential evolution, validation."""
    return dict(gamma_mm=P.gamma_mm, bound_deg=P.bound_deg, bound_mm=P.bound_mm, popsize=P.popsize,
                maxiter=P.maxiter, tol=P.tol, max_correction_mm=P.max_correction_mm,
                min_label_fraction=P.min_label_fraction, halves_check=P.halves_check)


def warm_settings(P) -> dict[str, Any]:
    """The warm start's pattern-search settings from ``P``, as :func:`~ultrabones.labels.sweep.optimize_frame_warm`
    takes them (steps and resolution in degrees and mm, calls at most)."""
    return dict(step_deg=P.warm_step_deg, step_mm=P.warm_step_mm, min_step_deg=P.warm_min_step_deg,
                min_step_mm=P.warm_min_step_mm, max_calls=P.warm_max_calls)


def _frame_objective(P, ctx: Mapping, img: np.ndarray, pose: np.ndarray) -> FrameObjective:
    """Eq. 2 of one frame of a sweep task (:func:`_sweep_context`) at the recorded ``pose``, with ``P``'s settings."""
    return FrameObjective(img, pose, ctx["calib"], ctx["spacing"], ctx["points"], P.gamma_mm, P.bound_deg,
                                P.bound_mm, region=P.objective_region)


def optimize_released(P, ctx: Mapping, img: np.ndarray, prm: np.ndarray,
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
    P : the labelling parameters (:class:`~ultrabones.labels.batch.LabelingParams`); ctx : :func:`_sweep_context` (with ``released_points``).
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

    P = task["params"]
    rec = ctx["rec"]
    frames, objectives, seeds = [], [], []
    for ts, prm in zip(chunk["timestamps"], chunk["poses"]):
        t0 = time.process_time()
        prm = np.asarray(prm, float)
        if not np.isfinite(prm).all():
            continue
        img, _ = read_image_or_none(rec, ts, task.get("image_shape"))
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


def registration_task(task: Mapping[str, Any]) -> dict:
    """Register one sweep globally (a Dask task); returns the correction and its figures.

    ``task``: as :func:`label_sweep`'s, with the sweep's sampled ``timestamps`` and ``poses`` instead of chunks.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    P = task["params"]
    calib, spacing = np.asarray(task["calib"]), tuple(task["spacing"])
    points, _ = cloud.load_cloud(task["cloud"])
    rec = task_record(task)
    images, poses = [], []
    for ts, prm in zip(task["timestamps"], task["poses"]):
        prm = np.asarray(prm, float)
        if not np.isfinite(prm).all():
            continue
        img, _ = read_image_or_none(rec, ts, task.get("image_shape"))
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


#: The parameters a sweep's global registration reads (:func:`registration_task`): its cache key holds only
#: these, so that changing the frames' optimiser (warm starts, validation, stride) does not redo it.
REGISTRATION_FIELDS = ("min_echo_level", "gamma_mm", "registration_bound_deg", "registration_bound_mm", "popsize",
                       "registration_maxiter", "tol", "objective_region")


def task_key(task: Mapping[str, Any], fields: tuple[str, ...] | None = None) -> dict:
    """A task as its cache key sees it: plain data (the parameters as their section), the record folder left out
    (the images' digest in the key names the input; a moved dataset keeps its cache).

    Parameters
    ----------
    task : a task dict of the stage (its ``params`` a :class:`~ultrabones.labels.batch.LabelingParams`).
    fields : the parameters the task reads (e.g. :data:`REGISTRATION_FIELDS`); None: all of them.

    Returns
    -------
    The task without ``record_dir`` and ``recording``, its ``params`` as :func:`_params_key` gives them: what
    :func:`ultrabones.core.cache.params_hash` hashes into the keys of chunks, registrations and the lambda trials.
    """
    return {k: _params_key(v, fields) if k == "params" else v for k, v in task.items()
            if k not in ("record_dir", "recording")}


def _params_key(P, fields: tuple[str, ...] | None = None) -> dict:
    """The parameters as the cache keys see them: the section as plain data (``P.as_dict()``), or its ``fields``."""
    d = P.as_dict()
    return d if fields is None else {k: d[k] for k in fields}
