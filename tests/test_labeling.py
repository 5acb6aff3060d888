"""Known-answer and bad-input tests of ultrabones.labels (cloud, objective, label, reference, optimize, sweep,
registration, batch).

Everything runs on small synthetic frames: two ellipsoid "bones" whose CT
model, true pose and image are known exactly (``twin.synthetic.synthetic_image``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from dataclasses import FrozenInstanceError, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import trimesh
from scipy.spatial import cKDTree

from ultrabones.twin.layout import truth_dir
from ultrabones.twin import contour, measure, synthetic
from ultrabones.core import dataset
from ultrabones.core.calibration_file import write_calibration
from ultrabones.core.tracking_table import OPTIMIZED_COLUMNS, REGISTERED_COLUMNS
from ultrabones.core import geometry
from ultrabones.labels import cloud, label, objective, optimize, reference, sweep
from ultrabones.labels import batch, figures, tasks
from ultrabones.labels import registration
from ultrabones.labels.chunks import empty_registration, normalize_registration, read_chunk
from ultrabones.labels.inputs import record_image_shape, selected_rows, surface_cloud
from ultrabones.labels.records import REPORT
from ultrabones.labels.tasks import carry_warm_start, chunk_key
from ultrabones.core.errors import DatasetError, ParamsError
from ultrabones.core.paths import Paths

SPACING = (0.2, 0.2)
SHAPE = (100, 128)  # H, W: 20 mm deep, 25.6 mm wide


def bone_mesh() -> trimesh.Trimesh:
    """Two ellipsoids (a 'tibia' and a smaller 'fibula') along CT z, tilted so every DoF shows."""
    a = trimesh.creation.icosphere(subdivisions=4)
    a.apply_scale([9.0, 7.0, 40.0])
    a.apply_transform(trimesh.transformations.rotation_matrix(np.radians(20), [1, 0.3, 0]))
    b = trimesh.creation.icosphere(subdivisions=3)
    b.apply_scale([4.0, 3.5, 30.0])
    b.apply_transform(trimesh.transformations.rotation_matrix(np.radians(-15), [0.2, 1, 0]))
    b.apply_translation([10.0, -5.0, 0.0])
    return trimesh.util.concatenate([a, b])


def frame_pose(z_mm: float = 0.0) -> np.ndarray:
    """True probe-marker pose whose image plane cuts the bones at CT height ``z_mm``.

    Image x along CT x, depth along CT -y, the top edge 16 mm above the bone axis.
    """
    rot = np.array([[1, 0, 0], [0, -1, 0], [0, 0, -1]], float).T
    ip_to_ct = geometry.make_transform(rot, np.array([-SHAPE[1] * SPACING[0] / 2 + 3, 16.0, z_mm]))
    return ip_to_ct @ geometry.invert_transform(geometry.released_calibration())


@pytest.fixture(scope="module")
def scene():
    mesh = bone_mesh()
    pts, nrm = cloud.surface_points(mesh, 8.0, seed=1)
    return {"mesh": mesh, "points": pts, "normals": nrm, "calib": geometry.released_calibration(),
            "tree": cKDTree(pts)}


# ----------------------------------------------------------------------------- C


def test_surface_points_uniform_on_surface_with_outward_normals():
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=10.0)
    pts, nrm = cloud.surface_points(sphere, 2.0, seed=3)
    assert abs(len(pts) - sphere.area * 2.0) <= 1
    r = np.linalg.norm(pts, axis=1)
    assert r.max() <= 10.0 + 1e-9 and r.min() > 9.9  # on the faceted sphere
    assert np.allclose(np.linalg.norm(nrm, axis=1), 1.0)
    assert (np.einsum("ij,ij->i", nrm, pts) > 0).all()  # outward
    # uniform: each octant holds an eighth of the points (binomial, 5 sigma)
    octant = (pts > 0) @ np.array([1, 2, 4])
    counts = np.bincount(octant, minlength=8)
    assert np.abs(counts - len(pts) / 8).max() < 5 * np.sqrt(len(pts) / 8)
    again, _ = cloud.surface_points(sphere, 2.0, seed=3)
    assert np.array_equal(pts, again)


def test_surface_points_rejects_bad_density():
    with pytest.raises(ParamsError, match="density_per_mm2"):
        cloud.surface_points(trimesh.creation.box(), 0.0, seed=0)


# ----------------------------------------------------------------------------- fast = reference


def test_full_label_equals_the_kdtree_definition(scene):
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.uniform(-1, 1, 6)
        pose = frame_pose(rng.uniform(-10, 10)) @ geometry.perturbation(x[:3], x[3:])
        fast = label.full_label(SHAPE, pose, scene["calib"], SPACING, scene["points"], 0.3)
        ref = reference.reference_label(SHAPE, pose, scene["calib"], SPACING, scene["tree"], 0.3)
        assert ref.sum() > 100
        assert np.array_equal(fast, ref)


def test_fast_objective_equals_reference_on_random_poses(scene):
    pose = frame_pose(2.0)
    img = synthetic.synthetic_image(pose, scene["calib"], SPACING, SHAPE, scene["points"], scene["normals"])
    obj = objective.FrameObjective(img, pose, scene["calib"], SPACING, scene["points"])
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (6, 12))
    for lam in (0.1, 10.0):
        fast = obj.value(x, lam)
        ref = [reference.reference_objective(x[:, j], img, pose, scene["calib"], SPACING, scene["tree"], lam)
               for j in range(x.shape[1])]
        assert np.allclose(fast, ref, atol=1e-12, rtol=0)
    # the population is evaluated at once, and equals member-by-member evaluation
    assert np.allclose(obj.value(x, 1.0), [obj.value(x[:, j], 1.0) for j in range(12)])


def test_no_bone_in_view_gives_empty_label_and_status(scene):
    far = frame_pose(500.0)  # the plane misses the bones entirely
    img = np.full(SHAPE, 80, np.uint8)
    assert not label.full_label(SHAPE, far, scene["calib"], SPACING, scene["points"]).any()
    res = optimize.optimize_frame(img, far, scene["calib"], SPACING, scene["points"], 1.0, maxiter=5)
    assert res.status == "no_bone"


def test_frame_objective_rejects_non_2d_image(scene):
    with pytest.raises(ValueError, match=r"image must be \(H, W\)"):
        objective.FrameObjective(np.zeros((4, 4, 3)), frame_pose(), scene["calib"], SPACING, scene["points"])


def test_optimize_frame_rejects_nan_pose(scene):
    pose = frame_pose()
    pose[0, 3] = np.nan
    with pytest.raises(DatasetError, match="not a finite"):
        optimize.optimize_frame(np.zeros(SHAPE, np.uint8), pose, scene["calib"], SPACING, scene["points"], 1.0)


# ----------------------------------------------------------------------------- the optimiser


def test_optimizer_recovers_a_known_perturbation(scene):
    """Noise-free frame drawn at the true pose; the recorded pose is off by a known perturbation."""
    true = frame_pose(-3.0)
    calib, pts = scene["calib"], scene["points"]
    img = synthetic.synthetic_image(true, calib, SPACING, SHAPE, pts, scene["normals"], noise=0.0)
    err = np.array([0.6, -0.5, 0.4, 0.5, -0.6, 0.4])  # deg, mm
    recorded = true @ geometry.invert_transform(geometry.perturbation(err[:3], err[3:]))
    truth = label.full_label(SHAPE, true, calib, SPACING, pts)
    before = contour.label_distance_mm(label.full_label(SHAPE, recorded, calib, SPACING, pts), truth, SPACING)
    res = optimize.optimize_frame(img, recorded, calib, SPACING, pts, 0.01, seed=0)
    assert res.status == "kept"
    after = contour.label_distance_mm(label.full_label(SHAPE, res.pose, calib, SPACING, pts), truth, SPACING)
    assert before > 0.25
    assert after < min(0.08, 0.3 * before), (before, after)
    assert res.intensity_optimized > res.intensity_initial
    # the correction undoes the error: the fiducials land near the true ones
    # (up to the small, weakly observed motions the image cannot see)
    assert geometry.mean_fiducial_displacement(res.pose, true) < 0.5 * geometry.mean_fiducial_displacement(recorded, true)


def test_validation_discards_large_corrections(scene):
    true = frame_pose(1.0)
    calib, pts = scene["calib"], scene["points"]
    img = synthetic.synthetic_image(true, calib, SPACING, SHAPE, pts, scene["normals"], noise=0.0)
    recorded = true @ geometry.invert_transform(geometry.perturbation([0.9, -0.9, 0.9], [0.9, -0.9, 0.9]))
    res = optimize.optimize_frame(img, recorded, calib, SPACING, pts, 0.01, seed=0, max_correction_mm=0.2)
    assert res.status == "discarded" and res.correction_mm > 0.2
    assert np.isnan(res.pose).all()


def test_halves_check_keeps_a_true_correction_and_discards_a_one_sided_one(scene):
    """A correction that undoes a pose error raises the echo on both halves of the bone's scan lines; where one
    half of the image is featureless, no correction can raise it there, and the frame is discarded."""
    true = frame_pose(-3.0)
    calib, pts = scene["calib"], scene["points"]
    img = synthetic.synthetic_image(true, calib, SPACING, SHAPE, pts, scene["normals"], noise=0.0)
    err = np.array([0.0, 0.0, 0.0, 0.5, 0.0, 0.4])  # deg, mm
    recorded = true @ geometry.invert_transform(geometry.perturbation(err[:3], err[3:]))
    obj = objective.FrameObjective(img, recorded, calib, SPACING, pts, region="first_hit")
    left, right = obj.half_gains(err)
    assert left > 0.05 and right > 0.05, (left, right)
    assert optimize.check_halves(obj, err, "first_hit")[0] == ""
    # the right half of the bone's columns made uniform
    cols = np.flatnonzero(obj.mask().any(axis=0))
    flat = img.copy()
    flat[:, cols[len(cols) // 2]:] = 128
    obj2 = objective.FrameObjective(flat, recorded, calib, SPACING, pts, region="first_hit")
    left2, right2 = obj2.half_gains(err)
    assert left2 > 0.05 and right2 == pytest.approx(0.0, abs=1e-12)
    reason, gains = optimize.check_halves(obj2, err, "first_hit")
    assert "one half of the bone's scan lines only" in reason and gains == (left2, right2)
    assert optimize.check_halves(obj2, np.zeros(6), "first_hit")[0] == ""  # no correction: nothing to support
    assert optimize.check_halves(obj2, err, None)[0] == ""  # off
    res = optimize.optimize_frame(flat, recorded, calib, SPACING, pts, 0.01, seed=0, halves_check="first_hit")
    assert res.status == "discarded" and "one half" in res.reason and res.gain_right == pytest.approx(0.0, abs=1e-12)
    res = optimize.optimize_frame(img, recorded, calib, SPACING, pts, 0.01, seed=0, halves_check="first_hit")
    assert res.status == "kept" and min(res.gain_left, res.gain_right) > 0


# ----------------------------------------------------------------------------- visible label


def test_shadow_mask_keeps_only_the_first_crossing():
    full = np.zeros((12, 3), bool)
    full[2:4, 0] = True   # first crossing
    full[8:10, 0] = True  # a second bone below it: shadowed
    full[5, 1] = True     # a single crossing: visible
    full[3, 2] = full[5, 2] = True  # gap of 1 row bridged, then nothing: visible
    sh = label.shadow_mask(full, gap_px=1)
    assert sh[8:10, 0].all() and not sh[2:4, 0].any()
    assert not sh[:, 1].any()
    assert not sh[:, 2].any()
    assert not label.shadow_mask(full, gap_px=0)[3, 2] and label.shadow_mask(full, gap_px=0)[5, 2]


def test_visible_label_removes_steep_incidence_and_shadow():
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=6.0)
    pts, nrm = cloud.surface_points(sphere, 20.0, seed=0)
    calib = geometry.released_calibration()
    rot = np.array([[1, 0, 0], [0, -1, 0], [0, 0, -1]], float).T
    pose = geometry.make_transform(rot, np.array([-12.8, 10.0, 0.0])) @ geometry.invert_transform(calib)
    full = label.full_label(SHAPE, pose, calib, SPACING, pts)
    vis = label.visible_label(full, pose, calib, SPACING, pts, nrm, incidence_max_deg=85.0)
    vv, uu = np.nonzero(full)
    # circle of radius 6 mm centred at depth 10 mm, column 64
    x = (uu + 0.5) * SPACING[0] - 12.8
    y = (vv + 0.5) * SPACING[1] - 10.0
    assert np.abs(np.hypot(x, y) - 6.0).max() < 0.4
    lower = (y > 2.0) & (np.abs(x) < 5.5)  # off the tangent columns
    assert vis.shadow[vv[lower], uu[lower]].all()  # the lower half lies in the upper half's shadow
    # a grazing scan line meets the circle in one run: only there can a pixel below the equator stay
    assert (np.abs(x[(y > 0.5) & vis.visible[vv, uu]]) > 5.5).all()
    top = (y < -5.0) & (np.abs(x) < 1.0)
    assert vis.visible[vv[top], uu[top]].all()  # normal incidence at the top: kept
    # incidence angle is the angle of the in-plane normal to the vertical: asin(|x| / 6)
    upper = (y < -1.0)
    expect = np.degrees(np.arcsin(np.clip(np.abs(x[upper]) / np.hypot(x[upper], y[upper]), 0, 1)))
    assert np.nanmedian(np.abs(vis.incidence_deg[vv[upper], uu[upper]] - expect)) < 3.0
    # the steep flanks (near-vertical surface) go, not the shadow
    assert vis.steep.any() and not (vis.steep & vis.shadow).any()
    assert (vis.incidence_deg[vis.steep] > 85.0).all()


# ----------------------------------------------------------------------------- registration


def test_global_registration_corrects_a_common_offset(scene):
    calib, pts = scene["calib"], scene["points"]
    offset = geometry.make_transform(np.eye(3), np.array([0.0, 0.8, 0.0]))  # the whole sweep 0.8 mm off
    images, recorded = [], []
    for z in (-6.0, -2.0, 2.0, 6.0):
        true = frame_pose(z)
        images.append(synthetic.synthetic_image(true, calib, SPACING, SHAPE, pts, scene["normals"], noise=0.0))
        recorded.append(offset @ true)
    reg = registration.register_sweep(images, np.array(recorded), calib, SPACING, pts, maxiter=40, seed=0)
    assert reg.similarity_registered > reg.similarity_initial
    moved = reg.transform @ offset
    # the registered poses' image centres are back near the true ones
    assert np.linalg.norm(moved[:3, 3] + moved[:3, :3] @ reg.centre - reg.centre) < 0.3
    assert registration.correction(np.zeros(6), reg.centre) == pytest.approx(np.eye(4))


def test_register_sweep_rejects_mismatched_inputs(scene):
    with pytest.raises(ValueError, match="images for"):
        registration.register_sweep([np.zeros(SHAPE, np.uint8)], np.zeros((2, 4, 4)), scene["calib"], SPACING,
                                    scene["points"])


# ----------------------------------------------------------------------------- a whole (tiny) dataset


PARAMS = {
    "objective_region": "full", "density_per_mm2": 6.0, "label_density_per_mm2": 12.0, "gamma_mm": 0.3, "bound_deg": 1.0, "bound_mm": 1.0, "popsize": 6, "maxiter": 15,
    "tol": 0.02, "lambdas": [0.01, 1.0], "lambda_frames": 2, "lambda_value": None, "max_correction_mm": 1.0, "min_label_fraction": 0.5, "halves_check": "first_hit",
    "incidence_max_deg": 85.0, "frame_stride": 1, "max_frames_per_record": None, "chunk_size": 2,
    "registration_frames": 2, "registration_bound_deg": 1.0, "registration_bound_mm": 1.0,
    "registration_maxiter": 5, "executor": "synchronous",
    "selection_rule": "split", "selection_eval_region": "first_hit", "selection_offset_frames": 4,
    "fallback_region": "first_hit",
    "optimizer": "sweep", "warm_step_deg": 0.2, "warm_step_mm": 0.2, "warm_min_step_deg": 0.02,
    "warm_min_step_mm": 0.02, "warm_max_calls": 60, "warm_max_gap": 1, "warm_cold_every": 0, "device": None,
    "min_echo_level": 0.1,
    "objective": "eq2", "released_ct_samples": 1000000, "selection_inseparable": "keep",
}


def labeling_params(**changes) -> batch.LabelingParams:
    """The tiny dataset's ``labeling`` section (:data:`PARAMS`) with ``changes``, as the stage takes it."""
    return batch.LabelingParams.from_section({**PARAMS, **changes})


