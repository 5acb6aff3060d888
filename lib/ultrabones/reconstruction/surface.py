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

The stage (:func:`reconstruct_dataset`) caches each specimen's result with
``cache.SpecimenCache`` (keyed on its parameters and the content digest of
the files it reads: CT models, the derived tracking tables and labels, the calibration); :func:`aggregate` pools the grid over specimens. Figures: distance
histograms (:func:`plot_histograms`), the grid per specimen and bone
(:func:`plot_grid`) and renders over the CT model (:func:`render_figure`:
open3d offscreen, falling back to matplotlib).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ultrabones.core import atomic
from ultrabones.core.dataset import LABELS, LABELS_PRED, Record, Specimen, poses, read_label, read_mesh, read_tracking
from ultrabones.core.errors import DatasetError
from ultrabones.core.geometry import invert_transform, pixels_to_ct
from ultrabones.core.mesh import SurfaceDistance, decimate

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
    from scipy.spatial import cKDTree

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
    from scipy.spatial import cKDTree

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


#: What the grid's CT-model keys measure, written beside them in the metrics (``self_consistency_vs_ct_model``).
SELF_CONSISTENCY_NOTE = (
    "distances to the CT bone model the labels were drawn from: for the labels cells a self-consistency check "
    "(every label pixel lies within gamma of that model at the optimised pose by construction), not a result; "
    "on the twin the results are the *_true keys (against the true bone surface)")

#: The CT-model keys of a grid cell (kept in ``grid.<cell>`` for the summary and real data).
CT_MODEL_KEYS = ("mean_mm", "median_mm", "p95_mm", "chamfer_mm", "coverage")


def reference_table(per_specimen: Mapping[str, Mapping[str, Mapping]]) -> pd.DataFrame:
    """``{specimen: {cell: {key: value}}}`` as rows (``specimen``, ``source``, ``poses``, ``group`` = ``all``, keys).

    The shape of :func:`results_table`, so :func:`plot_grid` draws it; cells are
    named ``<source>_<poses>`` (:func:`cell_name`).
    """
    rows = []
    for sid, cells in per_specimen.items():
        for cell, vals in cells.items():
            src, poses_ = cell.rsplit("_", 1)
            rows.append({"specimen": sid, "source": src, "poses": poses_, "group": ALL, **vals})
    return pd.DataFrame(rows)


def stage_metrics(summary: Mapping, table: pd.DataFrame, pending: Sequence[str], render: str, seconds: float,
                  reference: Mapping | None = None) -> dict:
    """The metrics of notebook 06 (``build/<profile>/metrics/06_reconstruction.json``).

    Parameters
    ----------
    summary : :func:`aggregate` of the results.
    table : :func:`results_table` of the results.
    pending : specimens not reconstructed yet.
    render : the renderer used (``open3d``, ``matplotlib`` or ``none``).
    seconds : wall time of the stage (s).
    reference : measurements against an independent reference surface, e.g.
        :func:`ultrabones.twin.measure.reconstruction_vs_truth` on the twin:
        ``{"grid": {cell: {key: value}}, "per_specimen": {specimen: {cell: {...}}}, ...}``;
        its keys are merged into ``grid`` and ``per_specimen``, the rest is kept under ``vs_truth``.

    Returns
    -------
    dict: ``grid`` (per cell: the CT-model keys :data:`CT_MODEL_KEYS`, counts,
    and the reference's keys), ``self_consistency_vs_ct_model`` (the CT-model
    keys per cell with :data:`SELF_CONSISTENCY_NOTE`), ``optimized_lower_mean``
    (per source: the optimised poses' mean distance below the original ones',
    against the reference where given, else against the CT model), the counts
    of :func:`aggregate`, ``per_specimen``, ``render``, ``seconds``.
    """
    grid = {cell: {k: v for k, v in vals.items() if k != "specimens"} for cell, vals in summary["grid"].items()}
    ref_grid = dict((reference or {}).get("grid", {}))
    for cell in grid:
        grid[cell].update(ref_grid.get(cell, {}))
    key = "mean_true_mm" if ref_grid else "mean_mm"
    lower = {}
    for src in sorted({c.rsplit("_", 1)[0] for c in grid}):
        a, b = grid.get(cell_name(src, "optimized")), grid.get(cell_name(src, "original"))
        if a and b and a.get(key) is not None and b.get(key) is not None:
            lower[src] = bool(a[key] < b[key])
    per_specimen: dict = {}
    for _, row in table[table["group"] == ALL].iterrows():
        per_specimen.setdefault(row["specimen"], {})[cell_name(row["source"], row["poses"])] = {
            k: row[k] for k in (*CT_MODEL_KEYS, "n_points")}
    for sid, cells in (reference or {}).get("per_specimen", {}).items():
        for cell, vals in cells.items():
            per_specimen.setdefault(sid, {}).setdefault(cell, {}).update(vals)
    return {
        "grid": grid,
        "self_consistency_vs_ct_model": {"note": SELF_CONSISTENCY_NOTE,
                                         "cells": {c: {k: v.get(k) for k in CT_MODEL_KEYS} for c, v in grid.items()}},
        "optimized_lower_mean": lower,
        "optimized_lower_against": "true bone surface" if ref_grid else "CT bone model",
        **{k: summary[k] for k in ("n_points", "n_points_reconstruction", "n_distance_queries", "points_per_second",
                                   "n_specimens", "specimens", "skipped", "bad_frames")},
        "pending": list(pending),
        "per_specimen": per_specimen,
        "vs_truth": {k: v for k, v in (reference or {}).items() if k not in ("grid", "per_specimen")} or None,
        "render": render,
        "seconds": seconds,
    }


