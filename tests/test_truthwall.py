"""The truth wall at run time (``ultrabones.twin.wall``): evasions of the static rule, planted in a throwaway
method module, are stopped when they open the twin's truth; the twin's own measurements are not.

Audit hooks cannot be removed, so every case runs in a fresh interpreter (``run_planted``) that installs
the wall, imports the planted module and calls ``run(dataset)`` with the input dataset's folder, which is
all a method stage holds (on the twin, ``<twin>/dataset``). The static rule of ``tests/test_architecture.py``
is run on each planted module as well, to show that it is the run-time hook, not the source check, that
stops it.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ultrabones.core.paths import Paths
from ultrabones.twin import layout, measure, wall

ROOT = Path(__file__).resolve().parents[1]

#: The six evasions of issue 24, each a method module's ``run(dataset)`` that reads something true.
EVASIONS = {
    "import_module": """
        import importlib
        import json

        def run(dataset):
            layout = importlib.import_module("ultrabones.twin.layout")
            return json.loads((dataset.parent / layout.TRUTH / "system.json").read_text())
        """,
    "dunder_import": """
        import json

        def run(dataset):
            layout = __import__("ultrabones.twin.layout", fromlist=["TRUTH"])
            with open(dataset.parent / layout.TRUTH / "system.json") as f:
                return json.load(f)
        """,
    "path_string": """
        import json

        def run(dataset):
            return json.loads((dataset.parent / "truth/system.json").read_text())
        """,
    "concatenation": """
        import numpy as np

        def run(dataset):
            folder = dataset.parent / ("tr" + "uth")
            return np.genfromtxt(folder / "specimen01" / "rec01" / "poses.csv", delimiter=",")
        """,
    "glob": """
        import json

        def run(dataset):
            return [json.loads(f.read_text()) for f in sorted(dataset.parent.glob("*/system.json"))]
        """,
    "measured_metrics": """
        import json

        def run(dataset):
            found = sorted(dataset.parent.glob("*/measurements/02_labeling.json"))
            return json.loads(found[0].read_text())["contour_error_mm"]
        """,
}

#: The file each evasion opens first (relative to the twin folder).
OPENS = {
    "import_module": "truth/system.json",
    "dunder_import": "truth/system.json",
    "path_string": "truth/system.json",
    "concatenation": "truth/specimen01/rec01/poses.csv",
    "glob": "truth/system.json",
    "measured_metrics": "truth/measurements/02_labeling.json",
}

DRIVER = """
import json, sys
from pathlib import Path
from ultrabones.twin import wall
from ultrabones.core.errors import TruthWallError
twin, module, where = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
if sys.argv[4] == "wall":
    wall.install([twin / "truth"])
sys.path.insert(0, where)
try:
    value = __import__(module).run(twin / "dataset")
    print(json.dumps({"ok": True, "value": repr(value)[:200]}))
except TruthWallError as exc:
    print(json.dumps({"ok": False, "error": str(exc)}))
