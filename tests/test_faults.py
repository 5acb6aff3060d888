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
    text = (PARAMS_DIR / "default.yaml").read_text()
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


# ---------------------------------------------------------------- 13: the kernel killed


def test_case13_a_killed_kernel_gives_one_line_naming_notebook_and_cell(tmp_path):
    from pathlib import Path

    from ultrabones.core.errors import NotebookError
    from ultrabones.pipeline import runner

    fix = Path(__file__).parent / "fixtures" / "notebooks"
    out = tmp_path / "die.ipynb"
    with pytest.raises(NotebookError) as err:
        runner.execute(fix / "die.ipynb", out, {"build_dir": str(tmp_path), "value": 1}, progress=False,
                       stream=False)
    msg = str(err.value)
    assert msg.count("\n") == 0
    assert msg.startswith("die.ipynb: the kernel died in cell 4 ('import os, signal')")
    assert "rerun the stage to resume" in msg and str(out) in msg


# ---------------------------------------------------------------- 14: two runs of a stage at once


def test_case14_a_second_run_of_a_stage_into_the_same_build_folder_stops_and_names_the_first(tmp_path):
    import subprocess
    import sys

    from ultrabones.core.paths import Paths
    from ultrabones.pipeline import guards

    paths = Paths(build_dir=tmp_path / "build" / "smoke", twin_dir=tmp_path / "twin", figures_dir=tmp_path / "f")
    # the first run: another process holding the lock
    code = ("import sys, time; from pathlib import Path; from ultrabones.core.paths import Paths; "
            "from ultrabones.pipeline import guards; "
            f"p = Paths(Path({str(paths.build_dir)!r}), Path('t'), Path('f')); "
            "cm = guards.stage_lock(p, '02_labeling'); cm.__enter__(); print('held', flush=True); time.sleep(60)")
    first = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        with pytest.raises(guards.BusyError) as err:
            with guards.stage_lock(paths, "02_labeling"):
                pass
        msg = str(err.value)
        assert f"02_labeling is already running into {paths.build_dir} (pid {first.pid}, started" in msg
        assert "wait for it to finish" in msg and "ULTRABONES_BUILD_ROOT" in msg
        with guards.stage_lock(paths, "04_training"):  # another stage may run beside it (make -j)
            pass
    finally:
        first.kill()
        first.wait()
    with guards.stage_lock(paths, "02_labeling"):  # released by the kill (-9): no stale lock
        pass


# ---------------------------------------------------------------- 15: a relative ULTRABONES_BUILD_ROOT


def test_case15_a_relative_build_root_is_read_from_the_command_directory(tmp_path, monkeypatch):
    from ultrabones.pipeline import runner

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ULTRABONES_BUILD_ROOT", "rel/build")
    monkeypatch.setenv("ULTRABONES_TWIN_ROOT", "rel/twin")
    params, paths = runner.stage_parameters("02_labeling", "smoke")
    assert params["build_dir"] == str(tmp_path / "rel" / "build" / "smoke")
    assert params["twin_dir"] == str(tmp_path / "rel" / "twin" / "smoke")
    assert paths.metrics("02_labeling") == tmp_path / "rel" / "build" / "smoke" / "metrics" / "02_labeling.json"


# ---------------------------------------------------------------- 17 and "data modified": where a stage writes


def _real_paths(tmp_path, derived):
    from ultrabones.core.paths import Paths

    data = tmp_path / "data"
    (data / "specimen01" / "record01").mkdir(parents=True)
    return Paths(build_dir=tmp_path / "build" / "smoke", twin_dir=tmp_path / "twin", figures_dir=tmp_path / "f",
                 data_root=data, derived_root=derived(data) if derived else None)


