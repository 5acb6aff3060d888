"""Procedural lower-leg anatomy of the digital twin: bones and skin (its CT volume: :mod:`ultrabones.twin.ct_scan`).

Every shape is *star-shaped* and given analytically, so that the same
description yields a watertight triangle mesh (for ray casting and labels) and
an exact inside test (for the CT volume); the two agree to the facet chord.

- :class:`Tube`: a generalised cylinder along the CT ``z`` axis, one
  star-shaped cross-section per level (tibia, fibula, skin). Its ends close on
  a pole, so the mesh is watertight.
- :class:`Blob`: a star-shaped solid around a centre, an ellipsoid with smooth
  low-order bumps (talus, calcaneus, navicular, cuboid).

CT frame (mm): ``z`` along the leg (proximal +), ``y`` anterior, ``x`` lateral
(a right leg), the sole near ``z = 0``. The foot points along ``+y``, so its
dorsum faces ``+z``. Sizes are those of adult bones (tibia about 340 mm long,
shaft about 22 mm across with its triangular section and anterior crest;
fibula 13 mm thick, lateral and posterior to it, reaching lower than the
medial malleolus), scaled and shaped per specimen like different donors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import trimesh
from scipy.ndimage import gaussian_filter1d, maximum_filter1d

#: Bones of a specimen, in the order they are merged; the record groups they belong to.
BONE_GROUPS = {"tibia": "tibia", "fibula": "fibula", "talus": "foot", "calcaneus": "foot",
               "navicular": "foot", "cuboid": "foot"}


# ----------------------------------------------------------------------------- shapes


def _ellipse_radius(theta: np.ndarray, ax: np.ndarray, ay: np.ndarray) -> np.ndarray:
    """Radius (mm) of an axis-aligned ellipse with semi-axes ``ax, ay`` (mm) in direction ``theta`` (rad)."""
    return 1.0 / np.sqrt((np.cos(theta) / ax) ** 2 + (np.sin(theta) / ay) ** 2)


@dataclass(frozen=True)
class Tube:
    """A generalised cylinder along CT ``z`` with star-shaped cross-sections.

    Parameters
    ----------
    name : bone (or ``skin``) name.
    z : (K,) strictly increasing levels (mm, CT z).
    centre : (K, 2) cross-section centres (mm, CT x and y).
    radius : (K, J) radius (mm) at angles ``theta_j = 2 pi j / J`` (from CT +x
        towards +y) around the centre. ``radius[0]`` and ``radius[-1]`` must be
        zero: the ends close on a pole.
    """

    name: str
    z: np.ndarray
    centre: np.ndarray
    radius: np.ndarray

    def __post_init__(self):
        if np.any(np.diff(self.z) <= 0):
            raise ValueError(f"Tube {self.name}: levels must increase strictly")
        if self.radius[0].max() > 1e-9 or self.radius[-1].max() > 1e-9:
            raise ValueError(f"Tube {self.name}: end levels must have zero radius (poles)")

    @property
    def theta(self) -> np.ndarray:
        j = self.radius.shape[1]
        return 2.0 * np.pi * np.arange(j) / j

    def mesh(self) -> trimesh.Trimesh:
        """Watertight triangle mesh (CT mm): rings of the inner levels and two poles."""
        k, j = self.radius.shape
        th = self.theta
        rings = np.empty((k - 2, j, 3))
        rings[..., 0] = self.centre[1:-1, None, 0] + self.radius[1:-1] * np.cos(th)
        rings[..., 1] = self.centre[1:-1, None, 1] + self.radius[1:-1] * np.sin(th)
        rings[..., 2] = self.z[1:-1, None]
        bottom = np.array([[*self.centre[0], self.z[0]]])
        top = np.array([[*self.centre[-1], self.z[-1]]])
        verts = np.concatenate([bottom, rings.reshape(-1, 3), top])
        idx = 1 + np.arange((k - 2) * j).reshape(k - 2, j)
        a, b = idx[:-1], np.roll(idx[:-1], -1, axis=1)
        c, d = idx[1:], np.roll(idx[1:], -1, axis=1)
        side = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
        first, last = idx[0], idx[-1]
        cap0 = np.stack([np.zeros(j, int), np.roll(first, -1), first], -1)
        cap1 = np.stack([np.full(j, len(verts) - 1), last, np.roll(last, -1)], -1)
        faces = np.concatenate([cap0, side, cap1])
        return trimesh.Trimesh(verts, faces, process=False)

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        """Radial signed distance (mm, negative inside) of CT points ``(N, 3)``.

        Radial (within the cross-section), not Euclidean: exact on the surface
        and of the right sign everywhere, which is what the CT's partial-volume
        edge needs. Points beyond the end levels are outside (+inf).
        """
        p = np.asarray(points, dtype=float)
        kf = np.interp(p[:, 2], self.z, np.arange(len(self.z)), left=np.nan, right=np.nan)
        out = np.full(len(p), np.inf)
        ok = np.isfinite(kf)
        if not ok.any():
            return out
        kf = kf[ok]
        k0 = np.minimum(np.floor(kf).astype(int), len(self.z) - 2)
        wk = kf - k0
        cx = self.centre[k0, 0] * (1 - wk) + self.centre[k0 + 1, 0] * wk
        cy = self.centre[k0, 1] * (1 - wk) + self.centre[k0 + 1, 1] * wk
        dx, dy = p[ok, 0] - cx, p[ok, 1] - cy
        j = self.radius.shape[1]
        jf = np.mod(np.arctan2(dy, dx), 2 * np.pi) / (2 * np.pi) * j
        j0 = np.floor(jf).astype(int) % j
        j1 = (j0 + 1) % j
        wj = jf - np.floor(jf)
        r = ((self.radius[k0, j0] * (1 - wj) + self.radius[k0, j1] * wj) * (1 - wk)
             + (self.radius[k0 + 1, j0] * (1 - wj) + self.radius[k0 + 1, j1] * wj) * wk)
        out[ok] = np.hypot(dx, dy) - r
        return out

    def signed_distance_grid(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """:meth:`signed_distance` on the grid ``x (nx,) * y (ny,) * z (nz,)`` (mm) -> (nz, ny, nx) float32."""
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.float32)
        kf = np.interp(z, self.z, np.arange(len(self.z)), left=np.nan, right=np.nan)
        out = np.full((len(z), len(y), len(x)), np.inf, dtype=np.float32)
        j = self.radius.shape[1]
        for m in np.flatnonzero(np.isfinite(kf)):
            k0 = min(int(kf[m]), len(self.z) - 2)
            w = kf[m] - k0
            c = (self.centre[k0] * (1 - w) + self.centre[k0 + 1] * w).astype(np.float32)
            ring = (self.radius[k0] * (1 - w) + self.radius[k0 + 1] * w).astype(np.float32)
            dx = x[None, :] - c[0]
            dy = y[:, None] - c[1]
            jf = np.arctan2(dy, dx) * np.float32(j / (2 * np.pi))
            jf = np.where(jf < 0, jf + j, jf)
            j0 = jf.astype(np.int32)
            wj = jf - j0
            j0 %= j
            r = ring[j0] * (1 - wj) + ring[(j0 + 1) % j] * wj
            out[m] = np.sqrt(dx * dx + dy * dy) - r
        return out

    def bounds(self) -> np.ndarray:
        """(2, 3) axis-aligned bounds (mm)."""
        th = self.theta
        x = self.centre[:, None, 0] + self.radius * np.cos(th)
        y = self.centre[:, None, 1] + self.radius * np.sin(th)
        return np.array([[x.min(), y.min(), self.z[0]], [x.max(), y.max(), self.z[-1]]])

    def section_points(self, z: float, offset: float = 0.0) -> np.ndarray:
        """(J, 2) boundary points (mm) of the cross-section at height ``z``, pushed out by ``offset``; empty outside."""
        if not (self.z[0] < z < self.z[-1]):
            return np.zeros((0, 2))
        kf = np.interp(z, self.z, np.arange(len(self.z)))
        k0 = min(int(kf), len(self.z) - 2)
        w = kf - k0
        c = self.centre[k0] * (1 - w) + self.centre[k0 + 1] * w
        r = self.radius[k0] * (1 - w) + self.radius[k0 + 1] * w
        if r.max() <= 0:
            return np.zeros((0, 2))
        th = self.theta
        return c + (r + offset)[:, None] * np.stack([np.cos(th), np.sin(th)], 1)


#: Monomials of a unit direction (d_x, d_y, d_z) used for a Blob's smooth bumps.
_BUMP_POWERS = np.array([(a, b, c) for a in range(4) for b in range(4) for c in range(4) if 1 <= a + b + c <= 3])


@dataclass(frozen=True)
class Blob:
    """A star-shaped solid: an axis-aligned ellipsoid with smooth bumps.

    ``r(d) = r_ellipsoid(d) * (1 + sum_m c_m d^m)`` for unit directions ``d``,
    with ``d^m`` the monomials of degree 1 to 3 of ``d``'s components.

    Parameters
    ----------
    name : bone name.
    centre : (3,) CT position (mm).
    semi_axes : (3,) semi-axes along CT x, y, z (mm).
    bumps : (M,) coefficients of the monomials of ``_BUMP_POWERS`` (dimensionless).
    """

    name: str
    centre: np.ndarray
    semi_axes: np.ndarray
    bumps: np.ndarray = field(default_factory=lambda: np.zeros(len(_BUMP_POWERS)))

    def radius(self, dirs: np.ndarray) -> np.ndarray:
        """Radius (mm) along unit directions ``(N, 3)``."""
        d = np.asarray(dirs, dtype=float)
        r_e = 1.0 / np.sqrt(((d / self.semi_axes) ** 2).sum(axis=1))
        pw = [np.stack([np.ones(len(d)), d[:, k], d[:, k] ** 2, d[:, k] ** 3]) for k in range(3)]
        bump = np.zeros(len(d))
        for (a, b, c), coef in zip(_BUMP_POWERS, self.bumps):
            bump += coef * pw[0][a] * pw[1][b] * pw[2][c]
        return r_e * (1.0 + bump)

    def mesh(self, subdivisions: int = 4) -> trimesh.Trimesh:
        """Watertight mesh (CT mm) from an icosphere's directions."""
        ico = trimesh.creation.icosphere(subdivisions=subdivisions)
        d = ico.vertices / np.linalg.norm(ico.vertices, axis=1, keepdims=True)
        return trimesh.Trimesh(self.centre + d * self.radius(d)[:, None], ico.faces.copy(), process=False)

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        """Radial signed distance (mm, negative inside) of CT points ``(N, 3)``."""
        q = np.asarray(points, dtype=float) - self.centre
        rho = np.linalg.norm(q, axis=1)
        d = q / np.maximum(rho, 1e-9)[:, None]
        d[rho < 1e-9] = (1.0, 0.0, 0.0)
        return rho - self.radius(d)

    def bounds(self) -> np.ndarray:
        """(2, 3) axis-aligned bounds (mm), with the bumps' worst case."""
        grow = 1.0 + np.abs(self.bumps).sum()
        return np.stack([self.centre - self.semi_axes * grow, self.centre + self.semi_axes * grow])

    def section_points(self, z: float, offset: float = 0.0, n: int = 72) -> np.ndarray:
        """(n, 2) points (mm) bounding the slice at ``z`` of the bumped ellipsoid grown by ``offset`` (mm)."""
        a = self.semi_axes * (1.0 + np.abs(self.bumps).sum()) + offset
        t = (z - self.centre[2]) / a[2]
        if abs(t) >= 1:
            return np.zeros((0, 2))
        s = np.sqrt(1 - t * t)
        th = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return self.centre[:2] + np.stack([a[0] * s * np.cos(th), a[1] * s * np.sin(th)], 1)


