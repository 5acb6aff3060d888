"""The package's one parallel executor: in this process, on a local Dask cluster, or at a scheduler address.

Every stage that runs independent tasks (the twin's specimens, the calibration's
specimens, the labelling's registrations and chunks) maps them through
:func:`executor`::

    with executor("auto", scheduler=None, n_workers=2) as ex:
        results = ex.map(job, tasks, desc="specimens", on_result=save)

Local parallel work runs in worker *processes* (a ``distributed.LocalCluster``
with one thread per worker, spawned, not forked: open3d's and BLAS's threads
do not survive a fork), so it scales to a real cluster by passing the
scheduler's address instead. Results come back in the order of the tasks,
whatever order they finish in; the output never depends on the executor.

The local workers start without ``MALLOC_TRIM_THRESHOLD_``, which Dask's nanny
sets to 64 KiB by default (:func:`local_worker_config`). Setting it switches off
glibc's adaptive mmap threshold, so every array above 128 KiB is mapped afresh
from the kernel and unmapped when freed: the labelling's per-candidate arrays
then cost a page fault per 4 KiB. Measured on the same twin frames in one
process, 0.234 core-s a frame without it and 0.352-0.378 with it (1.15 million
page faults, 2 s of system time for 15 frames), the main part of the pipeline's
per-frame overhead against ``bench_labeling_sweep`` (issue 26;
``benchmarks/bench_labeling_pipeline.py`` compares the two on the same frames).
Dask's statistical profiler (a thread sampling the task's stack every 10 ms) is
off too, a few per cent (``ULTRABONES_DASK_PROFILE=1`` keeps it, for Dask's
dashboard). Each worker runs one thread with ``OMP_NUM_THREADS``,
``MKL_NUM_THREADS`` and ``OPENBLAS_NUM_THREADS`` at 1: no BLAS or OpenMP
oversubscription.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from typing import Any, Callable, Iterator, Sequence

KINDS = ("auto", "dask", "synchronous")


def show_progress(progress: bool | None = None) -> bool:
    """Whether to draw progress bars: ``progress`` if given, else unless ``ULTRABONES_NO_PROGRESS`` is set."""
    return os.environ.get("ULTRABONES_NO_PROGRESS") is None if progress is None else bool(progress)


def _worker_cpu_seconds() -> float:
    """A worker process's core-seconds (all its threads)."""
    return time.process_time()


