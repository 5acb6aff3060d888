"""Which objective is more accurate? Eq. 2 and the released objective measured against the twin's truth.

:func:`ultrabones.labels.compare.fit_objectives` runs each objective on the same frames without any truth;
here, on the twin only, the label each one delivers (the optimised label when the frame is kept, the initial
one otherwise, as the dataset would hold it) is drawn with notebook 02's cloud and band and compared with the
true full label (contour error, :func:`ultrabones.core.label_distances.contour_error_mm`). :func:`table` gives,
per objective, the discard rate, the contour error of the kept frames before and after, and that of every
frame's delivered label; :func:`plot` the figure of notebook 02's twin section; :func:`compared` all of it when
``twin.compare_objectives_frames`` asks for it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ultrabones.core import dataset
from ultrabones.core.geometry import POSE_COLUMNS, perturbation, pose_from_params
from ultrabones.core.label_distances import contour_error_mm
from ultrabones.core.paths import Paths
from ultrabones.labels import compare as fit
from ultrabones.twin import measure_labels, truth_reader
from ultrabones.twin.params import TwinParams


def errors(paths: Paths, fits: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """The true contour error of each fit's delivered label and of the initial label (empty off the twin).

    Parameters
    ----------
    fits : :func:`ultrabones.labels.compare.fit_objectives`'s rows.
    settings : notebook 02's label settings (``gamma_mm``, ``label_density_per_mm2``, ``label_cloud_seed``).

    Returns
    -------
    ``fits`` with ``contour_initial_mm`` and ``contour_delivered_mm`` (mm; NaN where the frame has no true label).
    """
    if fits is None or fits.empty or truth_reader.truth_root(paths) is None:
        return pd.DataFrame()
    drawer = measure_labels.LabelDrawer(paths, settings["gamma_mm"], settings["label_density_per_mm2"],
                                          settings["label_cloud_seed"])
    tabs, out = {}, []
    for r in fits.itertuples(index=False):
        key = (r.specimen, r.record)
        if key not in tabs:
            tabs[key] = measure_labels.tracking_table(paths, *key).set_index("timestamp")
        pose0 = pose_from_params(tabs[key].loc[int(r.timestamp), list(POSE_COLUMNS)].to_numpy(float))
        shape = dataset.read_image(paths.dataset / r.specimen / r.record / dataset.IMAGES
                                   / f"{int(r.timestamp)}.png").shape
        tf = truth_reader.true_label(paths, r.specimen, r.record, r.timestamp, dataset.LABELS_FULL, shape)
        x = np.asarray(r.x, float) if r.status == "kept" else np.zeros(6)
        init, deliv = drawer.draw(r.specimen, shape, [pose0, pose0 @ perturbation(x[:3], x[3:])])
        row = r._asdict()
        row["contour_initial_mm"] = contour_error_mm(init, tf, drawer.spacing) if tf is not None else np.nan
        row["contour_delivered_mm"] = contour_error_mm(deliv, tf, drawer.spacing) if tf is not None else np.nan
        out.append(row)
    return pd.DataFrame(out)


def table(errs: pd.DataFrame) -> pd.DataFrame:
    """Per objective: ``n_frames``, ``discard_rate`` (discarded among kept + discarded), ``kept_initial_mm`` and
    ``kept_optimized_mm`` (mean contour error of the kept frames before and after), ``delivered_mm`` and
    ``delivered_se_mm`` (mean over every fitted frame of the delivered label's error, and its standard error),
    ``better_share`` (kept frames whose error went down), ``seconds_per_frame``."""
    rows = []
    for name, g in errs.groupby("candidate", sort=False):
        valid = g[g["status"].isin(["kept", "discarded"])]
        kept = valid[valid["status"] == "kept"]
        d = valid["contour_delivered_mm"].astype(float).dropna()
        rows.append({
            "objective": name, "n_frames": int(len(valid)),
            "discard_rate": float((valid["status"] == "discarded").mean()) if len(valid) else np.nan,
            "kept_initial_mm": float(kept["contour_initial_mm"].mean()) if len(kept) else np.nan,
            "kept_optimized_mm": float(kept["contour_delivered_mm"].mean()) if len(kept) else np.nan,
            "delivered_mm": float(d.mean()) if len(d) else np.nan,
            "delivered_se_mm": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else np.nan,
            "better_share": float((kept["contour_delivered_mm"] < kept["contour_initial_mm"]).mean())
            if len(kept) else np.nan,
            "seconds_per_frame": float(valid["seconds"].mean()) if len(valid) else np.nan,
        })
    return pd.DataFrame(rows)


def plot(errs: pd.DataFrame):
    """Box plot of the delivered labels' contour error against the truth (mm) per objective, the initial
    labels first. Returns a matplotlib figure."""
    import matplotlib.pyplot as plt

    first = errs["candidate"].iloc[0]
    groups = {"initial": errs.loc[errs["candidate"] == first, "contour_initial_mm"]}
    for name, g in errs.groupby("candidate", sort=False):
        groups[name] = g["contour_delivered_mm"]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.boxplot([v.astype(float).dropna() for v in groups.values()], showfliers=False)
    ax.set_xticks(range(1, len(groups) + 1), list(groups))
    ax.set_ylabel("contour error against the truth (mm)")
    ax.set_title("delivered labels, same frames", fontsize=9)
    fig.tight_layout()
    return fig


def compare(paths: Paths, P, result, n_frames: int, seed: int, save_figure=None, stem: str | None = None) -> dict:
    """Fit every objective on at most ``n_frames`` frames (truth-free, :func:`ultrabones.labels.compare.fit_objectives`,
    at ``result``'s lambda), measure what each delivered against the truth, and give the table.

    Parameters
    ----------
    P : the stage's parameters; result : the stage's :class:`ultrabones.labels.batch.LabelingResult` (``lam``,
        ``settings``); save_figure : called as ``save_figure(fig, paths, "objective_comparison", stem)`` with
        :func:`plot`'s figure (the notebook passes ``stage.save_figure``); None: no figure.

    Returns
    -------
    :func:`table` as a dict of lists (the ``objective_comparison`` block of notebook 02's metrics).
    """
    errs = errors(paths, fit.fit_objectives(paths, P, result.lam, n_frames, seed), result.settings)
    if save_figure is not None:
        save_figure(plot(errs), paths, "objective_comparison", stem)
    return table(errs).to_dict(orient="list")


def compared(paths: Paths, P, result, twin: TwinParams, seed: int, save_figure=None, stem: str | None = None) -> dict:
    """Notebook 02's objective comparison, when asked: ``{"objective_comparison": compare(...)}`` on the twin with
    ``twin.compare_objectives_frames`` > 0 (:func:`compare` on that many frames), else ``{}``."""
    n_frames = twin.need("compare_objectives_frames").compare_objectives_frames
    if not paths.is_twin or n_frames < 1:
        return {}
    return {"objective_comparison": compare(paths, P, result, n_frames, seed, save_figure, stem)}
