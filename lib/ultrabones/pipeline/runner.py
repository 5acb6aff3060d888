"""Executing notebooks with papermill, with validated parameters and clear failures.

:func:`execute` runs any notebook with a parameter mapping that must match its
``parameters`` cell exactly (papermill itself only warns about unknown names).
:func:`run_stage` resolves a numbered notebook and a profile into parameters
and paths, executes it into ``build/<profile>/notebooks/`` and checks that it
wrote its metrics file.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ultrabones import TRUTH_WALL_ENV
from ultrabones.core import paper
from ultrabones.core.errors import NotebookError, ParamsError
from ultrabones.core.params import NOTEBOOKS, load_profile
from ultrabones.core.paths import NOTEBOOKS_DIR, PARAMS_DIR, Paths, twin_root
from ultrabones.core import timings
from ultrabones.pipeline import guards
from ultrabones.pipeline.progress import ProgressRelay


def resolve_notebook(name: str) -> Path:
    """``"02"``, ``"02_labeling"`` or a path -> the notebook file.

    Raises
    ------
    ParamsError
        If no notebook, or more than one, matches.
    """
    p = Path(name)
    if p.suffix == ".ipynb" and p.is_file():
        return p
    matches = sorted(NOTEBOOKS_DIR.glob(f"{name}*.ipynb"))
    if len(matches) != 1:
        known = ", ".join(sorted(NOTEBOOKS))
        raise ParamsError(f"notebook {name!r}: {'no' if not matches else 'several'} match (known: {known})")
    return matches[0]


def parameter_names(notebook: Path) -> list[str]:
    """Names assigned in the notebook's cell tagged ``parameters``, in order.

    Raises
    ------
    NotebookError
        If the notebook has no such cell.
    """
    nb = json.loads(Path(notebook).read_text())
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            names = []
            for node in ast.parse(src).body:
                targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
                for t in targets:
                    if isinstance(t, ast.Name):
                        names.append(t.id)
            return names
    raise NotebookError(f"{notebook}: no cell tagged 'parameters'")


def check_parameters(notebook: Path, parameters: Mapping[str, Any]) -> None:
    """Raise :class:`ParamsError` unless ``parameters`` names exactly the notebook's parameters."""
    declared = set(parameter_names(notebook))
    given = set(parameters)
    unknown, missing = sorted(given - declared), sorted(declared - given)
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"not in its parameters cell: {', '.join(unknown)}")
        if missing:
            parts.append(f"declared but not passed: {', '.join(missing)}")
        raise ParamsError(f"{Path(notebook).name}: parameter mismatch ({'; '.join(parts)})")


def _failure_message(notebook: Path, output: Path) -> str:
    """One line naming the notebook, the failing cell and the exception."""
    try:
        nb = json.loads(output.read_text())
    except (OSError, ValueError):
        return f"{notebook.name} failed (no executed copy at {output})"
    for i, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []) or []:
            if out.get("output_type") == "error":
                first = "".join(cell.get("source", "")).strip().splitlines()
                head = first[0][:70] if first else ""
                return (
                    f"{notebook.name}: cell {i} ({head!r}) raised {out.get('ename')}: {out.get('evalue')}"
                    f" -- executed copy kept at {output}"
                )
    return f"{notebook.name} failed -- executed copy kept at {output}"


def _dead_kernel_message(notebook: Path, output: Path) -> str:
    """One line for a kernel that died (killed, or out of memory): the notebook, the cell it was running
    (the last cell papermill started, numbered as in the executed copy)."""
    where = ""
    try:
        nb = json.loads(output.read_text())
        for i, cell in enumerate(nb.get("cells", [])):
            if (cell.get("metadata", {}).get("papermill") or {}).get("start_time"):  # the last cell started
                first = "".join(cell.get("source", "")).strip().splitlines()
                where = f" in cell {i} ({first[0][:70]!r})" if first else f" in cell {i}"
    except (OSError, ValueError, AttributeError):
        pass
    return (f"{notebook.name}: the kernel died{where} (killed, or out of memory); finished work is cached, "
            f"rerun the stage to resume -- executed copy kept at {output}")


