"""A simulated annotator: the manual-labelling baseline on the digital twin.

**This is a simulated annotator, not a person.** It stands in for the paper's expert surgeon
(Section 3.2, "Manual annotation"): how it traces a frame is :mod:`ultrabones.twin.manual_labels`.
This module is the annotator as stage 05's manual baseline (:class:`SimulatedAnnotator`) and its
sensitivity study.

**A sensitivity study, not one point.** Because the visibility rule decides
what is missed, the annotator's low-intensity completeness (and any "the model
beats manual" verdict) follows from that rule's level more than from any
measurement. :func:`visibility_sweep` therefore scores the annotator along
its visibility level (``visible_quantile``, ``visible_contrast``,
``visible_fraction``; default :data:`DEFAULT_LEVELS`) per intensity region,
from the lenient level (every contour pixel marked) up, so the manual
comparison is a curve (:func:`plot_sweep`) and the model is compared with
each of its levels. Its geometry also starts from the pipeline's own
``Labels_full``, the contour the reference ``Labels`` are cut from: it is
scored against labels it shares geometry with. Real manual labels
(``LabelsManual/``) are scored by :func:`ultrabones.evaluation.metrics.evaluate` like any
method.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ultrabones.core import distance_scores, label_distances
from ultrabones.core.dataset import LABELS, LABELS_FULL, read_label
from ultrabones.core.errors import ParamsError
from ultrabones.core.executor import blocks, executor
from ultrabones.evaluation import metrics
from ultrabones.evaluation.comparison import level_name, model_vs_levels
from ultrabones.twin.manual_labels import LABEL, AnnotatorParams, annotate, annotate_frames, frame_rng
from ultrabones.twin.params import TwinParams


# ----------------------------------------------------------------------------- sensitivity study

#: The visibility levels swept by :func:`visibility_sweep` by default: from the lenient level, which marks
#: every contour pixel (no quantile, no contrast to the median, no share of the brightest echo), to "only the
#: brightest 1 %, three times the speckle median"; the annotator's default (0.97, 2.0, 0.6) is one of them.
#: Each level sets all three thresholds: a level that left ``visible_contrast`` at the annotator's 2.0 would
#: let that term hide its quantile (the 0.5 quantile of a frame is its median, below twice the median).
DEFAULT_LEVELS: tuple[dict, ...] = (
    {"visible_quantile": 0.0, "visible_contrast": 0.0, "visible_fraction": 0.0},
    {"visible_quantile": 0.5, "visible_contrast": 1.0, "visible_fraction": 0.0},
    {"visible_quantile": 0.8, "visible_contrast": 1.25, "visible_fraction": 0.2},
    {"visible_quantile": 0.9, "visible_contrast": 1.5, "visible_fraction": 0.4},
    {"visible_quantile": 0.95, "visible_contrast": 1.75, "visible_fraction": 0.5},
    {"visible_quantile": 0.97, "visible_contrast": 2.0, "visible_fraction": 0.6},
    {"visible_quantile": 0.99, "visible_contrast": 3.0, "visible_fraction": 0.8},
)

#: The fields one sweep level sets, in the order of the profile's lists (``annotator_sweep_*``).
LEVEL_FIELDS = ("visible_quantile", "visible_contrast", "visible_fraction")


def is_lenient(level: dict) -> bool:
    """Whether a level marks every contour pixel it may (all three visibility thresholds 0)."""
    return all(float(level.get(k, 1.0)) == 0.0 for k in LEVEL_FIELDS)


def sweep_levels(quantiles: Sequence[float], fractions: Sequence[float], contrasts: Sequence[float]) -> list[dict]:
    """The levels of :func:`visibility_sweep` from the profile's three lists (``annotator_sweep_*``).

    A sweep must span: it includes the lenient level (quantile, contrast and fraction 0: every contour pixel
    is marked), and no two levels are the same rule.

    Parameters
    ----------
    quantiles : ``visible_quantile`` of each level (0..1).
    fractions : ``visible_fraction`` of each level (0..1), as many as ``quantiles``.
    contrasts : ``visible_contrast`` of each level (ratio to the frame's median grey level, >= 0), as many.

    Returns
    -------
    ``[{"visible_quantile": q, "visible_contrast": c, "visible_fraction": f}, ...]`` in the given order.

    Raises
    ------
    ParamsError
        If the lists differ in length or are empty, a value is out of range, two levels are equal, or no
        level is the lenient one.
    """
    q, f, c = ([float(v) for v in vals] for vals in (quantiles, fractions, contrasts))
    if not q or not len(q) == len(f) == len(c):
        raise ParamsError(f"twin.annotator_sweep_quantiles ({len(q)} values), annotator_sweep_contrasts "
                          f"({len(c)} values) and annotator_sweep_fractions ({len(f)} values) must be non-empty "
                          "lists of equal length: one triple per level")
    bad = [v for v in q + f if not 0.0 <= v <= 1.0]
    if bad:
        raise ParamsError(f"twin.annotator_sweep_quantiles/fractions: {bad[0]} is outside [0, 1]")
    bad = [v for v in c if not (np.isfinite(v) and v >= 0.0)]
    if bad:
        raise ParamsError(f"twin.annotator_sweep_contrasts: {bad[0]} is not a finite ratio >= 0")
    levels = [dict(zip(LEVEL_FIELDS, t)) for t in zip(q, c, f)]
    triples = list(zip(q, c, f))
    dup = next((i for i, t in enumerate(triples) if t in triples[:i]), None)
    if dup is not None:
        raise ParamsError(f"twin.annotator_sweep_*: level {dup} (quantile {q[dup]}, contrast {c[dup]}, "
                          f"fraction {f[dup]}) repeats level {triples.index(triples[dup])}: the levels must differ")
    if not any(is_lenient(lv) for lv in levels):
        raise ParamsError("twin.annotator_sweep_*: no lenient level (quantile 0, contrast 0, fraction 0): "
                          "the sweep must start where the annotator marks every contour pixel, or its low-intensity "
                          "completeness is low by construction")
    return levels


def visibility_sweep(frames: Sequence, spacing, sigmas, threshold: float, base: AnnotatorParams = AnnotatorParams(),
                     levels: Sequence[dict] = DEFAULT_LEVELS, seed: int = 0, reference=None,
                     contour_kind: str | None = None, sigma_mm: float = 0.5, progress: bool = False,
                     n_workers: int = 1, scheduler: str | None = None):
    """The simulated annotator as a sensitivity study: scores along its visibility level.

    At each level (``base`` with the level's fields replaced, typically ``visible_quantile`` and
    ``visible_fraction``), the annotator labels every frame in memory (nothing is written) and its labels are
    scored against the reference labels with the paper's metrics, per intensity region (the Otsu split of
    :mod:`ultrabones.evaluation.metrics`). Every level of a frame uses the same seeded generator
    (:func:`frame_rng`), so the hand-tracing jitter is the same and only the visibility rule changes along the curve.

    Parameters
    ----------
    frames : :class:`ultrabones.core.dataset.Frame` objects (the evaluated test frames).
    spacing : (sx, sy) mm per pixel.
    sigmas : increasing distance thresholds (mm) containing ``sigma_mm``.
    threshold : Otsu grey level of the high/low split (the one the model is scored with).
    base : the annotator's other behaviour.
    levels : one dict of :class:`AnnotatorParams` fields per level.
    seed : master seed (as :func:`annotate_frames`).
    reference : label source of the ground truth (default ``Labels/``).
    contour_kind : where the annotator may mark (default ``Labels_full``, else ``Labels``).
    sigma_mm : the reported threshold (mm).
    progress : a progress bar over the blocks of frames.
    n_workers, scheduler : blocks of frames are scored as independent tasks on the package's executor (local
        processes, or a Dask scheduler); their scores are summed in the frames' order, so the table does not
        depend on it.

    Returns
    -------
    DataFrame, one row per level and region (``all``, ``high``, ``low``):
    ``level`` (index), the swept fields, ``region``, ``accuracy``,
    ``completeness``, ``f1`` (released protocol), the same with ``_strict``,
    ``n_frames`` (released), ``marked_share`` (labelled pixels of the level
    over those of the reference, all frames).

    Raises
    ------
    ParamsError
        If a level names a field the annotator does not have.
    """
    names = {f.name for f in dataclasses.fields(AnnotatorParams)}
    plist = []
    for i, lv in enumerate(levels):
        bad = sorted(set(lv) - names)
        if bad:
            raise ParamsError(f"annotator sweep level {i}: unknown field(s) {', '.join(bad)}")
        plist.append(dataclasses.replace(base, **lv))
    sig = label_distances.check_sigmas(sigmas)
    sx, sy = label_distances.check_spacing(spacing)
    aggs = [metrics.Aggregate(sig) for _ in plist]
    marked = np.zeros(len(plist), np.int64)
    n_ref = 0
    tasks = [(b, reference, contour_kind, (sx, sy), tuple(plist), sig, float(threshold), seed)
             for b in blocks(frames, n_workers)]
    with executor("auto", scheduler, n_workers, progress) as ex:
        done = ex.map(sweep_block, tasks, desc=f"{LABEL} sweep", unit="block")
    for part in done:
        for n_gt, scores, n_marked in part:
            n_ref += n_gt
            for i, sc in scores.items():
                aggs[i].add(sc)
                marked[i] += n_marked[i]
    keys = sorted({k for lv in levels for k in lv})
    rows = []
    for i, (p, agg) in enumerate(zip(plist, aggs)):
        at = agg.at(sigma_mm)
        for r in metrics.REGIONS:
            row = {"level": i, **{k: getattr(p, k) for k in keys}, "region": r}
            for k in distance_scores.SCORES:
                row[k] = at["released"][r][k]
                row[f"{k}_strict"] = at["strict"][r][k]
            row["n_frames"] = at["released"][r]["n_frames"]
            row["marked_share"] = marked[i] / n_ref if n_ref else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def sweep_block(task: tuple) -> list[tuple[int, dict, dict]]:
    """One block of frames of :func:`visibility_sweep` (a task of the executor): per frame, in order, the
    reference's pixel count, each level's :func:`ultrabones.evaluation.metrics.frame_scores_many` scores and
    each level's marked pixel count."""
    frames, reference, contour_kind, spacing, plist, sig, threshold, seed = task
    ref = reference if reference is not None else metrics.dataset_label(LABELS)  # default: Labels/
    out = []
    for fr in frames:
        rec, t = fr.record, fr.timestamp
        img = rec.read_image(t)
        gt = ref(fr, img.shape)
        src = rec.label_path(t, contour_kind or LABELS_FULL)
        if contour_kind is None and not src.is_file():
            src = rec.label_path(t, LABELS)
        contour = read_label(src, img.shape)
        preds = {i: annotate(img, contour, spacing, p, frame_rng(seed, rec.key, t)) for i, p in enumerate(plist)}
        scores = metrics.frame_scores_many(preds, gt, img, spacing, sig, threshold, border=False)
        out.append((int(gt.sum()), scores, {i: int(m.sum()) for i, m in preds.items()}))
    return out


