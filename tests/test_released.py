"""The released objective (ultrabones.labels.released): fast = its KD-tree definition, upstream's preparation
and skip rules, the optimiser, and the labelling stage with ``objective: released``.

Synthetic frames: the two-ellipsoid scene of ``test_labeling`` (known model, pose and image). Real frames: the
vendored six frames of a real fibula sweep (``tests/fixtures/real_sweep``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from ultrabones.core import dataset, geometry
from ultrabones.core.errors import ParamsError
from ultrabones.labels import batch, cloud, label, released
from ultrabones.twin.synthetic import synthetic_image

from test_labeling import SHAPE, SPACING, bone_mesh, frame_pose
from test_labeling_real import PARAMS as REAL_PARAMS, real_copy

FIXTURE = Path(__file__).parent / "fixtures" / "real_sweep"


@pytest.fixture(scope="module")
def synthetic():
    mesh = bone_mesh()
    pts, nrm = cloud.surface_points(mesh, 8.0, seed=1)
    dense = released.sample_ct(mesh, 200_000, seed=2)
    calib = geometry.released_calibration()
    true = frame_pose(2.0)
    img = synthetic_image(true, calib, SPACING, SHAPE, pts, nrm, seed=3)
    return {"dense": dense, "calib": calib, "true": true, "image": img}


@pytest.fixture(scope="module")
def real():
    calib, spacing, _ = dataset.read_calibration(FIXTURE)
    dense = released.sample_ct(dataset.read_mesh(FIXTURE / "specimen01" / "CT_bone_model.stl"), 1_000_000, seed=0)
    rec = dataset.read_specimen(FIXTURE / "specimen01").records[0]
    tab = pd.read_csv(rec.tracking_csv)
    frames = [(dataset.read_image(rec.image_path(int(r.timestamp))), r[list(geometry.POSE_COLUMNS)].to_numpy(float))
              for _, r in tab.iterrows()]
    return {"calib": calib, "spacing": spacing, "dense": dense, "frames": frames}


def _candidates(p0, n, seed):
    """``n`` parameter vectors in the +-1 mm / +-1 degree box around ``p0``: the corners' signs included."""
    rng = np.random.default_rng(seed)
    out = p0[:, None] + rng.uniform(-1, 1, (6, n))
    out[:, 1] = p0 + np.sign(rng.standard_normal(6))  # a corner of the box
    out[:, 0] = p0
    return out


def _assert_fast_equals_reference(fr, n=12, seed=0):
    obj = released.ReleasedObjective(fr)
    tree = cKDTree(fr.ct_points)
    cand = _candidates(fr.params0, n, seed)
    fast = obj.score(cand)
    ref = np.array([released.reference_score(cand[:, j], fr, tree) for j in range(n)])
    _, count, _ = obj.parts(cand)
    assert (count > 0).sum() >= n // 2  # most candidates meet the bone: the test compares real sums
    assert (ref[count == 0] == 0).all()
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-9)
    for j in range(3):  # one member at a time gives the same
        assert abs(obj.score(cand[:, j]) - ref[j]) <= 1e-9


# ----------------------------------------------------------------------------- fast = reference


def test_fast_score_equals_kdtree_reference_on_synthetic_frames(synthetic):
    for k, z in enumerate([-6.0, 2.0, 9.0]):
        pose = frame_pose(z) @ geometry.perturbation([0.4, -0.3, 0.2], [0.3, 0.2, -0.4])
        img = synthetic_image(frame_pose(z), synthetic["calib"], SPACING, SHAPE,
                                    *cloud.surface_points(bone_mesh(), 8.0, seed=1), seed=k)
        fr = released.prepare_frame(img, geometry.params_from_pose(pose), synthetic["calib"], SPACING,
                                    synthetic["dense"])
        assert not fr.skip and len(fr.ct_points) > 100
        _assert_fast_equals_reference(fr, seed=k)


def test_fast_score_equals_kdtree_reference_on_real_frames(real):
    for k, (img, p0) in enumerate(real["frames"][::2]):
        fr = released.prepare_frame(img, p0, real["calib"], real["spacing"], real["dense"])
        assert not fr.skip and len(fr.image_points) > 1000
        _assert_fast_equals_reference(fr, n=8, seed=k)


# ----------------------------------------------------------------------------- upstream's preparation


def test_preparation_keeps_odd_bright_pixels_near_the_ct_surface(synthetic):
    img, calib, dense = synthetic["image"], synthetic["calib"], synthetic["dense"]
    p0 = geometry.params_from_pose(synthetic["true"])
    fr = released.prepare_frame(img, p0, calib, SPACING, dense)
    assert len(fr.rows) > 50
    assert (fr.rows % 2 == 1).all() and (fr.cols % 2 == 1).all()  # even rows and columns dropped
    np.testing.assert_array_equal(fr.intensity, img[fr.rows, fr.cols] / 255.0)
    assert (img[fr.rows, fr.cols] >= 10).all()
    # the definition, pixel by pixel: odd pixels, grey >= 10, centre within 2.5 mm of C at the recorded pose
    h, w = SHAPE
    vv, uu = np.mgrid[1:h:2, 1:w:2]
    vv, uu = vv.ravel(), uu.ravel()
    ip = np.stack([(uu + 0.5) * SPACING[0], (vv + 0.5) * SPACING[1], np.zeros(len(uu))], axis=1)
    d, _ = cKDTree(dense).query(geometry.transform_points(synthetic["true"] @ calib, ip))
    want = (img[vv, uu] >= 10) & (d <= 2.5)
    assert sorted(zip(vv[want], uu[want])) == sorted(zip(fr.rows, fr.cols))
    # CT points: those within 2 mm of an image point at the recorded pose, every one of them
    pts_ct = geometry.transform_points(synthetic["true"] @ calib, fr.image_points)
    d_ct, _ = cKDTree(pts_ct).query(dense)
    assert len(fr.ct_points) == int((d_ct < 2.0).sum()) > 100
    assert fr.min_distance_mm <= 0.9 and fr.bright_mean >= 0.45 and fr.skip == ""


