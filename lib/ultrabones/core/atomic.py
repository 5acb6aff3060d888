"""Atomic file writes: a temporary file in the same folder, then a rename.

An interrupted run never leaves a half-written file under its final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: Path | str, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    Parameters
    ----------
    path : the final file name.
    suffix : suffix of the temporary file (defaults to ``path``'s, so that
        writers that infer the format from the name still work).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: Path | str, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    return write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON data: dict keys as strings, tuples as lists, numpy scalars and arrays as Python
    numbers and lists."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj != obj:  # NaN -> null, JSON has no NaN
        return None
    return obj


def write_json(path: Path | str, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (numpy types converted, NaN -> null)."""
    return write_text(path, json.dumps(to_jsonable(data), indent=2, sort_keys=False) + "\n")


def new_dir_beside(path: Path | str) -> Path:
    """An empty temporary folder beside ``path`` (same parent), to fill and then :func:`swap_dir` in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.new-", dir=path.parent))


def swap_dir(new: Path | str, path: Path | str) -> Path:
    """Replace the folder ``path`` as a whole by the folder ``new`` (a sibling): nothing of the old one survives.

    The old folder is first renamed aside, then ``new`` is renamed to ``path``
    (both renames within one parent folder), then the old one is removed. A
    run killed between the two renames leaves ``path`` missing and the old set
    under ``.<name>.old-*``, never a mix; leftovers of earlier swaps are removed.
    """
    new, path = Path(new), Path(path)
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, old / path.name)
    os.replace(new, path)
    for leftover in path.parent.glob(f".{path.name}.old-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    return path


def write_text_if_changed(path: Path | str, text: str) -> bool:
    """Write ``text`` to ``path`` atomically only if the file does not already hold it; True when written.

    The file's modification time then moves only when its content does (what a
    ``make`` prerequisite regenerated on every run needs).
    """
    path = Path(path)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    write_text(path, text)
    return True
