"""Known-answer and bad-input tests of ultrabones.evaluation.benchmark (stage 05's interface), no notebook."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from ultrabones.core import params
from ultrabones.core.dataset import read_specimen, write_image, write_label
from ultrabones.core.errors import DatasetError, ParamsError
from ultrabones.evaluation import benchmark
from ultrabones.evaluation.metrics import labelled_frames

matplotlib.use("Agg")

PARAMS_DIR = Path(__file__).resolve().parents[1] / "params"
SPACING = (0.1, 0.1)
DEFAULT = params.load_profile("default", PARAMS_DIR).values["evaluation"]
E = benchmark.EvaluationParams.from_section({**DEFAULT, "sigmas_mm": [0.0, 0.1, 0.5, 1.0], "report_sigma_mm": 0.5,
                                              "n_examples": 1, "max_frames": None, "checkpoint": None})


def bone_row(shape=(40, 60)):
    """A bone surface along row 20, columns 5-54: bright (200) on the left half, dim (80) on the right."""
    img = np.full(shape, 20, np.uint8)
    img[20, 5:30], img[20, 30:55] = 200, 80
    label = np.zeros(shape, bool)
    label[20, 5:55] = True
    return img, label


def two_frame_dataset(root: Path, manual: bool = False):
    """Frame 10: the prediction is the label. Frame 20: the prediction is empty. Manual: the bright half only."""
    img, label = bone_row()
    rec = root / "specimen03" / "record01"
    for t, pred in ((10, label), (20, np.zeros_like(label))):
        write_image(rec / "UltrasoundImages" / f"{t}.png", img)
        write_label(rec / "Labels" / f"{t}_label.png", label)
        write_label(rec / "Labels_pred" / f"{t}_label_pred.png", pred)
        if manual:
            write_label(rec / "LabelsManual" / f"{t}_label.png", label & (img > 100))
    return labelled_frames([read_specimen(root / "specimen03")])


def result_of(frames, manual_source=None, **extra) -> benchmark.EvaluationResult:
    methods = benchmark.label_sources(manual_source, None, SPACING)
    return benchmark.EvaluationResult(
        params=E, checkpoint="best.ckpt", model_meta={"split": {"test": ["specimen03"]}},
        test_specimens=("specimen03",), frames=tuple(frames), spacing=SPACING, manual_source=manual_source,
        methods=methods, **benchmark.score(frames, SPACING, methods, E, manual_source, progress=False), **extra)


# ----------------------------------------------------------------------------- parameters


def test_params_from_every_profiles_evaluation_section():
    for name in ("default", "smoke", "paper"):
        section = params.load_profile(name, PARAMS_DIR).values["evaluation"]
        p = benchmark.EvaluationParams.from_section(section)
        assert p.at_key == "at_0p5mm" and p.sigmas_mm[0] == 0.0 and p.report_sigma_mm in p.sigmas_mm


@pytest.mark.parametrize("change, msg", [
    ({"report_sigma_mm": 0.3}, "report_sigma_mm = 0.3 is not one of sigmas_mm"),
    ({"sigmas_mm": (0.5, 0.5)}, r"sigmas\[1\] = 0.5 mm does not increase"),
    ({"predict_scope": "all"}, "predict_scope"),
    ({"max_frames": 0}, r"evaluation.max_frames: 0 is below the minimum 1"),
    ({"n_examples": 0}, "n_examples"),
    ({"detector_enhancements": ["sobel"]}, "detector_enhancements"),
    ({"detector_enhancements": []}, "detector_enhancements"),
])
def test_bad_params_stop_with_the_key_named(change, msg):
    with pytest.raises(ParamsError, match=msg):
        dataclasses.replace(E, **{"sigmas_mm": (0.0, 0.5), **change})


def test_every_test_frame_is_allowed_and_a_missing_key_is_named():
    assert dataclasses.replace(E, sigmas_mm=(0.5,), max_frames=None).max_frames is None
    with pytest.raises(ParamsError, match="lacks key.*report_sigma_mm"):
        benchmark.EvaluationParams.from_section({"sigmas_mm": [0.5]})


# ----------------------------------------------------------------------------- metrics: a known answer


def test_metrics_of_a_perfect_frame_and_an_empty_prediction(tmp_path):
    frames = two_frame_dataset(tmp_path)
    r = result_of(frames, data_root=tmp_path / "real_sweep", seconds={"predict_s": 0.5})
    assert 80 <= r.otsu < 200  # the two grey values of the label pixels fall on either side
    m = benchmark.metrics(r)
    at = m["at_0p5mm"]
    # released: the empty prediction's frame is skipped; the perfect one scores 1
    assert at["released"]["model"]["all"] == {"accuracy": 1.0, "completeness": 1.0, "f1": 1.0, "n_frames": 1}
    # strict: it counts, accuracy 1 (nothing predicted is wrong), completeness 0, F1 0
    assert at["strict"]["model"]["all"] == {"accuracy": 1.0, "completeness": 0.5, "f1": 0.5, "n_frames": 2}
    assert at["strict"]["model"]["low"]["completeness"] == 0.5 and at["strict"]["model"]["high"]["f1"] == 0.5
    # at sigma 0 nothing is strictly closer than 0 mm
    assert m["curves"]["released"]["model"]["all"]["accuracy"] == [0.0, 1.0, 1.0, 1.0]
    assert m["dice"] == {"model": 0.5} and m["hd95_mm"] == {"model": 0.0} and m["assd_mm"] == {"model": 0.0}
    assert m["n_test_frames"] == 2 and m["sigmas_mm"] == [0.0, 0.1, 0.5, 1.0] and m["report_sigma_mm"] == 0.5
    assert m["manual_source"] is None and m["model_beats_manual_low_completeness"] is None
    assert m["detector"] is None and m["annotator_sweep"] == [] and m["vs_truth"] is None
    assert m["sim_to_real"] is None  # the checkpoint was trained on this data's split
    assert m["real_sweep"]["at_0p5mm"]["strict"]["all"]["f1"] == 0.5 and m["real_sweep"]["n_frames"] == 2
    assert m["seconds"] == {"predict_s": 0.5}
    assert benchmark.check(r) is None
    assert "1 of 2 frames have an empty prediction" in benchmark.headline(r)
    assert benchmark.verdict(r).startswith("No manual labels")


def test_the_claim_uses_the_strict_protocol_when_the_manual_labels_miss_every_dim_pixel(tmp_path):
    r = result_of(two_frame_dataset(tmp_path, manual=True), manual_source=benchmark.SHIPPED_MANUAL)
    m = benchmark.metrics(r)
    # the manual labels hold no low-intensity pixel: no released low-intensity frame, so the strict protocol decides
    assert m["at_0p5mm"]["released"]["manual"]["low"]["n_frames"] == 0
    assert m["model_vs_manual_protocol"] == "strict" and m["model_beats_manual_low_completeness"] is True
    assert "**beats**" in benchmark.verdict(r) and "0.500 vs 0.000" in benchmark.verdict(r)
    assert list(r.histograms) == ["manual (LabelsManual)", benchmark.REFERENCE, "predicted"]
    table = benchmark.table(r)
    assert list(table["method"]) == ["model"] * 3 + ["manual"] * 3


def test_the_claim_is_stated_at_every_level_of_the_annotator_sweep(tmp_path):
    """With a sweep (the twin), the metrics list the comparison at every level and the verdict names the levels
    where the model's low-intensity completeness is higher and those where it is not, not one verdict."""
    import pandas as pd

    frames = two_frame_dataset(tmp_path, manual=True)

    def rows(level, c, c_strict, n_low):
        return [{"level": level, "visible_quantile": 0.97 * level, "visible_contrast": 2.0 * level,
                 "visible_fraction": 0.6 * level, "region": reg, "accuracy": 1.0, "completeness": c,
                 "f1": 1.0, "accuracy_strict": 1.0, "completeness_strict": c_strict, "f1_strict": 1.0,
                 "n_frames": n_low, "marked_share": 1.0} for reg in ("all", "high", "low")]

    # the lenient level finds every dim pixel of both frames; the strict one none (no released low frame)
    sweep = pd.DataFrame(rows(0, 1.0, 1.0, 2) + rows(1, float("nan"), 0.0, 0))
    name = "simulated annotator (sensitivity study)"
    r = result_of(frames, manual_source=name, annotator_name=name, sweep=sweep)
    m = benchmark.metrics(r)
    # the model: released low completeness 1.0 (frame 10 only), strict 0.5 (frame 20's empty prediction)
    assert [lv["beats"] for lv in m["model_vs_annotator_levels"]] == [False, True]
    assert [lv["protocol"] for lv in m["model_vs_annotator_levels"]] == ["released", "strict"]
    assert m["model_beats_annotator_at_levels"] == [1]
    said = benchmark.verdict(r)
    assert "higher at 1 of 2 levels**: level 1 (q 0.97 c 2.00 f 0.60: 0.500 vs 0.000, strict)" in said
    assert "Not higher at: level 0 (q 0.00 c 0.00 f 0.00: 1.000 vs 1.000, released)" in said
    assert "no single verdict" in said
    table = benchmark.table(r)
    assert table["method"].iloc[-1] == "simulated annotator (sensitivity study) q 0.97 c 2.00 f 0.60"
    # the table says it on each level's low-intensity row
    assert table["model_low_completeness_higher"].tolist()[-6:] == ["", "", "no", "", "", "yes"]
    assert set(table["model_low_completeness_higher"].iloc[:-6]) == {""}


