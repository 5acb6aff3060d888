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

from ultrabones.calibration import acquisitions, ct, ct_marker
from ultrabones.core import dataset, merge
from ultrabones.core.geometry import (POSE_COLUMNS, invert_transform, mean_fiducial_displacement, pose_from_params,
                                     rotation_angle_deg, transform_points)
from ultrabones.core.mesh import point_distances
from ultrabones.core.paths import Paths
from ultrabones.twin.layout import TRUTH, measurements_file, truth_dir


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


def true_system(paths: Paths) -> dict | None:
    """The twin's true image-to-probe calibration and temporal offset (ms), or None."""
    root = truth_root(paths)
    if root is None:
        return None
    sysf = root / "system.json"
    return {"calibration": acquisitions.read_matrix_json(sysf, "calibration"),
            "temporal_offset_ms": float(json.loads(sysf.read_text())["temporal_offset_ms"])}


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


def write_measurements(paths: Paths, stem: str, values: dict) -> Path | None:
    """Write a stage's truth measurements to ``truth/measurements/<stem>.json`` (behind the truth wall).

    Returns the file written; None on real data (``paths.data_root`` set: no truth, nothing written).
    Method code cannot read it back (:mod:`ultrabones.twin.wall`); the summary and the tests merge it into the
    stage's metrics (:func:`measured_runs`, :func:`merge_metrics`).
    """
    from ultrabones.core import atomic

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
    """The evaluation frames (:class:`ultrabones.core.dataset.Frame`) whose true label exists."""
    root = truth_dir(paths)
    return [fr for fr in frames
            if (root / fr.record.specimen / fr.record.name / kind / f"{fr.timestamp}_label.png").is_file()]


def evaluation(paths: Paths, result) -> dict:
    """Stage 05's methods scored against the twin's true visible labels, as ``{"vs_truth": ...}``.

    The model, the classical detector, the manual labels and the CT-derived labels ``G`` themselves
    (``ct_labels``) against ``truth/.../Labels/`` on the evaluated frames that have one, with the result's
    thresholds and Otsu split: what the paper could not measure.

    Parameters
    ----------
    paths : the run's paths.
    result : :class:`ultrabones.evaluation.benchmark.EvaluationResult`.

    Returns
    -------
    ``{"vs_truth": {"at_<sigma>mm": {protocol: {method: {region: scores}}}, "border": {method: ...},
    "n_frames": n}}``; ``{"vs_truth": None}`` off the twin.
    """
    from ultrabones.evaluation.metrics import dataset_label, evaluate, summarise

    if not paths.is_twin:
        return {"vs_truth": None}
    p = result.params
    frames = frames_with_truth(paths, result.frames)
    methods = {**result.methods, "ct_labels": dataset_label(dataset.LABELS)}
    scores = evaluate(frames, true_label_source(paths), methods, result.spacing, p.sigmas, result.otsu)
    summ = summarise(scores, p.report_sigma_mm)
    return {"vs_truth": {p.at_key: summ["at"], "border": summ["border"], "n_frames": len(frames)}}


def evaluation_table(vs_truth: dict, at_key: str) -> pd.DataFrame:
    """:func:`evaluation`'s ``vs_truth`` at the report threshold ``at_key`` (e.g. ``at_0p5mm``): one row per
    method and region, both protocols, no paper column."""
    from ultrabones.evaluation.comparison import table_at

    table = table_at(vs_truth[at_key], {})
    return table.drop(columns=[c for c in table.columns if c.endswith("_paper")])


# ----------------------------------------------------------------------------- labels (notebook 02)


