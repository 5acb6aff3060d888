"""Distance-thresholded accuracy, completeness and F1 of bone labels (Eqs. 3-6).

For a predicted mask ``P`` and a ground-truth mask ``G`` of one image, every
predicted pixel gets its Euclidean distance to the nearest ground-truth pixel
(Eq. 3), in millimetres, and every ground-truth pixel its distance to the
nearest predicted pixel. With a distance threshold ``sigma`` (mm, strict ``<``):

- accuracy ``Acc(sigma)``: share of ``P`` closer than ``sigma`` to ``G`` (Eq. 4);
- completeness ``Com(sigma)``: share of ``G`` closer than ``sigma`` to ``P`` (Eq. 5);
- ``F1 = 2 Acc Com / (Acc + Com)`` (Eq. 6; 0 when both are 0).

On a pixel lattice a distance can equal a threshold exactly (5 pixels of
0.1 mm at 0.5 mm); distances within ``TIE_MM`` (1e-9 mm) of ``sigma`` count as
equal, hence not below it, whatever the floating-point rounding.

Distances come from ``scipy.ndimage.distance_transform_edt`` with the pixel
spacing as ``sampling`` (rows are ``sy`` mm apart, columns ``sx`` mm), computed
once per image and mask and reused for every threshold; the transform runs on
the bounding box of ``P | G``, which leaves every distance exact (the nearest
target pixel always lies inside that box).

**Aggregation over frames.** Each frame gets its own ``Acc``, ``Com``, ``F1``
curves; the data set's figure is their mean over frames (as the released
evaluation code does, so the mean F1 is not the F1 of the mean accuracy and
completeness). Two protocols differ on frames where a mask is empty:

- ``released``: the frame is skipped when ``P`` or ``G`` is empty (per region:
  when ``P_r`` or ``G_r`` is empty). This is what the released code does; it
  flatters a model that predicts nothing on hard frames.
- ``strict``: every frame counts. A ratio ``0/0`` counts as 1 (nothing predicted
  is wrong, nothing to find is missed), so an empty prediction scores accuracy 1
  and completeness 0 (F1 0) when ``G`` is not empty, and 1 everywhere when ``G``
  is empty too; a non-empty prediction on an empty ``G`` scores accuracy 0,
  completeness 1, F1 0.

**High and low intensity.** Otsu's threshold ``t`` over the grey values of all
ground-truth pixels of the evaluation set (256-bin histogram) splits every
pixel by its own grey value: high if ``I > t``, low otherwise. Region ``r``
restricts both masks, ``P_r = P & class_r`` and ``G_r = G & class_r``, and
measures ``P_r`` against ``G_r`` exactly as above (as the released code does):
accuracy over the predicted pixels of that intensity class, distances to the
ground-truth pixels of the same class.

**Border metrics** (the US-3D thesis): Dice ``2|P & G| / (|P| + |G|)``; HD95
``max(q95(d_P->G), q95(d_G->P))`` (mm); ASSD ``(mean d_P->G + mean d_G->P) / 2``
(mm). Bone labels are a few pixels thick, so every mask pixel is a border pixel
and the distances are taken over the whole masks. HD95 and ASSD exist only when
both masks are non-empty.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from ultrabones.core import paper as _paper
from ultrabones.core.dataset import Frame
from ultrabones.core.errors import DatasetError, ParamsError
from ultrabones.core.overlay import overlay

#: The paper's thresholds: 0 to 2.0 mm in 0.1 mm steps.
PAPER_SIGMAS_MM = tuple(round(0.1 * i, 1) for i in range(21))
REGIONS = ("all", "high", "low")
PROTOCOLS = ("released", "strict")
SCORES = ("accuracy", "completeness", "f1")

#: The paper's figures at sigma = 0.5 mm (Section 4, Fig. 8), read from :mod:`ultrabones.core.paper`. Only
#: the low-intensity manual row and the overall and low-intensity model rows are given in the text.
PAPER_AT_0P5MM = _paper.at_0p5mm()


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
    from scipy.spatial import cKDTree

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


# ----------------------------------------------------------------------------- Otsu split


def intensity_histogram(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(256,) int64 counts of the grey values of ``image`` (uint8) under ``mask``."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise DatasetError(f"intensity_histogram: expected an 8-bit image, got {image.dtype}")
    _, mask = check_masks(image, mask, "intensity histogram")
    return np.bincount(image[mask], minlength=256).astype(np.int64)


def otsu_threshold(hist: np.ndarray) -> float:
    """Otsu's grey-level threshold of a 256-bin histogram (``skimage.filters.threshold_otsu``).

    Parameters
    ----------
    hist : (256,) counts of grey values 0..255 (e.g. summed :func:`intensity_histogram`).

    Returns
    -------
    The threshold ``t`` (grey level, 0..255): a pixel is high intensity if ``I > t``.

    Raises
    ------
    DatasetError
        If the histogram is empty (no label pixel at all).
    """
    from skimage.filters import threshold_otsu

    hist = np.asarray(hist, dtype=np.int64)
    if hist.shape != (256,):
        raise DatasetError(f"otsu_threshold: expected 256 bins, got {hist.shape}")
    if hist.sum() == 0:
        raise DatasetError("otsu_threshold: no label pixels in the evaluation set (every label is empty)")
    if np.count_nonzero(hist) == 1:  # a single grey value: nothing to split
        return float(np.flatnonzero(hist)[0])
    return float(threshold_otsu(hist=(hist, np.arange(256))))


def intensity_classes(image: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Per-pixel intensity classes: ``{"all": True, "high": I > t, "low": I <= t}``."""
    high = np.asarray(image) > threshold
    return {"all": np.ones(high.shape, bool), "high": high, "low": ~high}


