"""A record's cached results: its chunk files (report rows and bit-packed labels) and its registration.

Each chunk of labelled frames is one ``.npz`` file, written atomically with the key it was made with
(:func:`write_chunk`); :func:`read_chunk` gives it back, or None when it is missing, unreadable or of another
key, so that only current files count as done. A sweep's global registration is cached as JSON
(``registration.json``) and read back normalised (:func:`read_registration`, :func:`normalize_registration`);
a record without a usable frame gets the identity (:func:`empty_registration`).
"""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ultrabones.core import atomic
from ultrabones.core.errors import DatasetError


def write_chunk(path: Path, key: str, rows: list[dict], masks: dict) -> None:
    """Write one chunk's result file atomically: its key, its report rows and its labels, bit-packed.

    Parameters
    ----------
    path : the chunk's ``chunk_XXXX.npz``.
    key : the chunk's key (:func:`ultrabones.labels.tasks.chunk_key`), which :func:`read_chunk` compares.
    rows : the chunk's per-frame report rows, in order.
    masks : timestamp (ms) -> (full, visible) labels of the kept frames, (H, W) bool, all of one size (pixels).

    Raises
    ------
    DatasetError
        If the labels are not all of one size (a guard: the images' sizes are checked before labelling).
    """
    ts = np.array(sorted(masks), dtype=np.int64)
    shape = next(iter(masks.values()))[0].shape if masks else (0, 0)
    odd = [int(t) for t in ts if masks[t][0].shape != shape]
    if odd:  # label_chunk validates image sizes; this is a guard, not a path
        raise DatasetError(f"{path}: frames {odd} have labels of another size than {shape[::-1]} (W x H)")
    nbytes = (shape[0] * shape[1] + 7) // 8
    full = np.zeros((len(ts), nbytes), np.uint8)
    vis = np.zeros((len(ts), nbytes), np.uint8)
    for j, t in enumerate(ts):
        full[j], vis[j] = np.packbits(masks[t][0]), np.packbits(masks[t][1])
    buf = io.BytesIO()
    np.savez_compressed(buf, key=np.array(key), report=np.array(json.dumps(atomic.to_jsonable(rows))),
                        timestamps=ts, shape=np.array(shape), full=full, visible=vis)
    atomic.write_bytes(path, buf.getvalue())


def read_chunk(path: Path | str, key: str | None = None, labels: bool = True) -> dict | None:
    """A chunk result: ``report`` (list of dicts) and ``labels`` {timestamp: (full, visible)}.

    None when the file is missing, unreadable or made with another key.
    ``labels=False`` reads the report only (``labels`` is then None).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            if key is not None and str(z["key"]) != key:
                return None
            if not labels:
                return {"report": json.loads(str(z["report"])), "labels": None}
            shape = tuple(int(v) for v in z["shape"])
            n = shape[0] * shape[1]
            labels = {int(t): (np.unpackbits(f)[:n].reshape(shape).astype(bool),
                               np.unpackbits(v)[:n].reshape(shape).astype(bool))
                      for t, f, v in zip(z["timestamps"], z["full"], z["visible"])}
            return {"report": json.loads(str(z["report"])), "labels": labels}
    except (OSError, ValueError, KeyError, zlib.error):
        return None


#: Float fields of a registration result; JSON stores NaN as ``null``.
_REGISTRATION_FLOATS = ("similarity_initial", "similarity_registered", "mean_displacement_mm", "seconds")


def empty_registration() -> dict:
    """The registration result of a record with no usable frame: the identity, well-formed.

    Same keys and types as a real result, ``status`` ``"no_frames"``: the
    identity correction (``mean_displacement_mm`` 0), and NaN where nothing
    was measured (similarities, centre). A cache stores NaN as ``null``;
    :func:`normalize_registration` reads it back as NaN, so ``np.nanmean``
    over records skips such a record instead of failing on ``None``.
    """
    nan = float("nan")
    return {"transform": np.eye(4).tolist(), "x": [0.0] * 6, "centre": [nan] * 3, "similarity_initial": nan,
            "similarity_registered": nan, "n_frames": 0, "mean_displacement_mm": 0.0, "seconds": 0.0,
            "status": "no_frames"}


def normalize_registration(result: Any) -> dict | None:
    """A registration result as the rest of the stage expects it, or None if it is unusable.

    Tolerates what a cache may hold: ``null`` (or NaN) numbers become NaN
    floats, missing optional keys get defaults, an older result without
    ``status`` gets one. Returns None (recompute) when the result is not a
    mapping or its ``transform`` is not a finite 4x4 matrix.
    """
    if not isinstance(result, Mapping):
        return None
    try:
        g = np.asarray(result.get("transform"), dtype=float)
    except (TypeError, ValueError):
        return None
    if g.shape != (4, 4) or not np.isfinite(g).all():
        return None
    out = dict(empty_registration())
    out.update({k: v for k, v in result.items()})
    out["transform"] = g.tolist()
    for k in _REGISTRATION_FLOATS:
        v = out.get(k)
        try:
            out[k] = float(v) if v is not None else float("nan")
        except (TypeError, ValueError):
            out[k] = float("nan")
    for k, n in (("x", 6), ("centre", 3)):
        v = out.get(k)
        try:
            arr = np.array([np.nan if e is None else e for e in v], dtype=float) if v is not None else None
        except (TypeError, ValueError):
            arr = None
        out[k] = arr.tolist() if arr is not None and arr.shape == (n,) else [float("nan")] * n
    try:
        out["n_frames"] = int(out.get("n_frames") or 0)
    except (TypeError, ValueError):
        out["n_frames"] = 0
    if result.get("status") not in ("registered", "no_frames"):
        out["status"] = "registered" if out["n_frames"] else "no_frames"
    return out


def read_registration(path: Path | str, key: str) -> dict | None:
    """A cached ``registration.json`` made with ``key``, normalised; None when missing, stale or unusable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, Mapping) or data.get("key") != key:
        return None
    return normalize_registration(data.get("result"))
