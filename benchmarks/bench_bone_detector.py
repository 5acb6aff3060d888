"""Speed target of the shadow-peak detector: under 20 ms per 256 x 218 frame on one core.

Run on demand: ``.venv/bin/python -m pytest -s benchmarks/bench_bone_detector.py``.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_bone_detector import SPACING, bone_frame  # noqa: E402

from ultrabones.evaluation import shadow_peak as sp  # noqa: E402


def test_detect_under_20_ms_per_frame():
    frames = [bone_frame(seed=s) for s in range(10)]
    sp.detect(frames[0], SPACING)  # warm-up
    t0 = time.perf_counter()
    for _ in range(5):
        for img in frames:
            sp.detect(img, SPACING)
    ms = 1000 * (time.perf_counter() - t0) / 50
    print(f"\nshadow-peak detector: {ms:.1f} ms per 256 x 218 frame")
    assert ms < 20
