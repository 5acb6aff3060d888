"""The lambda oracle: the truth-free lambda selection's choice measured against the truth, on the selection's
own frames (:func:`lambda_oracle`) and on held-out ones (:func:`heldout_lambda_oracle`), for reporting only."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ultrabones.core import dataset
from ultrabones.core.executor import executor
from ultrabones.core.geometry import POSE_COLUMNS, perturbation, pose_from_params
from ultrabones.core.label_distances import contour_error_mm
from ultrabones.core.paths import Paths
from ultrabones.labels import batch, lambda_selection, select
from ultrabones.twin.measure_labels import LabelDrawer, tracking_table
from ultrabones.twin.truth_reader import true_label, truth_root


def delivered_label_errors(paths: Paths, trials: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """The true contour error of every fit's delivered label, for reporting only (empty off the twin).

    Each row of ``trials`` (:func:`ultrabones.labels.select.selection_task`'s rows: one frame, one candidate
    (``region``, ``lambda``), its correction ``x`` and ``status``) delivers the optimised label if its fit
    was kept and the initial one otherwise, as :func:`ultrabones.labels.select.score_table` counts it. That
    label is drawn with notebook 02's cloud and band and measured against the true full label.

    Returns
    -------
    DataFrame, one row per trial with a true label: ``specimen``, ``record``, ``timestamp``, ``region``,
    ``lambda``, ``kept``, ``true_contour_mm`` (delivered) and ``true_contour_initial_mm`` (no correction), mm.
    """
    cols = ["specimen", "record", "timestamp", "region", "lambda", "kept", "true_contour_mm",
            "true_contour_initial_mm"]
    if trials is None or len(trials) == 0 or truth_root(paths) is None:
        return pd.DataFrame(columns=cols)
    drawer = LabelDrawer(paths, settings["gamma_mm"], settings["label_density_per_mm2"], settings["label_cloud_seed"])
    rows, tabs, init = [], {}, {}
    for r in trials.itertuples(index=False):
        key = (r.specimen, r.record)
        if key not in tabs:
            tabs[key] = tracking_table(paths, *key).set_index("timestamp")
        pose0 = pose_from_params(tabs[key].loc[int(r.timestamp), list(POSE_COLUMNS)].to_numpy(float))
        shape = dataset.read_image(paths.dataset / r.specimen / r.record / dataset.IMAGES
                                   / f"{int(r.timestamp)}.png").shape
        tf = true_label(paths, r.specimen, r.record, r.timestamp, dataset.LABELS_FULL, shape)
        if tf is None:
            continue
        fk = (r.specimen, r.record, int(r.timestamp))
        x = np.asarray(r.x, float) if r.status == "kept" else np.zeros(6)
        lab0, lab1 = drawer.draw(r.specimen, shape, [pose0, pose0 @ perturbation(x[:3], x[3:])])
        if fk not in init:
            init[fk] = contour_error_mm(lab0, tf, drawer.spacing)
        rows.append({"specimen": r.specimen, "record": r.record, "timestamp": int(r.timestamp),
                     "region": r.region, "lambda": float(r[trials.columns.get_loc("lambda")]),
                     "kept": r.status == "kept", "true_contour_mm": contour_error_mm(lab1, tf, drawer.spacing),
                     "true_contour_initial_mm": init[fk]})
    return pd.DataFrame(rows, columns=cols)


def oracle_of(errors: pd.DataFrame, chosen: float, region: str) -> dict:
    """The oracle's candidate and the gap of a choice, from :func:`delivered_label_errors` ({} when empty).

    The oracle is the (region, lambda) whose delivered labels have the least mean true contour error over
    the frames; ``oracle_gap_mm`` is the chosen candidate's mean minus the oracle's (mm, >= 0). Frames are
    compared over those every candidate has, so that each mean runs over the same frames.

    Returns
    -------
    dict: ``oracle`` (lambda), ``oracle_region``, ``oracle_gap_mm``, ``chosen_contour_mm``,
    ``oracle_contour_mm``, ``true_contour_initial_mm`` (the same frames, no correction; mm),
    ``chosen_improved_share`` (frames whose chosen delivered label beats the initial one, of those the
    chosen fit kept), ``gap_se_mm`` (standard error of the gap over frames), ``n_frames`` and ``table``
    (DataFrame by region and lambda: ``true_contour_mm``).
    """
    if errors is None or len(errors) == 0:
        return {}
    wide = errors.pivot_table(index=["specimen", "record", "timestamp"], columns=["region", "lambda"],
                              values="true_contour_mm").dropna()
    if wide.empty:
        return {}
    means = wide.mean()
    table = means.rename("true_contour_mm").reset_index()
    best = means.idxmin()
    gap = wide[(region, chosen)] - wide[best]
    init = errors.drop_duplicates(["specimen", "record", "timestamp"]).set_index(
        ["specimen", "record", "timestamp"])["true_contour_initial_mm"].reindex(wide.index)
    mine = errors[(errors["region"] == region) & (errors["lambda"] == chosen)].set_index(
        ["specimen", "record", "timestamp"]).reindex(wide.index)
    kept = mine["kept"].astype(bool)
    better = (mine["true_contour_mm"] < mine["true_contour_initial_mm"])[kept]
    return {"oracle": float(best[1]), "oracle_region": str(best[0]), "oracle_gap_mm": float(gap.mean()),
            "gap_se_mm": float(gap.std(ddof=1) / np.sqrt(len(gap))) if len(gap) > 1 else float("nan"),
            "chosen_contour_mm": float(means[(region, chosen)]), "oracle_contour_mm": float(means[best]),
            "true_contour_initial_mm": float(init.mean()),
            "chosen_improved_share": float(better.mean()) if len(better) else float("nan"),
            "n_frames": int(len(wide)), "table": table}


def lambda_oracle(paths: Paths, selection: dict | None, settings: dict) -> dict:
    """The oracle's view of the truth-free lambda selection on its own frames, for reporting only ({} off the twin).

    Every selection trial's delivered label is measured (:func:`delivered_label_errors`) and the oracle taken
    over the candidates (:func:`oracle_of`). These are the frames the rule chose on, a dozen: the oracle here
    is chosen on the very frames it is scored on. :func:`heldout_lambda_oracle` measures on others.

    Returns
    -------
    dict: ``oracle`` (lambda), ``oracle_region``, ``oracle_gap_mm`` (mean true contour error of the chosen
    candidate's delivered labels minus the oracle's, mm, >= 0), ``true_contour_initial_mm`` (the same frames,
    no correction) and ``table`` (DataFrame by region and lambda: ``true_contour_mm``).
    """
    trials = None if selection is None else selection.get("trials")
    out = oracle_of(delivered_label_errors(paths, trials, settings), selection["chosen"], selection["region"]) \
        if trials is not None else {}
    keys = ("oracle", "oracle_region", "oracle_gap_mm", "true_contour_initial_mm", "table")
    return {k: out[k] for k in keys} if out else {}


def heldout_lambda_oracle(paths: Paths, params, chosen: float, region: str, *, seed: int = 0,
                          n_frames: int = 96, specimens: list[str] | None = None, n_workers: int = 1,
                          dask_scheduler: str | None = None) -> dict:
    """The oracle and the truth-free choice's gap on frames the choice never saw, for reporting only.

    ``n_frames`` frames outside the selection's (:func:`ultrabones.labels.lambda_selection.heldout_fit_tasks`) are
    fitted at every candidate (lambda, region) by Eq. 2 on the whole frame (differential evolution,
    validated as the labelling validates), each candidate's delivered labels are measured against the
    truth (:func:`delivered_label_errors`), and the oracle is the candidate with the least mean error
    (:func:`oracle_of`). With a hundred frames rather than a dozen, the oracle is no longer chosen on the
    frames it is scored on, and one frame cannot decide the gap.

    Parameters
    ----------
    paths : the run's paths (a twin with its truth; {} otherwise).
    params : the labelling's :class:`ultrabones.labels.batch.LabelingParams`.
    chosen, region : the truth-free choice (notebook 02's ``lambda`` and ``objective_region``).
    seed : master seed of the run.
    n_frames : held-out frames.
    specimens, n_workers, dask_scheduler : as for :func:`ultrabones.labels.batch.run`.

    Returns
    -------
    :func:`oracle_of`'s dict plus ``chosen``, ``region`` and ``errors`` (the per-trial DataFrame).
    """
    if truth_root(paths) is None:
        return {}
    tasks = lambda_selection.heldout_fit_tasks(paths, params, seed=seed, n_frames=n_frames, specimens=specimens)
    with executor(params.executor, dask_scheduler, n_workers) as ex:
        rows = [r for out in ex.map(select.selection_task, tasks, "held-out fits", unit="frame") for r in out]
    settings = batch.label_settings(params, seed)
    errors = delivered_label_errors(paths, pd.DataFrame(rows), settings)
    out = oracle_of(errors, float(chosen), str(region))
    return out | {"chosen": float(chosen), "region": str(region), "errors": errors} if out else {}
