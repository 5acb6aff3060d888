"""The truth-free lambda selection run on a dataset: frames drawn, fits run as tasks and cached, the rule applied.

:mod:`ultrabones.labels.select` holds the rule (each sampled frame fitted at every candidate lambda and region,
scored where it was not fitted, the best chosen); this module runs it for the stage: the frames drawn from the
dataset's records as tasks (:func:`_selection_tasks`), their fits cached under a key of the tasks, the sources
and the input images, and the choice with its table (:func:`select_lambda`); and, for measuring a choice after
the fact, fit tasks on frames the selection did not see (:func:`heldout_fit_tasks`).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd

from ultrabones.core import atomic, dataset, geometry
from ultrabones.core.cache import params_hash, source_hash
from ultrabones.core.paths import Paths
from ultrabones.labels import select
from ultrabones.labels.inputs import (STEM, images_digest, records_to_label, surface_cloud, task_record,
                                      task_recording)
from ultrabones.labels.tasks import task_key


def _selection_tasks(P, records, clouds, base, seed) -> list[dict]:
    """The truth-free selection's tasks: sampled frames (with held-out neighbours for the temporal rule)."""
    rule = P.selection_rule
    k = P.selection_offset_frames if rule == "temporal" else 0
    cols = list(geometry.POSE_COLUMNS)
    finite = [np.isfinite(tab[cols].to_numpy(float)).all(axis=1) for _, _, tab, _ in records]
    pick = select.sample_frames([len(tab) for _, _, tab, _ in records], [rows for *_, rows in records],
                                finite, P.lambda_frames, k, seed)
    regions = list(select.REGIONS) if P.objective_region == "auto" else [P.objective_region]
    tasks = []
    for i, r, nbs in pick:
        s, rec, tab, _ = records[i]
        tasks.append(dict(base, specimen=s.name, record=rec.name, record_dir=str(rec.path),
                          recording=task_recording(rec), cloud=clouds[s.name],
                          timestamp=int(tab.loc[r, "timestamp"]), pose=tab.loc[r, cols].to_numpy(float).tolist(),
                          neighbours=[(int(tab.loc[q, "timestamp"]), tab.loc[q, cols].to_numpy(float).tolist())
                                      for q in nbs],
                          lambdas=list(P.lambdas), regions=regions, split=rule == "split",
                          eval_regions=[P.selection_eval_region]))
    return tasks


#: Added to the master seed to draw the frames of :func:`heldout_fit_tasks` (not the selection's draw).
HELDOUT_SEED_OFFSET = 104729


def heldout_fit_tasks(paths: Paths, params, *, seed: int = 0, n_frames: int = 96,
                      specimens: list[str] | None = None) -> list[dict]:
    """Fit tasks for every candidate (lambda, region) on frames the lambda selection did not see.

    For measuring a choice of lambda after the fact (on the twin: the oracle over more frames than the
    selection's; ``ultrabones.twin.measure.heldout_lambda_oracle``). The frames are drawn like the
    selection's (:func:`ultrabones.labels.select.sample_frames`) with the seed ``seed +``
    :data:`HELDOUT_SEED_OFFSET`, and the selection's own frames are left out. Each task is a
    :func:`ultrabones.labels.select.selection_task` with the full fits only (no split, no neighbours), so
    each candidate's fit is Eq. 2 on the whole frame, validated as the labelling validates it.

    Parameters
    ----------
    paths, params, seed, specimens : as for :func:`ultrabones.labels.batch.run` (the selection is drawn from
        ``params`` and ``seed``).
    n_frames : frames to draw (fewer when fewer qualify).

    Returns
    -------
    list of task dicts, sorted by record and row.
    """
    specs, _ = dataset.scan(paths.dataset, specimens, derived=paths.derived)
    calib, spacing, _ = dataset.read_calibration(paths.dataset)
    base = {"calib": calib.tolist(), "spacing": list(spacing), "params": params, "seed": seed}
    clouds = {s.name: str(surface_cloud(paths, s, params.density_per_mm2, seed)) for s in specs}
    records = records_to_label(specs, {s.name: params for s in specs})
    seen = {(t["record_dir"], t["timestamp"]) for t in _selection_tasks(params, records, clouds, base, seed)}
    wide = dataclasses.replace(params, lambda_frames=n_frames + len(seen))
    tasks = [t for t in _selection_tasks(wide, records, clouds, base, seed + HELDOUT_SEED_OFFSET)
             if (t["record_dir"], t["timestamp"]) not in seen]
    if len(tasks) > n_frames:  # the draw's surplus, dropped at random (not by record order)
        keep = np.random.default_rng(seed + HELDOUT_SEED_OFFSET).choice(len(tasks), n_frames, replace=False)
        tasks = [tasks[i] for i in sorted(keep)]
    return [dict(t, split=False, neighbours=[], eval_regions=[]) for t in tasks]


