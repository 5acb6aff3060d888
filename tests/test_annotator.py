"""Tests of the simulated annotator (the manual-labelling baseline on the twin)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ultrabones.twin import annotator
from ultrabones.twin import manual_labels as ml
from ultrabones.twin.params import TwinParams
from ultrabones.core import distance_scores, label_distances
from ultrabones.evaluation import metrics
from ultrabones.core.dataset import read_label, read_specimen, write_image, write_label
from ultrabones.core.errors import DatasetError, ParamsError

SPACING = (0.08, 0.08)


def synthetic_frame(seed=0, shape=(200, 300)):
    """Speckle, a bone surface at row 120: bright on the left, dim (low intensity) on the right."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.gamma(2.0, 15.0, shape), 0, 255)
    contour = np.zeros(shape, bool)
    contour[120, 20:280] = True
    img[119:122, 20:150] = 230  # hyperechoic half
    img[119:122, 150:280] = 70  # dim half, as bright as some speckle
    img[123:, 20:280] *= 0.1  # acoustic shadow below the surface
    return img.astype(np.uint8), contour


def test_marks_bright_bone_and_misses_low_intensity_bone():
    img, contour = synthetic_frame()
    p = ml.AnnotatorParams()
    manual = ml.annotate(img, contour, SPACING, p, ml.frame_rng(0, "s/r", 1))
    cols = np.flatnonzero(manual.any(axis=0))
    assert cols.min() < 40 and 140 <= cols.max() < 165  # the bright stretch, a stroke's width beyond
    assert not manual[:, 170:].any()  # nothing in the dim part
    # the stroke stays near the surface: hand jitter of ~0.15 mm, brush 0.25 mm
    rows = np.nonzero(manual)[0]
    assert np.abs(rows - 120).max() * SPACING[1] < 1.0
    m = distance_scores.distance_metrics(manual, contour, SPACING, [0.5])
    assert m["accuracy"][0] > 0.9 and 0.4 < m["completeness"][0] < 0.6


def test_hand_tracing_jitter_moves_the_stroke_off_the_surface():
    img, contour = synthetic_frame()
    still = ml.AnnotatorParams(jitter_mm=0.0, brush_mm=0.0)
    shaky = ml.AnnotatorParams(jitter_mm=0.3, brush_mm=0.0)
    a = ml.annotate(img, contour, SPACING, still, ml.frame_rng(0, "s/r", 1))
    b = ml.annotate(img, contour, SPACING, shaky, ml.frame_rng(0, "s/r", 1))
    assert np.array_equal(a, contour & a)  # no jitter, no brush: exactly on the surface
    off = label_distances.directed_distances(b, contour, SPACING)
    assert off.mean() > 0.05 and off.max() < 1.5


def test_jitter_field_has_the_requested_spread_and_is_smooth():
    rng = np.random.default_rng(0)
    rows, cols = np.full(50, 100), np.arange(50) + 100
    draws = np.array([ml.smooth_field_at(rows, cols, (25.0, 25.0), 3.0, rng) for _ in range(300)])
    assert abs(draws.mean()) < 0.3
    assert 2.6 < draws.std(axis=0).mean() < 3.2  # the requested 3 pixels at every pixel
    assert np.abs(np.diff(draws, axis=1)).mean() < 0.3  # neighbours 1/25 of a correlation length apart agree


def test_same_seed_same_label_other_frame_other_label():
    img, contour = synthetic_frame()
    p = ml.AnnotatorParams()
    a = ml.annotate(img, contour, SPACING, p, ml.frame_rng(3, "specimen02/record01", 100))
    b = ml.annotate(img, contour, SPACING, p, ml.frame_rng(3, "specimen02/record01", 100))
    c = ml.annotate(img, contour, SPACING, p, ml.frame_rng(3, "specimen02/record01", 150))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_short_stretches_are_not_marked_and_small_gaps_are_bridged():
    img, contour = synthetic_frame()
    img[119:122, 20:150] = 70
    img[119:122, 60:70] = 230  # 0.8 mm bright blip: too short to be sure of
    img[119:122, 100:130] = 230  # two stretches 2.4 mm long ...
    img[119:122, 136:166] = 230  # ... 0.48 mm apart
    p = ml.AnnotatorParams(jitter_mm=0.0, brush_mm=0.0)
    seen = ml.visible_contour(img, contour, SPACING, p)
    assert not seen[:, 55:75].any()
    assert seen[120, 100:166].all()  # the gap was traced through


