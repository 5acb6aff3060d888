"""The twin's orchestration: tracking model, sweeps, the raw/ and truth/ trees, determinism, bad input."""

import dataclasses
import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from ultrabones.core.cache import SpecimenCache, params_hash
from ultrabones.twin.layout import truth_dir
from ultrabones.twin import anatomy
from ultrabones.twin import bmode
from ultrabones.twin.scene import first_hits, skin_depths
from ultrabones.calibration import acquisitions
from ultrabones.core import dataset
from ultrabones.core.images import image_timestamps
from ultrabones.core import geometry
from ultrabones.core import params
from ultrabones.twin import config, simulate, specimen, sweeps, tracking
from ultrabones.core.errors import ParamsError
from ultrabones.core.paths import PARAMS_DIR, Paths


def section(**over) -> dict:
    """The smoke profile's simulate section, shrunk for unit tests, with overrides."""
    P = dict(params.load_profile("smoke", PARAMS_DIR).values["simulate"])
    P.update(n_specimens=1, image_width=64, image_height=54, pixel_spacing_mm=0.8, ct_spacing_mm=[2.0, 2.0, 2.0],
             sweep_length_mm=[20.0, 16.0, 12.0], phantom_frames=12)
    P.update(over)
    return params.validate_section("simulate", P, "test")


def tiny_twin(tmp_path, name="a", **over):
    paths = Paths(tmp_path / name / "build", tmp_path / name / "twin", tmp_path / name / "fig")
    res = simulate.simulate_twin(paths, config.TwinConfig.from_section(section(**over)), seed=7, progress=False)
    return paths, res


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    return tiny_twin(tmp_path_factory.mktemp("twin"))


def test_rigid_fit_recovers_a_pose_and_jitter_is_small():
    rng = np.random.default_rng(0)
    pose = geometry.pose_from_params(np.array([10.0, -20.0, 1500.0, 30.0, -10.0, 80.0]))
    f = geometry.PROBE_FIDUCIALS_MM
    fit = geometry.rigid_fit(f, geometry.transform_points(pose, f))
    assert np.allclose(fit, pose, atol=1e-9)
    noisy = tracking.measure_marker(np.repeat(pose[None], 2000, 0), f, 0.1, rng)
    err = geometry.mean_fiducial_displacement(noisy, pose)
    assert 0.03 < err.mean() < 0.1  # a fit to 4 fiducials averages the 0.1 mm jitter down


def test_smooth_process_has_the_asked_std():
    p = sweeps.SmoothProcess(np.random.default_rng(1), 2.0, 1.0, dims=3)
    v = p(np.arange(0, 600_000, 10.0))
    assert v.shape == (60_000, 3)
    assert np.allclose(v.std(axis=0), 2.0, rtol=0.1)