def test_skip_rules_dim_frame_and_far_plane(synthetic):
    img, calib, dense = synthetic["image"], synthetic["calib"], synthetic["dense"]
    p0 = geometry.params_from_pose(synthetic["true"])
    dim = (img.astype(float) * 0.4).astype(np.uint8)  # brightest 5% about 0.4: below 0.45
    fr = released.prepare_frame(dim, p0, calib, SPACING, dense)
    assert fr.skip.startswith("released: mean of the brightest 5%") and fr.bright_mean < 0.45
    far = p0 + np.array([0, 0, 300.0, 0, 0, 0])  # the plane far from the bone
    fr = released.prepare_frame(img, far, calib, SPACING, dense)
    assert fr.skip.startswith("released: no image point within 2.5 mm") and len(fr.image_points) == 0
    with pytest.raises(ValueError, match="skipped"):
        released.optimize_frame(fr)


def test_bad_inputs_are_refused_with_a_message(synthetic):
    p0 = geometry.params_from_pose(synthetic["true"])
    with pytest.raises(ValueError, match="uint8"):
        released.prepare_frame(synthetic["image"].astype(float), p0, synthetic["calib"], SPACING, synthetic["dense"])
    with pytest.raises(ParamsError, match="released_ct_samples"):
        released.sample_ct(bone_mesh(), 0, seed=0)


# ----------------------------------------------------------------------------- the optimiser


def test_optimiser_brings_every_image_point_within_the_radius_and_beats_the_truth(synthetic):
    calib, dense, true = synthetic["calib"], synthetic["dense"], synthetic["true"]
    # the bone's intersection at the true pose drawn bright on black: the image points are the bone's only
    img = (label.full_label(SHAPE, true, calib, SPACING, dense, 0.3) * 230).astype(np.uint8)
    recorded = true @ geometry.perturbation([0.0, 0.0, 0.0], [0.6, -0.5, 0.0])  # in-plane shift: 0.78 mm
    p0 = geometry.params_from_pose(recorded)
    fr = released.prepare_frame(img, p0, calib, SPACING, dense)
    obj = released.ReleasedObjective(fr)
    p_true = geometry.params_from_pose(true)
    _, n_rec, _ = obj.parts(p0)
    _, n_true, _ = obj.parts(p_true)
    assert n_true[0] == len(fr.image_points) > n_rec[0]  # at the truth every image point is within 0.5 mm
    fit = released.optimize_frame(fr, popsize=8, maxiter=30)
    best = geometry.pose_from_params(fit.params)
    np.testing.assert_allclose(recorded @ geometry.perturbation(fit.x[:3], fit.x[3:]), best, atol=1e-9)
    assert np.all(np.abs(fit.params - p0) <= 1.0 + 1e-12)  # within the box
    # The truth lies in the box, so the optimum scores at least as well. With a 0.5 mm radius every image point
    # can be brought within it by a smaller move than the truth's (the fiducial term pays for less): the
    # objective's optimum is not the truth (0.75 mm from it here), which is why issue 29 compares on the twin.
    assert fit.score <= obj.score(p_true)
    _, n_fit, fid = obj.parts(fit.params)
    assert n_fit[0] == len(fr.image_points)
    assert fid[0] < float(geometry.mean_fiducial_displacement(recorded, true))


# ----------------------------------------------------------------------------- the stage


def test_stage_labels_real_frames_with_the_released_objective(tmp_path):
    paths = real_copy(tmp_path)
    P = dataclasses.replace(REAL_PARAMS, objective="released", released_ct_samples=300_000, popsize=4, maxiter=4,
                            tol=0.05, optimizer="de", halves_check=None, min_label_fraction=0.0, lambda_value=None,
                            frame_stride=5)
    out = batch.run(paths, P, seed=0)
    rep = out.report
    assert len(rep) == 2 and set(rep["path"]) == {"released"} and np.isnan(out.lam) and out.selection is None
    assert set(rep["status"]) <= {"kept", "discarded"}
    ok = rep[rep["status"] == "kept"]
    assert len(ok) >= 1 and (ok["objective_optimized"] <= ok["objective_initial"]).all()
    assert (ok["correction_mm"] <= 1.0).all() and (ok["n_label_optimized"] > 0).all()
    m = batch.summarize(rep)
    assert m["discarded_by_released_rules"] == 0 and m["seconds_per_frame"] > 0
    # the labels are written like Eq. 2's: one Labels/ PNG per kept frame
    rec_out = paths.derived / "specimen01" / "record01"
    assert len(list((rec_out / "Labels").glob("*.png"))) == len(ok)
