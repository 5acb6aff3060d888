"""The paper's headline numbers beside this run's, each traced to a metrics key and judged by its criterion.

:data:`ROWS` lists the summary's rows: the metrics key that gives each number, *how* the number was obtained
(:data:`HOW`), and the published number beside it (a name in :data:`ultrabones.core.paper.PUBLISHED`). The
criterion of every row is :data:`ultrabones.core.paper.CRITERIA` ``[row.id]`` (versioned there; the changes made
after results were seen are in :mod:`ultrabones.core.criteria_history`); nothing here sets or moves a criterion.
:func:`summary_table` takes the metrics of one run or of several seeds (one dict per seed) and gives each row's
mean (and sd over seeds), its criterion and whether it is met. The runs' metrics are read by :func:`load_all`
(one run) and :func:`load_seed_runs` (a profile's seed builds, :func:`seed_builds`). Stage 07
(:mod:`ultrabones.pipeline.summary`) builds its tables from these.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ultrabones.core import paper
from ultrabones.core.merge import merge_metrics
from ultrabones.core.paths import Paths
from ultrabones.rating.study import RATER_MODEL_LABEL

#: How a number was obtained.
TRUTH_FREE = "truth-free"  #: what a user gets on real data: the method's output, no truth read
AGAINST_TRUTH = "measured against truth"  #: the twin's truth measures the method's output (twin only)
SIMULATOR_SETTING = "simulator setting"  #: what the twin is configured to produce: never a result
HOW = (TRUTH_FREE, AGAINST_TRUTH, SIMULATOR_SETTING)
#: A row whose "how" depends on who rated: a person's ratings CSV (truth-free) or the rater model.
RATINGS = "ratings"
#: How tables and figures name the simulated rater.
RATER_MODEL = RATER_MODEL_LABEL
#: ``ratings_source`` of notebook 03 when the ratings come from the rater model.
RATER_MODEL_SOURCE = "simulated rater"
#: Values of the "criterion met" column.
MET = ("yes", "no", "n/a", "-")


@dataclass(frozen=True)
class Row:
    """One row of the summary.

    Attributes
    ----------
    id : the row's name; its criterion is ``paper.CRITERIA[id]``.
    quantity : what is measured, with its unit.
    source : ``"<stem>:<dotted.key.path>"`` of the number in the stage's metrics JSON.
    how : one of :data:`HOW`, or :data:`RATINGS` (decided by who rated, see :func:`how_obtained`).
    published : name of the published number in ``paper.PUBLISHED`` (None where the paper gives none).
    optional : the row is left out of the table when no run has its key (keys other stages add later,
        e.g. the reconstruction against the true surface); a missing key of a required row shows as n/a.
    """

    id: str
    quantity: str
    source: str
    how: str
    published: str | None = None
    optional: bool = False

    @property
    def criterion(self) -> paper.Criterion:
        """The row's criterion (``paper.CRITERIA[self.id]``)."""
        return paper.CRITERIA[self.id]

    @property
    def paper_value(self) -> float | None:
        """The published number, or None."""
        return paper.PUBLISHED[self.published].value if self.published else None


#: Metrics written outside the notebooks, on demand: the held-out oracle of ``benchmarks/bench_lambda_oracle.py``.
HELDOUT_ORACLE = "02_lambda_oracle_heldout"
MEASUREMENTS = (HELDOUT_ORACLE,)

_CE = "02_labeling:contour_error_mm"
_AT = "05_evaluation:at_0p5mm.released"
_VT = "05_evaluation:vs_truth.at_0p5mm.released"
_GRID = "06_reconstruction:grid"
_UDF = "ultraboneudf_chamfer_mm"
_SCORE = {"accuracy": "accuracy", "completeness": "completeness", "f1": "F1"}

