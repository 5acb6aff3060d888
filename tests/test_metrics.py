"""Known-answer and bad-input tests of the label scores: Eqs. 3-6 and the border metrics of one image
(ultrabones.core.label_distances, ultrabones.core.distance_scores), the Otsu split and the means over frames
(ultrabones.evaluation.metrics), the figures and the comparison with the paper."""

from __future__ import annotations

import numpy as np
import pytest

from ultrabones.core import distance_scores, label_distances, paper
from ultrabones.evaluation import comparison, figures, metrics
from ultrabones.core.dataset import write_image, write_label
from ultrabones.core.errors import DatasetError, ParamsError

SIGMAS = np.round(np.arange(0, 2.01, 0.1), 1)


def line(shape=(40, 60), row=20, cols=slice(5, 55)):
    m = np.zeros(shape, bool)
    m[row, cols] = True
    return m


# ----------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("s", [0.05392, 0.1, 0.37])
def test_one_pixel_shift_is_wrong_below_spacing_and_right_above(s):
    gt = line(row=20)
    pred = line(row=21)  # one row deeper: every pixel exactly s mm from the label
    sig = np.array([0.0, 0.5 * s, 0.999 * s, s, 1.001 * s, 2 * s])
    m = distance_scores.distance_metrics(pred, gt, (s, s), sig)
    # strict "<": at sigma = s the shifted pixels are not yet correct
    np.testing.assert_array_equal(m["accuracy"], [0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(m["completeness"], [0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(m["f1"], [0, 0, 0, 0, 1, 1])


def test_exact_ties_on_the_lattice_are_not_below_the_threshold():
    gt = line(row=20)
    for k in range(1, 8):  # k rows of 0.1 mm at exactly k * 0.1 mm, however the product rounds
        m = distance_scores.distance_metrics(line(row=20 + k), gt, (0.1, 0.1), SIGMAS)
        np.testing.assert_array_equal(m["accuracy"], (SIGMAS > k * 0.1 + 1e-6).astype(float), err_msg=str(k))


def test_identical_masks_score_one_for_every_positive_sigma():
    rng = np.random.default_rng(1)
    gt = rng.random((50, 70)) < 0.05
    m = distance_scores.distance_metrics(gt, gt.copy(), (0.07, 0.05), SIGMAS)
    for k in distance_scores.SCORES:
        np.testing.assert_array_equal(m[k][1:], 1.0)
        assert m[k][0] == 0.0  # d = 0 is not < 0: the strict definition, as in the released code


def test_swapping_prediction_and_label_swaps_accuracy_and_completeness():
    rng = np.random.default_rng(2)
    a = rng.random((64, 64)) < 0.03
    b = np.roll(a, 2, axis=0) | (rng.random((64, 64)) < 0.01)
    ab = distance_scores.distance_metrics(a, b, (0.06, 0.08), SIGMAS)
    ba = distance_scores.distance_metrics(b, a, (0.06, 0.08), SIGMAS)
    np.testing.assert_array_equal(ab["accuracy"], ba["completeness"])
    np.testing.assert_array_equal(ab["completeness"], ba["accuracy"])
    np.testing.assert_array_equal(ab["f1"], ba["f1"])
    assert not np.array_equal(ab["accuracy"], ab["completeness"])  # the test means something


def test_anisotropic_spacing_uses_row_and_column_steps():
    sx, sy = 0.1, 0.3  # mm per column, mm per row
    gt = line(row=20)
    down = distance_scores.distance_metrics(line(row=21), gt, (sx, sy), [0.25, 0.35])
    assert list(down["accuracy"]) == [0.0, 1.0]  # a row step is 0.3 mm
    col = np.zeros((40, 60), bool)
    col[5:35, 30] = True
    right = distance_scores.distance_metrics(np.roll(col, 1, axis=1), col, (sx, sy), [0.05, 0.15])
    assert list(right["accuracy"]) == [0.0, 1.0]  # a column step is 0.1 mm
    d = label_distances.directed_distances(line(row=22)[:, :], gt, (sx, sy))
    np.testing.assert_allclose(d, 0.6)


def test_partial_prediction_known_counts():
    gt = line(cols=slice(0, 40))  # 40 pixels
    pred = line(cols=slice(0, 10)) | line(row=5, cols=slice(0, 10))  # 10 on the label, 10 far away
    m = distance_scores.distance_metrics(pred, gt, (0.1, 0.1), [0.05])
    assert m["accuracy"][0] == pytest.approx(0.5)
    assert m["completeness"][0] == pytest.approx(0.25)
    assert m["f1"][0] == pytest.approx(2 * 0.5 * 0.25 / 0.75)


def test_agrees_with_brute_force_on_random_masks():
    rng = np.random.default_rng(3)
    for trial in range(6):
        shape = tuple(rng.integers(20, 90, 2))
        p = rng.random(shape) < rng.uniform(0.005, 0.1)
        g = rng.random(shape) < rng.uniform(0.005, 0.1)
        spacing = tuple(rng.uniform(0.03, 0.2, 2))
        fast = distance_scores.distance_metrics(p, g, spacing, SIGMAS)
        slow = distance_scores.brute_force_metrics(p, g, spacing, SIGMAS)
        for k in distance_scores.SCORES:
            np.testing.assert_allclose(fast[k], slow[k], atol=1e-12, err_msg=f"trial {trial} {k}")
        np.testing.assert_allclose(
            np.sort(label_distances.directed_distances(p, g, spacing)),
            np.sort(slow_directed(p, g, spacing)), rtol=1e-12)


def slow_directed(a, b, spacing):
    sx, sy = spacing
    pa, pb = np.argwhere(a) * [sy, sx], np.argwhere(b) * [sy, sx]
    return np.sqrt(((pa[:, None] - pb[None]) ** 2).sum(-1)).min(1)


def test_empty_masks_follow_the_two_protocols():
    gt, empty = line(), np.zeros((40, 60), bool)
    strict = distance_scores.distance_metrics(empty, gt, (0.1, 0.1), [0.5])
    assert (strict["accuracy"][0], strict["completeness"][0], strict["f1"][0]) == (1.0, 0.0, 0.0)
    both = distance_scores.distance_metrics(empty, empty, (0.1, 0.1), [0.5])
    assert (both["accuracy"][0], both["completeness"][0], both["f1"][0]) == (1.0, 1.0, 1.0)
    fp = distance_scores.distance_metrics(gt, empty, (0.1, 0.1), [0.5])
    assert (fp["accuracy"][0], fp["completeness"][0], fp["f1"][0]) == (0.0, 1.0, 0.0)
    rel = distance_scores.distance_metrics(empty, gt, (0.1, 0.1), [0.5], protocol="released")
    assert np.isnan(rel["f1"][0])


def test_border_metrics_known_answers():
    gt = line(row=20)
    same = distance_scores.border_metrics(gt, gt, (0.1, 0.2))
    assert same == {"dice": 1.0, "hd95_mm": 0.0, "assd_mm": 0.0}
    shifted = distance_scores.border_metrics(line(row=23), gt, (0.1, 0.2))
    assert shifted["dice"] == 0.0
    assert shifted["hd95_mm"] == pytest.approx(0.6)
    assert shifted["assd_mm"] == pytest.approx(0.6)
    assert np.isnan(distance_scores.border_metrics(np.zeros_like(gt), gt, (0.1, 0.1))["hd95_mm"])


# ----------------------------------------------------------------------------- Otsu split


def test_otsu_on_bimodal_sample_lands_between_the_modes():
    rng = np.random.default_rng(4)
    vals = np.concatenate([rng.normal(60, 8, 5000), rng.normal(190, 10, 3000)])
    img = np.clip(vals, 0, 255).astype(np.uint8).reshape(80, 100)
    hist = metrics.intensity_histogram(img, np.ones(img.shape, bool))
    assert hist.sum() == img.size
    t = metrics.otsu_threshold(hist)
    assert 60 + 2 * 8 < t < 190 - 2 * 10  # between the modes, clear of both
    classes = metrics.intensity_classes(img, t)
    assert classes["high"].sum() == pytest.approx(3000, abs=30)


def _gaussian_hist(modes, weight, sd=20.0):
    """A 256-bin histogram of Gaussian modes (counts, rounded; wide enough that no bin between the modes is
    empty, so the maximum of Otsu's criterion is one grey level, not a plateau): no random draws."""
    g = np.arange(256)
    return np.rint(sum(w * np.exp(-0.5 * ((g - m) / sd) ** 2) for m, w in zip(modes, weight))).astype(np.int64)


def _otsu_by_definition(hist):
    """Otsu (1979) written out: the t (grey level) maximising the between-class variance of {I <= t} and {I > t}."""
    g, h = np.arange(256, dtype=float), hist.astype(float)
    best, best_t = -1.0, None
    for t in range(255):
        w0, w1 = h[: t + 1].sum(), h[t + 1:].sum()
        if w0 == 0 or w1 == 0:
            continue
        m0, m1 = (g[: t + 1] * h[: t + 1]).sum() / w0, (g[t + 1:] * h[t + 1:]).sum() / w1
        v = w0 * w1 * (m0 - m1) ** 2
        if v > best:
            best, best_t = v, t
    return best_t


def test_otsu_threshold_known_answers():
    """Otsu's threshold to the grey level: the midpoint of a symmetric two-mode histogram, and Otsu's definition
    written out on an unbalanced one. A split moved by even a few grey levels fails (the mutation check of
    issue 24: +10 grey levels)."""
    sym = _gaussian_hist((70, 170), (1000, 1000))
    assert metrics.otsu_threshold(sym) == 120.0  # symmetric about 120: the split is there
    for modes, weight in (((50, 140), (3000, 800)), ((90, 200), (500, 2500)), ((30, 110, 220), (900, 600, 300))):
        hist = _gaussian_hist(modes, weight)
        assert metrics.otsu_threshold(hist) == _otsu_by_definition(hist), (modes, weight)


def test_intensity_classes_split_at_the_threshold_exactly():
    """Every grey value once: ``high`` is exactly the values above t (t itself is low)."""
    img = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for t in (0, 99, 120, 254):
        c = metrics.intensity_classes(img, t)
        assert c["high"].sum() == 255 - t and c["low"].sum() == t + 1 and c["all"].all()
        assert not c["high"][img == t].any() and c["high"][img == t + 1].all()


def test_otsu_of_empty_histogram_is_a_clear_error():
    with pytest.raises(DatasetError, match="no label pixels"):
        metrics.otsu_threshold(np.zeros(256, np.int64))


def test_frame_scores_split_high_and_low_regions():
    img = np.full((40, 60), 30, np.uint8)
    img[:, :30] = 200  # left half bright
    gt = line(row=20, cols=slice(0, 60))
    pred = line(row=20, cols=slice(0, 30))  # finds only the bright half
    sc = metrics.frame_scores(pred, gt, img, (0.1, 0.1), np.array([0.05]), threshold=100)
    assert sc["high"].completeness[0] == 1.0 and sc["high"].accuracy[0] == 1.0
    assert sc["low"].completeness[0] == 0.0 and not sc["low"].defined
    assert sc["all"].completeness[0] == pytest.approx(0.5)
    agg = metrics.Aggregate(np.array([0.05]))
    agg.add(sc)
    at = agg.at(0.05)
    assert at["released"]["low"]["n_frames"] == 0 and np.isnan(at["released"]["low"]["f1"])
    assert at["strict"]["low"]["completeness"] == 0.0 and at["strict"]["low"]["n_frames"] == 1


def test_shared_label_distance_transform_gives_the_same_scores():
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (60, 80)).astype(np.uint8)
    gt = rng.random((60, 80)) < 0.05
    preds = {"a": rng.random((60, 80)) < 0.03, "b": np.roll(gt, 1, 0), "empty": np.zeros((60, 80), bool)}
    many = metrics.frame_scores_many(preds, gt, img, (0.07, 0.05), SIGMAS, 120)
    for name, p in preds.items():
        for region, c in metrics.intensity_classes(img, 120).items():
            ref = distance_scores.brute_force_metrics(p & c, gt & c, (0.07, 0.05), SIGMAS)
            for k in distance_scores.SCORES:
                np.testing.assert_allclose(getattr(many[name][region], k), ref[k], atol=1e-12,
                                           err_msg=f"{name} {region} {k}")


def test_aggregate_averages_per_frame_f1():
    sig = np.array([0.5])
    agg = metrics.Aggregate(sig)
    img = np.full((40, 60), 200, np.uint8)
    gt = line()
    agg.add(metrics.frame_scores(gt, gt, img, (0.1, 0.1), sig, 100))  # perfect
    agg.add(metrics.frame_scores(np.zeros_like(gt), gt, img, (0.1, 0.1), sig, 100))  # missed
    at = agg.at(0.5)
    assert at["released"]["all"] == {"accuracy": 1.0, "completeness": 1.0, "f1": 1.0, "n_frames": 1}
    assert at["strict"]["all"] == {"accuracy": 1.0, "completeness": 0.5, "f1": 0.5, "n_frames": 2}
    with pytest.raises(ParamsError, match="not one of the evaluated"):
        agg.at(0.3)


def test_evaluate_on_a_tiny_dataset(tmp_path):
    from ultrabones.core.dataset import read_specimen

    rec = tmp_path / "specimen02" / "record01"
    img = np.full((30, 40), 40, np.uint8)
    img[10, :20] = 220
    gt = np.zeros((30, 40), bool)
    gt[10, :] = True
    for t in (100, 200):
        write_image(rec / "UltrasoundImages" / f"{t}.png", img)
        write_label(rec / "Labels" / f"{t}_label.png", gt)
        write_label(rec / "Labels_pred" / f"{t}_label_pred.png", gt)
        write_label(rec / "LabelsManual" / f"{t}_label.png", gt & (img > 128))
    spec = read_specimen(tmp_path / "specimen02")
    frames = metrics.labelled_frames([spec], ("Labels", "LabelsManual"))
    assert [f.timestamp for f in frames] == [100, 200]
    hist = metrics.label_histograms(frames, {"gt": metrics.dataset_label("Labels")}, progress=False)["gt"]
    t = metrics.otsu_threshold(hist)
    assert 40 <= t < 220
    res = metrics.evaluate(frames, metrics.dataset_label("Labels"),
                           {"model": metrics.dataset_label("Labels_pred"),
                            "manual": metrics.dataset_label("LabelsManual")},
                           (0.1, 0.1), SIGMAS, t, progress=False)
    s = metrics.summarise(res, 0.5)
    assert s["at"]["released"]["model"]["all"]["f1"] == 1.0
    assert s["at"]["released"]["manual"]["low"]["n_frames"] == 0  # manual has no low pixel
    assert s["at"]["strict"]["manual"]["low"]["completeness"] == 0.0
    # manual marks columns 0..19 of 40; columns 20..23 lie within 0.4 mm < 0.5 mm of it
    assert s["at"]["strict"]["manual"]["all"]["completeness"] == pytest.approx(24 / 40)
    assert s["border"]["model"]["dice"] == 1.0
    # the frames scored in blocks on two local processes, summed in order: the same result
    par = metrics.evaluate(frames, metrics.dataset_label("Labels"),
                           {"model": metrics.dataset_label("Labels_pred"),
                            "manual": metrics.dataset_label("LabelsManual")},
                           (0.1, 0.1), SIGMAS, t, progress=False, n_workers=2)
    np.testing.assert_equal(metrics.summarise(par, 0.5), s)  # nested dicts and arrays, nan == nan
    assert np.array_equal(par["gt_counts"], res["gt_counts"])
    assert all(np.array_equal(par["per_frame"][m], res["per_frame"][m]) for m in res["per_frame"])


# ----------------------------------------------------------------------------- bad input


def test_masks_of_different_sizes_stop_with_a_clear_message():
    with pytest.raises(DatasetError, match=r"prediction size 60x40 \(W x H\) differs from the label's 61x40"):
        distance_scores.distance_metrics(np.zeros((40, 60), bool), np.zeros((40, 61), bool), (0.1, 0.1), [0.5])


@pytest.mark.parametrize("bad,msg", [
    ([0.0, 0.5, 0.5], r"sigmas\[2\] = 0.5 mm does not increase"),
    ([1.0, 0.5], r"sigmas\[1\] = 0.5 mm does not increase \(previous 1 mm\)"),
    ([], "non-empty"),
    ([0.1, float("nan")], r"sigmas\[1\] = nan"),
    ([-0.1, 0.2], r"sigmas\[0\] = -0.1"),
])
def test_thresholds_that_do_not_increase_stop_with_a_clear_message(bad, msg):
    with pytest.raises(ParamsError, match=msg):
        distance_scores.distance_metrics(line(), line(), (0.1, 0.1), bad)


def test_bad_spacing_and_protocol():
    with pytest.raises(ParamsError, match="spacing"):
        distance_scores.distance_metrics(line(), line(), (0.1, -1.0), [0.5])
    with pytest.raises(ParamsError, match="protocol"):
        distance_scores.distance_metrics(line(), line(), (0.1, 0.1), [0.5], protocol="lenient")


def test_examples_favour_frames_with_low_intensity_bone_and_table_rows():
    counts = np.array([[10, 0], [5, 40], [0, 0], [8, 25], [3, 90], [9, 1]])
    picks = figures.pick_examples(counts, 2)
    assert len(picks) == 2 and 2 not in picks and 4 in picks
    assert figures.pick_examples(np.zeros((3, 2)), 2) == []
    cell = {"accuracy": 0.5, "completeness": 0.25, "f1": 1 / 3, "n_frames": 4}
    at = {p: {m: {r: cell for r in metrics.REGIONS} for m in ("model", "manual")} for p in distance_scores.PROTOCOLS}
    table = comparison.table_at(at)
    assert len(table) == 6 and table.loc[0, "accuracy_paper"] == paper.PUBLISHED["model_all_accuracy"].value == 0.900
    assert table.loc[5, "completeness_paper"] == paper.PUBLISHED["manual_low_completeness"].value
    assert np.isnan(table.loc[3, "f1_paper"])


def _at(model_low, manual_low, manual_low_frames=3):
    def cell(c, n):
        return {"accuracy": 0.5, "completeness": c, "f1": 0.5, "n_frames": n}

    return {p: {"model": {r: cell(model_low[p] if r == "low" else 0.9, 3) for r in metrics.REGIONS},
                "manual": {r: cell(manual_low[p] if r == "low" else 0.9, manual_low_frames if r == "low" else 3)
                           for r in metrics.REGIONS}} for p in distance_scores.PROTOCOLS}


def test_model_vs_manual_uses_the_strict_protocol_when_a_method_has_no_low_frame():
    v = comparison.model_vs_manual(_at({"released": 0.8, "strict": 0.7}, {"released": 0.2, "strict": 0.1}))
    assert v == {"beats": True, "protocol": "released", "model": 0.8, "manual": 0.2}
    v = comparison.model_vs_manual(_at({"released": 0.3, "strict": 0.3}, {"released": 0.9, "strict": 0.0}, 0))
    assert v["protocol"] == "strict" and v["beats"] is True and v["manual"] == 0.0


def test_check_summary_and_table_with_sweep():
    import pandas as pd

    curves = {"released": {"model": {r: {"accuracy": [0.1, 0.5], "completeness": [0.2, 0.6], "f1": [0.1, 0.5],
                                         "n_frames": 2} for r in metrics.REGIONS}}}
    metrics.check_summary({"curves": curves})
    curves["released"]["model"]["low"]["f1"] = [0.5, 0.4]
    with pytest.raises(AssertionError, match="released/model/low/f1 decreases"):
        metrics.check_summary({"curves": curves})
    curves["released"]["model"]["low"]["f1"] = [0.5, 1.4]
    with pytest.raises(AssertionError, match="outside"):
        metrics.check_summary({"curves": curves})
    at = _at({"released": 0.8, "strict": 0.7}, {"released": 0.2, "strict": 0.1})
    table = comparison.table_at(at)
    sweep = pd.DataFrame([{"level": 0, "visible_quantile": 0.5, "visible_fraction": 0.0, "region": r,
                           "accuracy": 0.4, "completeness": 0.3, "f1": 0.35, "accuracy_strict": 0.4,
                           "completeness_strict": 0.3, "f1_strict": 0.35, "n_frames": 4, "marked_share": 1.0}
                          for r in metrics.REGIONS])
    t = comparison.table_with_sweep(table, sweep, "sim")
    assert len(t) == len(table) + 3 and list(t.columns) == list(table.columns)
    last = t.iloc[-1]
    assert last["method"] == "sim q 0.50 f 0.00" and last["region"] == "low" and last["f1"] == 0.35
    assert np.isnan(last["f1_paper"]) and last["n_frames"] == 4
    assert comparison.table_with_sweep(table, None) is table
    sweep["visible_contrast"] = 1.5  # a sweep that sets each level's contrast names it too
    assert comparison.table_with_sweep(table, sweep, "sim").iloc[-1]["method"] == "sim q 0.50 c 1.50 f 0.00"


def test_model_vs_levels_states_the_claim_at_every_level():
    """The model's low-intensity completeness (released 0.8, strict 0.7) against three annotator levels: it beats
    the strict level (0.2) and not the lenient one (0.95); a level with no released low-intensity frame is
    compared on the strict protocol (0.75 there: not beaten)."""
    at = _at({"released": 0.8, "strict": 0.7}, {"released": 0.2, "strict": 0.1})

    def rows(level, q, c, f, released, strict, n_low):
        return [{"level": level, "visible_quantile": q, "visible_contrast": c, "visible_fraction": f, "region": r,
                 "completeness": released if r == "low" else 0.9, "completeness_strict": strict if r == "low" else 0.9,
                 "n_frames": n_low if r == "low" else 3} for r in metrics.REGIONS]

    sweep = rows(2, 0.97, 2.0, 0.6, 0.2, 0.1, 3) + rows(0, 0.0, 0.0, 0.0, 0.95, 0.9, 3) + rows(1, 0.5, 1.0, 0.0,
                                                                                                 0.0, 0.75, 0)
    got = comparison.model_vs_levels(at, sweep)
    assert [g["level"] for g in got] == [0, 1, 2]
    assert [g["beats"] for g in got] == [False, False, True]
    assert [g["protocol"] for g in got] == ["released", "strict", "released"]
    assert [g["annotator"] for g in got] == [0.95, 0.75, 0.2] and [g["model"] for g in got] == [0.8, 0.7, 0.8]
    assert got[2]["visible_contrast"] == 2.0 and comparison.level_name(got[2]) == "q 0.97 c 2.00 f 0.60"
    assert comparison.model_vs_levels(at, []) == []
