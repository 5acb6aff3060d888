"""What each stage cost: ``build/<profile>/timings.json`` and the stage table ``make paper`` prints.

Two writers fill one entry per stage (keyed by the notebook's stem):

* the runner (:func:`ultrabones.pipeline.runner.run_stage`), around the notebook's kernel: ``wall_s``
  (seconds), ``cpu_s`` (core-seconds of the kernel and every process it started and reaped, its local
  Dask workers included: ``getrusage(RUSAGE_CHILDREN)``), ``peak_rss_mb`` (the largest of those
  processes' peak resident memory, MiB) and ``finished`` (UTC);
* the notebook, through :func:`record` (inside the kernel, before the runner): its ``phases`` (name ->
  ``wall_s``, ``cpu_s`` of the kernel and the Dask workers, ``frames``), measured with :class:`Phases`,
  and ``frames``, the frames the stage processed, for the per-frame cost (``cpu_s_per_frame``).

Writes take a lock on the file and replace it atomically, so stages run side by side (``make -j``)
lose nothing. :func:`table` renders the file as text (``python -m ultrabones timings --profile P``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ultrabones.core import atomic

FILE = "timings.json"


def stage_key(stem: str, specimen: str | None = None) -> str:
    """A stage's entry: its stem, with ``__<specimen>`` for a one-specimen run (``make specimen``)."""
    return f"{stem}__{specimen}" if specimen else stem


def timings_path(build_dir: Path | str) -> Path:
    """``build/<profile>/timings.json``."""
    return Path(build_dir) / FILE


def process_cpu_s() -> float:
    """Core-seconds of this process (all its threads) and of its children that have ended and been reaped."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ru.ru_utime + ru.ru_stime


def children_usage() -> tuple[float, float]:
    """(core-seconds, peak resident MiB) of this process's reaped children (and theirs), from ``getrusage``.

    The peak is the largest single process's, not a sum (Linux reports ``ru_maxrss`` in KiB).
    """
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    scale = 1.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss * scale / 2**20


class Phases:
    """Wall and CPU time of a stage's named phases, in order.

    >>> ph = Phases()
    >>> with ph.phase("writing", frames=3):
    ...     pass
    >>> sorted(ph.as_dict()["writing"])
    ['cpu_s', 'frames', 'wall_s']

    A phase run on Dask passes ``clock``: a function giving the core-seconds of this process and of the
    cluster's workers (:meth:`ultrabones.core.executor.Executor.cpu_seconds`); the default clock counts this
    process only. A phase entered twice adds up.
    """

    def __init__(self):
        self._phases: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def phase(self, name: str, frames: int | None = None, clock: Callable[[], float] | None = None) -> Iterator[dict]:
        clock = clock or process_cpu_s
        t0, c0 = time.perf_counter(), clock()
        extra: dict[str, Any] = {}
        try:
            yield extra
        finally:
            entry = self._phases.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
            entry["wall_s"] += time.perf_counter() - t0
            entry["cpu_s"] += max(clock() - c0, 0.0)
            n = extra.get("frames", frames)
            if n is not None:
                entry["frames"] = int(entry.get("frames", 0)) + int(n)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {k: dict(v) for k, v in self._phases.items()}


def _update(path: Path, stem: str, values: Mapping[str, Any]) -> dict:
    """Merge ``values`` into ``path``'s entry for ``stem`` under an exclusive lock; return the entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        entry = dict(data.get(stem) or {})
        entry.update(values)
        if entry.get("frames") and entry.get("cpu_s") is not None:
            entry["cpu_s_per_frame"] = float(entry["cpu_s"]) / int(entry["frames"])
        data[stem] = entry
        atomic.write_text(path, json.dumps(dict(sorted(data.items())), indent=1) + "\n")
    return entry


def record(build_dir: Path | str, stem: str, phases: Phases | Mapping | None = None,
           frames: int | None = None) -> dict:
    """Write a notebook's own timings (its phases, the frames it processed) into its stage's entry.

    Parameters
    ----------
    build_dir : ``build/<profile>`` (``Paths.build_dir``).
    stem : the notebook's stem (``"02_labeling"``).
    phases : a :class:`Phases` (or its :meth:`Phases.as_dict`).
    frames : frames the stage processed (for ``cpu_s_per_frame``).
    """
    values: dict[str, Any] = {}
    if phases is not None:
        values["phases"] = phases.as_dict() if isinstance(phases, Phases) else dict(phases)
    if frames is not None:
        values["frames"] = int(frames)
    return _update(timings_path(build_dir), stem, values)


def record_stage(build_dir: Path | str, stem: str, wall_s: float, cpu_s: float, peak_rss_mb: float) -> dict:
    """Write the runner's measurement of a stage (wall seconds, core-seconds, peak MiB) into its entry."""
    return _update(timings_path(build_dir), stem, {
        "wall_s": float(wall_s), "cpu_s": float(cpu_s), "peak_rss_mb": float(peak_rss_mb),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def read(build_dir: Path | str) -> dict:
    """The timings file as a dict (empty when missing or unreadable)."""
    try:
        data = json.loads(timings_path(build_dir).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def table(data: Mapping[str, Mapping], stages: list[str] | None = None) -> str:
    """The stage table: wall, core-seconds, peak MiB, frames and core-s per frame, phases indented.

    Parameters
    ----------
    data : :func:`read`'s dict.
    stages : the stems in order (default: sorted); those without an entry are left out.

    Returns
    -------
    The table as text, with a total line (wall and CPU summed over the stages shown).
    """
    stems = [s for s in (stages or sorted(data)) if s in data]
    head = f"{'stage':28s} {'wall s':>9s} {'CPU s':>9s} {'peak MiB':>9s} {'frames':>7s} {'CPU s/frame':>12s}"
    lines = [head, "-" * len(head)]
    wall = cpu = 0.0
    for s in stems:
        e = data[s]
        lines.append(f"{s:28s} {_fmt(e.get('wall_s'), '9.1f')} {_fmt(e.get('cpu_s'), '9.1f')} "
                     f"{_fmt(e.get('peak_rss_mb'), '9.0f')} {_fmt(e.get('frames'), '7d')} "
                     f"{_fmt(e.get('cpu_s_per_frame'), '12.3f')}")
        wall += float(e.get("wall_s") or 0.0)
        cpu += float(e.get("cpu_s") or 0.0)
        phases = e.get("phases") or {}
        for name, p in phases.items():
            n = p.get("frames")
            per = p["cpu_s"] / n if n and isinstance(p.get("cpu_s"), (int, float)) else None
            lines.append(f"  {name:26s} {_fmt(p.get('wall_s'), '9.1f')} {_fmt(p.get('cpu_s'), '9.1f')} "
                         f"{'':9s} {_fmt(n, '7d')} {_fmt(per, '12.3f')}")
        if phases and isinstance(e.get("wall_s"), (int, float)) and isinstance(e.get("cpu_s"), (int, float)):
            rest_wall = e["wall_s"] - sum(float(p.get("wall_s") or 0.0) for p in phases.values())
            rest_cpu = e["cpu_s"] - sum(float(p.get("cpu_s") or 0.0) for p in phases.values())
            lines.append(f"  {'rest (start, figures)':26s} {rest_wall:9.1f} {rest_cpu:9.1f}")
    lines.append("-" * len(head))
    lines.append(f"{'total':28s} {wall:9.1f} {cpu:9.1f}   ({wall / 60:.1f} min wall)")
    return "\n".join(lines)
