"""The digital twin: tracked freehand ultrasound of synthetic lower legs, with ground truth.

What a real acquisition records goes to ``raw/``, the truth to ``truth/``
(``docs/twin_format.md``). The pieces:

- **Anatomy** (:mod:`ultrabones.twin.anatomy`): bones, skin and the CT volume.
- **Markers and tracking.** A specimen marker on K-wires (fiducial spheres
  visible in CT) and the probe marker (the released fiducials). An optical
  tracker samples both at ``tracker_rate_hz``: each fiducial is measured with
  isotropic Gaussian jitter (``fiducial_jitter_mm`` RMS in 3D) and the marker
  pose is the least-squares rigid fit to the measured fiducials (Kabsch), as an
  optical tracker's pose is.
- **Recorded-pose error.** Besides the jitter, the recorded probe pose carries a
  slowly varying rigid error (``tracking_drift_deg``, ``tracking_drift_mm``,
  correlation time ``drift_timescale_s``) about the probe marker's fiducial
  centroid: the pose-dependent bias of the tracker over its working volume, and
  the small motion of the bones relative to their K-wire-mounted marker under
  probe pressure. Both are what the labeling stage's per-frame correction of at
  most 1 mm fiducial displacement is meant to absorb.
- **Calibration.** The true image-to-probe calibration is the released one
  perturbed by a random rigid error (``calibration_error_deg``,
  ``calibration_error_mm``): the released calibration is then a realistic
  calibration with error for this probe. The true temporal offset is drawn in
  ``[-300, 0)`` ms; the image with timestamp ``t`` was formed at tracker time
  ``t + dt``.
- **Sweeps.** Nine records per specimen (three along the tibia, three along the
  fibula, three over the foot; forward and backward) with natural hand motion:
  speed, tilt, roll, lateral wobble and pressure vary smoothly; the probe face
  stays on the skin.
- **Images** (:mod:`ultrabones.twin.bmode`), written frame by frame (memory does not
  grow with record length), with the true full and visible labels.
- **Z-phantom** recordings (:mod:`ultrabones.calibration.phantom`) with the same probe,
  clocks and offset.

Everything is seeded from the profile's ``seed``: the same parameters give the
same bytes, whatever the number of workers.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

from ultrabones.twin import anatomy
from ultrabones.core import atomic
from ultrabones.core.paper import PUBLISHED
from ultrabones.twin import bmode
from ultrabones.core import dataset
from ultrabones.core import geometry
from ultrabones.core.executor import executor
from ultrabones.core.mesh import decimate
from ultrabones.core.overlay import overlay
from ultrabones.core.errors import ParamsError
from ultrabones.core.params import SectionParams, validate_section
from ultrabones.twin.layout import truth_dir
from ultrabones.core.paths import Paths, twin_specimen_name

#: Records of a specimen: (name, bone group, direction, variant).
RECORDS = tuple(
    (f"record{i + 1:02d}", group, "forward" if i % 2 == 0 else "backward", i % 3)
    for i, group in enumerate(["tibia"] * 3 + ["fibula"] * 3 + ["foot"] * 3)
)
GROUPS = ("tibia", "fibula", "foot")

#: The initial misalignment (a contour comparison) is measured on every n-th frame.
MISALIGNMENT_EVERY = 3

#: Log-normal spread (sigma of the log) of the recorded-pose error's size between records.
DRIFT_SPREAD = 0.3

#: Specimen-marker fiducials in the marker frame (mm): four spheres, asymmetric.
SPECIMEN_FIDUCIALS_MM = np.array([[0.0, 0.0, 0.0], [62.0, 4.0, 0.0], [28.0, 44.0, 0.0], [-14.0, 70.0, 2.0]])
#: Radius of the passive fiducial spheres (mm; 11.5 mm spheres).
FIDUCIAL_RADIUS_MM = 5.75


@dataclass(frozen=True)
class TwinConfig(SectionParams):
    """The ``simulate`` section, typed and frozen: the stage's parameters (units: ``params.SCHEMA["simulate"]``).

    Build it with :meth:`~ultrabones.core.params.SectionParams.from_section`; a specimen's overrides give
    :meth:`for_specimen`. Construction, and so ``dataclasses.replace``, validates every value against the schema,
    then the combinations a schema cannot check. ``as_dict`` gives the section back as plain data.
    """

    SECTION: ClassVar[str] = "simulate"

    n_specimens: int
    image_width: int
    image_height: int
    pixel_spacing_mm: float
    image_rate_hz: float
    tracker_rate_hz: float
    probe_speed_mm_s: float
    sweep_length_mm: tuple
    hand_tilt_deg: float
    hand_pressure_mm: float
    fiducial_jitter_mm: float
    tracking_drift_deg: float
    tracking_drift_mm: float
    drift_timescale_s: float
    calibration_error_deg: float
    calibration_error_mm: float
    ct_spacing_mm: tuple
    ct_noise_hu: float
    phantom_frames: int
    frequency_mhz: float
    tgc_fraction: float
    dynamic_range_db: float
    specular_exponent: float
    label_gamma_mm: float
    max_incidence_deg: float
    # image realism (issue 15); defaults: the twin before it
    psf_axial_mm: float = 0.18
    psf_lateral_mm: float = 0.35
    display_smoothing_mm: float = 0.25
    gain_db: float = 28.0
    shadow_level: float = 0.01
    reverb_level: float = 0.0
    ringdown_mm: float = 0.25
    speckle_cell_mm: float = 0.0
    septa_spacing_mm: float = 5.0
    # the lab's error sources (issue 15); defaults: none
    speed_of_sound_m_s: float = 1540.0
    phantom_speed_of_sound_m_s: float = 1540.0
    ct_blur_mm: float = 0.0
    ct_cortical_hu: float = 1400.0
    # notebook 00's realism table only: changes no simulated byte (NOT_SIMULATION_KEYS)
    real_frames_dir: str | None = None

    def for_specimen(self, specimen_overrides: dict | None, specimen: str) -> "TwinConfig":
        """This configuration with a specimen's overrides (``params/specimens/<id>.yaml``) applied, validated.

        Raises
        ------
        ParamsError
            If an override sets a key of the probe or the phantom (:data:`SYSTEM_KEYS`), shared by every specimen.
        """
        over = validate_section("simulate", (specimen_overrides or {}).get(specimen, {}), f"{specimen} overrides",
                                partial=True)
        bad = sorted(set(over) & set(SYSTEM_KEYS))
        if bad:
            raise ParamsError(f"params/specimens/{specimen}.yaml: simulate.{bad[0]} describes the probe or the "
                              f"phantom shared by every specimen; it cannot be set per specimen")
        return dataclasses.replace(self, **over)

    def simulation_key(self) -> dict:
        """:meth:`as_dict` less the keys that change no simulated byte: what the cache keys hash."""
        return {k: v for k, v in self.as_dict().items() if k not in NOT_SIMULATION_KEYS}

    @classmethod
    def from_params(cls, P: dict) -> "TwinConfig":
        """From a ``simulate`` section, its known keys (the realism and error keys may be missing: their defaults)."""
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in P.items() if k in known})

    def __post_init__(self):
        """Validate against the schema (:class:`~ultrabones.core.params.SectionParams`), then the combinations."""
        super().__post_init__()
        cfg = self
        for key in ("psf_axial_mm", "psf_lateral_mm", "septa_spacing_mm", "speed_of_sound_m_s",
                    "phantom_speed_of_sound_m_s", "ct_cortical_hu"):
            if not getattr(cfg, key) > 0:
                raise ParamsError(f"simulate.{key} must be positive, got {getattr(cfg, key)!r}")
        for key in ("display_smoothing_mm", "reverb_level", "ringdown_mm", "speckle_cell_mm", "ct_blur_mm"):
            if not getattr(cfg, key) >= 0:
                raise ParamsError(f"simulate.{key} must be zero or positive, got {getattr(cfg, key)!r}")
        if not 0 <= cfg.shadow_level <= 1:
            raise ParamsError(f"simulate.shadow_level must lie in [0, 1], got {cfg.shadow_level!r}")
        for key in ("speed_of_sound_m_s", "phantom_speed_of_sound_m_s"):
            if not 1000.0 <= getattr(cfg, key) <= 2000.0:
                raise ParamsError(f"simulate.{key} must lie in [1000, 2000] m/s (soft tissue and water: 1450 to "
                                  f"1600), got {getattr(cfg, key)!r}")
        if cfg.pixel_spacing_mm <= 0:
            raise ParamsError(f"simulate.pixel_spacing_mm must be positive, got {cfg.pixel_spacing_mm}")
        if min(cfg.ct_spacing_mm) <= 0:
            raise ParamsError(f"simulate.ct_spacing_mm must be positive, got {list(cfg.ct_spacing_mm)}")
        if cfg.image_width < 1 or cfg.image_height < 1:
            raise ParamsError(f"simulate: image size must be positive, got {cfg.image_width} x {cfg.image_height}")
        if len(cfg.sweep_length_mm) != 3 or min(cfg.sweep_length_mm) <= 0:
            raise ParamsError(f"simulate.sweep_length_mm must be three positive lengths (tibia, fibula, foot), "
                              f"got {list(cfg.sweep_length_mm)}")
        if cfg.tracker_rate_hz <= cfg.image_rate_hz:
            raise ParamsError(f"simulate.tracker_rate_hz ({cfg.tracker_rate_hz}) must exceed image_rate_hz "
                              f"({cfg.image_rate_hz}): the tracker is the faster stream")
        for g, length in zip(GROUPS, cfg.sweep_length_mm):
            n = frames_in_sweep(length, cfg)
            if n < 1:
                raise ParamsError(f"simulate.sweep_length_mm ({g}: {length} mm) at {cfg.probe_speed_mm_s} mm/s and "
                                  f"{cfg.image_rate_hz} Hz gives zero frames; lengthen the sweep or slow the probe")

    @property
    def spacing(self) -> tuple[float, float]:
        return (self.pixel_spacing_mm, self.pixel_spacing_mm)

    def bmode_params(self) -> bmode.BModeParams:
        return bmode.BModeParams(frequency_mhz=self.frequency_mhz, tgc_fraction=self.tgc_fraction,
                                 dynamic_range_db=self.dynamic_range_db, specular_exponent=self.specular_exponent,
                                 psf_axial_mm=self.psf_axial_mm, psf_lateral_mm=self.psf_lateral_mm,
                                 display_smoothing_mm=self.display_smoothing_mm, gain_db=self.gain_db,
                                 shadow_level=self.shadow_level, reverb_level=self.reverb_level,
                                 ringdown_mm=self.ringdown_mm, speckle_cell_mm=self.speckle_cell_mm,
                                 septa_spacing_mm=self.septa_spacing_mm, speed_of_sound_m_s=self.speed_of_sound_m_s)


#: Seconds of tracking before the first image and after the last: every candidate offset in [-300, 0) ms
#: keeps ``t + offset`` in the tracked range.
LEAD_S = 0.32
TAIL_S = 0.02


def frames_in_sweep(length_mm: float, cfg: TwinConfig) -> int:
    """Images of a sweep of ``length_mm`` at the mean probe speed (the tracking lead and tail excluded)."""
    duration = length_mm / cfg.probe_speed_mm_s - LEAD_S - TAIL_S
    return int(np.floor(duration * cfg.image_rate_hz))


# ----------------------------------------------------------------------------- random processes


class SmoothProcess:
    """A smooth zero-mean random signal of time: a sum of random sinusoids.

    Parameters
    ----------
    rng : random generator.
    std : standard deviation (the signal's unit).
    timescale_s : typical period (s); frequencies are drawn over [0.3, 3] / timescale.
    dims : number of independent components.
    n_terms : sinusoids per component.
    """

    def __init__(self, rng: np.random.Generator, std: float, timescale_s: float, dims: int = 1, n_terms: int = 6):
        self.freq = rng.uniform(0.3, 3.0, (dims, n_terms)) / timescale_s  # Hz
        self.phase = rng.uniform(0, 2 * np.pi, (dims, n_terms))
        self.amp = rng.normal(0, 1, (dims, n_terms))
        self.amp *= std * np.sqrt(2.0) / np.sqrt((self.amp**2).sum(axis=1, keepdims=True))

    def __call__(self, t_ms: np.ndarray) -> np.ndarray:
        """(N, dims) values at times ``t_ms`` (ms)."""
        t = np.asarray(t_ms, dtype=float)[:, None, None] / 1000.0
        return (self.amp * np.sin(2 * np.pi * self.freq * t + self.phase)).sum(axis=2)


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


# ----------------------------------------------------------------------------- sweeps


@dataclass
class SweepPlan:
    """A sweep's path: probe-centre targets along a bone and the approach direction.

    ``path(s)`` (mm, CT) for arc length ``s`` in ``[0, length]``; the probe sits
    where the ray from ``path(s)`` along ``approach`` leaves the skin.
    """

    group: str
    points: np.ndarray  # (n, 3) polyline (CT mm) of targets, >= length long
    approach: np.ndarray  # (3,) unit vector, outward

    @property
    def available_mm(self) -> float:
        return float(np.linalg.norm(np.diff(self.points, axis=0), axis=1).sum())

    def path(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Targets (N, 3) and unit tangents (N, 3) at arc lengths ``s`` (mm)."""
        seg = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
        cum = np.concatenate([[0], np.cumsum(seg)])
        p = np.stack([np.interp(s, cum, self.points[:, k]) for k in range(3)], 1)
        i = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1)
        tan = (self.points[i + 1] - self.points[i]) / seg[i, None]
        return p, tan