@dataclass(frozen=True)
class SimulatedAnnotator:
    """The simulated annotator as stage 05's manual baseline (an
    :class:`ultrabones.evaluation.benchmark.Annotator`): labels the evaluated frames, then is swept.

    Attributes
    ----------
    params : its behaviour at the profile's visibility level (lengths in mm).
    levels : the visibility levels of the sensitivity study (:func:`sweep_levels`).
    seed : master seed of the hand-tracing jitter (:func:`frame_rng`).
    name : its name in tables, figures and metrics (:data:`LABEL`).
    n_workers, scheduler : where the sweep runs (:func:`visibility_sweep`); the numbers do not depend on it.
    """

    params: AnnotatorParams
    levels: tuple[dict, ...] = DEFAULT_LEVELS
    seed: int = 0
    name: str = LABEL
    n_workers: int = 1
    scheduler: str | None = None

    @classmethod
    def from_section(cls, section: dict, seed: int = 0, n_workers: int = 1,
                     scheduler: str | None = None) -> "SimulatedAnnotator":
        """From the ``twin`` section's ``annotator_*`` keys, as a dict (the sweep's from ``annotator_sweep_*``).

        Raises
        ------
        ParamsError
            If a value is out of range or the sweep's two lists differ in length (:func:`sweep_levels`).
        """
        levels = sweep_levels(section["annotator_sweep_quantiles"], section["annotator_sweep_fractions"],
                              section["annotator_sweep_contrasts"])
        return cls(AnnotatorParams.from_section(section), tuple(levels), int(seed), n_workers=int(n_workers),
                   scheduler=scheduler)

    @classmethod
    def from_params(cls, twin: TwinParams, seed: int = 0, n_workers: int = 1,
                    scheduler: str | None = None) -> "SimulatedAnnotator":
        """From notebook 05's :class:`~ultrabones.twin.params.TwinParams` (its ``annotator_*`` keys).

        Raises
        ------
        ParamsError
            If a key was not given (:meth:`~ultrabones.twin.params.TwinParams.need`) or as :meth:`from_section`.
        """
        twin.need(*(f.name for f in dataclasses.fields(twin) if f.name.startswith("annotator_")))
        return cls.from_section(twin.as_dict(), seed, n_workers, scheduler)

    def annotate(self, frames: Sequence, spacing, progress: bool = True) -> int:
        """Write ``LabelsManual/`` for every frame (:func:`annotate_frames`); returns how many."""
        return annotate_frames(frames, spacing, self.params, self.seed, progress)

    def sweep(self, frames: Sequence, spacing, sigmas, threshold: float, sigma_mm: float = 0.5):
        """Scores along the visibility levels on the same frames and Otsu split (:func:`visibility_sweep`)."""
        return visibility_sweep(frames, spacing, sigmas, threshold, self.params, self.levels, seed=self.seed,
                                sigma_mm=sigma_mm, n_workers=self.n_workers, scheduler=self.scheduler)


