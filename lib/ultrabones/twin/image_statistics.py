"""Image statistics of one B-mode frame, computed the same way on twin and real frames.

Every statistic is computed from the 8-bit image and its pixel spacing alone
(no labels, no poses, no truth), so the same code runs on the digital twin's
frames and on real ones, and :func:`ultrabones.twin.realism.compare` sets them side by side.

Regions, found from the image (:func:`find_regions`):

- **bone**: per scan line (image column), the brightest deep ridge with a dark
  band beneath it (a shadow-peak detector in the spirit of Pandey et al.,
  IJCARS 2018): the depth maximising the smoothed grey level minus the mean
  grey level of the 1 to 8 mm below it. A column has bone when that ridge is
  among the frame's brightest 5 % of pixels, the band below is at most half as
  bright as the tissue 1 to 5 mm above it, and the run of such columns is at
  least 2 mm wide.
- **shadow**: 1.5 to 8 mm below the ridge of a bone column.
- **tissue**: below the first 1 mm of contact and above the ridge minus 1 mm
  (bone columns), or above the shallowest bone ridge of the frame (other
  columns); pixels whose 1 mm neighbourhood is black (no contact, gel, outside
  the sector) are left out.

Statistics per frame (:func:`frame_statistics`), all in grey levels (0..255)
or mm:

- ``tissue_median``, ``tissue_iqr``: the tissue's grey-level histogram.
- ``speckle_snr``: median over 3 x 3 mm tissue patches of mean / std, over the
  most homogeneous half of the patches (lowest std).
- ``axial_corr_mm``, ``lateral_corr_mm``: full width at half maximum of the
  normalised autocorrelation of 4 x 4 mm tissue patches (mean removed),
  averaged over patches, along the depth and along the width (mm).
- ``bone_thickness_mm``: the echo's extent along the scan line above half its
  height over the shadow beneath (mm), median over bone columns.
- ``bone_to_tissue``: peak grey level of the echo / median grey level of the
  tissue 1 to 5 mm above it, median over bone columns.
- ``shadow_to_tissue``: mean grey level of the shadow / of the tissue above.
- ``shadow_std``: standard deviation of grey levels inside the shadow (its
  texture; 0 for a pure black shadow).
- ``fascia_per_cm``: bright linear structures in the top third of the image:
  ridges along the depth at least 2 robust standard deviations (of the excess
  over the 3 mm local mean) above that mean, in connected runs at least 3 mm wide; counted per scan line and per cm
  of depth, averaged over scan lines.
- ``fascia_fraction``: share of the top third's pixels on such lines.

A statistic that a frame lacks (no bone found, no tissue patch) is NaN and is
left out of the medians.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

#: Statistic names in table order.
STATISTICS = ("tissue_median", "tissue_iqr", "speckle_snr", "axial_corr_mm", "lateral_corr_mm",
              "bone_thickness_mm", "bone_to_tissue", "shadow_to_tissue", "shadow_std", "fascia_per_cm",
              "fascia_fraction")


@dataclass
class Regions:
    """Regions of one frame found from the image.

    Attributes
    ----------
    bone_row : (W,) row of the bone ridge per column (-1 where none).
    tissue : (H, W) bool, tissue pixels.
    shadow : (H, W) bool, shadow pixels.
    top : first row of contact (int).
    """

    bone_row: np.ndarray
    tissue: np.ndarray
    shadow: np.ndarray
    top: int


def _px(mm: float, s: float) -> int:
    return max(1, int(round(mm / s)))


def _column_mean(cs: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean of each column between rows ``a`` (incl.) and ``b`` (excl.) from cumulative sums ``cs`` (H+1, W)."""
    h = cs.shape[0] - 1
    a = np.clip(a, 0, h)
    b = np.clip(b, 0, h)
    cols = np.arange(cs.shape[1])[None, :] if a.ndim == 2 else np.arange(cs.shape[1])
    n = np.maximum(b - a, 1)
    return (cs[b, cols] - cs[a, cols]) / n