def test_labeling_params_are_the_schema_section_typed_and_round_trip():
    from ultrabones.core.cache import params_hash
    from ultrabones.core.params import SCHEMA, load_profile
    from ultrabones.core.paths import PARAMS_DIR

    P = labeling_params()
    assert [f.name for f in fields(P)] == list(SCHEMA["labeling"]) == list(P.as_dict())
    assert P.lambdas == (0.01, 1.0) and P.lambda_value is None and P.halves_check == "first_hit"
    assert P.as_dict() == PARAMS and batch.LabelingParams.from_section(P.as_dict()) == P
    section = load_profile("smoke", PARAMS_DIR).values["labeling"]  # what notebook 02 collects
    assert params_hash(batch.LabelingParams.from_section(section).as_dict()) == params_hash(section)  # cache keys
    with pytest.raises(FrozenInstanceError):
        P.gamma_mm = 0.4
    with pytest.raises(ParamsError, match=r"labeling\.gamma_mm"):
        batch.LabelingParams.from_section({**PARAMS, "gamma_mm": 0.0})
    with pytest.raises(ParamsError, match=r"labeling\.objective_region"):
        replace(P, objective_region="everywhere")
    with pytest.raises(ParamsError, match="lacks key.*chunk_size"):
        batch.LabelingParams.from_section({k: v for k, v in PARAMS.items() if k != "chunk_size"})
    over = {"specimen02": {"gamma_mm": 0.4, "lambdas": [1.0]}}
    assert P.for_specimen(over, "specimen02") == replace(P, gamma_mm=0.4, lambdas=(1.0,))
    assert P.for_specimen(over, "specimen01") == P.for_specimen(None, "specimen01") == P
    with pytest.raises(ParamsError, match="specimen02 overrides: unknown key 'labeling.gama_mm'"):
        P.for_specimen({"specimen02": {"gama_mm": 0.4}}, "specimen02")


