"""Fine-tune mode of stage 04 (``training.mode: finetune``): the paper's loop closed on real frames.

The paper labels real sweeps automatically and trains on those labels. On data of one specimen
(``../shared/real_sweep``) there is no specimen to hold out, so this mode splits each sweep **in time**: the
earlier frames train, the later ones test, with a gap of ``finetune_gap_frames`` tracking rows between them so
that neighbouring (nearly identical) frames do not sit on both sides. With the default 25% test share a sweep
of 200 frames tests on rows 150-199 and trains on rows 0-139 (its labelled ones).

The model starts from ``training.init_checkpoint`` (e.g. the twin-trained model) and is trained for
``finetune_epochs`` epochs at ``finetune_lr`` on the training frames' CT-derived visible labels (the
labelling stage's ``Labels/``; no truth anywhere), with the checkpoint's own input size and normalisation and
the section's loss weights, batch size and augmentation. The fine-tuned model is written as
``models/best.ckpt`` (its metadata holds the time split and ``mode: finetune``); the twin-trained one is kept
beside it as ``models/init.ckpt``. Both are scored on the test frames (:func:`score_before_after`, notebook 05)
against the same CT-derived labels: an **agreement with the pipeline's CT-derived labels**, not an accuracy
against a truth, which real data does not have.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ultrabones.core import dataset as ds
from ultrabones.core.dataset import Frame
from ultrabones.core.errors import DatasetError, ParamsError
from ultrabones.segmentation import segdata
from ultrabones.segmentation.checkpoint import load_checkpoint, save_checkpoint
from ultrabones.segmentation.losses import SegmentationLoss
from ultrabones.segmentation.validation import evaluate_frames
from ultrabones.segmentation.training_params import TrainingParams

#: What the before/after scores measure (named in the metrics).
REFERENCE = "agreement with the pipeline's CT-derived visible labels (Labels/, truth-free): not an accuracy"


@dataclass(frozen=True)
class TimeSplit:
    """Frames of a time split: ``train`` (earlier rows), ``test`` (later rows); ``first_test_row`` and
    ``last_train_row`` per record key (tracking.csv row numbers)."""

    train: tuple[Frame, ...]
    test: tuple[Frame, ...]
    rows: dict

    def as_dict(self) -> dict:
        """JSON description: counts and, per record, the row ranges."""
        return {"n_train": len(self.train), "n_test": len(self.test), "rows": self.rows,
                "test_timestamps": [[f.record.key, f.timestamp] for f in self.test]}


def time_split(frames: Sequence[Frame], test_fraction: float, gap_frames: int) -> TimeSplit:
    """Split labelled frames in time, per record: the last ``test_fraction`` of the sweep's rows test.

    Parameters
    ----------
    frames : labelled frames (:func:`ultrabones.segmentation.segdata.labelled_frames`).
    test_fraction : share of a sweep's tracking rows (all frames, labelled or not) at its end that test.
    gap_frames : tracking rows left out just before the test rows.

    Returns
    -------
    :class:`TimeSplit`; a record's rows ``r`` train when ``r < first_test - gap_frames``, test when
    ``r >= first_test``, with ``first_test = n_rows - round(n_rows * test_fraction)``.

    Raises
    ------
    ParamsError
        If ``test_fraction`` is not in (0, 1) or ``gap_frames`` is negative.
    DatasetError
        If either side has no labelled frame (names the counts).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ParamsError(f"training.finetune_test_fraction: must be in (0, 1), got {test_fraction!r}")
    if gap_frames < 0:
        raise ParamsError(f"training.finetune_gap_frames: must be >= 0, got {gap_frames!r}")
    by_record: dict[str, list[Frame]] = {}
    for f in frames:
        by_record.setdefault(f.record.key, []).append(f)
    train, test, rows = [], [], {}
    for key, fs in sorted(by_record.items()):
        rec = fs[0].record
        stamps = pd.read_csv(rec.tracking_csv)["timestamp"].to_numpy()
        row_of = {int(t): i for i, t in enumerate(stamps)}
        n = len(stamps)
        first_test = n - int(round(n * test_fraction))
        last_train = first_test - gap_frames - 1
        rows[key] = {"n_rows": n, "last_train_row": last_train, "first_test_row": first_test}
        for f in sorted(fs, key=lambda f: row_of.get(f.timestamp, -1)):
            r = row_of.get(f.timestamp)
            if r is None:
                continue
            if r <= last_train:
                train.append(f)
            elif r >= first_test:
                test.append(f)
    if not train or not test:
        raise DatasetError(f"time split: {len(train)} training and {len(test)} test frames (labelled); "
                           "both sides need one (label more frames, or change finetune_test_fraction)")
    return TimeSplit(tuple(train), tuple(test), rows)


