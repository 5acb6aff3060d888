"""Notebook 04_training on the smoke profile: what it measured, read from its metrics JSON."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ultrabones.core.params import resolved_profile

SMOKE = resolved_profile("smoke")["training"]


@pytest.fixture(scope="module")
def m(smoke_metrics):
    return smoke_metrics("04_training")


@pytest.mark.notebook
def test_trained_every_epoch_on_the_split_by_specimen(m):
    assert m["epochs"] == SMOKE["epochs"]
    assert 0 <= m["best_epoch"] < m["epochs"]
    split = m["split"]
    assert len(split["train"]) == len(split["val"]) == len(split["test"]) == 1  # 3 smoke specimens
    assert not set(split["train"]) & set(split["val"]) and not set(split["train"] + split["val"]) & set(split["test"])
    # smoke's memory budget holds every labelled frame of the training specimen; an epoch draws samples_per_epoch
    # of them (with 7 frames and 8 draws, one frame twice; the subsampling itself is unit-tested in test_segmentation)
    assert 0 < m["train_images"] == m["train_images_labelled"]
    assert m["train_images_per_epoch"] == SMOKE["samples_per_epoch"]
    assert 0 < m["val_images"] <= SMOKE["max_val_frames_per_specimen"]
    assert m["input_size"] == SMOKE["input_size"] and m["encoder"] == SMOKE["encoder"]


@pytest.mark.notebook
def test_validation_scores_and_baselines(m):
    for k in ("val_f1_at_0p5mm", "val_dice", "baseline_background_f1_at_0p5mm", "baseline_threshold_f1_at_0p5mm"):
        assert 0.0 <= m[k] <= 1.0, (k, m[k])
    assert m["f1_sigma_mm"] == 0.5
    # strict protocol: the all-background baseline scores 1 on empty labels and 0 elsewhere
    assert math.isclose(m["baseline_background_f1_at_0p5mm"], m["val_frames_empty_label"] / m["val_images"])
    assert 0.0 < m["baseline_threshold"] < 1.0


@pytest.mark.notebook
def test_speed_and_device_are_reported(m):
    assert m["images_per_second_train"] > 0 and m["frames_per_second_inference"] > 0
    assert m["frames_per_second_inference_end_to_end"] > 0 and m["train_seconds"] > 0
    assert m["device"].startswith(("cpu", "1 x", "2 x", "4 x", "8 x"))


@pytest.mark.notebook
def test_best_checkpoint_loads_safely_and_names_the_test_specimens(m):
    ckpt = Path(m["checkpoint"])
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert raw["metadata"]["split"] == m["split"]
    assert raw["metadata"]["input_size"] == m["input_size"] and raw["metadata"]["arch"] == SMOKE["arch"]
