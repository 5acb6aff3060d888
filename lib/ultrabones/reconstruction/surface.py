"""3D bone surface reconstruction from labelled sweeps, compared with the CT bone model.

The label pixels of every frame of a specimen (the CT-derived ``Labels/`` or a
model's ``Labels_pred/``) are mapped to CT space through the pose chain of
Eq. 1 with the original (recorded, ``dataset.poses(df, "initial")``) or the
optimised poses, merged
per specimen and per bone, voxel-downsampled and compared with the CT bone
model.

Definitions (all distances in mm, CT frame)
-------------------------------------------
- *Reconstruction* ``R``: the centroids of the occupied voxels (edge
  ``voxel_mm``) of all label points of a group of records. Voxels are anchored
  at the CT origin, so per-record clouds merge exactly (sums and counts add).
- *One-sided distance*: for each point of ``R``, the unsigned distance to the
  CT bone surface (the merged model: a label pixel cannot tell which bone it
  shows), by closest-point queries on a BVH (open3d ``RaycastingScene``, Embree),
  not to a point sampling of the model as the released code does. Reported as
  mean (the released code's figure), median and 95th percentile.
- *Visible surface* ``V``: CT surface samples (about one per
  ``surface_sample_mm`` squared) of the group's bone model that some frame's
  image plane passes within ``visibility_gamma_mm`` of, inside the image's
  field of view, that are the first bone hit along their scan line (not in
  the acoustic shadow; rays cast against the merged model), and whose
  incidence angle (surface normal projected into the image plane against the
  scan line) is at most ``max_incidence_deg``. The planes are placed with the
  optimised poses (the original ones when optimised poses are not compared) of the frames
  that carry a CT-derived label, so ``V`` is the same for every grid cell.
  This mirrors how the visible labels are made (shadow and incidence removed).
- *Coverage*: the share of ``V`` within ``coverage_mm`` of ``R``.
- *Chamfer* (symmetric): ``(mean_{r in R} d(r, mesh) + mean_{s in V} d(s, R)) / 2``.
  The backward term runs over the visible surface only: the far side of a bone
  is never imaged, and would dominate a Chamfer distance over the whole model.
  This is the form UltraBoneUDF reports (the mean of the two one-sided means,
  not their sum; :func:`chamfer_distance` on two point sets), with the
  forward term to the mesh itself and ``V`` in place of its 1 mm crop.

Memory: frames stream; each record keeps only a voxel accumulator (one entry
per occupied voxel), so a specimen of millions of label points stays far below
the 4 GB budget (20 million points streamed: 0.4 GB peak).

This module holds the definitions: voxel accumulation, distance statistics,
the visible surface, Chamfer distances and comparison with a reference surface.
:mod:`ultrabones.reconstruction.record_points` maps a record's label pixels to
points (Eq. 1) and streams them into voxel accumulators,
:mod:`ultrabones.reconstruction.point_clouds` writes and reads the point
clouds' PLY files, :mod:`ultrabones.reconstruction.batch` reconstructs a
specimen and a dataset (the stage of notebook 06) and
:mod:`ultrabones.reconstruction.figures` draws the results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy.spatial import cKDTree

from ultrabones.core.dataset import LABELS, LABELS_PRED
from ultrabones.core.geometry import invert_transform
from ultrabones.core.mesh import SurfaceDistance

#: Label sources of the comparison grid -> label folder.
SOURCES: dict[str, str] = {"labels": LABELS, "predicted": LABELS_PRED}
#: Pose methods of the comparison grid: the recorded ("original") and the optimised poses.
POSE_METHODS: tuple[str, ...] = ("original", "optimized")
#: Grid pose method -> ``dataset.poses`` method.
DATASET_POSES: dict[str, str] = {"original": "initial", "optimized": "optimized"}
#: The group of all records of a specimen.
ALL = "all"
#: Histogram of point-to-surface distances kept per grid cell: bin width and range (mm).
HIST_BIN_MM = 0.01
HIST_MAX_MM = 20.0
#: A surface sample is in the acoustic shadow when the first bone hit on its scan line
#: lies more than this much (mm) above it.
SHADOW_TOLERANCE_MM = 1.0
#: Voxel indices are packed into one int64 key, 21 bits per axis.
_KEY_BITS = 21
_KEY_HALF = 1 << (_KEY_BITS - 1)


def cell_name(source: str, method: str) -> str:
    """Metrics key of a grid cell (a label source with a pose method), e.g. ``labels_optimized``."""
    return f"{source}_{method}"


# ----------------------------------------------------------------------------- voxel accumulation


def voxel_keys(points: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Packed int64 keys of the voxels (edge ``voxel_mm``, anchored at the origin) holding ``points``.

    Parameters
    ----------
    points : (N, 3) array, CT space (mm).
    voxel_mm : voxel edge (mm).

    Returns
    -------
    (N,) int64 array; keys sort in x-major, then y, then z voxel order.

    Raises
    ------
    ValueError
        If a point lies beyond +-2^20 voxels of the origin.
    """
    ijk = np.floor(np.asarray(points, dtype=float) / voxel_mm).astype(np.int64) + _KEY_HALF
    if ijk.size and (ijk.min() < 0 or ijk.max() >= 2 * _KEY_HALF):
        raise ValueError(f"voxel_keys: points beyond {_KEY_HALF * voxel_mm:.0f} mm of the origin")
    return (ijk[:, 0] << (2 * _KEY_BITS)) | (ijk[:, 1] << _KEY_BITS) | ijk[:, 2]


