"""The labelling pipeline's per-frame cost against the benchmark's, on the same frames (issue 26): on demand.

    # real frames (../shared/real_sweep), no twin needed
    OMP_NUM_THREADS=1 python -m pytest -q -s benchmarks/bench_labeling_pipeline.py -k real
    # twin frames: a default twin first (one specimen: about 3 min on one core)
    python -m ultrabones run 00 --profile default -p simulate.n_specimens=1 -p n_workers=1
    python -m ultrabones run 01 --profile default -p simulate.n_specimens=1 -p n_workers=1
    OMP_NUM_THREADS=1 python -m pytest -q -s benchmarks/bench_labeling_pipeline.py -k twin

The pipeline (:func:`ultrabones.labels.batch.run`, lambda fixed at 0.1 and the region at ``first_hit``, so
that the frames, the objective and every optimiser setting are the benchmark's) labels, on a local Dask
cluster of ``BENCH_PIPE_WORKERS`` workers (default 2), ``BENCH_PIPE_FRAMES`` frames per record (default 12,
spread along each sweep) where the profile solves frames one by one (``optimizer: de``, the twin), and every
labelled frame (the profile's ``frame_stride``) where it warm-starts them along the sweep (``optimizer:
sweep``, the real profile). Then the same frames are optimised here, in this process, by the benchmark's code
(:func:`reference`: ``optimize_sweep`` as ``benchmarks/bench_labeling_sweep.py`` runs it, with the profile's
warm-start settings, or ``optimize_frame``; same seeds): the corrections must be equal, and the pipeline's
mean optimisation cost per frame (process CPU seconds, ``seconds_optimize`` of the report) must be within 20%
of the in-process cost. Both are printed, with the paths (cold DE, warm, warm then DE) and the pipeline's
whole wall and CPU time (this process and its Dask workers) per frame; the numbers are written to
``figures/bench/labeling_pipeline_<real|twin>.json``. Where the pipeline kept more than one
worker busy, the reference is timed a second time in as many processes at once (records dealt round-robin),
so that both sides run under the same load: on a 2-core machine two busy processes each take more CPU time
per frame than one alone (shared caches and memory bandwidth), which is not the pipeline's overhead.

``BENCH_PIPE_DASK_DEFAULTS=1`` starts the workers with Dask's own defaults instead of
:func:`ultrabones.core.executor.local_worker_config` (``MALLOC_TRIM_THRESHOLD_=65536`` and the profiler on),
to show what they cost (issue 26).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from bench_release_scale import record

REPO = Path(__file__).resolve().parents[1]
TWIN_ROOT = Path(os.environ.get("ULTRABONES_TWIN_ROOT", REPO / "data" / "twin"))
REAL = Path(os.environ.get("BENCH_REAL_ROOT", REPO.parent / "shared" / "real_sweep"))
if not REAL.is_dir():
    REAL = Path("/work/shared/real_sweep")
N_FRAMES = int(os.environ.get("BENCH_PIPE_FRAMES", "12"))
N_WORKERS = int(os.environ.get("BENCH_PIPE_WORKERS", "2"))
LAM, REGION, MAX_RATIO = 0.1, "first_hit", 1.2


def _cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _setup(profile: str, build_root: Path, data_root: Path | None):
    """(paths, LabelingParams) of ``profile`` with lambda and region fixed, ``N_FRAMES`` frames per record."""
    from ultrabones.core import params as prm
    from ultrabones.core.paths import Paths
    from ultrabones.labels import batch
    from ultrabones.pipeline.runner import stage_parameters

    assignments = [f"data_root={data_root}"] if data_root is not None else []
    values, _ = stage_parameters("02_labeling", profile, assignments=assignments)
    P = batch.LabelingParams.from_section(prm.collect(values, "02_labeling"))
    P = dataclasses.replace(P, objective_region=REGION, lambda_value=LAM, executor="dask", device=None)
    if P.optimizer != "sweep":  # frames solved one by one: a sample along each sweep will do
        P = dataclasses.replace(P, max_frames_per_record=N_FRAMES, frame_stride=1)
    # a warm-started sweep is timed as it runs: every labelled frame of the profile (its stride)
    twin = TWIN_ROOT / profile
    paths = Paths(build_root / profile, twin, build_root / "figures",
                  data_root, build_root / "derived" if data_root is not None else None)
    return paths, P


def reference(P, paths, rep, processes: int = 1) -> tuple[list[float], list[float], list[bool], list[str]]:
    """:func:`reference_part` over all records of ``rep``, in ``processes`` processes at once (records dealt
    round-robin): 2 gives the reference the load the pipeline's 2 workers put on a 2-core machine."""
    keys = sorted(set(zip(rep["specimen"], rep["record"])))
    groups = [keys[i::processes] for i in range(processes)]
    if processes == 1:
        parts = [reference_part(P, paths, rep, keys)]
    else:
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(reference_part, [P] * processes, [paths] * processes, [rep] * processes, groups))
    return tuple([v for part in parts for v in part[k]] for k in range(4))


