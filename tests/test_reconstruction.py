"""Known-answer and bad-input tests of ``ultrabones.reconstruction.surface`` on synthetic meshes and sweeps.

The synthetic specimen is a cylinder "bone" (radius 10 mm along CT z) swept by
transverse image planes from above (probe at +y, depth along -y). Its labels
are rasterised from the true planes: pixels within 0.36 mm of the surface on
the side facing the probe with incidence below 85 degrees. ``*_optimized``
holds the true poses; the initial poses are perturbed by up to 1 degree and 1 mm.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import FrozenInstanceError, replace

import numpy as np
import pandas as pd
import pytest
import trimesh

from ultrabones.core import dataset
from ultrabones.core.calibration_file import write_calibration
from ultrabones.core.tracking_table import OPTIMIZED_COLUMNS
from ultrabones.core import geometry
from ultrabones.core.mesh import morton_order
from ultrabones.reconstruction import batch, figures
from ultrabones.reconstruction import specimen as rspec
from ultrabones.reconstruction import point_clouds as pc
from ultrabones.reconstruction import record_points as rp
from ultrabones.reconstruction import surface as rc
from ultrabones.core.errors import DatasetError
from ultrabones.core.paths import Paths

RADIUS = 10.0
WIDTH, HEIGHT, SP = 96, 80, 0.5  # pixels, mm per pixel
PARAMS = batch.ReconstructionParams(
    sources=("labels", "predicted"),
    pose_methods=("original", "optimized"),
    voxel_mm=0.5,
    frame_step=1,
    surface_sample_mm=0.5,
    visibility_gamma_mm=0.5,
    max_incidence_deg=85.0,
    coverage_mm=1.0,
    save_ply=True,
    render="matplotlib",
)


def cylinder() -> trimesh.Trimesh:
    return trimesh.creation.cylinder(radius=RADIUS, height=90.0, sections=256)


def plane_pose(z0: float) -> np.ndarray:
    """Image plane -> CT: image x along CT +x, depth along CT -y, plane at z = z0, top at y = 25."""
    rot = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
    return geometry.make_transform(rot, np.array([-24.0, 25.0, z0]))


def true_label(pose: np.ndarray) -> np.ndarray:
    """Visible label of the cylinder on the plane ``pose`` (identity calibration)."""
    uv = geometry.pixel_grid(WIDTH, HEIGHT)
    p = geometry.pixels_to_ct(uv, pose, np.eye(4), (SP, SP))
    r = np.hypot(p[:, 0], p[:, 1])
    facing = p[:, 1] >= RADIUS * np.cos(np.radians(85.0))
    return ((np.abs(r - RADIUS) <= 0.36) & facing & (np.abs(p[:, 2]) < 45)).reshape(HEIGHT, WIDTH)


def make_specimen(root, name="specimen01", n_frames=41, labelled=True, predicted=True, seed=0, discard=(3, 17)):
    """A layout-A specimen with two records over the cylinder; returns its folder."""
    rng = np.random.default_rng(seed)
    spec = root / name
    spec.mkdir(parents=True)
    dataset.write_mesh(spec / "CT_bone_model.stl", cylinder())
    dataset.write_mesh(spec / "CT_bone_model_tibia.stl", cylinder())
    for r, z_range in (("record01", (-20.0, 0.0)), ("record02", (0.0, 20.0))):
        rec = spec / r
        (rec / dataset.IMAGES).mkdir(parents=True)
        ts = 1000 + 48 * np.arange(n_frames)
        true = np.stack([plane_pose(z) for z in np.linspace(*z_range, n_frames)])
        delta = geometry.perturbation(rng.uniform(-1, 1, (n_frames, 3)), rng.uniform(-1, 1, (n_frames, 3)))
        initial = true @ delta
        df = pd.DataFrame({"timestamp": ts})
        for c, v in zip(geometry.POSE_COLUMNS, geometry.params_from_pose(initial).T):
            df[c] = v
        opt = geometry.params_from_pose(true)
        opt[list(discard)] = np.nan  # discarded by the pose optimisation
        for c, v in zip(OPTIMIZED_COLUMNS, opt.T):
            df[c] = v
        dataset.write_tracking(rec / dataset.TRACKING, df)
        for i, t in enumerate(ts):
            dataset.write_image(rec / dataset.IMAGES / f"{t}.png", np.zeros((HEIGHT, WIDTH), np.uint8))
            lab = true_label(true[i])
            if labelled and i not in discard:
                dataset.write_label(rec / dataset.LABELS / f"{t}_label.png", lab)
            if predicted:
                dataset.write_label(rec / dataset.LABELS_PRED / f"{t}_label_pred.png", lab)
    return spec


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon")
    data = root / "dataset"
    make_specimen(data, "specimen01", predicted=True)
    make_specimen(data, "specimen02", predicted=False, seed=1)
    make_specimen(data, "specimen03", labelled=False, predicted=False, seed=2)
    write_calibration(data, np.eye(4), (SP, SP), None)
    raw = root / "raw" / "specimen01"
    raw.mkdir(parents=True)
    (raw / "records.json").write_text(json.dumps({"record01": "tibia", "record02": "fibula"}))
    return root


# ----------------------------------------------------------------------------- distances


def test_displaced_samples_give_half_a_millimetre():
    """Known answer: points on a mesh moved 0.5 mm along the outward normal are 0.5 mm away."""
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=20.0)
    mesh.apply_translation([120.0, -80.0, 310.0])  # CT-like coordinates: precision must hold far from 0
    pts, face = trimesh.sample.sample_surface(mesh, 20000, seed=0)
    moved = pts + 0.5 * mesh.face_normals[face]
    d = rc.SurfaceDistance.from_mesh(mesh)(moved)
    assert np.abs(d - 0.5).max() < 1e-3
    assert rc.distance_summary(d)["mean_mm"] == pytest.approx(0.5, abs=1e-4)
    # Unsorted queries give the same answer in the caller's order.
    d2 = rc.SurfaceDistance.from_mesh(mesh)(moved, presort=False)
    np.testing.assert_allclose(d, d2, atol=1e-6)


def test_displaced_samples_on_a_non_convex_mesh():
    """The same on a tube (concave inner wall): 0.5 mm along the normal, into the bore too, is 0.5 mm."""
    mesh = trimesh.creation.annulus(r_min=5.0, r_max=10.0, height=30.0, sections=256)
    pts, face = trimesh.sample.sample_surface(mesh, 20000, seed=1)
    d = rc.SurfaceDistance.from_mesh(mesh)(pts + 0.5 * mesh.face_normals[face])
    inner = np.hypot(pts[:, 0], pts[:, 1]) < 7.5
    assert inner.sum() > 1000
    assert np.abs(d - 0.5).max() < 1e-3


def test_surface_distance_counts_queries():
    sd = rc.SurfaceDistance.from_mesh(trimesh.creation.box(extents=(10, 10, 10)))
    sd(np.zeros((10, 3)))
    assert sd.n_queries == 10 and sd.seconds > 0
    np.testing.assert_allclose(sd(np.zeros((3, 3))), 5.0, atol=1e-5)
    assert len(sd(np.zeros((0, 3)))) == 0


def test_histogram_quantiles_match_numpy():
    d = np.random.default_rng(0).gamma(2.0, 0.3, 100_000)
    h = rc.distance_histogram(d)
    assert h.sum() == len(d)
    for q in (0.5, 0.95):
        assert rc.histogram_quantile(h, q) == pytest.approx(np.quantile(d, q), abs=rc.HIST_BIN_MM)
    assert np.isnan(rc.histogram_quantile(np.zeros(5), 0.5))
    assert rc.histogram_quantile(rc.distance_histogram([100.0]), 0.5) == rc.HIST_MAX_MM


# ----------------------------------------------------------------------------- voxels


def test_voxel_accumulator_is_exact_and_chunk_independent():
    rng = np.random.default_rng(1)
    pts = rng.uniform(-5, 5, (5000, 3)) + 200.0
    whole = rc.VoxelAccumulator(1.0)
    whole.add(pts)
    chunked = rc.VoxelAccumulator(1.0, buffer_points=300)
    for part in np.array_split(pts, 37):
        chunked.add(part)
    a, b = rc.VoxelAccumulator(1.0), rc.VoxelAccumulator(1.0)
    a.add(pts[:2000])
    b.add(pts[2000:])
    a.merge(b)
    # Brute force: the mean of each voxel's points.
    ijk = np.floor(pts / 1.0).astype(int)
    ref = pd.DataFrame(pts).groupby([ijk[:, 0], ijk[:, 1], ijk[:, 2]]).mean().to_numpy()
    for acc in (whole, chunked, a):
        assert len(acc) == len(ref) and acc.n_added == len(pts)
        np.testing.assert_allclose(np.sort(acc.centroids(), axis=0), np.sort(ref, axis=0), atol=1e-9)
    np.testing.assert_array_equal(whole.keys, chunked.keys)
    assert whole.counts.sum() == len(pts)


def test_voxel_accumulator_rejects_bad_input():
    with pytest.raises(ValueError, match="voxel_mm must be positive"):
        rc.VoxelAccumulator(0.0)
    with pytest.raises(ValueError, match="voxel sizes differ"):
        rc.VoxelAccumulator(1.0).merge(rc.VoxelAccumulator(0.5))
    with pytest.raises(ValueError, match="beyond"):
        rc.voxel_keys(np.array([[1e9, 0, 0]]), 0.5)


# ----------------------------------------------------------------------------- visibility


def test_visible_surface_is_the_swept_top_of_the_cylinder():
    mesh = cylinder()
    samples = rc.sample_surface(mesh, 0.5, seed=0)
    planes = np.stack([plane_pose(z) for z in np.arange(-10.0, 10.01, 0.5)])
    vis = rc.visible_surface(samples, planes, (WIDTH, HEIGHT), (SP, SP), rc.SurfaceDistance.from_mesh(mesh),
                             gamma_mm=0.3, max_incidence_deg=85.0)
    p = samples.points[vis]
    assert len(p) > 100
    assert np.all(np.abs(p[:, 2]) <= 10.3 + 1e-6)  # within gamma of a swept plane
    assert np.all(p[:, 1] >= RADIUS * np.cos(np.radians(85.0)) - 0.05)  # shadowed lower half and grazing sides out
    # Every side sample facing the probe within the swept slab is visible (planes 0.5 mm apart, gamma 0.3).
    side = (np.abs(samples.points[:, 2]) < 10.0) & (samples.points[:, 1] > 1.0) & \
           (np.hypot(samples.points[:, 0], samples.points[:, 1]) > RADIUS - 0.01)
    assert vis[side].mean() == 1.0
    # No plane, nothing visible; an occluding slab above the bone shadows everything.
    assert not rc.visible_surface(samples, np.zeros((0, 4, 4)), (WIDTH, HEIGHT), (SP, SP),
                                  rc.SurfaceDistance.from_mesh(mesh)).any()
    slab = trimesh.creation.box(extents=(60, 2, 60))
    slab.apply_translation([0, 15, 0])
    occluded = rc.visible_surface(samples, planes, (WIDTH, HEIGHT), (SP, SP),
                                  rc.SurfaceDistance.from_mesh(trimesh.util.concatenate([mesh, slab])), gamma_mm=0.3)
    assert not occluded.any()


def test_backward_distances_and_label_points():
    s = np.array([[0.0, 0, 0], [3.0, 4.0, 0]])
    np.testing.assert_allclose(rc.backward_distances(s, np.zeros((1, 3))), [0.0, 5.0])
    assert np.isinf(rc.backward_distances(s, np.zeros((0, 3)))).all()
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[4, 7] = True
    pose = plane_pose(2.0)
    np.testing.assert_allclose(rp.label_points(mask, pose, np.eye(4), (SP, SP)),
                               geometry.pixels_to_ct(np.array([[7.0, 4.0]]), pose, np.eye(4), (SP, SP)))
    assert rp.label_points(np.zeros((3, 3), bool), pose, np.eye(4), (SP, SP)).shape == (0, 3)


# ----------------------------------------------------------------------------- records and bones


def test_record_bones_forms(tmp_path, synthetic):
    spec = dataset.read_specimen(synthetic / "dataset" / "specimen01")
    assert rp.read_record_bones(None, spec) == {"record01": rc.ALL, "record02": rc.ALL}
    assert rp.read_record_bones(synthetic / "raw" / "specimen01", spec) == {"record01": "tibia", "record02": "fibula"}
    for form in ({"records": {"record01": {"bone": "foot"}}}, [{"name": "record01", "bone": "foot"}]):
        (tmp_path / "records.json").write_text(json.dumps(form))
        assert rp.read_record_bones(tmp_path, spec)["record01"] == "foot"
    (tmp_path / "records.json").write_text("[{\"name\": \"record01\"}]")
    with pytest.raises(DatasetError, match=r"records.json item 0"):
        rp.read_record_bones(tmp_path, spec)
    (tmp_path / "records.json").write_text("{not json")
    with pytest.raises(DatasetError, match="records.json: not valid JSON"):
        rp.read_record_bones(tmp_path, spec)


def test_record_frames_drop_discarded_frames(synthetic):
    rec = dataset.read_specimen(synthetic / "dataset" / "specimen01").records[0]
    f = rp.record_frames(rec, dataset.LABELS, ["original", "optimized"])
    assert len(f.timestamps) == 39  # 41 frames, 2 discarded (no label, NaN optimised pose)
    fp = rp.record_frames(rec, dataset.LABELS_PRED, ["original", "optimized"])
    assert len(fp.timestamps) == 39  # predictions exist for all 41; NaN poses drop out for both methods
    assert len(rp.record_frames(rec, dataset.LABELS_PRED, ["original"]).timestamps) == 41
    assert len(rp.record_frames(rec, dataset.LABELS, ["original", "optimized"], frame_step=2).timestamps) == 20
    assert all(np.isfinite(p).all() for p in f.poses.values())


# ----------------------------------------------------------------------------- a specimen end to end


@pytest.fixture(scope="module")
def specimen01(synthetic):
    spec = dataset.read_specimen(synthetic / "dataset" / "specimen01")
    bones = rp.read_record_bones(synthetic / "raw" / "specimen01", spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rspec.reconstruct_specimen(spec, PARAMS, np.eye(4), (SP, SP), bones, out_dir=synthetic / "ply",
                                       progress=False)


def rows_of(result, source, poses, group=rc.ALL):
    (row,) = [r for r in result["rows"] if (r["source"], r["poses"], r["group"]) == (source, poses, group)]
    return row


def test_specimen_grid_optimised_beats_initial(specimen01):
    r = specimen01
    assert r["skipped"] is None
    assert {(x["source"], x["poses"], x["group"]) for x in r["rows"]} == {
        (s, m, g) for s in ("labels", "predicted") for m in ("original", "optimized") for g in ("all", "tibia", "fibula")}
    opt, ini = rows_of(r, "labels", "optimized"), rows_of(r, "labels", "original")
    # True poses: points lie on the surface up to the label's rasterisation (0.36 mm band, 0.5 mm voxels).
    assert opt["mean_mm"] < 0.2 and opt["p95_mm"] < 0.4
    assert ini["mean_mm"] > 2 * opt["mean_mm"]
    assert opt["coverage"] > 0.95 and opt["coverage"] >= ini["coverage"]
    assert opt["chamfer_mm"] < ini["chamfer_mm"]
    assert opt["n_frames"] == 78 and opt["n_label_points"] > 78 * 20
    assert opt["median_mm"] <= opt["p95_mm"]
    # Predicted == CT labels here: the same frames, hence the same numbers.
    assert rows_of(r, "predicted", "optimized")["mean_mm"] == pytest.approx(opt["mean_mm"])
    # Per bone: the tibia group holds record01 and is covered against CT_bone_model_tibia.stl,
    # the fibula group (no per-bone model) against the merged one, with a note.
    assert r["groups"]["tibia"]["records"] == ["record01"] and r["groups"]["tibia"]["mesh"] == "tibia"
    assert r["groups"]["fibula"]["mesh"] == "merged"
    assert any("CT_bone_model_fibula.stl" in n for n in r["notes"])
    assert rows_of(r, "labels", "optimized", "tibia")["n_frames"] == 39
    assert r["n_queries"] >= sum(x["n_points"] for x in r["rows"])


def test_specimen_writes_point_clouds(specimen01):
    pts, dist = pc.read_ply(specimen01["ply"]["labels/optimized/all"])
    row = rows_of(specimen01, "labels", "optimized")
    assert pts.shape == (row["n_points"], 3)
    assert dist.mean() == pytest.approx(row["mean_mm"], rel=1e-6)
    np.testing.assert_allclose(np.hypot(pts[:, 0], pts[:, 1]), RADIUS, atol=0.5)


def test_specimen_without_labelled_frame_is_skipped(synthetic):
    spec = dataset.read_specimen(synthetic / "dataset" / "specimen03")
    r = rspec.reconstruct_specimen(spec, PARAMS, np.eye(4), (SP, SP), progress=False)
    assert r["skipped"] and "no labelled frame" in r["skipped"] and "specimen03" in r["skipped"]
    assert r["rows"] == []
    agg = batch.aggregate([r], PARAMS.sources, PARAMS.pose_methods)
    assert agg["skipped"] == [{"specimen": "specimen03", "reason": r["skipped"]}]
    assert agg["n_specimens"] == 0 and agg["grid"]["labels_optimized"]["mean_mm"] is None


def test_unreadable_label_is_reported_and_skipped(tmp_path):
    spec_dir = make_specimen(tmp_path, n_frames=6, predicted=False, discard=())
    bad = spec_dir / "record01" / dataset.LABELS / "1048_label.png"
    bad.write_bytes(b"not a png")
    spec = dataset.read_specimen(spec_dir)
    r = rspec.reconstruct_specimen(spec, replace(PARAMS, sources=("labels",), save_ply=False), np.eye(4), (SP, SP),
                                progress=False)
    assert len(r["bad_frames"]) == 1 and "1048_label.png" in r["bad_frames"][0]
    assert rows_of(r, "labels", "optimized")["n_frames"] == 11


def test_run_caches_and_aggregates(synthetic, monkeypatch):
    monkeypatch.setenv("ULTRABONES_BUILD_ROOT", str(synthetic / "build"))
    # the synthetic dataset ships its labels and optimised poses: it is its own derived dataset
    paths = Paths(build_dir=synthetic / "build" / "t", twin_dir=synthetic, figures_dir=synthetic / "figs",
                  derived_root=synthetic / "dataset")
    names = ["specimen01", "specimen02", "specimen03"]
    p = replace(PARAMS, save_ply=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = batch.run(paths, p, specimens=names, only="specimen02", progress=False)
        assert [r["specimen"] for r in one.specimens] == ["specimen02"]
        assert one.pending == ("specimen01", "specimen03")
        assert "not yet reconstructed" in batch.report(one) and "specimen03" in batch.report(one)
        res = batch.run(paths, p, specimens=names, progress=False)
    assert res.pending == () and [r["specimen"] for r in res.specimens] == names and res.params == p
    assert "skipped: specimen03" in batch.report(res)
    cache = paths.cache(batch.STEM)
    stamp = (cache / "specimen02.json").stat().st_mtime_ns
    res2 = batch.run(paths, p, specimens=None, progress=False).specimens  # all from the cache; None: every specimen
    assert (cache / "specimen02.json").stat().st_mtime_ns == stamp
    agg = batch.aggregate(res2, p.sources, p.pose_methods)
    assert agg["n_specimens"] == 2 and agg["skipped"][0]["specimen"] == "specimen03"
    cells = agg["grid"]
    assert cells["labels_optimized"]["mean_mm"] < cells["labels_original"]["mean_mm"]
    assert cells["predicted_optimized"]["specimens"] == ["specimen01"]  # only specimen01 has predictions
    for c in cells.values():
        assert 0 < c["coverage"] <= 1 and c["median_mm"] <= c["p95_mm"] and c["chamfer_mm"] > 0
    assert agg["points_per_second"] > 0 and agg["n_points"] > 0
    table = batch.results_table(res2)
    assert set(table["specimen"]) == {"specimen01", "specimen02"} and "hist" not in table
    with pytest.raises(DatasetError, match="specimen99"):
        batch.run(paths, p, specimens=names, only="specimen99", progress=False)


def test_specimen_with_broken_input_is_reported_and_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("ULTRABONES_BUILD_ROOT", str(tmp_path / "build"))
    data = tmp_path / "twin" / "dataset"
    make_specimen(data, "specimen01", n_frames=5, predicted=False, discard=())
    (data / "specimen01" / "CT_bone_model.stl").unlink()
    (data / "specimen02").mkdir(parents=True)  # no record at all
    write_calibration(data, np.eye(4), (SP, SP), None)
    paths = Paths(build_dir=tmp_path / "build" / "t", twin_dir=tmp_path / "twin", figures_dir=tmp_path / "f",
                  derived_root=data)
    with pytest.warns(UserWarning, match="specimen01 skipped"):
        res = batch.run(paths, replace(PARAMS, save_ply=False), specimens=["specimen01", "specimen02"],
                        progress=False).specimens
    assert "CT_bone_model.stl" in res[0]["skipped"] and "no records" in res[1]["skipped"]
    assert not (paths.cache(batch.STEM) / "specimen01.json").exists()  # a broken input is not cached
    assert [s["specimen"] for s in batch.aggregate(res, ["labels"], ["optimized"])["skipped"]] == ["specimen01",
                                                                                             "specimen02"]


def test_figures_draw(specimen01, synthetic):
    import matplotlib

    matplotlib.use("Agg")
    fig = figures.plot_histograms([specimen01])
    assert len(fig.axes) == 2
    fig2 = figures.plot_grid(batch.results_table([specimen01]))
    assert fig2.axes
    clouds = {m: pc.read_ply(specimen01["ply"][f"labels/{m}/all"]) for m in ("original", "optimized")}
    view = figures.view_angles(specimen01["groups"]["all"]["view_direction"])
    assert view == pytest.approx((0.0, 90.0), abs=5.0)  # the probe sat at +y: look from +y
    fig3 = figures.render_distances(cylinder(), clouds, view=view)
    assert len(fig3.axes) == 3  # two panels and the colour bar
    fig4, used = figures.render_figure(cylinder(), clouds, specimen01["groups"]["all"]["view_direction"],
                                  backend="matplotlib")
    assert used == "matplotlib (matplotlib requested)" and len(fig4.axes) == 3
    # notebook 06's render: the specimen with predicted labels, a panel per pose method
    render = figures.example_render([specimen01], PARAMS.pose_methods, synthetic / "dataset", backend="matplotlib")
    assert render.used == "matplotlib (matplotlib requested)" and render.images is None
    fig5 = figures.draw_example(render)
    assert len(fig5.axes) == 3 and "specimen01" in fig5._suptitle.get_text()
    assert "predicted labels" in fig5.axes[0].get_title()
    no_ply = {**specimen01, "ply": {}}
    assert figures.example_render([no_ply], PARAMS.pose_methods, synthetic) is None
    # the stage's figures of a result: the grid, the histograms and the render (left out without a render)
    result = batch.ReconstructionResult((specimen01,), (), PARAMS, 0.0, render=render)
    assert list(batch.figures(result)) == ["fig_reconstruction_grid", "fig_reconstruction_distance",
                                           "fig_reconstruction_render"]
    assert "fig_reconstruction_render" not in batch.figures(batch.ReconstructionResult((specimen01,), (), PARAMS, 0.0))
    assert batch.metrics(result)["render"] == "matplotlib (matplotlib requested)"


def test_open3d_render_or_a_clear_failure(specimen01):
    """open3d's offscreen renderer (Vulkan on the CPU) draws non-blank images, or fails with a RuntimeError."""
    clouds = {m: pc.read_ply(specimen01["ply"][f"labels/{m}/all"]) for m in ("original", "optimized")}
    try:
        images = figures.render_open3d(cylinder(), clouds, [0.0, 1.0, 0.3], size=(160, 120), timeout_s=20)
    except RuntimeError as exc:
        assert "open3d offscreen rendering" in str(exc)
        pytest.skip(str(exc))
    assert set(images) == {"original", "optimized"}
    for im in images.values():
        assert im.shape == (120, 160, 3) and im.dtype == np.uint8 and im.std() > 0


