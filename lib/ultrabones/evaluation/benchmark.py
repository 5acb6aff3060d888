"""Stage 05, the bone-segmentation benchmark: the model against a classical detector and manual labelling.

One stage, four things (as every stage): :func:`run` evaluates a trained checkpoint over a dataset and
returns an :class:`EvaluationResult`; :func:`metrics` turns it into the stage's metrics JSON; ``plot_fig6a``,
``plot_fig6b`` and ``plot_fig8`` draw the paper's figures from it; :func:`check`, :func:`table` and
:func:`verdict` are what the notebook asserts, tabulates and states. The parameters are one
:class:`EvaluationParams`, built from the validated ``evaluation`` profile section.

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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from ultrabones.core import dataset as ds
from ultrabones.core.dataset import Frame
from ultrabones.core.distance_scores import SCORES
from ultrabones.core.errors import DatasetError, ParamsError
from ultrabones.core.label_distances import check_sigmas
from ultrabones.evaluation import bone_detector
from ultrabones.evaluation.comparison import (
    PAPER_AT_0P5MM,
    level_name,
    model_vs_levels,
    model_vs_manual,
    table_at,
    table_with_sweep,
)
from ultrabones.evaluation.figures import pick_examples, plot_curves, plot_examples, plot_histograms
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

#: ``predict_scope`` values: segment the evaluated frames only, or every labelled frame of the test specimens.
PREDICT_SCOPES = ("evaluated", "test_specimens")
#: The manual source name when the data ships its own manual labels.
SHIPPED_MANUAL = ds.LABELS_MANUAL
#: Name of the CT-derived reference labels in the histograms (Fig. 6b).
REFERENCE = "CT-derived labels"


@dataclass(frozen=True)
class EvaluationParams:
    """Parameters of stage 05 (lengths in mm).

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

    The section's ``annotator_*`` keys are the twin's simulated annotator's
    (``ultrabones.twin.annotator.SimulatedAnnotator.from_section``), not the method's.
    """

    sigmas_mm: tuple[float, ...]
    report_sigma_mm: float = 0.5
    max_frames: int | None = None
    checkpoint: str | None = None
    predict_scope: str = "evaluated"
    n_examples: int = 3
    detector_fit_frames: int = 60
    detector_enhancements: tuple[str, ...] = bone_detector.ENHANCEMENTS
    surface_band_mm: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "sigmas_mm", tuple(float(s) for s in check_sigmas(self.sigmas_mm)))
        object.__setattr__(self, "report_sigma_mm", float(self.report_sigma_mm))
        object.__setattr__(self, "detector_enhancements", tuple(str(e) for e in self.detector_enhancements))
        if not np.isclose(self.sigmas_mm, self.report_sigma_mm).any():
            raise ParamsError(f"evaluation.report_sigma_mm = {self.report_sigma_mm} is not one of sigmas_mm")
        if self.max_frames is not None and int(self.max_frames) < 1:
            raise ParamsError(f"evaluation.max_frames = {self.max_frames}: at least 1, or null for every test frame")
        if self.predict_scope not in PREDICT_SCOPES:
            raise ParamsError(f"evaluation.predict_scope = {self.predict_scope!r}: one of {list(PREDICT_SCOPES)}")
        if int(self.n_examples) < 1:
            raise ParamsError(f"evaluation.n_examples = {self.n_examples}: at least 1")
        unknown = set(self.detector_enhancements) - set(bone_detector.ENHANCEMENTS)
        if not self.detector_enhancements or unknown:
            raise ParamsError(f"evaluation.detector_enhancements = {list(self.detector_enhancements)}: a non-empty "
                              f"list of {list(bone_detector.ENHANCEMENTS)}")

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> "EvaluationParams":
        """The method's keys of the validated ``evaluation`` section (``params.collect(globals(), "05_evaluation")``).

        Raises
        ------
        ParamsError
            Naming a key the section lacks.
        """
        missing = [f.name for f in fields(cls) if f.name not in section]
        if missing:
            raise ParamsError(f"evaluation section: missing key(s) {', '.join(missing)}")
        return cls(**{f.name: section[f.name] for f in fields(cls)})

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
          manual_source: str | None = None, progress: bool = True) -> dict:
    """Otsu's split of the CT-derived label pixels, then every method scored against ``Labels/`` (Eqs. 3-6).

    Parameters
    ----------
    frames : the evaluated frames.
    spacing : (sx, sy) mm per pixel.
    methods : method name -> label source (:func:`label_sources`); ``Labels_pred/`` must be written.
    params : the thresholds (``sigmas_mm``, ``report_sigma_mm``).
    manual_source : the manual labels' source, named in the histograms; None: no manual histogram.

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
                      keep_per_frame=params.report_sigma_mm)
    return {"histograms": hists, "otsu": otsu, "scores": scores, "summary": summarise(scores, params.report_sigma_mm)}


