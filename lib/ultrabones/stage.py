"""Bookkeeping shared by every stage: metrics, figures, resumable per-specimen work.

- :func:`write_metrics` writes ``build/<profile>/metrics/<stem>.json`` with a
  provenance block (profile, parameters hash, git commit, time).
- :func:`save_figure` saves a matplotlib figure as PNG (and PDF for the paper's
  figures) under the figures folder and records it in the figure manifest, so
  that every file in ``figures/`` can be traced to the notebook that made it.
- :class:`SpecimenCache` stores one result per specimen under a key that hashes
  the specimen's parameters and the package sources, so a rerun skips the
  specimens already done with the same inputs and a killed run resumes.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

from . import atomic
from .paths import PROJECT_ROOT, Paths


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


def write_metrics(paths: Paths, stem: str, metrics: Mapping[str, Any], params: Mapping | None = None) -> Path:
    """Write a notebook's metrics JSON with provenance.

    Parameters
    ----------
    paths : the run's paths.
    stem : notebook stem, e.g. ``"02_labeling"``.
    metrics : the figures that tests, the summary and reviewers read.
    params : the parameters the notebook ran with (hashed into provenance).
    """
    out = dict(metrics)
    out["_provenance"] = {
        "notebook": stem,
        "build_dir": str(paths.build_dir),
        "dataset": str(paths.dataset),
        "twin": paths.is_twin,
        "params_hash": params_hash(params or {}),
        "git_commit": git_commit(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return atomic.write_json(paths.metrics(stem), out)


def read_metrics(paths: Paths, stem: str) -> dict:
    """Read a notebook's metrics JSON (raises FileNotFoundError naming the file)."""
    f = paths.metrics(stem)
    if not f.is_file():
        raise FileNotFoundError(f"{f}: no metrics yet; run notebook {stem} first")
    return json.loads(f.read_text())


MANIFEST = "figures_manifest.json"


def save_figure(fig, paths: Paths, name: str, stem: str, pdf: bool = False, dpi: int = 150) -> Path:
    """Save a figure as ``<name>.png`` (and ``<name>.pdf``) and record its maker.

    Parameters
    ----------
    fig : matplotlib figure.
    paths : the run's paths.
    name : file name without extension, e.g. ``"fig7_rating_distribution"``.
    stem : the notebook that makes it (recorded in ``figures_manifest.json``).
    pdf : also save a PDF (paper figures).
    """
    png = paths.figure(f"{name}.png")
    with atomic.atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    files = [png.name]
    if pdf:
        pdf_path = paths.figure(f"{name}.pdf")
        with atomic.atomic_path(pdf_path) as tmp:
            fig.savefig(tmp, bbox_inches="tight", metadata={"CreationDate": None})  # same inputs, same bytes
        files.append(pdf_path.name)
    register_outputs(paths, stem, files)
    return png


def save_table(df, paths: Paths, name: str, stem: str, index: bool = False) -> Path:
    """Save a pandas table as ``<name>.csv`` and ``<name>.md`` and record its maker."""
    csv = paths.figure(f"{name}.csv")
    atomic.write_text(csv, df.to_csv(index=index))
    md = paths.figure(f"{name}.md")
    atomic.write_text(md, to_markdown(df, index))
    register_outputs(paths, stem, [csv.name, md.name])
    return csv


def to_markdown(df, index: bool = False) -> str:
    """A GitHub Markdown table (no ``tabulate`` dependency); floats to 4 significant digits."""
    frame = df.reset_index() if index else df
    cols = [str(c) for c in frame.columns]

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def register_outputs(paths: Paths, stem: str, files: list[str]) -> None:
    """Record in ``figures_manifest.json`` which notebook made which files."""
    manifest_path = paths.figures_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for f in files:
        manifest[f] = stem
    atomic.write_json(manifest_path, dict(sorted(manifest.items())))


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