class VoxelAccumulator:
    """Streaming voxel downsampling: the centroid of every occupied voxel.

    Points are added in chunks (frame by frame); every voxel keeps the sum and
    the count of its points, so the result does not depend on how the points
    were chunked, and accumulators of several records merge exactly. Memory is
    one entry per occupied voxel plus a bounded buffer.

    open3d's ``voxel_down_sample`` computes the same centroids for one cloud in
    memory, but anchors its grid at the cloud's bounding box, so clouds
    downsampled separately do not share voxels and cannot be merged exactly.

    Parameters
    ----------
    voxel_mm : voxel edge (mm).
    buffer_points : pending points that trigger a compaction.
    """

    def __init__(self, voxel_mm: float, buffer_points: int = 2_000_000):
        if not voxel_mm > 0:
            raise ValueError(f"VoxelAccumulator: voxel_mm must be positive, got {voxel_mm}")
        self.voxel_mm = float(voxel_mm)
        self.buffer_points = int(buffer_points)
        self.keys = np.zeros(0, dtype=np.int64)
        self.sums = np.zeros((0, 3))
        self.counts = np.zeros(0, dtype=np.int64)
        self.n_added = 0
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._n_pending = 0

    def add(self, points: np.ndarray) -> None:
        """Add (N, 3) points (mm)."""
        points = np.asarray(points, dtype=float).reshape(-1, 3)
        if not len(points):
            return
        self._pending.append((voxel_keys(points, self.voxel_mm), points, np.ones(len(points), dtype=np.int64)))
        self._n_pending += len(points)
        self.n_added += len(points)
        if self._n_pending >= self.buffer_points:
            self._compact()

    def merge(self, other: "VoxelAccumulator") -> None:
        """Add every point of ``other`` (same voxel size) to this accumulator."""
        if other.voxel_mm != self.voxel_mm:
            raise ValueError(f"merge: voxel sizes differ ({self.voxel_mm} vs {other.voxel_mm} mm)")
        other._compact()
        if len(other.keys):
            self._pending.append((other.keys, other.sums, other.counts))
            self._n_pending += len(other.keys)
        self.n_added += other.n_added
        self._compact()

    def _compact(self) -> None:
        if not self._pending:
            return
        keys = np.concatenate([self.keys] + [p[0] for p in self._pending])
        sums = np.concatenate([self.sums] + [p[1] for p in self._pending])
        counts = np.concatenate([self.counts] + [p[2] for p in self._pending])
        self._pending, self._n_pending = [], 0
        uniq, inverse = np.unique(keys, return_inverse=True)
        self.keys = uniq
        self.sums = np.stack([np.bincount(inverse, weights=sums[:, k], minlength=len(uniq)) for k in range(3)], 1)
        self.counts = np.bincount(inverse, weights=counts, minlength=len(uniq)).astype(np.int64)

    def __len__(self) -> int:
        self._compact()
        return len(self.keys)

    def centroids(self) -> np.ndarray:
        """(M, 3) array, the centroid of each occupied voxel (mm), in voxel-key order."""
        self._compact()
        return self.sums / np.maximum(self.counts, 1)[:, None]


