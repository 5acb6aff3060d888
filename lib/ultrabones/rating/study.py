"""Clinical rating study (Section 3.1 "Clinical Evaluation", Section 4, Figs. 5 and 7): the stage of notebook 03.

The paper had an orthopaedic sonographer rate one frame per sweep (119 frames),
each shown with the bone label of three alignments (initial tracking, global
CT-US registration, per-frame optimisation) in random order, on a 0-3 rubric
against a 1/2/3 mm scale bar, and compared the methods with a two-sided
Wilcoxon signed-rank test, Bonferroni-corrected over the three pairs.

- **Rating set** (:mod:`ultrabones.rating.rating_set`): the frames drawn, the items
  rendered, shuffled under anonymous ids into a self-contained rating page (the paper's
  rating software, Fig. 5) and the key (id -> frame and method) as a separate file.
  :func:`build_rating_set` does all of it for a dataset.
- **Rater model** (digital twin only, called "rater model: rubric on the true label error" in tables and figures;
  :mod:`ultrabones.twin.rater`): :func:`~ultrabones.core.label_distances.directed_distances` measures each item's
  label against the twin's true label, a rubric is applied to the error profile along the contour and a
  documented perceptual noise is added.
- **Statistics** (:mod:`ultrabones.rating.rating_stats`): a ratings table (from the page
  or the rater model) validated against the key, per-method n, mean, median and
  distribution, the three paired tests with Bonferroni adjustment and effect size
  ``r = Z / sqrt(n)``; :func:`plot_rating_distribution` draws Fig. 7.
- **The stage** (notebook 03), the stage contract (docs/architecture.md): :data:`Params`
  (:class:`RatingParams`, the ``rating`` section, typed and frozen); :func:`run` builds the set
  (:func:`build_rating_set`) and analyses a person's ratings when given (:func:`analyse`, whose
  :class:`RatingResult` is what one rater's ratings show); on the twin the rater model's ratings come after it,
  through :func:`with_ratings`. :data:`Result` (:class:`StudyResult`) holds the set, the ratings, where they came
  from and their analysis; :func:`metrics`, :func:`check` and :func:`figures` (:func:`plot_items`, Fig. 5, and
  :func:`plot_rating_distribution`, Fig. 7) take it.

Ratings are integers 0-3; distances are in millimetres.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Mapping, Sequence

import numpy as np
import pandas as pd

from ultrabones.core import dataset as ds
from ultrabones.core import paper as _paper
from ultrabones.core.errors import DatasetError
from ultrabones.core.merge import read_metrics
from ultrabones.core.params import SectionParams
from ultrabones.core.paths import Paths
from ultrabones.labels import cloud, inputs, label
from ultrabones.rating.rating_set import (
    METHODS,
    PAGE_FILE,
    RATINGS,
    assemble_rating_set,
    eligible_timestamps,
    encode_item,
    make_key,
    read_key,
    render_item,
    sample_frames,
    set_id_of,
)
from ultrabones.rating.rating_stats import METRIC_NAMES, method_summary, paired, read_ratings, wilcoxon_pairs

#: How figures and tables name the three alignments (:data:`~ultrabones.rating.rating_set.METHODS`).
METHOD_LABELS = {"initial": "initial", "registered": "global registration", "optimized": "optimised"}
#: The paper's results (Section 4): mean rating per method and the Bonferroni-adjusted bound
#: (read from :mod:`ultrabones.core.paper`, the one place that holds them).
PAPER = _paper.rating_study()
#: Name of the rater model in metrics and in the ``rater`` column of a ratings table.
SIMULATED_RATER = "simulated"
#: How tables and figures name the rater model (it restates the label error measured against the truth).
RATER_MODEL_LABEL = "rater model: rubric on the true label error"
PROFILES_FILE = "error_profiles.csv"
SIMULATED_FILE = "ratings_simulated.csv"
#: The profile section of this stage.
SECTION = "rating"
#: The figures of :func:`figures` that are the paper's: saved as PDF too.
PDF_FIGURES = ("fig7_rating_distribution",)


@dataclass(frozen=True)
class RatingParams(SectionParams):
    """The ``rating`` section of a profile, typed and validated (units and ranges: ``schema.SCHEMA["rating"]``).

    Build it with :meth:`~ultrabones.core.params.SectionParams.from_section`. Construction, and so
    ``dataclasses.replace``, validates every value; ``as_dict`` gives the section back as plain data. The
    rater model's keys (``rubric_*``, ``rater_*``) are the ``twin`` section's, not this one's.
    """

    SECTION: ClassVar[str] = SECTION

    frames_per_sweep: int
    image_format: str
    jpeg_quality: int
    overlay_alpha: float
    zero_method: str
    wilcoxon_method: str
    alpha: float
    ratings_csv: str | None
    ratings_key: str | None


#: The stage's parameters (the stage contract's name).
Params = RatingParams


@dataclass(frozen=True)
class RatingResult:
    """What :func:`analyse` found in one rater's ratings.

    rater : the rater's name (the ``rater`` column).
    summary : :func:`~ultrabones.rating.rating_stats.method_summary`, indexed by method.
    tests : :func:`~ultrabones.rating.rating_stats.wilcoxon_pairs`, one row per pair.
    n_frames : frames with at least one rating.
    n_complete : frames rated under all three methods.
    """

    rater: str
    summary: pd.DataFrame
    tests: pd.DataFrame
    n_frames: int
    n_complete: int


@dataclass(frozen=True)
class StudyResult:
    """What notebook 03's stage made (:func:`run`, then :func:`with_ratings` for the rater model's ratings).

    params : the ``rating`` section it ran with.
    built : :func:`build_rating_set`'s dict (``key``, ``set_id``, ``labels``, ``examples``, ``spacing``).
    page : the rating page (``paths.rating_dir / rating_page.html``).
    ratings : the validated table of one rater's ratings (:func:`~ultrabones.rating.rating_stats.read_ratings`),
        None while nobody has rated the set.
    source : where the ratings came from: a CSV's path, or the rater model's name; None without ratings.
    analysis : :func:`analyse` of the ratings (:class:`RatingResult`), None without ratings.
    seconds : wall time of the stage's work (the set built, the ratings read and analysed).
    """

    params: RatingParams
    built: dict
    page: Path
    ratings: pd.DataFrame | None = None
    source: str | None = None
    analysis: RatingResult | None = None
    seconds: float | None = None

    @property
    def key(self) -> pd.DataFrame:
        """The set's key (item id -> frame and method)."""
        return self.built["key"]