def plan_sweep(an: anatomy.Anatomy, group: str, variant: int, length_mm: float, rng: np.random.Generator) -> SweepPlan:
    """The path of a record over ``group`` (variant 0..2 sets the approach), ``length_mm`` long.

    Raises
    ------
    ParamsError
        If the sweep is longer than the bone's scannable length.
    """
    lm = an.landmarks
    if group in ("tibia", "fibula"):
        tube = an.bones[group]
        z0, z1 = tube.z[0], tube.z[-1]
        lo, hi = (z0 + 0.12 * (z1 - z0), z0 + 0.85 * (z1 - z0)) if group == "tibia" else \
            (z0 + 0.08 * (z1 - z0), z0 + 0.8 * (z1 - z0))
        zs = np.linspace(lo, hi, 200)
        pts = np.stack([np.interp(zs, tube.z, tube.centre[:, 0]), np.interp(zs, tube.z, tube.centre[:, 1]), zs], 1)
        base = {"tibia": (115.0, 95.0, 140.0), "fibula": (-5.0, -30.0, 15.0)}[group][variant]
        ang = np.radians(base + rng.normal(0, 6))
        approach = np.array([np.cos(ang), np.sin(ang), 0.0])
    else:
        tal, nav, calc = lm["talus"], lm["navicular"], lm["calcaneus"]
        if variant < 2:  # dorsal: over the talar neck and the navicular
            pts = np.linspace(tal + [0, -12.0, 0], nav + [0, 10.0, 0], 100)
            approach = np.array([0.0, 0.35, 0.94]) + rng.normal(0, 0.08, 3)
        else:  # lateral: along the calcaneus
            pts = np.linspace(calc + [0, -32.0, 0], calc + [0, 30.0, 0], 100)
            approach = np.array([0.95, 0.0, 0.3]) + rng.normal(0, 0.08, 3)
        approach /= np.linalg.norm(approach)
    plan = SweepPlan(group, pts, approach)
    avail = plan.available_mm
    if length_mm > avail:
        raise ParamsError(f"simulate.sweep_length_mm ({group}: {length_mm:g} mm) is longer than the {group}'s "
                          f"scannable length on this specimen ({avail:.0f} mm)")
    start = rng.uniform(0, avail - length_mm)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    cum = np.concatenate([[0], np.cumsum(seg)])
    s = np.linspace(start, start + length_mm, max(2, int(length_mm) + 1))
    plan.points = np.stack([np.interp(s, cum, pts[:, k]) for k in range(3)], 1)
    return plan