"""


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    """A small twin folder: ``raw/``, ``dataset/``, and a ``truth/`` with system.json, a poses CSV and the
    measurements of stage 02 as :func:`ultrabones.twin.measure.write_measurements` writes them."""
    base = tmp_path_factory.mktemp("twinwall") / "twin" / "smoke"
    for sub in ("raw", "dataset"):
        (base / sub).mkdir(parents=True)
    truth = base / "truth"
    (truth / "specimen01" / "rec01").mkdir(parents=True)
    (truth / "system.json").write_text(json.dumps({"temporal_offset_ms": -123.4, "calibration": [[float(i == j) for j in range(4)]
                                                                                         for i in range(4)]}))
    (truth / "specimen01" / "rec01" / "poses.csv").write_text("1,2,3\n4,5,6\n")
    paths = Paths(build_dir=base.parent / "build", twin_dir=base, figures_dir=base.parent / "fig")
    measure.write_measurements(paths, "02_labeling", {"contour_error_mm": {"optimized": {"mean": 0.21}}})
    return base


def plant(folder: Path, name: str, source: str) -> str:
    """Write a throwaway method module ``planted_<name>`` into ``folder``; return its module name."""
    module = f"planted_{name}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    return module


def run_planted(twin: Path, folder: Path, module: str, walled: bool = True) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "lib"), os.environ.get("PYTHONPATH", "")]))
    env.pop(wall.ENV, None)
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(twin), module, str(folder), "wall" if walled else "-"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def static_rule_finds(source: str) -> bool:
    """Whether tests/test_architecture.py's source rules would flag this module (imports of the twin, the
    constant ``"truth"``, the attributes ``truth``/``truth_root``/``truth_dir``)."""
    for node in ast.walk(ast.parse(textwrap.dedent(source))):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any("ultrabones.twin" in n for n in names):
                return True
        if isinstance(node, ast.Constant) and node.value == "truth":
            return True
        if isinstance(node, ast.Attribute) and node.attr in ("truth", "truth_root", "truth_dir"):
            return True
    return False


@pytest.mark.parametrize("name", sorted(EVASIONS))
def test_the_wall_stops_each_evasion_naming_the_file_and_the_calling_module(twin, tmp_path, name):
    module = plant(tmp_path, name, EVASIONS[name])
    assert not static_rule_finds(EVASIONS[name]), "the evasion is meant to pass the static rule"
    assert run_planted(twin, tmp_path, module, walled=False)["ok"], "without the wall the evasion reads the truth"
    out = run_planted(twin, tmp_path, module)
    assert not out["ok"], out
    message = out["error"]
    opened = os.path.realpath(twin / OPENS[name])
    assert message.startswith(f"truth wall: {opened} is the twin's truth, opened by {module} "
                              f"({tmp_path / (module + '.py')}:"), message
    assert "outside ultrabones.twin" in message, message


def test_a_method_module_calling_a_twin_reader_is_stopped(twin, tmp_path):
    """The twin's own reader, imported by name and called from method code: the caller is the method."""
    module = plant(tmp_path, "twin_reader", """
        import importlib
        from ultrabones.core.paths import Paths

        def run(dataset):
            measure = importlib.import_module("ultrabones.twin.measure")
            paths = Paths(build_dir=dataset.parent, twin_dir=dataset.parent, figures_dir=dataset.parent)
            return measure.true_system(paths)
        """)
    out = run_planted(twin, tmp_path, module)
    assert not out["ok"], out
    assert out["error"].startswith(f"truth wall: {os.path.realpath(twin / 'truth/system.json')} is the twin's truth, "
                                   f"opened by {module} ("), out
    assert "through ultrabones.twin.truth_reader -> " in out["error"], out  # measure.true_system lives there


def test_a_recursive_glob_is_stopped_at_the_listing_of_the_truth_folder(twin, tmp_path):
    module = plant(tmp_path, "rglob", """
        def run(dataset):
            return sorted(str(p) for p in dataset.parent.rglob("*.json"))
        """)
    out = run_planted(twin, tmp_path, module)
    assert not out["ok"], out
    assert out["error"].startswith(f"truth wall: {os.path.realpath(twin / 'truth')}"), out
    assert f"is the twin's truth, listed by {module} (" in out["error"], out


