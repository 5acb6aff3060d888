"""Notebook 06_reconstruction on the smoke twin: what the reconstruction measured."""

from __future__ import annotations

import math

import pytest

CELLS = ("labels_original", "labels_optimized", "predicted_original", "predicted_optimized")
KEYS = ("mean_mm", "median_mm", "p95_mm", "chamfer_mm", "coverage")


@pytest.mark.notebook
def test_grid_has_every_cell_and_metric(smoke_metrics):
    m = smoke_metrics("06_reconstruction")
    assert set(CELLS) <= set(m["grid"])
    for cell in CELLS:
        vals = m["grid"][cell]
        for k in KEYS + ("n_points", "n_specimens"):
            assert k in vals, (cell, k)
        if vals["n_specimens"]:
            assert all(math.isfinite(vals[k]) for k in KEYS), cell
            assert 0.0 <= vals["median_mm"] <= vals["p95_mm"] + 0.01
            assert 0.0 < vals["coverage"] <= 1.0
            assert vals["chamfer_mm"] > 0
    # The CT-derived labels exist for every reconstructed specimen.
    assert m["grid"]["labels_optimized"]["n_specimens"] == m["n_specimens"] >= 1


@pytest.mark.notebook
def test_optimised_poses_bring_the_reconstruction_closer_to_ct(smoke_metrics):
    m = smoke_metrics("06_reconstruction")
    g = m["grid"]
    assert g["labels_optimized"]["mean_mm"] < g["labels_original"]["mean_mm"]
    assert m["optimized_lower_mean"]["labels"] is True
    # Labels made from the optimised poses lie on the CT surface up to their rasterisation.
    assert g["labels_optimized"]["mean_mm"] < 0.5
    assert g["labels_optimized"]["coverage"] > 0.5


@pytest.mark.notebook
def test_points_and_query_rate_are_reported(smoke_metrics):
    m = smoke_metrics("06_reconstruction")
    assert m["n_points"] > 1000 and m["n_points_reconstruction"] > 0
    assert m["n_distance_queries"] >= m["n_points_reconstruction"]
    assert m["points_per_second"] > 1e4
    assert m["pending"] == [] and isinstance(m["skipped"], list)
    assert all(s["reason"] for s in m["skipped"])
