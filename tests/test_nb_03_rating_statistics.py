"""Notebook 03 on the smoke twin: the simulated rater, and a real ratings CSV exported by the rating page."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ultrabones.rating import rating_set, rating_stats
from ultrabones.rating import study as R

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
PAIRS = ["optimized_vs_initial", "optimized_vs_registration", "initial_vs_registration"]
METHODS = ["initial", "registration", "optimized"]  # metric names

pytestmark = pytest.mark.notebook


def _check_statistics(m):
    assert set(m["mean_rating"]) == set(METHODS)
    assert all(0 <= v <= 3 for v in m["mean_rating"].values())
    for key in ("p_value_raw", "p_value_bonferroni", "effect_size_r"):
        assert set(m[key]) == set(PAIRS), key
    for p in PAIRS:
        assert 0 <= m["p_value_raw"][p] <= 1
        assert m["p_value_bonferroni"][p] == pytest.approx(min(1.0, 3 * m["p_value_raw"][p]))
        assert -1 <= m["effect_size_r"][p] <= 1
        assert m["effect_size_r"][p] == pytest.approx(m["z"][p] / math.sqrt(m["n_pairs"][p]))
    for meth in METHODS:
        assert sum(m["rating_counts"][meth].values()) == m["n_ratings"][meth]


def test_simulated_rater(smoke_metrics, smoke):
    m = smoke_metrics("03_rating_statistics")
    assert m["rater"] == R.SIMULATED_RATER
    assert m["n_frames"] >= 1 and m["n_items"] == 3 * m["n_frames"]
    assert m["n_ratings"] == {meth: m["n_frames"] for meth in METHODS}
    _check_statistics(m)
    err = m["twin_label_error"]
    # The simulated rater follows the measured errors: the better-aligned method is not rated lower.
    if err["optimized"]["median_error_mm"] < err["initial"]["median_error_mm"]:
        assert m["mean_rating"]["optimized"] > m["mean_rating"]["initial"]
    rating_dir = smoke.build / "rating"
    assert (rating_dir / rating_set.PAGE_FILE).is_file() and (rating_dir / rating_set.KEY_FILE).is_file()
    key = rating_set.read_key(rating_dir / rating_set.KEY_FILE)
    assert len(key) == m["n_items"] and rating_set.set_id_of(key) == m["set_id"]
    page = (rating_dir / rating_set.PAGE_FILE).read_text()
    assert page.count("data:image/") == m["n_items"] and "specimen" not in page.split('id="rating-data"')[1]


def test_ratings_exported_from_the_page(smoke_metrics, smoke, tmp_path):
    """Notebook 03 on the CSV the rating page exported in the browser test (and its set's key)."""
    smoke_metrics("03_rating_statistics")  # the stages before 03 have run on the smoke twin
    # a copy of the smoke build (02's metrics and caches included) leaves the smoke run's own metrics alone
    shutil.copytree(smoke.build, tmp_path / "build" / "smoke")
    env = dict(smoke.env, ULTRABONES_BUILD_ROOT=str(tmp_path / "build"))
    csv, key_file = FIXTURES / "ratings_from_page.csv", FIXTURES / "ratings_from_page_key.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "ultrabones", "run", "03_rating_statistics", "--profile", "smoke", "--no-progress",
         "-p", f"ratings_csv={csv}", "-p", f"ratings_key={key_file}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = json.loads((tmp_path / "build" / "smoke" / "metrics" / "03_rating_statistics.json").read_text())
    assert m["rater"] == "Dr. Test, browser rater"
    assert m["ratings_source"] == str(csv)
    _check_statistics(m)
    # The same numbers computed here from the fixture.
    key = rating_set.read_key(key_file)
    expect = R.analysis_metrics(R.analyse(rating_stats.read_ratings(csv, key, rating_set.set_id_of(key))))
    assert m["n_frames"] == expect["n_frames"] == 8
    assert m["mean_rating"] == pytest.approx(expect["mean_rating"])
    assert m["p_value_bonferroni"] == pytest.approx(expect["p_value_bonferroni"])


def test_bad_ratings_file_stops_the_notebook(smoke_metrics, smoke, tmp_path):
    smoke_metrics("03_rating_statistics")
    bad = tmp_path / "bad.csv"
    lines = (FIXTURES / "ratings_from_page.csv").read_text().splitlines()
    lines[3] = re.sub(r",[0-3],", ",4,", lines[3], count=1)  # data row 3 (CSV line 4) rated 4
    bad.write_text("\n".join(lines) + "\n")
    env = dict(smoke.env, ULTRABONES_BUILD_ROOT=str(tmp_path / "build"))
    proc = subprocess.run(
        [sys.executable, "-m", "ultrabones", "run", "03_rating_statistics", "--profile", "smoke", "--no-progress",
         "-p", f"ratings_csv={bad}", "-p", f"ratings_key={FIXTURES / 'ratings_from_page_key.csv'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode != 0
    assert "bad.csv row 4: rating '4'" in proc.stderr