class HandMotion:
    """A sweep's natural hand motion, evaluable at any time (ms on the tracker clock).

    Speed varies by about 25 %; the beam direction tilts in-plane (roll) and
    out of plane (fan) by ``tilt_deg`` (std) and rotates about the beam by a
    third of it; the probe wobbles sideways by 2 mm and presses in by
    ``pressure_mm`` +- 40 %.
    """

    def __init__(self, plan: SweepPlan, t0_ms: float, t1_ms: float, backward: bool, cfg: TwinConfig,
                 rng: np.random.Generator):
        self.plan, self.t0, self.t1, self.backward = plan, t0_ms, t1_ms, backward
        self.length = plan.available_mm
        speed = SmoothProcess(rng, 0.25, 1.5)
        grid = np.arange(t0_ms, t1_ms + 1.0, 1.0)
        v = np.clip(1 + speed(grid)[:, 0], 0.3, None)
        s = np.concatenate([[0], np.cumsum(0.5 * (v[1:] + v[:-1]))])
        self._grid, self._s = grid, s / s[-1] * self.length
        self.tilt = SmoothProcess(rng, np.radians(cfg.hand_tilt_deg), 2.0, dims=3)
        self.wobble = SmoothProcess(rng, 2.0, 2.5)
        self.press = SmoothProcess(rng, 0.4 * cfg.hand_pressure_mm, 1.5)
        self.pressure = cfg.hand_pressure_mm

    def arc(self, t_ms: np.ndarray) -> np.ndarray:
        s = np.interp(t_ms, self._grid, self._s)
        return self.length - s if self.backward else s


