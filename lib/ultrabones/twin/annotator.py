"""A simulated annotator: the manual-labelling baseline on the digital twin.

**This is a simulated annotator, not a person.** The paper compares its model
with 700 test images labelled by an expert surgeon (Section 3.2, "Manual
annotation"); no surgeon labels the twin, so this module stands in for one and
behaves as the paper describes a person does (Section 4 and Fig. 6):

1. *Knows where bone can be.* A surgeon knows the anatomy; the annotator
   starts from the bone contour the CT gives (``Labels_full``, the whole
   contour, or ``Labels`` when that is absent). It never uses the twin's truth.
2. *Marks only clearly visible, hyperechoic bone.* A contour pixel is marked
   when the image there is bright: its grey value, smoothed over ``smooth_mm``
   and taken as the maximum within ``search_mm`` in depth (the echo is a layer,
   not a line), is among the frame's brightest (above its ``visible_quantile``
   grey level), stands out from the tissue (at least ``visible_contrast`` times
   the frame's median grey level) and reaches ``visible_fraction`` of the
   brightest echo on the contour. Low-intensity and anechoic (shadowed) parts
   of the surface are therefore missed, as the paper reports of its expert.
3. *Traces strokes, not pixels.* A dim stretch of the contour shorter than
   ``gap_mm`` between two visible ones is traced through (a person draws
   through a small dropout), and visible stretches shorter than
   ``min_length_mm`` are left out (too small to be sure of).
4. *Hand-tracing jitter.* One stroke follows the middle of the visible band
   (its skeleton) and wanders off the surface by a smooth random
   displacement (standard deviation ``jitter_mm``, correlation length
   ``jitter_corr_mm``, in depth and laterally) and is drawn with a brush
   ``brush_mm`` wide.

Every draw comes from a generator seeded by ``(seed, record, timestamp)``, so a
frame's manual label does not depend on which other frames are annotated.

The defaults (:class:`AnnotatorParams`) are physical guesses, not fitted to the
paper's manual scores: a 0.5 mm brush paints the hyperechoic layer (about the
0.6 mm band of a CT-derived label), the hand wanders by 0.25 mm (standard
deviation) over about 2 mm, and "clearly visible" means among the brightest 3 %
of the frame and at least 60 % of its brightest bone echo.

**A sensitivity study, not one point.** Because the visibility rule decides
what is missed, the annotator's low-intensity completeness (and any "the model
beats manual" verdict) follows from that rule's level more than from any
measurement. :func:`visibility_sweep` therefore scores the annotator along
its visibility level (``visible_quantile``, ``visible_contrast``,
``visible_fraction``; default :data:`DEFAULT_LEVELS`) per intensity region,
from the lenient level (every contour pixel marked) up, so the manual
comparison is a curve (:func:`plot_sweep`) and the model is compared with
each of its levels. Its geometry also starts from the pipeline's own
``Labels_full``, the contour the reference ``Labels`` are cut from: it is
scored against labels it shares geometry with. Real manual labels
(``LabelsManual/``) are scored by :func:`ultrabones.evaluation.metrics.evaluate` like any
method.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

from ultrabones.core.errors import DatasetError, ParamsError

#: Its name in tables, figures and metrics: a sensitivity study of a rule, not a person.
LABEL = "simulated annotator (sensitivity study)"


@dataclass(frozen=True)
class AnnotatorParams:
    """Behaviour of the simulated annotator (lengths in mm).

    Attributes
    ----------
    visible_quantile : grey-level quantile of the (smoothed) frame that a
        visible echo must exceed (0..1).
    visible_contrast : ratio to the frame's median grey level (speckle) that a
        visible echo must reach.
    visible_fraction : share of the frame's brightest contour echo (its 99th
        percentile) that a visible echo must reach (0..1).
    smooth_mm : Gaussian smoothing of the image before judging brightness.
    search_mm : depth range (each side) in which the echo is looked for.
    gap_mm : dropouts shorter than this are traced through.
    min_length_mm : visible stretches shorter than this are not marked.
    jitter_mm : standard deviation of the hand-tracing displacement.
    jitter_corr_mm : correlation length of that displacement along the stroke.
    brush_mm : width of the drawn stroke.
    """

    visible_quantile: float = 0.97
    visible_contrast: float = 2.0
    visible_fraction: float = 0.6
    smooth_mm: float = 0.15
    search_mm: float = 0.3
    gap_mm: float = 1.0
    min_length_mm: float = 2.0
    jitter_mm: float = 0.25
    jitter_corr_mm: float = 2.0
    brush_mm: float = 0.5

    def __post_init__(self):
        for name in ("visible_quantile", "visible_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ParamsError(f"annotator {name} = {v}: must lie in [0, 1]")
        if not (np.isfinite(self.visible_contrast) and self.visible_contrast >= 0):
            raise ParamsError(f"annotator visible_contrast = {self.visible_contrast}: must be a finite ratio >= 0")
        for name in ("smooth_mm", "search_mm", "gap_mm", "min_length_mm", "jitter_mm", "jitter_corr_mm", "brush_mm"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise ParamsError(f"annotator {name} = {v}: must be a finite length >= 0 mm")

    @classmethod
    def from_section(cls, section: dict) -> "AnnotatorParams":
        """The ``annotator_<field>`` keys of the ``evaluation`` parameter section (the sweep's keys are not fields)."""
        import dataclasses

        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k[len("annotator_"):]: v for k, v in section.items()
                      if k.startswith("annotator_") and k[len("annotator_"):] in names})


