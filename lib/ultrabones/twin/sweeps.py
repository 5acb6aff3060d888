"""Random processes and sweeps: where a record's probe goes over a bone, and the hand's natural motion on the way.

A smooth random signal of time (:class:`SmoothProcess`, a sum of random sinusoids) drives the hand: speed,
tilt, roll, lateral wobble and pressure (:class:`HandMotion`) along a sweep's path over a bone
(:func:`plan_sweep`); :func:`image_planes` turns them into the true image planes, the probe face on the skin.
The same signal drives the recorded-pose drift of a record and the phantom session's motion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from ultrabones.core import geometry
from ultrabones.core.errors import ParamsError
from ultrabones.twin import anatomy, bmode
from ultrabones.twin.config import TwinConfig


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