def make_twin(root: Path, n_frames: int = 5, seed: int = 0) -> Paths:
    """A layout-A dataset with truth: one specimen, one record, frames 1 mm apart along the bones."""
    rng = np.random.default_rng(seed)
    twin = root / "twin"
    ds, truth = twin / "dataset", twin / "truth"
    mesh = bone_mesh()
    dataset.write_mesh(ds / "specimen01" / "CT_bone_model.stl", mesh)
    calib = geometry.released_calibration()
    write_calibration(ds, calib, SPACING, -100.0)
    pts, nrm = cloud.surface_points(mesh, 10.0, seed=99)
    rec = dataset.Record("specimen01", "record01", ds / "specimen01" / "record01")
    trec = dataset.Record("specimen01", "record01", truth / "specimen01" / "record01")
    rows = []
    for j in range(n_frames):
        ts = 1000 + 50 * j
        true = frame_pose(-4.0 + 2.0 * j)
        img = synthetic.synthetic_image(true, calib, SPACING, SHAPE, pts, nrm, seed=j)
        dataset.write_image(rec.image_path(ts), img)
        full = label.full_label(SHAPE, true, calib, SPACING, pts)
        vis = label.visible_label(full, true, calib, SPACING, pts, nrm).visible
        dataset.write_label(trec.label_path(ts, dataset.LABELS_FULL), full)
        dataset.write_label(trec.label_path(ts, dataset.LABELS), vis)
        e = np.r_[rng.uniform(-0.4, 0.4, 3), rng.uniform(-0.5, 0.5, 3)]
        recorded = true @ geometry.perturbation(e[:3], e[3:])
        rows.append([ts, *geometry.params_from_pose(recorded)])
    dataset.write_tracking(rec.tracking_csv, pd.DataFrame(rows, columns=["timestamp", *geometry.POSE_COLUMNS]))
    return Paths(build_dir=root / "build", twin_dir=twin, figures_dir=root / "figures")


def _break_frames(paths: Paths):
    """Frame 1: NaN pose; frame 2: corrupt PNG; frame 4: plane far from the bones (no bone)."""
    rec = dataset.read_specimen(paths.dataset / "specimen01").records[0]
    tab = pd.read_csv(rec.tracking_csv)
    tab.loc[1, "euler_y"] = np.nan
    tab.loc[4, "z"] = 900.0
    tab.to_csv(rec.tracking_csv, index=False)
    rec.image_path(int(tab.loc[2, "timestamp"])).write_bytes(b"not a png")
    return rec, tab


def test_run_labels_record_and_reports_bad_frames(tmp_path):
    paths = make_twin(tmp_path)
    rec, tab = _break_frames(paths)
    out = batch.run(paths, labeling_params(), seed=0)
    rep = out.report.set_index("timestamp")
    ts = tab["timestamp"].to_numpy()
    assert sorted(rep.index) == sorted(ts)  # every frame reported once
    assert rep.loc[ts[1], "status"] == "bad_pose" and "row 2" in rep.loc[ts[1], "message"]
    assert rep.loc[ts[2], "status"] == "bad_image" and "not a readable image" in rep.loc[ts[2], "message"]
    assert rep.loc[ts[4], "status"] == "no_bone"
    for t in (ts[0], ts[3]):
        assert rep.loc[t, "status"] in ("kept", "discarded")
    # outputs, in the derived dataset: tracking columns (NaN where not kept), labels of kept frames, the report
    rec = dataset.read_specimen(paths.dataset / "specimen01", paths.derived / "specimen01").records[0]
    assert rec.out == paths.derived / "specimen01" / "record01"
    track = dataset.read_tracking(rec.poses_csv, allow_missing_pose=True)
    kept = rep.index[rep["status"] == "kept"]
    assert len(kept) >= 1
    for t in ts:
        row = track[track["timestamp"] == t].iloc[0]
        assert np.isfinite(row[list(OPTIMIZED_COLUMNS)].to_numpy(float)).all() == (t in kept)
        assert rec.label_path(t, dataset.LABELS).is_file() == (t in kept)
        assert rec.label_path(t, dataset.LABELS_FULL).is_file() == (t in kept)
    assert np.isfinite(track.loc[0, list(REGISTERED_COLUMNS)].to_numpy(float)).all()
    # the written full label is the optimised pose's label over the whole (dense) C
    spec = dataset.read_specimen(paths.dataset / "specimen01")
    dense, _ = cloud.load_cloud(surface_cloud(paths, spec, PARAMS["label_density_per_mm2"], 1))
    t = kept[0]
    pose_opt = dataset.poses(track, "optimized")[int(np.flatnonzero(track["timestamp"] == t)[0])]
    expect = label.full_label(SHAPE, pose_opt, geometry.released_calibration(), SPACING, dense)
    written = dataset.read_label(rec.label_path(t, dataset.LABELS_FULL))
    assert (written != expect).sum() <= 2  # equal up to the pose's 10-digit round trip through the CSV
    assert (rec.out / REPORT).is_file() and not (rec.path / REPORT).exists()
    assert out.lam in PARAMS["lambdas"]
    m = batch.summarize(out.report)
    assert "label_error_mm" not in m and "contour_error_mm" not in m  # the stage measures nothing against truth
    assert 0 <= m["discard_rate"] <= 1
    # the twin measures what the stage wrote
    settings = {"gamma_mm": PARAMS["gamma_mm"], "label_density_per_mm2": PARAMS["label_density_per_mm2"],
                "label_cloud_seed": 1}
    errors = measure.labels(paths, out.report, out.registrations, settings)
    assert list(errors["timestamp"]) == list(kept)
    mt = measure.label_metrics(errors)
    assert set(mt["contour_error_mm"]) == set(mt["label_error_mm"]) == {"initial", "registration", "optimized"}
    assert mt["contour_error_mm"]["optimized"]["n"] == len(kept)
    # Figs. 3 and 4 draw the kept frames from what the stage wrote; Fig. 4's titles add the measured errors
    fig3 = figures.fig3_pipeline(paths, out.report, labeling_params(), seed=0)
    fig4 = figures.fig4_before_after(paths, out.report, labeling_params(), seed=0, errors=errors)
    assert len(fig3.axes) == 3 and "correction" in fig3.texts[0].get_text()
    titled = [ax.get_title() for ax in fig4.axes if ax.get_title()]
    assert len(titled) == len(kept) and all("(truth)" in t for t in titled)
    with pytest.raises(ValueError, match="no frame kept"):
        figures.fig3_pipeline(paths, out.report.assign(status="discarded"), labeling_params())


