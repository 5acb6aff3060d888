"""What a frame of the twin sees: the scene (bone meshes, skin, tissue texture and fixed speckle) and the
geometry of an image plane in it.

A :class:`Scene` is built once per specimen and holds Embree intersectors and the meshes' arrays, grouped in
spatially compact chunks (:func:`face_chunks`). The plane's queries: each scan line's first bone hit and its
surface normal (:func:`first_hits`), where it enters the skin (:func:`skin_depths`), and the plane's cut of the
bone meshes (:func:`plane_contour`), from which :mod:`ultrabones.twin.true_labels` draws the true labels and
:mod:`ultrabones.twin.bmode` forms the image. Frames as in :mod:`ultrabones.twin.bmode`: ``ct_from_image`` maps
image-plane millimetres (``x`` along the width, ``y`` down the depth) to CT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import trimesh

from ultrabones.core.errors import ParamsError
from ultrabones.core.mesh import morton_order

#: Entries of a scene's table of fixed tissue scatterers (a power of two; hashed lattice cells index it).
SPECKLE_TABLE_SIZE = 1 << 18



@dataclass
class Scene:
    """What a frame sees: bone surfaces, skin, and the tissue texture.

    Build with :meth:`from_meshes`. Holds Embree intersectors and the meshes'
    arrays, so one scene is reused for every frame of a specimen.

    Attributes
    ----------
    bones : merged bone mesh (CT mm).
    skin : skin mesh (CT mm), or None for tissue everywhere (contact on every line).
    fat_mm : subcutaneous fat thickness (mm).
    texture_k : (T, 3) wave vectors (rad/mm) of the tissue texture fields.
    texture_phase : (T,) phases (rad).
    """

    bones: trimesh.Trimesh
    skin: trimesh.Trimesh | None = None
    fat_mm: float = 5.0
    texture_k: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    texture_phase: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seed: int = 0

    @classmethod
    def from_meshes(cls, bones, skin=None, fat_mm: float = 5.0, seed: int = 0) -> "Scene":
        """A scene from a bone mesh (or list of meshes), an optional skin mesh and a texture seed."""
        if isinstance(bones, (list, tuple)):
            bones = trimesh.util.concatenate(list(bones))
        rng = np.random.default_rng(seed)
        n = 12
        direction = rng.normal(size=(n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        wavelength = rng.uniform(4.0, 20.0, n)
        scene = cls(bones=bones, skin=skin, fat_mm=float(fat_mm),
                    texture_k=direction * (2 * np.pi / wavelength)[:, None],
                    texture_phase=rng.uniform(0, 2 * np.pi, n), seed=int(seed))
        scene._prepare()
        return scene

    def _prepare(self):
        from trimesh.ray.ray_pyembree import RayMeshIntersector

        self._bone_rays = RayMeshIntersector(self.bones)
        self._skin_rays = RayMeshIntersector(self.skin) if self.skin is not None else None
        self._verts = np.asarray(self.bones.vertices, dtype=float)
        self._faces = np.asarray(self.bones.faces)
        self._normals = np.asarray(self.bones.face_normals, dtype=float)
        self._face_cols = tuple(np.ascontiguousarray(self._faces[:, i]) for i in range(3))
        self._chunks, self._chunk_centre, self._chunk_radius = face_chunks(self._verts, self._faces)

    def faces_near_plane(self, origin: np.ndarray, normal: np.ndarray) -> np.ndarray:
        """Ascending indices of the bone faces that may cross a plane: every face in a chunk it passes through.

        A superset of the crossing faces (a face's vertices lie in its chunk's bounding sphere), so a
        test on these faces finds the same crossings, in the same order, as a test on every face.

        Parameters
        ----------
        origin : (3,) a point of the plane (CT, mm).
        normal : (3,) its unit normal.
        """
        dc = np.abs(self._chunk_centre @ normal - origin @ normal)
        faces = self._chunks[dc <= self._chunk_radius].ravel()
        return np.sort(faces[faces >= 0])

    def speckle(self, ct_from_image, width: int, height: int, spacing, cell_mm: float) -> np.ndarray:
        """(2, H, W) float32 unit-variance scatterers (real, imaginary) fixed in the tissue.

        Each pixel centre's CT position is quantised to a cubic cell of ``cell_mm``; the cell's integer
        coordinates are hashed into a table of :data:`SPECKLE_TABLE_SIZE` independent complex Gaussians drawn
        once per scene from its seed. Deterministic: the same CT position gives the same scatterer.
        """
        table = getattr(self, "_speckle_table", None)
        if table is None:
            rng = np.random.default_rng([self.seed, 0x5BEC])
            c = rng.standard_normal(2 * SPECKLE_TABLE_SIZE, dtype=np.float32).view(np.complex64)
            table = self._speckle_table = (np.ascontiguousarray(c.real), np.ascontiguousarray(c.imag))
        t = np.asarray(ct_from_image, dtype=float)
        sx, sy = (float(v) for v in spacing)
        inv = 1.0 / float(cell_mm)
        rows = np.arange(height, dtype=np.float32)[:, None]
        cols = np.arange(width, dtype=np.float32)[None, :]
        idx = np.zeros((height, width), dtype=np.int32)
        q = np.empty((height, width), dtype=np.float32)
        qi = np.empty((height, width), dtype=np.int32)
        with np.errstate(over="ignore"):
            for axis, mult in enumerate((73856093, 19349663, 83492791)):
                a = (t[axis, 3] + 0.5 * sx * t[axis, 0] + 0.5 * sy * t[axis, 1]) * inv
                # relative to the frame's first cell: small float32 offsets, exact integer cells
                a0 = np.floor(a)
                np.add(np.float32(t[axis, 1] * sy * inv) * rows, np.float32(t[axis, 0] * sx * inv) * cols + np.float32(a - a0),
                       out=q)
                np.floor(q, out=qi, casting="unsafe")  # integral float32 -> int32, exact
                qi += np.int32(int(a0))
                qi *= np.int32(mult)
                idx ^= qi
        idx &= SPECKLE_TABLE_SIZE - 1
        out = np.empty((2, height, width), dtype=np.float32)
        np.take(table[0], idx, out=out[0])
        np.take(table[1], idx, out=out[1])
        return out

    def texture(self, points: np.ndarray) -> np.ndarray:
        """(T/3, N) three smooth random fields (unit variance about) at CT points ``(N, 3)`` (mm)."""
        ph = points @ self.texture_k.T + self.texture_phase  # (N, T)
        c = np.cos(ph).reshape(len(points), 3, -1).sum(axis=2)
        return (c / np.sqrt(self.texture_k.shape[0] / 6)).T


#: Faces per chunk of :func:`face_chunks`.
FACE_CHUNK = 256


def face_chunks(verts: np.ndarray, faces: np.ndarray, size: int = FACE_CHUNK, cell_mm: float = 1.0):
    """Faces grouped into spatially compact chunks with bounding spheres, to skip far faces quickly.

    Faces are ordered along a Morton curve of their centroids and cut into chunks of ``size``.

    Parameters
    ----------
    verts : (V, 3) vertices (mm).
    faces : (F, 3) vertex indices.
    size : faces per chunk.
    cell_mm : Morton cell (mm).

    Returns
    -------
    chunks : (C, size) int64 face indices, padded with -1.
    centre : (C, 3) centres of the chunks' bounding spheres (mm).
    radius : (C,) their radii (mm), grown by 1e-6 mm against rounding.
    """
    tri = np.asarray(verts, dtype=float)[np.asarray(faces)]  # (F, 3, 3)
    if not len(tri):
        return np.zeros((0, size), dtype=np.int64), np.zeros((0, 3)), np.zeros(0)
    order = morton_order(tri.mean(axis=1), cell_mm)
    n = -(-len(order) // size)
    # the last chunk is padded with its own last face for the sphere, then with -1
    chunks = np.concatenate([order, np.full(n * size - len(order), order[-1])]).reshape(n, size)
    pts = tri[chunks].reshape(n, -1, 3)
    centre = (pts.min(axis=1) + pts.max(axis=1)) / 2
    radius = np.linalg.norm(pts - centre[:, None], axis=2).max(axis=1) + 1e-6
    chunks.reshape(-1)[len(order):] = -1
    return chunks, centre, radius



def check_geometry(ct_from_image, width, height, spacing) -> tuple[np.ndarray, int, int, float, float]:
    """A frame's geometry validated: its transform, image size and pixel size.

    Parameters
    ----------
    ct_from_image : (4, 4) image plane (mm) -> CT (mm).
    width, height : image size (px).
    spacing : (sx, sy) pixel size (mm/px).

    Returns
    -------
    ``(t, width, height, sx, sy)``: the transform as a float array, the size as ints (px), the spacing as
    floats (mm/px).

    Raises
    ------
    ParamsError
        If the transform is not a finite 4x4, the size not positive or the spacing not positive.
    """
    t = np.asarray(ct_from_image, dtype=float)
    if t.shape != (4, 4) or not np.isfinite(t).all():
        raise ParamsError(f"ct_from_image must be a finite 4x4 transform, got shape {t.shape}")
    if int(width) < 1 or int(height) < 1:
        raise ParamsError(f"image size must be positive, got {width} x {height} px")
    sx, sy = (float(v) for v in spacing)
    if not (sx > 0 and sy > 0):
        raise ParamsError(f"pixel spacing must be positive (mm/px), got {spacing}")
    return t, int(width), int(height), sx, sy


def first_hits(scene: Scene, ct_from_image, width: int, spacing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First bone hit of every scan line.

    Returns
    -------
    depth_mm : (W,) depth of the hit below the image top (mm; inf where none).
    cos_incidence : (W,) cosine of the 3D angle between the beam and the surface's
        outward normal, reversed (1 = head on; nan where none).
    face : (W,) index of the hit triangle (-1 where none).
    """
    t = np.asarray(ct_from_image, dtype=float)
    sx = float(spacing[0])
    ex, ey = t[:3, 0], t[:3, 1]
    x = (np.arange(width) + 0.5) * sx
    origins = t[:3, 3] + x[:, None] * ex
    dirs = np.broadcast_to(ey, origins.shape).copy()
    depth = np.full(width, np.inf)
    cosi = np.full(width, np.nan)
    face = np.full(width, -1)
    loc, ray, tri = scene._bone_rays.intersects_location(origins, dirs, multiple_hits=False)
    if len(ray):
        depth[ray] = np.einsum("ij,j->i", loc - origins[ray], ey)
        cosi[ray] = -(scene._normals[tri] @ ey)
        face[ray] = tri
    return depth, cosi, face


