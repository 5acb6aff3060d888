"""The labelling on real frames (tests/fixtures/real_sweep: six frames of a real fibula sweep, no truth).

What a user's data looks like: images, poses and a CT model only. The stage must label them, report every
frame, and turn bad input (a pose whose plane misses the bone, a pose out of the CT's reach) into a per-frame
status, never a crash.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from ultrabones.core import dataset
from ultrabones.core.paths import Paths
from ultrabones.labels import batch

FIXTURE = Path(__file__).parent / "fixtures" / "real_sweep"

PARAMS = batch.LabelingParams.from_section({
    "objective_region": "first_hit", "density_per_mm2": 6.0, "label_density_per_mm2": 12.0, "gamma_mm": 0.3,
    "bound_deg": 1.0, "bound_mm": 1.0, "popsize": 6, "maxiter": 10, "tol": 0.02,
    "lambdas": [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0], "lambda_frames": 2, "lambda_value": 0.1,
    "max_correction_mm": 1.0, "min_label_fraction": 0.5, "halves_check": "first_hit", "incidence_max_deg": 85.0, "frame_stride": 1,
    "max_frames_per_record": None, "chunk_size": 3, "registration_frames": 2, "registration_bound_deg": 1.0,
    "registration_bound_mm": 1.0, "registration_maxiter": 3,
    "executor": "synchronous", "selection_rule": "split", "selection_eval_region": "first_hit",
    "selection_offset_frames": 4, "fallback_region": "first_hit",
    "optimizer": "sweep", "warm_step_deg": 0.2, "warm_step_mm": 0.2, "warm_min_step_deg": 0.02,
    "warm_min_step_mm": 0.02, "warm_max_calls": 60, "warm_max_gap": 1, "warm_cold_every": 0, "device": None, "min_echo_level": 0.1,
    "objective": "eq2", "released_ct_samples": 1000000, "selection_inseparable": "keep",
})


def real_copy(tmp_path: Path) -> Paths:
    data = tmp_path / "real"
    shutil.copytree(FIXTURE, data)
    (data / "README.md").unlink()
    return Paths(tmp_path / "build", tmp_path / "twin", tmp_path / "figures", data_root=data)


def test_labels_real_frames_without_any_truth(tmp_path):
    paths = real_copy(tmp_path)
    assert not paths.is_twin
    out = batch.run(paths, PARAMS, seed=0)
    rep = out.report
    assert len(rep) == 6 and set(rep["status"]) <= {"kept", "discarded"}
    assert (rep["status"] == "kept").sum() >= 1
    m = batch.summarize(rep)
    assert 0 <= m["discard_rate"] <= 1 and m["seconds_per_frame"] > 0
    assert "label_error_mm" not in m and "contour_error_mm" not in m


def test_bad_real_poses_are_reported_per_frame_not_a_crash(tmp_path):
    paths = real_copy(tmp_path)
    rec = dataset.read_specimen(paths.dataset / "specimen01").records[0]
    tab = pd.read_csv(rec.tracking_csv)
    ts = tab["timestamp"].to_numpy()
    tab.loc[1, "z"] += 400.0        # the image plane far from the bone: no bone in view
    tab.loc[3, "x"] = 1e9           # out of any CT's reach
    tab.loc[4, "euler_y"] = np.nan  # no pose at all
    tab.to_csv(rec.tracking_csv, index=False)
    rep = batch.run(paths, PARAMS, seed=0).report.set_index("timestamp")
    assert rep.loc[ts[1], "status"] == "no_bone"
    assert rep.loc[ts[3], "status"] == "no_bone"
    assert rep.loc[ts[4], "status"] == "bad_pose"
    assert set(rep.loc[[ts[0], ts[2], ts[5]], "status"]) <= {"kept", "discarded"}
