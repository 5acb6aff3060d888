"""build/<profile>/timings.json and the stage table (issue 26): known answers, merging, bad files, the CLI."""

from __future__ import annotations

import json
import time

import pytest

from ultrabones.core import timings
from ultrabones.core.executor import executor, local_worker_config


def _clock(values):
    it = iter(values)
    return lambda: next(it)


def test_phases_take_the_clock_difference_and_add_up_when_entered_twice():
    ph = timings.Phases()
    with ph.phase("frames", frames=3, clock=_clock([10.0, 12.5])):
        pass
    with ph.phase("frames", clock=_clock([20.0, 21.0])) as extra:
        extra["frames"] = 2  # known only at the end
    with ph.phase("writing", clock=_clock([5.0, 5.25])):
        pass
    d = ph.as_dict()
    assert list(d) == ["frames", "writing"]
    assert d["frames"]["cpu_s"] == pytest.approx(3.5) and d["frames"]["frames"] == 5
    assert d["writing"]["cpu_s"] == pytest.approx(0.25) and "frames" not in d["writing"]
    assert all(v["wall_s"] >= 0 for v in d.values())


def test_phase_default_clock_counts_this_process():
    ph = timings.Phases()
    with ph.phase("busy"):
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.2:
            pass
    assert ph.as_dict()["busy"]["cpu_s"] >= 0.19


def test_runner_and_notebook_entries_merge_and_give_the_per_frame_cost(tmp_path):
    ph = timings.Phases()
    with ph.phase("frames", frames=40, clock=_clock([0.0, 8.0])):
        pass
    timings.record(tmp_path, "02_labeling", ph, frames=50)
    entry = timings.record_stage(tmp_path, "02_labeling", wall_s=12.0, cpu_s=20.0, peak_rss_mb=300.0)
    timings.record_stage(tmp_path, "00_simulate", wall_s=3.0, cpu_s=5.0, peak_rss_mb=100.0)
    assert entry["cpu_s_per_frame"] == pytest.approx(0.4)  # 20 core-s over 50 frames
    data = timings.read(tmp_path)
    assert set(data) == {"00_simulate", "02_labeling"}
    assert data["02_labeling"]["phases"]["frames"]["cpu_s"] == pytest.approx(8.0)
    assert data["02_labeling"]["wall_s"] == 12.0 and "cpu_s_per_frame" not in data["00_simulate"]
    text = timings.table(data, ["00_simulate", "01_calibration", "02_labeling"])
    lines = text.splitlines()
    assert [ln.split()[0] for ln in lines[2:5]] == ["00_simulate", "02_labeling", "frames"]
    assert "0.200" in lines[4]  # the phase's 8 core-s over 40 frames
    rest = next(ln for ln in lines if ln.strip().startswith("rest"))
    assert rest.split()[-1] == "12.0"  # 20 core-s of the stage, 8 in its phases
    total = lines[-1].split()
    assert total[:3] == ["total", "15.0", "25.0"]


def test_a_corrupt_timings_file_is_replaced_not_fatal(tmp_path):
    timings.timings_path(tmp_path).write_text("{not json")
    assert timings.read(tmp_path) == {}
    timings.record_stage(tmp_path, "03_rating_statistics", 1.0, 2.0, 3.0)
    assert list(json.loads(timings.timings_path(tmp_path).read_text())) == ["03_rating_statistics"]


def test_stage_key_names_a_one_specimen_run():
    assert timings.stage_key("02_labeling") == "02_labeling"
    assert timings.stage_key("02_labeling", "specimen03") == "02_labeling__specimen03"


def test_cli_prints_the_table_or_says_there_is_none(tmp_path, monkeypatch, capsys):
    from ultrabones.pipeline.cli import main

    monkeypatch.setenv("ULTRABONES_BUILD_ROOT", str(tmp_path))
    assert main(["timings", "--profile", "smoke"]) == 1
    assert "no timings in" in capsys.readouterr().err
    timings.record_stage(tmp_path / "smoke", "04_training", 60.0, 110.0, 900.0)
    assert main(["timings", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "04_training" in out and "110.0" in out and "(1.0 min wall)" in out


def _worker_state(_):
    import os

    import dask

    busy = time.thread_time()
    while time.thread_time() - busy < 0.3:
        pass
    return (dask.config.get("distributed.worker.profile.enabled"), os.environ.get("OMP_NUM_THREADS"),
            os.environ.get("MALLOC_TRIM_THRESHOLD_"))


def test_local_workers_run_without_malloc_trim_or_profiler_with_one_blas_thread_and_their_cpu_counts(monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.delenv("ULTRABONES_DASK_PROFILE", raising=False)
    assert local_worker_config()["distributed.worker.profile.enabled"] is False
    monkeypatch.setenv("ULTRABONES_DASK_PROFILE", "1")
    assert local_worker_config()["distributed.worker.profile.enabled"] is True
    monkeypatch.delenv("ULTRABONES_DASK_PROFILE")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the workers get theirs from the executor
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with executor("dask", n_workers=1, progress=False) as ex:
        ex.map(_worker_state, [None])  # start the cluster
        c0 = ex.cpu_seconds()
        (profiled, omp, trim), = ex.map(_worker_state, [None])
        spent = ex.cpu_seconds() - c0
    assert profiled is False and omp == "1"
    assert trim is None  # glibc's adaptive mmap threshold kept (Dask's default sets 65536)
    assert spent >= 0.3  # the worker's busy loop is counted, wherever it ran