#: What :func:`run` returns (the stage contract's name).
Result = StudyResult


# ----------------------------------------------------------------------------- building a set from a dataset


def build_rating_set(
    dataset_root: Path | str,
    specimens: Sequence[str] | None,
    out_dir: Path | str,
    params: RatingParams,
    seed: int,
    label_fn_for: Callable,
    progress: bool = True,
    derived: Path | str | None = None,
) -> dict:
    """Sample frames, render the three alignments of each, write the rating set.

    Parameters
    ----------
    dataset_root : the dataset (layout A or B) after notebook 02.
    specimens : folder names, or None for all.
    out_dir : the set's folder (``paths.rating_dir``).
    params : the ``rating`` section (:class:`RatingParams`).
    seed : master seed.
    label_fn_for : ``label_fn_for(specimen, calib, spacing) -> f(image_shape, pose)``
        returning the (H, W) bool label of one alignment (:func:`labeling_label_fn`
        by default in the notebook); ``specimen`` is a :class:`~ultrabones.core.dataset.Specimen`,
        ``calib`` (4, 4) the image plane in the probe-marker frame, ``spacing`` (sx, sy) mm/px.
    progress : show a progress bar.
    derived : the derived dataset notebook 02 wrote (optimised and registered poses,
        labels; ``Paths.derived``); None: they are beside the inputs.

    Returns
    -------
    ``key`` (DataFrame), ``set_id``, ``labels`` (per key row, the (H, W) bool label drawn on the item: what
    the twin measures against its truth, in a cell of its own, :func:`ultrabones.twin.rater.label_errors`),
    ``examples`` (the first frame's three items with image and label) and ``spacing`` (sx, sy) mm/px. This
    function reads nothing but the dataset.
    """
    from tqdm import tqdm

    found = ds.discover(dataset_root, list(specimens) if specimens else None, derived)
    candidates, records = {}, {}
    for spec in found:
        for rec in spec.records:
            df = ds.read_tracking(rec.poses_csv, allow_missing_pose=True)  # bad_pose frames are not eligible
            labelled = rec.labelled_timestamps(ds.LABELS_FULL)
            ts = eligible_timestamps(df, labelled if labelled.size else None)
            ts = ts[np.isin(ts, rec.timestamps())]
            candidates[(spec.name, rec.key.split("/", 1)[1])] = ts
            records[(spec.name, rec.key.split("/", 1)[1])] = (rec, df)
    calib, spacing, _ = ds.read_calibration(dataset_root)
    frames = sample_frames(candidates, params.frames_per_sweep, seed)
    if frames.empty:
        raise DatasetError(f"{dataset_root}: no frame has all three alignments (initial, registered, optimized)")
    key = make_key(frames, seed)
    items, labels, examples = [], {}, []
    fns, by_name = {}, {s.name: s for s in found}
    for row in tqdm(frames.itertuples(index=False), total=len(frames), desc="rating items", disable=not progress):
        rec, df = records[(row.specimen, row.record)]
        if row.specimen not in fns:
            fns[row.specimen] = label_fn_for(by_name[row.specimen], calib, spacing)
        image = rec.read_image(row.timestamp)
        i = int(np.flatnonzero(df["timestamp"].to_numpy() == row.timestamp)[0])
        for method in METHODS:
            pose = ds.poses(df.iloc[[i]], method)[0]
            label = fns[row.specimen](image.shape, pose)
            rgb = render_item(image, label, spacing, params.overlay_alpha)
            item = {"specimen": row.specimen, "record": row.record, "timestamp": row.timestamp, "method": method}
            # Encoded at once: a few hundred kB per item instead of the raw RGB's megabytes.
            items.append(dict(item, uri=encode_item(rgb, params.image_format, params.jpeg_quality)))
            if len(examples) < len(METHODS):
                examples.append(dict(item, rgb=rgb, image=image, label=label))
            labels[(row.specimen, row.record, row.timestamp, method)] = label
    sid = assemble_rating_set(items, key, out_dir, params.image_format, params.jpeg_quality)
    return {"key": key, "set_id": sid, "examples": examples, "spacing": spacing,
            "labels": [labels[(r.specimen, r.record, int(r.timestamp), r.method)] for r in key.itertuples()]}