def test_tree_follows_the_format(twin):
    paths, res = twin
    raw, truth = paths.raw, truth_dir(paths)
    system = json.loads((raw / "system.json").read_text())
    assert system["image_width"] == 64 and system["image_height"] == 54
    assert np.allclose(system["probe_fiducials_mm"], geometry.PROBE_FIDUCIALS_MM)
    tsys = json.loads((truth / "system.json").read_text())
    assert -300 <= tsys["temporal_offset_ms"] < 0
    calib = np.array(tsys["calibration"])
    err = np.linalg.inv(geometry.released_calibration()) @ calib
    assert geometry.rotation_angle_deg(err) == pytest.approx(0.15, abs=1e-6)
    # the phantom as the calibration engineer reads it
    phan = acquisitions.read_phantom(raw)
    times, streams = acquisitions.read_tracker(raw / "phantom" / "tracker.csv",
                                               {"probe": geometry.POSE_COLUMNS,
                                                "phantom": acquisitions.PHANTOM_COLUMNS})
    assert phan.n_n > 0 and len(image_timestamps(raw / "phantom" / "images")) == 12
    spec = raw / "specimen01"
    assert json.loads((spec / "records.json").read_text())["record07"]["bone"] == "foot"
    assert json.loads((truth / "specimen01" / "records.json").read_text())["record04"]["bone"] == "fibula"
    fid, radius = acquisitions.read_marker(spec)
    assert fid.shape == (4, 3) and radius == tracking.FIDUCIAL_RADIUS_MM
    with np.load(spec / "ct.npz") as z:
        assert z["volume"].dtype == np.int16 and z["volume"].ndim == 3
        assert np.allclose(z["spacing_mm"], 2.0)
    for rec, group, direction, _ in config.RECORDS:
        r_raw, r_truth = spec / rec, truth / "specimen01" / rec
        ts = image_timestamps(r_raw / "images")
        assert len(ts) > 3, rec
        img = dataset.read_image(r_raw / "images" / f"{ts[0]}.png")
        assert img.shape == (54, 64)
        for kind in (dataset.LABELS, dataset.LABELS_FULL):
            lab = dataset.read_label(r_truth / kind / f"{ts[-1]}_label.png", img.shape)
            assert lab.dtype == bool
        full = dataset.read_label(r_truth / dataset.LABELS_FULL / f"{ts[0]}_label.png")
        vis = dataset.read_label(r_truth / dataset.LABELS / f"{ts[0]}_label.png")
        assert not (vis & ~full).any()  # visible is part of full
        tr = pd.read_csv(r_raw / "tracker.csv")
        assert list(tr.columns[:7]) == ["time_ms", *geometry.POSE_COLUMNS]
        assert {"sx", "seuler_z"} <= set(tr.columns)
        assert tr.time_ms.iloc[0] <= ts[0] - 300 and tr.time_ms.iloc[-1] >= ts[-1]  # every candidate offset
        assert np.median(np.diff(tr.time_ms)) < np.median(np.diff(ts))  # tracker faster than images
        poses = pd.read_csv(r_truth / "poses.csv")
        assert np.array_equal(poses.timestamp, ts)
        frames = pd.read_csv(r_truth / "frames.csv")
        assert {"bone_in_view", "misalignment_mm", "required_correction_mm"} <= set(frames.columns)
    for bone in ("tibia", "fibula", "talus", "calcaneus", "skin"):
        assert dataset.read_mesh(truth / "specimen01" / "meshes" / f"{bone}.stl").is_watertight
    dataset.read_mesh(truth / "specimen01" / "bone_model.stl")
    ctm = acquisitions.read_matrix_json(truth / "specimen01" / "ct_from_marker.json", "ct_from_marker")
    assert np.allclose(ctm[:3, :3] @ ctm[:3, :3].T, np.eye(3), atol=1e-9)


def test_recorded_tracking_reproduces_the_truth_chain(twin):
    """Raw tracker + true offset + true CT-from-marker reproduce the true pose up to the error model."""
    paths, _ = twin
    tsys = json.loads((truth_dir(paths) / "system.json").read_text())
    ctm = acquisitions.read_matrix_json(truth_dir(paths) / "specimen01" / "ct_from_marker.json", "ct_from_marker")
    rec = "record02"
    ts = image_timestamps(paths.raw / "specimen01" / rec / "images")
    times, streams = acquisitions.read_tracker(paths.raw / "specimen01" / rec / "tracker.csv",
                                               {"probe": geometry.POSE_COLUMNS,
                                                "marker": acquisitions.SPECIMEN_COLUMNS})
    t = ts + tsys["temporal_offset_ms"]
    rec_pose = (ctm @ np.linalg.inv(geometry.interpolate_poses(times, streams["marker"], t))
                @ geometry.interpolate_poses(times, streams["probe"], t))
    true = pd.read_csv(truth_dir(paths) / "specimen01" / rec / "poses.csv")
    true_pose = geometry.pose_from_params(true[list(geometry.POSE_COLUMNS)].to_numpy())
    err = geometry.mean_fiducial_displacement(rec_pose, true_pose)
    assert 0.02 < err.mean() < 2.0
    # a wrong offset makes it clearly worse: the offset is observable
    t_bad = ts + tsys["temporal_offset_ms"] + 150
    bad = (ctm @ np.linalg.inv(geometry.interpolate_poses(times, streams["marker"], t_bad, extrapolate=True))
           @ geometry.interpolate_poses(times, streams["probe"], t_bad, extrapolate=True))
    assert geometry.mean_fiducial_displacement(bad, true_pose).mean() > err.mean() + 1.0