def find_regions(image: np.ndarray, spacing) -> Regions:
    """Bone ridge, shadow and tissue of a frame from its grey levels (see the module docstring).

    Parameters
    ----------
    image : (H, W) uint8.
    spacing : (sx, sy) mm/px.
    """
    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape
    sx, sy = (float(v) for v in spacing)
    sm = ndi.gaussian_filter(img, (0.2 / sy, 0.5 / sx))
    # contact: the first row whose 1 mm neighbourhood mean is above a faint level, per frame
    local = ndi.uniform_filter(img, (_px(1.0, sy), _px(1.0, sx)))
    lit = local > 8.0
    rows_lit = np.flatnonzero(lit.mean(axis=1) > 0.3)
    top = int(rows_lit[0]) + _px(1.0, sy) if len(rows_lit) else 0
    cs = np.vstack([np.zeros((1, w), np.float64), np.cumsum(sm, axis=0, dtype=np.float64)])
    rows = np.arange(h)[:, None]
    below = _column_mean(cs, np.broadcast_to(rows + _px(1.0, sy), (h, w)), np.broadcast_to(rows + _px(8.0, sy), (h, w)))
    above = _column_mean(cs, np.broadcast_to(rows - _px(5.0, sy), (h, w)), np.broadcast_to(rows - _px(1.0, sy), (h, w)))
    score = sm - below
    min_row = top + _px(3.0, sy)
    max_row = h - _px(3.0, sy)
    score[:min_row] = -np.inf
    score[max_row:] = -np.inf
    bone_row = np.full(w, -1)
    if max_row > min_row:
        r = np.argmax(score, axis=0)
        cols = np.arange(w)
        bright = np.percentile(sm[top:], 95) if top < h else np.inf
        ok = (sm[r, cols] >= bright) & (below[r, cols] <= 0.5 * above[r, cols]) & lit[r, cols]
        # keep runs of bone columns at least 2 mm wide
        lab, n = ndi.label(ok)
        if n:
            sizes = ndi.sum(ok, lab, np.arange(1, n + 1))
            ok &= np.isin(lab, 1 + np.flatnonzero(sizes >= 2.0 / sx))
        bone_row[ok] = r[ok]
    has = bone_row >= 0
    limit = np.full(w, h)
    if has.any():
        limit[:] = int(bone_row[has].min()) - _px(1.0, sy)
        limit[has] = bone_row[has] - _px(1.0, sy)
    tissue = (rows >= top) & (rows < limit[None, :]) & lit
    shadow = has[None, :] & (rows >= bone_row[None, :] + _px(1.5, sy)) & (rows < bone_row[None, :] + _px(8.0, sy))
    return Regions(bone_row=bone_row, tissue=tissue, shadow=shadow, top=top)


def _patches(mask: np.ndarray, size: tuple[int, int]) -> list[tuple[slice, slice]]:
    """Non-overlapping patches of ``size`` (rows, cols) lying wholly in ``mask``."""
    ph, pw = size
    h, w = mask.shape
    out = []
    for r in range(0, h - ph + 1, ph):
        for c in range(0, w - pw + 1, pw):
            if mask[r:r + ph, c:c + pw].all():
                out.append((slice(r, r + ph), slice(c, c + pw)))
    return out


def fwhm_mm(profile: np.ndarray, step_mm: float) -> float:
    """Full width at half maximum (mm) of a symmetric profile given from lag 0 (value 1) outward.

    The half-width is the first lag where the profile drops below 0.5, linearly interpolated.
    """
    p = np.asarray(profile, dtype=float)
    below = np.flatnonzero(p < 0.5)
    if not len(below) or below[0] == 0:
        return float("nan")
    k = below[0]
    frac = (p[k - 1] - 0.5) / (p[k - 1] - p[k])
    return float(2 * (k - 1 + frac) * step_mm)


