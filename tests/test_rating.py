"""Rating study: Wilcoxon/Bonferroni against hand computations, the rubric, the set, bad ratings files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ultrabones.core import paper
from ultrabones.rating import rating_set, rating_stats
from ultrabones.rating import study as R
from ultrabones.core.label_distances import directed_distances
from ultrabones.twin import rater
from ultrabones.twin.params import TwinParams
from ultrabones.core.paths import Paths
from ultrabones.core.errors import DatasetError, ParamsError

FIXTURES = Path(__file__).parent / "fixtures"
#: The ``rating`` section of ``params/default.yaml``.
SECTION = {"frames_per_sweep": 1, "image_format": "jpeg", "jpeg_quality": 90, "overlay_alpha": 0.5,
           "zero_method": "wilcox", "wilcoxon_method": "auto", "alpha": 0.001, "ratings_csv": None, "ratings_key": None}
#: The rater model's keys of the ``twin`` section of ``params/default.yaml`` (notebook 03's ``twin`` parameter).
TWIN = {"rubric_large_share": 0.25, "rubric_some_share": 0.10, "rubric_visible_mm": 0.3, "rubric_minor_share": 0.10,
        "rater_gain_sd": 0.25, "rater_lapse": 0.05}


def _wide(d):
    """A paired table whose optimised-minus-initial differences are ``d`` (registration constant)."""
    d = np.asarray(d, dtype=float)
    base = np.full(d.size, 1.0)
    return pd.DataFrame({"initial": base, "registered": base + 1.0, "optimized": base + d})


# ----------------------------------------------------------------------------- Wilcoxon, hand computed


def test_wilcoxon_exact_matches_hand_computation():
    # d = optimised - initial: ranks of |d| are 1..7; negative ranks 1 and 4, so T- = 5, T+ = 23.
    # Exact null: T- is the sum of a random subset of {1..7} (2^7 = 128 equally likely sign patterns).
    # Subsets with sum <= 5: {}, {1}, {2}, {3}, {1,2}, {4}, {1,3}, {5}, {1,4}, {2,3} -> 10.
    # Two-sided p = 2 * 10 / 128 = 0.15625.
    res = rating_stats.wilcoxon_pairs(_wide([-1, 2, 3, -4, 5, 6, 7]), pairs=[("optimized", "initial")])
    row = res.iloc[0]
    assert row["p_method"] == "exact"
    assert row["statistic"] == 5
    assert row["p_value_raw"] == pytest.approx(20 / 128, abs=1e-12)
    # Normal approximation for the effect size: mean n(n+1)/4 = 14, variance n(n+1)(2n+1)/24 = 35.
    z = (23 - 14) / math.sqrt(35)
    assert row["z"] == pytest.approx(z, rel=1e-9)  # positive: optimised rated higher
    assert row["effect_size_r"] == pytest.approx(z / math.sqrt(7), rel=1e-9)
    assert row["n"] == 7 and row["n_nonzero"] == 7


def test_wilcoxon_asymptotic_with_ties_and_zero_matches_hand_computation():
    # d = [1, 1, 2, -1, 3, 0]; zero_method "wilcox" drops the zero: |d| = 1, 1, 2, 1, 3.
    # Mid-ranks: the three 1s share rank 2; then 4 and 5. T+ = 2 + 2 + 4 + 5 = 13, T- = 2; n = 5.
    # Mean 5*6/4 = 7.5; variance 5*6*11/24 - (3^3 - 3)/48 = 13.75 - 0.5 = 13.25 (tie correction).
    d = [1, 1, 2, -1, 3, 0]
    res = rating_stats.wilcoxon_pairs(_wide(d), zero_method="wilcox", method="asymptotic", pairs=[("optimized", "initial")])
    row = res.iloc[0]
    z = (13 - 7.5) / math.sqrt(13.25)
    assert row["statistic"] == 2
    assert row["z"] == pytest.approx(z, rel=1e-9)
    assert row["p_value_raw"] == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-9)
    assert row["n"] == 6 and row["n_nonzero"] == 5
    assert row["effect_size_r"] == pytest.approx(z / math.sqrt(6), rel=1e-9)  # n counts every rated frame


def test_wilcoxon_auto_uses_permutation_with_ties():
    # Same sample, method "auto": ties, n = 5 <= 13 -> all 2^5 sign flips of the mid-ranks (2, 2, 4, 2, 5).
    # T- <= 2 for: no negative sign (T- = 0) or one of the three rank-2 values negative -> 4 of 32.
    # Symmetric, so the two-sided p = 2 * 4 / 32 = 0.25.
    d = np.array([1, 1, 2, -1, 3, 0], dtype=float)
    assert rating_stats.resolve_wilcoxon_method(d, "wilcox", "auto") == "permutation"
    row = rating_stats.wilcoxon_pairs(_wide(d), pairs=[("optimized", "initial")]).iloc[0]
    assert row["p_method"] == "permutation"
    assert row["p_value_raw"] == pytest.approx(0.25, abs=1e-12)


def test_permutation_counts_only_non_zero_differences():
    # 40 frames, 8 non-zero differences: 2^8 sign flips (2^40 would never finish).
    d = np.r_[np.zeros(32), [1, 1, 2, 1, -1, 2, 1, 1]]
    assert rating_stats.resolve_wilcoxon_method(d, "wilcox", "auto") == "permutation"
    assert rating_stats.resolve_wilcoxon_method(d, "pratt", "auto") == "asymptotic"
    row = rating_stats.wilcoxon_pairs(_wide(d), pairs=[("optimized", "initial")]).iloc[0]
    # Mid-ranks of |d|: six 1s -> 3.5, two 2s -> 7.5; T- = 3.5 (the single -1). Sign patterns with
    # T- <= 3.5: none negative, or one rank-3.5 value negative -> 1 + 6 = 7 of 256; two-sided 14 / 256.
    assert row["p_method"] == "permutation"
    assert row["p_value_raw"] == pytest.approx(14 / 256, abs=1e-12)
    assert row["n"] == 40 and row["n_nonzero"] == 8


def test_wilcoxon_method_resolution():
    assert rating_stats.resolve_wilcoxon_method(np.arange(1, 51), "wilcox", "auto") == "exact"
    assert rating_stats.resolve_wilcoxon_method(np.arange(1, 52), "wilcox", "auto") == "asymptotic"
    assert rating_stats.resolve_wilcoxon_method(np.array([1.0] * 14), "wilcox", "auto") == "asymptotic"
    assert rating_stats.resolve_wilcoxon_method(np.array([1.0, 2.0]), "wilcox", "exact") == "exact"


def test_wilcoxon_all_equal_gives_p_one_and_bad_options():
    wide = pd.DataFrame({"initial": [2.0, 1.0], "registered": [2.0, 1.0], "optimized": [2.0, 1.0]})
    res = rating_stats.wilcoxon_pairs(wide)
    assert (res["p_value_raw"] == 1.0).all() and (res["effect_size_r"] == 0).all()
    with pytest.raises(ParamsError, match="zero_method: 'nope'"):
        rating_stats.wilcoxon_pairs(wide, zero_method="nope")
    with pytest.raises(ParamsError, match="wilcoxon_method: 'approx'"):
        rating_stats.wilcoxon_pairs(wide, method="approx")


def test_bonferroni_on_known_list():
    assert rating_stats.bonferroni([0.01, 0.02, 0.5]) == pytest.approx([0.03, 0.06, 1.0])
    assert rating_stats.bonferroni([0.0001, 0.4]) == pytest.approx([0.0002, 0.8])


def test_three_pairs_are_adjusted_together():
    rng = np.random.default_rng(1)
    wide = pd.DataFrame({m: rng.integers(0, 4, 30).astype(float) for m in rating_set.METHODS})
    res = rating_stats.wilcoxon_pairs(wide)
    assert list(res["pair"]) == ["optimized_vs_initial", "optimized_vs_registration", "initial_vs_registration"]
    assert res["p_value_bonferroni"].to_numpy() == pytest.approx(np.minimum(1, 3 * res["p_value_raw"].to_numpy()))


# ----------------------------------------------------------------------------- rubric and rater model


def _shares(d, visible=0.3):
    d = np.asarray(d, dtype=float)
    return np.mean(d > 3), np.mean(d > 1), np.mean(d > visible)


@pytest.mark.parametrize(
    "distances, expected",
    [
        (np.full(100, 5.0), 0),                                   # everything off by 5 mm
        (np.r_[np.full(30, 4.0), np.full(70, 0.1)], 0),           # 30% over 3 mm: large sections
        (np.r_[np.full(20, 4.0), np.full(80, 0.1)], 1),           # 20% over 3 mm: some sections over 1 mm
        (np.full(100, 2.0), 1),                                   # all 1-3 mm
        (np.r_[np.full(15, 1.5), np.full(85, 0.1)], 1),           # 15% of 1-3 mm
        (np.r_[np.full(5, 2.0), np.full(95, 0.5)], 2),            # a few 1-3 mm, rest under 1 mm but visible
        (np.full(100, 0.6), 2),                                   # minor errors below 1 mm
        (np.r_[np.full(5, 0.6), np.full(95, 0.05)], 3),           # 5% barely visible: no visible error
        (np.zeros(100), 3),                                       # perfect
    ],
)
def test_rubric_on_hand_made_profiles(distances, expected):
    rubric = rater.Rubric(large_share=0.25, some_share=0.10, visible_mm=0.3, minor_share=0.10)
    assert rater.rubric_rating(*_shares(distances), rubric) == expected
    # The rater model without noise is the rubric itself.
    assert rater.simulate_ratings([distances], rubric, gain_sd=0.0, lapse=0.0, seed=0)[0] == expected


def test_empty_label_is_rated_zero():
    rubric = rater.Rubric()
    assert rater.rubric_rating(np.nan, np.nan, np.nan, rubric) == 0
    assert rater.simulate_ratings([np.zeros(0)], rubric, 0.0, 0.0, seed=0)[0] == 0
    prof = rater.contour_shares(np.zeros(0), 0.3)
    assert prof["n_pixels"] == 0 and np.isnan(prof["over_3mm"])


def test_contour_shares_sum_to_one():
    d = np.r_[np.full(10, 4.0), np.full(30, 2.0), np.full(60, 0.2)]
    p = rater.contour_shares(d, 0.3)
    assert (p["over_3mm"], p["1_to_3mm"], p["under_1mm"]) == pytest.approx((0.1, 0.3, 0.6))
    assert p["over_visible"] == pytest.approx(0.4)


def test_rater_noise_is_seeded_and_bounded():
    rng = np.random.default_rng(0)
    dists = [rng.uniform(0, s, 200) for s in np.linspace(0.2, 6, 300)]
    a = rater.simulate_ratings(dists, rater.Rubric(), gain_sd=0.25, lapse=0.05, seed=7)
    b = rater.simulate_ratings(dists, rater.Rubric(), gain_sd=0.25, lapse=0.05, seed=7)
    clean = rater.simulate_ratings(dists, rater.Rubric(), gain_sd=0.0, lapse=0.0, seed=7)
    assert (a == b).all() and set(np.unique(a)) <= {0, 1, 2, 3}
    assert 0 < np.mean(a != clean) < 0.5  # noise changes some ratings, not most
    assert np.corrcoef(a, clean)[0, 1] > 0.8
    with pytest.raises(ParamsError, match="rater_lapse"):
        rater.simulate_ratings(dists, rater.Rubric(), 0.1, 1.5, seed=0)


def test_rubric_rejects_bad_thresholds():
    with pytest.raises(ParamsError, match="rubric_visible_mm"):
        rater.Rubric(visible_mm=1.5)
    with pytest.raises(ParamsError, match="rubric_large_share"):
        rater.Rubric(large_share=0.0)


def test_label_error_distances_in_mm_with_anisotropic_spacing():
    truth = np.zeros((40, 50), bool)
    truth[10, :] = True
    label = np.zeros_like(truth)
    label[15, 5:45] = True  # 5 rows below: 5 * sy
    d = directed_distances(label, truth, spacing=(0.1, 0.2))
    assert d.shape == (40,) and d == pytest.approx(np.full(40, 1.0))
    truth_v = np.zeros((40, 50), bool)
    truth_v[:, 10] = True
    label_v = np.zeros_like(truth_v)
    label_v[:, 13] = True  # 3 columns right: 3 * sx
    assert directed_distances(label_v, truth_v, (0.1, 0.2)) == pytest.approx(np.full(40, 0.3))
    assert np.isinf(directed_distances(label, np.zeros_like(truth), (0.1, 0.1))).all()
    with pytest.raises(DatasetError, match="differs from the label"):
        directed_distances(label, truth[:-1], (0.1, 0.1))


# ----------------------------------------------------------------------------- the set


def test_render_item_overlay_and_scale_bar():
    img = np.full((300, 400), 40, np.uint8)
    lab = np.zeros_like(img, dtype=bool)
    lab[200:205, 100:300] = True
    rgb = rating_set.render_item(img, lab, spacing=(0.05, 0.05), alpha=0.5, color=(0, 255, 80))
    assert rgb.shape == (300, 400, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[202, 150]) == (20, 148, 60)          # 0.5 * 40 + 0.5 * colour
    assert tuple(rgb[100, 150]) == (40, 40, 40)           # untouched
    yellow = (rgb[..., 0] > 200) & (rgb[..., 1] > 200) & (rgb[..., 2] < 60)
    rows = np.flatnonzero(yellow[:, :100].any(axis=1))
    assert rows.max() < 60                                  # in the top-left corner
    # The longest bar is 3 mm = 60 px long (its ends inclusive: 61 columns); the labels start further right.
    lengths = sorted({int(yellow[r, :68].sum()) for r in rows})
    assert lengths[-1] == 61 and 21 in lengths and 41 in lengths  # 1, 2 and 3 mm
    with pytest.raises(ValueError, match="label shape"):
        rating_set.render_item(img, lab[:-1], (0.05, 0.05))


def test_sampling_is_seeded_one_per_sweep():
    cands = {("s1", "r1"): np.arange(100, 200), ("s1", "r2"): np.arange(5), ("s2", "r1"): np.zeros(0, int)}
    a = rating_set.sample_frames(cands, per_sweep=1, seed=3)
    b = rating_set.sample_frames(cands, per_sweep=1, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert list(zip(a.specimen, a.record)) == [("s1", "r1"), ("s1", "r2")]  # the empty sweep is skipped
    assert a.timestamp[0] in cands[("s1", "r1")]
    more = {**cands, ("s0", "r9"): np.arange(10)}
    c = rating_set.sample_frames(more, per_sweep=1, seed=3)
    assert c.set_index(["specimen", "record"]).loc[("s1", "r1"), "timestamp"] == a.timestamp[0]
    assert len(rating_set.sample_frames(cands, per_sweep=10, seed=3)) == 15
    with pytest.raises(ParamsError, match="frames_per_sweep"):
        rating_set.sample_frames(cands, per_sweep=0, seed=3)


def test_eligible_frames_need_all_three_alignments():
    cols = ["x", "y", "z", "euler_x", "euler_y", "euler_z"]
    df = pd.DataFrame({"timestamp": [10, 20, 30, 40]})
    for c in cols:
        df[c] = 1.0
        df[f"{c}_registered"] = 1.0
        df[f"{c}_optimized"] = [1.0, np.nan, 1.0, 1.0]
    df.loc[3, "x_registered"] = np.nan
    assert rating_set.eligible_timestamps(df).tolist() == [10, 30]
    assert rating_set.eligible_timestamps(df, labelled=np.array([30, 40])).tolist() == [30]
    with pytest.raises(DatasetError, match="run notebook 02 first"):
        rating_set.eligible_timestamps(df.drop(columns=["x_optimized"]))


def test_key_is_shuffled_anonymous_and_complete(tmp_path):
    frames = pd.DataFrame({"specimen": ["a", "a", "b"], "record": ["r1", "r2", "r1"], "timestamp": [5, 6, 7]})
    key = rating_set.make_key(frames, seed=0)
    assert len(key) == 9 and key.item_id.is_unique
    assert list(key.item_id) == [f"item{i:03d}" for i in range(1, 10)]
    assert sorted(key.groupby(["specimen", "record", "timestamp"]).size()) == [3, 3, 3]
    assert list(key.method) != list(rating_set.METHODS) * 3  # presentation order is shuffled
    assert rating_set.make_key(frames, seed=0).equals(key) and not rating_set.make_key(frames, seed=1).equals(key)
    items = [dict(specimen=r.specimen, record=r.record, timestamp=r.timestamp, method=r.method,
                  rgb=np.zeros((20, 30, 3), np.uint8)) for r in key.itertuples()]
    sid = rating_set.assemble_rating_set(items, key, tmp_path, title="t </script><b>")
    html = (tmp_path / rating_set.PAGE_FILE).read_text()
    assert html.count("data:image/jpeg;base64,") == 9
    assert "</script><b>" not in html  # title escaped, JSON cannot close the script
    for m in rating_set.METHODS:  # the page does not reveal the methods or frames
        assert m not in html.split('id="rating-data"')[1].split("</script>")[0]
    pd.testing.assert_frame_equal(rating_set.read_key(tmp_path / rating_set.KEY_FILE), key)
    assert sid == rating_set.set_id_of(key)


# ----------------------------------------------------------------------------- ratings files


@pytest.fixture
def key():
    frames = pd.DataFrame({"specimen": ["a", "b"], "record": ["r1", "r1"], "timestamp": [5, 7]})
    return rating_set.make_key(frames, seed=0)


def _write(tmp_path, rows, header="set_id,item_id,rating,rater,rated_at"):
    f = tmp_path / "ratings.csv"
    f.write_text(header + "\n" + "\n".join(rows) + "\n")
    return f


def test_ratings_table_round_trip(tmp_path, key):
    table = rating_set.ratings_table(key, [0, 1, 2, 3, 2, 1], "Dr. A", "abc")
    f = tmp_path / "r.csv"
    table.to_csv(f, index=False)
    got = rating_stats.read_ratings(f, key, "abc")
    assert got.rating.tolist() == [0, 1, 2, 3, 2, 1] and set(got.columns) >= {"method", "specimen", "timestamp"}
    summary = rating_stats.method_summary(got)
    for m in rating_set.METHODS:
        r = got.loc[got.method == m, "rating"]
        assert summary.loc[m, "mean"] == pytest.approx(r.mean())
        assert summary.loc[m, "n"] == 2
        assert sum(summary.loc[m, f"n_{k}"] for k in range(4)) == 2


def test_unknown_id_names_the_row(tmp_path, key):
    f = _write(tmp_path, ["s,item001,2,A,", "s,item099,1,A,"])
    with pytest.raises(DatasetError, match=r"ratings.csv row 3: unknown item_id 'item099'"):
        rating_stats.read_ratings(f, key)


def test_rating_of_four_names_the_row(tmp_path, key):
    f = _write(tmp_path, ["s,item001,2,A,", "s,item002,3,A,", "s,item003,4,A,"])
    with pytest.raises(DatasetError, match=r"ratings.csv row 4: rating '4' for item003 is not an integer 0-3"):
        rating_stats.read_ratings(f, key)
    f = _write(tmp_path, ["s,item001,2.5,A,"])
    with pytest.raises(DatasetError, match=r"row 2: rating '2.5'"):
        rating_stats.read_ratings(f, key)


def test_duplicate_names_the_row(tmp_path, key):
    f = _write(tmp_path, ["s,item001,2,A,", "s,item002,1,A,", "s,item001,3,A,", "s,item001,3,B,"])
    with pytest.raises(DatasetError, match=r"row 4: item item001 rated again by 'A' \(first at row 2\)"):
        rating_stats.read_ratings(f, key)


def test_other_bad_ratings_files(tmp_path, key):
    with pytest.raises(DatasetError, match="missing column"):
        rating_stats.read_ratings(_write(tmp_path, ["item001,2"], header="item_id,rating"), key)
    with pytest.raises(DatasetError, match="row 2: rater is empty"):
        rating_stats.read_ratings(_write(tmp_path, ["s,item001,2,,"]), key)
    with pytest.raises(DatasetError, match=r"row 2: set_id 'other' is not this rating set's"):
        rating_stats.read_ratings(_write(tmp_path, ["other,item001,2,A,"]), key, set_id="mine")
    with pytest.raises(DatasetError, match="ratings file not found"):
        rating_stats.read_ratings(tmp_path / "nope.csv", key)


def test_fixture_from_the_page_is_valid():
    """The committed fixture (exported by the page in test_rating_page.py) against its key."""
    key = rating_set.read_key(FIXTURES / "ratings_from_page_key.csv")
    got = rating_stats.read_ratings(FIXTURES / "ratings_from_page.csv", key, rating_set.set_id_of(key))
    assert len(got) == len(key) == 24
    wide = rating_stats.paired(got)
    assert wide.notna().all().all() and len(wide) == 8


def test_paper_comparison_and_figure(key):
    ratings = rating_set.ratings_table(key, [0, 1, 2, 3, 2, 1], "simulated", "s").merge(key, on="item_id")
    summary = rating_stats.method_summary(ratings)
    tests = rating_stats.wilcoxon_pairs(rating_stats.paired(ratings))
    table = R.paper_comparison(summary, tests, "simulated")
    assert table.loc[0, "paper"] == paper.PUBLISHED["mean_rating_initial"].value
    assert table.loc[0, "rater"] == "rater model: rubric on the true label error" == R.RATER_MODEL_LABEL
    assert len(table) == 6
    fig = R.plot_rating_distribution(summary, "simulated")
    assert R.RATER_MODEL_LABEL in fig.axes[0].get_title()
    assert len(fig.axes[0].patches) == 12  # 4 ratings x 3 methods
    assert [round(b.get_height(), 6) for b in fig.axes[1].patches] == [round(v, 6) for v in summary["mean"]]


# ----------------------------------------------------------------------------- a whole (tiny) dataset


def _tiny_dataset(root: Path, shifts_mm: dict, n_records: int = 2, n_frames: int = 4):
    """Layout A with a cylindrical 'bone' (axis along CT z) cut by the image plane z = 0.

    The true pose maps the image plane onto CT ``z = 0`` (``pose = inv(calib)``), so the true label
    is a circle of radius 4 mm; each method's pose is the true one shifted in-plane along x by
    ``shifts_mm[method]``, which moves its label by exactly that much.
    """
    import trimesh

    from ultrabones.core import dataset as ds
    from ultrabones.core.calibration_file import write_calibration
    from ultrabones.core import geometry as G
    from ultrabones.labels.cloud import surface_points
    from ultrabones.labels.label import full_label

    spacing, shape = (0.1, 0.1), (160, 200)
    calib = G.released_calibration()
    mesh = trimesh.creation.cylinder(radius=4.0, height=30.0, sections=128)
    mesh.apply_translation([10.0, 8.0, 0.0])
    spec = root / "dataset" / "specimen01"
    spec.mkdir(parents=True)
    ds.write_mesh(spec / "CT_bone_model.stl", mesh)
    write_calibration(root / "dataset", calib, spacing, None)
    points, _ = surface_points(mesh, 20.0, seed=0)
    true_pose = G.invert_transform(calib)
    rng = np.random.default_rng(0)
    for r in range(n_records):
        rec = f"record{r + 1:02d}"
        ts = 1000 + 50 * np.arange(n_frames)
        table = {"timestamp": ts}
        for method, suffix in (("initial", ""), ("registered", "_registered"), ("optimized", "_optimized")):
            shift = np.eye(4)
            shift[0, 3] = shifts_mm[method]
            p = G.params_from_pose(shift @ true_pose)
            for j, c in enumerate(G.POSE_COLUMNS):
                table[c + suffix] = np.full(n_frames, p[j])
        df = pd.DataFrame(table)
        df.loc[0, "x_optimized"] = np.nan  # a discarded frame: not eligible
        ds.write_tracking(spec / rec / "tracking.csv", df)
        truth = full_label(shape, true_pose, calib, spacing, points, 0.3)
        for t in ts:
            ds.write_image(spec / rec / "UltrasoundImages" / f"{t}.png", rng.integers(0, 80, shape, dtype=np.uint8))
            ds.write_label(root / "truth" / "specimen01" / rec / "Labels_full" / f"{t}_label.png", truth)
    return root / "dataset", root / "truth"


def test_build_rating_set_on_a_tiny_dataset(tmp_path):
    shifts = {"initial": 1.6, "registered": 4.5, "optimized": 0.0}
    data, truth = _tiny_dataset(tmp_path, shifts)
    params = R.RatingParams.from_section({**SECTION, "image_format": "png"})
    out = R.build_rating_set(data, None, tmp_path / "rating", params, seed=0,
                             label_fn_for=R.labeling_label_fn(20.0, 0.3, seed=0), progress=False)
    measured = rater.label_errors(Paths(tmp_path / "b", truth.parent, tmp_path / "f"), out, (0.1, 0.1))
    key = out["key"]
    assert len(key) == 6 and set(key.record) == {"record01", "record02"}
    assert (key.timestamp != 1000).all()  # the discarded frame is never drawn
    assert (tmp_path / "rating" / rating_set.PAGE_FILE).is_file()
    pd.testing.assert_frame_equal(rating_set.read_key(tmp_path / "rating" / rating_set.KEY_FILE), key)
    # A circle shifted sideways by s: its largest error is s (at the sides; the label band is 0.6 mm wide).
    assert len(out["labels"]) == len(measured) == len(key)
    for d, method in zip(measured, key.method):
        assert d.max() == pytest.approx(shifts[method], abs=0.35)
    clean = rater.simulate_ratings(measured, rater.Rubric(), gain_sd=0.0, lapse=0.0, seed=0)
    by_method = {m: set(clean[key.method.to_numpy() == m]) for m in rating_set.METHODS}
    assert by_method == {"optimized": {3}, "initial": {1}, "registered": {0}}
    # Same inputs, same set.
    again = R.build_rating_set(data, None, tmp_path / "rating2", params, seed=0,
                               label_fn_for=R.labeling_label_fn(20.0, 0.3, seed=0), progress=False)
    assert again["set_id"] == out["set_id"] and "measured" not in again
    assert all((a == b).all() for a, b in zip(again["labels"], out["labels"]))


def test_the_stage_result_without_and_with_ratings(tmp_path):
    """The stage contract's functions on a set nobody rated yet, then on the rater model's ratings of it."""
    import dataclasses

    data, truth = _tiny_dataset(tmp_path, {"initial": 1.6, "registered": 4.5, "optimized": 0.0})
    params = R.Params.from_section({**SECTION, "image_format": "png"})
    built = R.build_rating_set(data, None, tmp_path / "rating", params, seed=0,
                               label_fn_for=R.labeling_label_fn(20.0, 0.3, seed=0), progress=False)
    waiting = R.Result(params=params, built=built, page=tmp_path / "rating" / rating_set.PAGE_FILE, seconds=1.0)
    m = R.metrics(waiting)
    assert m["awaiting_ratings"] and m["rater"] is None and m["n_frames"] == m["n_set_frames"] == 2
    assert m["n_items"] == 6 and m["seconds"] == 1.0 and "mean_rating" not in m
    assert R.check(waiting) is None and set(R.figures(waiting)) == {"fig5_rating_items"}

    twin = Paths(tmp_path / "b", truth.parent, tmp_path / "f")
    measured = rater.label_errors(twin, built, (0.1, 0.1))
    rated = rater.with_model_ratings(twin, waiting, measured, TwinParams.from_section(TWIN), seed=0)
    assert rated.source == rater.MODEL_SOURCE and rated.analysis.rater == R.SIMULATED_RATER
    assert rater.with_model_ratings(twin, rated, measured, TwinParams(), seed=1) is rated  # ratings given stay
    m = R.metrics(rated)
    assert m["ratings_source"] == "simulated rater" and m["n_frames"] == 2 and m["seconds"] >= 1.0
    assert m == {**m, **R.analysis_metrics(rated.analysis)}
    assert set(m["significant_bonferroni"]) == set(rated.analysis.tests["pair"])
    assert R.check(rated) is None
    assert set(R.figures(rated)) == {"fig5_rating_items", "fig7_rating_distribution"}
    assert set(R.PDF_FIGURES) <= set(R.figures(rated))
    tests = rated.analysis.tests.assign(p_value_bonferroni=rated.analysis.tests["p_value_raw"])
    broken = dataclasses.replace(rated, analysis=dataclasses.replace(rated.analysis, tests=tests))
    with pytest.raises(AssertionError, match="Bonferroni"):
        R.check(broken)


# ----------------------------------------------------------------------------- the stage interface


def test_rating_params_typed_frozen_and_validated():
    import dataclasses

    from ultrabones.core.params import SCHEMA, load_profile

    P = R.RatingParams.from_section(SECTION)
    assert P.as_dict() == SECTION and list(P.as_dict()) == list(SCHEMA["rating"])  # one field per key, in order
    assert P.alpha == 0.001 and P.ratings_csv is None and P.frames_per_sweep == 1
    default = load_profile("default", Path(__file__).parents[1] / "params").values["rating"]
    assert R.RatingParams.from_section(default) == P
    assert rater.Rubric.of(TwinParams.from_section(TWIN)) == rater.Rubric()
    prof = load_profile("default", Path(__file__).parents[1] / "params")
    assert prof.notebook_parameters("03_rating_statistics")["twin"] == TWIN  # what notebook 03's twin cells read
    with pytest.raises(ParamsError, match="twin.rubric_visible_mm was not given"):
        rater.Rubric.of(TwinParams.from_section({k: v for k, v in TWIN.items() if k != "rubric_visible_mm"}))
    with pytest.raises(ParamsError, match="'rating.rubric_visible_mm' moved to twin.rubric_visible_mm"):
        R.RatingParams.from_section({**SECTION, "rubric_visible_mm": 0.3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        P.alpha = 0.05
    with pytest.raises(ParamsError, match="rating.alpha"):
        R.RatingParams.from_section({**SECTION, "alpha": 0.9})
    with pytest.raises(ParamsError, match="rating.zero_method"):
        dataclasses.replace(P, zero_method="nope")  # replace validates too
    with pytest.raises(ParamsError, match="rating.nope"):
        R.RatingParams.from_section({**SECTION, "nope": 1})


def test_metrics_of_a_rating_result_known_answer():
    # initial rated 1, 1, 2, 2; registration 0, 1, 1, 1; optimised 1, 2, 3 (one frame unrated).
    summary = pd.DataFrame({"n": [4, 4, 3], "mean": [1.5, 0.75, 2.0], "median": [1.5, 1.0, 2.0],
                            "n_0": [0, 1, 0], "n_1": [2, 3, 1], "n_2": [2, 0, 1], "n_3": [0, 0, 1]},
                           index=pd.Index(list(rating_set.METHODS), name="method"))
    pairs = ["optimized_vs_initial", "optimized_vs_registration", "initial_vs_registration"]
    tests = pd.DataFrame({"pair": pairs, "statistic": [0.0, 0.0, 1.0], "z": [1.5, 1.6, 1.0], "n": [3, 3, 4],
                          "p_method": ["exact", "exact", "permutation"], "p_value_raw": [0.25, 0.25, 0.5],
                          "p_value_bonferroni": [0.75, 0.75, 1.0], "effect_size_r": [0.8, 0.9, 0.5]})
    result = R.RatingResult(rater="A", summary=summary, tests=tests, n_frames=4, n_complete=3)
    names = ("initial", "registration", "optimized")
    assert R.analysis_metrics(result) == {
        "rater": "A", "n_frames": 4, "n_frames_all_methods": 3,
        "n_ratings": dict(zip(names, [4, 4, 3])),
        "mean_rating": dict(zip(names, [1.5, 0.75, 2.0])),
        "median_rating": dict(zip(names, [1.5, 1.0, 2.0])),
        "rating_counts": {"initial": {"0": 0, "1": 2, "2": 2, "3": 0}, "registration": {"0": 1, "1": 3, "2": 0, "3": 0},
                          "optimized": {"0": 0, "1": 1, "2": 1, "3": 1}},
        "wilcoxon_statistic": dict(zip(pairs, [0.0, 0.0, 1.0])), "z": dict(zip(pairs, [1.5, 1.6, 1.0])),
        "n_pairs": dict(zip(pairs, [3, 3, 4])), "p_method": dict(zip(pairs, ["exact", "exact", "permutation"])),
        "p_value_raw": dict(zip(pairs, [0.25, 0.25, 0.5])), "p_value_bonferroni": dict(zip(pairs, [0.75, 0.75, 1.0])),
        "effect_size_r": dict(zip(pairs, [0.8, 0.9, 0.5])),
        "paper": {"n_frames": 119, "mean_rating": {"initial": 1.45, "registration": 0.87, "optimized": 2.39},
                  "p_value_bonferroni_bound": paper.rating_study()["p_value_bonferroni_bound"]},
    }
    assert R.check_analysis(result) is None
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        result.n_frames = 5