#: The keys a reference measurement (the twin's truth) adds to a grid cell.
TRUE_KEYS = ("mean_true_mm", "median_true_mm", "p95_true_mm", "chamfer_true_mm", "chamfer_true_udf_crop_mm",
             "coverage_true")


def grid_table(grid: Mapping[str, Mapping], keys: Sequence[str]) -> pd.DataFrame:
    """The pooled grid as a table: one row per cell (``<source>_<poses>``), the given keys and ``n_specimens``."""
    return pd.DataFrame({cell: {k: vals.get(k) for k in (*keys, "n_specimens")} for cell, vals in grid.items()}).T


def check_grid(grid: Mapping[str, Mapping], tol_mm: float = HIST_BIN_MM) -> None:
    """Sanity of every measured cell: finite non-negative distances, median <= p95, coverages in [0, 1].

    Checks the CT-model keys of cells with ``n_specimens`` and the keys of
    :data:`TRUE_KEYS` where present and not None.

    Raises
    ------
    AssertionError
        Naming the cell and the key.
    """
    for cell, v in grid.items():
        for prefix, n in (("", v.get("n_specimens")), ("_true", v.get("n_specimens_true"))):
            mean = v.get(f"mean{prefix}_mm")
            if not n or mean is None:
                continue
            for k in (f"mean{prefix}_mm", f"median{prefix}_mm", f"p95{prefix}_mm", f"chamfer{prefix}_mm"):
                if v.get(k) is not None and not (np.isfinite(v[k]) and v[k] >= 0):
                    raise AssertionError(f"reconstruction grid {cell}: {k} = {v[k]} is not a finite distance >= 0")
            if v[f"median{prefix}_mm"] > v[f"p95{prefix}_mm"] + tol_mm:
                raise AssertionError(f"reconstruction grid {cell}: median{prefix} above p95{prefix}")
            cov = v.get("coverage" + prefix)
            if cov is not None and not 0.0 <= cov <= 1.0:
                raise AssertionError(f"reconstruction grid {cell}: coverage{prefix} = {cov} outside [0, 1]")


# ----------------------------------------------------------------------------- frames -> points


