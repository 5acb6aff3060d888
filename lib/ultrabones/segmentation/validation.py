"""Scores on validation frames: F1 at a distance (Eqs. 3-6, strict), the model's and two baselines' (all
background, an intensity threshold fitted on training frames).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from ultrabones.core import dataset as ds
from ultrabones.core.dataset import Frame
from ultrabones.core.distance_scores import distance_metrics
from ultrabones.segmentation import segdata
from ultrabones.segmentation.inference import as_model, predict


def f1_at_distance(pred: np.ndarray, gt: np.ndarray, spacing_mm, sigma_mm: float) -> tuple[float, float, float]:
    """Distance-thresholded accuracy, completeness and F1 of one frame at one sigma (Eqs. 3-6).

    :func:`ultrabones.core.distance_scores.distance_metrics` with the strict protocol
    (an empty mask scores 0/0 = 1, so an empty prediction of a non-empty label
    has F1 0); ``spacing_mm = (sx, sy)`` mm per pixel (columns, rows).
    """
    m = distance_metrics(pred, gt, spacing_mm, [float(sigma_mm)], protocol="strict")
    return float(m["accuracy"][0]), float(m["completeness"][0]), float(m["f1"][0])


def distance_f1(pred, gt, spacing_mm, sigma_mm) -> float:
    """F1 of :func:`f1_at_distance`."""
    return f1_at_distance(pred, gt, spacing_mm, sigma_mm)[2]


def fit_threshold_baseline(
    images: np.ndarray, lines: np.ndarray, spacings: np.ndarray, sigma_mm: float,
    quantiles=(0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998),
) -> float:
    """The intensity threshold (on smoothed, resized [0, 1] images) with the best mean F1 on training frames.

    Candidates are quantiles of the training intensities; the baseline marks
    every pixel brighter than the threshold after a Gaussian blur (1 px).

    Parameters
    ----------
    images : (N, h, w) float [0, 1], resized frames.
    lines : (N, h, w) bool, their thin labels at that size.
    spacings : (N, 2) mm per pixel (sx, sy) at that size.
    """
    smooth = np.stack([ndimage.gaussian_filter(im, 1.0) for im in images])
    cands = np.quantile(smooth, quantiles)
    scores = [np.mean([distance_f1(s > t, l, sp, sigma_mm) for s, l, sp in zip(smooth, lines, spacings)])
              for t in cands]
    return float(cands[int(np.argmax(scores))])


def threshold_baseline(frames: Sequence[Frame], size: Sequence[int], spacing_mm, sigma_mm: float,
                       n_frames: int = 48) -> float:
    """Fit the intensity-threshold baseline on (up to ``n_frames``, evenly spaced) training frames at the input size.

    Parameters
    ----------
    frames : training frames (the training pool).
    size : network input (h, w), pixels.
    spacing_mm : (sx, sy) mm per pixel of the original images.
    sigma_mm : distance threshold of the F1 it maximises (mm).

    Returns the threshold on blurred, resized [0, 1] intensities (see :func:`fit_threshold_baseline`).
    """
    picked = [frames[i] for i in segdata.evenly_spaced(len(frames), n_frames)]
    images, _, lines, spacings = segdata.FrameDataset(picked, tuple(size), 1, 0.0, 1.0, spacing_mm).arrays()
    return fit_threshold_baseline(images.astype(np.float32) / 255.0, lines, spacings, sigma_mm)


def threshold_predict(image: np.ndarray, threshold: float, size: tuple[int, int]) -> np.ndarray:
    """The intensity-threshold baseline on one uint8 frame, at the frame's own size (bool)."""
    small = ndimage.gaussian_filter(segdata.resize_image(image, size), 1.0) > threshold
    im = Image.fromarray(small.astype(np.uint8) * 255).resize(image.shape[::-1], Image.NEAREST)
    return np.asarray(im) > 0


def evaluate_frames(
    ckpt, frames: Sequence[Frame], spacing_mm, sigma_mm: float = 0.5, baseline_threshold: float | None = None,
    batch_size: int = 8, device: str | None = None, progress: bool = False,
) -> tuple[pd.DataFrame, float]:
    """F1 at ``sigma_mm`` on frames at their original size: the model, all-background and threshold baselines.

    Returns
    -------
    table : one row per frame (``specimen, record, timestamp, label_pixels, model_acc, model_com,
        model_f1, background_f1``, and with ``baseline_threshold`` ``threshold_f1``); ``label_pixels``
        counts the label's pixels at the frame's size.
    frames_per_second : end-to-end :func:`predict` speed (decoded frames in, masks out).
    """
    from tqdm import tqdm

    model, meta = as_model(ckpt)
    size = tuple(meta["input_size"])
    thr = float(meta.get("threshold", 0.5))
    rows, t_pred = [], 0.0
    for i in tqdm(range(0, len(frames), batch_size), desc="evaluate", disable=not progress):
        chunk = frames[i : i + batch_size]
        images = [f.read_image() for f in chunk]
        labels = [ds.read_label(f.label, im.shape) for f, im in zip(chunk, images)]
        t0 = time.perf_counter()
        masks = predict((model, meta), images, batch_size=batch_size, device=device, threshold=thr)
        t_pred += time.perf_counter() - t0
        for f, im, lab, m in zip(chunk, images, labels, masks):
            acc, com, f1 = f1_at_distance(m, lab, spacing_mm, sigma_mm)
            row = {"specimen": f.specimen, "record": f.record.key, "timestamp": f.timestamp,
                   "label_pixels": int(lab.sum()), "model_acc": acc, "model_com": com, "model_f1": f1,
                   "background_f1": f1_at_distance(np.zeros_like(lab), lab, spacing_mm, sigma_mm)[2]}
            if baseline_threshold is not None:
                row["threshold_f1"] = f1_at_distance(threshold_predict(im, baseline_threshold, size), lab,
                                                      spacing_mm, sigma_mm)[2]
            rows.append(row)
    return pd.DataFrame(rows), (len(frames) / t_pred if t_pred > 0 else float("nan"))
