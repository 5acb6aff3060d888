"""One frame's pose refined by maximising Eq. 2, then validated (paper Section 3.1).

:func:`optimize_frame` maximises Eq. 2 with :func:`scipy.optimize.differential_evolution` over rotation (degrees)
and translation (mm) perturbations in ``[-1, 1]^3`` applied as ``pose @ geometry.perturbation(rot, trans)``
(probe-marker frame), then validates the result (:func:`validated_result`: a mean fiducial correction above 1 mm
is discarded; the optional rules: :func:`validate`'s label fraction, :func:`check_halves`). A sweep's frames
warm-started from each other: :mod:`ultrabones.labels.sweep`. The orchestration over a dataset (Dask, resumable
chunks, outputs) lives in :mod:`ultrabones.labels.batch`; the global-registration baseline in
:mod:`ultrabones.labels.registration`.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import differential_evolution

from ultrabones.core import geometry
from ultrabones.core.errors import DatasetError
from ultrabones.labels.objective import FrameObjective


def frame_seed(seed: int, key: str, timestamp: int) -> int:
    """A per-frame optimiser seed, stable across runs and machines."""
    return int(np.random.SeedSequence([seed, zlib.crc32(key.encode()), int(timestamp)]).generate_state(1)[0])


@dataclass
class FrameResult:
    """The optimisation of one frame.

    status : ``"kept"``, ``"discarded"`` (failed validation) or ``"no_bone"``.
    reason : why a frame was discarded (empty if kept).
    x : (6,) rotation (deg) and translation (mm) of the correction ``Delta``.
    pose : (4, 4) optimised pose ``pose_initial @ Delta`` (NaN if not kept).
    correction_mm : mean fiducial displacement of ``Delta`` (mm).
    intensity_initial, intensity_optimized : mean ``f`` over ``I_t`` (in [0, 1]).
    objective_initial, objective_optimized : Eq. 2 values.
    n_initial, n_optimized : pixels in ``I_t``.
    nfev : objective calls, one per generation (each evaluates the whole population).
    seconds : process (CPU) time of the optimisation (core-seconds).
    path : how the result was found: ``"de"`` (differential evolution over the whole
        box, :func:`optimize_frame`), ``"warm"`` (local search from a warm start,
        :func:`~ultrabones.labels.sweep.optimize_frame_warm`), ``"warm+de"`` (the local result failed
        validation and differential evolution replaced it) or ``"de-batched"``
        (differential evolution run in lock step with other frames on a torch
        device, :func:`ultrabones.labels.torch_objective.optimize_frames_batched`).
    n_members : objective evaluations (population members, all calls together).
    gain_left, gain_right : :meth:`FrameObjective.half_gains` of the correction, when the
        halves check ran (NaN otherwise).
    """

    status: str
    reason: str = ""
    x: np.ndarray = field(default_factory=lambda: np.zeros(6))
    pose: np.ndarray = field(default_factory=lambda: np.full((4, 4), np.nan))
    correction_mm: float = 0.0
    intensity_initial: float = float("nan")
    intensity_optimized: float = float("nan")
    objective_initial: float = float("nan")
    objective_optimized: float = float("nan")
    n_initial: int = 0
    n_optimized: int = 0
    nfev: int = 0
    seconds: float = 0.0
    path: str = "de"
    n_members: int = 0
    gain_left: float = float("nan")
    gain_right: float = float("nan")


def optimize_frame(image, pose, calib, spacing, points, lam: float, *, gamma_mm: float = 0.3,
                   bound_deg: float = 1.0, bound_mm: float = 1.0, popsize: int = 15, maxiter: int = 100,
                   tol: float = 0.01, seed: int = 0, max_correction_mm: float = 1.0,
                   min_label_fraction: float = 0.0, objective: FrameObjective | None = None,
                   region: str = "full", halves_check: str | None = None) -> FrameResult:
    """Refine one frame's pose by maximising Eq. 2, then validate it.

    Differential evolution (seeded, the population evaluated in one vectorised
    call, the unperturbed pose included in the initial population) searches
    ``[-bound_deg, bound_deg]^3 x [-bound_mm, bound_mm]^3``. The result is
    discarded when its mean fiducial correction exceeds ``max_correction_mm``
    (the paper's validation) or, optionally, when the optimised intersection
    keeps fewer than ``min_label_fraction`` of the initial one's pixels (a mean
    objective can shrink ``I_t`` onto a short bright piece; not in the paper,
    0 disables it).

    Parameters
    ----------
    image : (H, W) uint8 image.
    pose : (4, 4) recorded probe-marker pose in CT (mm).
    calib, spacing, points, gamma_mm : as for :func:`~ultrabones.labels.label.full_label`.
    lam : the weight ``lambda`` of the fiducial term (1/mm).
    popsize, maxiter, tol : differential evolution settings (population ``popsize * 6``).
    seed : random seed of the optimiser.
    max_correction_mm : validation limit (mm), the paper's 1.
    min_label_fraction : second validation rule (0: off, as in the paper).
    objective : a prepared :class:`FrameObjective` of this frame (optional).
    region : the intersection the mean runs over, ``"full"`` (Eq. 2 as written)
        or ``"first_hit"`` (see :class:`FrameObjective`).
    halves_check : third validation rule (not in the paper; None: off): the correction must raise
        the mean intensity (in this region, ``"first_hit"`` or ``"full"``) on both halves of the
        bone's scan lines (:meth:`FrameObjective.half_gains`).

    Returns
    -------
    :class:`FrameResult`; status ``"no_bone"`` when the recorded pose's
    intersection ``I_t`` is empty (no bone in view: nothing to refine).
    """
    t0 = time.process_time()
    pose = np.asarray(pose, float)
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise DatasetError("optimize_frame: the pose is not a finite 4x4 matrix")
    obj = objective or FrameObjective(image, pose, calib, spacing, points, gamma_mm, bound_deg, bound_mm,
                                      region=region)
    zero = np.zeros((6, 1))
    i0, n0 = obj.intensity(zero)
    if obj.n_points == 0 or n0[0] == 0:
        return FrameResult("no_bone", seconds=time.process_time() - t0)
    bounds = [(-bound_deg, bound_deg)] * 3 + [(-bound_mm, bound_mm)] * 3
    res = differential_evolution(
        lambda x: -obj.value(x, lam), bounds, seed=seed, popsize=popsize, maxiter=maxiter, tol=tol,
        vectorized=True, updating="deferred", polish=False, x0=np.zeros(6), init="latinhypercube",
    )
    out = validated_result(obj, pose, res.x, lam, float(i0[0]), int(n0[0]), max_correction_mm, min_label_fraction,
                           halves_check, nfev=int(res.nfev), n_members=int(res.nfev) * popsize * 6)
    out.seconds = time.process_time() - t0
    return out


def validated_result(obj: FrameObjective, pose, x, lam: float, i0: float, n0: int, max_correction_mm: float,
                     min_label_fraction: float, halves_check: str | None, **fields) -> FrameResult:
    """The :class:`FrameResult` of a differential-evolution correction ``x``, validated as :func:`optimize_frame` does.

    The correction is discarded when it fails :func:`validate` (``max_correction_mm``, ``min_label_fraction``)
    or, that passed, the halves check (:func:`check_halves`, ``halves_check``).

    Parameters
    ----------
    obj : the frame's objective; pose : (4, 4) the recorded pose (mm).
    x : (6,) correction, rotation (deg) and translation (mm).
    lam : the weight of the fiducial term (1/mm).
    i0, n0 : mean intensity over ``I_t`` and its pixels at no correction.
    fields : further :class:`FrameResult` fields (``nfev``, ``n_members``, ``path``, ``seconds``).
    """
    x = np.asarray(x, float)
    corr, i1, n1, reason = validate(obj, x, n0, max_correction_mm, min_label_fraction)
    gains = (float("nan"), float("nan"))
    if not reason:
        reason, gains = check_halves(obj, x, halves_check)
    kept = not reason
    return FrameResult(
        status="kept" if kept else "discarded", reason=reason, x=x,
        pose=np.asarray(pose, float) @ geometry.perturbation(x[:3], x[3:]) if kept else np.full((4, 4), np.nan),
        correction_mm=corr, intensity_initial=i0, intensity_optimized=i1, objective_initial=i0,
        objective_optimized=i1 - lam * corr, n_initial=n0, n_optimized=n1, gain_left=gains[0], gain_right=gains[1],
        **fields,
    )


def validate(obj: FrameObjective, x, n0: int, max_correction_mm: float, min_label_fraction: float):
    """Correction (mm), mean intensity, label pixels and the reason a result fails validation ("" if it passes)."""
    x = np.asarray(x, float)
    i1, n1 = obj.intensity(x.reshape(6, 1))
    delta = geometry.perturbation(x[:3], x[3:])
    corr = float(geometry.mean_fiducial_displacement(np.eye(4), delta, obj.fiducials))
    reason = ""
    if corr > max_correction_mm:
        reason = f"mean fiducial correction {corr:.3f} mm > {max_correction_mm} mm"
    elif n1[0] < min_label_fraction * n0:
        reason = f"label shrank to {n1[0]} of {n0} px (< {min_label_fraction:g})"
    return corr, float(i1[0]), int(n1[0]), reason


def check_halves(obj: FrameObjective, x, region: str | None) -> tuple[str, tuple[float, float]]:
    """The halves check of a correction: the reason it fails ("" if it passes, or if ``region`` is None) and the gains.

    The correction must raise the mean intensity on both halves of the bone's scan
    lines (:meth:`FrameObjective.half_gains`, in ``region``). No correction (``x`` all
    zero: the initial label) and a bone crossing fewer than 4 columns (it cannot be
    split) pass.
    """
    if region is None or not np.any(np.asarray(x, float)):
        return "", (float("nan"), float("nan"))
    gains = obj.half_gains(x, region)
    if np.isfinite(gains).all() and min(gains) <= 0.0:
        return (f"the correction raises the echo on one half of the bone's scan lines only "
                f"(gain left {gains[0]:+.4f}, right {gains[1]:+.4f})"), gains
    return "", gains