def test_error_free_twin_is_aligned(tmp_path):
    paths, res = tiny_twin(tmp_path, fiducial_jitter_mm=0.0, tracking_drift_deg=0.0, tracking_drift_mm=0.0,
                           calibration_error_deg=0.0, calibration_error_mm=0.0)
    m = simulate.metrics(res)
    # what is left is the interpolation of the 60 Hz tracker stream between samples
    assert m["initial_misalignment_mm"]["mean"] < 0.05
    assert m["required_correction_mm"]["mean"] < 0.05


def test_metrics_and_misalignment_order(twin):
    _, res = twin
    m = simulate.metrics(res)
    assert m["n_specimens"] == 1 and m["n_records"] == 9
    assert m["n_frames"] == sum(r["n_frames"] for r in res.specimens["specimen01"]["records"])
    assert 0 < m["visible_bone_fraction"] < 1
    assert 0.2 < m["initial_misalignment_mm"]["mean"] < 3.0
    assert m["frames_per_second"] > 0


def test_metrics_known_answer():
    from types import SimpleNamespace

    rec = {"n_frames": 4, "bone_in_view": 3, "full_pixels": 100, "visible_pixels": 25,
           "misalignment_mm": [1.0, 3.0], "required_correction_mm": [0.5, 1.5]}
    specs = {"specimen01": {"n_frames": 8, "render_seconds": 2.0, "records": [rec, dict(rec, bone_in_view=1)]}}
    system = SimpleNamespace(temporal_offset_ms=-42.0, calibration=geometry.released_calibration())
    res = simulate.SimulationResult(specs, {"n_frames": 12}, 5.0, system, None, n_workers=3)
    m = simulate.metrics(res)
    assert (m["n_specimens"], m["n_records"], m["n_frames"], m["n_phantom_frames"], m["n_workers"]) == (1, 2, 8, 12, 3)
    assert m["frames_with_bone_fraction"] == 0.5 and m["visible_bone_fraction"] == 0.25
    assert m["frames_per_second"] == 4.0 and m["wall_seconds"] == 5.0 and m["temporal_offset_ms"] == -42.0
    assert m["initial_misalignment_mm"] == {"mean": 2.0, "std": 1.0, "n_frames": 4}
    assert m["required_correction_mm"] == {"mean": 1.0, "fraction_over_1mm": 0.5}
    assert m["calibration_error_deg"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.n_workers = 1


def test_same_seed_same_bytes(tmp_path, twin):
    paths_a, _ = twin
    paths_b, _ = tiny_twin(tmp_path, "b")

    def digest(root):
        h = hashlib.sha256()
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
        return h.hexdigest()

    assert digest(paths_a.raw) == digest(paths_b.raw)
    assert digest(truth_dir(paths_a)) == digest(truth_dir(paths_b))


def test_bad_parameters_stop_with_a_message():
    with pytest.raises(ParamsError, match="pixel_spacing_mm"):
        config.TwinConfig.from_params(section(pixel_spacing_mm=-0.2))
    with pytest.raises(ParamsError, match="zero frames"):
        config.TwinConfig.from_params(section(sweep_length_mm=[20.0, 3.0, 12.0]))
    with pytest.raises(ParamsError, match="ct_spacing_mm"):
        config.TwinConfig.from_params(section(ct_spacing_mm=[0.8, 0.0, 0.6]))
    with pytest.raises(ParamsError, match="tracker_rate_hz"):
        config.TwinConfig.from_params(section(tracker_rate_hz=10.0))
    with pytest.raises(ParamsError, match="below the minimum"):
        section(n_specimens=0)
    leg = anatomy.make_anatomy(np.random.default_rng(0))
    with pytest.raises(ParamsError, match="longer than the fibula"):
        sweeps.plan_sweep(leg, "fibula", 0, 5000.0, np.random.default_rng(0))


def test_sweeps_follow_their_bone():
    leg = anatomy.make_anatomy(np.random.default_rng(0))
    scene = bmode.Scene.from_meshes(list(leg.meshes().values()), leg.skin_mesh(), leg.fat_mm)
    cfg = config.TwinConfig.from_params(section())
    system = tracking.System.draw(0, cfg)
    ctm = tracking.place_marker(leg, np.random.default_rng(1))
    for rec, group, direction, variant in config.RECORDS[::2]:
        st = specimen.record_streams(group, direction, variant, leg, scene, cfg, system, ctm, np.eye(4),
                                     np.random.default_rng(2))
        hits = [np.isfinite(first_hits(scene, p, cfg.image_width, cfg.spacing)[0]).mean() for p in st.planes]
        assert np.mean(hits) > 0.2, rec  # bone under the probe
        depth = skin_depths(scene, st.planes[len(st.planes) // 2], cfg.image_width, cfg.spacing)
        assert depth[cfg.image_width // 2] < 0.5, rec  # the probe presses on the skin
        centre = st.planes[:, :3, 3] + st.planes[:, :3, 0] * cfg.image_width * cfg.pixel_spacing_mm / 2
        travel = np.linalg.norm(centre[-1] - centre[0])
        assert travel > 0.5 * cfg.sweep_length_mm[config.GROUPS.index(group)], rec


def test_specimen_overrides_apply_but_not_to_the_shared_probe():
    P = section()
    cfg = config.TwinConfig.from_section(P)
    assert cfg.as_dict() == P and list(P) == list(params.SCHEMA["simulate"])  # the section, in schema order
    assert params_hash(cfg.simulation_key()) == params_hash(  # cache keys unchanged
        {k: v for k, v in P.items() if k not in config.NOT_SIMULATION_KEYS})  # keys that change no simulated byte
    over = {"specimen02": {"hand_tilt_deg": 9.0}}
    assert cfg.for_specimen(over, "specimen02") == dataclasses.replace(cfg, hand_tilt_deg=9.0)
    assert cfg.for_specimen(over, "specimen01") == cfg.for_specimen(None, "specimen01") == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hand_tilt_deg = 9.0
    with pytest.raises(ParamsError, match="image_width"):
        cfg.for_specimen({"specimen01": {"image_width": 100}}, "specimen01")
    with pytest.raises(ParamsError, match="specimen01 overrides: unknown key 'simulate.hand_tilt'"):
        cfg.for_specimen({"specimen01": {"hand_tilt": 9.0}}, "specimen01")


def test_cached_specimens_are_skipped(tmp_path):

    paths = Paths(tmp_path / "build", tmp_path / "twin", tmp_path / "fig")
    cache = SpecimenCache(paths, "00_simulate")
    P = config.TwinConfig.from_section(section(sweep_length_mm=[20.0, 16.0, 12.0]))
    first = simulate.simulate_twin(paths, P, seed=1, progress=False, cache=cache)
    stamp = (paths.raw / "specimen01" / "ct.npz").stat().st_mtime_ns
    again = simulate.simulate_twin(paths, P, seed=1, progress=False, cache=cache)
    assert (paths.raw / "specimen01" / "ct.npz").stat().st_mtime_ns == stamp
    assert again.specimens["specimen01"]["n_frames"] == first.specimens["specimen01"]["n_frames"]


HARD = dict(speed_of_sound_m_s=1580.0, phantom_speed_of_sound_m_s=1485.0, ct_blur_mm=0.6, ct_cortical_hu=1700.0,
            tracking_drift_deg=1.5, tracking_drift_mm=0.6, fiducial_jitter_mm=0.25)


def test_hard_error_sources_keep_same_seed_same_bytes(tmp_path):
    def digest(root):
        h = hashlib.sha256()
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
        return h.hexdigest()

    a, _ = tiny_twin(tmp_path, "a", **HARD)
    b, _ = tiny_twin(tmp_path, "b", **HARD)
    assert digest(a.raw) == digest(b.raw) and digest(truth_dir(a)) == digest(truth_dir(b))


@pytest.mark.parametrize("key,value", [("speed_of_sound_m_s", 0.0), ("phantom_speed_of_sound_m_s", 0.0),
                                       ("ct_blur_mm", -0.5), ("shadow_level", 1.5), ("ringdown_mm", -1.0),
                                       ("speckle_cell_mm", -0.1), ("psf_lateral_mm", 0.0)])
def test_bad_realism_and_error_parameters_name_the_key(key, value):
    with pytest.raises(ParamsError, match=f"simulate.{key}"):
        section(**{key: value})
    P = dict(section())
    P[key] = value  # past the schema (a direct caller): the config names the key too
    with pytest.raises(ParamsError, match=f"simulate.{key}"):
        config.TwinConfig.from_params(P)


def test_hard_profile_loads_with_the_error_sources():
    hard = params.load_profile("hard", PARAMS_DIR).values["simulate"]
    default = params.load_profile("default", PARAMS_DIR).values["simulate"]
    assert hard["speed_of_sound_m_s"] != 1540.0 and hard["phantom_speed_of_sound_m_s"] < 1500.0
    assert hard["ct_blur_mm"] > 0 and hard["ct_cortical_hu"] != 1400.0
    assert hard["tracking_drift_deg"] > default["tracking_drift_deg"]


def test_run_on_real_data_simulates_nothing(tmp_path):
    paths = Paths(tmp_path / "build", tmp_path / "twin", tmp_path / "fig", data_root=tmp_path / "real")
    res = simulate.run(paths, simulate.Params.from_section(section()), progress=False)
    assert not res.simulated
    assert simulate.metrics(res) == {"n_specimens": 0, "n_frames": 0, "simulated": False}
    assert simulate.check(res) is None and simulate.figures(res) == {} and simulate.tables(res) == {}
    assert not (tmp_path / "twin").exists()


def test_check_says_what_is_off():
    from types import SimpleNamespace

    rec = {"n_frames": 4, "bone_in_view": 3, "full_pixels": 100, "visible_pixels": 25,
           "misalignment_mm": [1.0, 1.2], "required_correction_mm": [0.5, 1.5]}
    specs = {"specimen01": {"n_frames": 4, "render_seconds": 2.0, "records": [rec]}}
    system = SimpleNamespace(temporal_offset_ms=-42.0, calibration=geometry.released_calibration())
    P = simulate.Params.from_section(section())
    assert simulate.check(simulate.SimulationResult(specs, None, 1.0, system, P)) is None
    with pytest.raises(AssertionError, match="asks for n_specimens = 2"):
        simulate.check(simulate.SimulationResult(specs, None, 1.0, system, dataclasses.replace(P, n_specimens=2)))
    far = {"specimen01": dict(specs["specimen01"], records=[dict(rec, misalignment_mm=[4.0])])}
    with pytest.raises(AssertionError, match="initial misalignment 4.00 mm"):
        simulate.check(simulate.SimulationResult(far, None, 1.0, system, P))


def test_run_figures_and_tables(tmp_path):
    import matplotlib.pyplot as plt

    paths = Paths(tmp_path / "build", tmp_path / "twin", tmp_path / "fig")
    P = simulate.Params.from_section(section(real_frames_dir=None))
    res = simulate.run(paths, P, seed=7, progress=False)
    assert res.simulated and res.realism_checked and res.realism is None
    m = simulate.metrics(res)
    assert m["n_specimens"] == 1 and m["realism"] == {"skipped": "no real frames under 'None'"}
    assert (paths.cache(simulate.STEM)).is_dir()  # the specimens are cached
    assert simulate.check(res) is None
    assert list(simulate.figures(res)) == ["twin_example_frames", "twin_anatomy_sweeps", "twin_statistics"]
    plt.close("all")
    table = simulate.tables(res)["twin_specimens"]
    assert list(table["specimen"].unique()) == ["specimen01"] and len(table) == 3
