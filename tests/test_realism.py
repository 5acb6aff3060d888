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
