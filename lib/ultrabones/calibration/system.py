"""System calibration (Section 3.1 of the paper): probe, temporal offset, CT-to-marker, poses.

Three calibrations turn raw acquisitions into the released ``tracking.csv``:

1. **Spatio-temporal probe calibration** with an N-wire phantom. Each phantom
   image shows where the image plane cuts the wires (:mod:`ultrabones.calibration.phantom`);
   :func:`detect_wire_points` finds them, :func:`middle_points_in_phantom` places
   the diagonal's cut in phantom coordinates by similar triangles, and
   :func:`sweep_offsets` solves, for every temporal offset ``dt`` of a grid, the
   image-to-probe transform by closed-form least squares (Kabsch) and keeps the
   ``dt`` of least 3D localisation error. The sweep is batched over offsets.
2. **CT-to-marker registration** (:func:`register_marker`): the fiducial
   spheres found in CT (:func:`ultrabones.calibration.ct.find_fiducial_spheres`) are
   matched to virtual spheres of the fiducials' radius placed at the marker's
   fiducials, then refined by point-to-point ICP (open3d).
3. **Poses** (:func:`record_poses`): for each image, the tracker streams are
   interpolated at ``t + dt`` and composed into the probe marker in CT space,
   ``ct_from_marker @ inv(marker_in_tracker) @ probe_in_tracker``.

Clocks follow docs/twin_format.md: the image with timestamp ``t`` (ms, image
clock) was formed when the tracker clock read ``t + dt``.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from scipy import ndimage

from ultrabones.core import dataset
from ultrabones.core.errors import DatasetError, ParamsError
from ultrabones.core.executor import executor
from ultrabones.core.params import SectionParams
from ultrabones.core.geometry import (
    POSE_COLUMNS,
    interpolate_poses,
    invert_transform,
    params_from_pose,
    pose_from_params,
    rigid_fit,
    transform_points,
)
from ultrabones.calibration.phantom import NWirePhantom

#: Columns of the phantom-marker pose in ``raw/phantom/tracker.csv``.
PHANTOM_COLUMNS = ("px", "py", "pz", "peuler_x", "peuler_y", "peuler_z")
#: Columns of the specimen-marker pose in ``raw/<specimen>/<record>/tracker.csv``.
SPECIMEN_COLUMNS = ("sx", "sy", "sz", "seuler_x", "seuler_y", "seuler_z")
#: The profile section of this stage.
SECTION = "calibration"


@dataclass(frozen=True)
class CalibrationParams(SectionParams):
    """The ``calibration`` section of a profile, typed and validated (units and ranges: ``params.SCHEMA["calibration"]``).

    Build it with :meth:`from_section`; a specimen's overrides give :meth:`for_specimen`. Construction, and so
    ``dataclasses.replace``, validates every value. :meth:`as_dict` gives the section back as plain data: what
    the cache keys hash and the metrics' provenance records.
    """

    SECTION: ClassVar[str] = SECTION

    wire_threshold: float
    wire_sigma_px: float
    wire_min_area_px: int
    wire_max_extent_mm: float
    wire_min_separation_mm: float
    wire_collinearity_mm: float
    offset_min_ms: float
    offset_max_ms: float
    offset_step_ms: float
    bone_threshold_hu: float
    fiducial_threshold_hu: float
    min_bone_volume_mm3: float
    smooth_iterations: int
    decimate_fraction: float
    icp_max_distance_mm: float
    surface_samples: int


# ----------------------------------------------------------------------------- raw input


def read_system(raw: Path) -> dict:
    """``raw/system.json``: image size (px), ``spacing_mm`` (sx, sy), fiducials, rates.

    Raises
    ------
    DatasetError
        If missing or lacking ``spacing_mm``.
    """
    f = Path(raw) / "system.json"
    if not f.is_file():
        raise DatasetError(f"{f}: system description not found (run notebook 00 for the twin)")
    try:
        data = json.loads(f.read_text())
        spacing = [float(v) for v in data["spacing_mm"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{f}: not a valid system file ({type(exc).__name__}: {exc})") from None
    if len(spacing) != 2 or min(spacing) <= 0:
        raise DatasetError(f"{f}: spacing_mm must be two positive numbers, got {data['spacing_mm']}")
    data["spacing_mm"] = spacing
    return data


def read_phantom(raw: Path) -> NWirePhantom:
    """``raw/phantom/phantom.json`` as a validated :class:`~ultrabones.calibration.phantom.NWirePhantom`."""
    f = Path(raw) / "phantom" / "phantom.json"
    if not f.is_file():
        raise DatasetError(f"{f}: phantom description not found")
    try:
        data = json.loads(f.read_text())
    except ValueError as exc:
        raise DatasetError(f"{f}: not valid JSON ({exc})") from None
    return NWirePhantom.from_dict(data, where=str(f))


def read_tracker(path: Path, streams: dict[str, tuple[str, ...]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A raw tracker stream: times (ms) and one (N, 4, 4) pose array per named stream.

    Parameters
    ----------
    path : ``tracker.csv`` with ``time_ms`` and the six columns of every stream.
    streams : stream name -> its six columns (``x..euler_z`` order).

    Raises
    ------
    DatasetError
        Naming the file and the column or row at fault (missing column, NaN,
        times not strictly increasing).
    """
    path = Path(path)
    need = ["time_ms"] + [c for cols in streams.values() for c in cols]
    df = dataset.read_csv(path, need, "tracker stream")
    vals = df[need].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(vals)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DatasetError(f"{path} row {row + 1}: {need[col]} is {df[need[col]].iloc[row]!r} (not a finite number)")
    t = vals[:, 0]
    if len(t) < 2 or np.any(np.diff(t) <= 0):
        row = int(np.flatnonzero(np.diff(t) <= 0)[0]) + 2 if len(t) >= 2 else 1
        raise DatasetError(f"{path} row {row}: time_ms must be strictly increasing with at least two rows")
    out = {name: pose_from_params(df[list(cols)].to_numpy(dtype=float)) for name, cols in streams.items()}
    return t, out