def reference_part(P, paths, rep, keys) -> tuple[list[float], list[float], list[bool], list[str]]:
    """The pipeline's optimised frames of the records ``keys`` again, in this process, by the benchmark's code.

    Per record, its frames in time order, each with the pipeline's seed and a prepared objective
    (the pipeline times the optimisation without the objective's set-up, and so does this):
    ``optimize_sweep`` with the profile's warm-start settings (``max_gap``, ``cold_every``) for ``optimizer:
    sweep``, as ``benchmarks/bench_labeling_sweep.py`` runs it; ``optimize_frame`` per frame for ``de``.
    Returns per frame: the optimisation's CPU seconds, the same with the objective's set-up, whether the
    correction equals the pipeline's (to 1e-12), and the path (de, warm, warm+de).
    """
    from ultrabones.core import dataset, geometry
    from ultrabones.labels import cloud, inputs, objective, optimize, sweep, tasks

    calib, spacing, _ = dataset.read_calibration(paths.dataset)
    specs, _ = dataset.scan(paths.dataset, None, derived=paths.derived)
    seconds, with_setup, same, path = [], [], [], []
    kw = dict(tasks.frame_settings(P), region=REGION)  # the pipeline's own settings
    for s in specs:
        pts, _ = cloud.load_cloud(inputs.surface_cloud(paths, s, P.density_per_mm2, 0))
        for rec in s.records:
            rows = rep[(rep["specimen"] == s.name) & (rep["record"] == rec.name)].sort_values("timestamp")
            if (s.name, rec.name) not in keys or not len(rows):
                continue
            tab = dataset.read_tracking(rec.tracking_csv, allow_missing_pose=True).set_index("timestamp")
            ts = rows["timestamp"].astype(int).tolist()
            images = [dataset.read_image(rec.image_path(t)) for t in ts]
            poses = [geometry.pose_from_params(tab.loc[t, list(geometry.POSE_COLUMNS)].to_numpy(float)) for t in ts]
            seeds = [optimize.frame_seed(0, rec.key, t) for t in ts]
            c0 = time.process_time()
            objs = [objective.FrameObjective(im, p, calib, spacing, pts, P.gamma_mm, P.bound_deg, P.bound_mm,
                                             region=REGION) for im, p in zip(images, poses)]
            setup = (time.process_time() - c0) / len(ts)
            if P.optimizer == "sweep":
                res = sweep.optimize_sweep(images, poses, calib, spacing, pts, LAM, seeds=seeds, objectives=objs,
                                           max_gap=P.warm_max_gap, cold_every=P.warm_cold_every, **kw,
                                           **tasks.warm_settings(P))
            else:
                res = [optimize.optimize_frame(im, p, calib, spacing, pts, LAM, seed=sd, objective=o, **kw)
                       for im, p, sd, o in zip(images, poses, seeds, objs)]
            for (_, r), f in zip(rows.iterrows(), res):
                if r["status"] in ("kept", "discarded"):
                    seconds.append(f.seconds)
                    with_setup.append(f.seconds + setup)
                    same.append(bool(np.allclose(f.x, [r[c] for c in tasks._X_COLUMNS], atol=1e-12, rtol=0)))
                    path.append(f.path)
    return seconds, with_setup, same, path


