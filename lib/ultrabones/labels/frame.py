"""Automatic bone labels from a CT bone model and tracked ultrasound (paper Section 3.1).

The maths of one frame, as pure functions:

- :func:`surface_points` samples the point cloud ``C`` uniformly on the CT bone
  surface (with the surface normals).
- :func:`full_label` is the projection of the intersection
  ``I_t = {u in U_t | min_c |u - c| <= gamma}`` into the image: every pixel whose
  centre (mapped to CT by Eq. 1) lies within ``gamma`` (mm) of a point of ``C``.
- :class:`FrameObjective` evaluates Eq. 2 for a whole differential-evolution
  population at once; :func:`reference_objective` is Eq. 2 written straight
  from the paper's definition (every pixel to CT, KD-tree distance to ``C``),
  kept to test the fast one against.
- :func:`optimize_frame` maximises Eq. 2 with
  :func:`scipy.optimize.differential_evolution` over rotation (degrees) and
  translation (mm) perturbations in ``[-1, 1]^3`` applied as
  ``pose @ geometry.perturbation(rot, trans)`` (probe-marker frame), then
  validates the result (mean fiducial correction above 1 mm: discarded).
- :func:`optimize_sweep` labels the frames of a sweep in time order, each
  warm-started from its predecessor's correction by a local search
  (:func:`optimize_frame_warm`, :func:`pattern_search`), with
  :func:`optimize_frame` for a cold start and as the fallback when the local
  result fails validation; :func:`warm_start_after` continues a sweep cut in chunks.
- :func:`visible_label` removes from a full label the pixels in the acoustic
  shadow of the bone and those whose incidence angle exceeds 85 degrees.

Intensities ``f(u)`` are the 8-bit image values divided by 255 (so in
``[0, 1]``); the fiducial term is in mm. ``lambda`` therefore has the unit
1/mm. The orchestration over a dataset (Dask, resumable chunks, outputs) lives
in :mod:`ultrabones.labels.batch`; the global-registration baseline in
:mod:`ultrabones.labels.registration`.

How the fast objective stays exact
----------------------------------
A pixel centre ``u`` is within ``gamma`` of a point ``c`` iff
``d_plane(u, c)^2 + z_c^2 <= gamma^2`` where ``z_c`` is the out-of-plane
distance of ``c`` and ``d_plane`` the in-plane distance to its projection. So
``I_t`` is the union, over the points with ``|z_c| <= gamma``, of the pixels
within ``sqrt(gamma^2 - z_c^2)`` of their projection: a small stencil around
each such point. Only the points of ``C`` within a margin of the initial image
plane can reach it under any allowed perturbation (the margin bounds the
largest displacement the perturbation can cause over the image); they are
selected once per frame, and each population member transforms only those.
The union is deduplicated per member with a scatter/gather on a scratch array.
The result is the same pixel set as the KD-tree definition, up to floating
point ties at exactly ``gamma``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import differential_evolution
from scipy.spatial import cKDTree

from ultrabones.core import geometry
from ultrabones.core.errors import DatasetError, ParamsError

#: The paper's lambda candidates (1/mm, intensity in [0, 1]).
PAPER_LAMBDAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)

# Largest number of (member, pixel) cells in one scratch array (int32): 32 MB.
_SCRATCH_CELLS = 8_000_000


# ----------------------------------------------------------------------------- C, the CT point cloud


#: Share of an image's pixels whose mean intensity is its echo level (:func:`echo_level`).
ECHO_TOP_FRACTION = 0.01


def echo_level(image: np.ndarray) -> float:
    """Mean intensity (0..1 of full scale) of an image's brightest :data:`ECHO_TOP_FRACTION` of pixels.

    A B-mode frame that carries echoes has bright pixels (bone, fascia, speckle peaks): over the 246 real frames
    of ``shared/real_sweep`` and ``shared/reference_images`` this is 0.48 or more. A blank frame (probe lifted,
    acquisition dropped, a black image written in its place) has none: the labelling skips a frame below
    ``labeling.min_echo_level`` as ``no_echo`` rather than fit Eq. 2 to an image with nothing to match.

    Parameters
    ----------
    image : (H, W) uint8 (full scale 255) or float in [0, 1].
    """
    a = np.asarray(image)
    scale = 255.0 if a.dtype == np.uint8 else 1.0
    flat = a.astype(float).ravel() / scale
    if flat.size == 0:
        return 0.0
    k = max(1, int(np.ceil(ECHO_TOP_FRACTION * flat.size)))
    return float(np.partition(flat, flat.size - k)[flat.size - k:].mean())


def no_echo_message(image: np.ndarray, path, min_level: float) -> str | None:
    """The ``no_echo`` report message of a frame whose :func:`echo_level` is under ``min_level``, else None."""
    if min_level <= 0:
        return None
    level = echo_level(image)
    if level >= min_level:
        return None
    return (f"{path}: no echo (its brightest 1% of pixels average {level:.3f} of full scale, under "
            f"labeling.min_echo_level {min_level:g}); skipped, not labelled")


def surface_points(mesh, density_per_mm2: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Points sampled uniformly on the CT bone surface, with outward normals.

    Parameters
    ----------
    mesh : ``trimesh.Trimesh``, the CT bone model (CT frame, mm).
    density_per_mm2 : expected number of points per mm^2 of surface.
    seed : random seed (the same seed gives the same points).

    Returns
    -------
    points : (N, 3) float array, CT frame (mm), ``N = round(area * density)``.
    normals : (N, 3) float array, unit outward normals of the faces the points lie on.

    Raises
    ------
    ParamsError
        If the density is not positive.
    DatasetError
        If the mesh has no surface area.
    """
    if not density_per_mm2 > 0:
        raise ParamsError(f"labeling.density_per_mm2: must be positive, got {density_per_mm2!r}")
    area_faces = np.asarray(mesh.area_faces, dtype=float)
    area = float(area_faces.sum())
    if not area > 0:
        raise DatasetError("CT bone model has no surface area (empty or degenerate mesh)")
    n = int(round(area * density_per_mm2))
    rng = np.random.default_rng(seed)
    # Faces in proportion to their area, then uniform barycentric coordinates.
    face = rng.choice(len(area_faces), size=n, p=area_faces / area)
    r1, r2 = rng.random(n), rng.random(n)
    flip = r1 + r2 > 1.0
    r1[flip], r2[flip] = 1.0 - r1[flip], 1.0 - r2[flip]
    tri = np.asarray(mesh.triangles, dtype=float)[face]
    points = tri[:, 0] + r1[:, None] * (tri[:, 1] - tri[:, 0]) + r2[:, None] * (tri[:, 2] - tri[:, 0])
    normals = np.asarray(mesh.face_normals, dtype=float)[face]
    return points, normals


# ----------------------------------------------------------------------------- the fast kernel


def _stencil(gamma_mm: float, spacing: tuple[float, float]) -> np.ndarray:
    """Integer pixel offsets that can hold a pixel centre within ``gamma`` of a point
    whose nearest pixel centre is at offset (0, 0). (K, 2) as (du, dv)."""
    sx, sy = spacing
    ru, rv = int(np.floor(gamma_mm / sx + 0.5)), int(np.floor(gamma_mm / sy + 0.5))
    du, dv = np.meshgrid(np.arange(-ru, ru + 1), np.arange(-rv, rv + 1))
    du, dv = du.ravel(), dv.ravel()
    near_u = np.maximum(np.abs(du) - 0.5, 0.0) * sx
    near_v = np.maximum(np.abs(dv) - 0.5, 0.0) * sy
    keep = near_u**2 + near_v**2 <= gamma_mm**2
    return np.stack([du[keep], dv[keep]], axis=1)


