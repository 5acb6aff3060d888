"""Where the twin keeps its ground truth: ``<twin_dir>/truth/`` (see ``docs/twin_format.md``).

Only the twin's modules name this folder; the method's packages cannot reach it (``tests/test_architecture.py``).
"""

from __future__ import annotations

from pathlib import Path

from ultrabones.core.paths import Paths

TRUTH = "truth"


def truth_dir(paths: Paths) -> Path:
    """The twin's ``truth/`` folder (it may not exist yet)."""
    return Path(paths.twin_dir) / TRUTH


def measurements_file(paths: Paths, stem: str) -> Path:
    """``truth/measurements/<stem>.json``: a stage's outputs measured against the truth (written by
    :func:`ultrabones.twin.measure.write_measurements`), walled like the rest of the truth."""
    return truth_dir(paths) / "measurements" / f"{stem}.json"
