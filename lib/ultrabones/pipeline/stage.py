"""Bookkeeping shared by every stage: metrics, figures, resumable per-specimen work.

- :func:`write_metrics` writes ``build/<profile>/metrics/<stem>.json`` with a
  provenance block (profile, parameters hash, git commit, time).
- :func:`save_figure` saves a matplotlib figure as PNG (and PDF for the paper's
  figures) under the figures folder and records it in the figure manifest, so
  that every file in ``figures/`` can be traced to the notebook that made it.
- Cache keys and per-specimen results live in :mod:`ultrabones.core.cache`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

from ultrabones.core import atomic
from ultrabones.core.cache import git_commit, params_hash
from ultrabones.core.merge import read_metrics  # noqa: F401  (re-exported: stage.read_metrics)
from ultrabones.core.paths import Paths


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
        "derived": str(paths.derived),
        "twin": paths.is_twin,
        "params_hash": params_hash(params or {}),
        "git_commit": git_commit(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return atomic.write_json(paths.metrics(stem), out)


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


def scalars(metrics: Mapping[str, Any]) -> dict:
    """The top-level numbers and strings of a metrics dict (no lists or nested dicts): what a notebook prints."""
    return {k: v for k, v in metrics.items() if not isinstance(v, (list, dict, tuple))}