# ----------------------------------------------------------------------------- distances


def distance_summary(distances: np.ndarray) -> dict:
    """Mean, median and 95th percentile (mm) of distances; NaN when empty."""
    d = np.asarray(distances, dtype=float)
    if not len(d):
        return {"mean_mm": float("nan"), "median_mm": float("nan"), "p95_mm": float("nan")}
    return {"mean_mm": float(d.mean()), "median_mm": float(np.median(d)), "p95_mm": float(np.percentile(d, 95))}


def distance_histogram(distances: np.ndarray) -> np.ndarray:
    """Counts of distances in bins of :data:`HIST_BIN_MM` over [0, :data:`HIST_MAX_MM`), plus an overflow bin."""
    n_bins = int(round(HIST_MAX_MM / HIST_BIN_MM))
    idx = np.minimum((np.asarray(distances, dtype=float) / HIST_BIN_MM).astype(np.int64), n_bins)
    return np.bincount(idx, minlength=n_bins + 1)


def histogram_quantile(counts: np.ndarray, q: float) -> float:
    """Quantile ``q`` in [0, 1] (mm) of a :func:`distance_histogram`, linear within a bin.

    Exact to half a bin (0.005 mm) below :data:`HIST_MAX_MM`; a quantile in the
    overflow bin is reported as ``HIST_MAX_MM``.
    """
    counts = np.asarray(counts, dtype=float)
    total = counts.sum()
    if total <= 0:
        return float("nan")
    cum = np.cumsum(counts)
    target = q * total
    b = int(np.searchsorted(cum, target, side="left"))
    if b >= len(counts) - 1:
        return HIST_MAX_MM
    below = cum[b - 1] if b > 0 else 0.0
    frac = (target - below) / counts[b] if counts[b] > 0 else 0.0
    return float((b + frac) * HIST_BIN_MM)


# ----------------------------------------------------------------------------- visible surface


@dataclass
class SurfaceSamples:
    """Samples of a bone surface: points and outward unit normals (CT, mm)."""

    points: np.ndarray
    normals: np.ndarray

    def __len__(self) -> int:
        return len(self.points)


def sample_surface(mesh, spacing_mm: float, seed: int = 0) -> SurfaceSamples:
    """About one sample per ``spacing_mm``^2 of a mesh's area, uniformly, with face normals.

    Parameters
    ----------
    mesh : ``trimesh.Trimesh`` in CT space (mm).
    spacing_mm : mean sample spacing (mm).
    seed : random seed.
    """
    import trimesh

    count = max(1, int(np.ceil(mesh.area / spacing_mm**2)))
    points, face = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return SurfaceSamples(np.asarray(points, dtype=float), np.asarray(mesh.face_normals[face], dtype=float))


