"""Notebook 07 on the smoke profile: every headline number present and traced to its metrics key."""

import shutil
import subprocess
from pathlib import Path

import pytest

from ultrabones.pipeline import headlines

pytestmark = pytest.mark.notebook
ROOT = Path(__file__).resolve().parents[1]


def test_summary_has_every_headline_number_traced_to_its_source(smoke_metrics, smoke):
    m = smoke_metrics("07_summary")
    stage_metrics = {f.stem: smoke.merged(f.stem) for f in (smoke.build / "metrics").glob("*.json")
                     if f.stem != "07_summary"}
    present = [r for r in headlines.ROWS if not r.optional or headlines.lookup(stage_metrics, r.source) is not None]
    assert m["n_rows"] == len(present) == len(m["rows"])
    assert m["n_missing"] == 0, [k for k, r in m["rows"].items() if r["value"] is None]
    assert m["orphan_figures"] == []
    assert m["n_seeds"] == 1
    for row in present:
        got = m["rows"][row.id]
        assert got["value"] == pytest.approx(headlines.lookup(stage_metrics, row.source)), row.id
        assert got["how"] in headlines.HOW, row.id
        assert got["criterion"] == row.criterion.text({r.id: r.quantity for r in headlines.ROWS})
        assert got["met"] in headlines.MET
    assert m["n_met"] + m["n_not_met"] == m["n_judged"]
    md = (smoke.build / "figures" / "summary_table.md").read_text()
    assert md.count("\n") == len(present) + 2  # header, rule, one line a row
    assert "| how obtained |" in md.splitlines()[0]
    assert "02_labeling.json: contour_error_mm.optimized.mean" in md
    assert "06_reconstruction.json: grid.labels_optimized.mean_mm" not in md  # the circular row is gone
    assert (smoke.build / "figures" / "summary_criteria.md").is_file()


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_a_second_make_paper_reruns_nothing(smoke_metrics, smoke):
    smoke_metrics("07_summary")  # every stage ran, each writing its stamp on success
    if not (ROOT / ".venv" / ".setup-done").exists():
        pytest.skip("make setup has not run in this checkout")
    stamps = smoke.build / "stamps"
    proc = subprocess.run(["make", "-q", str(stamps / "07_summary.done"), "PROFILE=smoke", f"B={smoke.build}",
                           f"STAMPS={stamps}"], cwd=ROOT, env=smoke.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, "make -q paper says a stage is out of date:\n" + proc.stdout + proc.stderr


@pytest.mark.notebook
def test_the_input_dataset_is_byte_identical_after_every_stage(smoke, smoke_metrics):
    """02-07 only read the input dataset: every file's checksum after 07 equals the one right after 01 wrote it."""
    smoke_metrics("07_summary")
    assert smoke.input_digest, "01 did not run in this session"
    after = smoke.dataset_digest()
    assert after == smoke.input_digest, sorted(set(after.items()) ^ set(smoke.input_digest.items()))[:5]