def test_figures_and_description(tmp_path):
    import matplotlib.pyplot as plt

    r = result_of(two_frame_dataset(tmp_path, manual=True), manual_source=benchmark.SHIPPED_MANUAL,
                  seconds={"predict_s": 0.5}, n_predicted=2, images_per_second=4.0)
    for fig in (benchmark.plot_fig6a(r), benchmark.plot_fig6b(r), benchmark.plot_fig8(r, "released"),
                benchmark.plot_fig8(r, "strict")):
        assert fig.axes
        plt.close(fig)
    assert "no detector" in benchmark.describe(r) and "manual baseline: LabelsManual" in benchmark.describe(r)
    figs = benchmark.figures(r, sweep_figure=lambda result: 1 / 0)  # no sweep: the sweep's figure is not drawn
    assert list(figs) == ["fig6b_label_intensity_histograms", "fig8_accuracy_completeness_f1", "fig8_strict_protocol",
                          "fig6a_manual_vs_predicted"]
    assert benchmark.PDF_FIGURES < set(figs) | {"fig8_annotator_sweep"}
    for fig in figs.values():
        assert fig.axes
        plt.close(fig)
    elsewhere = dataclasses.replace(r, model_meta={**r.model_meta, "mode": "evaluate"})
    figs = benchmark.figures(elsewhere)
    assert figs["fig_sim_to_real_predictions"] is figs["fig6a_manual_vs_predicted"]
    plt.close("all")


def test_check_raises_naming_what_failed(tmp_path):
    r = result_of(two_frame_dataset(tmp_path))
    with pytest.raises(AssertionError, match="Otsu threshold 300 is not a grey level"):
        benchmark.check(dataclasses.replace(r, otsu=300))


def test_no_labelled_test_frame_is_a_dataset_error(tmp_path):
    spec = tmp_path / "specimen03" / "record01"
    write_image(spec / "UltrasoundImages" / "10.png", bone_row()[0])
    with pytest.raises(DatasetError, match="no frame of the test specimens specimen03 has Labels labels"):
        benchmark.evaluated_frames([read_specimen(tmp_path / "specimen03")], ("Labels",), None, 0)
