"""The rater model (the simulated rater): a rubric applied to each drawn label's distance to the twin's true label.

This is a *rater model*, not a person: its ratings restate the label error measured against the truth
(the twin's ``Labels_full``), read through the paper's 0-3 rubric with a per-item misjudgement of the
error's size and an occasional one-step slip. Tables and figures call it "rater model: rubric on the true
label error". A person rates the same set with the rating page (:mod:`ultrabones.rating.study`) and feeds
the exported CSV back through ``rating.ratings_csv``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ultrabones.core import atomic, dataset
from ultrabones.core.errors import ParamsError
from ultrabones.core.paths import Paths
from ultrabones.core.label_distances import directed_distances
from ultrabones.rating import rating_set, rating_stats, study
from ultrabones.rating.rating_set import stable_int
from ultrabones.rating import study
from ultrabones.rating.rating_stats import METRIC_NAMES
from ultrabones.rating.study import PROFILES_FILE, RatingResult, StudyResult, with_ratings
from ultrabones.twin.layout import truth_dir
from ultrabones.twin.params import TwinParams

#: The ``ratings_source`` of the rater model's ratings (a person's is their CSV's path).
MODEL_SOURCE = "simulated rater"


@dataclass(frozen=True)
class Rubric:
    """The rubric as thresholds on a label's error profile along the contour.

    A rater sees errors over 3 mm on a share ``s3`` of the contour, over 1 mm on
    ``s1`` and over ``visible_mm`` on ``sv`` (``s3 <= s1 <= sv``) and rates

    - 0 if ``s3 >= large_share`` ("large sections with errors over 3 mm"),
    - else 1 if ``s1 >= some_share`` ("some sections with errors of 1-3 mm"),
    - else 2 if ``sv >= minor_share`` ("only minor errors below 1 mm"),
    - else 3 ("no visible error").

    An item without a label (the alignment put the bone outside the image) is
    rated 0. The shares and ``visible_mm`` are this project's reading of the
    paper's words, not the paper's numbers.

    Attributes
    ----------
    large_share, some_share, minor_share : shares of the contour's pixels (0-1).
    visible_mm : the smallest error a rater notices at full resolution (mm).
    """

    large_share: float = 0.25
    some_share: float = 0.10
    visible_mm: float = 0.3
    minor_share: float = 0.10

    @classmethod
    def of(cls, params: TwinParams) -> "Rubric":
        """The rubric of the ``twin`` section's ``rubric_*`` fields."""
        params.need("rubric_large_share", "rubric_some_share", "rubric_visible_mm", "rubric_minor_share")
        return cls(params.rubric_large_share, params.rubric_some_share, params.rubric_visible_mm,
                   params.rubric_minor_share)

    def __post_init__(self):
        for name in ("large_share", "some_share", "minor_share"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ParamsError(f"twin.rubric_{name}: {v} must be in (0, 1]")
        if not 0.0 < self.visible_mm < 1.0:
            raise ParamsError(f"twin.rubric_visible_mm: {self.visible_mm} must be in (0, 1) mm")


def contour_shares(distances: np.ndarray, visible_mm: float) -> dict[str, float]:
    """The error profile of one label: shares of its pixels by error (mm).

    Returns
    -------
    ``over_3mm``, ``1_to_3mm``, ``under_1mm`` (the issue's three bins, summing to
    1) and ``over_visible`` (share over ``visible_mm``), plus ``n_pixels``. An
    empty label gives NaN shares.
    """
    d = np.asarray(distances, dtype=float)
    if d.size == 0:
        return {"n_pixels": 0, "over_3mm": np.nan, "1_to_3mm": np.nan, "under_1mm": np.nan, "over_visible": np.nan}
    over3 = float(np.mean(d > 3.0))
    over1 = float(np.mean(d > 1.0))
    return {
        "n_pixels": int(d.size),
        "over_3mm": over3,
        "1_to_3mm": over1 - over3,
        "under_1mm": 1.0 - over1,
        "over_visible": float(np.mean(d > visible_mm)),
    }


def rubric_rating(over_3mm, over_1mm, over_visible, rubric: Rubric) -> np.ndarray:
    """Apply the rubric to error shares (vectorised).

    Parameters
    ----------
    over_3mm, over_1mm, over_visible : shares (0-1) of a label's pixels with an
        error over 3 mm, over 1 mm and over ``rubric.visible_mm``; NaN for an
        empty label (rated 0).
    rubric : the thresholds.

    Returns
    -------
    int array of ratings 0-3.
    """
    s3, s1, sv = (np.asarray(v, dtype=float) for v in (over_3mm, over_1mm, over_visible))
    rating = np.full(np.broadcast(s3, s1, sv).shape, 3, dtype=np.int64)
    rating = np.where(sv >= rubric.minor_share, 2, rating)
    rating = np.where(s1 >= rubric.some_share, 1, rating)
    rating = np.where((s3 >= rubric.large_share) | np.isnan(s3), 0, rating)
    return rating


def simulate_ratings(
    distances: Sequence[np.ndarray], rubric: Rubric, gain_sd: float, lapse: float, seed: int
) -> np.ndarray:
    """The simulated rater: the rubric applied to each item's errors as perceived.

    Perceptual noise, per item: the rater misjudges the size of every error of
    the item by one factor ``g = exp(gain_sd * z)``, ``z ~ N(0, 1)`` (the rater
    compares against the scale bar by eye; ``gain_sd = 0.25`` means errors look
    about 25% larger or smaller); then, with probability ``lapse``, the rating
    moves one step up or down (equally likely, kept within 0-3), for slips and
    borderline calls.

    Parameters
    ----------
    distances : per item, the label pixels' errors (mm), :func:`~ultrabones.core.label_distances.directed_distances`.
    rubric : the thresholds.
    gain_sd : standard deviation of ``log g`` (dimensionless, >= 0).
    lapse : probability (0-1) of a one-step slip.
    seed : random seed.

    Returns
    -------
    (n_items,) int array of ratings 0-3.
    """
    if gain_sd < 0 or not 0 <= lapse <= 1:
        raise ParamsError(f"twin: rater_gain_sd {gain_sd} must be >= 0 and rater_lapse {lapse} in [0, 1]")
    rng = np.random.default_rng([seed, stable_int("simulated-rater")])
    n = len(distances)
    gain = np.exp(gain_sd * rng.standard_normal(n))
    slip = rng.random(n) < lapse
    step = rng.choice([-1, 1], size=n)
    s3, s1, sv = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    for i, d in enumerate(distances):
        d = np.asarray(d, dtype=float)
        if d.size:
            p = d * gain[i]
            s3[i], s1[i], sv[i] = np.mean(p > 3.0), np.mean(p > 1.0), np.mean(p > rubric.visible_mm)
    rating = rubric_rating(s3, s1, sv, rubric)
    return np.clip(rating + np.where(slip, step, 0), 0, 3)


def label_errors(paths: Paths, built: Mapping, spacing: tuple[float, float]) -> list[np.ndarray]:
    """Each drawn label of a rating set measured against the truth (mm), in key order.

    Reads the true full label ``truth/<specimen>/<record>/Labels_full/<t>_label.png`` of each item's frame
    (once per frame, shared by its three alignments) and returns the distance of every pixel of the item's
    label (``built["labels"]``, :func:`ultrabones.rating.study.build_rating_set`) to the nearest true-label pixel
    (:func:`~ultrabones.core.label_distances.directed_distances`; ``inf`` for every pixel when the true label is
    empty). Called in notebook 03's measurement cell; the rating code never reads the truth.
    """
    out, true = [], {}
    for row, label in zip(built["key"].itertuples(), built["labels"]):
        k = (row.specimen, row.record, int(row.timestamp))
        if k not in true:
            true.clear()
            true[k] = dataset.read_label(truth_dir(paths) / k[0] / k[1] / dataset.LABELS_FULL / f"{k[2]}_label.png",
                                         label.shape)
        out.append(directed_distances(label, true[k], spacing))
    return out


def true_full_label(paths: Paths, item, shape) -> np.ndarray:
    """The twin's true full label of a rating item's frame (for drawing the true contour in a figure)."""
    return dataset.read_label(truth_dir(paths) / item["specimen"] / item["record"] / dataset.LABELS_FULL
                              / f"{int(item['timestamp'])}_label.png", shape)


def error_profiles(key: pd.DataFrame, distances: Sequence[np.ndarray], visible_mm: float,
                   out_dir: Path | str | None = None) -> pd.DataFrame:
    """Per item: the shares of its label beyond 3 mm, 1-3 mm, under 1 mm and beyond ``visible_mm``, and its
    median error (mm); written as ``error_profiles.csv`` into ``out_dir`` when given."""
    prof = pd.DataFrame([contour_shares(d, visible_mm) for d in distances])
    prof.insert(0, "item_id", key["item_id"].to_numpy())
    prof["median_error_mm"] = [float(np.median(d)) if d.size else np.nan for d in distances]
    if out_dir is not None:
        atomic.write_text(Path(out_dir) / PROFILES_FILE, prof.to_csv(index=False, float_format="%.6g"))
    return prof


# ----------------------------------------------------------------------------- notebook 03 on the twin


def ratings(built: Mapping, measured: Sequence[np.ndarray], params: TwinParams, seed: int,
            out_dir: Path | str) -> pd.DataFrame:
    """The rater model's ratings of a rating set (``measured``: :func:`label_errors`), written as a CSV in the
    page's export format and read back through the same validation as a person's
    (:func:`ultrabones.rating.rating_stats.read_ratings`): a table of ratings, like a person's."""
    params.need("rater_gain_sd", "rater_lapse")
    simulated = simulate_ratings(measured, Rubric.of(params), params.rater_gain_sd, params.rater_lapse, seed)
    table = rating_set.ratings_table(built["key"], simulated, study.SIMULATED_RATER, built["set_id"])
    f = Path(out_dir) / study.SIMULATED_FILE
    atomic.write_text(f, table.to_csv(index=False))
    return rating_stats.read_ratings(f, built["key"], built["set_id"])


def twin_label_error(profiles: pd.DataFrame | None, key: pd.DataFrame) -> dict:
    """``{"twin_label_error": per method: the items' median label error (mm) and the shares of their contour over
    3 mm, 1-3 mm, under 1 mm}``; {} without profiles (real data)."""
    if profiles is None:
        return {}
    prof = profiles.merge(key, on="item_id")
    return {"twin_label_error": {METRIC_NAMES[m]: {"median_error_mm": float(g["median_error_mm"].median()),
                              "share_over_3mm": float(g["over_3mm"].mean()),
                              "share_1_to_3mm": float(g["1_to_3mm"].mean()),
                              "share_under_1mm": float(g["under_1mm"].mean())} for m, g in prof.groupby("method")}}


def check_coherence(ratings_table: pd.DataFrame | None, profiles: pd.DataFrame | None, key: pd.DataFrame,
                    result: RatingResult | None, source: str | None, alpha: float, paper_frames: int) -> dict:
    """The rater model is coherent: higher ratings for smaller measured errors (Spearman rho < 0); when the
    optimised labels are measured closer to the truth than the initial ones, they are rated higher, and
    significantly so once the set is as large as the paper's. Returns the figures it checked ({} unless the
    rater model rated the set: a person's ratings are not the model's to check)."""
    if result is None or profiles is None or source != MODEL_SOURCE:
        return {}

    prof = profiles.merge(key, on="item_id")
    median_err = prof.groupby("method")["median_error_mm"].median()
    both = ratings_table.merge(prof, on=["item_id", "method"])
    rho = float(spearmanr(both["rating"], both["median_error_mm"], nan_policy="omit").statistic)
    assert result.n_complete == result.n_frames == len(key) // 3, result.n_complete
    assert rho < 0, rho
    summary, tests = result.summary, result.tests
    if median_err["optimized"] < median_err["initial"]:
        assert summary.loc["optimized", "mean"] > summary.loc["initial", "mean"], summary
        if result.n_frames >= paper_frames:
            p = tests.set_index("pair").loc["optimized_vs_initial", "p_value_bonferroni"]
            assert p < alpha, p
    return {"spearman_rho": rho, "median_error_mm": median_err.round(3).to_dict()}


def with_model_ratings(paths: Paths, result: StudyResult, measured: Sequence[np.ndarray] | None,
                       twin: TwinParams, seed: int) -> StudyResult:
    """Notebook 03's result with the rater model's ratings where it has none (``twin``: its ``rubric_*`` and
    ``rater_*`` keys).

    A person's CSV (read and analysed by :func:`ultrabones.rating.study.run`) always wins; on the twin without
    one, the rater model rates the set from ``measured`` (:func:`label_errors`, :func:`ratings`) and the stage
    analyses its table as a person's (:func:`~ultrabones.rating.study.with_ratings`, source
    :data:`MODEL_SOURCE`); on real data without one the result stays without ratings: the page waits for a person.
    """
    if result.ratings is not None or not paths.is_twin or measured is None:
        return result
    return with_ratings(result, ratings(result.built, measured, twin, seed, paths.rating_dir), MODEL_SOURCE)


def true_outlines(paths: Paths, examples: Sequence[Mapping]) -> list[np.ndarray]:
    """The true full label of each example item's frame, for :func:`ultrabones.rating.study.plot_items`."""
    return [true_full_label(paths, it, it["image"].shape) for it in examples]
