"""Training: split by specimen, every cross-validation fold trained with PyTorch Lightning, the best exported.

Section 3.2 of the paper: trained by specimen on the CT-derived visible labels, 100 epochs, batch 32. Training
runs on PyTorch Lightning (:mod:`ultrabones.segmentation.lightning`: progress bar, CSV log, best and last
checkpoints, resume, deterministic seeding, bf16 mixed precision and DDP on GPUs). A fold resumes only onto the
parameters and the data it started with (:func:`data_fingerprint`). The best fold's checkpoint is
``paths.models_dir / "best.ckpt"`` (:func:`train`; the format: :mod:`ultrabones.segmentation.checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import torch

from ultrabones.core import atomic
from ultrabones.core import dataset as ds
from ultrabones.core.cache import file_digest, files_digest, params_hash
from ultrabones.core.errors import ParamsError
from ultrabones.segmentation import lightning, segdata, splits
from ultrabones.segmentation.checkpoint import load_lightning_checkpoint, save_checkpoint
from ultrabones.segmentation.net import channels_last, cpu_has_bf16_matrix_units
from ultrabones.segmentation.splits import Split

#: Parameters that may change between a stopped run and its resumption.
#: (``memory_budget_mb`` only chooses the frames, and the data fingerprint holds the frames chosen.)
_RESUME_FREE = ("epochs", "resume", "devices", "accelerator", "num_workers", "threads", "memory_budget_mb",
                "expect_learning")


@dataclass
class FoldResult:
    """The outcome of training one fold.

    Attributes
    ----------
    checkpoint : the exported best checkpoint (state dict + metadata).
    history : one row per epoch (train and validation losses, ``val_dice``,
        ``val_f1``, ``train_images_per_second``, ``lr``).
    metadata : the checkpoint's metadata.
    n_train : frames in the training pool (held in memory).
    n_val : validation frames.
    n_train_labelled : labelled frames of the training specimens (the pool: all of them, or the evenly spaced
        subset that fits ``memory_budget_mb``).
    """

    fold: int
    split: Split
    checkpoint: Path
    history: pd.DataFrame
    metadata: dict
    n_train: int
    n_val: int
    device: str
    train_seconds: float
    run_dir: Path
    n_train_labelled: int


@dataclass
class TrainResult:
    """Every fold's result and the chosen best checkpoint (``models_dir / "best.ckpt"``)."""

    split: Split
    folds: list[FoldResult]
    best: FoldResult
    checkpoint: Path
    extra: dict = field(default_factory=dict)


def _resolve_hardware(P: Mapping) -> dict:
    """Accelerator, devices, precision and determinism flags for the Trainer."""
    gpu = torch.cuda.is_available()
    accelerator = P["accelerator"] if P["accelerator"] != "auto" else ("gpu" if gpu else "cpu")
    if accelerator == "gpu" and not gpu:
        raise ParamsError("training.accelerator: 'gpu' requested but no CUDA device is available")
    devices = P["devices"] if P["devices"] is not None else ("auto" if accelerator == "gpu" else 1)
    precision = P["precision"]
    if precision == "auto":  # bf16 where the hardware multiplies it natively (GPU, or a CPU with AMX)
        precision = "bf16-mixed" if accelerator == "gpu" or cpu_has_bf16_matrix_units() else "32-true"
    # Upsampling backward has no deterministic CUDA kernel: warn there instead of failing.
    deterministic = (True if accelerator == "cpu" else "warn") if P["deterministic"] else False
    # cuDNN autotuning when reproducibility is not asked for (about 10 % faster on an H100).
    benchmark = accelerator == "gpu" and not P["deterministic"]
    return {"accelerator": accelerator, "devices": devices, "precision": precision, "deterministic": deterministic,
            "benchmark": benchmark, "channels_last": channels_last(precision, accelerator)}


def _device_name(hw: dict) -> str:
    if hw["accelerator"] == "gpu":
        n = torch.cuda.device_count() if hw["devices"] == "auto" else hw["devices"]
        return f"{n} x {torch.cuda.get_device_name(0)} ({hw['precision']})"
    return f"cpu ({torch.get_num_threads()} threads, {hw['precision']})"


def _resume_key(P: Mapping, split: Split, seed: int, data: str = "") -> str:
    return params_hash({"params": {k: v for k, v in P.items() if k not in _RESUME_FREE},
                        "split": split.as_dict(), "seed": seed, "data": data})


def data_fingerprint(root: Path | str, split: Split, P: Mapping, derived: Path | str | None = None) -> str:
    """A hash of the training and validation frames: their images' and labels' bytes.

    A run resumes only onto the data it started with: relabelled frames (say a
    specimen rerun by ``make specimen``) make a finished run stale.
    """
    h = hashlib.sha256()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # records without labels are reported when the datasets are made
        frames = _split_frames(root, split, P, derived)

    for f in frames.train + frames.val:
        h.update(f"{f.specimen}/{f.record.key}/{f.timestamp}".encode())
        h.update(Path(f.label).read_bytes())
        # layout C: the frame lives in its record's sequence file
        h.update((files_digest(f.record.input_files()) if f.record.is_sequence else file_digest(f.image)).encode())
    return h.hexdigest()[:16]


