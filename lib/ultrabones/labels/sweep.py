"""A sweep's frames labelled in time order, each warm-started from its predecessor (paper Section 3.1).

:func:`optimize_sweep` starts each frame from its predecessor's correction by a local search
(:func:`optimize_frame_warm`, :func:`pattern_search`), with :func:`~ultrabones.labels.optimize.optimize_frame` for
a cold start and as the fallback when the local result fails validation; :func:`warm_start_after` continues a
sweep cut in chunks.
"""

from __future__ import annotations

import inspect
import time

import numpy as np
from scipy.optimize import differential_evolution

from ultrabones.core import geometry
from ultrabones.core.errors import DatasetError
from ultrabones.labels.objective import FrameObjective
from ultrabones.labels.optimize import FrameResult, check_halves, optimize_frame, validate


def pattern_search(fun, x_start, lower, upper, step, min_step, max_calls: int = 60, n_random: int = 0,
                   seed: int = 0, f_start: float | None = None):
    """Maximise ``fun`` by a compass (coordinate pattern) search whose polls are evaluated in one batch.

    Each call evaluates the ``2 n`` points ``x +- step_i e_i`` (clipped to the
    box) together with the *combined* move (every axis moved by its better
    poll when that poll improved on ``x``), so a diagonal valley costs one call,
    not ``n``. The best improving point becomes ``x``; when none improves, the
    steps are halved. It stops when every step is below ``min_step`` or after
    ``max_calls`` calls. Deterministic (no random numbers).

    Parameters
    ----------
    fun : callable, ``(n, S)`` parameters -> ``(S,)`` values to *maximise*.
    x_start : (n,) start (clipped to the box).
    lower, upper : (n,) box.
    step : (n,) initial steps (same units as ``x``: degrees, mm).
    min_step : (n,) or float, smallest step (the search's resolution).
    max_calls : largest number of calls to ``fun`` (each a batch of ``2 n`` polls, plus the combined move).
    n_random : extra polls per call, ``x +- step * d`` along random unit directions ``d``
        (seeded by ``seed``): they follow valleys that are diagonal to the axes.
    seed : seed of those directions.
    f_start : ``fun`` at ``x_start`` when known (saves a call; ``x_start`` must lie in the box).

    Returns
    -------
    x : (n,) best point found; value : its value; calls : calls to ``fun``;
    members : points evaluated.
    """
    lower, upper = np.asarray(lower, float), np.asarray(upper, float)
    x = np.clip(np.asarray(x_start, float), lower, upper)
    step = np.asarray(step, float).copy()
    min_step = np.broadcast_to(np.asarray(min_step, float), step.shape)
    n = len(x)
    if f_start is None:
        fx = float(fun(x[:, None])[0])
        calls, members = 1, 1
    else:
        fx, calls, members = float(f_start), 0, 0
    eye = np.eye(n)
    rng = np.random.default_rng(seed)
    while calls < max_calls and (step >= min_step).any():
        polls = np.concatenate([x[:, None] + eye * step, x[:, None] - eye * step], axis=1)
        if n_random:
            d = rng.standard_normal((n, n_random))
            d = d / np.linalg.norm(d, axis=0) * step[:, None]
            polls = np.concatenate([polls, x[:, None] + d, x[:, None] - d], axis=1)
        polls = np.clip(polls, lower[:, None], upper[:, None])
        f = np.asarray(fun(polls), float)
        calls, members = calls + 1, members + polls.shape[1]
        # the combined move: per axis, the better of +/- if it improved on x
        fp, fm = f[:n], f[n:2 * n]
        gain = np.maximum(fp, fm) - fx
        move = np.where(gain > 0, np.where(fp >= fm, step, -step), 0.0)
        j = int(np.argmax(f))
        if f[j] > fx:
            best_x, best_f = polls[:, j], float(f[j])
            if (move != 0).sum() > 1 and calls < max_calls:
                xc = np.clip(x + move, lower, upper)
                fc = float(fun(xc[:, None])[0])
                calls, members = calls + 1, members + 1
                if fc > best_f:
                    best_x, best_f = xc, fc
            x, fx = best_x.copy(), best_f
        else:
            step = np.where(step >= min_step, step * 0.5, step)
    return x, fx, calls, members


