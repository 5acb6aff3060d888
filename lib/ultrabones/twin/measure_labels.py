"""Notebook 02's labels measured against the twin's truth: drawn at the recorded, registered and optimised
poses with notebook 02's cloud and band, their contour errors against the true full label, the metrics and the
figure."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ultrabones.core import dataset
from ultrabones.core.executor import executor
from ultrabones.core.geometry import POSE_COLUMNS, perturbation, pose_from_params
from ultrabones.core.label_distances import contour_error_mm
from ultrabones.core.paths import Paths
from ultrabones.labels import cloud as label_cloud
from ultrabones.labels import inputs
from ultrabones.labels.label import full_label, points_near
from ultrabones.twin.contour import label_distance_mm, precision_recall
from ultrabones.twin.truth_reader import true_label, truth_root


class LabelDrawer:
    """Draws a frame's full label at any pose from the same dense cloud ``C`` as notebook 02's labels."""

    def __init__(self, paths: Paths, gamma_mm: float, density_per_mm2: float, cloud_seed: int):
        self.paths, self.gamma = paths, float(gamma_mm)
        self.density, self.cloud_seed = float(density_per_mm2), int(cloud_seed)
        self.calib, self.spacing, _ = dataset.read_calibration(paths.dataset)
        self._clouds: dict = {}
        self._surface_cloud, self._load_cloud = inputs.surface_cloud, label_cloud.load_cloud

    def cloud(self, specimen: str):
        if specimen not in self._clouds:
            spec = dataset.read_specimen(self.paths.dataset / specimen)
            self._clouds[specimen] = self._load_cloud(
                self._surface_cloud(self.paths, spec, self.density, self.cloud_seed))[0]
        return self._clouds[specimen]

    def draw(self, specimen: str, shape, poses) -> list[np.ndarray]:
        """Full labels (H, W) bool of one frame at each pose (4, 4) in ``poses``."""
        pts = self.cloud(specimen)
        near = pts[points_near(pts, shape, poses[0], poses[1:], self.calib, self.spacing, self.gamma)]  # once
        return [full_label(shape, p, self.calib, self.spacing, near, self.gamma) for p in poses]






def tracking_table(paths: Paths, specimen: str, record: str) -> pd.DataFrame:
    """A record's tracking table as recorded (poses in mm and degrees; rows without a pose kept)."""
    return dataset.read_tracking(paths.dataset / specimen / record / dataset.TRACKING, allow_missing_pose=True)


def labels(paths: Paths, report: pd.DataFrame, registrations: dict, settings: dict,
           tol_mm: float = 0.5, progress: bool = False, *, n_workers: int = 1,
           scheduler: str | None = None) -> pd.DataFrame:
    """Every kept frame's label errors against the truth, from what notebook 02 wrote.

    The initial label is drawn at the recorded pose, the registration baseline's at the sweep's
    global correction, the optimised one at the report's correction: with the same cloud and band as
    notebook 02 (``settings``: ``gamma_mm``, ``label_density_per_mm2``, ``label_cloud_seed``). The
    visible label is the one written in ``Labels/``. Records are measured as independent tasks on the
    package's executor (``n_workers`` local processes, or the Dask ``scheduler``); the table does not depend
    on it.

    Returns
    -------
    DataFrame per kept frame, in the report's order: ``specimen, record, timestamp``,
    ``contour_{initial,registered,optimized}_mm`` (:func:`ultrabones.core.label_distances.contour_error_mm`, the
    headline), ``error_*_mm`` (the band metric: mean distance of the label band's pixels to the true band),
    ``visible_precision``, ``visible_recall`` (share within ``tol_mm``).
    """
    if truth_root(paths) is None:
        return pd.DataFrame()
    kept = report[report["status"] == "kept"].reset_index(drop=True)
    tasks = [(paths, spec, rec, rows, np.asarray(registrations[f"{spec}/{rec}"]["transform"], float), dict(settings),
              float(tol_mm)) for (spec, rec), rows in kept.groupby(["specimen", "record"], sort=False)]
    with executor("auto", scheduler, n_workers, progress) as ex:
        parts = ex.map(record_label_errors, tasks, desc="errors vs truth", unit="record")
    rows = [row for part in parts for row in part]
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).sort_values("_row").drop(columns="_row").reset_index(drop=True)


def record_label_errors(task: tuple) -> list[dict]:
    """One record's rows of :func:`labels` (a task of the executor: picklable in and out)."""
    paths, specimen, record, kept, g, settings, tol_mm = task
    drawer = LabelDrawer(paths, settings["gamma_mm"], settings["label_density_per_mm2"], settings["label_cloud_seed"])
    tab = tracking_table(paths, specimen, record).set_index("timestamp")
    rows = []
    for i, r in zip(kept.index, kept.itertuples(index=False)):
        prm = tab.loc[int(r.timestamp), list(POSE_COLUMNS)].to_numpy(float)
        shape = dataset.read_image(paths.dataset / specimen / record / dataset.IMAGES
                                   / f"{int(r.timestamp)}.png").shape
        pose0 = pose_from_params(prm)
        x = np.array([r.rot_x_deg, r.rot_y_deg, r.rot_z_deg, r.trans_x_mm, r.trans_y_mm, r.trans_z_mm], float)
        init, reg, opt = drawer.draw(specimen, shape, [pose0, g @ pose0, pose0 @ perturbation(x[:3], x[3:])])
        tf = true_label(paths, specimen, record, r.timestamp, dataset.LABELS_FULL, shape)
        tv = true_label(paths, specimen, record, r.timestamp, dataset.LABELS, shape)
        row = {"_row": int(i), "specimen": specimen, "record": record, "timestamp": int(r.timestamp)}
        for name, m in (("initial", init), ("registered", reg), ("optimized", opt)):
            row[f"contour_{name}_mm"] = contour_error_mm(m, tf, drawer.spacing) if tf is not None else np.nan
            row[f"error_{name}_mm"] = label_distance_mm(m, tf, drawer.spacing) if tf is not None else np.nan
        vf = paths.derived / specimen / record / dataset.LABELS / f"{int(r.timestamp)}_label.png"
        prec = rec = np.nan
        if tv is not None and vf.is_file():
            prec, rec = precision_recall(dataset.read_label(vf, shape), tv, drawer.spacing, tol_mm)
        row["visible_precision"], row["visible_recall"] = prec, rec
        rows.append(row)
    return rows


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
