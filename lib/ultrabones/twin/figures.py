"""Figures and tables of the simulation stage (notebook 00), drawn from what the twin wrote and from its result.

Example frames with their true full and visible labels, the bones, the skin and every record's sweep in 3D,
and the statistics of a simulated twin (initial misalignment, required correction, visible bone), per frame and
per specimen and bone (:func:`specimen_table`). :func:`ultrabones.twin.simulate.figures` draws them for a run.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ultrabones.core import dataset, geometry
from ultrabones.core.images import image_timestamps
from ultrabones.core.mesh import decimate
from ultrabones.core.overlay import overlay
from ultrabones.core.paper import PUBLISHED
from ultrabones.core.paths import Paths
from ultrabones.twin.config import GROUPS, RECORDS
from ultrabones.twin.layout import truth_dir


def specimen_table(specimens: dict) -> pd.DataFrame:
    """Per-specimen statistics: frames, visible bone fraction, misalignment, per record group.

    ``specimens``: specimen name -> its statistics (:attr:`ultrabones.twin.simulate.SimulationResult.specimens`).
    """
    rows = []
    for name, s in specimens.items():
        for g in GROUPS:
            rs = [r for r in s["records"] if r["bone"] == g]
            mis = [m for r in rs for m in r["misalignment_mm"]]
            full = sum(r["full_pixels"] for r in rs)
            rows.append({"specimen": name, "bone": g, "frames": sum(r["n_frames"] for r in rs),
                         "bone_in_view": sum(r["bone_in_view"] for r in rs) / max(1, sum(r["n_frames"] for r in rs)),
                         "visible_fraction": sum(r["visible_pixels"] for r in rs) / full if full else float("nan"),
                         "misalignment_mm": float(np.mean(mis)) if mis else float("nan")})
    return pd.DataFrame(rows)


def _middle_frame(paths: Paths, specimen: str, record: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ts = image_timestamps(paths.raw / specimen / record / "images")
    t = int(ts[len(ts) // 2])
    img = dataset.read_image(paths.raw / specimen / record / "images" / f"{t}.png")
    full = dataset.read_label(truth_dir(paths) / specimen / record / dataset.LABELS_FULL / f"{t}_label.png", img.shape)
    vis = dataset.read_label(truth_dir(paths) / specimen / record / dataset.LABELS / f"{t}_label.png", img.shape)
    return img, full, vis


def figure_example_frames(paths: Paths, specimen: str, records=("record01", "record04", "record07", "record09")):
    """Middle frames of four records (tibia, fibula, foot dorsal, foot lateral): image above, labels below."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(records), figsize=(3.2 * len(records), 5.6))
    bones = {r: g for r, g, _, _ in RECORDS}
    for k, rec in enumerate(records):
        img, full, vis = _middle_frame(paths, specimen, rec)
        axes[0, k].imshow(img, cmap="gray", vmin=0, vmax=255)
        axes[0, k].set_title(f"{specimen}/{rec} ({bones[rec]})", fontsize=8)
        axes[1, k].imshow(overlay(img, [(full & ~vis, (0.9, 0.15, 0.1)), (vis, (0.1, 0.9, 0.2))]))
        for a in axes[:, k]:
            a.set_xticks([])
            a.set_yticks([])
    axes[1, 0].set_ylabel("full (red) / visible (green)")
    fig.tight_layout()
    return fig


def figure_anatomy_and_sweeps(paths: Paths, specimen: str, max_faces: int = 4000):
    """3D view of the true bones, the skin, and where every record's image top centre went."""
    import matplotlib.pyplot as plt

    system = json.loads((paths.raw / "system.json").read_text())
    calib = np.asarray(json.loads((truth_dir(paths) / "system.json").read_text())["calibration"])
    top_centre = np.array([0.5 * system["image_width"] * system["spacing_mm"][0], 0.0, 0.0, 1.0])
    fig = plt.figure(figsize=(6.5, 8))
    ax = fig.add_subplot(projection="3d")
    colours = {"tibia": "tab:blue", "fibula": "tab:orange", "foot": "tab:green"}
    for f in sorted((truth_dir(paths) / specimen / "meshes").glob("*.stl")):
        m = dataset.read_mesh(f)
        verts, tri = decimate(m.vertices, m.faces, max_faces)
        alpha, colour = (0.06, "peachpuff") if f.stem == "skin" else (0.45, "0.75")
        ax.plot_trisurf(verts[:, 0], verts[:, 1], tri, verts[:, 2], color=colour, alpha=alpha, linewidth=0,
                        shade=f.stem != "skin")
    shown = set()
    for rec, group, _, _ in RECORDS:
        f = truth_dir(paths) / specimen / rec / "poses.csv"
        if not f.is_file():
            continue
        df = pd.read_csv(f)
        pose = geometry.pose_from_params(df[list(geometry.POSE_COLUMNS)].to_numpy())
        p = (pose @ calib @ top_centre)[:, :3]
        ax.plot(p[:, 0], p[:, 1], p[:, 2], color=colours[group], lw=2.5, zorder=10,
                label=None if group in shown else group)
        shown.add(group)
    lo, hi = np.array([ax.get_xlim(), ax.get_ylim(), ax.get_zlim()]).T
    ax.set_box_aspect(hi - lo)
    ax.set_xlabel("x, lateral (mm)")
    ax.set_ylabel("y, anterior (mm)")
    ax.set_zlabel("z (mm)")
    ax.view_init(elev=15, azim=-60)
    ax.legend(title="probe face path", loc="upper left")
    ax.set_title(f"{specimen}: bones, skin and sweeps (CT frame)")
    return fig


def figure_statistics(specimens: dict):
    """Per-frame initial misalignment and required correction; visible-bone fraction per specimen and bone.

    ``specimens``: specimen name -> its statistics (:attr:`ultrabones.twin.simulate.SimulationResult.specimens`).
    """
    import matplotlib.pyplot as plt

    recs = [r for s in specimens.values() for r in s["records"]]
    mis = np.array([m for r in recs for m in r["misalignment_mm"]])
    req = np.array([m for r in recs for m in r["required_correction_mm"]])
    table = specimen_table(specimens)
    fig, ax = plt.subplots(1, 3, figsize=(14, 3.6))
    ax[0].hist(mis, bins=40, color="tab:blue")
    pub = PUBLISHED["initial_misalignment_mean_mm"].value
    ax[0].axvline(pub, color="k", ls="--", label=f"paper mean {pub:g} mm")
    ax[0].set_xlabel("initial misalignment (mm)")
    ax[0].set_ylabel("frames")
    ax[0].legend()
    ax[1].hist(req, bins=40, color="tab:orange")
    ax[1].axvline(1.0, color="k", ls="--", label="discard above 1 mm")
    ax[1].set_xlabel("required correction, mean fiducial displacement (mm)")
    ax[1].legend()
    piv = table.pivot(index="specimen", columns="bone", values="visible_fraction")[list(GROUPS)]
    piv.plot.bar(ax=ax[2], rot=0)
    ax[2].set_ylabel("visible / full label pixels")
    fig.tight_layout()
    return fig