def test_view_angles():
    assert figures.view_angles([0, 0, 1])[0] == pytest.approx(90)
    assert figures.view_angles([0, 1, 0]) == pytest.approx((0, 90))


def test_morton_order_is_a_local_permutation():
    pts = np.random.default_rng(3).uniform(0, 50, (20000, 3))
    order = morton_order(pts)
    np.testing.assert_array_equal(np.sort(order), np.arange(len(pts)))
    step = np.linalg.norm(np.diff(pts[order], axis=0), axis=1).mean()
    assert step < 0.2 * np.linalg.norm(np.diff(pts, axis=0), axis=1).mean()
    assert len(morton_order(np.zeros((0, 3)))) == 0


def test_chamfer_distance_known_answers():
    # two parallel grids 1 mm apart, same x-y: every nearest distance is 1 mm
    g = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0), indexing="ij"), -1).reshape(-1, 2)
    a = np.c_[g, np.zeros(len(g))]
    b = np.c_[g, np.ones(len(g))]
    cd = rc.chamfer_distance(a, b)
    assert cd["chamfer_mm"] == pytest.approx(1.0) and cd["a_to_b_mm"] == pytest.approx(1.0)
    # asymmetric: A = {0}, B = {0, 3} on a line: A->B 0, B->A (0 + 3) / 2 = 1.5; CD = mean of the two = 0.75
    cd = rc.chamfer_distance([[0, 0, 0]], [[0, 0, 0], [3, 0, 0]])
    assert (cd["a_to_b_mm"], cd["b_to_a_mm"], cd["chamfer_mm"]) == pytest.approx((0.0, 1.5, 0.75))
    assert rc.chamfer_distance(a, a)["chamfer_mm"] == 0.0
    assert np.isnan(rc.chamfer_distance(a, np.zeros((0, 3)))["chamfer_mm"])
    # UltraBoneUDF's crop of the reference to the imaged part
    kept = rc.points_within(b, a[:5], max_mm=1.0)
    np.testing.assert_array_equal(kept, b[:5])


