"""Where the twin keeps its ground truth: ``<twin_dir>/truth/`` (see ``docs/twin_format.md``).

Only the twin's modules name this folder; the method's packages cannot reach it (``tests/test_architecture.py``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ultrabones.core.errors import DatasetError
from ultrabones.core.paths import Paths

TRUTH = "truth"


def truth_dir(paths: Paths) -> Path:
    """The twin's ``truth/`` folder (it may not exist yet).

    Raises
    ------
    DatasetError
        If ``paths`` are a method stage's (no twin folder, :meth:`~ultrabones.core.paths.Paths.for_method`).
    """
    if paths.twin_dir is None:
        raise DatasetError("these paths are a method stage's (no twin folder): measure in a cell of its own with "
                           "ultrabones.twin.layout.twin_paths(paths, twin_dir)")
    return Path(paths.twin_dir) / TRUTH


def twin_paths(paths: Paths, twin_dir: Path | str) -> Paths:
    """A method stage's paths with the twin's folder given back, for the twin's measurement cells."""
    return replace(paths, twin_dir=Path(twin_dir), raw_dir=None, twin_dataset=None)


def measurements_file(paths: Paths, stem: str) -> Path:
    """``truth/measurements/<stem>.json``: a stage's outputs measured against the truth (written by
    :func:`ultrabones.twin.measure.write_measurements`), walled like the rest of the truth."""
    return truth_dir(paths) / "measurements" / f"{stem}.json"
