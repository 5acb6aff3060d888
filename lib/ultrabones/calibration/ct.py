"""The CT volume: bone model (segmentation and surface mesh) and fiducial spheres.

Frames and units
----------------
A volume is indexed ``[k, j, i] = [z, y, x]``; voxel ``(i, j, k)`` has its
centre at ``origin_mm + spacing_mm * (i, j, k)`` in the CT frame (mm).
Intensities are Hounsfield units (HU).

Bone model (Section 3.1 of the paper): voxels above a bone threshold, grouped
into connected components (region growing from every seed above the threshold
at once), small components and the fiducial spheres dropped, inner cavities
(marrow) filled; the surface is the iso-surface of the CT at the threshold
(marching cubes, scikit-image) inside each component, so that it sits between
voxels with sub-voxel accuracy, then lightly smoothed (Taubin, which does not
shrink) and decimated (quadric, open3d).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ultrabones.core.errors import DatasetError
from ultrabones.core.mesh import decimate, point_distances


@dataclass(frozen=True)
class CTVolume:
    """A CT volume.

    Attributes
    ----------
    volume : (nz, ny, nx) array, HU, indexed ``[k, j, i]``.
    spacing_mm : (3,) voxel size along x, y, z (mm).
    origin_mm : (3,) CT position of voxel ``[0, 0, 0]``'s centre (mm).
    """

    volume: np.ndarray
    spacing_mm: np.ndarray
    origin_mm: np.ndarray

    def voxel_to_ct(self, ijk: np.ndarray) -> np.ndarray:
        """(N, 3) voxel coordinates ``(i, j, k)`` (may be fractional) -> CT (mm)."""
        return self.origin_mm + self.spacing_mm * np.asarray(ijk, float)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing_mm))


def read_ct(path: Path | str) -> CTVolume:
    """Read ``ct.npz`` (``volume``, ``spacing_mm``, ``origin_mm``).

    Raises
    ------
    DatasetError
        If missing, unreadable, or with a key missing or of the wrong shape.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: CT volume not found")
    try:
        with np.load(path) as z:
            vol, sp, org = z["volume"], z["spacing_mm"].astype(float), z["origin_mm"].astype(float)
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"{path}: not a valid CT file ({type(exc).__name__}: {exc})") from None
    if vol.ndim != 3 or sp.shape != (3,) or org.shape != (3,) or np.any(sp <= 0):
        raise DatasetError(
            f"{path}: expected a 3-D volume, spacing_mm (3 positive) and origin_mm (3); got "
            f"{vol.shape}, {sp}, {org}"
        )
    return CTVolume(vol, sp, org)


def fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares sphere through points (algebraic fit, then exact for points on a sphere).

    Solves ``|p|^2 = 2 c.p + (r^2 - |c|^2)`` linearly.

    Returns
    -------
    centre : (3,) mm. radius : mm.
    """
    p = np.asarray(points, float)
    A = np.c_[2 * p, np.ones(len(p))]
    b = (p**2).sum(axis=1)
    sol, *_ = np.linalg.lstsq(A, b, rcond=None)
    c = sol[:3]
    return c, float(np.sqrt(sol[3] + c @ c))


def _padded_box(box: tuple[slice, ...], shape: tuple[int, ...], pad: int) -> tuple[slice, ...]:
    """A bounding box of slices grown by ``pad`` voxels, clipped to ``shape``."""
    return tuple(slice(max(b.start - pad, 0), min(b.stop + pad, n)) for b, n in zip(box, shape))


def _component_surface(ct: CTVolume, box: tuple[slice, ...], mask: np.ndarray, level: float,
                       filled: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of the CT at ``level`` restricted to one component's neighbourhood.

    Voxels beyond one voxel of ``mask`` are set below ``level`` (other
    structures do not leak in); voxels of ``filled`` (cavities filled) are set
    above it (no inner surface).

    Parameters
    ----------
    box : the sub-volume (slices ``[k, j, i]``) holding the component with a margin.
    mask, filled : bool arrays of the sub-volume's shape.

    Returns
    -------
    vertices : (V, 3) CT (mm). faces : (T, 3) int, outward (counter-clockwise seen from outside).
    """
    from skimage.measure import marching_cubes

    sub = ct.volume[box].astype(np.float32)
    near = ndimage.binary_dilation(mask, iterations=1)
    low = np.float32(min(float(sub.min()), level - 1.0))
    sub = np.where(near, sub, low)
    if filled is not None:
        sub = np.where(filled & ~mask, np.maximum(sub, np.float32(level + 1.0)), sub)
    # Close the surface where the component touches the volume's border.
    sub = np.pad(sub, 1, constant_values=low)
    sz, sy, sx = ct.spacing_mm[2], ct.spacing_mm[1], ct.spacing_mm[0]
    verts, faces, _, _ = marching_cubes(sub, level=level, spacing=(sz, sy, sx), allow_degenerate=False)
    # verts are (z, y, x) in mm from the padded sub-volume's voxel [0, 0, 0].
    lo = np.array([b.start for b in box], dtype=float)
    kji = verts / np.array([sz, sy, sx]) - 1 + lo
    xyz = ct.voxel_to_ct(kji[:, ::-1])
    # marching_cubes orients faces for a bright interior seen along (z, y, x);
    # after swapping to (x, y, z) the winding flips.
    return xyz, faces[:, ::-1].copy()


