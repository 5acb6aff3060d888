"""The papermill runner: success, a failing cell, parameter mismatch."""

import json
from pathlib import Path

import pytest

from ultrabones.pipeline import runner
from ultrabones.core.errors import NotebookError, ParamsError

FIX = Path(__file__).parent / "fixtures" / "notebooks"


def test_parameter_names():
    assert runner.parameter_names(FIX / "ok.ipynb") == ["build_dir", "value"]


def test_runs_a_notebook_and_keeps_executed_copy(tmp_path):
    out = tmp_path / "executed" / "ok.ipynb"
    runner.execute(FIX / "ok.ipynb", out, {"build_dir": str(tmp_path), "value": 7}, progress=False)
    assert json.loads((tmp_path / "metrics" / "fixture.json").read_text()) == {"value_squared": 49}
    nb = json.loads(out.read_text())
    assert any(c.get("outputs") is not None for c in nb["cells"])  # an executed copy
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in nb["cells"])


def test_the_labelling_kernel_runs_one_blas_thread_and_this_process_keeps_its_environment(tmp_path, monkeypatch):
    for k in runner.ONE_BLAS_THREAD:
        monkeypatch.delenv(k, raising=False)
    env = runner.kernel_environment("02_labeling", {"device": None})
    assert env == runner.ONE_BLAS_THREAD
    assert runner.kernel_environment("02_labeling", {"device": "cuda"}) == {}  # torch keeps its threads
    assert runner.kernel_environment("04_training", {}) == {}
    runner.execute(FIX / "env.ipynb", tmp_path / "env.ipynb", {"build_dir": str(tmp_path), "value": 1},
                   progress=False, kernel_env=env)
    assert json.loads((tmp_path / "metrics" / "env.json").read_text()) == {"OMP_NUM_THREADS": "1",
                                                                          "OPENBLAS_NUM_THREADS": "1"}
    assert "OMP_NUM_THREADS" not in runner.os.environ  # restored
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own setting wins
    assert "OMP_NUM_THREADS" not in runner.kernel_environment("02_labeling", {"device": None})


def test_failing_cell_names_notebook_cell_and_exception(tmp_path):
    out = tmp_path / "fail.ipynb"
    with pytest.raises(NotebookError) as err:
        runner.execute(FIX / "fail.ipynb", out, {"build_dir": str(tmp_path), "value": 3}, progress=False)
    msg = str(err.value)
    assert "fail.ipynb" in msg
    assert "raise ValueError" in msg  # the failing cell's first line
    assert "ValueError: fixture failure for value 3" in msg
    assert str(out) in msg and out.is_file()  # the executed copy is kept for inspection


def test_unknown_and_missing_parameters_refused(tmp_path):
    with pytest.raises(ParamsError, match="not in its parameters cell: valu"):
        runner.execute(FIX / "ok.ipynb", tmp_path / "x.ipynb", {"build_dir": "b", "value": 1, "valu": 2})
    with pytest.raises(ParamsError, match="declared but not passed: value"):
        runner.execute(FIX / "ok.ipynb", tmp_path / "x.ipynb", {"build_dir": "b"})


def test_unknown_notebook():
    with pytest.raises(ParamsError, match="notebook '42': no match"):
        runner.resolve_notebook("42")


