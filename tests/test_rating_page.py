"""The rating page in a real headless browser (Debian's chromium + chromedriver, via selenium).

A small synthetic rating set is built (curved bone echoes, each alignment's
label shifted by a known amount), the page is opened from disk, a rater rates
by key and by click, goes back and changes a rating, reloads the page (progress
must survive), rates the rest, and exports. The CSV the page downloads through
its Blob link is read back with ``rating.read_ratings`` and must hold exactly
the ratings entered; :func:`rating.analyse` then gives the study's statistics from it, and the summary
marks the rating rows truth-free (the route the README describes for a person).

The ratings entered are the simulated rater's on the synthetic errors, so the
exported file is a realistic "real ratings" table; with
``ULTRABONES_WRITE_RATING_FIXTURE=1`` the test stores it (and the set's key) as
``tests/fixtures/ratings_from_page.csv`` / ``ratings_from_page_key.csv``, which
the notebook test runs notebook 03 on.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ultrabones.pipeline import headlines
from ultrabones.rating import rating_set as RS  # the name rating_set is this file's fixture
from ultrabones.rating import rating_stats
from ultrabones.rating import study as R
from ultrabones.core.label_distances import directed_distances
from ultrabones.twin import rater

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FIXTURES = Path(__file__).parent / "fixtures"
SPACING = (0.1, 0.1)  # mm per pixel of the synthetic frames

pytestmark = pytest.mark.browser


def synthetic_frames(n_frames: int = 8, seed: int = 5, shape=(160, 200)):
    """Synthetic frames: speckle, a curved bone echo, its true label and three shifted labels.

    Returns
    -------
    frames (``specimen, record, timestamp``), and per (frame, method): the
    rendered item, and the label's errors (mm) against the true label.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    vv, uu = np.mgrid[0:h, 0:w]
    # Shifts (mm, along the depth axis) of each method's label: the twin's story in small.
    shift_ranges = {"initial": (0.4, 2.5), "registered": (1.0, 4.5), "optimized": (0.0, 0.5)}
    frames, items, dists = [], [], {}
    for f in range(n_frames):
        spec, rec, ts = f"synthetic{f // 4 + 1:02d}", f"record{f % 4 + 1:02d}", 1000 + 47 * f
        frames.append((spec, rec, ts))
        row0, amp, period = rng.uniform(60, 100), rng.uniform(5, 20), rng.uniform(25, 60)
        curve = lambda u, dv=0.0: row0 + amp * np.sin(u / period) + dv  # noqa: E731  (rows, px)
        truth = np.abs(vv - curve(uu)) <= 0.3 / SPACING[1]
        image = rng.gamma(2.0, 12.0, size=shape)
        image[truth] += 120
        image[vv > curve(uu) + 3] *= 0.3  # acoustic shadow below the bone
        image = np.clip(image, 0, 255).astype(np.uint8)
        for method, (lo, hi) in shift_ranges.items():
            dv = rng.uniform(lo, hi) * rng.choice([-1, 1]) / SPACING[1]
            label = np.abs(vv - curve(uu, dv)) <= 0.3 / SPACING[1]
            items.append({"specimen": spec, "record": rec, "timestamp": ts, "method": method,
                          "rgb": RS.render_item(image, label, SPACING, alpha=0.5)})
            dists[(spec, rec, ts, method)] = directed_distances(label, truth, SPACING)
    return pd.DataFrame(frames, columns=["specimen", "record", "timestamp"]), items, dists