def image_planes(motion: HandMotion, t_ms: np.ndarray, scene: bmode.Scene, width_mm: float) -> np.ndarray:
    """True image planes (``ct_from_image``, (N, 4, 4)) of a sweep at tracker times ``t_ms``.

    The beam axis starts along ``-approach`` (rolled, fanned and turned by the
    hand), the plane contains it and is perpendicular to the path; the probe
    face's centre is where the beam axis through the target leaves the skin,
    pressed in by the pressure.
    """
    if scene._skin_rays is None:
        raise ValueError("image_planes: the scene has no skin to put the probe on")
    t_ms = np.asarray(t_ms, dtype=float)
    target, tan = motion.plan.path(motion.arc(t_ms))
    tilt = motion.tilt(t_ms)  # roll about tangent, fan about image x, turn about the beam
    a0 = motion.plan.approach
    ey0 = -(a0 - (a0 @ tan.T)[:, None] * tan)
    ey0 /= np.linalg.norm(ey0, axis=1, keepdims=True)
    ez0 = tan
    ex0 = np.cross(ey0, ez0)
    base = np.stack([ex0, ey0, ez0], axis=2)  # columns
    local = Rotation.from_euler("zxy", np.stack([tilt[:, 0], tilt[:, 1], tilt[:, 2] / 3], 1)).as_matrix()
    rot = base @ local
    ex, ey = rot[:, :, 0], rot[:, :, 1]
    target = target + motion.wobble(t_ms)[:, :1] * ex
    # from deep inside, outward along -ey: the first skin crossing is where the probe sits
    loc, idx, _ = scene._skin_rays.intersects_location(target, -ey, multiple_hits=False)
    contact = np.full_like(target, np.nan)
    contact[idx] = loc
    if np.isnan(contact).any():
        bad = int(np.flatnonzero(np.isnan(contact[:, 0]))[0])
        raise RuntimeError(f"sweep over the {motion.plan.group}: beam axis leaves no skin at t = {t_ms[bad]:.0f} ms")
    press = np.clip(motion.pressure + motion.press(t_ms)[:, 0], 0.0, None)
    top = contact + press[:, None] * ey
    origin = top - 0.5 * width_mm * ex
    return geometry.make_transform(rot, origin)


# ----------------------------------------------------------------------------- writers


def save_npz(path: Path, **arrays) -> Path:
    """``np.savez_compressed`` with fixed zip timestamps (same arrays, same bytes), atomically."""
    with atomic.atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, buf.getvalue(), compresslevel=1)
    return Path(path)


def _pose_frame(times: np.ndarray, cols: dict[str, np.ndarray], time_col: str = "time_ms") -> pd.DataFrame:
    df = pd.DataFrame({time_col: times})
    for prefix, poses in cols.items():
        p = geometry.params_from_pose(poses)
        names = geometry.POSE_COLUMNS if prefix == "" else (
            f"{prefix}x", f"{prefix}y", f"{prefix}z", f"{prefix}euler_x", f"{prefix}euler_y", f"{prefix}euler_z")
        for k, c in enumerate(names):
            df[c] = p[:, k]
    return df


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    with atomic.atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6f")


# ----------------------------------------------------------------------------- the system (all specimens)


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


# ----------------------------------------------------------------------------- one specimen


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


def specimen_seed(seed: int, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, 1 + index])


def simulate_specimen(paths: Paths, index: int, cfg: TwinConfig, system: System, seed: int,
                      progress: bool = True) -> dict:
    """Simulate one specimen: CT, marker, nine records; write raw/ and truth/; return its statistics.

    Old output of the specimen is removed first, so no stale frame survives a rerun.
    """
    from tqdm import tqdm

    name = twin_specimen_name(index)
    ss = specimen_seed(seed, index)
    children = ss.spawn(5 + len(RECORDS))
    rng_anat, rng_ct, rng_mark = (np.random.default_rng(s) for s in children[:3])
    raw_s, truth_s = paths.raw / name, truth_dir(paths) / name
    for d in (raw_s, truth_s):
        if d.exists():
            shutil.rmtree(d)
    an = anatomy.make_anatomy(rng_anat)
    meshes = an.meshes()
    for bone, mesh in meshes.items():
        dataset.write_mesh(truth_s / "meshes" / f"{bone}.stl", mesh)
    skin_mesh = an.skin_mesh()
    dataset.write_mesh(truth_s / "meshes" / "skin.stl", skin_mesh)
    dataset.write_mesh(truth_s / "bone_model.stl", an.bone_model())

    ct_from_marker = place_marker(an, rng_mark)
    ot_from_ct = tracker_from_ct(rng_mark)
    spheres = geometry.transform_points(ct_from_marker, SPECIMEN_FIDUCIALS_MM)
    t0 = time.perf_counter()
    vol, origin = anatomy.ct_volume(an, spheres, FIDUCIAL_RADIUS_MM, cfg.ct_spacing_mm, rng_ct, cfg.ct_noise_hu,
                                    blur_mm=cfg.ct_blur_mm, cortical_hu=cfg.ct_cortical_hu)
    save_npz(raw_s / "ct.npz", volume=vol, spacing_mm=np.asarray(cfg.ct_spacing_mm, float), origin_mm=origin)
    ct_seconds = time.perf_counter() - t0
    atomic.write_json(raw_s / "marker.json", {"fiducials_mm": SPECIMEN_FIDUCIALS_MM,
                                              "fiducial_radius_mm": FIDUCIAL_RADIUS_MM})
    atomic.write_json(truth_s / "ct_from_marker.json", {"ct_from_marker": ct_from_marker,
                                                        "tracker_from_ct": ot_from_ct})
    records = {r: {"bone": g, "direction": d} for r, g, d, _ in RECORDS}
    atomic.write_json(raw_s / "records.json", records)
    atomic.write_json(truth_s / "records.json", records)
    atomic.write_json(truth_s / "anatomy.json", {
        "size_factor": an.landmarks["size"], "fat_mm": an.fat_mm, "plafond_z_mm": an.landmarks["plafond_z"],
        "tibia_top_z_mm": an.landmarks["tibia_top_z"], "bones": list(meshes)})

    scene = bmode.Scene.from_meshes(list(meshes.values()), skin_mesh, an.fat_mm,
                                    seed=int(children[3].generate_state(1)[0]))
    rows = []
    t_render = 0.0
    n_frames = 0
    for r_index, (rec, group, direction, variant) in enumerate(RECORDS):
        rng = np.random.default_rng(children[5 + r_index])
        t0 = time.process_time()  # CPU time of this process: a per-core rate, robust to a busy machine
        stats = simulate_record(paths, name, rec, group, direction, variant, an, scene, cfg, system,
                                ct_from_marker, ot_from_ct, rng, record_index=r_index, progress=progress, tqdm=tqdm)
        t_render += time.process_time() - t0
        n_frames += stats["n_frames"]
        rows.append(stats)
    return {"specimen": name, "n_frames": n_frames, "render_seconds": t_render, "ct_seconds": ct_seconds,
            "records": rows}


