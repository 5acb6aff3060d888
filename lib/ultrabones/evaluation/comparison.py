"""The evaluation beside the paper: the table of scores at the report threshold with the paper's values, and the
paper's claim (the model's low-intensity completeness beats the manual labels') tested on the manual labels
and at every level of a simulated annotator's visibility sweep.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ultrabones.core import paper as _paper
from ultrabones.core.distance_scores import SCORES
from ultrabones.evaluation.metrics import REGIONS

#: The paper's figures at sigma = 0.5 mm (Section 4, Fig. 8), read from :mod:`ultrabones.core.paper`. Only
#: the low-intensity manual row and the overall and low-intensity model rows are given in the text.
PAPER_AT_0P5MM = _paper.at_0p5mm()


def table_at(at: Mapping, paper: Mapping = PAPER_AT_0P5MM):
    """The table beside the paper's: one row per method and region, both protocols and the paper's value.

    ``at`` is ``{protocol: {method: {region: {score: value}}}}``.
    """
    rows = []
    methods = list(next(iter(at.values())))
    for method in methods:
        for region in REGIONS:
            row = {"method": method, "region": region}
            for score in SCORES:
                row[f"{score}"] = at["released"][method][region][score]
                row[f"{score}_strict"] = at["strict"][method][region][score]
                row[f"{score}_paper"] = paper.get(method, {}).get(region, {}).get(score, np.nan)
            row["n_frames"] = at["released"][method][region]["n_frames"]
            rows.append(row)
    return pd.DataFrame(rows)


def model_vs_manual(at: Mapping, manual: str = "manual", model: str = "model") -> dict:
    """The paper's claim at one threshold: does the model's low-intensity completeness beat the manual labels'?

    The released protocol where both have low-intensity frames, else the strict
    one (an empty prediction scores 0). ``at`` is ``summarise(...)["at"]``.

    Returns
    -------
    ``{"beats": bool, "protocol": str, "model": value, "manual": value}``.
    """
    proto = "released" if all(at["released"][m]["low"]["n_frames"] for m in (model, manual)) else "strict"
    mod = at[proto][model]["low"]["completeness"]
    man = at[proto][manual]["low"]["completeness"]
    return {"beats": bool(mod > man), "protocol": proto, "model": mod, "manual": man}


def level_name(level: Mapping, sep: str = " ") -> str:
    """A sweep level's visibility thresholds: ``"q 0.97 c 2.00 f 0.60"`` (``c`` only when the level sets it)."""
    parts = [f"q {level['visible_quantile']:.2f}"]
    if "visible_contrast" in level:
        parts.append(f"c {level['visible_contrast']:.2f}")
    parts.append(f"f {level['visible_fraction']:.2f}")
    return sep.join(parts)


def model_vs_levels(at: Mapping, sweep_rows: Sequence[Mapping], model: str = "model") -> list[dict]:
    """The paper's claim at every level of an annotator sweep: where does the model's low-intensity
    completeness beat the annotator's?

    Per level, the released protocol where both the model and that level have low-intensity frames, else the
    strict one (as :func:`model_vs_manual`).

    Parameters
    ----------
    at : ``summarise(...)["at"]`` (the model's scores at the report threshold).
    sweep_rows : rows of :func:`ultrabones.twin.annotator.visibility_sweep` (dicts with ``level``, ``region``,
        ``completeness``, ``completeness_strict``, ``n_frames`` and the level's fields).

    Returns
    -------
    One dict per level, in level order: ``level``, the level's fields (``visible_*``), ``protocol``,
    ``model``, ``annotator`` (low-intensity completeness, 0..1) and ``beats`` (model strictly higher).
    """
    out = []
    for row in sorted((r for r in sweep_rows if r["region"] == "low"), key=lambda r: r["level"]):
        proto = "released" if at["released"][model]["low"]["n_frames"] and row["n_frames"] else "strict"
        mod = at[proto][model]["low"]["completeness"]
        ann = row["completeness"] if proto == "released" else row["completeness_strict"]
        fields = {k: row[k] for k in row if k.startswith("visible_")}
        out.append({"level": int(row["level"]), **fields, "protocol": proto, "model": mod, "annotator": ann,
                    "beats": bool(mod > ann)})
    return out


def table_with_sweep(table, sweep=None, name: str = "simulated annotator", beats: Mapping[int, bool] | None = None):
    """The evaluation table (:func:`table_at`) with one row per level and region of an annotator sweep.

    Parameters
    ----------
    table : :func:`table_at` rows (model, classical detector, manual, ...).
    sweep : the rows of :func:`ultrabones.twin.annotator.visibility_sweep` (a DataFrame) or None.
    name : the swept annotator's name; a level's row is named
        ``"<name> q <visible_quantile> c <visible_contrast> f <visible_fraction>"`` (``c`` when the sweep sets it).
    beats : level -> whether the model's low-intensity completeness is higher than that level's
        (:func:`model_vs_levels`); given, a column ``model_low_completeness_higher`` says it on each level's
        ``low`` row (empty on every other row).

    Returns
    -------
    DataFrame: ``table`` followed by the sweep's rows, same columns (the paper's values NaN).
    """
    if sweep is None or len(sweep) == 0:
        return table
    rows = []
    for r in sweep.itertuples(index=False):
        row = {"method": f"{name} {level_name(r._asdict())}", "region": r.region}
        for score in SCORES:
            row[score] = getattr(r, score)
            row[f"{score}_strict"] = getattr(r, f"{score}_strict")
            row[f"{score}_paper"] = np.nan
        row["n_frames"] = r.n_frames
        rows.append(row)
    out = pd.concat([table, pd.DataFrame(rows).reindex(columns=table.columns)], ignore_index=True)
    if beats is not None:
        said = [""] * len(table) + [("yes" if beats[int(r.level)] else "no") if r.region == "low" else ""
                                    for r in sweep.itertuples(index=False)]
        out["model_low_completeness_higher"] = said
    return out
