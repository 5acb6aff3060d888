"""The optional torch path of the labelling (ultrabones.labels.torch_objective) against the numpy path.

Runs on CPU torch (a GPU is never needed): the batched objective must give the numpy objective's pixel counts
exactly and its means and Eq. 2 values to rounding, on synthetic frames of two sizes and spacings, both regions,
populations inside and beyond the bounds, a frame with no near points, and two real frames; the lock-step
optimiser must recover a known perturbation as :func:`optimize.optimize_frame` does: with scipy's random draws it
ends at scipy's correction after scipy's number of generations, on synthetic and real frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from test_labeling import SHAPE, SPACING, bone_mesh, frame_pose, labeling_params, make_twin
from ultrabones.core import dataset, geometry
from ultrabones.core.errors import ParamsError
from ultrabones.labels import batch, cloud, label, objective, optimize
from ultrabones.labels import torch_objective as tob
from ultrabones.labels.tasks import frame_device
from ultrabones.twin import contour, synthetic

REAL = Path(__file__).parent / "fixtures" / "real_sweep"
LAM = 0.3  # 1/mm: large enough that the fiducial term weighs in the comparison of values


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tests share the cores with other jobs: torch's thread pool oversubscribed is slower than one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def scene():
    pts, nrm = cloud.surface_points(bone_mesh(), 8.0, seed=1)
    return {"points": pts, "normals": nrm, "calib": geometry.released_calibration()}


def _objectives(scene):
    """Five frames: two sizes, two spacings and gammas, both regions, one with no near points."""
    calib, pts, nrm = scene["calib"], scene["points"], scene["normals"]
    frames = [  # (plane height mm, (H, W) px, spacing mm, gamma mm, region)
        (2.0, SHAPE, SPACING, 0.3, "full"),
        (-3.0, (80, 150), SPACING, 0.3, "first_hit"),
        (0.0, (90, 110), (0.25, 0.15), 0.4, "first_hit"),
        (500.0, SHAPE, SPACING, 0.3, "full"),  # far above the bones: no near points
        (-1.0, (80, 150), SPACING, 0.3, "full"),
    ]
    out = []
    for k, (z, shape, spacing, gamma, region) in enumerate(frames):
        pose = frame_pose(z)
        img = synthetic.synthetic_image(pose, calib, spacing, shape, pts, nrm, gamma_mm=gamma, seed=k)
        out.append(objective.FrameObjective(img, pose, calib, spacing, pts, gamma, region=region))
    return out


def _assert_equal_to_numpy(objs, xs, bo):
    d = tob.difference_from_numpy(bo, xs, LAM)
    assert all(d["counts_equal"]), f"pixel counts differ on frames {[f for f, e in enumerate(d['counts_equal']) if not e]}"
    assert d["mean"] <= 1e-12 and d["value"] <= 1e-12, d
    return d["mean"]


def test_batched_objective_equals_the_numpy_objective_on_synthetic_frames(scene):
    objs = _objectives(scene)
    assert objs[3].n_points == 0 and min(o.n_points for k, o in enumerate(objs) if k != 3) > 1000
    rng = np.random.default_rng(0)
    xs = rng.uniform(-1.0, 1.0, (len(objs), 6, 24))  # within the bounds
    xs[:, :, 0] = 0.0  # no correction
    xs[:, :, 1] = [1, -1, 1, -1, 1, -1]  # a corner of the box
    bo = tob.BatchedObjective(objs, "cpu")
    _assert_equal_to_numpy(objs, xs, bo)
    # beyond the bounds (the points selected for the bounds, as the numpy path): still the same sets
    _assert_equal_to_numpy(objs, rng.uniform(-2.5, 2.5, (len(objs), 6, 10)), bo)
    # small blocks of members and hits: the same result
    small = tob.BatchedObjective(objs, "cpu", block_cells=3000)
    assert np.array_equal(small.intensity(xs)[1], bo.intensity(xs)[1])
    mean, count = bo.intensity(xs)
    assert (count[3] == 0).all() and (mean[3] == 0).all()
    assert (count[[0, 1, 2, 4]] > 50).all()


def test_inactive_frames_are_skipped_and_the_others_unchanged(scene):
    objs = _objectives(scene)
    xs = np.random.default_rng(1).uniform(-1, 1, (len(objs), 6, 6))
    bo = tob.BatchedObjective(objs, "cpu")
    active = np.array([True, False, True, False, False])
    mean, count = bo.intensity(xs, active)
    full_mean, full_count = bo.intensity(xs)
    assert (count[~active] == 0).all() and (mean[~active] == 0).all()
    assert np.array_equal(count[active], full_count[active]) and np.array_equal(mean[active], full_mean[active])
    with pytest.raises(ValueError, match="xs must be"):
        bo.intensity(xs[:2])


def test_batched_objective_equals_the_numpy_objective_on_real_frames():
    """Two frames of the real fibula sweep (950 x 811 px, 0.054 mm), one in each region."""
    spec = dataset.read_specimen(REAL / "specimen01")
    rec = spec.records[0]
    tab = dataset.read_tracking(rec.tracking_csv)
    poses, ts = dataset.poses(tab), tab["timestamp"].to_numpy()
    calib, spacing, _ = dataset.read_calibration(REAL)
    pts, _ = cloud.surface_points(dataset.read_mesh(spec.ct_model), 6.0, seed=0)
    objs = [objective.FrameObjective(dataset.read_image(rec.image_path(int(ts[k]))), poses[k], calib, spacing, pts,
                                 region=region) for k, region in ((0, "full"), (3, "first_hit"))]
    assert min(o.n_points for o in objs) > 1000
    xs = np.random.default_rng(2).uniform(-1.2, 1.2, (2, 6, 12))
    xs[:, :, 0] = 0.0
    _assert_equal_to_numpy(objs, xs, tob.BatchedObjective(objs, "cpu"))
    # and the lock-step optimiser ends where scipy's does, frame by frame (noisy real images, both regions)
    kw = dict(popsize=4, maxiter=15, tol=0.01, max_correction_mm=1.0, min_label_fraction=0.5, halves_check="first_hit")
    batched = tob.optimize_frames_batched(objs, 0.1, seeds=[3, 4], device="cpu", **kw)
    for o, b, seed in zip(objs, batched, (3, 4)):
        de = optimize.optimize_frame(None, o.pose, calib, spacing, pts, 0.1, seed=seed, objective=o, **kw)
        assert b.status == de.status and b.nfev == de.nfev and np.allclose(b.x, de.x, rtol=0, atol=1e-9), (b, de)


def test_batched_optimiser_recovers_a_known_perturbation_as_well_as_scipy(scene):
    """A noise-free frame drawn at the true pose, recorded off by a known perturbation (test_labeling's case).

    The measure is the label error (mean distance from the corrected full label to the true one): the image
    determines the label, not every degree of freedom of the pose (motions along the bones barely change the
    cut, and move fiducials some 100 mm from the image by up to ~1 mm: scipy's own optimum lies 0.4-1 mm from the
    true pose at the fiducials on these frames). Tolerances, in pixels of 0.2 mm: a recovered pose puts the band
    within half a pixel (0.1 mm) of the truth, and the batched optimiser's error is within a quarter pixel
    (0.05 mm) of scipy's differential evolution with the same settings.
    """
    calib, pts, nrm = scene["calib"], scene["points"], scene["normals"]
    err = np.array([0.6, -0.5, 0.4, 0.5, -0.6, 0.4])  # deg, mm
    cases = []
    for z, e in ((-3.0, err), (4.0, 0.8 * np.roll(err, 2))):
        true = frame_pose(z)
        img = synthetic.synthetic_image(true, calib, SPACING, SHAPE, pts, nrm, noise=0.0)
        recorded = true @ geometry.invert_transform(geometry.perturbation(e[:3], e[3:]))
        cases.append((true, img, recorded))
    objs = [objective.FrameObjective(img, rec, calib, SPACING, pts) for _, img, rec in cases]
    far = objective.FrameObjective(cases[0][1], frame_pose(500.0), calib, SPACING, pts)  # no bone in view
    res = tob.optimize_frames_batched(objs + [far], 0.01, seeds=[0, 1, 2], device="cpu")
    assert res[2].status == "no_bone" and res[2].path == "de-batched"
    for k, (true, img, recorded) in enumerate(cases):
        truth = label.full_label(SHAPE, true, calib, SPACING, pts)

        def error(pose):
            return contour.label_distance_mm(label.full_label(SHAPE, pose, calib, SPACING, pts), truth, SPACING)

        de = optimize.optimize_frame(img, recorded, calib, SPACING, pts, 0.01, seed=k)
        r = res[k]
        assert r.status == de.status == "kept" and r.path == "de-batched"
        before = error(recorded)
        assert before > 0.25
        assert error(r.pose) < min(0.1, 0.3 * before), (before, error(r.pose))
        assert error(r.pose) <= error(de.pose) + 0.05
        # scipy's draws in scipy's order: the same correction, after the same number of generations
        assert np.allclose(r.x, de.x, rtol=0, atol=1e-9) and r.nfev == de.nfev, (r.x, de.x, r.nfev, de.nfev)
        assert r.objective_optimized > r.objective_initial
        assert r.nfev >= 2 and r.n_members == r.nfev * 15 * 6 and r.seconds > 0
        assert np.allclose(r.pose, recorded @ geometry.perturbation(r.x[:3], r.x[3:]))
    # seeded and deterministic
    again = tob.optimize_frames_batched(objs, 0.01, seeds=[0, 1], device="cpu", popsize=4, maxiter=10)
    twice = tob.optimize_frames_batched(objs, 0.01, seeds=[0, 1], device="cpu", popsize=4, maxiter=10)
    other = tob.optimize_frames_batched(objs, 0.01, seeds=[5, 6], device="cpu", popsize=4, maxiter=10)
    assert all(np.array_equal(a.x, b.x) and a.nfev == b.nfev for a, b in zip(again, twice))
    assert not np.array_equal(again[0].x, other[0].x)


def test_batched_optimiser_validates_as_optimize_frame(scene):
    """A correction above max_correction_mm is discarded with optimize_frame's reason; no frames, no results."""
    calib, pts, nrm = scene["calib"], scene["points"], scene["normals"]
    true = frame_pose(1.0)
    e = np.array([0.9, -0.9, 0.9, 0.9, -0.9, 0.9])
    img = synthetic.synthetic_image(true, calib, SPACING, SHAPE, pts, nrm, noise=0.0)
    recorded = true @ geometry.invert_transform(geometry.perturbation(e[:3], e[3:]))
    obj = objective.FrameObjective(img, recorded, calib, SPACING, pts)
    r, = tob.optimize_frames_batched([obj], 0.01, seeds=[0], max_correction_mm=0.2, popsize=4, maxiter=20)
    assert r.status == "discarded" and r.reason.startswith("mean fiducial correction") and np.isnan(r.pose).all()
    assert tob.optimize_frames_batched([], 0.01) == []
    with pytest.raises(ValueError, match="seeds"):
        tob.optimize_frames_batched([obj], 0.01, seeds=[0, 1])


def test_device_parameter_is_validated_and_resolved(monkeypatch):
    assert labeling_params().device is None and frame_device(labeling_params()) is None
    with pytest.raises(ParamsError, match=r"labeling\.device"):
        labeling_params(device="gpu")
    assert tob.resolve_device(None) is None and tob.resolve_device("cpu") == "cpu"
    assert frame_device(labeling_params(device="cpu", optimizer="de")) == "cpu"
    assert frame_device(labeling_params(device="cpu", optimizer="sweep")) is None  # the sweep stays numpy
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tob.resolve_device("auto") is None  # no CUDA: the numpy path
    with pytest.raises(ParamsError, match=r"labeling\.device: 'cuda'.*no CUDA device"):
        labeling_params(device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert tob.resolve_device("auto") == "cuda"


def test_label_frames_on_the_torch_path_keep_frames_and_switching_device_relabels(tmp_path):
    """optimizer de with device cpu: the chunks' frames are optimised together, labelled and kept; the
    device is part of the chunk keys, so a rerun with device null relabels on the numpy path."""
    paths = make_twin(tmp_path, n_frames=3)
    rep = batch.run(paths, labeling_params(lambda_value=0.1, optimizer="de", device="cpu"), seed=0).report
    assert len(rep) == 3 and set(rep["path"]) == {"de-batched"}
    assert (rep["status"] == "kept").sum() >= 2 and (rep["n_label_visible"][rep["status"] == "kept"] > 0).all()
    assert (rep["seconds_total"] >= rep["seconds_optimize"]).all()
    rep = batch.run(paths, labeling_params(lambda_value=0.1, optimizer="de"), seed=0).report
    assert set(rep["path"]) == {"de"}
