"""The classical baseline on a dataset: the shadow-peak detector (:mod:`ultrabones.evaluation.shadow_peak`, one
frame) fitted on the training specimens' frames, a label source for scoring, and its scores on frames.

Its parameters are chosen by :func:`fit` on the *training* specimens' frames by the mean F1 at 0.5 mm (strict
protocol: a frame where nothing is detected but bone is labelled scores 0), never on test frames; the method,
where it departs from Pandey et al. and its cost are :mod:`ultrabones.evaluation.shadow_peak`'s.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import fields, replace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ultrabones.core import dataset as ds
from ultrabones.core.dataset import read_label
from ultrabones.core.distance_scores import distance_metrics
from ultrabones.core.errors import DatasetError, ParamsError
from ultrabones.evaluation import comparison, metrics
from ultrabones.evaluation.metrics import labelled_frames
from ultrabones.evaluation.shadow_peak import (ENHANCEMENTS, SCORE_FIELDS, DetectorParams, detect, draw_band,
                                               pick_rows, shadow_peak_score)
from ultrabones.segmentation.splits import resolve_specimens

LABEL = "shadow-peak detector"

#: The grid :func:`fit` searches by default (the other parameters stay at their defaults): both
#: enhancements, so the choice between them is made on the training frames too (90 combinations).
DEFAULT_GRID: dict[str, tuple] = {
    "enhancement": ENHANCEMENTS,
    "min_score": (0.2, 0.3, 0.4, 0.5, 0.6),
    "min_peak": (0.0, 0.2, 0.35),
    "depth_offset_mm": (-0.2, 0.0, 0.2),
}


# ----------------------------------------------------------------------------- fitting on training frames


def _grid_params(base: DetectorParams, grid: Mapping[str, Sequence]) -> list[DetectorParams]:
    names = {f.name for f in fields(DetectorParams)}
    bad = sorted(set(grid) - names)
    if bad:
        raise ParamsError(f"bone detector grid: unknown parameter(s) {', '.join(bad)}; known: {', '.join(sorted(names))}")
    keys = list(grid)
    return [replace(base, **dict(zip(keys, vals))) for vals in itertools.product(*(grid[k] for k in keys))]


def fit(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], spacing, grid: Mapping[str, Sequence] | None = None,
        base: DetectorParams = DetectorParams(), sigma_mm: float = 0.5):
    """Choose the detector's parameters on training frames by the mean F1 at ``sigma_mm``.

    Every combination of ``grid`` (the other parameters from ``base``) is run on
    every frame and scored against its label with
    :func:`ultrabones.core.distance_scores.distance_metrics` (strict protocol: an empty
    detection on a labelled frame scores F1 0). Pass *training* frames only:
    the chosen parameters are then applied, unchanged, to the test frames.

    Parameters
    ----------
    images : (H, W) uint8 frames of the training specimens.
    labels : their (H, W) bool reference labels (``Labels/``).
    spacing : (sx, sy) mm per pixel.
    grid : parameter name -> candidate values (default :data:`DEFAULT_GRID`).
    base : the values of the parameters not in ``grid``.
    sigma_mm : distance threshold of the F1 (mm).

    Returns
    -------
    ``(best, table)``: the :class:`DetectorParams` with the highest mean F1
    (ties: the first in grid order) and a DataFrame with one row per
    combination (its parameters, ``f1``, ``accuracy``, ``completeness``, means
    over frames), sorted by ``f1`` descending.

    Raises
    ------
    DatasetError
        If there are no frames, or images and labels differ in number or size.
    """
    if len(images) == 0 or len(images) != len(labels):
        raise DatasetError(f"bone detector fit: need as many labels as images, got {len(images)} images and "
                           f"{len(labels)} labels (and at least one)")
    cands = _grid_params(base, DEFAULT_GRID if grid is None else grid)
    keys = [tuple(str(getattr(p, k)) for k in SCORE_FIELDS) for p in cands]
    order = sorted(range(len(cands)), key=lambda i: keys[i])  # one score setting at a time in memory
    rows: list = [None] * len(cands)
    cached_key, cached = None, []
    n = len(images)
    for i in order:
        p = cands[i]
        if keys[i] != cached_key:
            cached_key, cached = keys[i], [shadow_peak_score(img, spacing, p) for img in images]
        acc = com = f1 = 0.0
        for img, lab, sc in zip(images, labels, cached):
            pred = draw_band(pick_rows(*sc, spacing, p), img.shape, spacing, p.gamma_mm)
            m = distance_metrics(pred, lab, spacing, [sigma_mm], protocol="strict")
            acc += m["accuracy"][0]
            com += m["completeness"][0]
            f1 += m["f1"][0]
        rows[i] = {**p.as_dict(), "accuracy": acc / n, "completeness": com / n, "f1": f1 / n}
    table = pd.DataFrame(rows)
    best = int(np.argmax(table["f1"].to_numpy()))  # first maximum: grid order breaks ties
    return cands[best], table.sort_values("f1", ascending=False, kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- on a dataset


def label_source(params: DetectorParams, spacing):
    """A :data:`ultrabones.evaluation.metrics.LabelSource` that runs the detector on the frame's image.

    Use it as a method of :func:`ultrabones.evaluation.metrics.evaluate`, beside the model
    and the manual labels: ``methods["shadow-peak"] = label_source(p, spacing)``.
    """
    def read(frame, shape: tuple) -> np.ndarray:
        img = frame.read_image()
        if img.shape != tuple(shape):
            raise DatasetError(f"{frame.key}: image size {img.shape} differs from "
                               f"the evaluated size {tuple(shape)}")
        return detect(img, spacing, params)

    read.kind = LABEL
    return read


def read_training_frames(frames: Sequence, kind: str = "Labels") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images and ``kind`` labels of :class:`ultrabones.core.dataset.Frame` objects (for :func:`fit`)."""
    images, labels = [], []
    for fr in frames:
        img = fr.read_image()
        images.append(img)
        labels.append(read_label(fr.record.label_path(fr.timestamp, kind), img.shape))
    return images, labels


