"""Measuring what the method wrote against the twin's truth.

This module and the simulator are the only readers of ``truth/``
(``docs/twin_format.md``). A method stage computes its result from what a
real user has (images, poses, the CT); a notebook then calls a function here
on the stage's *outputs* to report its error in mm. Nothing here feeds back
into a method's decision (``tests/test_architecture.py`` keeps the method
packages from importing this package).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ultrabones.calibration import ct
from ultrabones.calibration.system import read_matrix_json, target_registration_error
from ultrabones.core import dataset
from ultrabones.core.geometry import (
    POSE_COLUMNS,
    invert_transform,
    mean_fiducial_displacement,
    pose_from_params,
    rotation_angle_deg,
    transform_points,
)
from ultrabones.core.paths import Paths
from ultrabones.twin.layout import truth_dir


def truth_root(paths: Paths) -> Path | None:
    """The twin's ``truth/`` folder, or None (real data, or a twin without its truth)."""
    d = truth_dir(paths)
    return d if paths.is_twin and d.is_dir() else None


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
    true_ct_from_marker = read_matrix_json(truth_s / "ct_from_marker.json", "ct_from_marker")
    targets, _ = trimesh.sample.sample_surface(true_model, 5000, seed=0)
    tre = target_registration_error(np.asarray(result["ct_from_marker"]), true_ct_from_marker, targets)
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


def true_system(paths: Paths) -> dict | None:
    """The twin's true image-to-probe calibration and temporal offset (ms), or None."""
    root = truth_root(paths)
    if root is None:
        return None
    sysf = root / "system.json"
    return {"calibration": read_matrix_json(sysf, "calibration"),
            "temporal_offset_ms": float(json.loads(sysf.read_text())["temporal_offset_ms"])}


def calibration(paths: Paths, result, n_samples: int = 20000) -> dict:
    """Notebook 01's errors against the truth, to merge into its metrics ({} off the twin).

    Parameters
    ----------
    paths : the run's paths.
    result : the :class:`ultrabones.calibration.system.StageResult` of the run.
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
    return pts_t, pts_m, ct.point_distances(pts_m, true_model)


def merge_metrics(method: dict, truth: dict) -> dict:
    """A stage's metrics with the truth's merged in; ``per_specimen`` entries are merged key by key."""
    out = dict(method)
    for k, v in truth.items():
        if k == "per_specimen" and isinstance(out.get(k), dict):
            out[k] = {s: {**out[k].get(s, {}), **v.get(s, {})} for s in sorted(set(out[k]) | set(v))}
        else:
            out[k] = v
    return out


# ----------------------------------------------------------------------------- evaluation (notebook 05)


def true_label_source(paths: Paths, kind: str = dataset.LABELS):
    """A label source (:data:`ultrabones.evaluation.metrics.LabelSource`) reading the twin's true labels.

    ``truth/<specimen>/<record>/<kind>/<t>_label.png``: ``Labels`` (visible) or ``Labels_full``.
    """
    from ultrabones.core.errors import DatasetError

    root = truth_dir(paths)

    def read(frame, shape: tuple) -> np.ndarray:
        path = root / frame.record.specimen / frame.record.name / kind / f"{frame.timestamp}_label.png"
        if not path.is_file():
            raise DatasetError(f"{path}: true label missing for an evaluated frame")
        return dataset.read_label(path, shape)

    read.kind = f"truth/{kind}"
    return read


def frames_with_truth(paths: Paths, frames, kind: str = dataset.LABELS) -> list:
    """The evaluation frames (:class:`ultrabones.evaluation.metrics.Frame`) whose true label exists."""
    root = truth_dir(paths)
    return [fr for fr in frames
            if (root / fr.record.specimen / fr.record.name / kind / f"{fr.timestamp}_label.png").is_file()]