def visible_surface(
    samples: SurfaceSamples,
    plane_poses: np.ndarray,
    image_size: tuple[int, int],
    spacing: tuple[float, float],
    occluder: SurfaceDistance,
    gamma_mm: float = 0.5,
    max_incidence_deg: float = 85.0,
    shadow_tolerance_mm: float = SHADOW_TOLERANCE_MM,
    chunk: int = 4_000_000,
) -> np.ndarray:
    """Which surface samples some frame's ultrasound plane can image.

    A sample is visible when, for at least one frame, it lies within
    ``gamma_mm`` of the image plane, inside the field of view, is the first
    bone hit along its scan line (within ``shadow_tolerance_mm``), and its
    incidence angle is at most ``max_incidence_deg``.

    Parameters
    ----------
    samples : surface samples (CT, mm) with outward normals.
    plane_poses : (K, 4, 4) array, image plane -> CT (``pose @ calib``), mm.
    image_size : (width, height) in pixels.
    spacing : (sx, sy) mm per pixel.
    occluder : the whole bone model, for the shadow test (rays cast from the
        top of the image down the scan line).
    gamma_mm : out-of-plane tolerance (mm).
    max_incidence_deg : largest incidence angle that still echoes (degrees).
    shadow_tolerance_mm : slack between the first hit and the sample (mm).
    chunk : frames x samples handled at once (memory).

    Returns
    -------
    (N,) bool array.
    """
    plane_poses = np.asarray(plane_poses, dtype=float).reshape(-1, 4, 4)
    n = len(samples)
    visible = np.zeros(n, dtype=bool)
    if not n or not len(plane_poses):
        return visible
    width_mm = image_size[0] * spacing[0]
    height_mm = image_size[1] * spacing[1]
    cos_max = np.cos(np.radians(max_incidence_deg))
    per = max(1, chunk // n)
    for start in range(0, len(plane_poses), per):
        block = plane_poses[start : start + per]
        ip_from_ct = invert_transform(block)
        todo = np.flatnonzero(~visible)
        if not len(todo):
            break
        pts = samples.points[todo]
        # Out-of-plane distance first, as one matrix product; in-plane coordinates only where it is small.
        z = pts @ ip_from_ct[:, 2, :3].T + ip_from_ct[:, 2, 3]  # (n, K)
        j, k = np.nonzero(np.abs(z) <= gamma_mm)
        if not len(k):
            continue
        rot, off = ip_from_ct[k, :2, :3], ip_from_ct[k, :2, 3]
        xy = np.einsum("mij,mj->mi", rot, pts[j]) + off
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < width_mm) & (xy[:, 1] >= 0) & (xy[:, 1] < height_mm)
        j, k, xy, rot = j[inside], k[inside], xy[inside], rot[inside]
        if not len(k):
            continue
        # Incidence: the normal projected into the image plane against the scan line (+y, downwards).
        n_ip = np.einsum("mij,mj->mi", rot, samples.normals[todo[j]])
        norm_xy = np.hypot(n_ip[:, 0], n_ip[:, 1])
        facing = -n_ip[:, 1] >= cos_max * np.maximum(norm_xy, 1e-12)
        k, j, xy = k[facing], j[facing], xy[facing]
        if not len(k):
            continue
        # Shadow: cast from the transducer face (y = 0) down the scan line through the sample.
        plane = block[k]
        origins = plane[:, :3, 0] * xy[:, :1] + plane[:, :3, 3]
        directions = plane[:, :3, 1]
        t_hit = occluder.first_hit(origins, directions)
        first = xy[:, 1] - t_hit <= shadow_tolerance_mm
        visible[todo[j[first]]] = True
    return visible


def backward_distances(samples: np.ndarray, cloud: np.ndarray) -> np.ndarray:
    """Distance (mm) of each surface sample to the nearest reconstruction point (inf if the cloud is empty)."""
    samples = np.asarray(samples, dtype=float).reshape(-1, 3)
    if not len(cloud):
        return np.full(len(samples), np.inf)
    if not len(samples):
        return np.zeros(0)
    return cKDTree(np.asarray(cloud, dtype=float)).query(samples, k=1)[0]