def autocorrelation_lengths(image: np.ndarray, spacing, mask: np.ndarray | None = None,
                            patch_mm: float = 4.0) -> tuple[float, float]:
    """Axial and lateral FWHM (mm) of the normalised autocorrelation of patches inside ``mask``.

    Each ``patch_mm`` square patch has its mean removed; the autocorrelations (zero-padded FFT) are summed
    over patches, divided by the number of pixel pairs at each lag (the unbiased estimate) and normalised
    to 1 at lag 0.

    Returns
    -------
    (axial_mm, lateral_mm), NaN when no patch fits.
    """
    img = np.asarray(image, dtype=np.float64)
    sx, sy = (float(v) for v in spacing)
    mask = np.ones(img.shape, bool) if mask is None else mask
    ph, pw = _px(patch_mm, sy), _px(patch_mm, sx)
    acc = None
    for rs, cs in _patches(mask, (ph, pw)):
        p = img[rs, cs] - img[rs, cs].mean()
        f = np.fft.rfft2(p, s=(2 * ph, 2 * pw))
        ac = np.fft.irfft2(np.abs(f) ** 2, s=(2 * ph, 2 * pw))
        acc = ac if acc is None else acc + ac
    if acc is None or acc[0, 0] <= 0:
        return float("nan"), float("nan")
    # unbiased: divide by the number of pixel pairs at each lag
    pairs = np.outer(ph - np.abs(np.fft.fftfreq(2 * ph, 1 / (2 * ph))), pw - np.abs(np.fft.fftfreq(2 * pw, 1 / (2 * pw))))
    acc = acc / np.maximum(pairs, 1)
    acc = acc / acc[0, 0]
    return fwhm_mm(acc[:ph, 0], sy), fwhm_mm(acc[0, :pw], sx)


