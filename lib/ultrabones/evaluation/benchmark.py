"""Stage 05, the bone-segmentation benchmark: the model against a classical detector and manual labelling.

The stage contract (docs/architecture.md), as every stage's: :data:`Params` (:class:`EvaluationParams`, the
validated ``evaluation`` profile section); :func:`run` evaluates a trained checkpoint over a dataset and returns
a :data:`Result` (:class:`EvaluationResult`); :func:`metrics` turns it into the stage's metrics JSON;
:func:`check` asserts what must hold; :func:`figures` draws the paper's Figs. 6a, 6b and 8
(:mod:`ultrabones.evaluation.figures`). What the notebook states and tabulates (:func:`headline`, :func:`verdict`,
:func:`describe`, :func:`table`) is :mod:`ultrabones.evaluation.report`'s, named here too.

What :func:`run` does, in order:

1. **Test frames.** The test specimens are the ones the checkpoint's metadata names (its split); the
   evaluated frames are their frames with a CT-derived label (and a manual one when the manual labels are
   read from ``LabelsManual/``), at most ``max_frames`` of them drawn with the seed (the paper labelled 700
   random test images by hand; ``None`` evaluates every labelled test frame).
2. **Classical baseline.** The shadow-peak detector (:mod:`ultrabones.evaluation.bone_detector`) is fitted
   once on the checkpoint's *training* specimens (:func:`~ultrabones.evaluation.bone_detector.fit_on_training`),
   never on a test frame; no detector when the dataset holds none of them.
3. **Manual baseline.** A given :class:`Annotator` (the twin's simulated annotator) writes ``LabelsManual/``
   for the evaluated frames; else ``LabelsManual/`` shipped with the data is scored when present; else none.
4. **Predictions.** The model segments the evaluated frames (``predict_scope = "evaluated"``) or every
   labelled test frame (``"test_specimens"``, for notebook 06) into ``Labels_pred/``.
5. **Scores.** Otsu's grey-level threshold over the CT-derived label pixels splits high from low intensity;
   every method is scored against ``Labels/`` with Eqs. 3-6 (:func:`ultrabones.evaluation.metrics.evaluate`).
6. **Sensitivity study.** A given annotator is swept over its visibility level on the same frames.

The method never reads the twin's truth: the simulated annotator comes in as an :class:`Annotator` argument,
and scores against the true labels are the twin's (``ultrabones.twin.measure.evaluation``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence

import numpy as np

from ultrabones.core import dataset as ds
from ultrabones.core.dataset import Frame
from ultrabones.core.errors import DatasetError, ParamsError
from ultrabones.core.label_distances import check_sigmas
from ultrabones.core.params import SectionParams
from ultrabones.evaluation import bone_detector
from ultrabones.evaluation.comparison import PAPER_AT_0P5MM, model_vs_levels, model_vs_manual
from ultrabones.evaluation.figures import plot_fig6a, plot_fig6b, plot_fig8
from ultrabones.evaluation.metrics import (
    LabelSource,
    check_summary,
    dataset_label,
    evaluate,
    label_histograms,
    labelled_frames,
    otsu_threshold,
    summarise,
)
from ultrabones.evaluation.report import REFERENCE, describe, headline, table, table_caption, verdict

#: What the stage states and tabulates (:mod:`ultrabones.evaluation.report`), and its figures
#: (:mod:`ultrabones.evaluation.figures`), named with the stage for the notebook.
__all__ = ["Params", "Result", "run", "metrics", "check", "figures", "EvaluationParams", "EvaluationResult",
           "Annotator", "headline", "verdict", "describe", "table", "table_caption", "plot_fig6a", "plot_fig6b",
           "plot_fig8", "REFERENCE", "PDF_FIGURES"]

#: ``predict_scope`` values: segment the evaluated frames only, or every labelled frame of the test specimens.
PREDICT_SCOPES = ("evaluated", "test_specimens")
#: The manual source name when the data ships its own manual labels.
SHIPPED_MANUAL = ds.LABELS_MANUAL
#: The figures saved as PDF too (the paper's), by file name (:func:`figures`).
PDF_FIGURES = frozenset({"fig6b_label_intensity_histograms", "fig8_accuracy_completeness_f1", "fig8_annotator_sweep",
                         "fig6a_manual_vs_predicted"})


@dataclass(frozen=True)
class EvaluationParams(SectionParams):
    """The ``evaluation`` section of a profile, typed (units and ranges: ``schema.SCHEMA["evaluation"]``).

    Build it with :meth:`~ultrabones.core.params.SectionParams.from_section`; construction, and so
    ``dataclasses.replace``, validates every value against the schema, then the combinations (below).

    Attributes
    ----------
    sigmas_mm : distance thresholds of Eqs. 4-5, strictly increasing (mm).
    report_sigma_mm : the threshold of the table and the headline metrics, one of ``sigmas_mm`` (mm).
    max_frames : test frames evaluated, drawn with the seed; None: every labelled test frame.
    checkpoint : the checkpoint evaluated; None: ``models/best.ckpt`` of the run.
    predict_scope : frames segmented into ``Labels_pred/`` (:data:`PREDICT_SCOPES`).
    n_examples : rows of Fig. 6a.
    detector_fit_frames : training-specimen frames the shadow-peak detector is fitted on.
    detector_enhancements : bright-echo terms its fit chooses among
        (:data:`ultrabones.evaluation.bone_detector.ENHANCEMENTS`).
    surface_band_mm : the model's masks are its probability map's surface, a band this thick
        (:func:`ultrabones.segmentation.inference.surface_mask`; the labels' ``2 gamma``); None: the
        thresholded map as it is (the paper's).
    """

    SECTION: ClassVar[str] = "evaluation"

    sigmas_mm: tuple[float, ...]
    report_sigma_mm: float
    max_frames: int | None
    checkpoint: str | None
    predict_scope: str
    n_examples: int
    detector_fit_frames: int
    detector_enhancements: tuple[str, ...]
    surface_band_mm: float | None

    def __post_init__(self):
        """Validate against the schema (ranges, ``predict_scope`` one of :data:`PREDICT_SCOPES`, ...), then the
        combinations: ``sigmas_mm`` strictly increasing and holding ``report_sigma_mm``, at least one detector
        enhancement (:class:`~ultrabones.core.errors.ParamsError`, naming the key)."""
        super().__post_init__()
        object.__setattr__(self, "sigmas_mm", tuple(float(s) for s in check_sigmas(self.sigmas_mm)))
        if not np.isclose(self.sigmas_mm, self.report_sigma_mm).any():
            raise ParamsError(f"evaluation.report_sigma_mm = {self.report_sigma_mm} is not one of sigmas_mm")
        unknown = set(self.detector_enhancements) - set(bone_detector.ENHANCEMENTS)
        if not self.detector_enhancements or unknown:
            raise ParamsError(f"evaluation.detector_enhancements = {list(self.detector_enhancements)}: a non-empty "
                              f"list of {list(bone_detector.ENHANCEMENTS)}")

    @property
    def sigmas(self) -> np.ndarray:
        """(n_sigma,) the thresholds as an array (mm)."""
        return np.asarray(self.sigmas_mm)

    @property
    def at_key(self) -> str:
        """The metrics key of the report threshold: ``at_0p5mm`` for 0.5 mm."""
        return "at_" + f"{self.report_sigma_mm:.1f}".replace(".", "p") + "mm"


class Annotator(Protocol):
    """Who writes ``LabelsManual/`` for the evaluated frames before they are scored, and sweeps its own rule.

    On the twin: ``ultrabones.twin.annotator.SimulatedAnnotator`` (the method never imports it; the notebook
    passes it in). On real data there is none: shipped ``LabelsManual/`` are scored as they are.
    """

    name: str

    def annotate(self, frames: Sequence[Frame], spacing, progress: bool = True) -> int:
        """Write ``LabelsManual/<t>_label.png`` for every frame; return how many."""

    def sweep(self, frames: Sequence[Frame], spacing, sigmas, threshold: float, sigma_mm: float):
        """Score the annotator along its visibility level: one row per level and region (a DataFrame)."""


@dataclass(frozen=True)
class EvaluationResult:
    """What stage 05 measured.

    Attributes
    ----------
    params : the stage's parameters.
    checkpoint : the evaluated checkpoint's path.
    model_meta : its metadata (``split``, ``mode``: ``evaluate`` when it was trained elsewhere).
    test_specimens : the test specimens' folder names.
    frames : the evaluated frames.
    spacing : (sx, sy) mm per pixel.
    manual_source : the manual labels' source (an annotator's name, ``LabelsManual``) or None.
    methods : method name (``model``, ``detector``, ``manual``) -> label source, scored against ``Labels/``.
    histograms : label source name -> (256,) grey-value counts of its label pixels (Fig. 6b).
    otsu : Otsu's threshold of the CT-derived label pixels (grey level): high intensity is ``I > otsu``.
    scores : :func:`ultrabones.evaluation.metrics.evaluate`'s result (aggregates, per-frame scores, counts).
    summary : :func:`ultrabones.evaluation.metrics.summarise` of ``scores`` at ``params.report_sigma_mm``.
    detector : :func:`ultrabones.evaluation.bone_detector.fit_on_training`'s fit, or None (no training frame).
    missing_train_specimens : the checkpoint's training specimens this dataset does not hold.
    n_predicted : frames segmented into ``Labels_pred/``.
    images_per_second : prediction speed, PNG read and write included.
    device : ``GPU`` or ``CPU``, where the model ran.
    annotator_name : the annotator's name when one labelled the frames (the twin), else None.
    n_annotated : frames it labelled.
    sweep : its visibility sweep (one row per level and region), or None.
    data_root : the dataset's root on real data; None on the twin.
    finetune, other_masks_at : ``training.mode finetune``'s before/after scores; a model trained elsewhere: its
        scores with the mask kind the stage did not write (``transfer.other_masks_at``); else None.
    seconds : wall time of each step (s).
    """

    params: EvaluationParams
    checkpoint: str
    model_meta: Mapping
    test_specimens: tuple[str, ...]
    frames: tuple[Frame, ...]
    spacing: tuple[float, float]
    manual_source: str | None
    methods: Mapping[str, LabelSource]
    histograms: Mapping[str, np.ndarray]
    otsu: float
    scores: Mapping
    summary: Mapping
    detector: Mapping | None = None
    missing_train_specimens: tuple[str, ...] = ()
    n_predicted: int = 0
    images_per_second: float = float("nan")
    device: str = "CPU"
    annotator_name: str | None = None
    n_annotated: int | None = None
    sweep: Any = None
    data_root: Path | None = None
    finetune: dict | None = None
    other_masks_at: Mapping | None = None
    seconds: Mapping[str, float] = field(default_factory=dict)

    @property
    def trained_elsewhere(self) -> bool:
        """The checkpoint was trained on other data (stage 04's evaluate mode): every labelled frame is a test frame."""
        return self.model_meta.get("mode") == "evaluate"


# ----------------------------------------------------------------------------- the stage


def manual_source_of(specimens: Sequence, annotator: Annotator | None) -> str | None:
    """Where the manual labels come from: the annotator's name, ``LabelsManual`` shipped with the data, or None."""
    if annotator is not None:
        return annotator.name
    shipped = any(len(r.labelled_timestamps(ds.LABELS_MANUAL)) for s in specimens for r in s.records)
    return SHIPPED_MANUAL if shipped else None


def label_sources(manual_source: str | None, detector: Mapping | None, spacing) -> dict[str, LabelSource]:
    """The scored methods: ``model`` (``Labels_pred/``), ``detector`` when fitted, ``manual`` when there is one."""
    methods = {"model": dataset_label(ds.LABELS_PRED)}
    if detector is not None:
        methods["detector"] = bone_detector.label_source(detector["params"], spacing)
    if manual_source:
        methods["manual"] = dataset_label(ds.LABELS_MANUAL)
    return methods


def score(frames: Sequence[Frame], spacing, methods: Mapping[str, LabelSource], params: EvaluationParams,
          manual_source: str | None = None, progress: bool = True, *, n_workers: int = 1,
          scheduler: str | None = None) -> dict:
    """Otsu's split of the CT-derived label pixels, then every method scored against ``Labels/`` (Eqs. 3-6).

    Parameters
    ----------
    frames : the evaluated frames.
    spacing : (sx, sy) mm per pixel.
    methods : method name -> label source (:func:`label_sources`); ``Labels_pred/`` must be written.
    params : the thresholds (``sigmas_mm``, ``report_sigma_mm``).
    manual_source : the manual labels' source, named in the histograms; None: no manual histogram.
    n_workers, scheduler : where the frames are scored (:func:`~ultrabones.evaluation.metrics.evaluate`).

    Returns
    -------
    ``{"histograms", "otsu", "scores", "summary"}``: the :class:`EvaluationResult` fields of the same names.
    """
    sources = {REFERENCE: dataset_label(ds.LABELS), "predicted": dataset_label(ds.LABELS_PRED)}
    if manual_source:
        sources = {f"manual ({manual_source})": dataset_label(ds.LABELS_MANUAL), **sources}
    hists = label_histograms(frames, sources, progress=progress)
    otsu = otsu_threshold(hists[REFERENCE])
    scores = evaluate(frames, dataset_label(ds.LABELS), methods, spacing, params.sigmas, otsu, progress=progress,
                      keep_per_frame=params.report_sigma_mm, n_workers=n_workers, scheduler=scheduler)
    return {"histograms": hists, "otsu": otsu, "scores": scores, "summary": summarise(scores, params.report_sigma_mm)}


def run(paths, params: EvaluationParams, *, specimens: Sequence[str] | None = None, seed: int = 0,
        annotator: Annotator | None = None, threads: int | None = None, progress: bool = True, n_workers: int = 1,
        scheduler: str | None = None) -> EvaluationResult:
    """Evaluate a trained checkpoint on its test specimens against two baselines (stage 05).

    Parameters
    ----------
    paths : the run's :class:`ultrabones.core.paths.Paths` (``dataset``, ``derived``, ``models_dir``).
    params : the stage's parameters.
    specimens : the common ``specimens`` (the stage contract's); not used: the test specimens are the ones the
        checkpoint's split names.
    seed : seed of the frame draws (the test frames, the detector's training frames).
    annotator : writes ``LabelsManual/`` for the evaluated frames and is swept (the twin's simulated
        annotator); None: the data's own ``LabelsManual/`` when present.
    threads : torch CPU threads for the predictions; None: torch's default.
    progress : progress bars.
    n_workers, scheduler : where the frames are scored: local worker processes, or a Dask scheduler
        (:func:`~ultrabones.evaluation.metrics.evaluate`); the scores do not depend on it.

    Returns
    -------
    :class:`EvaluationResult`.

    Raises
    ------
    DatasetError
        If no frame of the test specimens has the labels the evaluation needs.
    ParamsError
        If the checkpoint's split names a specimen the dataset does not hold.
    """
    import torch

    from ultrabones.segmentation import checkpoint as seg_checkpoint, finetune, inference, segdata, transfer

    checkpoint = params.checkpoint or str(paths.models_dir / "best.ckpt")
    if not params.checkpoint and not Path(checkpoint).is_file():  # the run's own model: notebook 04 writes it
        raise DatasetError(f"{checkpoint}: checkpoint not found; notebook 04 trains it: run it first "
                           "(python -m ultrabones run 04 --profile <profile>), or give evaluation.checkpoint")
    ckpt = seg_checkpoint.load_checkpoint(checkpoint)
    meta = ckpt[1]
    root = paths.dataset
    available = [s.name for s in ds.discover(root)]
    test_names = segdata.resolve_specimens(meta["split"]["test"], available, "test_specimens")
    test_specs = ds.discover(root, test_names, paths.derived)
    _, spacing, _ = ds.read_calibration(root)
    manual = manual_source_of(test_specs, annotator)
    require = (ds.LABELS, ds.LABELS_MANUAL) if manual == SHIPPED_MANUAL else (ds.LABELS,)
    frames = evaluated_frames(test_specs, require, params.max_frames, seed)
    seconds: dict[str, float] = {}

    train_specs, missing = bone_detector.training_specimens(root, meta["split"], paths.derived)
    detector = bone_detector.fit_on_training(train_specs, spacing, params.detector_fit_frames,
                                             params.detector_enhancements, seed, sigma_mm=params.report_sigma_mm)
    if detector is not None:
        seconds["detector_fit_s"] = detector["seconds"]

    n_annotated = None
    if annotator is not None:
        t0 = time.perf_counter()
        n_annotated = annotator.annotate(frames, spacing, progress=progress)
        seconds["annotator_s"] = time.perf_counter() - t0

    to_predict = frames if params.predict_scope == "evaluated" else labelled_frames(test_specs, (ds.LABELS,))
    seconds["predict_s"] = inference.predict_frames(to_predict, ckpt, threads, progress, params.surface_band_mm, spacing)

    methods = label_sources(manual, detector, spacing)
    scored = score(frames, spacing, methods, params, manual, progress, n_workers=n_workers, scheduler=scheduler)
    seconds["evaluate_s"] = scored["scores"]["seconds"]

    other_at = None  # a model trained elsewhere: the mask kind the stage did not write, scored in memory
    if meta.get("mode") == "evaluate":
        other_at, seconds["other_masks_s"] = other_masks_at(frames, ckpt, spacing, params, scored["otsu"],
                                                                     progress)

    sweep = None
    if annotator is not None:
        t0 = time.perf_counter()
        sweep = annotator.sweep(frames, spacing, params.sigmas, scored["otsu"], params.report_sigma_mm)
        seconds["annotator_sweep_s"] = time.perf_counter() - t0

    # training.mode finetune: the model before and after, on the later frames it was not trained on
    before_after = (finetune.before_after(checkpoint, root, paths.derived, params.report_sigma_mm)
                    if meta.get("mode") == "finetune" else None)

    return EvaluationResult(
        params=params, checkpoint=checkpoint, model_meta=meta, test_specimens=tuple(test_names),
        frames=tuple(frames), spacing=spacing, manual_source=manual, methods=methods, **scored,
        detector=detector, missing_train_specimens=tuple(missing), n_predicted=len(to_predict),
        images_per_second=len(to_predict) / seconds["predict_s"], device="GPU" if torch.cuda.is_available() else "CPU",
        annotator_name=None if annotator is None else annotator.name, n_annotated=n_annotated, sweep=sweep,
        data_root=paths.data_root, seconds=seconds, finetune=before_after, other_masks_at=other_at)


def other_masks_at(frames: Sequence[Frame], ckpt, spacing, params, otsu: float,
                   progress: bool = True) -> tuple[dict, float]:
    """A model trained elsewhere: its scores with the mask kind stage 05 did not write to ``Labels_pred/``, and their time (s).

    Parameters
    ----------
    frames : the evaluated frames.
    ckpt : the loaded checkpoint ``(model, metadata)``.
    spacing : (sx, sy) mm per pixel.
    params : stage 05's ``EvaluationParams`` (``surface_band_mm`` picks the other kind; the thresholds).
    otsu : the stage's Otsu threshold of the CT-derived label pixels (grey level).

    Returns
    -------
    ``(at, seconds)``: ``at`` as ``summarise(...)["at"]`` with one method, ``model``.
    """
    from ultrabones.segmentation import transfer

    t0 = time.perf_counter()
    source = transfer.mask_source(ckpt, spacing, transfer.other_band(params.surface_band_mm))
    scores = evaluate(frames, dataset_label(ds.LABELS), {"model": source}, spacing, params.sigmas, otsu,
                      progress=progress, keep_per_frame=None)
    return summarise(scores, params.report_sigma_mm)["at"], time.perf_counter() - t0


def evaluated_frames(specimens: Sequence, require: Sequence[str], n_max: int | None, seed: int) -> list[Frame]:
    """The test specimens' frames with every label kind in ``require``, at most ``n_max`` drawn with ``seed``.

    Raises
    ------
    DatasetError
        If there is none, naming the specimens and the labels (see
        :func:`ultrabones.evaluation.metrics.labelled_frames`).
    """
    frames = labelled_frames(specimens, require, n_max=n_max, seed=seed)
    if not frames:
        names = ", ".join(s.name for s in specimens)
        root = specimens[0].path.parent if specimens else "the dataset"
        raise DatasetError(f"{root}: no frame of the test specimens {names} has "
                           f"{' and '.join(require)} labels (run notebook 02 first)")
    return frames


# ----------------------------------------------------------------------------- metrics, checks, statements


def metrics(result: EvaluationResult) -> dict[str, Any]:
    """Stage 05's metrics (JSON types).

    Keys: ``n_test_frames``, ``test_specimens``, ``checkpoint``, ``manual_source``, ``sigmas_mm``,
    ``report_sigma_mm`` (mm), ``otsu_threshold`` (grey level), ``at_<sigma>mm[protocol][method][region][score]``
    (e.g. ``at_0p5mm``; protocol ``released``/``strict``, region ``all``/``high``/``low``, score ``accuracy``/
    ``completeness``/``f1`` and ``n_frames``), ``curves`` (the same, one value per sigma), ``dice`` (mean over
    every frame), ``hd95_mm`` and ``assd_mm`` (mean over frames where both masks are non-empty, mm), ``border``,
    ``images_per_second``, ``n_predicted_frames``, ``model_beats_manual_low_completeness`` and
    ``model_vs_manual_protocol`` (at the manual labels' one level; None without manual labels),
    ``model_vs_annotator_levels`` (the same comparison at every level of the annotator's sweep:
    :func:`ultrabones.evaluation.comparison.model_vs_levels`; empty without a sweep) and
    ``model_beats_annotator_at_levels`` (the levels where the model's low-intensity completeness is higher),
    ``detector`` (its fit, or None),
    ``missing_train_specimens``, ``annotator_name``, ``annotator_sweep`` (rows), ``paper_at_0p5mm``,
    ``sim_to_real`` (None unless the model was trained elsewhere), ``seconds``; on real data, the model's
    scores also under a key named after the data (``ultrabones.segmentation.transfer.data_key``).
    Scores against the twin's true labels (``vs_truth``) are the twin's to add.
    """
    from ultrabones.segmentation import transfer

    summ, p = result.summary, result.params
    at, border = summ["at"], summ["border"]
    claim = model_vs_manual(at) if result.manual_source else None
    by_level = [] if result.sweep is None else model_vs_levels(at, result.sweep.to_dict("records"))
    det = result.detector
    out = {
        "n_test_frames": len(result.frames),
        "test_specimens": list(result.test_specimens),
        "checkpoint": result.checkpoint,
        "manual_source": result.manual_source,
        "sigmas_mm": list(p.sigmas_mm),
        "report_sigma_mm": p.report_sigma_mm,
        "otsu_threshold": result.otsu,
        p.at_key: at,
        "curves": summ["curves"],
        "dice": {m: border[m]["dice_strict"] for m in result.methods},
        "hd95_mm": {m: border[m]["hd95_mm"] for m in result.methods},
        "assd_mm": {m: border[m]["assd_mm"] for m in result.methods},
        "border": border,
        "images_per_second": result.images_per_second,
        "n_predicted_frames": result.n_predicted,
        "model_beats_manual_low_completeness": claim["beats"] if claim else None,
        "model_vs_manual_protocol": claim["protocol"] if claim else None,
        "model_vs_annotator_levels": by_level,
        "model_beats_annotator_at_levels": [lv["level"] for lv in by_level if lv["beats"]],
        "detector": None if det is None else {
            "name": bone_detector.LABEL, "params": det["params"].as_dict(), "n_fit_frames": det["n_frames"],
            "train_specimens": det["specimens"], "fit_f1": det["fit_f1"],
            "enhancements": list(p.detector_enhancements)},
        "missing_train_specimens": list(result.missing_train_specimens),
        "annotator_name": result.annotator_name,
        "annotator_sweep": [] if result.sweep is None else result.sweep.to_dict("records"),
        "paper_at_0p5mm": PAPER_AT_0P5MM,
        "vs_truth": None,
        "sim_to_real": transfer.sim_to_real(at, result.model_meta, len(result.frames), result.checkpoint,
                                           p.surface_band_mm, result.other_masks_at),
        "seconds": dict(result.seconds),
        # training.mode finetune: before/after on the held-out later frames (segmentation.finetune.summary)
        "finetune_before_after": result.finetune,
    }
    key = transfer.data_key(result.data_root)
    if key:
        out[key] = transfer.scores_on_data(at, p.at_key, len(result.frames))
    return out


def check(result: EvaluationResult) -> None:
    """Check a result: every score in [0, 1] and non-decreasing in sigma, Otsu's threshold a grey level.
    (:func:`headline` states the model's scores; :func:`verdict` the paper's claim.)

    Raises
    ------
    AssertionError
        Naming the protocol, method, region and score that fails.
    """
    check_summary(result.summary)
    assert 0 <= result.otsu <= 255, f"Otsu threshold {result.otsu} is not a grey level"


# ----------------------------------------------------------------------------- figures


def figures(result: EvaluationResult, *, sweep_figure: Callable | None = None) -> dict[str, Any]:
    """The stage's figures by file name (:data:`PDF_FIGURES` are saved as PDF too).

    ``fig6b_label_intensity_histograms`` (:func:`~ultrabones.evaluation.figures.plot_fig6b`),
    ``fig8_accuracy_completeness_f1`` and ``fig8_strict_protocol`` (:func:`~ultrabones.evaluation.figures.plot_fig8`,
    released and strict protocol), ``fig8_annotator_sweep`` (with an annotator's sweep and ``sweep_figure``),
    ``fig6a_manual_vs_predicted`` (:func:`~ultrabones.evaluation.figures.plot_fig6a`) and, for a model trained
    elsewhere, the same figure as ``fig_sim_to_real_predictions``.

    Parameters
    ----------
    sweep_figure : draws the annotator's sweep from the result (the twin's
        ``ultrabones.twin.annotator.plot_evaluation_sweep``, passed in as the annotator is); None: no sweep figure.
    """
    out = {"fig6b_label_intensity_histograms": plot_fig6b(result),
           "fig8_accuracy_completeness_f1": plot_fig8(result, "released"),
           "fig8_strict_protocol": plot_fig8(result, "strict")}
    if result.sweep is not None and sweep_figure is not None:
        out["fig8_annotator_sweep"] = sweep_figure(result)
    out["fig6a_manual_vs_predicted"] = plot_fig6a(result)
    if result.trained_elsewhere:
        out["fig_sim_to_real_predictions"] = out["fig6a_manual_vs_predicted"]
    return out


#: The stage contract's names.
Params, Result = EvaluationParams, EvaluationResult
