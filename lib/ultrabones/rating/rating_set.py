"""The blinded rating set of the clinical evaluation (Section 3.1, Fig. 5): the frames drawn for rating (seeded, one
per sweep among the frames that have all three alignments), each item drawn as the rater sees it (image, label
overlay, 1/2/3 mm scale bar), the items shuffled under anonymous ids into one self-contained rating page, and,
apart from the page, the key that says which frame and alignment each id is (with the page's ratings format).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from ultrabones.core import atomic
from ultrabones.core.errors import DatasetError, ParamsError
from ultrabones.core.geometry import POSE_COLUMNS
from ultrabones.core.overlay import overlay
from ultrabones.core.tracking_table import OPTIMIZED_COLUMNS, REGISTERED_COLUMNS

#: The three alignments, in the order of the paper's Fig. 7.
METHODS = ("initial", "registered", "optimized")
#: The paper's rubric (Section 3.1).
RUBRIC = {
    0: "Poor: large sections with visible errors over 3 mm",
    1: "Moderate: some sections with visible errors of 1-3 mm",
    2: "Good: only minor visible errors below 1 mm",
    3: "Excellent: no visible error",
}
RATINGS = tuple(RUBRIC)
#: Columns of the key file (one row per item).
KEY_COLUMNS = ("item_id", "specimen", "record", "timestamp", "method")
#: Columns of a ratings table, as the rating page exports it.
RATINGS_COLUMNS = ("set_id", "item_id", "rating", "rater", "rated_at")
#: Scale bar lengths drawn in the top-left corner of each item (mm).
SCALE_BAR_MM = (1.0, 2.0, 3.0)

KEY_FILE = "key.csv"
PAGE_FILE = "rating_page.html"
SET_FILE = "set.json"


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
    rater, rated_at``, what :func:`~ultrabones.rating.rating_stats.read_ratings` reads).

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
