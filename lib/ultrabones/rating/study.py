"""Clinical rating study (Section 3.1 "Clinical Evaluation", Section 4, Figs. 5 and 7).

The paper had an orthopaedic sonographer rate one frame per sweep (119 frames),
each shown with the bone label of three alignments (initial tracking, global
CT-US registration, per-frame optimisation) in random order, on a 0-3 rubric
against a 1/2/3 mm scale bar, and compared the methods with a two-sided
Wilcoxon signed-rank test, Bonferroni-corrected over the three pairs.

This module builds that study and analyses it:

- **Rating set.** :func:`sample_frames` draws the frames (seeded, among frames
  that have all three alignments), :func:`render_item` draws an item (image,
  label overlay, scale bar), :func:`assemble_rating_set` shuffles the items
  under anonymous ids and writes a self-contained rating page (:func:`write_rating_page`,
  the paper's rating software, Fig. 5) and the key (id -> frame and method) as a
  separate file. :func:`build_rating_set` does all of it for a dataset.
- **Rater model** (digital twin only, called "rater model: rubric on the true label error" in tables and figures;
  :mod:`ultrabones.twin.rater`): :func:`~ultrabones.evaluation.metrics.directed_distances` measures each item's
  label against the twin's true
  label, :func:`rubric_rating` applies the rubric to the error profile along the
  contour, :func:`simulate_ratings` adds a documented perceptual noise.
- **Statistics.** :func:`read_ratings` validates a ratings table (from the page
  or the rater model) against the key, :func:`method_summary` gives per-method
  n, mean, median and distribution, :func:`wilcoxon_pairs` the three paired
  tests with Bonferroni adjustment and effect size ``r = Z / sqrt(n)``, and
  :func:`plot_rating_distribution` draws Fig. 7.
- **The stage** (notebook 03): :class:`RatingParams` (the ``rating`` section, typed and frozen),
  :func:`build_rating_set` and :func:`analyse` run it, :class:`RatingResult` is what the analysis found,
  :func:`metrics` its metrics JSON entries, :func:`plot_items` and :func:`plot_rating_distribution` its figures.

Ratings are integers 0-3; distances are in millimetres.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, ClassVar, Mapping, Sequence

import numpy as np
import pandas as pd

from ultrabones.core import atomic
from ultrabones.core import paper as _paper
from ultrabones.core.errors import DatasetError, ParamsError
from ultrabones.core.overlay import overlay
from ultrabones.core.params import SectionParams
from ultrabones.core.tracking_table import OPTIMIZED_COLUMNS, REGISTERED_COLUMNS

#: The three alignments, in the order of the paper's Fig. 7.
METHODS = ("initial", "registered", "optimized")
#: How figures and tables name them.
METHOD_LABELS = {"initial": "initial", "registered": "global registration", "optimized": "optimised"}
#: How metrics JSON keys name them (the project's metric vocabulary, read by ``summary``).
METRIC_NAMES = {"initial": "initial", "registered": "registration", "optimized": "optimized"}
#: The compared pairs ``(a, b)``: differences are ``a - b``, the pair is called ``"<a>_vs_<b>"`` (metric names).
PAIRS = (("optimized", "initial"), ("optimized", "registered"), ("initial", "registered"))
#: The paper's rubric (Section 3.1).
RUBRIC = {
    0: "Poor: large sections with visible errors over 3 mm",
    1: "Moderate: some sections with visible errors of 1-3 mm",
    2: "Good: only minor visible errors below 1 mm",
    3: "Excellent: no visible error",
}
RATINGS = tuple(RUBRIC)
#: The paper's results (Section 4): mean rating per method and the Bonferroni-adjusted bound
#: (read from :mod:`ultrabones.core.paper`, the one place that holds them).
PAPER = _paper.rating_study()
#: Columns of the key file (one row per item).
KEY_COLUMNS = ("item_id", "specimen", "record", "timestamp", "method")
#: Columns of a ratings table, as the rating page exports it.
RATINGS_COLUMNS = ("set_id", "item_id", "rating", "rater", "rated_at")
#: Name of the rater model in metrics and in the ``rater`` column of a ratings table.
SIMULATED_RATER = "simulated"
#: How tables and figures name the rater model (it restates the label error measured against the truth).
RATER_MODEL_LABEL = "rater model: rubric on the true label error"
#: Scale bar lengths drawn in the top-left corner of each item (mm).
SCALE_BAR_MM = (1.0, 2.0, 3.0)

KEY_FILE = "key.csv"
PAGE_FILE = "rating_page.html"
SET_FILE = "set.json"
PROFILES_FILE = "error_profiles.csv"
SIMULATED_FILE = "ratings_simulated.csv"
#: The profile section of this stage.
SECTION = "rating"


@dataclass(frozen=True)
class RatingParams(SectionParams):
    """The ``rating`` section of a profile, typed and validated (units and ranges: ``params.SCHEMA["rating"]``).

    Build it with :meth:`~ultrabones.core.params.SectionParams.from_section`. Construction, and so
    ``dataclasses.replace``, validates every value; ``as_dict`` gives the section back as plain data. The
    ``rubric_*`` and ``rater_*`` fields are read only by the rater model (:mod:`ultrabones.twin.rater`).
    """

    SECTION: ClassVar[str] = SECTION

    frames_per_sweep: int
    image_format: str
    jpeg_quality: int
    overlay_alpha: float
    rubric_large_share: float
    rubric_some_share: float
    rubric_visible_mm: float
    rubric_minor_share: float
    rater_gain_sd: float
    rater_lapse: float
    zero_method: str
    wilcoxon_method: str
    alpha: float
    ratings_csv: str | None
    ratings_key: str | None


@dataclass(frozen=True)
class RatingResult:
    """What :func:`analyse` found in one rater's ratings.

    rater : the rater's name (the ``rater`` column).
    summary : :func:`method_summary`, indexed by method.
    tests : :func:`wilcoxon_pairs`, one row per pair.
    n_frames : frames with at least one rating.
    n_complete : frames rated under all three methods.
    """

    rater: str
    summary: pd.DataFrame
    tests: pd.DataFrame
    n_frames: int
    n_complete: int


# ----------------------------------------------------------------------------- sampling


def eligible_timestamps(tracking: pd.DataFrame, labelled: np.ndarray | None = None) -> np.ndarray:
    """Frames that have all three alignments: finite initial, registered and optimised poses.

    Parameters
    ----------
    tracking : a ``tracking.csv`` table with the ``*_registered`` and ``*_optimized`` columns.
    labelled : optional timestamps (ms) the frame must also be among (e.g. those with a label).

    Returns
    -------
    (K,) int64 array of timestamps (ms), sorted.
    """
    from ultrabones.core.geometry import POSE_COLUMNS

    cols = list(POSE_COLUMNS) + list(REGISTERED_COLUMNS) + list(OPTIMIZED_COLUMNS)
    missing = [c for c in cols if c not in tracking.columns]
    if missing:
        raise DatasetError(f"tracking table lacks column(s) {', '.join(missing)} (run notebook 02 first)")
    ok = np.isfinite(tracking[cols].to_numpy(dtype=float)).all(axis=1)
    ts = tracking["timestamp"].to_numpy(dtype=np.int64)[ok]
    if labelled is not None:
        ts = ts[np.isin(ts, np.asarray(labelled, dtype=np.int64))]
    return np.sort(ts)


def sample_frames(candidates: Mapping[tuple[str, str], np.ndarray], per_sweep: int, seed: int) -> pd.DataFrame:
    """Draw ``per_sweep`` frames from every sweep, seeded.

    Parameters
    ----------
    candidates : ``(specimen, record)`` -> eligible timestamps (ms) of that sweep.
    per_sweep : frames drawn per sweep (paper: 1); a sweep with fewer eligible
        frames gives all it has, a sweep with none is skipped.
    seed : random seed; each sweep draws from its own stream derived from the
        seed and the sweep's name, so adding a sweep does not change the others' draws.

    Returns
    -------
    DataFrame with ``specimen, record, timestamp``, sorted.
    """
    if per_sweep < 1:
        raise ParamsError(f"rating.frames_per_sweep: {per_sweep} must be at least 1")
    rows = []
    for (specimen, record), ts in sorted(candidates.items()):
        ts = np.asarray(ts, dtype=np.int64)
        if ts.size == 0:
            continue
        rng = np.random.default_rng([seed, stable_int(f"{specimen}/{record}")])
        pick = np.sort(rng.choice(ts, size=min(per_sweep, ts.size), replace=False))
        rows += [(specimen, record, int(t)) for t in pick]
    return pd.DataFrame(rows, columns=["specimen", "record", "timestamp"])


def stable_int(text: str) -> int:
    """A 32-bit integer from a string, the same on every run and platform."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


