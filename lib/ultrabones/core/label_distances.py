"""Distances between two bone labels of one image, in millimetres: pixel to nearest pixel, centre line to centre line.

Every pixel of one mask gets its Euclidean distance (mm) to the nearest pixel of the other (Eq. 3 of the paper,
:func:`directed_distances`), from ``scipy.ndimage.distance_transform_edt`` with the pixel spacing as ``sampling``
(rows are ``sy`` mm apart, columns ``sx`` mm) on the bounding box of both masks, which leaves every distance exact
(the nearest target pixel always lies inside that box); the contour label error (:func:`contour_error_mm`) compares
the labels' centre lines instead, so that a contour offset by ``d`` reads ``d`` whatever the band's width. The
checks of masks, spacings and thresholds that every scorer of labels shares live here too. The scores built on
these distances (Eqs. 4-6, Dice, HD95, ASSD) are :mod:`ultrabones.core.distance_scores`; both sit in ``core``
because the segmentation, the evaluation and the twin all measure labels with them.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ultrabones.core.errors import DatasetError, ParamsError


# ----------------------------------------------------------------------------- validation


def check_sigmas(sigmas: Iterable[float]) -> np.ndarray:
    """Validate distance thresholds (mm): a non-empty, finite, non-negative, increasing list.

    Raises
    ------
    ParamsError
        Naming the first offending value.
    """
    arr = np.asarray(list(sigmas) if not isinstance(sigmas, np.ndarray) else sigmas, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ParamsError(f"sigmas: expected a non-empty list of thresholds in mm, got shape {arr.shape}")
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ParamsError(f"sigmas[{i}] = {arr[i]:g}: thresholds must be finite and >= 0 mm")
    steps = np.diff(arr)
    if np.any(steps <= 0):
        i = int(np.flatnonzero(steps <= 0)[0]) + 1
        raise ParamsError(
            f"sigmas[{i}] = {arr[i]:g} mm does not increase (previous {arr[i - 1]:g} mm): "
            "thresholds must be strictly increasing"
        )
    return arr


def check_spacing(spacing) -> tuple[float, float]:
    """Validate a pixel spacing ``(sx, sy)`` in mm (column step, row step)."""
    try:
        sx, sy = (float(v) for v in spacing)
    except (TypeError, ValueError):
        raise ParamsError(f"spacing: expected (sx, sy) in mm per pixel, got {spacing!r}") from None
    if not (np.isfinite(sx) and np.isfinite(sy) and sx > 0 and sy > 0):
        raise ParamsError(f"spacing: (sx, sy) must be positive finite mm per pixel, got {spacing!r}")
    return sx, sy


def check_masks(pred: np.ndarray, gt: np.ndarray, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Two 2-D masks of one size, as bool arrays.

    Raises
    ------
    DatasetError
        If either is not 2-D or their sizes differ (``where`` names the frame).
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    at = f"{where}: " if where else ""
    if pred.ndim != 2 or gt.ndim != 2:
        raise DatasetError(f"{at}masks must be 2-D images, got prediction {pred.shape} and label {gt.shape}")
    if pred.shape != gt.shape:
        raise DatasetError(
            f"{at}prediction size {pred.shape[1]}x{pred.shape[0]} (W x H) differs from the label's "
            f"{gt.shape[1]}x{gt.shape[0]}"
        )
    return pred.astype(bool, copy=False), gt.astype(bool, copy=False)


# ----------------------------------------------------------------------------- distances


def directed_distances(src: np.ndarray, dst: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) from every pixel of ``src`` to the nearest pixel of ``dst`` (Eq. 3).

    Parameters
    ----------
    src, dst : (H, W) bool masks of one image.
    spacing : (sx, sy) mm per pixel (column step, row step).

    Returns
    -------
    (n,) float array in row-major order of ``src``'s pixels; ``inf`` for every
    pixel when ``dst`` is empty, an empty array when ``src`` is.
    """
    sx, sy = check_spacing(spacing)
    src, dst = check_masks(src, dst)
    n = int(src.sum())
    if n == 0:
        return np.zeros(0)
    if not dst.any():
        return np.full(n, np.inf)
    rows, cols = np.nonzero(src | dst)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    # EDT of ~dst is, at each pixel, the distance to the nearest dst pixel; every
    # dst pixel lies in the box, so the crop changes no distance.
    edt = ndimage.distance_transform_edt(~dst[box], sampling=(sy, sx))
    return edt[src[box]]


