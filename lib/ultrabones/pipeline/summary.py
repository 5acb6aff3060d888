"""The paper's headline numbers beside this run's, each traced to a metrics JSON key.

:data:`ROWS` lists every headline number of the paper with the notebook and
key that reproduces it, the twin's ground-truth counterpart where the twin can
measure what the paper could only rate by eye, and the rule by which the number
counts as reproduced. :func:`summary_table` reads the metrics files and builds
the table that notebook 07 shows and saves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ultrabones.core.paths import Paths


@dataclass(frozen=True)
class Row:
    """One headline number.

    Attributes
    ----------
    quantity : what is measured, with its unit.
    paper : the published value (None where the paper gives none).
    source : ``"<stem>:<dotted.key.path>"`` of this run's value.
    truth : ``"<stem>:<dotted.key.path>"`` of the twin's ground-truth measurement, if any.
    rule : how "reproduced" is decided: ``"abs"`` (``|ours - paper| <= tol``),
        ``"below"`` (``ours < tol``), ``"above"`` (``ours > tol``), or ``"none"``.
    tol : the tolerance or bound of the rule.
    """

    quantity: str
    paper: float | None
    source: str
    truth: str | None = None
    rule: str = "abs"
    tol: float = 0.0


#: Every headline number of the paper, in the paper's order.
ROWS: tuple[Row, ...] = (
    Row("3D localisation error of the calibration (mm)", 1.07, "01_calibration:localization_error_mm",
        None, "abs", 0.5),
    Row("calibration translation error against the truth (mm)", None,
        "01_calibration:calibration_translation_error_mm", None, "below", 1.0),
    Row("temporal offset error against the truth (ms)", None, "01_calibration:temporal_offset_error_ms",
        None, "below", 1.0),
    Row("initial misalignment, mean (mm)", 1.13, "00_simulate:initial_misalignment_mm.mean",
        "02_labeling:label_error_mm.initial.mean", "abs", 0.4),
    Row("initial misalignment, std (mm)", 0.606, "00_simulate:initial_misalignment_mm.std", None, "abs", 0.3),
    Row("frames discarded by validation (fraction)", 0.187, "02_labeling:discard_rate", None, "abs", 0.1),
    Row("mean fiducial correction of kept frames (mm)", 0.481, "02_labeling:kept_mean_fiducial_correction_mm",
        None, "abs", 0.2),
    Row("label error after optimisation, mean (mm)", None, "02_labeling:label_error_mm.optimized.mean",
        None, "below", 0.3),
    Row("label error after global registration, mean (mm)", None, "02_labeling:label_error_mm.registration.mean",
        None, "none"),
    Row("kept frames whose optimised label beats the initial (fraction)", None,
        "02_labeling:optimized_better_share", None, "above", 0.9),
    Row("mean rating, initial alignment (0-3)", 1.45, "03_rating_statistics:mean_rating.initial", None, "abs", 0.5),
    Row("mean rating, CT-US registration (0-3)", 0.87, "03_rating_statistics:mean_rating.registration", None,
        "abs", 0.5),
    Row("mean rating, optimised alignment (0-3)", 2.39, "03_rating_statistics:mean_rating.optimized", None,
        "abs", 0.5),
    Row("Wilcoxon p, optimised vs initial (Bonferroni)", 0.001,
        "03_rating_statistics:p_value_bonferroni.optimized_vs_initial", None, "below", 0.001),
    Row("Wilcoxon p, optimised vs registration (Bonferroni)", 0.001,
        "03_rating_statistics:p_value_bonferroni.optimized_vs_registration", None, "below", 0.001),
    Row("model accuracy at 0.5 mm, all", 0.900, "05_evaluation:at_0p5mm.released.model.all.accuracy", None, "abs", 0.1),
    Row("model completeness at 0.5 mm, all", 0.895, "05_evaluation:at_0p5mm.released.model.all.completeness", None,
        "abs", 0.1),
    Row("model F1 at 0.5 mm, all", 0.893, "05_evaluation:at_0p5mm.released.model.all.f1", None, "abs", 0.1),
    Row("model accuracy at 0.5 mm, low intensity", 0.789, "05_evaluation:at_0p5mm.released.model.low.accuracy",
        None, "abs", 0.15),
    Row("model completeness at 0.5 mm, low intensity", 0.801,
        "05_evaluation:at_0p5mm.released.model.low.completeness", None, "abs", 0.15),
    Row("model F1 at 0.5 mm, low intensity", 0.778, "05_evaluation:at_0p5mm.released.model.low.f1", None, "abs", 0.15),
    Row("manual accuracy at 0.5 mm, low intensity", 0.619, "05_evaluation:at_0p5mm.released.manual.low.accuracy",
        None, "abs", 0.15),
    Row("manual completeness at 0.5 mm, low intensity", 0.190,
        "05_evaluation:at_0p5mm.released.manual.low.completeness", None, "abs", 0.15),
    Row("manual F1 at 0.5 mm, low intensity", 0.261, "05_evaluation:at_0p5mm.released.manual.low.f1", None,
        "abs", 0.15),
    Row("3D reconstruction, one-sided mean distance, CT labels + optimised poses (mm)", None,
        "06_reconstruction:grid.labels_optimized.mean_mm", None, "none"),
    Row("3D reconstruction, one-sided mean distance, CT labels + original poses (mm)", None,
        "06_reconstruction:grid.labels_original.mean_mm", None, "none"),
)


def lookup(metrics: dict[str, dict], ref: str) -> Any:
    """The value at ``"<stem>:<dotted.path>"`` in the loaded metrics, or None.

    Raises
    ------
    KeyError
        Never: a missing notebook or key gives None (shown as "n/a").
    """
    stem, path = ref.split(":", 1)
    node: Any = metrics.get(stem)
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def reproduced(row: Row, value: Any) -> str:
    """``"yes"``, ``"no"``, ``"n/a"`` (no value) or ``"-"`` (no rule) for a row's value."""
    if row.rule == "none":
        return "-"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "n/a"
    if row.rule == "abs":
        ok = abs(value - row.paper) <= row.tol
    elif row.rule == "below":
        ok = value < row.tol
    elif row.rule == "above":
        ok = value > row.tol
    else:  # pragma: no cover - table bug
        raise ValueError(f"unknown rule {row.rule}")
    return "yes" if ok else "no"