#: Every row of the summary, in the paper's order.
ROWS: tuple[Row, ...] = (
    Row("calibration_localisation_error", "3D localisation error of the calibration (mm)",
        "01_calibration:localization_error_mm", TRUTH_FREE, "calibration_localisation_error_mm"),
    Row("calibration_translation_error", "calibration translation error (mm)",
        "01_calibration:calibration_translation_error_mm", AGAINST_TRUTH),
    Row("temporal_offset_error", "temporal offset error (ms)", "01_calibration:temporal_offset_error_ms", AGAINST_TRUTH),
    Row("initial_misalignment_mean", "initial misalignment, mean (mm)", "00_simulate:initial_misalignment_mm.mean",
        SIMULATOR_SETTING, "initial_misalignment_mean_mm"),
    Row("initial_misalignment_sd", "initial misalignment, sd (mm)", "00_simulate:initial_misalignment_mm.std",
        SIMULATOR_SETTING, "initial_misalignment_sd_mm"),
    Row("discard_rate", "frames discarded by validation (fraction)", "02_labeling:discard_rate", TRUTH_FREE,
        "discard_rate"),
    Row("kept_mean_fiducial_correction", "mean fiducial correction of kept frames (mm)",
        "02_labeling:kept_mean_fiducial_correction_mm", TRUTH_FREE, "kept_mean_fiducial_correction_mm"),
    Row("lambda_chosen", "lambda chosen by the truth-free rule", "02_labeling:lambda_selection.chosen", TRUTH_FREE),
    Row("lambda_oracle", "lambda the truth would choose (oracle)", "02_labeling:lambda_selection.oracle",
        AGAINST_TRUTH),
    Row("lambda_oracle_gap", "contour error of the chosen lambda minus the oracle's, selection frames (mm)",
        "02_labeling:lambda_selection.oracle_gap_mm", AGAINST_TRUTH),
    Row("lambda_oracle_gap_heldout", "contour error of the chosen lambda minus the oracle's, held-out frames (mm)",
        f"{HELDOUT_ORACLE}:oracle_gap_mm", AGAINST_TRUTH, optional=True),
    *(Row(f"contour_{m}_{s}", f"label contour error, {name}, {s} (mm)", f"{_CE}.{m}.{s}", AGAINST_TRUTH)
      for m, name in (("initial", "initial"), ("registration", "global registration"), ("optimized", "optimised"))
      for s in ("mean", "median", "p95")),
    Row("optimized_better_share", "kept frames whose optimised contour beats the initial (fraction)",
        "02_labeling:optimized_better_share", AGAINST_TRUTH),
    Row("band_label_error_optimized_mean", "band label error after optimisation, mean (mm; secondary)",
        "02_labeling:label_error_mm.optimized.mean", AGAINST_TRUTH),
    Row("mean_rating_initial", "mean rating, initial alignment (0-3)", "03_rating_statistics:mean_rating.initial",
        RATINGS, "mean_rating_initial"),
    Row("mean_rating_registration", "mean rating, CT-US registration (0-3)",
        "03_rating_statistics:mean_rating.registration", RATINGS, "mean_rating_registration"),
    Row("mean_rating_optimized", "mean rating, optimised alignment (0-3)", "03_rating_statistics:mean_rating.optimized",
        RATINGS, "mean_rating_optimized"),
    Row("p_optimized_vs_initial", "Wilcoxon p, optimised vs initial (Bonferroni)",
        "03_rating_statistics:p_value_bonferroni.optimized_vs_initial", RATINGS, "p_value_bonferroni_bound"),
    Row("p_optimized_vs_registration", "Wilcoxon p, optimised vs registration (Bonferroni)",
        "03_rating_statistics:p_value_bonferroni.optimized_vs_registration", RATINGS, "p_value_bonferroni_bound"),
    *(Row(f"model_{r}_{s}", f"model {_SCORE[s]} at 0.5 mm, agreement with the CT-derived labels, {rn}",
          f"{_AT}.model.{r}.{s}", TRUTH_FREE, f"model_{r}_{s}")
      for r, rn in (("all", "all"), ("low", "low intensity")) for s in ("accuracy", "completeness", "f1")),
    *(Row(f"manual_low_{s}", f"manual {_SCORE[s]} at 0.5 mm, agreement with the CT-derived labels, low intensity "
          "(twin: simulated annotator)", f"{_AT}.manual.low.{s}", TRUTH_FREE, f"manual_low_{s}")
      for s in ("accuracy", "completeness", "f1")),
    Row("detector_all_f1", "classical detector F1 at 0.5 mm, agreement with the CT-derived labels, all",
        f"{_AT}.detector.all.f1", TRUTH_FREE, optional=True),
    Row("detector_low_f1", "classical detector F1 at 0.5 mm, agreement with the CT-derived labels, low intensity",
        f"{_AT}.detector.low.f1", TRUTH_FREE, optional=True),
    Row("model_all_f1_vs_truth", "model F1 at 0.5 mm against the true label, all", f"{_VT}.model.all.f1",
        AGAINST_TRUTH),
    Row("model_low_f1_vs_truth", "model F1 at 0.5 mm against the true label, low intensity", f"{_VT}.model.low.f1",
        AGAINST_TRUTH),
    Row("ct_labels_all_f1_vs_truth", "CT-derived labels F1 at 0.5 mm against the true label, all",
        f"{_VT}.ct_labels.all.f1", AGAINST_TRUTH),
    *(Row(f"chamfer_{cell}", f"3D reconstruction Chamfer distance to the true surface, {name} (mm)",
          f"{_GRID}.{cell}.chamfer_true_mm", AGAINST_TRUTH, _UDF, optional=True)
      for cell, name in (("labels_original", "CT labels + original poses"),
                         ("labels_optimized", "CT labels + optimised poses"),
                         ("predicted_original", "predicted labels + original poses"),
                         ("predicted_optimized", "predicted labels + optimised poses"))),
    Row("mean_true_labels_optimized", "3D reconstruction mean distance to the true surface, CT labels + optimised "
        "poses (mm)", f"{_GRID}.labels_optimized.mean_true_mm", AGAINST_TRUTH, optional=True),
    Row("mean_true_predicted_optimized", "3D reconstruction mean distance to the true surface, predicted labels + "
        "optimised poses (mm)", f"{_GRID}.predicted_optimized.mean_true_mm", AGAINST_TRUTH, optional=True),
)