def plot_evaluation_sweep(result):
    """The sweep of a stage-05 result (:class:`ultrabones.evaluation.benchmark.EvaluationResult`), with the
    model's and the classical detector's released scores at the report threshold as horizontal lines, and
    the levels at which the model's low-intensity completeness beats the annotator's marked (Fig. 8)."""
    released = result.summary["at"]["released"]
    refs = {m: released[m] for m in result.methods if m != "manual"}
    levels = model_vs_levels(result.summary["at"], result.sweep.to_dict("records"))
    won = [lv["level"] for lv in levels if lv["beats"]]
    return plot_sweep(result.sweep, "completeness", references=refs, beats=won,
                      title=f"{LABEL}: released protocol at {result.params.report_sigma_mm} mm; the model's "
                            f"low-intensity completeness beats the annotator's at {len(won)} of {len(levels)} "
                            f"levels (stars)")


def plot_sweep(table, score: str = "completeness", model: dict | None = None, references: dict | None = None,
               title: str = "", beats: Sequence[int] = ()):
    """Low-, high-intensity and overall ``score`` along the visibility level (the manual curve of Fig. 8).

    ``model`` (``{region: {score: value}}``) adds the model's values as horizontal lines;
    ``references`` (``{name: {region: {score: value}}}``, e.g. the model and the
    classical detector) adds one line style per method; ``title`` goes above both panels; ``beats`` (level
    indices) are starred on the low-intensity ``score`` curve: the levels at which the model beats the annotator.
    """
    import matplotlib.pyplot as plt

    colours = {"all": "black", "high": "tab:green", "low": "tab:blue"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    for ax, sc in zip(axes, (score, "f1")):
        for r, col in colours.items():
            t = table[table["region"] == r]
            ax.plot(t["level"], t[sc], "o-", color=col, label=f"{LABEL} {r}")
            if r == "low" and sc == score and len(beats):
                won = t[t["level"].isin(list(beats))]
                ax.plot(won["level"], won[sc], "*", color="tab:red", ms=12, zorder=5,
                        label=f"model's low {score} higher")
            refs = {**({"model": model} if model else {}), **(references or {})}
            for (name, vals), ls in zip(refs.items(), ("--", ":", "-.", (0, (5, 1)))):
                if vals and r in vals and sc in vals[r] and vals[r][sc] is not None:
                    ax.axhline(vals[r][sc], color=col, ls=ls, lw=1, label=f"{name} {r}")
        ax.set_xlabel("visibility level (higher: only brighter echoes are marked)")
        lv = table[table["region"] == "all"]
        if {"visible_quantile", "visible_fraction"} <= set(lv.columns):
            ax.set_xticks(lv["level"], [level_name(r, "\n") for r in lv.to_dict("records")], fontsize=7)
        ax.set_ylabel(sc)
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
