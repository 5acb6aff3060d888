"""The shadow-peak bone detector on synthetic frames with a known surface."""

import time

import numpy as np
import pytest
from scipy import ndimage

from ultrabones.evaluation import bone_detector as bd
from ultrabones.evaluation import shadow_peak as sp
from ultrabones.core.errors import DatasetError, ParamsError
from ultrabones.core.distance_scores import distance_metrics
from ultrabones.core.label_distances import directed_distances

SPACING = (0.2, 0.2)  # mm per pixel, as the twin
SHAPE = (218, 256)  # rows (depth) x columns


def true_rows(shape=SHAPE, spacing=SPACING):
    """The known surface: depth 20 mm + 3 mm sin, per column (row index, float)."""
    u = np.arange(shape[1]) * spacing[0]
    return (20.0 + 3.0 * np.sin(2 * np.pi * u / 40.0)) / spacing[1]


def speckle(rng, shape=SHAPE):
    """Laterally correlated speckle-like texture, mean about 70 grey levels."""
    s = rng.rayleigh(1.0, shape)
    return ndimage.gaussian_filter(s, (0.7, 1.5)) * 55.0


def bone_frame(seed=0, rows=None, shape=SHAPE):
    """A B-mode-like frame: speckle, a bright skin line, a bright bone echo on ``rows`` and a dark shadow under it."""
    rng = np.random.default_rng(seed)
    rows = true_rows(shape) if rows is None else rows
    v = np.arange(shape[0])[:, None]
    img = speckle(rng, shape)
    img[:3] += 120.0  # skin / lens echo: bright but no shadow below
    img = np.where(v > rows[None, :] + 1.0, img * 0.15, img)  # acoustic shadow
    img += 200.0 * np.exp(-0.5 * ((v - rows[None, :]) / 1.0) ** 2)  # the echo, about 0.5 mm thick
    img += rng.normal(0.0, 8.0, shape)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def no_bone_frame(seed=0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    img = speckle(rng, shape)
    img[:3] += 120.0
    img += rng.normal(0.0, 8.0, shape)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def true_band(rows, gamma=0.3, shape=SHAPE):
    return sp.draw_band(rows, shape, SPACING, gamma)


def test_detects_known_surface_within_a_quarter_mm():
    rows = true_rows()
    img = bone_frame(seed=1, rows=rows)
    found = sp.surface_rows(img, SPACING, sp.DetectorParams())
    ok = np.isfinite(found)
    assert ok.mean() > 0.95  # nearly every scan line finds the bone
    err_mm = np.abs(found[ok] - rows[ok]) * SPACING[1]
    assert np.median(err_mm) <= 0.2 and err_mm.max() <= 0.5
    label = sp.detect(img, SPACING)
    truth = true_band(rows)
    # every detected pixel within 0.25 mm of the true band, and the band found almost whole
    assert directed_distances(label, truth, SPACING).max() <= 0.25
    m = distance_metrics(label, truth, SPACING, [0.5])
    assert m["completeness"][0] > 0.95 and m["accuracy"][0] > 0.99


def test_band_is_two_gamma_thick():
    rows = np.full(SHAPE[1], 100.0)
    band = sp.draw_band(rows, SHAPE, SPACING, 0.3)
    # 0.3 mm each side of a row at 0.2 mm per pixel: the row and one each side
    assert set(band.sum(axis=0).tolist()) == {3}
    assert sp.draw_band(np.full(SHAPE[1], np.nan), SHAPE, SPACING, 0.3).sum() == 0


def test_no_bone_gives_an_almost_empty_mask():
    for seed in range(3):
        label = sp.detect(no_bone_frame(seed), SPACING)
        assert label.mean() < 0.002, seed  # at most ~110 of 55,808 pixels


def test_depth_offset_moves_the_band():
    img = bone_frame(seed=2)
    a = sp.surface_rows(img, SPACING, sp.DetectorParams())
    b = sp.surface_rows(img, SPACING, sp.DetectorParams(depth_offset_mm=0.4))
    ok = np.isfinite(a)
    np.testing.assert_allclose(b[ok] - a[ok], 2.0)


def test_fast_enough():
    img = bone_frame(seed=3)
    sp.detect(img, SPACING)
    t0 = time.perf_counter()
    for _ in range(20):
        sp.detect(img, SPACING)
    ms = 1000 * (time.perf_counter() - t0) / 20
    assert ms < 60, ms  # target < 20 ms per 256 x 218 frame; loose bound for a busy shared machine


def test_fit_picks_parameters_on_training_frames():
    images = [bone_frame(seed=s) for s in range(3)] + [no_bone_frame(seed=10)]
    labels = [true_band(true_rows()) for _ in range(3)] + [np.zeros(SHAPE, bool)]
    grid = {"min_score": (0.05, 0.3, 0.95), "depth_offset_mm": (-0.6, 0.0, 0.6)}
    best, table = bd.fit(images, labels, SPACING, grid)
    assert best.depth_offset_mm == 0.0 and best.min_score < 0.95
    assert len(table) == 9 and table["f1"].iloc[0] == table["f1"].max()
    assert table["f1"].iloc[0] > 0.7  # 3 bone frames near 1, the empty one scores 0 only if something is found


def test_bad_input():
    with pytest.raises(DatasetError, match="uint8"):
        sp.detect(np.zeros(SHAPE), SPACING)
    with pytest.raises(ParamsError, match="median_columns"):
        sp.DetectorParams(median_columns=4)
    with pytest.raises(ParamsError, match="min_score"):
        sp.DetectorParams(min_score=1.5)
    with pytest.raises(ParamsError, match="unknown parameter"):
        bd.fit([bone_frame()], [true_band(true_rows())], SPACING, {"nope": (1,)})
    with pytest.raises(DatasetError, match="as many labels"):
        bd.fit([bone_frame()], [], SPACING)


def test_phase_symmetry_finds_dim_bone_that_intensity_misses():
    rows = true_rows()
    dim = (bone_frame(seed=4, rows=rows) * 0.35).astype(np.uint8)  # the whole frame 3x darker: low-intensity bone
    ps = sp.DetectorParams(enhancement="phase_symmetry", min_peak=0.0)
    found = sp.surface_rows(dim, SPACING, ps)
    ok = np.isfinite(found)
    assert ok.mean() > 0.9
    assert np.median(np.abs(found[ok] - rows[ok])) * SPACING[1] <= 0.2
    assert np.isfinite(sp.surface_rows(dim, SPACING, sp.DetectorParams())).mean() < 0.1  # below min_peak
    for seed in range(3):
        assert sp.detect(no_bone_frame(seed), SPACING, ps).mean() < 0.002
    with pytest.raises(ParamsError, match="enhancement"):
        sp.DetectorParams(enhancement="magic")


def test_score_detector_gives_the_evaluation_rows(tmp_path):
    from ultrabones.evaluation import metrics
    from ultrabones.core.dataset import read_specimen, write_image, write_label

    rec = tmp_path / "specimen03" / "record01"
    for t in (10, 20):
        write_image(rec / "UltrasoundImages" / f"{t}.png", bone_frame(seed=t))
        write_label(rec / "Labels" / f"{t}_label.png", true_band(true_rows()))
    frames = metrics.labelled_frames([read_specimen(tmp_path / "specimen03")])
    table, summ = bd.score_detector(frames, sp.DetectorParams(), SPACING, [0.0, 0.5, 1.0], threshold=100.0)
    assert table["region"].tolist() == ["all", "high", "low"]
    assert {"method", "accuracy", "accuracy_strict", "completeness", "f1", "f1_strict", "n_frames"} <= set(table)
    a = table.set_index("region").loc["all"]
    assert a["method"] == bd.LABEL and a["n_frames"] == 2 and a["f1"] > 0.9
    assert len(summ["curves"]["released"][bd.LABEL]["all"]["f1"]) == 3
    best, table = bd.fit_frames(frames, SPACING, {"min_score": (0.2, 0.99)}, n_max=1, seed=0)
    assert best.min_score == 0.2 and len(table) == 2


def test_fitted_on_the_checkpoints_training_specimens_only(tmp_path):
    from ultrabones.core.dataset import write_image, write_label

    # specimen01, 02: training (bone at the true rows); specimen03: test (its labels lie 2 mm deeper: a fit that
    # saw them would move the band)
    for name, shift in (("specimen01", 0.0), ("specimen02", 0.0), ("specimen03", 10.0)):
        rec = tmp_path / name / "record01"
        for t in (10, 20, 30):
            write_image(rec / "UltrasoundImages" / f"{t}.png", bone_frame(seed=t + len(name)))
            write_label(rec / "Labels" / f"{t}_label.png", true_band(true_rows() + shift))
    split = {"train": ["1", "specimen02", "specimen09"], "val": [], "test": ["specimen03"]}
    specs, missing = bd.training_specimens(tmp_path, split)
    assert [s.name for s in specs] == ["specimen01", "specimen02"] and missing == ["specimen09"]
    # a test specimen listed as training too is never fitted on
    specs2, _ = bd.training_specimens(tmp_path, {"train": ["specimen01", "specimen03"], "test": ["3"]})
    assert [s.name for s in specs2] == ["specimen01"]
    fit = bd.fit_on_training(specs, SPACING, n_frames=5, enhancements=["intensity"], seed=0)
    assert fit["n_frames"] == 5 and fit["specimens"] == ["specimen01", "specimen02"]
    assert fit["params"].enhancement == "intensity" and set(fit["table"]["enhancement"]) == {"intensity"}
    assert fit["fit_f1"] > 0.9  # a frame of the test specimen (labels 2 mm deeper) would score F1 about 0
    assert len(fit["table"]) == len(bd.DEFAULT_GRID["min_score"]) * len(bd.DEFAULT_GRID["min_peak"]) * 3
    assert bd.fit_on_training([], SPACING) is None
    with pytest.raises(ParamsError, match="detector_enhancements"):
        bd.fit_on_training(specs, SPACING, enhancements=["sobel"])
    with pytest.raises(ParamsError, match="detector_enhancements"):
        bd.fit_on_training(specs, SPACING, enhancements=[])
