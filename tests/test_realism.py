"""Image-realism statistics on synthetic frames with known answers."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from ultrabones.twin import realism


def speckle(shape, sigma_px, rng, mean=100.0, std=20.0):
    """Gaussian-correlated noise: its autocorrelation is Gaussian with std sqrt(2) sigma (px)."""
    z = ndi.gaussian_filter(rng.standard_normal(shape), sigma_px, mode="wrap")
    return mean + std * z / z.std()


def fwhm_expected(sigma_px, spacing):
    return 2 * np.sqrt(2 * np.log(2)) * np.sqrt(2) * sigma_px * spacing


def test_autocorrelation_lengths_of_known_speckle():
    rng = np.random.default_rng(0)
    img = np.clip(speckle((400, 400), (2.0, 5.0), rng), 0, 255)
    ax, lat = realism.autocorrelation_lengths(img, (0.1, 0.1))
    assert ax == pytest.approx(fwhm_expected(2.0, 0.1), rel=0.1)
    assert lat == pytest.approx(fwhm_expected(5.0, 0.1), rel=0.1)


def test_fwhm_of_a_triangle():
    assert realism.fwhm_mm(np.array([1.0, 0.75, 0.5 - 1e-12, 0.25, 0.0]), 0.2) == pytest.approx(0.8, abs=1e-6)


def synthetic_frame(rng, sy=0.1, shadow_level=30.0, shadow_std=5.0):
    """Tissue speckle (mean 100), three fascia lines, a 1 mm echo at 25 mm over the middle, a shadow below."""
    h, w = 440, 400  # 44 x 40 mm at 0.1 mm/px
    img = speckle((h, w), (1.5, 3.0), rng, mean=100.0, std=12.0)
    img[:10] = 0.0  # 1 mm of gel above the skin
    for row in (50, 90, 130):  # fascia lines, 0.2 mm thick, across the whole width
        img[row:row + 2] = 200.0
    bone = slice(100, 300)
    r0 = 250
    img[r0:r0 + 10, bone] = 220.0  # 1.0 mm echo
    img[r0 + 10:, bone] = shadow_level + shadow_std * rng.standard_normal((h - r0 - 10, 200))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), (0.1, sy), r0


def test_regions_find_the_bone_and_shadow():
    img, sp, r0 = synthetic_frame(np.random.default_rng(1))
    reg = realism.find_regions(img, sp)
    found = np.flatnonzero(reg.bone_row >= 0)
    assert found.min() >= 95 and found.max() <= 305 and len(found) > 180
    assert np.all(np.abs(reg.bone_row[found] - (r0 + 5)) <= 6)  # within the 1 mm echo
    assert not reg.tissue[:, 150][r0:].any() and reg.shadow[r0 + 30, 150]


def test_bone_and_shadow_statistics():
    img, sp, _ = synthetic_frame(np.random.default_rng(2))
    s = realism.frame_statistics(img, sp)
    assert s["bone_thickness_mm"] == pytest.approx(1.0, abs=0.15)
    assert s["bone_to_tissue"] == pytest.approx(2.2, rel=0.1)
    assert s["shadow_to_tissue"] == pytest.approx(0.3, rel=0.15)
    assert s["shadow_std"] == pytest.approx(5.0, rel=0.15)
    assert s["tissue_median"] == pytest.approx(100, abs=5)


def test_pure_black_shadow_has_no_texture():
    img, sp, _ = synthetic_frame(np.random.default_rng(3), shadow_level=0.0, shadow_std=0.0)
    s = realism.frame_statistics(img, sp)
    assert s["shadow_std"] == 0.0 and s["shadow_to_tissue"] == 0.0


def test_fascia_lines_counted_per_cm():
    img, sp, _ = synthetic_frame(np.random.default_rng(4))
    s = realism.frame_statistics(img, sp)
    top_cm = (440 // 3 - 20) * 0.1 / 10  # the top third below the first millimetre of contact
    assert s["fascia_per_cm"] == pytest.approx(3 / top_cm, rel=0.25)
    plain = np.clip(np.rint(speckle((440, 400), (1.5, 3.0), np.random.default_rng(5), std=12.0)), 0, 255)
    assert realism.frame_statistics(plain.astype(np.uint8), sp)["fascia_per_cm"] < 0.5


def test_speckle_snr_of_known_patches():
    rng = np.random.default_rng(6)
    img = speckle((300, 300), (1.0, 1.0), rng, mean=100.0, std=20.0)
    snr = realism.speckle_snr(img, (0.1, 0.1), np.ones(img.shape, bool))
    assert 4.0 < snr < 6.0  # mean/std = 5, the most homogeneous half a little higher


def test_compare_same_frames_is_within():
    rng = np.random.default_rng(7)
    frames = [synthetic_frame(rng)[:2] for _ in range(3)]
    t = realism.compare(frames, frames)
    assert list(t.index) == list(realism.STATISTICS)
    assert set(t.columns) >= {"twin_median", "twin_iqr", "real_median", "real_iqr", "ratio", "within_20pct"}
    ok = t.dropna(subset=["ratio"])
    assert (ok["ratio"] == 1.0).all() and ok["within_20pct"].all()


def test_bad_spacing_is_refused():
    with pytest.raises(ValueError, match="spacing"):
        realism.frame_statistics(np.zeros((10, 10), np.uint8), (0.0, 0.1))


def _write_png(path, img):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def _fake_run(tmp_path, n_twin=4, n_ref=2, n_sweep=10, twin_std=5.0):
    """A twin raw/ folder (0.1 mm/px frames) and a shared folder with reference images and a sweep."""
    import json

    rng = np.random.default_rng(8)
    raw = tmp_path / "twin" / "raw"
    raw.mkdir(parents=True)
    (raw / "system.json").write_text(json.dumps({"spacing_mm": [0.1, 0.1]}))
    for i in range(n_twin):
        _write_png(raw / "specimen01" / f"record0{i % 2 + 1}" / "images" / f"{1000 + i}.png",
                   synthetic_frame(rng, shadow_std=twin_std)[0])
    _write_png(raw / "phantom" / "record01" / "images" / "1.png", np.zeros((20, 20), np.uint8))
    shared = tmp_path / "shared"
    for i in range(n_ref):
        _write_png(shared / "reference_images" / f"specimen0{i}_frame1.png", synthetic_frame(rng)[0])
    for i in range(n_sweep):
        _write_png(shared / "real_sweep" / "specimen01" / "record01" / "UltrasoundImages" / f"{2000 + i}.png",
                   np.zeros((20, 20), np.uint8))
    return raw, shared


def test_frame_files_of_twin_and_real(tmp_path):
    raw, shared = _fake_run(tmp_path)
    twin = realism.twin_frame_files(raw, n=3)
    assert len(twin) == 3 and all("phantom" not in f.parts for f in twin)
    assert len(realism.twin_frame_files(raw, n=100)) == 4
    real = realism.real_frame_files(shared)
    assert len(real) == 2 + 2  # every reference image, every 5th of 10 sweep frames
    assert realism.real_frame_files(tmp_path / "nowhere") == []
    assert realism.twin_spacing(raw) == (0.1, 0.1)


def test_realism_table_states_a_reason_outside_20pct():
    assert set(realism.REASONS) == set(realism.STATISTICS) and all(realism.REASONS.values())
    rng = np.random.default_rng(9)
    real = realism.frames_table([synthetic_frame(rng)[:2] for _ in range(3)])
    twin = real.copy()
    twin["shadow_std"] *= 2.0
    table = realism.realism_table(twin, real)
    assert not table.loc["shadow_std", "within_20pct"]
    assert table.loc["shadow_std", "reason"] == realism.REASONS["shadow_std"]
    assert table.loc["tissue_median", "within_20pct"] and table.loc["tissue_median", "reason"] == ""
    m = realism.realism_metrics(table)
    assert m["shadow_std"]["ratio"] == pytest.approx(2.0) and m["shadow_std"]["within_20pct"] is False
    assert set(m["tissue_median"]) == {"twin_median", "real_median", "ratio", "within_20pct"}
    assert m["n_statistics"] == len(realism.STATISTICS) and m["n_within_20pct"] < m["n_statistics"]


def test_run_realism_measures_and_caches(tmp_path):
    raw, shared = _fake_run(tmp_path, twin_std=10.0)
    cache = tmp_path / "cache"
    res = realism.run_realism(raw, shared, n_twin=3, cache_dir=cache)
    assert len(res.twin_files) == 3 and len(res.real_files) == 4
    assert list(res.table.index) == list(realism.STATISTICS) and "reason" in res.table
    assert len(list(cache.glob("realism_*.csv"))) == 1
    again = realism.run_realism(raw, shared, n_twin=3, cache_dir=cache)  # the real statistics from the cache
    assert again.table[["real_median", "ratio"]].equals(res.table[["real_median", "ratio"]])
    m = res.metrics()
    assert m["n_twin_frames"] == 3 and m["n_real_frames"] == 4
    fig = realism.figure_side_by_side(res, n=2)
    assert len(fig.axes) == 4


def test_run_realism_skips_without_real_frames(tmp_path):
    raw, _ = _fake_run(tmp_path)
    assert realism.run_realism(raw, None) is None
    assert realism.run_realism(raw, tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert realism.run_realism(raw, tmp_path / "empty") is None
