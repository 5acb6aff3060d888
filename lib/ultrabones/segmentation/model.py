"""Bone segmentation in ultrasound images: model, losses, training, checkpoints, inference.

Section 3.2 of the paper: a U-Net with a ResNet encoder (the released code: an
FPN with ResNet-34) trained by specimen on the CT-derived visible labels, loss
Dice (weight 1) + binary cross-entropy (weight 1), Adam (0.9, 0.999) from
lr 1e-5 decayed by 0.9 every 10 epochs, 100 epochs, batch 32. Options: the
total-variation loss of the RSN-U-net paper (lambda 0.4) and a soft-skeleton
(clDice) term standing in for the released code's skeleton term (0.1).

Training runs on PyTorch Lightning (progress bar, CSV log, best and last
checkpoints, resume, deterministic seeding, bf16 mixed precision and DDP on
GPUs). The exported checkpoint is a plain dict -- ``{"format", "state_dict",
"metadata"}`` -- that loads with ``torch.load(weights_only=True)``; a pickled
foreign checkpoint (the released whole-module ``smp.FPN``) is opened only with
``trust_pickle=True``.

Public API used by the evaluation stage: :func:`load_checkpoint`,
:func:`predict`, :func:`predict_record`, :func:`convert_released_checkpoint`,
and ``paths.models_dir / "best.ckpt"`` (see :func:`train`).
"""

from __future__ import annotations

import json
import pickle
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from ultrabones.core import atomic
from ultrabones.core import dataset as ds
from ultrabones.segmentation import segdata
from ultrabones.core.errors import DatasetError, ParamsError
from ultrabones.core.dataset import Frame
from ultrabones.core.overlay import overlay
from ultrabones.segmentation.segdata import Split

FORMAT = "ultrabones-segmentation/1"
#: Normalisation of the released model ([0, 1] intensities), from DESIGN.md.
RELEASED_MEAN, RELEASED_STD = 0.17475835978984833, 0.16475939750671387
#: Input size (h, w) and label band (px) of the released model.
RELEASED_SIZE, RELEASED_BAND_PX = (256, 256), 3
ARCHS = {"fpn": "FPN", "unet": "Unet"}
#: Parameters that may change between a stopped run and its resumption.
#: (``memory_budget_mb`` only chooses the frames, and the data fingerprint holds the frames chosen.)
_RESUME_FREE = ("epochs", "resume", "devices", "accelerator", "num_workers", "threads", "memory_budget_mb",
                "expect_learning")


# ----------------------------------------------------------------------------- model


def build_model(arch: str = "fpn", encoder: str = "resnet34", encoder_weights: str | None = None, in_channels: int = 1):
    """A ``segmentation_models_pytorch`` FPN or U-Net with one output channel (logits).

    Parameters
    ----------
    arch : ``"fpn"`` (released code) or ``"unet"`` (paper text).
    encoder : smp encoder name, e.g. ``"resnet34"``.
    encoder_weights : None (random initialisation; nothing is downloaded) or a
        local file with the encoder's weights (torchvision/timm ResNet state
        dict; a classifier head is dropped and 3-channel first-layer weights are
        summed to one channel).
    in_channels : input channels (1: grayscale).

    Raises
    ------
    ParamsError
        For an unknown architecture or encoder, or a missing weights file.
    """
    import segmentation_models_pytorch as smp

    if arch not in ARCHS:
        raise ParamsError(f"training.arch: {arch!r} is not one of {sorted(ARCHS)}")
    try:
        model = getattr(smp, ARCHS[arch])(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=1)
    except KeyError as exc:
        raise ParamsError(f"training.encoder: {encoder!r} is not an smp encoder ({exc})") from None
    if encoder_weights:
        _load_encoder_weights(model, Path(encoder_weights), in_channels)
    return model


def _load_encoder_weights(model, path: Path, in_channels: int) -> None:
    if not path.is_file():
        raise ParamsError(f"training.encoder_weights: {path} not found (weights are never downloaded)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
    w = state.get("conv1.weight")
    if w is not None and w.shape[1] != in_channels:
        state["conv1.weight"] = w.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels
    missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    if unexpected or len(missing) > 0.1 * len(model.encoder.state_dict()):
        raise ParamsError(
            f"training.encoder_weights: {path} does not fit the encoder "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys)"
        )


# ----------------------------------------------------------------------------- losses


