"""The Makefile's stage graph: `make -n paper` lists every notebook run in order."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_dry_run_lists_notebook_runs(tmp_path):
    proc = subprocess.run(
        ["make", "-n", "paper", "PROFILE=smoke", f"B={tmp_path}/build", f"STAMPS={tmp_path}/stamps"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    runs = [line for line in proc.stdout.splitlines() if "-m ultrabones run" in line]
    stems = [line.split("-m ultrabones run ")[1].split()[0] for line in runs]
    assert stems == ["00_simulate", "01_calibration", "02_labeling", "03_rating_statistics", "04_training",
                     "05_evaluation", "06_reconstruction", "07_summary"]
    assert all("--profile smoke" in line and "--stamp" in line for line in runs)
