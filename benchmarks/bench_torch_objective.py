"""Speed of the batched torch path of the labelling on a GPU (labeling.device): run on demand, not in ``make test``.

    .venv/bin/python -m pytest -q -s benchmarks/bench_torch_objective.py

Skipped where torch sees no CUDA device. On the six real frames of ``tests/fixtures/real_sweep`` (950 x 811 px,
0.054 mm; each recorded pose also perturbed by up to 1 degree and 1 mm, 24 frames in all, one batch): first the
batched objective must equal the numpy objective (pixel counts exactly, means and Eq. 2 to 1e-12); then
differential evolution with ``params/default.yaml``'s settings (popsize 4, maxiter 40, tol 0.01, first-hit
region) runs frame by frame on the numpy/scipy path (:func:`optimize.optimize_frame`) and for all frames at once on
the GPU (:func:`torch_objective.optimize_frames_batched`). Prints frames per second of both (wall clock) and
asserts the GPU path is faster per frame.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ultrabones.core import dataset, geometry
from ultrabones.labels import cloud, objective, optimize
from ultrabones.labels import torch_objective as tob

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the torch path's benchmark")

REAL = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "real_sweep"
SETTINGS = dict(popsize=4, maxiter=40, tol=0.01, bound_deg=1.0, bound_mm=1.0, max_correction_mm=1.0,
                min_label_fraction=0.5, halves_check="first_hit")  # params/default.yaml
LAM = 0.1  # 1/mm


def _frames(copies: int = 4):
    """(objectives, images, poses, calib, spacing, points): the real frames, each at ``copies`` perturbed poses."""
    spec = dataset.read_specimen(REAL / "specimen01")
    rec = spec.records[0]
    tab = dataset.read_tracking(rec.tracking_csv)
    calib, spacing, _ = dataset.read_calibration(REAL)
    pts, _ = cloud.surface_points(dataset.read_mesh(spec.ct_model), 6.0, seed=0)  # default density
    rng = np.random.default_rng(0)
    images, poses = [], []
    for ts, pose in zip(tab["timestamp"], dataset.poses(tab)):
        img = dataset.read_image(rec.image_path(int(ts)))
        for c in range(copies):
            e = np.zeros(6) if c == 0 else rng.uniform(-1, 1, 6)
            images.append(img)
            poses.append(pose @ geometry.perturbation(e[:3], e[3:]))
    objs = [objective.FrameObjective(img, p, calib, spacing, pts, region="first_hit") for img, p in zip(images, poses)]
    return objs, images, poses, calib, spacing, pts


def test_batched_objective_equals_numpy_on_the_gpu():
    objs, *_ = _frames(copies=1)
    xs = np.random.default_rng(1).uniform(-1, 1, (len(objs), 6, 24))
    xs[:, :, 0] = 0.0
    bo = tob.BatchedObjective(objs, "cuda")
    d = tob.difference_from_numpy(bo, xs, LAM)
    assert all(d["counts_equal"]), "pixel counts differ from the numpy path"
    assert d["mean"] <= 1e-12 and d["value"] <= 1e-12, d
    worst = d["mean"]
    print(f"\n[bench] batched objective on {torch.cuda.get_device_name()}: counts equal, |mean - numpy| <= {worst:.1e}")


def test_batched_optimiser_is_faster_per_frame_than_numpy():
    objs, images, poses, calib, spacing, pts = _frames()
    n = len(objs)
    seeds = list(range(n))
    tob.optimize_frames_batched(objs[:2], LAM, seeds=seeds[:2], device="cuda", **SETTINGS)  # warm up CUDA
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    gpu = tob.optimize_frames_batched(objs, LAM, seeds=seeds, device="cuda", **SETTINGS)
    torch.cuda.synchronize()
    t_gpu = time.perf_counter() - t0
    t0 = time.perf_counter()
    cpu = [optimize.optimize_frame(images[k], poses[k], calib, spacing, pts, LAM, seed=seeds[k], objective=objs[k],
                                region="first_hit", **SETTINGS) for k in range(n)]
    t_cpu = time.perf_counter() - t0
    kept = (sum(r.status == "kept" for r in gpu), sum(r.status == "kept" for r in cpu))
    gens = (np.mean([r.nfev for r in gpu]), np.mean([r.nfev for r in cpu]))
    print(f"\n[bench] {n} real frames (950x811 px), popsize 4, maxiter 40, first_hit, on {torch.cuda.get_device_name()}: "
          f"batched torch {n / t_gpu:.1f} frames/s ({t_gpu / n * 1e3:.0f} ms per frame, {gens[0]:.0f} generations, "
          f"{kept[0]} kept); numpy/scipy {n / t_cpu:.1f} frames/s ({t_cpu / n * 1e3:.0f} ms per frame, "
          f"{gens[1]:.0f} generations, {kept[1]} kept); speed-up {t_cpu / t_gpu:.1f}x")
    assert t_gpu / n < t_cpu / n