# ----------------------------------------------------------------------------- analysis, figures and metrics


def paper_comparison(summary: pd.DataFrame, tests: pd.DataFrame, rater: str) -> pd.DataFrame:
    """The paper's figures beside ours: mean rating per method and Bonferroni p per pair."""
    who = RATER_MODEL_LABEL if rater == SIMULATED_RATER else rater
    rows = []
    for m in METHODS:
        rows.append({"quantity": f"mean rating, {METHOD_LABELS[m]}", "paper": PAPER["mean_rating"][m],
                     "ours": summary.loc[m, "mean"], "ours_n": int(summary.loc[m, "n"]), "rater": who})
    for t in tests.itertuples():
        rows.append({"quantity": f"Bonferroni p, {METHOD_LABELS[t.first]} vs {METHOD_LABELS[t.second]}",
                     "paper": "< 0.001" if "optimized" in (t.first, t.second) else "not reported",
                     "ours": t.p_value_bonferroni, "ours_n": int(t.n), "rater": who})
    return pd.DataFrame(rows)


def plot_rating_distribution(summary: pd.DataFrame, rater: str, paper: bool = True):
    """Fig. 7: the distribution of ratings (0-3) per method, and the mean per method beside the paper's.

    Parameters
    ----------
    summary : :func:`~ultrabones.rating.rating_stats.method_summary`'s table.
    rater : ``"simulated"`` (labelled :data:`RATER_MODEL_LABEL`) or the rater's name.
    paper : mark the paper's mean ratings in the right panel.

    Returns
    -------
    The matplotlib figure (two axes: distribution, means).
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9.0, 3.8), gridspec_kw={"width_ratios": [2.2, 1]})
    colors = {"initial": "#d62728", "registered": "#7f7f7f", "optimized": "#2ca02c"}
    names = {m: f"{METHOD_LABELS[m]} (n={int(summary.loc[m, 'n'])})" for m in METHODS}
    shares = pd.DataFrame([{"rating": str(k), "share": float(summary.loc[m, f"share_{k}"]), "method": names[m]}
                           for m in METHODS for k in RATINGS])
    sns.barplot(data=shares, x="rating", y="share", hue="method", order=[str(k) for k in RATINGS],
                hue_order=[names[m] for m in METHODS], palette=[colors[m] for m in METHODS], width=0.8,
                saturation=1.0, errorbar=None, legend=False, ax=ax)
    for bars, m in zip(ax.containers, METHODS):
        bars.set_label(names[m])
    ax.set_xlabel("rating (0: errors > 3 mm ... 3: no visible error)")
    ax.set_ylabel("share of frames")
    ax.set_ylim(0, 1.0)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    who = f"{RATER_MODEL_LABEL} (digital twin)" if rater == SIMULATED_RATER else f"rater: {rater}"
    ax.set_title(f"Rating distribution per alignment - {who}", fontsize=9)
    xm = np.arange(len(METHODS))
    means = [summary.loc[m, "mean"] for m in METHODS]
    sns.barplot(x=list(METHODS), y=means, hue=list(METHODS), order=list(METHODS), hue_order=list(METHODS),
                palette=[colors[m] for m in METHODS], width=0.6, saturation=1.0, errorbar=None, legend=False,
                ax=bx)
    bx.patches[0].set_label("ours")
    if paper:
        bx.plot(xm, [PAPER["mean_rating"][m] for m in METHODS], "k_", markersize=22, mew=2, label="paper")
        bx.legend(fontsize=8, loc="upper left")
    for xi, v in zip(xm, means):
        bx.text(xi, v + 0.05, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    bx.set_xticks(xm, [METHOD_LABELS[m].replace(" ", "\n") for m in METHODS], fontsize=8)
    bx.set_ylim(0, 3.2)
    bx.set_ylabel("mean rating")
    bx.set_title("Mean rating", fontsize=9)
    fig.tight_layout()
    return fig


def analyse(ratings: pd.DataFrame, zero_method: str = "wilcox", method: str = "auto") -> RatingResult:
    """The study's statistics from one rater's validated ratings.

    Parameters
    ----------
    ratings : :func:`~ultrabones.rating.rating_stats.read_ratings`'s table (one rater).
    zero_method, method : see :func:`~ultrabones.rating.rating_stats.wilcoxon_pairs`.

    Returns
    -------
    :class:`RatingResult`: ``summary`` (:func:`~ultrabones.rating.rating_stats.method_summary`),
    ``tests`` (:func:`~ultrabones.rating.rating_stats.wilcoxon_pairs`), ``n_frames`` (frames with at least one
    rating), ``n_complete`` (frames rated under all three methods) and ``rater``.

    Raises
    ------
    DatasetError
        If the table holds several raters: the paired tests assume one rating
        per frame and method, so analyse one rater's file at a time.
    """
    raters = sorted(set(ratings["rater"]))
    if len(raters) != 1:
        raise DatasetError(f"ratings of {len(raters)} raters ({', '.join(raters)}): analyse one rater at a time")
    wide = paired(ratings)
    return RatingResult(rater=raters[0], summary=method_summary(ratings),
                        tests=wilcoxon_pairs(wide, zero_method, method), n_frames=int(len(wide)),
                        n_complete=int(wide.notna().all(axis=1).sum()))


def analysis_metrics(result: RatingResult) -> dict:
    """The metrics JSON entries of :func:`analyse`'s result (keys as in the issue; :func:`metrics` adds the set's).

    Methods are keyed by :data:`~ultrabones.rating.rating_stats.METRIC_NAMES` (``initial``, ``registration``,
    ``optimized``) and pairs as ``"<a>_vs_<b>"`` (e.g. ``optimized_vs_initial``).
    """
    s, t = result.summary, result.tests.set_index("pair")
    name = METRIC_NAMES
    return {
        "rater": result.rater,
        "n_frames": result.n_frames,
        "n_frames_all_methods": result.n_complete,
        "n_ratings": {name[m]: int(s.loc[m, "n"]) for m in METHODS},
        "mean_rating": {name[m]: float(s.loc[m, "mean"]) for m in METHODS},
        "median_rating": {name[m]: float(s.loc[m, "median"]) for m in METHODS},
        "rating_counts": {name[m]: {str(k): int(s.loc[m, f"n_{k}"]) for k in RATINGS} for m in METHODS},
        "wilcoxon_statistic": {p: float(t.loc[p, "statistic"]) for p in t.index},
        "z": {p: float(t.loc[p, "z"]) for p in t.index},
        "n_pairs": {p: int(t.loc[p, "n"]) for p in t.index},
        "p_method": {p: str(t.loc[p, "p_method"]) for p in t.index},
        "p_value_raw": {p: float(t.loc[p, "p_value_raw"]) for p in t.index},
        "p_value_bonferroni": {p: float(t.loc[p, "p_value_bonferroni"]) for p in t.index},
        "effect_size_r": {p: float(t.loc[p, "effect_size_r"]) for p in t.index},
        "paper": {"n_frames": PAPER["n_frames"], "mean_rating": {name[m]: v for m, v in PAPER["mean_rating"].items()},
                  "p_value_bonferroni_bound": PAPER["p_value_bonferroni_bound"]},
    }


def labeling_label_fn(density_per_mm2: float, gamma_mm: float, seed: int,
                      points_for: Callable | None = None) -> Callable:
    """``label_fn_for`` of :func:`build_rating_set` drawing the labeling module's full label.

    Per specimen: ``C`` sampled on ``CT_bone_model.stl`` (``density_per_mm2``
    points per mm^2, ``seed``; or ``points_for(specimen)``, e.g. notebook 02's
    cached cloud), then ``labels.label.full_label(shape, pose, calib, spacing, C,
    gamma_mm)`` for each alignment's pose.
    """
    def for_specimen(specimen, calib, spacing):
        if points_for is not None:
            points = points_for(specimen)
        else:
            points, _ = cloud.surface_points(ds.read_mesh(specimen.ct_model), density_per_mm2, seed)
        return lambda shape, pose: label.full_label(shape, pose, calib, spacing, points, gamma_mm)

    return for_specimen


# ----------------------------------------------------------------------------- the stage, as notebook 03 calls it


def label_fn_of_labeling(paths, drawn: Mapping) -> Callable:
    """``label_fn_for`` drawing labels exactly as notebook 02 drew its ``Labels_full`` (its recorded ``settings``:
    gamma, cloud density and seed), with ``C`` from 02's cache when there."""
    def points_of(spec):
        return cloud.load_cloud(inputs.surface_cloud(paths, spec, drawn["label_density_per_mm2"],
                                                     drawn["label_cloud_seed"]))[0]

    return labeling_label_fn(drawn["label_density_per_mm2"], drawn["gamma_mm"], drawn["label_cloud_seed"],
                             points_for=points_of)