def execute(
    notebook: Path,
    output: Path,
    parameters: Mapping[str, Any],
    cwd: Path | None = None,
    progress: bool = True,
    stream: bool = True,
    walled_twins: Sequence[Path] | None = None,
    kernel_env: Mapping[str, str] | None = None,
) -> Path:
    """Execute a notebook with papermill (kernel ``python3``, this Python).

    Parameters
    ----------
    notebook : the source notebook.
    output : the executed copy's path (kept on failure, for inspection).
    parameters : exactly the names of the notebook's ``parameters`` cell.
    cwd : working directory of the kernel (default: the notebook's folder).
    progress : show papermill's cell progress bar.
    stream : relay the kernel's stderr (progress bars, warnings) to this stderr as lines, with a
        heartbeat after a minute of silence (:class:`ultrabones.pipeline.progress.ProgressRelay`).
    walled_twins : twin folders whose ``truth/`` only ``ultrabones.twin`` code may open in the kernel and its
        worker processes (the truth wall, :mod:`ultrabones.twin.wall`: the kernel imports ``ultrabones``
        before the first cell, with :data:`ultrabones.TRUTH_WALL_ENV` set); None: none.
    kernel_env : environment variables the kernel (and the processes it starts) get beside this process's
        (e.g. :func:`kernel_environment`); this process's own are restored afterwards.

    Raises
    ------
    ParamsError
        If the parameters do not match the ``parameters`` cell.
    NotebookError
        If a cell fails; the message names the notebook, cell and exception.
    """
    import papermill as pm
    from nbclient.exceptions import DeadKernelError

    notebook = Path(notebook)
    check_parameters(notebook, parameters)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # The kernel's tqdm bars (frames done of total, rate, ETA) reach the terminal through the relay,
    # at most one line per bar every few seconds; the kernel inherits this setting.
    os.environ.setdefault("TQDM_MININTERVAL", "2")
    relay = ProgressRelay(sys.stderr, prefix=f"[{notebook.stem}] ", min_interval_s=10.0,
                          heartbeat_s=60.0 if stream else 0.0)
    env = dict(kernel_env or {})
    walled = {}
    if walled_twins is not None:  # the kernel inherits this environment; its workers too
        walled = {"extra_arguments": ["--IPKernelApp.exec_lines=__import__('ultrabones')"]}
        env[TRUTH_WALL_ENV] = os.pathsep.join(str(Path(t).resolve()) for t in walled_twins)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        pm.execute_notebook(
            str(notebook),
            str(output),
            parameters=dict(parameters),
            kernel_name="python3",
            cwd=str(cwd or notebook.parent),
            progress_bar=progress,
            log_output=False,
            stderr_file=relay if stream else None,
            **walled,
        )
    except pm.PapermillExecutionError:
        raise NotebookError(_failure_message(notebook, output)) from None
    except DeadKernelError:
        raise NotebookError(_dead_kernel_message(notebook, output)) from None
    finally:
        relay.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return output


#: Thread settings of a kernel whose numerics are numpy's small matrix products (one frame's candidate
#: poses): there BLAS threads only spin. Measured on 20 real frames (warm-started sweep, popsize 10):
#: 0.28 CPU-s a frame with numpy's default threads on 2 cores, 0.17 with one, the same wall time.
ONE_BLAS_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def kernel_environment(stem: str, params: Mapping[str, Any]) -> dict[str, str]:
    """Environment variables a stage's kernel gets (:func:`execute`'s ``kernel_env``).

    The labelling (02) runs in one BLAS thread (:data:`ONE_BLAS_THREAD`: its Dask workers already do,
    :func:`ultrabones.core.executor.local_worker_config`; this covers the frames the kernel labels itself,
    with ``executor: synchronous``), unless its optimiser runs on torch (``labeling.device``). A variable
    already set in this process's environment is left as the user set it.
    """
    if stem == "02_labeling" and params.get("device") is None:
        return {k: v for k, v in ONE_BLAS_THREAD.items() if k not in os.environ}
    return {}


#: Per-frame statuses that mean a frame was used; every other status counts as skipped.
USED_STATUSES = ("kept", "ok", "done")