def compare(profile: str, build_root: Path, data_root: Path | None = None) -> dict:
    """Label with the pipeline on Dask, then the same frames in process; the per-frame costs (core-s)."""
    from ultrabones.labels import batch

    paths, P = _setup(profile, build_root, data_root)
    if os.environ.get("BENCH_PIPE_DASK_DEFAULTS") == "1":  # Dask's defaults, as before issue 26
        from ultrabones.core import executor as ex_mod

        ex_mod.local_worker_config = lambda: {}
    t0, c0, k0 = time.perf_counter(), time.process_time(), _cpu_children()
    result = batch.run(paths, P, n_workers=N_WORKERS)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0 + _cpu_children() - k0  # workers are children, reaped when the cluster closed
    rep = result.report
    odd = rep[~rep["status"].isin(["kept", "discarded", "no_bone"])]
    assert odd.empty, f"frames the in-process reference would optimise and the pipeline did not: {odd[['status']]}"
    opt = rep[rep["status"].isin(["kept", "discarded"])]
    seconds, with_setup, same, ref_path = reference(P, paths, rep)
    n_rec = rep.groupby(["specimen", "record"]).ngroups
    loaded = None  # the reference again in as many processes as the pipeline kept busy: the same load
    if min(N_WORKERS, n_rec) > 1:
        loaded = float(np.mean(reference(P, paths, rep, processes=min(N_WORKERS, n_rec))[0]))
    paths_pipe = opt["path"].value_counts().to_dict()
    paths_ref = {p: ref_path.count(p) for p in sorted(set(ref_path))}
    return {"profile": profile, "frames": len(opt), "workers": N_WORKERS, "same_corrections": int(sum(same)),
            "bench_optimize_loaded_s": loaded, "busy_processes": min(N_WORKERS, n_rec),
            "optimizer": P.optimizer, "stride": P.frame_stride, "cold_every": P.warm_cold_every,
            "paths_pipeline": paths_pipe, "paths_reference": paths_ref,
            "pipeline_optimize_s": float(opt["seconds_optimize"].mean()),
            "pipeline_total_s": float(opt["seconds_total"].mean()),
            "bench_optimize_s": float(np.mean(seconds)), "bench_with_objective_s": float(np.mean(with_setup)),
            "pipeline_wall_s_per_frame": wall / max(len(rep), 1), "pipeline_cpu_s_per_frame": cpu / max(len(rep), 1)}


def _print(out: dict) -> None:
    print(f"\n[bench] labelling pipeline vs in-process, {out['profile']}: {out['frames']} frames, "
          f"{out['workers']} Dask workers, {out['same_corrections']} equal corrections; optimizer {out['optimizer']}, "
          f"frame stride {out['stride']}, cold every {out['cold_every']} labelled frames; paths: pipeline "
          f"{out['paths_pipeline']}, in process {out['paths_reference']}\n"
          f"  optimisation per frame (core-s): pipeline {out['pipeline_optimize_s']:.3f}, "
          f"in process {out['bench_optimize_s']:.3f} "
          f"(ratio {out['pipeline_optimize_s'] / out['bench_optimize_s']:.2f})"
          + (f", in {out['busy_processes']} processes at once {out['bench_optimize_loaded_s']:.3f} (ratio "
             f"{out['pipeline_optimize_s'] / out['bench_optimize_loaded_s']:.2f})"
             if out["bench_optimize_loaded_s"] is not None else "") + "; "
          f"with the objective's set-up: in process {out['bench_with_objective_s']:.3f}\n"
          f"  pipeline per frame: all steps {out['pipeline_total_s']:.3f} core-s; whole run (lambda fixed, "
          f"registration, writing) {out['pipeline_cpu_s_per_frame']:.3f} core-s, "
          f"{out['pipeline_wall_s_per_frame']:.3f} s wall")


def _check(out: dict) -> None:
    assert out["frames"] > 0
    assert out["same_corrections"] == out["frames"], "the pipeline found other corrections than in-process"
    assert out["pipeline_optimize_s"] <= MAX_RATIO * out["bench_optimize_s"], out


def test_real(tmp_path):
    if not any(REAL.glob("*/CT_bone_model.stl")):  # layout A: specimen folders with their CT model
        pytest.skip(f"no real sweep at {REAL}")
    out = compare("real", tmp_path, REAL)
    _print(out)
    record("labeling_pipeline_real", "OMP_NUM_THREADS=1 python -m pytest -q -s "
           "benchmarks/bench_labeling_pipeline.py -k real", out)
    _check(out)


def test_twin(tmp_path):
    if not (TWIN_ROOT / "default" / "dataset" / "calibration.json").is_file():
        pytest.skip(f"no default twin in {TWIN_ROOT / 'default'} (see the module docstring)")
    out = compare("default", tmp_path)
    _print(out)
    record("labeling_pipeline_twin", "ULTRABONES_TWIN_ROOT=<twin root> OMP_NUM_THREADS=1 python -m pytest -q -s "
           "benchmarks/bench_labeling_pipeline.py -k twin", out)
    _check(out)