def plot_items(examples: Sequence[Mapping], outlines: Sequence[np.ndarray] | None = None):
    """The three items of one frame as the rater sees them (Fig. 5).

    ``outlines``, when given, one (H, W) bool mask per example, are drawn as magenta contours for the reader
    (on the twin, the true label, which the twin's cell reads: ``ultrabones.twin.rater.true_outlines``;
    never in the rating page).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(examples), figsize=(4.2 * len(examples), 3.8), squeeze=False)
    for i, (ax, it) in enumerate(zip(axes[0], examples)):
        ax.imshow(it["rgb"])
        if outlines is not None:
            ax.contour(outlines[i], levels=[0.5], colors="magenta", linewidths=0.6)
        ax.set_title(f"{METHOD_LABELS[it['method']]}\n{it['specimen']}/{it['record']} t={it['timestamp']} ms",
                     fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def check_analysis(result: RatingResult) -> None:
    """What must hold for any rater's ratings: frames rated, Bonferroni factor three, p-values in [0, 1]."""
    tests = result.tests
    assert result.n_frames >= 1, f"no frame rated by {result.rater}"
    cols = ["pair", "p_value_raw", "p_value_bonferroni"]
    assert np.allclose(tests["p_value_bonferroni"], np.minimum(1.0, 3 * tests["p_value_raw"])), \
        f"the Bonferroni p-values are not min(1, 3 p) over the three pairs:\n{tests[cols].to_string()}"
    assert ((tests["p_value_raw"] >= 0) & (tests["p_value_raw"] <= 1)).all(), \
        f"p-values outside [0, 1]:\n{tests[cols].to_string()}"