def read_history(run_dir: Path | str) -> pd.DataFrame:
    """Per-epoch training history from the CSV logs of a run (resumed sessions merged, latest wins)."""
    files = sorted(Path(run_dir, "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    frames = [pd.read_csv(f) for f in files if f.stat().st_size > 0]
    if not frames:
        return pd.DataFrame(columns=["epoch"])
    rows = []
    for session, df in enumerate(frames):
        df = df.drop(columns=[c for c in ("step",) if c in df.columns])
        g = df.groupby("epoch").first()  # first non-null of each column per epoch
        g["session"] = session
        rows.append(g)
    hist = pd.concat(rows)
    hist = hist[~hist.index.duplicated(keep="last")].sort_index().reset_index()
    return hist


def _spacing(root: Path) -> tuple[float, float]:
    _, spacing, _ = ds.read_calibration(root)
    return float(spacing[0]), float(spacing[1])


def _split_frames(root: Path | str, split: Split, P: Mapping, derived: Path | str | None = None):
    """:func:`ultrabones.segmentation.segdata.training_frames` with the ``training`` parameters."""
    return segdata.training_frames(root, split, P["input_size"], P["memory_budget_mb"],
                                   P["max_val_frames_per_specimen"], derived)


def make_datasets(root: Path | str, split: Split, P: Mapping, seed: int, progress: bool = False,
                  derived: Path | str | None = None):
    """Training and validation :class:`~ultrabones.segmentation.segdata.FrameDataset` of a split, the
    normalisation, and the frames (:class:`~ultrabones.segmentation.segdata.TrainingFrames`).

    The training pool is every labelled frame of the training specimens, or the evenly spaced subset that fits
    ``P["memory_budget_mb"]``. The normalisation is ``P["norm_mean"], P["norm_std"]``, or, when null, measured on
    the training frames.
    """
    root = Path(root)
    size = tuple(P["input_size"])
    frames = _split_frames(root, split, P, derived)
    if P["norm_mean"] is None or P["norm_std"] is None:
        mean, std = segdata.intensity_stats(frames.train, size)
    else:
        mean, std = P["norm_mean"], P["norm_std"]
    std = max(std, 1e-6)
    spacing = _spacing(root)
    common = dict(size=size, band_px=P["label_band_px"], mean=mean, std=std, spacing_mm=spacing, progress=progress)
    train_ds = segdata.FrameDataset(frames.train, augment=P["augment"], seed=seed, **common)
    val_ds = segdata.FrameDataset(frames.val, augment=False, seed=seed, **common)
    return train_ds, val_ds, (mean, std), frames


def train_fold(
    root: Path | str,
    run_dir: Path | str,
    split: Split,
    P: Mapping,
    seed: int,
    fold: int = 0,
    progress: bool = True,
    derived: Path | str | None = None,
) -> FoldResult:
    """Train one model on a split with PyTorch Lightning and export its best checkpoint.

    ``run_dir`` receives ``checkpoints/`` (Lightning's best and ``last.ckpt``),
    ``logs/version_<i>/metrics.csv`` (one per session), ``run.json`` and the
    exported ``best.ckpt``. With ``P["resume"]`` a run whose ``run.json``
    matches these parameters (all but the epochs and hardware keys) continues
    from ``last.ckpt``; a mismatching one is moved aside and retrained.

    Parameters
    ----------
    root : dataset root.
    run_dir : output folder of this fold.
    split : the specimens.
    P : the ``training`` parameters.
    seed : master seed (weights, shuffling, augmentation).
    fold : fold number (recorded in the metadata).
    progress : Lightning's progress bar.
    derived : the derived dataset with the labels (``Paths.derived``); None: beside the images.
    """
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
    from pytorch_lightning.loggers import CSVLogger

    root, run_dir = Path(root), Path(run_dir)
    if P["threads"]:
        torch.set_num_threads(P["threads"])
    key = _resume_key(P, split, seed, data_fingerprint(root, split, P, derived))
    run_json = run_dir / "run.json"
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if run_dir.exists():
        stale = not P["resume"] or not run_json.is_file() or json.loads(run_json.read_text()).get("key") != key
        if stale:
            old = run_dir.with_name(run_dir.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            run_dir.rename(old)
            shutil.rmtree(old, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(run_json, {"key": key, "split": split.as_dict(), "seed": seed, "fold": fold})

    pl.seed_everything(seed, workers=True, verbose=False)
    train_ds, val_ds, (mean, std), frames = make_datasets(root, split, P, seed, progress=progress, derived=derived)
    config = dict(P)
    config.update(seed=seed, norm_mean=mean, norm_std=std)
    hw = _resolve_hardware(P)
    config["channels_last"] = hw["channels_last"]
    model = lightning.module_class()(config)
    ckpt_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best-{epoch:03d}", monitor="val_f1", mode="max",
                              save_top_k=1)
    # Lightning >= 2.5 refreshes save_last only when the best changes: keep "last" with its own callback.
    last_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                              enable_version_counter=False)
    samples = P["samples_per_epoch"]
    n_batches = max(1, (len(train_ds) if samples is None else samples) // P["batch_size"])
    callbacks = [ckpt_cb, last_cb]
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, n_batches // 20)))
    trainer = pl.Trainer(
        max_epochs=P["epochs"],
        accelerator=hw["accelerator"],
        devices=hw["devices"],
        precision=hw["precision"],
        deterministic=hw["deterministic"],
        benchmark=hw["benchmark"],
        strategy="auto",
        use_distributed_sampler=False,
        logger=CSVLogger(run_dir, name="logs"),
        callbacks=callbacks,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, n_batches)),
        default_root_dir=run_dir,
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*Experiment logs directory.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")
        warnings.filterwarnings("ignore", message=".*overridden `on_(before|after)_batch_transfer`.*")
        resume_from = None
        if P["resume"] and last.is_file():
            load_lightning_checkpoint(last, run_dir)  # a corrupt file: a clear error before Lightning's
            resume_from = str(last)
        data = lightning.datamodule(train_ds, val_ds, P["batch_size"], P["num_workers"], seed, samples)
        trainer.fit(model, datamodule=data, ckpt_path=resume_from, weights_only=True)
    seconds = time.perf_counter() - t0
    best_path = Path(ckpt_cb.best_model_path) if ckpt_cb.best_model_path else last
    history = read_history(run_dir)
    lckpt = load_lightning_checkpoint(best_path, run_dir)
    state = {k[len("model."):]: v for k, v in lckpt["state_dict"].items() if k.startswith("model.")}
    epoch = int(lckpt["epoch"])
    row = history[history["epoch"] == epoch]
    metadata = {
        "arch": P["arch"],
        "encoder": P["encoder"],
        "in_channels": 1,
        "input_size": list(P["input_size"]),
        "norm_mean": float(mean),
        "norm_std": float(std),
        "label_band_px": P["label_band_px"],
        "threshold": P["threshold"],
        "spacing_mm": list(_spacing(root)),
        "split": split.as_dict(),
        "fold": fold,
        "epoch": epoch,
        "val_f1": float(row["val_f1"].iloc[0]) if len(row) else None,
        "val_dice": float(row["val_dice"].iloc[0]) if len(row) else None,
        "n_train_frames": len(train_ds),
        "n_train_labelled": frames.n_train_labelled,
        "samples_per_epoch": samples if samples is not None else len(train_ds),
        "n_val_frames": len(val_ds),
        "seed": seed,
        "params": dict(P),
        "device": _device_name(hw),
        "precision": hw["precision"],  # inference follows it (inference.predict)
        "source": str(best_path),
    }
    out = save_checkpoint(run_dir / "best.ckpt", state, metadata)
    return FoldResult(fold, split, out, history, metadata, len(train_ds), len(val_ds), metadata["device"],
                      seconds, run_dir, frames.n_train_labelled)


def train(
    root: Path | str,
    models_dir: Path | str,
    P: Mapping,
    seed: int,
    specimens: Sequence[str] | None = None,
    progress: bool = True,
    derived: Path | str | None = None,
) -> TrainResult:
    """Split by specimen, train every cross-validation fold, keep the best as ``models_dir/best.ckpt``.

    Parameters
    ----------
    root : dataset root (the twin's ``dataset/`` or ``data_root``).
    models_dir : ``paths.models_dir``; fold *k* trains in ``fold<k>/`` (one
        fold: ``run/``).
    P : the ``training`` parameters.
    seed : master seed.
    specimens : restrict to these specimen folders (the common ``specimens``).
    derived : the derived dataset notebook 02 wrote the labels to (``Paths.derived``); None: beside the images.

    Returns
    -------
    TrainResult; ``best.ckpt`` is the fold with the highest validation F1 at
    ``f1_sigma_mm``; its metadata holds the split (test specimens for evaluation).
    """
    models_dir = Path(models_dir)
    available = segdata.available_specimens(root, specimens)
    split = splits.split_specimens(available, P["train_specimens"], P["val_specimens"], P["test_specimens"])
    folds = splits.cross_validation_folds(split, P["n_folds"])
    results = []
    for k, fs in enumerate(folds):
        run_dir = models_dir / ("run" if len(folds) == 1 else f"fold{k}")
        results.append(train_fold(root, run_dir, fs, P, seed, fold=k, progress=progress, derived=derived))
    best = max(results, key=lambda r: -1.0 if r.metadata["val_f1"] is None else r.metadata["val_f1"])
    out = models_dir / "best.ckpt"
    with atomic.atomic_path(out) as tmp:
        shutil.copyfile(best.checkpoint, tmp)
    return TrainResult(split, results, best, out)
