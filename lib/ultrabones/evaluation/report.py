"""What stage 05 states about its result (:class:`ultrabones.evaluation.benchmark.EvaluationResult`), in words
and tables: :func:`headline` (the model's scores), :func:`verdict` (the paper's claim against manual labelling),
:func:`describe` (what was evaluated, how long each step took), :func:`table` and :func:`table_caption`.
"""

from __future__ import annotations

from ultrabones.core.distance_scores import SCORES
from ultrabones.evaluation import bone_detector
from ultrabones.evaluation.comparison import level_name, model_vs_levels, model_vs_manual, table_at, table_with_sweep

#: Name of the CT-derived reference labels in the histograms (Fig. 6b).
REFERENCE = "CT-derived labels"


def headline(result) -> str:
    """The model's headline scores at the report threshold (released protocol), and how many frames the released
    protocol skipped (what the notebook prints after :func:`ultrabones.evaluation.benchmark.check`)."""
    model = result.summary["at"]["released"]["model"]["all"]
    n = len(result.frames)
    lines = [f"model {result.params.at_key} released: " + ", ".join(f"{k} {model[k]:.3f}" for k in SCORES)]
    if n - model["n_frames"]:
        lines.append(f"{n - model['n_frames']} of {n} frames have an empty prediction or label: skipped by the "
                     "released protocol, counted by the strict one")
    return "\n".join(lines)


def verdict(result) -> str:
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


def describe(result) -> str:
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


def table(result):
    """The table beside the paper's at the report threshold: one row per method and region (both protocols
    and the paper's value), then one row per level and region of the annotator's sweep."""
    at = result.summary["at"]
    if result.sweep is None:
        return table_with_sweep(table_at(at), None)
    beats = {lv["level"]: lv["beats"] for lv in model_vs_levels(at, result.sweep.to_dict("records"))}
    return table_with_sweep(table_at(at), result.sweep, result.annotator_name or "", beats)


def table_caption(result) -> str:
    """What :func:`table`'s columns and rows are."""
    return (f"At sigma = {result.params.report_sigma_mm} mm (released protocol; `_strict` the strict one; "
            f"`_paper` the paper's; `detector` = {bone_detector.LABEL}; `manual` = {result.manual_source}; "
            f"the last rows: the annotator's sweep; `model_low_completeness_higher`: whether the model's "
            f"low-intensity completeness is higher than that level's):")