def local_worker_config() -> dict:
    """Dask settings of the local cluster's workers: glibc's malloc left adaptive (Dask's
    ``MALLOC_TRIM_THRESHOLD_`` unset: ``None`` tells the nanny not to set it), the profiler off (unless
    ``ULTRABONES_DASK_PROFILE=1``), one BLAS/OpenMP thread per worker process."""
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", None) or {})
    environ.update({k: 1 for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    environ["MALLOC_TRIM_THRESHOLD_"] = None
    return {"distributed.worker.profile.enabled": os.environ.get("ULTRABONES_DASK_PROFILE") == "1",
            "distributed.nanny.pre-spawn-environ": environ}


def blocks(items: Sequence, n_workers: int, per_worker: int = 4) -> list[list]:
    """``items`` cut, in order, into about ``per_worker`` blocks a worker: tasks balanced over ``n_workers``
    workers, and few of them (each task carries its block's share of the set-up)."""
    items = list(items)
    step = max(1, -(-len(items) // (per_worker * max(1, int(n_workers)))))
    return [items[i:i + step] for i in range(0, len(items), step)]


class Executor:
    """Maps a function over tasks; see :func:`executor`.

    Attributes
    ----------
    kind : ``"auto"``, ``"dask"`` or ``"synchronous"``.
    scheduler : Dask scheduler address, or None.
    n_workers : local worker processes.
    progress : draw a progress bar per :meth:`map`.
    """

    def __init__(self, kind: str = "auto", scheduler: str | None = None, n_workers: int = 1,
                 progress: bool | None = None):
        if kind not in KINDS:
            raise ValueError(f"executor: kind {kind!r} is not one of {KINDS}")
        self.kind = kind
        self.scheduler = scheduler or None
        self.n_workers = max(int(n_workers), 1)
        self.progress = show_progress(progress)
        self._client = None
        self._cluster = None

    def _uses_dask(self, n_tasks: int) -> bool:
        if self.kind == "synchronous":
            return False
        if self.kind == "dask" or self.scheduler:
            return True
        return self.n_workers > 1 and n_tasks > 1

    def _dask_client(self):
        if self._client is None:
            from distributed import Client, LocalCluster

            if self.scheduler:
                self._client = Client(self.scheduler)
            else:
                import dask

                with dask.config.set(local_worker_config()):  # the spawned workers inherit this config
                    self._cluster = LocalCluster(n_workers=self.n_workers, threads_per_worker=1, processes=True,
                                                 dashboard_address=None, silence_logs=40)
                self._client = Client(self._cluster)
        return self._client

    def map(self, fn: Callable[[Any], Any], tasks: Sequence, desc: str = "", unit: str = "task",
            on_result: Callable[[int, Any], None] | None = None) -> list:
        """``[fn(t) for t in tasks]``, in this process or on Dask, with a progress bar.

        Parameters
        ----------
        fn : a picklable top-level function of one task.
        tasks : the tasks (picklable).
        desc, unit : the progress bar's label and unit.
        on_result : called as ``on_result(i, result)`` in this process as soon as task ``i``
            finishes (to cache it before the others are done).

        Returns
        -------
        The results, in the order of ``tasks``.
        """
        from tqdm import tqdm

        tasks = list(tasks)
        out: list = [None] * len(tasks)
        if not tasks:
            return out
        bar = tqdm(total=len(tasks), desc=desc, unit=unit, disable=not self.progress)
        try:
            if self._uses_dask(len(tasks)):
                from distributed import as_completed

                futures = self._dask_client().map(fn, tasks, pure=False)
                index = {f.key: i for i, f in enumerate(futures)}
                try:
                    for fut in as_completed(futures):
                        i = index[fut.key]
                        out[i] = fut.result()
                        if on_result is not None:
                            on_result(i, out[i])
                        bar.update()
                except BaseException:  # a task failed (or Ctrl-C): the others stop now, the error goes up
                    self._client.cancel(futures, force=True)
                    raise
            else:
                for i, t in enumerate(tasks):
                    out[i] = fn(t)
                    if on_result is not None:
                        on_result(i, out[i])
                    bar.update()
        finally:
            bar.close()
        return out

    def cpu_seconds(self) -> float:
        """Core-seconds so far of this process, its reaped children and the Dask workers it started or uses.

        For timing a phase (:class:`ultrabones.core.timings.Phases`): the difference of two calls is
        the CPU the phase cost wherever it ran. The workers' own clocks are read only when a cluster is up.
        """
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        total = time.process_time() + ru.ru_utime + ru.ru_stime
        if self._client is not None:
            try:
                total += sum(self._client.run(_worker_cpu_seconds).values())
            except Exception:  # a worker lost mid-call: its time is missing, the run goes on  # noqa: BLE001
                pass
        return total

    def close(self) -> None:
        """Close the Dask client and the local cluster, if started."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


@contextlib.contextmanager
def executor(kind: str = "auto", scheduler: str | None = None, n_workers: int = 1,
             progress: bool | None = None) -> Iterator[Executor]:
    """An :class:`Executor`, closed on exit.

    Parameters
    ----------
    kind : ``"synchronous"``: every task in this process; ``"dask"``: every task on Dask (the
        scheduler at ``scheduler``, or a ``LocalCluster`` of ``n_workers`` processes with one
        thread each); ``"auto"``: Dask when ``scheduler`` is given or when ``n_workers > 1``
        and a map has more than one task, else in this process. A local cluster starts at the
        first map that needs it.
    scheduler : Dask scheduler address (``tcp://host:8786``), or None.
    n_workers : local worker processes.
    progress : progress bars (None: unless ``ULTRABONES_NO_PROGRESS`` is set).
    """
    ex = Executor(kind, scheduler, n_workers, progress)
    try:
        yield ex
    finally:
        ex.close()