def test_one_stroke_of_brush_width_whatever_the_band_thickness():
    img, contour = synthetic_frame()
    band = np.zeros_like(contour)
    band[115:126, 20:150] = True  # an 11-pixel (0.88 mm) CT band over the bright stretch
    img[115:126, 20:150] = 230
    p = ml.AnnotatorParams(jitter_mm=0.0, brush_mm=0.25)
    manual = ml.annotate(img, band, SPACING, p, ml.frame_rng(0, "x", 0))
    thickness = manual[:, 40:130].sum(axis=0)
    assert np.median(thickness) <= 4  # 0.25 mm brush at 0.08 mm per pixel: 3 pixels
    rows = np.nonzero(manual[:, 40:130])[0]
    assert 118 <= rows.min() and rows.max() <= 122  # along the middle of the band


def test_nothing_visible_gives_an_empty_label():
    img, contour = synthetic_frame()
    img[119:122, :] = 40
    manual = ml.annotate(img, contour, SPACING, ml.AnnotatorParams(), ml.frame_rng(0, "x", 0))
    assert not manual.any()


def test_bad_input_and_parameters():
    img, contour = synthetic_frame()
    with pytest.raises(DatasetError, match="differs from the contour"):
        ml.annotate(img, contour[:, :-1], SPACING, ml.AnnotatorParams(), ml.frame_rng(0, "x", 0))
    with pytest.raises(ParamsError, match="visible_quantile"):
        ml.AnnotatorParams(visible_quantile=1.5)
    with pytest.raises(ParamsError, match="jitter_mm"):
        ml.AnnotatorParams(jitter_mm=-0.1)
    section = {"annotator_jitter_mm": 0.2, "annotator_brush_mm": 0.3, "sigmas_mm": [0.5]}
    assert ml.AnnotatorParams.from_section(section).jitter_mm == 0.2


def test_annotate_frames_writes_labels_manual(tmp_path):
    img, contour = synthetic_frame()
    rec = tmp_path / "specimen02" / "record01"
    for t in (10, 20):
        write_image(rec / "UltrasoundImages" / f"{t}.png", img)
        write_label(rec / "Labels_full" / f"{t}_label.png", contour)
        write_label(rec / "Labels" / f"{t}_label.png", contour)
    frames = metrics.labelled_frames([read_specimen(tmp_path / "specimen02")])
    n = ml.annotate_frames(frames, SPACING, ml.AnnotatorParams(), seed=0, progress=False)
    assert n == 2
    m = read_label(rec / "LabelsManual" / "10_label.png", img.shape)
    assert m.any() and not m[:, 170:].any()


def test_visibility_sweep_low_intensity_completeness_falls_with_the_level(tmp_path):
    img, contour = synthetic_frame()
    rec = tmp_path / "specimen02" / "record01"
    for t in (10, 20):
        write_image(rec / "UltrasoundImages" / f"{t}.png", img)
        write_label(rec / "Labels_full" / f"{t}_label.png", contour)
        write_label(rec / "Labels" / f"{t}_label.png", contour)
    frames = metrics.labelled_frames([read_specimen(tmp_path / "specimen02")])
    levels = ({"visible_quantile": 0.0, "visible_fraction": 0.0, "visible_contrast": 0.0},
              {"visible_quantile": 0.97, "visible_fraction": 0.6})
    # the bright half (230) is high intensity, the dim half (70) low
    table = annotator.visibility_sweep(frames, SPACING, [0.25, 0.5], threshold=150.0, levels=levels)
    assert len(table) == 2 * 3 and set(table["region"]) == {"all", "high", "low"}
    at = {(r.level, r.region): r for r in table.itertuples()}
    # level 0 traces the whole contour: the dim half is found; the default rule misses it by construction
    # (but for the stroke running a brush width past the bright end)
    assert at[0, "low"].completeness > 0.9 and at[0, "all"].completeness > 0.9
    assert at[1, "low"].completeness_strict < 0.2 and at[1, "high"].completeness > 0.9
    assert 0.4 < at[1, "all"].completeness < 0.6
    assert at[0, "all"].marked_share > at[1, "all"].marked_share > 0
    assert at[0, "low"].n_frames == 2 and at[1, "all"].visible_quantile == 0.97
    # the same seeded jitter at every level: the default level equals annotate_frames' label
    same = annotator.visibility_sweep(frames, SPACING, [0.5], threshold=150.0, levels=levels[1:])
    assert same["f1"].tolist() == table[table["level"] == 1]["f1"].tolist()
    # blocks of frames on two local processes, summed in the frames' order: the same table
    pd.testing.assert_frame_equal(
        annotator.visibility_sweep(frames, SPACING, [0.25, 0.5], threshold=150.0, levels=levels, n_workers=2), table)
    import matplotlib

    matplotlib.use("Agg")
    fig = annotator.plot_sweep(table, model={"low": {"completeness": 0.8, "f1": 0.7}})
    assert len(fig.axes) == 2
    matplotlib.pyplot.close(fig)
    with pytest.raises(ParamsError, match="unknown field"):
        annotator.visibility_sweep(frames, SPACING, [0.5], 150.0, levels=[{"quantile": 0.5}])