def _run_centres(mask: np.ndarray, max_run_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the runs of ``True`` along each column of ``mask`` no longer than ``max_run_px``.

    Returns
    -------
    rows : (n,) float row coordinate of each run's centre (pixel index units,
        ``(first + last) / 2``); cols : (n,) int column of the run.
    """
    m = np.asarray(mask, bool)
    h = m.shape[0]
    pad = np.zeros((h + 2, m.shape[1]), bool)
    pad[1:-1] = m
    d = np.diff(pad.astype(np.int8), axis=0)  # +1 at a run's first row, -1 after its last
    sc, ss = np.nonzero(d.T == 1)  # (col, start) sorted by column then row
    ec, ee = np.nonzero(d.T == -1)
    length = ee - ss
    keep = length <= max_run_px
    return (ss[keep] + ee[keep] - 1) / 2.0, sc[keep]


def centre_line_points(label: np.ndarray, spacing, max_run_mm: float = 1.2) -> np.ndarray:
    """Sub-pixel points (mm, image plane) on the centre line of a band-shaped label.

    A bone label is a band about ``2 gamma`` thick around the bone contour. Its
    centre line is taken scan line by scan line: every run of label pixels along
    an image column contributes its centre (the contour crossing that scan
    line), and so does every run along an image row. A run longer than
    ``max_run_mm`` runs *along* the band rather than across it (a column run
    where the contour is steeper than about 60 degrees, a row run where it is
    flatter than about 30 degrees) and is ignored, so each part of the contour
    is sampled across its width in at least one direction. For a straight band
    every kept centre lies on its medial line exactly, which a morphological
    thinning of a 3-pixel band cannot promise (it snaps to whole pixels); for
    curved bands the error is below half a pixel. If no run is short enough (a
    blob thicker than ``max_run_mm`` everywhere), the column-run centres are used.

    Parameters
    ----------
    label : (H, W) bool mask.
    spacing : (sx, sy) mm per pixel.
    max_run_mm : longest run (mm) still counted as crossing the band.

    Returns
    -------
    (n, 2) float array of (x, y) in mm, pixel centres at ``((u + 0.5) sx, (v + 0.5) sy)``;
    empty for an empty label.
    """
    sx, sy = check_spacing(spacing)
    label = np.asarray(label, bool)
    if label.ndim != 2:
        raise DatasetError(f"label: expected a 2-D mask, got shape {label.shape}")
    if not label.any():
        return np.zeros((0, 2))
    v_c, u_c = _run_centres(label, max_run_mm / sy + 1e-9)   # column runs: rows (v) vary
    u_r, v_r = _run_centres(label.T, max_run_mm / sx + 1e-9)  # row runs: columns (u) vary
    if len(v_c) + len(u_r) == 0:
        v_c, u_c = _run_centres(label, np.inf)
    u = np.concatenate([u_c.astype(float), u_r])
    v = np.concatenate([v_c, v_r.astype(float)])
    pts = np.unique(np.c_[(u + 0.5) * sx, (v + 0.5) * sy], axis=0)
    return pts


def contour_distances(label: np.ndarray, truth: np.ndarray, spacing,
                      max_run_mm: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each centre-line point of ``label`` to the centre line of ``truth``, and back.

    See :func:`centre_line_points`. Empty arrays when either label is empty.
    """
    a = centre_line_points(label, spacing, max_run_mm)
    b = centre_line_points(truth, spacing, max_run_mm)
    if not len(a) or not len(b):
        return np.zeros(0), np.zeros(0)
    return cKDTree(b).query(a)[0], cKDTree(a).query(b)[0]


def contour_error_mm(label: np.ndarray, truth: np.ndarray, spacing, max_run_mm: float = 1.2) -> float:
    """Contour label error (mm): symmetric mean distance between the centre lines of two labels.

    ``(mean d(label -> truth) + mean d(truth -> label)) / 2`` over the
    centre-line points of :func:`centre_line_points`. Unlike the mean distance
    between two bands (whose pixels overlap when the bands are less than a band
    width apart, so a 0.5 mm offset of a 0.6 mm band reads about 0.3 mm), a
    contour offset by ``d`` reads ``d``; a contour that is missing in one
    label counts through the other direction.

    Parameters
    ----------
    label, truth : (H, W) bool full labels (method's, true).
    spacing : (sx, sy) mm per pixel.
    max_run_mm : see :func:`centre_line_points` (default 1.2 mm: four times gamma = 0.3 mm).

    Returns
    -------
    float, mm; NaN when either label is empty.
    """
    d_ab, d_ba = contour_distances(label, truth, spacing, max_run_mm)
    if not len(d_ab):
        return float("nan")
    return float((d_ab.mean() + d_ba.mean()) / 2.0)