class LabelDrawer:
    """Draws a frame's full label at any pose from the same dense cloud ``C`` as notebook 02's labels."""

    def __init__(self, paths: Paths, gamma_mm: float, density_per_mm2: float, cloud_seed: int):
        from ultrabones.labels import cloud, inputs

        self.paths, self.gamma = paths, float(gamma_mm)
        self.density, self.cloud_seed = float(density_per_mm2), int(cloud_seed)
        self.calib, self.spacing, _ = dataset.read_calibration(paths.dataset)
        self._clouds: dict = {}
        self._surface_cloud, self._load_cloud = inputs.surface_cloud, cloud.load_cloud

    def cloud(self, specimen: str):
        if specimen not in self._clouds:
            spec = dataset.read_specimen(self.paths.dataset / specimen)
            self._clouds[specimen] = self._load_cloud(
                self._surface_cloud(self.paths, spec, self.density, self.cloud_seed))[0]
        return self._clouds[specimen]

    def draw(self, specimen: str, shape, poses) -> list[np.ndarray]:
        """Full labels (H, W) bool of one frame at each pose (4, 4) in ``poses``."""
        from ultrabones.labels.label import full_label, points_near

        pts = self.cloud(specimen)
        near = points_near(pts, shape, poses[0], poses[1:], self.calib, self.spacing, self.gamma)
        return [full_label(shape, p, self.calib, self.spacing, pts[near], self.gamma) for p in poses]


def true_label(paths: Paths, specimen: str, record: str, ts: int, kind: str, shape) -> np.ndarray | None:
    """A frame's true label of ``kind`` (``dataset.LABELS_FULL``, ...) from the twin's truth, as a (H, W) mask of
    ``shape``; None where the truth has none."""
    f = truth_dir(paths) / specimen / record / kind / f"{int(ts)}_label.png"
    return dataset.read_label(f, shape) if f.is_file() else None


def tracking_table(paths: Paths, specimen: str, record: str) -> pd.DataFrame:
    """A record's tracking table as recorded (poses in mm and degrees; rows without a pose kept)."""
    return dataset.read_tracking(paths.dataset / specimen / record / dataset.TRACKING, allow_missing_pose=True)


def labels(paths: Paths, report: pd.DataFrame, registrations: dict, settings: dict,
           tol_mm: float = 0.5, progress: bool = False) -> pd.DataFrame:
    """Every kept frame's label errors against the truth, from what notebook 02 wrote.

    The initial label is drawn at the recorded pose, the registration baseline's at the sweep's
    global correction, the optimised one at the report's correction: with the same cloud and band as
    notebook 02 (``settings``: ``gamma_mm``, ``label_density_per_mm2``, ``label_cloud_seed``). The
    visible label is the one written in ``Labels/``.

    Returns
    -------
    DataFrame per kept frame: ``specimen, record, timestamp``, ``contour_{initial,registered,optimized}_mm``
    (:func:`ultrabones.core.label_distances.contour_error_mm`, the headline), ``error_*_mm`` (the band metric:
    mean distance of the label band's pixels to the true band), ``visible_precision``, ``visible_recall``
    (share within ``tol_mm``).
    """
    from tqdm import tqdm

    from ultrabones.core.geometry import perturbation
    from ultrabones.core.label_distances import contour_error_mm
    from ultrabones.twin.contour import label_distance_mm, precision_recall

    if truth_root(paths) is None:
        return pd.DataFrame()
    drawer = LabelDrawer(paths, settings["gamma_mm"], settings["label_density_per_mm2"], settings["label_cloud_seed"])
    kept = report[report["status"] == "kept"]
    rows, tabs = [], {}
    for r in tqdm(kept.itertuples(index=False), total=len(kept), desc="errors vs truth", disable=not progress):
        key = (r.specimen, r.record)
        if key not in tabs:
            tabs[key] = tracking_table(paths, *key).set_index("timestamp")
        prm = tabs[key].loc[int(r.timestamp), list(POSE_COLUMNS)].to_numpy(float)
        shape = dataset.read_image(paths.dataset / r.specimen / r.record / dataset.IMAGES
                                   / f"{int(r.timestamp)}.png").shape
        pose0 = pose_from_params(prm)
        g = np.asarray(registrations[f"{r.specimen}/{r.record}"]["transform"], float)
        x = np.array([r.rot_x_deg, r.rot_y_deg, r.rot_z_deg, r.trans_x_mm, r.trans_y_mm, r.trans_z_mm], float)
        init, reg, opt = drawer.draw(r.specimen, shape, [pose0, g @ pose0, pose0 @ perturbation(x[:3], x[3:])])
        tf = true_label(paths, r.specimen, r.record, r.timestamp, dataset.LABELS_FULL, shape)
        tv = true_label(paths, r.specimen, r.record, r.timestamp, dataset.LABELS, shape)
        row = {"specimen": r.specimen, "record": r.record, "timestamp": int(r.timestamp)}
        for name, m in (("initial", init), ("registered", reg), ("optimized", opt)):
            row[f"contour_{name}_mm"] = contour_error_mm(m, tf, drawer.spacing) if tf is not None else np.nan
            row[f"error_{name}_mm"] = label_distance_mm(m, tf, drawer.spacing) if tf is not None else np.nan
        vf = paths.derived / r.specimen / r.record / dataset.LABELS / f"{int(r.timestamp)}_label.png"
        prec = rec = np.nan
        if tv is not None and vf.is_file():
            prec, rec = precision_recall(dataset.read_label(vf, shape), tv, drawer.spacing, tol_mm)
        row["visible_precision"], row["visible_recall"] = prec, rec
        rows.append(row)
    return pd.DataFrame(rows)