@pytest.mark.parametrize("where", ["inside", "equal"])
def test_data_modified_a_derived_root_inside_the_input_is_refused(tmp_path, where):
    from ultrabones.pipeline import guards

    paths = _real_paths(tmp_path, (lambda d: d / "derived") if where == "inside" else (lambda d: d / "."))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ParamsError) as err:
        guards.check_outputs("02_labeling", paths)
    msg = str(err.value)
    verb = "lies inside" if where == "inside" else "is"
    assert f"derived_root {paths.derived} {verb} the input dataset {paths.data_root}" in msg
    assert "choose a derived_root outside it" in msg
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_data_modified_the_cli_refuses_a_derived_root_inside_the_input_before_running(tmp_path, monkeypatch, capsys):
    from ultrabones.pipeline.cli import main

    data = tmp_path / "data"
    (data / "specimen01").mkdir(parents=True)
    monkeypatch.setenv("ULTRABONES_BUILD_ROOT", str(tmp_path / "build"))
    rc = main(["run", "02", "--profile", "smoke", "-p", f"data_root={data}", "-p", f"derived_root={data}/out"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: derived_root {data}/out lies inside the input dataset {data}")
    assert not (data / "out").exists() and not (tmp_path / "build" / "smoke" / "notebooks").exists()


def test_case17_a_read_only_derived_root_is_reported_before_any_work(tmp_path, monkeypatch):
    """The real fault is EACCES/EROFS from the file system; as root (the test machine) permissions do not
    stop writes, so the refusal is simulated where the probe file is created, and a derived root that is a
    file (which no user can write into) is checked for real."""
    import errno
    import tempfile
    from pathlib import Path

    from ultrabones.pipeline import guards

    ro = tmp_path / "readonly"
    paths = _real_paths(tmp_path, lambda d: ro)
    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if dir is not None and Path(dir) == ro:
            raise PermissionError(errno.EROFS, "Read-only file system")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(guards.tempfile, "mkstemp", mkstemp)
    with pytest.raises(ParamsError) as err:
        guards.check_outputs("02_labeling", paths)
    assert str(err.value) == (f"derived_root {ro} is not writable (Read-only file system); nothing was run. "
                              "Make it writable, free space, or choose another folder")
    guards.check_outputs("03_rating_statistics", paths)  # a stage that only reads it is not stopped
    monkeypatch.undo()
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    paths = _real_paths(tmp_path / "2", lambda d: blocker / "derived")
    with pytest.raises(ParamsError, match=rf"derived_root {blocker}/derived is not writable \(Not a directory\)"):
        guards.check_outputs("02_labeling", paths)


# ---------------------------------------------------------------- 11: a text file as best.ckpt


@pytest.mark.parametrize("text", ["not a checkpoint\n",
                                  "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 1234\n"])
def test_case11_a_text_file_as_checkpoint_is_not_called_a_pickle(tmp_path, text):
    from ultrabones.core.errors import DatasetError
    from ultrabones.segmentation.checkpoint import load_checkpoint

    f = tmp_path / "best.ckpt"
    f.write_text(text)
    with pytest.raises(DatasetError) as err:
        load_checkpoint(f)
    msg = str(err.value)
    assert msg.startswith(f"{f}: not a torch checkpoint (it starts with b{text[:24]!r}")
    assert "pickle" not in msg.split(":")[1] and "arbitrary code" not in msg
    assert "replace it with the checkpoint file" in msg


def test_case11_a_real_pickle_is_still_refused_as_one(tmp_path):
    import pickle
    from fractions import Fraction  # not an allowed global of torch's weights-only loader

    from ultrabones.core.errors import DatasetError
    from ultrabones.segmentation.checkpoint import load_checkpoint

    f = tmp_path / "released.ckpt"
    f.write_bytes(pickle.dumps({"model": Fraction(1, 3)}, protocol=2))
    with pytest.raises(DatasetError, match="a pickled checkpoint \\(loading it can run arbitrary code\\); refused"):
        load_checkpoint(f)


# ---------------------------------------------------------------- 16: 04 before 02


def test_case16_training_before_labelling_names_the_derived_folder_and_notebook_02(tmp_path):
    from pathlib import Path

    from ultrabones.core.errors import DatasetError
    from ultrabones.segmentation import segdata

    data = Path(__file__).parent / "fixtures" / "real_sweep"
    derived = tmp_path / "derived"
    with pytest.warns(UserWarning, match="label folder not found"), pytest.raises(DatasetError) as err:
        segdata.labelled_frames(data, ["specimen01"], None, derived)
    assert str(err.value) == (
        f"{derived / 'specimen01'}: no labelled frames (Labels/<t>_label.png) in any record of specimen specimen01; "
        "the labels are written by notebook 02: run it first (python -m ultrabones run 02 --profile <profile>)")


# ---------------------------------------------------------------- 2 and 8: tracking.csv rows


def _copy_fixture(tmp_path):
    import shutil
    from pathlib import Path

    src = Path(__file__).parent / "fixtures" / "real_sweep"
    dst = tmp_path / "data"
    shutil.copytree(src, dst)
    return dst, dst / "specimen01" / "record01" / "tracking.csv"


@pytest.mark.parametrize("allow_missing_pose", [False, True])
def test_case02_a_tracking_csv_cut_mid_row_is_refused_naming_file_and_row(tmp_path, allow_missing_pose):
    from ultrabones.core import dataset
    from ultrabones.core.errors import DatasetError

    _, f = _copy_fixture(tmp_path)
    text = f.read_text()
    f.write_text(text[: text.rstrip("\n").rfind(",") - 3])  # the last row cut in its next-to-last number
    n_rows = len(text.strip().splitlines()) - 1
    with pytest.raises(DatasetError) as err:
        dataset.read_tracking(f, allow_missing_pose=allow_missing_pose)  # 02 reads it with allow_missing_pose
    assert str(err.value) == (f"{f} row {n_rows} (the last row, line {n_rows + 1}): 7 of 8 fields; the file looks "
                              "truncated or damaged. Restore it from the recording, or delete that row")


def test_case08_a_nan_pose_reported_bad_pose_by_02_does_not_stop_rating_or_reconstruction(tmp_path):
    """02 reports a NaN pose as bad_pose and copies the row (NaN) into the derived tracking.csv; the stages
    after it read that file and leave the frame out instead of stopping on it."""
    import numpy as np
    import pandas as pd

    from ultrabones.core import dataset
    from ultrabones.core.geometry import POSE_COLUMNS
    from ultrabones.core.tracking_table import OPTIMIZED_COLUMNS, REGISTERED_COLUMNS
    from ultrabones.rating import rating_set
    from ultrabones.reconstruction import record_points

    data, f = _copy_fixture(tmp_path)
    derived = tmp_path / "derived"
    tab = dataset.read_tracking(f)
    tab.loc[2, "x"] = np.nan  # the input's bad row (02: bad_pose)
    for opt, c in zip(OPTIMIZED_COLUMNS, POSE_COLUMNS):
        tab[opt] = tab[c] + 0.1
    for reg, c in zip(REGISTERED_COLUMNS, POSE_COLUMNS):
        tab[reg] = tab[c]
    tab.loc[2, list(OPTIMIZED_COLUMNS) + list(REGISTERED_COLUMNS)] = np.nan
    spec = dataset.read_specimen(data / "specimen01", derived / "specimen01")
    rec = spec.records[0]
    dataset.write_tracking(rec.poses_csv, tab)
    kept = [int(t) for i, t in enumerate(tab["timestamp"]) if i != 2]
    for t in kept:
        dataset.write_label(rec.label_path(t), np.ones((4, 4), bool))
    got = dataset.read_tracking(rec.poses_csv, allow_missing_pose=True)
    assert np.isnan(got.loc[2, "x"]) and len(got) == len(tab)
    frames = record_points.record_frames(rec, dataset.LABELS, ["original", "optimized"])
    assert frames.timestamps.tolist() == kept
    assert rating_set.eligible_timestamps(got).tolist() == kept
    pd.testing.assert_series_equal(got["timestamp"], tab["timestamp"])


# ---------------------------------------------------------------- 3: calibration.json misnamed


@pytest.mark.parametrize("name", ["Calibration.json", "calibration.JSON", "calibration.json.txt"])
def test_case03_a_misnamed_calibration_file_is_refused_not_replaced_by_the_released_one(tmp_path, name):
    import numpy as np

    from ultrabones.core import dataset
    from ultrabones.core.calibration_file import write_calibration
    from ultrabones.core.errors import DatasetError

    data, _ = _copy_fixture(tmp_path)
    assert dataset.calibration_source(data) == f"released (no calibration.json in {data})"
    dataset.read_calibration(data)  # no file at all: the released calibration, as documented
    write_calibration(data, np.eye(4), (0.1, 0.1), 12.0)
    assert dataset.calibration_source(data) == str(data / "calibration.json")
    (data / "calibration.json").rename(data / name)
    with pytest.raises(DatasetError) as err:
        dataset.read_calibration(data)
    assert str(err.value) == (f"{data}: no calibration.json, but {name} is there; rename it to calibration.json "
                              "(the name is case-sensitive) to use it, or move it away to use the released "
                              "calibration")


def test_case03_the_labelling_metrics_name_the_calibration_used():
    import pandas as pd

    from ultrabones.labels import batch

    rep = pd.DataFrame({"status": ["kept"], "correction_mm": [0.5], "message": [""], "seconds_optimize": [1.0]})
    res = batch.LabelingResult(report=rep, lam=1.0, objective_region="full", selection=None, registrations={},
                               calibration=(None, (0.1, 0.1)), skipped_inputs=[], settings={},
                               calibration_source="released (no calibration.json in /d)")
    assert batch.metrics(res)["calibration"] == "released (no calibration.json in /d)"


# ---------------------------------------------------------------- 5: a rating set with an item left unrated


def test_case05_an_item_left_unrated_is_refused_naming_the_rater_and_item(tmp_path):
    import pandas as pd

    from ultrabones.core.errors import DatasetError
    from ultrabones.rating import rating_set, rating_stats

    key = pd.DataFrame({"item_id": ["a1", "b2", "c3"], "specimen": "s1", "record": "r1",
                        "timestamp": [10, 10, 10], "method": list(rating_set.METHODS)[:3]})
    table = rating_set.ratings_table(key, [1, 2, 3], "ann", "set9")
    f = tmp_path / "ratings.csv"
    table.to_csv(f, index=False)
    assert len(rating_stats.read_ratings(f, key, "set9")) == 3  # complete: accepted
    table.drop(index=1).to_csv(f, index=False)
    with pytest.raises(DatasetError) as err:
        rating_stats.read_ratings(f, key, "set9")
    assert str(err.value) == (f"{f}: rater 'ann' left 1 of 3 items unrated (b2); rate every item (the page's Next "
                              "unrated button finds them) and export again")


# ---------------------------------------------------------------- 4: every lambda candidate scores 0


def test_case04_a_selection_in_which_every_candidate_scores_zero_is_refused():
    import pandas as pd

    from ultrabones.labels import select

    cols = ["region", "lambda", "timestamp", "status", "correction_mm", "n_initial", "n_optimized", "gain_first_hit"]
    rows = []
    for lam, corr in ((0.01, 1.2), (0.1, 0.8), (1000.0, 0.0)):
        for ts in (1, 2, 3, 4):  # max_correction_mm=0.3: every moving fit discarded, lambda 1000 does not move
            rows.append(("first_hit", lam, ts, "discarded" if corr > 0.3 else "kept", corr, 100, 95,
                         0.05 if corr > 0.3 else 0.0))
    table = select.score_table(pd.DataFrame(rows, columns=cols), rule="temporal")
    assert (table["score"] == 0).all()
    with pytest.raises(ParamsError) as err:
        select.require_a_measured_gain(table, 0.3, 0.5)
    assert str(err.value) == (
        "labeling: no lambda/region candidate changed the held-out bone intensity of any of the 4 selection frames "
        "(every score is 0; discard rate 0% to 100% with labeling.max_correction_mm=0.3 mm and "
        "labeling.min_label_fraction=0.5); the largest lambda would label every frame with no correction. Loosen "
        "those limits, or give labeling.lambda_value to label with a lambda of your choice")
    # one candidate that measured a gain (even a loss) is a selection to trust
    rows[0] = ("first_hit", 0.01, 1, "kept", 0.2, 100, 95, -0.01)
    table = select.score_table(pd.DataFrame(rows, columns=cols), rule="temporal")
    select.require_a_measured_gain(table, 0.3, 0.5)
    assert select.choose(table)[0] == 1000.0


def test_case04_the_labelling_stops_before_labelling_when_every_candidate_scores_zero(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_labeling import labeling_params, make_twin

    from ultrabones.labels import batch

    paths = make_twin(tmp_path, n_frames=5)
    P = labeling_params(lambdas=[0.01, 1.0], max_correction_mm=0.001, lambda_frames=2, selection_rule="split")
    with pytest.raises(ParamsError, match=r"no lambda/region candidate changed .*\(every score is 0; discard rate \d+% "
                                          r"to 100% with labeling.max_correction_mm=0.001 mm"):
        batch.run(paths, P, seed=0)
    assert not paths.derived.exists()  # nothing labelled, nothing written


# ---------------------------------------------------------------- 9: a CT model in metres, or far from every frame


@pytest.mark.parametrize("fault", ["metres", "far"])
def test_case09_a_ct_model_no_frame_comes_near_is_named_before_anything_is_written(tmp_path, fault):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_labeling import labeling_params, make_twin

    from ultrabones.core import dataset
    from ultrabones.core.errors import DatasetError
    from ultrabones.labels import batch

    paths = make_twin(tmp_path, n_frames=4)
    stl = paths.dataset / "specimen01" / "CT_bone_model.stl"
    mesh = dataset.read_mesh(stl)
    if fault == "metres":
        mesh.apply_scale(0.001)
    else:
        mesh.apply_translation([0.0, 0.0, 1000.0])
    dataset.write_mesh(stl, mesh)
    with pytest.raises(DatasetError) as err:
        batch.run(paths, labeling_params(lambda_value=1.0), seed=0)
    msg = str(err.value)
    assert msg.startswith(f"{stl}: none of the 4 labelled frames of specimen specimen01 comes near this CT bone model "
                          "(every frame no_bone; the model is ")
    assert ("a model in metres?" in msg) == (fault == "metres")
    assert msg.endswith("Check that the model is in mm and in the CT frame of the tracking (the specimen's own "
                        "model), and the calibration; nothing was written")
    assert not paths.derived.exists()


# ---------------------------------------------------------------- 1: an all-black frame


def test_case01_echo_level_known_answers():
    import numpy as np

    from ultrabones.labels import cloud

    img = np.zeros((100, 100), np.uint8)
    assert cloud.echo_level(img) == 0.0
    img[0, :100] = 255  # exactly the brightest 1 % at full scale
    assert cloud.echo_level(img) == 1.0
    img[0, :50] = 51  # half of them at 0.2
    assert cloud.echo_level(img) == pytest.approx(0.6)
    assert cloud.echo_level(np.full((10, 10), 0.25)) == 0.25  # float images are on [0, 1]
    assert cloud.no_echo_message(np.zeros((4, 4), np.uint8), "f.png", 0.0) is None  # 0: off


def test_case01_an_all_black_frame_is_skipped_as_no_echo_not_relabelled(tmp_path):
    import sys
    from pathlib import Path

    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent))
    from test_labeling import labeling_params, make_twin

    from ultrabones.core import dataset
    from ultrabones.labels import batch, cloud

    paths = make_twin(tmp_path, n_frames=4)
    rec = dataset.read_specimen(paths.dataset / "specimen01", paths.derived / "specimen01").records[0]
    ts = rec.timestamps()
    levels = [cloud.echo_level(dataset.read_image(rec.image_path(t))) for t in ts]
    assert min(levels) > 0.1  # the synthetic frames carry echoes
    dataset.write_image(rec.image_path(ts[2]), np.zeros_like(dataset.read_image(rec.image_path(ts[2]))))
    out = batch.run(paths, labeling_params(lambda_value=1.0), seed=0)
    rep = out.report.set_index("timestamp")
    assert rep.loc[ts[2], "status"] == "no_echo"
    assert rep.loc[ts[2], "message"] == (f"{rec.image_path(ts[2])}: no echo (its brightest 1% of pixels average "
                                         "0.000 of full scale, under labeling.min_echo_level 0.1); skipped, not labelled")
    assert (rep.drop(index=ts[2])["status"] != "no_echo").all()
    assert not rec.label_path(ts[2]).exists()
    m = batch.summarize(out.report)
    assert m["status_counts"]["no_echo"] == 1
    assert [f["timestamp"] for f in m["skipped_frames"]] == [int(ts[2])]


# ---------------------------------------------------------------- 12: disk full while writing the derived dataset


def test_case12_disk_full_names_the_file_and_leaves_no_record_new_beside_old_ones(tmp_path, monkeypatch):
    import errno
    import hashlib
    import shutil
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_labeling import labeling_params, make_twin

    from ultrabones.core import dataset
    from ultrabones.core.errors import DatasetError
    from ultrabones.labels import batch

    paths = make_twin(tmp_path, n_frames=3)
    spec_dir = paths.dataset / "specimen01"
    shutil.copytree(spec_dir / "record01", spec_dir / "record02")
    batch.run(paths, labeling_params(lambda_value=1.0), seed=0)

    def snapshot():
        return {str(f.relative_to(paths.derived)): hashlib.sha256(f.read_bytes()).hexdigest()
                for f in sorted(paths.derived.rglob("*")) if f.is_file()}

    before = snapshot()
    assert any(k.startswith("specimen01/record02/Labels/") for k in before)
    real = dataset.write_tracking

    def full_disk(path, df):
        if "record02" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, df)

    monkeypatch.setattr(dataset, "write_tracking", full_disk)
    with pytest.raises(DatasetError) as err:
        batch.run(paths, labeling_params(lambda_value=0.01), seed=0)  # another lambda: every record would change
    assert str(err.value) == (
        f"{paths.derived / 'specimen01' / 'record02' / 'tracking.csv'}: could not be written (no space left on the "
        f"device); nothing of this run was written into the derived dataset {paths.derived} (it holds the previous "
        "run's records unchanged). Free space or choose another derived_root, and rerun: the labelled frames are "
        "cached")
    assert snapshot() == before  # record01 kept its old labels, tracking.csv and report, as record02 did
    assert not [p for p in paths.derived.rglob(".*") if ".new-" in p.name or ".old-" in p.name]
    monkeypatch.undo()
    out = batch.run(paths, labeling_params(lambda_value=0.01), seed=0)  # space freed: the rerun completes
    assert snapshot() != before and len(out.report) == 6


def test_case16_evaluation_before_training_says_to_run_notebook_04(tmp_path):
    from ultrabones.core.errors import DatasetError
    from ultrabones.core.params import load_profile
    from ultrabones.core.paths import Paths
    from ultrabones.evaluation import benchmark

    P = benchmark.EvaluationParams.from_section(load_profile("smoke", PARAMS_DIR).values["evaluation"])
    assert P.checkpoint is None
    paths = Paths(build_dir=tmp_path / "build", twin_dir=tmp_path / "twin", figures_dir=tmp_path / "f")
    with pytest.raises(DatasetError) as err:
        benchmark.run(paths, P, progress=False)
    assert str(err.value) == (f"{paths.models_dir / 'best.ckpt'}: checkpoint not found; notebook 04 trains it: run it "
                              "first (python -m ultrabones run 04 --profile <profile>), or give evaluation.checkpoint")
