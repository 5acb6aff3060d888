"""Real frames end to end: 02 labels tests/fixtures/real_sweep (six real frames, no truth), 04 in evaluate mode
takes a tiny checkpoint trained here (as a twin-trained model would be), 05 scores it on every labelled frame.

Runs three notebooks through the CLI (a few minutes on 2 cores): marked ``notebook``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ultrabones.core.errors import ParamsError
from ultrabones.segmentation import transfer
from ultrabones.segmentation.checkpoint import load_checkpoint, save_checkpoint
from ultrabones.segmentation.net import build_model

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "real_sweep"

# 02 on six 950 x 811 frames in about a minute: smoke's optimiser, every frame, a fixed lambda is not used
# (the truth-free rule chooses), few registration frames.
LABELING = ["labeling.frame_stride=1", "labeling.max_frames_per_record=null", "labeling.lambda_frames=2",
            "labeling.maxiter=10", "labeling.registration_frames=2", "labeling.registration_maxiter=3",
            "labeling.executor=synchronous", "labeling.min_label_fraction=0.0", "labeling.chunk_size=3"]


def tiny_trained_checkpoint(path: Path) -> Path:
    """A resnet18 FPN at 32 x 32 px, trained a few steps on synthetic bright-cap frames (a twin stand-in)."""
    torch.manual_seed(0)
    net = build_model("fpn", "resnet18")
    rng = np.random.default_rng(0)
    x = rng.random((8, 1, 32, 32), dtype=np.float32) * 0.3
    y = np.zeros_like(x)
    rows = rng.integers(10, 24, 8)
    for i, r in enumerate(rows):
        x[i, 0, r, 4:28] = 1.0
        y[i, 0, r - 1 : r + 2, 4:28] = 1.0
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    net.train()
    for _ in range(3):
        opt.zero_grad()
        loss = loss_fn(net(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
    meta = {"arch": "fpn", "encoder": "resnet18", "in_channels": 1, "input_size": [32, 32], "norm_mean": 0.2,
            "norm_std": 0.2, "threshold": 0.5, "label_band_px": 3, "spacing_mm": [0.2, 0.2],
            "split": {"train": ["specimen01"], "val": ["specimen02"], "test": ["specimen03"]}, "epoch": 0}
    return save_checkpoint(path, net.state_dict(), meta)


def test_resolve_mode_and_a_clear_error_without_a_checkpoint(tmp_path):
    assert transfer.resolve_mode("auto", 1) == "evaluate"
    assert transfer.resolve_mode("auto", 7) == "train"
    assert transfer.resolve_mode("train", 1) == "train"
    with pytest.raises(ParamsError, match="init_checkpoint.*null"):
        transfer.export_for_data(None, tmp_path / "best.ckpt", ["specimen01"], tmp_path)
    with pytest.raises(ParamsError, match="no such file.*run 00/01/02/04"):
        transfer.export_for_data(tmp_path / "missing.ckpt", tmp_path / "best.ckpt", ["specimen01"], tmp_path)


def test_export_gives_the_data_its_own_split(tmp_path):
    init = tiny_trained_checkpoint(tmp_path / "twin.ckpt")
    out, meta = transfer.export_for_data(init, tmp_path / "models" / "best.ckpt", ["specimen01"], tmp_path)
    _, reread = load_checkpoint(out)
    assert reread["mode"] == "evaluate" and reread["init_checkpoint"] == str(init)
    assert reread["split"] == {"train": [], "val": [], "test": ["specimen01"]}
    assert reread["trained_on"]["split"]["test"] == ["specimen03"]
    at = {"released": {"model": {"all": {"f1": 0.5, "accuracy": 0.4, "completeness": 0.6, "n_frames": 3}}}}
    s2r = transfer.sim_to_real(at, reread, 3, str(out))
    assert s2r["f1"] == 0.5 and s2r["n_frames"] == 3 and s2r["checkpoint"] == str(out)
    assert s2r["masks"] == "thresholded" and s2r["thresholded"]["f1"] == 0.5 and s2r["surface"] is None
    other = {"released": {"model": {"all": {"f1": 0.7, "accuracy": 0.8, "completeness": 0.6, "n_frames": 3}}}}
    both = transfer.sim_to_real(at, reread, 3, str(out), surface_band_mm=0.6, other_at=other)
    assert both["masks"] == "surface" and both["f1"] == both["surface"]["f1"] == 0.5
    assert both["thresholded"] == {"f1": 0.7, "accuracy": 0.8, "completeness": 0.6, "n_frames": 3}
    assert "not accuracy" in both["reference"]
    assert transfer.sim_to_real(at, {"split": {}}, 3, str(out)) is None
    assert transfer.data_key("/work/shared/real_sweep/") == "real_sweep"


def test_mask_source_segments_in_memory_as_the_stage_would(tmp_path):
    from ultrabones.segmentation import inference

    ckpt = load_checkpoint(tiny_trained_checkpoint(tmp_path / "twin.ckpt"))
    img = np.random.default_rng(0).integers(0, 255, (40, 48), dtype=np.uint8)

    class Frame:
        key = "specimen01/record/0"

        def read_image(self):
            return img

    prob = inference.predict(ckpt, img[None])[0]
    thresholded = transfer.mask_source(ckpt, (0.2, 0.2), None)
    assert thresholded.kind == "thresholded"
    np.testing.assert_array_equal(thresholded(Frame(), img.shape), prob >= 0.5)
    surface = transfer.mask_source(ckpt, (0.2, 0.2), 0.6)
    assert surface.kind == "surface"
    np.testing.assert_array_equal(surface(Frame(), img.shape),
                                  inference.surface_mask(prob, 0.5, inference.band_half_rows(0.6, (0.2, 0.2))))
    assert transfer.other_band(None) == transfer.SURFACE_BAND_MM and transfer.other_band(0.6) is None
    with pytest.raises(Exception, match="image size"):
        thresholded(Frame(), (10, 10))


@pytest.mark.notebook
def test_02_04_05_on_real_frames_with_a_model_trained_elsewhere(tmp_path):
    data = tmp_path / "real"
    shutil.copytree(FIXTURE, data)
    init = tiny_trained_checkpoint(tmp_path / "twin_best.ckpt")
    env = dict(os.environ, ULTRABONES_BUILD_ROOT=str(tmp_path / "build"), ULTRABONES_TWIN_ROOT=str(tmp_path / "twin"))
    env.setdefault("OMP_NUM_THREADS", "2")
    common = ["-p", f"data_root={data}"]

    def run(stem, *extra):
        proc = subprocess.run([sys.executable, "-m", "ultrabones", "run", stem, "--profile", "smoke", "--no-progress",
                               *common, *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{stem} failed:\n{proc.stderr[-4000:]}"
        return json.loads((tmp_path / "build" / "smoke" / "metrics" / f"{stem}.json").read_text())

    m02 = run("02_labeling", *[a for kv in LABELING for a in ("-p", kv)])
    assert m02["n_frames"] == 6 and 0 <= m02["discard_rate"] <= 1 and m02["seconds_per_frame"] > 0
    sel = m02["lambda_selection"]
    assert sel["chosen"] in [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]
    assert "oracle_gap_mm" not in sel  # no truth on real data
    assert {"region", "lambda", "score"} <= set(sel["table"])  # the rule's score per lambda and region

    m04 = run("04_training", "-p", "training.mode=evaluate", "-p", f"training.init_checkpoint={init}")
    assert m04["mode"] == "evaluate" and m04["n_frames"] >= 1 and 0 <= m04["eval_f1_at_0p5mm"] <= 1
    assert m04["split"]["test"] == ["specimen01"]

    m05 = run("05_evaluation")
    s2r = m05["sim_to_real"]
    assert s2r["n_frames"] == m05["n_test_frames"] == m04["n_frames"]
    assert s2r["init_checkpoint"] == str(init)
    for k in ("f1", "accuracy", "completeness"):
        assert s2r[k] is None or 0 <= s2r[k] <= 1
    # both mask kinds on the same frames, each named: the stage's surface masks and the thresholded map
    assert s2r["masks"] == "surface" and s2r["f1"] == s2r["surface"]["f1"]
    assert s2r["thresholded"]["n_frames"] == s2r["n_frames"]
    assert set(m05["real"]["at_0p5mm"]["released"]) == {"all", "high", "low"}
    assert m05["detector"] is None  # never fitted on the test frames
    assert (tmp_path / "build" / "smoke" / "figures" / "fig_sim_to_real_predictions.png").exists()