def _criterion(row: Row) -> str:
    return {"abs": f"within {row.tol:g} of the paper", "below": f"< {row.tol:g}", "above": f"> {row.tol:g}",
            "none": "reported only"}[row.rule]


def load_all(paths: Paths, stems: list[str]) -> dict[str, dict]:
    """Every available metrics JSON of ``stems`` (missing ones are left out)."""
    out = {}
    for stem in stems:
        f = paths.metrics(stem)
        if f.is_file():
            out[stem] = json.loads(f.read_text())
    return out


def summary_table(metrics: dict[str, dict], rows: tuple[Row, ...] = ROWS) -> pd.DataFrame:
    """The summary table: paper, this run, twin truth, criterion, reproduced, source key."""
    records = []
    for row in rows:
        value = lookup(metrics, row.source)
        truth = lookup(metrics, row.truth) if row.truth else None
        records.append(
            {
                "quantity": row.quantity,
                "paper": row.paper,
                "this run": value,
                "twin ground truth": truth,
                "criterion": _criterion(row),
                "reproduced": reproduced(row, value),
                "source": row.source.replace(":", ".json: "),
            }
        )
    return pd.DataFrame.from_records(records)


def format_table(df: pd.DataFrame) -> pd.DataFrame:
    """Numbers rounded for reading (3 significant digits), missing values as n/a."""

    def fmt(v):
        if v is None or (isinstance(v, float) and v != v):
            return "n/a"
        if isinstance(v, float):
            return f"{v:.3g}"
        return v

    out = df.copy()
    for c in ("paper", "this run", "twin ground truth"):
        out[c] = out[c].map(fmt)
    out.loc[df["paper"].isna(), "paper"] = "-"
    return out


def orphan_figures(figures_dir: Path) -> list[str]:
    """Files in the figures folder that no notebook recorded in the manifest."""
    from ultrabones.pipeline.stage import MANIFEST

    figures_dir = Path(figures_dir)
    manifest_path = figures_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    return sorted(
        f.name for f in figures_dir.iterdir()
        if f.is_file() and f.name not in manifest and f.name != MANIFEST and not f.name.startswith(".")
    )
