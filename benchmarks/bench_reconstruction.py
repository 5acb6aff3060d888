"""Speed of point-to-surface distance queries and of streaming voxel downsampling.

Run on demand: ``.venv/bin/python -m pytest -q -s benchmarks/bench_reconstruction.py``.
Targets, each asserted: at least a million distance queries per second against a 100k-face mesh (issue 9);
the streaming voxel downsampling at least as fast (a million points per second), so that it never costs more
than the distance queries and a paper-scale set of label points (100k frames of about 2000 points) is
downsampled in minutes.
The queries are points near the surface (Gaussian, SD 1 mm, along the normal), as a
reconstruction's points are; the time includes the voxel presort and the float32
conversion (everything ``SurfaceDistance.__call__`` does).
"""

from __future__ import annotations

import os
import time

import numpy as np
import trimesh

from ultrabones.reconstruction import surface as rc

N_QUERIES = 1_000_000
#: Distance queries per second (issue 9).
TARGET_QUERIES_PER_S = 1e6
#: Label points per second through the voxel accumulator (the queries' target).
TARGET_POINTS_PER_S = 1e6


def bone_mesh(n_faces_min: int = 100_000) -> trimesh.Trimesh:
    """A tibia-like shaft: a UV sphere stretched to 240 mm with a waisted, bumpy radius (106,800 faces)."""
    mesh = trimesh.creation.uv_sphere(radius=1.0, count=[180, 150])
    v = mesh.vertices.copy()
    z = v[:, 2] * 120.0
    radius = 14.0 + 5.0 * np.cos(z / 40.0) + 1.5 * np.sin(3 * np.arctan2(v[:, 1], v[:, 0]))
    mesh.vertices = np.column_stack([v[:, 0] * radius, v[:, 1] * radius, z]) + [31.0, -210.0, 480.0]
    assert len(mesh.faces) >= n_faces_min, len(mesh.faces)
    return mesh


def near_surface_points(mesh, n, sd_mm=1.0, seed=0):
    rng = np.random.default_rng(seed)
    pts, face = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return pts + rng.normal(0.0, sd_mm, (n, 1)) * mesh.face_normals[face]


def best_rate(fn, n, repeat=3):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def test_distance_queries_per_second():
    mesh = bone_mesh()
    sd = rc.SurfaceDistance.from_mesh(mesh)
    pts = near_surface_points(mesh, N_QUERIES)
    sd(pts[:10_000])  # warm up the BVH
    rate = best_rate(lambda: sd(pts), N_QUERIES)
    rate_unsorted = best_rate(lambda: sd(pts, presort=False), N_QUERIES, repeat=1)
    one = rc.SurfaceDistance.from_mesh(mesh, nthreads=1)
    rate_one = best_rate(lambda: one(pts), N_QUERIES, repeat=1)
    print(f"\n{len(mesh.faces)} faces, {N_QUERIES} queries near the surface, {os.cpu_count()} CPUs: "
          f"{rate / 1e6:.2f} M queries/s (presorted), {rate_unsorted / 1e6:.2f} M/s unsorted, "
          f"{rate_one / 1e6:.2f} M/s on one thread")
    assert rate >= TARGET_QUERIES_PER_S


def test_voxel_accumulator_throughput():
    """Streaming downsampling of 5 million label points in frame-sized chunks (about 2000 points per frame)."""
    rng = np.random.default_rng(0)
    mesh = bone_mesh()
    pts = near_surface_points(mesh, 5_000_000, sd_mm=0.2, seed=1)
    pts = pts[np.argsort(pts[:, 2])]  # sweeps move along the bone
    acc = rc.VoxelAccumulator(0.5)
    t0 = time.perf_counter()
    for chunk in np.array_split(pts, len(pts) // 2000):
        acc.add(chunk)
    n = len(acc)
    dt = time.perf_counter() - t0
    print(f"\nvoxel accumulator: {len(pts) / dt / 1e6:.2f} M points/s, {n} voxels "
          f"({acc.keys.nbytes + acc.sums.nbytes + acc.counts.nbytes} bytes); target >= "
          f"{TARGET_POINTS_PER_S / 1e6:.0f} M points/s")
    assert 0 < n < len(pts) and rng is not None
    assert len(pts) / dt >= TARGET_POINTS_PER_S, f"{len(pts) / dt / 1e6:.2f} M points/s, below the target"
