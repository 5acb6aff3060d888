"""The true labels of a twin frame, drawn from the image plane's cut of the bone meshes.

The plane cuts the bone meshes in segments (:func:`ultrabones.twin.scene.plane_contour`); the *full* label holds
every pixel whose centre lies within ``gamma`` (0.3 mm) of the cut (the whole CT contour in the plane); the
*visible* label drops pixels deeper than the first bone hit of their scan line (shadow) and pixels whose in-plane
incidence angle exceeds 85 degrees. The in-plane incidence is the angle between the surface normal projected into
the image plane and the upward scan-line direction (0 deg: the beam meets the surface head on).
"""

from __future__ import annotations

import numpy as np

from ultrabones.twin.scene import Scene, check_geometry, first_hits, plane_contour


def rasterise_contour(points: np.ndarray, incidence: np.ndarray, width: int, height: int, spacing,
                      gamma_mm: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Pixels whose centre lies within ``gamma_mm`` of contour points.

    Returns
    -------
    mask : (H, W) bool.
    incidence : (H, W) float, in-plane incidence of a contour point within ``gamma_mm`` (degrees; nan off the mask).
    """
    sx, sy = (float(v) for v in spacing)
    mask = np.zeros((height, width), dtype=bool)
    inc = np.full((height, width), np.nan)
    if not len(points):
        return mask, inc
    # pixel offsets from the one left of / above a point that can lie within gamma of it: with the point at
    # fraction f in [0, 1) of a pixel past that pixel's centre, |offset - f| <= gamma / spacing
    eps = 1e-6
    du, dv = np.meshgrid(np.arange(int(np.ceil(-gamma_mm / sx - eps)), int(np.floor(1 + gamma_mm / sx + eps)) + 1),
                         np.arange(int(np.ceil(-gamma_mm / sy - eps)), int(np.floor(1 + gamma_mm / sy + eps)) + 1))
    u0 = np.floor(points[:, 0] / sx - 0.5).astype(int)
    v0 = np.floor(points[:, 1] / sy - 0.5).astype(int)
    u = (u0[:, None] + du.ravel()[None]).ravel()
    v = (v0[:, None] + dv.ravel()[None]).ravel()
    src = np.repeat(np.arange(len(points)), du.size)
    dist = np.hypot((u + 0.5) * sx - points[src, 0], (v + 0.5) * sy - points[src, 1])
    ok = (dist <= gamma_mm) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    u, v, src = u[ok], v[ok], src[ok]
    mask[v, u] = True
    inc[v, u] = incidence[src]  # any contour point within gamma (the last written)
    return mask, inc


def label_frame(scene: Scene, ct_from_image, width: int, height: int, spacing, gamma_mm: float = 0.3,
                max_incidence_deg: float = 85.0, bone_depth_mm: np.ndarray | None = None):
    """The true full and visible labels of a frame.

    Parameters
    ----------
    gamma_mm : half-thickness of the label band around the cut (mm; paper 0.3).
    max_incidence_deg : visible pixels have in-plane incidence at most this (degrees; paper 85).
    bone_depth_mm : (W,) first-hit depths if already cast (mm).

    Returns
    -------
    full, visible : (H, W) bool.
    contour : (M, 2) image mm, contour_incidence : (M,) degrees.
    """
    t, width, height, sx, sy = check_geometry(ct_from_image, width, height, spacing)
    pts, inc = plane_contour(scene, t, width, height, (sx, sy))
    full, pix_inc = rasterise_contour(pts, inc, width, height, (sx, sy), gamma_mm)
    if bone_depth_mm is None:
        bone_depth_mm = first_hits(scene, t, width, (sx, sy))[0]
    depth = (np.arange(height) + 0.5)[:, None] * sy
    lit = depth <= bone_depth_mm[None, :] + gamma_mm
    visible = full & lit & (pix_inc <= max_incidence_deg)
    return full, visible, pts, inc
