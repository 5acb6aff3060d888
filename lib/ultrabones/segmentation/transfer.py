"""Evaluate mode of stage 04: a model trained elsewhere (e.g. on the twin) applied to this data, no training.

Stage 04 trains on the data's own specimen split. Real data of one specimen (``../shared/real_sweep``)
cannot be split, and a user may want to know how a twin-trained model does on real frames (sim-to-real).
In ``training.mode: evaluate`` (or ``auto`` on data with fewer than three specimens) the stage:

1. loads ``training.init_checkpoint`` (a clear error when it is missing or unreadable);
2. exports it as ``models/best.ckpt`` with the *data's* split in its metadata: no training and validation
   specimens, every specimen of the data as a test specimen (a twin-trained model has seen none of them),
   plus ``mode: evaluate`` and ``init_checkpoint``, so that notebook 05 evaluates on every labelled frame;
3. scores it on every labelled frame of the data against the truth-free CT-derived visible labels.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ultrabones.core import dataset as ds
from ultrabones.core.dataset import Frame
from ultrabones.core.errors import DatasetError, ParamsError
from ultrabones.segmentation import figures, inference, segdata, validation
from ultrabones.segmentation.checkpoint import load_checkpoint, save_checkpoint
from ultrabones.segmentation.training_params import TrainingParams

#: Fewest specimens the train/val/test split needs (one of each).
MIN_SPECIMENS_TO_SPLIT = 3


def resolve_mode(mode: str, n_specimens: int) -> str:
    """The mode stage 04 runs in: ``train``, ``evaluate`` or ``finetune``.

    Parameters
    ----------
    mode : ``training.mode`` (``train``, ``evaluate``, ``auto`` or ``finetune``).
    n_specimens : specimens in the data.

    ``auto`` evaluates when the data has fewer than :data:`MIN_SPECIMENS_TO_SPLIT` specimens.
    """
    if mode == "auto":
        return "evaluate" if n_specimens < MIN_SPECIMENS_TO_SPLIT else "train"
    if mode not in ("train", "evaluate", "finetune"):
        raise ParamsError(f"training.mode: {mode!r} is not one of train, evaluate, auto, finetune")
    return mode


@dataclass(frozen=True)
class EvaluateResult:
    """What evaluate mode did.

    Attributes
    ----------
    checkpoint : the exported ``models/best.ckpt``.
    init_checkpoint : the checkpoint it was made from.
    metadata : the exported checkpoint's metadata (``mode``, ``split``, ``trained_on``).
    frames : every labelled frame of the data, as scored.
    table : one row per frame (``specimen, record, timestamp, label_pixels, model_acc, model_com, model_f1,
        background_f1``), scored at the frames' own size.
    frames_per_second : end-to-end inference speed (decoded frames in, masks out).
    sigma_mm : the distance threshold of the scores (mm).
    """

    checkpoint: Path
    init_checkpoint: Path
    metadata: dict
    frames: tuple[Frame, ...]
    table: pd.DataFrame
    frames_per_second: float
    sigma_mm: float


def export_for_data(init_checkpoint: str | Path | None, out: Path | str, specimens: Sequence[str],
                    data_root: Path | str) -> tuple[Path, dict]:
    """Write ``init_checkpoint``'s model as ``out`` with this data's split (all specimens are test).

    Parameters
    ----------
    init_checkpoint : a checkpoint of this project's format (``build/<profile>/models/best.ckpt``).
    out : where to write (``models/best.ckpt`` of this profile).
    specimens : the data's specimen folders.
    data_root : the data, recorded in the metadata.

    Returns
    -------
    (path, metadata).

    Raises
    ------
    ParamsError
        If ``init_checkpoint`` is None, or names no file (says how to make one).
    DatasetError
        If the file is not a readable checkpoint.
    """
    if not init_checkpoint:
        raise ParamsError("training.init_checkpoint: evaluate mode needs a trained checkpoint (e.g. "
                          "build/default/models/best.ckpt after `make paper`, or build/smoke/models/best.ckpt "
                          "after `python -m ultrabones run 04 --profile smoke`); it is null")
    init = Path(init_checkpoint)
    if not init.is_file():
        raise ParamsError(f"training.init_checkpoint: {init}: no such file; train one on the twin first "
                          f"(`make paper` for build/default/models/best.ckpt, or `python -m ultrabones run 00/01/02/04 "
                          f"--profile smoke` for build/smoke/models/best.ckpt)")
    net, meta = load_checkpoint(init)
    trained_on = {k: meta.get(k) for k in ("split", "spacing_mm", "input_size", "epoch", "val_f1", "params")}
    trained_on["data"] = (meta.get("params") or {}).get("data_root") or "twin"
    new = dict(meta)
    new.update({
        "mode": "evaluate",
        "init_checkpoint": str(init),
        "trained_on": trained_on,
        "split": {"train": [], "val": [], "test": sorted(specimens)},
        "data_root": str(data_root),
        "source": str(init),
    })
    new.pop("git_commit", None)
    new.pop("created", None)
    return save_checkpoint(out, net.state_dict(), new), new


def run(root: Path | str, models_dir: Path | str, params: TrainingParams, specimens: Sequence[str] | None = None,
        derived: Path | str | None = None, progress: bool = False) -> EvaluateResult:
    """Export ``params.init_checkpoint`` for this data and score it on every labelled frame.

    Parameters
    ----------
    root : the dataset (images).
    models_dir : ``paths.models_dir``; ``best.ckpt`` is written there.
    params : the stage's parameters (here ``init_checkpoint`` and ``f1_sigma_mm``).
    specimens : restrict to these specimen folders (the common ``specimens``).
    derived : the derived dataset holding notebook 02's labels (``Paths.derived``).

    Raises
    ------
    ParamsError, DatasetError
        No checkpoint (see :func:`export_for_data`), or no labelled frame in the data.
    """
    available = segdata.available_specimens(root, specimens)
    out, meta = export_for_data(params.init_checkpoint, Path(models_dir) / "best.ckpt", available, root)
    frames = segdata.labelled_frames(root, available, None, derived)
    if not frames:
        raise DatasetError(f"{derived if derived is not None else root}: no labelled frame to evaluate on; the "
                           f"labels are written by notebook 02: run it first (python -m ultrabones run 02 --profile "
                           f"<profile>)")
    _, spacing, _ = ds.read_calibration(root)
    sigma = float(params.f1_sigma_mm)
    table, fps = validation.evaluate_frames(out, frames, spacing, sigma, None, progress=progress)
    return EvaluateResult(checkpoint=out, init_checkpoint=Path(params.init_checkpoint), metadata=meta,
                          frames=tuple(frames), table=table, frames_per_second=fps, sigma_mm=sigma)


def metrics(result: EvaluateResult) -> dict[str, Any]:
    """Stage 04's metrics in evaluate mode (JSON types).

    Keys: ``mode``, ``init_checkpoint``, ``checkpoint``, ``trained_on_split``, ``n_frames``, ``f1_sigma_mm``,
    ``eval_f1_at_0p5mm``, ``eval_accuracy_at_0p5mm``, ``eval_completeness_at_0p5mm`` (means over frames,
    strict protocol: every frame counts), ``baseline_background_f1_at_0p5mm``, ``frames_per_second_inference_end_to_end``,
    ``split`` (the data's: every specimen is a test specimen).
    """
    t = result.table
    mean = t[["model_acc", "model_com", "model_f1", "background_f1"]].mean()
    return {
        "mode": "evaluate",
        "init_checkpoint": str(result.init_checkpoint),
        "checkpoint": str(result.checkpoint),
        "trained_on_split": result.metadata["trained_on"].get("split"),
        "n_frames": int(len(t)),
        "f1_sigma_mm": result.sigma_mm,
        "eval_f1_at_0p5mm": float(mean["model_f1"]),
        "eval_accuracy_at_0p5mm": float(mean["model_acc"]),
        "eval_completeness_at_0p5mm": float(mean["model_com"]),
        "baseline_background_f1_at_0p5mm": float(mean["background_f1"]),
        "frames_per_second_inference_end_to_end": float(result.frames_per_second)
        if np.isfinite(result.frames_per_second) else None,
        "split": result.metadata["split"],
    }


def plot_predictions(result: EvaluateResult, n: int = 6):
    """``n`` of the scored frames (evenly spaced): image, CT-derived label (green), the model's prediction (magenta)."""
    return figures.plot_predictions(result.checkpoint, result.frames, n=n)


#: The other mask kind's band when the stage's masks are the thresholded map: the labels' ``2 gamma`` (mm).
SURFACE_BAND_MM = 0.6


def mask_kind(surface_band_mm: float | None) -> str:
    """``surface`` (the probability map's surface, a band) or ``thresholded`` (the map as it is, the paper's)."""
    return "thresholded" if surface_band_mm is None else "surface"


def other_band(surface_band_mm: float | None) -> float | None:
    """The band of the mask kind the stage did not use: None (thresholded) for a surface, else
    :data:`SURFACE_BAND_MM`."""
    return SURFACE_BAND_MM if surface_band_mm is None else None


def mask_source(ckpt, spacing, surface_band_mm: float | None):
    """A :data:`ultrabones.evaluation.metrics.LabelSource` that segments the frame's image in memory.

    The mask is the thresholded probability map (``surface_band_mm`` None) or its surface, a band that thick
    (:func:`ultrabones.segmentation.inference.surface_mask`); nothing is written. For scoring the mask kind
    a stage did not write to ``Labels_pred/``.
    """
    thr = float(ckpt[1].get("threshold", 0.5))
    half = None if surface_band_mm is None else inference.band_half_rows(surface_band_mm, spacing)

    def read(frame: Frame, shape: tuple) -> np.ndarray:
        img = frame.read_image()
        if img.shape != tuple(shape):
            raise DatasetError(f"{frame.key}: image size {img.shape} differs from the evaluated size {tuple(shape)}")
        prob = inference.predict(ckpt, img[None])[0]
        return prob >= thr if half is None else inference.surface_mask(prob, thr, half)

    read.kind = mask_kind(surface_band_mm)
    return read


def sim_to_real(at: Mapping, model_meta: Mapping, n_frames: int, checkpoint: str,
                surface_band_mm: float | None = None, other_at: Mapping | None = None) -> dict | None:
    """The ``sim_to_real`` block of notebook 05's metrics, or None when the model was trained on this data.

    Parameters
    ----------
    at : notebook 05's scores at the report threshold (``summarise(...)["at"]``), of the masks the stage
        wrote (``Labels_pred/``).
    model_meta : the evaluated checkpoint's metadata (``mode: evaluate`` marks a model trained elsewhere).
    n_frames : evaluated frames.
    checkpoint : the evaluated checkpoint's path.
    surface_band_mm : the stage's ``evaluation.surface_band_mm`` (None: its masks are the thresholded map).
    other_at : the same scores for the other mask kind (:func:`mask_source` with :func:`other_band`), or None.

    Returns
    -------
    ``{f1, accuracy, completeness, n_frames, masks, surface, thresholded, checkpoint, init_checkpoint,
    trained_on, reference}``: the model's released-protocol scores over all label pixels, against the
    CT-derived visible labels (truth-free: an agreement with the pipeline's own labels, not an accuracy).
    The flat scores are those of ``masks`` (the stage's kind); ``surface`` and ``thresholded`` hold each
    kind's scores (None when not measured).
    """
    if model_meta.get("mode") != "evaluate":
        return None

    def block(scores):
        if scores is None:
            return None
        m = scores["released"]["model"]["all"]
        return {"f1": m["f1"], "accuracy": m["accuracy"], "completeness": m["completeness"], "n_frames": int(n_frames)}

    kind = mask_kind(surface_band_mm)
    other = "thresholded" if kind == "surface" else "surface"
    return {
        **block(at), "masks": kind, kind: block(at), other: block(other_at),
        "checkpoint": str(checkpoint), "init_checkpoint": model_meta.get("init_checkpoint"),
        "trained_on": (model_meta.get("trained_on") or {}).get("data"),
        "reference": "CT-derived visible labels (Labels/, truth-free): agreement, not accuracy",
    }


def data_key(data_root: Path | str | None) -> str | None:
    """The metrics key named after the data (``/work/shared/real_sweep`` -> ``real_sweep``); None on the twin."""
    if data_root is None:
        return None
    name = Path(str(data_root).rstrip("/")).name
    return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name) or "data"


def scores_on_data(at: Mapping, at_key: str, n_frames: int) -> dict:
    """The model's scores on the data under ``at_key`` (e.g. ``at_0p5mm``), per protocol and region.

    Returns
    -------
    ``{at_key: {protocol: {region: {accuracy, completeness, f1, n_frames}}}, "n_frames": n,
    "reference": ...}``: regions ``all``, ``high``, ``low`` (Otsu split of the CT-derived label pixels).
    """
    return {at_key: {p: dict(by_method["model"]) for p, by_method in at.items() if "model" in by_method},
            "n_frames": int(n_frames), "reference": "CT-derived visible labels (Labels/, truth-free)"}