def test_cli_reports_one_line_error(capsys):
    from ultrabones.pipeline.cli import main

    assert main(["run", "42", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: notebook '42': no match") and err.count("\n") == 1


def test_injected_paths_are_absolute_from_the_command_directory(tmp_path, monkeypatch):
    """A relative data_root typed by the user must not be read from notebooks/ (papermill's cwd)."""
    from ultrabones.core.paths import PARAMS_DIR

    monkeypatch.setenv("ULTRABONES_BUILD_ROOT", str(tmp_path / "build"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    params, paths = runner.stage_parameters("03_rating_statistics", "smoke",
                                            assignments=["data_root=mydata", "ratings_csv=~/r.csv"])
    assert params["data_root"] == str(tmp_path / "mydata")
    assert params["ratings_csv"] == str(tmp_path / "home" / "r.csv")
    assert paths.dataset == tmp_path / "mydata"
    # a profile outside params/ runs under its own build folder
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "smoke.yaml").write_text((PARAMS_DIR / "smoke.yaml").read_text())
    params, paths = runner.stage_parameters("03_rating_statistics", "elsewhere/smoke.yaml")
    assert params["profile"].startswith("smoke-") and paths.build_dir.name == params["profile"]
    assert params["build_dir"] != str(tmp_path / "build" / "smoke")


def test_skip_summary_says_how_many_frames_were_skipped_and_why(tmp_path, capsys):
    m = {"status_counts": {"kept": 20, "discarded": 2, "no_bone": 1, "bad_pose": 0, "bad_image": 1},
         "skipped_frames": [{"specimen": "s1", "record": "r1", "timestamp": 1050, "status": "bad_image",
                             "message": "/d/s1/r1/UltrasoundImages/1050.png: image size 200x180 differs"}],
         "skipped_inputs": [{"path": "/d/s2", "reason": "no records"}]}
    lines = runner.skip_summary(m, "02_labeling")
    assert lines[0] == "02_labeling: 4 of 24 frames skipped: discarded 2, no_bone 1, bad_image 1"
    assert "bad_image s1/r1/1050: /d/s1/r1/UltrasoundImages/1050.png" in lines[1]
    assert lines[2] == "02_labeling: 1 input folder(s) not recognised and skipped:" and "/d/s2: no records" in lines[3]
    assert runner.skip_summary({"status_counts": {"kept": 3}}) == []
    assert runner.skip_summary({"value": 1}) == []
    f = tmp_path / "m.json"
    f.write_text(json.dumps(m))
    assert runner.report_skips(f, "02_labeling") == lines
    err = capsys.readouterr().err
    assert "[ultrabones] 02_labeling: 4 of 24 frames skipped" in err
    assert runner.report_skips(tmp_path / "missing.json") == []


def test_seed_runs_into_its_own_folders(tmp_path, monkeypatch):
    """--seed N: the profile with master seed N, in build/<profile>-seed<N>/ and data/twin/<profile>-seed<N>/."""
    monkeypatch.setenv("ULTRABONES_BUILD_ROOT", str(tmp_path / "build"))
    monkeypatch.setenv("ULTRABONES_TWIN_ROOT", str(tmp_path / "twin"))
    params, paths = runner.stage_parameters("00_simulate", "smoke", seed=3)
    assert params["seed"] == 3 and params["profile"] == "smoke-seed3"
    assert paths.build_dir == tmp_path / "build" / "smoke-seed3"
    assert paths.twin_dir == tmp_path / "twin" / "smoke-seed3"
    assert params["build_dir"] == str(paths.build_dir) and params["twin_dir"] == str(paths.twin_dir)
    assert paths.figures_dir == tmp_path / "build" / "smoke-seed3" / "figures"
    plain, plain_paths = runner.stage_parameters("00_simulate", "smoke")
    assert plain["profile"] == "smoke" and plain_paths.build_dir == tmp_path / "build" / "smoke"
    with pytest.raises(ParamsError, match="once"):
        runner.stage_parameters("00_simulate", "smoke", assignments=["seed=4"], seed=3)
    with pytest.raises(ParamsError, match="seed"):
        runner.stage_parameters("00_simulate", "smoke", seed=-1)


def test_cli_seed_reaches_the_runner_and_the_digest(tmp_path, monkeypatch):
    from ultrabones.pipeline import cli

    monkeypatch.setenv("ULTRABONES_BUILD_ROOT", str(tmp_path / "build"))
    monkeypatch.setenv("ULTRABONES_TWIN_ROOT", str(tmp_path / "twin"))
    seen = {}
    monkeypatch.setattr(runner, "run_stage", lambda *a, **k: seen.update(args=a, kwargs=k))
    assert cli.main(["run", "02", "--profile", "smoke", "--seed", "2", "--no-progress"]) == 0
    assert seen["kwargs"]["seed"] == 2
    out = tmp_path / "digest.txt"
    assert cli.main(["inputs-digest", "--profile", "smoke", "--seed", "2", "--out", str(out)]) == 0
    assert "smoke-seed2" in out.read_text()
