"""Stage 07, the summary: this run's headline numbers beside the paper's, the validation seeds beside the design seed.

The stage contract (docs/architecture.md): :data:`Params` (:class:`SummaryParams`), :func:`run`, :data:`Result`
(:class:`SummaryResult`), :func:`metrics`, :func:`check` and :func:`figures`. :func:`run` loads every stage's
metrics of this run and of the validation seeds (the twin's measurements merged in where the notebook read them)
and builds the tables of notebook 07: the summary table (:func:`ultrabones.pipeline.validation.seeded_summary`
over the rows of :mod:`ultrabones.pipeline.headlines`), the labelling per seed, the criteria and the criteria
changed after a result was seen. :func:`check` and :func:`metrics` also read the figures folder (figures no
notebook recorded, gallery figures missing) as it is when they are called, after the stage's figures are saved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from ultrabones.core import paper
from ultrabones.core.params import NOTEBOOKS, SectionParams
from ultrabones.core.paths import FIGURES_DIR, Paths
from ultrabones.pipeline import headlines, results_doc, validation
from ultrabones.pipeline.headlines import SIMULATOR_SETTING, is_number
from ultrabones.pipeline.stage import MANIFEST

#: The profile section of this stage.
SECTION = "summary"


@dataclass(frozen=True)
class SummaryParams(SectionParams):
    """The ``summary`` section of a profile, typed and validated (``schema.SCHEMA["summary"]``).

    Build it with :meth:`~ultrabones.core.params.SectionParams.from_section`; construction, and so
    ``dataclasses.replace``, validates every value; lists become tuples. ``as_dict`` gives the section back as
    plain data (what the metrics' provenance records).

    require_all : fail when a required headline number is missing from the stages' metrics.
    gallery : figure names (without extension) shown in the gallery, in order.
    """

    SECTION: ClassVar[str] = SECTION

    require_all: bool
    gallery: tuple[str, ...]


Params = SummaryParams

#: The metrics the summary reads: every notebook's before this one, and the on-demand held-out oracle.
STEMS = (*list(NOTEBOOKS)[:-1], *headlines.MEASUREMENTS)


# ----------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class SummaryResult:
    """What stage 07 computed: the run's and the validation seeds' metrics and the tables of notebook 07.

    Attributes
    ----------
    params : the parameters of the run.
    design : this run's metrics (stem -> metrics, the twin's measurements merged in): the design seed.
    validation, validation_names : the validation seeds' metrics and names (``seed<N>``), possibly none.
    validation_where : where they were read (a seed builds' folder or the committed one; ``""`` for none).
    table : the summary table (:func:`ultrabones.pipeline.validation.seeded_summary`; :attr:`shown` for reading).
    per_seed : notebook 02's choice against the oracle, seed by seed (:func:`headlines.labeling_seed_table`).
    criteria : the criteria and why each was chosen (:func:`headlines.criteria_table`).
    history : the criteria changed after a result was seen (:func:`ultrabones.pipeline.results_doc.history_table`).
    missing_rows : sources of the required rows that no run gave a number for.
    title : the title of the comparison figure.
    figures_dir : the run's figures folder (read by :func:`check` and :func:`metrics`).
    is_project : the figures folder is the project's ``figures/`` (the default profile: committed files).
    """

    params: SummaryParams
    design: dict
    validation: list
    validation_names: list
    validation_where: str
    table: pd.DataFrame
    per_seed: pd.DataFrame
    criteria: pd.DataFrame
    history: pd.DataFrame
    missing_rows: list
    title: str
    figures_dir: Path
    is_project: bool

    @property
    def shown(self) -> pd.DataFrame:
        """The summary table for reading (:func:`ultrabones.pipeline.validation.format_seeded`)."""
        return validation.format_seeded(self.table)


Result = SummaryResult


def run(paths: Paths, params: SummaryParams, *, specimens: Sequence[str] | None = None,
        measured: Mapping[str, Mapping[str, dict]] | None = None, seed: int = 0, profile: str = "default",
        ) -> SummaryResult:
    """Load the stages' metrics of this run and of the validation seeds, and build notebook 07's tables.

    Parameters
    ----------
    paths : the run's paths (its build folder; the profile's seed builds lie beside it).
    params : the stage's parameters.
    specimens : not used: the summary reads every stage's metrics, whatever specimens they covered.
    measured : build folder name -> stem -> the twin's measurements against the truth (read by the twin's code,
        :func:`ultrabones.twin.measure.measured_builds`), merged into the builds' metrics; None off the twin.
    seed : the run's master seed (the design seed's name in the tables).
    profile : the profile's name (the comparison figure's title).

    Returns
    -------
    :class:`SummaryResult`. The validation seeds are read from their seed builds (``build/<profile>-seed<N>/``)
    where they exist, else, for the project's figures folder (the default profile), from the committed
    ``figures/validation/``.
    """
    measured = measured or {}
    design = headlines.load_all(paths, STEMS, measured.get(paths.build_dir.name))
    is_project = paths.figures_dir.resolve() == FIGURES_DIR.resolve()  # the default profile: committed figures
    committed = FIGURES_DIR / results_doc.VALIDATION if is_project else None
    runs, names, where = validation.validation_runs(paths.build_dir, committed, STEMS, measured)
    table = validation.seeded_summary(design, f"seed {seed}", runs, names)
    return SummaryResult(
        params=params, design=design, validation=runs, validation_names=names, validation_where=where,
        table=table,
        per_seed=headlines.labeling_seed_table([design, *runs], [f"seed{seed} (design)", *names], pooled=names),
        criteria=headlines.criteria_table(), history=results_doc.history_table(design, runs),
        missing_rows=headlines.missing_rows(table),
        title=f"profile {profile}: green criterion met, red not met, grey no criterion",
        figures_dir=paths.figures_dir, is_project=is_project)


def metrics(result: SummaryResult) -> dict:
    """Notebook 07's metrics (:func:`summary_metrics` of the table; orphan figures read now)."""
    return summary_metrics(result.table, result.missing_rows, orphan_figures(result.figures_dir))