def test_an_image_of_another_size_is_skipped_with_its_file_named(tmp_path):
    """One 180x200 image among 128x100 ones used to abort the stage in _write_chunk (a broadcast error)."""
    paths = make_twin(tmp_path, n_frames=4)
    rec = dataset.read_specimen(paths.dataset / "specimen01").records[0]
    ts = rec.timestamps()
    odd = rec.image_path(int(ts[1]))
    dataset.write_image(odd, np.full((180, 200), 60, np.uint8))
    import shutil

    shutil.rmtree(truth_dir(paths))  # as on real data: nothing is measured, the frames are only labelled
    P = labeling_params(lambda_value=0.1, chunk_size=4)  # the odd frame shares a chunk with good ones
    out = batch.run(paths, P, seed=0)
    # a record that labels only its odd frame: the record's other frames still set its size
    paths_b = make_twin(tmp_path / "b", n_frames=4)
    odd_b = rec.image_path(int(ts[0]))
    odd_b = paths_b.dataset / odd_b.relative_to(paths.dataset)
    dataset.write_image(odd_b, np.full((180, 200), 60, np.uint8))
    only = batch.run(paths_b, replace(P, frame_stride=4), seed=0).report
    assert list(only["timestamp"]) == [ts[0]] and list(only["status"]) == ["bad_image"]
    assert str(odd_b) in only["message"].iloc[0]
    rep = out.report.set_index("timestamp")
    assert rep.loc[ts[1], "status"] == "bad_image"
    msg = rep.loc[ts[1], "message"]
    assert str(odd) in msg and "200x180" in msg and "128x100" in msg
    assert (rep.drop(index=ts[1])["status"] != "bad_image").all()
    assert (rep["status"] == "kept").sum() >= 1
    m = batch.summarize(out.report)
    assert m["status_counts"]["bad_image"] == 1
    assert m["skipped_frames"] == [{"specimen": "specimen01", "record": "record01", "timestamp": int(ts[1]),
                                    "status": "bad_image", "message": msg}]


def test_record_image_shape_is_the_most_common_size(tmp_path):
    rec = dataset.Record("s", "r", tmp_path / "r")
    for t, shape in [(1, (10, 12)), (2, (8, 9)), (3, (10, 12)), (4, (8, 9)), (5, (10, 12))]:
        dataset.write_image(rec.image_path(t), np.zeros(shape, np.uint8))
    rec.image_path(6).write_bytes(b"not a png")
    assert record_image_shape(rec, [1, 2, 3, 4, 5, 6]) == [10, 12]
    assert record_image_shape(rec, [2, 1]) == [8, 9]  # a tie goes to the first met
    assert record_image_shape(rec, [6, 7]) is None


def test_a_record_without_usable_frames_never_crashes_a_rerun(tmp_path):
    """A cached null registration once stopped notebook 02 with
    ``TypeError: unsupported operand type(s) for +: 'NoneType' and 'float'``."""
    import json
    import shutil

    paths = make_twin(tmp_path, n_frames=3)
    spec = paths.dataset / "specimen01"
    shutil.copytree(spec / "record01", spec / "record02")
    for f in (spec / "record02" / dataset.IMAGES).glob("*.png"):
        f.write_bytes(b"not a png")  # nothing usable in record02
    P = labeling_params(lambda_value=0.1)

    def mean_similarity(regs):  # what notebook 02 computes from the registrations
        return float(np.nanmean([r["similarity_initial"] for r in regs.values()]))

    first = batch.run(paths, P, seed=0)
    again = batch.run(paths, P, seed=0)  # the rerun reads the cached null
    assert mean_similarity(again.registrations) == pytest.approx(mean_similarity(first.registrations))
    empty = first.registrations["specimen01/record02"]
    assert empty["status"] == "no_frames" and empty["n_frames"] == 0
    assert np.isnan(empty["similarity_initial"]) and np.allclose(empty["transform"], np.eye(4))
    assert first.registrations["specimen01/record01"]["status"] == "registered"
    f = paths.cache("02_labeling") / "specimen01" / "record02" / "registration.json"
    assert json.loads(f.read_text())["result"]["similarity_initial"] is None  # NaN is stored as null
    assert np.isnan(again.registrations["specimen01/record02"]["similarity_initial"])
    pd.testing.assert_frame_equal(again.report, first.report)
    # a result cached by the older code: no status, x or centre, nulls, with the current key
    data = json.loads(f.read_text())
    data["result"] = {"transform": np.eye(4).tolist(), "n_frames": 0, "similarity_initial": None,
                      "similarity_registered": None, "mean_displacement_mm": 0.0, "seconds": 0.0}
    f.write_text(json.dumps(data))
    third = batch.run(paths, P, seed=0)
    reg = third.registrations["specimen01/record02"]
    assert reg["status"] == "no_frames" and np.isnan(reg["similarity_registered"])
    assert np.isfinite(mean_similarity(third.registrations))
    # an unreadable or malformed cache is recomputed, not fatal
    f.write_text("{not json")
    assert batch.run(paths, P, seed=0).registrations["specimen01/record02"]["status"] == "no_frames"
    data["result"] = None
    f.write_text(json.dumps(data))
    assert batch.run(paths, P, seed=0).registrations["specimen01/record02"]["status"] == "no_frames"
    assert (third.report["record"] == "record02").sum() == 3
    assert (third.report.query("record == 'record02'")["status"] == "bad_image").all()


def test_normalize_registration_known_answers():
    assert normalize_registration(None) is None
    assert normalize_registration({"transform": [[1, 2]]}) is None
    assert normalize_registration({"transform": np.full((4, 4), np.nan).tolist()}) is None
    r = normalize_registration({"transform": np.eye(4).tolist(), "similarity_initial": None,
                                             "n_frames": 2, "centre": [1, None, 3]})
    assert r["status"] == "registered" and np.isnan(r["similarity_initial"]) and r["n_frames"] == 2
    assert r["centre"][0] == 1.0 and np.isnan(r["centre"][1]) and len(r["x"]) == 6
    assert normalize_registration(empty_registration())["status"] == "no_frames"


def test_unrecognised_folders_are_warned_about_and_in_the_metrics(tmp_path):
    paths = make_twin(tmp_path, n_frames=2)
    bad = paths.dataset / "specimen01" / "record02"
    (bad / "ultrasoundimages").mkdir(parents=True)  # misnamed: not a record
    with pytest.warns(UserWarning, match="not recognised"):
        out = batch.run(paths, labeling_params(lambda_value=0.1), seed=0)
    assert out.skipped_inputs == [{"path": str(bad), "reason": dataset._NOT_A_RECORD}]
    assert batch.summarize(out.report)["skipped_inputs"] == out.skipped_inputs


def test_run_resumes_after_a_kill_every_frame_once(tmp_path):
    paths = make_twin(tmp_path, n_frames=6)
    P = labeling_params(lambda_value=0.1)
    with pytest.raises(RuntimeError, match="stopped after 1 chunks"):
        batch.run(paths, P, seed=0, fail_after_chunks=1)
    chunks = sorted(paths.cache("02_labeling").rglob("chunk_*.npz"))
    assert len(chunks) == 1
    first_mtime = chunks[0].stat().st_mtime_ns
    from ultrabones.core.timings import Phases

    timer = Phases()
    out = batch.run(paths, P, seed=0, timer=timer)
    chunks = sorted(paths.cache("02_labeling").rglob("chunk_*.npz"))
    assert len(chunks) == 3
    assert chunks[0].stat().st_mtime_ns == first_mtime  # finished work is not redone
    ts = out.report["timestamp"]
    assert ts.is_unique and len(ts) == 6
    # the phases were timed; the frames phase counts the 4 frames of the 2 chunks labelled now, not the cached ones
    ph = timer.as_dict()
    assert list(ph) == ["inputs", "registration", "frames", "writing"]  # lambda given: no selection
    assert ph["frames"]["frames"] == 4 and ph["writing"]["frames"] == 6 and ph["frames"]["cpu_s"] > 0
    # a rerun changes nothing and redoes nothing
    timer = Phases()
    again = batch.run(paths, P, seed=0, timer=timer)
    pd.testing.assert_frame_equal(again.report, out.report)
    assert timer.as_dict()["frames"]["frames"] == 0
    # the sweep is walked in order: after the first frame, a frame following a kept one is warm-started,
    # also across the chunk boundary where the run was killed (its warm start came from the first chunk's file)
    rep = out.report.reset_index(drop=True)
    assert rep.loc[0, "path"] == "de"
    for i in range(1, len(rep)):
        if rep.loc[i - 1, "status"] == "kept" and rep.loc[i, "status"] != "no_bone":
            assert rep.loc[i, "path"] in ("warm", "warm+de")
    assert (rep["path"] != "de").any()
    # the resumed run gives what an uninterrupted one gives
    fresh = batch.run(make_twin(tmp_path / "fresh", n_frames=6), P, seed=0).report
    cols = [c for c in rep.columns if not c.startswith("seconds")]
    pd.testing.assert_frame_equal(fresh[cols], rep[cols])
    # a chunk's key holds the warm start it began from: another start makes it stale, and only it is redone
    first = read_chunk(chunks[0], labels=False)["report"]
    x0, age = carry_warm_start(first, None, 0, 1)
    assert x0 is not None and age == 1
    assert chunk_key("k", x0, age) != chunk_key("k", None, 0)
    assert chunk_key("k", x0, age) != chunk_key("k", x0 + 1e-3, age)
    assert carry_warm_start([{"status": "discarded"}], x0, 1, 1) == (None, 0)
    assert carry_warm_start([{"status": "no_bone"}], x0, 1, 2)[1] == 2