# ----------------------------------------------------------------------------- wire detection


def detect_blobs(image: np.ndarray, spacing: tuple[float, float], threshold: float, min_area_px: int,
                 sigma_px: float = 1.0, max_extent_mm: float = np.inf,
                 min_separation_mm: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Bright compact spots of an image, strongest first, in image-plane millimetres.

    The smoothed image is thresholded; connected regions wider or taller than
    ``max_extent_mm`` (the phantom's floor) are dropped; the others are split
    between their local maxima (at least ``min_separation_mm`` apart) by a
    watershed, so that two echoes that touch are still two spots.

    Parameters
    ----------
    image : (H, W) array, grey levels (0..255).
    spacing : (sx, sy), mm per pixel.
    threshold : grey level (after Gaussian smoothing) above which a pixel belongs to a spot.
    min_area_px : smaller spots are ignored (speckle).
    sigma_px : Gaussian smoothing before thresholding (px); 0 for none.
    max_extent_mm : regions wider or taller than this (mm) are not wire echoes.
    min_separation_mm : least distance between two spots' peaks (mm).

    Returns
    -------
    centres : (B, 2) array, ``(x, y)`` = ``((u + 0.5) sx, (v + 0.5) sy)`` (mm) of each spot,
        its centre weighted by the smoothed grey level above ``threshold``.
    strength : (B,) the spots' summed grey level above ``threshold``, decreasing.
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    img = np.asarray(image, dtype=float)
    smooth = ndimage.gaussian_filter(img, sigma_px) if sigma_px > 0 else img
    mask = smooth > threshold
    regions, n = ndimage.label(mask)
    empty = (np.zeros((0, 2)), np.zeros(0))
    if n == 0:
        return empty
    sx, sy = spacing
    extent = np.array([[(s[1].stop - s[1].start) * sx, (s[0].stop - s[0].start) * sy]
                       for s in ndimage.find_objects(regions)])
    ok = np.concatenate([[False], extent.max(axis=1) <= max_extent_mm])
    mask &= ok[regions]
    sep_px = max(1, int(round(min_separation_mm / min(sx, sy))))
    peaks = peak_local_max(smooth, min_distance=sep_px, threshold_abs=threshold, labels=mask.astype(np.int32),
                           exclude_border=False)
    if len(peaks) == 0:
        return empty
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    spots = watershed(-smooth, markers, mask=mask)
    idx = np.arange(1, len(peaks) + 1)
    area = np.bincount(spots.ravel(), minlength=len(peaks) + 1)[1:]
    keep = idx[area >= min_area_px]
    if len(keep) == 0:
        return empty
    weight = np.where(mask, smooth - threshold, 0.0)
    strength = np.asarray(ndimage.sum_labels(weight, spots, keep))
    centres = np.array(ndimage.center_of_mass(weight, spots, keep)).reshape(-1, 2)  # (row, col)
    order = np.argsort(-strength)
    xy = np.stack([(centres[:, 1] + 0.5) * sx, (centres[:, 0] + 0.5) * sy], axis=1)
    return xy[order], strength[order]


def phantom_image_order(phantom: NWirePhantom) -> tuple[list[list[int]], bool]:
    """How the N's appear in an image held in the phantom's nominal orientation.

    The N's are grouped in *layers* (equal mean ``Y``, i.e. equal depth) ordered
    by depth, and within a layer ordered by ``X`` (lateral); the image's ``x``
    and ``y`` run along the phantom's ``X`` and ``Y``
    (:func:`ultrabones.calibration.phantom.nominal_phantom_from_image`).

    Returns
    -------
    layers : N indices of each layer, shallow to deep, each ordered by ``X``.
    wire0_first : True when wire 0 of an N lies at smaller ``X`` than wire 2.
    """
    centre = phantom.wires.mean(axis=(1, 2))  # (n, 3)
    ys = np.round(centre[:, 1], 3)
    layers = []
    for y in np.unique(ys):
        members = np.flatnonzero(ys == y)
        layers.append([int(m) for m in members[np.argsort(centre[members, 0])]])
    w0 = phantom.wires[:, 0].mean(axis=1)[:, 0]
    w2 = phantom.wires[:, 2].mean(axis=1)[:, 0]
    if not (np.all(w0 < w2) or np.all(w0 > w2)):
        raise DatasetError("phantom: wire 0 must lie on the same lateral side of wire 2 in every N")
    return layers, bool(np.all(w0 < w2))


def group_wire_points(blobs: np.ndarray, phantom: NWirePhantom, collinearity_mm: float,
                      flip_x: bool = False) -> tuple[np.ndarray | None, str]:
    """Assign detected spots to the phantom's wires.

    The spots are split into the phantom's layers at the largest gaps in depth,
    each layer ordered laterally and cut into consecutive triples (one per N).
    ``flip_x`` says that the image's ``x`` runs along the phantom's ``-X``
    (the probe turned by 180 degrees about its axis); :func:`calibrate_probe`
    tries both and keeps the one of least localisation error.

    Parameters
    ----------
    blobs : (B, 2) array, spot centres (image-plane mm), strongest first; the
        ``3 n_N`` strongest are taken as the wires (speckle spots are weaker).
    phantom : the phantom.
    collinearity_mm : a triple is rejected when its middle spot lies farther
        than this (mm) from the line through the outer two.

    Returns
    -------
    points : (n_N, 3, 2) array (wire 0, diagonal, wire 2 of each N, mm) or None.
    reason : ``""`` when found, else why the frame is rejected.
    """
    layers, wire0_first = phantom_image_order(phantom)
    n_expected = 3 * phantom.n_n
    if len(blobs) < n_expected:
        return None, f"found {len(blobs)} spots, expected {n_expected}"
    b = blobs[:n_expected]
    b = b[np.argsort(b[:, 1])]
    sizes = [3 * len(layer) for layer in layers]
    if len(layers) > 1:
        gaps = np.diff(b[:, 1])
        cuts = np.sort(np.argsort(gaps)[-(len(layers) - 1):]) + 1
        groups = np.split(b, cuts)
    else:
        groups = [b]
    if [len(g) for g in groups] != sizes:
        return None, f"spots per depth {[len(g) for g in groups]}, expected {sizes}"
    out = np.full((phantom.n_n, 3, 2), np.nan)
    for layer, g in zip(layers, groups):
        g = g[np.argsort(-g[:, 0] if flip_x else g[:, 0])]
        for k, n in enumerate(layer):
            tri = g[3 * k: 3 * k + 3]
            if not wire0_first:
                tri = tri[::-1]
            out[n] = tri
    a, m, c = out[:, 0], out[:, 1], out[:, 2]
    ac = c - a
    dist = np.abs(ac[:, 0] * (m - a)[:, 1] - ac[:, 1] * (m - a)[:, 0]) / np.linalg.norm(ac, axis=1)
    if np.any(dist > collinearity_mm):
        n = int(np.argmax(dist))
        return None, f"N {n}: middle spot {dist[n]:.2f} mm off the line of its outer spots"
    return out, ""


def detect_wire_points(image: np.ndarray, spacing: tuple[float, float], phantom: NWirePhantom,
                       threshold: float, min_area_px: int, sigma_px: float, collinearity_mm: float,
                       max_extent_mm: float = np.inf, min_separation_mm: float = 0.8,
                       flip_x: bool = False) -> tuple[np.ndarray | None, str]:
    """Wire points of one phantom image, or None and the reason for rejecting it.

    See :func:`detect_blobs` and :func:`group_wire_points` for the parameters.
    """
    blobs, _ = detect_blobs(image, spacing, threshold, min_area_px, sigma_px, max_extent_mm, min_separation_mm)
    return group_wire_points(blobs, phantom, collinearity_mm, flip_x)


def middle_points_in_phantom(phantom: NWirePhantom, points: np.ndarray) -> np.ndarray:
    """The diagonal's cut in phantom coordinates, by similar triangles.

    With ``a, b, c`` the image points of wire 0, the diagonal and wire 2 of an
    N, the plane cuts the diagonal ``p0 -> p1`` at the fraction
    ``r = (b - a).(c - a) / |c - a|^2`` of its length (``b`` projected onto
    ``ac``, which is exact for noise-free points and least squares otherwise).

    Parameters
    ----------
    phantom : the phantom.
    points : (..., n_N, 3, 2) array, image-plane points (mm).

    Returns
    -------
    (..., n_N, 3) array, phantom-marker frame (mm).
    """
    points = np.asarray(points, dtype=float)
    a, b, c = points[..., 0, :], points[..., 1, :], points[..., 2, :]
    ac = c - a
    r = np.einsum("...i,...i->...", b - a, ac) / np.einsum("...i,...i->...", ac, ac)
    p0, p1 = phantom.wires[:, 1, 0], phantom.wires[:, 1, 1]
    return p0 + r[..., None] * (p1 - p0)


@dataclass
class SweepResult:
    """The spatio-temporal sweep.

    Attributes
    ----------
    offsets_ms : (K,) the offsets tried (ms).
    errors_mm : (K,) mean 3D localisation error of the least-squares calibration at each offset (mm).
    best : index of the least error.
    calibration : (4, 4) image plane -> probe marker at the best offset (mm).
    n_points : correspondences used.
    """

    offsets_ms: np.ndarray
    errors_mm: np.ndarray
    best: int
    calibration: np.ndarray
    n_points: int

    @property
    def offset_ms(self) -> float:
        return float(self.offsets_ms[self.best])

    @property
    def error_mm(self) -> float:
        return float(self.errors_mm[self.best])


def sweep_offsets(image_times: np.ndarray, image_points: np.ndarray, phantom_points: np.ndarray,
                  tracker_times: np.ndarray, probe_in_tracker: np.ndarray, phantom_in_tracker: np.ndarray,
                  offsets_ms: np.ndarray, chunk: int = 250, progress: bool = False) -> SweepResult:
    """Solve the image-to-probe transform at every temporal offset; keep the least error.

    For offset ``dt`` the tracker streams are interpolated at ``t_f + dt``
    (linear translation, slerp rotation), every middle point is mapped into
    the probe-marker frame, ``q = inv(probe) @ phantom @ p``, and the rigid
    ``calib`` minimising ``sum |calib x - q|^2`` over the image-plane points
    ``x = (x, y, 0)`` is found in closed form. The localisation error is the
    mean of ``|calib x - q|`` (mm). Offsets are processed ``chunk`` at a time,
    each chunk as one batch of array operations.

    Parameters
    ----------
    image_times : (F,) image timestamps (ms, image clock).
    image_points : (F, n, 2) image-plane points of the diagonal cuts (mm).
    phantom_points : (F, n, 3) the same points in the phantom-marker frame (mm).
    tracker_times : (T,) tracker sample times (ms), strictly increasing.
    probe_in_tracker, phantom_in_tracker : (T, 4, 4) marker poses (mm).
    offsets_ms : (K,) offsets to try (ms); every ``t_f + dt`` must lie in the tracked range.

    Returns
    -------
    SweepResult
    """
    offsets_ms = np.asarray(offsets_ms, dtype=float)
    t = np.asarray(image_times, dtype=float)
    F, n = image_points.shape[:2]
    x = np.concatenate([image_points.reshape(F * n, 2), np.zeros((F * n, 1))], axis=1)
    pt = np.swapaxes(np.asarray(phantom_points, dtype=float), -1, -2)  # (F, 3, n)
    errors = np.empty(len(offsets_ms))
    calibs = np.empty((len(offsets_ms), 4, 4))
    starts = range(0, len(offsets_ms), chunk)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="offset sweep", unit="chunk")
    for s in starts:
        dts = offsets_ms[s: s + chunk]
        q_t = (t[None, :] + dts[:, None]).ravel()  # (k F,)
        probe = interpolate_poses(tracker_times, probe_in_tracker, q_t)
        phan = interpolate_poses(tracker_times, phantom_in_tracker, q_t)
        rel = (invert_transform(probe) @ phan).reshape(len(dts), F, 4, 4)
        # (k, F, 3, 3) @ (F, 3, n) -> (k, F, 3, n): matmul, far faster than einsum here.
        q = np.swapaxes(rel[..., :3, :3] @ pt, -1, -2) + rel[:, :, None, :3, 3]
        q = q.reshape(len(dts), F * n, 3)
        cal = rigid_fit(x, q)
        res = x @ np.swapaxes(cal[:, :3, :3], -1, -2) + cal[:, None, :3, 3] - q
        errors[s: s + len(dts)] = np.linalg.norm(res, axis=-1).mean(axis=-1)
        calibs[s: s + len(dts)] = cal
    best = int(np.argmin(errors))
    return SweepResult(offsets_ms, errors, best, calibs[best], F * n)


def offset_grid(lo_ms: float, hi_ms: float, step_ms: float) -> np.ndarray:
    """Offsets ``lo, lo + step, ...`` below ``hi`` (ms), computed from integer steps (no drift).

    Raises
    ------
    ParamsError
        If the range is empty or the step not positive.
    """
    if not (step_ms > 0 and hi_ms > lo_ms):
        raise ParamsError(f"calibration.offset_min_ms/offset_max_ms/offset_step_ms: [{lo_ms}, {hi_ms}) ms "
                          f"in steps of {step_ms} ms is empty")
    n = int(round((hi_ms - lo_ms) / step_ms))
    return lo_ms + step_ms * np.arange(n)


@dataclass
class ProbeCalibration:
    """Result of :func:`calibrate_probe`.

    Attributes
    ----------
    sweep : the offset sweep.
    spacing : (sx, sy) mm per pixel.
    frames : per phantom image: ``timestamp`` and ``status`` (``ok``, the
        rejection reason, or ``out of tracked range``).
    example : (timestamp, (n_N, 3, 2) points) of one accepted frame, for figures.
    image_size_mm : (width, height) of the image (mm).
    image_points : (F, n_N, 3, 2) wire points of the accepted frames (mm).
    """

    sweep: SweepResult
    spacing: tuple[float, float]
    frames: pd.DataFrame
    example: tuple[int, np.ndarray] | None = None
    image_size_mm: tuple[float, float] | None = None
    image_points: np.ndarray = field(default=None, repr=False)

    @property
    def calibration(self) -> np.ndarray:
        return self.sweep.calibration

    @property
    def offset_ms(self) -> float:
        return self.sweep.offset_ms

    @property
    def rejected(self) -> int:
        """Phantom frames whose wires could not be found."""
        return int((~self.frames["status"].isin(["ok", "out of tracked range"])).sum())


def calibrate_probe(raw: Path, P: CalibrationParams, progress: bool = False) -> ProbeCalibration:
    """Spatio-temporal calibration from ``raw/phantom/`` (see the module docstring).

    Spots are detected once per frame. The phantom's lateral orientation in
    the image (see :func:`group_wire_points`) is chosen by a coarse sweep
    (ten times the step) under each hypothesis; the full sweep then runs on the
    frames accepted under the chosen one.

    Parameters
    ----------
    raw : the raw acquisitions folder.
    P : the stage's parameters (its ``wire_*`` and ``offset_*`` fields are used).

    Raises
    ------
    DatasetError
        If fewer than three phantom frames survive detection.
    """
    raw = Path(raw)
    system = read_system(raw)
    spacing = tuple(system["spacing_mm"])
    phantom = read_phantom(raw)
    times, streams = read_tracker(raw / "phantom" / "tracker.csv", {"probe": POSE_COLUMNS, "phantom": PHANTOM_COLUMNS})
    img_dir = raw / "phantom" / "images"
    ts = dataset.image_timestamps(img_dir)
    offsets = offset_grid(P.offset_min_ms, P.offset_max_ms, P.offset_step_ms)
    in_range = (ts + offsets[0] >= times[0]) & (ts + offsets[-1] <= times[-1])
    it = ts[in_range]
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="phantom frames", unit="frame")
    blobs = {int(t): detect_blobs(dataset.read_image(img_dir / f"{int(t)}.png"), spacing, P.wire_threshold,
                                  P.wire_min_area_px, P.wire_sigma_px, P.wire_max_extent_mm,
                                  P.wire_min_separation_mm)[0]
             for t in it}

    def group(flip_x):
        status, pts, used = {}, [], []
        for t, b in blobs.items():
            found, reason = group_wire_points(b, phantom, P.wire_collinearity_mm, flip_x)
            status[t] = "ok" if found is not None else reason
            if found is not None:
                pts.append(found)
                used.append(t)
        return status, np.array(pts), np.array(used, float)

    def solve(pts, used, grid):
        return sweep_offsets(used, pts[:, :, 1], middle_points_in_phantom(phantom, pts), times, streams["probe"],
                             streams["phantom"], grid, progress=progress and len(grid) > 500)

    coarse = offsets[::10]
    best = None
    for flip_x in (False, True):
        status, pts, used = group(flip_x)
        if len(used) < 3:
            continue
        err = solve(pts, used, coarse).error_mm
        if best is None or err < best[0]:
            best = (err, status, pts, used)
    if best is None:
        status, _, _ = group(False)
        counts = pd.Series(list(status.values()) or ["out of tracked range"]).value_counts().to_dict()
        raise DatasetError(f"{img_dir}: fewer than 3 of {len(ts)} phantom frames usable; statuses: {counts}")
    _, status, pts, used = best
    frames = pd.DataFrame({"timestamp": ts.astype(np.int64),
                           "status": [status.get(int(t), "out of tracked range") for t in ts]})
    sweep = solve(pts, used, offsets)
    size = None
    if "image_width" in system and "image_height" in system:
        size = (system["image_width"] * spacing[0], system["image_height"] * spacing[1])
    else:  # from the first image
        h, w = dataset.read_image(img_dir / f"{int(used[0])}.png").shape
        size = (w * spacing[0], h * spacing[1])
    return ProbeCalibration(sweep, spacing, frames, (int(used[0]), pts[0]), size, pts)


