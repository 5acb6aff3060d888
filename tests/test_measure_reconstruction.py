"""``twin.measure.reconstruction_vs_truth``: notebook 06's grid against a known true surface.

The synthetic specimen of ``test_reconstruction`` (a cylinder of radius 10 mm
swept from above; ``*_optimized`` are the true poses, the initial ones are off
by up to 1 degree and 1 mm) gets a ``truth/`` whose bone is a concentric cylinder
of radius 10.5 mm: every point of a perfect reconstruction of the CT model is
then 0.5 mm from the true surface.
"""

from __future__ import annotations

import dataclasses

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import trimesh

from test_reconstruction import PARAMS, make_specimen
from ultrabones.core import dataset, geometry
from ultrabones.core.calibration_file import write_calibration
from ultrabones.core.tracking_table import OPTIMIZED_COLUMNS
from ultrabones.core.paths import Paths
from ultrabones.reconstruction import batch
from ultrabones.twin import measure


def _truth(root, spec="specimen01", radius=10.5):
    truth = root / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    (truth / "system.json").write_text(json.dumps({"calibration": np.eye(4).tolist(), "temporal_offset_ms": 0.0}))
    dataset.write_mesh(truth / spec / "bone_model.stl", trimesh.creation.cylinder(radius=radius, height=90.0,
                                                                                  sections=256))
    data = root / "dataset" / spec
    for rec in ("record01", "record02"):
        df = dataset.read_tracking(data / rec / dataset.TRACKING)
        true = df[["timestamp"]].copy()
        opt = df[list(OPTIMIZED_COLUMNS)].to_numpy(float)
        ok = np.isfinite(opt).all(axis=1)
        true[list(geometry.POSE_COLUMNS)] = opt
        true = true[ok]
        (truth / spec / rec).mkdir(parents=True, exist_ok=True)
        true.to_csv(truth / spec / rec / "poses.csv", index=False)
        src = data / rec / dataset.LABELS
        for f in src.glob("*_label.png"):
            out = truth / spec / rec / dataset.LABELS / f.name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(f.read_bytes())  # the true visible labels are the labels drawn at the true poses
    return truth


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    root = tmp_path_factory.mktemp("twin_recon")
    make_specimen(root / "dataset", "specimen01", predicted=True)
    write_calibration(root / "dataset", np.eye(4), (0.5, 0.5), None)
    _truth(root)
    return root


def test_true_imaged_points_lie_on_the_imaged_top_of_the_cylinder(twin):
    paths = Paths(build_dir=twin / "build" / "t", twin_dir=twin, figures_dir=twin / "figs",
                  derived_root=twin / "dataset")  # the synthetic dataset ships its labels
    pts = measure.true_imaged_points(paths, "specimen01")
    assert len(pts) > 1000
    r = np.hypot(pts[:, 0], pts[:, 1])
    assert np.abs(r - 10.0).max() <= 0.37 and pts[:, 1].min() > 0  # the label band, on the probe's side
    assert -20.5 <= pts[:, 2].min() and pts[:, 2].max() <= 20.5


def test_grid_against_the_true_surface(twin, monkeypatch):
    monkeypatch.setenv("ULTRABONES_BUILD_ROOT", str(twin / "build"))
    paths = Paths(build_dir=twin / "build" / "t", twin_dir=twin, figures_dir=twin / "figs",
                  derived_root=twin / "dataset")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = batch.run(paths, PARAMS, specimens=["specimen01"], progress=False)
    vt = measure.reconstruction_vs_truth(paths, result, sample_mm=0.3)
    assert vt["missing"] == [] and vt["n_true_imaged"]["specimen01"] > 500
    opt, orig = vt["grid"]["labels_optimized"], vt["grid"]["labels_original"]
    # the labels' voxel centroids lie on radius 10 within the band: 0.5 mm inside the true surface
    assert opt["mean_true_mm"] == pytest.approx(0.5, abs=0.08)
    assert opt["median_true_mm"] == pytest.approx(0.5, abs=0.08)
    assert opt["coverage_true"] > 0.95
    assert opt["chamfer_true_mm"] == pytest.approx(0.5, abs=0.1)
    assert opt["chamfer_true_udf_crop_mm"] == pytest.approx(0.5, abs=0.1)
    # the perturbed original poses are farther from the truth
    assert orig["mean_true_mm"] > opt["mean_true_mm"] + 0.1 and orig["chamfer_true_mm"] > opt["chamfer_true_mm"]
    assert set(vt["grid"]) == {"labels_optimized", "labels_original", "predicted_optimized", "predicted_original"}
    assert vt["per_specimen"]["specimen01"]["labels_optimized"]["mean_true_mm"] == pytest.approx(opt["mean_true_mm"])
    assert opt["n_specimens_true"] == 1
    # the specimens are independent tasks: on two local processes, the same numbers
    twice = dataclasses.replace(result, specimens=tuple(result.specimens) * 2)
    vt2 = measure.reconstruction_vs_truth(paths, twice, sample_mm=0.3, n_workers=2)
    assert vt2["grid"]["labels_optimized"]["n_specimens_true"] == 2
    for k in ("mean_true_mm", "coverage_true", "chamfer_true_mm"):
        assert vt2["grid"]["labels_optimized"][k] == pytest.approx(opt[k], rel=1e-12)


def test_off_the_twin_or_without_point_clouds(twin, monkeypatch, tmp_path):
    monkeypatch.setenv("ULTRABONES_BUILD_ROOT", str(twin / "build"))
    real = Paths(build_dir=twin / "build" / "r", twin_dir=tmp_path, figures_dir=twin / "figs",
                 data_root=twin / "dataset")
    assert measure.reconstruction_vs_truth(real, batch.ReconstructionResult((), (), PARAMS, 0.0)) is None
    paths = Paths(build_dir=twin / "build" / "n", twin_dir=twin, figures_dir=twin / "figs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = batch.run(paths, replace(PARAMS, save_ply=False), specimens=["specimen01"], progress=False)
    vt = measure.reconstruction_vs_truth(paths, result, sample_mm=0.5)
    assert vt["grid"] == {} and "save_ply" in vt["missing"][0]