def frame_rng(seed: int, record_key: str, timestamp: int) -> np.random.Generator:
    """The generator of one frame: depends on the seed, the record and the timestamp only."""
    return np.random.default_rng([int(seed), zlib.crc32(record_key.encode()), int(timestamp)])


def _ellipse(radius_mm: float, spacing) -> np.ndarray:
    """A filled ellipse of ``radius_mm`` in pixels of spacing ``(sx, sy)`` (at least one pixel)."""
    sx, sy = spacing
    rx, ry = max(int(np.floor(radius_mm / sx)), 0), max(int(np.floor(radius_mm / sy)), 0)
    v, u = np.mgrid[-ry:ry + 1, -rx:rx + 1]
    return (u * sx) ** 2 + (v * sy) ** 2 <= radius_mm ** 2 + 1e-12


def visible_contour(image: np.ndarray, contour: np.ndarray, spacing, p: AnnotatorParams) -> np.ndarray:
    """Contour pixels an annotator sees as clearly hyperechoic, bridged and pruned into strokes.

    Parameters
    ----------
    image : (H, W) uint8 B-mode frame.
    contour : (H, W) bool, where the bone surface can be (CT contour).
    spacing : (sx, sy) mm per pixel.
    p : annotator behaviour.

    Returns
    -------
    (H, W) bool, the contour pixels the annotator will trace.
    """
    sx, sy = spacing
    if not contour.any():
        return np.zeros(contour.shape, bool)
    img = ndimage.gaussian_filter(image.astype(np.float32), (p.smooth_mm / sy, p.smooth_mm / sx))
    reach = max(int(round(p.search_mm / sy)), 0)
    rows, cols = np.nonzero(contour)
    box = (slice(max(rows.min() - reach, 0), rows.max() + reach + 1), slice(cols.min(), cols.max() + 1))
    bright = ndimage.maximum_filter1d(img[box], 2 * reach + 1, axis=0) if reach else img[box]
    echo = bright[contour[box]]
    q, median = np.quantile(img[::2, ::2], [p.visible_quantile, 0.5])  # every 4th pixel: ample for a quantile
    level = max(q, p.visible_contrast * median, p.visible_fraction * np.quantile(echo, 0.99))
    seen = np.zeros(contour.shape, bool)
    seen[box] = _strokes(contour[box] & (bright >= level), contour[box], spacing, p)
    return seen


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels of ``mask``'s pixels, pieces up to two pixels apart joined (a rasterised contour can skip a pixel)."""
    lab, n = ndimage.label(ndimage.binary_dilation(mask, np.ones((5, 5), bool)), structure=np.ones((3, 3), bool))
    return np.where(mask, lab, 0), n


def _extent_mm(lab: np.ndarray, n: int, spacing) -> np.ndarray:
    """(n + 1,) bounding-box diagonal (mm) of each labelled component (index 0 unused)."""
    sx, sy = spacing
    ext = np.zeros(n + 1)
    for i, sl in enumerate(ndimage.find_objects(lab, n), start=1):
        if sl is not None:
            ext[i] = np.hypot((sl[0].stop - sl[0].start) * sy, (sl[1].stop - sl[1].start) * sx)
    return ext


