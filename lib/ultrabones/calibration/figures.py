"""Figures of the calibration stage (notebook 01): the temporal offset sweep, and a phantom frame's wire echoes."""

from __future__ import annotations

import numpy as np


def plot_offset_sweep(sweep, true_offset_ms: float | None = None, zoom_ms: float = 15.0):
    """The mean 3D localisation error against the temporal offset: the whole sweep and a zoom on its minimum.

    Parameters
    ----------
    sweep : the probe calibration's offset sweep (``offsets_ms``, ``errors_mm``, ``offset_ms``).
    true_offset_ms : the twin's true offset, drawn for the reader (ms); None on real data.
    zoom_ms : half-width of the zoomed panel (ms).

    Returns
    -------
    matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, zoom in zip(axes, (False, True)):
        sel = np.abs(sweep.offsets_ms - sweep.offset_ms) <= zoom_ms if zoom else slice(None)
        ax.plot(sweep.offsets_ms[sel], sweep.errors_mm[sel], lw=1.2, label="localisation error")
        ax.axvline(sweep.offset_ms, color="C1", ls="--", label=f"found {sweep.offset_ms:.1f} ms")
        if true_offset_ms is not None:
            ax.axvline(true_offset_ms, color="C2", ls=":", label=f"true {true_offset_ms:.1f} ms")
        ax.set_xlabel("temporal offset dt (ms)")
        ax.set_ylabel("mean 3D localisation error (mm)")
        ax.set_title("zoom on the minimum" if zoom else f"sweep over [{sweep.offsets_ms[0]:.0f}, "
                     f"{sweep.offsets_ms[-1]:.0f}] ms")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_phantom_wires(image: np.ndarray, points: np.ndarray, spacing, timestamp: int):
    """A phantom frame with its detected wire echoes (cyan) and the diagonals' middle points (red).

    Parameters
    ----------
    image : (H, W) uint8 phantom image.
    points : (n_N, 3, 2) detected wire points of each N (mm, image plane).
    spacing : (sx, sy) mm per pixel.
    timestamp : the frame's timestamp (ms), for the title.
    """
    import matplotlib.pyplot as plt

    sx, sy = spacing
    fig, ax = plt.subplots(figsize=(5, 5 * image.shape[0] / image.shape[1]))
    ax.imshow(image, cmap="gray", extent=(0, image.shape[1] * sx, image.shape[0] * sy, 0))
    pts = np.asarray(points, float)
    ax.plot(pts[:, [0, 2], 0].ravel(), pts[:, [0, 2], 1].ravel(), "c+", ms=9, mew=1.5)
    ax.plot(pts[:, 1, 0], pts[:, 1, 1], "rx", ms=9, mew=1.5)
    ax.plot(pts[:, [0, 2], 0].T, pts[:, [0, 2], 1].T, "y-", lw=0.6)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("depth y (mm)")
    ax.set_title(f"phantom frame {timestamp} ms: wires (cyan), diagonals (red)")
    return fig
