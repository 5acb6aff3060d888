"""Known-answer and bad-input tests of the spatio-temporal probe calibration and CT-to-marker registration."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from ultrabones.calibration import acquisitions, ct_marker, offset_sweep, wires
from ultrabones.calibration import system as cal
from ultrabones.calibration.poses import record_poses
from ultrabones.twin import measure
from ultrabones.core.errors import DatasetError
from ultrabones.core.geometry import (
    POSE_COLUMNS,
    interpolate_poses,
    invert_transform,
    params_from_pose,
    pose_from_params,
    rigid_fit,
    rotation_angle_deg,
    transform_points,
)
from ultrabones.calibration.phantom import default_phantom, nominal_phantom_from_image, wire_points_in_image

TRUE_CALIB = pose_from_params(np.array([26.4, -0.5, 128.0, 92.5, -0.5, 179.2]))
SPACING = (0.1, 0.1)
IMAGE_PX = (460, 440)  # width, height: 46 x 44 mm


def synthetic_session(true_offset_ms=-123.4, duration_ms=6000.0, image_period_ms=47.0, seed=0, flip_x=False):
    """Noise-free phantom session: tracker streams at 60 Hz, images at ~21 Hz, exact wire points.

    The image with timestamp ``t`` shows the plane at the tracker pose interpolated at
    ``t + true_offset_ms`` (the definition in docs/twin_format.md). ``flip_x``: the probe
    is turned by 180 degrees about its depth axis (image x along phantom -X).
    """
    rng = np.random.default_rng(seed)
    ph = default_phantom()
    phantom_in_tracker = pose_from_params(np.array([100.0, -50.0, 1200.0, 10.0, -20.0, 30.0]))
    width = IMAGE_PX[0] * SPACING[0]
    nominal = nominal_phantom_from_image(ph, width)  # image plane -> phantom
    if flip_x:
        nominal = nominal @ np.array([[-1.0, 0, 0, width], [0, 1, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]])
    t_tr = np.arange(0.0, duration_ms, 1000.0 / 60.0)
    # Smooth free-hand-like motion of the image plane about the nominal pose.
    freq = rng.uniform(0.2, 0.7, 6) * 2 * np.pi / 1000.0
    amp = np.array([2.0, 2.0, 6.0, 5.0, 5.0, 6.0])  # mm, degrees
    phase = rng.uniform(0, 2 * np.pi, 6)
    motion = amp * np.sin(freq * t_tr[:, None] + phase)
    image_in_phantom = nominal @ pose_from_params(motion)
    probe_in_tracker = phantom_in_tracker @ image_in_phantom @ invert_transform(TRUE_CALIB)
    phantom_stream = np.repeat(phantom_in_tracker[None], len(t_tr), axis=0)
    img_t = np.arange(400.0, duration_ms - 50.0, image_period_ms).round()
    probe_at = interpolate_poses(t_tr, probe_in_tracker, img_t + true_offset_ms)
    image_from_phantom = invert_transform(invert_transform(phantom_in_tracker) @ probe_at @ TRUE_CALIB)
    pts = wire_points_in_image(ph, image_from_phantom)
    return dict(phantom=ph, t_tr=t_tr, probe=probe_in_tracker, phantom_stream=phantom_stream,
                img_t=img_t, points=pts, offset=true_offset_ms)


def _sweep(s, offsets=None):
    offsets = offset_sweep.offset_grid(-300.0, 0.0, 0.1) if offsets is None else offsets
    mid = s["points"][:, :, 1]
    mid_ph = wires.middle_points_in_phantom(s["phantom"], s["points"])
    return offset_sweep.sweep_offsets(s["img_t"], mid, mid_ph, s["t_tr"], s["probe"], s["phantom_stream"], offsets)


def test_noise_free_points_give_true_calibration_and_offset():
    s = synthetic_session()
    assert np.isfinite(s["points"]).all()
    res = _sweep(s)
    assert len(res.offsets_ms) == 3000
    assert abs(res.offset_ms - s["offset"]) < 0.05  # to the step
    np.testing.assert_allclose(res.calibration, TRUE_CALIB, atol=1e-6)
    assert res.error_mm < 1e-6
    # The error curve has its minimum there and grows away from it.
    assert res.errors_mm[res.best - 50] > 100 * res.error_mm + 1e-3


def test_similar_triangles_place_the_diagonal_cut_exactly():
    s = synthetic_session(duration_ms=1500.0)
    ph = s["phantom"]
    mid = wires.middle_points_in_phantom(ph, s["points"])
    # Each point lies on its diagonal's segment.
    p0, p1 = ph.wires[:, 1, 0], ph.wires[:, 1, 1]
    d = p1 - p0
    off = np.linalg.norm(np.cross(mid - p0, d), axis=-1) / np.linalg.norm(d, axis=-1)
    assert off.max() < 1e-9


def test_rigid_fit_recovers_a_known_transform_batched():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(20, 3)) * 30
    T = pose_from_params(np.array([[5, -3, 40, 30, -60, 120], [0, 0, 0, 0, 0, 0.0]]))
    dst = transform_points(T, src)
    np.testing.assert_allclose(rigid_fit(src, dst), T, atol=1e-10)
    # Coplanar source (image points, z = 0): still a proper rotation, exact.
    src[:, 2] = 0
    dst = transform_points(T[0], src)
    fit = rigid_fit(src, dst)
    np.testing.assert_allclose(fit, T[0], atol=1e-10)
    assert np.isclose(np.linalg.det(fit[:3, :3]), 1.0)


def render_phantom_image(points_mm, spacing=SPACING, size=IMAGE_PX, sigma_px=1.5, peak=220.0, noise=0.0, seed=0):
    """A phantom frame: a Gaussian spot at each wire point on a dark background (uint8)."""
    w, h = size
    v, u = np.mgrid[0:h, 0:w].astype(float)
    img = np.zeros((h, w))
    for x, y in np.asarray(points_mm).reshape(-1, 2):
        if np.isfinite(x):
            uc, vc = x / spacing[0] - 0.5, y / spacing[1] - 0.5
            img += peak * np.exp(-((u - uc) ** 2 + (v - vc) ** 2) / (2 * sigma_px**2))
    img += np.random.default_rng(seed).normal(0, noise, img.shape) if noise else 0
    return np.clip(np.round(img + 10), 0, 255).astype(np.uint8)


def test_wire_detection_finds_rendered_spots_to_a_tenth_of_a_pixel():
    s = synthetic_session(duration_ms=1500.0)
    ph = s["phantom"]
    for f in (0, 7):
        img = render_phantom_image(s["points"][f], noise=6.0, seed=f)
        found, reason = wires.detect_wire_points(img, SPACING, ph, threshold=80, min_area_px=4, sigma_px=1.0,
                                               collinearity_mm=0.5)
        assert reason == ""
        np.testing.assert_allclose(found, s["points"][f], atol=0.1 * SPACING[0])


def test_image_without_wires_is_rejected_with_a_reason():
    ph = default_phantom()
    blank = render_phantom_image(np.zeros((0, 2)), noise=6.0)
    found, reason = wires.detect_wire_points(blank, SPACING, ph, 80, 4, 1.0, 0.5)
    assert found is None and "found 0 spots, expected 18" in reason
    # One wire missing: rejected too.
    s = synthetic_session(duration_ms=1500.0)
    pts = s["points"][0].copy()
    pts[2, 1] = np.nan
    found, reason = wires.detect_wire_points(render_phantom_image(pts), SPACING, ph, 80, 4, 1.0, 0.5)
    assert found is None and "expected 18" in reason


def test_match_fiducials_and_icp_recover_a_known_rigid_transform():
    fid = default_phantom().fiducials
    T = pose_from_params(np.array([120.0, -40.0, 300.0, 20.0, -35.0, 160.0]))
    centres = transform_points(T, fid)
    rng = np.random.default_rng(2)
    # Shuffle the detections and add a distractor sphere; CT surface points of the spheres.
    detected = np.concatenate([centres[[2, 0, 3, 1]], [[0.0, 0.0, 0.0]]])
    surface = ct_marker.sphere_points(centres, 5.0, 3000)
    # Start ICP from a perturbed match by offsetting the detected centres.
    reg = ct_marker.register_marker(fid, 5.0, detected + rng.normal(0, 0.3, detected.shape), surface, 2.0)
    assert rotation_angle_deg(invert_transform(T) @ reg.ct_from_marker) < 0.05
    assert np.linalg.norm(reg.ct_from_marker[:3, 3] - T[:3, 3]) < 0.05
    np.testing.assert_allclose(reg.matched, detected[[1, 3, 0, 2]], atol=1.5)
    assert ct_marker.target_registration_error(reg.ct_from_marker, T, centres) < 0.05


def test_record_poses_compose_the_chain(tmp_path):
    rng = np.random.default_rng(4)
    t = np.arange(0.0, 2000.0, 1000 / 60)
    probe = pose_from_params(np.c_[rng.normal(0, 50, (len(t), 3)).cumsum(0) * 0.01, np.zeros((len(t), 3))])
    marker = np.repeat(pose_from_params(np.array([10.0, 20, 30, 5, 6, 7]))[None], len(t), 0)
    df = pd.DataFrame({"time_ms": t})
    for cols, poses in ((POSE_COLUMNS, probe), (acquisitions.SPECIMEN_COLUMNS, marker)):
        for c, v in zip(cols, params_from_pose(poses).T):
            df[c] = v
    df.to_csv(tmp_path / "tracker.csv", index=False)
    ct_from_marker = pose_from_params(np.array([1.0, 2, 3, 40, 50, 60]))
    out = record_poses(tmp_path / "tracker.csv", np.array([5, 100, 1990, 1999]), -10.0, ct_from_marker)
    assert list(out["timestamp"]) == [100, 1990]  # 5 - 10 ms precedes the tracking: dropped
    expect = ct_from_marker @ invert_transform(marker[0]) @ interpolate_poses(t, probe, np.array([90.0, 1980.0]))
    np.testing.assert_allclose(pose_from_params(out[list(POSE_COLUMNS)].to_numpy()), expect, atol=1e-6)


def test_bad_tracker_file_names_the_row(tmp_path):
    f = tmp_path / "tracker.csv"
    f.write_text("time_ms,x,y,z,euler_x,euler_y,euler_z\n0,1,2,3,4,5,6\n10,1,2,nan,4,5,6\n")
    with pytest.raises(DatasetError, match="row 2: z is"):
        acquisitions.read_tracker(f, {"probe": POSE_COLUMNS})
    f.write_text("time_ms,x,y,z,euler_x,euler_y,euler_z\n0,1,2,3,4,5,6\n")
    with pytest.raises(DatasetError, match="missing column"):
        acquisitions.read_tracker(f, {"probe": POSE_COLUMNS, "marker": acquisitions.SPECIMEN_COLUMNS})


def write_phantom_raw(raw, s, blank_every=0):
    """Write ``raw/system.json`` and ``raw/phantom/`` (docs/twin_format.md) for a synthetic session."""
    from ultrabones.core import dataset
    from ultrabones.core.atomic import write_json

    write_json(raw / "system.json", {"image_width": IMAGE_PX[0], "image_height": IMAGE_PX[1],
                                     "spacing_mm": list(SPACING)})
    write_json(raw / "phantom" / "phantom.json", s["phantom"].to_dict())
    df = pd.DataFrame({"time_ms": s["t_tr"]})
    for cols, poses in ((POSE_COLUMNS, s["probe"]), (acquisitions.PHANTOM_COLUMNS, s["phantom_stream"])):
        for c, v in zip(cols, params_from_pose(poses).T):
            df[c] = v
    df.to_csv(raw / "phantom" / "tracker.csv", index=False, float_format="%.12g")
    for f, t in enumerate(s["img_t"]):
        pts = np.zeros((0, 2)) if blank_every and f % blank_every == 3 else s["points"][f]
        dataset.write_image(raw / "phantom" / "images" / f"{int(t)}.png", render_phantom_image(pts, noise=4.0, seed=f))


P_TEST = cal.CalibrationParams(
    wire_threshold=80.0, wire_sigma_px=1.0, wire_min_area_px=4, wire_max_extent_mm=5.0, wire_min_separation_mm=0.8,
    wire_collinearity_mm=0.5, offset_min_ms=-300.0, offset_max_ms=0.0, offset_step_ms=0.1, bone_threshold_hu=600.0,
    fiducial_threshold_hu=1500.0, min_bone_volume_mm3=200.0, smooth_iterations=5, decimate_fraction=0.5,
    icp_max_distance_mm=2.0)


@pytest.mark.parametrize("flip_x", [False, True])
def test_calibrate_probe_from_rendered_images_counts_rejections(tmp_path, flip_x):
    s = synthetic_session(true_offset_ms=-87.3, duration_ms=3000.0, flip_x=flip_x, seed=5)
    write_phantom_raw(tmp_path, s, blank_every=10)
    res = cal.calibrate_probe(tmp_path, P_TEST)
    n_blank = sum(1 for f in range(len(s["img_t"])) if f % 10 == 3 and s["img_t"][f] - 300 >= 0)
    assert res.rejected == n_blank > 0
    assert (res.frames["status"] == "out of tracked range").sum() == (s["img_t"] < 300).sum()
    assert abs(res.offset_ms - s["offset"]) <= 1.0
    err = measure.calibration_errors(res.calibration, TRUE_CALIB, (46.0, 44.0))
    assert err["translation_mm"] < 0.3 and err["rotation_deg"] < 0.3 and err["image_mean_mm"] < 0.2
    assert res.sweep.error_mm < 0.1


def _synthetic_twin(root, session):
    """A minimal raw/ + truth/ tree: phantom session, one specimen (CT with a bone and 4 spheres), one record."""
    import trimesh

    from ultrabones.core import dataset
    from ultrabones.core.atomic import write_json

    raw, truth = root / "raw", root / "truth"
    write_phantom_raw(raw, session)
    write_json(truth / "system.json", {"calibration": TRUE_CALIB, "temporal_offset_ms": session["offset"],
                                       "spacing_mm": list(SPACING)})
    # CT: 1 mm voxels; a capsule-shaped bone, marker spheres (radius 4 mm) at ct_from_marker @ fiducials.
    fid = np.array([[0.0, 0, 0], [30, 0, 0], [0, 22, 0], [8, 5, 18]])
    ct_from_marker = pose_from_params(np.array([20.0, 50.0, 15.0, 5.0, -10.0, 20.0]))
    write_json(raw / "specimen01" / "marker.json", {"fiducials_mm": fid, "fiducial_radius_mm": 4.0})
    write_json(truth / "specimen01" / "ct_from_marker.json", ct_from_marker)
    shape, origin, sp = (70, 90, 80), np.array([-10.0, -5.0, -8.0]), np.ones(3)
    k, j, i = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]].astype(float)
    x, y, z = origin[0] + i, origin[1] + j, origin[2] + k
    bone = trimesh.creation.capsule(height=30.0, radius=9.0)
    bone.apply_translation([20.0, 20.0, 25.0])
    dataset.write_mesh(truth / "specimen01" / "bone_model.stl", bone)
    # Partial-volume rendering: HU from the signed distance to the capsule's axis segment.
    zc = np.clip(z - 25.0, -15.0, 15.0)
    dist = np.sqrt((x - 20) ** 2 + (y - 20) ** 2 + (z - 25 - zc) ** 2)
    vol = 40 + 1160 * np.clip(9.0 - dist + 0.5, 0, 1)
    for c in transform_points(ct_from_marker, fid):
        d = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
        vol = np.maximum(vol, 40 + 2960 * np.clip(4.0 - d + 0.5, 0, 1))
    np.savez(raw / "specimen01" / "ct.npz", volume=vol.astype(np.int16), spacing_mm=sp, origin_mm=origin)
    # One record: probe and marker streams, five frames.
    t = np.arange(0.0, 2000.0, 1000 / 60)
    probe = pose_from_params(np.c_[np.linspace(0, 20, len(t)), np.zeros((len(t), 2)), np.zeros((len(t), 3))])
    marker = np.repeat(pose_from_params(np.array([100.0, 0, 500, 0, 0, 30]))[None], len(t), 0)
    df = pd.DataFrame({"time_ms": t})
    for cols, poses in ((POSE_COLUMNS, probe), (acquisitions.SPECIMEN_COLUMNS, marker)):
        for c, v in zip(cols, params_from_pose(poses).T):
            df[c] = v
    (raw / "specimen01" / "record01").mkdir(parents=True)
    df.to_csv(raw / "specimen01" / "record01" / "tracker.csv", index=False, float_format="%.12g")
    for ts in (100, 400, 800, 1200, 1900):
        dataset.write_image(raw / "specimen01" / "record01" / "images" / f"{ts}.png", np.zeros((20, 30), np.uint8))
    return ct_from_marker


def test_run_end_to_end_on_a_small_synthetic_twin(tmp_path):
    from ultrabones.core import dataset
    from ultrabones.core.paths import Paths

    s = synthetic_session(true_offset_ms=-42.0, duration_ms=2500.0, seed=7)
    ct_from_marker = _synthetic_twin(tmp_path / "twin", s)
    paths = Paths(tmp_path / "build", tmp_path / "twin", tmp_path / "figures")
    P = P_TEST
    res = cal.run(paths, P, progress=False)
    assert "temporal_offset_error_ms" not in cal.metrics(res)  # the stage never reads truth/
    m = measure.merge_metrics(cal.metrics(res), measure.calibration(paths, res, 4000))  # twin.surface_samples
    assert m["temporal_offset_error_ms"] <= 1.0 and m["calibration_translation_error_mm"] < 0.5
    assert m["n_specimens"] == 1 and m["per_specimen"]["specimen01"]["n_spheres"] == 4
    assert m["marker_tre_mm"] < 0.2 and m["marker_fre_mm"] < 0.2
    assert m["ct_model_mean_surface_distance_mm"] < 0.5
    # Released layout A: calibration.json, the bone model, tracking.csv and linked images.
    calib, spacing, offset = dataset.read_calibration(paths.dataset)
    assert offset == m["temporal_offset_ms"] and spacing == SPACING
    spec = dataset.read_specimen(paths.dataset / "specimen01")
    assert spec.ct_model.is_file() and "tibia" in spec.ct_models
    df = dataset.read_tracking(spec.records[0].tracking_csv)
    # t + dt must be in [0, 2000) ms of tracking: the frame at 1900 ms survives, none before 42 ms.
    assert list(df["timestamp"]) == [100, 400, 800, 1200, 1900]
    assert list(spec.records[0].timestamps()) == [100, 400, 800, 1200, 1900]
    pose = dataset.poses(df)[2]
    t_tr = np.arange(0.0, 2000.0, 1000 / 60)
    probe_x = np.interp(800 + m["temporal_offset_ms"], t_tr, np.linspace(0, 20, len(t_tr)))
    probe_t = pose_from_params(np.array([probe_x, 0, 0, 0, 0, 0]))
    marker = pose_from_params(np.array([100.0, 0, 500, 0, 0, 30]))
    expect = ct_from_marker @ invert_transform(marker) @ probe_t
    # Off by the registration error only (< 0.2 mm at this distance).
    assert np.abs(pose[:3, 3] - expect[:3, 3]).max() < 0.2
    assert cal.check(res) is None
    figs = cal.figures(res, true_offset_ms=-42.0)
    assert list(figs) == ["calibration_offset_sweep", "calibration_phantom_wires"]
    import matplotlib.pyplot as plt

    plt.close("all")
    # A rerun of one specimen hits the cache and gives the same metrics.
    again = cal.run(paths, P, only="specimen01", progress=False)
    assert ({k: v for k, v in cal.metrics(again).items() if k != "probe_calibration_seconds"}
            == {k: v for k, v in cal.metrics(res).items() if k != "probe_calibration_seconds"})


def test_ct_without_bone_stops_with_a_clear_message(tmp_path):
    s = synthetic_session(duration_ms=1000.0)
    _synthetic_twin(tmp_path / "twin", s)
    f = tmp_path / "twin" / "raw" / "specimen01" / "ct.npz"
    with np.load(f) as z:
        vol, sp, org = z["volume"], z["spacing_mm"], z["origin_mm"]
    vol = np.where(vol > 1300, vol, 40).astype(np.int16)  # keep the spheres (3000 HU), drop the bone (1200 HU)
    np.savez(f, volume=vol, spacing_mm=sp, origin_mm=org)
    P = dataclasses.replace(P_TEST, bone_threshold_hu=1300.0, smooth_iterations=0, decimate_fraction=1.0)
    with pytest.raises(DatasetError, match=r"specimen01/ct.npz: no bone found"):
        cal.process_specimen(tmp_path / "twin" / "raw", tmp_path / "ds", "specimen01", -10.0, P)


def test_offset_grid_is_the_papers_and_rejects_an_empty_range():
    from ultrabones.core.errors import ParamsError

    g = offset_sweep.offset_grid(-300.0, 0.0, 0.1)
    assert len(g) == 3000 and g[0] == -300.0 and abs(g[-1] + 0.1) < 1e-9
    with pytest.raises(ParamsError, match="is empty"):
        offset_sweep.offset_grid(0.0, -300.0, 0.1)


def test_calibration_params_are_the_schema_section_typed_and_frozen():
    from ultrabones.core.cache import params_hash
    from ultrabones.core.errors import ParamsError
    from ultrabones.core.params import SCHEMA, load_profile
    from ultrabones.core.paths import PARAMS_DIR

    assert [f.name for f in dataclasses.fields(P_TEST)] == list(SCHEMA["calibration"]) == list(P_TEST.as_dict())
    assert cal.CalibrationParams.from_section(P_TEST.as_dict()) == P_TEST
    section = load_profile("smoke", PARAMS_DIR).values["calibration"]  # what notebook 01 collects
    P = cal.CalibrationParams.from_section(section)
    assert params_hash(P.as_dict()) == params_hash(section)  # cache keys and provenance unchanged
    assert cal.CalibrationParams.from_section({**section, "bone_threshold_hu": 700}).bone_threshold_hu == 700.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        P.wire_threshold = 90.0
    with pytest.raises(ParamsError, match=r"calibration\.decimate_fraction"):
        dataclasses.replace(P, decimate_fraction=0.0)
    with pytest.raises(ParamsError, match="lacks key.*icp_max_distance_mm"):
        cal.CalibrationParams.from_section({k: v for k, v in section.items() if k != "icp_max_distance_mm"})
    with pytest.raises(ParamsError, match="'calibration.surface_samples' moved to twin.surface_samples"):
        cal.CalibrationParams.from_section({**section, "surface_samples": 4000})
    over = {"specimen02": {"bone_threshold_hu": 650.0}}
    assert P.for_specimen(over, "specimen02") == dataclasses.replace(P, bone_threshold_hu=650.0)
    assert P.for_specimen(over, "specimen01") == P.for_specimen(None, "specimen01") == P
    with pytest.raises(ParamsError, match="specimen02 overrides: unknown key 'calibration.bone_hu'"):
        P.for_specimen({"specimen02": {"bone_hu": 650.0}}, "specimen02")


def test_metrics_known_answer():
    sweep = offset_sweep.SweepResult(np.array([-2.0, -1.0, 0.0]), np.array([0.5, 0.25, 0.75]), 1, np.eye(4), 12)
    frames = pd.DataFrame({"timestamp": [0, 10, 20, 30, 40],
                           "status": ["ok", "ok", "found 2 spots, expected 9", "out of tracked range", "ok"]})
    probe = cal.ProbeCalibration(sweep, (0.1, 0.2), frames)
    specimens = {
        "s1": {"fre_mm": 0.1, "icp_rmse_mm": 0.2, "n_spheres": 4, "seconds": 3.0, "ct_spacing_mm": [0.5, 0.5, 1.0],
               "records": {"r1": {"frames": 10, "dropped": 1}, "r2": {"frames": 5, "dropped": 0}}},
        "s2": {"fre_mm": 0.3, "icp_rmse_mm": 0.4, "n_spheres": 5, "ct_spacing_mm": [0.6, 0.4, 0.8],
               "records": {"r1": {"frames": 7, "dropped": 2}}},
    }
    result = cal.CalibrationResult(probe, specimens, 1.5)
    m = cal.metrics(result)
    assert m["temporal_offset_ms"] == -1.0 and m["localization_error_mm"] == 0.25 and m["n_offsets"] == 3
    assert (m["phantom_frames_total"], m["phantom_frames_used"], m["phantom_frames_rejected"],
            m["phantom_frames_out_of_range"]) == (5, 3, 1, 1)
    assert m["probe_calibration_seconds"] == 1.5 and m["calibration"] == np.eye(4).tolist()
    assert m["n_specimens"] == 2 and m["marker_fre_mm"] == pytest.approx(0.2)
    assert m["frames_written"] == 22 and m["frames_dropped"] == 3 and m["ct_voxel_mm"] == [0.6, 0.5, 1.0]
    assert m["per_specimen"]["s2"] == {"fre_mm": 0.3, "icp_rmse_mm": 0.4, "n_spheres": 5}
    assert m["skipped"] is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.probe_seconds = 2.0
    empty = cal.metrics(cal.CalibrationResult(probe, {}, 0.0))
    assert empty["n_specimens"] == 0 and empty["marker_fre_mm"] is None and empty["ct_voxel_mm"] is None


def test_run_skips_real_data_and_writes_nothing(tmp_path):
    from ultrabones.core.paths import Paths

    real = tmp_path / "real"
    real.mkdir()
    paths = Paths(tmp_path / "build", tmp_path / "twin", tmp_path / "figures", data_root=real).for_method()
    res = cal.run(paths, P_TEST, progress=False)
    assert res.skipped and res.probe is None
    assert cal.metrics(res) == {"skipped": True, "reason": cal.SKIP_REASON}
    assert cal.check(res) is None and cal.figures(res) == {}
    assert not any(real.iterdir()) and not (tmp_path / "build").exists()


def test_check_and_figures_of_a_result():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = offset_sweep.SweepResult(np.array([-2.0, -1.0, 0.0]), np.array([0.5, 0.25, 0.75]), 1, np.eye(4), 12)
    frames = pd.DataFrame({"timestamp": [0, 10, 20, 30], "status": ["ok", "ok", "found 2 spots, expected 9", "ok"]})
    assert cal.check(cal.CalibrationResult(cal.ProbeCalibration(sweep, (0.1, 0.2), frames), {}, 0.0)) is None
    few = frames.assign(status=["ok", "ok", "found 2 spots, expected 9", "out of tracked range"])
    with pytest.raises(AssertionError, match=r"only 2 of 4 phantom frames were usable"):
        cal.check(cal.CalibrationResult(cal.ProbeCalibration(sweep, (0.1, 0.2), few), {}, 0.0))
    figs = cal.figures(cal.CalibrationResult(cal.ProbeCalibration(sweep, (0.1, 0.2), frames), {}, 0.0),
                       true_offset_ms=-1.2)
    assert list(figs) == ["calibration_offset_sweep"]  # no example frame, no phantom figure
    plt.close("all")