def skin_depths(scene: Scene, ct_from_image, width: int, spacing, lookback_mm: float = 40.0) -> np.ndarray:
    """Depth (mm) where each scan line enters the skin (negative: the probe presses in; inf: never)."""
    t = np.asarray(ct_from_image, dtype=float)
    if scene._skin_rays is None:
        return np.full(width, -np.inf)
    ex, ey = t[:3, 0], t[:3, 1]
    x = (np.arange(width) + 0.5) * float(spacing[0])
    origins = t[:3, 3] + x[:, None] * ex - lookback_mm * ey
    dirs = np.broadcast_to(ey, origins.shape).copy()
    out = np.full(width, np.inf)
    loc, ray, _ = scene._skin_rays.intersects_location(origins, dirs, multiple_hits=False)
    if len(ray):
        out[ray] = np.einsum("ij,j->i", loc - origins[ray], ey) - lookback_mm
    return out


def plane_contour(scene: Scene, ct_from_image, width: int, height: int, spacing, step_mm: float | None = None,
                  margin_mm: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Points sampled along the image plane's cut of the bone meshes.

    Parameters
    ----------
    step_mm : sampling step along the cut (mm); default a quarter of the finer pixel spacing.
    margin_mm : keep points up to this far outside the image (mm).

    Returns
    -------
    points : (M, 2) image-plane mm (x, y).
    incidence_deg : (M,) in-plane incidence angle (degrees, 0 = head on, > 90 facing away).
    """
    t = np.asarray(ct_from_image, dtype=float)
    sx, sy = (float(v) for v in spacing)
    step = step_mm or min(sx, sy) / 2
    o, ex, ey, ez = t[:3, 3], t[:3, 0], t[:3, 1], t[:3, 2]
    d = scene._verts @ ez - o @ ez
    pos = d > 0
    near = scene.faces_near_plane(o, ez)
    f0, f1, f2 = (col[near] for col in scene._face_cols)
    cnt = pos[f0].view(np.uint8) + pos[f1].view(np.uint8) + pos[f2].view(np.uint8)
    fi = near[(cnt == 1) | (cnt == 2)]
    if not len(fi):
        return np.zeros((0, 2)), np.zeros(0)
    f = scene._faces[fi]
    dd = d[f]
    v = scene._verts[f]  # (n, 3, 3)
    a_idx, b_idx = np.array([0, 1, 2]), np.array([1, 2, 0])
    da, db = dd[:, a_idx], dd[:, b_idx]
    edge_cross = (da > 0) != (db > 0)  # (n, 3): exactly two per crossing face
    da, db = da[edge_cross], db[edge_cross]
    va, vb = v[:, a_idx][edge_cross], v[:, b_idx][edge_cross]
    seg = (va + (da / (da - db))[:, None] * (vb - va)).reshape(-1, 2, 3)
    q = np.stack([(seg - o) @ ex, (seg - o) @ ey], axis=-1)  # (n, 2, 2)
    # clip each segment to the image rectangle grown by the margin (Liang-Barsky), then sample it
    lo = np.array([-margin_mm, -margin_mm])
    hi = np.array([width * sx + margin_mm, height * sy + margin_mm])
    p0, dp = q[:, 0], q[:, 1] - q[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        ta = (lo - p0) / dp
        tb = (hi - p0) / dp
    t_enter = np.where(dp == 0, np.where((p0 >= lo) & (p0 <= hi), -np.inf, np.inf), np.minimum(ta, tb))
    t_leave = np.where(dp == 0, np.where((p0 >= lo) & (p0 <= hi), np.inf, -np.inf), np.maximum(ta, tb))
    t0 = np.maximum(t_enter.max(axis=1), 0.0)
    t1 = np.minimum(t_leave.min(axis=1), 1.0)
    keep = t0 <= t1
    if not keep.any():
        return np.zeros((0, 2)), np.zeros(0)
    a = p0[keep] + t0[keep, None] * dp[keep]
    b = p0[keep] + t1[keep, None] * dp[keep]
    nrm = scene._normals[fi[keep]]
    n_ip = np.stack([nrm @ ex, nrm @ ey], axis=1)
    norm = np.linalg.norm(n_ip, axis=1)
    inc = np.where(norm > 1e-6, np.degrees(np.arccos(np.clip(-n_ip[:, 1] / np.maximum(norm, 1e-12), -1, 1))), 90.0)
    seglen = np.linalg.norm(b - a, axis=1)
    ns = np.maximum(1, np.ceil(seglen / step).astype(int)) + 1
    idx = np.repeat(np.arange(len(a)), ns)
    frac = (np.arange(ns.sum()) - np.repeat(np.cumsum(ns) - ns, ns)) / np.repeat(ns - 1, ns)
    points = a[idx] + frac[:, None] * (b[idx] - a[idx])
    return points, inc[idx]
