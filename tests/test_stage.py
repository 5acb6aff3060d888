"""Stage bookkeeping: metrics provenance, figure manifest, resumable cache, summary rules."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from ultrabones.core import paper
from ultrabones.core.cache import SpecimenCache
from ultrabones.pipeline import stage
from ultrabones.pipeline import headlines, summary  # noqa: E402
from ultrabones.core.paths import FIGURES_DIR, Paths  # noqa: E402
from ultrabones.core.params import NOTEBOOKS  # noqa: E402


@pytest.fixture
def paths(tmp_path):
    return Paths(tmp_path / "build", tmp_path / "twin", tmp_path / "figures")


def test_metrics_with_provenance(paths):
    f = stage.write_metrics(paths, "02_labeling", {"a": 1.5, "nan": float("nan")}, params={"gamma_mm": 0.3})
    data = json.loads(f.read_text())
    assert data["a"] == 1.5 and data["nan"] is None
    prov = data["_provenance"]
    assert prov["notebook"] == "02_labeling" and prov["twin"] is True and len(prov["params_hash"]) == 16
    assert stage.read_metrics(paths, "02_labeling")["a"] == 1.5
    with pytest.raises(FileNotFoundError, match="run notebook 05_evaluation first"):
        stage.read_metrics(paths, "05_evaluation")


def test_figures_and_tables_are_recorded(paths):
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    stage.save_figure(fig, paths, "fig_x", "05_evaluation", pdf=True)
    stage.save_table(pd.DataFrame({"a": [1.23456], "b": ["x"]}), paths, "table_y", "07_summary")
    manifest = json.loads((paths.figures_dir / stage.MANIFEST).read_text())
    assert manifest == {"fig_x.pdf": "05_evaluation", "fig_x.png": "05_evaluation",
                        "table_y.csv": "07_summary", "table_y.md": "07_summary"}
    assert "| 1.235 | x |" in (paths.figures_dir / "table_y.md").read_text()
    assert summary.orphan_figures(paths.figures_dir) == []
    (paths.figures_dir / "stray.png").write_bytes(b"x")
    assert summary.orphan_figures(paths.figures_dir) == ["stray.png"]


def test_specimen_cache_resumes_and_invalidates(paths):
    cache = SpecimenCache(paths, "02_labeling")
    assert cache.get("specimen01", {"k": 1}) is None
    cache.put("specimen01", {"k": 1}, {"err": 0.2})
    assert cache.get("specimen01", {"k": 1}) == {"err": 0.2}
    assert cache.get("specimen01", {"k": 2}) is None  # parameters changed: redo
    assert cache.all() == {"specimen01": {"err": 0.2}}


def test_specimen_cache_keys_hold_the_inputs_content(paths, tmp_path):
    """A key names the content of the inputs, not their times: same bytes hit, other bytes miss."""
    import os

    from ultrabones.core import cache as C

    f = tmp_path / "in" / "a.png"
    f.parent.mkdir()
    f.write_bytes(b"first")
    sc = SpecimenCache(paths, "06_reconstruction")
    sc.put("s", {"k": 1}, {"v": 1}, inputs=[f], root=f.parent)
    assert sc.get("s", {"k": 1}, inputs=[f], root=f.parent) == {"v": 1}
    st = f.stat()
    f.write_bytes(b"other")  # same size; the time is put back: only the content tells
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert sc.get("s", {"k": 1}, inputs=[f], root=f.parent) is None
    f.write_bytes(b"first")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5))  # a touch without a change still hits
    assert sc.get("s", {"k": 1}, inputs=[f], root=f.parent) == {"v": 1}
    assert C.file_digest(tmp_path / "nothing") == "missing"
    # digests persist across runs under (path, size, mtime_ns)
    store = C.DigestStore(tmp_path / "digests.json")
    d = C.file_digest(f)
    store.save()
    C._DIGESTS.clear()
    C.DigestStore(tmp_path / "digests.json")
    st = f.stat()
    assert C._DIGESTS[(str(f.absolute()), st.st_size, st.st_mtime_ns)] == d


def test_swap_dir_replaces_a_folder_whole(tmp_path):
    from ultrabones.core import atomic

    final = tmp_path / "Labels"
    final.mkdir()
    (final / "1_label.png").write_bytes(b"old")
    (final / "2_label.png").write_bytes(b"old")
    new = atomic.new_dir_beside(final)
    (new / "2_label.png").write_bytes(b"new")
    atomic.swap_dir(new, final)
    assert sorted(p.name for p in final.iterdir()) == ["2_label.png"]
    assert (final / "2_label.png").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Labels"]
    assert atomic.write_text_if_changed(tmp_path / "d.txt", "a") is True
    assert atomic.write_text_if_changed(tmp_path / "d.txt", "a") is False


def test_summary_lookup_and_rules():
    metrics = {"02_labeling": {"discard_rate": 0.2, "contour_error_mm": {"initial": {"mean": 0.9},
                                                                        "optimized": {"mean": 0.25}}}}
    assert headlines.lookup(metrics, "02_labeling:contour_error_mm.optimized.mean") == 0.25
    assert headlines.lookup(metrics, "02_labeling:contour_error_mm.registration.mean") is None
    assert headlines.lookup(metrics, "09_nothing:x") is None
    crit = paper.Criterion("within", 0.05, basis="physical", why="test")
    assert crit.judge(0.2, published=0.187) == "yes"
    assert crit.judge(0.3, published=0.187) == "no"
    assert crit.judge(None, published=0.187) == "n/a"
    assert paper.Criterion("below", 0.001, basis="paper").judge(0.0004) == "yes"
    assert paper.Criterion("below_row", row="x", basis="paper").judge(0.25, other=0.9) == "yes"
    assert paper.Criterion("below_row", row="x", basis="paper").judge(0.25, other=None) == "n/a"
    assert paper.CRITERIA["initial_misalignment_mean"].judge(1.13) == "-"  # a simulator setting is never judged
    table = headlines.summary_table(metrics).set_index("id")
    assert len(table) == sum(not r.optional for r in headlines.ROWS)  # optional rows without a value are left out
    got = table.loc["discard_rate"]
    assert got["value"] == 0.2 and got["criterion met"] == "-" and got["source"] == "02_labeling.json: discard_rate"
    assert got["how obtained"] == headlines.TRUTH_FREE and got["published"] == 0.187
    opt = table.loc["contour_optimized_mean"]  # below the initial's mean: 0.25 < 0.9
    assert opt["criterion met"] == "yes" and opt["how obtained"] == headlines.AGAINST_TRUTH
    assert table.loc["contour_registration_mean", "n_seeds"] == 0


def test_summary_over_seeds_gives_mean_and_sd():
    runs = [{"02_labeling": {"discard_rate": v, "optimized_better_share": s}} for v, s in ((0.1, 0.4), (0.3, 0.8))]
    table = headlines.summary_table(runs).set_index("id")
    row = table.loc["discard_rate"]
    assert row["value"] == pytest.approx(0.2) and row["sd"] == pytest.approx(0.1414213562) and row["n_seeds"] == 2
    # judged per seed, not on the mean (0.6 > 0.5): the first seed's 0.4 fails it
    assert table.loc["optimized_better_share", "criterion met"] == "no"
    assert table.loc["optimized_better_share", "seeds met"] == "1 of 2"
    shown = headlines.format_table(table.reset_index()).set_index("quantity")
    assert shown.loc["frames discarded by validation (fraction)", "value"] == "0.2 ± 0.141 (2 seeds)"
    assert shown.loc["kept frames whose optimised contour beats the initial (fraction)", "criterion met"] == \
        "no (1 of 2 seeds)"
    both = headlines.summary_table([{"02_labeling": {"optimized_better_share": s}} for s in (0.7, 0.8)])
    assert both.set_index("id").loc["optimized_better_share", ["criterion met", "seeds met"]].tolist() == \
        ["yes", "2 of 2"]
    with pytest.raises(ValueError, match="no metrics"):
        headlines.summary_table([])


def test_summary_optional_rows_appear_when_their_key_exists():
    m = {"06_reconstruction": {"grid": {"labels_original": {"chamfer_true_mm": 0.9},
                                        "labels_optimized": {"chamfer_true_mm": 0.5}}}}
    table = headlines.summary_table(m).set_index("id")
    assert "chamfer_labels_optimized" in table.index and "chamfer_predicted_optimized" not in table.index
    assert table.loc["chamfer_labels_optimized", "criterion met"] == "yes"
    assert table.loc["chamfer_labels_optimized", "published"] == paper.PUBLISHED["ultraboneudf_chamfer_mm"].value
    assert not headlines.missing_rows(table.reset_index()).count("06_reconstruction.json: grid.labels_original.chamfer_true_mm")


def test_summary_rating_rows_say_who_rated():
    rater_model = {"03_rating_statistics": {"mean_rating": {"initial": 1.5}, "ratings_source": "simulated rater"}}
    person = {"03_rating_statistics": {"mean_rating": {"initial": 1.5}, "ratings_source": "/tmp/ratings.csv"}}
    a = headlines.summary_table(rater_model).set_index("id").loc["mean_rating_initial"]
    b = headlines.summary_table(person).set_index("id").loc["mean_rating_initial"]
    assert a["how obtained"] == headlines.AGAINST_TRUTH and headlines.RATER_MODEL in a["quantity"]
    assert b["how obtained"] == headlines.TRUTH_FREE and headlines.RATER_MODEL not in b["quantity"]
    assert a["criterion met"] == b["criterion met"] == "yes"  # within half a rubric step of 1.45


def test_summary_figures_and_metrics(tmp_path):
    m = {"01_calibration": {"localization_error_mm": 0.4}, "00_simulate": {"initial_misalignment_mm": {"mean": 1.0}}}
    table = headlines.summary_table(m)
    fig = summary.plot_comparison(table)
    assert len(fig.axes[0].get_yticklabels()) == 2
    plt.close(fig)
    out = summary.summary_metrics(table, headlines.missing_rows(table), [])
    assert out["rows"]["calibration_localisation_error"]["met"] == "yes"
    assert out["rows"]["initial_misalignment_mean"]["how"] == headlines.SIMULATOR_SETTING
    assert out["n_met"] == 1 and out["n_judged"] == 1 and json.dumps(out)
    plt.imsave(tmp_path / "a.png", [[0, 1], [1, 0]])
    fig, missing = summary.gallery(tmp_path, ["a", "b"])
    assert fig is not None and missing == ["b"]
    assert summary.gallery(tmp_path, ["b"]) == (None, ["b"])


def test_summary_stage_runs_checks_draws_and_measures(tmp_path):
    """Stage 07's contract on a small run: the tables from the metrics (measurements merged), the checks on the
    figures folder, the comparison figure and the metrics."""
    import dataclasses

    paths = Paths(tmp_path / "build" / "p", tmp_path / "twin", tmp_path / "figures")
    stage.write_metrics(paths, "01_calibration", {"localization_error_mm": 0.4})
    stage.write_metrics(paths, "00_simulate", {"initial_misalignment_mm": {"mean": 1.0}})
    P = summary.Params(require_all=False, gallery=("summary_comparison",))
    measured = {"p": {"01_calibration": {"calibration_translation_error_mm": 0.3}}}
    result = summary.run(paths, P, measured=measured, seed=3, profile="p")
    assert result.validation_names == [] and result.validation_where == "" and not result.is_project
    table = result.table.set_index("id")
    assert table.loc["calibration_localisation_error", "value"] == 0.4
    assert table.loc["calibration_translation_error", "value"] == 0.3  # the twin's measurement, merged
    assert table.loc["discard_rate", "seeds"] == "seed 3 (design seed)"
    assert "02_labeling.json: discard_rate" in result.missing_rows
    assert list(result.per_seed["run"]) == ["seed3 (design)"] and len(result.criteria) == len(headlines.ROWS)
    assert list(result.shown.columns)[:4] == ["quantity", "published", "value", "seeds"]
    figs = summary.figures(result)
    assert list(figs) == ["summary_comparison"] and figs["summary_comparison"].axes[0].get_title().startswith("profile p")
    with pytest.raises(AssertionError, match="gallery figures not produced: \\['summary_comparison'\\]"):
        summary.check(dataclasses.replace(result, missing_rows=[], params=dataclasses.replace(P, require_all=True)))
    stage.save_figure(figs["summary_comparison"], paths, "summary_comparison", "07_summary")
    plt.close(figs["summary_comparison"])
    summary.check(result)
    with pytest.raises(AssertionError, match="headline numbers missing"):
        summary.check(dataclasses.replace(result, params=dataclasses.replace(P, require_all=True)))
    (paths.figures_dir / "stray.png").write_bytes(b"x")
    with pytest.raises(AssertionError, match="stray.png"):
        summary.check(result)
    m = summary.metrics(result)
    assert m["orphan_figures"] == ["stray.png"] and m["n_missing"] == len(result.missing_rows)
    assert m["rows"]["calibration_localisation_error"]["value"] == 0.4 and json.dumps(m)


def test_summary_sources_name_real_notebooks():
    """Every row reads a notebook's metrics, or an on-demand measurement that a benchmark writes behind the truth
    wall (and is optional)."""
    for row in headlines.ROWS:
        stem = row.source.split(":")[0]
        assert stem in NOTEBOOKS or (stem in headlines.MEASUREMENTS and row.optional), row.source
    bench = (Path(__file__).resolve().parents[1] / "benchmarks" / "bench_lambda_oracle.py").read_text()
    assert headlines.MEASUREMENTS == (headlines.HELDOUT_ORACLE,) and "measure.write_measurements(paths, HELDOUT_ORACLE," in bench


def test_committed_figures_have_a_maker():
    """Every file in figures/ was recorded by the notebook that made it (no orphans)."""
    if not FIGURES_DIR.is_dir():
        pytest.skip("no figures/ yet")
    assert summary.orphan_figures(FIGURES_DIR) == []
    manifest = json.loads((FIGURES_DIR / stage.MANIFEST).read_text()) if (FIGURES_DIR / stage.MANIFEST).is_file() else {}
    assert set(manifest.values()) <= set(NOTEBOOKS)
    missing = [f for f in manifest if not (FIGURES_DIR / f).is_file()]
    assert not missing, f"manifest lists files that are not in figures/: {missing}"


def test_seed_builds_found_beside_the_profile(tmp_path):
    import json

    for name, rate in (("default", 0.1), ("default-seed2", 0.3), ("default-seed10", 0.2), ("default-seedx", 0.9),
                       ("smoke-seed1", 0.9), ("default-seed3", None)):
        d = tmp_path / name
        d.mkdir()
        if rate is not None:
            (d / "metrics").mkdir()
            (d / "metrics" / "02_labeling.json").write_text(json.dumps({
                "discard_rate": rate, "lambda_selection": {"chosen": 0.1, "oracle": 1.0, "region": "full",
                                                           "oracle_region": "first_hit", "oracle_gap_mm": 0.02},
                "contour_error_mm": {"initial": {"mean": 0.8}, "optimized": {"mean": 0.3}}}))
    expect = [tmp_path / n for n in ("default", "default-seed2", "default-seed10")]
    assert headlines.seed_builds(tmp_path / "default") == expect
    assert headlines.seed_builds(tmp_path / "default-seed2") == expect  # from a seed build, the same set
    runs, names = headlines.load_seed_runs(tmp_path / "default", ["00_simulate", "02_labeling"])
    assert names == ["default", "default-seed2", "default-seed10"] and len(runs) == 3
    table = headlines.summary_table(runs).set_index("id")
    assert table.loc["discard_rate", "value"] == pytest.approx(0.2) and table.loc["discard_rate", "n_seeds"] == 3
    per_seed = headlines.labeling_seed_table(runs, names)
    assert list(per_seed["run"]) == names + ["mean ± sd"]
    assert per_seed.loc[1, "discard rate"] == 0.3 and per_seed.loc[0, "chosen region"] == "full"
    assert per_seed.loc[3, "discard rate"] == "0.2 ± 0.1" and per_seed.loc[3, "chosen region"] is None
    assert per_seed.loc[0, "contour registration (mm)"] is None
    assert per_seed.loc[3, "chosen lambda"] == "0.1 ± 0"  # equal values: sd exactly 0
    single = headlines.labeling_seed_table(runs[:1], names[:1])
    assert len(single) == 1
    # the validation seeds pooled, the design run beside them left out of the last row
    val = headlines.labeling_seed_table(runs, names, pooled=names[1:])
    assert val.loc[3, "run"] == "mean ± sd of default-seed2, default-seed10"
    assert val.loc[3, "discard rate"] == "0.25 ± 0.071"  # 0.3 and 0.2; with the design run 0.2 ± 0.1


def test_summary_params_typed_frozen_and_validated():
    import dataclasses

    from ultrabones.core.errors import ParamsError
    from ultrabones.core.params import SCHEMA

    section = {"require_all": True, "gallery": ["fig7_rating_distribution", "summary_comparison"]}
    P = summary.SummaryParams.from_section(section)
    assert P.gallery == ("fig7_rating_distribution", "summary_comparison") and P.require_all is True
    assert P.as_dict() == section and list(P.as_dict()) == list(SCHEMA["summary"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        P.require_all = False
    with pytest.raises(ParamsError, match="summary.require_all"):
        summary.SummaryParams.from_section({**section, "require_all": "yes"})
    with pytest.raises(ParamsError, match="summary"):
        summary.SummaryParams.from_section({"require_all": True})  # gallery missing
