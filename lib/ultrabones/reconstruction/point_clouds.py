"""The reconstructions' point clouds as binary PLY files (points in mm with a per-point ``distance``, mm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ultrabones.core import atomic


def write_ply(path: Path, points: np.ndarray, distances: np.ndarray) -> Path:
    """Write points (mm) with a per-point ``distance`` attribute (mm) as binary PLY, atomically."""
    import open3d as o3d

    pcd = o3d.t.geometry.PointCloud(o3d.core.Tensor(np.asarray(points, dtype=np.float64)))
    pcd.point["distance"] = o3d.core.Tensor(np.asarray(distances, dtype=np.float64).reshape(-1, 1))
    with atomic.atomic_path(path) as tmp:
        if not o3d.t.io.write_point_cloud(str(tmp), pcd):
            raise OSError(f"{path}: open3d could not write the point cloud")
    return Path(path)


def read_ply(path: Path | str) -> tuple[np.ndarray, np.ndarray | None]:
    """Points (mm) and, when present, the per-point ``distance`` (mm) of a PLY written here."""
    import open3d as o3d

    pcd = o3d.t.io.read_point_cloud(str(path))
    pts = pcd.point.positions.numpy().astype(float)
    dist = pcd.point["distance"].numpy().ravel().astype(float) if "distance" in pcd.point else None
    return pts, dist
