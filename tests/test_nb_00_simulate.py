"""Notebook 00 on the smoke profile: the twin it writes and the metrics it reports."""

import pytest

pytestmark = pytest.mark.notebook


def test_00_simulate_metrics(smoke_metrics, smoke):
    m = smoke_metrics("00_simulate")
    assert m["n_specimens"] == 3
    assert m["n_records"] == 27
    assert m["n_frames"] > 100
    assert m["n_phantom_frames"] > 0
    assert 0.05 < m["visible_bone_fraction"] < 0.95
    assert m["frames_with_bone_fraction"] > 0.8
    assert m["frames_per_second"] > 0
    # the paper's order: 1.13 +- 0.606 mm; neither near 0 nor several millimetres
    mis = m["initial_misalignment_mm"]
    assert 0.6 < mis["mean"] < 1.8 and mis["std"] > 0
    assert -300 <= m["temporal_offset_ms"] < 0
    # most frames need a per-frame correction below 1 mm of fiducial displacement (paper discards 18.7 %)
    assert 0.0 < m["required_correction_mm"]["fraction_over_1mm"] < 0.4
    twin = smoke.twin
    assert (twin / "raw" / "system.json").is_file() and (twin / "truth" / "system.json").is_file()
    assert (twin / "raw" / "phantom" / "phantom.json").is_file()
    assert (twin / "raw" / "specimen03" / "ct.npz").is_file()