def label_points(mask: np.ndarray, pose: np.ndarray, calib: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """CT points (mm) of a label's pixels (Eq. 1).

    Parameters
    ----------
    mask : (H, W) bool array, the label.
    pose : (4, 4) array, probe marker in CT space.
    calib : (4, 4) array, image plane in probe-marker space (mm).
    spacing : (sx, sy) mm per pixel.

    Returns
    -------
    (N, 3) array, one point per label pixel.
    """
    v, u = np.nonzero(mask)
    if not len(u):
        return np.zeros((0, 3))
    return pixels_to_ct(np.stack([u, v], axis=1).astype(float), pose, calib, spacing)


def read_record_bones(raw_specimen_dir: Path | str | None, specimen: Specimen) -> dict[str, str]:
    """Record name -> bone for a specimen's records.

    In order: the twin's ``raw/<specimen>/records.json`` (``{"record01":
    "tibia"}``, ``{"records": {...}}`` or a list of ``{"name"|"record": ...,
    "bone": ...}``); the bone folder of layout B; else :data:`ALL` for every record.

    Raises
    ------
    DatasetError
        If ``records.json`` exists but cannot be read as one of those forms.
    """
    out = {r.name: (r.bone or ALL) for r in specimen.records}
    if raw_specimen_dir is None:
        return out
    f = Path(raw_specimen_dir) / "records.json"
    if not f.is_file():
        return out
    try:
        data = json.loads(f.read_text())
    except ValueError as exc:
        raise DatasetError(f"{f}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and "records" in data:
        data = data["records"]
    mapping: dict[str, str] = {}
    if isinstance(data, dict):
        for name, val in data.items():
            bone = val.get("bone") if isinstance(val, dict) else val
            if not isinstance(bone, str):
                raise DatasetError(f"{f}: record {name!r} has no bone name")
            mapping[name] = bone
    elif isinstance(data, list):
        for i, item in enumerate(data):
            name = item.get("name", item.get("record")) if isinstance(item, dict) else None
            bone = item.get("bone") if isinstance(item, dict) else None
            if not isinstance(name, str) or not isinstance(bone, str):
                raise DatasetError(f"{f} item {i}: expected {{'name': ..., 'bone': ...}}, got {item!r}")
            mapping[name] = bone
    else:
        raise DatasetError(f"{f}: expected a mapping record -> bone or a list of records")
    for name in out:
        if name in mapping:
            out[name] = mapping[name]
    return out


@dataclass
class RecordFrames:
    """The frames of one record used for one label source.

    Attributes
    ----------
    record : the record.
    timestamps : (K,) int64, image timestamps (ms).
    poses : method -> (K, 4, 4) probe-marker-in-CT poses (all finite).
    """

    record: Record
    timestamps: np.ndarray
    poses: dict = field(default_factory=dict)


def record_frames(record: Record, kind: str, methods: Sequence[str], frame_step: int = 1) -> RecordFrames:
    """Frames with a label of ``kind`` and a finite pose for every method (every ``frame_step``-th).

    ``methods`` are grid pose methods (:data:`POSE_METHODS`). Frames discarded by the pose optimisation (NaN ``*_optimized``) drop out
    for every method, so that the methods are compared on the same frames.
    A method whose columns the tracking table lacks leaves no frame.
    """
    unknown = [m for m in methods if m not in DATASET_POSES]
    if unknown:
        raise ValueError(f"record_frames: unknown pose method(s) {unknown}; one of {list(DATASET_POSES)}")
    labelled = record.labelled_timestamps(kind)
    empty = RecordFrames(record, np.zeros(0, dtype=np.int64), {m: np.zeros((0, 4, 4)) for m in methods})
    if not len(labelled):
        return empty
    df = read_tracking(record.poses_csv)
    rows = pd.Index(df["timestamp"]).get_indexer(labelled)
    missing = labelled[rows < 0]
    if len(missing):
        warnings.warn(f"{record.poses_csv}: no row for {len(missing)} labelled frame(s), e.g. {missing[0]}; skipped",
                      stacklevel=2)
    ts, rows = labelled[rows >= 0], rows[rows >= 0]
    all_poses = {}
    ok = np.ones(len(rows), dtype=bool)
    for m in methods:
        try:
            p = poses(df, DATASET_POSES[m])[rows]
        except DatasetError:
            return empty
        all_poses[m] = p
        ok &= np.isfinite(p).all(axis=(1, 2))
    keep = np.flatnonzero(ok)[:: max(1, int(frame_step))]
    return RecordFrames(record, ts[keep], {m: p[keep] for m, p in all_poses.items()})


def reconstruct_record(
    frames: RecordFrames,
    kind: str,
    calib: np.ndarray,
    spacing: tuple[float, float],
    voxel_mm: float,
    progress: bool = False,
) -> tuple[dict[str, VoxelAccumulator], tuple[int, int] | None, list[str]]:
    """Stream a record's label frames into one voxel accumulator per pose method.

    Parameters
    ----------
    frames : from :func:`record_frames`.
    kind : label folder (``Labels`` or ``Labels_pred``).
    calib, spacing : the dataset's calibration (4x4, mm) and pixel spacing (mm).
    voxel_mm : voxel edge (mm).
    progress : show a progress bar.

    Returns
    -------
    accumulators : method -> accumulator of the record's label points.
    image_size : (width, height) of the labels in pixels (None if no frame was read).
    bad : one message per unreadable label (the frame is skipped).
    """
    from tqdm import tqdm

    acc = {m: VoxelAccumulator(voxel_mm) for m in frames.poses}
    size, bad = None, []
    for i, t in enumerate(tqdm(frames.timestamps, desc=f"{frames.record.key} {kind}", disable=not progress,
                               leave=False)):
        try:
            mask = read_label(frames.record.label_path(t, kind), shape=None if size is None else size[::-1])
        except DatasetError as exc:
            bad.append(str(exc))
            continue
        size = size or (mask.shape[1], mask.shape[0])
        v, u = np.nonzero(mask)
        if not len(u):
            continue
        uv = np.stack([u, v], axis=1).astype(float)
        for m, p in frames.poses.items():
            acc[m].add(pixels_to_ct(uv, p[i], calib, spacing))
    return acc, size, bad


# ----------------------------------------------------------------------------- one specimen


def _write_ply(path: Path, points: np.ndarray, distances: np.ndarray) -> Path:
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


def reconstruct_specimen(
    specimen: Specimen,
    params: Mapping,
    calib: np.ndarray,
    spacing: tuple[float, float],
    record_bones: Mapping[str, str] | None = None,
    out_dir: Path | str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Reconstruct one specimen for every grid cell and group, and measure it against the CT model.

    Parameters
    ----------
    specimen : the specimen (``dataset.read_specimen``).
    params : the ``reconstruction`` section: ``sources``, ``pose_methods``,
        ``voxel_mm``, ``frame_step``, ``surface_sample_mm``,
        ``visibility_gamma_mm``, ``max_incidence_deg``, ``coverage_mm``, ``save_ply``.
    calib, spacing : image-to-probe calibration (4x4, mm) and pixel spacing (mm).
    record_bones : record name -> bone (:func:`read_record_bones`); default all :data:`ALL`.
    out_dir : where the PLY files go (``<source>_<method>_<group>.ply``).
    seed : seed of the surface sampling.
    progress : progress bars.

    Returns
    -------
    A JSON-able dict: ``specimen``, ``skipped`` (None, or why the specimen was
    skipped), ``rows`` (one per source x method x group with the distance
    statistics, histogram and coverage), ``groups`` (visible samples per
    group), ``n_label_points``, ``n_queries``, ``query_seconds``, ``bad_frames``,
    ``notes``.
    """
    t_start = time.perf_counter()
    sources = list(params["sources"])
    methods = list(params["pose_methods"])
    voxel_mm = float(params["voxel_mm"])
    record_bones = dict(record_bones or {})
    result: dict = {"specimen": specimen.name, "skipped": None, "rows": [], "groups": {}, "notes": [],
                    "bad_frames": [], "n_label_points": 0, "n_queries": 0, "query_seconds": 0.0, "ply": {}}
    # Frames of every source (tracking is read once per record and source).
    frames = {s: [record_frames(r, SOURCES[s], methods, params["frame_step"]) for r in specimen.records]
              for s in sources}
    if "labels" in sources:
        n_labelled = sum(len(f.timestamps) for f in frames["labels"])
    else:
        n_labelled = sum(len(f.timestamps) for s in sources for f in frames[s])
    if n_labelled == 0:
        result["skipped"] = (
            f"{specimen.path}: no labelled frame with a finite {' and '.join(methods)} pose "
            f"(in {', '.join(SOURCES[s] + '/' for s in sources)} of {len(specimen.records)} record(s))"
        )
        return result
    merged = read_mesh(specimen.ct_model)
    surface = SurfaceDistance.from_mesh(merged)
    bone_of = {r.name: record_bones.get(r.name, r.bone or ALL) for r in specimen.records}
    groups = {ALL: [r.name for r in specimen.records]}
    for name, bone in bone_of.items():
        if bone != ALL:
            groups.setdefault(bone, []).append(name)

    # Stream every source's frames into per-record accumulators (one per pose method).
    per_record: dict[str, dict[str, dict[str, VoxelAccumulator]]] = {s: {} for s in sources}
    n_frames: dict[str, dict[str, int]] = {s: {} for s in sources}
    image_size: dict[str, tuple[int, int]] = {}
    for s in sources:
        for f in frames[s]:
            if not len(f.timestamps):
                continue
            acc, size, bad = reconstruct_record(f, SOURCES[s], calib, spacing, voxel_mm, progress=progress)
            result["bad_frames"] += bad
            if size is None:
                continue
            image_size.setdefault(s, size)
            per_record[s][f.record.name] = acc
            n_frames[s][f.record.name] = len(f.timestamps) - len(bad)
    vis_source = "labels" if "labels" in sources else sources[0]
    if vis_source not in image_size:
        result["skipped"] = f"{specimen.path}: no readable {SOURCES[vis_source]}/ frame ({len(result['bad_frames'])} unreadable)"
        return result

    # Visible surface per group, from the planes of the frames that carry a CT-derived label.
    vis_method = "optimized" if "optimized" in methods else methods[0]
    visible: dict[str, SurfaceSamples] = {}
    for g, names in groups.items():
        mesh = merged
        if g != ALL and g in specimen.ct_models:
            mesh = read_mesh(specimen.ct_models[g])
        elif g != ALL:
            result["notes"].append(f"no CT_bone_model_{g}.stl: group '{g}' is covered against the merged model")
        samples = sample_surface(mesh, params["surface_sample_mm"], seed=seed)
        plane = [f.poses[vis_method] for f in frames[vis_source] if f.record.name in names]
        plane = np.concatenate(plane) @ np.asarray(calib, dtype=float) if plane else np.zeros((0, 4, 4))
        mask = visible_surface(samples, plane, image_size[vis_source], spacing, surface,
                               params["visibility_gamma_mm"], params["max_incidence_deg"])
        visible[g] = SurfaceSamples(samples.points[mask], samples.normals[mask])
        result["groups"][g] = {"records": names, "n_samples": len(samples), "n_visible": int(mask.sum()),
                               "visible_area_mm2": float(mask.mean() * mesh.area),
                               "mesh": "merged" if mesh is merged else g,
                               "view_direction": (samples.normals[mask].mean(axis=0) if mask.any()
                                                  else np.array([0.0, 0.0, 1.0])).tolist()}

    for s in sources:
        for m in methods:
            for g, names in groups.items():
                acc = VoxelAccumulator(voxel_mm)
                for name in names:
                    if name in per_record[s]:
                        acc.merge(per_record[s][name][m])
                if acc.n_added == 0:
                    continue
                pts = acc.centroids()
                d = surface(pts)
                back = backward_distances(visible[g].points, pts)
                nv = len(visible[g])
                row = {"source": s, "poses": m, "group": g,
                       "n_frames": int(sum(n_frames[s].get(n, 0) for n in names)),
                       "n_label_points": int(acc.n_added), "n_points": len(pts), **distance_summary(d),
                       "n_visible": nv, "n_covered": int((back <= params["coverage_mm"]).sum()),
                       "sum_mm": float(d.sum()), "sum_back_mm": float(back.sum()) if nv else 0.0,
                       "hist": distance_histogram(d).tolist()}
                row["coverage"] = row["n_covered"] / nv if nv else float("nan")
                row["chamfer_mm"] = 0.5 * (row["mean_mm"] + row["sum_back_mm"] / nv) if nv else float("nan")
                result["rows"].append(row)
                if g == ALL:
                    result["n_label_points"] += int(acc.n_added)
                if params["save_ply"] and out_dir is not None:
                    ply = _write_ply(Path(out_dir) / specimen.name / f"{s}_{m}_{g}.ply", pts, d)
                    result["ply"][f"{s}/{m}/{g}"] = str(ply)
    for s in sources:
        if s != vis_source and not per_record[s]:
            result["notes"].append(f"no {SOURCES[s]}/ frames (e.g. not a test specimen): '{s}' cells left empty")
    result["n_queries"] = surface.n_queries
    result["query_seconds"] = surface.seconds
    result["seconds"] = time.perf_counter() - t_start
    return result


# ----------------------------------------------------------------------------- aggregation


def cell_name(source: str, method: str) -> str:
    """Metrics key of a grid cell, e.g. ``labels_optimized``."""
    return f"{source}_{method}"


def results_table(results: Iterable[Mapping]) -> pd.DataFrame:
    """One row per specimen x source x pose method x group (skipped specimens left out)."""
    cols = ["specimen", "source", "poses", "group", "n_frames", "n_label_points", "n_points", "mean_mm",
            "median_mm", "p95_mm", "chamfer_mm", "coverage", "n_visible"]
    rows = [{"specimen": r["specimen"], **row} for r in results if not r.get("skipped") for row in r["rows"]]
    return pd.DataFrame(rows).reindex(columns=cols)


def aggregate(results: Iterable[Mapping], sources: Sequence[str], methods: Sequence[str]) -> dict:
    """Metrics of the comparison grid pooled over specimens (group :data:`ALL`).

    ``mean_mm`` is the mean over every reconstruction point of every specimen;
    ``median_mm`` and ``p95_mm`` come from the pooled histogram (within
    0.005 mm); ``coverage`` is covered over visible samples, pooled;
    ``chamfer_mm`` pools both terms. A cell without data has null values and
    ``n_specimens`` 0.
    """
    results = list(results)
    done = [r for r in results if not r.get("skipped")]
    cells = {}
    for s in sources:
        for m in methods:
            rows = [row for r in done for row in r["rows"] if row["source"] == s and row["poses"] == m
                    and row["group"] == ALL]
            n = sum(row["n_points"] for row in rows)
            nv = sum(row["n_visible"] for row in rows)
            hist = np.sum([row["hist"] for row in rows], axis=0) if rows else np.zeros(1)
            cell = {
                "n_specimens": len(rows),
                "specimens": [r["specimen"] for r in done for row in r["rows"]
                              if row["source"] == s and row["poses"] == m and row["group"] == ALL],
                "n_points": int(n),
                "n_label_points": int(sum(row["n_label_points"] for row in rows)),
                "mean_mm": sum(row["sum_mm"] for row in rows) / n if n else None,
                "median_mm": histogram_quantile(hist, 0.5) if n else None,
                "p95_mm": histogram_quantile(hist, 0.95) if n else None,
                "coverage": sum(row["n_covered"] for row in rows) / nv if nv else None,
                "chamfer_mm": (0.5 * (sum(row["sum_mm"] for row in rows) / n + sum(row["sum_back_mm"] for row in rows)
                                      / nv) if n and nv else None),
            }
            cells[cell_name(s, m)] = cell
    n_queries = sum(r.get("n_queries", 0) for r in done)
    seconds = sum(r.get("query_seconds", 0.0) for r in done)
    return {
        "grid": cells,
        "n_specimens": len(done),
        "specimens": [r["specimen"] for r in done],
        "skipped": [{"specimen": r["specimen"], "reason": r["skipped"]} for r in results if r.get("skipped")],
        "n_points": int(sum(c["n_label_points"] for c in cells.values())),
        "n_points_reconstruction": int(sum(c["n_points"] for c in cells.values())),
        "n_distance_queries": int(n_queries),
        "points_per_second": n_queries / seconds if seconds > 0 else None,
        "bad_frames": int(sum(len(r.get("bad_frames", [])) for r in done)),
    }


def pooled_histograms(results: Iterable[Mapping], group: str = ALL) -> dict[tuple[str, str], np.ndarray]:
    """(source, method) -> pooled distance histogram counts (bins of :data:`HIST_BIN_MM`) over specimens."""
    out: dict[tuple[str, str], np.ndarray] = {}
    for r in results:
        if r.get("skipped"):
            continue
        for row in r["rows"]:
            if row["group"] != group:
                continue
            key = (row["source"], row["poses"])
            out[key] = out.get(key, 0) + np.asarray(row["hist"])
    return out


# ----------------------------------------------------------------------------- figures


def plot_histograms(results: Sequence[Mapping], max_mm: float | None = None):
    """Distance histograms of the grid cells (pooled over specimens), one panel per label source.

    Parameters
    ----------
    results : specimen results (:func:`reconstruct_specimen`).
    max_mm : right end of the axis (mm); None: the largest 99.5th percentile of the cells, rounded up to 0.5 mm.

    Returns
    -------
    matplotlib figure.
    """
    import matplotlib.pyplot as plt

    hists = pooled_histograms(results)
    if max_mm is None:
        top = max([histogram_quantile(h, 0.995) for h in hists.values()] or [1.0])
        max_mm = float(min(HIST_MAX_MM, max(1.0, np.ceil(top / 0.5) * 0.5)))
    sources = sorted({k[0] for k in hists}, key=lambda s: list(SOURCES).index(s))
    fig, axes = plt.subplots(1, max(1, len(sources)), figsize=(5.0 * max(1, len(sources)), 3.4), squeeze=False)
    n_show = int(round(max_mm / HIST_BIN_MM))
    width = 0.05  # display bin (mm)
    group = int(round(width / HIST_BIN_MM))
    for ax, s in zip(axes[0], sources):
        for m, colour in zip(POSE_METHODS, ("tab:orange", "tab:blue")):
            if (s, m) not in hists:
                continue
            h = hists[(s, m)]
            coarse = h[:n_show].reshape(-1, group).sum(axis=1)
            total = h.sum()
            mean = float((np.arange(len(h)) + 0.5) @ h * HIST_BIN_MM / total)
            ax.stairs(coarse / total / width, np.arange(len(coarse) + 1) * width, color=colour, fill=True, alpha=0.35)
            ax.stairs(coarse / total / width, np.arange(len(coarse) + 1) * width, color=colour,
                      label=f"{m} poses (mean {mean:.2f} mm)")
        ax.set_xlabel("distance to CT bone surface (mm)")
        ax.set_ylabel("density (1/mm)")
        ax.set_title({"labels": "CT-derived labels", "predicted": "predicted labels"}.get(s, s))
        ax.set_xlim(0, max_mm)
        ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def plot_grid(table: pd.DataFrame, metric: str = "mean_mm"):
    """Bar chart of the comparison grid per specimen and bone (group) for one metric."""
    import matplotlib.pyplot as plt

    t = table.copy()
    if t.empty:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.text(0.5, 0.5, "no reconstruction", ha="center", va="center")
        return fig
    t["cell"] = t["source"] + " / " + t["poses"]
    t["where"] = t["specimen"] + " " + t["group"]
    pivot = t.pivot_table(index="where", columns="cell", values=metric)
    pivot = pivot[[c for c in _CELL_COLOURS if c in pivot.columns] + [c for c in pivot.columns if c not in _CELL_COLOURS]]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(pivot) + 2), 3.6))
    pivot.plot.bar(ax=ax, width=0.8, color=[_CELL_COLOURS.get(c, None) for c in pivot.columns])
    ax.set_ylabel({"mean_mm": "mean distance to CT model (mm)", "coverage": "coverage of visible surface",
                   "mean_true_mm": "mean distance to the true bones (mm)",
                   "chamfer_true_mm": "Chamfer distance to the true bones (mm)",
                   "coverage_true": "coverage of the truly imaged surface"}.get(metric, metric))
    ax.set_xlabel("")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


_CELL_COLOURS = {"labels / original": "#f4a261", "labels / optimized": "#2a9d8f",
                 "predicted / original": "#e76f51", "predicted / optimized": "#264653"}


def view_angles(direction: np.ndarray) -> tuple[float, float]:
    """Matplotlib (elevation, azimuth) in degrees of a camera looking from ``direction`` (CT, unit vector)."""
    d = np.asarray(direction, dtype=float)
    d = d / max(np.linalg.norm(d), 1e-12)
    return float(np.degrees(np.arcsin(np.clip(d[2], -1, 1)))), float(np.degrees(np.arctan2(d[1], d[0])))


def render_distances(mesh, clouds: Mapping[str, tuple[np.ndarray, np.ndarray]], view: tuple[float, float] = (20.0, -60.0),
                     max_mm: float = 2.0, max_points: int = 40_000, max_faces: int = 6000, seed: int = 0):
    """Matplotlib render of reconstructions coloured by distance over the CT model, one panel each.

    The CT model is drawn decimated (open3d quadric decimation to
    ``max_faces``), Lambert-shaded in grey; the points are coloured by their
    distance to the model (0 .. ``max_mm``), at most ``max_points`` per panel.
    Points behind the model are hidden only approximately (matplotlib sorts
    collections, not fragments): choose ``view`` from the side the probe saw
    (:func:`view_angles` of the visible samples' mean normal).

    Parameters
    ----------
    mesh : ``trimesh.Trimesh`` (CT, mm).
    clouds : panel title -> ((N, 3) points in CT (mm), (N,) distances (mm)).
    view : (elevation, azimuth) in degrees.

    Returns
    -------
    matplotlib figure.
    """
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    verts, faces = decimate(mesh.vertices, mesh.faces, max_faces)
    tri = verts[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    elev, azim = view
    eye = np.array([np.cos(np.radians(elev)) * np.cos(np.radians(azim)),
                    np.cos(np.radians(elev)) * np.sin(np.radians(azim)), np.sin(np.radians(elev))])
    shade = 0.45 + 0.5 * np.clip(normals @ eye, 0, 1)
    lo, hi = verts.min(axis=0), verts.max(axis=0)
    rng = np.random.default_rng(seed)
    fig = plt.figure(figsize=(4.6 * max(1, len(clouds)), 4.8))
    sc = None
    for i, (title, (points, distances)) in enumerate(clouds.items()):
        ax = fig.add_subplot(1, max(1, len(clouds)), i + 1, projection="3d")
        ax.add_collection3d(Poly3DCollection(tri, facecolors=np.repeat(shade[:, None], 3, 1), edgecolor="none",
                                             alpha=0.25))
        points, distances = np.asarray(points).reshape(-1, 3), np.asarray(distances).ravel()
        pick = rng.choice(len(points), size=min(len(points), max_points), replace=False)
        # Draw the points in front last (towards the eye), far ones first.
        pick = pick[np.argsort(points[pick] @ eye)]
        sc = ax.scatter(points[pick, 0], points[pick, 1], points[pick, 2], c=np.clip(distances[pick], 0, max_mm),
                        cmap="viridis", vmin=0, vmax=max_mm, s=0.8, depthshade=False)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_zlim(lo[2], hi[2])
        ax.set_box_aspect(np.maximum(hi - lo, 1e-3), zoom=1.1)  # true proportions
        ax.view_init(elev=elev, azim=azim)
        ax.set_axis_off()
        ax.set_title(title, fontsize=10)
    if sc is not None:
        fig.colorbar(sc, ax=fig.axes, shrink=0.6, label="distance to CT bone surface (mm)")
    return fig


def _render_open3d_worker(vertices, faces, clouds, direction, size, max_mm, point_size):
    """Render in this (child) process with open3d's offscreen Filament renderer; returns RGB arrays."""
    import matplotlib
    import open3d as o3d
    import open3d.visualization.rendering as rendering

    width, height = size
    renderer = rendering.OffscreenRenderer(width, height)
    scene = renderer.scene
    scene.set_background([1.0, 1.0, 1.0, 1.0])
    scene.view.set_post_processing(False)  # no tone mapping: point colours are the colour map's
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(faces))
    mesh.compute_vertex_normals()
    mesh.paint_uniform_color([0.82, 0.82, 0.80])
    lit = rendering.MaterialRecord()
    lit.shader = "defaultLit"
    unlit = rendering.MaterialRecord()
    unlit.shader = "defaultUnlit"
    unlit.point_size = float(point_size)
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    centre, radius = (lo + hi) / 2.0, np.linalg.norm(hi - lo) / 2.0
    direction = np.asarray(direction, dtype=float) / max(np.linalg.norm(direction), 1e-12)
    up = np.array([0.0, 0.0, 1.0]) if abs(direction[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
    cmap = matplotlib.colormaps["viridis"]
    images = []
    for points, distances in clouds:
        scene.clear_geometry()
        scene.add_geometry("ct", mesh, lit)
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, dtype=float)))
        pcd.colors = o3d.utility.Vector3dVector(cmap(np.clip(np.asarray(distances) / max_mm, 0, 1))[:, :3])
        scene.add_geometry("cloud", pcd, unlit)
        renderer.setup_camera(30.0, centre, centre + direction * radius * 3.0, up)
        images.append(np.asarray(renderer.render_to_image()).copy())
    del renderer
    return images


def _render_child(conn, args) -> None:
    """Child-process entry point of :func:`render_open3d`: send ("ok", images) or ("error", message)."""
    try:
        conn.send(("ok", _render_open3d_worker(*args)))
    except Exception as exc:  # reported to the parent, which falls back to matplotlib
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def render_open3d(mesh, clouds: Mapping[str, tuple[np.ndarray, np.ndarray]], direction: np.ndarray,
                  size: tuple[int, int] = (800, 800), max_mm: float = 2.0, point_size: float = 3.0,
                  max_faces: int = 30_000, timeout_s: float = 60.0) -> dict[str, np.ndarray]:
    """Offscreen open3d (Filament, on the CPU) renders of reconstructions over the CT model.

    Runs in a fresh child process, killed after ``timeout_s``: Filament's
    engine can start only once per process, and a driver fault or a stall
    must not take the caller down. The model is decimated to about
    ``max_faces`` triangles (open3d quadric decimation). Points are
    coloured by distance (viridis, 0 .. ``max_mm``); the camera looks at the
    model's centre from ``direction`` (CT, e.g. the mean normal of the visible
    surface).

    Parameters
    ----------
    mesh : ``trimesh.Trimesh`` (CT, mm).
    clouds : title -> ((N, 3) points (mm), (N,) distances (mm)).
    direction : (3,) camera direction from the model's centre.
    size : (width, height) in pixels.

    Returns
    -------
    title -> (height, width, 3) uint8 image.

    Raises
    ------
    RuntimeError
        If the renderer cannot start or crashes (callers fall back to :func:`render_distances`).
    """
    import multiprocessing as mp

    vertices, faces = decimate(mesh.vertices, mesh.faces, max_faces)
    args = (vertices, faces, [(np.asarray(p), np.asarray(d)) for p, d in clouds.values()],
            np.asarray(direction, dtype=float), tuple(size), float(max_mm), float(point_size))
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_render_child, args=(send, args), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(timeout_s):
            raise RuntimeError(f"open3d offscreen rendering failed: no image within {timeout_s:.0f} s")
        status, payload = receive.recv()
    except EOFError:
        raise RuntimeError(f"open3d offscreen rendering failed: the renderer died (exit code {child.exitcode})") from None
    finally:
        child.join(timeout=5)
        if child.is_alive():
            child.kill()
            child.join()
        receive.close()
    if status != "ok":
        raise RuntimeError(f"open3d offscreen rendering failed: {payload}")
    images = payload
    if not images or any(np.asarray(im).std() == 0 for im in images):
        raise RuntimeError("open3d offscreen rendering gave blank images")
    return dict(zip(clouds, images))


def figure_from_renders(images: Mapping[str, np.ndarray], max_mm: float = 2.0):
    """A matplotlib figure of rendered images side by side, with the distance colour bar."""
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    crops = {}
    for title, im in images.items():  # crop to the drawn content (white background), with a margin
        rows, cols = np.nonzero((np.asarray(im) < 250).any(axis=2))
        if len(rows):
            m = 8
            im = im[max(rows.min() - m, 0): rows.max() + m + 1, max(cols.min() - m, 0): cols.max() + m + 1]
        crops[title] = im
    h = max(im.shape[0] for im in crops.values())
    w = sum(im.shape[1] for im in crops.values())
    fig, axes = plt.subplots(1, len(crops), figsize=(min(14.0, max(2.6 * len(crops) + 1.5, 1.0 + 6.0 * w / h)), 6.0),
                             squeeze=False)
    for ax, (title, im) in zip(axes[0], crops.items()):
        ax.imshow(im)
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    fig.colorbar(ScalarMappable(Normalize(0, max_mm), "viridis"), ax=list(axes[0]), shrink=0.7,
                 label="distance to CT bone surface (mm)")
    return fig


def render_figure(mesh, clouds: Mapping[str, tuple[np.ndarray, np.ndarray]], direction: np.ndarray,
                  max_mm: float = 2.0, backend: str = "open3d"):
    """Render reconstructions over the CT model: open3d offscreen, else matplotlib.

    Parameters
    ----------
    mesh, clouds, direction, max_mm : as in :func:`render_open3d`.
    backend : ``"open3d"`` (fall back to matplotlib if it fails) or ``"matplotlib"``.

    Returns
    -------
    fig : matplotlib figure.
    used : ``"open3d"``, or ``"matplotlib"`` with the reason open3d was not used.
    """
    if backend == "open3d":
        try:
            images = render_open3d(mesh, clouds, direction, max_mm=max_mm)
            return figure_from_renders(images, max_mm), "open3d"
        except RuntimeError as exc:
            reason = str(exc)
    else:
        reason = "matplotlib requested"
    fig = render_distances(mesh, clouds, view=view_angles(direction), max_mm=max_mm)
    return fig, f"matplotlib ({reason})"


# ----------------------------------------------------------------------------- the stage

#: Notebook stem of the stage.
STEM = "06_reconstruction"


def dataset_fingerprint(specimen: Specimen, calibration_file: Path | None = None) -> dict:
    """Content digests of what a specimen's reconstruction reads, for the cache key.

    The CT models, each record's tracking table with the optimised poses
    (:attr:`Record.poses_csv`, in the derived dataset), every label PNG of
    ``Labels/`` and ``Labels_pred/`` (names and bytes) and the calibration
    file: when an earlier stage changes any of them, the cached result is stale
    (:func:`ultrabones.core.cache.files_digest`; unchanged files are not re-read).
    """
    from ultrabones.core.cache import file_digest, files_digest

    out = {f"ct/{k}": file_digest(p) for k, p in sorted(specimen.ct_models.items())}
    for r in specimen.records:
        out[f"{r.key}/poses"] = file_digest(r.poses_csv)
        for kind in (LABELS, LABELS_PRED):
            folder = r.label_dir(kind)
            files = sorted(folder.glob("*.png")) if folder.is_dir() else []
            out[f"{r.key}/{kind}"] = files_digest(files, folder)
    if calibration_file is not None:
        out["calibration"] = file_digest(Path(calibration_file))
    return out


def _skipped(specimen: str, reason: str) -> dict:
    """The result of a specimen that could not be reconstructed."""
    return {"specimen": specimen, "skipped": reason, "rows": [], "groups": {}, "notes": [], "bad_frames": [],
            "n_label_points": 0, "n_queries": 0, "query_seconds": 0.0, "ply": {}}


def reconstruct_dataset(
    paths,
    params: Mapping,
    specimens: Sequence[str],
    only: str | None = None,
    specimen_overrides: Mapping | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[list[dict], list[str]]:
    """Run :func:`reconstruct_specimen` over a dataset, resumable through ``cache.SpecimenCache``.

    Parameters
    ----------
    paths : the run's :class:`~ultrabones.core.paths.Paths`.
    params : the ``reconstruction`` section.
    specimens : specimen folder names of the run.
    only : process only this specimen (always recomputed); the others are
        read from the cache, and those not there yet are returned as pending.
    specimen_overrides : per-specimen section overrides.
    seed : the run's seed (surface sampling).
    progress : progress bars.

    Returns
    -------
    results : one dict per specimen with a result (skipped ones included, with their reason: no
        labelled frame, or a :class:`DatasetError` such as a missing CT model or a broken tracking table).
    pending : specimens with no result yet (only when ``only`` is set).
    """
    from tqdm import tqdm

    from ultrabones.core.dataset import CALIBRATION, read_calibration, read_specimen
    from ultrabones.core.params import for_specimen
    from ultrabones.core.cache import SpecimenCache

    if only is not None and only not in specimens:
        raise DatasetError(f"specimen {only!r} is not one of the run's specimens {list(specimens)}")
    cache = SpecimenCache(paths, STEM)
    calib, spacing, _ = read_calibration(paths.dataset)
    results, pending = [], []
    for sid in tqdm(list(specimens), desc="reconstruction", disable=not progress):
        try:
            spec = read_specimen(paths.dataset / sid, paths.derived / sid)
        except DatasetError as exc:
            results.append(_skipped(sid, str(exc)))
            continue
        p = for_specimen(params, specimen_overrides or {}, sid)
        key = {"params": p, "seed": seed, "dataset": str(paths.dataset), "derived": str(paths.derived),
               "inputs": dataset_fingerprint(spec, paths.dataset / CALIBRATION)}
        cached = cache.get(sid, key) if sid != only else None
        if cached is not None:
            results.append(cached)
            continue
        if only is not None and sid != only:
            pending.append(sid)
            continue
        try:
            bones = read_record_bones(paths.raw / sid if paths.is_twin else None, spec)
            result = reconstruct_specimen(spec, p, calib, spacing, bones, out_dir=paths.cache(STEM) / "point_clouds",
                                          seed=seed, progress=progress)
        except DatasetError as exc:  # a broken input file: report, skip, do not cache
            result = _skipped(sid, str(exc))
        else:
            cache.put(sid, key, result)
        if result["skipped"]:
            warnings.warn(f"reconstruction: specimen {sid} skipped: {result['skipped']}", stacklevel=2)
        results.append(result)
    return results, pending