def speckle_snr(image: np.ndarray, spacing, mask: np.ndarray, patch_mm: float = 3.0) -> float:
    """Median mean/std of grey levels over the most homogeneous half of ``patch_mm`` tissue patches."""
    img = np.asarray(image, dtype=np.float64)
    sx, sy = (float(v) for v in spacing)
    stats = []
    for rs, cs in _patches(mask, (_px(patch_mm, sy), _px(patch_mm, sx))):
        p = img[rs, cs]
        if p.std() > 0:
            stats.append((p.std(), p.mean() / p.std()))
    if not stats:
        return float("nan")
    stats.sort()
    half = stats[: max(1, len(stats) // 2)]
    return float(np.median([s for _, s in half]))


def bone_statistics(image: np.ndarray, spacing, regions: Regions) -> dict:
    """Echo thickness (mm), echo / tissue above, shadow / tissue above, and shadow std of bone columns."""
    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape
    sx, sy = (float(v) for v in spacing)
    out = {"bone_thickness_mm": np.nan, "bone_to_tissue": np.nan, "shadow_to_tissue": np.nan, "shadow_std": np.nan}
    cols = np.flatnonzero(regions.bone_row >= 0)
    if not len(cols):
        return out
    prof = ndi.uniform_filter1d(img, _px(0.5, sx), axis=1)  # average over 0.5 mm laterally
    thick, ratio, tissue_above = [], [], []
    win = _px(3.0, sy)
    for c in cols:
        r = int(regions.bone_row[c])
        lo, hi = max(r - win, 0), min(r + win, h)
        seg = prof[lo:hi, c]
        k = int(np.argmax(seg))
        peak = seg[k]
        a0, a1 = max(r - _px(5.0, sy), regions.top), max(r - _px(1.0, sy), regions.top)
        t_above = np.median(img[a0:a1, c]) if a1 > a0 else np.nan
        s_below = img[min(r + _px(1.5, sy), h - 1):min(r + _px(8.0, sy), h), c]
        base = float(np.mean(s_below)) if len(s_below) else 0.0
        half = base + 0.5 * (peak - base)
        above_half = seg >= half
        i0 = k
        while i0 > 0 and above_half[i0 - 1]:
            i0 -= 1
        i1 = k
        while i1 < len(seg) - 1 and above_half[i1 + 1]:
            i1 += 1
        thick.append((i1 - i0 + 1) * sy)
        tissue_above.append(t_above)
        if t_above > 0:
            ratio.append(peak / t_above)
    out["bone_thickness_mm"] = float(np.median(thick))
    out["bone_to_tissue"] = float(np.median(ratio)) if ratio else np.nan
    shadow = img[regions.shadow]
    ta = np.nanmean(tissue_above) if np.isfinite(tissue_above).any() else np.nan
    if shadow.size and ta > 0:
        out["shadow_to_tissue"] = float(shadow.mean() / ta)
    if shadow.size:
        out["shadow_std"] = float(shadow.std())
    return out


def fascia_statistics(image: np.ndarray, spacing, top: int = 0, min_length_mm: float = 3.0,
                      k_sigma: float = 2.0) -> dict:
    """Bright linear structures (fascia, septa, skin) in the top third of the image.

    A pixel is on a line when, after smoothing (0.1 mm axially, 0.5 mm laterally), it is a local maximum
    along the depth and exceeds the 3 mm local mean by ``k_sigma`` times the robust standard deviation
    (1.4826 x median absolute deviation) of that excess over the top third; lines are 8-connected runs at least ``min_length_mm``
    wide.

    Returns
    -------
    dict with ``fascia_per_cm`` (line crossings per scan line and cm of depth) and ``fascia_fraction``
    (share of the region's pixels on lines).
    """
    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape
    sx, sy = (float(v) for v in spacing)
    r0, r1 = int(top), max(int(top) + 1, h // 3)
    sm = ndi.gaussian_filter(img, (0.1 / sy, 0.5 / sx))[r0:r1]
    if sm.shape[0] < 3:
        return {"fascia_per_cm": np.nan, "fascia_fraction": np.nan}
    bg = ndi.uniform_filter(sm, (_px(3.0, sy), _px(3.0, sx)))
    resid = sm - bg
    mad = np.median(np.abs(resid - np.median(resid))) * 1.4826
    peak = (sm >= np.roll(sm, 1, axis=0)) & (sm >= np.roll(sm, -1, axis=0))
    peak[0] = peak[-1] = False
    ridge = peak & (resid > k_sigma * max(mad, 1.0))
    # a line one pixel thick along its length may step by one row: dilate along the depth to connect it
    conn = ndi.binary_dilation(ridge, structure=np.ones((3, 1), bool))
    lab, n = ndi.label(conn, structure=np.ones((3, 3), bool))
    if not n:
        return {"fascia_per_cm": 0.0, "fascia_fraction": 0.0}
    sl = ndi.find_objects(lab)
    keep = np.zeros(n + 1, bool)
    for i, s in enumerate(sl):
        keep[i + 1] = (s[1].stop - s[1].start) * sx >= min_length_mm
    lines = ridge & keep[lab]
    depth_cm = (r1 - r0) * sy / 10.0
    return {"fascia_per_cm": float(lines.sum(axis=0).mean() / depth_cm), "fascia_fraction": float(lines.mean())}


def frame_statistics(image: np.ndarray, spacing) -> dict:
    """Every statistic of :data:`STATISTICS` for one frame (see the module docstring).

    Parameters
    ----------
    image : (H, W) uint8 B-mode image.
    spacing : (sx, sy) mm/px, or one number for square pixels.
    """
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[..., :3].mean(axis=2)
    spacing = (float(spacing), float(spacing)) if np.isscalar(spacing) else tuple(float(v) for v in spacing)
    if not (spacing[0] > 0 and spacing[1] > 0):
        raise ValueError(f"pixel spacing must be positive (mm/px), got {spacing}")
    reg = find_regions(image, spacing)
    t = image[reg.tissue].astype(np.float64)
    out = {k: np.nan for k in STATISTICS}
    if t.size:
        q1, q2, q3 = np.percentile(t, [25, 50, 75])
        out["tissue_median"], out["tissue_iqr"] = float(q2), float(q3 - q1)
    out["speckle_snr"] = speckle_snr(image, spacing, reg.tissue)
    out["axial_corr_mm"], out["lateral_corr_mm"] = autocorrelation_lengths(image, spacing, reg.tissue)
    out.update(bone_statistics(image, spacing, reg))
    out.update(fascia_statistics(image, spacing, reg.top))
    return out


def frames_table(frames: Iterable[tuple[np.ndarray, object]]) -> pd.DataFrame:
    """One row of :func:`frame_statistics` per ``(image, spacing)``."""
    return pd.DataFrame([frame_statistics(img, sp) for img, sp in frames], columns=list(STATISTICS))
