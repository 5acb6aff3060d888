"""The twin's CT volume of a procedural leg (:mod:`ultrabones.twin.anatomy`): its tissues in Hounsfield units,
the fiducial spheres, partial volume at every edge, noise and blur."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from ultrabones.core.errors import ParamsError
from ultrabones.twin.anatomy import Anatomy, Tube


#: Hounsfield units of the twin's tissues.
HU = {"air": -1000.0, "fat": -90.0, "dermis": 30.0, "muscle": 45.0, "cortical": 1400.0,
      "cancellous": 400.0, "fiducial": 900.0}


def _partial(sd: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume fraction inside (0..1) from a signed distance (mm) over an edge ``width`` (mm)."""
    return np.clip(0.5 - sd / width, 0.0, 1.0)


def ct_volume(
    anatomy: Anatomy,
    spheres_mm: np.ndarray,
    sphere_radius_mm: float,
    spacing_mm: tuple[float, float, float],
    rng: np.random.Generator,
    noise_hu: float = 12.0,
    margin_mm: float = 8.0,
    cortex_mm: float = 2.0,
    chunk: int = 32,
    blur_mm: float = 0.0,
    cortical_hu: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The specimen's CT: bones, soft tissue and the marker's fiducial spheres, in HU.

    Partial volume at every edge (fractions from the analytic signed distances),
    cortical shell over cancellous bone (both above any soft-tissue threshold,
    so a thresholded segmentation is solid like Mimics' filled masks), fat under
    the skin, Gaussian noise. Built slab by slab: memory is a few slices.

    Parameters
    ----------
    anatomy : the specimen.
    spheres_mm : (F, 3) fiducial sphere centres in CT (mm).
    sphere_radius_mm : their radius (mm).
    spacing_mm : voxel size (x, y, z) in mm (paper: 0.839, 0.839, 0.6).
    rng : random generator (noise).
    noise_hu : noise standard deviation (HU).
    margin_mm : air margin around skin and spheres (mm).
    cortex_mm : cortical thickness (mm).
    chunk : slices per slab.
    blur_mm : standard deviation of the scanner's Gaussian point-spread function (mm), applied to the
        partial-volume image before the noise (0: none, a one-voxel partial-volume ramp only). A blurred thin
        cortex peaks lower and spreads, so a fixed threshold's iso-surface moves off the true surface.
    cortical_hu : HU of cortical bone (default ``HU["cortical"]``, 1400).

    Returns
    -------
    volume : (nz, ny, nx) int16 HU, indexed ``[k, j, i] = [z, y, x]``.
    origin_mm : (3,) CT position of voxel ``[0, 0, 0]``'s centre (x, y, z).
    """
    spacing = np.asarray(spacing_mm, dtype=float)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise ParamsError(f"CT spacing must be three positive numbers (mm), got {spacing_mm}")
    if not blur_mm >= 0:
        raise ParamsError(f"CT blur must be zero or positive (mm), got {blur_mm}")
    cortical = HU["cortical"] if cortical_hu is None else float(cortical_hu)
    spheres = np.asarray(spheres_mm, dtype=float).reshape(-1, 3)
    lo = np.minimum(anatomy.skin.bounds()[0], (spheres - sphere_radius_mm).min(0) if len(spheres) else np.inf)
    hi = np.maximum(anatomy.skin.bounds()[1], (spheres + sphere_radius_mm).max(0) if len(spheres) else -np.inf)
    origin = np.floor((lo - margin_mm) / spacing) * spacing
    shape = np.ceil((hi + margin_mm - origin) / spacing).astype(int) + 1  # (nx, ny, nz)
    nx, ny, nz = shape
    vol = np.empty((nz, ny, nx), dtype=np.int16)
    blurred = np.empty((nz, ny, nx), dtype=np.float32) if blur_mm > 0 else None
    edge = float(spacing.mean())
    axes = [origin[d] + spacing[d] * np.arange(shape[d]) for d in range(3)]

    def index_box(box):
        """Voxel index ranges (per axis) covering a CT box (mm) with a 2-voxel rim."""
        i0 = np.clip(np.floor((box[0] - origin) / spacing).astype(int) - 2, 0, shape)
        i1 = np.clip(np.ceil((box[1] - origin) / spacing).astype(int) + 3, 0, shape)
        return i0, i1

    shapes = [(anatomy.skin, "skin")] + [(b, "bone") for b in anatomy.bones.values()]
    shapes += [(c, "sphere") for c in spheres]
    boxes = [index_box(sh.bounds()) if kind != "sphere" else index_box(np.stack([sh - sphere_radius_mm,
                                                                              sh + sphere_radius_mm]))
             for sh, kind in shapes]
    for k0 in range(0, nz, chunk):
        k1 = min(nz, k0 + chunk)
        hu = np.full((k1 - k0, ny, nx), HU["air"], dtype=np.float32)
        for (sh, kind), (i0, i1) in zip(shapes, boxes):
            a0, a1 = max(k0, i0[2]), min(k1, i1[2])
            if a0 >= a1:
                continue
            gx, gy, gz = axes[0][i0[0]:i1[0]], axes[1][i0[1]:i1[1]], axes[2][a0:a1]
            if kind == "sphere":
                zz, yy, xx = np.meshgrid(gz - sh[2], gy - sh[1], gx - sh[0], indexing="ij")
                sd = np.sqrt(xx * xx + yy * yy + zz * zz) - sphere_radius_mm
            elif isinstance(sh, Tube):
                sd = sh.signed_distance_grid(gx, gy, gz)
            else:
                zz, yy, xx = np.meshgrid(gz, gy, gx, indexing="ij")
                sd = sh.signed_distance(np.stack([xx.ravel(), yy.ravel(), zz.ravel()], 1)).reshape(xx.shape)
            f = _partial(sd, edge).astype(np.float32)
            if kind == "skin":
                tissue = np.where(sd > -1.5, HU["dermis"], np.where(sd > -anatomy.fat_mm, HU["fat"], HU["muscle"]))
            elif kind == "bone":
                tissue = np.where(sd > -cortex_mm, cortical, HU["cancellous"])
            else:
                tissue = HU["fiducial"]
            view = hu[a0 - k0:a1 - k0, i0[1]:i1[1], i0[0]:i1[0]]
            view += f * (np.float32(tissue) - view)
        if blurred is not None:
            blurred[k0:k1] = hu
            continue
        hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu)
        vol[k0:k1] = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    if blurred is not None:
        sigma = tuple(float(blur_mm) / spacing[d] for d in (2, 1, 0))
        gaussian_filter(blurred, sigma, output=blurred, mode="nearest", truncate=3.0)
        for k0 in range(0, nz, chunk):  # the same noise stream as without blur, slab by slab
            k1 = min(nz, k0 + chunk)
            hu = blurred[k0:k1] + rng.standard_normal((k1 - k0, ny, nx), dtype=np.float32) * np.float32(noise_hu)
            vol[k0:k1] = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return vol, origin