@dataclass
class Spheres:
    """Fiducial spheres found in CT.

    Attributes
    ----------
    centres : (S, 3) fitted centres (CT, mm).
    radii : (S,) fitted radii (mm).
    surface : (N, 3) their iso-surface points (CT, mm), for ICP.
    mask : (nz, ny, nx) bool, the spheres' voxels.
    """

    centres: np.ndarray
    radii: np.ndarray
    surface: np.ndarray
    mask: np.ndarray


def find_fiducial_spheres(ct: CTVolume, radius_mm: float, threshold_hu: float,
                          volume_tolerance: float = 0.5) -> Spheres:
    """Fiducial spheres: compact components above ``threshold_hu`` of a sphere's volume and extent.

    Each candidate's centre and radius are fitted to its iso-surface at the
    threshold (sub-voxel marching cubes); a candidate whose fitted radius is
    off by more than ``volume_tolerance`` / 3 of ``radius_mm`` is dropped.

    Parameters
    ----------
    ct : the volume.
    radius_mm : the fiducials' radius (mm).
    threshold_hu : iso-level (HU) separating the sphere from its surroundings.
    volume_tolerance : accepted relative deviation of a component's voxel volume
        from ``4/3 pi r^3``.
    """
    mask = ct.volume > threshold_hu
    labels, n = ndimage.label(mask)
    if n == 0:
        return Spheres(np.zeros((0, 3)), np.zeros(0), np.zeros((0, 3)), np.zeros_like(mask))
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    expect = 4.0 / 3.0 * np.pi * radius_mm**3 / ct.voxel_volume_mm3
    cand = np.flatnonzero(np.abs(counts / expect - 1) <= volume_tolerance) + 1
    objects = ndimage.find_objects(labels)
    centres, radii, surfaces = [], [], []
    keep = np.zeros_like(mask)
    for lab in cand:
        sl = objects[lab - 1]
        extent = np.array([s.stop - s.start for s in sl])[::-1] * ct.spacing_mm  # x, y, z (mm)
        if np.any(np.abs(extent - 2 * radius_mm) > 0.5 * radius_mm + 2 * ct.spacing_mm.max()):
            continue
        box = _padded_box(sl, mask.shape, 2)
        comp = labels[box] == lab
        verts, _ = _component_surface(ct, box, comp, threshold_hu)
        c, r = fit_sphere(verts)
        if abs(r - radius_mm) > volume_tolerance / 3 * radius_mm:
            continue
        centres.append(c)
        radii.append(r)
        surfaces.append(verts)
        keep[box] |= comp
    if not centres:
        return Spheres(np.zeros((0, 3)), np.zeros(0), np.zeros((0, 3)), keep)
    return Spheres(np.array(centres), np.array(radii), np.concatenate(surfaces), keep)


