"""A label measured against the true one: the mean distance of its pixels to the truth (mm), and precision
and recall within a tolerance; a contour measured against the true one: their symmetric mean distance (mm)."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from ultrabones.core.label_distances import directed_distances


def label_distance_mm(label: np.ndarray, truth: np.ndarray, spacing) -> float:
    """Mean distance (mm) from each pixel of ``label`` to the nearest pixel of ``truth``.

    NaN when either is empty (distances from :func:`ultrabones.core.label_distances.directed_distances`).
    """
    label, truth = np.asarray(label, bool), np.asarray(truth, bool)
    if not label.any() or not truth.any():
        return float("nan")
    return float(directed_distances(label, truth, spacing).mean())


def precision_recall(pred: np.ndarray, truth: np.ndarray, spacing, tol_mm: float = 0.5) -> tuple[float, float]:
    """Share of ``pred`` pixels within ``tol_mm`` of ``truth`` and of ``truth`` within ``tol_mm`` of ``pred``.

    NaN for a share whose denominator is empty (0 when only the other mask is empty).
    """
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    prec = float((directed_distances(pred, truth, spacing) <= tol_mm).mean()) if pred.any() else float("nan")
    rec = float((directed_distances(truth, pred, spacing) <= tol_mm).mean()) if truth.any() else float("nan")
    return prec, rec


def chamfer_mm(a: np.ndarray, b: np.ndarray, extent_mm: tuple[float, float] | None = None,
               border_mm: float = 1.0) -> float:
    """Symmetric mean nearest-neighbour distance (mm) between two contours ``(N, 2)``, ``(M, 2)`` (image mm).

    Parameters
    ----------
    extent_mm : the image's (width, height) in mm; when given, points within ``border_mm`` of its edge
        are left out, so that a piece of contour entering or leaving the view in one of the two does
        not count as an error.

    Returns
    -------
    float, nan if either contour is empty.
    """
    a, b = np.asarray(a, float).reshape(-1, 2), np.asarray(b, float).reshape(-1, 2)
    if extent_mm is not None:
        w, h = extent_mm

        def inner(p):
            return p[(p[:, 0] > border_mm) & (p[:, 0] < w - border_mm) & (p[:, 1] > border_mm)
                     & (p[:, 1] < h - border_mm)]

        a, b = inner(a), inner(b)
    if not len(a) or not len(b):
        return float("nan")
    da, _ = cKDTree(b).query(a)
    db, _ = cKDTree(a).query(b)
    return float(0.5 * (da.mean() + db.mean()))