# ----------------------------------------------------------------------------- items


def render_item(
    image: np.ndarray,
    label: np.ndarray,
    spacing: tuple[float, float],
    alpha: float = 0.5,
    color: tuple[int, int, int] = (0, 255, 80),
) -> np.ndarray:
    """One rating item: the image with the label overlaid and a 1/2/3 mm scale bar (top left).

    Parameters
    ----------
    image : (H, W) uint8 B-mode image.
    label : (H, W) bool label of one alignment.
    spacing : (sx, sy) mm per pixel; the bars are horizontal, ``L / sx`` pixels long.
    alpha : opacity of the label colour (0: invisible, 1: opaque), so that the
        echo under the label stays visible.
    color : RGB of the label.

    Returns
    -------
    (H, W, 3) uint8 RGB image.
    """
    image = np.asarray(image)
    label = np.asarray(label, dtype=bool)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"render_item: expected a (H, W) uint8 image, got {image.dtype} {image.shape}")
    if label.shape != image.shape:
        raise ValueError(f"render_item: label shape {label.shape} differs from the image's {image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"render_item: alpha {alpha} is not in [0, 1]")
    rgb = overlay(image, [(label, np.asarray(color, dtype=np.float32), alpha)], white=255.0, dtype=np.float32)
    return draw_scale_bar(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), spacing)