def optimize_frame_warm(image, pose, calib, spacing, points, lam: float, *, x0=None, gamma_mm: float = 0.3,
                        bound_deg: float = 1.0, bound_mm: float = 1.0, step_deg: float = 0.2, step_mm: float = 0.2,
                        min_step_deg: float = 0.02, min_step_mm: float = 0.02, max_calls: int = 60,
                        max_correction_mm: float = 1.0, min_label_fraction: float = 0.0,
                        objective: FrameObjective | None = None, region: str = "full", fallback: bool = True,
                        popsize: int = 15, maxiter: int = 100, tol: float = 0.01, seed: int = 0,
                        method: str = "pattern", local_radius_deg: float = 0.3, local_radius_mm: float = 0.3,
                        local_popsize: int = 3, local_maxiter: int = 20, n_random: int = 0,
                        n_starts: int = 0, halves_check: str | None = None) -> FrameResult:
    """Refine one frame's pose by a local search of Eq. 2 from a warm start; differential evolution as fallback.

    The search starts from the better (by Eq. 2) of the warm start ``x0`` (e.g.
    the previous frame's correction: tracking and calibration errors drift
    slowly along a sweep) and no correction, and runs :func:`pattern_search`
    inside the same box as :func:`optimize_frame`. Since the unperturbed pose
    is a start candidate and the search only accepts improvements, the result
    never scores below it. The result is validated as in :func:`optimize_frame`
    (``max_correction_mm``, ``min_label_fraction``); when it fails and
    ``fallback`` is set, :func:`optimize_frame` (full differential evolution,
    ``popsize``, ``maxiter``, ``tol``, ``seed``) replaces it, and its result is
    the frame's (``path = "warm+de"``).

    Parameters
    ----------
    image, pose, calib, spacing, points, lam, gamma_mm, bound_deg, bound_mm,
    max_correction_mm, min_label_fraction, objective, region, halves_check :
        as for :func:`optimize_frame`.
    x0 : (6,) warm start, rotation (deg) and translation (mm); None: no correction.
    step_deg, step_mm : initial steps of the search (degrees, mm).
    min_step_deg, min_step_mm : its resolution (degrees, mm).
    max_calls : largest number of batched objective calls of the search.
    fallback : run differential evolution when the local result fails validation.
    popsize, maxiter, tol, seed : differential evolution settings of the fallback
        (``tol`` and ``seed`` also of the local differential evolution).
    method : the local search, ``"pattern"`` (:func:`pattern_search`, deterministic) or
        ``"local_de"`` (differential evolution in the box ``start +- local_radius``, clipped
        to the bounds, population ``local_popsize * 6``, at most ``local_maxiter`` generations).
    local_radius_deg, local_radius_mm, local_popsize, local_maxiter : settings of ``"local_de"``.
    n_random : random poll directions per call of ``"pattern"`` (see :func:`pattern_search`; seeded by ``seed``).
    n_starts : extra start candidates drawn uniformly in the box (seeded by ``seed``), evaluated in the
        same batch as the warm start and no correction; the search starts from the best of all.

    Returns
    -------
    :class:`FrameResult` with ``path`` ``"warm"`` or ``"warm+de"``; ``nfev`` counts
    the batched objective calls of both, ``n_members`` the poses evaluated.
    """
    t0 = time.process_time()
    pose = np.asarray(pose, float)
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise DatasetError("optimize_frame_warm: the pose is not a finite 4x4 matrix")
    obj = objective or FrameObjective(image, pose, calib, spacing, points, gamma_mm, bound_deg, bound_mm,
                                      region=region)
    lower = np.array([-bound_deg] * 3 + [-bound_mm] * 3, float)
    upper = -lower
    start = np.zeros(6) if x0 is None else np.clip(np.asarray(x0, float).reshape(6), lower, upper)
    if not np.isfinite(start).all():
        start = np.zeros(6)
    cand = np.stack([np.zeros(6), start], axis=1)
    if n_starts:
        extra = np.random.default_rng(seed).uniform(lower[:, None], upper[:, None], (6, n_starts))
        cand = np.concatenate([cand, extra], axis=1)
    i0, n0 = obj.intensity(cand)
    if obj.n_points == 0 or n0[0] == 0:
        return FrameResult("no_bone", seconds=time.process_time() - t0, path="warm", nfev=1, n_members=cand.shape[1])
    v = i0 - lam * obj.fiducial(cand)
    best = int(np.argmax(v))  # ties: no correction
    first = cand[:, best]
    if method == "pattern":
        x, _, calls, members = pattern_search(
            lambda p: obj.value(p, lam), first, lower, upper, [step_deg] * 3 + [step_mm] * 3,
            [min_step_deg] * 3 + [min_step_mm] * 3, max_calls=max_calls, n_random=n_random, seed=seed,
            f_start=float(v[best]))
    elif method == "local_de":
        # differential evolution in a box of half-width local_radius around the start (within the bounds)
        r = np.array([local_radius_deg] * 3 + [local_radius_mm] * 3)
        lo_b, hi_b = np.maximum(first - r, lower), np.minimum(first + r, upper)
        fx = float(v[best])
        res_l = differential_evolution(
            lambda p: -obj.value(p, lam), list(zip(lo_b, hi_b)), seed=seed, popsize=local_popsize,
            maxiter=local_maxiter, tol=tol, vectorized=True, updating="deferred", polish=False, x0=first,
            init="latinhypercube")
        x = np.asarray(res_l.x, float)
        if -float(res_l.fun) < fx:  # never worse than the start
            x = first.copy()
        calls, members = int(res_l.nfev), int(res_l.nfev) * local_popsize * 6
    else:
        raise ValueError(f"method must be 'pattern' or 'local_de', got {method!r}")
    calls, members = calls + 2, members + cand.shape[1] + 1  # the start candidates, and the validation
    corr, i1, n1, reason = validate(obj, x, int(n0[0]), max_correction_mm, min_label_fraction)
    gains = (float("nan"), float("nan"))
    if reason and fallback:
        res = optimize_frame(image, pose, calib, spacing, points, lam, gamma_mm=gamma_mm, bound_deg=bound_deg,
                             bound_mm=bound_mm, popsize=popsize, maxiter=maxiter, tol=tol, seed=seed,
                             max_correction_mm=max_correction_mm, min_label_fraction=min_label_fraction,
                             objective=obj, region=region, halves_check=halves_check)
        res.path, res.nfev, res.n_members = "warm+de", res.nfev + calls, res.n_members + members
        res.seconds = time.process_time() - t0
        return res
    if not reason:  # a correction the image does not support on both halves: no fallback, the frame is discarded
        reason, gains = check_halves(obj, x, halves_check)
    kept = not reason
    return FrameResult(
        status="kept" if kept else "discarded", reason=reason, x=x,
        pose=pose @ geometry.perturbation(x[:3], x[3:]) if kept else np.full((4, 4), np.nan),
        correction_mm=corr, intensity_initial=float(i0[0]), intensity_optimized=i1,
        objective_initial=float(i0[0]), objective_optimized=i1 - lam * corr,
        n_initial=int(n0[0]), n_optimized=n1, nfev=calls, seconds=time.process_time() - t0, path="warm",
        n_members=members, gain_left=gains[0], gain_right=gains[1],
    )