def plane_margin_mm(image_shape, calib, spacing, bound_deg: float, bound_mm: float, gamma_mm: float) -> float:
    """Largest distance (mm) any image point can move under a perturbation in the bounds, plus gamma.

    The perturbation ``Delta`` acts in the probe-marker frame; a point ``r``
    (marker frame) moves by ``|Delta r - r| <= |t| + 2 sin(theta / 2) |r|``
    with ``|t| <= sqrt(3) bound_mm`` and ``theta`` the rotation angle of
    ``Delta``: for Euler angles each within ``bound_deg`` it is at most
    ``sqrt(3) bound_deg`` to first order; 2% is added for the higher orders
    (they are below 1e-4 relative at a few degrees).
    """
    h, w = image_shape
    r = np.linalg.norm(_corner_points(calib, spacing, h, w), axis=1).max()
    theta = np.radians(1.02 * np.sqrt(3.0) * bound_deg)
    return float(np.sqrt(3.0) * bound_mm + 2.0 * np.sin(theta / 2.0) * r + gamma_mm)


def _corner_points(calib, spacing, h, w) -> np.ndarray:
    """The four image corners in the probe-marker frame (mm)."""
    sx, sy = spacing
    ip = np.array([[0, 0, 0], [w * sx, 0, 0], [0, h * sy, 0], [w * sx, h * sy, 0]], float)
    return geometry.transform_points(np.asarray(calib, float), ip)