def test_compare_to_surface_known_answers():
    # reference: the cylinder; cloud: samples of a concentric cylinder 0.5 mm outside, on its top half only
    surf = rc.SurfaceDistance.from_mesh(cylinder())
    samples = rc.sample_surface(cylinder(), 0.3, seed=0).points
    top = samples[(samples[:, 1] > 0) & (np.abs(samples[:, 2]) < 20)]
    bottom = samples[(samples[:, 1] < -5) & (np.abs(samples[:, 2]) < 20)]
    cloud = top * np.array([1.05, 1.05, 1.0])  # radius 10.5: 0.5 mm from the surface everywhere
    row = rc.compare_to_surface(cloud, surf, top, coverage_mm=1.0, samples=samples, crop_mm=1.0)
    assert row["mean_mm"] == pytest.approx(0.5, abs=0.01) and row["p95_mm"] == pytest.approx(0.5, abs=0.01)
    assert row["sum_mm"] == pytest.approx(0.5 * len(cloud), rel=0.02)
    assert row["coverage"] == 1.0  # every imaged sample has a cloud point 0.5 mm above it
    assert row["chamfer_mm"] == pytest.approx(0.5, abs=0.03)  # point sets 0.3 mm apart laterally: a little above
    assert row["chamfer_udf_crop_mm"] == pytest.approx(row["chamfer_mm"], abs=0.03)
    # half the imaged part missed: the coverage halves and the backward term grows; the UltraBoneUDF crop
    # (to the cloud itself) does not see the missing half
    both = np.concatenate([top, bottom])
    miss = rc.compare_to_surface(cloud, surf, both, 1.0, samples, 1.0)
    assert miss["coverage"] == pytest.approx(len(top) / len(both))
    assert miss["chamfer_mm"] > 4 * row["chamfer_mm"]
    assert miss["chamfer_udf_crop_mm"] == pytest.approx(row["chamfer_udf_crop_mm"])
    empty = rc.compare_to_surface(np.zeros((0, 3)), surf, top)
    assert empty["n_points"] == 0 and np.isnan(empty["mean_mm"]) and empty["coverage"] == 0.0