def ratings_of_another_set(ratings_csv: Path | str | None, ratings_key: Path | str | None) -> pd.DataFrame | None:
    """Ratings given for another run's set (both a CSV and that set's ``key.csv``), validated before any work;
    None unless both are given."""
    if ratings_csv is None or ratings_key is None:
        return None
    rated_key = read_key(Path(ratings_key))
    return read_ratings(Path(ratings_csv), rated_key, set_id_of(rated_key))


# ----------------------------------------------------------------------------- the stage contract


def labeling_settings(paths: Paths) -> dict:
    """The settings with which notebook 02 drew its labels (its metrics' ``settings``), to draw them again."""
    return read_metrics(paths, "02_labeling")["settings"]


def run(paths: Paths, params: RatingParams, *, specimens: Sequence[str] | None = None, seed: int = 0,
        labeling: Mapping | None = None, progress: bool = True) -> StudyResult:
    """Build the rating set of a dataset labelled by notebook 02, and analyse a person's ratings when given.

    Parameters
    ----------
    paths : the run's paths (dataset, derived dataset, ``rating_dir``); nothing here reads the twin's truth.
    params : the stage's parameters (:meth:`RatingParams.from_section`). ``ratings_csv`` (a person's export of
        the page) is analysed; with ``ratings_key`` it is another run's set's, validated before any work.
    specimens : specimen folders (None: all).
    seed : master seed.
    labeling : notebook 02's label settings (None: read from its metrics, :func:`labeling_settings`).
    progress : show a progress bar.

    Returns
    -------
    :class:`StudyResult`; without a ratings file its ``ratings`` and ``analysis`` are None (on the twin the rater
    model rates the set afterwards, :func:`with_ratings`; on real data the page waits for a person).
    """
    t0 = time.perf_counter()
    given = ratings_of_another_set(params.ratings_csv, params.ratings_key)  # a bad file stops here, before work
    drawn = labeling_settings(paths) if labeling is None else labeling
    built = build_rating_set(paths.dataset, specimens, paths.rating_dir, params, seed,
                             label_fn_of_labeling(paths, drawn), progress=progress, derived=paths.derived)
    if given is None and params.ratings_csv is not None:
        given = read_ratings(Path(params.ratings_csv), built["key"], built["set_id"])
    result = StudyResult(params=params, built=built, page=paths.rating_dir / PAGE_FILE,
                         seconds=time.perf_counter() - t0)
    return result if given is None else with_ratings(result, given, str(params.ratings_csv))


