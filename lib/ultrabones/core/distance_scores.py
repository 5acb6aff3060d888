"""Distance-thresholded accuracy, completeness and F1 of one prediction against one label (Eqs. 3-6), and its
Dice, HD95 and ASSD.

With the directed distances of :mod:`ultrabones.core.label_distances` (mm, Eq. 3) and a threshold ``sigma`` (mm,
strict ``<``): accuracy ``Acc(sigma)`` is the share of the predicted pixels ``P`` closer than ``sigma`` to the label
``G`` (Eq. 4), completeness ``Com(sigma)`` the share of ``G`` closer than ``sigma`` to ``P`` (Eq. 5), and
``F1 = 2 Acc Com / (Acc + Com)`` (Eq. 6; 0 when both are 0). On a pixel lattice a distance can equal a threshold
exactly (5 pixels of 0.1 mm at 0.5 mm); distances within :data:`TIE_MM` (1e-9 mm) of ``sigma`` count as equal,
hence not below it, whatever the floating-point rounding. A ratio ``0/0`` counts as 1 under the ``strict``
protocol (an empty prediction scores accuracy 1, completeness 0 and F1 0 on a non-empty label); the ``released``
protocol leaves such a pair out (NaN). The border metrics (the US-3D thesis) are Dice ``2|P & G| / (|P| + |G|)``,
HD95 ``max(q95(d_P->G), q95(d_G->P))`` (mm) and ASSD ``(mean d_P->G + mean d_G->P) / 2`` (mm) over the whole
masks (bone labels are a few pixels thick, so every pixel is a border pixel); HD95 and ASSD exist only when both
masks are non-empty. The means over a data set's frames are :mod:`ultrabones.evaluation.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ultrabones.core.errors import ParamsError
from ultrabones.core.label_distances import check_masks, check_sigmas, check_spacing, directed_distances

#: The paper's thresholds: 0 to 2.0 mm in 0.1 mm steps.
PAPER_SIGMAS_MM = tuple(round(0.1 * i, 1) for i in range(21))
PROTOCOLS = ("released", "strict")
SCORES = ("accuracy", "completeness", "f1")


#: Distances within this of a threshold count as equal to it (mm): on a pixel lattice, d = sigma
#: happens exactly (e.g. 5 pixels of 0.1 mm at 0.5 mm) and float rounding must not decide "<".
TIE_MM = 1e-9


def _ratio_below(d: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Share of ``d`` strictly below each sigma (NaN for an empty ``d``); ties within :data:`TIE_MM` are not below."""
    if d.size == 0:
        return np.full(sigmas.shape, np.nan)
    return np.searchsorted(np.sort(d), sigmas - TIE_MM, side="left") / d.size