def test_pool_comparisons_weights_points_and_samples():
    def row(n, mean, nv, back, covered, fwd):
        return {"n_points": n, "sum_mm": n * mean, "hist": rc.distance_histogram(np.full(n, mean)).tolist(),
                "n_imaged": nv, "sum_back_mm": nv * back, "n_covered": covered, "sum_fwd_pp_mm": n * fwd,
                "chamfer_udf_crop_mm": 0.5 * (fwd + back)}

    p = rc.pool_comparisons([row(100, 1.0, 10, 2.0, 5, 1.0), row(300, 0.2, 30, 1.0, 30, 0.2)])
    assert p["n_specimens"] == 2 and p["n_points"] == 400
    assert p["mean_mm"] == pytest.approx((100 * 1.0 + 300 * 0.2) / 400)
    assert p["median_mm"] == pytest.approx(0.2, abs=0.01)
    assert p["coverage"] == pytest.approx(35 / 40)
    assert p["chamfer_mm"] == pytest.approx(0.5 * ((100 + 60) / 400 + (20 + 30) / 40))
    assert p["chamfer_udf_crop_mm"] == pytest.approx(0.5 * (1.5 + 0.6))
    none = rc.pool_comparisons([])
    assert none["n_specimens"] == 0 and none["mean_mm"] is None and none["chamfer_mm"] is None