@pytest.fixture(scope="module")
def rating_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("rating_set")
    frames, items, dists = synthetic_frames()
    key = RS.make_key(frames, seed=11)
    set_id = RS.assemble_rating_set(items, key, out, fmt="png", title="synthetic rating set")
    distances = [dists[(r.specimen, r.record, int(r.timestamp), r.method)] for r in key.itertuples()]
    intended = rater.simulate_ratings(distances, rater.Rubric(), gain_sd=0.25, lapse=0.05, seed=3)
    return out, key, set_id, intended


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(f"needs chromium ({CHROMIUM}) and chromedriver ({CHROMEDRIVER}): "
                    "apt install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    downloads = tmp_path_factory.mktemp("downloads")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    drv = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    drv.downloads = downloads
    yield drv
    drv.quit()


def _text(drv, element_id):
    from selenium.webdriver.common.by import By

    return drv.find_element(By.ID, element_id).text


def _press(drv, key):
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(drv).send_keys(key).perform()


def test_rate_reload_and_export(rating_set, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    out, key, set_id, intended = rating_set
    n = len(key)
    driver.get((out / RS.PAGE_FILE).resolve().as_uri())
    assert _text(driver, "position") == f"Item 1 of {n} ({key.item_id[0]})"
    assert _text(driver, "progress-text") == f"0 / {n} rated"
    # Exporting without a name is refused with a message.
    driver.find_element(By.ID, "export").click()
    assert "Enter your name" in _text(driver, "status")
    rater = "Dr. Test, browser rater"  # a comma, to exercise CSV quoting
    driver.find_element(By.ID, "rater").send_keys(rater)
    driver.find_element(By.TAG_NAME, "body").click()

    # Item 1 by key, with a wrong first rating; item 2 by click.
    wrong = (int(intended[0]) + 1) % 4
    _press(driver, str(wrong))
    assert _text(driver, "position").startswith(f"Item 2 of {n}")
    driver.find_element(By.ID, f"rate-{int(intended[1])}").click()
    assert _text(driver, "position").startswith(f"Item 3 of {n}")
    assert _text(driver, "progress-text") == f"2 / {n} rated"

    # Back to item 1: its rating is shown; change it.
    _press(driver, Keys.ARROW_LEFT)
    _press(driver, Keys.ARROW_LEFT)
    assert _text(driver, "position").startswith(f"Item 1 of {n}")
    selected = driver.find_elements(By.CSS_SELECTOR, "#rubric button.selected")
    assert [b.get_attribute("data-rating") for b in selected] == [str(wrong)]
    _press(driver, str(int(intended[0])))
    assert _text(driver, "progress-text") == f"2 / {n} rated"  # changed, not added

    # Forward button, then a reload: ratings, position and name survive.
    driver.find_element(By.ID, "next").click()
    assert _text(driver, "position").startswith(f"Item 3 of {n}")
    driver.refresh()
    assert _text(driver, "progress-text") == f"2 / {n} rated"
    assert _text(driver, "position").startswith(f"Item 3 of {n}")
    assert driver.find_element(By.ID, "rater").get_attribute("value") == rater
    state = driver.execute_script("return UltrabonesRating.state()")
    assert {k: v["rating"] for k, v in state["ratings"].items()} == {
        key.item_id[0]: int(intended[0]), key.item_id[1]: int(intended[1])}

    # The rest by key.
    for i in range(2, n):
        assert _text(driver, "position").startswith(f"Item {i + 1} of {n}")
        _press(driver, str(int(intended[i])))
    assert _text(driver, "progress-text") == f"{n} / {n} rated"

    # Export: the Blob download is the file we read back, identical to the page's CSV text.
    driver.find_element(By.ID, "export").click()
    target = driver.downloads / f"ratings_{set_id}.csv"
    for _ in range(100):
        if target.is_file() and target.stat().st_size > 0:
            break
        time.sleep(0.1)
    assert target.is_file(), f"no download in {driver.downloads}: {list(driver.downloads.iterdir())}"
    assert target.read_text() == driver.execute_script("return UltrabonesRating.exportCSV()")
    assert "Exported" in _text(driver, "status")

    got = rating_stats.read_ratings(target, key, set_id)
    assert list(got["item_id"]) == list(key["item_id"])
    assert got["rating"].tolist() == [int(r) for r in intended]
    assert set(got["rater"]) == {rater}
    assert (got["method"] == key["method"]).all()

    # The route a person takes (README, "Rating the labels yourself"): page -> CSV -> read_ratings -> analyse.
    result = R.analyse(got)
    assert result.rater == rater and result.n_frames == result.n_complete == n // len(RS.METHODS)
    expected = pd.Series([int(r) for r in intended], index=key["method"]).groupby(level=0).mean()
    for m in RS.METHODS:
        assert result.summary.loc[m, "mean"] == pytest.approx(expected[m])
    assert len(result.tests) == 3 and result.tests["p_value_bonferroni"].between(0, 1).all()
    stats = {**R.analysis_metrics(result), "ratings_source": str(target)}
    table = headlines.summary_table({"03_rating_statistics": stats}).set_index("id")
    row = table.loc["mean_rating_optimized"]
    assert row["value"] == pytest.approx(expected["optimized"])
    assert row["how obtained"] == headlines.TRUTH_FREE  # a person's ratings: no truth read

    if os.environ.get("ULTRABONES_WRITE_RATING_FIXTURE"):
        shutil.copyfile(target, FIXTURES / "ratings_from_page.csv")
        shutil.copyfile(out / RS.KEY_FILE, FIXTURES / "ratings_from_page_key.csv")


def test_page_is_self_contained(rating_set):
    out, key, set_id, _ = rating_set
    html = (out / RS.PAGE_FILE).read_text()
    assert html.count("data:image/png;base64,") == len(key)
    for ref in ("http://", "https://", "src=\"/", "<link"):
        assert ref not in html, f"the page must not load anything ({ref!r} found)"
    assert set_id in html
