"""Figures of the reconstruction stage (notebook 06): distance histograms, the grid, renders over the CT model.

Histograms of the point-to-surface distances pooled over specimens
(:func:`plot_histograms`), the comparison grid per specimen and bone
(:func:`plot_grid`), and the reconstructions coloured by their distance over
the CT bone model (:func:`render_figure`: open3d's offscreen renderer, falling
back to matplotlib; :func:`example_render` picks the specimen notebook 06 shows and
:func:`draw_example` draws it).
Distances in mm.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ultrabones.core.dataset import read_mesh
from ultrabones.core.dataset import specimen as dataset_specimen
from ultrabones.core.mesh import decimate
from ultrabones.reconstruction.point_clouds import read_ply
from ultrabones.reconstruction.surface import ALL, HIST_BIN_MM, HIST_MAX_MM, POSE_METHODS, SOURCES, histogram_quantile


def pooled_histograms(results: Iterable[Mapping], group: str = ALL) -> dict[tuple[str, str], np.ndarray]:
    """(source, method) -> pooled distance histogram counts (bins of :data:`HIST_BIN_MM`) over specimens."""
    out: dict[tuple[str, str], np.ndarray] = {}
    for r in results:
        if r.get("skipped"):
            continue
        for row in r["rows"]:
            if row["group"] != group:
                continue
            key = (row["source"], row["poses"])
            out[key] = out.get(key, 0) + np.asarray(row["hist"])
    return out


def plot_histograms(results: Sequence[Mapping], max_mm: float | None = None):
    """Distance histograms of the grid cells (pooled over specimens), one panel per label source.

    Parameters
    ----------
    results : specimen results (:func:`~ultrabones.reconstruction.specimen.reconstruct_specimen`).
    max_mm : right end of the axis (mm); None: the largest 99.5th percentile of the cells, rounded up to 0.5 mm.

    Returns
    -------
    matplotlib figure.
    """
    import matplotlib.pyplot as plt

    hists = pooled_histograms(results)
    if max_mm is None:
        top = max([histogram_quantile(h, 0.995) for h in hists.values()] or [1.0])
        max_mm = float(min(HIST_MAX_MM, max(1.0, np.ceil(top / 0.5) * 0.5)))
    sources = sorted({k[0] for k in hists}, key=lambda s: list(SOURCES).index(s))
    fig, axes = plt.subplots(1, max(1, len(sources)), figsize=(5.0 * max(1, len(sources)), 3.4), squeeze=False)
    n_show = int(round(max_mm / HIST_BIN_MM))
    width = 0.05  # display bin (mm)
    group = int(round(width / HIST_BIN_MM))
    for ax, s in zip(axes[0], sources):
        for m, colour in zip(POSE_METHODS, ("tab:orange", "tab:blue")):
            if (s, m) not in hists:
                continue
            h = hists[(s, m)]
            coarse = h[:n_show].reshape(-1, group).sum(axis=1)
            total = h.sum()
            mean = float((np.arange(len(h)) + 0.5) @ h * HIST_BIN_MM / total)
            ax.stairs(coarse / total / width, np.arange(len(coarse) + 1) * width, color=colour, fill=True, alpha=0.35)
            ax.stairs(coarse / total / width, np.arange(len(coarse) + 1) * width, color=colour,
                      label=f"{m} poses (mean {mean:.2f} mm)")
        ax.set_xlabel("distance to CT bone surface (mm)")
        ax.set_ylabel("density (1/mm)")
        ax.set_title({"labels": "CT-derived labels", "predicted": "predicted labels"}.get(s, s))
        ax.set_xlim(0, max_mm)
        ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def plot_grid(table: pd.DataFrame, metric: str = "mean_mm"):
    """Bar chart of the comparison grid per specimen and bone (group) for one metric."""
    import matplotlib.pyplot as plt

    t = table.copy()
    if t.empty:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.text(0.5, 0.5, "no reconstruction", ha="center", va="center")
        return fig
    t["cell"] = t["source"] + " / " + t["poses"]
    t["where"] = t["specimen"] + " " + t["group"]
    pivot = t.pivot_table(index="where", columns="cell", values=metric)
    pivot = pivot[[c for c in _CELL_COLOURS if c in pivot.columns] + [c for c in pivot.columns if c not in _CELL_COLOURS]]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(pivot) + 2), 3.6))
    pivot.plot.bar(ax=ax, width=0.8, color=[_CELL_COLOURS.get(c, None) for c in pivot.columns])
    ax.set_ylabel({"mean_mm": "mean distance to CT model (mm)", "coverage": "coverage of visible surface",
                   "mean_true_mm": "mean distance to the true bones (mm)",
                   "chamfer_true_mm": "Chamfer distance to the true bones (mm)",
                   "coverage_true": "coverage of the truly imaged surface"}.get(metric, metric))
    ax.set_xlabel("")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


_CELL_COLOURS = {"labels / original": "#f4a261", "labels / optimized": "#2a9d8f",
                 "predicted / original": "#e76f51", "predicted / optimized": "#264653"}


def view_angles(direction: np.ndarray) -> tuple[float, float]:
    """Matplotlib (elevation, azimuth) in degrees of a camera looking from ``direction`` (CT, unit vector)."""
    d = np.asarray(direction, dtype=float)
    d = d / max(np.linalg.norm(d), 1e-12)
    return float(np.degrees(np.arcsin(np.clip(d[2], -1, 1)))), float(np.degrees(np.arctan2(d[1], d[0])))


def render_distances(mesh, clouds: Mapping[str, tuple[np.ndarray, np.ndarray]], view: tuple[float, float] = (20.0, -60.0),
                     max_mm: float = 2.0, max_points: int = 40_000, max_faces: int = 6000, seed: int = 0):
    """Matplotlib render of reconstructions coloured by distance over the CT model, one panel each.

    The CT model is drawn decimated (open3d quadric decimation to
    ``max_faces``), Lambert-shaded in grey; the points are coloured by their
    distance to the model (0 .. ``max_mm``), at most ``max_points`` per panel.
    Points behind the model are hidden only approximately (matplotlib sorts
    collections, not fragments): choose ``view`` from the side the probe saw
    (:func:`view_angles` of the visible samples' mean normal).

    Parameters
    ----------
    mesh : ``trimesh.Trimesh`` (CT, mm).
    clouds : panel title -> ((N, 3) points in CT (mm), (N,) distances (mm)).
    view : (elevation, azimuth) in degrees.

    Returns
    -------
    matplotlib figure.
    """
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    verts, faces = decimate(mesh.vertices, mesh.faces, max_faces)
    tri = verts[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    elev, azim = view
    eye = np.array([np.cos(np.radians(elev)) * np.cos(np.radians(azim)),
                    np.cos(np.radians(elev)) * np.sin(np.radians(azim)), np.sin(np.radians(elev))])
    shade = 0.45 + 0.5 * np.clip(normals @ eye, 0, 1)
    lo, hi = verts.min(axis=0), verts.max(axis=0)
    rng = np.random.default_rng(seed)
    fig = plt.figure(figsize=(4.6 * max(1, len(clouds)), 4.8))
    sc = None
    for i, (title, (points, distances)) in enumerate(clouds.items()):
        ax = fig.add_subplot(1, max(1, len(clouds)), i + 1, projection="3d")
        ax.add_collection3d(Poly3DCollection(tri, facecolors=np.repeat(shade[:, None], 3, 1), edgecolor="none",
                                             alpha=0.25))
        points, distances = np.asarray(points).reshape(-1, 3), np.asarray(distances).ravel()
        pick = rng.choice(len(points), size=min(len(points), max_points), replace=False)
        # Draw the points in front last (towards the eye), far ones first.
        pick = pick[np.argsort(points[pick] @ eye)]
        sc = ax.scatter(points[pick, 0], points[pick, 1], points[pick, 2], c=np.clip(distances[pick], 0, max_mm),
                        cmap="viridis", vmin=0, vmax=max_mm, s=0.8, depthshade=False)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_zlim(lo[2], hi[2])
        ax.set_box_aspect(np.maximum(hi - lo, 1e-3), zoom=1.1)  # true proportions
        ax.view_init(elev=elev, azim=azim)
        ax.set_axis_off()
        ax.set_title(title, fontsize=10)
    if sc is not None:
        fig.colorbar(sc, ax=fig.axes, shrink=0.6, label="distance to CT bone surface (mm)")
    return fig


def _render_open3d_worker(vertices, faces, clouds, direction, size, max_mm, point_size):
    """Render in this (child) process with open3d's offscreen Filament renderer; returns RGB arrays."""
    import matplotlib
    import open3d as o3d
    import open3d.visualization.rendering as rendering

    width, height = size
    renderer = rendering.OffscreenRenderer(width, height)
    scene = renderer.scene
    scene.set_background([1.0, 1.0, 1.0, 1.0])
    scene.view.set_post_processing(False)  # no tone mapping: point colours are the colour map's
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(faces))
    mesh.compute_vertex_normals()
    mesh.paint_uniform_color([0.82, 0.82, 0.80])
    lit = rendering.MaterialRecord()
    lit.shader = "defaultLit"
    unlit = rendering.MaterialRecord()
    unlit.shader = "defaultUnlit"
    unlit.point_size = float(point_size)
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    centre, radius = (lo + hi) / 2.0, np.linalg.norm(hi - lo) / 2.0
    direction = np.asarray(direction, dtype=float) / max(np.linalg.norm(direction), 1e-12)
    up = np.array([0.0, 0.0, 1.0]) if abs(direction[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
    cmap = matplotlib.colormaps["viridis"]
    images = []
    for points, distances in clouds:
        scene.clear_geometry()
        scene.add_geometry("ct", mesh, lit)
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, dtype=float)))
        pcd.colors = o3d.utility.Vector3dVector(cmap(np.clip(np.asarray(distances) / max_mm, 0, 1))[:, :3])
        scene.add_geometry("cloud", pcd, unlit)
        renderer.setup_camera(30.0, centre, centre + direction * radius * 3.0, up)
        images.append(np.asarray(renderer.render_to_image()).copy())
    del renderer
    return images