def test_metrics_keep_ct_keys_and_merge_the_reference(synthetic, monkeypatch):
    monkeypatch.setenv("ULTRABONES_BUILD_ROOT", str(synthetic / "build"))
    paths = Paths(build_dir=synthetic / "build" / "m", twin_dir=synthetic, figures_dir=synthetic / "figs",
                  derived_root=synthetic / "dataset")  # the synthetic dataset ships its labels
    result = batch.run(paths, replace(PARAMS, save_ply=False), specimens=["specimen01"], progress=False)
    m = batch.metrics(result)
    cell = m["grid"]["labels_optimized"]
    assert set(batch.CT_MODEL_KEYS) <= set(cell) and "specimens" not in cell
    assert m["self_consistency_vs_ct_model"]["cells"]["labels_optimized"]["mean_mm"] == cell["mean_mm"]
    assert "self-consistency" in m["self_consistency_vs_ct_model"]["note"]
    assert m["optimized_lower_mean"] == {"labels": True, "predicted": True}
    assert m["optimized_lower_against"] == "CT bone model" and m["vs_truth"] is None and m["render"] == "none"
    assert m["seconds"] == result.seconds and m["pending"] == [] and m["specimens"] == ["specimen01"]
    # a reference that says the original poses are better decides optimized_lower_mean
    ref = {"grid": {"labels_optimized": {"mean_true_mm": 2.0}, "labels_original": {"mean_true_mm": 1.0}},
           "per_specimen": {"specimen01": {"labels_optimized": {"mean_true_mm": 2.0}}}, "missing": []}
    m = batch.metrics(result, ref)
    assert m["grid"]["labels_optimized"]["mean_true_mm"] == 2.0 and "mean_mm" in m["grid"]["labels_optimized"]
    assert m["optimized_lower_mean"]["labels"] is False and m["optimized_lower_against"] == "true bone surface"
    assert m["per_specimen"]["specimen01"]["labels_optimized"]["mean_true_mm"] == 2.0
    assert "mean_mm" in m["per_specimen"]["specimen01"]["labels_optimized"] and m["vs_truth"] == {"missing": []}
    t = batch.reference_table(ref["per_specimen"])
    assert t.loc[0, ["specimen", "source", "poses", "group"]].tolist() == ["specimen01", "labels", "optimized", "all"]