def run(paths, params: EvaluationParams, seed: int = 0, annotator: Annotator | None = None,
        threads: int | None = None, progress: bool = True) -> EvaluationResult:
    """Evaluate a trained checkpoint on its test specimens against two baselines (stage 05).

    Parameters
    ----------
    paths : the run's :class:`ultrabones.core.paths.Paths` (``dataset``, ``derived``, ``models_dir``).
    params : the stage's parameters.
    seed : seed of the frame draws (the test frames, the detector's training frames).
    annotator : writes ``LabelsManual/`` for the evaluated frames and is swept (the twin's simulated
        annotator); None: the data's own ``LabelsManual/`` when present.
    threads : torch CPU threads for the predictions; None: torch's default.
    progress : progress bars.

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
    scored = score(frames, spacing, methods, params, manual, progress)
    seconds["evaluate_s"] = scored["scores"]["seconds"]

    other_at = None  # a model trained elsewhere: the mask kind the stage did not write, scored in memory
    if meta.get("mode") == "evaluate":
        other_at, seconds["other_masks_s"] = transfer.other_masks_at(frames, ckpt, spacing, params, scored["otsu"],
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


def check(result: EvaluationResult) -> str:
    """Check a result: every score in [0, 1] and non-decreasing in sigma, Otsu's threshold a grey level.

    Returns
    -------
    The model's headline scores at the report threshold (released protocol), and how many frames the
    released protocol skipped.

    Raises
    ------
    AssertionError
        Naming the protocol, method, region and score that fails.
    """
    check_summary(result.summary)
    assert 0 <= result.otsu <= 255, f"Otsu threshold {result.otsu} is not a grey level"
    model = result.summary["at"]["released"]["model"]["all"]
    n = len(result.frames)
    lines = [f"model {result.params.at_key} released: " + ", ".join(f"{k} {model[k]:.3f}" for k in SCORES)]
    if n - model["n_frames"]:
        lines.append(f"{n - model['n_frames']} of {n} frames have an empty prediction or label: skipped by the "
                     "released protocol, counted by the strict one")
    return "\n".join(lines)


def verdict(result: EvaluationResult) -> str:
    """The paper's claim, stated: does the model beat the manual labels on low-intensity completeness?

    With an annotator's sweep (the twin), the claim is stated per level: at which levels of the visibility
    rule the model's low-intensity completeness is higher, and at which it is not; the manual labels' own
    level is one of them, not the verdict.
    """
    if not result.manual_source:
        return ("No manual labels (no `LabelsManual/` in the data): the paper's claim against manual labelling "
                "is not tested.")
    claim = model_vs_manual(result.summary["at"])
    sigma = result.params.report_sigma_mm
    if result.sweep is None:
        said = ("The model **beats** the manual labels on completeness in low-intensity regions, as in the paper"
                if claim["beats"] else
                "The model does **not** beat the manual labels on completeness in low-intensity regions here, "
                "unlike the paper")
        return (f"{said}: {claim['model']:.3f} vs {claim['manual']:.3f} at {sigma} mm "
                f"({claim['protocol']} protocol; paper: 0.801 vs 0.190; manual = {result.manual_source}).")
    levels = model_vs_levels(result.summary["at"], result.sweep.to_dict("records"))
    won = [lv for lv in levels if lv["beats"]]
    lost = [lv for lv in levels if not lv["beats"]]

    def names(lvs):
        return "; ".join(f"level {lv['level']} ({level_name(lv)}: {lv['model']:.3f} vs {lv['annotator']:.3f}, "
                         f"{lv['protocol']})" for lv in lvs) or "none"

    return (f"Low-intensity completeness at {sigma} mm, the model against the {result.manual_source} at each "
            f"of its {len(levels)} visibility levels (paper, against its expert: 0.801 vs 0.190). "
            f"The model's is **higher at {len(won)} of {len(levels)} levels**: {names(won)}. "
            f"Not higher at: {names(lost)}. The manual labels scored above (the profile's level): "
            f"{claim['model']:.3f} vs {claim['manual']:.3f} ({claim['protocol']} protocol). "
            "Which level a person's labelling resembles is not known on the twin, so no single verdict is drawn.")


def describe(result: EvaluationResult) -> str:
    """What the stage evaluated and how long each step took (Markdown), with the detector's best fits."""
    r, s = result, result.seconds
    lines = [f"- checkpoint `{r.checkpoint}`; test specimens {list(r.test_specimens)}; {len(r.frames)} frames; "
             f"spacing {r.spacing} mm; manual baseline: {r.manual_source or 'none (no LabelsManual/ in the data)'}"]
    det = r.detector
    if det is None and r.trained_elsewhere:
        lines.append("- no detector: the model was trained elsewhere, so every labelled frame of this data is a test "
                     "frame; fitting the detector on them would fit it on the test set (skipped)")
    elif det is None:
        lines.append(f"- no detector: the dataset holds no labelled frame of the checkpoint's training specimens "
                     f"({', '.join(r.missing_train_specimens) or 'none listed'} missing)")
    else:
        lines.append(f"- detector fitted on {det['n_frames']} frames of {det['specimens']} in {det['seconds']:.1f} s; "
                     f"chosen: `{det['params']}`")
    if r.n_annotated is not None:
        lines.append(f"- {r.annotator_name}: {r.n_annotated} frames in {s['annotator_s']:.1f} s")
    lines.append(f"- predicted {r.n_predicted} frames in {s['predict_s']:.1f} s: {r.images_per_second:.1f} images/s "
                 f"({r.device}, PNG read and write included)")
    lines.append(f"- Otsu threshold over {r.histograms[REFERENCE].sum()} CT-derived label pixels: {r.otsu:.1f} "
                 "(grey level)")
    if r.finetune is not None:
        from ultrabones.segmentation import finetune

        lines.append("- fine-tuned model (training.mode finetune): the scores above include its training frames; "
                     "before and after on the held-out later frames:\n\n" + finetune.describe(r.finetune))
    return "\n".join(lines)