def fit_frames(frames: Sequence, spacing, grid: Mapping[str, Sequence] | None = None, n_max: int | None = None,
               seed: int = 0, kind: str = "Labels", base: DetectorParams = DetectorParams(), sigma_mm: float = 0.5):
    """:func:`fit` on dataset frames (the *training* specimens' :class:`ultrabones.core.dataset.Frame` objects).

    ``n_max`` frames at most, drawn with ``seed`` (as :func:`ultrabones.evaluation.metrics.labelled_frames` draws
    test frames); their ``kind`` labels are the reference. Returns ``(best, table)`` as :func:`fit`.
    """
    frames = list(frames)
    if n_max is not None and len(frames) > n_max:
        keep = np.sort(np.random.default_rng(seed).choice(len(frames), n_max, replace=False))
        frames = [frames[i] for i in keep]
    images, labels = read_training_frames(frames, kind)
    return fit(images, labels, spacing, grid, base, sigma_mm)


def score_detector(frames: Sequence, params: DetectorParams, spacing, sigmas, threshold: float,
                   reference=None, sigma_mm: float = 0.5, name: str = LABEL, progress: bool = False):
    """Score the detector on (test) frames like the model: the rows of :func:`~ultrabones.evaluation.comparison.table_at`.

    Parameters
    ----------
    frames : :class:`ultrabones.core.dataset.Frame` objects (the evaluated test frames).
    params : the detector's parameters, fitted on training frames (:func:`fit`).
    spacing : (sx, sy) mm per pixel.
    sigmas : increasing distance thresholds (mm), containing ``sigma_mm``.
    threshold : the Otsu grey level of the high/low split (the one the model is scored with).
    reference : label source of the ground truth (default ``Labels/`` of the dataset).
    sigma_mm : the table's threshold (mm).
    name : the method's name in the table.

    Returns
    -------
    ``(table, summary)``: a DataFrame with one row per region (``all``,
    ``high``, ``low``): ``method``, ``region``, ``accuracy``,
    ``accuracy_strict``, ``accuracy_paper`` (NaN), ... ``n_frames``, as
    :func:`ultrabones.evaluation.comparison.table_at` gives for the model; and the
    :func:`ultrabones.evaluation.metrics.summarise` dict (``at``, ``curves``, ``border``)
    to merge into the notebook's Fig. 8 curves.
    """
    ref = reference if reference is not None else metrics.dataset_label("Labels")
    res = metrics.evaluate(frames, ref, {name: label_source(params, spacing)}, spacing, sigmas, threshold,
                           progress=progress, keep_per_frame=None)
    summ = metrics.summarise(res, sigma_mm)
    return comparison.table_at(summ["at"], {}), summ