def total_variation(prob: torch.Tensor) -> torch.Tensor:
    """Total-variation loss of a probability map (RSN-U-net, Eq. 3).

    Mean squared difference between vertical neighbours plus that between
    horizontal neighbours; ``prob`` is (N, 1, H, W) in [0, 1].
    """
    dv = (prob[..., 1:, :] - prob[..., :-1, :]).pow(2).mean()
    dh = (prob[..., :, 1:] - prob[..., :, :-1]).pow(2).mean()
    return dv + dh


def _soft_erode(x):
    return torch.minimum(-F.max_pool2d(-x, (3, 1), 1, (1, 0)), -F.max_pool2d(-x, (1, 3), 1, (0, 1)))


def _soft_dilate(x):
    return F.max_pool2d(x, 3, 1, 1)


def soft_skeleton(x: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Differentiable skeleton of a (N, 1, H, W) map in [0, 1] (Shit et al., clDice, 2021)."""
    skel = F.relu(x - _soft_dilate(_soft_erode(x)))
    for _ in range(iterations):
        x = _soft_erode(x)
        delta = F.relu(x - _soft_dilate(_soft_erode(x)))
        skel = skel + F.relu(delta - skel * delta)
    return skel


def skeleton_loss(prob: torch.Tensor, target: torch.Tensor, iterations: int = 3, eps: float = 1.0) -> torch.Tensor:
    """1 - clDice: the prediction's skeleton inside the label and the label's skeleton inside the prediction."""
    sp, st = soft_skeleton(prob, iterations), soft_skeleton(target, iterations)
    tprec = ((sp * target).sum() + eps) / (sp.sum() + eps)
    tsens = ((st * prob).sum() + eps) / (st.sum() + eps)
    return 1.0 - 2.0 * tprec * tsens / (tprec + tsens)


class SegmentationLoss(torch.nn.Module):
    """Weighted Dice + BCE (+ total variation, + skeleton) on logits; returns every term.

    Parameters
    ----------
    dice_weight, bce_weight : the paper's 1 and 1.
    tv_weight : RSN-U-net total-variation weight (paper of that method: 0.4; 0 = off).
    skeleton_weight : soft-skeleton (clDice) weight (released code: 0.1; 0 = off).
    """

    def __init__(self, dice_weight=1.0, bce_weight=1.0, tv_weight=0.0, skeleton_weight=0.0):
        super().__init__()
        import segmentation_models_pytorch as smp

        self.w = {"dice": dice_weight, "bce": bce_weight, "tv": tv_weight, "skeleton": skeleton_weight}
        self.dice = smp.losses.DiceLoss(mode="binary", from_logits=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = logits.float()
        terms = {"dice": self.dice(logits, target), "bce": F.binary_cross_entropy_with_logits(logits, target)}
        prob = torch.sigmoid(logits) if (self.w["tv"] or self.w["skeleton"]) else None
        if self.w["tv"]:
            terms["tv"] = total_variation(prob)
        if self.w["skeleton"]:
            terms["skeleton"] = skeleton_loss(prob, target)
        terms["loss"] = sum(self.w[k] * v for k, v in terms.items())
        return terms


# ----------------------------------------------------------------------------- distance metric


def _f1_at_distance(pred: np.ndarray, gt: np.ndarray, spacing_mm, sigma_mm: float) -> tuple[float, float, float]:
    """Distance-thresholded accuracy, completeness and F1 of one frame at one sigma (Eqs. 3-6).

    :func:`ultrabones.evaluation.metrics.distance_metrics` with the strict protocol
    (an empty mask scores 0/0 = 1, so an empty prediction of a non-empty label
    has F1 0); ``spacing_mm = (sx, sy)`` mm per pixel (columns, rows).
    """
    from ultrabones.evaluation.metrics import distance_metrics

    m = distance_metrics(pred, gt, spacing_mm, [float(sigma_mm)], protocol="strict")
    return float(m["accuracy"][0]), float(m["completeness"][0]), float(m["f1"][0])


def _distance_f1(pred, gt, spacing_mm, sigma_mm) -> float:
    """F1 of :func:`_f1_at_distance`."""
    return _f1_at_distance(pred, gt, spacing_mm, sigma_mm)[2]


# ----------------------------------------------------------------------------- lightning


def _lightning():
    import pytorch_lightning as pl

    return pl


def _module_class():
    pl = _lightning()

    class SegmentationModule(pl.LightningModule):
        """The network, its loss and optimiser, and per-epoch validation (Dice, F1 at sigma)."""

        def __init__(self, config: dict):
            super().__init__()
            self.save_hyperparameters({"config": config})
            self.config = config
            self.model = build_model(config["arch"], config["encoder"], config["encoder_weights"])
            self.loss_fn = SegmentationLoss(
                config["dice_weight"], config["bce_weight"], config["tv_weight"], config["skeleton_weight"]
            )

        def forward(self, x):
            return self.model(x)

        def on_before_batch_transfer(self, batch, dataloader_idx):
            if "aug" in batch:  # read on the host: reading it on the GPU would wait for the device
                batch["aug_seed"] = int(batch["aug"][0, 9])
            return batch

        def on_after_batch_transfer(self, batch, dataloader_idx):
            # Augment whole batches on the device (cheap on a GPU), then normalise.
            batch["image"] = batch["image"].float() / 255.0
            batch["label"] = batch["label"].float()
            if "aug" in batch and self.trainer is not None and self.trainer.training:
                batch["image"], batch["label"], batch["line"] = segdata.augment_batch(
                    batch["image"], batch["label"], batch["line"], batch["aug"], batch.get("aug_seed"))
            batch["image"] = (batch["image"] - self.config["norm_mean"]) / self.config["norm_std"]
            return batch

        def on_train_epoch_start(self):
            self._t0, self._n_img, self._t_last = time.perf_counter(), 0, None

        def on_train_batch_start(self, batch, batch_idx):
            # Dropout draws from the global generator, which Lightning neither saves nor restores (and
            # the loaders draw from it at times that differ after a resume): reseed it from
            # (seed, step, rank) so that a resumed run draws exactly what an uninterrupted one does.
            torch.manual_seed((int(self.config["seed"]) * 1_000_003 + int(self.global_step)) * 64
                              + int(self.global_rank))

        def training_step(self, batch, batch_idx):
            terms = self.loss_fn(self(batch["image"]), batch["label"])
            n = batch["image"].shape[0]
            for k, v in terms.items():
                self.log(f"train_{k}", v, on_step=False, on_epoch=True, prog_bar=k == "loss", batch_size=n,
                         sync_dist=True)
            return terms["loss"]

        def on_train_batch_end(self, outputs, batch, batch_idx):
            self._n_img += batch["image"].shape[0]
            self._t_last = time.perf_counter()

        def on_validation_start(self):
            # End of the epoch's training part: wait for queued GPU work, so the clock covers it.
            if getattr(self, "_t_last", None) is not None:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self._t_last = time.perf_counter()

        def on_train_epoch_end(self):
            if self._t_last is not None and self._t_last > self._t0:
                ips = self._n_img / (self._t_last - self._t0)
                self.log("train_images_per_second", ips, sync_dist=True, reduce_fx="sum")

        def validation_step(self, batch, batch_idx):
            logits = self(batch["image"]).float()
            terms = self.loss_fn(logits, batch["label"])
            pred = (torch.sigmoid(logits) >= self.config["threshold"]).cpu().numpy()[:, 0]
            band = batch["label"].cpu().numpy()[:, 0] > 0.5
            line = batch["line"].cpu().numpy()[:, 0]
            spacing = batch["spacing"].cpu().numpy()
            inter = (pred & band).sum(axis=(1, 2))
            denom = pred.sum(axis=(1, 2)) + band.sum(axis=(1, 2))
            dice = np.where(denom > 0, 2 * inter / np.maximum(denom, 1), 1.0)
            f1 = [_distance_f1(p, g, s, self.config["f1_sigma_mm"]) for p, g, s in zip(pred, line, spacing)]
            n = len(pred)
            self.log("val_loss", terms["loss"], batch_size=n, sync_dist=True)
            self.log("val_dice", float(np.mean(dice)), batch_size=n, sync_dist=True, prog_bar=True)
            self.log("val_f1", float(np.mean(f1)), batch_size=n, sync_dist=True, prog_bar=True)

        def configure_optimizers(self):
            c = self.config
            cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[c["optimizer"]]
            opt = cls(self.parameters(), lr=c["lr"], betas=(0.9, 0.999), weight_decay=c["weight_decay"])
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=c["lr_step_epochs"], gamma=c["lr_gamma"])
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    return SegmentationModule


def _datamodule(train_ds, val_ds, batch_size: int, num_workers: int, seed: int, samples_per_epoch: int | None = None):
    pl = _lightning()
    from torch.utils.data import DataLoader

    class FrameDataModule(pl.LightningDataModule):
        """Loaders with :class:`~ultrabones.segmentation.segdata.EpochSampler` (sharded by rank under DDP): training
        draws ``samples_per_epoch`` frames an epoch from its pool (None: each once), validation takes each once."""

        def _loader(self, data, shuffle, samples=None):
            rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
            return DataLoader(
                data,
                batch_size=batch_size,
                sampler=segdata.EpochSampler(len(data), seed, shuffle, rank, world, samples),
                num_workers=num_workers,
                persistent_workers=num_workers > 0,
                pin_memory=torch.cuda.is_available(),
            )

        def train_dataloader(self):
            return self._loader(train_ds, True, samples_per_epoch)

        def val_dataloader(self):
            return self._loader(val_ds, False)

    return FrameDataModule()


# ----------------------------------------------------------------------------- training


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
    precision = P["precision"] if P["precision"] != "auto" else ("bf16-mixed" if accelerator == "gpu" else "32-true")
    # Upsampling backward has no deterministic CUDA kernel: warn there instead of failing.
    deterministic = (True if accelerator == "cpu" else "warn") if P["deterministic"] else False
    # cuDNN autotuning when reproducibility is not asked for (about 10 % faster on an H100).
    benchmark = accelerator == "gpu" and not P["deterministic"]
    return {"accelerator": accelerator, "devices": devices, "precision": precision, "deterministic": deterministic,
            "benchmark": benchmark}


def _device_name(hw: dict) -> str:
    if hw["accelerator"] == "gpu":
        n = torch.cuda.device_count() if hw["devices"] == "auto" else hw["devices"]
        return f"{n} x {torch.cuda.get_device_name(0)} ({hw['precision']})"
    return f"cpu ({torch.get_num_threads()} threads, {hw['precision']})"


def _resume_key(P: Mapping, split: Split, seed: int, data: str = "") -> str:
    from ultrabones.core.cache import params_hash

    return params_hash({"params": {k: v for k, v in P.items() if k not in _RESUME_FREE},
                        "split": split.as_dict(), "seed": seed, "data": data})


def data_fingerprint(root: Path | str, split: Split, P: Mapping, derived: Path | str | None = None) -> str:
    """A hash of the training and validation frames: their images' and labels' bytes.

    A run resumes only onto the data it started with: relabelled frames (say a
    specimen rerun by ``make specimen``) make a finished run stale.
    """
    import hashlib

    h = hashlib.sha256()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # records without labels are reported when the datasets are made
        frames = _split_frames(root, split, P, derived)
    from ultrabones.core.cache import file_digest, files_digest

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
    pl = _lightning()
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
    model = _module_class()(config)
    hw = _resolve_hardware(P)
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
        trainer.fit(model, datamodule=_datamodule(train_ds, val_ds, P["batch_size"], P["num_workers"], seed, samples),
                    ckpt_path=resume_from, weights_only=True)
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
        "source": str(best_path),
    }
    out = save_checkpoint(run_dir / "best.ckpt", state, metadata)
    return FoldResult(fold, split, out, history, metadata, len(train_ds), len(val_ds), metadata["device"],
                      seconds, run_dir, frames.n_train_labelled)


def load_lightning_checkpoint(path: Path | str, run_dir: Path | str | None = None) -> dict:
    """Load one of this project's own Lightning checkpoints with ``weights_only=True``.

    Parameters
    ----------
    path : a ``.ckpt`` written by :func:`train_fold` (``last.ckpt`` or the best).
    run_dir : the training run's folder, named in the message as what to delete.

    Raises
    ------
    DatasetError
        If the file is missing, truncated or otherwise unreadable (for example
        ``PytorchStreamReader failed reading zip archive`` after a killed
        write), or holds more than tensors and plain data. The message names
        the file and how to start fresh.
    """
    path = Path(path)
    fresh = (f"to start fresh, delete {run_dir if run_dir is not None else path}"
             " or rerun with -p training.resume=false")
    if not path.is_file():
        raise DatasetError(f"{path}: checkpoint not found; {fresh}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DatasetError(f"{path}: checkpoint holds objects other than tensors and plain data, refused "
                           f"({str(exc).splitlines()[0][:160]}); {fresh}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise DatasetError(f"{path}: corrupt or truncated checkpoint ({first}); {fresh}") from None
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise DatasetError(f"{path}: not a Lightning checkpoint (no state_dict); {fresh}")
    return obj


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
    split = segdata.split_specimens(available, P["train_specimens"], P["val_specimens"], P["test_specimens"])
    folds = segdata.cross_validation_folds(split, P["n_folds"])
    results = []
    for k, fs in enumerate(folds):
        run_dir = models_dir / ("run" if len(folds) == 1 else f"fold{k}")
        results.append(train_fold(root, run_dir, fs, P, seed, fold=k, progress=progress, derived=derived))
    best = max(results, key=lambda r: -1.0 if r.metadata["val_f1"] is None else r.metadata["val_f1"])
    out = models_dir / "best.ckpt"
    with atomic.atomic_path(out) as tmp:
        shutil.copyfile(best.checkpoint, tmp)
    return TrainResult(split, results, best, out)


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path | str, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Path:
    """Save ``{"format", "state_dict", "metadata"}`` atomically; loadable with ``weights_only=True``.

    ``metadata`` is reduced to JSON types (lists, dicts, str, numbers, None)
    and given the git commit and creation time.
    """
    from ultrabones.core.cache import git_commit

    meta = atomic.to_jsonable(dict(metadata))
    meta.setdefault("git_commit", git_commit())
    meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    blob = {"format": FORMAT, "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
            "metadata": meta}
    with atomic.atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return Path(path)


def _model_from_state(state: Mapping[str, torch.Tensor], metadata: Mapping, where: Path):
    model = build_model(metadata["arch"], metadata["encoder"], None, int(metadata.get("in_channels", 1)))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DatasetError(f"{where}: weights do not fit {metadata['arch']}-{metadata['encoder']}: {exc}") from None
    model.eval()
    model.metadata = dict(metadata)
    return model


def load_checkpoint(path: Path | str, trust_pickle: bool = False):
    """Load a segmentation checkpoint.

    Parameters
    ----------
    path : a checkpoint of this project's format (state dict + metadata), or,
        with ``trust_pickle=True``, a pickled foreign one (the released
        whole-module ``smp.FPN`` or a state dict of one).
    trust_pickle : allow unpickling, which can run arbitrary code. Only for
        files you trust.

    Returns
    -------
    (model, metadata) : the network in eval mode on the CPU (``model.metadata``
        is the same dict), and its metadata (architecture, input size,
        normalisation, split, params, git commit).

    Raises
    ------
    DatasetError
        If the file is missing, not a checkpoint, or pickled without ``trust_pickle``.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        head = path.read_bytes()[:64]
        if not head.startswith((b"PK\x03\x04", b"\x80")):  # neither torch's zip format nor a pickle
            raise DatasetError(
                f"{path}: not a torch checkpoint (it starts with {head[:24]!r}: neither torch's zip format nor a "
                f"pickle; a text file, a Git LFS pointer or a truncated download?); replace it with the checkpoint "
                f"file (notebook 04 writes best.ckpt)") from None
        if not trust_pickle:
            raise DatasetError(
                f"{path}: a pickled checkpoint (loading it can run arbitrary code); refused. If you trust the file,"
                f" convert it once with convert_released_checkpoint(path, out, trust_pickle=True)"
                f" ({str(exc).splitlines()[0][:120]})"
            ) from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as exc:
        raise DatasetError(f"{path}: not a readable torch checkpoint ({exc})") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return _model_from_state(obj["state_dict"], obj["metadata"], path), dict(obj["metadata"])
    if not trust_pickle:
        raise DatasetError(
            f"{path}: not an ultrabones checkpoint (no format {FORMAT!r}); convert it with"
            f" convert_released_checkpoint(path, out, trust_pickle=True)"
        )
    state, meta = _foreign_state(obj, path)
    return _model_from_state(state, meta, path), meta


def _foreign_state(obj, path: Path) -> tuple[dict, dict]:
    """State dict and metadata of a foreign checkpoint (released whole module, or state dicts)."""
    arch = None
    if isinstance(obj, torch.nn.Module):
        arch = {v: k for k, v in ARCHS.items()}.get(type(obj).__name__)
        name = getattr(obj, "name", "") or ""
        encoder = name.split("-", 1)[1] if "-" in name else "resnet34"
        state = obj.state_dict()
    elif isinstance(obj, dict):
        state = obj.get("state_dict", obj.get("model_state_dict", obj))
        if not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise DatasetError(f"{path}: no state dict of tensors found (keys: {list(obj)[:8]})")
        if all(k.startswith("model.") for k in state):
            state = {k[len("model."):]: v for k, v in state.items()}
        encoder = "resnet34"
    else:
        raise DatasetError(f"{path}: unrecognised checkpoint content ({type(obj).__name__})")
    if arch is None:
        arch = "fpn" if any(k.startswith("decoder.p5") for k in state) else "unet"
    conv1 = state.get("encoder.conv1.weight")
    meta = {
        "arch": arch, "encoder": encoder, "in_channels": int(conv1.shape[1]) if conv1 is not None else 1,
        "input_size": list(RELEASED_SIZE), "norm_mean": RELEASED_MEAN, "norm_std": RELEASED_STD,
        "label_band_px": RELEASED_BAND_PX, "threshold": 0.5, "split": {
            "train": ["1", "3", "4", "5", "6", "9", "10", "11", "12", "13", "14"], "val": [], "test": ["2", "7", "8"]},
        "source": str(path), "converted_from": "released pickled checkpoint",
    }
    return {k: v for k, v in state.items()}, meta


def convert_released_checkpoint(path: Path | str, out: Path | str, trust_pickle: bool = False) -> Path:
    """Convert the released pickled ``smp.FPN`` checkpoint to this project's safe format.

    Unpickling can run code: this refuses unless ``trust_pickle=True``. The
    released model's input size (256 x 256), normalisation and split (DESIGN.md)
    go into the metadata.

    Raises
    ------
    DatasetError
        Without ``trust_pickle``, or if the file holds no FPN/U-Net weights.
    """
    path = Path(path)
    if not trust_pickle:
        raise DatasetError(f"{path}: converting a pickled checkpoint needs trust_pickle=True (it can run code)")
    model, meta = load_checkpoint(path, trust_pickle=True)
    return save_checkpoint(out, model.state_dict(), meta)


# ----------------------------------------------------------------------------- inference


def _as_model(model_or_ckpt, trust_pickle: bool = False):
    if isinstance(model_or_ckpt, (str, Path)):
        return load_checkpoint(model_or_ckpt, trust_pickle)
    if isinstance(model_or_ckpt, tuple):
        return model_or_ckpt
    meta = getattr(model_or_ckpt, "metadata", None)
    if meta is None:
        raise ValueError("predict: a model needs its metadata (use load_checkpoint, or pass (model, metadata))")
    return model_or_ckpt, meta


def predict(
    model_or_ckpt,
    images,
    batch_size: int = 16,
    device: str | None = None,
    input_size: tuple[int, int] | None = None,
    threshold: float | None = None,
) -> np.ndarray | list[np.ndarray]:
    """Bone probability of every pixel, at each image's own size.

    Parameters
    ----------
    model_or_ckpt : a checkpoint path, ``(model, metadata)``, or a model from
        :func:`load_checkpoint`.
    images : (N, H, W) uint8 array, or a list of (H, W) uint8 arrays (sizes may differ).
    batch_size : frames per forward pass.
    device : ``"cpu"``, ``"cuda"``...; None: CUDA when present.
    input_size : network input (h, w); None: the checkpoint's (training) size.
    threshold : None returns float32 probabilities; a number returns bool masks ``p >= threshold``.

    Returns
    -------
    (N, H, W) float32 (or bool) array; a list when the sizes differ.
    """
    model, meta = _as_model(model_or_ckpt)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = tuple(input_size or meta["input_size"])
    mean, std = float(meta["norm_mean"]), float(meta["norm_std"])
    in_ch = int(meta.get("in_channels", 1))
    model = model.to(device).eval()
    single = isinstance(images, np.ndarray) and images.ndim == 3
    seq = list(images)
    out = []
    with torch.inference_mode():
        for i in range(0, len(seq), batch_size):
            chunk = seq[i : i + batch_size]
            x = np.stack([segdata.resize_image(im, size) for im in chunk])
            x = torch.from_numpy((x - mean) / std)[:, None].to(device)
            if in_ch != 1:
                x = x.repeat(1, in_ch, 1, 1)
            logits = model(x).float()
            for im, lg in zip(chunk, logits):
                prob = torch.sigmoid(F.interpolate(lg[None], size=im.shape, mode="bilinear", align_corners=False))
                p = prob[0, 0].cpu().numpy()
                out.append(p >= threshold if threshold is not None else p)
    if single or (out and all(o.shape == out[0].shape for o in out)):
        return np.stack(out) if out else np.zeros((0,) + tuple(np.asarray(images).shape[1:]), np.float32)
    return out


def surface_mask(prob: np.ndarray, threshold: float, half_rows: int) -> np.ndarray:
    """The bone surface in a probability map: per scan line, the rows where the probability peaks.

    A bone label is a band ``2 gamma`` thick along the surface (Section 3.1). A network trained on such
    bands answers with a blob as thick as the echo it sees (a real echo is a bright cap about 1 mm
    thick), whose pixels off the surface count against its accuracy. Along every column (scan line),
    the rows where the probability is at least ``threshold`` and a local maximum along that column (the
    upper of two equal rows) mark the surface; each is widened by ``half_rows`` rows above and below, the
    labels' own thickness. Where two bones are in view, a column keeps both.

    Parameters
    ----------
    prob : (H, W) probabilities.
    threshold : least probability of a surface pixel.
    half_rows : rows added above and below each peak (:func:`band_half_rows` of the band's thickness).

    Returns
    -------
    (H, W) bool.
    """
    p = np.asarray(prob, float)
    if p.ndim != 2:
        raise ValueError(f"prob must be (H, W), got shape {p.shape}")
    if int(half_rows) < 0:
        raise ValueError(f"half_rows must be >= 0, got {half_rows}")
    above = np.vstack([np.full((1, p.shape[1]), -np.inf), p[:-1]])
    below = np.vstack([p[1:], np.full((1, p.shape[1]), -np.inf)])
    peak = (p >= threshold) & (p > above) & (p >= below)
    if half_rows:
        peak = ndimage.binary_dilation(peak, structure=np.ones((2 * int(half_rows) + 1, 1), bool))
    return peak


def band_half_rows(band_mm: float, spacing) -> int:
    """Rows each side of a surface pixel for a band ``band_mm`` thick at ``spacing`` (sx, sy) mm.

    The rows whose centre lies within ``band_mm / 2`` of the surface pixel's centre, as a label's pixels
    are those whose centre lies within ``gamma`` of ``C``: ``floor(band_mm / (2 sy))``.
    """
    return int(np.floor(0.5 * float(band_mm) / float(spacing[1]) + 1e-9))


def predict_record(
    record,
    ckpt,
    out_kind: str = ds.LABELS_PRED,
    timestamps: Sequence[int] | None = None,
    batch_size: int = 16,
    device: str | None = None,
    skip_existing: bool = False,
    progress: bool = True,
    surface_band_mm: float | None = None,
    spacing: Sequence[float] | None = None,
) -> list[Path]:
    """Segment a record's frames and write ``<out_kind>/<t>_label_pred.png`` (0/255).

    Frames stream in batches: memory does not grow with the record's length. With ``surface_band_mm``,
    each frame's mask is the surface of its probability map (:func:`surface_mask`), a band that thick.

    Parameters
    ----------
    record : a :class:`~ultrabones.core.dataset.Record` or a record folder (holding ``UltrasoundImages/``).
    ckpt : a checkpoint path, ``(model, metadata)`` or a loaded model.
    out_kind : label kind to write (``Labels_pred``).
    timestamps : only these frames (ms); None: every image.
    skip_existing : leave frames already predicted (resume).
    surface_band_mm : None: the thresholded probability map; a thickness (mm): :func:`surface_mask` with
        that band (the labels' ``2 gamma``), which needs ``spacing``.
    spacing : (sx, sy) mm per pixel of the record's images.

    Returns
    -------
    The written files.
    """
    if surface_band_mm is not None and spacing is None:
        raise ValueError("predict_record: surface_band_mm needs the images' spacing")
    half = None if surface_band_mm is None else band_half_rows(surface_band_mm, spacing)
    if not isinstance(record, ds.Record):
        p = Path(record)
        record = ds.Record(specimen=p.parent.name, name=p.name, path=p)
    model, meta = _as_model(ckpt)
    ts = record.timestamps() if timestamps is None else np.asarray(timestamps, dtype=np.int64)
    if skip_existing:
        ts = np.array([t for t in ts if not record.label_path(t, out_kind).is_file()], dtype=np.int64)
    thr = float(meta.get("threshold", 0.5))
    from tqdm import tqdm

    written = []
    for i in tqdm(range(0, len(ts), batch_size), desc=f"predict {record.key}", disable=not progress):
        chunk = ts[i : i + batch_size]
        images = [record.read_image(t) for t in chunk]
        if half is None:
            masks = predict((model, meta), images, batch_size=batch_size, device=device, threshold=thr)
        else:
            probs = predict((model, meta), images, batch_size=batch_size, device=device)
            masks = [surface_mask(p, thr, half) for p in probs]
        for t, m in zip(chunk, masks):
            written.append(ds.write_label(record.label_path(t, out_kind), m))
    return written


def inference_speed(model_or_ckpt, size=(256, 256), n: int = 32, batch_size: int = 8, threads: int | None = 2,
                    device: str = "cpu") -> float:
    """Frames per second of :func:`predict` on ``n`` random ``size`` frames (after one warm-up batch).

    ``threads`` sets torch's CPU threads for the measurement (restored after).
    """
    model, meta = _as_model(model_or_ckpt)
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 256, size=(n,) + tuple(size), dtype=np.uint8)
        predict((model, meta), frames[:batch_size], batch_size, device, input_size=size)
        t0 = time.perf_counter()
        predict((model, meta), frames, batch_size, device, input_size=size)
        return n / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)


