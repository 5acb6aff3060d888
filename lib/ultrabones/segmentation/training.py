"""Stage 04 (paper 3.2, "Segmentation Mode"): a network trained by specimen, judged on validation.

The stage contract (docs/architecture.md), as every stage's:

- :data:`Params` (:class:`~ultrabones.segmentation.training_params.TrainingParams`): the ``training`` section of a
  profile, validated and typed (frozen);
- :func:`run` decides the mode (``training.mode``; ``auto``: :func:`ultrabones.segmentation.transfer.resolve_mode`)
  and runs it, returning a :class:`Result`:

  - **train** (:func:`train`): split the specimens, train every cross-validation fold
    (:func:`ultrabones.segmentation.fit.train`: Lightning, checkpoints, resume; every labelled frame of the
    training specimens that fits ``memory_budget_mb``, ``samples_per_epoch`` of them drawn an epoch, see
    :mod:`ultrabones.segmentation.segdata`), then judge the best fold's model on its validation specimens at the
    frames' own size beside two baselines, **all background** (predicts nothing) and an **intensity threshold**
    (bright pixels after a 1-px blur, the threshold fitted on training frames), and time inference;
  - **evaluate**: a model trained elsewhere, scored on data that cannot be split
    (:mod:`ultrabones.segmentation.transfer`);
  - **finetune**: a model trained further on each sweep's earlier frames (:mod:`ultrabones.segmentation.finetune`);

- :func:`metrics` (stage 04's metrics JSON, the mode's), :func:`check` (what must hold on any data) and
  :func:`figures` (train mode: :func:`plot_curves`, :func:`plot_predictions`).

The scores are the paper's F1 at ``f1_sigma_mm`` (Eqs. 3-6) under the strict protocol: every frame counts, and a
frame with an empty label scores 1 when nothing is predicted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd
import torch

from ultrabones.core import dataset as ds
from ultrabones.segmentation import figures as seg_figures
from ultrabones.segmentation import finetune, fit, inference, segdata, transfer, validation
from ultrabones.segmentation.segdata import TrainingFrames
from ultrabones.segmentation.splits import Split
from ultrabones.segmentation.training_params import TrainingParams

#: The stage's parameters (the stage contract's name).
Params = TrainingParams

#: Inference speed is timed on frames of this size (h, w; pixels), with this many CPU threads.
SPEED_SIZE, SPEED_THREADS = (256, 256), 2


@dataclass(frozen=True)
class TrainingResult:
    """What train mode did.

    Attributes
    ----------
    params : the stage's parameters.
    trained : every fold's training and the exported ``models/best.ckpt``
        (:class:`ultrabones.segmentation.fit.TrainResult`).
    frames : the best fold's training pool (held in memory; of how many labelled) and validation frames (scored).
    scores : one row per validation frame, scored at the frame's own size (``specimen, record, timestamp,
        label_pixels, model_acc, model_com, model_f1, background_f1, threshold_f1``; see
        :func:`ultrabones.segmentation.validation.evaluate_frames`).
    baseline_threshold : the intensity-threshold baseline's threshold (blurred, resized [0, 1] intensities).
    frames_per_second_end_to_end : inference on the validation frames, decoded frames in, masks out.
    frames_per_second_inference : inference on ``SPEED_SIZE`` input with ``SPEED_THREADS`` CPU threads.
    """

    params: TrainingParams
    trained: fit.TrainResult
    frames: TrainingFrames
    scores: pd.DataFrame
    baseline_threshold: float
    frames_per_second_end_to_end: float
    frames_per_second_inference: float

    @property
    def split(self) -> Split:
        """The specimen split (before cross-validation folds)."""
        return self.trained.split

    @property
    def best(self) -> fit.FoldResult:
        """The fold with the best validation F1 (the exported model)."""
        return self.trained.best

    @property
    def checkpoint(self) -> Path:
        """``models/best.ckpt``."""
        return self.trained.checkpoint


#: What a mode's run returns: train (:class:`TrainingResult`), evaluate, finetune.
Outcome = Union[TrainingResult, transfer.EvaluateResult, finetune.FinetuneResult]


@dataclass(frozen=True)
class Result:
    """What stage 04 did.

    Attributes
    ----------
    mode : the mode it ran in, ``train``, ``evaluate`` or ``finetune`` (``training.mode``, ``auto`` resolved).
    params : the stage's parameters.
    outcome : the mode's result: :class:`TrainingResult` (train),
        :class:`ultrabones.segmentation.transfer.EvaluateResult` (evaluate) or
        :class:`ultrabones.segmentation.finetune.FinetuneResult` (finetune).
    """

    mode: str
    params: TrainingParams
    outcome: Outcome


def run(paths, params: TrainingParams, *, specimens: Sequence[str] | None = None, seed: int = 0,
        progress: bool = False) -> Result:
    """Stage 04: decide the mode, then train (:func:`train`), evaluate a model trained elsewhere
    (:func:`ultrabones.segmentation.transfer.run`) or fine-tune one (:func:`ultrabones.segmentation.finetune.run`).

    Parameters
    ----------
    paths : the run's :class:`ultrabones.core.paths.Paths` (``dataset``: the images; ``derived``: notebook 02's
        labels; ``models_dir``: the folds and ``best.ckpt``).
    params : the stage's parameters; ``mode`` ``auto`` evaluates when the data has fewer specimens than a split
        needs (:func:`ultrabones.segmentation.transfer.resolve_mode`), else trains.
    specimens : restrict to these specimen folders (the common ``specimens``); None: all.
    seed : master seed (weights, shuffling, augmentation).
    progress : progress bars.

    Raises
    ------
    ParamsError, DatasetError
        From the split (too few specimens, unknown names), a missing ``init_checkpoint`` or the data (no labelled
        frame), naming what is wrong.
    """
    mode = transfer.resolve_mode(params.mode, len(segdata.available_specimens(paths.dataset, specimens)))
    if mode == "evaluate":
        outcome = transfer.run(paths.dataset, paths.models_dir, params, specimens=specimens, derived=paths.derived,
                               progress=progress)
    elif mode == "finetune":
        outcome = finetune.run(paths.dataset, paths.models_dir, params, seed, specimens=specimens,
                               derived=paths.derived, progress=progress)
    else:
        outcome = train(paths.dataset, paths.models_dir, params, seed, specimens=specimens, derived=paths.derived,
                        progress=progress)
    return Result(mode, params, outcome)


def train(root: Path | str, models_dir: Path | str, params: TrainingParams, seed: int,
          specimens: Sequence[str] | None = None, derived: Path | str | None = None,
          progress: bool = False) -> TrainingResult:
    """Train by specimen, then judge the best model on its validation frames beside the two baselines.

    Parameters
    ----------
    root : the dataset (images; layout A or B).
    models_dir : ``paths.models_dir``: one folder per fold and ``best.ckpt`` (see
        :func:`ultrabones.segmentation.fit.train`; a rerun with the same parameters resumes).
    params : the stage's parameters.
    seed : master seed (weights, shuffling, augmentation).
    specimens : restrict to these specimen folders (the common ``specimens``); None: all.
    derived : the derived dataset holding notebook 02's labels (``Paths.derived``); None: beside the images.
    progress : progress bars.

    Raises
    ------
    ParamsError, DatasetError
        From the split (too few specimens, unknown names) or the data (no labelled frame), naming what is wrong.
    """
    if params.threads:
        torch.set_num_threads(params.threads)
    P = params.as_dict()
    trained = fit.train(root, models_dir, P, seed, specimens=specimens, progress=progress, derived=derived)
    best = trained.best
    _, spacing, _ = ds.read_calibration(root)
    sigma = params.f1_sigma_mm
    frames = segdata.training_frames(root, best.split, params.input_size, params.memory_budget_mb,
                                     params.max_val_frames_per_specimen, derived)
    threshold = validation.threshold_baseline(frames.train, params.input_size, spacing, sigma)
    scores, fps_end_to_end = validation.evaluate_frames(trained.checkpoint, frames.val, spacing, sigma, threshold,
                                                        progress=progress)
    fps = inference.inference_speed(trained.checkpoint, size=SPEED_SIZE, n=16, batch_size=8, threads=SPEED_THREADS,
                                    device="cpu")
    return TrainingResult(params, trained, frames, scores, threshold, fps_end_to_end, fps)


def images_per_second(history: pd.DataFrame) -> float:
    """Mean training throughput (images/s) over the epochs, the first left out when there are more (warm-up)."""
    if "train_images_per_second" not in history:
        return float("nan")
    ips = history["train_images_per_second"].dropna()
    ips = ips.iloc[1:] if len(ips) > 1 else ips
    return float(ips.mean()) if len(ips) else float("nan")


def train_metrics(result: TrainingResult) -> dict[str, Any]:
    """Stage 04's metrics in train mode (JSON types).

    Scores (means over the validation frames, at their own size; strict protocol): ``val_f1_at_0p5mm``,
    ``val_accuracy_at_0p5mm``, ``val_completeness_at_0p5mm``, ``baseline_background_f1_at_0p5mm``,
    ``baseline_threshold_f1_at_0p5mm`` (at ``f1_sigma_mm``, named for the paper's 0.5 mm), with
    ``val_frames_empty_label``; the best epoch's ``val_f1_at_0p5mm_input_size`` and ``val_dice`` (band Dice), both
    at the network's input size. Training: ``epochs``, ``best_epoch``, ``train_images`` (the pool held in memory)
    of ``train_images_labelled`` (the training specimens' labelled frames; fewer are used only when they do not
    fit ``memory_budget_mb``), ``train_images_per_epoch`` (drawn from the pool), ``val_images``,
    ``train_seconds`` (all folds), ``images_per_second_train``; inference: ``frames_per_second_inference``
    (``SPEED_SIZE``, ``SPEED_THREADS`` CPU threads), ``frames_per_second_inference_end_to_end``. Set-up:
    ``device``, ``arch``, ``encoder``, ``input_size``, ``split``, ``n_folds``, ``fold_val_f1``, ``checkpoint``.
    """
    p, best, t = result.params, result.best, result.scores
    mean = t[["model_acc", "model_com", "model_f1", "background_f1", "threshold_f1"]].mean()
    return {
        "epochs": int(len(best.history)),
        "best_epoch": int(best.metadata["epoch"]),
        "train_images": len(result.frames.train),
        "train_images_labelled": int(result.frames.n_train_labelled),
        "train_images_per_epoch": int(p.samples_per_epoch or len(result.frames.train)),
        "val_images": len(result.frames.val),
        "val_frames_empty_label": int((t["label_pixels"] == 0).sum()),
        "f1_sigma_mm": p.f1_sigma_mm,
        "val_f1_at_0p5mm": float(mean["model_f1"]),
        "val_accuracy_at_0p5mm": float(mean["model_acc"]),
        "val_completeness_at_0p5mm": float(mean["model_com"]),
        "val_f1_at_0p5mm_input_size": best.metadata["val_f1"],
        "val_dice": best.metadata["val_dice"],
        "baseline_background_f1_at_0p5mm": float(mean["background_f1"]),
        "baseline_threshold_f1_at_0p5mm": float(mean["threshold_f1"]),
        "baseline_threshold": result.baseline_threshold,
        "images_per_second_train": images_per_second(best.history),
        "frames_per_second_inference": float(result.frames_per_second_inference),
        "frames_per_second_inference_end_to_end": float(result.frames_per_second_end_to_end),
        "train_seconds": float(sum(f.train_seconds for f in result.trained.folds)),
        "device": best.device,
        "arch": p.arch,
        "encoder": p.encoder,
        "input_size": list(p.input_size),
        "split": result.split.as_dict(),
        "n_folds": p.n_folds,
        "fold_val_f1": [f.metadata["val_f1"] for f in result.trained.folds],
        "checkpoint": str(result.checkpoint),
    }


#: Train mode's model must beat the better baseline by this much F1 when ``expect_learning`` is set.
LEARNING_MARGIN = 0.2


def check_train(m: Mapping[str, Any], params: TrainingParams) -> None:
    """What must hold in train mode on any data, from :func:`train_metrics`: every epoch ran, no test specimen was
    trained or validated on, scores are scores, and the all-background baseline scores exactly the share of empty
    labels (strict protocol). With ``expect_learning`` the model beats both baselines by ``LEARNING_MARGIN``.

    Raises
    ------
    AssertionError
        Naming what failed.
    """
    split = m["split"]
    assert not (set(split["train"]) | set(split["val"])) & set(split["test"]), "a test specimen leaked into training"
    assert m["epochs"] == params.epochs, "training stopped early"
    assert 0.0 <= m["val_f1_at_0p5mm"] <= 1.0 and np.isfinite(m["val_dice"]), \
        f"validation F1 {m['val_f1_at_0p5mm']} or Dice {m['val_dice']} is not a score"
    assert np.isclose(m["baseline_background_f1_at_0p5mm"], m["val_frames_empty_label"] / m["val_images"]), \
        (f"the all-background baseline scores {m['baseline_background_f1_at_0p5mm']:.3f}, not the share of empty "
         f"validation labels ({m['val_frames_empty_label']} of {m['val_images']}): the strict protocol is broken")
    if params.expect_learning:
        floor = max(m["baseline_background_f1_at_0p5mm"], m["baseline_threshold_f1_at_0p5mm"])
        assert m["val_f1_at_0p5mm"] >= floor + LEARNING_MARGIN, \
            f"the model did not clearly learn ({m['val_f1_at_0p5mm']:.3f} vs baselines {floor:.3f})"


def plot_curves(result: TrainingResult):
    """Training curves of the best fold: losses, validation Dice and F1 per epoch."""
    return seg_figures.plot_history(result.best.history)


def plot_predictions(result: TrainingResult, n: int = 6):
    """``n`` validation frames (evenly spaced): image, CT-derived label (green), the model's prediction (magenta)."""
    return seg_figures.plot_predictions(result.checkpoint, result.frames.val, n=n)


# ----------------------------------------------------------------------------- the stage contract


def metrics(result: Result) -> dict[str, Any]:
    """Stage 04's metrics (JSON types), the mode's: :func:`train_metrics`,
    :func:`ultrabones.segmentation.transfer.metrics` or :func:`ultrabones.segmentation.finetune.metrics`."""
    if result.mode == "evaluate":
        return transfer.metrics(result.outcome)
    if result.mode == "finetune":
        return finetune.metrics(result.outcome)
    return train_metrics(result.outcome)


def check(result: Result) -> None:
    """What must hold on any data: in train mode :func:`check_train`; in evaluate and finetune mode, scores that
    are scores.

    Raises
    ------
    AssertionError
        Naming what failed.
    """
    m = metrics(result)
    if result.mode == "train":
        check_train(m, result.params)
    elif result.mode == "evaluate":
        f1 = m["eval_f1_at_0p5mm"]
        assert 0.0 <= f1 <= 1.0, f"evaluate mode: F1 {f1} is not a score in [0, 1]"
    else:
        for side in ("before", "after"):
            f1 = m["before_after"][side]["f1"]
            assert 0.0 <= f1 <= 1.0, f"finetune mode: the {side} model's F1 {f1} is not a score in [0, 1]"


def figures(result: Result) -> dict[str, Any]:
    """The stage's figures, by file name: train mode ``training_curves`` (:func:`plot_curves`) and
    ``training_val_predictions`` (:func:`plot_predictions`); evaluate mode ``training_eval_predictions``
    (:func:`ultrabones.segmentation.transfer.plot_predictions`); finetune mode none."""
    if result.mode == "train":
        return {"training_curves": plot_curves(result.outcome),
                "training_val_predictions": plot_predictions(result.outcome)}
    if result.mode == "evaluate":
        return {"training_eval_predictions": transfer.plot_predictions(result.outcome)}
    return {}
