"""CT-to-marker registration: the specimen marker's pose in CT from the fiducial spheres found in the CT.

The detected spheres are matched to the marker's fiducials by the assignment of least rigid-fit residual
(:func:`match_fiducials`), then virtual spheres of the fiducials' radius are registered to the CT spheres'
surface by point-to-point ICP (:func:`register_marker`, open3d). :func:`target_registration_error` compares two
registrations on target points.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ultrabones.core.errors import DatasetError
from ultrabones.core.geometry import invert_transform, rigid_fit, transform_points


@dataclass
class MarkerRegistration:
    """The specimen marker's pose in CT.

    Attributes
    ----------
    ct_from_marker : (4, 4) marker frame -> CT (mm).
    fre_mm : mean distance of the registered fiducial centres from the detected ones (mm).
    matched : (F, 3) detected sphere centre matched to each marker fiducial (CT, mm).
    icp_rmse_mm : RMS of the ICP's inlier correspondences (mm).
    """

    ct_from_marker: np.ndarray
    fre_mm: float
    matched: np.ndarray
    icp_rmse_mm: float


def sphere_points(centres: np.ndarray, radius_mm: float, n_per_sphere: int = 2000) -> np.ndarray:
    """Points spread evenly over spheres (Fibonacci lattice): (S * n, 3), mm."""
    i = np.arange(n_per_sphere) + 0.5
    phi = np.arccos(1 - 2 * i / n_per_sphere)
    theta = np.pi * (1 + 5**0.5) * i
    unit = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)
    return (np.asarray(centres, float)[:, None, :] + radius_mm * unit[None]).reshape(-1, 3)


def match_fiducials(marker_fiducials: np.ndarray, detected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which detected sphere is which fiducial: the assignment of least rigid-fit residual.

    Tries every ordered choice of ``F`` of the ``S >= F`` detected centres
    (fiducial layouts are asymmetric, so the distance pattern fixes it).

    Returns
    -------
    ct_from_marker : (4, 4) least-squares fit on the best assignment.
    matched : (F, 3) the detected centre of each fiducial.
    """
    f = np.asarray(marker_fiducials, float)
    d = np.asarray(detected, float)
    if len(d) < len(f):
        raise DatasetError(f"CT: found {len(d)} fiducial spheres, the marker has {len(f)}")
    perms = np.array(list(itertools.permutations(range(len(d)), len(f))))
    cand = d[perms]  # (P, F, 3)
    T = rigid_fit(f, cand)
    res = np.linalg.norm(np.einsum("pij,fj->pfi", T[:, :3, :3], f) + T[:, None, :3, 3] - cand, axis=-1).mean(-1)
    b = int(np.argmin(res))
    return T[b], cand[b]


def register_marker(marker_fiducials: np.ndarray, radius_mm: float, detected_centres: np.ndarray,
                    sphere_surface_points: np.ndarray, icp_max_distance_mm: float) -> MarkerRegistration:
    """CT-to-marker registration: virtual spheres matched to the CT spheres, refined by ICP.

    Parameters
    ----------
    marker_fiducials : (F, 3) fiducial centres in the marker frame (mm).
    radius_mm : fiducial sphere radius (mm).
    detected_centres : (S, 3) sphere centres fitted in CT (mm), ``S >= F``.
    sphere_surface_points : (N, 3) surface points of the CT spheres (mm).
    icp_max_distance_mm : ICP correspondence distance (mm).
    """
    import open3d as o3d

    init, matched = match_fiducials(marker_fiducials, detected_centres)
    src = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(sphere_points(marker_fiducials, radius_mm)))
    dst = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(sphere_surface_points, float)))
    reg = o3d.pipelines.registration.registration_icp(
        src, dst, icp_max_distance_mm, init,
        o3d.pipelines.registration.TransformationEstimationPointToPoint(),
        o3d.pipelines.registration.ICPConvergenceCriteria(relative_fitness=1e-9, relative_rmse=1e-9, max_iteration=100),
    )
    T = np.asarray(reg.transformation).copy()
    fre = float(np.linalg.norm(transform_points(T, marker_fiducials) - matched, axis=1).mean())
    return MarkerRegistration(T, fre, matched, float(reg.inlier_rmse))


def target_registration_error(ct_from_marker: np.ndarray, true_ct_from_marker: np.ndarray,
                              targets: np.ndarray) -> float:
    """Mean displacement (mm) of CT target points (e.g. bone surface) between two registrations."""
    moved = transform_points(ct_from_marker @ invert_transform(true_ct_from_marker), targets)
    return float(np.linalg.norm(moved - np.asarray(targets, float), axis=1).mean())
