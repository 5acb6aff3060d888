"""The objective that made the released UltraBones100k labels (``labeling.objective: released``).

The paper prints Eq. 2 (mean intensity over the intersection minus lambda times the fiducial
displacement; :mod:`ultrabones.labels.objective`). The authors' public code optimises another
objective; this module implements it from its facts, with this project's kernels (no port):

- **Image preparation** (:func:`prepare_frame`): grey levels below 10 are set to 0; pixels whose
  centre lies farther than 2.5 mm from ``C`` (the dense CT sample) at the recorded pose are set to
  0; intensities are scaled to [0, 1] (grey / 255); every second row and column is dropped (the
  even indices, as upstream zeroes ``img[::2]``); the remaining non-zero pixels become the image
  points (pixel centres ``((u + 0.5) sx, (v + 0.5) sy)`` through the calibration).
- **Skip rules**: a frame is skipped (reported ``discarded``, with the rule in its message) when it has
  no image point, when the mean of its intensities above their 95th percentile is below 0.45, or
  when no image point comes within 0.9 mm of ``C`` at the recorded pose.
- **CT points**: ``C`` (upstream: 1,000,000 uniform samples of the bone mesh,
  ``labeling.released_ct_samples``) kept within 2 mm of the image points at the recorded pose.
- **Objective** (:class:`ReleasedObjective`, to minimise) over the absolute pose parameters
  ``p = (x, y, z, euler_x, euler_y, euler_z)`` (mm, degrees; the tracking columns) within
  ``bound_mm`` / ``bound_deg`` of the recorded ones:
  ``-sum(exp(5 I))`` over the image points within 0.5 mm of a CT point
  ``+ 3000 * mean fiducial displacement`` (mm) between the recorded and the candidate pose.
  Where no image point is within 0.5 mm the upstream function returns 0 (its fiducial term
  included); so does this one.
- **Optimiser** (:func:`optimize_frame`): :func:`scipy.optimize.differential_evolution` with the
  default population (15 per parameter), immediate updating, ``maxiter`` 30, ``tol`` 0.05,
  polishing on and seed 0 (upstream's settings; ``params/released.yaml``).

How the fast objective stays exact
----------------------------------
The weights ``exp(5 I)`` are written into the kept (odd) pixels of a half-resolution image
(0 elsewhere), with the pixel spacing doubled and the calibration shifted by half an original pixel,
so that its pixel centres are the image points. A candidate pose ``P`` is the recorded pose times
``Delta = P0^-1 P``; :meth:`ultrabones.labels.objective.FrameObjective.band` gives the pixels whose centre
lies within 0.5 mm of a CT point under ``Delta`` (the slab pre-selection and the per-point stencil
of Eq. 2, with ``gamma`` = 0.5 mm), and the score sums their weights. :func:`reference_score`
writes the same score from its definition (every image point to CT, KD-tree over the CT points),
for tests: they agree to floating-point rounding (``tests/test_released.py``), and the speed ratio is
``benchmarks/bench_released.py``'s. Distances of exactly 0.5 mm count as inside in both (upstream:
strictly below; a tie has probability zero).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import differential_evolution
from scipy.spatial import cKDTree

from ultrabones.core import geometry
from ultrabones.core.errors import ParamsError
from ultrabones.labels import cloud, objective


@dataclass(frozen=True)
class Upstream:
    """The released code's constants (``luohwu/UltraBones100k``, ``optimization_main.py``).

    grey_min : grey levels below this are set to 0 (8-bit).
    mask_mm : pixels farther than this from ``C`` at the recorded pose are set to 0 (mm).
    bright_quantile, bright_min : a frame is skipped when the mean of its intensities ([0, 1]) above
        their ``bright_quantile``-th percentile is below ``bright_min``.
    near_mm : a frame is skipped when no image point lies within this of ``C`` at the recorded pose (mm).
    ct_keep_mm : CT points farther than this from every image point at the recorded pose are dropped (mm).
    radius_mm : an image point counts when within this of a CT point (mm).
    weight_exp : an image point of intensity ``I`` weighs ``exp(weight_exp * I)``.
    fiducial_weight : weight of the mean fiducial displacement (1/mm).
    """

    grey_min: int = 10
    mask_mm: float = 2.5
    bright_quantile: float = 95.0
    bright_min: float = 0.45
    near_mm: float = 0.9
    ct_keep_mm: float = 2.0
    radius_mm: float = 0.5
    weight_exp: float = 5.0
    fiducial_weight: float = 3000.0


UPSTREAM = Upstream()

#: Upstream's optimiser settings (scipy's default population of 15 per parameter).
UPSTREAM_DE = {"popsize": 15, "maxiter": 30, "tol": 0.05, "polish": True, "seed": 0}


@dataclass(frozen=True)
class PreparedFrame:
    """One frame prepared as upstream prepares it (:func:`prepare_frame`).

    params0 : (6,) recorded pose parameters ``x, y, z`` (mm), ``euler_x, euler_y, euler_z`` (degrees).
    pose : (4, 4) the recorded pose (probe marker in CT, mm), ``pose_from_params(params0)``.
    calib : (4, 4) image plane -> probe marker (mm); spacing : (sx, sy) mm per pixel.
    shape : (H, W) of the full image.
    rows, cols : (N,) full-image pixel indices of the image points.
    intensity : (N,) their intensities in [0, 1].
    image_points : (N, 3) their pixel centres in the image-plane frame (mm).
    ct_points : (M, 3) CT points kept (CT frame, mm).
    bright_mean : mean intensity above the 95th percentile; min_distance_mm : nearest image point to ``C``.
    skip : why upstream skips this frame ("" when it does not).
    """

    params0: np.ndarray
    pose: np.ndarray
    calib: np.ndarray
    spacing: tuple
    shape: tuple
    rows: np.ndarray
    cols: np.ndarray
    intensity: np.ndarray
    image_points: np.ndarray
    ct_points: np.ndarray
    bright_mean: float
    min_distance_mm: float
    skip: str


def sample_ct(mesh, n_samples: int, seed: int) -> np.ndarray:
    """``n_samples`` points (about) uniform on the CT bone surface (CT frame, mm): upstream's dense sample of ``C``.

    :func:`ultrabones.labels.cloud.surface_points` at the density ``n_samples / area``.
    """
    if int(n_samples) < 1:
        raise ParamsError(f"labeling.released_ct_samples: must be at least 1, got {n_samples!r}")
    area = float(np.asarray(mesh.area_faces, float).sum())
    return cloud.surface_points(mesh, n_samples / area if area > 0 else 1.0, seed)[0]


def prepare_frame(image, pose_params, calib, spacing, points, up: Upstream = UPSTREAM) -> PreparedFrame:
    """Upstream's preparation of one frame: image points, intensities, CT points and the skip rules.

    Parameters
    ----------
    image : (H, W) uint8 image (8-bit grey levels).
    pose_params : (6,) recorded ``x, y, z`` (mm), ``euler_x, euler_y, euler_z`` (degrees, extrinsic xyz).
    calib : (4, 4) image plane -> probe marker (mm); spacing : (sx, sy) mm per pixel.
    points : (K, 3) the dense sample of ``C`` (CT frame, mm; :func:`sample_ct`).
    up : the constants (:class:`Upstream`).

    Returns
    -------
    :class:`PreparedFrame`; its ``skip`` says why upstream would not optimise this frame.
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"prepare_frame: the image must be (H, W) uint8, got {image.dtype} {image.shape}")
    p0 = np.asarray(pose_params, float).reshape(6)
    pose = geometry.pose_from_params(p0)
    calib = np.asarray(calib, float)
    sx, sy = float(spacing[0]), float(spacing[1])
    h, w = image.shape
    # kept pixels: odd rows and columns (upstream zeroes the even ones), grey >= grey_min
    sub = image[1::2, 1::2]
    r2, c2 = np.nonzero(sub >= up.grey_min)
    rows, cols = 2 * r2 + 1, 2 * c2 + 1
    ip = np.stack([(cols + 0.5) * sx, (rows + 0.5) * sy, np.zeros(len(rows))], axis=1)
    to_plane = geometry.invert_transform(pose @ calib)
    _, near = geometry.points_in_slab(to_plane, points, up.mask_mm, (w * sx, h * sy))
    dist = np.full(len(ip), np.inf)
    if len(near) and len(ip):
        dist, _ = cKDTree(near).query(ip, distance_upper_bound=up.mask_mm * (1 + 1e-12))
    keep = dist <= up.mask_mm
    rows, cols, ip, dist = rows[keep], cols[keep], ip[keep], dist[keep]
    inten = image[rows, cols].astype(float) / 255.0
    ct = np.zeros((0, 3))
    bright, dmin, skip = float("nan"), float("inf"), ""
    if not len(inten):
        skip = f"released: no image point within {up.mask_mm} mm of the CT surface"
    else:
        top = inten[inten > np.percentile(inten, up.bright_quantile)]
        bright = float(top.mean()) if len(top) else float(inten.max())  # all equal: their value
        dmin = float(dist.min())
        if bright < up.bright_min:
            skip = f"released: mean of the brightest 5% {bright:.3f} < {up.bright_min} (a dim frame)"
        elif dmin > up.near_mm:
            skip = f"released: no image point within {up.near_mm} mm of the CT surface (nearest {dmin:.2f} mm)"
        else:
            idx, ct_ip = geometry.points_in_slab(to_plane, points, up.ct_keep_mm, (w * sx, h * sy))
            d_ct, _ = cKDTree(ip).query(ct_ip, distance_upper_bound=up.ct_keep_mm)
            ct = np.asarray(points, float)[idx[d_ct < up.ct_keep_mm]]
    return PreparedFrame(params0=p0, pose=pose, calib=calib, spacing=(sx, sy), shape=(h, w), rows=rows, cols=cols,
                         intensity=inten, image_points=ip, ct_points=ct, bright_mean=bright, min_distance_mm=dmin,
                         skip=skip)


