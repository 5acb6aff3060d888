"""Figures of training: the per-epoch curves and a grid of validation frames with label and prediction."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from ultrabones.core import dataset as ds
from ultrabones.core.dataset import Frame
from ultrabones.core.overlay import overlay
from ultrabones.segmentation import segdata
from ultrabones.segmentation.inference import as_model, predict


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
    model, meta = as_model(ckpt)
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