def finetune(init_checkpoint: str | Path, frames: Sequence[Frame], out: Path | str, params: TrainingParams,
             spacing_mm, seed: int, extra_metadata: dict | None = None, progress: bool = False) -> tuple[Path, dict]:
    """Train ``init_checkpoint``'s model further on ``frames`` (plain PyTorch, CPU or one GPU).

    The checkpoint's architecture, input size and normalisation are kept; the loss is
    :class:`ultrabones.segmentation.losses.SegmentationLoss` with the section's weights; Adam at
    ``finetune_lr``; ``batch_size`` frames a step, the frames shuffled each epoch (seeded); with ``augment``
    the training-time augmentation of the train mode (:func:`ultrabones.segmentation.segdata.augment_batch`).

    Returns
    -------
    (path of the written checkpoint, its metadata), the metadata with ``history`` (mean loss per epoch).
    """
    if params.threads:
        torch.set_num_threads(params.threads)
    net, meta = load_checkpoint(init_checkpoint)
    size = tuple(meta["input_size"])
    mean, std = float(meta["norm_mean"]), float(meta["norm_std"])
    data = segdata.FrameDataset(frames, size, params.label_band_px, mean, std, spacing_mm, augment=params.augment,
                                seed=seed, progress=progress)
    device = "cuda" if torch.cuda.is_available() and params.accelerator in ("auto", "gpu", "cuda") else "cpu"
    net = net.to(device).train()
    loss_fn = SegmentationLoss(params.dice_weight, params.bce_weight, params.tv_weight, params.skeleton_weight)
    opt = torch.optim.Adam(net.parameters(), lr=params.finetune_lr, weight_decay=params.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    history, t0 = [], time.perf_counter()
    for epoch in range(params.finetune_epochs):
        order = torch.randperm(len(data), generator=gen).tolist()
        losses = []
        for i in range(0, len(order), params.batch_size):
            items = [data[(j, epoch) if params.augment else j] for j in order[i:i + params.batch_size]]
            batch = {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in ("image", "label", "line")}
            image = batch["image"].float().to(device) / 255.0
            label, line = batch["label"].float().to(device), batch["line"].to(device)
            if params.augment:
                aug = torch.stack([torch.as_tensor(it["aug"]) for it in items]).to(device)
                image, label, line = segdata.augment_batch(image, label, line, aug, int(aug[0, 9]))
            logits = net((image - mean) / std)
            loss = loss_fn(logits, label)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses))})
    net.eval()
    new = dict(meta)
    new.update({"mode": "finetune", "init_checkpoint": str(init_checkpoint), "finetune_epochs": params.finetune_epochs,
                "finetune_lr": params.finetune_lr, "finetune_seconds": time.perf_counter() - t0,
                "history": history, "precision": "32-true",  # fine-tuned in fp32: it predicts in fp32
                **(extra_metadata or {})})
    new.pop("git_commit", None)
    new.pop("created", None)
    return save_checkpoint(out, net.state_dict(), new), new


@dataclass(frozen=True)
class FinetuneResult:
    """What fine-tune mode did: the split, the checkpoints (``before``: the initial model's copy,
    ``after``: the fine-tuned ``best.ckpt``), the fine-tuned metadata, and both models' per-frame scores on
    the test frames (:func:`score_before_after`)."""

    split: TimeSplit
    before: Path
    after: Path
    metadata: dict
    scores: pd.DataFrame
    sigma_mm: float


def run(root: Path | str, models_dir: Path | str, params: TrainingParams, seed: int,
        specimens: Sequence[str] | None = None, derived: Path | str | None = None,
        progress: bool = False) -> FinetuneResult:
    """Split the labelled frames in time, fine-tune ``init_checkpoint`` on the earlier ones, score both models
    on the later ones.

    Raises
    ------
    ParamsError
        No ``init_checkpoint`` (or no such file), a bad split setting.
    DatasetError
        No labelled frame, or a side of the split without one.
    """
    if not params.init_checkpoint or not Path(params.init_checkpoint).is_file():
        raise ParamsError(f"training.init_checkpoint: finetune mode needs the model to start from "
                          f"(e.g. build/smoke/models/best.ckpt); got {params.init_checkpoint!r}")
    available = segdata.available_specimens(root, specimens)
    frames = segdata.labelled_frames(root, available, None, derived)
    split = time_split(frames, params.finetune_test_fraction, params.finetune_gap_frames)
    _, spacing, _ = ds.read_calibration(root)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    before = models_dir / "init.ckpt"
    shutil.copyfile(params.init_checkpoint, before)
    after, meta = finetune(params.init_checkpoint, split.train, models_dir / "best.ckpt", params, spacing, seed,
                           {"time_split": split.as_dict(), "data_root": str(root),
                            "split": {"train": [], "val": [], "test": sorted(available)}}, progress)
    scores = score_before_after(before, after, split.test, spacing, params.f1_sigma_mm)
    return FinetuneResult(split, before, after, meta, scores, float(params.f1_sigma_mm))


