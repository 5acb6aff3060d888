"""Notebook 07 on the smoke profile: every headline number present and traced to its metrics key."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ultrabones.pipeline import summary

pytestmark = pytest.mark.notebook
ROOT = Path(__file__).resolve().parents[1]


def test_summary_has_every_headline_number_traced_to_its_source(smoke_metrics, smoke):
    m = smoke_metrics("07_summary")
    assert m["n_rows"] == len(summary.ROWS)
    assert m["n_missing"] == 0, [q for q, r in m["rows"].items() if r["value"] is None]
    assert m["orphan_figures"] == []
    stage_metrics = {stem: json.loads(f.read_text()) for f in (smoke.build / "metrics").glob("*.json")
                     for stem in [f.stem]}
    for row in summary.ROWS:
        got = m["rows"][row.quantity]
        assert got["value"] == summary.lookup(stage_metrics, row.source), row.quantity
        assert got["reproduced"] == summary.reproduced(row, got["value"])
    md = (smoke.build / "figures" / "summary_table.md").read_text()
    assert md.count("\n") == len(summary.ROWS) + 2  # header, rule, one line a row
    assert "02_labeling.json: discard_rate" in md


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_a_second_make_paper_reruns_nothing(smoke_metrics, smoke):
    smoke_metrics("07_summary")  # every stage ran, each writing its stamp on success
    if not (ROOT / ".venv" / ".setup-done").exists():
        pytest.skip("make setup has not run in this checkout")
    stamps = smoke.build / "stamps"
    proc = subprocess.run(["make", "-q", str(stamps / "07_summary.done"), "PROFILE=smoke", f"B={smoke.build}",
                           f"STAMPS={stamps}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, "make -q paper says a stage is out of date:\n" + proc.stdout + proc.stderr
