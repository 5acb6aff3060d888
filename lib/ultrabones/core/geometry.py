"""Rigid poses and the pixel-to-CT chain of Eq. 1.

Frames
------
- *image*: pixel column ``u`` and row ``v``, origin at the top-left corner of
  the image, ``v`` growing with depth.
- *image plane* (IP): millimetres, ``x = (u + 0.5) * sx``, ``y = (v + 0.5) * sy``,
  ``z = 0`` on the plane. ``z`` is the signed out-of-plane distance (mm).
- *probe marker* (US): the tracked marker on the probe. ``calib`` maps IP to US.
- *CT*: the CT volume's frame (mm). ``pose`` maps US to CT.

Eq. 1 of the paper, for one pixel::

    p = pose @ calib @ diag(sx, sy, 1, 1) @ [u + 0.5, v + 0.5, 0, 1]^T

Rotations in ``tracking.csv`` are extrinsic x-y-z Euler angles in degrees, as
``scipy.spatial.transform.Rotation.from_euler('xyz', ..., degrees=True)``.
Every function is vectorised over leading axes of poses or points.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

#: Probe-marker fiducials in the marker frame (mm), from the released code.
PROBE_FIDUCIALS_MM = np.array(
    [
        [-30.3539, -25.101, -0.4395],
        [25.7953, -25.101, -0.5479],
        [37.0174, -25.101, -28.2339],
        [-30.6348, -25.101, -57.3485],
    ]
)

#: Released image-to-probe calibration: translation (mm), Euler xyz (degrees).
RELEASED_CALIB_TRANSLATION_MM = np.array([26.44694442, -0.52572229, 128.00100047])
RELEASED_CALIB_EULER_DEG = np.array([92.48865621, -0.46874914, 179.2277322])
#: Released pixel spacing (mm per pixel), sx = sy.
RELEASED_SPACING_MM = (0.05392, 0.05392)

POSE_COLUMNS = ("x", "y", "z", "euler_x", "euler_y", "euler_z")


def make_transform(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Homogeneous transform(s) from rotation matrices and translations.

    Parameters
    ----------
    rotation : (..., 3, 3) array, rotation matrices.
    translation : (..., 3) array, translations (mm).

    Returns
    -------
    (..., 4, 4) array.
    """
    rotation = np.asarray(rotation, dtype=float)
    translation = np.asarray(translation, dtype=float)
    shape = np.broadcast_shapes(rotation.shape[:-2], translation.shape[:-1])
    out = np.zeros(shape + (4, 4))
    out[..., :3, :3] = rotation
    out[..., :3, 3] = translation
    out[..., 3, 3] = 1.0
    return out


def invert_transform(transform: np.ndarray) -> np.ndarray:
    """Inverse of rigid transform(s), exact (transpose of the rotation).

    Parameters
    ----------
    transform : (..., 4, 4) array, rigid transforms.

    Returns
    -------
    (..., 4, 4) array.
    """
    transform = np.asarray(transform, dtype=float)
    rot_t = np.swapaxes(transform[..., :3, :3], -1, -2)
    trans = -np.einsum("...ij,...j->...i", rot_t, transform[..., :3, 3])
    return make_transform(rot_t, trans)


def pose_from_params(params: np.ndarray) -> np.ndarray:
    """Poses from the six tracking columns.

    Parameters
    ----------
    params : (..., 6) array, ``x, y, z`` (mm) and ``euler_x, euler_y, euler_z``
        (degrees, extrinsic xyz).

    Returns
    -------
    (..., 4, 4) array, probe marker in CT space.
    """
    params = np.asarray(params, dtype=float)
    flat = params.reshape(-1, 6)
    rot = Rotation.from_euler("xyz", flat[:, 3:], degrees=True).as_matrix()
    out = make_transform(rot, flat[:, :3])
    return out.reshape(params.shape[:-1] + (4, 4))


