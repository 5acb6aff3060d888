"""The Makefile's stage graph: `make -n paper` lists every notebook run in order."""

import re
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


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_stamps_depend_on_the_data_root_and_its_content(tmp_path):
    """`make paper DATA_ROOT=/another/dataset` with stamps present used to run nothing."""
    import os
    import sys
    import time

    data_a, data_b = tmp_path / "a", tmp_path / "b"
    for d in (data_a, data_b):
        (d / "specimen01" / "record01").mkdir(parents=True)
        (d / "specimen01" / "record01" / "tracking.csv").write_text(f"timestamp,x\n1,{d.name}\n")
    env = dict(os.environ, ULTRABONES_BUILD_ROOT=str(tmp_path / "build_root"))
    build, stamps = tmp_path / "build", tmp_path / "stamps"

    def dry_run(data):
        proc = subprocess.run(["make", "-n", "paper", "PROFILE=smoke", f"B={build}", f"STAMPS={stamps}",
                               f"DATA_ROOT={data}", f"PY={sys.executable}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr
        return [line.split("-m ultrabones run ")[1].split()[0]
                for line in proc.stdout.splitlines() if "-m ultrabones run" in line]

    def stamp_all():
        time.sleep(0.05)
        stamps.mkdir(exist_ok=True)
        for stem in ("00_simulate", "01_calibration", "02_labeling", "03_rating_statistics", "04_training",
                     "05_evaluation", "06_reconstruction", "07_summary"):
            (stamps / f"{stem}.done").write_text("done\n")
        time.sleep(0.05)

    assert len(dry_run(data_a)) == 8  # no stamps yet; the digest file is written
    digest = build / "inputs.digest"
    text = digest.read_text()
    assert f"data_root: {data_a}" in text and "files: 1" in text
    stamp_all()
    assert dry_run(data_a) == []  # up to date: the digest was regenerated but not rewritten
    assert digest.read_text() == text
    assert len(dry_run(data_b)) == 8  # another DATA_ROOT reruns every stage
    stamp_all()
    assert dry_run(data_b) == []
    (data_b / "specimen01" / "record01" / "tracking.csv").write_text("timestamp,x\n1,changed\n")
    assert len(dry_run(data_b)) == 8  # the same DATA_ROOT with other content reruns too


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_seed_runs_into_the_seed_build(tmp_path):
    """`make paper SEED=2` passes --seed 2 to every run and stamps into build/<profile>-seed2/."""
    import os
    import sys

    env = dict(os.environ, ULTRABONES_BUILD_ROOT=str(tmp_path / "build_root"),
               ULTRABONES_TWIN_ROOT=str(tmp_path / "twin_root"))
    digest = tmp_path / "inputs.digest"  # written even under -n; kept out of the repository's build/
    proc = subprocess.run(["make", "-n", "paper", "PROFILE=smoke", "SEED=2", f"PY={sys.executable}",
                           f"DIGEST={digest}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    runs = [line for line in proc.stdout.splitlines() if "-m ultrabones run" in line]
    assert len(runs) == 8
    assert all("--profile smoke --seed 2" in line and "--stamp build/smoke-seed2/stamps/" in line for line in runs)
    assert "smoke-seed2" in digest.read_text()


def test_the_makefile_stage_lists_are_the_schema_s():
    """The Makefile's STAGES and PER_SPECIMEN are written out for make; the schema holds them (one place)."""
    from ultrabones.core import schema

    text = (ROOT / "Makefile").read_text()
    lists = {name: value.split() for name, value in re.findall(r"^(STAGES|PER_SPECIMEN)\s*:=\s*(.*)$", text, re.M)}
    assert lists["STAGES"] == list(schema.NOTEBOOKS), "Makefile STAGES differs from core/schema.py NOTEBOOKS"
    assert lists["PER_SPECIMEN"] == list(schema.PER_SPECIMEN), "Makefile PER_SPECIMEN differs from the schema's"
