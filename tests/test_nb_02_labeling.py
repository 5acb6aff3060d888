"""Notebook 02_labeling on the smoke profile: what it measured, not just that it ran."""

import math

import pytest


@pytest.mark.notebook
def test_labeling_metrics(smoke_metrics):
    m = smoke_metrics("02_labeling")
    counts = m["status_counts"]
    assert m["n_frames"] == sum(counts.values()) > 0
    assert counts["kept"] > 0
    assert 0.0 <= m["discard_rate"] <= 1.0
    assert 0.0 < m["kept_mean_fiducial_correction_mm"] <= 1.0  # validation threshold (paper: 1 mm)
    assert m["lambda"] in (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
    assert m["seconds_per_frame"] > 0
    # the twin: every method's label measured against the truth (mm), by the twin, on what 02 wrote
    for key in ("contour_error_mm", "label_error_mm"):
        err = m[key]
        for method in ("initial", "registration", "optimized"):
            for stat in ("mean", "median", "p95"):
                assert math.isfinite(err[method][stat]) and err[method][stat] >= 0
    assert 0.0 <= m["optimized_better_share"] <= 1.0
    assert 0.0 <= m["visible_label_precision"] <= 1.0 and 0.0 <= m["visible_label_recall"] <= 1.0
    assert m["visible_label_precision"] > 0.5
    sel = m["lambda_selection"]
    assert sel["by"].startswith("truth-free") and sel["chosen"] == m["lambda"]
    assert sel["oracle"] in (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0) and sel["oracle_gap_mm"] >= 0
    assert m["registration"]["n_sweeps"] > 0


@pytest.mark.notebook
def test_labeling_timings(smoke, smoke_metrics):
    """02's entry of timings.json: the runner's wall, CPU and memory, the notebook's phases and frames."""
    from ultrabones.core import timings

    m = smoke_metrics("02_labeling")
    e = timings.read(smoke.build)["02_labeling"]
    assert e["wall_s"] > 0 and e["cpu_s"] > 0 and e["peak_rss_mb"] > 50  # a kernel with numpy holds more
    assert e["frames"] == m["n_frames"] and e["cpu_s_per_frame"] == pytest.approx(e["cpu_s"] / e["frames"])
    ph = e["phases"]
    assert {"inputs", "selection", "registration", "frames", "truth measurement", "writing"} <= set(ph)
    assert sum(p["wall_s"] for p in ph.values()) <= e["wall_s"]  # the phases run inside the stage
    assert ph["frames"]["frames"] == m["n_frames"]  # a first run labels every frame
    assert "00_simulate" in timings.read(smoke.build) and "01_calibration" in timings.read(smoke.build)
