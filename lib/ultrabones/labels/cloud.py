"""C, the point cloud of Eq. 2 on the CT bone surface, and the echo level that tells a frame worth labelling
(paper Section 3.1).

- :func:`surface_points` samples the point cloud ``C`` uniformly on the CT bone surface (with the surface normals);
  :func:`load_cloud` reads it back from the labelling's cache.
- :func:`echo_level` and :func:`no_echo_message`: a frame without echoes (probe lifted, a black image written in
  its place) is skipped as ``no_echo`` rather than fitted.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from ultrabones.core.errors import DatasetError, ParamsError


#: Share of an image's pixels whose mean intensity is its echo level (:func:`echo_level`).
ECHO_TOP_FRACTION = 0.01


def echo_level(image: np.ndarray) -> float:
    """Mean intensity (0..1 of full scale) of an image's brightest :data:`ECHO_TOP_FRACTION` of pixels.

    A B-mode frame that carries echoes has bright pixels (bone, fascia, speckle peaks): over the 246 real frames
    of ``shared/real_sweep`` and ``shared/reference_images`` this is 0.48 or more. A blank frame (probe lifted,
    acquisition dropped, a black image written in its place) has none: the labelling skips a frame below
    ``labeling.min_echo_level`` as ``no_echo`` rather than fit Eq. 2 to an image with nothing to match.

    Parameters
    ----------
    image : (H, W) uint8 (full scale 255) or float in [0, 1].
    """
    a = np.asarray(image)
    scale = 255.0 if a.dtype == np.uint8 else 1.0
    flat = a.astype(float).ravel() / scale
    if flat.size == 0:
        return 0.0
    k = max(1, int(np.ceil(ECHO_TOP_FRACTION * flat.size)))
    return float(np.partition(flat, flat.size - k)[flat.size - k:].mean())


def no_echo_message(image: np.ndarray, path, min_level: float) -> str | None:
    """The ``no_echo`` report message of a frame whose :func:`echo_level` is under ``min_level``, else None."""
    if min_level <= 0:
        return None
    level = echo_level(image)
    if level >= min_level:
        return None
    return (f"{path}: no echo (its brightest 1% of pixels average {level:.3f} of full scale, under "
            f"labeling.min_echo_level {min_level:g}); skipped, not labelled")


def surface_points(mesh, density_per_mm2: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Points sampled uniformly on the CT bone surface, with outward normals.

    Parameters
    ----------
    mesh : ``trimesh.Trimesh``, the CT bone model (CT frame, mm).
    density_per_mm2 : expected number of points per mm^2 of surface.
    seed : random seed (the same seed gives the same points).

    Returns
    -------
    points : (N, 3) float array, CT frame (mm), ``N = round(area * density)``.
    normals : (N, 3) float array, unit outward normals of the faces the points lie on.

    Raises
    ------
    ParamsError
        If the density is not positive.
    DatasetError
        If the mesh has no surface area.
    """
    if not density_per_mm2 > 0:
        raise ParamsError(f"labeling.density_per_mm2: must be positive, got {density_per_mm2!r}")
    area_faces = np.asarray(mesh.area_faces, dtype=float)
    area = float(area_faces.sum())
    if not area > 0:
        raise DatasetError("CT bone model has no surface area (empty or degenerate mesh)")
    n = int(round(area * density_per_mm2))
    rng = np.random.default_rng(seed)
    # Faces in proportion to their area, then uniform barycentric coordinates.
    face = rng.choice(len(area_faces), size=n, p=area_faces / area)
    r1, r2 = rng.random(n), rng.random(n)
    flip = r1 + r2 > 1.0
    r1[flip], r2[flip] = 1.0 - r1[flip], 1.0 - r2[flip]
    tri = np.asarray(mesh.triangles, dtype=float)[face]
    points = tri[:, 0] + r1[:, None] * (tri[:, 1] - tri[:, 0]) + r2[:, None] * (tri[:, 2] - tri[:, 0])
    normals = np.asarray(mesh.face_normals, dtype=float)[face]
    return points, normals


def load_cloud(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """``C`` as cached by :func:`ultrabones.labels.inputs.surface_cloud`: (points, normals), CT frame (mm).

    A process keeps the last few clouds it read (keyed by the file's path, size and modification time), read-only:
    the labelling's chunk tasks each need their specimen's clouds, and a Dask worker runs hundreds of them (a dense
    cloud of 1.3 million points costs 0.04 CPU-s to read).
    """
    st = os.stat(path)
    return _read_cloud(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=6)
def _read_cloud(path: str, size: int, mtime_ns: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        points, normals = z["points"], z["normals"]
    points.setflags(write=False)  # shared by every caller in this process
    normals.setflags(write=False)
    return points, normals
