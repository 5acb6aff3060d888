"""Figs. 6 and 8 of the evaluation: example frames with their labels coloured by intensity class (6a), the
grey-value distributions of label pixels with the Otsu threshold (6b), and accuracy, completeness and F1
against the distance threshold per method and region (8), drawn from what :mod:`ultrabones.evaluation.metrics`
computed; :func:`plot_fig6a`, :func:`plot_fig6b` and :func:`plot_fig8` draw them from a stage-05 result
(:class:`ultrabones.evaluation.benchmark.EvaluationResult`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ultrabones.core import dataset as ds
from ultrabones.core.dataset import Frame
from ultrabones.core.distance_scores import SCORES
from ultrabones.core.overlay import overlay
from ultrabones.evaluation import bone_detector
from ultrabones.evaluation.comparison import PAPER_AT_0P5MM
from ultrabones.evaluation.metrics import REGIONS, LabelSource, dataset_label


#: Colours of Fig. 6a: high-intensity label pixels green, low-intensity blue.
HIGH_RGB, LOW_RGB = (0.1, 0.85, 0.2), (0.15, 0.45, 1.0)


def pick_examples(gt_counts: np.ndarray, n: int) -> list[int]:
    """Indices of ``n`` example frames for Fig. 6a, spread over the frames whose
    labels hold the most low-intensity pixels (where the methods differ)."""
    counts = np.asarray(gt_counts).reshape(-1, 2)
    cand = np.flatnonzero(counts.sum(1) > 0)
    if cand.size == 0:
        return []
    order = cand[np.argsort(-counts[cand, 1], kind="stable")]
    top = order[: max(n, (order.size + 1) // 2)]
    return sorted(int(top[i]) for i in np.unique(np.linspace(0, top.size - 1, min(n, top.size)).round().astype(int)))


def intensity_overlay(image: np.ndarray, mask: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W, 3) float RGB: the grey image with ``mask`` pixels coloured by intensity class."""
    high = mask & (image > threshold)
    return overlay(image, [(high, HIGH_RGB), (mask & ~high, LOW_RGB)])


def plot_examples(frames: Sequence[Frame], columns: Mapping[str, LabelSource], threshold: float):
    """Fig. 6a: input and one overlay per label source (e.g. GT, manual, predicted), one row per frame."""
    import matplotlib.pyplot as plt

    n, k = len(frames), len(columns) + 1
    fig, axes = plt.subplots(n, k, figsize=(2.6 * k, 2.3 * n), squeeze=False)
    for i, fr in enumerate(frames):
        img = fr.read_image()
        axes[i, 0].imshow(img, cmap="gray", vmin=0, vmax=255)
        for j, (name, src) in enumerate(columns.items(), start=1):
            axes[i, j].imshow(intensity_overlay(img, src(fr, img.shape), threshold), interpolation="nearest")
        axes[i, 0].set_ylabel(fr.key, fontsize=6)
    for j, title in enumerate(["Input", *columns]):
        axes[0, j].set_title(title)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"high intensity (> {threshold:.0f}) green, low intensity blue", fontsize=9)
    fig.tight_layout()
    return fig


def plot_histograms(hists: Mapping[str, np.ndarray], threshold: float):
    """Fig. 6b: grey-value distributions of label pixels with the Otsu threshold (red line).

    One seaborn histogram per label source: the (256,) counts of :func:`label_histograms` as
    weights on one bin per grey value, normalised to the share of label pixels.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, len(hists), figsize=(4.2 * len(hists), 3.2), squeeze=False, sharey=True)
    for ax, (name, h) in zip(axes[0], hists.items()):
        h = np.asarray(h, float)
        grey = pd.DataFrame({"grey": np.arange(256), "share": h / max(h.sum(), 1)})
        sns.histplot(data=grey, x="grey", weights="share", discrete=True, stat="count",
                     color="0.4", edgecolor="none", alpha=1.0, ax=ax)
        ax.axvline(threshold, color="red", lw=1.5, label=f"Otsu {threshold:.0f}")
        low = h[: int(np.floor(threshold)) + 1].sum() / max(h.sum(), 1)
        ax.set_title(f"{name}: {100 * low:.0f}% low intensity", fontsize=9)
        ax.set_xlabel("pixel intensity")
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("share of label pixels")
    fig.tight_layout()
    return fig


def plot_curves(sigmas, curves: Mapping, title: str = "", paper: Mapping | None = None, paper_sigma: float = 0.5):
    """Fig. 8: accuracy, completeness and F1 against sigma, per method (line style) and region (colour).

    ``curves`` is ``{method: {region: {score: [n_sigma]}}}`` (one protocol of :func:`summarise`);
    ``paper`` (e.g. :data:`PAPER_AT_0P5MM`) adds the published values at ``paper_sigma`` as markers.
    """
    import matplotlib.pyplot as plt

    colours = {"all": "black", "high": "tab:green", "low": "tab:blue"}
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for ax, score in zip(axes, SCORES):
        for (method, by_region), ls in zip(curves.items(), styles):
            for region in REGIONS:
                ax.plot(sigmas, by_region[region][score], ls, color=colours[region], label=f"{method} {region}")
        for method, marker in (("model", "*"), ("manual", "X")):
            for region, vals in (paper or {}).get(method, {}).items():
                ax.plot([paper_sigma], [vals[score]], marker, color=colours[region], ms=9, mec="k", mew=0.5,
                        label=f"paper: {method} {region}", ls="none")
        ax.set_xlabel("distance threshold sigma (mm)")
        ax.set_ylabel({"accuracy": "Accuracy", "completeness": "Completeness", "f1": "F1 score"}[score])
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- stage 05's figures, from its result


def plot_fig6b(result):
    """Fig. 6b: grey values of the label pixels (manual, CT-derived, predicted) with Otsu's threshold."""
    return plot_histograms(result.histograms, result.otsu)


def plot_fig8(result, protocol: str = "released"):
    """Fig. 8: accuracy, completeness and F1 against sigma per method and region; the released protocol
    with the paper's values at 0.5 mm, the strict one without."""
    curves = result.summary["curves"][protocol]
    if protocol == "strict":
        return plot_curves(result.params.sigmas, curves, "strict protocol (empty predictions count)")
    title = (f"released protocol, {len(result.frames)} test frames; detector = {bone_detector.LABEL} "
             "(fitted on training specimens)" + (f"; manual = {result.manual_source}" if result.manual_source else ""))
    return plot_curves(result.params.sigmas, curves, title, paper=PAPER_AT_0P5MM)


def plot_fig6a(result):
    """Fig. 6a: input, CT-derived label, manual, detector and predicted labels on ``n_examples`` frames
    with much low-intensity bone (green: high intensity, blue: low)."""
    picks = pick_examples(result.scores["gt_counts"], result.params.n_examples)
    columns = {"GT (CT-derived)": dataset_label(ds.LABELS)}
    if result.manual_source:
        name = "Manual" + (f" ({result.annotator_name})" if result.annotator_name else "")
        columns[name] = dataset_label(ds.LABELS_MANUAL)
    if "detector" in result.methods:
        columns["Shadow-peak detector"] = result.methods["detector"]
    columns["Predicted"] = dataset_label(ds.LABELS_PRED)
    return plot_examples([result.frames[i] for i in picks], columns, result.otsu)