class FrameObjective:
    """Eq. 2 of one frame, evaluated for a whole population at once.

    Parameters
    ----------
    image : (H, W) uint8 or float array; uint8 is divided by 255, floats are used as given.
    pose : (4, 4) array, the recorded probe-marker pose in CT (mm).
    calib : (4, 4) array, image plane -> probe marker (mm).
    spacing : (sx, sy) mm per pixel.
    points : (N, 3) array, ``C`` in CT (mm).
    gamma_mm : intersection thickness ``gamma`` (mm).
    bound_deg, bound_mm : the perturbation bounds; points that no perturbation
        within them can bring within ``gamma`` of the image are dropped.
    fiducials : (F, 3) probe-marker fiducials (marker frame, mm).
    margin_mm : override the pre-selection margin (mm) when the perturbations
        are not of the ``[-bound, bound]`` Euler/translation kind (e.g. the
        global registration's, about another centre).
    region : ``"full"``: the mean runs over the whole intersection ``I_t``, as
        Eq. 2 is written. ``"first_hit"``: only over the part of ``I_t`` that
        faces the probe, the top-most ``2 gamma`` of ``I_t`` on each scan line
        (image column). The far side of the bone lies in its own acoustic
        shadow, whose edges coincide with the bone's outline; with the full
        intersection, sliding those dark flanks sideways into the bright tissue
        beside the shadow raises the mean intensity, so the optimum drifts away
        from the true pose. The first hit is where the paper's premise (bone
        perpendicular to the beam is bright) holds.

    Attributes
    ----------
    index : indices into ``points`` of the points kept near the plane.
    n_points : their number (0 means no bone can be in view).
    """

    def __init__(self, image, pose, calib, spacing, points, gamma_mm=0.3, bound_deg=1.0, bound_mm=1.0,
                 fiducials=geometry.PROBE_FIDUCIALS_MM, margin_mm: float | None = None, region: str = "full"):
        if region not in ("full", "first_hit"):
            raise ValueError(f"region must be 'full' or 'first_hit', got {region!r}")
        self.region = region
        image = np.asarray(image)
        if image.ndim != 2:
            raise ValueError(f"image must be (H, W), got shape {image.shape}")
        self.shape = image.shape
        self.f = (image.astype(np.float64) / 255.0 if image.dtype == np.uint8 else image.astype(np.float64)).ravel()
        self.spacing = (float(spacing[0]), float(spacing[1]))
        self.gamma = float(gamma_mm)
        # rows of I_t kept below the first hit of a column in "first_hit" mode: the band's own thickness
        self.first_hit_rows = max(1, int(round(2 * self.gamma / self.spacing[1])))
        self.pose = np.asarray(pose, float)
        self.calib = np.asarray(calib, float)
        self.fiducials = np.asarray(fiducials, float)
        self.margin = (plane_margin_mm(self.shape, calib, spacing, bound_deg, bound_mm, gamma_mm)
                       if margin_mm is None else float(margin_mm))
        h, w = self.shape
        sx, sy = self.spacing
        near, ip = geometry.points_in_slab(geometry.invert_transform(self.pose @ self.calib), points, self.margin,
                                           (w * sx, h * sy))
        # Near points in the probe-marker frame, sorted by their distance to the
        # unperturbed plane: a member's image-plane coordinates are
        # inv(calib) @ inv(Delta) @ q, and its out-of-plane distance differs from
        # the unperturbed one by an affine function of q, bounded over the points,
        # so each member only scans a slice of the sorted points.
        order = np.argsort(ip[:, 2], kind="stable")
        self.index = near[order]
        self.z0 = ip[order, 2]
        self.q = geometry.transform_points(geometry.invert_transform(self.pose), np.asarray(points, float)[self.index])
        self.calib_inv = geometry.invert_transform(self.calib)
        self.q_centre = _corner_points(self.calib, self.spacing, h, w).mean(axis=0)
        self.radius = float(np.linalg.norm(self.q - self.q_centre, axis=1).max()) if len(self.q) else 0.0
        self.stencil = _stencil(self.gamma, self.spacing)
        self._du = np.arange(self.stencil[:, 0].min(), self.stencil[:, 0].max() + 1)
        self._dv = np.arange(self.stencil[:, 1].min(), self.stencil[:, 1].max() + 1)
        self._stencil_mask = np.zeros((len(self._dv), len(self._du)), bool)
        self._stencil_mask[self.stencil[:, 1] - self._dv[0], self.stencil[:, 0] - self._du[0]] = True
        self._stencil_full = bool(self._stencil_mask.all())
        # Flat pixel index of each cell of the image padded by the stencil's reach (-1 outside).
        # Hits whose nearest pixel lies up to `pad` outside the image can still reach it;
        # their stencils reach `pad` further: the grid is padded by 2 * pad.
        self._pad = pad = int(max(np.abs(self._du).max(), np.abs(self._dv).max()))
        grid = np.full((h + 4 * pad, w + 4 * pad), -1, dtype=np.int64)
        grid[2 * pad:2 * pad + h, 2 * pad:2 * pad + w] = np.arange(h * w).reshape(h, w)
        self._pixel_of_padded = grid.ravel()
        dv_grid, du_grid = np.meshgrid(self._dv, self._du, indexing="ij")
        self._cell_offset = (dv_grid * (w + 4 * pad) + du_grid).ravel()  # stencil cell -> padded index step
        self._scratch = None

    @property
    def n_points(self) -> int:
        return len(self.index)

    # -- geometry of a population ------------------------------------------------

    @staticmethod
    def deltas(x: np.ndarray) -> np.ndarray:
        """(S, 4, 4) perturbations from parameters ``x`` (6, S): rotation (deg), translation (mm)."""
        x = np.asarray(x, float).reshape(6, -1)
        return geometry.perturbation(x[:3].T, x[3:].T)

    def band(self, deltas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The intersection ``I_t`` of each member as unique (member, pixel) pairs.

        Parameters
        ----------
        deltas : (S, 4, 4) perturbations (probe-marker frame).

        Returns
        -------
        member : (M,) int array, population index.
        pixel : (M,) int array, flat pixel index ``v * W + u``.
        point : (M,) int array, index into :attr:`index` of a point of ``C`` within
            ``gamma`` of that pixel (used for the normals of the incidence filter).
        """
        deltas = np.asarray(deltas, float).reshape(-1, 4, 4)
        s = len(deltas)
        h, w = self.shape
        sx, sy = self.spacing
        empty = np.zeros(0, dtype=np.int64)
        if self.n_points == 0:
            return empty, empty, empty
        m = self.calib_inv @ geometry.invert_transform(deltas)  # (S, 4, 4): marker -> IP
        a, b = m[:, 2, :3], m[:, 2, 3]  # z = a . q + b
        a0, b0 = self.calib_inv[2, :3], self.calib_inv[2, 3]
        da = a - a0
        shift = da @ self.q_centre + (b - b0)  # z - z0 at the centre of the image
        slack = np.linalg.norm(da, axis=1) * self.radius + 1e-9  # bound on the rest
        lo = np.searchsorted(self.z0, -self.gamma - shift - slack, side="left")
        hi = np.searchsorted(self.z0, self.gamma - shift + slack, side="right")
        rot, trans = m[:, :3, :3], m[:, :3, 3]
        # Per member, only its slice of the sorted points: one small matmul each.
        parts_c, parts_i, parts_k = [], [], []
        for j in np.flatnonzero(hi > lo):
            c = self.q[lo[j]:hi[j]] @ rot[j].T + trans[j]  # image-plane coordinates (mm)
            sel = np.flatnonzero(np.abs(c[:, 2]) <= self.gamma)
            if len(sel):
                parts_c.append(c[sel])
                parts_i.append(sel + lo[j])
                parts_k.append(np.full(len(sel), j))
        if not parts_c:
            return empty, empty, empty
        c, i, k = np.concatenate(parts_c), np.concatenate(parts_i), np.concatenate(parts_k)
        u = c[:, 0] / sx - 0.5  # pixel centres sit at integer (u, v)
        v = c[:, 1] / sy - 0.5
        ru, rv = np.rint(u), np.rint(v)
        pad = self._pad
        near = (ru >= -pad) & (ru < w + pad) & (rv >= -pad) & (rv < h + pad)
        if not near.all():
            i, k, u, v, ru, rv, c = i[near], k[near], u[near], v[near], ru[near], rv[near], c[near]
        # Squared in-plane distance (mm^2) from each point to the stencil's pixel
        # centres, separable in rows and columns: (hits, rows, cols).
        cu2 = (((ru - u)[:, None] + self._du) * sx) ** 2
        rem = (self.gamma**2 - c[:, 2] ** 2)[:, None] - (((rv - v)[:, None] + self._dv) * sy) ** 2
        ok = cu2[:, None, :] <= rem[:, :, None]  # in-plane d^2 <= gamma^2 - z^2
        if not self._stencil_full:
            ok &= self._stencil_mask
        flat = np.flatnonzero(ok)
        hit, cell = np.divmod(flat, self._stencil_mask.size)
        # Pixel index on a grid padded by 2 * pad on every side, then back to the image.
        base = (rv.astype(np.int64) + 2 * self._pad) * (w + 4 * pad) + (ru.astype(np.int64) + 2 * pad)
        pixel = self._pixel_of_padded[base[hit] + self._cell_offset[cell]]
        inside = pixel >= 0
        member, pixel, point = k[hit][inside], pixel[inside], i[hit][inside]
        keep = self._unique(member, pixel, s)
        return member[keep], pixel[keep], point[keep]

    def _unique(self, member: np.ndarray, pixel: np.ndarray, s: int) -> np.ndarray:
        """Indices selecting one entry per distinct (member, pixel) pair."""
        hw = self.shape[0] * self.shape[1]
        cells = s * hw
        if cells > _SCRATCH_CELLS:  # huge images: sort instead of a scratch array
            _, first = np.unique(member * hw + pixel, return_index=True)
            return first
        if self._scratch is None or len(self._scratch) < cells:
            self._scratch = np.empty(max(cells, 1), dtype=np.int32)
        key = member * hw + pixel
        order = np.arange(len(key), dtype=np.int32)
        self._scratch[key] = order  # one writer per key survives
        return np.flatnonzero(self._scratch[key] == order)

    def band_pixels(self, deltas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The intersection ``I_t`` of each member as unique (member, pixel) pairs, sorted.

        The same pixel sets as :meth:`band` (without the point of each pixel),
        computed for the objective's inner loop on large frames (about 2x faster than
        :meth:`band` on 950x811 px frames, slower on 256x218 px ones):

        - per member, the out-of-plane coordinate of its slice of points first
          (one dot product), the in-plane ones only for the points within ``gamma``;
        - the (hit, stencil cell) pairs are keyed on a grid covering only the
          bounding box of this call's hits (plus the stencil's reach), not the
          whole image per member, and deduplicated by marking a boolean array of
          ``S x box`` cells (small: the bone occupies a fraction of the image),
          then reading its set cells back in (member, row, column) order.

        Parameters
        ----------
        deltas : (S, 4, 4) perturbations (probe-marker frame).

        Returns
        -------
        member : (M,) int64, population index (ascending).
        pixel : (M,) int64, flat pixel index ``v * W + u``.
        """
        deltas = np.asarray(deltas, float).reshape(-1, 4, 4)
        s = len(deltas)
        h, w = self.shape
        sx, sy = self.spacing
        empty = np.zeros(0, dtype=np.int64)
        if self.n_points == 0:
            return empty, empty
        m = self.calib_inv @ geometry.invert_transform(deltas)  # (S, 4, 4): marker -> IP
        a, b = m[:, 2, :3], m[:, 2, 3]  # z = a . q + b
        a0, b0 = self.calib_inv[2, :3], self.calib_inv[2, 3]
        da = a - a0
        shift = da @ self.q_centre + (b - b0)
        slack = np.linalg.norm(da, axis=1) * self.radius + 1e-9
        lo = np.searchsorted(self.z0, -self.gamma - shift - slack, side="left")
        hi = np.searchsorted(self.z0, self.gamma - shift + slack, side="right")
        g = self.gamma
        parts_q, parts_z, parts_k = [], [], []
        for j in np.flatnonzero(hi > lo):
            qs = self.q[lo[j]:hi[j]]
            z = qs @ a[j] + b[j]  # out-of-plane first: most of the slice is dropped here
            sel = np.abs(z) <= g
            if sel.any():
                parts_q.append(qs[sel])
                parts_z.append(z[sel])
                parts_k.append(np.full(int(sel.sum()), j))
        if not parts_q:
            return empty, empty
        q, z, k = np.concatenate(parts_q), np.concatenate(parts_z), np.concatenate(parts_k)
        # in-plane coordinates (mm) of the hits, with each one's own member transform
        rot, trans = m[k, :2, :3], m[k, :2, 3]
        cx = np.einsum("nj,nj->n", rot[:, 0], q) + trans[:, 0]
        cy = np.einsum("nj,nj->n", rot[:, 1], q) + trans[:, 1]
        u = cx / sx - 0.5  # pixel centres sit at integer (u, v)
        v = cy / sy - 0.5
        ru, rv = np.rint(u), np.rint(v)
        pad = self._pad
        near = (ru >= -pad) & (ru < w + pad) & (rv >= -pad) & (rv < h + pad)
        if not near.all():
            k, z, u, v, ru, rv = k[near], z[near], u[near], v[near], ru[near], rv[near]
            if not len(k):
                return empty, empty
        cu2 = (((ru - u)[:, None] + self._du) * sx) ** 2
        rem = (g**2 - z**2)[:, None] - (((rv - v)[:, None] + self._dv) * sy) ** 2
        ok = cu2[:, None, :] <= rem[:, :, None]  # (hits, rows, cols): in-plane d^2 <= gamma^2 - z^2
        if not self._stencil_full:
            ok &= self._stencil_mask
        # The box of this call's reachable cells, clipped to the image.
        iu, iv = ru.astype(np.int64), rv.astype(np.int64)
        u_lo, u_hi = max(int(iu.min()) + int(self._du[0]), 0), min(int(iu.max()) + int(self._du[-1]), w - 1)
        v_lo, v_hi = max(int(iv.min()) + int(self._dv[0]), 0), min(int(iv.max()) + int(self._dv[-1]), h - 1)
        if u_lo > u_hi or v_lo > v_hi:
            return empty, empty
        # Local grid: the box padded by twice the stencil's reach, so that every (hit, cell)
        # pair has a key (hits up to `pad` outside the box reach `pad` further).
        bw = u_hi - u_lo + 1 + 4 * pad
        bh = v_hi - v_lo + 1 + 4 * pad
        area = bw * bh
        lu, lv = iu - (u_lo - 2 * pad), iv - (v_lo - 2 * pad)  # each hit's nearest pixel on the local grid
        dv_grid, du_grid = np.meshgrid(self._dv, self._du, indexing="ij")
        offset = (dv_grid * bw + du_grid).ravel()
        base = k * area + lv * bw + lu
        keys = (base[:, None] + offset)[ok.reshape(len(base), -1)]
        marked = np.zeros((s, bh, bw), dtype=bool)
        marked.reshape(-1)[keys] = True
        marked = marked[:, 2 * pad:2 * pad + v_hi - v_lo + 1, 2 * pad:2 * pad + u_hi - u_lo + 1]  # inside the image
        member, row, col = np.nonzero(marked)
        return member, (row + v_lo) * w + (col + u_lo)

    # -- Eq. 2 -----------------------------------------------------------------------

    def intensity(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean intensity over ``I_t`` of each member, and ``|I_t|``.

        Parameters
        ----------
        x : (6, S) or (6,) parameters: rotation (deg, Euler xyz), translation (mm).

        Returns
        -------
        mean : (S,) mean of ``f`` over ``I_t`` (0 where ``I_t`` is empty).
        count : (S,) number of pixels in ``I_t``.
        """
        x = np.asarray(x, float).reshape(6, -1)
        s = x.shape[1]
        if s * self.shape[0] * self.shape[1] > _SCRATCH_CELLS:  # large frames: the compact kernel
            member, pixel = self.band_pixels(self.deltas(x))
        else:  # small frames: the whole-image scratch array of band() is cheaper (measured on 256x218 px)
            member, pixel, _ = self.band(self.deltas(x))
        return self.band_mean(member, pixel, s)

    def band_mean(self, member: np.ndarray, pixel: np.ndarray, s: int,
                  region: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean intensity and pixel count per member of a :meth:`band`, over :attr:`region`.

        Parameters
        ----------
        member, pixel : the (member, pixel) pairs of :meth:`band`.
        s : population size.
        region : ``"full"`` or ``"first_hit"``; None: :attr:`region`.

        Returns
        -------
        mean : (S,) mean of ``f`` (0 where empty); count : (S,) pixels used.
        """
        if (region or self.region) == "first_hit" and len(pixel):
            h, w = self.shape
            v, u = np.divmod(pixel, w)
            column = member * w + u
            top = np.full(s * w, h, dtype=np.int64)
            np.minimum.at(top, column, v)
            keep = v < top[column] + self.first_hit_rows
            member, pixel = member[keep], pixel[keep]
        count = np.bincount(member, minlength=s)
        total = np.bincount(member, weights=self.f[pixel], minlength=s)
        return np.where(count > 0, total / np.maximum(count, 1), 0.0), count

    def fiducial(self, x: np.ndarray) -> np.ndarray:
        """(S,) mean fiducial displacement (mm) of each member's correction."""
        return geometry.mean_fiducial_displacement(np.eye(4), self.deltas(x), self.fiducials)

    def value(self, x: np.ndarray, lam: float) -> np.ndarray:
        """Eq. 2 (to maximise): mean intensity over ``I_t`` minus ``lam`` times the fiducial term.

        Returns (S,) for ``x`` of shape (6, S), a float for (6,).
        """
        mean, _ = self.intensity(x)
        out = mean - lam * self.fiducial(x)
        return out if np.ndim(x) == 2 else float(out[0])

    def half_gains(self, x, region: str = "first_hit") -> tuple[float, float]:
        """How much the correction ``x`` raises the mean intensity on each half of the bone's scan lines.

        The image columns crossed by the initial intersection ``I_t`` (no
        correction) are cut at their median into a left and a right half; on
        each, the mean intensity over ``I_t`` (in ``region``) at ``x`` minus that
        at no correction. A rigid pose error moves the whole contour, so a
        correction that undoes one raises both halves; a correction that pulls
        one side of the contour onto a bright structure (speckle, a fascia
        line) at the expense of the other raises one only.

        Parameters
        ----------
        x : (6,) correction, rotation (deg) and translation (mm).
        region : ``"first_hit"`` or ``"full"`` (see :class:`FrameObjective`).

        Returns
        -------
        (left, right) gains in intensity units ([0, 1] scale); NaN for both when the
        initial intersection crosses fewer than 4 columns.
        """
        member, pixel, _ = self.band(self.deltas(np.c_[np.zeros(6), np.asarray(x, float).reshape(6)]))
        w = self.shape[1]
        cols = np.unique(pixel[member == 0] % w)
        if len(cols) < 4:
            return float("nan"), float("nan")
        left = pixel % w < cols[len(cols) // 2]
        gains = []
        for side in (left, ~left):
            mean, count = self.band_mean(member[side], pixel[side], 2, region=region)
            gains.append(float(mean[1] - mean[0]) if count[0] > 0 else float("nan"))
        return gains[0], gains[1]

    def mask(self, x=None) -> np.ndarray:
        """(H, W) bool full label of one member (``x`` (6,), default no perturbation)."""
        x = np.zeros(6) if x is None else np.asarray(x, float)
        _, pixel, _ = self.band(self.deltas(x.reshape(6, 1)))
        out = np.zeros(self.shape[0] * self.shape[1], bool)
        out[pixel] = True
        return out.reshape(self.shape)


# ----------------------------------------------------------------------------- labels


def full_label(image_shape, pose, calib, spacing, points, gamma_mm: float = 0.3) -> np.ndarray:
    """The full (any-pose) bone label: pixels whose centre lies within ``gamma`` of ``C``.

    Parameters
    ----------
    image_shape : (H, W) pixels.
    pose : (4, 4) probe marker in CT (mm); the initial, optimised or registered pose.
    calib : (4, 4) image plane -> probe marker (mm).
    spacing : (sx, sy) mm per pixel.
    points : (N, 3) ``C`` in CT (mm), e.g. from :func:`surface_points`.
    gamma_mm : intersection thickness (mm), the paper's 0.3.

    Returns
    -------
    (H, W) bool array. All False if ``pose`` is not finite.
    """
    pose = np.asarray(pose, float)
    if not np.isfinite(pose).all():
        return np.zeros(tuple(image_shape), bool)
    obj = FrameObjective(np.zeros(tuple(image_shape), np.float64), pose, calib, spacing, points,
                         gamma_mm, bound_deg=0.0, bound_mm=0.0)
    return obj.mask()


@dataclass
class VisibleLabel:
    """A full label split by the two ultrasound-physics filters (all (H, W) bool).

    visible : kept pixels (the final label).
    shadow : full-label pixels removed as lying in the acoustic shadow.
    steep : full-label pixels (not in shadow) removed for an incidence angle above the limit.
    incidence_deg : (H, W) float, incidence angle at each full-label pixel (NaN elsewhere).
    """

    visible: np.ndarray
    shadow: np.ndarray
    steep: np.ndarray
    incidence_deg: np.ndarray


def shadow_mask(full: np.ndarray, gap_px: int = 1) -> np.ndarray:
    """Label pixels in the acoustic shadow: below the first bone crossing of each scan line.

    Scan lines are the image columns (a linear probe, as the paper's vertical
    scan lines). In each column, the first run of label pixels (gaps up to
    ``gap_px`` rows bridged) is the bone surface the beam meets first; every
    label pixel below the end of that run is in its shadow. (A scan line that
    grazes a bone meets it in a single run; the incidence filter removes such
    pixels.)

    Parameters
    ----------
    full : (H, W) bool full label.
    gap_px : rows of gap still counted as the same crossing.

    Returns
    -------
    (H, W) bool, the shadowed label pixels.
    """
    full = np.asarray(full, bool)
    bridged = full.copy()
    for g in range(1, gap_px + 1):  # close gaps of up to gap_px rows
        bridged[:-g] |= full[g:] & np.maximum.accumulate(full[:-g], axis=0)
    seen = np.maximum.accumulate(bridged, axis=0)
    left = np.maximum.accumulate(seen & ~bridged, axis=0)  # below the end of the first run
    return full & left


def visible_label(full, pose, calib, spacing, points, normals, gamma_mm: float = 0.3,
                  incidence_max_deg: float = 85.0, gap_px: int = 1) -> VisibleLabel:
    """The visible part of a full label: shadow and steep-incidence pixels removed.

    The incidence angle of a label pixel is the angle between the scan line
    (the image's vertical, ``v`` axis) and the CT surface normal of its nearest
    point of ``C``, projected into the image plane (Section 3.1); as an angle
    between lines it lies in ``[0, 90]`` degrees.

    Parameters
    ----------
    full : (H, W) bool full label made with ``pose`` (see :func:`full_label`).
    pose, calib, spacing, points, gamma_mm : as for :func:`full_label`.
    normals : (N, 3) unit normals of ``points`` (CT frame).
    incidence_max_deg : largest incidence angle kept (degrees), the paper's 85.
    gap_px : see :func:`shadow_mask`.

    Returns
    -------
    :class:`VisibleLabel`.
    """
    full = np.asarray(full, bool)
    shadow = shadow_mask(full, gap_px)
    inc = np.full(full.shape, np.nan)
    vv, uu = np.nonzero(full)
    if len(vv):
        ip_from_ct = geometry.invert_transform(np.asarray(pose, float) @ np.asarray(calib, float))
        near, ip = geometry.points_in_slab(ip_from_ct, points, gamma_mm + 1e-9)
        sx, sy = spacing
        centres = np.c_[(uu + 0.5) * sx, (vv + 0.5) * sy, np.zeros(len(uu))]
        if len(near):
            _, j = cKDTree(ip).query(centres)
            n_ip = np.asarray(normals, float)[near][j] @ ip_from_ct[:3, :3].T
            inplane = np.hypot(n_ip[:, 0], n_ip[:, 1])
            with np.errstate(invalid="ignore", divide="ignore"):
                cosang = np.abs(n_ip[:, 1]) / inplane
            inc[vv, uu] = np.degrees(np.arccos(np.clip(np.nan_to_num(cosang, nan=0.0), 0.0, 1.0)))
    steep = full & ~shadow & (np.nan_to_num(inc, nan=90.0) > incidence_max_deg)
    return VisibleLabel(visible=full & ~shadow & ~steep, shadow=shadow, steep=steep, incidence_deg=inc)


# ----------------------------------------------------------------------------- the reference objective


def reference_objective(x, image, pose, calib, spacing, tree: cKDTree, lam: float, gamma_mm: float = 0.3,
                        fiducials=geometry.PROBE_FIDUCIALS_MM) -> float:
    """Eq. 2 straight from the paper's definition, for one parameter vector (slow).

    Every pixel is mapped to CT through Eq. 1 with the perturbed pose
    ``pose @ perturbation(x[:3], x[3:])``; ``I_t`` holds those within ``gamma``
    of ``C`` (KD-tree query); the value is the mean of ``f`` (image / 255) over
    ``I_t`` (0 if empty) minus ``lam`` times the mean fiducial displacement (mm).

    Parameters
    ----------
    x : (6,) rotation (deg, Euler xyz) and translation (mm).
    image : (H, W) uint8 image.
    tree : ``cKDTree`` of ``C`` (CT, mm).
    """
    x = np.asarray(x, float)
    delta = geometry.perturbation(x[:3], x[3:])
    image = np.asarray(image)
    f = image.astype(float) / 255.0 if image.dtype == np.uint8 else image.astype(float)
    h, w = f.shape
    pts = geometry.pixels_to_ct(geometry.pixel_grid(w, h), np.asarray(pose, float) @ delta, calib, spacing)
    dist, _ = tree.query(pts, distance_upper_bound=gamma_mm * (1 + 1e-12))
    inside = dist <= gamma_mm
    mean = float(f.ravel()[inside].mean()) if inside.any() else 0.0
    return mean - lam * float(geometry.mean_fiducial_displacement(np.eye(4), delta, fiducials))


def reference_label(image_shape, pose, calib, spacing, tree: cKDTree, gamma_mm: float = 0.3) -> np.ndarray:
    """The full label from the paper's definition (KD-tree over every pixel), for tests."""
    h, w = image_shape
    pts = geometry.pixels_to_ct(geometry.pixel_grid(w, h), pose, calib, spacing)
    dist, _ = tree.query(pts, distance_upper_bound=gamma_mm * (1 + 1e-12))
    return (dist <= gamma_mm).reshape(h, w)


# ----------------------------------------------------------------------------- one frame


@dataclass
class FrameResult:
    """The optimisation of one frame.

    status : ``"kept"``, ``"discarded"`` (failed validation) or ``"no_bone"``.
    reason : why a frame was discarded (empty if kept).
    x : (6,) rotation (deg) and translation (mm) of the correction ``Delta``.
    pose : (4, 4) optimised pose ``pose_initial @ Delta`` (NaN if not kept).
    correction_mm : mean fiducial displacement of ``Delta`` (mm).
    intensity_initial, intensity_optimized : mean ``f`` over ``I_t`` (in [0, 1]).
    objective_initial, objective_optimized : Eq. 2 values.
    n_initial, n_optimized : pixels in ``I_t``.
    nfev : objective calls, one per generation (each evaluates the whole population).
    seconds : process (CPU) time of the optimisation (core-seconds).
    path : how the result was found: ``"de"`` (differential evolution over the whole
        box, :func:`optimize_frame`), ``"warm"`` (local search from a warm start,
        :func:`optimize_frame_warm`), ``"warm+de"`` (the local result failed
        validation and differential evolution replaced it) or ``"de-batched"``
        (differential evolution run in lock step with other frames on a torch
        device, :func:`ultrabones.labels.torch_objective.optimize_frames_batched`).
    n_members : objective evaluations (population members, all calls together).
    gain_left, gain_right : :meth:`FrameObjective.half_gains` of the correction, when the
        halves check ran (NaN otherwise).
    """

    status: str
    reason: str = ""
    x: np.ndarray = field(default_factory=lambda: np.zeros(6))
    pose: np.ndarray = field(default_factory=lambda: np.full((4, 4), np.nan))
    correction_mm: float = 0.0
    intensity_initial: float = float("nan")
    intensity_optimized: float = float("nan")
    objective_initial: float = float("nan")
    objective_optimized: float = float("nan")
    n_initial: int = 0
    n_optimized: int = 0
    nfev: int = 0
    seconds: float = 0.0
    path: str = "de"
    n_members: int = 0
    gain_left: float = float("nan")
    gain_right: float = float("nan")


def optimize_frame(image, pose, calib, spacing, points, lam: float, *, gamma_mm: float = 0.3,
                   bound_deg: float = 1.0, bound_mm: float = 1.0, popsize: int = 15, maxiter: int = 100,
                   tol: float = 0.01, seed: int = 0, max_correction_mm: float = 1.0,
                   min_label_fraction: float = 0.0, objective: FrameObjective | None = None,
                   region: str = "full", halves_check: str | None = None) -> FrameResult:
    """Refine one frame's pose by maximising Eq. 2, then validate it.

    Differential evolution (seeded, the population evaluated in one vectorised
    call, the unperturbed pose included in the initial population) searches
    ``[-bound_deg, bound_deg]^3 x [-bound_mm, bound_mm]^3``. The result is
    discarded when its mean fiducial correction exceeds ``max_correction_mm``
    (the paper's validation) or, optionally, when the optimised intersection
    keeps fewer than ``min_label_fraction`` of the initial one's pixels (a mean
    objective can shrink ``I_t`` onto a short bright piece; not in the paper,
    0 disables it).

    Parameters
    ----------
    image : (H, W) uint8 image.
    pose : (4, 4) recorded probe-marker pose in CT (mm).
    calib, spacing, points, gamma_mm : as for :func:`full_label`.
    lam : the weight ``lambda`` of the fiducial term (1/mm).
    popsize, maxiter, tol : differential evolution settings (population ``popsize * 6``).
    seed : random seed of the optimiser.
    max_correction_mm : validation limit (mm), the paper's 1.
    min_label_fraction : second validation rule (0: off, as in the paper).
    objective : a prepared :class:`FrameObjective` of this frame (optional).
    region : the intersection the mean runs over, ``"full"`` (Eq. 2 as written)
        or ``"first_hit"`` (see :class:`FrameObjective`).
    halves_check : third validation rule (not in the paper; None: off): the correction must raise
        the mean intensity (in this region, ``"first_hit"`` or ``"full"``) on both halves of the
        bone's scan lines (:meth:`FrameObjective.half_gains`).

    Returns
    -------
    :class:`FrameResult`; status ``"no_bone"`` when the recorded pose's
    intersection ``I_t`` is empty (no bone in view: nothing to refine).
    """
    t0 = time.process_time()
    pose = np.asarray(pose, float)
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise DatasetError("optimize_frame: the pose is not a finite 4x4 matrix")
    obj = objective or FrameObjective(image, pose, calib, spacing, points, gamma_mm, bound_deg, bound_mm,
                                      region=region)
    zero = np.zeros((6, 1))
    i0, n0 = obj.intensity(zero)
    if obj.n_points == 0 or n0[0] == 0:
        return FrameResult("no_bone", seconds=time.process_time() - t0)
    bounds = [(-bound_deg, bound_deg)] * 3 + [(-bound_mm, bound_mm)] * 3
    res = differential_evolution(
        lambda x: -obj.value(x, lam), bounds, seed=seed, popsize=popsize, maxiter=maxiter, tol=tol,
        vectorized=True, updating="deferred", polish=False, x0=np.zeros(6), init="latinhypercube",
    )
    out = validated_result(obj, pose, res.x, lam, float(i0[0]), int(n0[0]), max_correction_mm, min_label_fraction,
                           halves_check, nfev=int(res.nfev), n_members=int(res.nfev) * popsize * 6)
    out.seconds = time.process_time() - t0
    return out


def validated_result(obj: FrameObjective, pose, x, lam: float, i0: float, n0: int, max_correction_mm: float,
                     min_label_fraction: float, halves_check: str | None, **fields) -> FrameResult:
    """The :class:`FrameResult` of a differential-evolution correction ``x``, validated as :func:`optimize_frame` does.

    The correction is discarded when it fails :func:`_validate` (``max_correction_mm``, ``min_label_fraction``)
    or, that passed, the halves check (:func:`check_halves`, ``halves_check``).

    Parameters
    ----------
    obj : the frame's objective; pose : (4, 4) the recorded pose (mm).
    x : (6,) correction, rotation (deg) and translation (mm).
    lam : the weight of the fiducial term (1/mm).
    i0, n0 : mean intensity over ``I_t`` and its pixels at no correction.
    fields : further :class:`FrameResult` fields (``nfev``, ``n_members``, ``path``, ``seconds``).
    """
    x = np.asarray(x, float)
    corr, i1, n1, reason = _validate(obj, x, n0, max_correction_mm, min_label_fraction)
    gains = (float("nan"), float("nan"))
    if not reason:
        reason, gains = check_halves(obj, x, halves_check)
    kept = not reason
    return FrameResult(
        status="kept" if kept else "discarded", reason=reason, x=x,
        pose=np.asarray(pose, float) @ geometry.perturbation(x[:3], x[3:]) if kept else np.full((4, 4), np.nan),
        correction_mm=corr, intensity_initial=i0, intensity_optimized=i1, objective_initial=i0,
        objective_optimized=i1 - lam * corr, n_initial=n0, n_optimized=n1, gain_left=gains[0], gain_right=gains[1],
        **fields,
    )


# ----------------------------------------------------------------------------- a sweep, warm-started


def pattern_search(fun, x_start, lower, upper, step, min_step, max_calls: int = 60, n_random: int = 0,
                   seed: int = 0, f_start: float | None = None):
    """Maximise ``fun`` by a compass (coordinate pattern) search whose polls are evaluated in one batch.

    Each call evaluates the ``2 n`` points ``x +- step_i e_i`` (clipped to the
    box) together with the *combined* move (every axis moved by its better
    poll when that poll improved on ``x``), so a diagonal valley costs one call,
    not ``n``. The best improving point becomes ``x``; when none improves, the
    steps are halved. It stops when every step is below ``min_step`` or after
    ``max_calls`` calls. Deterministic (no random numbers).

    Parameters
    ----------
    fun : callable, ``(n, S)`` parameters -> ``(S,)`` values to *maximise*.
    x_start : (n,) start (clipped to the box).
    lower, upper : (n,) box.
    step : (n,) initial steps (same units as ``x``: degrees, mm).
    min_step : (n,) or float, smallest step (the search's resolution).
    max_calls : largest number of calls to ``fun`` (each a batch of ``2 n`` polls, plus the combined move).
    n_random : extra polls per call, ``x +- step * d`` along random unit directions ``d``
        (seeded by ``seed``): they follow valleys that are diagonal to the axes.
    seed : seed of those directions.
    f_start : ``fun`` at ``x_start`` when known (saves a call; ``x_start`` must lie in the box).

    Returns
    -------
    x : (n,) best point found; value : its value; calls : calls to ``fun``;
    members : points evaluated.
    """
    lower, upper = np.asarray(lower, float), np.asarray(upper, float)
    x = np.clip(np.asarray(x_start, float), lower, upper)
    step = np.asarray(step, float).copy()
    min_step = np.broadcast_to(np.asarray(min_step, float), step.shape)
    n = len(x)
    if f_start is None:
        fx = float(fun(x[:, None])[0])
        calls, members = 1, 1
    else:
        fx, calls, members = float(f_start), 0, 0
    eye = np.eye(n)
    rng = np.random.default_rng(seed)
    while calls < max_calls and (step >= min_step).any():
        polls = np.concatenate([x[:, None] + eye * step, x[:, None] - eye * step], axis=1)
        if n_random:
            d = rng.standard_normal((n, n_random))
            d = d / np.linalg.norm(d, axis=0) * step[:, None]
            polls = np.concatenate([polls, x[:, None] + d, x[:, None] - d], axis=1)
        polls = np.clip(polls, lower[:, None], upper[:, None])
        f = np.asarray(fun(polls), float)
        calls, members = calls + 1, members + polls.shape[1]
        # the combined move: per axis, the better of +/- if it improved on x
        fp, fm = f[:n], f[n:2 * n]
        gain = np.maximum(fp, fm) - fx
        move = np.where(gain > 0, np.where(fp >= fm, step, -step), 0.0)
        j = int(np.argmax(f))
        if f[j] > fx:
            best_x, best_f = polls[:, j], float(f[j])
            if (move != 0).sum() > 1 and calls < max_calls:
                xc = np.clip(x + move, lower, upper)
                fc = float(fun(xc[:, None])[0])
                calls, members = calls + 1, members + 1
                if fc > best_f:
                    best_x, best_f = xc, fc
            x, fx = best_x.copy(), best_f
        else:
            step = np.where(step >= min_step, step * 0.5, step)
    return x, fx, calls, members


def _validate(obj: FrameObjective, x, n0: int, max_correction_mm: float, min_label_fraction: float):
    """Correction (mm), mean intensity, label pixels and the reason a result fails validation ("" if it passes)."""
    x = np.asarray(x, float)
    i1, n1 = obj.intensity(x.reshape(6, 1))
    delta = geometry.perturbation(x[:3], x[3:])
    corr = float(geometry.mean_fiducial_displacement(np.eye(4), delta, obj.fiducials))
    reason = ""
    if corr > max_correction_mm:
        reason = f"mean fiducial correction {corr:.3f} mm > {max_correction_mm} mm"
    elif n1[0] < min_label_fraction * n0:
        reason = f"label shrank to {n1[0]} of {n0} px (< {min_label_fraction:g})"
    return corr, float(i1[0]), int(n1[0]), reason


def check_halves(obj: FrameObjective, x, region: str | None) -> tuple[str, tuple[float, float]]:
    """The halves check of a correction: the reason it fails ("" if it passes, or if ``region`` is None) and the gains.

    The correction must raise the mean intensity on both halves of the bone's scan
    lines (:meth:`FrameObjective.half_gains`, in ``region``). No correction (``x`` all
    zero: the initial label) and a bone crossing fewer than 4 columns (it cannot be
    split) pass.
    """
    if region is None or not np.any(np.asarray(x, float)):
        return "", (float("nan"), float("nan"))
    gains = obj.half_gains(x, region)
    if np.isfinite(gains).all() and min(gains) <= 0.0:
        return (f"the correction raises the echo on one half of the bone's scan lines only "
                f"(gain left {gains[0]:+.4f}, right {gains[1]:+.4f})"), gains
    return "", gains


def optimize_frame_warm(image, pose, calib, spacing, points, lam: float, *, x0=None, gamma_mm: float = 0.3,
                        bound_deg: float = 1.0, bound_mm: float = 1.0, step_deg: float = 0.2, step_mm: float = 0.2,
                        min_step_deg: float = 0.02, min_step_mm: float = 0.02, max_calls: int = 60,
                        max_correction_mm: float = 1.0, min_label_fraction: float = 0.0,
                        objective: FrameObjective | None = None, region: str = "full", fallback: bool = True,
                        popsize: int = 15, maxiter: int = 100, tol: float = 0.01, seed: int = 0,
                        method: str = "pattern", local_radius_deg: float = 0.3, local_radius_mm: float = 0.3,
                        local_popsize: int = 3, local_maxiter: int = 20, n_random: int = 0,
                        n_starts: int = 0, halves_check: str | None = None) -> FrameResult:
    """Refine one frame's pose by a local search of Eq. 2 from a warm start; differential evolution as fallback.

    The search starts from the better (by Eq. 2) of the warm start ``x0`` (e.g.
    the previous frame's correction: tracking and calibration errors drift
    slowly along a sweep) and no correction, and runs :func:`pattern_search`
    inside the same box as :func:`optimize_frame`. Since the unperturbed pose
    is a start candidate and the search only accepts improvements, the result
    never scores below it. The result is validated as in :func:`optimize_frame`
    (``max_correction_mm``, ``min_label_fraction``); when it fails and
    ``fallback`` is set, :func:`optimize_frame` (full differential evolution,
    ``popsize``, ``maxiter``, ``tol``, ``seed``) replaces it, and its result is
    the frame's (``path = "warm+de"``).

    Parameters
    ----------
    image, pose, calib, spacing, points, lam, gamma_mm, bound_deg, bound_mm,
    max_correction_mm, min_label_fraction, objective, region, halves_check :
        as for :func:`optimize_frame`.
    x0 : (6,) warm start, rotation (deg) and translation (mm); None: no correction.
    step_deg, step_mm : initial steps of the search (degrees, mm).
    min_step_deg, min_step_mm : its resolution (degrees, mm).
    max_calls : largest number of batched objective calls of the search.
    fallback : run differential evolution when the local result fails validation.
    popsize, maxiter, tol, seed : differential evolution settings of the fallback
        (``tol`` and ``seed`` also of the local differential evolution).
    method : the local search, ``"pattern"`` (:func:`pattern_search`, deterministic) or
        ``"local_de"`` (differential evolution in the box ``start +- local_radius``, clipped
        to the bounds, population ``local_popsize * 6``, at most ``local_maxiter`` generations).
    local_radius_deg, local_radius_mm, local_popsize, local_maxiter : settings of ``"local_de"``.
    n_random : random poll directions per call of ``"pattern"`` (see :func:`pattern_search`; seeded by ``seed``).
    n_starts : extra start candidates drawn uniformly in the box (seeded by ``seed``), evaluated in the
        same batch as the warm start and no correction; the search starts from the best of all.

    Returns
    -------
    :class:`FrameResult` with ``path`` ``"warm"`` or ``"warm+de"``; ``nfev`` counts
    the batched objective calls of both, ``n_members`` the poses evaluated.
    """
    t0 = time.process_time()
    pose = np.asarray(pose, float)
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise DatasetError("optimize_frame_warm: the pose is not a finite 4x4 matrix")
    obj = objective or FrameObjective(image, pose, calib, spacing, points, gamma_mm, bound_deg, bound_mm,
                                      region=region)
    lower = np.array([-bound_deg] * 3 + [-bound_mm] * 3, float)
    upper = -lower
    start = np.zeros(6) if x0 is None else np.clip(np.asarray(x0, float).reshape(6), lower, upper)
    if not np.isfinite(start).all():
        start = np.zeros(6)
    cand = np.stack([np.zeros(6), start], axis=1)
    if n_starts:
        extra = np.random.default_rng(seed).uniform(lower[:, None], upper[:, None], (6, n_starts))
        cand = np.concatenate([cand, extra], axis=1)
    i0, n0 = obj.intensity(cand)
    if obj.n_points == 0 or n0[0] == 0:
        return FrameResult("no_bone", seconds=time.process_time() - t0, path="warm", nfev=1, n_members=cand.shape[1])
    v = i0 - lam * obj.fiducial(cand)
    best = int(np.argmax(v))  # ties: no correction
    first = cand[:, best]
    if method == "pattern":
        x, _, calls, members = pattern_search(
            lambda p: obj.value(p, lam), first, lower, upper, [step_deg] * 3 + [step_mm] * 3,
            [min_step_deg] * 3 + [min_step_mm] * 3, max_calls=max_calls, n_random=n_random, seed=seed,
            f_start=float(v[best]))
    elif method == "local_de":
        # differential evolution in a box of half-width local_radius around the start (within the bounds)
        r = np.array([local_radius_deg] * 3 + [local_radius_mm] * 3)
        lo_b, hi_b = np.maximum(first - r, lower), np.minimum(first + r, upper)
        fx = float(v[best])
        res_l = differential_evolution(
            lambda p: -obj.value(p, lam), list(zip(lo_b, hi_b)), seed=seed, popsize=local_popsize,
            maxiter=local_maxiter, tol=tol, vectorized=True, updating="deferred", polish=False, x0=first,
            init="latinhypercube")
        x = np.asarray(res_l.x, float)
        if -float(res_l.fun) < fx:  # never worse than the start
            x = first.copy()
        calls, members = int(res_l.nfev), int(res_l.nfev) * local_popsize * 6
    else:
        raise ValueError(f"method must be 'pattern' or 'local_de', got {method!r}")
    calls, members = calls + 2, members + cand.shape[1] + 1  # the start candidates, and the validation
    corr, i1, n1, reason = _validate(obj, x, int(n0[0]), max_correction_mm, min_label_fraction)
    gains = (float("nan"), float("nan"))
    if reason and fallback:
        res = optimize_frame(image, pose, calib, spacing, points, lam, gamma_mm=gamma_mm, bound_deg=bound_deg,
                             bound_mm=bound_mm, popsize=popsize, maxiter=maxiter, tol=tol, seed=seed,
                             max_correction_mm=max_correction_mm, min_label_fraction=min_label_fraction,
                             objective=obj, region=region, halves_check=halves_check)
        res.path, res.nfev, res.n_members = "warm+de", res.nfev + calls, res.n_members + members
        res.seconds = time.process_time() - t0
        return res
    if not reason:  # a correction the image does not support on both halves: no fallback, the frame is discarded
        reason, gains = check_halves(obj, x, halves_check)
    kept = not reason
    return FrameResult(
        status="kept" if kept else "discarded", reason=reason, x=x,
        pose=pose @ geometry.perturbation(x[:3], x[3:]) if kept else np.full((4, 4), np.nan),
        correction_mm=corr, intensity_initial=float(i0[0]), intensity_optimized=i1,
        objective_initial=float(i0[0]), objective_optimized=i1 - lam * corr,
        n_initial=int(n0[0]), n_optimized=n1, nfev=calls, seconds=time.process_time() - t0, path="warm",
        n_members=members, gain_left=gains[0], gain_right=gains[1],
    )


def warm_start_after(results, x0=None, max_gap: int = 1, x0_age: int = 1) -> np.ndarray | None:
    """The warm start for the frame after ``results``, or None (that frame is solved cold).

    The warm start is the correction of the last kept frame, if it lies at most
    ``max_gap`` frames before the next one; else ``x0`` under the same rule
    (``x0_age``: frames from the frame that gave ``x0`` to the first of
    ``results``); else None. A sweep cut in chunks continues with
    ``x0 = warm_start_after(previous_chunk_results, previous_chunk_x0, max_gap)``
    and gives the same results as the uncut sweep (see :func:`optimize_sweep`).
    """
    results = list(results)
    for age, res in enumerate(reversed(results), start=1):
        if res.status == "kept":
            return np.asarray(res.x, float).copy() if age <= max_gap else None
    if x0 is None or x0_age + len(results) > max_gap:
        return None
    return np.asarray(x0, float).reshape(6).copy()


def optimize_sweep(images, poses, calib, spacing, points, lam: float, *, x0=None, seeds=None, max_gap: int = 1,
                   on_frame=None, **kwargs) -> list[FrameResult]:
    """Optimise the frames of one sweep in time order, each warm-started from its predecessor.

    Frame ``t`` starts (:func:`optimize_frame_warm`) from the correction of the
    last *kept* frame, if that frame lies at most ``max_gap`` frames before it;
    the first frame from ``x0``. Otherwise (no ``x0``, or the chain broken by
    discarded or ``no_bone`` frames: tracking may have jumped, the stale start
    could hold the search in a poor optimum) the frame is solved cold, by full
    differential evolution (:func:`optimize_frame`, ``path = "de"``).

    Each frame's result depends only on its own inputs and its warm start, so a
    sweep cut in chunks, each continued with ``x0 = warm_start_after(previous
    results, previous x0, max_gap)``, gives the same results as the uncut sweep
    (resumable).

    Parameters
    ----------
    images : iterable of (H, W) uint8 images, in time order (read lazily if a generator).
    poses : (N, 4, 4) recorded probe-marker poses, same order.
    calib, spacing, points, lam : as for :func:`optimize_frame`.
    x0 : (6,) warm start of the first frame (rotation deg, translation mm), the
        correction of the frame just before it; None: the first frame is solved cold.
    seeds : per-frame seeds of differential evolution (cold frames, fallback, ``local_de``);
        default ``0, 1, ...``.
    max_gap : largest distance (frames) from the last kept frame at which its
        correction still warm-starts a frame (1: only the immediately preceding frame).
    on_frame : optional callable ``(index, FrameResult)`` called after each frame (progress, writing).
    **kwargs : passed to :func:`optimize_frame_warm` (gamma_mm, bounds, steps, validation,
        region, method, DE settings); those that :func:`optimize_frame` takes also to it.

    Returns
    -------
    list of :class:`FrameResult`, one per frame.
    """
    import inspect

    poses = np.asarray(poses, float).reshape(-1, 4, 4)
    seeds = list(range(len(poses))) if seeds is None else list(seeds)
    if len(seeds) != len(poses):
        raise ValueError(f"optimize_sweep: {len(seeds)} seeds for {len(poses)} poses")
    if max_gap < 1:
        raise ValueError(f"optimize_sweep: max_gap must be >= 1, got {max_gap}")
    de_keys = set(inspect.signature(optimize_frame).parameters)
    de_kwargs = {k: v for k, v in kwargs.items() if k in de_keys}
    warm = None if x0 is None else np.asarray(x0, float).reshape(6).copy()
    age = 1  # frames from the frame that gave `warm` to the current one
    out: list[FrameResult] = []
    n = 0
    for t, image in enumerate(images):
        if t >= len(poses):
            raise ValueError(f"optimize_sweep: more images than the {len(poses)} poses")
        if warm is None or age > max_gap:
            res = optimize_frame(image, poses[t], calib, spacing, points, lam, seed=seeds[t], **de_kwargs)
        else:
            res = optimize_frame_warm(image, poses[t], calib, spacing, points, lam, x0=warm, seed=seeds[t], **kwargs)
        if res.status == "kept":
            warm, age = np.asarray(res.x, float).copy(), 1
        else:
            age += 1
        out.append(res)
        if on_frame is not None:
            on_frame(t, res)
        n += 1
    if n != len(poses):
        raise ValueError(f"optimize_sweep: {n} images for {len(poses)} poses")
    return out


# ----------------------------------------------------------------------------- measuring against truth


def label_distance_mm(label: np.ndarray, truth: np.ndarray, spacing) -> float:
    """Mean distance (mm) from each pixel of ``label`` to the nearest pixel of ``truth``.

    NaN when either is empty (distances from :func:`ultrabones.evaluation.metrics.directed_distances`).
    """
    from ultrabones.evaluation.metrics import directed_distances

    label, truth = np.asarray(label, bool), np.asarray(truth, bool)
    if not label.any() or not truth.any():
        return float("nan")
    return float(directed_distances(label, truth, spacing).mean())


def precision_recall(pred: np.ndarray, truth: np.ndarray, spacing, tol_mm: float = 0.5) -> tuple[float, float]:
    """Share of ``pred`` pixels within ``tol_mm`` of ``truth`` and of ``truth`` within ``tol_mm`` of ``pred``.

    NaN for a share whose denominator is empty (0 when only the other mask is empty).
    """
    from ultrabones.evaluation.metrics import directed_distances

    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    prec = float((directed_distances(pred, truth, spacing) <= tol_mm).mean()) if pred.any() else float("nan")
    rec = float((directed_distances(truth, pred, spacing) <= tol_mm).mean()) if truth.any() else float("nan")
    return prec, rec


# ----------------------------------------------------------------------------- synthetic frames (tests, benchmarks)


def synthetic_image(pose, calib, spacing, shape, points, normals, gamma_mm: float = 0.3, seed: int = 0,
                    noise: float = 0.05) -> np.ndarray:
    """A simple B-mode-like frame of a known geometry, for tests and benchmarks.

    The visible bone surface at ``pose`` is drawn bright (brighter at normal
    incidence), blurred over about 0.3 mm, above a dark acoustic shadow, on a
    speckle-like textured soft-tissue background. Not a simulator: only what the
    objective needs (a bright, thin bone response) on a known geometry.

    Returns
    -------
    (H, W) uint8 image.
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    full = full_label(shape, pose, calib, spacing, points, gamma_mm)
    vis = visible_label(full, pose, calib, spacing, points, normals, gamma_mm)
    h, w = shape
    tissue = 0.18 + 0.08 * gaussian_filter(rng.standard_normal(shape), 1.0)
    below = np.maximum.accumulate(vis.visible, axis=0) & ~vis.visible
    tissue[below] *= 0.25
    bright = np.where(vis.visible, np.cos(np.radians(np.nan_to_num(vis.incidence_deg, nan=90.0))) ** 0.5, 0.0)
    bright = gaussian_filter(bright, 0.15 / spacing[1])
    bright = bright / max(bright.max(), 1e-9)
    img = tissue + 0.8 * bright + noise * rng.standard_normal(shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