def test_de_optimizer_solves_every_frame_cold(tmp_path):
    paths = make_twin(tmp_path, n_frames=3)
    out = batch.run(paths, labeling_params(lambda_value=0.1, optimizer="de"), seed=0)
    rep = out.report
    assert set(rep["path"].dropna()) == {"de"}
    assert batch.summarize(rep)["path_share"] == {"de": 1.0}


def test_a_specimen_override_applies_to_its_specimen(tmp_path):
    paths = make_twin(tmp_path, n_frames=3)
    P = labeling_params(lambda_value=0.1, optimizer="de", chunk_size=3)
    out = batch.run(paths, P, seed=0, specimen_overrides={"specimen01": {"chunk_size": 1, "frame_stride": 2},
                                                          "specimen02": {"frame_stride": 3}})
    assert list(out.report["timestamp"]) == [1000, 1100]  # rows 0 and 2
    assert len(list(paths.cache("02_labeling").rglob("chunk_*.npz"))) == 2  # one frame a chunk


def test_run_survives_a_killed_process(tmp_path):
    """SIGKILL a real labelling process mid-run; the restart labels each frame exactly once."""
    paths = make_twin(tmp_path, n_frames=6)
    # slow enough per frame (tol 0: every generation runs) to be killed between chunks
    # (the warm-started frames: a dense C, a fine and long pattern search)
    slow = dict(PARAMS, lambda_value=0.1, chunk_size=1, popsize=10, maxiter=80, tol=0.0, density_per_mm2=60.0,
                warm_max_calls=200, warm_min_step_deg=0.005, warm_min_step_mm=0.005)
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from ultrabones.labels import batch
        from ultrabones.core.paths import Paths
        P = batch.LabelingParams.from_section({slow!r})
        paths = Paths(Path({str(paths.build_dir)!r}), Path({str(paths.twin_dir)!r}), Path({str(paths.figures_dir)!r}))
        batch.run(paths, P, seed=0)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, OMP_NUM_THREADS="1"))
    cache = paths.cache("02_labeling")
    for _ in range(600):
        if len(list(cache.rglob("chunk_*.npz"))) >= 2 or proc.poll() is not None:
            break
        time.sleep(0.1)
    killed = proc.poll() is None
    proc.kill()
    proc.wait()
    done_before = sorted(cache.rglob("chunk_*.npz"))
    assert killed and 1 <= len(done_before) < 6, "the run was not interrupted mid-way"
    mtimes = {f: f.stat().st_mtime_ns for f in done_before}
    out = batch.run(paths, batch.LabelingParams.from_section(slow), seed=0)
    assert all(f.stat().st_mtime_ns == t for f, t in mtimes.items())  # finished chunks kept as they were
    ts = out.report["timestamp"]
    assert ts.is_unique and len(ts) == 6
    assert not list(cache.rglob(".chunk_*"))  # no half-written file left behind
    assert (out.report["path"] != "de").any()  # the sweep was warm-started


def test_run_on_dask_matches_synchronous(tmp_path):
    paths_a = make_twin(tmp_path / "a", n_frames=3)
    paths_b = make_twin(tmp_path / "b", n_frames=3)
    P = labeling_params(lambda_value=0.1)
    sync = batch.run(paths_a, P, seed=0).report
    dask = batch.run(paths_b, replace(P, executor="dask"), seed=0, n_workers=1).report
    cols = ["timestamp", "status", "correction_mm", "rot_x_deg", "trans_z_mm"]
    pd.testing.assert_frame_equal(sync[cols], dask[cols])


def test_selected_rows_stride_and_cap():
    assert selected_rows(10, 3, None).tolist() == [0, 3, 6, 9]
    assert selected_rows(100, 1, 5).tolist() == [0, 25, 50, 74, 99]


def test_read_tracking_nan_pose_rejected_unless_allowed(tmp_path):
    f = tmp_path / "tracking.csv"
    pd.DataFrame({"timestamp": [1, 2], "x": [0.0, np.nan], "y": 0.0, "z": 0.0, "euler_x": 0.0, "euler_y": 0.0,
                  "euler_z": 0.0}).to_csv(f, index=False)
    with pytest.raises(DatasetError, match="row 2: x"):
        dataset.read_tracking(f)
    assert np.isnan(dataset.read_tracking(f, allow_missing_pose=True).loc[1, "x"])


def test_summarize_known_answer():
    rep = pd.DataFrame({
        "status": ["kept", "kept", "discarded", "discarded", "no_bone", "bad_pose"],
        "message": ["", "", "mean fiducial correction 1.2 mm > 1.0 mm", "label shrank to 3 of 90 px (< 0.5)", "",
                    "row 7: pose is not finite"],
        "correction_mm": [0.2, 0.6, 1.2, 0.4, np.nan, np.nan],
        "seconds_optimize": [0.1, 0.3, 0.2, 0.2, np.nan, np.nan],
    })
    m = batch.summarize(rep)
    assert m["discard_rate"] == pytest.approx(0.5)  # of the frames that were optimised
    assert m["kept_mean_fiducial_correction_mm"] == pytest.approx(0.4)
    assert m["discarded_for_correction"] == 1 and m["discarded_for_shrinking"] == 1
    assert m["seconds_per_frame"] == pytest.approx(0.2)


def test_label_metrics_against_truth_known_answer():
    errors = pd.DataFrame({
        "contour_initial_mm": [1.0, 0.5], "contour_registered_mm": [0.8, 0.9], "contour_optimized_mm": [0.1, 0.7],
        "error_initial_mm": [0.6, 0.3], "error_registered_mm": [0.5, 0.6], "error_optimized_mm": [0.05, 0.4],
        "visible_precision": [1.0, 0.5], "visible_recall": [0.8, 0.6],
    })
    m = measure.label_metrics(errors)
    assert m["contour_error_mm"]["initial"]["mean"] == pytest.approx(0.75)
    assert m["contour_error_mm"]["registration"]["median"] == pytest.approx(0.85)
    assert m["contour_error_mm"]["optimized"]["mean"] == pytest.approx(0.4)
    assert m["label_error_mm"]["optimized"]["mean"] == pytest.approx(0.225)
    assert m["optimized_better_share"] == pytest.approx(0.5)  # 0.1 < 1.0, 0.7 > 0.5
    assert m["visible_label_precision"] == pytest.approx(0.75) and m["visible_label_recall"] == pytest.approx(0.7)
    assert measure.label_metrics(pd.DataFrame()) == {}


def test_label_distance_and_precision_recall_in_mm():
    truth = np.zeros((10, 10), bool)
    truth[5, :] = True
    label = np.zeros((10, 10), bool)
    label[7, :5] = True  # 2 rows below: 2 * 0.2 mm
    assert contour.label_distance_mm(label, truth, (0.1, 0.2)) == pytest.approx(0.4)
    assert np.isnan(contour.label_distance_mm(np.zeros_like(label), truth, (0.1, 0.2)))
    p, r = contour.precision_recall(label, truth, (0.1, 0.2), tol_mm=0.51)
    assert p == pytest.approx(1.0)
    # truth pixels within 0.5 mm of the label: the 5 above it and the next 3 columns (hypot(0.3, 0.4) = 0.5 <= 0.51)
    assert r == pytest.approx(0.8)


# ----------------------------------------------------------------------------- first-hit objective


