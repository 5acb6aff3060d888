"""The twin's truth read for measuring: its folder, the true system, a frame's true label.

The readers every measurement of :mod:`ultrabones.twin.measure` and its sibling modules stands on. Only the
twin reads ``truth/`` (``docs/truthwall.md``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ultrabones.calibration import acquisitions
from ultrabones.core import dataset
from ultrabones.core.paths import Paths
from ultrabones.twin.layout import truth_dir


def truth_root(paths: Paths) -> Path | None:
    """The twin's ``truth/`` folder, or None (real data, or a twin without its truth)."""
    d = truth_dir(paths)
    return d if paths.is_twin and d.is_dir() else None


def true_system(paths: Paths) -> dict | None:
    """The twin's true image-to-probe calibration and temporal offset (ms), or None."""
    root = truth_root(paths)
    if root is None:
        return None
    sysf = root / "system.json"
    return {"calibration": acquisitions.read_matrix_json(sysf, "calibration"),
            "temporal_offset_ms": float(json.loads(sysf.read_text())["temporal_offset_ms"])}


def true_label(paths: Paths, specimen: str, record: str, ts: int, kind: str, shape) -> np.ndarray | None:
    """A frame's true label of ``kind`` (``dataset.LABELS_FULL``, ...) from the twin's truth, as a (H, W) mask of
    ``shape``; None where the truth has none."""
    f = truth_dir(paths) / specimen / record / kind / f"{int(ts)}_label.png"
    return dataset.read_label(f, shape) if f.is_file() else None