def skip_summary(metrics: Mapping[str, Any], stem: str = "", max_items: int = 5) -> list[str]:
    """Lines saying how many frames a stage skipped and why, from its metrics dict.

    Reads, where present: ``status_counts`` (status -> frames; statuses other
    than :data:`USED_STATUSES` are skips), ``skipped_frames`` (the first
    ``max_items`` messages) and ``skipped_inputs`` (unrecognised dataset
    folders). Returns no line when the stage reports none of these or
    skipped nothing.
    """
    lines = []
    head = f"{stem}: " if stem else ""
    counts = metrics.get("status_counts")
    if isinstance(counts, Mapping) and counts:
        try:
            counts = {str(k): int(v) for k, v in counts.items()}
        except (TypeError, ValueError):
            counts = {}
        total = sum(counts.values())
        skipped = {k: v for k, v in counts.items() if k not in USED_STATUSES and v > 0}
        if skipped:
            why = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items(), key=lambda kv: -kv[1]))
            lines.append(f"{head}{sum(skipped.values())} of {total} frames skipped: {why}")
    frames = metrics.get("skipped_frames")
    if isinstance(frames, list) and frames:
        for item in frames[:max_items]:
            if isinstance(item, Mapping):
                where = "/".join(str(item[k]) for k in ("specimen", "record", "timestamp") if k in item)
                lines.append(f"  {item.get('status', 'skipped')} {where}: {item.get('message', '')}".rstrip())
        if len(frames) > max_items:
            lines.append(f"  ... and {len(frames) - max_items} more (see the metrics file)")
    inputs = metrics.get("skipped_inputs")
    if isinstance(inputs, list) and inputs:
        lines.append(f"{head}{len(inputs)} input folder(s) not recognised and skipped:")
        for item in inputs[:max_items]:
            if isinstance(item, Mapping):
                lines.append(f"  {item.get('path')}: {item.get('reason')}")
        if len(inputs) > max_items:
            lines.append(f"  ... and {len(inputs) - max_items} more (see the metrics file)")
    return lines


def report_skips(metrics_file: Path, stem: str = "") -> list[str]:
    """Print :func:`skip_summary` of a metrics JSON to stderr; return the lines (none for an unreadable file)."""
    try:
        data = json.loads(Path(metrics_file).read_text())
    except (OSError, ValueError):
        return []
    lines = skip_summary(data, stem) if isinstance(data, Mapping) else []
    for line in lines:
        print(f"[ultrabones] {line}", file=sys.stderr, flush=True)
    return lines


def seeded_name(profile: str, seed: int | None) -> str:
    """The run name of a profile under another master seed: ``<profile>-seed<N>`` (``profile`` for None).

    A seeded run writes to ``build/<profile>-seed<N>/`` and ``data/twin/<profile>-seed<N>/``, so
    that runs of several seeds sit side by side (see :func:`ultrabones.pipeline.headlines.seed_builds`).
    """
    return profile if seed is None else f"{profile}-seed{int(seed)}"


def seeded_profile(profile: str, assignments: list[str] | None = None, seed: int | None = None,
                   specimen: str | None = None, section_hint: str | None = None):
    """Load a profile with ``seed`` as its master seed and the run name of :func:`seeded_name`.

    Raises
    ------
    ParamsError
        If ``seed`` is out of the schema's range, or ``-p seed=...`` is given together with it.
    """
    assignments = list(assignments or [])
    if seed is not None:
        if any(a.split("=", 1)[0].strip() == "seed" for a in assignments):
            raise ParamsError("give the master seed once: --seed N, not also -p seed=...")
        assignments.append(f"seed={int(seed)}")
    prof = load_profile(profile, PARAMS_DIR, assignments, specimen=specimen, section_hint=section_hint)
    check_not_sealed(prof.values["seed"])
    prof.name = seeded_name(prof.name, seed)
    return prof


#: Set to 1 (by ``make unseal`` only) to run the sealed seeds their one time.
UNSEAL_ENV = "ULTRABONES_UNSEAL"


def check_not_sealed(seed: int) -> None:
    """Refuse a master seed of :data:`ultrabones.core.paper.SEALED_SEEDS` unless ``ULTRABONES_UNSEAL=1``.

    A sealed seed is evidence only while nothing has been tuned on it: it runs once, by ``make unseal``, and its
    results are reported as they come out.

    Raises
    ------
    ParamsError
        Naming the seed and how it is unsealed.
    """
    if seed in paper.SEALED_SEEDS and os.environ.get(UNSEAL_ENV) != "1":
        raise ParamsError(
            f"seed {seed} is sealed (ultrabones.core.paper.SEALED_SEEDS = {list(paper.SEALED_SEEDS)}): nothing may "
            f"run on it before the one run that reports it; that run is 'make unseal' (it sets {UNSEAL_ENV}=1)")


