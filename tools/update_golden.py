#!/usr/bin/env python3
"""Write the smoke run's headline metrics as the golden file the notebook tests compare with.

    python tools/update_golden.py BUILD_DIR [TWIN_DIR] # e.g. build/smoke (after `make paper PROFILE=smoke`)

The measurements against the twin's truth are read from ``TWIN_DIR/truth/measurements/`` (default: the twin
of the same name, ``data/twin/<name>`` or under ``$ULTRABONES_TWIN_ROOT``) and merged into each stage's metrics.

A change that moves a headline number must update ``tests/golden/smoke_metrics.json`` on purpose, with
this tool, and say why in its commit. Each entry keeps its tolerance: edit ``TOLERANCES`` here, not the JSON.
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "smoke_metrics.json"

#: metrics key -> (absolute tolerance, why). Deterministic stages (same seed, same bytes) get tight
#: tolerances that allow only floating-point differences between machines; training on the CPU is
#: deterministic but BLAS builds may differ, so its scores get more room.
TOLERANCES = {
    "00_simulate": {"n_frames": (0, "a count"), "initial_misalignment_mm.mean": (1e-3, "deterministic simulation")},
    "01_calibration": {
        "temporal_offset_ms": (0.11, "one step of the 0.1 ms sweep"),
        "localization_error_mm": (1e-3, "deterministic"),
        "calibration_translation_error_mm": (1e-3, "deterministic"),
        "phantom_frames_used": (0, "a count"),
    },
    "02_labeling": {
        "lambda": (0, "a choice among candidates"),
        "discard_rate": (1e-6, "a ratio of counts"),
        "status_counts.kept": (0, "a count"),
        "kept_mean_fiducial_correction_mm": (1e-3, "seeded optimiser"),
        "contour_error_mm.initial.mean": (1e-3, "deterministic"),
        "contour_error_mm.optimized.mean": (1e-3, "seeded optimiser"),
        "label_error_mm.optimized.mean": (1e-3, "seeded optimiser"),
    },
    "03_rating_statistics": {
        "n_frames": (0, "a count"),
        "mean_rating.optimized": (1e-6, "seeded rater model"),
        "mean_rating.initial": (1e-6, "seeded rater model"),
    },
    "04_training": {"train_images": (0, "a count"), "train_images_labelled": (0, "a count"),
                    "val_images": (0, "a count"),
                    "val_f1_at_0p5mm": (0.05, "CPU training; BLAS may differ between machines")},
    "05_evaluation": {
        "n_test_frames": (0, "a count"),
        "at_0p5mm.released.model.all.f1": (0.05, "CPU training; BLAS may differ between machines"),
    },
    "06_reconstruction": {"n_specimens": (0, "a count")},
}


def lookup(metrics: dict, key: str):
    v = metrics
    for part in key.split("."):
        if not isinstance(v, dict) or part not in v:
            return None
        v = v[part]
    return v


def main(build: Path, twin: Path | None = None) -> None:
    from ultrabones.core.merge import merge_metrics
    from ultrabones.core.paths import twin_root
    from ultrabones.twin.measure import measured_runs

    measured = measured_runs(twin or twin_root() / build.name, list(TOLERANCES))
    out = {}
    for stem, keys in TOLERANCES.items():
        m = merge_metrics(json.loads((build / "metrics" / f"{stem}.json").read_text()), measured.get(stem))
        out[stem] = {}
        for key, (tol, why) in keys.items():
            value = lookup(m, key)
            if value is None:
                print(f"{stem}: {key} missing; left out")
                continue
            out[stem][key] = {"value": value, "abs": tol, "why": why}
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) == 3 else None)
