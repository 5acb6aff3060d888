"""Both objectives on the same frames: Eq. 2 (``first_hit`` and ``full``) and the released one (issue 29).

Which objective gives the more accurate labels is a question the paper did not answer. This module runs,
on a bounded number of frames of a dataset, each objective as the labelling stage runs it (the stage's
parameters, the same validation) and returns each frame's correction and status: the *method* side, which
reads images, poses and the CT model only. The twin measures what each delivered against its truth
afterwards (:func:`ultrabones.twin.objectives.errors`); notebook 02 shows the table and figure in its twin
section.

The frames are every ``frame_stride``-th row of each record, then at most ``n_frames`` of them spread evenly
over all records (:func:`pick_frames`), so that a run on a bounded budget still spans the specimens.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd

from ultrabones.core import dataset, geometry
from ultrabones.core.paths import Paths
from ultrabones.labels import batch, cloud, optimize, released
from ultrabones.labels.inputs import records_to_label, released_cloud, surface_cloud
from ultrabones.labels.tasks import optimize_released

#: The candidates compared: (name, objective, Eq. 2 region).
CANDIDATES = (("eq2_first_hit", "eq2", "first_hit"), ("eq2_full", "eq2", "full"), ("released", "released", "first_hit"))


def pick_frames(paths: Paths, P: batch.LabelingParams, n_frames: int,
                specimens: list[str] | None = None) -> list[tuple[dataset.Record, int, np.ndarray]]:
    """At most ``n_frames`` labelled frames (every ``frame_stride``-th row), spread evenly over all records.

    Returns
    -------
    list of (record, timestamp, pose parameters (6,): mm, degrees), frames with a finite pose only.
    """
    if n_frames < 1:
        raise ValueError(f"compare: n_frames must be >= 1, got {n_frames}")
    specs, _ = dataset.scan(paths.dataset, specimens, derived=paths.derived)
    pool = []
    for s, rec, tab, rows in records_to_label(specs, {s.name: P for s in specs}):
        prm = tab.loc[rows, list(geometry.POSE_COLUMNS)].to_numpy(float)
        for r, p in zip(rows, prm):
            if np.isfinite(p).all():
                pool.append((rec, int(tab.loc[r, "timestamp"]), p))
    if len(pool) > n_frames:
        pool = [pool[i] for i in np.unique(np.linspace(0, len(pool) - 1, n_frames).round().astype(int))]
    return pool


def fit_objectives(paths: Paths, P: batch.LabelingParams, lam: float, n_frames: int, seed: int = 0,
                   specimens: list[str] | None = None, candidates=CANDIDATES, upstream_de: bool = True) -> pd.DataFrame:
    """Every candidate objective on the same frames, as the labelling stage runs it (truth-free).

    Parameters
    ----------
    paths : the run's paths; P : the stage's parameters (optimiser, bounds, validation).
    lam : Eq. 2's lambda (1/mm), e.g. the stage's choice.
    n_frames : frames at most (:func:`pick_frames`).
    seed : master seed (Eq. 2's per-frame optimiser seeds, as the stage draws them; the clouds).
    upstream_de : the released objective with upstream's optimiser settings (``released.UPSTREAM_DE``: population
        15 per parameter, 30 generations, tol 0.05), as the release ran it; False: ``P``'s.

    Returns
    -------
    DataFrame, one row per (frame, candidate): ``specimen, record, timestamp, candidate, status, reason,
    correction_mm`` and the correction ``x`` (rotation deg, translation mm: the optimised pose is
    ``pose @ perturbation(x[:3], x[3:])``), ``seconds`` (process time).
    """
    calib, spacing, _ = dataset.read_calibration(paths.dataset)
    frames = pick_frames(paths, P, n_frames, specimens)
    clouds, dense = {}, {}
    rows = []
    for rec, ts, prm in frames:
        spec = dataset.read_specimen(paths.dataset / rec.specimen)
        if rec.specimen not in clouds:
            clouds[rec.specimen] = cloud.load_cloud(surface_cloud(paths, spec, P.density_per_mm2, seed))[0]
        img = dataset.read_image(rec.image_path(ts))
        pose0 = geometry.pose_from_params(prm)
        for name, objective, region in candidates:
            Q = dataclasses.replace(P, objective=objective, objective_region=region)
            if objective == "released" and upstream_de:  # the release's optimiser, not this profile's Eq. 2 settings
                Q = dataclasses.replace(Q, **{k: released.UPSTREAM_DE[k] for k in ("popsize", "maxiter", "tol")})
            t0 = time.process_time()
            if objective == "released":
                if rec.specimen not in dense:
                    dense[rec.specimen] = cloud.load_cloud(released_cloud(paths, spec, P.released_ct_samples,
                                                                          seed + 2))[0]
                ctx = {"calib": calib, "spacing": spacing, "points": clouds[rec.specimen],
                       "released_points": dense[rec.specimen]}
                res = optimize_released(Q, ctx, img, prm, pose0)
            else:
                res = optimize.optimize_frame(img, pose0, calib, spacing, clouds[rec.specimen], lam,
                                           gamma_mm=Q.gamma_mm, bound_deg=Q.bound_deg, bound_mm=Q.bound_mm,
                                           popsize=Q.popsize, maxiter=Q.maxiter, tol=Q.tol,
                                           seed=optimize.frame_seed(seed, rec.key, ts),
                                           max_correction_mm=Q.max_correction_mm,
                                           min_label_fraction=Q.min_label_fraction, region=region,
                                           halves_check=Q.halves_check)
            rows.append({"specimen": rec.specimen, "record": rec.name, "timestamp": ts, "candidate": name,
                         "status": res.status, "reason": res.reason, "correction_mm": res.correction_mm,
                         "x": np.asarray(res.x, float).tolist(), "seconds": time.process_time() - t0})
    return pd.DataFrame(rows)