def _render_child(conn, args) -> None:
    """Child-process entry point of :func:`render_open3d`: send ("ok", images) or ("error", message)."""
    try:
        conn.send(("ok", _render_open3d_worker(*args)))
    except Exception as exc:  # reported to the parent, which falls back to matplotlib
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def render_open3d(mesh, clouds: Mapping[str, tuple[np.ndarray, np.ndarray]], direction: np.ndarray,
                  size: tuple[int, int] = (800, 800), max_mm: float = 2.0, point_size: float = 3.0,
                  max_faces: int = 30_000, timeout_s: float = 60.0) -> dict[str, np.ndarray]:
    """Offscreen open3d (Filament, on the CPU) renders of reconstructions over the CT model.

    Runs in a fresh child process, killed after ``timeout_s``: Filament's
    engine can start only once per process, and a driver fault or a stall
    must not take the caller down. The model is decimated to about
    ``max_faces`` triangles (open3d quadric decimation). Points are
    coloured by distance (viridis, 0 .. ``max_mm``); the camera looks at the
    model's centre from ``direction`` (CT, e.g. the mean normal of the visible
    surface).

    Parameters
    ----------
    mesh : ``trimesh.Trimesh`` (CT, mm).
    clouds : title -> ((N, 3) points (mm), (N,) distances (mm)).
    direction : (3,) camera direction from the model's centre.
    size : (width, height) in pixels.

    Returns
    -------
    title -> (height, width, 3) uint8 image.

    Raises
    ------
    RuntimeError
        If the renderer cannot start or crashes (callers fall back to :func:`render_distances`).
    """
    vertices, faces = decimate(mesh.vertices, mesh.faces, max_faces)
    args = (vertices, faces, [(np.asarray(p), np.asarray(d)) for p, d in clouds.values()],
            np.asarray(direction, dtype=float), tuple(size), float(max_mm), float(point_size))
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_render_child, args=(send, args), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(timeout_s):
            raise RuntimeError(f"open3d offscreen rendering failed: no image within {timeout_s:.0f} s")
        status, payload = receive.recv()
    except EOFError:
        raise RuntimeError(f"open3d offscreen rendering failed: the renderer died (exit code {child.exitcode})") from None
    finally:
        child.join(timeout=5)
        if child.is_alive():
            child.kill()
            child.join()
        receive.close()
    if status != "ok":
        raise RuntimeError(f"open3d offscreen rendering failed: {payload}")
    images = payload
    if not images or any(np.asarray(im).std() == 0 for im in images):
        raise RuntimeError("open3d offscreen rendering gave blank images")
    return dict(zip(clouds, images))


