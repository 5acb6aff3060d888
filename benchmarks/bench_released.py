"""Speed of the released objective (issue 29): the fast kernel against its KD-tree definition, on real frames.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -s benchmarks/bench_released.py

On the six vendored real frames (``tests/fixtures/real_sweep``: 950 x 811 px, 0.05392 mm/px, the fibula's CT
model sampled at upstream's 1,000,000 points), prepared as upstream prepares them, prints the core-seconds of
one evaluation (one candidate pose, as upstream's differential evolution calls it) of
:class:`ultrabones.labels.released.ReleasedObjective` and of :func:`ultrabones.labels.released.reference_score`
(a KD-tree over the frame's CT points, built once per frame, not timed), their ratio, and the largest
difference of the two scores. Asserts that the scores agree (1e-9) and that the fast kernel is faster; the
ratio is reported, not a target.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from ultrabones.core import dataset, geometry
from ultrabones.labels import released

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "real_sweep"
N_CANDIDATES = 40  # candidate poses per frame, uniform in the +-1 mm / +-1 degree box


def test_fast_vs_reference_speed_on_real_frames():
    calib, spacing, _ = dataset.read_calibration(FIXTURE)
    dense = released.sample_ct(dataset.read_mesh(FIXTURE / "specimen01" / "CT_bone_model.stl"), 1_000_000, seed=0)
    rec = dataset.read_specimen(FIXTURE / "specimen01").records[0]
    tab = pd.read_csv(rec.tracking_csv)
    t_fast = t_ref = 0.0
    n, worst, n_img, n_ct = 0, 0.0, [], []
    rng = np.random.default_rng(0)
    for _, row in tab.iterrows():
        img = dataset.read_image(rec.image_path(int(row.timestamp)))
        p0 = row[list(geometry.POSE_COLUMNS)].to_numpy(float)
        fr = released.prepare_frame(img, p0, calib, spacing, dense)
        assert not fr.skip
        n_img.append(len(fr.image_points))
        n_ct.append(len(fr.ct_points))
        obj = released.ReleasedObjective(fr)
        tree = cKDTree(fr.ct_points)
        cand = p0[:, None] + rng.uniform(-1, 1, (6, N_CANDIDATES))
        t0 = time.process_time()
        fast = [obj.score(cand[:, j]) for j in range(N_CANDIDATES)]
        t_fast += time.process_time() - t0
        t0 = time.process_time()
        ref = [released.reference_score(cand[:, j], fr, tree) for j in range(N_CANDIDATES)]
        t_ref += time.process_time() - t0
        worst = max(worst, float(np.max(np.abs(np.subtract(fast, ref)))))
        n += N_CANDIDATES
    ms_fast, ms_ref = 1e3 * t_fast / n, 1e3 * t_ref / n
    print(f"\n[bench] released objective, {len(tab)} real frames x {N_CANDIDATES} poses, image points "
          f"{int(np.mean(n_img))}, CT points {int(np.mean(n_ct))} (means): fast {ms_fast:.2f} ms, KD-tree reference "
          f"{ms_ref:.2f} ms per evaluation, ratio {ms_ref / ms_fast:.1f}x, largest score difference {worst:.2e}")
    assert worst <= 1e-9
    assert ms_fast < ms_ref
