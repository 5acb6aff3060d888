"""Eqs. 3-6 over a set of frames: the Otsu high/low split, per-frame scores per region, means over frames.

One frame's prediction against its label is scored by :mod:`ultrabones.core.distance_scores` (accuracy,
completeness and F1 per distance threshold, Dice, HD95, ASSD) on the distances of
:mod:`ultrabones.core.label_distances` (Eq. 3, mm); this module scores every frame of a data set that way, per
intensity region, and aggregates.

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

**Border metrics** (Dice, HD95, ASSD; :func:`ultrabones.core.distance_scores.border_metrics`) are taken over the
whole masks of each frame and averaged over the frames where both masks are non-empty (Dice also over every
frame, ``dice_strict``). The figures are :mod:`ultrabones.evaluation.figures`, the table beside the paper's and
its claims :mod:`ultrabones.evaluation.comparison`.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from ultrabones.core.dataset import Frame, read_label
from ultrabones.core.distance_scores import PROTOCOLS, SCORES, PairScores, border_metrics, scores_from_distances
from ultrabones.core.errors import DatasetError, ParamsError
from ultrabones.core.executor import blocks, executor
from ultrabones.core.label_distances import check_masks, check_sigmas, check_spacing, directed_distances

REGIONS = ("all", "high", "low")


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
             sigmas, threshold: float, progress: bool = True, keep_per_frame: float | None = 0.5, *,
             n_workers: int = 1, scheduler: str | None = None,
             block: Callable[[tuple], list] | None = None) -> dict:
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
    n_workers, scheduler : blocks of frames are scored as independent tasks on the package's executor (local
        processes, or a Dask scheduler; the label sources travel to them); the scores are summed in the frames'
        order, so the result does not depend on it.
    block : the task run on each block (default :func:`score_block`): the twin passes its own, which calls
        :func:`score_block`, so that in a worker process its truth reads come from the twin's code (the truth
        wall, :mod:`ultrabones.twin.wall`, judges a read by the outermost module that asked for it).

    Returns
    -------
    ``{"aggregates": {method: Aggregate}, "per_frame": {method: (n, 3) array},
    "gt_counts": (n, 2) high and low-intensity pixels of each reference label,
    "n_frames": n, "seconds": wall time}``.
    """
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
    frames = list(frames)
    tasks = [(b, reference, dict(methods), spacing, sig, float(threshold)) for b in blocks(frames, n_workers)]
    with executor("auto", scheduler, n_workers, progress) as ex:
        done = ex.map(block or score_block, tasks, desc="evaluating frames", unit="block")
    for part in done:
        for counts, scores in part:
            gt_counts.append(counts)
            for name, sc in scores.items():
                aggs[name].add(sc)
                if i_keep is not None:
                    a = sc["all"]
                    per_frame[name].append((a.accuracy[i_keep], a.completeness[i_keep], a.f1[i_keep]))
    return {"aggregates": aggs, "per_frame": {m: np.array(v).reshape(-1, 3) for m, v in per_frame.items()},
            "gt_counts": np.array(gt_counts, dtype=np.int64).reshape(-1, 2),
            "n_frames": len(frames), "seconds": time.perf_counter() - t0}


def score_block(task: tuple) -> list[tuple[tuple[int, int], dict]]:
    """One block of frames of :func:`evaluate` (a task of the executor): per frame, in order, the reference
    label's high- and low-intensity pixel counts and every method's :func:`frame_scores_many` scores."""
    frames, reference, methods, spacing, sig, threshold = task
    out = []
    for fr in frames:
        img = fr.read_image()
        gt = reference(fr, img.shape)
        counts = (int((gt & (img > threshold)).sum()), int((gt & (img <= threshold)).sum()))
        preds = {name: src(fr, img.shape) for name, src in methods.items()}
        out.append((counts, frame_scores_many(preds, gt, img, spacing, sig, threshold)))
    return out


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


# ----------------------------------------------------------------------------- checks (notebook 05)


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