def _f1(acc: np.ndarray, com: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        den = acc + com
        return np.where(den > 0, 2 * acc * com / np.where(den > 0, den, 1), 0.0)


@dataclass
class PairScores:
    """Scores of one prediction against one label (one frame, one region).

    Attributes
    ----------
    accuracy, completeness, f1 : (n_sigma,) arrays under the strict convention
        (``0/0`` counts as 1), always finite.
    defined : both masks non-empty (the frame counts in the ``released`` protocol).
    n_pred, n_gt : pixel counts of the two masks.
    d_pred_to_gt, d_gt_to_pred : the directed distances (mm).
    """

    accuracy: np.ndarray
    completeness: np.ndarray
    f1: np.ndarray
    defined: bool
    n_pred: int
    n_gt: int
    d_pred_to_gt: np.ndarray = field(repr=False)
    d_gt_to_pred: np.ndarray = field(repr=False)


def pair_scores(pred: np.ndarray, gt: np.ndarray, spacing, sigmas: np.ndarray) -> PairScores:
    """Accuracy, completeness and F1 of ``pred`` against ``gt`` for every sigma (Eqs. 3-6).

    ``sigmas`` must already be validated (:func:`check_sigmas`).
    """
    return scores_from_distances(directed_distances(pred, gt, spacing), directed_distances(gt, pred, spacing), sigmas)


def scores_from_distances(d_pg: np.ndarray, d_gp: np.ndarray, sigmas: np.ndarray) -> PairScores:
    """:class:`PairScores` from the two directed distance sets (mm) of a prediction and a label."""
    acc = _ratio_below(d_pg, sigmas)
    com = _ratio_below(d_gp, sigmas)
    acc = np.where(np.isnan(acc), 1.0, acc)  # nothing predicted: nothing wrong
    com = np.where(np.isnan(com), 1.0, com)  # nothing to find: nothing missed
    f1 = _f1(acc, com)
    return PairScores(acc, com, f1, bool(d_pg.size and d_gp.size), d_pg.size, d_gp.size, d_pg, d_gp)


def distance_metrics(pred, gt, spacing, sigmas=PAPER_SIGMAS_MM, protocol: str = "strict") -> dict:
    """Accuracy, completeness and F1 of one prediction against one label, per sigma.

    The public entry point for a single image (the segmentation stage uses it for
    its validation F1 at 0.5 mm).

    Parameters
    ----------
    pred, gt : (H, W) masks (bool or 0/1) of one image.
    spacing : (sx, sy) mm per pixel (column step, row step).
    sigmas : increasing distance thresholds (mm); a pixel is correct if its
        distance is strictly below the threshold.
    protocol : ``"strict"`` (``0/0`` counts as 1, always finite) or
        ``"released"`` (NaN when either mask is empty).

    Returns
    -------
    dict with ``sigmas_mm``, ``accuracy``, ``completeness``, ``f1`` ((n_sigma,)
    arrays) and ``n_pred``, ``n_gt`` (pixels).

    Raises
    ------
    DatasetError
        If the masks differ in size.
    ParamsError
        If the thresholds are not increasing, or the spacing is not positive.
    """
    if protocol not in PROTOCOLS:
        raise ParamsError(f"protocol {protocol!r}: one of {list(PROTOCOLS)}")
    sig = check_sigmas(sigmas)
    pred, gt = check_masks(pred, gt)
    s = pair_scores(pred, gt, spacing, sig)
    out = {"sigmas_mm": sig, "accuracy": s.accuracy, "completeness": s.completeness, "f1": s.f1,
           "n_pred": s.n_pred, "n_gt": s.n_gt}
    if protocol == "released" and not s.defined:
        for k in SCORES:
            out[k] = np.full(sig.shape, np.nan)
    return out


def border_metrics(pred, gt, spacing, d_pred_to_gt=None, d_gt_to_pred=None) -> dict:
    """Dice, HD95 (mm) and ASSD (mm) of one prediction against one label.

    Parameters
    ----------
    pred, gt : (H, W) masks of one image.
    spacing : (sx, sy) mm per pixel.
    d_pred_to_gt, d_gt_to_pred : the directed distances if already computed.

    Returns
    -------
    dict: ``dice`` (1 when both masks are empty), ``hd95_mm`` and ``assd_mm``
    (NaN unless both masks are non-empty).
    """
    pred, gt = check_masks(pred, gt)
    n_p, n_g = int(pred.sum()), int(gt.sum())
    dice = 1.0 if n_p + n_g == 0 else 2.0 * int((pred & gt).sum()) / (n_p + n_g)
    if n_p == 0 or n_g == 0:
        return {"dice": dice, "hd95_mm": float("nan"), "assd_mm": float("nan")}
    if d_pred_to_gt is None:
        d_pred_to_gt = directed_distances(pred, gt, spacing)
    if d_gt_to_pred is None:
        d_gt_to_pred = directed_distances(gt, pred, spacing)
    hd95 = max(np.percentile(d_pred_to_gt, 95), np.percentile(d_gt_to_pred, 95))
    assd = 0.5 * (d_pred_to_gt.mean() + d_gt_to_pred.mean())
    return {"dice": dice, "hd95_mm": float(hd95), "assd_mm": float(assd)}


def brute_force_metrics(pred, gt, spacing, sigmas=PAPER_SIGMAS_MM, chunk: int = 2048) -> dict:
    """Reference implementation of :func:`distance_metrics` by pairwise distances.

    Every pixel of one mask against every pixel of the other (``O(|P| |G|)``),
    for tests and benchmarks only. Same conventions and return value as
    :func:`distance_metrics` with ``protocol="strict"``.
    """
    sig = check_sigmas(sigmas)
    pred, gt = check_masks(pred, gt)
    sx, sy = check_spacing(spacing)
    scale = np.array([sy, sx])
    p = np.argwhere(pred) * scale
    g = np.argwhere(gt) * scale

    def nearest(a, b):
        if len(a) == 0:
            return np.zeros(0)
        if len(b) == 0:
            return np.full(len(a), np.inf)
        out = np.empty(len(a))
        for i in range(0, len(a), chunk):
            diff = a[i:i + chunk, None, :] - b[None, :, :]
            out[i:i + chunk] = np.sqrt((diff ** 2).sum(-1)).min(1)
        return out

    d_pg, d_gp = nearest(p, g), nearest(g, p)
    acc = np.array([(d_pg < s - TIE_MM).mean() if d_pg.size else 1.0 for s in sig])
    com = np.array([(d_gp < s - TIE_MM).mean() if d_gp.size else 1.0 for s in sig])
    return {"sigmas_mm": sig, "accuracy": acc, "completeness": com, "f1": _f1(acc, com),
            "n_pred": len(p), "n_gt": len(g)}
