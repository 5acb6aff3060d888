"""The spatio-temporal sweep: the image-to-probe transform solved at every temporal offset of a grid.

For each candidate offset the tracker streams are interpolated at the images' times plus the offset, the
phantom points are carried into the probe marker's frame, and the rigid image-to-probe transform is fitted in
closed form (Kabsch); the offset of least mean 3D localisation error wins (:func:`sweep_offsets`, batched over
offsets, on the grid of :func:`offset_grid`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ultrabones.core.errors import ParamsError
from ultrabones.core.geometry import interpolate_poses, invert_transform, rigid_fit


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
