"""The truth-free choice of lambda and objective region (labels.select), and its wiring into labels.batch."""

import shutil

import numpy as np
import pandas as pd
import pytest

from ultrabones.core import dataset
from ultrabones.labels import batch, inputs, lambda_selection, select
from ultrabones.twin import measure
from ultrabones.twin.layout import truth_dir

from test_labeling import labeling_params, make_twin


def trials(rows):
    cols = ["region", "lambda", "timestamp", "status", "correction_mm", "n_initial", "n_optimized", "gain_first_hit"]
    return pd.DataFrame(rows, columns=cols)


def test_score_counts_discarded_frames_as_zero_and_is_not_monotone():
    t = trials([
        ("first_hit", 0.01, 1, "kept", 0.9, 100, 90, -0.02),   # over-fitted: loses on the neighbours
        ("first_hit", 0.01, 2, "discarded", 1.4, 100, 90, 0.50),  # discarded: delivers nothing
        ("first_hit", 0.1, 1, "kept", 0.4, 100, 95, 0.03),
        ("first_hit", 0.1, 2, "kept", 0.5, 100, 95, 0.01),
        ("first_hit", 1000.0, 1, "kept", 0.0, 100, 100, 0.0),
        ("first_hit", 1000.0, 2, "kept", 0.0, 100, 100, 0.0),
    ])
    table = select.score_table(t, rule="temporal").set_index("lambda")
    assert table.loc[0.01, "score"] == pytest.approx(-0.01)
    assert table.loc[0.01, "discard_rate"] == pytest.approx(0.5)
    assert table.loc[0.1, "score"] == pytest.approx(0.02)
    assert table.loc[1000.0, "score"] == 0.0
    lam, region, full = select.choose(table.reset_index())
    assert (lam, region) == (0.1, "first_hit")
    assert full["chosen"].sum() == 1


def test_score_revalidates_with_other_limits():
    t = trials([("full", 0.1, 1, "kept", 0.4, 100, 40, 0.05), ("full", 0.1, 2, "kept", 0.4, 100, 90, 0.01)])
    assert select.score_table(t, min_label_fraction=0.5, rule="temporal")["score"].iloc[0] == pytest.approx(0.005)
    assert select.score_table(t, max_correction_mm=0.3, rule="temporal")["score"].iloc[0] == 0.0


def test_split_score_needs_the_half_fits_validated():
    t = trials([("first_hit", 0.1, 1, "kept", 0.4, 100, 90, 0.0), ("first_hit", 0.1, 2, "kept", 0.4, 100, 90, 0.0),
                ("first_hit", 0.1, 3, "discarded", 1.2, 100, 90, 0.0)])
    t["split_gain_first_hit"] = [0.10, 0.30, 0.50]
    t["split_kept"] = [True, False, True]
    assert select.score_table(t)["score"].iloc[0] == pytest.approx(0.10 / 3)
    with pytest.raises(ValueError, match="rule"):
        select.score_table(t, rule="oracle")


