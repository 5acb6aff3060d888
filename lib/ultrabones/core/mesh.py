"""Triangle meshes: CT bone models (STL) read and written, exact point-to-surface distances and quadric decimation.

One implementation of each for the whole package: the calibration's CT-model
checks, the reconstruction's distances and renders, and the twin's figures
and measurements all use these.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from ultrabones.core import atomic
from ultrabones.core.errors import DatasetError


def morton_order(points: np.ndarray, cell_mm: float = 1.0) -> np.ndarray:
    """Permutation that sorts points along a Z-order (Morton) curve over cells of ``cell_mm``.

    Consecutive points in this order are close in space, which keeps a BVH
    traversal's working set in cache: open3d's closest-point queries run
    about 2.5x faster in this order than in random order.

    Parameters
    ----------
    points : (N, 3) array (mm).
    cell_mm : cell edge (mm).

    Returns
    -------
    (N,) int array of indices.
    """
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    if not len(points):
        return np.zeros(0, dtype=np.int64)
    ijk = np.clip(np.floor((points - points.min(axis=0)) / cell_mm), 0, (1 << 21) - 1).astype(np.uint64)

    def spread(x):  # interleave 21 bits with two zero bits each
        x = (x | x << np.uint64(32)) & np.uint64(0x1F00000000FFFF)
        x = (x | x << np.uint64(16)) & np.uint64(0x1F0000FF0000FF)
        x = (x | x << np.uint64(8)) & np.uint64(0x100F00F00F00F00F)
        x = (x | x << np.uint64(4)) & np.uint64(0x10C30C30C30C30C3)
        return (x | x << np.uint64(2)) & np.uint64(0x1249249249249249)

    code = spread(ijk[:, 0]) | (spread(ijk[:, 1]) << np.uint64(1)) | (spread(ijk[:, 2]) << np.uint64(2))
    return np.argsort(code)


class SurfaceDistance:
    """Exact point-to-triangle-mesh distances with open3d's ``RaycastingScene`` (Embree BVH).

    The mesh is shifted to its bounding-box centre before conversion to
    float32, so CT coordinates of hundreds of millimetres keep micrometre
    precision. Queries are answered in Z-order (:func:`morton_order`; the BVH
    traversal is about 2.5x faster on spatially coherent queries) and returned
    in the caller's order.

    Parameters
    ----------
    vertices : (V, 3) array, CT space (mm).
    faces : (F, 3) int array.
    nthreads : threads of open3d's queries; 0: all cores.

    Attributes
    ----------
    n_queries : closest-point queries answered so far.
    seconds : wall time spent answering them (s).
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, nthreads: int = 0):
        import open3d as o3d

        vertices = np.asarray(vertices, dtype=float)
        faces = np.asarray(faces)
        if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3 or not len(faces):
            raise ValueError(f"SurfaceDistance: need (V, 3) vertices and (F>0, 3) faces, got {vertices.shape}, {faces.shape}")
        self._o3d = o3d
        self.offset = (vertices.min(axis=0) + vertices.max(axis=0)) / 2.0
        self.n_faces = len(faces)
        self.nthreads = int(nthreads)
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(
            o3d.core.Tensor(np.ascontiguousarray(vertices - self.offset, dtype=np.float32)),
            o3d.core.Tensor(np.ascontiguousarray(faces, dtype=np.uint32)),
        )
        self.n_queries = 0
        self.seconds = 0.0

    @classmethod
    def from_mesh(cls, mesh, nthreads: int = 0) -> "SurfaceDistance":
        """From a ``trimesh.Trimesh``."""
        return cls(mesh.vertices, mesh.faces, nthreads)

    @property
    def queries_per_second(self) -> float:
        return self.n_queries / self.seconds if self.seconds > 0 else float("nan")

    def __call__(self, points: np.ndarray, presort: bool = True) -> np.ndarray:
        """Unsigned distance (mm) of each point to the surface.

        Parameters
        ----------
        points : (N, 3) array, CT space (mm).
        presort : answer the queries in Z-order (faster; same result).

        Returns
        -------
        (N,) float array (mm).
        """
        points = np.asarray(points, dtype=float).reshape(-1, 3)
        if not len(points):
            return np.zeros(0)
        t0 = time.perf_counter()
        local = points - self.offset
        order = morton_order(local) if presort else None
        query = np.ascontiguousarray(local[order] if presort else local, dtype=np.float32)
        d = self.scene.compute_distance(self._o3d.core.Tensor(query), nthreads=self.nthreads).numpy()
        out = np.empty(len(points))
        if presort:
            out[order] = d
        else:
            out[:] = d
        self.seconds += time.perf_counter() - t0
        self.n_queries += len(points)
        return out

    def first_hit(self, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """Distance (mm) along unit ``directions`` from ``origins`` to the first surface hit (inf: none).

        Parameters
        ----------
        origins, directions : (N, 3) arrays, CT space (mm; unit vectors).
        """
        origins = np.asarray(origins, dtype=float).reshape(-1, 3)
        if not len(origins):
            return np.zeros(0)
        rays = np.concatenate([origins - self.offset, np.asarray(directions, dtype=float).reshape(-1, 3)], axis=1)
        hit = self.scene.cast_rays(self._o3d.core.Tensor(np.ascontiguousarray(rays, dtype=np.float32)),
                                   nthreads=self.nthreads)
        return hit["t_hit"].numpy().astype(float)


def point_distances(points: np.ndarray, mesh) -> np.ndarray:
    """Unsigned distance (mm) of each point ``(N, 3)`` to a ``trimesh.Trimesh``'s surface (:class:`SurfaceDistance`)."""
    return SurfaceDistance.from_mesh(mesh)(points)


def decimate(vertices: np.ndarray, faces: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """A triangle mesh reduced to about ``max_faces`` triangles by open3d's quadric decimation.

    Parameters
    ----------
    vertices : (V, 3) array (mm).
    faces : (F, 3) int array.
    max_faces : target number of triangles; a mesh with no more is returned as it is.

    Returns
    -------
    vertices : (V', 3) float array (mm); faces : (F', 3) int32 array.
    """
    vertices = np.asarray(vertices, dtype=float)
    faces = np.asarray(faces, dtype=np.int32)
    if len(faces) <= max_faces:
        return vertices, faces
    import open3d as o3d

    m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(faces))
    m = m.simplify_quadric_decimation(target_number_of_triangles=int(max_faces))
    return np.asarray(m.vertices, dtype=float), np.asarray(m.triangles, dtype=np.int32)


# ----------------------------------------------------------------------------- files


def read_mesh(path: Path | str):
    """Read a CT bone model (STL) as a ``trimesh.Trimesh``; warn if not watertight.

    Raises
    ------
    DatasetError
        If the file is missing or holds no triangles.
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: mesh not found")
    try:
        mesh = trimesh.load_mesh(path, file_type=path.suffix.lstrip(".").lower() or "stl", process=True)
    except Exception as exc:  # trimesh raises many types on corrupt files
        raise DatasetError(f"{path}: not a readable mesh ({exc})") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise DatasetError(f"{path}: mesh holds no triangles")
    if not mesh.is_watertight:
        warnings.warn(f"{path}: mesh is not watertight", stacklevel=2)
    return mesh


def write_mesh(path: Path | str, mesh) -> Path:
    """Write a trimesh mesh (binary STL by suffix) atomically."""
    with atomic.atomic_path(path) as tmp:
        mesh.export(tmp)
    return Path(path)