def test_grid_table_and_check_grid():
    good = {"labels_optimized": {"n_specimens": 1, "mean_mm": 0.2, "median_mm": 0.1, "p95_mm": 0.5, "chamfer_mm": 0.3,
                                 "coverage": 0.8, "n_specimens_true": 1, "mean_true_mm": 0.4, "median_true_mm": 0.3,
                                 "p95_true_mm": 0.9, "chamfer_true_mm": 0.5, "coverage_true": 0.7},
            "predicted_original": {"n_specimens": 0, "mean_mm": None}}
    batch.check_grid(good)
    t = batch.grid_table(good, batch.TRUE_KEYS)
    assert t.loc["labels_optimized", "chamfer_true_mm"] == 0.5 and list(t.columns)[-1] == "n_specimens"
    with pytest.raises(AssertionError, match="labels_optimized: coverage_true"):
        batch.check_grid({"labels_optimized": {**good["labels_optimized"], "coverage_true": 1.5}})
    with pytest.raises(AssertionError, match="median above p95"):
        batch.check_grid({"labels_optimized": {**good["labels_optimized"], "median_mm": 0.9}})
    with pytest.raises(AssertionError, match="mean_true_mm"):
        batch.check_grid({"labels_optimized": {**good["labels_optimized"], "mean_true_mm": float("nan")}})