def test_first_hit_region_keeps_the_top_of_each_scan_line(scene):
    pose = frame_pose(2.0)
    img = synthetic.synthetic_image(pose, scene["calib"], SPACING, SHAPE, scene["points"], scene["normals"])
    full = objective.FrameObjective(img, pose, scene["calib"], SPACING, scene["points"])
    top = objective.FrameObjective(img, pose, scene["calib"], SPACING, scene["points"], region="first_hit")
    member, pixel, _ = full.band(full.deltas(np.zeros((6, 1))))
    v, u = np.divmod(pixel, SHAPE[1])
    first = {c: v[u == c].min() for c in np.unique(u)}
    keep = np.array([vv < first[uu] + top.first_hit_rows for vv, uu in zip(v, u)])
    expected = top.f[pixel[keep]].mean()
    mean, count = top.intensity(np.zeros((6, 1)))
    assert top.first_hit_rows == 3  # 2 gamma / sy = 0.6 / 0.2
    assert count[0] == keep.sum() < len(pixel)
    assert mean[0] == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="region must be"):
        objective.FrameObjective(img, pose, scene["calib"], SPACING, scene["points"], region="visible")


def test_first_hit_objective_undoes_a_perturbation_on_a_shadowed_bmode_frame():
    """A B-mode frame of the twin's physics (speckle, specular bone echo, acoustic shadow).

    The contour's far side lies in the dark shadow whose edges coincide with the bone's outline; the
    first-hit objective recovers the pose, measured against the true label.
    """
    from ultrabones.twin import bmode

    bone = bone_mesh()
    calib = geometry.released_calibration()
    true = frame_pose(-3.0)
    img, _, _ = bmode.render(bmode.Scene.from_meshes(bone), true @ calib, SHAPE[1], SHAPE[0], SPACING,
                             np.random.default_rng(0))
    pts, _ = cloud.surface_points(bone, 6.0, seed=0)
    err = np.array([0.6, -0.5, 0.4, 0.5, -0.6, 0.4])
    recorded = true @ geometry.invert_transform(geometry.perturbation(err[:3], err[3:]))
    truth = label.full_label(img.shape, true, calib, SPACING, pts)
    before = contour.label_distance_mm(label.full_label(img.shape, recorded, calib, SPACING, pts), truth, SPACING)
    res = optimize.optimize_frame(img, recorded, calib, SPACING, pts, 0.01, seed=0, maxiter=60,
                                  region="first_hit")
    after = contour.label_distance_mm(label.full_label(img.shape, res.pose, calib, SPACING, pts), truth, SPACING)
    assert res.status == "kept"
    assert before > 0.3 and after < 0.5 * before, (before, after)


# ----------------------------------------------------------------------------- warm-started sweeps (issue 14)


def test_compact_kernel_gives_the_same_pixel_sets_as_band(scene):
    """``band_pixels`` (the large-frame kernel) and ``band`` give the same (member, pixel) pairs."""
    pose = frame_pose(2.0)
    img = synthetic.synthetic_image(pose, scene["calib"], SPACING, SHAPE, scene["points"], scene["normals"])
    for region in ("full", "first_hit"):
        obj = objective.FrameObjective(img, pose, scene["calib"], SPACING, scene["points"], region=region)
        x = np.random.default_rng(4).uniform(-1, 1, (6, 20))
        x[:, 0] = 0.0
        d = obj.deltas(x)
        m1, p1, _ = obj.band(d)
        m2, p2 = obj.band_pixels(d)
        assert len(m2) == len(set(zip(m2.tolist(), p2.tolist())))  # unique pairs
        assert set(zip(m1.tolist(), p1.tolist())) == set(zip(m2.tolist(), p2.tolist()))
        mean1, n1 = obj.band_mean(m1, p1, 20)
        mean2, n2 = obj.band_mean(m2, p2, 20)
        assert np.array_equal(n1, n2) and np.allclose(mean1, mean2, atol=1e-12, rtol=0)


def test_compact_kernel_is_used_for_large_populations_and_stays_exact(scene, monkeypatch):
    pose = frame_pose(-1.0)
    img = synthetic.synthetic_image(pose, scene["calib"], SPACING, SHAPE, scene["points"], scene["normals"])
    obj = objective.FrameObjective(img, pose, scene["calib"], SPACING, scene["points"])
    x = np.random.default_rng(5).uniform(-1, 1, (6, 8))
    small = obj.value(x, 0.1)
    monkeypatch.setattr(objective, "_SCRATCH_CELLS", 0)  # force the compact kernel
    ref = [reference.reference_objective(x[:, j], img, pose, scene["calib"], SPACING, scene["tree"], 0.1)
           for j in range(8)]
    assert np.allclose(obj.value(x, 0.1), ref, atol=1e-12, rtol=0)
    assert np.allclose(small, ref, atol=1e-12, rtol=0)


def test_pattern_search_finds_the_maximum_of_a_smooth_function():
    target = np.array([0.3, -0.2, 0.5, -0.4, 0.1, 0.25])
    scale = np.array([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])

    def fun(p):  # (6, S) -> (S,), a tilted quadratic with a diagonal valley
        d = (p - target[:, None]) * scale[:, None]
        return -(d**2).sum(axis=0) - 0.5 * d[0] * d[1]

    x, fx, calls, members = sweep.pattern_search(fun, np.zeros(6), -np.ones(6), np.ones(6), [0.25] * 6, 1e-4,
                                                    max_calls=400)
    assert np.abs(x - target).max() < 2e-3 and calls <= 400 and members > calls
    # bounded: the maximum outside the box lands on its face
    x, _, _, _ = sweep.pattern_search(fun, np.zeros(6), -0.2 * np.ones(6), 0.2 * np.ones(6), [0.1] * 6, 1e-4,
                                         max_calls=400)
    assert x[2] == pytest.approx(0.2) and x[3] == pytest.approx(-0.2)


def _perturbed_frame(scene, z_mm, err, noise=0.0, seed=0):
    true = frame_pose(z_mm)
    calib, pts = scene["calib"], scene["points"]
    img = synthetic.synthetic_image(true, calib, SPACING, SHAPE, pts, scene["normals"], noise=noise, seed=seed)
    recorded = true @ geometry.invert_transform(geometry.perturbation(err[:3], err[3:]))
    return true, img, recorded


def test_warm_optimizer_recovers_a_known_perturbation_as_well_as_de(scene):
    """From a warm start near the correction (the previous frame's), the local search recovers the pose
    about as well as differential evolution over the whole box, at a small fraction of the evaluations."""
    calib, pts = scene["calib"], scene["points"]
    err = np.array([0.6, -0.5, 0.4, 0.5, -0.6, 0.4])
    true, img, recorded = _perturbed_frame(scene, -3.0, err)
    truth = label.full_label(SHAPE, true, calib, SPACING, pts)

    def error(pose):
        return contour.label_distance_mm(label.full_label(SHAPE, pose, calib, SPACING, pts), truth, SPACING)

    de = optimize.optimize_frame(img, recorded, calib, SPACING, pts, 0.01, seed=0)
    # the previous frame's correction: the same error, off by the slow drift of one frame
    warm = sweep.optimize_frame_warm(img, recorded, calib, SPACING, pts, 0.01, x0=0.8 * err, fallback=False)
    assert de.status == warm.status == "kept" and warm.path == "warm"
    before = error(recorded)
    assert before > 0.25
    assert error(warm.pose) < min(0.08, 0.3 * before) and error(de.pose) < 0.08
    assert error(warm.pose) <= error(de.pose) + 0.03
    assert warm.objective_optimized > warm.objective_initial
    assert warm.objective_optimized >= de.objective_optimized - 0.02
    assert warm.n_members < 0.1 * de.n_members


def test_warm_optimizer_never_scores_below_the_initial_pose(scene):
    calib, pts = scene["calib"], scene["points"]
    _, img, recorded = _perturbed_frame(scene, 1.0, np.array([0.3, 0.2, -0.2, 0.2, 0.3, -0.3]), noise=0.05)
    bad_start = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])  # a poor warm start, at the box corner
    res = sweep.optimize_frame_warm(img, recorded, calib, SPACING, pts, 0.1, x0=bad_start, fallback=False)
    assert res.objective_optimized >= res.objective_initial