def chamfer_distance(a: np.ndarray, b: np.ndarray) -> dict:
    """Symmetric Chamfer distance of two point sets (mm), in the form UltraBoneUDF reports.

    ``CD(A, B) = (mean_{a in A} min_{b in B} |a - b| + mean_{b in B} min_{a in A} |a - b|) / 2``:
    the *mean* of the two one-sided mean nearest-neighbour distances,
    Euclidean and not squared. This is what the UltraBoneUDF code prints as
    ``CD-double-side`` (``0.5 * (CD_reconstruction_to_GT + CD_GT_to_reconstruction)``,
    each a mean of open3d ``compute_point_cloud_distance``; luohwu/UltraBoneUDF,
    ``main.py``, ``Runner.validate_mesh``), the figure behind its 1.10 mm on
    UltraBones100k (Wu et al., Comput Med Imaging Graph 2025, 102690). There,
    ``A`` is 5e6 points sampled uniformly on the reconstructed mesh and ``B``
    5e6 points sampled on the CT bone model, kept only within 1 mm of the
    input ultrasound point cloud (the imaged part; see :func:`points_within`).
    Some papers report the *sum* of the two terms instead (twice this value),
    or squared distances: not this one.

    Parameters
    ----------
    a, b : (N, 3) and (M, 3) points (mm), both non-empty.

    Returns
    -------
    ``{"chamfer_mm": CD, "a_to_b_mm": mean_a d(a, B), "b_to_a_mm": mean_b d(b, A),
    "n_a": N, "n_b": M}``; NaN distances when either set is empty.
    """
    a = np.asarray(a, dtype=float).reshape(-1, 3)
    b = np.asarray(b, dtype=float).reshape(-1, 3)
    if not len(a) or not len(b):
        nan = float("nan")
        return {"chamfer_mm": nan, "a_to_b_mm": nan, "b_to_a_mm": nan, "n_a": len(a), "n_b": len(b)}
    ab = float(backward_distances(a, b).mean())
    ba = float(backward_distances(b, a).mean())
    return {"chamfer_mm": 0.5 * (ab + ba), "a_to_b_mm": ab, "b_to_a_mm": ba, "n_a": len(a), "n_b": len(b)}


def points_within(points: np.ndarray, cloud: np.ndarray, max_mm: float = 1.0) -> np.ndarray:
    """The points (mm) within ``max_mm`` of ``cloud``: UltraBoneUDF's crop of the CT model to the imaged part.

    UltraBoneUDF keeps the CT surface samples within 1 mm of the *input*
    ultrasound point cloud before computing the Chamfer distance
    (``filter_source_by_target_distance``), so the unseen far side of the bone
    does not count.
    """
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    cloud = np.asarray(cloud, dtype=float).reshape(-1, 3)
    if not len(points) or not len(cloud):
        return points[:0]
    # a bounded query prunes the search: points farther than max_mm come back as inf without a full search
    d = cKDTree(cloud).query(points, k=1, distance_upper_bound=max_mm * (1 + 1e-9) + 1e-12)[0]
    return points[d <= max_mm]


# ----------------------------------------------------------------------------- one cloud against a reference surface