def test_a_cell_may_not_read_the_truth_itself(twin, tmp_path):
    """A notebook cell (``__main__``) opening a truth file directly, not through the twin, is stopped too."""
    code = (f"from ultrabones.twin import wall\nwall.install([{str(twin / 'truth')!r}])\n"
            f"open({str(twin / 'truth' / 'system.json')!r}).read()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "lib")))
    assert proc.returncode == 1
    assert "TruthWallError: truth wall:" in proc.stderr and "opened by __main__ (<string>:3)" in proc.stderr, \
        proc.stderr[-2000:]


def test_the_twin_measures_through_the_wall(twin, tmp_path):
    """A measurement cell calling the twin (here the driver, ``__main__``, calling a module that hands the
    twin's paths to ``ultrabones.twin.measure``) reads the truth; so does method code the twin calls."""
    module = plant(tmp_path, "cell", """
        from ultrabones.core.paths import Paths
        from ultrabones.twin import measure

        def run(dataset):
            paths = Paths(build_dir=dataset.parent, twin_dir=dataset.parent, figures_dir=dataset.parent)
            return measure.true_system(paths)["temporal_offset_ms"], measure.read_measurements(paths, "02_labeling")
        """)
    # run() itself is not twin code: it is stopped; the same calls made from the cell are not.
    assert not run_planted(twin, tmp_path, module)["ok"]
    code = textwrap.dedent(f"""
        from pathlib import Path
        from ultrabones.core.paths import Paths
        from ultrabones.twin import measure, wall
        wall.install([{str(twin / 'truth')!r}])
        paths = Paths(build_dir=Path('.'), twin_dir=Path({str(twin)!r}), figures_dir=Path('.'))
        print(measure.true_system(paths)["temporal_offset_ms"], measure.read_measurements(paths, "02_labeling"))
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "lib")))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[0] == "-123.4" and "0.21" in proc.stdout


def test_files_outside_the_truth_folder_are_not_judged(twin, tmp_path):
    module = plant(tmp_path, "inputs", """
        def run(dataset):
            (dataset / "note.txt").write_text("input")
            return (dataset / "note.txt").read_text(), sorted(p.name for p in dataset.parent.glob("*"))
        """)
    out = run_planted(twin, tmp_path, module)
    assert out["ok"] and "'input'" in out["value"] and "'truth'" in out["value"], out


def test_importing_ultrabones_under_the_environment_walls_the_named_twins(tmp_path):
    code = "import ultrabones.twin.wall as w; print(w.walled_folders())"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "lib"),
               **{wall.ENV: os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")])})
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == repr((os.path.realpath(tmp_path / "a" / "truth"),
                                        os.path.realpath(tmp_path / "b" / "truth")))


def test_measurements_live_behind_the_wall(tmp_path):
    paths = Paths(build_dir=tmp_path / "build", twin_dir=tmp_path / "twin", figures_dir=tmp_path / "fig")
    f = measure.write_measurements(paths, "05_evaluation", {"vs_truth": {"n_frames": 3}})
    assert f == layout.truth_dir(paths) / "measurements" / "05_evaluation.json"
    assert measure.read_measurements(paths, "05_evaluation") == {"vs_truth": {"n_frames": 3}}
    assert measure.read_measurements(paths, "06_reconstruction") is None


def _notebook(path: Path, cells: list[str]) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    params = nbformat.v4.new_code_cell('twin_dir = ""\nplanted_dir = ""\n')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, str(path))
    return path


def test_the_runner_walls_the_kernel_and_its_workers(twin, tmp_path):
    """Through papermill as the runner runs stages 01-07: the twin's measurement cell reads the truth, a planted
    method module is stopped in the kernel and in a spawned worker process, and the failure names the cell,
    the file and the calling module."""
    from ultrabones.core.errors import NotebookError
    from ultrabones.pipeline import runner

    plant(tmp_path, "path_string", EVASIONS["path_string"])
    plant(tmp_path, "worker", """
        import ultrabones.core.paths  # as every method module imports the core

        def run(dataset):
            return (dataset.parent / "truth/system.json").read_text()
        """)
    setup = ("import sys\nfrom pathlib import Path\nsys.path.insert(0, planted_dir)\n"
             "from ultrabones.core.paths import Paths\nfrom ultrabones.twin import measure, wall\n"
             "walled = wall.walled_folders()\n"
             "TWIN = Paths(build_dir=Path(twin_dir), twin_dir=Path(twin_dir), figures_dir=Path(twin_dir))\n"
             "offset = measure.true_system(TWIN)['temporal_offset_ms']\n")
    worker = ("import concurrent.futures, multiprocessing, planted_worker\n"
              "with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn')) as ex:\n"
              "    try:\n        ex.submit(planted_worker.run, Path(twin_dir) / 'dataset').result()\n"
              "        in_worker = 'read'\n"
              "    except Exception as exc:\n        in_worker = f'{type(exc).__name__}: {exc}'\n")
    kernel = "import planted_path_string\nplanted_path_string.run(Path(twin_dir) / 'dataset')\n"
    nb = _notebook(tmp_path / "walled.ipynb", [setup, worker, "print(offset, walled, in_worker)", kernel])
    out = tmp_path / "executed.ipynb"
    params = {"twin_dir": str(twin), "planted_dir": str(tmp_path)}
    with pytest.raises(NotebookError) as err:
        runner.execute(nb, out, params, cwd=tmp_path, progress=False, stream=False, walled_twins=[twin])
    message = str(err.value)
    assert "walled.ipynb: cell " in message and "('import planted_path_string') raised TruthWallError" in message \
        and "raised TruthWallError" in message, message
    assert f"{os.path.realpath(twin / 'truth/system.json')} is the twin's truth" in message, message
    assert "opened by planted_path_string (" in message, message
    cell = [c for c in json.loads(out.read_text())["cells"] if "".join(c["source"]).startswith("print(offset")][0]
    printed = "".join("".join(o.get("text", "")) for o in cell["outputs"])
    assert printed.startswith(f"-123.4 ({os.path.realpath(twin / 'truth')!r},) TruthWallError: truth wall: "), printed
    assert "opened by planted_worker (" in printed, printed
    assert wall.ENV not in os.environ  # the runner's own process is left as it was


def test_the_method_stages_run_behind_the_wall_and_the_simulation_does_not(tmp_path, monkeypatch):
    from ultrabones.pipeline import runner

    monkeypatch.setenv("ULTRABONES_TWIN_ROOT", str(tmp_path / "twin"))
    (tmp_path / "twin" / "smoke-seed8").mkdir(parents=True)
    paths = Paths.for_profile("smoke")
    assert runner.walled_twins("00_simulate", paths) is None
    for stem in ("01_calibration", "03_rating_statistics", "07_summary"):
        assert runner.walled_twins(stem, paths) == [tmp_path / "twin" / "smoke", tmp_path / "twin" / "smoke-seed8"]


def test_a_method_stage_holds_paths_without_the_twin_folder(tmp_path, monkeypatch):
    from ultrabones.core.errors import DatasetError

    monkeypatch.setenv("ULTRABONES_TWIN_ROOT", str(tmp_path / "twin"))
    full = Paths.for_profile("smoke")
    method = full.for_method()
    assert method.twin_dir is None and method.is_twin
    assert method.raw == tmp_path / "twin" / "smoke" / "raw" and method.dataset == tmp_path / "twin" / "smoke" / "dataset"
    with pytest.raises(DatasetError, match="these paths are a method stage's \\(no twin folder\\)"):
        layout.truth_dir(method)
    assert layout.twin_paths(method, full.twin_dir) == full
    real = Paths.for_profile("smoke", data_root=str(tmp_path / "real")).for_method()
    assert real.dataset == tmp_path / "real" and real.twin_dir is None
    with pytest.raises(DatasetError, match="no raw recordings"):
        real.raw
    assert measure.write_measurements(layout.twin_paths(real, full.twin_dir), "02_labeling", {"x": 1}) is None
    assert not (tmp_path / "twin").exists()  # real data: nothing written into a twin folder


def test_metrics_and_measurements_split_and_merge_back():
    from ultrabones.core.merge import measured_part, merge_metrics

    method = {"n": 3, "lambda_selection": {"chosen": 10.0, "table": [1, 2]}, "against": "CT bone model",
              "per_specimen": {"s1": {"mean_mm": 0.5}}, "nan": float("nan")}
    full = {"n": 3, "lambda_selection": {"chosen": 10.0, "table": [1, 2], "oracle": 1.0}, "against": "true surface",
            "per_specimen": {"s1": {"mean_mm": 0.5, "mean_true_mm": 0.7}, "s2": {"mean_true_mm": 0.9}},
            "nan": float("nan"), "contour_error_mm": {"optimized": {"mean": 0.2}}}
    part = measured_part(full, method)
    assert part == {"lambda_selection": {"oracle": 1.0}, "against": "true surface",
                    "per_specimen": {"s1": {"mean_true_mm": 0.7}, "s2": {"mean_true_mm": 0.9}},
                    "contour_error_mm": {"optimized": {"mean": 0.2}}}
    merged = merge_metrics(method, part)
    assert merged.keys() == full.keys() and merged["nan"] != merged["nan"]
    assert {k: v for k, v in merged.items() if k != "nan"} == {k: v for k, v in full.items() if k != "nan"}
    assert merge_metrics(method, None) == method


def test_the_summary_merges_the_measurements_it_is_given(tmp_path):
    from ultrabones.core import atomic
    from ultrabones.pipeline import headlines

    paths = Paths(build_dir=tmp_path / "build" / "smoke", twin_dir=tmp_path / "twin" / "smoke",
                  figures_dir=tmp_path / "fig")
    atomic.write_json(paths.metrics("02_labeling"), {"lambda": 10.0, "lambda_selection": {"chosen": 10.0}})
    measure.write_measurements(paths, "02_labeling", {"lambda_selection": {"oracle": 1.0}})
    measure.write_measurements(paths, headlines.HELDOUT_ORACLE, {"oracle_gap_mm": 0.01})
    stems = ["02_labeling", headlines.HELDOUT_ORACLE]
    measured = measure.measured_builds(paths.twin_dir, [paths.build_dir], stems)
    assert headlines.load_all(paths, stems) == {"02_labeling": {"lambda": 10.0, "lambda_selection": {"chosen": 10.0}}}
    assert headlines.load_all(paths.for_method(), stems, measured["smoke"]) == {
        "02_labeling": {"lambda": 10.0, "lambda_selection": {"chosen": 10.0, "oracle": 1.0}},
        headlines.HELDOUT_ORACLE: {"oracle_gap_mm": 0.01}}
    runs, names = headlines.load_seed_runs(paths.build_dir, stems, measured)
    assert names == ["smoke"] and runs[0]["02_labeling"]["lambda_selection"]["oracle"] == 1.0
