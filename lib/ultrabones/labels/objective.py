"""Eq. 2 of one frame, fast: :class:`FrameObjective` evaluates it for a whole differential-evolution population
at once (paper Section 3.1).

Intensities ``f(u)`` are the 8-bit image values divided by 255 (so in ``[0, 1]``); the fiducial term is in mm.
``lambda`` therefore has the unit 1/mm. :mod:`ultrabones.labels.reference` writes Eq. 2 straight from the
paper's definition (every pixel to CT, KD-tree distance to ``C``), kept to test this one against.

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

import numpy as np

from ultrabones.core import geometry

#: The paper's lambda candidates (1/mm, intensity in [0, 1]).
PAPER_LAMBDAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)

# Largest number of (member, pixel) cells in one scratch array (int32): 32 MB.
_SCRATCH_CELLS = 8_000_000


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
