"""Measuring what the method wrote against the twin's truth.

This module and the simulator are the only readers of ``truth/``
(``docs/twin_format.md``). A method stage computes its result from what a
real user has (images, poses, the CT); a notebook then calls a function here
on the stage's *outputs* to report its error in mm. Nothing here feeds back
into a method's decision (``tests/test_architecture.py`` keeps the method
packages from importing this package).

Where the pieces live: this module measures notebook 01's calibration, writes and reads the measurements
(``truth/measurements/``, the ``merge-collected`` command of ``make validate``), and is the measurements'
public face for the notebooks: it re-exports the truth's readers (:mod:`ultrabones.twin.truth_reader`) and
the measurements of the labels (:mod:`ultrabones.twin.measure_labels`), of the lambda selection
(:mod:`ultrabones.twin.lambda_oracle`), of the evaluation (:mod:`ultrabones.twin.measure_evaluation`) and
of the reconstruction (:mod:`ultrabones.twin.measure_reconstruction`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ultrabones.calibration import acquisitions, ct, ct_marker
from ultrabones.core import atomic, dataset, merge
from ultrabones.core.geometry import (POSE_COLUMNS, invert_transform, mean_fiducial_displacement, pose_from_params,
                                     rotation_angle_deg, transform_points)
from ultrabones.core.mesh import point_distances
from ultrabones.core.paths import Paths
from ultrabones.core.paths import twin_root as default_twin_root
from ultrabones.twin.lambda_oracle import delivered_label_errors, heldout_lambda_oracle, lambda_oracle, oracle_of
from ultrabones.twin.layout import TRUTH, measurements_file
from ultrabones.twin.measure_evaluation import evaluation, evaluation_table, frames_with_truth, true_label_source
from ultrabones.twin.measure_labels import LabelDrawer, label_metrics, labels, plot_label_errors, tracking_table
from ultrabones.twin.measure_reconstruction import reconstruction_vs_truth, true_imaged_points
from ultrabones.twin.truth_reader import true_label, true_system, truth_root

#: The measurements' API: notebook 01's (here), the measurement files (here) and, re-exported, the truth's
#: readers and the measurements of notebooks 02, 05 and 06.
__all__ = [
    "calibration_errors", "specimen_errors", "calibration", "ct_model_distances", "plot_ct_model_distances",
    "write_measurements", "read_measurements", "measured_runs", "measured_builds", "merge_metrics", "truth_part",
    "merge_collected", "main",
    "truth_root", "true_system", "true_label",
    "LabelDrawer", "tracking_table", "labels", "label_metrics", "plot_label_errors",
    "delivered_label_errors", "oracle_of", "lambda_oracle", "heldout_lambda_oracle",
    "true_label_source", "frames_with_truth", "evaluation", "evaluation_table",
    "true_imaged_points", "reconstruction_vs_truth",
]


# ----------------------------------------------------------------------------- calibration (notebook 01)


def calibration_errors(calib: np.ndarray, true_calib: np.ndarray, image_size_mm: tuple[float, float]) -> dict:
    """How far an image-to-probe calibration is from the truth.

    Returns
    -------
    dict: ``translation_mm`` (distance of the image origins), ``rotation_deg``
    (angle of ``inv(true) @ calib``), ``image_mean_mm`` (mean displacement of
    the image plane's points over a 21 x 21 grid covering the image).
    """
    w, h = image_size_mm
    gx, gy = np.meshgrid(np.linspace(0, w, 21), np.linspace(0, h, 21))
    grid = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], axis=1)
    disp = np.linalg.norm(transform_points(calib, grid) - transform_points(true_calib, grid), axis=1)
    return {
        "translation_mm": float(np.linalg.norm(calib[:3, 3] - true_calib[:3, 3])),
        "rotation_deg": float(rotation_angle_deg(invert_transform(true_calib) @ calib)),
        "image_mean_mm": float(disp.mean()),
    }


def specimen_errors(truth: Path, dataset_root: Path, specimen: str, result: dict, n_samples: int = 20000) -> dict:
    """Errors of one specimen's calibration products against the truth.

    Returns
    -------
    dict: ``surface_mean_mm`` / ``surface_p95_mm`` (CT bone model vs the true
    merged bones, symmetric), ``marker_tre_mm`` (mean displacement of the true
    bone surface between the found and true CT-from-marker transforms),
    ``pose_error_mm`` (the written poses against the true ones, mean
    probe-marker fiducial displacement; it includes the twin's tracking error).
    """
    import trimesh

    truth_s = Path(truth) / specimen
    true_model = dataset.read_mesh(truth_s / "bone_model.stl")
    model = dataset.read_mesh(Path(dataset_root) / specimen / "CT_bone_model.stl")
    dist = ct.symmetric_surface_distance(model, true_model, n_samples)
    true_ct_from_marker = acquisitions.read_matrix_json(truth_s / "ct_from_marker.json", "ct_from_marker")
    targets, _ = trimesh.sample.sample_surface(true_model, 5000, seed=0)
    tre = ct_marker.target_registration_error(np.asarray(result["ct_from_marker"]), true_ct_from_marker, targets)
    errs = []
    for rec in sorted(result["records"]):
        f = truth_s / rec / "poses.csv"
        if not f.is_file():
            continue
        ours = dataset.read_tracking(Path(dataset_root) / specimen / rec / dataset.TRACKING)
        true = pd.read_csv(f)
        both = ours.merge(true, on="timestamp", suffixes=("", "_true"))
        if len(both):
            p_true = pose_from_params(both[[f"{c}_true" for c in POSE_COLUMNS]].to_numpy(float))
            errs.append(mean_fiducial_displacement(dataset.poses(both), p_true))
    pose_err = float(np.concatenate(errs).mean()) if errs else None
    return {"surface_mean_mm": dist["mean_mm"], "surface_p95_mm": dist["p95_mm"], "marker_tre_mm": tre,
            "pose_error_mm": pose_err}


def calibration(paths: Paths, result, n_samples: int = 20000) -> dict:
    """Notebook 01's errors against the truth, to merge into its metrics ({} off the twin).

    Parameters
    ----------
    paths : the run's paths.
    result : the :class:`ultrabones.calibration.system.CalibrationResult` of the run.
    n_samples : surface samples per mesh for the CT model's distances.

    Returns
    -------
    dict with ``temporal_offset_true_ms``, ``temporal_offset_error_ms``,
    ``calibration_{translation,rotation,image}_error_*``, the means over
    specimens of ``ct_model_{mean,p95}_surface_distance_mm``, ``marker_tre_mm``,
    ``pose_error_mm``, and ``per_specimen`` (specimen -> its errors).
    """
    truth = true_system(paths)
    if truth is None:
        return {}
    probe = result.probe
    err = calibration_errors(probe.calibration, truth["calibration"], probe.image_size_mm)
    per = {s: specimen_errors(truth_root(paths), paths.dataset, s, r, n_samples) for s, r in result.specimens.items()}
    pe = [x["pose_error_mm"] for x in per.values() if x.get("pose_error_mm") is not None]
    m = {
        "temporal_offset_true_ms": truth["temporal_offset_ms"],
        "temporal_offset_error_ms": abs(probe.offset_ms - truth["temporal_offset_ms"]),
        "calibration_translation_error_mm": err["translation_mm"],
        "calibration_rotation_error_deg": err["rotation_deg"],
        "calibration_image_error_mm": err["image_mean_mm"],
        "per_specimen": per,
    }
    if per:
        m["ct_model_mean_surface_distance_mm"] = float(np.mean([x["surface_mean_mm"] for x in per.values()]))
        m["ct_model_p95_surface_distance_mm"] = float(np.mean([x["surface_p95_mm"] for x in per.values()]))
        m["marker_tre_mm"] = float(np.mean([x["marker_tre_mm"] for x in per.values()]))
        m["pose_error_mm"] = float(np.mean(pe)) if pe else None
    return m


def ct_model_distances(paths: Paths, specimen: str, n: int = 8000, seed: int = 0):
    """Samples of the true bones and of the CT bone model, and each model sample's distance to the truth (mm).

    Returns
    -------
    (true_points (n, 3), model_points (n, 3), distances (n,)), CT frame, mm; None off the twin.
    """
    import trimesh

    root = truth_root(paths)
    if root is None:
        return None
    model = dataset.read_mesh(paths.dataset / specimen / "CT_bone_model.stl")
    true_model = dataset.read_mesh(root / specimen / "bone_model.stl")
    pts_t = trimesh.sample.sample_surface(true_model, n, seed=seed)[0]
    pts_m = trimesh.sample.sample_surface(model, n, seed=seed + 1)[0]
    return pts_t, pts_m, point_distances(pts_m, true_model)


def plot_ct_model_distances(pts_true: np.ndarray, pts_model: np.ndarray, distances: np.ndarray, specimen: str,
                            voxel_mm: float):
    """The rebuilt CT bone model coloured by its distance to the true bones, and the distances' histogram.

    Parameters
    ----------
    pts_true, pts_model : (n, 3) samples of the true bones and of the CT bone model (CT, mm).
    distances : (n,) each model sample's distance to the true surface (mm).
    specimen : its name, for the title.
    voxel_mm : the CT's smallest voxel side (mm); half of it is marked.
    """
    import matplotlib.pyplot as plt

    vmax = max(0.5, float(np.percentile(distances, 99)))
    fig, axes = plt.subplots(1, 3, figsize=(10, 6), gridspec_kw={"width_ratios": [1, 1, 1.4]})
    axes[0].scatter(pts_true[:, 0], pts_true[:, 2], s=0.5, color="0.5")
    axes[0].set_title(f"true bones ({specimen})")
    sc = axes[1].scatter(pts_model[:, 0], pts_model[:, 2], s=0.5, c=distances, cmap="viridis", vmin=0, vmax=vmax)
    axes[1].set_title("CT bone model, distance to truth")
    fig.colorbar(sc, ax=axes[1], shrink=0.7, label="distance (mm)")
    for ax in axes[:2]:
        ax.set_aspect("equal")
        ax.set_xlabel("x (mm, CT)")
        ax.set_ylabel("z (mm, CT)")
    axes[2].hist(distances, bins=60, range=(0, vmax), color="C0")
    axes[2].axvline(0.5 * voxel_mm, color="C3", ls="--", label="half the smallest voxel side")
    axes[2].set_xlabel("distance to the true surface (mm)")
    axes[2].set_ylabel("surface samples")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the measurement files


def write_measurements(paths: Paths, stem: str, values: dict) -> Path | None:
    """Write a stage's truth measurements to ``truth/measurements/<stem>.json`` (behind the truth wall).

    Returns the file written; None on real data (``paths.data_root`` set: no truth, nothing written).
    Method code cannot read it back (:mod:`ultrabones.twin.wall`); the summary and the tests merge it into the
    stage's metrics (:func:`measured_runs`, :func:`merge_metrics`).
    """
    if not paths.is_twin:
        return None
    return atomic.write_json(measurements_file(paths, stem), values)


def read_measurements(paths: Paths, stem: str) -> dict | None:
    """A stage's truth measurements (:func:`write_measurements`), or None when it wrote none."""
    f = measurements_file(paths, stem)
    return json.loads(f.read_text()) if f.is_file() else None


def measured_runs(twin_dir: Path | str, stems) -> dict[str, dict]:
    """The measurements of ``stems`` that a twin folder holds (``truth/measurements/<stem>.json``; stems
    without any are left out): for the summary and the tests, which merge them into the stages' metrics."""
    folder = Path(twin_dir) / TRUTH / "measurements"
    return {stem: json.loads((folder / f"{stem}.json").read_text()) for stem in stems
            if (folder / f"{stem}.json").is_file()}


def measured_builds(twin_dir: Path | str, builds, stems) -> dict[str, dict[str, dict]]:
    """:func:`measured_runs` of each build (``build/<name>``) from the twin of the same name beside
    ``twin_dir`` (the twins of a profile's seed builds sit side by side): build name -> stem -> measurements."""
    return {Path(b).name: measured_runs(Path(twin_dir).parent / Path(b).name, stems) for b in builds}


merge_metrics = merge.merge_metrics  # a stage's metrics with its measurements merged in
truth_part = merge.measured_part  # what a dict computed with the measurements adds


# ----------------------------------------------------------------------------- collected metrics (make validate)


def merge_collected(twin_root: Path | str, profile: str, seeds, out_dir: Path | str) -> list[Path]:
    """Merge each seed's measurements against the truth into the metrics collected for it
    (``<out_dir>/seed<N>/<stem>.json``, ``python -m ultrabones collect-validation``), from the twin
    ``<twin_root>/<profile>-seed<N>``; returns the files rewritten. The collected metrics are results to report
    (committed under ``figures/validation/``), so they carry the truth's measurements as the summary reads them."""
    written = []
    for seed in seeds:
        folder = Path(out_dir) / f"seed{int(seed)}"
        files = sorted(folder.glob("*.json"))
        measured = measured_runs(Path(twin_root) / f"{profile}-seed{int(seed)}", [f.stem for f in files])
        for f in files:
            if f.stem in measured:
                written.append(atomic.write_json(f, merge_metrics(json.loads(f.read_text()), measured[f.stem])))
    return written


def main(argv=None) -> int:
    """``python -m ultrabones.twin.measure merge-collected --profile P --seeds N ... --out DIR`` (make validate)."""
    ap = argparse.ArgumentParser(prog="python -m ultrabones.twin.measure")
    sub = ap.add_subparsers(dest="verb", required=True)
    mc = sub.add_parser("merge-collected", help="merge the seeds' truth measurements into their collected metrics")
    mc.add_argument("--profile", default="default")
    mc.add_argument("--seeds", type=int, nargs="+", required=True)
    mc.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    written = merge_collected(default_twin_root(), args.profile, args.seeds, args.out)
    print(f"{args.out}: the twin's measurements merged into {len(written)} file(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