def compare_to_surface(points: np.ndarray, surface: "SurfaceDistance", imaged: np.ndarray,
                       coverage_mm: float = 1.0, samples: np.ndarray | None = None, crop_mm: float = 1.0) -> dict:
    """A reconstruction ``R`` against a reference surface (e.g. the twin's true bones), in poolable sums.

    Parameters
    ----------
    points : (N, 3) reconstruction points (CT, mm).
    surface : :class:`SurfaceDistance` of the reference surface.
    imaged : (M, 3) samples of the reference surface's *imaged part* (the
        backward term's and the coverage's set; the same for every
        reconstruction of a specimen).
    coverage_mm : an imaged sample within this of ``R`` is covered (mm).
    samples : (K, 3) dense samples of the whole reference surface; with them,
        the Chamfer distance in UltraBoneUDF's exact protocol is added
        (``chamfer_udf_crop_mm``: the samples within ``crop_mm`` of ``R``
        itself as the reference set, :func:`points_within`).
    crop_mm : that crop distance (mm; UltraBoneUDF: 1 mm).

    Returns
    -------
    dict: ``n_points``, ``sum_mm`` and ``hist`` (point-to-surface distances
    of ``R``: their sum and :func:`distance_histogram`), ``mean_mm``,
    ``median_mm``, ``p95_mm`` (exact point-to-mesh), ``n_imaged``,
    ``sum_back_mm`` (sum over ``imaged`` of the distance to the nearest point
    of ``R``), ``n_covered``, ``coverage``, ``sum_fwd_pp_mm`` (sum over ``R``
    of the distance to the nearest point of ``imaged``), ``chamfer_mm``
    (UltraBoneUDF's form on point sets, :func:`chamfer_distance` of ``R`` and
    ``imaged``), and ``chamfer_udf_crop_mm``, ``n_udf_crop`` with ``samples``.
    NaN where a set is empty.
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 3)
    imaged = np.asarray(imaged, dtype=float).reshape(-1, 3)
    d = surface(pts) if len(pts) else np.zeros(0)
    back = backward_distances(imaged, pts) if len(pts) else np.full(len(imaged), np.inf)
    fwd_pp = backward_distances(pts, imaged) if len(imaged) else np.full(len(pts), np.inf)
    out = {"n_points": len(pts), "sum_mm": float(d.sum()), "hist": distance_histogram(d).tolist(),
           **distance_summary(d), "n_imaged": len(imaged),
           "sum_back_mm": float(back.sum()) if len(pts) else float("nan"),
           "n_covered": int((back <= coverage_mm).sum()),
           "sum_fwd_pp_mm": float(fwd_pp.sum()) if len(imaged) else float("nan")}
    out["coverage"] = out["n_covered"] / len(imaged) if len(imaged) else float("nan")
    out["chamfer_mm"] = chamfer_distance(pts, imaged)["chamfer_mm"]
    if samples is not None:
        crop = points_within(samples, pts, crop_mm) if len(pts) else np.zeros((0, 3))
        out["chamfer_udf_crop_mm"] = chamfer_distance(pts, crop)["chamfer_mm"]
        out["n_udf_crop"] = len(crop)
    return out


def pool_comparisons(rows: Sequence[Mapping]) -> dict:
    """:func:`compare_to_surface` rows of several specimens pooled into one grid cell.

    ``mean_mm`` over every point of every specimen, ``median_mm`` and ``p95_mm``
    from the pooled histogram (within 0.005 mm), ``coverage`` covered over
    imaged samples, ``chamfer_mm`` as ``(sum_fwd / n_points + sum_back / n_imaged) / 2``
    over the pooled sums; ``chamfer_udf_crop_mm`` the mean over specimens.
    None where nothing was measured.
    """
    rows = [r for r in rows if r["n_points"]]
    n = sum(r["n_points"] for r in rows)
    nv = sum(r["n_imaged"] for r in rows)
    hist = np.sum([r["hist"] for r in rows], axis=0) if rows else np.zeros(1)
    udf = [r["chamfer_udf_crop_mm"] for r in rows if np.isfinite(r.get("chamfer_udf_crop_mm", np.nan))]
    return {
        "n_specimens": len(rows),
        "n_points": int(n),
        "mean_mm": sum(r["sum_mm"] for r in rows) / n if n else None,
        "median_mm": histogram_quantile(hist, 0.5) if n else None,
        "p95_mm": histogram_quantile(hist, 0.95) if n else None,
        "coverage": sum(r["n_covered"] for r in rows) / nv if nv else None,
        "chamfer_mm": (0.5 * (sum(r["sum_fwd_pp_mm"] for r in rows) / n + sum(r["sum_back_mm"] for r in rows) / nv)
                       if n and nv else None),
        "chamfer_udf_crop_mm": float(np.mean(udf)) if udf else None,
        "n_imaged": int(nv),
    }
