"""A frame's bone labels at a given pose (paper Section 3.1).

- :func:`full_label` is the projection of the intersection ``I_t = {u in U_t | min_c |u - c| <= gamma}`` into the
  image: every pixel whose centre (mapped to CT by Eq. 1) lies within ``gamma`` (mm) of a point of ``C``.
- :func:`visible_label` removes from a full label the pixels in the acoustic shadow of the bone
  (:func:`shadow_mask`) and those whose incidence angle exceeds 85 degrees.
- :func:`points_near` keeps the points of ``C`` that can be labelled at a pose or at any of its corrections, so
  that labels are drawn from a slab of a dense ``C`` instead of all of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ultrabones.core import geometry
from ultrabones.labels.objective import FrameObjective


def full_label(image_shape, pose, calib, spacing, points, gamma_mm: float = 0.3) -> np.ndarray:
    """The full (any-pose) bone label: pixels whose centre lies within ``gamma`` of ``C``.

    Parameters
    ----------
    image_shape : (H, W) pixels.
    pose : (4, 4) probe marker in CT (mm); the initial, optimised or registered pose.
    calib : (4, 4) image plane -> probe marker (mm).
    spacing : (sx, sy) mm per pixel.
    points : (N, 3) ``C`` in CT (mm), e.g. from :func:`~ultrabones.labels.cloud.surface_points`.
    gamma_mm : intersection thickness (mm), the paper's 0.3.

    Returns
    -------
    (H, W) bool array. All False if ``pose`` is not finite.
    """
    pose = np.asarray(pose, float)
    if not np.isfinite(pose).all():
        return np.zeros(tuple(image_shape), bool)
    obj = FrameObjective(np.zeros(tuple(image_shape), np.float64), pose, calib, spacing, points,
                         gamma_mm, bound_deg=0.0, bound_mm=0.0)
    return obj.mask()


@dataclass
class VisibleLabel:
    """A full label split by the two ultrasound-physics filters (all (H, W) bool).

    visible : kept pixels (the final label).
    shadow : full-label pixels removed as lying in the acoustic shadow.
    steep : full-label pixels (not in shadow) removed for an incidence angle above the limit.
    incidence_deg : (H, W) float, incidence angle at each full-label pixel (NaN elsewhere).
    """

    visible: np.ndarray
    shadow: np.ndarray
    steep: np.ndarray
    incidence_deg: np.ndarray


def shadow_mask(full: np.ndarray, gap_px: int = 1) -> np.ndarray:
    """Label pixels in the acoustic shadow: below the first bone crossing of each scan line.

    Scan lines are the image columns (a linear probe, as the paper's vertical
    scan lines). In each column, the first run of label pixels (gaps up to
    ``gap_px`` rows bridged) is the bone surface the beam meets first; every
    label pixel below the end of that run is in its shadow. (A scan line that
    grazes a bone meets it in a single run; the incidence filter removes such
    pixels.)

    Parameters
    ----------
    full : (H, W) bool full label.
    gap_px : rows of gap still counted as the same crossing.

    Returns
    -------
    (H, W) bool, the shadowed label pixels.
    """
    full = np.asarray(full, bool)
    bridged = full.copy()
    for g in range(1, gap_px + 1):  # close gaps of up to gap_px rows
        bridged[:-g] |= full[g:] & np.maximum.accumulate(full[:-g], axis=0)
    seen = np.maximum.accumulate(bridged, axis=0)
    left = np.maximum.accumulate(seen & ~bridged, axis=0)  # below the end of the first run
    return full & left


def visible_label(full, pose, calib, spacing, points, normals, gamma_mm: float = 0.3,
                  incidence_max_deg: float = 85.0, gap_px: int = 1) -> VisibleLabel:
    """The visible part of a full label: shadow and steep-incidence pixels removed.

    The incidence angle of a label pixel is the angle between the scan line
    (the image's vertical, ``v`` axis) and the CT surface normal of its nearest
    point of ``C``, projected into the image plane (Section 3.1); as an angle
    between lines it lies in ``[0, 90]`` degrees.

    Parameters
    ----------
    full : (H, W) bool full label made with ``pose`` (see :func:`full_label`).
    pose, calib, spacing, points, gamma_mm : as for :func:`full_label`.
    normals : (N, 3) unit normals of ``points`` (CT frame).
    incidence_max_deg : largest incidence angle kept (degrees), the paper's 85.
    gap_px : see :func:`shadow_mask`.

    Returns
    -------
    :class:`VisibleLabel`.
    """
    full = np.asarray(full, bool)
    shadow = shadow_mask(full, gap_px)
    inc = np.full(full.shape, np.nan)
    vv, uu = np.nonzero(full)
    if len(vv):
        ip_from_ct = geometry.invert_transform(np.asarray(pose, float) @ np.asarray(calib, float))
        near, ip = geometry.points_in_slab(ip_from_ct, points, gamma_mm + 1e-9)
        sx, sy = spacing
        centres = np.c_[(uu + 0.5) * sx, (vv + 0.5) * sy, np.zeros(len(uu))]
        if len(near):
            _, j = cKDTree(ip).query(centres)
            n_ip = np.asarray(normals, float)[near][j] @ ip_from_ct[:3, :3].T
            inplane = np.hypot(n_ip[:, 0], n_ip[:, 1])
            with np.errstate(invalid="ignore", divide="ignore"):
                cosang = np.abs(n_ip[:, 1]) / inplane
            inc[vv, uu] = np.degrees(np.arccos(np.clip(np.nan_to_num(cosang, nan=0.0), 0.0, 1.0)))
    steep = full & ~shadow & (np.nan_to_num(inc, nan=90.0) > incidence_max_deg)
    return VisibleLabel(visible=full & ~shadow & ~steep, shadow=shadow, steep=steep, incidence_deg=inc)


def points_near(points, shape, pose, others, calib, spacing, gamma_mm) -> np.ndarray:
    """Mask of the points that can lie within ``gamma`` of the image at ``pose`` or any of ``others``.

    A rigid motion moves the points of the image rectangle most at one of its
    corners (the displacement is convex), so the largest corner displacement
    from ``pose`` to each other pose, plus ``gamma``, bounds how far from the
    ``pose`` image a point can be and still be labelled at another pose.

    Parameters
    ----------
    points : (N, 3) ``C`` in CT (mm); shape : the image's (H, W) (pixels).
    pose : (4, 4) probe marker in CT (mm); others : further such poses (e.g. registered, optimised).
    calib : (4, 4) image plane -> probe marker (mm); spacing : (sx, sy) mm per pixel; gamma_mm : as for
        :func:`full_label` (mm).

    Returns
    -------
    (N,) bool mask of the points to keep.
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