def score_before_after(before, after, frames: Sequence[Frame], spacing_mm, sigma_mm: float) -> pd.DataFrame:
    """Both models on the same frames at ``sigma_mm`` (:func:`ultrabones.segmentation.validation.evaluate_frames`).

    Returns
    -------
    one row per frame: ``specimen, record, timestamp, label_pixels`` and ``before_`` / ``after_`` ``acc``,
    ``com``, ``f1`` (accuracy, completeness, F1 against the CT-derived visible labels).
    """
    out = None
    for name, ckpt in (("before", before), ("after", after)):
        t, _ = evaluate_frames(ckpt, list(frames), spacing_mm, sigma_mm)
        t = t.rename(columns={"model_acc": f"{name}_acc", "model_com": f"{name}_com", "model_f1": f"{name}_f1"})
        t = t.drop(columns=["background_f1"])
        out = t if out is None else out.merge(t, on=["specimen", "record", "timestamp", "label_pixels"])
    return out


def summary(scores: pd.DataFrame, split: TimeSplit | dict, sigma_mm: float) -> dict[str, Any]:
    """The before/after block of the metrics: means over the test frames, with their standard errors.

    Returns
    -------
    ``{"reference", "sigma_mm", "n_test", "n_train", "before": {accuracy, completeness, f1, f1_se},
    "after": {...}, "f1_change", "f1_change_se"}`` (the change paired over frames).
    """
    n = len(scores)
    split = split.as_dict() if isinstance(split, TimeSplit) else dict(split)

    def block(p):
        f1 = scores[f"{p}_f1"].to_numpy(float)
        return {"accuracy": float(scores[f"{p}_acc"].mean()), "completeness": float(scores[f"{p}_com"].mean()),
                "f1": float(f1.mean()), "f1_se": float(f1.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")}

    d = (scores["after_f1"] - scores["before_f1"]).to_numpy(float)
    return {"reference": REFERENCE, "sigma_mm": sigma_mm, "n_test": n, "n_train": split.get("n_train"),
            "rows": split.get("rows"), "before": block("before"), "after": block("after"),
            "f1_change": float(d.mean()), "f1_change_se": float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")}


def metrics(result: FinetuneResult) -> dict[str, Any]:
    """Stage 04's metrics in finetune mode: ``mode``, ``init_checkpoint``, ``checkpoint``, ``finetune_epochs``,
    ``finetune_seconds``, ``history`` and ``before_after`` (:func:`summary`)."""
    m = result.metadata
    return {"mode": "finetune", "init_checkpoint": m.get("init_checkpoint"), "checkpoint": str(result.after),
            "finetune_epochs": m.get("finetune_epochs"), "finetune_seconds": m.get("finetune_seconds"),
            "history": m.get("history"), "split": m.get("split"),
            "before_after": summary(result.scores, result.split, result.sigma_mm)}


def before_after(checkpoint: Path | str, root: Path | str, derived: Path | str | None = None,
                 sigma_mm: float | None = None) -> dict[str, Any] | None:
    """Notebook 05's before/after block: both models on the held-out later frames, or None (not a fine-tuned model).

    When ``checkpoint``'s metadata says ``mode: finetune``, scores it and ``init.ckpt`` beside it (the model it
    started from) on the test frames its time split names (:func:`score_before_after`, :func:`summary`).

    Parameters
    ----------
    checkpoint : the evaluated checkpoint (``models/best.ckpt``); root : the dataset (images);
    derived : the labels' dataset; sigma_mm : the distance threshold (mm); None: the fine-tuning's ``f1_sigma_mm``.

    Raises
    ------
    DatasetError
        If ``init.ckpt`` or a record of the test frames named in the metadata is missing.
    """
    best = Path(checkpoint)
    if not best.is_file():
        return None
    _, meta = load_checkpoint(best)
    if meta.get("mode") != "finetune":
        return None
    init = best.parent / "init.ckpt"
    if not init.is_file():
        raise DatasetError(f"{init}: the model the fine-tuning started from is missing (rerun notebook 04)")
    split = meta["time_split"]
    records = {r.key: r for s in ds.discover(root, None, derived) for r in s.records}
    frames = []
    for key, ts in split["test_timestamps"]:
        if key not in records:
            raise DatasetError(f"{root}: record {key} of the fine-tuning's test frames not found")
        frames.append(Frame(records[key], int(ts)))
    _, spacing, _ = ds.read_calibration(root)
    sigma = float(sigma_mm if sigma_mm is not None else (meta.get("params") or {}).get("f1_sigma_mm", 0.5))
    scores = score_before_after(init, best, frames, spacing, sigma)
    return summary(scores, split, sigma)


def describe(block: dict) -> str:
    """The before/after block (:func:`summary`) as a Markdown table and one line on the change."""
    rows = [f"| {k} | {block[k]['accuracy']:.3f} | {block[k]['completeness']:.3f} | {block[k]['f1']:.3f} "
            f"+- {block[k]['f1_se']:.3f} |" for k in ("before", "after")]
    return ("| model | accuracy | completeness | F1 (+- se) |\n|---|---|---|---|\n" + "\n".join(rows)
            + f"\n\nF1 change {block['f1_change']:+.3f} +- {block['f1_change_se']:.3f} (se, paired) on "
            f"{block['n_test']} later frames at {block['sigma_mm']} mm; {block['reference']}.")