def _bbox(mask: np.ndarray) -> tuple[slice, slice] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def frame_scores_many(preds: Mapping[str, np.ndarray], gt, image, spacing, sigmas: np.ndarray, threshold: float,
                      border: bool = True) -> dict:
    """Scores of several predictions of one frame against its label, per intensity region.

    The distance transform of each region of the label, ``EDT(~G_r)``, is computed
    once and shared by every prediction; each prediction adds its own ``EDT(~P_r)``.

    Parameters
    ----------
    preds : method name -> (H, W) mask.
    gt : (H, W) label mask.
    image : (H, W) uint8 image (grey values for the high/low split).
    spacing : (sx, sy) mm per pixel.
    sigmas : validated thresholds (mm).
    threshold : Otsu grey-level threshold.
    border : also compute Dice, HD95 and ASSD of the whole masks.

    Returns
    -------
    ``{method: {region: PairScores, "border": dict}}``.
    """
    sx, sy = check_spacing(spacing)
    gt = np.asarray(gt).astype(bool, copy=False)
    masks = {m: check_masks(p, gt, f"prediction {m!r}")[0] for m, p in preds.items()}
    classes = intensity_classes(image, threshold)
    out: dict = {m: {} for m in masks}
    for region in REGIONS:
        c = classes[region]
        g = gt & c
        ps = {m: p & c for m, p in masks.items()}
        union = g.copy()
        for p in ps.values():
            union |= p
        box = _bbox(union)
        edt_g = ndimage.distance_transform_edt(~g[box], sampling=(sy, sx)) if box is not None and g.any() else None
        for m, p in ps.items():
            if edt_g is not None:
                d_pg = edt_g[p[box]]
            else:
                d_pg = np.full(int(p.sum()), np.inf)
            d_gp = directed_distances(g, p, (sx, sy))
            out[m][region] = scores_from_distances(d_pg, d_gp, sigmas)
    if border:
        for m, p in masks.items():
            a = out[m]["all"]
            out[m]["border"] = border_metrics(p, gt, (sx, sy), a.d_pred_to_gt, a.d_gt_to_pred)
    return out


