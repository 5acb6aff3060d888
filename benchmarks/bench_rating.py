"""Cost of one rating-set frame at the real image size (950x811): three labels, renders, encodings, errors.

Run on demand: ``.venv/bin/python -m pytest -q -s benchmarks/bench_rating.py``.
Target (issue 6): notebook 03 in under 1 min on the default profile, i.e. well under 1 s per sampled frame
(one frame per sweep) plus the per-specimen surface sampling.
"""

from __future__ import annotations

import time

import numpy as np

from ultrabones.core import geometry as G
from ultrabones.rating import rating_set
from ultrabones.core.label_distances import directed_distances
from ultrabones.labels.cloud import surface_points
from ultrabones.labels.label import full_label


def test_one_frame_under_half_a_second():
    import trimesh

    # A tibia-sized shaft: radius 12 mm, 300 mm long (~23,000 mm^2), C at the default density.
    mesh = trimesh.creation.cylinder(radius=12.0, height=300.0, sections=256)
    mesh.apply_translation([25.0, 20.0, 0.0])
    t0 = time.perf_counter()
    points, _ = surface_points(mesh, 6.0, seed=0)
    t_points = time.perf_counter() - t0
    calib, spacing, shape = G.released_calibration(), G.RELEASED_SPACING_MM, (811, 950)
    true_pose = G.invert_transform(calib)
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 15.0, shape).clip(0, 255).astype(np.uint8)
    truth = full_label(shape, true_pose, calib, spacing, points, 0.3)
    poses = [true_pose @ G.perturbation(rng.normal(0, 1, 3), rng.normal(0, 1.5, 3)) for _ in range(3)]
    n = 5
    t0 = time.perf_counter()
    sizes = []
    for _ in range(n):
        for pose in poses:
            label = full_label(shape, pose, calib, spacing, points, 0.3)
            sizes.append(len(rating_set.encode_item(rating_set.render_item(image, label, spacing), "jpeg", 90)))
            directed_distances(label, truth, spacing)
    per_frame = (time.perf_counter() - t0) / n
    print(f"\nsurface points: {len(points)} in {t_points:.2f} s per specimen; one frame (3 items): "
          f"{per_frame * 1000:.0f} ms; item size {np.mean(sizes) / 1e3:.0f} kB (JPEG q90, base64)")
    assert per_frame < 0.5