def figure_from_renders(images: Mapping[str, np.ndarray], max_mm: float = 2.0):
    """A matplotlib figure of rendered images side by side, with the distance colour bar."""
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    crops = {}
    for title, im in images.items():  # crop to the drawn content (white background), with a margin
        rows, cols = np.nonzero((np.asarray(im) < 250).any(axis=2))
        if len(rows):
            m = 8
            im = im[max(rows.min() - m, 0): rows.max() + m + 1, max(cols.min() - m, 0): cols.max() + m + 1]
        crops[title] = im
    h = max(im.shape[0] for im in crops.values())
    w = sum(im.shape[1] for im in crops.values())
    fig, axes = plt.subplots(1, len(crops), figsize=(min(14.0, max(2.6 * len(crops) + 1.5, 1.0 + 6.0 * w / h)), 6.0),
                             squeeze=False)
    for ax, (title, im) in zip(axes[0], crops.items()):
        ax.imshow(im)
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    fig.colorbar(ScalarMappable(Normalize(0, max_mm), "viridis"), ax=list(axes[0]), shrink=0.7,
                 label="distance to CT bone surface (mm)")
    return fig


def render_figure(mesh, clouds: Mapping[str, tuple[np.ndarray, np.ndarray]], direction: np.ndarray,
                  max_mm: float = 2.0, backend: str = "open3d"):
    """Render reconstructions over the CT model: open3d offscreen, else matplotlib.

    Parameters
    ----------
    mesh, clouds, direction, max_mm : as in :func:`render_open3d`.
    backend : ``"open3d"`` (fall back to matplotlib if it fails) or ``"matplotlib"``.

    Returns
    -------
    fig : matplotlib figure.
    used : ``"open3d"``, or ``"matplotlib"`` with the reason open3d was not used.
    """
    if backend == "open3d":
        try:
            images = render_open3d(mesh, clouds, direction, max_mm=max_mm)
            return figure_from_renders(images, max_mm), "open3d"
        except RuntimeError as exc:
            reason = str(exc)
    else:
        reason = "matplotlib requested"
    fig = render_distances(mesh, clouds, view=view_angles(direction), max_mm=max_mm)
    return fig, f"matplotlib ({reason})"