@dataclass
class RecordStreams:
    """The clocks and poses of one record (everything but the images).

    Attributes
    ----------
    plan : the sweep's path.
    image_t : (N,) image timestamps (ms, image clock).
    tracker_t : (M,) tracker timestamps (ms, tracker clock).
    planes : (N, 4, 4) true ``ct_from_image`` when each image was formed (``t + dt``).
    ct_us_true : (N, 4, 4) true probe-marker poses in CT at ``t + dt``.
    ct_us_recorded : (N, 4, 4) the recorded chain at ``t + dt``: true CT-from-marker, recorded
        specimen-marker and probe poses (jitter, drift), interpolated.
    tracker : the raw ``tracker.csv`` table.
    """

    plan: SweepPlan
    image_t: np.ndarray
    tracker_t: np.ndarray
    planes: np.ndarray
    ct_us_true: np.ndarray
    ct_us_recorded: np.ndarray
    tracker: pd.DataFrame


def record_streams(group: str, direction: str, variant: int, an: anatomy.Anatomy, scene: bmode.Scene,
                   cfg: TwinConfig, system: System, ct_from_marker: np.ndarray, ot_from_ct: np.ndarray,
                   rng: np.random.Generator, record_index: int = 0) -> RecordStreams:
    """Plan a sweep, move the probe, and record both markers (see the module docstring)."""
    length = cfg.sweep_length_mm[GROUPS.index(group)]
    plan = plan_sweep(an, group, variant, length, rng)
    rng_motion, rng_track, rng_img, rng_drift = rng.spawn(4)
    dt = system.temporal_offset_ms
    # clocks: images from t_img0; the tracker (same clock up to dt) from LEAD_S before to TAIL_S after,
    # so that t + dt' lies in the tracked range for every candidate offset dt' in [-300, 0) ms
    t_img0 = 1_000_000 + 180_000 * record_index + int(rng.integers(0, 5000))
    duration_ms = length / cfg.probe_speed_mm_s * 1000.0
    track_t0 = t_img0 - LEAD_S * 1000.0
    track_t1 = track_t0 + duration_ms
    motion = HandMotion(plan, track_t0, track_t1, direction == "backward", cfg, rng_motion)
    n_img = frames_in_sweep(length, cfg)
    period = 1000.0 / cfg.image_rate_hz
    img_t = np.unique(t_img0 + np.rint(np.arange(n_img) * period + rng_img.normal(0, 1.0, n_img)).astype(np.int64))
    trk_t = np.round(np.arange(track_t0, track_t1, 1000.0 / cfg.tracker_rate_hz), 3)
    width_mm = cfg.image_width * cfg.pixel_spacing_mm
    inv_calib = geometry.invert_transform(system.calibration)
    ct_us_trk = image_planes(motion, trk_t, scene, width_mm) @ inv_calib
    # recorded: a slowly varying error in the probe-marker frame about its fiducial centroid, then jitter and fit
    drift = SmoothProcess(rng_drift, 1.0, cfg.drift_timescale_s, dims=6)
    # the error's size varies between records (tracker working-volume region, marker visibility): log-normal
    dv = drift(trk_t) * np.exp(rng_drift.normal(0.0, DRIFT_SPREAD) - DRIFT_SPREAD**2 / 2)
    centroid = geometry.PROBE_FIDUCIALS_MM.mean(axis=0)
    d_rot = Rotation.from_rotvec(np.radians(cfg.tracking_drift_deg) * dv[:, :3]).as_matrix()
    d_trans = cfg.tracking_drift_mm * dv[:, 3:] + centroid - np.einsum("nij,j->ni", d_rot, centroid)
    d_pose = geometry.make_transform(d_rot, d_trans)
    ot_us_rec = measure_marker(ot_from_ct @ ct_us_trk @ d_pose, geometry.PROBE_FIDUCIALS_MM,
                               cfg.fiducial_jitter_mm, rng_track)
    ot_sm_true = np.broadcast_to(ot_from_ct @ ct_from_marker, (len(trk_t), 4, 4))
    ot_sm_rec = measure_marker(ot_sm_true, SPECIMEN_FIDUCIALS_MM, cfg.fiducial_jitter_mm, rng_track)
    t_form = img_t + dt
    planes = image_planes(motion, t_form, scene, width_mm)
    ct_us_rec = (ct_from_marker @ geometry.invert_transform(geometry.interpolate_poses(trk_t, ot_sm_rec, t_form))
                 @ geometry.interpolate_poses(trk_t, ot_us_rec, t_form))
    tracker = _pose_frame(trk_t, {"": ot_us_rec, "s": ot_sm_rec})
    return RecordStreams(plan, img_t, trk_t, planes, planes @ inv_calib, ct_us_rec, tracker)