def frame_scores(pred, gt, image, spacing, sigmas: np.ndarray, threshold: float, border: bool = True) -> dict:
    """Scores of one prediction of one frame for every region, plus border metrics of the whole masks.

    See :func:`frame_scores_many`; returns ``{region: PairScores, "border": dict}``.
    """
    return frame_scores_many({"pred": pred}, gt, image, spacing, sigmas, threshold, border)["pred"]


# ----------------------------------------------------------------------------- aggregation


class Aggregate:
    """Running means over frames of per-frame curves, for both protocols.

    Memory is constant in the number of frames: only sums and counts are kept.

    Parameters
    ----------
    sigmas : the thresholds (mm).
    """

    def __init__(self, sigmas: np.ndarray):
        self.sigmas = np.asarray(sigmas, float)
        n = self.sigmas.size
        self.n_frames = 0
        self.sum = {p: {r: {k: np.zeros(n) for k in SCORES} for r in REGIONS} for p in PROTOCOLS}
        self.count = {p: {r: 0 for r in REGIONS} for p in PROTOCOLS}
        self.border_sum = {"dice": 0.0, "dice_strict": 0.0, "hd95_mm": 0.0, "assd_mm": 0.0}
        self.border_count = {"dice": 0, "dice_strict": 0, "hd95_mm": 0, "assd_mm": 0}

    def add(self, scores: Mapping) -> None:
        """Add one frame's :func:`frame_scores`."""
        self.n_frames += 1
        for r in REGIONS:
            s: PairScores = scores[r]
            vals = {"accuracy": s.accuracy, "completeness": s.completeness, "f1": s.f1}
            for k in SCORES:
                self.sum["strict"][r][k] += vals[k]
            self.count["strict"][r] += 1
            if s.defined:
                for k in SCORES:
                    self.sum["released"][r][k] += vals[k]
                self.count["released"][r] += 1
        b = scores.get("border")
        if b is not None:
            self.border_sum["dice_strict"] += b["dice"]
            self.border_count["dice_strict"] += 1
            if scores["all"].defined:
                for k in ("dice", "hd95_mm", "assd_mm"):
                    self.border_sum[k] += b[k]
                    self.border_count[k] += 1

    def curves(self) -> dict:
        """``{protocol: {region: {score: [n_sigma]}, "n_frames": {region: n}}}`` (NaN when no frame counts)."""
        out = {}
        for p in PROTOCOLS:
            out[p] = {}
            for r in REGIONS:
                c = self.count[p][r]
                out[p][r] = {k: (self.sum[p][r][k] / c if c else np.full(self.sigmas.size, np.nan)).tolist()
                             for k in SCORES}
                out[p][r]["n_frames"] = c
        return out

    def at(self, sigma: float) -> dict:
        """``{protocol: {region: {score: value, "n_frames": n}}}`` at one of the thresholds."""
        hit = np.flatnonzero(np.isclose(self.sigmas, sigma))
        if hit.size == 0:
            raise ParamsError(f"sigma {sigma} mm is not one of the evaluated thresholds {self.sigmas.tolist()}")
        i = int(hit[0])
        cur = self.curves()
        return {p: {r: {**{k: cur[p][r][k][i] for k in SCORES}, "n_frames": cur[p][r]["n_frames"]}
                    for r in REGIONS} for p in PROTOCOLS}

    def border(self) -> dict:
        """Mean Dice (released: both masks non-empty; ``dice_strict``: every frame), HD95, ASSD (mm)."""
        return {k: (self.border_sum[k] / c if (c := self.border_count[k]) else float("nan"))
                for k in self.border_sum} | {"n_frames": self.border_count["hd95_mm"]}


# ----------------------------------------------------------------------------- data sets