def draw_scale_bar(
    rgb: np.ndarray, spacing: tuple[float, float], lengths_mm: Sequence[float] = SCALE_BAR_MM
) -> np.ndarray:
    """Draw horizontal scale bars of ``lengths_mm`` (1, 2, 3 mm) in the top-left corner.

    Parameters
    ----------
    rgb : (H, W, 3) uint8 image (not modified).
    spacing : (sx, sy) mm per pixel.
    lengths_mm : bar lengths (mm), drawn one below the other with their length written beside.

    Returns
    -------
    (H, W, 3) uint8 image with the bars.
    """
    from PIL import Image, ImageDraw, ImageFont

    sx = float(spacing[0])
    if not sx > 0:
        raise ValueError(f"draw_scale_bar: spacing {spacing} must be positive")
    im = Image.fromarray(np.asarray(rgb, dtype=np.uint8), mode="RGB")
    draw = ImageDraw.Draw(im)
    h = im.height
    step = max(10, int(round(h / 45)))  # vertical pitch of the bars (px)
    thick = max(2, step // 5)
    try:
        font = ImageFont.load_default(size=max(9, int(step * 0.9)))
    except TypeError:  # Pillow without FreeType
        font = ImageFont.load_default()
    margin = step // 2
    lengths_px = [length / sx for length in lengths_mm]
    text_w = draw.textlength(f"{max(lengths_mm):g} mm", font=font)
    box = (0, 0, margin * 3 + max(lengths_px) + text_w, margin * 2 + step * len(lengths_mm))
    draw.rectangle(box, fill=(0, 0, 0))
    for i, (mm, px) in enumerate(zip(lengths_mm, lengths_px)):
        y = margin + step * i + step // 2
        x0, x1 = margin, margin + px
        draw.rectangle((x0, y - thick // 2, x1, y + (thick - 1) // 2), fill=(255, 255, 0))
        for x in (x0, x1):
            draw.line((x, y - thick, x, y + thick), fill=(255, 255, 0), width=1)
        draw.text((margin * 2 + max(lengths_px), y), f"{mm:g} mm", fill=(255, 255, 0), font=font, anchor="lm")
    return np.asarray(im)


def encode_item(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> str:
    """A rendered item as a ``data:`` URI (JPEG with 4:4:4 chroma, or PNG)."""
    from PIL import Image

    buf = io.BytesIO()
    im = Image.fromarray(np.asarray(rgb, dtype=np.uint8), mode="RGB")
    if fmt == "jpeg":
        im.save(buf, format="JPEG", quality=int(quality), subsampling=0)
        mime = "image/jpeg"
    elif fmt == "png":
        im.save(buf, format="PNG", compress_level=6)
        mime = "image/png"
    else:
        raise ParamsError(f"rating.image_format: {fmt!r} is not one of ['jpeg', 'png']")
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def make_key(frames: pd.DataFrame, seed: int, methods: Sequence[str] = METHODS) -> pd.DataFrame:
    """Every (frame, method) item, shuffled (seeded) and named by an anonymous id.

    Parameters
    ----------
    frames : ``specimen, record, timestamp`` of the sampled frames.
    seed : random seed of the presentation order.

    Returns
    -------
    The key: ``item_id, specimen, record, timestamp, method`` in presentation
    order; ids ``item001, item002, ...`` follow that order, so they tell nothing
    about the frame or the method.
    """
    items = frames[["specimen", "record", "timestamp"]].merge(pd.DataFrame({"method": list(methods)}), how="cross")
    order = np.random.default_rng([seed, stable_int("rating-order")]).permutation(len(items))
    key = items.iloc[order].reset_index(drop=True)
    width = max(3, len(str(len(key))))
    key.insert(0, "item_id", [f"item{i + 1:0{width}d}" for i in range(len(key))])
    key["timestamp"] = key["timestamp"].astype(np.int64)
    return key[list(KEY_COLUMNS)]


def set_id_of(key: pd.DataFrame) -> str:
    """The rating set's fingerprint: a short hash of its key (ids, frames, methods)."""
    text = key[list(KEY_COLUMNS)].to_csv(index=False)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def write_rating_page(path: Path | str, items: Sequence[tuple[str, str]], set_id: str, title: str) -> Path:
    """Write the self-contained rating page (the paper's rating software, Fig. 5).

    One HTML file, images embedded as data URIs, that opens from disk with no
    server: one item at a time with the rubric, rating by key (0-3) or click,
    back and forward (arrow keys), progress, progress kept across reloads
    (``localStorage``, per set), and CSV export (``set_id, item_id, rating,
    rater, rated_at``, what :func:`read_ratings` reads).

    Parameters
    ----------
    path : the HTML file to write.
    items : ``(item_id, data_uri)`` in presentation order.
    set_id : the set's fingerprint (:func:`set_id_of`), written into every exported row.
    title : page title.
    """
    template = resources.files("ultrabones").joinpath("templates/rating_page.html").read_text()
    data = {
        "set_id": set_id,
        "title": title,
        "rubric": {str(k): v for k, v in RUBRIC.items()},
        "items": [{"id": i, "src": s} for i, s in items],
    }
    # "</" inside the JSON would end the <script> element early.
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    if template.count("__RATING_DATA__") != 1:
        raise RuntimeError("templates/rating_page.html must hold the __RATING_DATA__ placeholder once")
    html = template.replace("__RATING_DATA__", blob).replace("__TITLE__", _html_escape(title))
    return atomic.write_text(path, html)


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def assemble_rating_set(
    items: Sequence[Mapping],
    key: pd.DataFrame,
    out_dir: Path | str,
    fmt: str = "jpeg",
    quality: int = 90,
    title: str = "UltraBones bone-label rating",
) -> str:
    """Write a rating set: the page (items in key order) and, separately, the key.

    Parameters
    ----------
    items : one mapping per (frame, method) with ``specimen, record, timestamp,
        method`` and ``rgb`` (the rendered item, :func:`render_item`) or ``uri``
        (already encoded, :func:`encode_item`).
    key : :func:`make_key` of the same frames.
    out_dir : the set's folder; gets ``rating_page.html`` (for the rater),
        ``key.csv`` (kept by the experimenter) and ``set.json``.

    Returns
    -------
    The set id.
    """
    out_dir = Path(out_dir)
    lookup = {(it["specimen"], it["record"], int(it["timestamp"]), it["method"]): it for it in items}
    if len(lookup) != len(key):
        raise ValueError(f"assemble_rating_set: {len(lookup)} distinct items but the key has {len(key)} rows")
    uris = []
    for row in key.itertuples(index=False):
        k = (row.specimen, row.record, int(row.timestamp), row.method)
        if k not in lookup:
            raise ValueError(f"assemble_rating_set: key row {row.item_id} {k} has no rendered item")
        it = lookup[k]
        uris.append((row.item_id, it["uri"] if "uri" in it else encode_item(it["rgb"], fmt, quality)))
    sid = set_id_of(key)
    write_rating_page(out_dir / PAGE_FILE, uris, sid, title)
    atomic.write_text(out_dir / KEY_FILE, key.to_csv(index=False))
    n_frames = len(key[["specimen", "record", "timestamp"]].drop_duplicates())
    atomic.write_json(out_dir / SET_FILE, {"set_id": sid, "n_items": len(key), "n_frames": n_frames,
                                           "methods": sorted(set(key["method"])), "page": PAGE_FILE, "key": KEY_FILE})
    return sid


def read_key(path: Path | str) -> pd.DataFrame:
    """Read and validate a key file (``item_id, specimen, record, timestamp, method``)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: rating key not found")
    try:
        key = pd.read_csv(path, dtype={"item_id": str, "specimen": str, "record": str, "method": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in KEY_COLUMNS if c not in key.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}")
    dup = key["item_id"].duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise DatasetError(f"{path} row {row + 2}: item_id {key['item_id'].iloc[row]!r} appears twice")
    bad = ~key["method"].isin(METHODS)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DatasetError(f"{path} row {row + 2}: method {key['method'].iloc[row]!r} is not one of {list(METHODS)}")
    key["timestamp"] = key["timestamp"].astype(np.int64)
    return key[list(KEY_COLUMNS)]


def ratings_table(
    key: pd.DataFrame, ratings: Sequence[int], rater: str, set_id: str, rated_at: str = ""
) -> pd.DataFrame:
    """A ratings table in the page's export format, for ratings given in key order."""
    return pd.DataFrame({
        "set_id": set_id,
        "item_id": key["item_id"].to_numpy(),
        "rating": np.asarray(ratings, dtype=np.int64),
        "rater": rater,
        "rated_at": rated_at,
    })[list(RATINGS_COLUMNS)]


# ----------------------------------------------------------------------------- building a set from a dataset


def build_rating_set(
    dataset_root: Path | str,
    specimens: Sequence[str] | None,
    out_dir: Path | str,
    params: RatingParams,
    seed: int,
    label_fn_for: Callable,
    progress: bool = True,
    derived: Path | str | None = None,
) -> dict:
    """Sample frames, render the three alignments of each, write the rating set.

    Parameters
    ----------
    dataset_root : the dataset (layout A or B) after notebook 02.
    specimens : folder names, or None for all.
    out_dir : the set's folder (``paths.rating_dir``).
    params : the ``rating`` section (:class:`RatingParams`).
    seed : master seed.
    label_fn_for : ``label_fn_for(specimen, calib, spacing) -> f(image_shape, pose)``
        returning the (H, W) bool label of one alignment (:func:`labeling_label_fn`
        by default in the notebook); ``specimen`` is a :class:`~ultrabones.core.dataset.Specimen`,
        ``calib`` (4, 4) the image plane in the probe-marker frame, ``spacing`` (sx, sy) mm/px.
    progress : show a progress bar.
    derived : the derived dataset notebook 02 wrote (optimised and registered poses,
        labels; ``Paths.derived``); None: they are beside the inputs.

    Returns
    -------
    ``key`` (DataFrame), ``set_id``, ``labels`` (per key row, the (H, W) bool label drawn on the item: what
    the twin measures against its truth, in a cell of its own, :func:`ultrabones.twin.rater.label_errors`),
    ``examples`` (the first frame's three items with image and label) and ``spacing`` (sx, sy) mm/px. This
    function reads nothing but the dataset.
    """
    from tqdm import tqdm

    from ultrabones.core import dataset as ds

    found = ds.discover(dataset_root, list(specimens) if specimens else None, derived)
    candidates, records = {}, {}
    for spec in found:
        for rec in spec.records:
            df = ds.read_tracking(rec.poses_csv, allow_missing_pose=True)  # bad_pose frames are not eligible
            labelled = rec.labelled_timestamps(ds.LABELS_FULL)
            ts = eligible_timestamps(df, labelled if labelled.size else None)
            ts = ts[np.isin(ts, rec.timestamps())]
            candidates[(spec.name, rec.key.split("/", 1)[1])] = ts
            records[(spec.name, rec.key.split("/", 1)[1])] = (rec, df)
    calib, spacing, _ = ds.read_calibration(dataset_root)
    frames = sample_frames(candidates, params.frames_per_sweep, seed)
    if frames.empty:
        raise DatasetError(f"{dataset_root}: no frame has all three alignments (initial, registered, optimized)")
    key = make_key(frames, seed)
    items, labels, examples = [], {}, []
    fns, by_name = {}, {s.name: s for s in found}
    for row in tqdm(frames.itertuples(index=False), total=len(frames), desc="rating items", disable=not progress):
        rec, df = records[(row.specimen, row.record)]
        if row.specimen not in fns:
            fns[row.specimen] = label_fn_for(by_name[row.specimen], calib, spacing)
        image = rec.read_image(row.timestamp)
        i = int(np.flatnonzero(df["timestamp"].to_numpy() == row.timestamp)[0])
        for method in METHODS:
            pose = ds.poses(df.iloc[[i]], method)[0]
            label = fns[row.specimen](image.shape, pose)
            rgb = render_item(image, label, spacing, params.overlay_alpha)
            item = {"specimen": row.specimen, "record": row.record, "timestamp": row.timestamp, "method": method}
            # Encoded at once: a few hundred kB per item instead of the raw RGB's megabytes.
            items.append(dict(item, uri=encode_item(rgb, params.image_format, params.jpeg_quality)))
            if len(examples) < len(METHODS):
                examples.append(dict(item, rgb=rgb, image=image, label=label))
            labels[(row.specimen, row.record, row.timestamp, method)] = label
    sid = assemble_rating_set(items, key, out_dir, params.image_format, params.jpeg_quality)
    return {"key": key, "set_id": sid, "examples": examples, "spacing": spacing,
            "labels": [labels[(r.specimen, r.record, int(r.timestamp), r.method)] for r in key.itertuples()]}


# ----------------------------------------------------------------------------- statistics


def read_ratings(path: Path | str, key: pd.DataFrame, set_id: str | None = None) -> pd.DataFrame:
    """Read a ratings table and validate it against the key.

    Checks, each failure naming the file and row (the CSV's line number):
    the columns ``item_id, rating, rater`` are present; every ``item_id`` is in
    the key; every rating is an integer 0-3; every rater is named; no item is
    rated twice by the same rater; every rater rated every item of the key (an item
    left out is named); and, when the table has ``set_id`` and
    ``set_id`` is given, the ratings belong to that set.

    Parameters
    ----------
    path : a CSV exported by the rating page (or written by :func:`ratings_table`).
    key : the key of the set that was rated (:func:`read_key`).
    set_id : that set's fingerprint, to catch ratings of another set.

    Returns
    -------
    DataFrame ``item_id, rating (int), rater`` joined with the key
    (``specimen, record, timestamp, method``).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: ratings file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in ("item_id", "rating", "rater") if c not in df.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)} (expected {', '.join(RATINGS_COLUMNS)})")
    if df.empty:
        raise DatasetError(f"{path}: no ratings")
    line = lambda i: i + 2  # noqa: E731 - CSV line of data row i (header is line 1)
    if set_id is not None and "set_id" in df.columns:
        other = df["set_id"] != set_id
        if other.any():
            i = int(np.flatnonzero(other.to_numpy())[0])
            raise DatasetError(
                f"{path} row {line(i)}: set_id {df['set_id'].iloc[i]!r} is not this rating set's ({set_id!r}); "
                "the ratings were made on another set (pass the key of that set)"
            )
    known = set(key["item_id"])
    unknown = ~df["item_id"].isin(known)
    if unknown.any():
        i = int(np.flatnonzero(unknown.to_numpy())[0])
        raise DatasetError(f"{path} row {line(i)}: unknown item_id {df['item_id'].iloc[i]!r} (not in the key)")
    txt = df["rating"].str.strip()
    ok = txt.isin([str(r) for r in RATINGS])
    if not ok.all():
        i = int(np.flatnonzero(~ok.to_numpy())[0])
        raise DatasetError(
            f"{path} row {line(i)}: rating {df['rating'].iloc[i]!r} for {df['item_id'].iloc[i]} is not an integer 0-3"
        )
    unnamed = df["rater"].str.strip() == ""
    if unnamed.any():
        i = int(np.flatnonzero(unnamed.to_numpy())[0])
        raise DatasetError(f"{path} row {line(i)}: rater is empty (every rating needs the rater's name)")
    dup = df.duplicated(subset=["item_id", "rater"], keep="first")
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        first = int(np.flatnonzero(((df["item_id"] == df["item_id"].iloc[i])
                                    & (df["rater"] == df["rater"].iloc[i])).to_numpy())[0])
        raise DatasetError(
            f"{path} row {line(i)}: item {df['item_id'].iloc[i]} rated again by {df['rater'].iloc[i]!r}"
            f" (first at row {line(first)}); one rating per item and rater"
        )
    out = pd.DataFrame({"item_id": df["item_id"], "rating": txt.astype(np.int64), "rater": df["rater"].str.strip()})
    for rater, got in out.groupby("rater", sort=True):  # an item left out would silently drop a frame's pair
        unrated = [i for i in key["item_id"] if i not in set(got["item_id"])]
        if unrated:
            shown = ", ".join(unrated[:5]) + (f" and {len(unrated) - 5} more" if len(unrated) > 5 else "")
            raise DatasetError(
                f"{path}: rater {rater!r} left {len(unrated)} of {len(key)} items unrated ({shown}); rate every "
                "item (the page's Next unrated button finds them) and export again")
    return out.merge(key, on="item_id", how="left", validate="many_to_one")


def method_summary(ratings: pd.DataFrame) -> pd.DataFrame:
    """Per method: n, mean, median, standard deviation and the distribution of ratings.

    Parameters
    ----------
    ratings : :func:`read_ratings`'s table.

    Returns
    -------
    DataFrame indexed by method (in :data:`METHODS` order) with ``n, mean,
    median, sd`` and ``n_0 .. n_3`` (counts) and ``share_0 .. share_3``.
    """
    rows = []
    for m in METHODS:
        r = ratings.loc[ratings["method"] == m, "rating"].to_numpy()
        row = {"method": m, "n": int(r.size), "mean": float(r.mean()) if r.size else np.nan,
               "median": float(np.median(r)) if r.size else np.nan,
               "sd": float(r.std(ddof=1)) if r.size > 1 else np.nan}
        for k in RATINGS:
            row[f"n_{k}"] = int(np.sum(r == k))
        for k in RATINGS:
            row[f"share_{k}"] = row[f"n_{k}"] / r.size if r.size else np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def paired(ratings: pd.DataFrame) -> pd.DataFrame:
    """Ratings side by side: one row per (rater, frame), one column per method.

    Frames missing a method's rating keep NaN there; each test uses the frames
    rated under both of its methods.
    """
    wide = ratings.pivot_table(index=["rater", "specimen", "record", "timestamp"], columns="method",
                               values="rating", aggfunc="first")
    return wide.reindex(columns=list(METHODS))


def bonferroni(p_values: Sequence[float]) -> np.ndarray:
    """Bonferroni-adjusted p-values (``min(1, m p)``), via statsmodels' ``multipletests``."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=float)
    return multipletests(p, method="bonferroni")[1]


def resolve_wilcoxon_method(d: np.ndarray, zero_method: str, method: str) -> str:
    """The p-value method for differences ``d`` (the rule of ``scipy.stats.wilcoxon``'s ``"auto"``).

    ``"auto"`` gives ``"exact"`` (the exact null distribution) when there are
    no zeros and no ties and at most 50 differences; with zeros or ties,
    ``"permutation"`` (all sign flips of the observed ranks, exact given the
    ties) up to 13 differences; ``"asymptotic"`` (normal approximation with
    the tie correction of the variance, no continuity correction) otherwise.
    With ``zero_method="wilcox"`` the zeros are dropped first and not counted.
    """
    if method != "auto":
        return method
    d = _tested_differences(d, zero_method)
    ties = np.unique(np.abs(d)).size < d.size
    zeros = bool(np.any(d == 0))
    if not ties and not zeros:
        return "exact" if d.size <= 50 else "asymptotic"
    return "permutation" if d.size <= 13 else "asymptotic"


def _tested_differences(d: np.ndarray, zero_method: str) -> np.ndarray:
    """The differences the test ranks: ``"wilcox"`` drops the zeros (scipy does the same), others keep them."""
    d = np.asarray(d, dtype=float)
    return d[d != 0] if zero_method == "wilcox" else d


def wilcoxon_pairs(
    wide: pd.DataFrame, zero_method: str = "wilcox", method: str = "auto", pairs=PAIRS
) -> pd.DataFrame:
    """Two-sided Wilcoxon signed-rank test for each pair of methods, Bonferroni-adjusted.

    Parameters
    ----------
    wide : :func:`paired`'s table (one row per rater and frame).
    zero_method : scipy's treatment of zero differences: ``"wilcox"`` drops
        them (the classic test), ``"pratt"`` ranks them and drops their ranks,
        ``"zsplit"`` splits their ranks between the signs.
    method : ``"auto"``, ``"exact"`` or ``"asymptotic"`` (see
        :func:`resolve_wilcoxon_method`).
    pairs : ``(a, b)`` methods; the difference is ``a - b``.

    Returns
    -------
    DataFrame, one row per pair: ``pair`` (``"<a>_vs_<b>"`` in :data:`METRIC_NAMES`),
    ``first`` (a), ``second`` (b), ``n`` (frames rated under both),
    ``n_nonzero``, ``mean_difference``, ``statistic`` (scipy's: the smaller
    signed-rank sum), ``z`` (normal-approximation Z with tie correction,
    positive when ``a`` is rated higher), ``p_value_raw``, ``p_method``,
    ``p_value_bonferroni`` (over the pairs) and ``effect_size_r = z / sqrt(n)``.
    """
    from scipy import stats

    if zero_method not in ("wilcox", "pratt", "zsplit"):
        raise ParamsError(f"rating.zero_method: {zero_method!r} is not one of ['wilcox', 'pratt', 'zsplit']")
    if method not in ("auto", "exact", "asymptotic"):
        raise ParamsError(f"rating.wilcoxon_method: {method!r} is not one of ['auto', 'exact', 'asymptotic']")
    rows = []
    for a, b in pairs:
        both = wide[[a, b]].dropna()
        d = (both[a] - both[b]).to_numpy(dtype=float)
        n = d.size
        row = {"pair": f"{METRIC_NAMES[a]}_vs_{METRIC_NAMES[b]}", "first": a, "second": b, "n": n,
               "n_nonzero": int(np.sum(d != 0)),
               "mean_difference": float(d.mean()) if n else np.nan}
        if row["n_nonzero"] == 0:
            # Every pair agrees (or none): the test is undefined; no evidence of a difference.
            row.update(statistic=np.nan, z=0.0, p_value_raw=1.0, p_method="no non-zero difference")
        else:
            used = resolve_wilcoxon_method(d, zero_method, method)
            # Dropping the zeros here for "wilcox" is what scipy does itself; it also keeps an exhaustive
            # permutation test at 2^(non-zero differences), never 2^(all frames).
            dt = _tested_differences(d, zero_method)
            scipy_method = stats.PermutationMethod(n_resamples=np.inf) if used == "permutation" else used
            res = stats.wilcoxon(dt, zero_method=zero_method, correction=False, alternative="two-sided",
                                 method=scipy_method)
            asym = stats.wilcoxon(dt, zero_method=zero_method, correction=False, alternative="two-sided",
                                  method="asymptotic")
            # scipy's z is (min rank sum - mean) / se <= 0; sign it by the direction of the differences.
            direction = np.sign(np.sum(stats.rankdata(np.abs(d[d != 0])) * np.sign(d[d != 0])))
            row.update(statistic=float(res.statistic), z=float(abs(asym.zstatistic) * (direction or 1.0)),
                       p_value_raw=float(res.pvalue), p_method=used)
        row["effect_size_r"] = row["z"] / math.sqrt(n) if n else np.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    out["p_value_bonferroni"] = bonferroni(out["p_value_raw"].to_numpy())
    return out[["pair", "first", "second", "n", "n_nonzero", "mean_difference", "statistic", "z",
                "p_value_raw", "p_method", "p_value_bonferroni", "effect_size_r"]]


def paper_comparison(summary: pd.DataFrame, tests: pd.DataFrame, rater: str) -> pd.DataFrame:
    """The paper's figures beside ours: mean rating per method and Bonferroni p per pair."""
    who = RATER_MODEL_LABEL if rater == SIMULATED_RATER else rater
    rows = []
    for m in METHODS:
        rows.append({"quantity": f"mean rating, {METHOD_LABELS[m]}", "paper": PAPER["mean_rating"][m],
                     "ours": summary.loc[m, "mean"], "ours_n": int(summary.loc[m, "n"]), "rater": who})
    for t in tests.itertuples():
        rows.append({"quantity": f"Bonferroni p, {METHOD_LABELS[t.first]} vs {METHOD_LABELS[t.second]}",
                     "paper": "< 0.001" if "optimized" in (t.first, t.second) else "not reported",
                     "ours": t.p_value_bonferroni, "ours_n": int(t.n), "rater": who})
    return pd.DataFrame(rows)


def plot_rating_distribution(summary: pd.DataFrame, rater: str, paper: bool = True):
    """Fig. 7: the distribution of ratings (0-3) per method, and the mean per method beside the paper's.

    Parameters
    ----------
    summary : :func:`method_summary`'s table.
    rater : ``"simulated"`` (labelled :data:`RATER_MODEL_LABEL`) or the rater's name.
    paper : mark the paper's mean ratings in the right panel.

    Returns
    -------
    The matplotlib figure (two axes: distribution, means).
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9.0, 3.8), gridspec_kw={"width_ratios": [2.2, 1]})
    colors = {"initial": "#d62728", "registered": "#7f7f7f", "optimized": "#2ca02c"}
    names = {m: f"{METHOD_LABELS[m]} (n={int(summary.loc[m, 'n'])})" for m in METHODS}
    shares = pd.DataFrame([{"rating": str(k), "share": float(summary.loc[m, f"share_{k}"]), "method": names[m]}
                           for m in METHODS for k in RATINGS])
    sns.barplot(data=shares, x="rating", y="share", hue="method", order=[str(k) for k in RATINGS],
                hue_order=[names[m] for m in METHODS], palette=[colors[m] for m in METHODS], width=0.8,
                saturation=1.0, errorbar=None, legend=False, ax=ax)
    for bars, m in zip(ax.containers, METHODS):
        bars.set_label(names[m])
    ax.set_xlabel("rating (0: errors > 3 mm ... 3: no visible error)")
    ax.set_ylabel("share of frames")
    ax.set_ylim(0, 1.0)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    who = f"{RATER_MODEL_LABEL} (digital twin)" if rater == SIMULATED_RATER else f"rater: {rater}"
    ax.set_title(f"Rating distribution per alignment - {who}", fontsize=9)
    xm = np.arange(len(METHODS))
    means = [summary.loc[m, "mean"] for m in METHODS]
    sns.barplot(x=list(METHODS), y=means, hue=list(METHODS), order=list(METHODS), hue_order=list(METHODS),
                palette=[colors[m] for m in METHODS], width=0.6, saturation=1.0, errorbar=None, legend=False,
                ax=bx)
    bx.patches[0].set_label("ours")
    if paper:
        bx.plot(xm, [PAPER["mean_rating"][m] for m in METHODS], "k_", markersize=22, mew=2, label="paper")
        bx.legend(fontsize=8, loc="upper left")
    for xi, v in zip(xm, means):
        bx.text(xi, v + 0.05, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    bx.set_xticks(xm, [METHOD_LABELS[m].replace(" ", "\n") for m in METHODS], fontsize=8)
    bx.set_ylim(0, 3.2)
    bx.set_ylabel("mean rating")
    bx.set_title("Mean rating", fontsize=9)
    fig.tight_layout()
    return fig


def analyse(ratings: pd.DataFrame, zero_method: str = "wilcox", method: str = "auto") -> RatingResult:
    """The study's statistics from one rater's validated ratings.

    Parameters
    ----------
    ratings : :func:`read_ratings`'s table (one rater).
    zero_method, method : see :func:`wilcoxon_pairs`.

    Returns
    -------
    :class:`RatingResult`: ``summary`` (:func:`method_summary`), ``tests`` (:func:`wilcoxon_pairs`),
    ``n_frames`` (frames with at least one rating), ``n_complete`` (frames rated
    under all three methods) and ``rater``.

    Raises
    ------
    DatasetError
        If the table holds several raters: the paired tests assume one rating
        per frame and method, so analyse one rater's file at a time.
    """
    raters = sorted(set(ratings["rater"]))
    if len(raters) != 1:
        raise DatasetError(f"ratings of {len(raters)} raters ({', '.join(raters)}): analyse one rater at a time")
    wide = paired(ratings)
    return RatingResult(rater=raters[0], summary=method_summary(ratings),
                        tests=wilcoxon_pairs(wide, zero_method, method), n_frames=int(len(wide)),
                        n_complete=int(wide.notna().all(axis=1).sum()))


def metrics(result: RatingResult) -> dict:
    """The metrics JSON entries of :func:`analyse`'s result (keys as in the issue).

    Methods are keyed by :data:`METRIC_NAMES` (``initial``, ``registration``,
    ``optimized``) and pairs as ``"<a>_vs_<b>"`` (e.g. ``optimized_vs_initial``).
    """
    s, t = result.summary, result.tests.set_index("pair")
    name = METRIC_NAMES
    return {
        "rater": result.rater,
        "n_frames": result.n_frames,
        "n_frames_all_methods": result.n_complete,
        "n_ratings": {name[m]: int(s.loc[m, "n"]) for m in METHODS},
        "mean_rating": {name[m]: float(s.loc[m, "mean"]) for m in METHODS},
        "median_rating": {name[m]: float(s.loc[m, "median"]) for m in METHODS},
        "rating_counts": {name[m]: {str(k): int(s.loc[m, f"n_{k}"]) for k in RATINGS} for m in METHODS},
        "wilcoxon_statistic": {p: float(t.loc[p, "statistic"]) for p in t.index},
        "z": {p: float(t.loc[p, "z"]) for p in t.index},
        "n_pairs": {p: int(t.loc[p, "n"]) for p in t.index},
        "p_method": {p: str(t.loc[p, "p_method"]) for p in t.index},
        "p_value_raw": {p: float(t.loc[p, "p_value_raw"]) for p in t.index},
        "p_value_bonferroni": {p: float(t.loc[p, "p_value_bonferroni"]) for p in t.index},
        "effect_size_r": {p: float(t.loc[p, "effect_size_r"]) for p in t.index},
        "paper": {"n_frames": PAPER["n_frames"], "mean_rating": {name[m]: v for m, v in PAPER["mean_rating"].items()},
                  "p_value_bonferroni_bound": PAPER["p_value_bonferroni_bound"]},
    }


def labeling_label_fn(density_per_mm2: float, gamma_mm: float, seed: int,
                      points_for: Callable | None = None) -> Callable:
    """``label_fn_for`` of :func:`build_rating_set` drawing the labeling module's full label.

    Per specimen: ``C`` sampled on ``CT_bone_model.stl`` (``density_per_mm2``
    points per mm^2, ``seed``; or ``points_for(specimen)``, e.g. notebook 02's
    cached cloud), then ``labels.label.full_label(shape, pose, calib, spacing, C,
    gamma_mm)`` for each alignment's pose.
    """
    def for_specimen(specimen, calib, spacing):
        from ultrabones.core import dataset as ds
        from ultrabones.labels import cloud, label

        if points_for is not None:
            points = points_for(specimen)
        else:
            points, _ = cloud.surface_points(ds.read_mesh(specimen.ct_model), density_per_mm2, seed)
        return lambda shape, pose: label.full_label(shape, pose, calib, spacing, points, gamma_mm)

    return for_specimen


# ----------------------------------------------------------------------------- the stage, as notebook 03 calls it


def label_fn_of_labeling(paths, drawn: Mapping) -> Callable:
    """``label_fn_for`` drawing labels exactly as notebook 02 drew its ``Labels_full`` (its recorded ``settings``:
    gamma, cloud density and seed), with ``C`` from 02's cache when there."""
    from ultrabones.labels import cloud, inputs

    def points_of(spec):
        return cloud.load_cloud(inputs.surface_cloud(paths, spec, drawn["label_density_per_mm2"],
                                                     drawn["label_cloud_seed"]))[0]

    return labeling_label_fn(drawn["label_density_per_mm2"], drawn["gamma_mm"], drawn["label_cloud_seed"],
                             points_for=points_of)


def plot_items(examples: Sequence[Mapping], outlines: Sequence[np.ndarray] | None = None):
    """The three items of one frame as the rater sees them (Fig. 5).

    ``outlines``, when given, one (H, W) bool mask per example, are drawn as magenta contours for the reader
    (on the twin, the true label, which the twin's cell reads: ``ultrabones.twin.rater.true_outlines``;
    never in the rating page).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(examples), figsize=(4.2 * len(examples), 3.8), squeeze=False)
    for i, (ax, it) in enumerate(zip(axes[0], examples)):
        ax.imshow(it["rgb"])
        if outlines is not None:
            ax.contour(outlines[i], levels=[0.5], colors="magenta", linewidths=0.6)
        ax.set_title(f"{METHOD_LABELS[it['method']]}\n{it['specimen']}/{it['record']} t={it['timestamp']} ms",
                     fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def check_analysis(result: RatingResult) -> None:
    """What must hold for any ratings: frames rated, Bonferroni factor three, p-values in [0, 1]."""
    tests = result.tests
    assert result.n_frames >= 1, result.n_frames
    assert np.allclose(tests["p_value_bonferroni"], np.minimum(1.0, 3 * tests["p_value_raw"]))
    assert ((tests["p_value_raw"] >= 0) & (tests["p_value_raw"] <= 1)).all()


def stage_metrics(built: Mapping, result: RatingResult | None, params: RatingParams, source: str | None,
                  page: Path | str, seconds: float | None = None) -> dict:
    """Notebook 03's metrics: the set, and the statistics of its ratings when there are any.

    ``source`` says where the ratings came from (a CSV's path, or the rater model's name); with no ratings
    yet (real data, nobody has rated the page) the metrics say so (``awaiting_ratings``).
    """
    key = built["key"]
    n_set_frames = len(key) // len(METHODS)
    m = {"n_items": int(len(key)), "set_id": built["set_id"], "n_set_frames": int(n_set_frames),
         "rating_page": str(page), "zero_method": params.zero_method,
         "wilcoxon_method": params.wilcoxon_method, "alpha": params.alpha, "seconds": seconds}
    if result is None:
        return {**m, "rater": None, "awaiting_ratings": True, "n_frames": int(n_set_frames)}
    tests = result.tests
    return {**m, **metrics(result), "ratings_source": source,
            "significant_bonferroni": dict(zip(tests["pair"], (tests["p_value_bonferroni"] < params.alpha).tolist()))}


def ratings_of_another_set(ratings_csv: Path | str | None, ratings_key: Path | str | None) -> pd.DataFrame | None:
    """Ratings given for another run's set (both a CSV and that set's ``key.csv``), validated before any work;
    None unless both are given."""
    if ratings_csv is None or ratings_key is None:
        return None
    rated_key = read_key(Path(ratings_key))
    return read_ratings(Path(ratings_csv), rated_key, set_id_of(rated_key))