def solved_cold(warm, age: int, max_gap: int, index: int, cold_every: int = 0) -> bool:
    """Whether a sweep's frame is solved cold (differential evolution) rather than warm-started.

    Cold when there is no warm start (``warm`` None: the sweep's first frame, or a chain broken for longer
    than ``max_gap`` labelled frames, ``age`` being the labelled frames from the frame that gave ``warm``)
    or when ``cold_every`` is set and the frame's ``index`` (0-based, among the sweep's *labelled* frames,
    so that a frame stride does not change how often) is a multiple of it: a periodic restart of the chain.
    The one rule of :func:`optimize_sweep` and of the pipeline's tasks (:mod:`ultrabones.labels.tasks`).
    """
    return warm is None or age > max_gap or bool(cold_every and index % cold_every == 0)


def warm_start_after(results, x0=None, max_gap: int = 1, x0_age: int = 1) -> np.ndarray | None:
    """The warm start for the frame after ``results``, or None (that frame is solved cold).

    The warm start is the correction of the last kept frame, if it lies at most
    ``max_gap`` frames before the next one; else ``x0`` under the same rule
    (``x0_age``: frames from the frame that gave ``x0`` to the first of
    ``results``); else None. A sweep cut in chunks continues with
    ``x0 = warm_start_after(previous_chunk_results, previous_chunk_x0, max_gap)``
    and gives the same results as the uncut sweep (see :func:`optimize_sweep`).
    """
    results = list(results)
    for age, res in enumerate(reversed(results), start=1):
        if res.status == "kept":
            return np.asarray(res.x, float).copy() if age <= max_gap else None
    if x0 is None or x0_age + len(results) > max_gap:
        return None
    return np.asarray(x0, float).reshape(6).copy()


