"""The release at scale (issue 26): what labelling the released dataset's 100k frames costs, from real frames.

    OMP_NUM_THREADS=1 python -m pytest -q -s benchmarks/bench_release_scale.py
    BENCH_SCALE_PROFILES=real,released BENCH_SCALE_ROWS=40 OMP_NUM_THREADS=1 \
        python -m pytest -q -s benchmarks/bench_release_scale.py

For each profile of ``BENCH_SCALE_PROFILES`` (default ``real,released``; a profile missing from ``params/`` is
skipped with a message, so the benchmark runs before and after ``params/released.yaml`` exists), the labelling
stage (:func:`ultrabones.labels.batch.run`, one process, the profile's own optimiser, stride and settings)
labels the first ``BENCH_SCALE_ROWS`` rows (default 24; a contiguous stretch, so that a warm-started sweep is
timed as it runs) of each real sweep: the vendored fixtures (``tests/fixtures/real_sweep``) and
``../shared/real_sweep``. The stretch is linked, not copied, into a temporary layout-A dataset; the inputs are
only read. Lambda is fixed at ``BENCH_SCALE_LAMBDA`` (0.1) with the profile's ``fallback_region``: the
truth-free choice of lambda is a cost per dataset, not per frame, and is left out of the projection.

Printed per profile, and written to ``figures/bench/release_scale_<profile>.json``: the labelled frames, their statuses, CPU seconds per labelled frame (the stage's
``frames`` and ``writing`` phases; the optimisation alone beside), per sweep (its registration) and per
specimen (the clouds), and the projection for ``RELEASE_FRAMES`` = 100,000 labelled frames: core-hours, and
wall hours on 16 cores (local Dask, one worker per core; the projection assumes the frames spread evenly over
the cores: sweeps are independent tasks). A short stretch's whole-stage cost per frame is printed too: there
the registration's fixed cost dominates, which is why it is not projected per frame.
Where ``ultrabones.labels.released`` exists (issue 29), the ratio of its KD-tree reference objective to the
fast kernel per evaluation is measured on the same frames, and the projected cost of the optimisation with the
reference objective is printed beside.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "real_sweep"
SHARED = Path(os.environ.get("BENCH_REAL_ROOT", REPO.parent / "shared" / "real_sweep"))
if not SHARED.is_dir():
    SHARED = Path("/work/shared/real_sweep")
PROFILES = [p.strip() for p in os.environ.get("BENCH_SCALE_PROFILES", "real,released").split(",") if p.strip()]
ROWS = int(os.environ.get("BENCH_SCALE_ROWS", "24"))
LAM = float(os.environ.get("BENCH_SCALE_LAMBDA", "0.1"))
RELEASE_FRAMES, CORES = 100_000, 16


def record(name: str, command: str, out: dict) -> Path:
    """Write a benchmark's printed numbers to ``figures/bench/<name>.json`` (committed: the docs quote them),
    with the command, the commit and the time they were measured at. Returns the file."""
    import json
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    path = REPO / "figures" / "bench" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"command": command, "commit": commit, "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           **out}
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return path


def stretch(source: Path, rows: int, dest: Path) -> Path:
    """A layout-A dataset at ``dest`` holding the first ``rows`` rows of every record of ``source`` (links).

    The CT models and images are symbolic links; ``tracking.csv`` is cut; ``calibration.json`` (if any) linked.
    """
    import pandas as pd

    dest.mkdir(parents=True)
    for f in source.glob("*.json"):
        (dest / f.name).symlink_to(f.resolve())
    for spec in sorted(p for p in source.iterdir() if p.is_dir()):
        (dest / spec.name).mkdir()
        for f in spec.iterdir():
            if f.is_file():
                (dest / spec.name / f.name).symlink_to(f.resolve())
        for rec in sorted(p for p in spec.iterdir() if p.is_dir() and (p / "tracking.csv").is_file()):
            out = dest / spec.name / rec.name
            (out / "UltrasoundImages").mkdir(parents=True)
            tab = pd.read_csv(rec / "tracking.csv").iloc[:rows]
            tab.to_csv(out / "tracking.csv", index=False)
            for ts in tab["timestamp"]:
                src = rec / "UltrasoundImages" / f"{int(ts)}.png"
                if src.is_file():
                    (out / "UltrasoundImages" / src.name).symlink_to(src.resolve())
    return dest


def label(profile: str, data_root: Path, work: Path, changes: dict | None = None) -> dict:
    """Run the labelling stage of ``profile`` on ``data_root`` in this process, its labelling parameters
    replaced by ``changes`` (if any); CPU seconds and the report."""
    from ultrabones.core import params as prm
    from ultrabones.core.paths import Paths
    from ultrabones.core.timings import Phases
    from ultrabones.labels import batch
    from ultrabones.pipeline.runner import stage_parameters

    values, _ = stage_parameters("02_labeling", profile, assignments=[f"data_root={data_root}"])
    P = batch.LabelingParams.from_section(prm.collect(values, "02_labeling"))
    region = P.fallback_region if P.objective_region == "auto" else P.objective_region
    P = dataclasses.replace(P, **{"lambda_value": LAM, "objective_region": region, "executor": "synchronous",
                                  "device": None, **(changes or {})})
    paths = Paths(work / "build", work / "twin", work / "figures", data_root, work / "derived")
    ph = Phases()
    c0 = time.process_time()
    result = batch.run(paths, P, seed=0, n_workers=1, timer=ph)
    return {"cpu_s": time.process_time() - c0, "report": result.report, "phases": ph.as_dict(), "params": P}


def reference_ratio(data_root: Path, n_candidates: int = 10) -> float | None:
    """Seconds per evaluation of the released objective's KD-tree reference over its fast kernel, or None
    where ``ultrabones.labels.released`` (issue 29) is not in this tree."""
    try:
        from ultrabones.labels import released
    except ImportError:
        return None
    from scipy.spatial import cKDTree

    from ultrabones.core import dataset, geometry

    calib, spacing, _ = dataset.read_calibration(data_root)
    t_fast = t_ref = 0.0
    rng = np.random.default_rng(0)
    for spec in dataset.scan(data_root)[0]:
        dense = released.sample_ct(dataset.read_mesh(spec.ct_model), 1_000_000, seed=0)
        for rec in spec.records:
            tab = dataset.read_tracking(rec.tracking_csv).iloc[:3]
            for _, row in tab.iterrows():
                p0 = row[list(geometry.POSE_COLUMNS)].to_numpy(float)
                fr = released.prepare_frame(dataset.read_image(rec.image_path(int(row.timestamp))), p0, calib,
                                            spacing, dense)
                if fr.skip:
                    continue
                obj, tree = released.ReleasedObjective(fr), cKDTree(fr.ct_points)
                cand = p0[:, None] + rng.uniform(-1, 1, (6, n_candidates))
                t0 = time.process_time()
                for j in range(n_candidates):
                    obj.score(cand[:, j])
                t_fast += time.process_time() - t0
                t0 = time.process_time()
                for j in range(n_candidates):
                    released.reference_score(cand[:, j], fr, tree)
                t_ref += time.process_time() - t0
    return t_ref / t_fast if t_fast > 0 else None


def project(profile: str, runs: list[dict], ratio: float | None) -> dict:
    """The costs of ``runs`` (one per sweep) split by what they scale with, and the projection to
    :data:`RELEASE_FRAMES` frames.

    Per frame: the ``frames`` and ``writing`` phases (optimisation, labels, the derived dataset). Per sweep:
    ``registration`` (one global registration a sweep, whatever its length). Per specimen: ``inputs`` (the
    clouds ``C`` sampled from the CT model). Only the per-frame cost is projected: the release's sweeps and
    specimens are counted by whoever runs it, and their costs are printed beside.
    """
    import pandas as pd

    rep = pd.concat([r["report"] for r in runs], ignore_index=True)
    n = len(rep)

    def phase(name):
        return sum(float(r["phases"].get(name, {}).get("cpu_s", 0.0)) for r in runs)

    per_frame = (phase("frames") + phase("writing")) / n
    opt = float(rep["seconds_optimize"].fillna(0).sum()) / n if "seconds_optimize" in rep else float("nan")
    out = {"profile": profile, "frames": n, "status": rep["status"].value_counts().to_dict(),
           "cpu_s_per_frame": per_frame, "optimize_s_per_frame": opt,
           "registration_s_per_sweep": phase("registration") / len(runs),
           "inputs_s_per_specimen": phase("inputs") / len(runs),
           "whole_stage_s_per_frame": sum(r["cpu_s"] for r in runs) / n,
           "core_hours": per_frame * RELEASE_FRAMES / 3600,
           "wall_hours_16": per_frame * RELEASE_FRAMES / 3600 / CORES,
           "reference_ratio": ratio}
    if ratio is not None:  # the optimisation with the reference objective, the rest unchanged
        out["reference_core_hours"] = (per_frame - opt + opt * ratio) * RELEASE_FRAMES / 3600
    return out


def _print(out: dict) -> None:
    line = (f"\n[bench] release scale, profile {out['profile']}: {out['frames']} real frames labelled "
            f"({', '.join(f'{k} {v}' for k, v in out['status'].items())})\n"
            f"  CPU s a frame: {out['cpu_s_per_frame']:.2f} (the optimisation {out['optimize_s_per_frame']:.2f}); "
            f"a sweep's registration {out['registration_s_per_sweep']:.1f}; a specimen's clouds "
            f"{out['inputs_s_per_specimen']:.1f}; this short run's whole stage "
            f"{out['whole_stage_s_per_frame']:.2f} a frame\n"
            f"  {RELEASE_FRAMES:,} frames: {out['core_hours']:.0f} core-hours, {out['wall_hours_16']:.1f} h wall "
            f"on {CORES} cores (one Dask worker per core), plus the registration per sweep and the clouds per specimen")
    if out.get("reference_ratio") is not None:
        line += (f"\n  KD-tree reference objective: {out['reference_ratio']:.1f}x the fast kernel per evaluation; "
                 f"the same frames with it: {out['reference_core_hours']:.0f} core-hours")
    print(line)


@pytest.mark.parametrize("profile", PROFILES)
def test_release_scale(profile, tmp_path):
    if not (REPO / "params" / f"{profile}.yaml").is_file():
        pytest.skip(f"profile {profile!r}: no params/{profile}.yaml in this tree (the released profile comes with "
                    "issue 29, branch released); nothing measured for it")
    sources = [s for s in (FIXTURE, SHARED) if (s / "specimen01").is_dir()]
    if not sources:
        pytest.skip("no real sweep (tests/fixtures/real_sweep, ../shared/real_sweep)")
    runs = []
    for k, src in enumerate(sources):
        data = stretch(src, ROWS, tmp_path / f"data{k}")
        runs.append(label(profile, data, tmp_path / f"work{k}"))
        shutil.rmtree(tmp_path / f"work{k}" / "build", ignore_errors=True)
    ratio = reference_ratio(sources[0]) if profile == "released" else None
    out = project(profile, runs, ratio)
    _print(out)
    record(f"release_scale_{profile}", f"BENCH_SCALE_PROFILES={profile} BENCH_SCALE_ROWS={ROWS} OMP_NUM_THREADS=1 "
           "python -m pytest -q -s benchmarks/bench_release_scale.py", dict(out, rows=ROWS,
                                                                            sources=[str(s) for s in sources]))
    assert out["frames"] > 0 and out["cpu_s_per_frame"] > 0
    assert out["status"].get("kept", 0) > 0, out["status"]