def test_column_objective_sees_only_its_columns():
    img = np.zeros((40, 60), np.uint8)
    img[:, :30] = 255
    halves = select.split_columns(np.ones((40, 60), bool))
    assert halves is not None and halves[0].sum() == 30 and not (halves[0] & halves[1]).any()
    assert select.split_columns(np.zeros((40, 60), bool)) is None
    # a flat 'bone' plane through the image: the left half is bright, the right dark
    from test_labeling import SHAPE, SPACING, bone_mesh, frame_pose
    from ultrabones.core import geometry
    from ultrabones.labels import cloud
    pts, _ = cloud.surface_points(bone_mesh(), 4.0, seed=0)
    img = np.zeros(SHAPE, np.uint8)
    img[:, : SHAPE[1] // 2] = 200
    left = np.arange(SHAPE[1]) < SHAPE[1] // 2
    calib = geometry.released_calibration()
    a = select.ColumnObjective(img, frame_pose(), calib, SPACING, pts, columns=left)
    b = select.ColumnObjective(img, frame_pose(), calib, SPACING, pts, columns=~left)
    ma, na = a.intensity(np.zeros(6))
    mb, nb = b.intensity(np.zeros(6))
    assert na[0] > 0 and nb[0] > 0
    assert ma[0] == pytest.approx(200 / 255) and mb[0] == 0.0


def test_choose_breaks_ties_towards_the_smaller_correction():
    table = pd.DataFrame({"region": ["full", "first_hit", "first_hit"], "lambda": [1.0, 1.0, 10.0],
                          "score": [0.0, 0.0, 0.0]})
    lam, region, _ = select.choose(table)
    assert (lam, region) == (10.0, "first_hit")
    with pytest.raises(ValueError, match="empty"):
        select.choose(table.iloc[:0])


def test_sample_frames_needs_a_neighbour():
    finite = [np.array([True, True, True, False, True])]
    pick = select.sample_frames([5], [[0, 1, 2, 3, 4]], finite, 10, 2, seed=0)
    assert all(len(nb) >= 1 for _, _, nb in pick)
    assert (0, 1, [3]) not in pick  # row 3 has no pose
    assert {r for _, r, _ in pick} == {0, 2, 4}


def test_selection_ignores_the_truth(tmp_path):
    """The choice (lambda, region) and the labels are the same with the twin's truth folder removed."""
    P = labeling_params(objective_region="auto", lambdas=[0.01, 1.0, 1000.0], lambda_frames=2,
                        selection_offset_frames=1, max_frames_per_record=3, frame_stride=2)
    a = make_twin(tmp_path / "a", n_frames=5)
    b = make_twin(tmp_path / "b", n_frames=5)
    shutil.rmtree(truth_dir(b))
    out_a = batch.run(a, P, seed=0)
    out_b = batch.run(b, P, seed=0)
    assert out_a.lam == out_b.lam
    assert out_a.objective_region == out_b.objective_region in select.REGIONS
    sa, sb = out_a.selection, out_b.selection
    pd.testing.assert_frame_equal(sb["table"], sa["table"])
    # the truth only measures, afterwards: the oracle and its gap exist on the twin with truth
    settings = {"gamma_mm": P.gamma_mm, "label_density_per_mm2": P.label_density_per_mm2, "label_cloud_seed": 1}
    oa, ob = measure.lambda_oracle(a, sa, settings), measure.lambda_oracle(b, sb, settings)
    assert ob == {} and np.isfinite(oa["oracle_gap_mm"]) and oa["oracle_gap_mm"] >= -1e-12
    assert (oa["oracle_region"], oa["oracle"]) in set(zip(sa["table"]["region"], sa["table"]["lambda"]))
    m = batch.selection_metrics(sa, oa)
    assert m["chosen"] == out_a.lam and m["by"].startswith("truth-free") and "trials" not in m
    rec_a = dataset.read_specimen(a.dataset / "specimen01", a.derived / "specimen01").records[0]
    rec_b = dataset.read_specimen(b.dataset / "specimen01", b.derived / "specimen01").records[0]
    files = sorted(p.name for p in rec_a.label_dir(dataset.LABELS_FULL).glob("*.png"))
    assert files and files == sorted(p.name for p in rec_b.label_dir(dataset.LABELS_FULL).glob("*.png"))
    for name in files:
        assert (rec_a.label_dir(dataset.LABELS_FULL) / name).read_bytes() == \
            (rec_b.label_dir(dataset.LABELS_FULL) / name).read_bytes()


def test_oracle_of_known_answer():
    """Two candidates on three frames: the oracle, the gap and the improved share by hand."""
    rows = []
    for ts, init, a, b, kept_a in [(1, 1.0, 0.5, 0.4, True), (2, 1.0, 1.5, 0.6, True), (3, 2.0, 2.0, 0.8, False)]:
        rows += [{"specimen": "s", "record": "r", "timestamp": ts, "region": "first_hit", "lambda": 0.1,
                  "kept": kept_a, "true_contour_mm": a, "true_contour_initial_mm": init},
                 {"specimen": "s", "record": "r", "timestamp": ts, "region": "full", "lambda": 0.01,
                  "kept": True, "true_contour_mm": b, "true_contour_initial_mm": init}]
    out = measure.oracle_of(pd.DataFrame(rows), 0.1, "first_hit")
    assert (out["oracle"], out["oracle_region"]) == (0.01, "full")
    assert out["chosen_contour_mm"] == pytest.approx(4.0 / 3) and out["oracle_contour_mm"] == pytest.approx(0.6)
    assert out["oracle_gap_mm"] == pytest.approx(4.0 / 3 - 0.6)
    assert out["true_contour_initial_mm"] == pytest.approx(4.0 / 3)
    assert out["chosen_improved_share"] == pytest.approx(0.5)  # kept frames 1 (better) and 2 (worse)
    assert out["n_frames"] == 3 and np.isfinite(out["gap_se_mm"])
    assert measure.oracle_of(pd.DataFrame(rows[:0]), 0.1, "first_hit") == {}


def test_heldout_fits_avoid_the_selection_frames(tmp_path):
    """The held-out oracle's frames are not the selection's, and each is fitted on the whole frame only."""
    P = labeling_params(objective_region="auto", lambdas=[0.01, 1.0], lambda_frames=2, frame_stride=1)
    twin = make_twin(tmp_path / "a", n_frames=8)
    specs, _ = dataset.scan(twin.dataset)
    tasks = lambda_selection.heldout_fit_tasks(twin, P, seed=0, n_frames=4)
    calib, spacing, _ = dataset.read_calibration(twin.dataset)
    base = {"calib": calib.tolist(), "spacing": list(spacing), "params": P, "seed": 0}
    records = inputs.records_to_label(specs, {s.name: P for s in specs})
    seen = {t["timestamp"] for t in lambda_selection._selection_tasks(P, records, {s.name: "" for s in specs}, base, 0)}
    assert 1 <= len(tasks) <= 4 and seen
    assert not seen & {t["timestamp"] for t in tasks}
    assert all(t["split"] is False and t["neighbours"] == [] for t in tasks)


def _paired_trials(gains_a, gains_b, gains_c=None):
    """Split-rule trials of candidates a (lambda 0.1, first_hit), b (lambda 1, full) and c (lambda 10, first_hit)
    on the same frames, every fit kept."""
    rows = []
    for lam, reg, g in ((0.1, "first_hit", gains_a), (1.0, "full", gains_b), (10.0, "first_hit", gains_c)):
        for k, v in enumerate(g or []):
            rows.append({"region": reg, "lambda": lam, "specimen": "s", "record": "r", "timestamp": k,
                         "status": "kept", "correction_mm": 0.3, "n_initial": 100, "n_optimized": 100,
                         "split_kept": True, "split_gain_first_hit": v})
    return pd.DataFrame(rows)


def test_separation_is_the_paired_margin_against_its_standard_error():
    a = [0.05, 0.06, 0.07, 0.08]
    b = [0.01, 0.03, 0.02, 0.02]  # differences 0.04, 0.03, 0.05, 0.06: mean 0.045, sd 0.012910, se 0.006455
    t = _paired_trials(a, b)
    lam, region, table = select.choose(select.score_table(t))
    assert (lam, region) == (0.1, "first_hit")
    sep = select.separation(t, table)
    d = np.subtract(a, b)
    assert sep["margin"] == pytest.approx(0.045) and sep["margin_se"] == pytest.approx(d.std(ddof=1) / 2)
    assert sep["runner_up_lambda"] == 1.0 and sep["runner_up_region"] == "full"
    assert sep["n_frames"] == 4 and sep["separable"]


def test_inseparable_candidates_fall_back_to_the_one_se_default():
    a = [0.05, -0.02, 0.09, 0.00]  # best mean 0.03
    b = [0.00, 0.04, 0.01, 0.03]   # 0.02: differences 0.05, -0.06, 0.08, -0.03 -> margin 0.01, se 0.0324
    c = [0.02, 0.02, 0.02, 0.02]   # 0.02, lambda 10: the largest lambda within one se of the best
    t = _paired_trials(a, b, c)
    lam, region, table = select.choose(select.score_table(t))
    assert lam == 0.1
    sep = select.separation(t, table)
    assert sep["margin"] == pytest.approx(0.01) and not sep["separable"]
    assert select.one_se_choice(table, sep["margin_se"], "first_hit") == (10.0, "first_hit")
    # a single frame cannot be separated (no standard error)
    one = _paired_trials(a[:1], b[:1])
    _, _, t1 = select.choose(select.score_table(one))
    assert not select.separation(one, t1)["separable"]
