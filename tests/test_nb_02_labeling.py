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
    # the twin: every method's label measured against the truth (mm)
    err = m["label_error_mm"]
    for method in ("initial", "registration", "optimized"):
        for stat in ("mean", "median", "p95"):
            assert math.isfinite(err[method][stat]) and err[method][stat] >= 0
    assert err["optimized"]["mean"] < err["initial"]["mean"]
    assert 0.0 <= m["visible_label_precision"] <= 1.0 and 0.0 <= m["visible_label_recall"] <= 1.0
    assert m["visible_label_precision"] > 0.5
    assert m["lambda_selection"]["by"] == "true label error"
    assert m["registration"]["n_sweeps"] > 0
