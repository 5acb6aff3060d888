"""Known-answer tests of the contour label error (label_distances.contour_error_mm)."""

import numpy as np
import pytest

from ultrabones.core import label_distances
from ultrabones.twin.contour import label_distance_mm

SP = (0.2, 0.2)


def band(shape, centre_row, slope=0.0, half_px=1.5):
    """A straight band of label pixels around the line v = centre_row + slope * u."""
    vv, uu = np.mgrid[:shape[0], :shape[1]]
    return np.abs(vv - (centre_row + slope * uu)) <= half_px


def ring(shape, centre, radius_px, half_px=1.5):
    vv, uu = np.mgrid[:shape[0], :shape[1]]
    r = np.hypot(vv - centre[0], uu - centre[1])
    return np.abs(r - radius_px) <= half_px


def test_identical_labels_read_zero():
    a = band((120, 150), 60, 0.4)
    assert label_distances.contour_error_mm(a, a, SP) == pytest.approx(0.0, abs=1e-12)


def test_band_offset_half_mm_reads_half_mm():
    a = band((200, 220), 80)
    b = band((200, 220), 82.5)  # 2.5 px = 0.5 mm lower
    err = label_distances.contour_error_mm(a, b, SP)
    assert err == pytest.approx(0.5, abs=0.2)  # within one pixel
    assert err == pytest.approx(0.5, abs=1e-9)  # exact for a straight band
    # the old band metric compresses the same offset
    assert label_distance_mm(a, b, SP) < 0.35


@pytest.mark.parametrize("slope", [0.5, 1.0, 2.5])
def test_tilted_band_reads_perpendicular_offset(slope):
    shape = (300, 300)
    a = band(shape, 40, slope)
    b = band(shape, 40 + 2.5 * np.sqrt(1 + slope**2), slope)  # 0.5 mm perpendicular
    assert label_distances.contour_error_mm(a, b, SP) == pytest.approx(0.5, abs=0.2)


def test_concentric_rings_read_radius_difference():
    shape = (240, 240)
    a = ring(shape, (120, 120), 60)
    b = ring(shape, (120, 120), 62.5)  # 0.5 mm larger radius
    assert label_distances.contour_error_mm(a, b, SP) == pytest.approx(0.5, abs=0.2)


def test_is_symmetric_and_counts_a_missing_piece():
    a = band((100, 200), 50)
    b = a.copy()
    b[:, 100:] = False  # truth covers only half the contour
    e_ab, e_ba = label_distances.contour_error_mm(a, b, SP), label_distances.contour_error_mm(b, a, SP)
    assert e_ab == pytest.approx(e_ba)
    assert e_ab > 1.0


def test_empty_reads_nan_and_spacing_scales():
    a = band((100, 100), 50)
    assert np.isnan(label_distances.contour_error_mm(a, np.zeros_like(a), SP))
    b = band((100, 100), 52.5)
    assert label_distances.contour_error_mm(a, b, (0.1, 0.1)) == pytest.approx(0.25, abs=1e-9)


def test_centre_line_of_horizontal_band_is_its_middle_row():
    a = band((50, 30), 20)  # rows 19..21
    pts = label_distances.centre_line_points(a, SP)
    assert np.allclose(pts[:, 1], (20 + 0.5) * 0.2)
    assert len(pts) == 30