def lookup(metrics: Mapping[str, dict], ref: str) -> Any:
    """The value at ``"<stem>:<dotted.path>"`` in one run's loaded metrics, or None (never a KeyError)."""
    stem, path = ref.split(":", 1)
    node: Any = metrics.get(stem)
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def is_number(v) -> bool:
    """A number that is not a bool and not NaN."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def seed_values(runs: Sequence[Mapping[str, dict]], ref: str) -> list[float]:
    """The numbers at ``ref`` over runs (one per seed); runs without a number there are left out."""
    return [float(v) for v in (lookup(m, ref) for m in runs) if is_number(v)]


def aggregate(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    """``(mean, sd, n)`` of per-seed values: sd with ddof=1 (None for fewer than two), mean None when empty."""
    if not values:
        return None, None, 0
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None), len(arr)


def how_obtained(row: Row, runs: Sequence[Mapping[str, dict]]) -> str:
    """How the row's number was obtained, one of :data:`HOW`.

    Rating rows are truth-free when a person's ratings CSV was read, and measured against truth when the
    ratings come from the rater model (``03_rating_statistics.json: ratings_source``).
    """
    if row.how != RATINGS:
        return row.how
    sources = {lookup(m, "03_rating_statistics:ratings_source") for m in runs} - {None}
    return AGAINST_TRUTH if (not sources or RATER_MODEL_SOURCE in sources) else TRUTH_FREE


def _as_runs(metrics: Mapping[str, dict] | Sequence[Mapping[str, dict]]) -> list[Mapping[str, dict]]:
    if isinstance(metrics, Mapping):
        return [metrics]
    runs = list(metrics)
    if not runs:
        raise ValueError("summary_table: no metrics given (expected one dict per seed)")
    return runs


def summary_table(metrics: Mapping[str, dict] | Sequence[Mapping[str, dict]],
                  rows: Sequence[Row] = ROWS) -> pd.DataFrame:
    """The summary table of one run or of several seeds.

    Parameters
    ----------
    metrics : one run's metrics (``{stem: metrics dict}``, as :func:`load_all` gives) or a list of them,
        one per seed.
    rows : the rows (default :data:`ROWS`).

    Returns
    -------
    One line per row (optional rows without any value left out): ``id``, ``quantity``, ``published``,
    ``value`` (the mean over seeds), ``sd`` (over seeds; None for one), ``n_seeds``, ``how obtained``,
    ``criterion``, ``basis``, ``criterion met`` (:data:`MET`), ``seeds met`` (seeds meeting the criterion,
    of those judged), ``per seed`` (the numbers, in the runs' order) and ``source`` (``"<stem>.json: <key>"``).

    The criterion is judged on every seed, not on the mean: a row is met ("yes") only when each seed that has
    its number meets it. A ``*_row`` criterion compares each seed's number with the other row's number of the
    same seed.
    """
    runs = _as_runs(metrics)
    by_id = {r.id: r for r in ROWS}
    by_id.update({r.id: r for r in rows})
    names = {k: r.quantity for k, r in by_id.items()}
    records = []
    for row in rows:
        mean, sd, n = aggregate(seed_values(runs, row.source))
        if row.optional and n == 0:
            continue
        crit = row.criterion
        other = aggregate(seed_values(runs, by_id[crit.row].source))[0] if crit.row else None
        how = how_obtained(row, runs)
        quantity = f"{row.quantity} [{RATER_MODEL}]" if row.how == RATINGS and how == AGAINST_TRUTH else row.quantity
        verdicts = [crit.judge(v, row.paper_value, lookup(run, by_id[crit.row].source) if crit.row else None)
                    for run in runs if is_number(v := lookup(run, row.source))]
        met = crit.judge(mean, row.paper_value, other)
        if verdicts and met in ("yes", "no"):
            met = "yes" if all(v == "yes" for v in verdicts) else "no"
        records.append({
            "id": row.id, "quantity": quantity, "published": row.paper_value, "value": mean, "sd": sd,
            "n_seeds": n, "how obtained": how, "criterion": crit.text(names),
            "basis": crit.basis, "criterion met": met,
            "seeds met": f"{sum(v == 'yes' for v in verdicts)} of {len(verdicts)}" if met in ("yes", "no") else "",
            "per seed": seed_values(runs, row.source),
            "source": row.source.replace(":", ".json: "),
        })
    return pd.DataFrame.from_records(records)


def fmt_number(v) -> str:
    """A number for a table: 3 significant digits; ``"n/a"`` for None or NaN; anything else as ``str``."""
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def format_table(df: pd.DataFrame) -> pd.DataFrame:
    """The table for reading: values to 3 significant digits, ``mean ± sd (n seeds)`` over several seeds.

    Columns: quantity, published, value, (over several seeds: per seed,) how obtained, criterion, basis,
    criterion met, source.
    """
    out = df.copy()
    out["value"] = [fmt_number(v) if n <= 1 or sd is None else f"{fmt_number(v)} ± {fmt_number(sd)} ({n} seeds)"
                    for v, sd, n in zip(df["value"], df["sd"], df["n_seeds"])]
    out["published"] = [("-" if p is None or p != p else fmt_number(p)) for p in df["published"]]
    out["basis"] = out["basis"].replace({"none": "-"})
    cols = ["quantity", "published", "value", "how obtained", "criterion", "basis", "criterion met", "source"]
    if "seeds met" in df and (df["n_seeds"] > 1).any():  # over several seeds: how many met it, and each number
        out["criterion met"] = [f"{m} ({k} seeds)" if n > 1 and k else m
                                for m, k, n in zip(df["criterion met"], df["seeds met"], df["n_seeds"])]
        out["per seed"] = [", ".join(fmt_number(v) for v in vals) if n > 1 else ""
                           for vals, n in zip(df["per seed"], df["n_seeds"])]
        cols.insert(3, "per seed")
    return out[cols]


def criteria_table(rows: Sequence[Row] = ROWS) -> pd.DataFrame:
    """The criteria as a table: row, criterion, basis and the reasoning (from ``paper.CRITERIA``)."""
    names = {r.id: r.quantity for r in ROWS}
    return pd.DataFrame.from_records([
        {"quantity": r.quantity, "published": (f"{r.paper_value:g} ({paper.PUBLISHED[r.published].where})"
                                              if r.published else "-"),
         "criterion": r.criterion.text(names), "basis": r.criterion.basis, "why": r.criterion.why or "-"}
        for r in rows])


def missing_rows(table: pd.DataFrame) -> list[str]:
    """Sources of the required rows that no run gave a number for."""
    return table.loc[table["n_seeds"] == 0, "source"].tolist()


def load_all(paths: Paths, stems: Sequence[str], measured: Mapping[str, dict] | None = None) -> dict[str, dict]:
    """Every available metrics JSON of ``stems`` of one run (missing ones are left out), with ``measured``
    (stem -> the twin's measurements against the truth, read by the twin's code in notebook 07's cell:
    :func:`ultrabones.twin.measure.measured_runs`) merged in."""
    out = {}
    for stem in stems:
        f = paths.metrics(stem)
        if f.is_file():
            out[stem] = json.loads(f.read_text())
    return _with_measurements(out, measured, stems)


def _with_measurements(run: dict[str, dict], measured: Mapping[str, dict] | None,
                       stems: Sequence[str]) -> dict[str, dict]:
    if not measured:
        return run
    return {stem: merge_metrics(run.get(stem, {}), measured.get(stem))
            for stem in stems if stem in run or stem in measured}


def seed_builds(build_dir: Path | str) -> list[Path]:
    """The build folders of one profile over its seeds: ``build/<profile>/`` and every
    ``build/<profile>-seed<N>/`` (see ``python -m ultrabones run --seed``) that holds a ``metrics/`` folder.

    ``build_dir`` may be the profile's folder or one of its seed folders; the result is the same: the
    profile's own run first (when it has metrics), then the seeds in increasing order.
    """
    build_dir = Path(build_dir)
    base = re.sub(r"-seed\d+$", "", build_dir.name)
    pattern = re.compile(rf"^{re.escape(base)}-seed(\d+)$")
    seeded = sorted((int(m.group(1)), d) for d in build_dir.parent.glob(f"{base}-seed*")
                    if (m := pattern.match(d.name)) and (d / "metrics").is_dir())
    own = build_dir.parent / base
    return ([own] if (own / "metrics").is_dir() else []) + [d for _, d in seeded]


def load_seed_runs(build_dir: Path | str, stems: Sequence[str],
                   measured: Mapping[str, Mapping[str, dict]] | None = None) -> tuple[list[dict[str, dict]], list[str]]:
    """One metrics dict per seed build of :func:`seed_builds` (stems that a build lacks are left out), and
    the builds' folder names, in the same order: the input of :func:`summary_table` over seeds. ``measured``
    (build folder name -> stem -> the twin's measurements against the truth) is merged into each build's."""
    runs, names = [], []
    for d in seed_builds(build_dir):
        run = {stem: json.loads((d / "metrics" / f"{stem}.json").read_text())
               for stem in stems if (d / "metrics" / f"{stem}.json").is_file()}
        run = _with_measurements(run, (measured or {}).get(d.name), stems)
        if run:
            runs.append(run)
            names.append(d.name)
    return runs, names


#: Columns of :func:`labeling_seed_table`: column -> ``"<stem>:<dotted.key>"``.
LABELING_SEED_COLUMNS = {
    "n_specimens": "00_simulate:n_specimens",
    "n_frames": "02_labeling:n_frames",
    "oracle lambda": "02_labeling:lambda_selection.oracle",
    "oracle region": "02_labeling:lambda_selection.oracle_region",
    "chosen lambda": "02_labeling:lambda_selection.chosen",
    "chosen region": "02_labeling:lambda_selection.region",
    "oracle gap (mm)": "02_labeling:lambda_selection.oracle_gap_mm",
    "held-out oracle": f"{HELDOUT_ORACLE}:oracle",
    "held-out oracle region": f"{HELDOUT_ORACLE}:oracle_region",
    "held-out gap (mm)": f"{HELDOUT_ORACLE}:oracle_gap_mm",
    "contour initial (mm)": "02_labeling:contour_error_mm.initial.mean",
    "contour registration (mm)": "02_labeling:contour_error_mm.registration.mean",
    "contour optimised (mm)": "02_labeling:contour_error_mm.optimized.mean",
    "share improved": "02_labeling:optimized_better_share",
    "discard rate": "02_labeling:discard_rate",
}


def labeling_seed_table(runs: Sequence[Mapping[str, dict]], names: Sequence[str],
                        pooled: Sequence[str] | None = None) -> pd.DataFrame:
    """Notebook 02's truth-free choice against the oracle, seed by seed.

    Parameters
    ----------
    runs, names : from :func:`load_seed_runs`.
    pooled : the names whose rows the last row pools (the validation seeds, not the design seed beside them);
        None: every row.

    Returns
    -------
    One row per seed build (``run``: its folder name) with :data:`LABELING_SEED_COLUMNS` (contour errors
    are means over kept frames, mm; ``share improved``: kept frames whose optimised contour beats the
    initial; missing values None), and, with two or more pooled seeds, a last row ``mean ± sd`` of their
    numeric columns (sd with ddof=1), named ``mean ± sd of <names>`` when it pools a subset.
    """
    rows = [{"run": n, **{c: lookup(m, ref) for c, ref in LABELING_SEED_COLUMNS.items()}}
            for m, n in zip(runs, names)]
    df = pd.DataFrame(rows, columns=["run", *LABELING_SEED_COLUMNS])
    keep = [n in pooled for n in names] if pooled is not None else [True] * len(rows)
    if sum(keep) >= 2:
        agg = {"run": "mean ± sd" if all(keep) else f"mean ± sd of {', '.join(n for n, k in zip(names, keep) if k)}"}
        for c in LABELING_SEED_COLUMNS:
            mean, sd, n = aggregate([float(v) for v, k in zip(df[c], keep) if k and is_number(v)])
            if sd is not None and sd <= 1e-9 * max(1.0, abs(mean)):
                sd = 0.0  # equal values: no floating-point noise in the table
            agg[c] = None if mean is None else (f"{mean:.3g} ± {sd:.2g}" if sd is not None else f"{mean:.3g}")
        df = pd.concat([df.astype(object), pd.DataFrame([agg])], ignore_index=True)
    return df