# ----------------------------------------------------------------------------- evaluation on validation frames


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
    scores = [np.mean([_distance_f1(s > t, l, sp, sigma_mm) for s, l, sp in zip(smooth, lines, spacings)])
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

    model, meta = _as_model(ckpt)
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
            acc, com, f1 = _f1_at_distance(m, lab, spacing_mm, sigma_mm)
            row = {"specimen": f.specimen, "record": f.record.key, "timestamp": f.timestamp,
                   "label_pixels": int(lab.sum()), "model_acc": acc, "model_com": com, "model_f1": f1,
                   "background_f1": _f1_at_distance(np.zeros_like(lab), lab, spacing_mm, sigma_mm)[2]}
            if baseline_threshold is not None:
                row["threshold_f1"] = _f1_at_distance(threshold_predict(im, baseline_threshold, size), lab,
                                                      spacing_mm, sigma_mm)[2]
            rows.append(row)
    return pd.DataFrame(rows), (len(frames) / t_pred if t_pred > 0 else float("nan"))


# ----------------------------------------------------------------------------- figures


def plot_history(history: pd.DataFrame):
    """Training curves: losses (left) and validation Dice and F1 (right) per epoch."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for col, lab in (("train_loss", "train"), ("val_loss", "validation")):
        if col in history:
            a.plot(history["epoch"] + 1, history[col], marker="o", ms=3, label=lab)
    a.set(xlabel="epoch", ylabel="loss (all weighted terms)", yscale="log", title="loss")
    a.legend()
    for col, lab in (("val_dice", "Dice (band)"), ("val_f1", "F1 at sigma")):
        if col in history:
            b.plot(history["epoch"] + 1, history[col], marker="o", ms=3, label=lab)
    b.set(xlabel="epoch", ylabel="score", ylim=(0, 1), title="validation")
    b.legend()
    fig.tight_layout()
    return fig


def plot_predictions(ckpt, frames: Sequence[Frame], n: int = 6, device: str | None = None):
    """A grid of validation frames: image, CT-derived label (green) and prediction (magenta)."""
    import matplotlib.pyplot as plt

    idx = segdata.evenly_spaced(len(frames), n)
    images = [frames[i].read_image() for i in idx]
    labels = [ds.read_label(frames[i].label, im.shape) for i, im in zip(idx, images)]
    model, meta = _as_model(ckpt)
    masks = predict((model, meta), images, device=device, threshold=float(meta.get("threshold", 0.5)))
    fig, axes = plt.subplots(2, len(idx), figsize=(2.6 * len(idx), 5.2), squeeze=False)
    for j, (i, im, lab, m) in enumerate(zip(idx, images, labels, masks)):
        axes[0, j].imshow(im, cmap="gray")
        axes[0, j].set_title(f"{frames[i].specimen} t={frames[i].timestamp}", fontsize=7)
        rgb = overlay(im, [(ndimage.binary_dilation(lab, iterations=2), (0.1, 0.9, 0.1)), (m, (0.9, 0.1, 0.9), 0.5)],
                      dtype=np.float32)
        axes[1, j].imshow(rgb)
        for ax in axes[:, j]:
            ax.set_axis_off()
    axes[1, 0].set_title("label (green), prediction (magenta)", fontsize=7, loc="left")
    fig.tight_layout()
    return fig
