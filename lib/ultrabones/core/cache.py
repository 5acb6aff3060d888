"""One caching scheme for every stage: keys from parameters, package sources and input content.

- :func:`params_hash` hashes any JSON-able mapping (sorted keys).
- :func:`source_hash` hashes the package's Python sources, so a code change invalidates results.
- :func:`file_digest` hashes a file's bytes (the *content* of an input, not its mtime); a digest is
  remembered under (path, size, mtime_ns) in this process and, with :class:`DigestStore`, across runs,
  so an unchanged file is hashed once; size and mtime only decide *whether* to hash again.
- :func:`files_digest` combines the digests of a set of input files (names relative to a root and
  contents): the part of every cache key that names the input's content.
- :class:`SpecimenCache` stores one result per specimen of a stage under such a key, so a rerun skips
  the specimens already done with the same inputs and a killed run resumes.
- :func:`git_commit` is the provenance written beside every metrics file.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping

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
    blob = json.dumps(atomic.to_jsonable(params), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def source_hash() -> str:
    """A short hash of the package's Python sources (changes when the code does)."""
    h = hashlib.sha256()
    for f in sorted((PROJECT_ROOT / "lib" / "ultrabones").rglob("*.py")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


#: (absolute path, size, mtime_ns) -> digest, for this process (see :func:`file_digest`).
_DIGESTS: dict[tuple[str, int, int], str] = {}


def _hash_bytes(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()[:16]


def file_digest(path: Path | str, chunk: int = 1 << 20) -> str:
    """A short SHA-256 of a file's bytes (16 hex digits); ``"missing"`` for an absent file.

    The digest is remembered under (absolute path, size, mtime_ns): a file
    whose size and modification time are unchanged is not read again in this
    process. Any change of either makes the content be hashed anew; the key is
    always the content's hash, never the time.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        return "missing"
    memo = (str(p.absolute()), st.st_size, st.st_mtime_ns)
    d = _DIGESTS.get(memo)
    if d is None:
        d = _DIGESTS[memo] = _hash_bytes(p, chunk)
    return d


def files_digest(files: Iterable[Path | str], root: Path | str | None = None) -> str:
    """One digest of a set of files: their names (relative to ``root`` when given) and contents.

    Parameters
    ----------
    files : the input files a result was computed from (order does not matter).
    root : names are taken relative to it, so that a moved dataset keeps its keys.
    """
    h = hashlib.sha256()
    names = []
    for f in files:
        f = Path(f)
        try:
            name = str(f.relative_to(root)) if root is not None else str(f)
        except ValueError:
            name = str(f)
        names.append((name, f))
    for name, f in sorted(names):
        h.update(name.encode())
        h.update(file_digest(f).encode())
    return h.hexdigest()[:16]


class DigestStore:
    """File digests kept across runs: ``{path: [size, mtime_ns, digest]}`` in one JSON file.

    Stages keep theirs in ``build/<profile>/cache/digests/<stem>.json``.

    Loading it fills :func:`file_digest`'s memo, so that a rerun over a large
    unchanged dataset reads no image again; :meth:`save` writes back the
    digests of this process (atomically). A corrupt store is ignored.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        if isinstance(data, dict):
            for p, v in data.items():
                if isinstance(v, list) and len(v) == 3:
                    _DIGESTS.setdefault((p, int(v[0]), int(v[1])), str(v[2]))

    def save(self) -> None:
        """Write every digest known to this process (latest per path)."""
        out: dict[str, list] = {}
        for (p, size, mtime), d in _DIGESTS.items():
            if p not in out or mtime >= out[p][1]:
                out[p] = [size, mtime, d]
        atomic.write_json(self.path, out)


def inputs_digest(paths: Paths, store: Path | str | None = None) -> str:
    """The text of ``build/<profile>/inputs.digest``: which input dataset a run reads, and its content.

    On real data (``data_root`` set): the root's absolute path, the number of
    files under it and :func:`files_digest` of them all (names relative to the
    root, hidden files and folders excepted). On the twin, the input dataset is
    made by notebooks 00-01 (their stamps track it), so only its path is
    written. The derived root is named too. ``make`` lists the file as a
    prerequisite of every stamp and rewrites it only when this text changes
    (:func:`ultrabones.core.atomic.write_text_if_changed`), so stages rerun
    exactly when ``DATA_ROOT`` or the data's content changed.

    Parameters
    ----------
    paths : the run's paths.
    store : a :class:`DigestStore` file (unchanged files are then not re-read).
    """
    lines = [f"derived_root: {paths.derived.absolute()}"]
    if paths.is_twin:
        lines.insert(0, f"data_root: twin {paths.dataset.absolute()} (made by notebooks 00-01)")
        return "\n".join(lines) + "\n"
    root = Path(paths.data_root).absolute()
    if store is not None:
        keep = DigestStore(store)
    files = []
    for d, dirs, names in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        files += [Path(d) / n for n in sorted(names) if not n.startswith(".")]
    digest = files_digest(files, root)
    if store is not None:
        keep.save()
    lines[:0] = [f"data_root: {root}", f"files: {len(files)}", f"digest: {digest}"]
    return "\n".join(lines) + "\n"


class SpecimenCache:
    """Resumable per-specimen results of one stage.

    A result is stored as ``build/<profile>/cache/<stem>/<specimen>.json``
    together with a key hashing the specimen's parameters, the package
    sources and the digest of the input files it read (``inputs``, see
    :func:`files_digest`); :meth:`get` returns it only while the key matches.

    Parameters
    ----------
    paths : the run's paths.
    stem : notebook stem.
    """

    def __init__(self, paths: Paths, stem: str):
        self.dir = paths.cache(stem)
        self.dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(params: Mapping[str, Any], inputs: Iterable[Path | str] = (), root: Path | str | None = None) -> str:
        """The key of a result: parameters, package sources and the digest of the ``inputs`` files."""
        return params_hash({"params": params, "source": source_hash(), "inputs": files_digest(inputs, root)})

    def path(self, specimen: str) -> Path:
        return self.dir / f"{specimen}.json"

    def get(self, specimen: str, params: Mapping[str, Any], inputs: Iterable[Path | str] = (),
            root: Path | str | None = None) -> dict | None:
        """The stored result if it was made with these parameters, sources and input contents, else None."""
        f = self.path(specimen)
        if not f.is_file():
            return None
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("key") != self.key(params, inputs, root):
            return None
        return data.get("result")

    def put(self, specimen: str, params: Mapping[str, Any], result: Mapping[str, Any],
            inputs: Iterable[Path | str] = (), root: Path | str | None = None) -> None:
        """Store a specimen's result (atomically) under the key of its parameters and inputs."""
        atomic.write_json(self.path(specimen), {"key": self.key(params, inputs, root), "result": result})

    def all(self) -> dict[str, dict]:
        """Every stored result, by specimen, whatever its key (unreadable files are left out)."""
        out = {}
        for f in sorted(self.dir.glob("*.json")):
            try:
                data = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and "result" in data:
                out[f.stem] = data["result"]
        return out