def with_ratings(result: StudyResult, ratings: pd.DataFrame, source: str) -> StudyResult:
    """``result`` with one rater's validated ratings (a person's, or the rater model's) and their analysis
    (:func:`analyse` with the stage's ``zero_method`` and ``wilcoxon_method``); ``source`` says where they came
    from (a CSV's path, or the rater model's name). The analysis's time is added to ``seconds``."""
    t0 = time.perf_counter()
    analysis = analyse(ratings, result.params.zero_method, result.params.wilcoxon_method)
    return dataclasses.replace(result, ratings=ratings, source=source, analysis=analysis,
                               seconds=(result.seconds or 0.0) + time.perf_counter() - t0)


def metrics(result: StudyResult) -> dict:
    """Notebook 03's metrics: the set, and the statistics of its ratings when there are any.

    ``ratings_source`` says where the ratings came from (a CSV's path, or the rater model's name); with no
    ratings yet (real data, nobody has rated the page) the metrics say so (``awaiting_ratings``).
    """
    params, key = result.params, result.key
    n_set_frames = len(key) // len(METHODS)
    m = {"n_items": int(len(key)), "set_id": result.built["set_id"], "n_set_frames": int(n_set_frames),
         "rating_page": str(result.page), "zero_method": params.zero_method,
         "wilcoxon_method": params.wilcoxon_method, "alpha": params.alpha, "seconds": result.seconds}
    if result.analysis is None:
        return {**m, "rater": None, "awaiting_ratings": True, "n_frames": int(n_set_frames)}
    tests = result.analysis.tests
    return {**m, **analysis_metrics(result.analysis), "ratings_source": result.source,
            "significant_bonferroni": dict(zip(tests["pair"], (tests["p_value_bonferroni"] < params.alpha).tolist()))}


def check(result: StudyResult) -> None:
    """What must hold for any run: three items per frame of the set and, with ratings, :func:`check_analysis`.
    Whether the rater model rewards smaller measured errors is the twin's check
    (:func:`ultrabones.twin.rater.check_coherence`)."""
    n = len(result.key)
    assert n >= len(METHODS) and n % len(METHODS) == 0, \
        f"the rating set has {n} items, not {len(METHODS)} per frame ({result.page})"
    if result.analysis is not None:
        check_analysis(result.analysis)


def figures(result: StudyResult, *, outlines: Sequence[np.ndarray] | None = None) -> dict:
    """Notebook 03's figures: ``fig5_rating_items`` (:func:`plot_items`, the first frame's three items, with
    ``outlines`` drawn over them when given: on the twin the true labels, never in the page) and, with ratings,
    ``fig7_rating_distribution`` (:func:`plot_rating_distribution`). :data:`PDF_FIGURES` are the paper's."""
    out = {"fig5_rating_items": plot_items(result.built["examples"], outlines)}
    if result.analysis is not None:
        out["fig7_rating_distribution"] = plot_rating_distribution(result.analysis.summary, result.analysis.rater)
    return out
