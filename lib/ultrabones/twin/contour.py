"""A label measured against the true one: the mean distance of its pixels to the truth (mm), and precision
and recall within a tolerance."""

from __future__ import annotations

import numpy as np

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