def select_lambda(paths: Paths, P, records, clouds, base, run_tasks, seed: int) -> tuple[float, str, dict]:
    """Choose lambda (and the region when ``objective_region`` is ``auto``) by held-out cross-validation, cached.

    Reads images, poses and the CT model only (:mod:`ultrabones.labels.select`). The trials are kept in
    the result so that, on the twin, :func:`ultrabones.twin.measure.lambda_oracle` can measure every
    candidate's delivered labels against the truth for the report; that never changes this decision.

    Parameters
    ----------
    paths : the run's paths (the trials are cached in ``build/<profile>/cache/02_labeling/lambda_selection.json``).
    P : the stage's :class:`~ultrabones.labels.batch.LabelingParams` (candidates, rule, frames, validation).
    records : :func:`ultrabones.labels.inputs.records_to_label` of the dataset.
    clouds : specimen name -> the file of its ``C`` (:func:`ultrabones.labels.inputs.surface_cloud`).
    base : what every task carries (``calib``, ``spacing`` (mm), ``params``, ``seed``).
    run_tasks : ``run_tasks(fn, tasks, desc)`` (:meth:`ultrabones.core.executor.Executor.map`).
    seed : the master seed (draws the frames).

    Returns
    -------
    lambda, region, and the selection dict: ``by`` (the rule in words), ``rule``, ``chosen``
    (lambda), ``region``, ``n_frames``, ``seconds_per_fit``, ``table`` (DataFrame: score per
    (region, lambda)) and ``trials`` (DataFrame: one row per frame and candidate, with the
    correction ``x`` each fit found).
    """
    tasks = _selection_tasks(P, records, clouds, base, seed)
    key = params_hash({"tasks": [task_key(t) for t in tasks],
                       "src": source_hash(),
                       "inputs": [images_digest(task_record(t),
                                                [t["timestamp"]] + [n[0] for n in t["neighbours"]]) for t in tasks]})
    f = paths.cache(STEM) / "lambda_selection.json"
    rows = None
    if f.is_file():
        try:
            data = json.loads(f.read_text())
            rows = data["rows"] if data.get("key") == key else None
        except (OSError, ValueError, KeyError, TypeError):
            rows = None
    if rows is None:
        rows = [r for out in run_tasks(select.selection_task, tasks, "lambda") for r in out]
        atomic.write_json(f, {"key": key, "rows": rows})
    trials = pd.DataFrame(rows)
    region0 = P.objective_region if P.objective_region != "auto" else P.fallback_region
    if trials.empty:  # nothing could be scored: no correction is the safe choice
        lam = float(max(P.lambdas))
        return lam, region0, {"by": "no frame could be scored: the largest lambda (no correction)", "rule": None,
                              "chosen": lam, "region": region0, "n_frames": 0, "table": None, "trials": None}
    eval_region, rule = P.selection_eval_region, P.selection_rule
    scores = select.score_table(trials, eval_region, rule=rule)
    select.require_a_measured_gain(scores, P.max_correction_mm, P.min_label_fraction)
    lam, region, scores = select.choose(scores)
    sep = select.separation(trials, scores, eval_region, rule)
    by = ("truth-free: held-out gain of the {e} intensity on the other half of the bone's scan lines" if rule == "split"
          else "truth-free: held-out gain of the {e} intensity on frames +-{k}")
    by = by.format(e=eval_region, k=P.selection_offset_frames)
    rule_choice = {"lambda": lam, "region": region}
    if not sep["separable"] and P.selection_inseparable == "one_se":
        # the best candidates cannot be told apart on these frames: the documented default (select.one_se_choice)
        lam, region = select.one_se_choice(scores, sep["margin_se"], P.fallback_region)
        by += "; not separable from the runner-up (margin <= its standard error): the one-standard-error default"
        scores["chosen"] = (scores["region"] == region) & np.isclose(scores["lambda"], lam, rtol=1e-12, atol=0)
    return lam, region, {"by": by, "rule": rule, "chosen": lam, "region": region,
                         "n_frames": int(trials["timestamp"].nunique()),
                         "seconds_per_fit": float(trials["seconds"].mean()), "rule_choice": rule_choice,
                         "separation": sep, "table": scores, "trials": trials}