def table(result: EvaluationResult):
    """The table beside the paper's at the report threshold: one row per method and region (both protocols
    and the paper's value), then one row per level and region of the annotator's sweep."""
    at = result.summary["at"]
    if result.sweep is None:
        return table_with_sweep(table_at(at), None)
    beats = {lv["level"]: lv["beats"] for lv in model_vs_levels(at, result.sweep.to_dict("records"))}
    return table_with_sweep(table_at(at), result.sweep, result.annotator_name or "", beats)


def table_caption(result: EvaluationResult) -> str:
    """What :func:`table`'s columns and rows are."""
    return (f"At sigma = {result.params.report_sigma_mm} mm (released protocol; `_strict` the strict one; "
            f"`_paper` the paper's; `detector` = {bone_detector.LABEL}; `manual` = {result.manual_source}; "
            f"the last rows: the annotator's sweep; `model_low_completeness_higher`: whether the model's "
            f"low-intensity completeness is higher than that level's):")


# ----------------------------------------------------------------------------- figures


def plot_fig6b(result: EvaluationResult):
    """Fig. 6b: grey values of the label pixels (manual, CT-derived, predicted) with Otsu's threshold."""
    return plot_histograms(result.histograms, result.otsu)


def plot_fig8(result: EvaluationResult, protocol: str = "released"):
    """Fig. 8: accuracy, completeness and F1 against sigma per method and region; the released protocol
    with the paper's values at 0.5 mm, the strict one without."""
    curves = result.summary["curves"][protocol]
    if protocol == "strict":
        return plot_curves(result.params.sigmas, curves, "strict protocol (empty predictions count)")
    title = (f"released protocol, {len(result.frames)} test frames; detector = {bone_detector.LABEL} "
             "(fitted on training specimens)" + (f"; manual = {result.manual_source}" if result.manual_source else ""))
    return plot_curves(result.params.sigmas, curves, title, paper=PAPER_AT_0P5MM)


def plot_fig6a(result: EvaluationResult):
    """Fig. 6a: input, CT-derived label, manual, detector and predicted labels on ``n_examples`` frames
    with much low-intensity bone (green: high intensity, blue: low)."""
    picks = pick_examples(result.scores["gt_counts"], result.params.n_examples)
    columns = {"GT (CT-derived)": dataset_label(ds.LABELS)}
    if result.manual_source:
        name = "Manual" + (f" ({result.annotator_name})" if result.annotator_name else "")
        columns[name] = dataset_label(ds.LABELS_MANUAL)
    if "detector" in result.methods:
        columns["Shadow-peak detector"] = result.methods["detector"]
    columns["Predicted"] = dataset_label(ds.LABELS_PRED)
    return plot_examples([result.frames[i] for i in picks], columns, result.otsu)