def _strokes(seen: np.ndarray, contour: np.ndarray, spacing, p: AnnotatorParams) -> np.ndarray:
    """Bridge short dim gaps between visible stretches, then drop stretches shorter than ``min_length_mm``."""
    if not seen.any():
        return seen
    if p.gap_mm > 0:
        eight = np.ones((3, 3), bool)
        lab_seen, n_seen = ndimage.label(seen, structure=eight)
        lab_dim, n_dim = ndimage.label(contour & ~seen, structure=eight)
        if n_dim and n_seen > 1:
            big = n_seen + 1
            hi = ndimage.maximum_filter(lab_seen, 5)  # largest and smallest visible stretch touching a pixel
            lo = ndimage.minimum_filter(np.where(lab_seen > 0, lab_seen, big), 5)
            at = lab_dim > 0
            touch_hi, touch_lo = np.zeros(n_dim + 1, np.int64), np.full(n_dim + 1, big, np.int64)
            np.maximum.at(touch_hi, lab_dim[at], hi[at])
            np.minimum.at(touch_lo, lab_dim[at], lo[at])
            touch_hi, touch_lo = touch_hi[1:], touch_lo[1:]
            short = _extent_mm(lab_dim, n_dim, spacing)[1:] < p.gap_mm
            bridge = np.concatenate([[False], short & (touch_hi > 0) & (touch_lo < big) & (touch_hi != touch_lo)])
            seen = seen | bridge[lab_dim]
    lab, n = _components(seen)
    keep = _extent_mm(lab, n, spacing) >= p.min_length_mm
    keep[0] = False
    return keep[lab]


