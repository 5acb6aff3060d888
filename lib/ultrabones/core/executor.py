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
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator, Sequence

KINDS = ("auto", "dask", "synchronous")


def show_progress(progress: bool | None = None) -> bool:
    """Whether to draw progress bars: ``progress`` if given, else unless ``ULTRABONES_NO_PROGRESS`` is set."""
    return os.environ.get("ULTRABONES_NO_PROGRESS") is None if progress is None else bool(progress)


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
                for fut in as_completed(futures):
                    i = index[fut.key]
                    out[i] = fut.result()
                    if on_result is not None:
                        on_result(i, out[i])
                    bar.update()
            else:
                for i, t in enumerate(tasks):
                    out[i] = fn(t)
                    if on_result is not None:
                        on_result(i, out[i])
                    bar.update()
        finally:
            bar.close()
        return out

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
