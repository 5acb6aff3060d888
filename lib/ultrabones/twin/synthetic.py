"""Synthetic B-mode-like frames of a known geometry, for the labelling's tests and benchmarks."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from ultrabones.labels.label import full_label, visible_label


def synthetic_image(pose, calib, spacing, shape, points, normals, gamma_mm: float = 0.3, seed: int = 0,
                    noise: float = 0.05) -> np.ndarray:
    """A simple B-mode-like frame of a known geometry, for tests and benchmarks.

    The visible bone surface at ``pose`` is drawn bright (brighter at normal
    incidence), blurred over about 0.3 mm, above a dark acoustic shadow, on a
    speckle-like textured soft-tissue background. Not a simulator: only what the
    objective needs (a bright, thin bone response) on a known geometry.

    Returns
    -------
    (H, W) uint8 image.
    """
    rng = np.random.default_rng(seed)
    full = full_label(shape, pose, calib, spacing, points, gamma_mm)
    vis = visible_label(full, pose, calib, spacing, points, normals, gamma_mm)
    h, w = shape
    tissue = 0.18 + 0.08 * gaussian_filter(rng.standard_normal(shape), 1.0)
    below = np.maximum.accumulate(vis.visible, axis=0) & ~vis.visible
    tissue[below] *= 0.25
    bright = np.where(vis.visible, np.cos(np.radians(np.nan_to_num(vis.incidence_deg, nan=90.0))) ** 0.5, 0.0)
    bright = gaussian_filter(bright, 0.15 / spacing[1])
    bright = bright / max(bright.max(), 1e-9)
    img = tissue + 0.8 * bright + noise * rng.standard_normal(shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