def simulate_record(paths: Paths, specimen: str, rec: str, group: str, direction: str, variant: int,
                    an: anatomy.Anatomy, scene: bmode.Scene, cfg: TwinConfig, system: System,
                    ct_from_marker: np.ndarray, ot_from_ct: np.ndarray, rng: np.random.Generator,
                    record_index: int = 0, progress: bool = True, tqdm=None) -> dict:
    """One sweep: tracker stream, frames and labels, written as they are made; returns statistics."""
    st = record_streams(group, direction, variant, an, scene, cfg, system, ct_from_marker, ot_from_ct, rng,
                        record_index)
    rng_img = np.random.default_rng(rng.integers(0, 2**63))
    plan, img_t, planes, ct_us_true, ct_us_rec = st.plan, st.image_t, st.planes, st.ct_us_true, st.ct_us_recorded
    width_mm = cfg.image_width * cfg.pixel_spacing_mm
    raw_r = paths.raw / specimen / rec
    truth_r = truth_dir(paths) / specimen / rec
    _write_csv(raw_r / "tracker.csv", st.tracker)
    released = geometry.released_calibration()
    correction = (geometry.invert_transform(ct_us_rec) @ ct_us_true @ system.calibration
                  @ geometry.invert_transform(released))
    required = geometry.mean_fiducial_displacement(np.eye(4), correction)
    pose_err = geometry.mean_fiducial_displacement(ct_us_rec, ct_us_true)
    _write_csv(truth_r / "poses.csv", _pose_frame(img_t, {"": ct_us_true}, time_col="timestamp"))
    extent = (width_mm, cfg.image_height * cfg.pixel_spacing_mm)
    bp = cfg.bmode_params()
    frame_rows = []
    iterator = range(len(img_t))
    if tqdm is not None:
        iterator = tqdm(iterator, desc=f"{specimen}/{rec}", leave=False, disable=not progress)
    for i in iterator:
        t = int(img_t[i])
        f = bmode.render_frame(scene, planes[i], cfg.image_width, cfg.image_height, cfg.spacing, rng_img, bp,
                               cfg.label_gamma_mm, cfg.max_incidence_deg)
        dataset.write_image(raw_r / "images" / f"{t}.png", f.image)
        dataset.write_label(truth_r / dataset.LABELS_FULL / f"{t}_label.png", f.full)
        dataset.write_label(truth_r / dataset.LABELS / f"{t}_label.png", f.visible)
        mis = float("nan")
        if i % MISALIGNMENT_EVERY == 0:
            rec_pts, _ = bmode.plane_contour(scene, ct_us_rec[i] @ released, cfg.image_width, cfg.image_height,
                                             cfg.spacing, margin_mm=0.0)
            mis = bmode.chamfer_mm(rec_pts, f.contour, extent)
        n_full, n_vis = int(f.full.sum()), int(f.visible.sum())
        frame_rows.append({
            "timestamp": t, "bone_in_view": n_full > 0, "full_pixels": n_full, "visible_pixels": n_vis,
            "recorded_pose_error_mm": float(pose_err[i]), "required_correction_mm": float(required[i]),
            "misalignment_mm": mis,
            "mean_incidence_deg": float(np.nanmean(f.contour_incidence_deg)) if len(f.contour) else float("nan"),
            "bone_depth_mm": float(np.nanmin(np.where(np.isfinite(f.bone_depth_mm), f.bone_depth_mm, np.nan)))
            if np.isfinite(f.bone_depth_mm).any() else float("nan"),
        })
    frames = pd.DataFrame(frame_rows)
    _write_csv(truth_r / "frames.csv", frames)
    return {"record": rec, "bone": group, "direction": direction, "n_frames": len(frames),
            "visible_pixels": int(frames["visible_pixels"].sum()), "full_pixels": int(frames["full_pixels"].sum()),
            "misalignment_mm": frames["misalignment_mm"].dropna().tolist(),
            "required_correction_mm": frames["required_correction_mm"].tolist(),
            "bone_in_view": int(frames["bone_in_view"].sum()),
            "path_start_mm": plan.points[0].tolist(), "path_end_mm": plan.points[-1].tolist()}


# ----------------------------------------------------------------------------- phantom


def simulate_phantom(paths: Paths, cfg: TwinConfig, system: System, seed: int, progress: bool = True) -> dict:
    """Z-phantom recordings: the probe moved over the N-wire phantom in water with varied motion.

    The probe plane stays near the phantom's nominal pose (every wire cut) and
    moves with sinusoids of several periods in all six degrees of freedom, so
    that a wrong temporal offset visibly breaks the wire geometry.
    """
    from tqdm import tqdm

    from ultrabones.calibration import phantom

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
    _write_csv(out / "tracker.csv", _pose_frame(trk_t, {"": ot_us_rec, "p": ot_ph_rec}))
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
    _write_csv(truth_p / "poses.csv", _pose_frame(img_t, {"": ot_from_phantom @ planes(img_t + dt)
                                                          @ geometry.invert_transform(system.calibration)},
                                                  time_col="timestamp"))
    atomic.write_json(truth_p / "phantom.json", {"tracker_from_phantom": ot_from_phantom, "n_frames": n})
    return {"n_frames": n, "wires_seen": float(np.isfinite(wires[..., 0]).mean())}


# ----------------------------------------------------------------------------- the twin


def _specimen_job(args):
    paths, index, cfg, system, seed, progress = args
    return simulate_specimen(paths, index, cfg, system, seed, progress)


#: Keys that describe the probe, the clocks and the phantom: shared by all specimens, not overridable per specimen.
SYSTEM_KEYS = ("n_specimens", "image_width", "image_height", "pixel_spacing_mm", "image_rate_hz", "tracker_rate_hz",
               "calibration_error_deg", "calibration_error_mm", "phantom_frames", "frequency_mhz", "tgc_fraction",
               "dynamic_range_db", "specular_exponent", "psf_axial_mm", "psf_lateral_mm", "display_smoothing_mm",
               "gain_db", "speckle_cell_mm", "phantom_speed_of_sound_m_s")


#: ``simulate`` keys that change no simulated byte (left out of the cache keys).
NOT_SIMULATION_KEYS = ("real_frames_dir",)


@dataclass(frozen=True)
class SimulationResult:
    """What :func:`simulate_twin` simulated.

    Attributes
    ----------
    specimens : specimen name -> its statistics, every specimen of the run in the cache, sorted.
    phantom : the phantom session's statistics (``n_frames``, ...).
    wall_seconds : wall time of the run (s).
    system : the drawn :class:`System` (true calibration, temporal offset, ...).
    config : the configuration simulated.
    n_workers : processes the specimens ran on.
    """

    specimens: dict
    phantom: dict | None
    wall_seconds: float
    system: "System"
    config: TwinConfig
    n_workers: int = 1


