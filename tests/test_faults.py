"""Issue 27: every fault a clear answer.

One test per case of the issue (numbered as there): each reproduces the fault on a small synthetic input or on
a copy of a fixture and asserts the clear error (naming the file, row or key, and what to do) or the correct
result. See docs/faults.md for the table of cases and messages.
"""

from __future__ import annotations

import pytest

from ultrabones.core.errors import ParamsError
from ultrabones.core.params import load_profile
from ultrabones.core.paths import PARAMS_DIR


# ---------------------------------------------------------------- 6, 7, 10: parameter values


def test_case06_empty_value_is_refused_not_null():
    with pytest.raises(ParamsError) as err:
        load_profile("smoke", PARAMS_DIR, ["labeling.max_frames_per_record="])
    msg = str(err.value)
    assert "labeling.max_frames_per_record" in msg and "empty value" in msg and "=null" in msg
    # an explicit null is still a null
    prof = load_profile("smoke", PARAMS_DIR, ["labeling.max_frames_per_record=null"])
    assert prof.values["labeling"]["max_frames_per_record"] is None


@pytest.mark.parametrize("key", ["labeling.max_correction_mm", "labeling.gamma_mm"])
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_case07_case10_nan_and_infinite_values_are_refused(key, value):
    with pytest.raises(ParamsError) as err:
        load_profile("smoke", PARAMS_DIR, [f"{key}={value}"])
    msg = str(err.value)
    assert key in msg and "not a finite number" in msg and "give a number" in msg


def test_case07_nan_in_a_profile_file_is_refused(tmp_path):
    text = (PARAMS_DIR / "smoke.yaml").read_text()
    assert "max_correction_mm:" in text
    import re

    bad = re.sub(r"max_correction_mm:[^\n#]*", "max_correction_mm: .nan ", text, count=1)
    (tmp_path / "nan.yaml").write_text(bad)
    with pytest.raises(ParamsError, match=r"nan\.yaml: labeling\.max_correction_mm: nan is not a finite number"):
        load_profile(str(tmp_path / "nan.yaml"), PARAMS_DIR)


# ---------------------------------------------------------------- Makefile: DATA_ROOT with a space


@pytest.mark.skipif(__import__("shutil").which("make") is None, reason="make not installed")
def test_makefile_passes_a_data_root_with_a_space_and_a_quote_as_one_argument(tmp_path):
    import os
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    data = tmp_path / "my data" / "it's here"
    (data / "specimen01" / "record01").mkdir(parents=True)
    (data / "specimen01" / "record01" / "tracking.csv").write_text("timestamp,x\n1,2\n")
    env = dict(os.environ, ULTRABONES_BUILD_ROOT=str(tmp_path / "build_root"))
    proc = subprocess.run(["make", "-n", "paper", "PROFILE=smoke", f"B={tmp_path}/build", f"STAMPS={tmp_path}/st",
                           f"DATA_ROOT={data}", f"PY={sys.executable}"],
                          cwd=root, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    runs = [line for line in proc.stdout.splitlines() if "-m ultrabones run" in line]
    assert runs and all(f"data_root={data}" in shlex.split(line) for line in runs)
    # the digest recipe (run even under -n) received the whole path
    assert f"data_root: {data}" in (tmp_path / "build" / "inputs.digest").read_text()