# ----------------------------------------------------------------------------- CT-to-marker


@dataclass
class MarkerRegistration:
    """The specimen marker's pose in CT.

    Attributes
    ----------
    ct_from_marker : (4, 4) marker frame -> CT (mm).
    fre_mm : mean distance of the registered fiducial centres from the detected ones (mm).
    matched : (F, 3) detected sphere centre matched to each marker fiducial (CT, mm).
    icp_rmse_mm : RMS of the ICP's inlier correspondences (mm).
    """

    ct_from_marker: np.ndarray
    fre_mm: float
    matched: np.ndarray
    icp_rmse_mm: float


def sphere_points(centres: np.ndarray, radius_mm: float, n_per_sphere: int = 2000) -> np.ndarray:
    """Points spread evenly over spheres (Fibonacci lattice): (S * n, 3), mm."""
    i = np.arange(n_per_sphere) + 0.5
    phi = np.arccos(1 - 2 * i / n_per_sphere)
    theta = np.pi * (1 + 5**0.5) * i
    unit = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)
    return (np.asarray(centres, float)[:, None, :] + radius_mm * unit[None]).reshape(-1, 3)


def match_fiducials(marker_fiducials: np.ndarray, detected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which detected sphere is which fiducial: the assignment of least rigid-fit residual.

    Tries every ordered choice of ``F`` of the ``S >= F`` detected centres
    (fiducial layouts are asymmetric, so the distance pattern fixes it).

    Returns
    -------
    ct_from_marker : (4, 4) least-squares fit on the best assignment.
    matched : (F, 3) the detected centre of each fiducial.
    """
    f = np.asarray(marker_fiducials, float)
    d = np.asarray(detected, float)
    if len(d) < len(f):
        raise DatasetError(f"CT: found {len(d)} fiducial spheres, the marker has {len(f)}")
    perms = np.array(list(itertools.permutations(range(len(d)), len(f))))
    cand = d[perms]  # (P, F, 3)
    T = rigid_fit(f, cand)
    res = np.linalg.norm(np.einsum("pij,fj->pfi", T[:, :3, :3], f) + T[:, None, :3, 3] - cand, axis=-1).mean(-1)
    b = int(np.argmin(res))
    return T[b], cand[b]


def register_marker(marker_fiducials: np.ndarray, radius_mm: float, detected_centres: np.ndarray,
                    sphere_surface_points: np.ndarray, icp_max_distance_mm: float) -> MarkerRegistration:
    """CT-to-marker registration: virtual spheres matched to the CT spheres, refined by ICP.

    Parameters
    ----------
    marker_fiducials : (F, 3) fiducial centres in the marker frame (mm).
    radius_mm : fiducial sphere radius (mm).
    detected_centres : (S, 3) sphere centres fitted in CT (mm), ``S >= F``.
    sphere_surface_points : (N, 3) surface points of the CT spheres (mm).
    icp_max_distance_mm : ICP correspondence distance (mm).
    """
    import open3d as o3d

    init, matched = match_fiducials(marker_fiducials, detected_centres)
    src = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(sphere_points(marker_fiducials, radius_mm)))
    dst = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(sphere_surface_points, float)))
    reg = o3d.pipelines.registration.registration_icp(
        src, dst, icp_max_distance_mm, init,
        o3d.pipelines.registration.TransformationEstimationPointToPoint(),
        o3d.pipelines.registration.ICPConvergenceCriteria(relative_fitness=1e-9, relative_rmse=1e-9, max_iteration=100),
    )
    T = np.asarray(reg.transformation).copy()
    fre = float(np.linalg.norm(transform_points(T, marker_fiducials) - matched, axis=1).mean())
    return MarkerRegistration(T, fre, matched, float(reg.inlier_rmse))


def target_registration_error(ct_from_marker: np.ndarray, true_ct_from_marker: np.ndarray,
                              targets: np.ndarray) -> float:
    """Mean displacement (mm) of CT target points (e.g. bone surface) between two registrations."""
    moved = transform_points(ct_from_marker @ invert_transform(true_ct_from_marker), targets)
    return float(np.linalg.norm(moved - np.asarray(targets, float), axis=1).mean())


# ----------------------------------------------------------------------------- poses


def record_poses(tracker_csv: Path, image_ts: np.ndarray, offset_ms: float, ct_from_marker: np.ndarray) -> pd.DataFrame:
    """Probe-marker poses in CT at each image, for one record (layout A ``tracking.csv`` rows).

    ``pose(t) = ct_from_marker @ inv(marker_in_tracker(t + dt)) @ probe_in_tracker(t + dt)``,
    the tracker interpolated (linear translation, slerp rotation) at ``t + dt``.
    Images whose ``t + dt`` falls outside the tracked range get no row.

    Returns
    -------
    DataFrame: ``timestamp`` (int ms, image clock) and ``x..euler_z`` (mm, degrees).
    """
    times, streams = read_tracker(tracker_csv, {"probe": POSE_COLUMNS, "marker": SPECIMEN_COLUMNS})
    ts = np.asarray(image_ts, dtype=np.int64)
    q = ts + offset_ms
    ok = (q >= times[0]) & (q <= times[-1])
    if not ok.any():
        raise DatasetError(f"{tracker_csv}: no image time + offset lies in the tracked range")
    probe = interpolate_poses(times, streams["probe"], q[ok])
    marker = interpolate_poses(times, streams["marker"], q[ok])
    pose = ct_from_marker @ invert_transform(marker) @ probe
    df = pd.DataFrame(params_from_pose(pose), columns=list(POSE_COLUMNS))
    df.insert(0, "timestamp", ts[ok])
    return df


def link_images(src_dir: Path, dst_dir: Path, timestamps: np.ndarray) -> int:
    """Hard-link (or copy, across file systems) ``<t>.png`` images into ``dst_dir``; returns the count."""
    dst_dir = Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    for t in np.asarray(timestamps, dtype=np.int64):
        src, dst = Path(src_dir) / f"{t}.png", dst_dir / f"{t}.png"
        if dst.exists():
            if os.path.samefile(src, dst):
                continue
            dst.unlink()
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    return len(timestamps)


# ----------------------------------------------------------------------------- one specimen


def read_marker(raw_specimen: Path) -> tuple[np.ndarray, float]:
    """``raw/<specimen>/marker.json``: fiducials (F, 3) in the marker frame (mm) and their radius (mm)."""
    f = Path(raw_specimen) / "marker.json"
    if not f.is_file():
        raise DatasetError(f"{f}: specimen marker description not found")
    try:
        data = json.loads(f.read_text())
        fid = np.asarray(data.get("fiducials_mm", data.get("fiducials")), dtype=float)
        radius = float(data.get("fiducial_radius_mm", data.get("radius_mm")))
    except (ValueError, TypeError) as exc:
        raise DatasetError(f"{f}: not a valid marker file ({type(exc).__name__}: {exc})") from None
    if fid.ndim != 2 or fid.shape[1] != 3 or len(fid) < 3 or not radius > 0:
        raise DatasetError(f"{f}: need fiducials_mm as (F >= 3, 3) and a positive fiducial_radius_mm")
    return fid, radius


def raw_records(raw_specimen: Path) -> list[Path]:
    """Record folders of a raw specimen (those holding ``tracker.csv``), sorted."""
    return sorted(d for d in Path(raw_specimen).iterdir() if d.is_dir() and (d / "tracker.csv").is_file())


def build_bone_model(ct_volume, P: CalibrationParams, exclude: np.ndarray | None, where: str) -> dict:
    """Per-bone meshes from the CT (see :mod:`ultrabones.calibration.ct`): ``{"tibia": mesh, ..., "merged": mesh}``.

    Components are named by :func:`ultrabones.calibration.ct.name_bones`; several ``foot``
    components are merged into one foot model.
    """
    import trimesh

    from ultrabones.calibration import ct

    labels, n = ct.segment_bones(ct_volume, P.bone_threshold_hu, P.min_bone_volume_mm3, exclude, where)
    boxes = ndimage.find_objects(labels)
    meshes = [ct.component_mesh(ct_volume, labels, i, P.bone_threshold_hu, P.smooth_iterations,
                                P.decimate_fraction, boxes[i - 1]) for i in range(1, n + 1)]
    names = ct.name_bones(meshes)
    out = {}
    for name in dict.fromkeys(names):
        parts = [m for m, nm in zip(meshes, names) if nm == name]
        out[name] = parts[0] if len(parts) == 1 else trimesh.util.concatenate(parts)
    out["merged"] = trimesh.util.concatenate(meshes) if len(meshes) > 1 else meshes[0]
    return out


def process_specimen(raw: Path, dataset_root: Path, specimen: str, offset_ms: float, P: CalibrationParams,
                     progress: bool = False) -> dict:
    """CT bone model, CT-to-marker registration and ``tracking.csv`` of every record of one specimen.

    Writes ``<dataset_root>/<specimen>/CT_bone_model.stl``, ``CT_bone_model_<bone>.stl`` and, per
    record, ``tracking.csv`` (layout A) with its images linked into ``UltrasoundImages/``.

    Parameters
    ----------
    raw : the raw acquisitions folder.
    dataset_root : the released-layout dataset folder.
    specimen : specimen folder name.
    offset_ms : the temporal offset found by :func:`calibrate_probe` (ms).
    P : the stage's parameters for this specimen (:meth:`CalibrationParams.for_specimen`).

    Returns
    -------
    dict (JSON-able): registration (``ct_from_marker``, ``fre_mm``, ``icp_rmse_mm``,
    ``n_spheres``), the bone models written, per record the frames written and dropped.
    """
    from ultrabones.calibration import ct

    raw_s = Path(raw) / specimen
    out_s = Path(dataset_root) / specimen
    fid, radius = read_marker(raw_s)
    vol = ct.read_ct(raw_s / "ct.npz")
    spheres = ct.find_fiducial_spheres(vol, radius, P.fiducial_threshold_hu)
    if len(spheres.centres) < len(fid):
        raise DatasetError(
            f"{raw_s / 'ct.npz'}: found {len(spheres.centres)} fiducial spheres of radius {radius} mm above "
            f"{P.fiducial_threshold_hu} HU; the marker has {len(fid)}"
        )
    reg = register_marker(fid, radius, spheres.centres, spheres.surface, P.icp_max_distance_mm)
    models = build_bone_model(vol, P, spheres.mask, str(raw_s / "ct.npz"))
    written = {}
    for name, mesh in models.items():
        f = out_s / ("CT_bone_model.stl" if name == "merged" else f"CT_bone_model_{name}.stl")
        dataset.write_mesh(f, mesh)
        written[name] = {"file": f.name, "faces": int(len(mesh.faces)), "volume_mm3": float(mesh.volume)}
    records = {}
    recs = raw_records(raw_s)
    if progress:
        from tqdm import tqdm

        recs = tqdm(recs, desc=f"{specimen} records", unit="record", leave=False)
    for rec in recs:
        ts = dataset.image_timestamps(rec / "images")
        df = record_poses(rec / "tracker.csv", ts, offset_ms, reg.ct_from_marker)
        dst = out_s / rec.name
        dataset.write_tracking(dst / dataset.TRACKING, df)
        link_images(rec / "images", dst / dataset.IMAGES, df["timestamp"].to_numpy())
        records[rec.name] = {"frames": int(len(df)), "dropped": int(len(ts) - len(df))}
    return {
        "ct_from_marker": reg.ct_from_marker.tolist(),
        "fre_mm": reg.fre_mm,
        "icp_rmse_mm": reg.icp_rmse_mm,
        "n_spheres": int(len(spheres.centres)),
        "sphere_radius_mm": spheres.radii.tolist(),
        "ct_spacing_mm": vol.spacing_mm.tolist(),
        "models": written,
        "records": records,
    }


def read_matrix_json(path: Path, key: str) -> np.ndarray:
    """A 4x4 matrix stored as JSON: the nested list itself, or under ``key`` (or ``matrix``) of an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            data = data.get(key, data.get("matrix"))
        m = np.asarray(data, dtype=float)
    except (OSError, ValueError, TypeError) as exc:
        raise DatasetError(f"{path}: not readable as a 4x4 matrix ({exc})") from None
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise DatasetError(f"{path}: expected a finite 4x4 matrix, got shape {m.shape}")
    return m


# ----------------------------------------------------------------------------- the stage


def raw_specimens(raw: Path, specimens: list[str] | None = None) -> list[str]:
    """Specimens of the raw acquisitions (folders holding ``ct.npz``), or the named ones (checked)."""
    raw = Path(raw)
    found = sorted(d.name for d in raw.iterdir() if d.is_dir() and (d / "ct.npz").is_file()) if raw.is_dir() else []
    if specimens is not None:
        missing = [s for s in specimens if s not in found]
        if missing:
            raise DatasetError(f"{raw}: no raw recordings (ct.npz) for specimen(s) {', '.join(missing)}")
        return list(specimens)
    if not found:
        raise DatasetError(f"{raw}: no raw specimen folders (with ct.npz); run notebook 00 first")
    return found


@dataclass(frozen=True)
class CalibrationResult:
    """What :func:`run_stage` computed.

    Attributes
    ----------
    probe : the spatio-temporal probe calibration (:func:`calibrate_probe`).
    specimens : specimen name -> its result (:func:`process_specimen`'s dict, with ``seconds``), every
        specimen of the run in the cache.
    probe_seconds : wall time of the probe calibration (s).
    """

    probe: ProbeCalibration
    specimens: dict
    probe_seconds: float


def _specimen_job(args: tuple) -> tuple[str, dict]:
    """One specimen's work (a top-level function, so that worker processes can run it)."""
    import time

    raw, dataset_root, sid, offset_ms, Ps = args
    t1 = time.time()
    res = process_specimen(raw, dataset_root, sid, offset_ms, Ps)
    res["seconds"] = time.time() - t1
    return sid, res


def run_stage(paths, P: CalibrationParams, specimens: list[str] | None = None, only: str | None = None,
              specimen_overrides: dict | None = None, progress: bool = True, n_workers: int = 1,
              dask_scheduler: str | None = None) -> CalibrationResult:
    """Notebook 01's work on the twin: probe calibration, then each specimen (resumable).

    Writes ``calibration.json`` at the dataset root and, per specimen, the bone
    models and ``tracking.csv`` files (:func:`process_specimen`). A specimen is
    skipped when the :class:`~ultrabones.core.cache.SpecimenCache` holds its result
    for the same parameters, calibration, sources and raw input files (their
    content digests) and its outputs exist.
    Nothing here reads the twin's truth: :func:`ultrabones.twin.measure.calibration` measures these
    products against it afterwards.

    Parameters
    ----------
    paths : :class:`~ultrabones.core.paths.Paths` of the run.
    P : the stage's parameters (:meth:`CalibrationParams.from_section`).
    specimens : restrict to these (default: every raw specimen).
    only : process only this specimen (``make specimen``); the result still covers the cache.
    specimen_overrides : per-specimen section overrides (:meth:`CalibrationParams.for_specimen`).
    n_workers : specimens processed in parallel (local processes).
    dask_scheduler : address of a Dask scheduler to run the specimens on instead.
    """
    import time

    from ultrabones.core.cache import DigestStore, SpecimenCache

    t0 = time.time()
    probe = calibrate_probe(paths.raw, P, progress)
    t_probe = time.time() - t0
    dataset.write_calibration(
        paths.dataset, probe.calibration, probe.spacing, probe.offset_ms,
        localization_error_mm=probe.sweep.error_mm, phantom_frames_used=int((probe.frames["status"] == "ok").sum()),
        phantom_frames_rejected=probe.rejected, source="notebook 01_calibration (Z-phantom, spatio-temporal sweep)",
    )
    names = raw_specimens(paths.raw, specimens)
    todo = [only] if only else names
    if only and only not in names:
        raise DatasetError(f"{paths.raw}: specimen {only!r} is not among the raw specimens {names}")
    cache = SpecimenCache(paths, "01_calibration")
    digests = DigestStore(paths.cache("digests") / "01_calibration.json")
    keys, jobs, inputs = {}, [], {}
    for sid in todo:
        Ps = P.for_specimen(specimen_overrides, sid)
        keys[sid] = {**Ps.as_dict(), "offset_ms": probe.offset_ms,
                     "calibration": np.round(probe.calibration, 9).tolist()}
        inputs[sid] = [f for f in sorted((paths.raw / sid).rglob("*")) if f.is_file()]
        if (cache.get(sid, keys[sid], inputs[sid], paths.raw) is not None
                and (paths.dataset / sid / "CT_bone_model.stl").is_file()):
            continue
        jobs.append((paths.raw, paths.dataset, sid, probe.offset_ms, Ps))
    with executor("auto", dask_scheduler, n_workers, progress) as ex:
        ex.map(_specimen_job, jobs, desc="specimens", unit="specimen",
               on_result=lambda _, out: cache.put(out[0], keys[out[0]], out[1], inputs[out[0]], paths.raw))
    digests.save()
    results = {k: v for k, v in cache.all().items() if k in names}
    return CalibrationResult(probe, results, t_probe)


def metrics(result: CalibrationResult) -> dict:
    """The ``01_calibration`` metrics (keys of issue 4), from the stage's result; nothing here reads truth."""
    probe, results = result.probe, result.specimens
    frames = probe.frames["status"]
    return {
        "skipped": False,
        "temporal_offset_ms": probe.offset_ms,
        "localization_error_mm": probe.sweep.error_mm,
        "phantom_frames_total": int(len(frames)),
        "phantom_frames_used": int((frames == "ok").sum()),
        "phantom_frames_rejected": probe.rejected,
        "phantom_frames_out_of_range": int((frames == "out of tracked range").sum()),
        "n_offsets": int(len(probe.sweep.offsets_ms)),
        "probe_calibration_seconds": result.probe_seconds,
        "calibration": probe.calibration.tolist(),
        "n_specimens": len(results),
        "marker_fre_mm": float(np.mean([r["fre_mm"] for r in results.values()])) if results else None,
        "frames_written": int(sum(v["frames"] for r in results.values() for v in r["records"].values())),
        "frames_dropped": int(sum(v["dropped"] for r in results.values() for v in r["records"].values())),
        "ct_voxel_mm": [float(v) for v in np.max([r["ct_spacing_mm"] for r in results.values()], axis=0)]
        if results else None,
        "per_specimen": {s: {k: r[k] for k in ("fre_mm", "icp_rmse_mm", "n_spheres", "seconds") if k in r}
                         for s, r in results.items()},
    }


# ----------------------------------------------------------------------------- figures


def plot_offset_sweep(sweep, true_offset_ms: float | None = None, zoom_ms: float = 15.0):
    """The mean 3D localisation error against the temporal offset: the whole sweep and a zoom on its minimum.

    Parameters
    ----------
    sweep : the probe calibration's offset sweep (``offsets_ms``, ``errors_mm``, ``offset_ms``).
    true_offset_ms : the twin's true offset, drawn for the reader (ms); None on real data.
    zoom_ms : half-width of the zoomed panel (ms).

    Returns
    -------
    matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, zoom in zip(axes, (False, True)):
        sel = np.abs(sweep.offsets_ms - sweep.offset_ms) <= zoom_ms if zoom else slice(None)
        ax.plot(sweep.offsets_ms[sel], sweep.errors_mm[sel], lw=1.2, label="localisation error")
        ax.axvline(sweep.offset_ms, color="C1", ls="--", label=f"found {sweep.offset_ms:.1f} ms")
        if true_offset_ms is not None:
            ax.axvline(true_offset_ms, color="C2", ls=":", label=f"true {true_offset_ms:.1f} ms")
        ax.set_xlabel("temporal offset dt (ms)")
        ax.set_ylabel("mean 3D localisation error (mm)")
        ax.set_title("zoom on the minimum" if zoom else f"sweep over [{sweep.offsets_ms[0]:.0f}, "
                     f"{sweep.offsets_ms[-1]:.0f}] ms")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_phantom_wires(image: np.ndarray, points: np.ndarray, spacing, timestamp: int):
    """A phantom frame with its detected wire echoes (cyan) and the diagonals' middle points (red).

    Parameters
    ----------
    image : (H, W) uint8 phantom image.
    points : (n_N, 3, 2) detected wire points of each N (mm, image plane).
    spacing : (sx, sy) mm per pixel.
    timestamp : the frame's timestamp (ms), for the title.
    """
    import matplotlib.pyplot as plt

    sx, sy = spacing
    fig, ax = plt.subplots(figsize=(5, 5 * image.shape[0] / image.shape[1]))
    ax.imshow(image, cmap="gray", extent=(0, image.shape[1] * sx, image.shape[0] * sy, 0))
    pts = np.asarray(points, float)
    ax.plot(pts[:, [0, 2], 0].ravel(), pts[:, [0, 2], 1].ravel(), "c+", ms=9, mew=1.5)
    ax.plot(pts[:, 1, 0], pts[:, 1, 1], "rx", ms=9, mew=1.5)
    ax.plot(pts[:, [0, 2], 0].T, pts[:, [0, 2], 1].T, "y-", lw=0.6)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("depth y (mm)")
    ax.set_title(f"phantom frame {timestamp} ms: wires (cyan), diagonals (red)")
    return fig
