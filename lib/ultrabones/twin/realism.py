"""How realistic a B-mode frame looks: twin and real frames side by side.

The image statistics of :mod:`ultrabones.twin.image_statistics` (regions found from the image, statistics per
frame; no labels, no poses, no truth) computed on the twin's frames and on real ones, compared statistic by
statistic (:func:`compare`), with the reasons a statistic may stay apart (:data:`REASONS`); the frames read
and cached, notebook 00's realism table, metrics and figure. This module re-exports the statistics.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from PIL import Image

from ultrabones.core import atomic
from ultrabones.twin.image_statistics import (STATISTICS, Regions, autocorrelation_lengths, bone_statistics,
                                              fascia_statistics, find_regions, frame_statistics, frames_table,
                                              fwhm_mm, speckle_snr)

#: Pixel spacing of the released UltraBones100k frames (mm/px), reference images and real sweep.
REAL_SPACING_MM = 0.05392


def compare(twin_frames, real_frames) -> pd.DataFrame:
    """Twin vs real, statistic by statistic.

    Parameters
    ----------
    twin_frames, real_frames : iterables of ``(image uint8 (H, W), spacing)``, or tables from
        :func:`frames_table`.

    Returns
    -------
    DataFrame indexed by statistic with columns ``twin_median``, ``twin_iqr``, ``real_median``, ``real_iqr``,
    ``ratio`` (twin median / real median), ``within_20pct`` (|ratio - 1| <= 0.2), ``n_twin``, ``n_real``
    (frames where the statistic exists).
    """
    tw = twin_frames if isinstance(twin_frames, pd.DataFrame) else frames_table(twin_frames)
    re = real_frames if isinstance(real_frames, pd.DataFrame) else frames_table(real_frames)
    rows = []
    for s in STATISTICS:
        a, b = tw[s].dropna().to_numpy(float), re[s].dropna().to_numpy(float)

        def med_iqr(x):
            if not len(x):
                return np.nan, np.nan
            q1, q2, q3 = np.percentile(x, [25, 50, 75])
            return q2, q3 - q1

        am, ai = med_iqr(a)
        bm, bi = med_iqr(b)
        ratio = am / bm if (np.isfinite(am) and np.isfinite(bm) and bm != 0) else np.nan
        rows.append({"statistic": s, "twin_median": am, "twin_iqr": ai, "real_median": bm, "real_iqr": bi,
                     "ratio": ratio, "within_20pct": bool(np.isfinite(ratio) and abs(ratio - 1) <= 0.2),
                     "n_twin": len(a), "n_real": len(b)})
    return pd.DataFrame(rows).set_index("statistic")


def read_frames(paths: Iterable, spacing, every: int = 1, limit: int | None = None) -> list[tuple[np.ndarray, tuple]]:
    """``(image, spacing)`` of PNG files (every ``every``-th, at most ``limit``), as grey uint8."""
    files = sorted(Path(p) for p in paths)[::every]
    if limit is not None:
        files = files[:limit]
    sp = (float(spacing), float(spacing)) if np.isscalar(spacing) else tuple(spacing)
    return [(np.asarray(Image.open(f).convert("L")), sp) for f in files]


#: Why a statistic may stay outside 20 % of the real median: the twin's known simplifications, written for
#: every statistic (notebook 00's realism table shows the reason beside any statistic outside 20 %). With the
#: default image settings, 40 twin frames of seed 1 against the 86 real frames: tissue_iqr (ratio 0.75),
#: lateral_corr_mm (0.63), shadow_std (1.26) and fascia_per_cm (0.29) are outside; on the smoke twin (seed 0)
#: fascia_fraction is too (1.34; 1.09 on seed 1).
REASONS = {
    "tissue_median": "display gain is one setting (simulate.gain_db) for every frame; real frames vary with the "
                     "operator's gain and depth",
    "tissue_iqr": "one tissue with one scatterer density and one gain over every specimen; the real frames mix "
                  "fat, muscle and tendon layers from 14 specimens, so their grey levels spread wider",
    "speckle_snr": "fully developed Rayleigh speckle everywhere; real tissue also holds unresolved specular "
                   "reflectors",
    "axial_corr_mm": "the axial PSF is one Gaussian (simulate.psf_axial_mm) on 0.2 mm pixels; the real frames "
                     "have 0.054 mm pixels",
    "lateral_corr_mm": "one fixed Gaussian beam width (simulate.psf_lateral_mm) at every depth; a real linear "
                       "array's beam widens away from its focus and the scanner interpolates between scan lines; "
                       "a wider twin beam would also smear the bone echo's lateral ends that the labels rely on",
    "bone_thickness_mm": "the echo is a specular line plus an exponential ring-down (simulate.ringdown_mm); real "
                         "cortex echoes also carry trabecular backscatter",
    "bone_to_tissue": "one specular reflectivity for all bone; real echoes vary with periosteum and cortex "
                      "roughness",
    "shadow_to_tissue": "the shadow's floor is one power level (simulate.shadow_level); real shadows hold "
                        "side-lobe energy that depends on the bone's width",
    "shadow_std": "the shadow's texture is speckle at one floor level plus reverberation bands of one strength "
                  "(simulate.reverb_level); in real shadows both vary with the bone and the tissue above, and "
                  "the real median is the lower one",
    "fascia_per_cm": "the twin draws fascia as sheets every simulate.septa_spacing_mm (3 mm) at one brightness; "
                     "a real leg's many thin fascia and septa near the skin are resolved by 0.054 mm pixels, "
                     "while the twin's 0.2 mm pixels merge or lose lines closer than about a millimetre",
    "fascia_fraction": "a share of pixels depends on the pixel size: a line one pixel thick covers 0.2 mm in the "
                       "twin and 0.054 mm in the real frames, so fewer twin lines (fascia_per_cm) still cover a "
                       "larger share",
}

#: Real frames used by :func:`real_frame_files`: every reference image, and every ``REAL_SWEEP_EVERY``-th sweep frame.
REAL_SWEEP_EVERY = 5


def real_frame_files(real_dir, sweep_every: int = REAL_SWEEP_EVERY) -> list[Path]:
    """The real frames under a shared folder: ``reference_images/*.png`` and every ``sweep_every``-th
    ``real_sweep/**/UltrasoundImages/*.png`` (all at :data:`REAL_SPACING_MM`). Empty when there are none."""
    real_dir = Path(real_dir)
    files = sorted((real_dir / "reference_images").glob("*.png"))
    files += sorted((real_dir / "real_sweep").rglob("UltrasoundImages/*.png"))[::max(1, int(sweep_every))]
    return files


def twin_frame_files(raw_dir, n: int = 40) -> list[Path]:
    """``n`` twin B-mode frames spread evenly over every specimen's sweeps in a twin's ``raw/`` folder
    (phantom frames excluded), in a fixed order."""
    files = sorted(p for p in Path(raw_dir).glob("*/record*/images/*.png") if "phantom" not in p.parts)
    if len(files) <= n:
        return files
    return [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]


def twin_spacing(raw_dir) -> tuple[float, float]:
    """Pixel spacing (sx, sy) in mm/px of a twin's frames, from ``raw/system.json``."""
    return tuple(float(v) for v in json.loads((Path(raw_dir) / "system.json").read_text())["spacing_mm"])


def _files_digest(files) -> str:
    """SHA-256 over the files' names and contents (the cache key of their statistics)."""
    h = hashlib.sha256()
    for f in files:
        h.update(Path(f).name.encode())
        h.update(hashlib.sha256(Path(f).read_bytes()).digest())
    return h.hexdigest()[:16]


def cached_frames_table(files, spacing, cache_dir=None) -> pd.DataFrame:
    """:func:`frames_table` of PNG files, cached as CSV in ``cache_dir`` under a digest of their content."""
    files = list(files)
    cache = Path(cache_dir) / f"realism_{_files_digest(files)}.csv" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        return pd.read_csv(cache)
    table = frames_table(read_frames(files, spacing))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(cache, table.to_csv(index=False))
    return table


def realism_table(twin: pd.DataFrame, real: pd.DataFrame) -> pd.DataFrame:
    """:func:`compare` with a ``reason`` column: :data:`REASONS` for a statistic outside 20 %, else ``""``."""
    table = compare(twin, real)
    table["reason"] = ["" if ok else REASONS.get(stat, "no reason stated")
                       for stat, ok in table["within_20pct"].items()]
    return table


def realism_metrics(table: pd.DataFrame) -> dict:
    """The metrics key ``realism``: per statistic ``twin_median``, ``real_median``, ``ratio``, ``within_20pct``
    (NaN written as None), plus ``n_within_20pct`` and ``n_statistics``."""
    def num(v):
        return float(v) if v is not None and np.isfinite(v) else None

    out = {stat: {"twin_median": num(r.twin_median), "real_median": num(r.real_median), "ratio": num(r.ratio),
                  "within_20pct": bool(r.within_20pct)} for stat, r in table.iterrows()}
    out["n_within_20pct"] = int(table["within_20pct"].sum())
    out["n_statistics"] = int(len(table))
    return out


@dataclass
class RealismResult:
    """Twin vs real image statistics of one run (:func:`run_realism`).

    Attributes
    ----------
    table : :func:`realism_table` (statistics as rows).
    twin_files, real_files : the frames measured.
    twin_spacing : (sx, sy) mm/px of the twin frames.
    """

    table: pd.DataFrame
    twin_files: list
    real_files: list
    twin_spacing: tuple

    def metrics(self) -> dict:
        """:func:`realism_metrics` of the table, with the frame counts."""
        out = realism_metrics(self.table)
        out["n_twin_frames"], out["n_real_frames"] = len(self.twin_files), len(self.real_files)
        return out


def run_realism(raw_dir, real_dir, n_twin: int = 40, cache_dir=None) -> RealismResult | None:
    """Measure a twin run's frames against the real frames.

    Parameters
    ----------
    raw_dir : the twin's ``raw/`` folder (``system.json`` and ``<specimen>/record*/images``).
    real_dir : a folder holding ``reference_images/`` and/or ``real_sweep/`` (:func:`real_frame_files`),
        or None.
    n_twin : twin frames sampled (:func:`twin_frame_files`).
    cache_dir : where the real frames' statistics are cached (keyed by their content), or None.

    Returns
    -------
    :class:`RealismResult`, or None when ``real_dir`` is None or holds no real frame (the caller says so
    and skips).
    """
    if real_dir is None or not Path(real_dir).is_dir():
        return None
    real_files = real_frame_files(real_dir)
    if not real_files:
        return None
    twin_files = twin_frame_files(raw_dir, n_twin)
    spacing = twin_spacing(raw_dir)
    twin = frames_table(read_frames(twin_files, spacing))
    real = cached_frames_table(real_files, REAL_SPACING_MM, cache_dir)
    return RealismResult(realism_table(twin, real), twin_files, real_files, spacing)


def figure_side_by_side(result: RealismResult, n: int = 3, height_mm: float = 40.0):
    """Twin frames (top row) and real frames (bottom row), each at its physical size in mm (same scale).

    Parameters
    ----------
    result : :class:`RealismResult`.
    n : frames per row, spread evenly over each sample.
    height_mm : depth shown (mm from the top).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, n, figsize=(3.2 * n, 6.4), squeeze=False)
    rows = ((result.twin_files, result.twin_spacing, "twin"), (result.real_files, (REAL_SPACING_MM,) * 2, "real"))
    for row, (files, sp, name) in enumerate(rows):
        pick = [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)] if files else []
        for ax, f in zip(axes[row], pick):
            img = np.asarray(Image.open(f).convert("L"))
            h, w = img.shape
            ax.imshow(img, cmap="gray", vmin=0, vmax=255, extent=(0, w * sp[0], h * sp[1], 0))
            ax.set_ylim(min(height_mm, h * sp[1]), 0)
            f = Path(f)
            where = (f"{f.parents[2].name}/{f.parents[1].name}/{f.stem}" if f.parent.name in ("images", "UltrasoundImages")
                     else f.stem)
            ax.set_title(f"{name}: {where}", fontsize=8)
            ax.set_xlabel("mm")
        axes[row][0].set_ylabel("depth (mm)")
    fig.tight_layout()
    return fig


__all__ = ["STATISTICS", "REAL_SPACING_MM", "REASONS", "Regions", "find_regions", "fwhm_mm",
           "autocorrelation_lengths", "speckle_snr", "bone_statistics", "fascia_statistics", "frame_statistics",
           "frames_table", "compare", "read_frames", "real_frame_files", "twin_frame_files", "twin_spacing",
           "cached_frames_table", "realism_table", "realism_metrics", "RealismResult", "run_realism",
           "figure_side_by_side"]


def realism_metrics_or_skip(result: "RealismResult | None", real_dir) -> dict:
    """The ``realism`` metrics of notebook 00: the comparison's, or why it was skipped (no real frames)."""
    if result is None:
        return {"skipped": f"no real frames under {str(real_dir)!r}"}
    return result.metrics()