def training_specimens(root, split: Mapping[str, Sequence[str]], derived=None) -> tuple[list, list[str]]:
    """The checkpoint's *training* specimens that the dataset at ``root`` holds.

    Parameters
    ----------
    root : dataset root (layout A): the images.
    derived : the derived dataset holding the labels (``Paths.derived``); None: beside the images.
    split : the checkpoint metadata's ``split`` (``{"train": [...], "val": [...], "test": [...]}``);
        entries are folder names or bare numbers, as :func:`ultrabones.segmentation.splits.resolve_specimens` reads them.

    Returns
    -------
    ``(specimens, missing)``: the :class:`ultrabones.core.dataset.Specimen` objects found, and
    the split's training entries the dataset does not hold (e.g. a twin-trained model
    evaluated on real data). Test specimens are never returned.
    """
    available = [s.name for s in ds.discover(root)]

    def resolve(entries):
        hit, miss = [], []
        for e in entries:
            try:
                hit += resolve_specimens([e], available, "train_specimens")
            except ParamsError:
                miss.append(str(e))
        return hit, miss

    found, missing = resolve(split.get("train", []))
    test = set(resolve(split.get("test", []))[0])
    found = [n for n in dict.fromkeys(found) if n not in test]
    return (ds.discover(root, found, derived) if found else []), missing


def fit_on_training(specimens: Sequence, spacing, n_frames: int = 60, enhancements: Sequence[str] = ENHANCEMENTS,
                    seed: int = 0, kind: str = "Labels", sigma_mm: float = 0.5) -> dict | None:
    """Set the detector's parameters once, on the training specimens' labelled frames (never the test ones).

    Parameters
    ----------
    specimens : the *training* specimens (:func:`training_specimens`).
    spacing : (sx, sy) mm per pixel.
    n_frames : frames drawn with ``seed`` from all their ``kind``-labelled frames.
    enhancements : the bright-echo terms the grid searches (:data:`ENHANCEMENTS`); the
        rest of :data:`DEFAULT_GRID` is searched as it is.
    seed : seed of the draw.
    kind : the reference labels of the fit.
    sigma_mm : threshold of the fitted F1 (mm).

    Returns
    -------
    None when the specimens hold no ``kind``-labelled frame; else
    ``{"params": DetectorParams, "table": fit table (DataFrame), "n_frames": int,
    "specimens": [names], "fit_f1": best mean F1, "seconds": float}``.

    Raises
    ------
    ParamsError
        If ``enhancements`` is empty or names an unknown term.
    """
    enh = tuple(dict.fromkeys(str(e) for e in enhancements))
    if not enh or set(enh) - set(ENHANCEMENTS):
        raise ParamsError(f"evaluation.detector_enhancements = {list(enhancements)}: a non-empty list of "
                          f"{list(ENHANCEMENTS)}")
    frames = labelled_frames(specimens, (kind,), n_max=int(n_frames), seed=seed)
    if not frames:
        return None
    t0 = time.perf_counter()
    best, table = fit(*read_training_frames(frames, kind), spacing, {**DEFAULT_GRID, "enhancement": enh},
                      sigma_mm=sigma_mm)
    return {"params": best, "table": table, "n_frames": len(frames), "specimens": [s.name for s in specimens],
            "fit_f1": float(table["f1"].iloc[0]), "seconds": time.perf_counter() - t0}