def _bbox_pad(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    rows, cols = np.nonzero(mask)
    return (slice(max(rows.min() - pad, 0), rows.max() + pad + 1), slice(max(cols.min() - pad, 0), cols.max() + pad + 1))


def smooth_field_at(rows: np.ndarray, cols: np.ndarray, corr_px: tuple[float, float], std: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Values at pixels ``(rows, cols)`` of a smooth random field (std ``std``, correlation ``corr_px`` pixels).

    The field is Gaussian-filtered white noise on a grid a third of the
    correlation length apart, interpolated linearly at the requested pixels:
    the cost does not grow with the image size.
    """
    rows, cols = np.asarray(rows, float), np.asarray(cols, float)
    if std == 0 or rows.size == 0:
        return np.zeros(rows.shape)
    step = np.maximum(np.asarray(corr_px, float) / 3.0, 1.0)
    sigma = np.asarray(corr_px, float) / step  # filter width in grid cells
    pad = np.ceil(4 * sigma).astype(int) + 1  # the noise extends beyond the pixels: a stationary field there
    r0, c0 = rows.min(), cols.min()
    shape = (int((rows.max() - r0) / step[0]) + 2 * pad[0] + 2, int((cols.max() - c0) / step[1]) + 2 * pad[1] + 2)
    coarse = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="constant", truncate=4.0)
    # filtered unit white noise has the std of the kernel's L2 norm: scale to ``std`` exactly
    impulse = np.zeros(tuple(2 * pad + 1))
    impulse[tuple(pad)] = 1.0
    norm = np.sqrt((ndimage.gaussian_filter(impulse, sigma, mode="constant", truncate=4.0) ** 2).sum())
    coarse *= std / norm
    return ndimage.map_coordinates(coarse, [(rows - r0) / step[0] + pad[0], (cols - c0) / step[1] + pad[1]], order=1)


def annotate(image: np.ndarray, contour: np.ndarray, spacing, params: AnnotatorParams,
             rng: np.random.Generator) -> np.ndarray:
    """The simulated annotator's manual label of one frame.

    Parameters
    ----------
    image : (H, W) uint8 B-mode frame.
    contour : (H, W) bool bone contour from the CT (``Labels_full``).
    spacing : (sx, sy) mm per pixel (column step, row step).
    params : annotator behaviour.
    rng : the frame's generator (:func:`frame_rng`).

    Returns
    -------
    (H, W) bool manual label (empty when no bone is clearly visible).

    Raises
    ------
    DatasetError
        If the image and contour sizes differ or the image is not 8-bit.
    """
    image, contour = np.asarray(image), np.asarray(contour, bool)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise DatasetError(f"annotate: expected an (H, W) uint8 image, got {image.dtype} {image.shape}")
    if image.shape != contour.shape:
        raise DatasetError(f"annotate: image size {image.shape} differs from the contour's {contour.shape}")
    sx, sy = float(spacing[0]), float(spacing[1])
    seen = visible_contour(image, contour, (sx, sy), params)
    out = np.zeros(contour.shape, bool)
    if not seen.any():
        return out
    # a person draws one stroke along the surface, whatever the thickness of the CT band
    box = _bbox_pad(seen, 1)
    centre = np.zeros_like(seen)
    centre[box] = skeletonize(seen[box])
    rows, cols = np.nonzero(centre)
    corr = (params.jitter_corr_mm / sy, params.jitter_corr_mm / sx)
    dv = smooth_field_at(rows, cols, corr, params.jitter_mm / sy, rng)  # depth jitter (rows)
    du = smooth_field_at(rows, cols, corr, params.jitter_mm / sx, rng)  # lateral jitter (columns)
    v = np.clip(np.rint(rows + dv).astype(int), 0, out.shape[0] - 1)
    u = np.clip(np.rint(cols + du).astype(int), 0, out.shape[1] - 1)
    brush = _ellipse(params.brush_mm / 2, (sx, sy)) if params.brush_mm > 0 else np.ones((1, 1), bool)
    pr, pc = brush.shape[0] // 2 + 2, brush.shape[1] // 2 + 2
    box = (slice(max(v.min() - pr, 0), v.max() + pr + 1), slice(max(u.min() - pc, 0), u.max() + pc + 1))
    stroke = np.zeros(out[box].shape, bool)
    stroke[v - box[0].start, u - box[1].start] = True
    # the displaced pixels of a stroke may leave one-pixel holes: close them, then apply the brush
    stroke |= ndimage.binary_closing(stroke, np.ones((3, 3), bool))
    out[box] = ndimage.binary_dilation(stroke, brush)
    return out


def annotate_frames(frames: Sequence, spacing, params: AnnotatorParams, seed: int, progress: bool = True) -> int:
    """Write the simulated annotator's ``LabelsManual/<t>_label.png`` for every frame.

    Parameters
    ----------
    frames : :class:`ultrabones.core.dataset.Frame` objects (test frames).
    spacing : (sx, sy) mm per pixel.
    params : annotator behaviour.
    seed : master seed.

    Returns
    -------
    Number of frames annotated. Frames stream: one image in memory at a time.
    """
    from tqdm import tqdm

    from ultrabones.core.dataset import LABELS, LABELS_FULL, LABELS_MANUAL, read_label, write_label

    n = 0
    for fr in tqdm(frames, desc=f"{LABEL} labelling", disable=not progress):
        rec, t = fr.record, fr.timestamp
        img = rec.read_image(t)
        src = rec.label_path(t, LABELS_FULL)
        if not src.is_file():
            src = rec.label_path(t, LABELS)
        contour = read_label(src, img.shape)
        manual = annotate(img, contour, spacing, params, frame_rng(seed, rec.key, t))
        write_label(rec.label_path(t, LABELS_MANUAL), manual)
        n += 1
    return n


# ----------------------------------------------------------------------------- sensitivity study

#: The visibility levels swept by :func:`visibility_sweep` by default: from the lenient level, which marks
#: every contour pixel (no quantile, no contrast to the median, no share of the brightest echo), to "only the
#: brightest 1 %, three times the speckle median"; the annotator's default (0.97, 2.0, 0.6) is one of them.
#: Each level sets all three thresholds: a level that left ``visible_contrast`` at the annotator's 2.0 would
#: let that term hide its quantile (the 0.5 quantile of a frame is its median, below twice the median).
DEFAULT_LEVELS: tuple[dict, ...] = (
    {"visible_quantile": 0.0, "visible_contrast": 0.0, "visible_fraction": 0.0},
    {"visible_quantile": 0.5, "visible_contrast": 1.0, "visible_fraction": 0.0},
    {"visible_quantile": 0.8, "visible_contrast": 1.25, "visible_fraction": 0.2},
    {"visible_quantile": 0.9, "visible_contrast": 1.5, "visible_fraction": 0.4},
    {"visible_quantile": 0.95, "visible_contrast": 1.75, "visible_fraction": 0.5},
    {"visible_quantile": 0.97, "visible_contrast": 2.0, "visible_fraction": 0.6},
    {"visible_quantile": 0.99, "visible_contrast": 3.0, "visible_fraction": 0.8},
)

#: The fields one sweep level sets, in the order of the profile's lists (``annotator_sweep_*``).
LEVEL_FIELDS = ("visible_quantile", "visible_contrast", "visible_fraction")


def is_lenient(level: dict) -> bool:
    """Whether a level marks every contour pixel it may (all three visibility thresholds 0)."""
    return all(float(level.get(k, 1.0)) == 0.0 for k in LEVEL_FIELDS)


def sweep_levels(quantiles: Sequence[float], fractions: Sequence[float], contrasts: Sequence[float]) -> list[dict]:
    """The levels of :func:`visibility_sweep` from the profile's three lists (``annotator_sweep_*``).

    A sweep must span: it includes the lenient level (quantile, contrast and fraction 0: every contour pixel
    is marked), and no two levels are the same rule.

    Parameters
    ----------
    quantiles : ``visible_quantile`` of each level (0..1).
    fractions : ``visible_fraction`` of each level (0..1), as many as ``quantiles``.
    contrasts : ``visible_contrast`` of each level (ratio to the frame's median grey level, >= 0), as many.

    Returns
    -------
    ``[{"visible_quantile": q, "visible_contrast": c, "visible_fraction": f}, ...]`` in the given order.

    Raises
    ------
    ParamsError
        If the lists differ in length or are empty, a value is out of range, two levels are equal, or no
        level is the lenient one.
    """
    q, f, c = ([float(v) for v in vals] for vals in (quantiles, fractions, contrasts))
    if not q or not len(q) == len(f) == len(c):
        raise ParamsError(f"evaluation.annotator_sweep_quantiles ({len(q)} values), annotator_sweep_contrasts "
                          f"({len(c)} values) and annotator_sweep_fractions ({len(f)} values) must be non-empty "
                          "lists of equal length: one triple per level")
    bad = [v for v in q + f if not 0.0 <= v <= 1.0]
    if bad:
        raise ParamsError(f"evaluation.annotator_sweep_quantiles/fractions: {bad[0]} is outside [0, 1]")
    bad = [v for v in c if not (np.isfinite(v) and v >= 0.0)]
    if bad:
        raise ParamsError(f"evaluation.annotator_sweep_contrasts: {bad[0]} is not a finite ratio >= 0")
    levels = [dict(zip(LEVEL_FIELDS, t)) for t in zip(q, c, f)]
    triples = list(zip(q, c, f))
    dup = next((i for i, t in enumerate(triples) if t in triples[:i]), None)
    if dup is not None:
        raise ParamsError(f"evaluation.annotator_sweep_*: level {dup} (quantile {q[dup]}, contrast {c[dup]}, "
                          f"fraction {f[dup]}) repeats level {triples.index(triples[dup])}: the levels must differ")
    if not any(is_lenient(lv) for lv in levels):
        raise ParamsError("evaluation.annotator_sweep_*: no lenient level (quantile 0, contrast 0, fraction 0): "
                          "the sweep must start where the annotator marks every contour pixel, or its low-intensity "
                          "completeness is low by construction")
    return levels


def visibility_sweep(frames: Sequence, spacing, sigmas, threshold: float, base: AnnotatorParams = AnnotatorParams(),
                     levels: Sequence[dict] = DEFAULT_LEVELS, seed: int = 0, reference=None,
                     contour_kind: str | None = None, sigma_mm: float = 0.5, progress: bool = False):
    """The simulated annotator as a sensitivity study: scores along its visibility level.

    At each level (``base`` with the level's fields replaced, typically ``visible_quantile`` and
    ``visible_fraction``), the annotator labels every frame in memory (nothing is written) and its labels are
    scored against the reference labels with the paper's metrics, per intensity region (the Otsu split of
    :mod:`ultrabones.evaluation.metrics`). Every level of a frame uses the same seeded generator
    (:func:`frame_rng`), so the hand-tracing jitter is the same and only the visibility rule changes along the curve.

    Parameters
    ----------
    frames : :class:`ultrabones.core.dataset.Frame` objects (the evaluated test frames).
    spacing : (sx, sy) mm per pixel.
    sigmas : increasing distance thresholds (mm) containing ``sigma_mm``.
    threshold : Otsu grey level of the high/low split (the one the model is scored with).
    base : the annotator's other behaviour.
    levels : one dict of :class:`AnnotatorParams` fields per level.
    seed : master seed (as :func:`annotate_frames`).
    reference : label source of the ground truth (default ``Labels/``).
    contour_kind : where the annotator may mark (default ``Labels_full``, else ``Labels``).
    sigma_mm : the reported threshold (mm).

    Returns
    -------
    DataFrame, one row per level and region (``all``, ``high``, ``low``):
    ``level`` (index), the swept fields, ``region``, ``accuracy``,
    ``completeness``, ``f1`` (released protocol), the same with ``_strict``,
    ``n_frames`` (released), ``marked_share`` (labelled pixels of the level
    over those of the reference, all frames).

    Raises
    ------
    ParamsError
        If a level names a field the annotator does not have.
    """
    import dataclasses

    import pandas as pd
    from tqdm import tqdm

    from ultrabones.core import distance_scores, label_distances
    from ultrabones.core.dataset import LABELS, LABELS_FULL, read_label
    from ultrabones.evaluation import metrics

    names = {f.name for f in dataclasses.fields(AnnotatorParams)}
    plist = []
    for i, lv in enumerate(levels):
        bad = sorted(set(lv) - names)
        if bad:
            raise ParamsError(f"annotator sweep level {i}: unknown field(s) {', '.join(bad)}")
        plist.append(dataclasses.replace(base, **lv))
    sig = label_distances.check_sigmas(sigmas)
    sx, sy = label_distances.check_spacing(spacing)
    ref = reference if reference is not None else metrics.dataset_label(LABELS)
    aggs = [metrics.Aggregate(sig) for _ in plist]
    marked = np.zeros(len(plist), np.int64)
    n_ref = 0
    for fr in tqdm(frames, desc=f"{LABEL} sweep", disable=not progress):
        rec, t = fr.record, fr.timestamp
        img = rec.read_image(t)
        gt = ref(fr, img.shape)
        n_ref += int(gt.sum())
        src = rec.label_path(t, contour_kind or LABELS_FULL)
        if contour_kind is None and not src.is_file():
            src = rec.label_path(t, LABELS)
        contour = read_label(src, img.shape)
        preds = {i: annotate(img, contour, (sx, sy), p, frame_rng(seed, rec.key, t)) for i, p in enumerate(plist)}
        for i, sc in metrics.frame_scores_many(preds, gt, img, (sx, sy), sig, threshold, border=False).items():
            aggs[i].add(sc)
            marked[i] += int(preds[i].sum())
    keys = sorted({k for lv in levels for k in lv})
    rows = []
    for i, (p, agg) in enumerate(zip(plist, aggs)):
        at = agg.at(sigma_mm)
        for r in metrics.REGIONS:
            row = {"level": i, **{k: getattr(p, k) for k in keys}, "region": r}
            for k in distance_scores.SCORES:
                row[k] = at["released"][r][k]
                row[f"{k}_strict"] = at["strict"][r][k]
            row["n_frames"] = at["released"][r]["n_frames"]
            row["marked_share"] = marked[i] / n_ref if n_ref else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class SimulatedAnnotator:
    """The simulated annotator as stage 05's manual baseline (an
    :class:`ultrabones.evaluation.benchmark.Annotator`): labels the evaluated frames, then is swept.

    Attributes
    ----------
    params : its behaviour at the profile's visibility level (lengths in mm).
    levels : the visibility levels of the sensitivity study (:func:`sweep_levels`).
    seed : master seed of the hand-tracing jitter (:func:`frame_rng`).
    name : its name in tables, figures and metrics (:data:`LABEL`).
    """

    params: AnnotatorParams
    levels: tuple[dict, ...] = DEFAULT_LEVELS
    seed: int = 0
    name: str = LABEL

    @classmethod
    def from_section(cls, section: dict, seed: int = 0) -> "SimulatedAnnotator":
        """From the ``evaluation`` section's ``annotator_*`` keys (the sweep's from ``annotator_sweep_*``).

        Raises
        ------
        ParamsError
            If a value is out of range or the sweep's two lists differ in length (:func:`sweep_levels`).
        """
        levels = sweep_levels(section["annotator_sweep_quantiles"], section["annotator_sweep_fractions"],
                              section["annotator_sweep_contrasts"])
        return cls(AnnotatorParams.from_section(section), tuple(levels), int(seed))

    def annotate(self, frames: Sequence, spacing, progress: bool = True) -> int:
        """Write ``LabelsManual/`` for every frame (:func:`annotate_frames`); returns how many."""
        return annotate_frames(frames, spacing, self.params, self.seed, progress)

    def sweep(self, frames: Sequence, spacing, sigmas, threshold: float, sigma_mm: float = 0.5):
        """Scores along the visibility levels on the same frames and Otsu split (:func:`visibility_sweep`)."""
        return visibility_sweep(frames, spacing, sigmas, threshold, self.params, self.levels, seed=self.seed,
                                sigma_mm=sigma_mm)


def plot_evaluation_sweep(result):
    """The sweep of a stage-05 result (:class:`ultrabones.evaluation.benchmark.EvaluationResult`), with the
    model's and the classical detector's released scores at the report threshold as horizontal lines, and
    the levels at which the model's low-intensity completeness beats the annotator's marked (Fig. 8)."""
    from ultrabones.evaluation.comparison import model_vs_levels

    released = result.summary["at"]["released"]
    refs = {m: released[m] for m in result.methods if m != "manual"}
    levels = model_vs_levels(result.summary["at"], result.sweep.to_dict("records"))
    won = [lv["level"] for lv in levels if lv["beats"]]
    return plot_sweep(result.sweep, "completeness", references=refs, beats=won,
                      title=f"{LABEL}: released protocol at {result.params.report_sigma_mm} mm; the model's "
                            f"low-intensity completeness beats the annotator's at {len(won)} of {len(levels)} "
                            f"levels (stars)")


def plot_sweep(table, score: str = "completeness", model: dict | None = None, references: dict | None = None,
               title: str = "", beats: Sequence[int] = ()):
    """Low-, high-intensity and overall ``score`` along the visibility level (the manual curve of Fig. 8).

    ``model`` (``{region: {score: value}}``) adds the model's values as horizontal lines;
    ``references`` (``{name: {region: {score: value}}}``, e.g. the model and the
    classical detector) adds one line style per method; ``title`` goes above both panels; ``beats`` (level
    indices) are starred on the low-intensity ``score`` curve: the levels at which the model beats the annotator.
    """
    import matplotlib.pyplot as plt

    from ultrabones.evaluation.comparison import level_name

    colours = {"all": "black", "high": "tab:green", "low": "tab:blue"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    for ax, sc in zip(axes, (score, "f1")):
        for r, col in colours.items():
            t = table[table["region"] == r]
            ax.plot(t["level"], t[sc], "o-", color=col, label=f"{LABEL} {r}")
            if r == "low" and sc == score and len(beats):
                won = t[t["level"].isin(list(beats))]
                ax.plot(won["level"], won[sc], "*", color="tab:red", ms=12, zorder=5,
                        label=f"model's low {score} higher")
            refs = {**({"model": model} if model else {}), **(references or {})}
            for (name, vals), ls in zip(refs.items(), ("--", ":", "-.", (0, (5, 1)))):
                if vals and r in vals and sc in vals[r] and vals[r][sc] is not None:
                    ax.axhline(vals[r][sc], color=col, ls=ls, lw=1, label=f"{name} {r}")
        ax.set_xlabel("visibility level (higher: only brighter echoes are marked)")
        lv = table[table["region"] == "all"]
        if {"visible_quantile", "visible_fraction"} <= set(lv.columns):
            ax.set_xticks(lv["level"], [level_name(r, "\n") for r in lv.to_dict("records")], fontsize=7)
        ax.set_ylabel(sc)
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