def bounds_margin_mm(fr: PreparedFrame, bound_deg: float, bound_mm: float, radius_mm: float) -> float:
    """How far (mm) a CT point can lie from the recorded image plane and still come within ``radius_mm``
    of an image point under a pose within the bounds.

    A candidate moves a marker-frame point ``r`` by at most ``|t - t0| + 2 sin(theta / 2) |r|``,
    ``|t - t0| <= sqrt(3) bound_mm`` and ``theta`` (the angle of ``R R0^T``) at most the sum of the
    three Euler changes, ``3 bound_deg`` (each factor of the Euler product is a rotation by one change).
    """
    r = float(np.linalg.norm(geometry.transform_points(fr.calib, fr.image_points), axis=1).max())
    theta = np.radians(3.0 * bound_deg)
    return float(np.sqrt(3.0) * bound_mm + 2.0 * np.sin(theta / 2.0) * r + radius_mm)


class ReleasedObjective:
    """Upstream's objective of one prepared frame, for a population of absolute pose parameters (fast).

    Parameters
    ----------
    fr : the :class:`PreparedFrame` (not skipped).
    bound_deg, bound_mm : the search box around the recorded parameters (degrees, mm).
    up : the constants (:class:`Upstream`).
    """

    def __init__(self, fr: PreparedFrame, bound_deg: float = 1.0, bound_mm: float = 1.0,
                 up: Upstream = UPSTREAM):
        if not len(fr.image_points):
            raise ValueError("ReleasedObjective: the frame has no image point")
        self.fr, self.up = fr, up
        sx, sy = fr.spacing
        h, w = fr.shape
        weights = np.zeros((h // 2, w // 2))
        weights[(fr.rows - 1) // 2, (fr.cols - 1) // 2] = np.exp(up.weight_exp * fr.intensity)
        self.weights = weights
        # the half-resolution grid's pixel centres (k + 0.5) 2s + s/2 = (2k + 1 + 0.5) s: the odd pixels' centres
        shift = geometry.make_transform(np.eye(3), np.array([0.5 * sx, 0.5 * sy, 0.0]))
        self.kernel = objective.FrameObjective(
            weights, fr.pose, fr.calib @ shift, (2 * sx, 2 * sy), fr.ct_points, gamma_mm=up.radius_mm,
            margin_mm=bounds_margin_mm(fr, bound_deg, bound_mm, up.radius_mm))
        self.pose_inv = geometry.invert_transform(fr.pose)

    def score(self, p: np.ndarray) -> np.ndarray:
        """The objective (to minimise) of each member.

        Parameters
        ----------
        p : (6, S) or (6,) absolute parameters ``x, y, z`` (mm), ``euler_x, euler_y, euler_z`` (degrees).

        Returns
        -------
        (S,) ``-sum exp(5 I) + 3000 * mean fiducial displacement`` (0 where no image point is within
        0.5 mm of a CT point); a float for ``p`` of shape (6,).
        """
        total, count, fid = self.parts(p)
        out = np.where(count > 0, -total + self.up.fiducial_weight * fid, 0.0)
        return out if np.ndim(p) == 2 else float(out[0])

    def parts(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(S,) sum of weights, number of image points within the radius, mean fiducial displacement (mm)."""
        p = np.asarray(p, float).reshape(6, -1)
        s = p.shape[1]
        poses = geometry.pose_from_params(p.T)
        deltas = self.pose_inv @ poses
        k = self.kernel
        member, pixel = k.band_pixels(deltas)  # the compact kernel: measured faster here than band() at S = 1
        inside = k.f[pixel] > 0  # pixels of the band that are image points
        member, pixel = member[inside], pixel[inside]
        total = np.bincount(member, weights=k.f[pixel], minlength=s)
        count = np.bincount(member, minlength=s)
        fid = geometry.mean_fiducial_displacement(self.fr.pose, poses, k.fiducials)
        return total, count, fid


def reference_score(p, fr: PreparedFrame, tree: cKDTree | None = None, up: Upstream = UPSTREAM) -> float:
    """Upstream's objective of one parameter vector straight from its definition (slow; tests and benchmark).

    Every image point goes to CT at the candidate pose ``pose_from_params(p)``; a KD-tree over the
    frame's CT points gives its nearest distance; the points within ``radius_mm`` add ``exp(5 I)``.

    Parameters
    ----------
    p : (6,) absolute parameters (mm, degrees).
    fr : the prepared frame; tree : ``cKDTree(fr.ct_points)`` (built when None).
    """
    tree = cKDTree(fr.ct_points) if tree is None else tree
    pose = geometry.pose_from_params(np.asarray(p, float).reshape(6))
    pts = geometry.transform_points(pose @ fr.calib, fr.image_points)
    dist, _ = tree.query(pts, distance_upper_bound=up.radius_mm * (1 + 1e-12))
    inside = dist <= up.radius_mm
    if not inside.any():
        return 0.0
    fid = float(geometry.mean_fiducial_displacement(fr.pose, pose))
    return float(-np.exp(up.weight_exp * fr.intensity[inside]).sum() + up.fiducial_weight * fid)


@dataclass(frozen=True)
class ReleasedFit:
    """What :func:`optimize_frame` found.

    params : (6,) optimised absolute parameters (mm, degrees); x : (6,) the same correction as a
    perturbation of the recorded pose, rotation (deg) and translation (mm), so that
    ``pose @ perturbation(x[:3], x[3:])`` is the optimised pose (the report's columns).
    score0, score : the objective at the recorded and at the optimised pose.
    nfev : objective calls; seconds : process time (s).
    """

    params: np.ndarray
    x: np.ndarray
    score0: float
    score: float
    nfev: int
    seconds: float


def optimize_frame(fr: PreparedFrame, *, bound_deg: float = 1.0, bound_mm: float = 1.0, popsize: int = 15,
                   maxiter: int = 30, tol: float = 0.05, polish: bool = True, seed: int = 0,
                   up: Upstream = UPSTREAM) -> ReleasedFit:
    """Minimise upstream's objective of a prepared frame by differential evolution (upstream's way).

    Parameters
    ----------
    fr : a prepared, not skipped frame (:func:`prepare_frame`).
    bound_deg, bound_mm : the box around the recorded parameters (degrees, mm; upstream 1, 1).
    popsize, maxiter, tol, polish, seed : :func:`scipy.optimize.differential_evolution` settings
        (upstream: 15, 30, 0.05, True, 0); immediate updating, one member per call, as upstream.

    Returns
    -------
    :class:`ReleasedFit`.
    """
    if fr.skip:
        raise ValueError(f"optimize_frame: the frame is skipped ({fr.skip})")
    t0 = time.process_time()
    obj = ReleasedObjective(fr, bound_deg, bound_mm, up)
    p0 = fr.params0
    half = np.array([bound_mm] * 3 + [bound_deg] * 3, float)
    res = differential_evolution(lambda p: obj.score(p), list(zip(p0 - half, p0 + half)), popsize=popsize,
                                 maxiter=maxiter, tol=tol, polish=polish, seed=seed)
    best = np.asarray(res.x, float)
    delta = obj.pose_inv @ geometry.pose_from_params(best)
    q = geometry.params_from_pose(delta)  # (t, euler) of the perturbation
    return ReleasedFit(params=best, x=np.r_[q[3:], q[:3]], score0=obj.score(p0), score=float(res.fun),
                       nfev=int(res.nfev), seconds=time.process_time() - t0)