def test_sweep_levels_from_the_profile_lists():
    assert annotator.sweep_levels([0.0, 0.97], [0.0, 0.6], [0.0, 2.0]) == [
        {"visible_quantile": 0.0, "visible_contrast": 0.0, "visible_fraction": 0.0},
        {"visible_quantile": 0.97, "visible_contrast": 2.0, "visible_fraction": 0.6}]
    with pytest.raises(ParamsError, match="equal length"):
        annotator.sweep_levels([0.0, 0.9], [0.0], [0.0, 1.0])
    with pytest.raises(ParamsError, match="equal length"):
        annotator.sweep_levels([0.0, 0.9], [0.0, 0.1], [0.0])
    with pytest.raises(ParamsError, match="equal length"):
        annotator.sweep_levels([], [], [])
    with pytest.raises(ParamsError, match="outside"):
        annotator.sweep_levels([0.0, 1.5], [0.0, 0.1], [0.0, 1.0])
    with pytest.raises(ParamsError, match="annotator_sweep_contrasts: -1.0"):
        annotator.sweep_levels([0.0, 0.5], [0.0, 0.1], [0.0, -1.0])
    # a sweep spans: the lenient level is in it, and no level repeats another
    with pytest.raises(ParamsError, match="no lenient level"):
        annotator.sweep_levels([0.5, 0.97], [0.0, 0.6], [2.0, 2.0])
    with pytest.raises(ParamsError, match="level 2 .* repeats level 1"):
        annotator.sweep_levels([0.0, 0.9, 0.9], [0.0, 0.4, 0.4], [0.0, 1.5, 1.5])
    assert annotator.is_lenient(annotator.DEFAULT_LEVELS[0])
    assert not annotator.is_lenient({"visible_quantile": 0.0, "visible_fraction": 0.0})  # contrast left at 2.0
    # every profile's sweep spans (it passes sweep_levels) and sets every level's contrast
    from ultrabones.core.params import load_profile
    from ultrabones.core.paths import PARAMS_DIR

    for name in ("default", "hard", "paper", "real", "smoke"):
        twin = load_profile(name, PARAMS_DIR).notebook_parameters("05_evaluation")["twin"]  # notebook 05's twin keys
        levels = annotator.sweep_levels(twin["annotator_sweep_quantiles"], twin["annotator_sweep_fractions"],
                                        twin["annotator_sweep_contrasts"])
        assert annotator.is_lenient(levels[0]), name
        sim = annotator.SimulatedAnnotator.from_params(TwinParams.from_section(twin), seed=1)
        assert list(sim.levels) == levels and sim.seed == 1
    with pytest.raises(ParamsError, match="twin.annotator_visible_quantile was not given"):
        annotator.SimulatedAnnotator.from_params(TwinParams(surface_samples=5000))
    # the sweep's lists are not annotator fields: from_section ignores them
    p = ml.AnnotatorParams.from_section({"annotator_visible_quantile": 0.9, "annotator_sweep_quantiles": [0.5],
                                                "annotator_sweep_fractions": [0.1], "annotator_sweep_contrasts": [1.0],
                                                "max_frames": 3})
    assert p.visible_quantile == 0.9 and annotator.LABEL == "simulated annotator (sensitivity study)"