def _cell_row(poses, n, mean_mm, n_visible, back_mm, n_covered):
    """A specimen's grid row (group ``all``) whose n points all lie ``mean_mm`` from the surface."""
    d = np.full(n, mean_mm)
    return {"source": "labels", "poses": poses, "group": rc.ALL, "n_frames": 1, "n_label_points": 2 * n,
            "n_points": n, **rc.distance_summary(d), "n_visible": n_visible, "n_covered": n_covered,
            "sum_mm": float(d.sum()), "sum_back_mm": n_visible * back_mm, "hist": rc.distance_histogram(d).tolist(),
            "coverage": n_covered / n_visible, "chamfer_mm": 0.5 * (mean_mm + back_mm)}


def _specimen_result(name, rows, n_queries=0, query_seconds=0.0, skipped=None, bad_frames=()):
    return {"specimen": name, "skipped": skipped, "rows": rows, "groups": {}, "notes": [],
            "bad_frames": list(bad_frames), "n_label_points": 0, "n_queries": n_queries,
            "query_seconds": query_seconds, "ply": {}}


def test_metrics_pool_a_known_grid():
    """Two specimens of 100 and 300 points and a skipped one: the pooled cells weight points and samples."""
    s1 = _specimen_result("s1", [_cell_row("optimized", 100, 1.0, 10, 2.0, 5),
                                 _cell_row("original", 100, 2.0, 10, 3.0, 2)],
                          n_queries=200, query_seconds=0.1, bad_frames=["record01/Labels/1_label.png: unreadable"])
    s2 = _specimen_result("s2", [_cell_row("optimized", 300, 0.2, 30, 1.0, 30),
                                 _cell_row("original", 300, 0.4, 30, 1.0, 20)], n_queries=600, query_seconds=0.3)
    s3 = _specimen_result("s3", [], skipped="no labelled frame")
    p = replace(PARAMS, sources=("labels",))
    m = batch.metrics(batch.ReconstructionResult((s1, s2, s3), (), p, 2.5))
    opt, orig = m["grid"]["labels_optimized"], m["grid"]["labels_original"]
    assert set(m["grid"]) == {"labels_optimized", "labels_original"}
    assert opt["n_specimens"] == 2 and opt["n_points"] == 400 and opt["n_label_points"] == 800
    assert opt["mean_mm"] == pytest.approx((100 * 1.0 + 300 * 0.2) / 400)  # 0.4 mm: every point counts once
    assert opt["median_mm"] == pytest.approx(0.2, abs=0.01) and opt["p95_mm"] == pytest.approx(1.0, abs=0.01)
    assert opt["coverage"] == pytest.approx(35 / 40)  # covered over visible samples, pooled
    assert opt["chamfer_mm"] == pytest.approx(0.5 * (0.4 + (10 * 2.0 + 30 * 1.0) / 40))
    assert orig["mean_mm"] == pytest.approx((100 * 2.0 + 300 * 0.4) / 400)
    assert m["optimized_lower_mean"] == {"labels": True} and m["optimized_lower_against"] == "CT bone model"
    assert m["n_specimens"] == 2 and m["specimens"] == ["s1", "s2"] and m["bad_frames"] == 1
    assert m["skipped"] == [{"specimen": "s3", "reason": "no labelled frame"}]
    assert m["n_points_reconstruction"] == 800 and m["points_per_second"] == pytest.approx(800 / 0.4)
    assert m["per_specimen"]["s2"]["labels_original"]["mean_mm"] == pytest.approx(0.4)
    assert m["seconds"] == 2.5 and m["vs_truth"] is None
    batch.check(batch.ReconstructionResult((s1, s2, s3), (), p, 2.5, on_twin=True))
    # the checks the notebook asserts
    worse = {"grid": {"labels_optimized": {"mean_true_mm": 2.0}, "labels_original": {"mean_true_mm": 1.0}}}
    batch.check(batch.ReconstructionResult((s1,), (), p, 1.0), worse)  # off the twin no truth judges the poses
    with pytest.raises(AssertionError, match="optimised poses do not bring"):
        batch.check(batch.ReconstructionResult((s1,), (), p, 1.0, on_twin=True), worse)
    with pytest.raises(AssertionError, match="no specimen reconstructed"):
        batch.check(batch.ReconstructionResult((s3,), (), p, 0.0, on_twin=True))


