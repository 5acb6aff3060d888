"""One caching scheme for every stage: keys from parameters, package sources and input content.

- :func:`params_hash` hashes any JSON-able mapping (sorted keys).
- :func:`source_hash` hashes the package's Python sources, so a code change invalidates results.
- :func:`file_digest` hashes a file's bytes (the *content* of an input, not its mtime).
- :class:`SpecimenCache` stores one result per specimen of a stage under such a key, so a rerun skips
  the specimens already done with the same inputs and a killed run resumes.
- :func:`git_commit` is the provenance written beside every metrics file.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any, Mapping

from ultrabones.core import atomic
from ultrabones.core.paths import PROJECT_ROOT, Paths


def git_commit() -> str | None:
    """The repository's HEAD commit (with ``-dirty`` when modified), or None."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not sha:
        return None
    return sha + ("-dirty" if dirty else "")


def params_hash(params: Mapping[str, Any]) -> str:
    """A short stable hash of a parameter mapping (JSON with sorted keys)."""
    blob = json.dumps(atomic._to_jsonable(params), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def source_hash() -> str:
    """A short hash of the package's Python sources (changes when the code does)."""
    h = hashlib.sha256()
    for f in sorted((PROJECT_ROOT / "lib" / "ultrabones").rglob("*.py")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def file_digest(path: Path | str, chunk: int = 1 << 20) -> str:
    """A short SHA-256 of a file's bytes (16 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()[:16]


class SpecimenCache:
    """Resumable per-specimen results of one stage.

    A result is stored as ``build/<profile>/cache/<stem>/<specimen>.json``
    together with a key hashing the specimen's parameters and the package
    sources; :meth:`get` returns it only while the key matches.

    Parameters
    ----------
    paths : the run's paths.
    stem : notebook stem.
    """

    def __init__(self, paths: Paths, stem: str):
        self.dir = paths.cache(stem)
        self.dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(params: Mapping[str, Any]) -> str:
        return params_hash({"params": params, "source": source_hash()})

    def path(self, specimen: str) -> Path:
        return self.dir / f"{specimen}.json"

    def get(self, specimen: str, params: Mapping[str, Any]) -> dict | None:
        """The stored result if it was made with these parameters and sources, else None."""
        f = self.path(specimen)
        if not f.is_file():
            return None
        data = json.loads(f.read_text())
        return data["result"] if data.get("key") == self.key(params) else None

    def put(self, specimen: str, params: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        """Store a specimen's result (atomically)."""
        atomic.write_json(self.path(specimen), {"key": self.key(params), "result": result})

    def all(self) -> dict[str, dict]:
        """Every stored result, by specimen, whatever its key."""
        return {f.stem: json.loads(f.read_text())["result"] for f in sorted(self.dir.glob("*.json"))}