def test_warm_optimizer_falls_back_to_de_when_validation_fails(scene):
    calib, pts = scene["calib"], scene["points"]
    err = np.array([0.9, -0.9, 0.9, 0.9, -0.9, 0.9])
    _, img, recorded = _perturbed_frame(scene, 1.0, err)
    kw = dict(max_correction_mm=0.2, seed=0)
    warm = sweep.optimize_frame_warm(img, recorded, calib, SPACING, pts, 0.01, x0=err, **kw)
    de = optimize.optimize_frame(img, recorded, calib, SPACING, pts, 0.01, **kw)
    assert warm.path == "warm+de" and warm.status == de.status == "discarded"
    assert np.array_equal(warm.x, de.x) and warm.nfev > de.nfev
    no_fb = sweep.optimize_frame_warm(img, recorded, calib, SPACING, pts, 0.01, x0=err, fallback=False, **kw)
    assert no_fb.path == "warm" and no_fb.status == "discarded" and np.isnan(no_fb.pose).all()


def _drifting_sweep(scene, n=6):
    """Frames along z whose recorded poses share a slowly drifting error (as tracking drift)."""
    frames, poses, truths = [], [], []
    for t in range(n):
        err = np.array([0.5, -0.4, 0.3, 0.4, -0.5, 0.3]) + 0.03 * t
        true, img, recorded = _perturbed_frame(scene, -4.0 + 1.5 * t, err, noise=0.03, seed=t)
        frames.append(img)
        poses.append(recorded)
        truths.append(true)
    return frames, np.array(poses), truths


@pytest.mark.parametrize("max_gap", [1, 2])
def test_sweep_continued_from_a_warm_start_equals_the_uncut_sweep(scene, max_gap):
    calib, pts = scene["calib"], scene["points"]
    frames, poses, truths = _drifting_sweep(scene)
    # a frame with no bone in view in the middle (the chain of warm starts breaks there when max_gap is 1)
    frames.insert(3, np.full(SHAPE, 80, np.uint8))
    poses = np.concatenate([poses[:3], frame_pose(500.0)[None], poses[3:]])
    kw = dict(max_correction_mm=1.0, min_label_fraction=0.5, max_gap=max_gap)
    seeds = [11, 12, 13, 14, 15, 16, 17]
    whole = sweep.optimize_sweep(frames, poses, calib, SPACING, pts, 0.01, seeds=seeds, **kw)
    paths = [r.path for r in whole]
    assert whole[3].status == "no_bone" and paths[0] == "de" and paths[1] == "warm"
    assert paths[4] == "de" if max_gap == 1 else paths[4].startswith("warm")
    for cut in (2, 4):  # cut after a kept frame, and right after the no-bone frame
        first = sweep.optimize_sweep(frames[:cut], poses[:cut], calib, SPACING, pts, 0.01, seeds=seeds[:cut], **kw)
        x0 = sweep.warm_start_after(first, max_gap=max_gap)
        rest = sweep.optimize_sweep(iter(frames[cut:]), poses[cut:], calib, SPACING, pts, 0.01, x0=x0,
                                       seeds=seeds[cut:], **kw)
        for a, b in zip(whole, first + rest, strict=True):
            assert (a.status, a.path) == (b.status, b.path)
            assert np.array_equal(a.x, b.x) and np.array_equal(a.pose, b.pose, equal_nan=True)
            assert np.array_equal(a.objective_optimized, b.objective_optimized, equal_nan=True)
    # and the sweep recovers the labels (frames with bone: all but the inserted one)
    def error(pose, true):
        truth = label.full_label(SHAPE, true, calib, SPACING, pts)
        return contour.label_distance_mm(label.full_label(SHAPE, pose, calib, SPACING, pts), truth, SPACING)

    with_bone = [0, 1, 2, 4, 5, 6]
    after = [error(whole[i].pose, t) for i, t in zip(with_bone, truths)]
    before = [error(poses[i], t) for i, t in zip(with_bone, truths)]
    assert np.mean(after) < 0.4 * np.mean(before), (after, before)


def test_warm_start_after_skips_discarded_frames():
    kept = optimize.FrameResult("kept", x=np.arange(6.0))
    assert sweep.warm_start_after([]) is None
    assert np.array_equal(sweep.warm_start_after([], np.ones(6)), np.ones(6))
    assert np.array_equal(sweep.warm_start_after([kept, optimize.FrameResult("discarded", x=np.ones(6)),
                                                     optimize.FrameResult("no_bone")], max_gap=3), np.arange(6.0))


def test_optimize_sweep_rejects_mismatched_inputs(scene):
    with pytest.raises(ValueError, match="images for"):
        sweep.optimize_sweep([np.zeros(SHAPE, np.uint8)], np.stack([frame_pose()] * 2), scene["calib"], SPACING,
                                scene["points"], 0.1, x0=np.zeros(6))


def test_warm_start_after_respects_the_gap():
    kept, gone = optimize.FrameResult("kept", x=np.arange(6.0)), optimize.FrameResult("discarded", x=np.ones(6))
    assert sweep.warm_start_after([kept, gone]) is None  # max_gap 1: only the frame just before
    assert np.array_equal(sweep.warm_start_after([kept, gone], max_gap=2), np.arange(6.0))
    assert sweep.warm_start_after([gone], np.ones(6)) is None
    assert np.array_equal(sweep.warm_start_after([gone], np.ones(6), max_gap=2), np.ones(6))


# ----------------------------------------------------------------------------- outputs apart, content keys


def _checksums(root: Path) -> dict:
    """Every file under ``root`` (relative name) -> SHA-256 of its bytes."""
    import hashlib

    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def test_run_leaves_the_input_dataset_byte_identical(tmp_path):
    """02 used to rewrite the user's tracking.csv and write Labels/ into data_root."""
    paths = make_twin(tmp_path, n_frames=3)
    before = _checksums(paths.dataset)
    out = batch.run(paths, labeling_params(lambda_value=0.1), seed=0)
    assert _checksums(paths.dataset) == before  # not one input file changed, none added or removed
    rec = dataset.read_specimen(paths.dataset / "specimen01", paths.derived / "specimen01").records[0]
    kept = sorted(out.report.query("status == 'kept'")["timestamp"])
    assert kept and list(rec.labelled_timestamps(dataset.LABELS)) == kept
    assert set(OPTIMIZED_COLUMNS) <= set(pd.read_csv(rec.poses_csv).columns)
    assert (rec.out / REPORT).is_file()