def stage_parameters(
    stem: str, profile: str, specimen: str | None = None, assignments: list[str] | None = None,
    seed: int | None = None,
) -> tuple[dict, Paths]:
    """The validated parameters and paths of a stage run (``seed``: another master seed, own folders)."""
    if stem not in NOTEBOOKS:
        raise ParamsError(f"notebook {stem!r} is not a stage (known: {', '.join(NOTEBOOKS)})")
    prof = seeded_profile(profile, assignments, seed, specimen=specimen, section_hint=NOTEBOOKS[stem])
    paths = Paths.for_profile(prof.name, prof.values["data_root"], prof.values.get("derived_root"))
    params = prof.notebook_parameters(stem)
    params.update(
        profile=prof.name,
        twin_dir=str(paths.twin_dir),
        build_dir=str(paths.build_dir),
        figures_dir=str(paths.figures_dir),
    )
    return params, paths


#: The stage that writes the truth; every later one (the method's 01-07) runs behind the truth wall.
SIMULATION_STAGE = "00_simulate"


def walled_twins(stem: str, paths: Paths) -> list[Path] | None:
    """The twin folders whose truth a stage's kernel may open only from ``ultrabones.twin`` code: for the
    method stages (01-07), the run's twin and the twins beside it (other seeds, other profiles, which 07 may
    summarise); None for the simulation (00), which writes the truth."""
    if stem == SIMULATION_STAGE:
        return None
    beside = sorted(p for p in twin_root().glob("*") if p.is_dir()) if twin_root().is_dir() else []
    return [paths.twin_dir, *[p for p in beside if p != paths.twin_dir]]


def run_stage(
    name: str,
    profile: str = "default",
    specimen: str | None = None,
    assignments: list[str] | None = None,
    stamp: Path | None = None,
    progress: bool = True,
    seed: int | None = None,
) -> Path:
    """Run one numbered notebook for a profile; return its metrics file.

    The executed copy goes to ``build/<profile>/notebooks/<stem>.ipynb`` (with
    ``__<specimen>`` for a one-specimen run). ``stamp`` is written only after
    success, for ``make``. With ``seed``, the profile runs with that master
    seed into ``build/<profile>-seed<N>/`` and ``data/twin/<profile>-seed<N>/``. The stage's wall time,
    core-seconds (the kernel and the processes it started) and peak memory go into
    ``build/<profile>/timings.json`` (:mod:`ultrabones.core.timings`).
    Stages 01-07 run behind the truth wall (:func:`walled_twins`, :mod:`ultrabones.twin.wall`).
    """
    notebook = resolve_notebook(name)
    stem = notebook.stem
    params, paths = stage_parameters(stem, profile, specimen, assignments, seed=seed)
    suffix = f"__{specimen}" if specimen else ""
    output = paths.notebooks_dir / f"{stem}{suffix}.ipynb"
    metrics = paths.metrics(stem)
    guards.check_outputs(stem, paths)
    with guards.stage_lock(paths, stem):
        return _run_locked(notebook, stem, params, paths, output, metrics, stamp, progress, specimen)


def _run_locked(notebook, stem, params, paths, output, metrics, stamp, progress, specimen) -> Path:
    """:func:`run_stage` once its checks passed and it holds the stage's lock."""
    before = metrics.stat().st_mtime if metrics.exists() else None
    t0 = time.time()
    print(f"[ultrabones] {stem} (profile {params['profile']}{', specimen ' + specimen if specimen else ''}) ...",
          file=sys.stderr, flush=True)
    cpu0, _ = timings.children_usage()
    execute(notebook, output, params, cwd=NOTEBOOKS_DIR, progress=progress, walled_twins=walled_twins(stem, paths),
            kernel_env=kernel_environment(stem, params))
    if not metrics.exists() or (before is not None and metrics.stat().st_mtime <= before):
        raise NotebookError(f"{notebook.name} finished but did not write {metrics}")
    wall = time.time() - t0
    cpu1, peak = timings.children_usage()  # the kernel and its Dask workers, reaped when they ended
    timings.record_stage(paths.build_dir, timings.stage_key(stem, specimen), wall, cpu1 - cpu0, peak)
    print(f"[ultrabones] {stem} done in {wall:.1f} s ({cpu1 - cpu0:.1f} CPU s) -> {metrics}", file=sys.stderr,
          flush=True)
    report_skips(metrics, stem)
    if stamp is not None:
        stamp = Path(stamp)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(f"{stem} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
    return metrics
