"""Global CT-ultrasound registration: the baseline the paper compared against.

The paper registered each sweep to the CT with ImFusion Suite's intensity-based
"ultrasound to CT registration" (default settings): one rigid transform per
sweep, not one per frame. ImFusion is closed; this module builds an honest
stand-in of the same kind. One rigid correction ``G`` (CT frame, rotation
about the sweep's centre) is applied to every frame of the sweep,
``pose_i' = G @ pose_i``, and chosen to maximise an intensity similarity over
all the sweep's frames: the mean, over frames, of the mean image intensity on
the CT bone surface intersection ``I_t`` (the data term of Eq. 2, without its
fiducial regulariser). It is solved by the same seeded, vectorised
differential evolution as the per-frame optimisation.

The paper found its registration *worse* than the initial alignment (mean
ratings 0.87 vs 1.45). This baseline is not tuned to either outcome; notebook
02 reports what it gives on the twin.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import differential_evolution

from ultrabones.core import geometry
from ultrabones.labels.objective import FrameObjective


def correction(x: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Rigid correction(s) in CT from parameters about a centre.

    Parameters
    ----------
    x : (6,) or (6, S): Euler xyz rotation (degrees) about ``centre``, then translation (mm), CT frame.
    centre : (3,) rotation centre in CT (mm).

    Returns
    -------
    (4, 4) or (S, 4, 4) transforms ``T(centre + t) R T(-centre)``.
    """
    x = np.asarray(x, float)
    flat = x.reshape(6, -1)
    rot = geometry.perturbation(flat[:3].T, np.zeros((flat.shape[1], 3)))[:, :3, :3]
    trans = np.asarray(centre, float) + flat[3:].T - np.einsum("sij,j->si", rot, np.asarray(centre, float))
    out = geometry.make_transform(rot, trans)
    return out if x.ndim == 2 else out[0]


@dataclass
class SweepRegistration:
    """The global registration of one sweep.

    transform : (4, 4) correction ``G`` in CT (registered pose = ``G @ pose``).
    x : (6,) its parameters: rotation (degrees) about ``centre``, translation (mm).
    centre : (3,) rotation centre (CT, mm): the mean image centre over the frames.
    similarity_initial, similarity_registered : mean over frames of the mean intensity on ``I_t`` (in [0, 1]).
    n_frames : frames used.
    mean_displacement_mm : mean displacement of the image centres under ``G`` (mm).
    seconds : process time (core-seconds).
    """

    transform: np.ndarray
    x: np.ndarray
    centre: np.ndarray
    similarity_initial: float
    similarity_registered: float
    n_frames: int
    mean_displacement_mm: float
    seconds: float


def register_sweep(images, poses, calib, spacing, points, *, gamma_mm: float = 0.3, bound_deg: float = 2.0,
                   bound_mm: float = 2.0, popsize: int = 15, maxiter: int = 50, tol: float = 0.01,
                   seed: int = 0, region: str = "full") -> SweepRegistration:
    """One rigid correction for a whole sweep, maximising the mean bone-surface intensity.

    Parameters
    ----------
    images : sequence of (H, W) uint8 frames of the sweep (a subset is enough).
    poses : (K, 4, 4) their recorded probe-marker poses in CT (finite).
    calib : (4, 4) image plane -> probe marker (mm).
    spacing : (sx, sy) mm per pixel.
    points : (N, 3) ``C``, CT bone surface points (mm).
    gamma_mm : intersection thickness (mm).
    bound_deg, bound_mm : search box of the correction's Euler angles (degrees, about
        the sweep centre) and translation (mm).
    popsize, maxiter, tol, seed : differential evolution settings.
    region : the part of each frame's intersection the similarity averages,
        as for :class:`~ultrabones.labels.objective.FrameObjective`.

    Returns
    -------
    :class:`SweepRegistration` (the identity when no frame shows bone).
    """
    t0 = time.process_time()
    poses = np.asarray(poses, float).reshape(-1, 4, 4)
    if len(images) != len(poses) or len(poses) == 0:
        raise ValueError(f"register_sweep: {len(images)} images for {len(poses)} poses (need >= 1 of each, equal)")
    h, w = np.asarray(images[0]).shape
    sx, sy = spacing
    centre_ip = np.array([w * sx / 2, h * sy / 2, 0.0])
    chain = poses @ np.asarray(calib, float)
    centres = geometry.transform_points(chain, centre_ip[None])[:, 0]  # (K, 3)
    centre = centres.mean(axis=0)
    theta = np.radians(1.02 * np.sqrt(3.0) * bound_deg)
    objectives = []
    for img, pose, c_i in zip(images, poses, centres):
        # Image points lie within the half-diagonal of their centre; G moves them by at most
        # |t| + 2 sin(theta / 2) |p - centre|.
        reach = np.linalg.norm(c_i - centre) + np.hypot(w * sx, h * sy) / 2
        margin = np.sqrt(3.0) * bound_mm + 2 * np.sin(theta / 2) * reach + gamma_mm
        obj = FrameObjective(img, pose, calib, spacing, points, gamma_mm, margin_mm=margin, region=region)
        if obj.n_points:
            objectives.append((obj, pose))

    def similarity(x):
        g = correction(np.asarray(x, float).reshape(6, -1), centre)  # (S, 4, 4)
        total = np.zeros(g.shape[0])
        for obj, pose in objectives:
            # G @ pose = pose @ (inv(pose) @ G @ pose): the per-frame marker-frame perturbation.
            deltas = geometry.invert_transform(pose) @ g @ pose
            member, pixel, _ = obj.band(deltas)
            total += obj.band_mean(member, pixel, len(g))[0]
        return total / max(len(objectives), 1)

    zero = np.zeros((6, 1))
    if not objectives:
        return SweepRegistration(np.eye(4), np.zeros(6), centre, 0.0, 0.0, 0, 0.0, time.process_time() - t0)
    bounds = [(-bound_deg, bound_deg)] * 3 + [(-bound_mm, bound_mm)] * 3
    res = differential_evolution(lambda x: -similarity(x), bounds, seed=seed, popsize=popsize, maxiter=maxiter,
                                 tol=tol, vectorized=True, updating="deferred", polish=False, x0=np.zeros(6))
    x = np.asarray(res.x, float)
    g = correction(x, centre)
    moved = np.linalg.norm(geometry.transform_points(g, centres) - centres, axis=1).mean()
    return SweepRegistration(
        transform=g, x=x, centre=centre, similarity_initial=float(similarity(zero)[0]),
        similarity_registered=float(similarity(x.reshape(6, 1))[0]), n_frames=len(objectives),
        mean_displacement_mm=float(moved), seconds=time.process_time() - t0,
    )
