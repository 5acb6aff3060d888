"""Eq. 2 and the full label straight from the paper's definition (slow): every pixel mapped to CT by Eq. 1,
``I_t`` by a KD-tree query of ``C``. Kept to test :class:`~ultrabones.labels.objective.FrameObjective` against.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from ultrabones.core import geometry


def reference_objective(x, image, pose, calib, spacing, tree: cKDTree, lam: float, gamma_mm: float = 0.3,
                        fiducials=geometry.PROBE_FIDUCIALS_MM) -> float:
    """Eq. 2 straight from the paper's definition, for one parameter vector (slow).

    Every pixel is mapped to CT through Eq. 1 with the perturbed pose
    ``pose @ perturbation(x[:3], x[3:])``; ``I_t`` holds those within ``gamma``
    of ``C`` (KD-tree query); the value is the mean of ``f`` (image / 255) over
    ``I_t`` (0 if empty) minus ``lam`` times the mean fiducial displacement (mm).

    Parameters
    ----------
    x : (6,) rotation (deg, Euler xyz) and translation (mm).
    image : (H, W) uint8 image.
    tree : ``cKDTree`` of ``C`` (CT, mm).
    """
    x = np.asarray(x, float)
    delta = geometry.perturbation(x[:3], x[3:])
    image = np.asarray(image)
    f = image.astype(float) / 255.0 if image.dtype == np.uint8 else image.astype(float)
    h, w = f.shape
    pts = geometry.pixels_to_ct(geometry.pixel_grid(w, h), np.asarray(pose, float) @ delta, calib, spacing)
    dist, _ = tree.query(pts, distance_upper_bound=gamma_mm * (1 + 1e-12))
    inside = dist <= gamma_mm
    mean = float(f.ravel()[inside].mean()) if inside.any() else 0.0
    return mean - lam * float(geometry.mean_fiducial_displacement(np.eye(4), delta, fiducials))


def reference_label(image_shape, pose, calib, spacing, tree: cKDTree, gamma_mm: float = 0.3) -> np.ndarray:
    """The full label from the paper's definition (KD-tree over every pixel), for tests."""
    h, w = image_shape
    pts = geometry.pixels_to_ct(geometry.pixel_grid(w, h), pose, calib, spacing)
    dist, _ = tree.query(pts, distance_upper_bound=gamma_mm * (1 + 1e-12))
    return (dist <= gamma_mm).reshape(h, w)