def labelled_frames(specimens: Sequence, require: Sequence[str] = ("Labels",), n_max: int | None = None,
                    seed: int = 0) -> list[Frame]:
    """Frames of ``specimens`` that have a label of every kind in ``require``.

    Parameters
    ----------
    specimens : :class:`ultrabones.core.dataset.Specimen` objects (the test specimens).
    require : label kinds that must exist (e.g. ``("Labels", "LabelsManual")``).
    n_max : keep at most this many, drawn uniformly without replacement with
        ``seed`` (the paper sampled 700 test images for manual labelling); None: all.

    Returns
    -------
    Frames sorted by record and timestamp.
    """
    frames = []
    for spec in specimens:
        for rec in spec.records:
            ts = None
            for kind in require:
                have = rec.labelled_timestamps(kind)
                ts = have if ts is None else np.intersect1d(ts, have)
            frames += [Frame(rec, int(t)) for t in (ts if ts is not None else [])]
    if n_max is not None and len(frames) > n_max:
        keep = np.sort(np.random.default_rng(seed).choice(len(frames), n_max, replace=False))
        frames = [frames[i] for i in keep]
    return frames


LabelSource = Callable[[Frame, tuple], np.ndarray]


def dataset_label(kind: str) -> LabelSource:
    """A label source reading ``<record>/<kind>/<t>..png`` from the dataset."""
    from ultrabones.core.dataset import read_label

    def read(frame: Frame, shape: tuple) -> np.ndarray:
        path = frame.record.label_path(frame.timestamp, kind)
        if not path.is_file():
            raise DatasetError(f"{path}: {kind} label missing for an evaluated frame")
        return read_label(path, shape)

    read.kind = kind
    return read


def label_histograms(frames: Sequence[Frame], sources: Mapping[str, LabelSource], progress: bool = True) -> dict:
    """(256,) grey-value histograms of the pixels under each source's labels, over all frames.

    Frames stream: one image and its labels are in memory at a time.
    """
    from tqdm import tqdm

    hist = {name: np.zeros(256, np.int64) for name in sources}
    for fr in tqdm(frames, desc="label histograms", disable=not progress):
        img = fr.read_image()
        for name, src in sources.items():
            hist[name] += intensity_histogram(img, src(fr, img.shape))
    return hist


def evaluate(frames: Sequence[Frame], reference: LabelSource, methods: Mapping[str, LabelSource], spacing,
             sigmas, threshold: float, progress: bool = True, keep_per_frame: float | None = 0.5) -> dict:
    """Score every method's labels against the reference labels over a set of frames.

    Parameters
    ----------
    frames : the evaluated frames.
    reference : the ground truth ``G`` (e.g. ``dataset_label("Labels")``).
    methods : name -> label source (e.g. ``{"model": dataset_label("Labels_pred"),
        "manual": dataset_label("LabelsManual")}``).
    spacing : (sx, sy) mm per pixel.
    sigmas : increasing thresholds (mm).
    threshold : Otsu grey-level threshold for the high/low split.
    keep_per_frame : also return per-frame ``(accuracy, completeness, f1)`` of
        region ``all`` at this sigma (mm) for picking examples; None: not kept.

    Returns
    -------
    ``{"aggregates": {method: Aggregate}, "per_frame": {method: (n, 3) array},
    "gt_counts": (n, 2) high and low-intensity pixels of each reference label,
    "n_frames": n, "seconds": wall time}``.
    """
    from tqdm import tqdm

    sig = check_sigmas(sigmas)
    check_spacing(spacing)
    aggs = {m: Aggregate(sig) for m in methods}
    i_keep = None
    if keep_per_frame is not None:
        hit = np.flatnonzero(np.isclose(sig, keep_per_frame))
        i_keep = int(hit[0]) if hit.size else None
    per_frame = {m: [] for m in methods}
    gt_counts = []
    t0 = time.perf_counter()
    for fr in tqdm(frames, desc="evaluating frames", disable=not progress):
        img = fr.read_image()
        gt = reference(fr, img.shape)
        gt_counts.append((int((gt & (img > threshold)).sum()), int((gt & (img <= threshold)).sum())))
        preds = {name: src(fr, img.shape) for name, src in methods.items()}
        for name, sc in frame_scores_many(preds, gt, img, spacing, sig, threshold).items():
            aggs[name].add(sc)
            if i_keep is not None:
                a = sc["all"]
                per_frame[name].append((a.accuracy[i_keep], a.completeness[i_keep], a.f1[i_keep]))
    return {"aggregates": aggs, "per_frame": {m: np.array(v).reshape(-1, 3) for m, v in per_frame.items()},
            "gt_counts": np.array(gt_counts, dtype=np.int64).reshape(-1, 2),
            "n_frames": len(frames), "seconds": time.perf_counter() - t0}


