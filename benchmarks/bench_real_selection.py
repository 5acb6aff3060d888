"""Can the truth-free selection tell lambda and region apart on real frames? (issue 29, item 4): on demand.

    REAL_SWEEP=../shared/real_sweep SELECTION_FRAMES=12 OMP_NUM_THREADS=1 \\
        .venv/bin/python -m pytest -q -s benchmarks/bench_real_selection.py

Runs the real profile's lambda/region selection (``params/real.yaml``: the split rule, its optimiser
settings and candidates) on ``SELECTION_FRAMES`` frames of the sweep, drawn as the stage draws them, and
prints the score table, the rule's choice, the runner-up, the paired margin and its standard error
(:func:`ultrabones.labels.select.separation`), and what ``selection_inseparable: one_se`` then picks.
The trials are cached under ``build/bench_real_selection/`` (a rerun with more frames refits all of them:
the draw changes with the number). Skipped when ``REAL_SWEEP`` is not set. Writes
``build/bench_real_selection/selection_<N>.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from ultrabones.core import dataset
from ultrabones.core.executor import executor
from ultrabones.core.params import load_profile
from ultrabones.core.paths import PARAMS_DIR, Paths
from ultrabones.labels import batch, inputs, lambda_selection, select

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not os.environ.get("REAL_SWEEP"), reason="REAL_SWEEP (a real dataset folder) not set")
def test_real_selection_margin():
    n = int(os.environ.get("SELECTION_FRAMES", "12"))
    out_dir = ROOT / "build" / "bench_real_selection"
    paths = Paths(out_dir / "build", out_dir / "twin", out_dir / "figures",
                  data_root=Path(os.environ["REAL_SWEEP"]).resolve())
    prof = load_profile("real", PARAMS_DIR)
    P = dataclasses.replace(batch.LabelingParams.from_section(prof.values["labeling"]), lambda_frames=n,
                            executor="synchronous")
    seed = int(prof.values["seed"])
    specs, _ = dataset.scan(paths.dataset, None, derived=paths.derived)
    calib, spacing, _ = dataset.read_calibration(paths.dataset)
    base = {"calib": calib.tolist(), "spacing": list(spacing), "params": P, "seed": seed}
    clouds = {s.name: str(inputs.surface_cloud(paths, s, P.density_per_mm2, seed)) for s in specs}
    records = inputs.records_to_label(specs, {s.name: P for s in specs})
    with executor("synchronous", None, 1) as ex:
        lam, region, sel = lambda_selection.select_lambda(paths, P, records, clouds, base, ex.map, seed)
    sep = sel["separation"]
    print(f"\n[bench] real selection on {sel['n_frames']} frames: rule's choice lambda "
          f"{sel['rule_choice']['lambda']:g} {sel['rule_choice']['region']}, runner-up lambda "
          f"{sep['runner_up_lambda']:g} {sep['runner_up_region']}: margin {sep['margin']:.5f} +- {sep['margin_se']:.5f}"
          f" (se), separable {sep['separable']}; with one_se: lambda {lam:g} {region}")
    print(sel["table"].to_string())
    doc = {"n_frames": sel["n_frames"], "rule_choice": sel["rule_choice"], "separation": sep,
           "one_se_choice": {"lambda": lam, "region": region}, "table": sel["table"].to_dict(orient="list"),
           "seconds_per_fit": sel["seconds_per_fit"]}
    (out_dir / f"selection_{n}.json").write_text(json.dumps(doc, indent=1, default=float))
    assert sel["n_frames"] >= 2 and set(sep) >= {"margin", "margin_se", "separable"}
    if not sep["separable"]:
        assert (lam, region) == select.one_se_choice(sel["table"], sep["margin_se"], P.fallback_region)
