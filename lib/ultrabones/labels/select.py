"""A truth-free choice of lambda and of the objective region: cross-validation of the fitted correction.

Eq. 2 trades the mean image intensity over ``I_t`` against the fiducial
displacement of the correction ``Delta`` with the weight ``lambda``. Scoring a
lambda by the intensity it reaches on the frame it was fitted on cannot work:
the smaller lambda, the freer the fit, the higher that intensity (monotone by
construction). This module scores a correction where it was *not* fitted.

The rule (``rule="split"``, the default)
----------------------------------------
A rigid pose error moves the whole bone contour of a frame. So, for a sampled
frame and each candidate (``lambda``, region):

1. Eq. 2 is fitted on the scan lines (image columns) of the left half of the
   bone's initial label only, and separately on the right half
   (:class:`ColumnObjective`, :func:`optimize.optimize_frame` as it is);
2. each half's correction is applied to the *other* half, and the gain of the
   mean intensity there, ``I_other(Delta_half) - I_other(0)``, is its held-out
   gain; the frame's gain is the mean of the two. It is measured in one
   evaluation region (``first_hit`` by default) for every candidate, so that
   regions compare on one scale;
3. score(lambda, region) = mean gain over the sampled frames, where a frame
   whose full fit or half fits fail validation counts 0 (it delivers its
   initial label).

:func:`choose` picks the candidate with the largest score. A correction that
fits speckle or a structure on one side does not raise the other side; a
lambda large enough to forbid any correction scores 0; so the score is not
monotone in lambda.

Two consequences of Eq. 2 keep the rule cheap and consistent with the labelling:

- the candidates are fitted in increasing ``lambda``; once a fit finds no
  correction (``Delta = 0``: nothing beats the unperturbed pose), every larger
  ``lambda`` finds none either (the fiducial term is >= 0 and 0 at ``Delta = 0``,
  so raising its weight cannot lift another pose above it), and is not refitted;
- the full fit is validated as the labelling validates it, including the
  halves check (``labeling.halves_check``, :func:`optimize.check_halves`): a frame
  whose correction does not raise the echo on both halves of the bone delivers
  its initial label, in the score as in the dataset.

The alternative measured beside it (``rule="temporal"``) applies the
correction of frame ``t`` to its neighbours ``t +- k`` of the sweep
(``pose_{t+-k} @ Delta_t``). On the twin the pose error changes too fast along a
sweep for that to carry over (see the project's report on issue 18), so it is
kept for measuring only.

Everything here reads images, poses and the CT model only. On the twin,
:func:`ultrabones.twin.measure.lambda_oracle` measures every candidate's
delivered labels against the truth afterwards, for the report (the oracle's
choice and the gap); nothing here can see it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ultrabones.core import dataset, geometry
from ultrabones.core.errors import DatasetError, ParamsError
from ultrabones.labels import cloud, objective, optimize

#: The objective regions a candidate can use (see :class:`objective.FrameObjective`).
REGIONS = ("full", "first_hit")


def sample_frames(n_rows_per_record: Sequence[int], candidate_rows: Sequence[Sequence[int]],
                  finite_rows: Sequence[np.ndarray], n_frames: int, offset_frames: int,
                  seed: int) -> list[tuple[int, int, list[int]]]:
    """Frames for the selection, each with its held-out neighbours ``row - k`` and ``row + k``.

    A frame qualifies when its pose is finite and at least one neighbour exists
    with a finite pose (both where the sweep allows); with ``offset_frames`` 0
    (no temporal neighbours: the column-split rule) every finite frame qualifies.

    Parameters
    ----------
    n_rows_per_record : rows of each record's ``tracking.csv``.
    candidate_rows : per record, the rows the pipeline labels (sampled from these).
    finite_rows : per record, a bool array marking rows whose pose is finite.
    n_frames : frames to draw (fewer when fewer qualify).
    offset_frames : the neighbour offset ``k`` (rows of ``tracking.csv``).
    seed : random seed of the draw.

    Returns
    -------
    list of (record index, row, neighbour rows), sorted.
    """
    pool = []
    for i, (n, rows, ok) in enumerate(zip(n_rows_per_record, candidate_rows, finite_rows)):
        for r in rows:
            r = int(r)
            nb = [q for q in (r - offset_frames, r + offset_frames) if 0 <= q < n and q != r and ok[q]]
            if ok[r] and (nb or offset_frames == 0):
                pool.append((i, r, nb))
    if not pool:
        return []
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(pool), size=min(n_frames, len(pool)), replace=False)
    return sorted(pool[j] for j in pick)


def _task_frame(task: Mapping[str, Any]):
    """A selection task unpacked: the parameters, calibration, spacing, ``C``, the record, the timestamp, the
    image, the recorded pose and the regions; None when the image cannot be read."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rec = dataset.Record(task["specimen"], task["record"], Path(task["record_dir"]),
                         recording=Path(task["recording"]) if task.get("recording") else None)
    ts = int(task["timestamp"])
    try:
        img = rec.read_image(ts)
    except DatasetError:
        return None
    return (task["params"], np.asarray(task["calib"], float), tuple(task["spacing"]), cloud.load_cloud(task["cloud"])[0],
            rec, ts, img, geometry.pose_from_params(np.asarray(task["pose"], float)),
            list(task.get("regions", REGIONS)), list(task.get("eval_regions", REGIONS)))


