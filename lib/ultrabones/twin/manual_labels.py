"""The simulated annotator's manual labels: one frame traced, and ``LabelsManual/`` written for many.

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

:mod:`ultrabones.twin.annotator` is the annotator as stage 05's manual baseline and its sensitivity study.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

from ultrabones.core.dataset import LABELS, LABELS_FULL, LABELS_MANUAL, read_label, write_label
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
        """The ``annotator_<field>`` keys of the ``twin`` parameter section (the sweep's keys are not fields)."""
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