def optimize_sweep(images, poses, calib, spacing, points, lam: float, *, x0=None, seeds=None, max_gap: int = 1,
                   cold_every: int = 0, objectives=None, on_frame=None, **kwargs) -> list[FrameResult]:
    """Optimise the frames of one sweep in time order, each warm-started from its predecessor.

    Frame ``t`` starts (:func:`optimize_frame_warm`) from the correction of the
    last *kept* frame, if that frame lies at most ``max_gap`` frames before it;
    the first frame from ``x0``. Otherwise (no ``x0``, or the chain broken by
    discarded or ``no_bone`` frames: tracking may have jumped, the stale start
    could hold the search in a poor optimum) the frame is solved cold, by full
    differential evolution (:func:`optimize_frame`, ``path = "de"``).

    Each frame's result depends only on its own inputs and its warm start, so a
    sweep cut in chunks, each continued with ``x0 = warm_start_after(previous
    results, previous x0, max_gap)``, gives the same results as the uncut sweep
    (resumable).

    Parameters
    ----------
    images : iterable of (H, W) uint8 images, in time order (read lazily if a generator).
    poses : (N, 4, 4) recorded probe-marker poses, same order.
    calib, spacing, points, lam : as for :func:`optimize_frame`.
    x0 : (6,) warm start of the first frame (rotation deg, translation mm), the
        correction of the frame just before it; None: the first frame is solved cold.
    seeds : per-frame seeds of differential evolution (cold frames, fallback, ``local_de``);
        default ``0, 1, ...``.
    max_gap : largest distance (frames) from the last kept frame at which its
        correction still warm-starts a frame (1: only the immediately preceding frame).
    cold_every : solve every ``cold_every``-th frame (0, ``cold_every``, ...) cold, restarting the chain
        (:func:`solved_cold`; 0: only where there is no warm start).
    objectives : optional prepared :class:`FrameObjective` of each frame, same order (as the pipeline
        prepares them; then a frame's ``seconds`` leave out the objective's set-up); None: built per frame.
    on_frame : optional callable ``(index, FrameResult)`` called after each frame (progress, writing).
    **kwargs : passed to :func:`optimize_frame_warm` (gamma_mm, bounds, steps, validation,
        region, method, DE settings); those that :func:`optimize_frame` takes also to it.

    Returns
    -------
    list of :class:`FrameResult`, one per frame.
    """
    poses = np.asarray(poses, float).reshape(-1, 4, 4)
    seeds = list(range(len(poses))) if seeds is None else list(seeds)
    if len(seeds) != len(poses):
        raise ValueError(f"optimize_sweep: {len(seeds)} seeds for {len(poses)} poses")
    if max_gap < 1:
        raise ValueError(f"optimize_sweep: max_gap must be >= 1, got {max_gap}")
    de_keys = set(inspect.signature(optimize_frame).parameters)
    de_kwargs = {k: v for k, v in kwargs.items() if k in de_keys}
    warm = None if x0 is None else np.asarray(x0, float).reshape(6).copy()
    age = 1  # frames from the frame that gave `warm` to the current one
    out: list[FrameResult] = []
    n = 0
    for t, image in enumerate(images):
        if t >= len(poses):
            raise ValueError(f"optimize_sweep: more images than the {len(poses)} poses")
        obj = None if objectives is None else objectives[t]
        if solved_cold(warm, age, max_gap, t, cold_every):
            res = optimize_frame(image, poses[t], calib, spacing, points, lam, seed=seeds[t], objective=obj,
                                 **de_kwargs)
        else:
            res = optimize_frame_warm(image, poses[t], calib, spacing, points, lam, x0=warm, seed=seeds[t],
                                      objective=obj, **kwargs)
        if res.status == "kept":
            warm, age = np.asarray(res.x, float).copy(), 1
        else:
            age += 1
        out.append(res)
        if on_frame is not None:
            on_frame(t, res)
        n += 1
    if n != len(poses):
        raise ValueError(f"optimize_sweep: {n} images for {len(poses)} poses")
    return out