def test_params_from_the_profile_section_and_overrides():
    from ultrabones.core import params
    from ultrabones.core.errors import ParamsError
    from ultrabones.core.paths import PARAMS_DIR

    section = params.load_profile("smoke", PARAMS_DIR).values["reconstruction"]
    p = batch.ReconstructionParams.from_section(section)
    assert p.sources == tuple(section["sources"]) and p.voxel_mm == section["voxel_mm"]
    with pytest.raises(FrozenInstanceError):
        p.voxel_mm = 1.0
    assert p.for_specimen({"specimen02": {"voxel_mm": 1.0}}, "specimen02").voxel_mm == 1.0
    assert p.for_specimen({"specimen02": {"voxel_mm": 1.0}}, "specimen01") == p
    with pytest.raises(ParamsError, match="specimen02 overrides: unknown key 'reconstruction.voxel'"):
        p.for_specimen({"specimen02": {"voxel": 1.0}}, "specimen02")
    with pytest.raises(ParamsError, match="voxel_mm"):
        batch.ReconstructionParams.from_section({**section, "voxel_mm": 0.0})
    with pytest.raises(ParamsError, match="lacks key"):
        batch.ReconstructionParams.from_section({k: v for k, v in section.items() if k != "render"})
    with pytest.raises(ParamsError, match="not one of"):
        replace(p, sources=("labels", "manual"))