@dataclass(frozen=True)
class ExampleRender:
    """Notebook 06's render, decided by the stage's run: which specimen, which clouds, and how it is drawn.

    Attributes
    ----------
    specimen : the specimen shown.
    ct_model : its CT bone model (STL).
    ply : panel title -> PLY file of a reconstruction (group ``all``), one per pose method.
    direction : the side the probe swept (the mean normal of the visible surface).
    used : the renderer: ``"open3d"``, or ``"matplotlib (<why open3d was not used>)"``.
    images : open3d's images (panel title -> RGB array) where it drew them, else None (matplotlib draws).
    """

    specimen: str
    ct_model: Path
    ply: Mapping[str, str]
    direction: Sequence[float]
    used: str
    images: Mapping[str, np.ndarray] | None = None


def example_render(specimens: Sequence[Mapping], pose_methods: Sequence[str], dataset_root,
                   backend: str = "matplotlib") -> ExampleRender | None:
    """Notebook 06's render: one specimen's reconstructions (group ``all``) over its CT model, a panel per pose method.

    The first specimen with predicted-label point clouds (the downstream use; test specimens only) is shown,
    else the first with CT-derived ones. With ``backend="open3d"`` open3d's offscreen renderer draws the panels
    here (:func:`render_open3d`); where it fails, the reason is kept and :func:`draw_example` falls back to
    matplotlib, as :func:`render_figure` does.

    Parameters
    ----------
    specimens : the stage's specimen results (PLY files written).
    pose_methods : the pose methods of the run, in panel order.
    dataset_root : the input dataset, for the CT model.
    backend : ``"open3d"`` (falls back to matplotlib) or ``"matplotlib"``.

    Returns
    -------
    :class:`ExampleRender`, or None when no point cloud was written.
    """
    done = [r for r in specimens if not r["skipped"] and r["ply"]]
    predicted = [r for r in done if any(k.startswith("predicted/") for k in r["ply"])]
    if not done:
        return None
    shown = (predicted or done)[0]
    src = "predicted" if predicted else "labels"
    ply = {f"{src} labels\n{m} poses": shown["ply"][f"{src}/{m}/{ALL}"]
           for m in pose_methods if f"{src}/{m}/{ALL}" in shown["ply"]}
    ct_model = dataset_specimen(Path(dataset_root), shown["specimen"]).ct_model
    direction = shown["groups"][ALL]["view_direction"]
    if backend != "open3d":
        return ExampleRender(shown["specimen"], ct_model, ply, direction, "matplotlib (matplotlib requested)")
    try:
        images = render_open3d(read_mesh(ct_model), {k: read_ply(f) for k, f in ply.items()}, direction)
    except RuntimeError as exc:
        return ExampleRender(shown["specimen"], ct_model, ply, direction, f"matplotlib ({exc})")
    return ExampleRender(shown["specimen"], ct_model, ply, direction, "open3d", images)


def draw_example(render: ExampleRender, max_mm: float = 2.0):
    """The figure of an :class:`ExampleRender`: open3d's images, or matplotlib's drawing of the clouds."""
    if render.images is not None:
        fig = figure_from_renders(render.images, max_mm)
    else:
        clouds = {k: read_ply(f) for k, f in render.ply.items()}
        fig = render_distances(read_mesh(render.ct_model), clouds, view=view_angles(render.direction), max_mm=max_mm)
    fig.suptitle(f"{render.specimen}: reconstruction over the CT bone model")
    return fig
