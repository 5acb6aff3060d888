"""Design seeds and validation seeds in the summary: which run gives each number, and its role.

A number the project used to design or tune a rule is not evidence that the rule works. The seeds' roles are
fixed in :mod:`ultrabones.core.paper` (``DESIGN_SEEDS``, ``VALIDATION_SEEDS``, ``SEALED_SEEDS``). ``make
validate`` runs stages 00-02 on the validation seeds (``build/<profile>-seed<N>/``) and
:func:`collect_validation` copies their metrics into a committed folder (``figures/validation/seed<N>/`` for the
default profile). :func:`seeded_summary` then gives every summary row from the validation seeds where they have
its number (mean ± sd and each seed), and otherwise from the profile's own run, marked *design seed*; the
profile's own number stands beside the validation mean in its own column.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from ultrabones.core import atomic, paper
from ultrabones.core.merge import merge_metrics
from ultrabones.pipeline import headlines

#: The stages ``make validate`` runs on each validation seed (the labelling rows of the summary).
VALIDATION_STAGES = ("00_simulate", "01_calibration", "02_labeling")
#: What the ``seeds`` column says of a number that comes from the profile's own run.
DESIGN = "design seed"
#: The file in a collected folder that records how its metrics were collected.
COLLECTED = "collected.json"


def seed_role(seed: int) -> str:
    """``"design"``, ``"validation"``, ``"sealed"`` or ``"unassigned"`` (a seed :mod:`~ultrabones.core.paper` names
    in no list)."""
    if seed in paper.DESIGN_SEEDS:
        return "design"
    if seed in paper.VALIDATION_SEEDS:
        return "validation"
    if seed in paper.SEALED_SEEDS:
        return "sealed"
    return "unassigned"


def collect_validation(build_root: Path | str, profile: str, seeds: Sequence[int], out_dir: Path | str,
                       stages: Sequence[str] = VALIDATION_STAGES) -> dict:
    """Copy the validation seeds' metrics into a folder that is committed (``figures/validation/``).

    Parameters
    ----------
    build_root : the folder holding ``<profile>-seed<N>/metrics/`` (``build/``).
    profile : the profile's name (``default``).
    seeds : the master seeds to collect.
    out_dir : where ``seed<N>/<stem>.json`` go; ``collected.json`` there lists what was collected and from where.
    stages : the stems to copy (default: 00-02).

    Returns
    -------
    The record written to ``collected.json``: ``{"profile", "seeds": {N: {"stems", "git_commit"}}}``.

    Raises
    ------
    FileNotFoundError
        Naming the seed build and the command that makes it, when a seed lacks a stage's metrics.
    """
    build_root, out_dir = Path(build_root), Path(out_dir)
    record_path = out_dir / COLLECTED
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"profile": profile, "seeds": {}}
    for seed in seeds:
        src = build_root / f"{profile}-seed{seed}" / "metrics"
        missing = [s for s in stages if not (src / f"{s}.json").is_file()]
        if missing:
            raise FileNotFoundError(
                f"{src}: no metrics of {', '.join(missing)} for seed {seed}; run "
                f"'make validate PROFILE={profile}' (or 'make labelling PROFILE={profile} SEED={seed}') first")
        dst = out_dir / f"seed{seed}"
        dst.mkdir(parents=True, exist_ok=True)
        commits = set()
        for stem in stages:
            shutil.copyfile(src / f"{stem}.json", dst / f"{stem}.json")
            commits.add(json.loads((src / f"{stem}.json").read_text()).get("_provenance", {}).get("git_commit"))
        record["seeds"][str(seed)] = {"stems": list(stages), "git_commit": sorted(c for c in commits if c),
                                      "role": seed_role(seed)}
    atomic.write_json(record_path, record)
    return record


def committed_runs(folder: Path | str) -> tuple[list[dict[str, dict]], list[str]]:
    """The metrics in a collected folder (``figures/validation/``), one dict per ``seed<N>/``, seeds in order,
    and their names (``seed<N>``)."""
    folder = Path(folder)
    found = sorted((int(m.group(1)), d) for d in folder.glob("seed*")
                   if d.is_dir() and (m := re.fullmatch(r"seed(\d+)", d.name)))
    runs, names = [], []
    for _, d in found:
        run = {f.stem: json.loads(f.read_text()) for f in sorted(d.glob("*.json"))}
        if run:
            runs.append(run)
            names.append(d.name)
    return runs, names


def validation_runs(build_dir: Path | str, committed: Path | str | None, stems: Sequence[str],
                    measured: Mapping[str, Mapping[str, dict]] | None = None,
                    ) -> tuple[list[dict[str, dict]], list[str], str]:
    """The validation seeds' metrics for the summary: fresh seed builds where they exist, else the committed ones.

    Parameters
    ----------
    build_dir : the profile's build folder (``build/default``); its ``-seed<N>`` siblings are looked at.
    committed : the committed folder (``figures/validation``), or None.
    stems : the stems to read from seed builds.
    measured : build folder name -> stem -> the twin's measurements against the truth (read by the twin's code
        in notebook 07, :func:`ultrabones.twin.measure.measured_builds`), merged into the seed builds' metrics;
        the committed folder holds them merged already (``make validate``).

    Returns
    -------
    ``(runs, names, where)``: one metrics dict per validation seed (only seeds of
    ``paper.VALIDATION_SEEDS``), their names (``seed<N>``) and where they were read (a folder).
    """
    build_dir = Path(build_dir)
    runs, names = [], []
    for d in headlines.seed_builds(build_dir):
        m = re.search(r"-seed(\d+)$", d.name)
        if m and int(m.group(1)) in paper.VALIDATION_SEEDS:
            run = {s: merge_metrics(json.loads((d / "metrics" / f"{s}.json").read_text()),
                                    (measured or {}).get(d.name, {}).get(s))
                   for s in stems if (d / "metrics" / f"{s}.json").is_file()}
            if run:
                runs.append(run)
                names.append(f"seed{m.group(1)}")
    if runs:
        return runs, names, str(build_dir.parent)
    if committed is not None and Path(committed).is_dir():
        runs, names = committed_runs(committed)
        keep = [i for i, n in enumerate(names) if int(n[4:]) in paper.VALIDATION_SEEDS]
        return [runs[i] for i in keep], [names[i] for i in keep], str(committed)
    return [], [], ""


def seeded_summary(design: Mapping[str, dict], design_name: str, validation: Sequence[Mapping[str, dict]],
                   validation_names: Sequence[str]) -> pd.DataFrame:
    """The summary table with each number's seeds and role.

    Parameters
    ----------
    design : the profile's own run (seed 0, a design seed): ``{stem: metrics}``.
    design_name : its name in the table (e.g. ``"seed 0"``).
    validation : the validation seeds' runs (may be empty).
    validation_names : their names (``seed8``, ...).

    Returns
    -------
    :func:`ultrabones.pipeline.headlines.summary_table`'s columns, where a row that the validation seeds give
    takes their mean, sd, per-seed numbers and verdict (judged on every validation seed), plus ``seeds`` (which
    seeds the value is from, or ``"<design_name> (design seed)"``) and ``design seed`` (the profile's own
    number beside a validation mean; None where the value is the design seed's own).
    """
    des = headlines.summary_table([design]).set_index("id")
    val = headlines.summary_table(list(validation)).set_index("id") if validation else None
    records = []
    for rid, row in des.iterrows():
        rec = {"id": rid, **row.to_dict()}
        if val is not None and rid in val.index and val.loc[rid, "n_seeds"] > 0:
            rec.update(val.loc[rid].to_dict())
            rec["seeds"] = ", ".join(n.replace("seed", "") for n in validation_names) + " (validation)"
            rec["design seed"] = row["value"]
        else:
            rec["seeds"] = f"{design_name} ({DESIGN})"
            rec["design seed"] = None
        records.append(rec)
    return pd.DataFrame.from_records(records)


def format_seeded(df: pd.DataFrame) -> pd.DataFrame:
    """:func:`seeded_summary` for reading: :func:`ultrabones.pipeline.headlines.format_table`'s columns with
    ``seeds`` after ``value`` and ``design seed`` (the profile's own number, 3 significant digits) after it."""
    out = headlines.format_table(df)
    cols = list(out.columns)
    at = cols.index("value") + 1
    out.insert(at, "seeds", df["seeds"].to_numpy())
    out.insert(at + 1, DESIGN, [("" if v is None or v != v else headlines.fmt_number(v)) for v in df["design seed"]])
    return out


#: The columns of :func:`objective_comparison`, in order (twin.objectives.table's keys).
OBJECTIVE_COLUMNS = ("n_frames", "discard_rate", "kept_initial_mm", "kept_optimized_mm", "delivered_mm",
                     "delivered_se_mm", "better_share", "seconds_per_frame")


def objective_comparison(runs: Sequence[Mapping[str, dict]], names: Sequence[str]) -> pd.DataFrame:
    """Which objective is more accurate, seed by seed and over the seeds (issue 29).

    Parameters
    ----------
    runs, names : the validation seeds' metrics and names (:func:`committed_runs`); a run whose
        ``02_labeling.json`` lacks ``objective_comparison`` (notebook 02 with ``twin.compare_objectives_frames`` > 0,
        measured against the truth by :mod:`ultrabones.twin.objectives`) is left out.

    Returns
    -------
    One row per (objective, seed) with :data:`OBJECTIVE_COLUMNS` (contour errors against the truth in mm,
    seconds of process time per frame), then, with two or more seeds, one ``all`` row per objective: frames
    summed, the other columns weighted by each seed's frames, and ``delivered_se_mm`` the standard error of that
    weighted mean (the seeds' errors taken independent). Empty when no run holds a comparison.
    """
    rows = []
    for run, name in zip(runs, names):
        block = (run.get("02_labeling") or {}).get("objective_comparison")
        if not block:
            continue
        for i, objective in enumerate(block["objective"]):
            rows.append({"objective": objective, "seed": name.replace("seed", ""),
                         **{c: block[c][i] for c in OBJECTIVE_COLUMNS}})
    df = pd.DataFrame(rows, columns=["objective", "seed", *OBJECTIVE_COLUMNS])
    if df["seed"].nunique() < 2:
        return df
    pooled = []
    for objective, g in df.groupby("objective", sort=False):
        n = g["n_frames"].astype(float).to_numpy()
        w = n / n.sum()
        rec = {"objective": objective, "seed": "all", "n_frames": int(n.sum())}
        for c in OBJECTIVE_COLUMNS[1:]:
            rec[c] = float((w * g[c].astype(float).to_numpy()).sum())
        rec["delivered_se_mm"] = float(((w * g["delivered_se_mm"].astype(float).to_numpy()) ** 2).sum() ** 0.5)
        pooled.append(rec)
    return pd.concat([df, pd.DataFrame(pooled)], ignore_index=True)
