"""Speed target of issue 4: the spatio-temporal sweep over 3,000 offsets in under 30 s on 2 cores.

Run on demand: ``.venv/bin/python -m pytest -s benchmarks/bench_calibration.py``.
"""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_calibration import TRUE_CALIB, synthetic_session  # noqa: E402

from ultrabones.twin.layout import truth_dir  # noqa: E402
from ultrabones.calibration import offset_sweep, wires  # noqa: E402
from ultrabones.calibration import system as cal  # noqa: E402
from ultrabones.twin import measure  # noqa: E402


def test_offset_sweep_3000_offsets_under_30_s():
    # About the twin's phantom recording: 20 s at ~21 images/s (420 frames, 6 N's each).
    s = synthetic_session(true_offset_ms=-211.7, duration_ms=20400.0, image_period_ms=47.0, seed=3)
    mid = s["points"][:, :, 1]
    mid_ph = wires.middle_points_in_phantom(s["phantom"], s["points"])
    offsets = offset_sweep.offset_grid(-300.0, 0.0, 0.1)
    t0 = time.perf_counter()
    res = offset_sweep.sweep_offsets(s["img_t"], mid, mid_ph, s["t_tr"], s["probe"], s["phantom_stream"], offsets)
    dt = time.perf_counter() - t0
    print(f"\noffset sweep: {len(offsets)} offsets x {len(s['img_t'])} frames x {mid.shape[1]} points "
          f"in {dt:.2f} s; found {res.offset_ms:.1f} ms (true {s['offset']} ms)")
    assert abs(res.offset_ms - s["offset"]) < 0.05
    np.testing.assert_allclose(res.calibration, TRUE_CALIB, atol=1e-6)
    assert dt < 30.0


def test_stage_on_the_default_twin_under_2_min(tmp_path):
    """The whole stage (probe calibration and every specimen) on ``data/twin/default``, if simulated."""
    import os

    import pytest

    from ultrabones.core.params import load_profile
    from ultrabones.core.paths import PARAMS_DIR, Paths

    prof = load_profile("default", PARAMS_DIR)
    src = Paths.for_profile("default")
    if not (src.raw / "phantom" / "tracker.csv").is_file():
        pytest.skip(f"{src.raw}: the default twin is not simulated (make nb NB=00)")
    twin = tmp_path / "twin"
    twin.mkdir()
    os.symlink(src.raw, twin / "raw")
    os.symlink(truth_dir(src), twin / "truth")
    paths = Paths(tmp_path / "build", twin, tmp_path / "figures")
    t0 = time.perf_counter()
    P = cal.CalibrationParams.from_section(prof.values["calibration"])
    res = cal.run(paths, P, progress=False, n_workers=prof.values["n_workers"])
    dt = time.perf_counter() - t0
    m = measure.merge_metrics(cal.metrics(res), measure.calibration(paths, res, prof.values["twin"]["surface_samples"]))
    print(f"\nstage 01 on the default twin: {m['n_specimens']} specimens, {m['frames_written']} frames, "
          f"{dt:.1f} s (probe calibration {m['probe_calibration_seconds']:.1f} s); offset error "
          f"{m['temporal_offset_error_ms']:.2f} ms, surface distance {m['ct_model_mean_surface_distance_mm']:.3f} mm")
    assert dt < 120.0