def simulate_twin(paths: Paths, P: TwinConfig, seed: int, specimens: list[str] | None = None, n_workers: int = 1,
                  progress: bool = True, cache=None, overrides: dict | None = None) -> SimulationResult:
    """Simulate the twin: system, phantom and every (or the named) specimen.

    Parameters
    ----------
    paths : where ``raw/`` and ``truth/`` go.
    P : the stage's parameters (:meth:`TwinConfig.from_section`).
    seed : master seed.
    specimens : only these specimen names (the others are kept); None: all.
    n_workers : processes (specimens run in parallel; the output does not depend on it).
    cache : a :class:`~ultrabones.pipeline.cache.SpecimenCache`; specimens whose result is cached with the same
        parameters are skipped, and cached specimens not asked for are reported too.
    overrides : per-specimen section overrides (``specimen_overrides`` of the notebook;
        :meth:`TwinConfig.for_specimen`).
    """
    cfg = P
    names = [twin_specimen_name(i) for i in range(cfg.n_specimens)]
    if specimens is not None:
        unknown = [s for s in specimens if s not in names]
        if unknown:
            raise ParamsError(f"specimen(s) {', '.join(unknown)} not in the twin ({names[0]}..{names[-1]})")
    cfgs = {n: cfg.for_specimen(overrides, n) for n in names}
    keys = {n: {"simulate": cfgs[n].simulation_key(), "seed": seed} for n in names}
    system = System.draw(seed, cfg)
    t0 = time.perf_counter()
    write_system(paths, system, cfg)
    results = {}
    section = cfg.as_dict()
    phantom_key = {"simulate": {k: section[k] for k in SYSTEM_KEYS + ("fiducial_jitter_mm",)}, "seed": seed}
    phantom_stats = cache.get("phantom", phantom_key) if cache is not None else None
    if phantom_stats is None or not (paths.raw / "phantom" / "tracker.csv").is_file():
        phantom_stats = simulate_phantom(paths, cfg, system, seed, progress)
        if cache is not None:
            cache.put("phantom", phantom_key, phantom_stats)
    jobs = []
    for i, name in enumerate(names):
        hit = cache.get(name, keys[name]) if cache is not None else None
        if hit is not None and (paths.raw / name / "ct.npz").is_file():
            results[name] = hit
        elif specimens is None or name in specimens:
            jobs.append(i)
    if jobs:
        args = [(paths, i, cfgs[names[i]], system, seed, progress and n_workers == 1) for i in jobs]

        def done(_, res):
            results[res["specimen"]] = res
            if cache is not None:
                cache.put(res["specimen"], keys[res["specimen"]], res)

        with executor("auto", None, n_workers, progress) as ex:
            ex.map(_specimen_job, args, desc="specimens", on_result=done)
    return SimulationResult(dict(sorted(results.items())), phantom_stats, time.perf_counter() - t0, system, cfg,
                            n_workers)


def metrics(result: SimulationResult) -> dict:
    """The 00 metrics from :func:`simulate_twin`'s result (every specimen in it).

    ``frames_per_second`` is frames per CPU-second of one worker process (rendering, labels, PNG writes;
    the CT and the phantom excluded): a per-core rate that a busy machine does not distort much.
    ``initial_misalignment_mm`` is the mean and std over sampled frames of the contour distance between
    the true cut and the cut placed with the recorded tracking and the released calibration (paper:
    1.13 +- 0.606 mm); ``required_correction_mm`` the fiducial displacement of the rigid correction each
    frame needs (the labeling stage discards frames above 1 mm; paper: 18.7 %).
    """
    specs = result.specimens
    recs = [r for s in specs.values() for r in s["records"]]
    mis = np.array([m for r in recs for m in r["misalignment_mm"]], dtype=float)
    req = np.array([m for r in recs for m in r["required_correction_mm"]], dtype=float)
    n_frames = int(sum(s["n_frames"] for s in specs.values()))
    render_s = float(sum(s["render_seconds"] for s in specs.values()))
    full = sum(r["full_pixels"] for r in recs)
    vis = sum(r["visible_pixels"] for r in recs)
    return {
        "n_specimens": len(specs),
        "n_records": len(recs),
        "n_frames": n_frames,
        "n_phantom_frames": int(result.phantom["n_frames"]) if result.phantom else 0,
        "frames_with_bone_fraction": float(sum(r["bone_in_view"] for r in recs) / max(n_frames, 1)),
        "visible_bone_fraction": float(vis / full) if full else float("nan"),
        "frames_per_second": float(n_frames / render_s) if render_s > 0 else float("nan"),
        "wall_seconds": float(result.wall_seconds),
        "n_workers": int(result.n_workers),
        "initial_misalignment_mm": {"mean": float(np.mean(mis)) if len(mis) else float("nan"),
                                    "std": float(np.std(mis)) if len(mis) else float("nan"),
                                    "n_frames": int(len(mis))},
        "required_correction_mm": {"mean": float(np.mean(req)) if len(req) else float("nan"),
                                   "fraction_over_1mm": float(np.mean(req > 1.0)) if len(req) else float("nan")},
        "temporal_offset_ms": float(result.system.temporal_offset_ms),
        "calibration_error_deg": float(geometry.rotation_angle_deg(
            geometry.invert_transform(geometry.released_calibration()) @ result.system.calibration)),
    }


def specimen_table(result: SimulationResult) -> pd.DataFrame:
    """Per-specimen statistics: frames, visible bone fraction, misalignment, per record group."""
    rows = []
    for name, s in result.specimens.items():
        for g in GROUPS:
            rs = [r for r in s["records"] if r["bone"] == g]
            mis = [m for r in rs for m in r["misalignment_mm"]]
            full = sum(r["full_pixels"] for r in rs)
            rows.append({"specimen": name, "bone": g, "frames": sum(r["n_frames"] for r in rs),
                         "bone_in_view": sum(r["bone_in_view"] for r in rs) / max(1, sum(r["n_frames"] for r in rs)),
                         "visible_fraction": sum(r["visible_pixels"] for r in rs) / full if full else float("nan"),
                         "misalignment_mm": float(np.mean(mis)) if mis else float("nan")})
    return pd.DataFrame(rows)


