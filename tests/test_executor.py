"""The one executor: results in task order, callbacks as tasks finish, the same output in process and on Dask."""

from __future__ import annotations

import pytest

from ultrabones.core.executor import Executor, executor


def _square(x):
    return x * x


def test_synchronous_map_keeps_the_order_and_reports_each_result():
    seen = []
    with executor("synchronous", progress=False) as ex:
        out = ex.map(_square, [3, 1, 2], on_result=lambda i, r: seen.append((i, r)))
        assert ex.map(_square, []) == []
    assert out == [9, 1, 4] and seen == [(0, 9), (1, 1), (2, 4)]


def test_auto_runs_in_process_with_one_worker_and_rejects_unknown_kinds():
    ex = Executor("auto", None, 1, progress=False)
    assert not ex._uses_dask(10) and Executor("auto", None, 2)._uses_dask(2)
    assert not Executor("auto", None, 2)._uses_dask(1) and Executor("auto", "tcp://x:1", 1)._uses_dask(1)
    with pytest.raises(ValueError, match="kind"):
        Executor("threads")


def test_local_dask_gives_the_same_results_as_in_process():
    pytest.importorskip("distributed")
    with executor("dask", n_workers=1, progress=False) as ex:
        assert ex.map(_square, list(range(5))) == [0, 1, 4, 9, 16]


def _fail_or_sleep(x):
    import time

    if x == 0:
        raise ValueError("task 0 failed")
    time.sleep(30)
    return x


def test_a_failed_dask_task_raises_at_once_and_stops_the_others():
    """A worker's exception comes up in a few seconds, not after the other tasks (they are cancelled)."""
    import time

    pytest.importorskip("distributed")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="task 0 failed"):
        with executor("dask", n_workers=2, progress=False) as ex:
            ex.map(_fail_or_sleep, [0, 1, 2, 3])
    assert time.perf_counter() - t0 < 25  # four 30 s sleeps on two workers would take 60 s