def segment_bones(ct: CTVolume, threshold_hu: float, min_volume_mm3: float,
                  exclude: np.ndarray | None = None, where: str = "CT") -> tuple[np.ndarray, int]:
    """Bone components: threshold, connected components, small ones and ``exclude`` dropped.

    Parameters
    ----------
    ct : the volume.
    threshold_hu : bone threshold (HU).
    min_volume_mm3 : components smaller than this are noise or fragments (mm^3).
    exclude : (nz, ny, nx) bool, voxels not to treat as bone (the fiducial spheres).
    where : name of the volume for messages.

    Returns
    -------
    labels : (nz, ny, nx) int32, 0 background, 1..n the components by decreasing volume.
    n : number of components.

    Raises
    ------
    DatasetError
        If no voxel, or no large enough component, lies above the threshold.
    """
    mask = ct.volume > threshold_hu
    if not mask.any():
        raise DatasetError(
            f"{where}: no bone found: no voxel above the bone threshold {threshold_hu:g} HU "
            f"(volume range {float(ct.volume.min()):g}..{float(ct.volume.max()):g} HU)"
        )
    labels, n = ndimage.label(mask)
    counts = np.bincount(labels.ravel(), minlength=n + 1).astype(float) * ct.voxel_volume_mm3
    if exclude is not None:  # components touching an excluded voxel (a fiducial sphere) are not bone
        counts[np.unique(labels[exclude])] = 0.0
    counts = counts[1:]
    order = np.argsort(-counts)
    big = order[counts[order] >= min_volume_mm3]
    if len(big) == 0:
        raise DatasetError(
            f"{where}: no bone found: the largest component above {threshold_hu:g} HU (fiducial spheres "
            f"aside) holds {counts.max():.1f} mm^3, below min_bone_volume_mm3 = {min_volume_mm3:g}"
        )
    lut = np.zeros(n + 1, np.int32)
    lut[big + 1] = np.arange(1, len(big) + 1)
    return lut[labels], len(big)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill a bone mask's cavities: enclosed in 3-D, or enclosed within an axial slice.

    The slice-wise fill closes a long bone's marrow cavity where the scan cuts
    the bone (the cavity then touches the volume's border and is not enclosed
    in 3-D).

    Parameters
    ----------
    mask : (nz, ny, nx) bool array.
    """
    in_slice = np.zeros((3, 3, 3), bool)
    in_slice[1] = ndimage.generate_binary_structure(2, 1)  # 4-connected within each z slice
    return ndimage.binary_fill_holes(mask) | ndimage.binary_fill_holes(mask, structure=in_slice)


def component_mesh(ct: CTVolume, labels: np.ndarray, label: int, level: float, smooth_iterations: int,
                   decimate_fraction: float, box: tuple[slice, ...] | None = None):
    """Surface of one component: filled, marching cubes at ``level``, Taubin smoothing, decimation.

    Parameters
    ----------
    labels : the volume's component labels (:func:`segment_bones`).
    label : the component.
    level : iso-level (HU).
    smooth_iterations : Taubin iterations (0: none).
    decimate_fraction : fraction of triangles kept by quadric decimation (1: none).
    box : the component's bounding box (``ndimage.find_objects``), found if not given.

    Returns
    -------
    trimesh.Trimesh (CT frame, mm), outward normals.
    """
    import open3d as o3d
    import trimesh

    if box is None:
        box = ndimage.find_objects(labels, max_label=label)[label - 1]
    box = _padded_box(box, labels.shape, 2)
    comp = labels[box] == label
    filled = fill_holes(comp)
    verts, faces = _component_surface(ct, box, comp, level, filled=filled)
    m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(verts), o3d.utility.Vector3iVector(faces))
    m.remove_duplicated_vertices()
    m.remove_degenerate_triangles()
    if smooth_iterations > 0:
        m = m.filter_smooth_taubin(number_of_iterations=int(smooth_iterations))
    if decimate_fraction < 1.0:
        target = max(int(len(m.triangles) * decimate_fraction), 100)
        v, f = decimate(np.asarray(m.vertices), np.asarray(m.triangles), target)
        m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v), o3d.utility.Vector3iVector(f))
    m.remove_degenerate_triangles()
    m.remove_unreferenced_vertices()
    mesh = trimesh.Trimesh(np.asarray(m.vertices), np.asarray(m.triangles), process=True)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def name_bones(meshes: list) -> list[str]:
    """Names of the layout's bone models for components ordered by decreasing volume.

    The largest is the tibia; the most elongated of the rest (longest
    principal extent over the others, ratio > 3) the fibula; the remaining
    ones are the foot (merged by the caller). A heuristic for the lower leg
    the paper scans, not an anatomy classifier.
    """
    names = []
    have_fibula = False
    for i, m in enumerate(meshes):
        if i == 0:
            names.append("tibia")
            continue
        v = m.vertices - m.vertices.mean(axis=0)
        ext = np.sort(np.ptp(v @ np.linalg.svd(v, full_matrices=False)[2].T, axis=0))  # principal extents
        if not have_fibula and ext[2] > 3 * ext[1]:
            names.append("fibula")
            have_fibula = True
        else:
            names.append("foot")
    return names


def surface_distances(mesh_from, mesh_to, n_samples: int = 20000, seed: int = 0) -> np.ndarray:
    """Distances (mm) from points sampled uniformly on ``mesh_from`` to the surface of ``mesh_to``.

    Uses open3d's raycasting scene (exact point-to-triangle distance).
    """
    import trimesh

    pts, _ = trimesh.sample.sample_surface(mesh_from, n_samples, seed=seed)
    return point_distances(pts, mesh_to)


def symmetric_surface_distance(mesh_a, mesh_b, n_samples: int = 20000, seed: int = 0) -> dict:
    """Mean and 95th percentile of the surface distance, both directions pooled (mm)."""
    d = np.concatenate([surface_distances(mesh_a, mesh_b, n_samples, seed),
                        surface_distances(mesh_b, mesh_a, n_samples, seed + 1)])
    return {"mean_mm": float(d.mean()), "p95_mm": float(np.percentile(d, 95)), "max_mm": float(d.max())}