def check(result: SummaryResult) -> None:
    """What notebook 07 asserts, once the stage's figures are saved: every required headline number is present and
    every gallery figure exists (with ``require_all``), and every file in the figures folder was recorded by the
    notebook that made it.

    Raises
    ------
    AssertionError
        Naming what is missing or unrecorded.
    """
    if result.params.require_all:
        if result.missing_rows:
            raise AssertionError(f"headline numbers missing from the metrics: {result.missing_rows}")
        missing = missing_gallery(result.figures_dir, result.params.gallery)
        if missing:
            raise AssertionError(f"gallery figures not produced: {missing}")
    orphans = orphan_figures(result.figures_dir)
    if orphans:
        raise AssertionError(f"figures no notebook recorded: {orphans}")


def figures(result: SummaryResult) -> dict:
    """``summary_comparison``: this run relative to the paper (:func:`plot_comparison`)."""
    return {"summary_comparison": plot_comparison(result.table, result.title)}


# ----------------------------------------------------------------------------- metrics, figures, the figures folder


def summary_metrics(table: pd.DataFrame, missing: Sequence[str], orphans: Sequence[str]) -> dict:
    """Notebook 07's metrics: counts of criteria met and not met, and every row keyed by its id."""
    counts = table["criterion met"].value_counts().to_dict()

    def clean(v):
        return None if v is None or (isinstance(v, float) and v != v) else v

    return {
        "n_rows": int(len(table)),
        "n_met": int(counts.get("yes", 0)),
        "n_not_met": int(counts.get("no", 0)),
        "n_judged": int(counts.get("yes", 0) + counts.get("no", 0)),
        "n_missing": len(missing),
        "n_seeds": int(table["n_seeds"].max()) if len(table) else 0,
        "orphan_figures": list(orphans),
        "rows": {r["id"]: {"quantity": r["quantity"], "published": clean(r["published"]), "value": clean(r["value"]),
                           "sd": clean(r["sd"]), "n_seeds": int(r["n_seeds"]), "how": r["how obtained"],
                           "criterion": r["criterion"], "basis": r["basis"], "met": r["criterion met"],
                           "source": r["source"]}
                 for r in table.to_dict("records")},
    }


def plot_comparison(table: pd.DataFrame, title: str = ""):
    """Each row with a published number as this run's value over the published one (1 = identical).

    Green: criterion met, red: not met, grey: no criterion (reported only, or a simulator setting, drawn as
    an open marker). The grey band is a ``within`` criterion's tolerance relative to the published value.
    """
    import matplotlib.pyplot as plt

    comp = table[table["published"].map(is_number) & table["value"].map(is_number)].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * max(len(comp), 1) + 1.2))
    y = np.arange(len(comp))
    pub = comp["published"].astype(float).to_numpy()
    ratio = comp["value"].astype(float).to_numpy() / pub
    for i, rid in enumerate(comp["id"]):
        c = paper.CRITERIA[rid]
        if c.rule == "within":
            ax.barh(i, 2 * c.bound / pub[i], left=1 - c.bound / pub[i], color="0.9", height=0.8)
    color = comp["criterion met"].map({"yes": "tab:green", "no": "tab:red"}).fillna("0.5")
    setting = (comp["how obtained"] == SIMULATOR_SETTING).to_numpy()
    ax.scatter(ratio[~setting], y[~setting], c=list(color[~setting]), zorder=3)
    ax.scatter(ratio[setting], y[setting], facecolors="none", edgecolors="0.4", zorder=3, label=SIMULATOR_SETTING)
    ax.axvline(1, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(y, comp["quantity"], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("this run / published (log)")
    ax.set_title(title or "green: criterion met, red: not met, grey: no criterion", fontsize=9)
    if setting.any():
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def gallery(figures_dir: Path, names: Sequence[str], cols: int = 2):
    """The gallery figures that exist, side by side, and the names of those that do not.

    Parameters
    ----------
    figures_dir : the folder of ``<name>.png``.
    names : figure names without extension.

    Returns
    -------
    ``(fig, missing)``: a matplotlib figure (None when no figure exists) and the sorted missing names.
    """
    import matplotlib.pyplot as plt

    figures_dir = Path(figures_dir)
    missing = missing_gallery(figures_dir, names)
    available = [n for n in names if n not in missing]
    if not available:
        return None, missing
    rows = int(np.ceil(len(available) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(12, 5 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), available):
        ax.imshow(Image.open(figures_dir / f"{name}.png"))
        ax.set_title(name)
    for ax in axes.ravel():
        ax.axis("off")
    return fig, missing


def missing_gallery(figures_dir: Path, names: Sequence[str]) -> list[str]:
    """The sorted names of the gallery figures (``<name>.png``) that are not in the figures folder."""
    return sorted({n for n in names if not (Path(figures_dir) / f"{n}.png").is_file()})


def orphan_figures(figures_dir: Path) -> list[str]:
    """Files in the figures folder that no notebook recorded in the manifest."""
    figures_dir = Path(figures_dir)
    manifest_path = figures_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    return sorted(
        f.name for f in figures_dir.iterdir()
        if f.is_file() and f.name not in manifest and f.name != MANIFEST and not f.name.startswith(".")
    )