def test_a_stricter_rerun_leaves_exactly_its_kept_frames(tmp_path):
    """A rerun with a stricter max_correction_mm used to leave the first run's extra labels beside the new ones."""
    paths = make_twin(tmp_path, n_frames=5)
    # optimizer de: each frame's correction is its own, so the stricter limit drops exactly the larger ones
    # (warm-started, a newly discarded frame would change its successors' starts)
    P = labeling_params(lambda_value=0.1, optimizer="de")
    first = batch.run(paths, P, seed=0).report
    kept1 = first.query("status == 'kept'")
    assert len(kept1) >= 2
    strict = float(np.sort(kept1["correction_mm"].to_numpy())[len(kept1) // 2 - 1]) + 1e-9  # drop the upper half
    second = batch.run(paths, replace(P, max_correction_mm=strict), seed=0).report
    kept2 = sorted(second.query("status == 'kept'")["timestamp"])
    assert 1 <= len(kept2) < len(kept1)
    rec = dataset.read_specimen(paths.dataset / "specimen01", paths.derived / "specimen01").records[0]
    for kind in (dataset.LABELS, dataset.LABELS_FULL):
        assert list(rec.labelled_timestamps(kind)) == kept2
        assert sorted(p.name for p in rec.label_dir(kind).iterdir()) == [f"{t}_label.png" for t in kept2]
    assert not [p for p in rec.out.iterdir() if p.name.startswith(".")]  # no temporary folder left
    track = dataset.read_tracking(rec.poses_csv, allow_missing_pose=True)
    has_opt = np.isfinite(track[list(OPTIMIZED_COLUMNS)].to_numpy(float)).all(axis=1)
    assert sorted(track.loc[has_opt, "timestamp"]) == kept2
    assert sorted(pd.read_csv(rec.out / REPORT).query("status == 'kept'")["timestamp"]) == kept2


def test_a_replaced_image_is_relabelled_and_the_others_are_not(tmp_path):
    """A kept frame's image replaced by a black PNG used to keep its old label and correction (no content in keys)."""
    paths = make_twin(tmp_path, n_frames=4)
    # one registration frame (the first): a changed image elsewhere leaves the sweep's registration as it was
    # optimizer de: frames independent (warm-started, the next frame's start, hence its chunk, changes too)
    # min_echo_level 0: the black image is labelled (not skipped as no_echo), so that its measured intensity shows
    P = labeling_params(lambda_value=0.1, chunk_size=1, registration_frames=1, optimizer="de", min_echo_level=0.0)
    first = batch.run(paths, P, seed=0).report.set_index("timestamp")
    kept = [t for t in first.index[first["status"] == "kept"] if t != first.index[0]]
    assert kept
    t = kept[0]
    rec = dataset.read_specimen(paths.dataset / "specimen01", paths.derived / "specimen01").records[0]
    chunks = sorted(paths.cache("02_labeling").rglob("chunk_*.npz"))
    mtimes = {f: f.stat().st_mtime_ns for f in chunks}
    img = rec.image_path(t)
    dataset.write_image(img, np.zeros(SHAPE, np.uint8))
    again = batch.run(paths, P, seed=0).report.set_index("timestamp")
    row0, row1 = first.loc[t], again.loc[t]
    changed = (row1["status"] != row0["status"]) or not np.isclose(row1["correction_mm"], row0["correction_mm"])
    assert changed, "the frame whose image changed was not labelled anew"
    assert row1["intensity_initial"] == 0.0  # measured on the black image
    i = list(first.index).index(t)
    redone = [f for f in chunks if f.stat().st_mtime_ns != mtimes[f]]
    assert [f.name for f in redone] == [f"chunk_{i:04d}.npz"]  # only the changed frame's chunk
    cols = ["status", "correction_mm", "rot_x_deg", "trans_z_mm"]
    pd.testing.assert_frame_equal(again.drop(index=t)[cols], first.drop(index=t)[cols])


def test_a_replaced_image_in_a_sweep_redoes_its_chunk_and_those_after_only(tmp_path):
    """Warm-started: the changed frame's chunk and the later ones (their warm start may change) are redone."""
    paths = make_twin(tmp_path, n_frames=4)
    P = labeling_params(lambda_value=0.1, chunk_size=1, registration_frames=1, min_echo_level=0.0)  # as above
    first = batch.run(paths, P, seed=0).report.set_index("timestamp")
    t = first.index[2]
    chunks = sorted(paths.cache("02_labeling").rglob("chunk_*.npz"))
    mtimes = {f: f.stat().st_mtime_ns for f in chunks}
    rec = dataset.read_specimen(paths.dataset / "specimen01", paths.derived / "specimen01").records[0]
    dataset.write_image(rec.image_path(t), np.zeros(SHAPE, np.uint8))
    again = batch.run(paths, P, seed=0).report.set_index("timestamp")
    assert again.loc[t, "intensity_initial"] == 0.0
    assert [f.stat().st_mtime_ns == mtimes[f] for f in chunks][:2] == [True, True]  # the frames before: kept as they were
    assert chunks[2].stat().st_mtime_ns != mtimes[chunks[2]]
    cols = ["status", "correction_mm", "rot_x_deg", "trans_z_mm", "path"]
    pd.testing.assert_frame_equal(again.iloc[:2][cols], first.iloc[:2][cols])


def test_solved_cold_known_answers():
    warm = np.zeros(6)
    assert sweep.solved_cold(None, 1, 1, 3)  # no warm start
    assert sweep.solved_cold(warm, 2, 1, 3) and not sweep.solved_cold(warm, 2, 2, 3)  # the chain broken past max_gap
    assert not sweep.solved_cold(warm, 1, 1, 3, cold_every=0)  # 0: no periodic restart
    assert [sweep.solved_cold(warm, 1, 1, i, cold_every=3) for i in range(7)] == [True, False, False, True, False,
                                                                                False, True]


def test_periodic_cold_restarts_count_labelled_frames_not_rows(tmp_path):
    """With a frame stride of 2 and ``warm_cold_every: 2``, every 2nd *labelled* frame is solved cold (rows 0, 4,
    8), in the pipeline's chunks as in ``optimize_sweep``; counting rows would have made every frame cold."""
    paths = make_twin(tmp_path, n_frames=10)
    P = labeling_params(lambda_value=0.1, chunk_size=2, registration_frames=1, min_echo_level=0.0, frame_stride=2,
                        warm_cold_every=2, max_correction_mm=5.0, min_label_fraction=0.0, halves_check=None)
    rep = batch.run(paths, P, seed=0).report.sort_values("timestamp")
    assert len(rep) == 5 and (rep["status"] == "kept").all(), rep[["status", "message"]]
    assert rep["path"].tolist() == ["de", "warm", "de", "warm", "de"]


def test_the_registration_is_not_redone_for_another_frame_optimiser_setting(tmp_path):
    """The registration's cache key holds the parameters it reads only (``tasks.REGISTRATION_FIELDS``)."""
    paths = make_twin(tmp_path, n_frames=4)
    P = labeling_params(lambda_value=0.1, chunk_size=2, registration_frames=2, min_echo_level=0.0)
    batch.run(paths, P, seed=0)
    (reg,) = paths.cache("02_labeling").rglob("registration.json")
    before = reg.stat().st_mtime_ns
    batch.run(paths, replace(P, warm_cold_every=2, warm_max_calls=30, max_correction_mm=0.8), seed=0)
    assert reg.stat().st_mtime_ns == before  # read from the cache
    batch.run(paths, replace(P, registration_maxiter=P.registration_maxiter + 1), seed=0)
    assert reg.stat().st_mtime_ns != before  # a setting the registration reads: redone
    assert set(tasks.REGISTRATION_FIELDS) <= set(P.as_dict())


def test_metrics_of_a_labelling_result_known_answer():
    """``batch.metrics`` on a hand-made result: counts, rates, means and the registration block."""
    rep = pd.DataFrame({
        "specimen": ["s1"] * 5, "record": ["r1"] * 5, "timestamp": [1, 2, 3, 4, 5],
        "status": ["kept", "kept", "discarded", "discarded", "bad_pose"],
        "message": ["", "", "mean fiducial correction 1.2 mm > 1 mm",
                    "the correction raises the echo on one half of the bone's scan lines only (...)", "row 6: NaN"],
        "correction_mm": [0.2, 0.4, 1.2, 0.3, np.nan], "seconds_optimize": [0.1, 0.3, 0.5, 0.3, np.nan],
        "path": ["warm", "warm", "de", "warm", None]})
    regs = {"s1/r1": {"mean_displacement_mm": 0.5, "similarity_initial": 0.2, "similarity_registered": 0.3},
            "s1/r2": {"mean_displacement_mm": 1.5, "similarity_initial": float("nan"),
                      "similarity_registered": 0.5}}
    result = batch.LabelingResult(report=rep, lam=0.1, objective_region="first_hit", selection=None,
                                  registrations=regs, calibration=(np.eye(4), (0.2, 0.2)), skipped_inputs=[],
                                  settings={"gamma_mm": 0.3})
    m = batch.metrics(result)
    assert m["n_frames"] == 5 and m["status_counts"]["kept"] == 2 and m["status_counts"]["bad_pose"] == 1
    assert m["discard_rate"] == pytest.approx(0.5)  # 2 of the 4 optimised frames
    assert m["kept_mean_fiducial_correction_mm"] == pytest.approx(0.3)
    assert m["discarded_for_correction"] == 1 and m["discarded_for_halves"] == 1 and m["discarded_for_shrinking"] == 0
    assert m["seconds_per_frame"] == pytest.approx(0.3)
    assert m["path_share"] == {"de": 0.25, "warm": 0.75}
    assert m["lambda"] == 0.1 and m["objective_region"] == "first_hit" and m["lambda_selection"] is None
    assert m["registration"] == {"mean_displacement_mm": 1.0, "similarity_initial": pytest.approx(0.2),
                                 "similarity_registered": pytest.approx(0.4), "n_sweeps": 2}
    assert m["settings"] == {"gamma_mm": 0.3}
    assert [f["timestamp"] for f in m["skipped_frames"]] == [5]
    # the stage contract's check: passes here, names what fails
    P = labeling_params(max_correction_mm=1.0)
    assert batch.check(replace(result, params=P)) is None
    with pytest.raises(AssertionError, match="more than once"):
        batch.check(replace(result, report=pd.concat([rep, rep.iloc[:1]], ignore_index=True)))
    with pytest.raises(AssertionError, match="max_correction_mm = 0.25"):
        batch.check(replace(result, params=replace(P, max_correction_mm=0.25)))
    assert batch.figures(result) == {}  # no lambda chosen, no paths to redraw frames from
