"""Scale-out is real: the labelling runs on a Dask cluster started as separate processes on localhost.

A ``dask scheduler`` and a ``dask worker`` are started with the venv's ``dask`` command, exactly as on a
real cluster; the labelling is sent to the scheduler's address (``dask_scheduler``) and must give the same
labels and report as the in-process run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ultrabones.core import dataset
from ultrabones.labels import batch

from test_labeling import labeling_params, make_twin

DASK = Path(sys.executable).with_name("dask")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    if not DASK.is_file():
        pytest.skip(f"{DASK} not installed")
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    logs = [open(tmp_path / "scheduler.log", "w"), open(tmp_path / "worker.log", "w")]
    sched = subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                              "--no-dashboard"], stdout=logs[0], stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    worker = subprocess.Popen([str(DASK), "worker", addr, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                               "--local-directory", str(tmp_path / "worker")], stdout=logs[1],
                              stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        from distributed import Client

        deadline = time.time() + 90
        while True:
            try:
                with Client(addr, timeout=5) as c:
                    if c.scheduler_info()["workers"]:
                        break
            except OSError:
                pass
            if time.time() > deadline or sched.poll() is not None or worker.poll() is not None:
                pytest.fail(f"the Dask cluster did not start: {(tmp_path / 'scheduler.log').read_text()[-2000:]}"
                            f"\n{(tmp_path / 'worker.log').read_text()[-2000:]}")
            time.sleep(1)
        yield addr
    finally:
        for p in (worker, sched):
            p.terminate()
        for p in (worker, sched):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs:
            f.close()


def test_labelling_through_a_scheduler_address_gives_the_local_labels(tmp_path, cluster):
    local = make_twin(tmp_path / "local", n_frames=4)
    remote = make_twin(tmp_path / "remote", n_frames=4)
    P = labeling_params(lambda_value=None, executor="synchronous")
    a = batch.run(local, P, seed=0)
    b = batch.run(remote, replace(P, executor="dask"), seed=0, dask_scheduler=cluster)
    cols = ["specimen", "record", "timestamp", "status", "correction_mm", "rot_x_deg", "trans_z_mm"]
    pd.testing.assert_frame_equal(a.report[cols], b.report[cols])
    assert a.lam == b.lam
    for ra, rb in zip(dataset.read_specimen(local.dataset / "specimen01", local.derived / "specimen01").records,
                      dataset.read_specimen(remote.dataset / "specimen01", remote.derived / "specimen01").records):
        for t in ra.labelled_timestamps(dataset.LABELS_FULL):
            assert np.array_equal(dataset.read_label(ra.label_path(t, dataset.LABELS_FULL)),
                                  dataset.read_label(rb.label_path(t, dataset.LABELS_FULL)))
        assert len(ra.labelled_timestamps(dataset.LABELS_FULL)) == len(rb.labelled_timestamps(dataset.LABELS_FULL))