def params_from_pose(pose: np.ndarray) -> np.ndarray:
    """The six tracking columns of pose(s); inverse of :func:`pose_from_params`.

    Parameters
    ----------
    pose : (..., 4, 4) array, rigid transforms.

    Returns
    -------
    (..., 6) array, ``x, y, z`` (mm), ``euler_x, euler_y, euler_z`` (degrees).
    """
    pose = np.asarray(pose, dtype=float)
    flat = pose.reshape(-1, 4, 4)
    euler = Rotation.from_matrix(flat[:, :3, :3]).as_euler("xyz", degrees=True)
    out = np.concatenate([flat[:, :3, 3], euler], axis=1)
    return out.reshape(pose.shape[:-2] + (6,))


def scale_matrix(spacing: tuple[float, float]) -> np.ndarray:
    """``T_S = diag(sx, sy, 1, 1)`` of Eq. 1.

    Parameters
    ----------
    spacing : (sx, sy), pixel width and height (mm per pixel).
    """
    sx, sy = spacing
    return np.diag([float(sx), float(sy), 1.0, 1.0])


def pixel_grid(width: int, height: int) -> np.ndarray:
    """Every pixel of a ``width`` x ``height`` image as ``(u, v)``, row-major.

    Returns
    -------
    (height * width, 2) float array, column ``u`` and row ``v``.
    """
    v, u = np.mgrid[0:height, 0:width]
    return np.stack([u.ravel(), v.ravel()], axis=1).astype(float)