Shape = Tube | Blob


# ----------------------------------------------------------------------------- a specimen


@dataclass(frozen=True)
class Anatomy:
    """One specimen's anatomy in CT space (mm).

    Attributes
    ----------
    bones : bone name -> shape (``tibia``, ``fibula``, ``talus``, ``calcaneus``, ``navicular``, ``cuboid``).
    skin : the skin surface (a :class:`Tube`).
    fat_mm : subcutaneous fat thickness (mm), for the CT and the B-mode layers.
    landmarks : named CT points (mm) and values used to plan sweeps and place the marker.
    """

    bones: dict
    skin: Tube
    fat_mm: float
    landmarks: dict

    def meshes(self) -> dict[str, trimesh.Trimesh]:
        """Bone name -> watertight mesh (CT mm)."""
        return {name: shape.mesh() for name, shape in self.bones.items()}

    def bone_model(self) -> trimesh.Trimesh:
        """The bones merged into one mesh (what a perfect CT segmentation gives)."""
        return trimesh.util.concatenate(list(self.meshes().values()))

    def skin_mesh(self) -> trimesh.Trimesh:
        return self.skin.mesh()


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Unit-variance Gaussian-smoothed noise of length ``n`` (correlation length ``sigma`` samples)."""
    x = gaussian_filter1d(rng.standard_normal(n + int(8 * sigma)), sigma)[int(4 * sigma):int(4 * sigma) + n]
    return x / max(x.std(), 1e-12)


def _cap(z: np.ndarray, lo: float, hi: float, length: float) -> np.ndarray:
    """Rounded-end envelope in [0, 1]: 0 at ``lo`` and ``hi``, 1 beyond ``length`` mm from them."""
    a = np.clip((z - lo) / length, 0, 1)
    b = np.clip((hi - z) / length, 0, 1)
    return np.sqrt(1 - (1 - a) ** 2) * np.sqrt(1 - (1 - b) ** 2)


def make_anatomy(rng: np.random.Generator, dz: float = 1.0, n_theta: int = 72) -> Anatomy:
    """A random adult right lower leg and hindfoot.

    Parameters
    ----------
    rng : random generator (the specimen's).
    dz : level spacing of the tubes (mm).
    n_theta : angles per cross-section.

    Returns
    -------
    Anatomy in CT mm; landmarks hold ``plafond_z``, ``tibia_z`` (usable range),
    ``fibula_z``, ``talus`` (centre), and the bones' axis functions.
    """
    s = float(np.clip(rng.normal(1.0, 0.06), 0.88, 1.12))  # donor size
    th = 2 * np.pi * np.arange(n_theta) / n_theta

    def bumps(amp):
        return rng.normal(0, amp, len(_BUMP_POWERS)) / np.sqrt(len(_BUMP_POWERS))

    # --- hindfoot: talus first, everything else placed around it with joint gaps
    gap = 3.0
    tal_axes = np.array([14.0, 26.0, 14.0]) * s * rng.uniform(0.95, 1.05, 3)
    calc_axes = np.array([15.0, 38.0, 17.0]) * s * rng.uniform(0.95, 1.05, 3)
    heel_pad = 12.0 * rng.uniform(0.85, 1.2)
    calc_c = np.array([3.0 * s, -22.0 * s, heel_pad + calc_axes[2] * 1.04])
    tal_c = np.array([0.0, calc_c[1] + 26.0 * s, calc_c[2] + calc_axes[2] * 1.04 + gap + tal_axes[2] * 1.04])
    nav_axes = np.array([15.0, 7.0, 12.0]) * s
    nav_c = np.array([tal_c[0] - 6 * s, tal_c[1] + tal_axes[1] * 1.04 + gap + nav_axes[1] * 1.04, tal_c[2] - 3 * s])
    cub_axes = np.array([11.0, 11.0, 11.0]) * s
    cub_c = np.array([tal_c[0] + 12 * s, calc_c[1] + calc_axes[1] * 1.04 + gap + cub_axes[1] * 1.04, calc_c[2] + 2 * s])
    b4 = 0.035  # bump amplitude: at most ~4 % of the radius
    blobs = {
        "talus": Blob("talus", tal_c, tal_axes, np.clip(bumps(b4), -b4 / 3, b4 / 3)),
        "calcaneus": Blob("calcaneus", calc_c, calc_axes, np.clip(bumps(b4), -b4 / 3, b4 / 3)),
        "navicular": Blob("navicular", nav_c, nav_axes, np.clip(bumps(b4), -b4 / 3, b4 / 3)),
        "cuboid": Blob("cuboid", cub_c, cub_axes, np.clip(bumps(b4), -b4 / 3, b4 / 3)),
    }

    # --- tibia: triangular shaft, distal flare with the plafond and medial malleolus, proximal plateau
    plafond = tal_c[2] + tal_axes[2] * 1.04 + gap
    length = 340.0 * s * rng.uniform(0.95, 1.05)
    top = plafond + length
    r_shaft = 11.0 * s * rng.uniform(0.9, 1.1)
    tri = rng.uniform(0.12, 0.2)  # triangularity of the shaft
    mall_ax, mall_ay = 5.5 * s, 8.0 * s
    mall_len = 14.0 * s * rng.uniform(0.9, 1.1)
    # medial malleolus a gap medial to the talus; the plafond spans it and the talus
    mc = np.array([tal_c[0] - tal_axes[0] * 1.04 - gap - mall_ax, tal_c[1] + 2 * s])
    ax_pl = mall_ax + 0.5 * gap + tal_axes[0] * 1.04
    ay_pl = 17.0 * s
    dist_cx = mc[0] - mall_ax + ax_pl
    zt = np.concatenate([np.linspace(plafond - mall_len, plafond - 0.4, 12),
                         np.arange(plafond, top + 1e-9, dz)[:-1], [top]])
    u = (zt - plafond) / length
    uc = np.clip(u, 0, 1)
    n = len(zt)
    bow = rng.normal(0, 3.0)
    wiggle = _smooth_noise(rng, n, 40 / dz)
    f_d = np.exp(-uc / 0.07)
    f_p = np.exp(-(1 - uc) / 0.06)
    ax = r_shaft * (1 + 0.03 * wiggle) + (ax_pl - r_shaft) * f_d + 2.3 * r_shaft * f_p
    ay = r_shaft * 1.05 + (ay_pl - r_shaft * 1.05) * f_d + 1.2 * r_shaft * f_p
    triang = tri * (1 - f_d) * (1 - f_p)
    cx = (tal_c[0] - 2 * s) + (dist_cx - tal_c[0] + 2 * s) * f_d + bow * np.sin(np.pi * uc)
    cy = tal_c[1] - 2.0 * s + 1.5 * bow * np.sin(np.pi * uc) - 4.0 * s * f_p
    rad = _ellipse_radius(th[None], ax[:, None], ay[:, None])
    rad = rad * (1 + triang[:, None] * np.cos(3 * (th[None] - np.pi / 2)))
    tub = np.exp(-((u - 0.86) / 0.025) ** 2)[:, None] * np.clip(np.cos(th - np.pi / 2), 0, None)[None] ** 4
    rad = rad + 4.0 * s * tub  # tibial tuberosity
    centre = np.stack([cx, cy], 1)
    below = zt < plafond
    # below the plafond only the medial malleolus remains
    m_env = np.sqrt(np.clip((zt[below] - (plafond - mall_len)) / mall_len, 0, 1))
    centre[below] = mc
    rad[below] = _ellipse_radius(th[None], mall_ax * m_env[:, None] + 1e-9, mall_ay * m_env[:, None] + 1e-9)
    rad[~below] = rad[~below] * _cap(zt[~below], plafond - 1.0, top, 6.0)[:, None]
    rad[0] = rad[-1] = 0.0
    tibia = Tube("tibia", zt, centre, rad)

    # --- fibula: lateral and posterior of the tibia, a gap from it, lateral malleolus lower than the medial
    f_bottom = tal_c[2] - 4.0 * s
    f_top = top - 16.0 * s
    zf = np.concatenate([[f_bottom], np.arange(f_bottom + dz, f_top, dz), [f_top]])
    uf = (zf - f_bottom) / (f_top - f_bottom)
    r_fs = 6.5 * s * rng.uniform(0.9, 1.1)
    rf = (r_fs + (9.0 * s - r_fs) * np.exp(-uf / 0.1) + (12.0 * s - r_fs) * np.exp(-(1 - uf) / 0.05))
    phi = np.radians(rng.uniform(-35, -20))  # direction of the fibula from the tibia (lateral-posterior)
    # tibia radius and centre along phi at each fibula level (held at the plafond below it)
    zq = np.clip(zf, plafond + 0.5, top - 8)
    t_c = np.stack([np.interp(zq, zt, tibia.centre[:, 0]), np.interp(zq, zt, tibia.centre[:, 1])], 1)
    jphi = int(round(phi / (2 * np.pi) * n_theta)) % n_theta
    t_r = np.interp(zq, zt, tibia.radius[:, jphi])
    # keep the lateral malleolus a gap lateral to the talus
    dist = t_r + gap + 0.5 + rf * 1.06
    fc = t_c + dist[:, None] * np.array([np.cos(phi), np.sin(phi)])
    min_x = tal_c[0] + tal_axes[0] * 1.04 + gap + rf * 1.06
    low = zf < tal_c[2] + tal_axes[2] * 1.1
    fc[low, 0] = np.maximum(fc[low, 0], min_x[low])
    fc = fc + 0.4 * np.stack([_smooth_noise(rng, len(zf), 50 / dz), _smooth_noise(rng, len(zf), 50 / dz)], 1)
    frad = rf[:, None] * (1 + 0.06 * np.cos(3 * th[None] + rng.uniform(0, 2 * np.pi)) + 0.04 * np.cos(2 * th[None]))
    frad = frad * _cap(zf, f_bottom, f_top, 8.0)[:, None]
    frad[0] = frad[-1] = 0.0
    fibula = Tube("fibula", zf, fc, frad)

    bones = {"tibia": tibia, "fibula": fibula, **blobs}

    # --- skin: smoothed radial hull of the bones' sections, offset by soft tissue, around a moving centre
    fat = float(rng.uniform(3.0, 8.0))
    z_lo = calc_c[2] - calc_axes[2] * 1.04 - heel_pad
    z_hi = top + 10.0
    zs = np.concatenate([[z_lo], np.arange(z_lo + 2.0, z_hi, 2.0), [z_hi]])
    calf = float(rng.uniform(0.85, 1.2))
    ts = th
    level_pts = []
    for z in zs:
        zc = np.clip(z, z_lo + 6, z_hi - 6)
        pts = []
        for name, shape in bones.items():
            off = 4.0 + 0.6 * fat if name == "tibia" else 5.0 + 0.6 * fat
            pts.append(shape.section_points(zc, off))
        uu = (zc - plafond) / length
        if uu > 0.02:  # muscle compartments above the ankle: calf (posterior) and anterior
            tcx = np.interp(zc, zt, tibia.centre[:, 0])
            tcy = np.interp(zc, zt, tibia.centre[:, 1])
            g = np.clip(np.sin(np.pi * np.clip(uu * 1.25, 0, 1)) ** 0.8, 0.25, 1) * calf * s
            for (ox, oy, a_, b_) in ((8, -32, 30, 26), (20, -6, 12, 14)):
                c = np.array([tcx + ox * s, tcy + oy * g])
                pts.append(c + np.stack([(a_ * g + fat) * np.cos(ts), (b_ * g + fat) * np.sin(ts)], 1))
        level_pts.append(np.concatenate([p for p in pts if len(p)]) if any(len(p) for p in pts) else None)
    # a level that meets no bone and no muscle (between the hindfoot's bones and the shank, in about 1% of
    # legs) takes the hull of its nearest level that does
    have = np.flatnonzero([p is not None for p in level_pts])
    if not len(have):
        raise ValueError("make_anatomy: no bone section at any level of the skin")
    level_pts = [p if p is not None else level_pts[int(have[np.argmin(np.abs(have - k))])]
                 for k, p in enumerate(level_pts)]
    scen = np.array([p.mean(axis=0) for p in level_pts])
    scen = np.stack([gaussian_filter1d(scen[:, i], 3.0, mode="nearest") for i in range(2)], 1)
    srad = np.zeros((len(zs), n_theta))
    for k, pts in enumerate(level_pts):
        c = scen[k]
        ang = np.mod(np.arctan2(pts[:, 1] - c[1], pts[:, 0] - c[0]), 2 * np.pi)
        rho = np.hypot(pts[:, 0] - c[0], pts[:, 1] - c[1])
        bins = np.floor(ang / (2 * np.pi) * n_theta).astype(int) % n_theta
        raw = np.zeros(n_theta)
        np.maximum.at(raw, bins, rho)
        empty = raw == 0
        if empty.any():
            full = np.flatnonzero(~empty)
            raw[empty] = np.interp(np.flatnonzero(empty), full, raw[full], period=n_theta)
        # a point in bin j lies between angles j and j+1: both must reach it
        hull = np.maximum(raw, np.roll(raw, 1))
        srad[k] = np.maximum(gaussian_filter1d(maximum_filter1d(hull, 5, mode="wrap"), 1.5, mode="wrap"), hull)
    srad = np.maximum(gaussian_filter1d(srad, 1.5, axis=0, mode="nearest"),
                      np.maximum(srad, np.maximum(np.roll(srad, 1, 0), np.roll(srad, -1, 0))))
    srad = srad * _cap(zs, z_lo, z_hi, 8.0)[:, None]
    srad[0] = srad[-1] = 0.0
    skin = Tube("skin", zs, scen, srad)

    landmarks = {
        "size": s,
        "plafond_z": float(plafond),
        "tibia_top_z": float(top),
        "fibula_z": (float(f_bottom), float(f_top)),
        "talus": tal_c, "calcaneus": calc_c, "navicular": nav_c, "cuboid": cub_c,
    }
    return Anatomy(bones=bones, skin=skin, fat_mm=fat, landmarks=landmarks)