def _stats(e: pd.Series) -> dict:
    e = e.astype(float).dropna()
    if not len(e):
        return {"mean": None, "median": None, "p95": None, "n": 0}
    return {"mean": float(e.mean()), "median": float(e.median()), "p95": float(e.quantile(0.95)), "n": int(len(e))}


def label_metrics(errors: pd.DataFrame) -> dict:
    """Notebook 02's metrics against the truth, from :func:`labels` ({} off the twin).

    ``contour_error_mm`` (headline) and ``label_error_mm`` (band metric), each per method
    (``initial``, ``registration``, ``optimized``) with mean, median, p95 and n; ``optimized_better_share``
    (kept frames whose optimised contour error is below the initial one); visible-label precision and recall.
    """
    if errors.empty:
        return {}
    names = {"initial": "initial", "registered": "registration", "optimized": "optimized"}
    both = errors[["contour_initial_mm", "contour_optimized_mm"]].astype(float).dropna()
    return {
        "contour_error_mm": {v: _stats(errors[f"contour_{k}_mm"]) for k, v in names.items()},
        "label_error_mm": {v: _stats(errors[f"error_{k}_mm"]) for k, v in names.items()},
        "optimized_better_share": float((both["contour_optimized_mm"] < both["contour_initial_mm"]).mean())
        if len(both) else None,
        "visible_label_precision": float(errors["visible_precision"].astype(float).mean()),
        "visible_label_recall": float(errors["visible_recall"].astype(float).mean()),
    }


def plot_label_errors(errors: pd.DataFrame):
    """Box plot of the contour error against the truth (mm) of the initial, registered and optimised labels.

    ``errors``: :func:`labels` (kept frames). Returns a matplotlib figure.
    """
    import matplotlib.pyplot as plt

    cols = {"initial": "contour_initial_mm", "registration": "contour_registered_mm",
            "optimised": "contour_optimized_mm"}
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.boxplot([errors[c].astype(float).dropna() for c in cols.values()], showfliers=False)
    ax.set_xticks(range(1, len(cols) + 1), list(cols))
    ax.set_ylabel("contour error against the truth (mm)")
    fig.tight_layout()
    return fig