def test_the_default_levels_differ_on_a_frame_and_the_lenient_one_marks_the_dim_bone():
    """Every pair of neighbouring default levels marks a different set of contour pixels on a frame with a
    graded echo (the first two were one rule while ``visible_contrast`` stayed at 2.0), and the lenient level
    marks the dim half of the contour that the profile's level misses."""
    img, contour = synthetic_frame()
    graded = img.copy()
    graded[119:122, 20:280] = np.linspace(20, 250, 260).astype(np.uint8)  # the echo brightens left to right
    p = ml.AnnotatorParams(gap_mm=0.0, min_length_mm=0.0)
    import dataclasses

    seen = [ml.visible_contour(graded, contour, SPACING, dataclasses.replace(p, **lv))
            for lv in annotator.DEFAULT_LEVELS]
    counts = [int(s.sum()) for s in seen]
    assert counts[0] == int(contour.sum())  # lenient: every contour pixel
    assert all(a > b for a, b in zip(counts, counts[1:])), counts  # each level stricter than the one before


def test_plot_sweep_draws_the_model_and_the_detector():
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    rows = [{"level": i, "visible_quantile": q, "visible_fraction": f, "region": r, "completeness": c, "f1": c}
            for i, (q, f, c) in enumerate(((0.5, 0.0, 0.9), (0.97, 0.6, 0.3))) for r in ("all", "high", "low")]
    refs = {"model": {"low": {"completeness": 0.8, "f1": 0.7}}, "detector": {"low": {"completeness": 0.5, "f1": 0.4}}}
    fig = annotator.plot_sweep(pd.DataFrame(rows), references=refs)
    labels = fig.axes[1].get_legend_handles_labels()[1]
    assert "model low" in labels and "detector low" in labels
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["q 0.50\nf 0.00", "q 0.97\nf 0.60"]
    matplotlib.pyplot.close(fig)
    # with each level's contrast, and the levels where the model beats the annotator starred
    rows = [{**r, "visible_contrast": 2.0 * r["level"]} for r in rows]
    fig = annotator.plot_sweep(pd.DataFrame(rows), references=refs, beats=[1])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["q 0.50\nc 0.00\nf 0.00",
                                                                      "q 0.97\nc 2.00\nf 0.60"]
    assert "model's low completeness higher" in fig.axes[0].get_legend_handles_labels()[1]
    matplotlib.pyplot.close(fig)


def test_simulated_annotator_from_the_section_labels_and_sweeps_like_the_functions(tmp_path):
    img, contour = synthetic_frame()
    rec = tmp_path / "specimen02" / "record01"
    write_image(rec / "UltrasoundImages" / "10.png", img)
    write_label(rec / "Labels" / "10_label.png", contour)
    frames = metrics.labelled_frames([read_specimen(tmp_path / "specimen02")])
    section = {"annotator_visible_quantile": 0.9, "annotator_sweep_quantiles": [0.0, 0.97],
               "annotator_sweep_fractions": [0.0, 0.6], "annotator_sweep_contrasts": [0.0, 2.0]}
    sim = annotator.SimulatedAnnotator.from_section(section, seed=3)
    assert sim.params.visible_quantile == 0.9 and sim.seed == 3 and sim.name == annotator.LABEL
    assert sim.levels == tuple(annotator.sweep_levels([0.0, 0.97], [0.0, 0.6], [0.0, 2.0]))
    assert sim.annotate(frames, SPACING, progress=False) == 1
    expected = ml.annotate(img, contour, SPACING, sim.params, ml.frame_rng(3, "specimen02/record01", 10))
    assert np.array_equal(read_label(rec / "LabelsManual" / "10_label.png", img.shape), expected)
    table = sim.sweep(frames, SPACING, [0.5], threshold=150.0, sigma_mm=0.5)
    assert list(table["visible_quantile"].unique()) == [0.0, 0.97]
    assert list(table["visible_contrast"].unique()) == [0.0, 2.0]
    with pytest.raises(ParamsError, match="equal length"):
        annotator.SimulatedAnnotator.from_section({"annotator_sweep_quantiles": [0.5], "annotator_sweep_fractions": [],
                                                   "annotator_sweep_contrasts": [0.0]})
