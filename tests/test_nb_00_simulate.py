"""Notebook 00 on the smoke profile: the twin it writes and the metrics it reports."""

import pytest

pytestmark = pytest.mark.notebook


def test_00_simulate_metrics(smoke_metrics, smoke):
    m = smoke_metrics("00_simulate")
    assert m["n_specimens"] == 3
    assert m["n_records"] == 27
    assert m["n_frames"] > 100
    assert m["n_phantom_frames"] > 0
    assert 0.05 < m["visible_bone_fraction"] < 0.95
    assert m["frames_with_bone_fraction"] > 0.8
    assert m["frames_per_second"] > 0
    # the paper's order: 1.13 +- 0.606 mm; neither near 0 nor several millimetres
    mis = m["initial_misalignment_mm"]
    assert 0.6 < mis["mean"] < 1.8 and mis["std"] > 0
    assert -300 <= m["temporal_offset_ms"] < 0
    # most frames need a per-frame correction below 1 mm of fiducial displacement (paper discards 18.7 %)
    assert 0.0 < m["required_correction_mm"]["fraction_over_1mm"] < 0.4
    twin = smoke.twin
    assert (twin / "raw" / "system.json").is_file() and (twin / "truth" / "system.json").is_file()
    assert (twin / "raw" / "phantom" / "phantom.json").is_file()
    assert (twin / "raw" / "specimen03" / "ct.npz").is_file()


def test_00_realism_section(smoke_metrics, smoke):
    """Without real frames the section says so and skips; with them (the real frames of tests/fixtures),
    the table, the metrics key realism and the side-by-side figure are written."""
    import json
    from pathlib import Path

    from ultrabones.twin import realism

    m = smoke_metrics("00_simulate")
    shared = Path(__file__).resolve().parents[1].parent / "shared"  # the profile's real_frames_dir, ../shared
    if realism.real_frame_files(shared):
        assert m["realism"]["n_real_frames"] > 0
    else:
        assert "skipped" in m["realism"]
    fixtures = Path(__file__).parent / "fixtures"
    proc = smoke.run("00", "-p", f"simulate.real_frames_dir={fixtures}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((smoke.build / "metrics" / "00_simulate.json").read_text())["realism"]
    assert got["n_real_frames"] == 2 and got["n_twin_frames"] > 0
    assert got["n_statistics"] == len(realism.STATISTICS)
    for stat in realism.STATISTICS:
        assert set(got[stat]) == {"twin_median", "real_median", "ratio", "within_20pct"}
    assert got["tissue_median"]["real_median"] > 0 and got["tissue_median"]["ratio"] > 0
    figures = smoke.build / "figures"
    assert (figures / "twin_realism.md").is_file() and (figures / "twin_vs_real_frames.png").is_file()
    table = (figures / "twin_realism.md").read_text()
    assert "reason" in table