def specimen_names(P: TwinConfig) -> list[str]:
    """Specimen folder names of a twin simulated with ``P``."""
    return [twin_specimen_name(i) for i in range(int(P.n_specimens))]


# ----------------------------------------------------------------------------- figures


def _middle_frame(paths: Paths, specimen: str, record: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ts = dataset.image_timestamps(paths.raw / specimen / record / "images")
    t = int(ts[len(ts) // 2])
    img = dataset.read_image(paths.raw / specimen / record / "images" / f"{t}.png")
    full = dataset.read_label(truth_dir(paths) / specimen / record / dataset.LABELS_FULL / f"{t}_label.png", img.shape)
    vis = dataset.read_label(truth_dir(paths) / specimen / record / dataset.LABELS / f"{t}_label.png", img.shape)
    return img, full, vis


def figure_example_frames(paths: Paths, specimen: str, records=("record01", "record04", "record07", "record09")):
    """Middle frames of four records (tibia, fibula, foot dorsal, foot lateral): image above, labels below."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(records), figsize=(3.2 * len(records), 5.6))
    bones = {r: g for r, g, _, _ in RECORDS}
    for k, rec in enumerate(records):
        img, full, vis = _middle_frame(paths, specimen, rec)
        axes[0, k].imshow(img, cmap="gray", vmin=0, vmax=255)
        axes[0, k].set_title(f"{specimen}/{rec} ({bones[rec]})", fontsize=8)
        axes[1, k].imshow(overlay(img, [(full & ~vis, (0.9, 0.15, 0.1)), (vis, (0.1, 0.9, 0.2))]))
        for a in axes[:, k]:
            a.set_xticks([])
            a.set_yticks([])
    axes[1, 0].set_ylabel("full (red) / visible (green)")
    fig.tight_layout()
    return fig


def figure_anatomy_and_sweeps(paths: Paths, specimen: str, max_faces: int = 4000):
    """3D view of the true bones, the skin, and where every record's image top centre went."""
    import json

    import matplotlib.pyplot as plt

    system = json.loads((paths.raw / "system.json").read_text())
    calib = np.asarray(json.loads((truth_dir(paths) / "system.json").read_text())["calibration"])
    top_centre = np.array([0.5 * system["image_width"] * system["spacing_mm"][0], 0.0, 0.0, 1.0])
    fig = plt.figure(figsize=(6.5, 8))
    ax = fig.add_subplot(projection="3d")
    colours = {"tibia": "tab:blue", "fibula": "tab:orange", "foot": "tab:green"}
    for f in sorted((truth_dir(paths) / specimen / "meshes").glob("*.stl")):
        m = dataset.read_mesh(f)
        verts, tri = decimate(m.vertices, m.faces, max_faces)
        alpha, colour = (0.06, "peachpuff") if f.stem == "skin" else (0.45, "0.75")
        ax.plot_trisurf(verts[:, 0], verts[:, 1], tri, verts[:, 2], color=colour, alpha=alpha, linewidth=0,
                        shade=f.stem != "skin")
    shown = set()
    for rec, group, _, _ in RECORDS:
        f = truth_dir(paths) / specimen / rec / "poses.csv"
        if not f.is_file():
            continue
        df = pd.read_csv(f)
        pose = geometry.pose_from_params(df[list(geometry.POSE_COLUMNS)].to_numpy())
        p = (pose @ calib @ top_centre)[:, :3]
        ax.plot(p[:, 0], p[:, 1], p[:, 2], color=colours[group], lw=2.5, zorder=10,
                label=None if group in shown else group)
        shown.add(group)
    lo, hi = np.array([ax.get_xlim(), ax.get_ylim(), ax.get_zlim()]).T
    ax.set_box_aspect(hi - lo)
    ax.set_xlabel("x, lateral (mm)")
    ax.set_ylabel("y, anterior (mm)")
    ax.set_zlabel("z (mm)")
    ax.view_init(elev=15, azim=-60)
    ax.legend(title="probe face path", loc="upper left")
    ax.set_title(f"{specimen}: bones, skin and sweeps (CT frame)")
    return fig


def figure_statistics(result: SimulationResult):
    """Per-frame initial misalignment and required correction; visible-bone fraction per specimen and bone."""
    import matplotlib.pyplot as plt

    recs = [r for s in result.specimens.values() for r in s["records"]]
    mis = np.array([m for r in recs for m in r["misalignment_mm"]])
    req = np.array([m for r in recs for m in r["required_correction_mm"]])
    table = specimen_table(result)
    fig, ax = plt.subplots(1, 3, figsize=(14, 3.6))
    ax[0].hist(mis, bins=40, color="tab:blue")
    pub = PUBLISHED["initial_misalignment_mean_mm"].value
    ax[0].axvline(pub, color="k", ls="--", label=f"paper mean {pub:g} mm")
    ax[0].set_xlabel("initial misalignment (mm)")
    ax[0].set_ylabel("frames")
    ax[0].legend()
    ax[1].hist(req, bins=40, color="tab:orange")
    ax[1].axvline(1.0, color="k", ls="--", label="discard above 1 mm")
    ax[1].set_xlabel("required correction, mean fiducial displacement (mm)")
    ax[1].legend()
    piv = table.pivot(index="specimen", columns="bone", values="visible_fraction")[list(GROUPS)]
    piv.plot.bar(ax=ax[2], rot=0)
    ax[2].set_ylabel("visible / full label pixels")
    fig.tight_layout()
    return fig


def check_metrics(metrics: dict, P: TwinConfig) -> None:
    """Sanity of a simulated twin: frames and specimens as configured, an initial misalignment of the paper's
    order (a simulator setting, paper 1.13 mm), and bone visible in some but not all of the image."""
    mis = metrics["initial_misalignment_mm"]["mean"]
    assert metrics["n_frames"] > 0 and metrics["n_specimens"] == P.n_specimens, metrics["n_specimens"]
    assert 0.5 < mis < 2.0, f"initial misalignment {mis:.2f} mm is not of the paper's order (1.13 mm)"
    assert 0.05 < metrics["visible_bone_fraction"] < 0.95, metrics["visible_bone_fraction"]