def _objective(img, pose, calib, spacing, points, P, region):
    return objective.FrameObjective(img, pose, calib, spacing, points, P.gamma_mm, P.bound_deg, P.bound_mm,
                                region=region)


def selection_task(task: Mapping[str, Any]) -> list[dict]:
    """Fit one frame at every (region, lambda) and score each fit on its neighbours (a Dask task).

    ``task`` holds ``record_dir``, ``specimen``, ``record``, ``timestamp``
    and ``pose`` (6 pose parameters) of the frame, ``neighbours`` (list of
    (timestamp, pose parameters)), ``cloud`` (the ``.npz`` of ``C``), ``calib``,
    ``spacing``, ``params`` (:class:`ultrabones.labels.batch.LabelingParams`),
    ``seed``, ``lambdas``, ``regions`` (fit regions) and ``eval_regions``.

    Returns
    -------
    One dict per (region, lambda): ``status``, ``reason``, ``x`` (6 correction
    parameters, deg and mm), ``correction_mm``, ``n_initial``, ``n_optimized``
    (pixels of ``I_t`` in the fit region), ``intensity_initial``,
    ``intensity_optimized``, ``gain_<eval region>`` (mean held-out gain of the raw
    correction over the neighbours that show bone; NaN if none does),
    ``n_neighbours``, ``seconds`` (CPU s of the fit). Empty when the frame's
    image is unreadable or no bone is in view.
    """
    frame_ = _task_frame(task)
    if frame_ is None:
        return []
    P, calib, spacing, points, rec, ts, img, pose0, regions, eval_regions = frame_
    fits = []
    for region in regions:
        obj = _objective(img, pose0, calib, spacing, points, P, region)
        if obj.n_points == 0:
            return []
        zero = None  # the fit that found no correction worth its cost; every larger lambda finds none either
        for lam in sorted(task["lambdas"]):
            res = zero or optimize.optimize_frame(
                img, pose0, calib, spacing, points, lam, gamma_mm=P.gamma_mm, bound_deg=P.bound_deg,
                bound_mm=P.bound_mm, popsize=P.popsize, maxiter=P.maxiter, tol=P.tol,
                seed=optimize.frame_seed(task["seed"], rec.key, ts), max_correction_mm=P.max_correction_mm,
                min_label_fraction=P.min_label_fraction, objective=obj, halves_check=P.halves_check)
            if res.status == "no_bone":
                return []
            if zero is None and not np.any(res.x):
                zero = dataclasses.replace(res, seconds=0.0)
            fits.append({"specimen": rec.specimen, "record": rec.name, "timestamp": ts, "region": region,
                         "lambda": float(lam), "status": res.status, "reason": res.reason,
                         "x": [float(v) for v in res.x], "correction_mm": res.correction_mm,
                         "n_initial": res.n_initial, "n_optimized": res.n_optimized,
                         "intensity_initial": res.intensity_initial, "intensity_optimized": res.intensity_optimized,
                         "seconds": res.seconds})
    if task.get("split", True):
        split = {(r["region"], r["lambda"]): r for r in column_split_task(task)}
        for f in fits:
            sr = split.get((f["region"], f["lambda"]))
            f["split_kept"] = bool(sr["split_kept"]) if sr else False
            for e in eval_regions:
                f[f"split_gain_{e}"] = sr[f"split_gain_{e}"] if sr else float("nan")
            f["split_x"] = sr["split_x"] if sr else None
            f["seconds_split"] = sr["seconds"] if sr else 0.0
    xs = np.array([f["x"] for f in fits], float).T  # (6, S)
    xs = np.concatenate([np.zeros((6, 1)), xs], axis=1)  # column 0: no correction
    n_fit = xs.shape[1] - 1
    gains = {e: [] for e in eval_regions}  # per neighbour: (S,) gains, NaN where it shows no bone
    for nts, nprm in task["neighbours"]:
        nprm = np.asarray(nprm, float)
        nimg = None
        if np.isfinite(nprm).all():
            try:
                nimg = rec.read_image(int(nts))
            except DatasetError:
                nimg = None
        for e in eval_regions:
            g = np.full(n_fit, np.nan)
            if nimg is not None:
                nobj = _objective(nimg, geometry.pose_from_params(nprm), calib, spacing, points, P, e)
                mean, count = nobj.intensity(xs)
                if count[0] > 0:
                    g = mean[1:] - mean[0]
            gains[e].append(g)
    for j, f in enumerate(fits):
        for e in eval_regions:
            per = [float(g[j]) for g in gains[e]]
            f[f"gains_{e}"] = per
            f[f"gain_{e}"] = float(np.nanmean(per)) if np.isfinite(per).any() else float("nan")
        f["n_neighbours"] = int(sum(np.isfinite(g[0]) for g in gains[eval_regions[0]])) if eval_regions else 0
    return fits


