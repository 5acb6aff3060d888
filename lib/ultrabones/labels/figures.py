"""Figures 3 and 4 of the paper: labelled frames drawn from what notebook 02 wrote.

Each figure recomputes its layers from the dataset, the report row and the
stage's parameters (:func:`frame_layers`); nothing here reads the twin's truth.
A report that the twin's measurement has joined (``contour_initial_mm``,
``contour_optimized_mm``) adds the measured errors to Fig. 4's titles.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from ultrabones.core import dataset, geometry
from ultrabones.core.overlay import overlay
from ultrabones.core.paths import Paths
from ultrabones.labels import label
from ultrabones.labels.labeling_params import LabelingParams
from ultrabones.labels.inputs import record_tracking, surface_cloud
from ultrabones.labels.cloud import load_cloud

RED, GREEN, BLUE, YELLOW = (1, 0, 0), (0, 1, 0), (0, 0.4, 1), (1, 1, 0)


def frame_layers(paths: Paths, row: Mapping[str, Any], P: LabelingParams, seed: int = 0) -> dict:
    """Everything Fig. 3 and Fig. 4 draw for one labelled frame of the report.

    Recomputes, from the dataset and the report row: the image, the initial
    and optimised full labels, and the shadow and steep-incidence pixels
    removed from the optimised one, with the stage's ``P.label_density_per_mm2``,
    ``P.gamma_mm`` and ``P.incidence_max_deg`` (``seed``: the run's master seed).

    Returns
    -------
    dict with ``image`` (H, W) uint8 and (H, W) bool ``initial``, ``optimized``,
    ``shadow``, ``steep``, ``visible``; ``spacing`` (mm per pixel).
    """
    spec = dataset.specimen(paths.dataset, row["specimen"], paths.derived)
    rec = next(r for r in spec.records if r.name == row["record"])
    calib, spacing, _ = dataset.read_calibration(paths.dataset)
    points, normals = load_cloud(surface_cloud(paths, spec, P.label_density_per_mm2, seed + 1))
    tab = record_tracking(rec)
    prm = tab.loc[tab["timestamp"] == int(row["timestamp"]), list(geometry.POSE_COLUMNS)].to_numpy(float)[0]
    img = rec.read_image(int(row["timestamp"]))
    pose0 = geometry.pose_from_params(prm)
    x = np.array([row["rot_x_deg"], row["rot_y_deg"], row["rot_z_deg"], row["trans_x_mm"], row["trans_y_mm"],
                  row["trans_z_mm"]], float)
    pose1 = pose0 @ geometry.perturbation(x[:3], x[3:])
    init = label.full_label(img.shape, pose0, calib, spacing, points, P.gamma_mm)
    opt = label.full_label(img.shape, pose1, calib, spacing, points, P.gamma_mm)
    vis = label.visible_label(opt, pose1, calib, spacing, points, normals, P.gamma_mm, P.incidence_max_deg)
    return {"image": img, "initial": init, "optimized": opt, "shadow": vis.shadow, "steep": vis.steep,
            "visible": vis.visible, "spacing": spacing}


def kept_by_correction(report: pd.DataFrame, errors: pd.DataFrame | None = None) -> pd.DataFrame:
    """The kept frames of a report sorted by their correction (mm), with ``errors`` joined when given.

    Raises
    ------
    ValueError when no frame was kept (nothing to draw).
    """
    kept = report[report["status"] == "kept"]
    if errors is not None and not errors.empty:
        kept = kept.merge(errors, on=["specimen", "record", "timestamp"], how="left")
    if kept.empty:
        raise ValueError("no frame kept: nothing to draw")
    return kept.sort_values("correction_mm", kind="stable").reset_index(drop=True)


def fig3_pipeline(paths: Paths, report: pd.DataFrame, P: LabelingParams, seed: int = 0, quantile: float = 0.75):
    """Fig. 3: one frame through the pipeline.

    The kept frame at the ``quantile`` of the corrections (a clearly corrected one): the image; the
    initial (red) and optimised (green) labels; the final visible label (green) with the pixels removed
    in the acoustic shadow (blue) and for an incidence above ``P.incidence_max_deg`` (yellow).

    Returns
    -------
    matplotlib figure.
    """
    import matplotlib.pyplot as plt

    kept = kept_by_correction(report)
    row = kept.iloc[int(quantile * (len(kept) - 1))]
    L = frame_layers(paths, row, P, seed)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    axes[0].imshow(L["image"], cmap="gray")
    axes[0].set_title("ultrasound image")
    axes[1].imshow(overlay(L["image"], [(L["initial"], RED), (L["optimized"], GREEN)]))
    axes[1].set_title("red: initial, green: optimised")
    axes[2].imshow(overlay(L["image"], [(L["visible"], GREEN), (L["shadow"], BLUE), (L["steep"], YELLOW)]))
    axes[2].set_title(f"final label; shadow (blue), incidence > {P.incidence_max_deg:g} deg (yellow)")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"{row['specimen']}/{row['record']} t={int(row['timestamp'])} ms, correction "
                 f"{row['correction_mm']:.2f} mm", y=1.03)
    fig.tight_layout()
    return fig


def fig4_before_after(paths: Paths, report: pd.DataFrame, P: LabelingParams, seed: int = 0, n: int = 6,
                      errors: pd.DataFrame | None = None):
    """Fig. 4: up to ``n`` kept frames, spread over the range of corrections, before and after the optimisation.

    Red: initial alignment, green: optimised, yellow: both. With ``errors`` (the twin's
    measurement, per frame), each title adds the contour error before and after.

    Returns
    -------
    matplotlib figure.
    """
    import matplotlib.pyplot as plt

    kept = kept_by_correction(report, errors)
    picks = kept.iloc[np.unique(np.linspace(len(kept) - 1, 0, min(n, len(kept))).round().astype(int))[::-1]]
    cols = (len(picks) + 1) // 2
    fig, axes = plt.subplots(2, cols, figsize=(4 * cols, 6.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (_, r) in zip(axes.ravel(), picks.iterrows()):
        L = frame_layers(paths, r, P, seed)
        ax.imshow(overlay(L["image"], [(L["initial"], RED), (L["optimized"], GREEN),
                                       (L["initial"] & L["optimized"], YELLOW)]))
        title = f"{r['specimen']}/{r['record']} corr {r['correction_mm']:.2f} mm"
        if np.isfinite(r.get("contour_optimized_mm", np.nan)):
            title += f"\ncontour error {r['contour_initial_mm']:.2f} -> {r['contour_optimized_mm']:.2f} mm (truth)"
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig
