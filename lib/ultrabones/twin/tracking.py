"""Markers and the tracker: what the optical tracker sees and records, and the probe system every recording shares.

The specimen marker's fiducial spheres (:data:`SPECIMEN_FIDUCIALS_MM`) on K-wires beside the tibia
(:func:`place_marker`), the specimen before the camera (:func:`tracker_from_ct`), a marker's recorded pose (its
fiducials measured with jitter, then a rigid fit: :func:`measure_marker`), and the :class:`System` (the true
image-to-probe calibration and temporal offset) with its description in ``raw/`` and ``truth/``
(:func:`write_system`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from ultrabones.core import atomic, geometry
from ultrabones.core.paths import Paths
from ultrabones.twin import anatomy
from ultrabones.twin.config import TwinConfig
from ultrabones.twin.layout import truth_dir

#: Specimen-marker fiducials in the marker frame (mm): four spheres, asymmetric.
SPECIMEN_FIDUCIALS_MM = np.array([[0.0, 0.0, 0.0], [62.0, 4.0, 0.0], [28.0, 44.0, 0.0], [-14.0, 70.0, 2.0]])
#: Radius of the passive fiducial spheres (mm; 11.5 mm spheres).
FIDUCIAL_RADIUS_MM = 5.75


def measure_marker(poses: np.ndarray, fiducials: np.ndarray, jitter_mm: float, rng: np.random.Generator) -> np.ndarray:
    """What the tracker reports: fit to fiducials measured with isotropic jitter.

    Parameters
    ----------
    poses : (N, 4, 4) true marker poses (tracker frame).
    fiducials : (F, 3) fiducials in the marker frame (mm).
    jitter_mm : 3D RMS of each fiducial's measurement error (mm).

    Returns
    -------
    (N, 4, 4) recorded poses.
    """
    pts = geometry.transform_points(poses, fiducials)
    pts = pts + rng.normal(0, jitter_mm / np.sqrt(3), pts.shape)
    return geometry.rigid_fit(fiducials, pts)


@dataclass(frozen=True)
class System:
    """The probe, clocks and tracker shared by every recording of the twin."""

    calibration: np.ndarray  # true image plane -> probe marker (4x4)
    temporal_offset_ms: float

    @classmethod
    def draw(cls, seed: int, cfg: TwinConfig) -> "System":
        rng = np.random.default_rng([seed, 0xCA1B])
        rot = Rotation.from_rotvec(np.radians(_random_vector(rng, cfg.calibration_error_deg))).as_matrix()
        err = geometry.make_transform(rot, _random_vector(rng, cfg.calibration_error_mm))  # in the image-plane frame
        dt = float(np.round(rng.uniform(-300.0, 0.0), 1))
        dt = min(dt, -0.1)
        return cls(calibration=geometry.released_calibration() @ err, temporal_offset_ms=dt)


def _random_vector(rng: np.random.Generator, norm: float) -> np.ndarray:
    """A random direction scaled to length ``norm`` (a fixed-size error of random orientation)."""
    v = rng.normal(size=3)
    return v / np.linalg.norm(v) * norm


def write_system(paths: Paths, system: System, cfg: TwinConfig) -> None:
    """``raw/system.json`` and ``truth/system.json``."""
    atomic.write_json(paths.raw / "system.json", {
        "image_width": cfg.image_width, "image_height": cfg.image_height, "spacing_mm": list(cfg.spacing),
        "probe_fiducials_mm": geometry.PROBE_FIDUCIALS_MM, "fiducial_radius_mm": FIDUCIAL_RADIUS_MM,
        "tracker_rate_hz": cfg.tracker_rate_hz, "image_rate_hz": cfg.image_rate_hz,
    })
    atomic.write_json(truth_dir(paths) / "system.json", {
        "calibration": system.calibration, "temporal_offset_ms": system.temporal_offset_ms,
        "spacing_mm": list(cfg.spacing), "released_calibration": geometry.released_calibration(),
        "calibration_error_deg": cfg.calibration_error_deg, "calibration_error_mm": cfg.calibration_error_mm,
    })


def tracker_from_ct(rng: np.random.Generator) -> np.ndarray:
    """Where the specimen lies in the tracker's frame: about 1.4 m in front of the camera."""
    rot = Rotation.from_euler("xyz", [rng.uniform(-30, 30) + 180, rng.uniform(-20, 20), rng.uniform(0, 360)],
                              degrees=True).as_matrix()
    where = np.array([rng.uniform(-150, 150), rng.uniform(-100, 100), rng.uniform(1200, 1600)])
    return geometry.make_transform(rot, where)


def place_marker(an: anatomy.Anatomy, rng: np.random.Generator, standoff_mm: float = 45.0) -> np.ndarray:
    """``ct_from_marker``: the specimen marker on K-wires, anterolateral of the mid tibia, off the skin."""
    lm = an.landmarks
    z = lm["plafond_z"] + rng.uniform(0.45, 0.6) * (lm["tibia_top_z"] - lm["plafond_z"])
    ang = np.radians(rng.uniform(35, 70))
    out = np.array([np.cos(ang), np.sin(ang), 0.0])
    skin = an.skin
    k = np.interp(z, skin.z, np.arange(len(skin.z)))
    j = int(round(ang / (2 * np.pi) * skin.radius.shape[1])) % skin.radius.shape[1]
    r = np.interp(k, np.arange(len(skin.z)), skin.radius[:, j])
    c = np.array([np.interp(z, skin.z, skin.centre[:, 0]), np.interp(z, skin.z, skin.centre[:, 1]), z])
    origin = c + (r + standoff_mm) * out - 30.0 * np.array([0, 0, 1.0])
    ex = np.array([0, 0, 1.0])
    ez = out
    ey = np.cross(ez, ex)
    tilt = Rotation.from_rotvec(rng.normal(0, 0.1, 3)).as_matrix()
    return geometry.make_transform(tilt @ np.stack([ex, ey, ez], 1), origin)
