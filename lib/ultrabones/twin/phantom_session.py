"""The twin's Z-phantom session: the probe moved over the N-wire phantom in water, recorded like the specimens.

The same probe, clocks and temporal offset as every specimen's records (:class:`~ultrabones.twin.tracking.System`);
the wires' echoes are drawn where the image plane cuts them (:mod:`ultrabones.calibration.phantom`), displaced in
depth by the water's speed of sound. What notebook 01 calibrates the probe from.
"""

from __future__ import annotations

import shutil

import numpy as np
from scipy.spatial.transform import Rotation

from ultrabones.calibration import phantom
from ultrabones.core import atomic, dataset, geometry
from ultrabones.core.paths import Paths
from ultrabones.twin import bmode
from ultrabones.twin.config import LEAD_S, TAIL_S, TwinConfig
from ultrabones.twin.layout import truth_dir
from ultrabones.twin.sweeps import SmoothProcess
from ultrabones.twin.tracking import System, measure_marker, tracker_from_ct
from ultrabones.twin.writers import pose_frame, write_csv


def simulate_phantom(paths: Paths, cfg: TwinConfig, system: System, seed: int, progress: bool = True) -> dict:
    """Z-phantom recordings: the probe moved over the N-wire phantom in water with varied motion.

    The probe plane stays near the phantom's nominal pose (every wire cut) and
    moves with sinusoids of several periods in all six degrees of freedom, so
    that a wrong temporal offset visibly breaks the wire geometry.
    """
    from tqdm import tqdm

    rng = np.random.default_rng([seed, 0x9A27])
    width_mm = cfg.image_width * cfg.pixel_spacing_mm
    depth_mm = cfg.image_height * cfg.pixel_spacing_mm
    phan = phantom.default_phantom(width_mm=0.8 * width_mm, depth_mm=depth_mm)
    out = paths.raw / "phantom"
    if out.exists():
        shutil.rmtree(out)
    atomic.write_json(out / "phantom.json", phan.to_dict())
    nominal = phantom.nominal_phantom_from_image(phan, width_mm)  # image plane -> phantom
    ot_from_phantom = tracker_from_ct(rng)
    dt = system.temporal_offset_ms
    n = cfg.phantom_frames
    period = 1000.0 / cfg.image_rate_hz
    t_img0 = 500_000
    img_t = t_img0 + np.rint(np.arange(n) * period).astype(np.int64)
    trk_t = np.round(np.arange(img_t[0] - LEAD_S * 1000, img_t[-1] + TAIL_S * 1000, 1000.0 / cfg.tracker_rate_hz), 3)
    motion = SmoothProcess(rng, 1.0, 1.2, dims=6, n_terms=4)
    wire_len = float(np.ptp(phan.wires[..., 2]))

    def planes(t):
        m = motion(t)
        rot = Rotation.from_rotvec(np.radians(np.c_[4.0 * m[:, 0], 4.0 * m[:, 1], 3.0 * m[:, 2]])).as_matrix()
        trans = np.c_[2.5 * m[:, 3], 1.0 * m[:, 4], 0.3 * wire_len * np.tanh(m[:, 5])]
        delta = geometry.make_transform(rot, trans)
        return delta @ nominal  # image plane -> phantom

    phantom_from_img_trk = planes(trk_t)
    ot_us_true = ot_from_phantom @ phantom_from_img_trk @ geometry.invert_transform(system.calibration)
    ot_us_rec = measure_marker(ot_us_true, geometry.PROBE_FIDUCIALS_MM, cfg.fiducial_jitter_mm, rng)
    ot_ph_rec = measure_marker(np.broadcast_to(ot_from_phantom, (len(trk_t), 4, 4)), phan.fiducials,
                               cfg.fiducial_jitter_mm, rng)
    write_csv(out / "tracker.csv", pose_frame(trk_t, {"": ot_us_rec, "p": ot_ph_rec}))
    img_from_phantom = geometry.invert_transform(planes(img_t + dt))
    wires = phantom.wire_points_in_image(phan, img_from_phantom)  # (n, n_N, 3, 2)
    # the phantom is scanned in water: the scanner (1540 m/s) displays a wire at true depth d at d * 1540 / c
    sos = bmode.SCANNER_SPEED_M_S / cfg.phantom_speed_of_sound_m_s
    wires = wires * np.array([1.0, sos])
    bp = cfg.bmode_params()
    floor = depth_mm * 0.93 * sos
    for i in tqdm(range(n), desc="phantom", leave=False, disable=not progress):
        img = bmode.render_points(wires[i].reshape(-1, 2), cfg.image_width, cfg.image_height, cfg.spacing, rng, bp,
                                  floor_depth_mm=floor)
        dataset.write_image(out / "images" / f"{int(img_t[i])}.png", img)
    truth_p = truth_dir(paths) / "phantom"
    write_csv(truth_p / "poses.csv", pose_frame(img_t, {"": ot_from_phantom @ planes(img_t + dt)
                                                          @ geometry.invert_transform(system.calibration)},
                                                  time_col="timestamp"))
    atomic.write_json(truth_p / "phantom.json", {"tracker_from_phantom": ot_from_phantom, "n_frames": n})
    return {"n_frames": n, "wires_seen": float(np.isfinite(wires[..., 0]).mean())}