def image_to_probe(calib: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """``calib @ T_S``: homogeneous pixel-centre coordinates to the probe marker frame."""
    return np.asarray(calib, dtype=float) @ scale_matrix(spacing)


def pixels_to_ct(
    uv: np.ndarray, pose: np.ndarray, calib: np.ndarray, spacing: tuple[float, float]
) -> np.ndarray:
    """Map image pixels to CT space (Eq. 1).

    Parameters
    ----------
    uv : (N, 2) float array, pixel column and row (origin top-left).
    pose : (4, 4) or (K, 4, 4) array, probe marker in CT space.
    calib : (4, 4) array, image plane in probe-marker space (mm).
    spacing : (sx, sy) mm per pixel.

    Returns
    -------
    (N, 3) array, or (K, N, 3) for K poses: points in CT space (mm).
    """
    uv = np.asarray(uv, dtype=float)
    chain = np.asarray(pose, dtype=float) @ image_to_probe(calib, spacing)
    # Homogeneous [u+0.5, v+0.5, 0, 1]: only columns 0, 1 and 3 of the chain act.
    lin = chain[..., :3, :2]
    off = chain[..., :3, 3]
    centres = uv + 0.5
    return np.einsum("...ij,nj->...ni", lin, centres) + off[..., None, :]


def ct_to_pixels(
    points: np.ndarray, pose: np.ndarray, calib: np.ndarray, spacing: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Map CT points to pixel coordinates and out-of-plane distance.

    The inverse of :func:`pixels_to_ct` for points on the plane.

    Parameters
    ----------
    points : (N, 3) array, points in CT space (mm).
    pose : (4, 4) or (K, 4, 4) array, probe marker in CT space.
    calib : (4, 4) array, image plane in probe-marker space (mm).
    spacing : (sx, sy) mm per pixel.

    Returns
    -------
    uv : (N, 2) or (K, N, 2) array, pixel column and row (not rounded).
    dist : (N,) or (K, N) array, signed distance from the image plane (mm).
    """
    points = np.asarray(points, dtype=float)
    ip_from_ct = invert_transform(np.asarray(pose, dtype=float) @ np.asarray(calib, dtype=float))
    q = np.einsum("...ij,nj->...ni", ip_from_ct[..., :3, :3], points) + ip_from_ct[..., None, :3, 3]
    sx, sy = spacing
    uv = np.stack([q[..., 0] / sx - 0.5, q[..., 1] / sy - 0.5], axis=-1)
    return uv, q[..., 2]


def transform_points(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply rigid transform(s) ``(..., 4, 4)`` to points ``(N, 3)`` -> ``(..., N, 3)``."""
    transform = np.asarray(transform, dtype=float)
    return np.einsum("...ij,nj->...ni", transform[..., :3, :3], np.asarray(points, float)) + transform[
        ..., None, :3, 3
    ]


def points_in_slab(transform: np.ndarray, points: np.ndarray, margin_mm: float,
                   extent_mm: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The points within ``margin_mm`` of the plane ``z = 0`` of a frame, and their coordinates there.

    The same as ``ip = transform_points(transform, points)`` followed by
    ``|ip_z| <= margin_mm`` (and, with ``extent_mm = (w, h)``, ``-margin_mm <= ip_x
    <= w + margin_mm`` and the same for ``ip_y`` and ``h``), but only the
    out-of-plane coordinate is computed for every point (one matrix-vector
    product); the full transform runs on the few points near the plane. The
    coordinates returned are :func:`transform_points`' for those points, so the
    selection and the values are the ones the full transform gives.

    Parameters
    ----------
    transform : (4, 4) rigid transform from the points' frame to the plane's frame.
    points : (N, 3) points (mm).
    margin_mm : half-thickness of the slab (mm).
    extent_mm : (width, height) of the rectangle ``[0, w] x [0, h]`` in the plane (mm), widened by
        ``margin_mm``; None: no limit in the plane.

    Returns
    -------
    index : (M,) int indices of the selected points, increasing.
    ip : (M, 3) their coordinates in the plane's frame (mm).
    """
    transform = np.asarray(transform, dtype=float)
    points = np.asarray(points, dtype=float)
    m = float(margin_mm)
    # a coarse test with a small slack, then the exact one on the transform's own values
    z = points @ transform[2, :3] + transform[2, 3]
    index = np.flatnonzero(np.abs(z) <= m + 1e-6 * (1.0 + abs(m)))
    ip = transform_points(transform, points[index])
    ok = np.abs(ip[:, 2]) <= m
    if extent_mm is not None:
        w, h = extent_mm
        ok &= (ip[:, 0] >= -m) & (ip[:, 0] <= w + m) & (ip[:, 1] >= -m) & (ip[:, 1] <= h + m)
    return index[ok], ip[ok]


def rigid_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rigid transform(s) mapping ``src`` onto ``dst`` (Kabsch), batched.

    The rotation is :meth:`scipy.spatial.transform.Rotation.align_vectors`
    (Kabsch's SVD with the reflection fixed) of the centred point sets; the
    translation maps the centroid of ``src`` onto that of ``dst``.

    Parameters
    ----------
    src : (M, 3) or (..., M, 3) array (mm).
    dst : (..., M, 3) array (mm), broadcastable against ``src``.

    Returns
    -------
    (..., 4, 4) array ``T`` minimising ``sum |T src - dst|^2`` over rotations
    (``det = +1``) and translations. Works for coplanar ``src`` (image points).
    """
    src = np.asarray(src, dtype=float)
    dst = np.asarray(dst, dtype=float)
    shape = np.broadcast_shapes(src.shape, dst.shape)
    s = np.broadcast_to(src, shape).reshape(-1, *shape[-2:])
    d = np.broadcast_to(dst, shape).reshape(-1, *shape[-2:])
    cs = s.mean(axis=-2)
    cd = d.mean(axis=-2)
    rot = np.empty((len(s), 3, 3))
    for i in range(len(s)):
        # align_vectors(a, b) finds R with a ~ R b: here dst ~ R src, both centred.
        rot[i] = Rotation.align_vectors(d[i] - cd[i], s[i] - cs[i])[0].as_matrix()
    trans = cd - np.einsum("nij,nj->ni", rot, cs)
    return make_transform(rot, trans).reshape(shape[:-2] + (4, 4))


def perturbation(rotation_deg: np.ndarray, translation_mm: np.ndarray) -> np.ndarray:
    """Small rigid perturbation(s) ``Delta`` from Euler xyz angles and a translation.

    Parameters
    ----------
    rotation_deg : (..., 3) array, extrinsic xyz Euler angles (degrees).
    translation_mm : (..., 3) array, translation (mm).

    Returns
    -------
    (..., 4, 4) array. A perturbed pose is ``pose @ Delta`` (applied in the
    probe-marker frame, so that the fiducial displacement of Eq. 2 is
    ``|f - Delta f|`` whatever the pose).
    """
    rotation_deg = np.asarray(rotation_deg, dtype=float)
    translation_mm = np.asarray(translation_mm, dtype=float)
    return pose_from_params(np.concatenate(np.broadcast_arrays(translation_mm, rotation_deg), axis=-1))


def mean_fiducial_displacement(
    pose_a: np.ndarray, pose_b: np.ndarray, fiducials: np.ndarray = PROBE_FIDUCIALS_MM
) -> np.ndarray:
    """Mean distance (mm) the marker fiducials move between two poses.

    Parameters
    ----------
    pose_a, pose_b : (..., 4, 4) arrays, broadcastable.
    fiducials : (F, 3) array, fiducials in the marker frame (mm).

    Returns
    -------
    (...) array, mean over fiducials of ``|pose_a f - pose_b f|`` (mm).
    """
    pa = transform_points(pose_a, fiducials)
    pb = transform_points(pose_b, fiducials)
    return np.linalg.norm(pa - pb, axis=-1).mean(axis=-1)


def interpolate_poses(
    times: np.ndarray, poses: np.ndarray, query: np.ndarray, extrapolate: bool = False
) -> np.ndarray:
    """Poses at arbitrary times: linear in translation, slerp in rotation.

    Parameters
    ----------
    times : (N,) array, strictly increasing sample times (ms).
    poses : (N, 4, 4) array, rigid transforms at ``times``.
    query : (M,) array, times to interpolate at (ms).
    extrapolate : bool, hold the end poses outside ``[times[0], times[-1]]``
        instead of raising.

    Returns
    -------
    (M, 4, 4) array.

    Raises
    ------
    ValueError
        If ``times`` is not strictly increasing, or a query lies outside the
        sampled range and ``extrapolate`` is False.
    """
    times = np.asarray(times, dtype=float)
    query = np.asarray(query, dtype=float)
    poses = np.asarray(poses, dtype=float)
    if times.ndim != 1 or len(times) < 2 or np.any(np.diff(times) <= 0):
        raise ValueError("interpolate_poses: times must be 1-D, strictly increasing, length >= 2")
    if not extrapolate and (query.min() < times[0] or query.max() > times[-1]):
        raise ValueError(
            f"interpolate_poses: query times [{query.min():.3f}, {query.max():.3f}] ms leave the "
            f"sampled range [{times[0]:.3f}, {times[-1]:.3f}] ms"
        )
    q = np.clip(query, times[0], times[-1])
    slerp = Slerp(times, Rotation.from_matrix(poses[:, :3, :3]))
    rot = slerp(q).as_matrix()
    trans = np.stack([np.interp(q, times, poses[:, :3, 3][:, k]) for k in range(3)], axis=1)
    return make_transform(rot, trans)


def released_calibration() -> np.ndarray:
    """The released image-to-probe calibration as a (4, 4) transform (mm)."""
    return pose_from_params(np.concatenate([RELEASED_CALIB_TRANSLATION_MM, RELEASED_CALIB_EULER_DEG]))


def rotation_angle_deg(transform: np.ndarray) -> np.ndarray:
    """Rotation angle (degrees) of rigid transform(s) ``(..., 4, 4)`` or ``(..., 3, 3)``."""
    transform = np.asarray(transform, dtype=float)
    rot = transform[..., :3, :3]
    cos = (np.trace(rot, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
