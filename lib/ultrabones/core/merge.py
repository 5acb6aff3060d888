"""A stage's metrics and the twin's measurements of it: kept apart on disk, merged for reading.

A method stage writes its metrics JSON (``build/<profile>/metrics/<stem>.json``) without any truth; on the twin,
the stage's measurement cell writes what it measured against the truth behind the truth wall
(``truth/measurements/<stem>.json``, :func:`ultrabones.twin.measure.write_measurements`). The summary and the
tests read both and merge them here; :func:`measured_part` splits a dict computed with the measurements into
what the measurements add.
"""

from __future__ import annotations

import json
import math
from typing import Mapping


def read_metrics(paths, stem: str) -> dict:
    """A stage's metrics JSON (``paths.metrics(stem)``, :class:`ultrabones.core.paths.Paths`), as written.

    Raises
    ------
    FileNotFoundError
        Naming the file and the notebook to run first.
    """
    f = paths.metrics(stem)
    if not f.is_file():
        raise FileNotFoundError(f"{f}: no metrics yet; run notebook {stem} first")
    return json.loads(f.read_text())


def merge_metrics(method: Mapping, measured: Mapping | None) -> dict:
    """A stage's metrics with its measurements merged in, nested dicts key by key (``measured`` wins).

    The inverse of :func:`measured_part`: ``merge_metrics(m, measured_part(full, m)) == full`` when ``full``
    holds every key of ``m``.
    """
    out = dict(method)
    for k, v in (measured or {}).items():
        out[k] = merge_metrics(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def measured_part(full: Mapping, method: Mapping) -> dict:
    """What ``full`` (a stage's metrics computed with the twin's measurements) holds beyond ``method`` (the same
    metrics computed without): the keys it adds or whose values differ, nested dicts key by key."""
    out = {}
    for k, v in full.items():
        if k not in method:
            out[k] = v
        elif isinstance(v, Mapping) and isinstance(method[k], Mapping):
            sub = measured_part(v, method[k])
            if sub:
                out[k] = sub
        elif not _same(v, method[k]):
            out[k] = v
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b)
    except (ValueError, TypeError):  # arrays, frames: compare their JSON form
        return json.dumps(a, default=str, sort_keys=True) == json.dumps(b, default=str, sort_keys=True)