def summarise(result: Mapping, sigma: float = 0.5) -> dict:
    """Nested metrics of an :func:`evaluate` result.

    Returns
    -------
    ``{"at": {protocol: {method: {region: {accuracy, completeness, f1, n_frames}}}},
    "curves": {protocol: {method: {region: {score: [n_sigma], n_frames}}}},
    "border": {method: {dice, dice_strict, hd95_mm, assd_mm, n_frames}}}``.
    """
    aggs = result["aggregates"]
    at = {p: {} for p in PROTOCOLS}
    curves = {p: {} for p in PROTOCOLS}
    for m, agg in aggs.items():
        a, c = agg.at(sigma), agg.curves()
        for p in PROTOCOLS:
            at[p][m] = a[p]
            curves[p][m] = c[p]
    return {"at": at, "curves": curves, "border": {m: agg.border() for m, agg in aggs.items()}}


# ----------------------------------------------------------------------------- figures and tables

#: Colours of Fig. 6a: high-intensity label pixels green, low-intensity blue.
HIGH_RGB, LOW_RGB = (0.1, 0.85, 0.2), (0.15, 0.45, 1.0)


def pick_examples(gt_counts: np.ndarray, n: int) -> list[int]:
    """Indices of ``n`` example frames for Fig. 6a, spread over the frames whose
    labels hold the most low-intensity pixels (where the methods differ)."""
    counts = np.asarray(gt_counts).reshape(-1, 2)
    cand = np.flatnonzero(counts.sum(1) > 0)
    if cand.size == 0:
        return []
    order = cand[np.argsort(-counts[cand, 1], kind="stable")]
    top = order[: max(n, (order.size + 1) // 2)]
    return sorted(int(top[i]) for i in np.unique(np.linspace(0, top.size - 1, min(n, top.size)).round().astype(int)))


def intensity_overlay(image: np.ndarray, mask: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W, 3) float RGB: the grey image with ``mask`` pixels coloured by intensity class."""
    high = mask & (image > threshold)
    return overlay(image, [(high, HIGH_RGB), (mask & ~high, LOW_RGB)])


def plot_examples(frames: Sequence[Frame], columns: Mapping[str, LabelSource], threshold: float):
    """Fig. 6a: input and one overlay per label source (e.g. GT, manual, predicted), one row per frame."""
    import matplotlib.pyplot as plt

    n, k = len(frames), len(columns) + 1
    fig, axes = plt.subplots(n, k, figsize=(2.6 * k, 2.3 * n), squeeze=False)
    for i, fr in enumerate(frames):
        img = fr.read_image()
        axes[i, 0].imshow(img, cmap="gray", vmin=0, vmax=255)
        for j, (name, src) in enumerate(columns.items(), start=1):
            axes[i, j].imshow(intensity_overlay(img, src(fr, img.shape), threshold), interpolation="nearest")
        axes[i, 0].set_ylabel(fr.key, fontsize=6)
    for j, title in enumerate(["Input", *columns]):
        axes[0, j].set_title(title)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"high intensity (> {threshold:.0f}) green, low intensity blue", fontsize=9)
    fig.tight_layout()
    return fig


def plot_histograms(hists: Mapping[str, np.ndarray], threshold: float):
    """Fig. 6b: grey-value distributions of label pixels with the Otsu threshold (red line).

    One seaborn histogram per label source: the (256,) counts of :func:`label_histograms` as
    weights on one bin per grey value, normalised to the share of label pixels.
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    fig, axes = plt.subplots(1, len(hists), figsize=(4.2 * len(hists), 3.2), squeeze=False, sharey=True)
    for ax, (name, h) in zip(axes[0], hists.items()):
        h = np.asarray(h, float)
        grey = pd.DataFrame({"grey": np.arange(256), "share": h / max(h.sum(), 1)})
        sns.histplot(data=grey, x="grey", weights="share", discrete=True, stat="count",
                     color="0.4", edgecolor="none", alpha=1.0, ax=ax)
        ax.axvline(threshold, color="red", lw=1.5, label=f"Otsu {threshold:.0f}")
        low = h[: int(np.floor(threshold)) + 1].sum() / max(h.sum(), 1)
        ax.set_title(f"{name}: {100 * low:.0f}% low intensity", fontsize=9)
        ax.set_xlabel("pixel intensity")
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("share of label pixels")
    fig.tight_layout()
    return fig


def plot_curves(sigmas, curves: Mapping, title: str = "", paper: Mapping | None = None, paper_sigma: float = 0.5):
    """Fig. 8: accuracy, completeness and F1 against sigma, per method (line style) and region (colour).

    ``curves`` is ``{method: {region: {score: [n_sigma]}}}`` (one protocol of :func:`summarise`);
    ``paper`` (e.g. :data:`PAPER_AT_0P5MM`) adds the published values at ``paper_sigma`` as markers.
    """
    import matplotlib.pyplot as plt

    colours = {"all": "black", "high": "tab:green", "low": "tab:blue"}
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for ax, score in zip(axes, SCORES):
        for (method, by_region), ls in zip(curves.items(), styles):
            for region in REGIONS:
                ax.plot(sigmas, by_region[region][score], ls, color=colours[region], label=f"{method} {region}")
        for method, marker in (("model", "*"), ("manual", "X")):
            for region, vals in (paper or {}).get(method, {}).items():
                ax.plot([paper_sigma], [vals[score]], marker, color=colours[region], ms=9, mec="k", mew=0.5,
                        label=f"paper: {method} {region}", ls="none")
        ax.set_xlabel("distance threshold sigma (mm)")
        ax.set_ylabel({"accuracy": "Accuracy", "completeness": "Completeness", "f1": "F1 score"}[score])
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def table_at(at: Mapping, paper: Mapping = PAPER_AT_0P5MM):
    """The table beside the paper's: one row per method and region, both protocols and the paper's value.

    ``at`` is ``{protocol: {method: {region: {score: value}}}}``.
    """
    import pandas as pd

    rows = []
    methods = list(next(iter(at.values())))
    for method in methods:
        for region in REGIONS:
            row = {"method": method, "region": region}
            for score in SCORES:
                row[f"{score}"] = at["released"][method][region][score]
                row[f"{score}_strict"] = at["strict"][method][region][score]
                row[f"{score}_paper"] = paper.get(method, {}).get(region, {}).get(score, np.nan)
            row["n_frames"] = at["released"][method][region]["n_frames"]
            rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- checks and comparisons (notebook 05)


def check_summary(summ: Mapping) -> None:
    """Sanity of a :func:`summarise` result: every score in [0, 1] and non-decreasing in sigma.

    Raises
    ------
    AssertionError
        Naming the protocol, method, region and score.
    """
    for proto, by_method in summ["curves"].items():
        for m, by_region in by_method.items():
            for r in REGIONS:
                cur = by_region[r]
                if not cur["n_frames"]:
                    continue
                for k in SCORES:
                    v = np.asarray(cur[k], float)
                    if not np.all((v >= 0) & (v <= 1)):
                        raise AssertionError(f"{proto}/{m}/{r}/{k} outside [0, 1]")
                    if not np.all(np.diff(v) >= -1e-12):
                        raise AssertionError(f"{proto}/{m}/{r}/{k} decreases with sigma")


def model_vs_manual(at: Mapping, manual: str = "manual", model: str = "model") -> dict:
    """The paper's claim at one threshold: does the model's low-intensity completeness beat the manual labels'?

    The released protocol where both have low-intensity frames, else the strict
    one (an empty prediction scores 0). ``at`` is ``summarise(...)["at"]``.

    Returns
    -------
    ``{"beats": bool, "protocol": str, "model": value, "manual": value}``.
    """
    proto = "released" if all(at["released"][m]["low"]["n_frames"] for m in (model, manual)) else "strict"
    mod = at[proto][model]["low"]["completeness"]
    man = at[proto][manual]["low"]["completeness"]
    return {"beats": bool(mod > man), "protocol": proto, "model": mod, "manual": man}


def level_name(level: Mapping, sep: str = " ") -> str:
    """A sweep level's visibility thresholds: ``"q 0.97 c 2.00 f 0.60"`` (``c`` only when the level sets it)."""
    parts = [f"q {level['visible_quantile']:.2f}"]
    if "visible_contrast" in level:
        parts.append(f"c {level['visible_contrast']:.2f}")
    parts.append(f"f {level['visible_fraction']:.2f}")
    return sep.join(parts)


def model_vs_levels(at: Mapping, sweep_rows: Sequence[Mapping], model: str = "model") -> list[dict]:
    """The paper's claim at every level of an annotator sweep: where does the model's low-intensity
    completeness beat the annotator's?

    Per level, the released protocol where both the model and that level have low-intensity frames, else the
    strict one (as :func:`model_vs_manual`).

    Parameters
    ----------
    at : ``summarise(...)["at"]`` (the model's scores at the report threshold).
    sweep_rows : rows of :func:`ultrabones.twin.annotator.visibility_sweep` (dicts with ``level``, ``region``,
        ``completeness``, ``completeness_strict``, ``n_frames`` and the level's fields).

    Returns
    -------
    One dict per level, in level order: ``level``, the level's fields (``visible_*``), ``protocol``,
    ``model``, ``annotator`` (low-intensity completeness, 0..1) and ``beats`` (model strictly higher).
    """
    out = []
    for row in sorted((r for r in sweep_rows if r["region"] == "low"), key=lambda r: r["level"]):
        proto = "released" if at["released"][model]["low"]["n_frames"] and row["n_frames"] else "strict"
        mod = at[proto][model]["low"]["completeness"]
        ann = row["completeness"] if proto == "released" else row["completeness_strict"]
        fields = {k: row[k] for k in row if k.startswith("visible_")}
        out.append({"level": int(row["level"]), **fields, "protocol": proto, "model": mod, "annotator": ann,
                    "beats": bool(mod > ann)})
    return out


def table_with_sweep(table, sweep=None, name: str = "simulated annotator", beats: Mapping[int, bool] | None = None):
    """The evaluation table (:func:`table_at`) with one row per level and region of an annotator sweep.

    Parameters
    ----------
    table : :func:`table_at` rows (model, classical detector, manual, ...).
    sweep : the rows of :func:`ultrabones.twin.annotator.visibility_sweep` (a DataFrame) or None.
    name : the swept annotator's name; a level's row is named
        ``"<name> q <visible_quantile> c <visible_contrast> f <visible_fraction>"`` (``c`` when the sweep sets it).
    beats : level -> whether the model's low-intensity completeness is higher than that level's
        (:func:`model_vs_levels`); given, a column ``model_low_completeness_higher`` says it on each level's
        ``low`` row (empty on every other row).

    Returns
    -------
    DataFrame: ``table`` followed by the sweep's rows, same columns (the paper's values NaN).
    """
    import pandas as pd

    if sweep is None or len(sweep) == 0:
        return table
    rows = []
    for r in sweep.itertuples(index=False):
        row = {"method": f"{name} {level_name(r._asdict())}", "region": r.region}
        for score in SCORES:
            row[score] = getattr(r, score)
            row[f"{score}_strict"] = getattr(r, f"{score}_strict")
            row[f"{score}_paper"] = np.nan
        row["n_frames"] = r.n_frames
        rows.append(row)
    out = pd.concat([table, pd.DataFrame(rows).reindex(columns=table.columns)], ignore_index=True)
    if beats is not None:
        said = [""] * len(table) + [("yes" if beats[int(r.level)] else "no") if r.region == "low" else ""
                                    for r in sweep.itertuples(index=False)]
        out["model_low_completeness_higher"] = said
    return out
