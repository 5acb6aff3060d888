"""The network under PyTorch Lightning: the LightningModule (loss, optimiser, on-device augmentation, per-epoch
validation: Dice on the band, F1 at sigma) and the data module whose loaders draw an epoch's frames
(:class:`~ultrabones.segmentation.segdata.EpochSampler`, sharded by rank under DDP).

Adam (0.9, 0.999) from lr 1e-5 decayed by 0.9 every 10 epochs is the paper's (``training`` parameters).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ultrabones.segmentation import segdata
from ultrabones.segmentation.losses import SegmentationLoss
from ultrabones.segmentation.net import build_model
from ultrabones.segmentation.validation import distance_f1


def _lightning():
    import pytorch_lightning as pl

    return pl


def module_class():
    """The LightningModule class, made on first use (importing this module does not import Lightning)."""
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
            self._layout = torch.channels_last if config.get("channels_last") else torch.contiguous_format
            if config.get("channels_last"):
                self.model = self.model.to(memory_format=torch.channels_last)

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
            batch["image"] = ((batch["image"] - self.config["norm_mean"]) / self.config["norm_std"]).contiguous(
                memory_format=self._layout)
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
            f1 = [distance_f1(p, g, s, self.config["f1_sigma_mm"]) for p, g, s in zip(pred, line, spacing)]
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


def datamodule(train_ds, val_ds, batch_size: int, num_workers: int, seed: int, samples_per_epoch: int | None = None):
    """The data module of a training run: loaders over ``train_ds`` and ``val_ds``."""
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
