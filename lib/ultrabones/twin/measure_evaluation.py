"""Stage 05's methods measured against the twin's true visible labels (notebook 05's truth measurement)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ultrabones.core import dataset
from ultrabones.core.errors import DatasetError
from ultrabones.core.paths import Paths
from ultrabones.evaluation.comparison import table_at
from ultrabones.evaluation.metrics import dataset_label, evaluate, score_block, summarise
from ultrabones.twin.layout import truth_dir


def true_label_source(paths: Paths, kind: str = dataset.LABELS):
    """A label source (:data:`ultrabones.evaluation.metrics.LabelSource`) reading the twin's true labels.

    ``truth/<specimen>/<record>/<kind>/<t>_label.png``: ``Labels`` (visible) or ``Labels_full``.
    """
    root = truth_dir(paths)

    def read(frame, shape: tuple) -> np.ndarray:
        path = root / frame.record.specimen / frame.record.name / kind / f"{frame.timestamp}_label.png"
        if not path.is_file():
            raise DatasetError(f"{path}: true label missing for an evaluated frame")
        return dataset.read_label(path, shape)

    read.kind = f"truth/{kind}"
    return read


def frames_with_truth(paths: Paths, frames, kind: str = dataset.LABELS) -> list:
    """The evaluation frames (:class:`ultrabones.core.dataset.Frame`) whose true label exists."""
    root = truth_dir(paths)
    return [fr for fr in frames
            if (root / fr.record.specimen / fr.record.name / kind / f"{fr.timestamp}_label.png").is_file()]


def evaluation(paths: Paths, result, *, n_workers: int = 1, scheduler: str | None = None) -> dict:
    """Stage 05's methods scored against the twin's true visible labels, as ``{"vs_truth": ...}``.

    The model, the classical detector, the manual labels and the CT-derived labels ``G`` themselves
    (``ct_labels``) against ``truth/.../Labels/`` on the evaluated frames that have one, with the result's
    thresholds and Otsu split: what the paper could not measure.

    Parameters
    ----------
    paths : the run's paths.
    result : :class:`ultrabones.evaluation.benchmark.EvaluationResult`.
    n_workers, scheduler : where the frames are scored (:func:`ultrabones.evaluation.metrics.evaluate`).

    Returns
    -------
    ``{"vs_truth": {"at_<sigma>mm": {protocol: {method: {region: scores}}}, "border": {method: ...},
    "n_frames": n}}``; ``{"vs_truth": None}`` off the twin.
    """
    if not paths.is_twin:
        return {"vs_truth": None}
    p = result.params
    frames = frames_with_truth(paths, result.frames)
    methods = {**result.methods, "ct_labels": dataset_label(dataset.LABELS)}
    scores = evaluate(frames, true_label_source(paths), methods, result.spacing, p.sigmas, result.otsu,
                      n_workers=n_workers, scheduler=scheduler, block=truth_block)
    summ = summarise(scores, p.report_sigma_mm)
    return {"vs_truth": {p.at_key: summ["at"], "border": summ["border"], "n_frames": len(frames)}}


def truth_block(task: tuple) -> list:
    """One block of frames scored against the truth (:func:`ultrabones.evaluation.metrics.score_block`), run from
    the twin's code: in a worker process the truth wall sees the twin ask for the true labels."""
    return score_block(task)


def evaluation_table(vs_truth: dict, at_key: str) -> pd.DataFrame:
    """:func:`evaluation`'s ``vs_truth`` at the report threshold ``at_key`` (e.g. ``at_0p5mm``): one row per
    method and region, both protocols, no paper column."""
    table = table_at(vs_truth[at_key], {})
    return table.drop(columns=[c for c in table.columns if c.endswith("_paper")])