def delivered_label_errors(paths: Paths, trials: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """The true contour error of every fit's delivered label, for reporting only (empty off the twin).

    Each row of ``trials`` (:func:`ultrabones.labels.select.selection_task`'s rows: one frame, one candidate
    (``region``, ``lambda``), its correction ``x`` and ``status``) delivers the optimised label if its fit
    was kept and the initial one otherwise, as :func:`ultrabones.labels.select.score_table` counts it. That
    label is drawn with notebook 02's cloud and band and measured against the true full label.

    Returns
    -------
    DataFrame, one row per trial with a true label: ``specimen``, ``record``, ``timestamp``, ``region``,
    ``lambda``, ``kept``, ``true_contour_mm`` (delivered) and ``true_contour_initial_mm`` (no correction), mm.
    """
    from ultrabones.core.geometry import perturbation
    from ultrabones.core.label_distances import contour_error_mm

    cols = ["specimen", "record", "timestamp", "region", "lambda", "kept", "true_contour_mm",
            "true_contour_initial_mm"]
    if trials is None or len(trials) == 0 or truth_root(paths) is None:
        return pd.DataFrame(columns=cols)
    drawer = LabelDrawer(paths, settings["gamma_mm"], settings["label_density_per_mm2"], settings["label_cloud_seed"])
    rows, tabs, init = [], {}, {}
    for r in trials.itertuples(index=False):
        key = (r.specimen, r.record)
        if key not in tabs:
            tabs[key] = tracking_table(paths, *key).set_index("timestamp")
        pose0 = pose_from_params(tabs[key].loc[int(r.timestamp), list(POSE_COLUMNS)].to_numpy(float))
        shape = dataset.read_image(paths.dataset / r.specimen / r.record / dataset.IMAGES
                                   / f"{int(r.timestamp)}.png").shape
        tf = true_label(paths, r.specimen, r.record, r.timestamp, dataset.LABELS_FULL, shape)
        if tf is None:
            continue
        fk = (r.specimen, r.record, int(r.timestamp))
        x = np.asarray(r.x, float) if r.status == "kept" else np.zeros(6)
        lab0, lab1 = drawer.draw(r.specimen, shape, [pose0, pose0 @ perturbation(x[:3], x[3:])])
        if fk not in init:
            init[fk] = contour_error_mm(lab0, tf, drawer.spacing)
        rows.append({"specimen": r.specimen, "record": r.record, "timestamp": int(r.timestamp),
                     "region": r.region, "lambda": float(r[trials.columns.get_loc("lambda")]),
                     "kept": r.status == "kept", "true_contour_mm": contour_error_mm(lab1, tf, drawer.spacing),
                     "true_contour_initial_mm": init[fk]})
    return pd.DataFrame(rows, columns=cols)


def oracle_of(errors: pd.DataFrame, chosen: float, region: str) -> dict:
    """The oracle's candidate and the gap of a choice, from :func:`delivered_label_errors` ({} when empty).

    The oracle is the (region, lambda) whose delivered labels have the least mean true contour error over
    the frames; ``oracle_gap_mm`` is the chosen candidate's mean minus the oracle's (mm, >= 0). Frames are
    compared over those every candidate has, so that each mean runs over the same frames.

    Returns
    -------
    dict: ``oracle`` (lambda), ``oracle_region``, ``oracle_gap_mm``, ``chosen_contour_mm``,
    ``oracle_contour_mm``, ``true_contour_initial_mm`` (the same frames, no correction; mm),
    ``chosen_improved_share`` (frames whose chosen delivered label beats the initial one, of those the
    chosen fit kept), ``gap_se_mm`` (standard error of the gap over frames), ``n_frames`` and ``table``
    (DataFrame by region and lambda: ``true_contour_mm``).
    """
    if errors is None or len(errors) == 0:
        return {}
    wide = errors.pivot_table(index=["specimen", "record", "timestamp"], columns=["region", "lambda"],
                              values="true_contour_mm").dropna()
    if wide.empty:
        return {}
    means = wide.mean()
    table = means.rename("true_contour_mm").reset_index()
    best = means.idxmin()
    gap = wide[(region, chosen)] - wide[best]
    init = errors.drop_duplicates(["specimen", "record", "timestamp"]).set_index(
        ["specimen", "record", "timestamp"])["true_contour_initial_mm"].reindex(wide.index)
    mine = errors[(errors["region"] == region) & (errors["lambda"] == chosen)].set_index(
        ["specimen", "record", "timestamp"]).reindex(wide.index)
    kept = mine["kept"].astype(bool)
    better = (mine["true_contour_mm"] < mine["true_contour_initial_mm"])[kept]
    return {"oracle": float(best[1]), "oracle_region": str(best[0]), "oracle_gap_mm": float(gap.mean()),
            "gap_se_mm": float(gap.std(ddof=1) / np.sqrt(len(gap))) if len(gap) > 1 else float("nan"),
            "chosen_contour_mm": float(means[(region, chosen)]), "oracle_contour_mm": float(means[best]),
            "true_contour_initial_mm": float(init.mean()),
            "chosen_improved_share": float(better.mean()) if len(better) else float("nan"),
            "n_frames": int(len(wide)), "table": table}


def lambda_oracle(paths: Paths, selection: dict | None, settings: dict) -> dict:
    """The oracle's view of the truth-free lambda selection on its own frames, for reporting only ({} off the twin).

    Every selection trial's delivered label is measured (:func:`delivered_label_errors`) and the oracle taken
    over the candidates (:func:`oracle_of`). These are the frames the rule chose on, a dozen: the oracle here
    is chosen on the very frames it is scored on. :func:`heldout_lambda_oracle` measures on others.

    Returns
    -------
    dict: ``oracle`` (lambda), ``oracle_region``, ``oracle_gap_mm`` (mean true contour error of the chosen
    candidate's delivered labels minus the oracle's, mm, >= 0), ``true_contour_initial_mm`` (the same frames,
    no correction) and ``table`` (DataFrame by region and lambda: ``true_contour_mm``).
    """
    trials = None if selection is None else selection.get("trials")
    out = oracle_of(delivered_label_errors(paths, trials, settings), selection["chosen"], selection["region"]) \
        if trials is not None else {}
    keys = ("oracle", "oracle_region", "oracle_gap_mm", "true_contour_initial_mm", "table")
    return {k: out[k] for k in keys} if out else {}


def heldout_lambda_oracle(paths: Paths, params, chosen: float, region: str, *, seed: int = 0,
                          n_frames: int = 96, specimens: list[str] | None = None, n_workers: int = 1,
                          dask_scheduler: str | None = None) -> dict:
    """The oracle and the truth-free choice's gap on frames the choice never saw, for reporting only.

    ``n_frames`` frames outside the selection's (:func:`ultrabones.labels.lambda_selection.heldout_fit_tasks`) are
    fitted at every candidate (lambda, region) by Eq. 2 on the whole frame (differential evolution,
    validated as the labelling validates), each candidate's delivered labels are measured against the
    truth (:func:`delivered_label_errors`), and the oracle is the candidate with the least mean error
    (:func:`oracle_of`). With a hundred frames rather than a dozen, the oracle is no longer chosen on the
    frames it is scored on, and one frame cannot decide the gap.

    Parameters
    ----------
    paths : the run's paths (a twin with its truth; {} otherwise).
    params : the labelling's :class:`ultrabones.labels.batch.LabelingParams`.
    chosen, region : the truth-free choice (notebook 02's ``lambda`` and ``objective_region``).
    seed : master seed of the run.
    n_frames : held-out frames.
    specimens, n_workers, dask_scheduler : as for :func:`ultrabones.labels.batch.run`.

    Returns
    -------
    :func:`oracle_of`'s dict plus ``chosen``, ``region`` and ``errors`` (the per-trial DataFrame).
    """
    from ultrabones.core.executor import executor
    from ultrabones.labels import batch, lambda_selection, select

    if truth_root(paths) is None:
        return {}
    tasks = lambda_selection.heldout_fit_tasks(paths, params, seed=seed, n_frames=n_frames, specimens=specimens)
    with executor(params.executor, dask_scheduler, n_workers) as ex:
        rows = [r for out in ex.map(select.selection_task, tasks, "held-out fits", unit="frame") for r in out]
    settings = batch.label_settings(params, seed)
    errors = delivered_label_errors(paths, pd.DataFrame(rows), settings)
    out = oracle_of(errors, float(chosen), str(region))
    return out | {"chosen": float(chosen), "region": str(region), "errors": errors} if out else {}


# ----------------------------------------------------------------------------- reconstruction (notebook 06)


def true_imaged_points(paths: Paths, specimen: str, frame_step: int = 1, kind: str = dataset.LABELS) -> np.ndarray:
    """(N, 3) CT points (mm) of the bone surface the sweeps truly imaged.

    The twin's true visible labels (``truth/<specimen>/<record>/Labels/``) of
    the frames the reconstruction used (those with a ``kind`` label in the
    dataset, every ``frame_step``-th), mapped to CT with the *true* probe
    poses (``truth/.../poses.csv``) and the true calibration (Eq. 1). Empty
    when the specimen has no such frame.
    """
    from ultrabones.reconstruction.surface import label_points

    root = truth_root(paths)
    calib = true_system(paths)["calibration"]
    _, spacing, _ = dataset.read_calibration(paths.dataset)
    spec = dataset.read_specimen(paths.dataset / specimen, paths.derived / specimen)
    out = []
    for rec in spec.records:
        ts = rec.labelled_timestamps(kind)[:: max(1, int(frame_step))]
        f = root / specimen / rec.name / "poses.csv"
        if not len(ts) or not f.is_file():
            continue
        true = pd.read_csv(f).set_index("timestamp")
        for t in ts:
            lab = true_label(paths, specimen, rec.name, int(t), kind, None)
            if lab is None or int(t) not in true.index or not lab.any():
                continue
            pose = pose_from_params(true.loc[int(t), list(POSE_COLUMNS)].to_numpy(float)[None])[0]
            out.append(label_points(lab, pose, calib, spacing))
    return np.concatenate(out) if out else np.zeros((0, 3))


def reconstruction_vs_truth(paths: Paths, result, sample_mm: float = 0.2, crop_mm: float = 1.0,
                            seed: int = 0) -> dict | None:
    """Notebook 06's grid measured against the twin's *true* bone surface (None off the twin).

    For each reconstructed specimen and grid cell (group ``all``), the
    point cloud the stage wrote (its ``"ply"`` files) is compared with
    ``truth/<specimen>/bone_model.stl`` by
    :func:`ultrabones.reconstruction.surface.compare_to_surface`:

    - ``mean_true_mm``, ``median_true_mm``, ``p95_true_mm``: exact
      point-to-mesh distance of each reconstruction point to the true bones;
    - the *truly imaged surface* ``V*``: samples of the true bones (about one
      per ``sample_mm`` squared) within ``crop_mm`` of the true visible label
      points at the true poses (:func:`true_imaged_points`), the same for every
      cell of a specimen;
    - ``coverage_true``: share of ``V*`` within the stage's ``coverage_mm``;
    - ``chamfer_true_mm``: UltraBoneUDF's Chamfer form,
      ``(mean_R d(r, V*) + mean_V* d(v, R)) / 2`` on point sets;
    - ``chamfer_true_udf_crop_mm``: UltraBoneUDF's exact protocol, the true
      samples within ``crop_mm`` of the reconstruction itself as the
      reference (it does not see what the reconstruction misses).

    Parameters
    ----------
    paths : the run's paths.
    result : the stage's :class:`~ultrabones.reconstruction.batch.ReconstructionResult` (its parameters give
        ``coverage_mm`` and ``frame_step``).
    sample_mm : spacing of the true-surface samples (mm).
    crop_mm : distance of the imaged-part crop (mm; UltraBoneUDF: 1).
    seed : seed of the surface sampling.

    Returns
    -------
    ``{"grid": {cell: {mean_true_mm, median_true_mm, p95_true_mm,
    chamfer_true_mm, chamfer_true_udf_crop_mm, coverage_true, n_specimens_true}},
    "per_specimen": {specimen: {cell: {...same keys}}}, "n_true_imaged": {specimen: n},
    "missing": [why a cell or specimen could not be measured], "sample_mm", "crop_mm"}``,
    or None without ``truth/``.
    """
    from ultrabones.reconstruction import surface as rc

    root = truth_root(paths)
    if root is None:
        return None
    names = {"mean_mm": "mean_true_mm", "median_mm": "median_true_mm", "p95_mm": "p95_true_mm",
             "chamfer_mm": "chamfer_true_mm", "chamfer_udf_crop_mm": "chamfer_true_udf_crop_mm",
             "coverage": "coverage_true", "n_specimens": "n_specimens_true"}
    rows: dict[str, list] = {}
    per_specimen, n_imaged, missing = {}, {}, []
    results, params = result.specimens, result.params
    for r in results:
        if r.get("skipped"):
            continue
        sid = r["specimen"]
        mesh_file = root / sid / "bone_model.stl"
        if not mesh_file.is_file():
            missing.append(f"{mesh_file}: no true bone model")
            continue
        true_mesh = dataset.read_mesh(mesh_file)
        surf = rc.SurfaceDistance.from_mesh(true_mesh)
        clouds = {}
        for key, ply in sorted(r.get("ply", {}).items()):
            src, method, group = key.split("/")
            if group != rc.ALL:
                continue
            if not Path(ply).is_file():
                missing.append(f"{ply}: point cloud missing (rerun 06)")
                continue
            clouds[rc.cell_name(src, method)] = rc.read_ply(ply)[0]
        true_pts = true_imaged_points(paths, sid, params.frame_step)
        # every crop below keeps samples within crop_mm of the imaged points or of a cloud: crop once to their union
        samples = rc.sample_surface(true_mesh, sample_mm, seed=seed).points
        samples = rc.points_within(samples, np.concatenate([true_pts, *clouds.values()]), crop_mm)
        imaged = rc.points_within(samples, true_pts, crop_mm)
        n_imaged[sid] = len(imaged)
        for cell, pts in clouds.items():
            row = rc.compare_to_surface(pts, surf, imaged, params.coverage_mm, samples, crop_mm)
            rows.setdefault(cell, []).append(row)
            pooled = rc.pool_comparisons([row])
            per_specimen.setdefault(sid, {})[cell] = {names[k]: pooled[k] for k in names if k != "n_specimens"}
    if not any(r.get("ply") for r in results if not r.get("skipped")):
        missing.append("no point cloud written (reconstruction.save_ply is false): nothing measured against truth")
    grid = {}
    for cell, cell_rows in rows.items():
        pooled = rc.pool_comparisons(cell_rows)
        grid[cell] = {names[k]: pooled[k] for k in names}
    return {"grid": grid, "per_specimen": per_specimen, "n_true_imaged": n_imaged, "missing": missing,
            "sample_mm": sample_mm, "crop_mm": crop_mm}


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


# ----------------------------------------------------------------------------- collected metrics (make validate)


def merge_collected(twin_root: Path | str, profile: str, seeds, out_dir: Path | str) -> list[Path]:
    """Merge each seed's measurements against the truth into the metrics collected for it
    (``<out_dir>/seed<N>/<stem>.json``, ``python -m ultrabones collect-validation``), from the twin
    ``<twin_root>/<profile>-seed<N>``; returns the files rewritten. The collected metrics are results to report
    (committed under ``figures/validation/``), so they carry the truth's measurements as the summary reads them."""
    from ultrabones.core import atomic

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
    import argparse

    from ultrabones.core.paths import twin_root

    ap = argparse.ArgumentParser(prog="python -m ultrabones.twin.measure")
    sub = ap.add_subparsers(dest="verb", required=True)
    mc = sub.add_parser("merge-collected", help="merge the seeds' truth measurements into their collected metrics")
    mc.add_argument("--profile", default="default")
    mc.add_argument("--seeds", type=int, nargs="+", required=True)
    mc.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    written = merge_collected(twin_root(), args.profile, args.seeds, args.out)
    print(f"{args.out}: the twin's measurements merged into {len(written)} file(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