class ColumnObjective(objective.FrameObjective):
    """:class:`objective.FrameObjective` restricted to a set of image columns (scan lines).

    Eq. 2's mean runs only over the pixels of ``I_t`` in the columns where
    ``columns`` is True; everything else is the parent's.
    """

    def __init__(self, *args, columns: np.ndarray, **kwargs):
        super().__init__(*args, **kwargs)
        self.columns = np.asarray(columns, bool)

    def band_mean(self, member, pixel, s, region=None):
        keep = self.columns[pixel % self.shape[1]]
        return super().band_mean(member[keep], pixel[keep], s, region)


def split_columns(label: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Two halves of the image columns holding about half of ``label``'s columns each.

    The split is at the median of the label's columns (so each half sees part
    of the bone); None when the label spans fewer than 4 columns.
    """
    cols = np.flatnonzero(np.asarray(label, bool).any(axis=0))
    if len(cols) < 4:
        return None
    cut = cols[len(cols) // 2]
    left = np.arange(label.shape[1]) < cut
    return left, ~left


def column_split_task(task: Mapping[str, Any]) -> list[dict]:
    """Cross-validation across the two halves of the bone's scan lines, per (region, lambda) (a Dask task).

    For each candidate, Eq. 2 is fitted on the left half of the columns
    crossing the bone and its correction scored on the right half (gain of
    the mean intensity over ``I_t`` there, in each evaluation region), and vice
    versa. A rigid pose error moves the whole contour, so a real correction
    found on one half also raises the other; a fit to speckle or to a
    structure on one side does not. ``task``: as :func:`selection_task`
    (``neighbours`` is not used).

    Returns
    -------
    One dict per (region, lambda): ``split_gain_<eval region>`` (mean of the
    two held-out gains), ``split_kept`` (both half-fits within
    ``max_correction_mm``), ``split_x`` (the two corrections), ``seconds``.
    """
    frame_ = _task_frame(task)
    if frame_ is None:
        return []
    P, calib, spacing, points, rec, ts, img, pose0, regions, eval_regions = frame_
    halves = split_columns(_objective(img, pose0, calib, spacing, points, P, "full").mask())
    if halves is None:
        return []
    objs = {(h, r): ColumnObjective(img, pose0, calib, spacing, points, P.gamma_mm, P.bound_deg, P.bound_mm,
                                    region=r, columns=halves[h])
            for h in (0, 1) for r in set(regions) | set(eval_regions)}
    out = []
    for region in regions:
        zero = [False, False]  # per half: a lambda at which the fit found no correction (so do all larger ones)
        for lam in sorted(task["lambdas"]):
            t0 = time.process_time()
            xs, kept = [], True
            for h in (0, 1):
                if zero[h]:
                    xs.append(np.zeros(6))
                    continue
                res = optimize.optimize_frame(
                    img, pose0, calib, spacing, points, lam, gamma_mm=P.gamma_mm, bound_deg=P.bound_deg,
                    bound_mm=P.bound_mm, popsize=P.popsize, maxiter=P.maxiter, tol=P.tol,
                    seed=optimize.frame_seed(task["seed"], rec.key, ts) + h, max_correction_mm=P.max_correction_mm,
                    min_label_fraction=0.0, objective=objs[(h, region)])
                xs.append(res.x if res.status == "kept" else np.zeros(6))
                kept &= res.status == "kept"
                zero[h] = not np.any(res.x)
            row = {"specimen": rec.specimen, "record": rec.name, "timestamp": ts, "region": region,
                   "lambda": float(lam), "split_kept": bool(kept), "split_x": [list(map(float, x)) for x in xs]}
            for e in eval_regions:
                gains = []
                for h in (0, 1):  # fitted on h, scored on the other half
                    mean, count = objs[(1 - h, e)].intensity(np.c_[np.zeros(6), xs[h]])
                    if count[0] > 0:
                        gains.append(mean[1] - mean[0])
                row[f"split_gain_{e}"] = float(np.mean(gains)) if gains else float("nan")
            row["seconds"] = time.process_time() - t0
            out.append(row)
    return out


def score_table(trials: pd.DataFrame, eval_region: str = "first_hit", min_label_fraction: float | None = None,
                max_correction_mm: float | None = None, rule: str = "split") -> pd.DataFrame:
    """The rule's score of every (region, lambda) candidate, from the rows of :func:`selection_task`.

    A kept frame contributes its held-out gain; a discarded one contributes 0
    (it delivers its initial label, which gains nothing over the initial pose).
    ``rule="split"`` (the default, :func:`column_split_task`) scores the gain on
    the other half of the scan lines, and also counts a frame whose half-fits
    fail validation as 0; ``rule="temporal"`` the gain on the neighbouring frames.

    Parameters
    ----------
    trials : rows of :func:`selection_task`.
    eval_region : which held-out intensity scores every candidate (``split_gain_<eval_region>``
        or ``gain_<eval_region>``).
    min_label_fraction, max_correction_mm : re-validate the fits with other limits
        than those they were run with (None: keep the task's status).

    Returns
    -------
    DataFrame, one row per (region, lambda): ``score`` (mean held-out gain, intensity
    units in [0, 1]), ``score_se`` (its standard error over frames), ``discard_rate``,
    ``mean_correction_mm`` (kept frames), ``n_frames``.
    """
    t = trials.copy()
    kept = t["status"] == "kept"
    if max_correction_mm is not None:
        kept = t["correction_mm"] <= max_correction_mm
    if min_label_fraction is not None:
        kept &= t["n_optimized"] >= min_label_fraction * t["n_initial"]
    t["kept"] = kept
    t["delivered_gain"] = _delivered(t, kept, eval_region, rule)
    t["kept_correction"] = np.where(kept, t["correction_mm"], np.nan)
    g = t.groupby(["region", "lambda"])
    table = g.agg(score=("delivered_gain", "mean"),
                  score_sd=("delivered_gain", "std"),
                  discard_rate=("kept", lambda s: float(1.0 - s.mean())),
                  mean_correction_mm=("kept_correction", "mean"),
                  n_frames=("timestamp", "size")).reset_index()
    table["score_se"] = table["score_sd"] / np.sqrt(table["n_frames"].clip(lower=1))
    return table.drop(columns="score_sd")


def require_a_measured_gain(table: pd.DataFrame, max_correction_mm: float, min_label_fraction: float) -> None:
    """Refuse a selection in which every candidate scored exactly 0: no (lambda, region) changed any held-out
    intensity, because every fit was discarded or none moved (e.g. ``max_correction_mm`` below every
    correction). :func:`choose` would then take the largest lambda without a word, and the labelling would
    "keep" frames with no correction.

    Parameters
    ----------
    table : :func:`score_table`.
    max_correction_mm, min_label_fraction : the validation limits the fits ran with (for the message).

    Raises
    ------
    ParamsError
        Naming the limits, the discard rates and what to change.
    """
    if table.empty or (table["score"].abs() > 1e-12).any():
        return
    rates = table["discard_rate"]
    n = int(table["n_frames"].max())
    raise ParamsError(
        f"labeling: no lambda/region candidate changed the held-out bone intensity of any of the {n} selection "
        f"frames (every score is 0; discard rate {rates.min():.0%} to {rates.max():.0%} with "
        f"labeling.max_correction_mm={max_correction_mm:g} mm and labeling.min_label_fraction={min_label_fraction:g}); "
        "the largest lambda would label every frame with no correction. Loosen those limits, or give "
        "labeling.lambda_value to label with a lambda of your choice")


def choose(table: pd.DataFrame) -> tuple[float, str, pd.DataFrame]:
    """The truth-free choice: the (lambda, region) with the largest held-out score.

    Ties (within 1e-12) go to the larger lambda (the smaller correction), then
    to the region listed first in :data:`REGIONS`.

    Returns
    -------
    lambda (1/mm), region, and the table with a ``chosen`` column.
    """
    if table.empty:
        raise ValueError("choose: empty score table (no frame could be scored)")
    t = table.copy()
    t["_r"] = [REGIONS.index(r) if r in REGIONS else len(REGIONS) for r in t["region"]]
    best = t["score"].max()
    cand = t[t["score"] >= best - 1e-12].sort_values(["lambda", "_r"], ascending=[False, True])
    i = cand.index[0]
    t["chosen"] = t.index == i
    return float(t.loc[i, "lambda"]), str(t.loc[i, "region"]), t.drop(columns="_r")


def delivered_gains(trials: pd.DataFrame, eval_region: str = "first_hit", rule: str = "split") -> pd.DataFrame:
    """Per frame and candidate, the held-out gain the rule credits (0 for a frame not delivered): the terms
    whose means are :func:`score_table`'s scores. Columns ``region``, ``lambda``, ``specimen``, ``record``, ``timestamp``,
    ``gain``."""
    out = trials[["region", "lambda", "specimen", "record", "timestamp"]].copy()
    out["gain"] = _delivered(trials, trials["status"] == "kept", eval_region, rule)
    return out


def _delivered(trials: pd.DataFrame, kept: pd.Series, eval_region: str, rule: str) -> np.ndarray:
    """Each trial's credited gain: its held-out gain where delivered (``kept``; with the split rule both half-fits
    validated too), else 0."""
    if rule == "split":  # both half-fits must pass validation too
        kept = kept & trials["split_kept"].astype(bool)
        gain = trials[f"split_gain_{eval_region}"]
    elif rule == "temporal":
        gain = trials[f"gain_{eval_region}"]
    else:
        raise ValueError(f"rule must be 'split' or 'temporal', got {rule!r}")
    return np.where(kept, gain.astype(float).fillna(0.0), 0.0)


def separation(trials: pd.DataFrame, table: pd.DataFrame, eval_region: str = "first_hit",
               rule: str = "split") -> dict:
    """How far the chosen candidate's score lies above the runner-up's, against the standard error of that margin.

    The margin is the mean over the sampled frames of the paired difference of the two candidates' delivered
    gains (the same frames score both), its standard error the difference's standard deviation over the square
    root of the number of frames. The runner-up is the candidate with the next largest score.

    Parameters
    ----------
    trials : rows of :func:`selection_task`; table : :func:`choose`'s table (``chosen`` column).

    Returns
    -------
    dict: ``runner_up_lambda``, ``runner_up_region``, ``margin`` and ``margin_se`` (intensity units in [0, 1]),
    ``n_frames`` (paired frames) and ``separable`` (margin > its standard error; False when fewer than 2
    frames or candidates).
    """
    chosen = table[table["chosen"]].iloc[0]
    rest = table[~table["chosen"]].sort_values("score", ascending=False, kind="mergesort")
    if rest.empty:
        return {"runner_up_lambda": None, "runner_up_region": None, "margin": float("nan"),
                "margin_se": float("nan"), "n_frames": 0, "separable": False}
    second = rest.iloc[0]
    g = delivered_gains(trials, eval_region, rule)

    def gains(c):
        sel = g[(g["region"] == c["region"]) & np.isclose(g["lambda"], c["lambda"], rtol=1e-12, atol=0)]
        return sel.set_index(["specimen", "record", "timestamp"])["gain"]

    pair = pd.concat([gains(chosen), gains(second)], axis=1, join="inner").dropna()
    d = (pair.iloc[:, 0] - pair.iloc[:, 1]).to_numpy(float)
    n = len(d)
    margin = float(d.mean()) if n else float("nan")
    se = float(d.std(ddof=1) / np.sqrt(n)) if n >= 2 else float("nan")
    return {"runner_up_lambda": float(second["lambda"]), "runner_up_region": str(second["region"]),
            "margin": margin, "margin_se": se, "n_frames": n, "separable": bool(n >= 2 and margin > se)}


def one_se_choice(table: pd.DataFrame, se: float, fallback_region: str) -> tuple[float, str]:
    """The documented default when the best candidates cannot be told apart: the one-standard-error rule.

    Among the candidates whose score lies within ``se`` (the standard error of the chosen candidate's margin)
    of the best score, the largest lambda (the smallest correction: the most conservative of those the data
    cannot tell from the best), in ``fallback_region`` when it holds one of them.

    Returns
    -------
    lambda (1/mm), region.
    """
    best = table["score"].max()
    near = table[table["score"] >= best - (se if np.isfinite(se) else 0.0) - 1e-12]
    top = near[near["lambda"] == near["lambda"].max()]
    pick = top[top["region"] == fallback_region]
    row = (pick if len(pick) else top).iloc[0]
    return float(row["lambda"]), str(row["region"])


def plot_scores(table: pd.DataFrame, chosen: float, region: str, true_table: pd.DataFrame | None = None):
    """The truth-free score of every candidate against lambda, per region (and the true error beside it).

    Parameters
    ----------
    table : :func:`score_table` (``region``, ``lambda``, ``score``, ``score_se``, ``discard_rate``).
    chosen, region : the choice, marked.
    true_table : optional, by region and lambda: ``true_contour_mm`` (the twin's measurement, drawn
        in a second panel; it plays no part in the choice).

    Returns
    -------
    matplotlib figure.
    """
    import matplotlib.pyplot as plt

    n = 2 if true_table is not None else 1
    fig, axes = plt.subplots(1, n, figsize=(4.8 * n, 3.4), squeeze=False)
    ax = axes[0, 0]
    for k, (reg, g) in enumerate(table.groupby("region")):
        g = g.sort_values("lambda")
        ax.errorbar(g["lambda"], g["score"], yerr=g["score_se"], marker="o", capsize=3, color=f"C{k}", label=reg)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(chosen, color="k", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("lambda (1/mm)")
    ax.set_ylabel("held-out intensity gain")
    ax.set_title(f"truth-free score; chosen {region}, lambda {chosen:g}", fontsize=9)
    ax.legend(fontsize=8)
    if true_table is not None:
        ax = axes[0, 1]
        for k, (reg, g) in enumerate(true_table.groupby("region")):
            g = g.sort_values("lambda")
            ax.plot(g["lambda"], g["true_contour_mm"], marker="o", color=f"C{k}", label=reg)
        ax.axvline(chosen, color="k", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("lambda (1/mm)")
        ax.set_ylabel("true contour error, delivered (mm)")
        ax.set_title("twin only: measured against the truth", fontsize=9)
    fig.tight_layout()
    return fig
