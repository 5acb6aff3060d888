"""Fine-tune mode (ultrabones.segmentation.finetune): the time split, fine-tuning, before/after scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ultrabones.core.errors import DatasetError, ParamsError
from ultrabones.segmentation import finetune, segdata
from ultrabones.segmentation.checkpoint import load_checkpoint, save_checkpoint
from ultrabones.segmentation.net import build_model
from ultrabones.segmentation.training import TrainingParams

from test_segmentation import make_dataset, tiny_params

torch.set_num_threads(1)


def _sweep(tmp_path, frames=20):
    """One specimen, one record of ``frames`` labelled frames (timestamps 1000 + 48 i) and its tracking.csv."""
    root = make_dataset(tmp_path / "data", n_specimens=1, frames=frames, unlabeled=0)
    rec = root / "specimen01" / "record01"
    stamps = 1000 + 48 * np.arange(frames)
    pd.DataFrame({"timestamp": stamps, "x": 0.0, "y": 0.0, "z": 0.0, "euler_x": 0.0, "euler_y": 0.0,
                  "euler_z": 0.0}).to_csv(rec / "tracking.csv", index=False)
    return root


def test_time_split_known_rows(tmp_path):
    root = _sweep(tmp_path, frames=20)
    frames = segdata.labelled_frames(root, ["specimen01"])
    split = finetune.time_split(frames, 0.25, 2)  # rows 15-19 test, 0-12 train, 13-14 left out
    assert [f.timestamp for f in split.test] == list(1000 + 48 * np.arange(15, 20))
    assert [f.timestamp for f in split.train] == list(1000 + 48 * np.arange(0, 13))
    assert list(split.rows.values()) == [{"n_rows": 20, "last_train_row": 12, "first_test_row": 15}]
    assert split.as_dict()["n_train"] == 13 and split.as_dict()["n_test"] == 5


def test_time_split_bad_settings_and_empty_sides_are_named(tmp_path):
    frames = segdata.labelled_frames(_sweep(tmp_path, frames=6), ["specimen01"])
    with pytest.raises(ParamsError, match="finetune_test_fraction"):
        finetune.time_split(frames, 1.0, 0)
    with pytest.raises(ParamsError, match="finetune_gap_frames"):
        finetune.time_split(frames, 0.25, -1)
    with pytest.raises(DatasetError, match="0 training"):
        finetune.time_split(frames, 0.5, 10)


def test_finetune_lowers_the_loss_and_scores_before_and_after(tmp_path):
    root = _sweep(tmp_path, frames=16)
    frames = segdata.labelled_frames(root, ["specimen01"])
    split = finetune.time_split(frames, 0.25, 1)
    torch.manual_seed(0)
    net = build_model("fpn", "resnet18")
    meta = {"arch": "fpn", "encoder": "resnet18", "in_channels": 1, "input_size": [32, 32], "norm_mean": 0.2,
            "norm_std": 0.2, "threshold": 0.5}
    init = save_checkpoint(tmp_path / "init.ckpt", net.state_dict(), meta)
    P = TrainingParams.from_section(tiny_params(finetune_epochs=8, finetune_lr=3e-3, augment=False, batch_size=4))
    out, new = finetune.finetune(init, split.train, tmp_path / "best.ckpt", P, (0.1, 0.1), seed=0,
                                 extra_metadata={"time_split": split.as_dict()})
    losses = [h["train_loss"] for h in new["history"]]
    assert len(losses) == 8 and losses[-1] < losses[0]
    _, m2 = load_checkpoint(out)
    assert m2["mode"] == "finetune" and m2["time_split"]["n_test"] == len(split.test)
    scores = finetune.score_before_after(init, out, split.test, (0.1, 0.1), 0.5)
    assert len(scores) == len(split.test) and {"before_f1", "after_f1"} <= set(scores)
    s = finetune.summary(scores, split, 0.5)
    assert s["n_test"] == len(split.test) and "CT-derived" in s["reference"]
    assert s["f1_change"] == pytest.approx(float((scores["after_f1"] - scores["before_f1"]).mean()))
    assert s["after"]["f1"] > s["before"]["f1"]  # a few epochs on these frames: the surface is learnt
