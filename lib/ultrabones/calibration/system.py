"""System calibration (Section 3.1 of the paper): probe, temporal offset, CT-to-marker, poses.

Three calibrations turn raw acquisitions into the released ``tracking.csv``:

1. **Spatio-temporal probe calibration** with an N-wire phantom (:func:`calibrate_probe`). Each
   phantom image shows where the image plane cuts the wires (:mod:`ultrabones.calibration.phantom`);
   :func:`~ultrabones.calibration.wires.detect_wire_points` finds them,
   :func:`~ultrabones.calibration.wires.middle_points_in_phantom` places the diagonal's cut in phantom
   coordinates by similar triangles, and :func:`~ultrabones.calibration.offset_sweep.sweep_offsets`
   solves, for every temporal offset ``dt`` of a grid, the image-to-probe transform by closed-form least
   squares (Kabsch) and keeps the ``dt`` of least 3D localisation error. The sweep is batched over offsets.
2. **CT-to-marker registration** (:func:`~ultrabones.calibration.ct_marker.register_marker`): the
   fiducial spheres found in CT (:func:`ultrabones.calibration.ct.find_fiducial_spheres`) are matched to
   virtual spheres of the fiducials' radius placed at the marker's fiducials, then refined by
   point-to-point ICP (open3d).
3. **Poses** (:func:`~ultrabones.calibration.poses.record_poses`): for each image, the tracker streams
   are interpolated at ``t + dt`` and composed into the probe marker in CT space,
   ``ct_from_marker @ inv(marker_in_tracker) @ probe_in_tracker``.

This module is the stage (notebook 01), under the stage contract (docs/architecture.md): its parameters
(:class:`CalibrationParams`, :data:`Params`), the probe calibration, each specimen's products
(:func:`process_specimen`), the run (:func:`run`: skipped on real data), its :data:`Result`, :func:`metrics`,
:func:`check` and :func:`figures` (drawn by :mod:`ultrabones.calibration.figures`). The raw input is read by
:mod:`ultrabones.calibration.acquisitions`.

Clocks follow docs/twin_format.md: the image with timestamp ``t`` (ms, image
clock) was formed when the tracker clock read ``t + dt``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from scipy import ndimage

from ultrabones.calibration import ct
from ultrabones.calibration.ct_marker import register_marker
from ultrabones.calibration.figures import plot_offset_sweep, plot_phantom_wires
from ultrabones.calibration.offset_sweep import SweepResult, offset_grid, sweep_offsets
from ultrabones.calibration.poses import link_images, record_poses
from ultrabones.calibration.acquisitions import (
    PHANTOM_COLUMNS,
    raw_records,
    raw_specimens,
    read_marker,
    read_phantom,
    read_system,
    read_tracker,
)
from ultrabones.calibration.wires import detect_blobs, group_wire_points, middle_points_in_phantom
from ultrabones.core import dataset
from ultrabones.core.cache import DigestStore, SpecimenCache
from ultrabones.core.calibration_file import write_calibration
from ultrabones.core.errors import DatasetError
from ultrabones.core.executor import executor
from ultrabones.core.geometry import POSE_COLUMNS
from ultrabones.core.images import image_timestamps
from ultrabones.core.params import SectionParams

#: The profile section of this stage.
SECTION = "calibration"
#: The stage's name (notebook stem): its cache.
STEM = "01_calibration"
#: Why the stage does nothing on real data (its metrics' ``reason``).
SKIP_REASON = "real dataset: no raw recordings, tracking.csv already calibrated"


@dataclass(frozen=True)
class CalibrationParams(SectionParams):
    """The ``calibration`` section of a profile, typed and validated (units and ranges: ``schema.SCHEMA["calibration"]``).

    Build it with :meth:`from_section`; a specimen's overrides give :meth:`for_specimen`. Construction, and so
    ``dataclasses.replace``, validates every value. :meth:`as_dict` gives the section back as plain data: what
    the cache keys hash and the metrics' provenance records.
    """

    SECTION: ClassVar[str] = SECTION

    wire_threshold: float
    wire_sigma_px: float
    wire_min_area_px: int
    wire_max_extent_mm: float
    wire_min_separation_mm: float
    wire_collinearity_mm: float
    offset_min_ms: float
    offset_max_ms: float
    offset_step_ms: float
    bone_threshold_hu: float
    fiducial_threshold_hu: float
    min_bone_volume_mm3: float
    smooth_iterations: int
    decimate_fraction: float
    icp_max_distance_mm: float


# ----------------------------------------------------------------------------- the probe


@dataclass
class ProbeCalibration:
    """Result of :func:`calibrate_probe`.

    Attributes
    ----------
    sweep : the offset sweep.
    spacing : (sx, sy) mm per pixel.
    frames : per phantom image: ``timestamp`` and ``status`` (``ok``, the
        rejection reason, or ``out of tracked range``).
    example : (timestamp, (n_N, 3, 2) points) of one accepted frame, for figures.
    image_size_mm : (width, height) of the image (mm).
    image_points : (F, n_N, 3, 2) wire points of the accepted frames (mm).
    """

    sweep: SweepResult
    spacing: tuple[float, float]
    frames: pd.DataFrame
    example: tuple[int, np.ndarray] | None = None
    image_size_mm: tuple[float, float] | None = None
    image_points: np.ndarray = field(default=None, repr=False)

    @property
    def calibration(self) -> np.ndarray:
        return self.sweep.calibration

    @property
    def offset_ms(self) -> float:
        return self.sweep.offset_ms

    @property
    def rejected(self) -> int:
        """Phantom frames whose wires could not be found."""
        return int((~self.frames["status"].isin(["ok", "out of tracked range"])).sum())


def calibrate_probe(raw: Path, P: CalibrationParams, progress: bool = False) -> ProbeCalibration:
    """Spatio-temporal calibration from ``raw/phantom/`` (see the module docstring).

    Spots are detected once per frame. The phantom's lateral orientation in
    the image (see :func:`~ultrabones.calibration.wires.group_wire_points`) is chosen by a coarse sweep
    (ten times the step) under each hypothesis; the full sweep then runs on the
    frames accepted under the chosen one.

    Parameters
    ----------
    raw : the raw acquisitions folder.
    P : the stage's parameters (its ``wire_*`` and ``offset_*`` fields are used).

    Raises
    ------
    DatasetError
        If fewer than three phantom frames survive detection.
    """
    raw = Path(raw)
    system = read_system(raw)
    spacing = tuple(system["spacing_mm"])
    phantom = read_phantom(raw)
    times, streams = read_tracker(raw / "phantom" / "tracker.csv", {"probe": POSE_COLUMNS, "phantom": PHANTOM_COLUMNS})
    img_dir = raw / "phantom" / "images"
    ts = image_timestamps(img_dir)
    offsets = offset_grid(P.offset_min_ms, P.offset_max_ms, P.offset_step_ms)
    in_range = (ts + offsets[0] >= times[0]) & (ts + offsets[-1] <= times[-1])
    it = ts[in_range]
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="phantom frames", unit="frame")
    blobs = {int(t): detect_blobs(dataset.read_image(img_dir / f"{int(t)}.png"), spacing, P.wire_threshold,
                                  P.wire_min_area_px, P.wire_sigma_px, P.wire_max_extent_mm,
                                  P.wire_min_separation_mm)[0]
             for t in it}

    def group(flip_x):
        status, pts, used = {}, [], []
        for t, b in blobs.items():
            found, reason = group_wire_points(b, phantom, P.wire_collinearity_mm, flip_x)
            status[t] = "ok" if found is not None else reason
            if found is not None:
                pts.append(found)
                used.append(t)
        return status, np.array(pts), np.array(used, float)

    def solve(pts, used, grid):
        return sweep_offsets(used, pts[:, :, 1], middle_points_in_phantom(phantom, pts), times, streams["probe"],
                             streams["phantom"], grid, progress=progress and len(grid) > 500)

    coarse = offsets[::10]
    best = None
    for flip_x in (False, True):
        status, pts, used = group(flip_x)
        if len(used) < 3:
            continue
        err = solve(pts, used, coarse).error_mm
        if best is None or err < best[0]:
            best = (err, status, pts, used)
    if best is None:
        status, _, _ = group(False)
        counts = pd.Series(list(status.values()) or ["out of tracked range"]).value_counts().to_dict()
        raise DatasetError(f"{img_dir}: fewer than 3 of {len(ts)} phantom frames usable; statuses: {counts}")
    _, status, pts, used = best
    frames = pd.DataFrame({"timestamp": ts.astype(np.int64),
                           "status": [status.get(int(t), "out of tracked range") for t in ts]})
    sweep = solve(pts, used, offsets)
    size = None
    if "image_width" in system and "image_height" in system:
        size = (system["image_width"] * spacing[0], system["image_height"] * spacing[1])
    else:  # from the first image
        h, w = dataset.read_image(img_dir / f"{int(used[0])}.png").shape
        size = (w * spacing[0], h * spacing[1])
    return ProbeCalibration(sweep, spacing, frames, (int(used[0]), pts[0]), size, pts)


# ----------------------------------------------------------------------------- one specimen


def build_bone_model(ct_volume, P: CalibrationParams, exclude: np.ndarray | None, where: str) -> dict:
    """Per-bone meshes from the CT (see :mod:`ultrabones.calibration.ct`): ``{"tibia": mesh, ..., "merged": mesh}``.

    Components are named by :func:`ultrabones.calibration.ct.name_bones`; several ``foot``
    components are merged into one foot model.
    """
    import trimesh

    labels, n = ct.segment_bones(ct_volume, P.bone_threshold_hu, P.min_bone_volume_mm3, exclude, where)
    boxes = ndimage.find_objects(labels)
    meshes = [ct.component_mesh(ct_volume, labels, i, P.bone_threshold_hu, P.smooth_iterations,
                                P.decimate_fraction, boxes[i - 1]) for i in range(1, n + 1)]
    names = ct.name_bones(meshes)
    out = {}
    for name in dict.fromkeys(names):
        parts = [m for m, nm in zip(meshes, names) if nm == name]
        out[name] = parts[0] if len(parts) == 1 else trimesh.util.concatenate(parts)
    out["merged"] = trimesh.util.concatenate(meshes) if len(meshes) > 1 else meshes[0]
    return out


def process_specimen(raw: Path, dataset_root: Path, specimen: str, offset_ms: float, P: CalibrationParams,
                     progress: bool = False) -> dict:
    """CT bone model, CT-to-marker registration and ``tracking.csv`` of every record of one specimen.

    Writes ``<dataset_root>/<specimen>/CT_bone_model.stl``, ``CT_bone_model_<bone>.stl`` and, per
    record, ``tracking.csv`` (layout A) with its images linked into ``UltrasoundImages/``.

    Parameters
    ----------
    raw : the raw acquisitions folder.
    dataset_root : the released-layout dataset folder.
    specimen : specimen folder name.
    offset_ms : the temporal offset found by :func:`calibrate_probe` (ms).
    P : the stage's parameters for this specimen (:meth:`CalibrationParams.for_specimen`).

    Returns
    -------
    dict (JSON-able): registration (``ct_from_marker``, ``fre_mm``, ``icp_rmse_mm``,
    ``n_spheres``), the bone models written, per record the frames written and dropped.
    """
    raw_s = Path(raw) / specimen
    out_s = Path(dataset_root) / specimen
    fid, radius = read_marker(raw_s)
    vol = ct.read_ct(raw_s / "ct.npz")
    spheres = ct.find_fiducial_spheres(vol, radius, P.fiducial_threshold_hu)
    if len(spheres.centres) < len(fid):
        raise DatasetError(
            f"{raw_s / 'ct.npz'}: found {len(spheres.centres)} fiducial spheres of radius {radius} mm above "
            f"{P.fiducial_threshold_hu} HU; the marker has {len(fid)}"
        )
    reg = register_marker(fid, radius, spheres.centres, spheres.surface, P.icp_max_distance_mm)
    models = build_bone_model(vol, P, spheres.mask, str(raw_s / "ct.npz"))
    written = {}
    for name, mesh in models.items():
        f = out_s / ("CT_bone_model.stl" if name == "merged" else f"CT_bone_model_{name}.stl")
        dataset.write_mesh(f, mesh)
        written[name] = {"file": f.name, "faces": int(len(mesh.faces)), "volume_mm3": float(mesh.volume)}
    records = {}
    recs = raw_records(raw_s)
    if progress:
        from tqdm import tqdm

        recs = tqdm(recs, desc=f"{specimen} records", unit="record", leave=False)
    for rec in recs:
        ts = image_timestamps(rec / "images")
        df = record_poses(rec / "tracker.csv", ts, offset_ms, reg.ct_from_marker)
        dst = out_s / rec.name
        dataset.write_tracking(dst / dataset.TRACKING, df)
        link_images(rec / "images", dst / dataset.IMAGES, df["timestamp"].to_numpy())
        records[rec.name] = {"frames": int(len(df)), "dropped": int(len(ts) - len(df))}
    return {
        "ct_from_marker": reg.ct_from_marker.tolist(),
        "fre_mm": reg.fre_mm,
        "icp_rmse_mm": reg.icp_rmse_mm,
        "n_spheres": int(len(spheres.centres)),
        "sphere_radius_mm": spheres.radii.tolist(),
        "ct_spacing_mm": vol.spacing_mm.tolist(),
        "models": written,
        "records": records,
    }


# ----------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class CalibrationResult:
    """What :func:`run` computed.

    Attributes
    ----------
    probe : the spatio-temporal probe calibration (:func:`calibrate_probe`); None when skipped.
    specimens : specimen name -> its result (:func:`process_specimen`'s dict, with ``seconds``), every
        specimen of the run in the cache.
    probe_seconds : wall time of the probe calibration (s).
    raw : the raw acquisitions folder calibrated (the figures read a phantom frame from it), or None.
    skipped : why nothing was calibrated (:data:`SKIP_REASON`), or None.
    """

    probe: ProbeCalibration | None
    specimens: dict
    probe_seconds: float
    raw: Path | None = None
    skipped: str | None = None

    @property
    def ct_voxel_mm(self) -> list[float] | None:
        """The largest CT voxel over the specimens, per axis (mm); None without specimens."""
        if not self.specimens:
            return None
        return [float(v) for v in np.max([r["ct_spacing_mm"] for r in self.specimens.values()], axis=0)]


#: The stage's parameters (the ``calibration`` section).
Params = CalibrationParams
#: What :func:`run` returns.
Result = CalibrationResult


def _specimen_job(args: tuple) -> tuple[str, dict]:
    """One specimen's work (a top-level function, so that worker processes can run it)."""
    raw, dataset_root, sid, offset_ms, Ps = args
    t1 = time.time()
    res = process_specimen(raw, dataset_root, sid, offset_ms, Ps)
    res["seconds"] = time.time() - t1
    return sid, res


def run(paths, params: CalibrationParams, *, specimens: list[str] | None = None, only: str | None = None,
        specimen_overrides: dict | None = None, progress: bool = True, n_workers: int = 1,
        dask_scheduler: str | None = None) -> CalibrationResult:
    """Notebook 01's work: probe calibration, then each specimen (resumable); nothing on real data.

    Real data (``paths.is_twin`` false) has no raw recordings: its ``tracking.csv`` files already hold
    calibrated, synchronised poses, so nothing is read or written and the result says why (``skipped``).
    Otherwise writes ``calibration.json`` at the dataset root and, per specimen, the bone
    models and ``tracking.csv`` files (:func:`process_specimen`). A specimen is
    skipped when the :class:`~ultrabones.core.cache.SpecimenCache` holds its result
    for the same parameters, calibration, sources and raw input files (their
    content digests) and its outputs exist.
    Nothing here reads the twin's truth: :func:`ultrabones.twin.measure.calibration` measures these
    products against it afterwards.

    Parameters
    ----------
    paths : :class:`~ultrabones.core.paths.Paths` of the run.
    params : the stage's parameters (:meth:`CalibrationParams.from_section`).
    specimens : restrict to these (default: every raw specimen).
    only : process only this specimen (``make specimen``); the result still covers the cache.
    specimen_overrides : per-specimen section overrides (:meth:`CalibrationParams.for_specimen`).
    n_workers : specimens processed in parallel (local processes).
    dask_scheduler : address of a Dask scheduler to run the specimens on instead.
    """
    if not paths.is_twin:
        return CalibrationResult(None, {}, 0.0, skipped=SKIP_REASON)
    P = params
    t0 = time.time()
    probe = calibrate_probe(paths.raw, P, progress)
    t_probe = time.time() - t0
    write_calibration(
        paths.dataset, probe.calibration, probe.spacing, probe.offset_ms,
        localization_error_mm=probe.sweep.error_mm, phantom_frames_used=int((probe.frames["status"] == "ok").sum()),
        phantom_frames_rejected=probe.rejected, source="notebook 01_calibration (Z-phantom, spatio-temporal sweep)",
    )
    names = raw_specimens(paths.raw, specimens)
    todo = [only] if only else names
    if only and only not in names:
        raise DatasetError(f"{paths.raw}: specimen {only!r} is not among the raw specimens {names}")
    cache = SpecimenCache(paths, STEM)
    digests = DigestStore(paths.cache("digests") / f"{STEM}.json")
    keys, jobs, inputs = {}, [], {}
    for sid in todo:
        Ps = P.for_specimen(specimen_overrides, sid)
        keys[sid] = {**Ps.as_dict(), "offset_ms": probe.offset_ms,
                     "calibration": np.round(probe.calibration, 9).tolist()}
        inputs[sid] = [f for f in sorted((paths.raw / sid).rglob("*")) if f.is_file()]
        if (cache.get(sid, keys[sid], inputs[sid], paths.raw) is not None
                and (paths.dataset / sid / "CT_bone_model.stl").is_file()):
            continue
        jobs.append((paths.raw, paths.dataset, sid, probe.offset_ms, Ps))
    with executor("auto", dask_scheduler, n_workers, progress) as ex:
        ex.map(_specimen_job, jobs, desc="specimens", unit="specimen",
               on_result=lambda _, out: cache.put(out[0], keys[out[0]], out[1], inputs[out[0]], paths.raw))
    digests.save()
    results = {k: v for k, v in cache.all().items() if k in names}
    return CalibrationResult(probe, results, t_probe, paths.raw)


def metrics(result: CalibrationResult) -> dict:
    """The ``01_calibration`` metrics (keys of issue 4), from the stage's result; nothing here reads truth.

    When skipped, only ``skipped`` (True) and ``reason``.
    """
    if result.skipped:
        return {"skipped": True, "reason": result.skipped}
    probe, results = result.probe, result.specimens
    frames = probe.frames["status"]
    return {
        "skipped": False,
        "temporal_offset_ms": probe.offset_ms,
        "localization_error_mm": probe.sweep.error_mm,
        "phantom_frames_total": int(len(frames)),
        "phantom_frames_used": int((frames == "ok").sum()),
        "phantom_frames_rejected": probe.rejected,
        "phantom_frames_out_of_range": int((frames == "out of tracked range").sum()),
        "n_offsets": int(len(probe.sweep.offsets_ms)),
        "probe_calibration_seconds": result.probe_seconds,
        "calibration": probe.calibration.tolist(),
        "n_specimens": len(results),
        "marker_fre_mm": float(np.mean([r["fre_mm"] for r in results.values()])) if results else None,
        "frames_written": int(sum(v["frames"] for r in results.values() for v in r["records"].values())),
        "frames_dropped": int(sum(v["dropped"] for r in results.values() for v in r["records"].values())),
        "ct_voxel_mm": result.ct_voxel_mm,
        "per_specimen": {s: {k: r[k] for k in ("fre_mm", "icp_rmse_mm", "n_spheres", "seconds") if k in r}
                         for s, r in results.items()},
    }


def check(result: CalibrationResult) -> None:
    """What holds on any data (nothing when skipped): at least three phantom frames were usable. The errors
    against the twin's truth are the twin's measurements, bounded by the tests over seeds, not here."""
    if result.skipped:
        return
    frames = result.probe.frames["status"]
    used = int((frames == "ok").sum())
    assert used >= 3, (f"only {used} of {len(frames)} phantom frames were usable for the probe calibration "
                       f"(statuses: {frames.value_counts().to_dict()}); see the wire_* parameters")


def figures(result: CalibrationResult, *, true_offset_ms: float | None = None) -> dict:
    """The stage's figures (none when skipped): ``calibration_offset_sweep`` (the localisation error against
    the temporal offset; ``true_offset_ms``, when known, marked) and ``calibration_phantom_wires`` (the wire
    echoes detected on one phantom frame, when the result names one)."""
    if result.skipped:
        return {}
    probe = result.probe
    out = {"calibration_offset_sweep": plot_offset_sweep(probe.sweep, true_offset_ms)}
    if probe.example is not None and result.raw is not None:
        t_ex, pts = probe.example
        img = dataset.read_image(Path(result.raw) / "phantom" / "images" / f"{t_ex}.png")
        out["calibration_phantom_wires"] = plot_phantom_wires(img, pts, probe.spacing, t_ex)
    return out
