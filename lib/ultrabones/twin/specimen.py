"""One simulated specimen: its anatomy and CT, its marker, and its nine records, written to ``raw/`` and ``truth/``.

A record is planned and moved (:mod:`ultrabones.twin.sweeps`), both markers are tracked with jitter and a
slowly varying recorded-pose error (:func:`record_streams`), and its frames and true labels are rendered and
written one by one with the record's statistics (:func:`simulate_record`).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

from ultrabones.core import atomic, dataset, geometry
from ultrabones.core.paths import Paths, twin_specimen_name
from ultrabones.twin import anatomy, bmode, ct_scan
from ultrabones.twin.config import GROUPS, LEAD_S, RECORDS, TwinConfig, frames_in_sweep
from ultrabones.twin.contour import chamfer_mm
from ultrabones.twin.layout import truth_dir
from ultrabones.twin.scene import plane_contour
from ultrabones.twin.sweeps import HandMotion, SmoothProcess, SweepPlan, image_planes, plan_sweep
from ultrabones.twin.tracking import (
    FIDUCIAL_RADIUS_MM,
    SPECIMEN_FIDUCIALS_MM,
    System,
    measure_marker,
    place_marker,
    tracker_from_ct,
)
from ultrabones.twin.writers import pose_frame, save_npz, write_csv

#: The initial misalignment (a contour comparison) is measured on every n-th frame.
MISALIGNMENT_EVERY = 3

#: Log-normal spread (sigma of the log) of the recorded-pose error's size between records.
DRIFT_SPREAD = 0.3


def specimen_seed(seed: int, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, 1 + index])


def simulate_specimen(paths: Paths, index: int, cfg: TwinConfig, system: System, seed: int,
                      progress: bool = True) -> dict:
    """Simulate one specimen: CT, marker, nine records; write raw/ and truth/; return its statistics.

    Old output of the specimen is removed first, so no stale frame survives a rerun.
    """
    from tqdm import tqdm

    name = twin_specimen_name(index)
    ss = specimen_seed(seed, index)
    children = ss.spawn(5 + len(RECORDS))
    rng_anat, rng_ct, rng_mark = (np.random.default_rng(s) for s in children[:3])
    raw_s, truth_s = paths.raw / name, truth_dir(paths) / name
    for d in (raw_s, truth_s):
        if d.exists():
            shutil.rmtree(d)
    an = anatomy.make_anatomy(rng_anat)
    meshes = an.meshes()
    for bone, mesh in meshes.items():
        dataset.write_mesh(truth_s / "meshes" / f"{bone}.stl", mesh)
    skin_mesh = an.skin_mesh()
    dataset.write_mesh(truth_s / "meshes" / "skin.stl", skin_mesh)
    dataset.write_mesh(truth_s / "bone_model.stl", an.bone_model())

    ct_from_marker = place_marker(an, rng_mark)
    ot_from_ct = tracker_from_ct(rng_mark)
    spheres = geometry.transform_points(ct_from_marker, SPECIMEN_FIDUCIALS_MM)
    t0 = time.perf_counter()
    vol, origin = ct_scan.ct_volume(an, spheres, FIDUCIAL_RADIUS_MM, cfg.ct_spacing_mm, rng_ct, cfg.ct_noise_hu,
                                    blur_mm=cfg.ct_blur_mm, cortical_hu=cfg.ct_cortical_hu)
    save_npz(raw_s / "ct.npz", volume=vol, spacing_mm=np.asarray(cfg.ct_spacing_mm, float), origin_mm=origin)
    ct_seconds = time.perf_counter() - t0
    atomic.write_json(raw_s / "marker.json", {"fiducials_mm": SPECIMEN_FIDUCIALS_MM,
                                              "fiducial_radius_mm": FIDUCIAL_RADIUS_MM})
    atomic.write_json(truth_s / "ct_from_marker.json", {"ct_from_marker": ct_from_marker,
                                                        "tracker_from_ct": ot_from_ct})
    records = {r: {"bone": g, "direction": d} for r, g, d, _ in RECORDS}
    atomic.write_json(raw_s / "records.json", records)
    atomic.write_json(truth_s / "records.json", records)
    atomic.write_json(truth_s / "anatomy.json", {
        "size_factor": an.landmarks["size"], "fat_mm": an.fat_mm, "plafond_z_mm": an.landmarks["plafond_z"],
        "tibia_top_z_mm": an.landmarks["tibia_top_z"], "bones": list(meshes)})

    scene = bmode.Scene.from_meshes(list(meshes.values()), skin_mesh, an.fat_mm,
                                    seed=int(children[3].generate_state(1)[0]))
    rows = []
    t_render = 0.0
    n_frames = 0
    for r_index, (rec, group, direction, variant) in enumerate(RECORDS):
        rng = np.random.default_rng(children[5 + r_index])
        t0 = time.process_time()  # CPU time of this process: a per-core rate, robust to a busy machine
        stats = simulate_record(paths, name, rec, group, direction, variant, an, scene, cfg, system,
                                ct_from_marker, ot_from_ct, rng, record_index=r_index, progress=progress, tqdm=tqdm)
        t_render += time.process_time() - t0
        n_frames += stats["n_frames"]
        rows.append(stats)
    return {"specimen": name, "n_frames": n_frames, "render_seconds": t_render, "ct_seconds": ct_seconds,
            "records": rows}


@dataclass
class RecordStreams:
    """The clocks and poses of one record (everything but the images).

    Attributes
    ----------
    plan : the sweep's path.
    image_t : (N,) image timestamps (ms, image clock).
    tracker_t : (M,) tracker timestamps (ms, tracker clock).
    planes : (N, 4, 4) true ``ct_from_image`` when each image was formed (``t + dt``).
    ct_us_true : (N, 4, 4) true probe-marker poses in CT at ``t + dt``.
    ct_us_recorded : (N, 4, 4) the recorded chain at ``t + dt``: true CT-from-marker, recorded
        specimen-marker and probe poses (jitter, drift), interpolated.
    tracker : the raw ``tracker.csv`` table.
    """

    plan: SweepPlan
    image_t: np.ndarray
    tracker_t: np.ndarray
    planes: np.ndarray
    ct_us_true: np.ndarray
    ct_us_recorded: np.ndarray
    tracker: pd.DataFrame


def record_streams(group: str, direction: str, variant: int, an: anatomy.Anatomy, scene: bmode.Scene,
                   cfg: TwinConfig, system: System, ct_from_marker: np.ndarray, ot_from_ct: np.ndarray,
                   rng: np.random.Generator, record_index: int = 0) -> RecordStreams:
    """Plan a sweep, move the probe, and record both markers (see the module docstring)."""
    length = cfg.sweep_length_mm[GROUPS.index(group)]
    plan = plan_sweep(an, group, variant, length, rng)
    rng_motion, rng_track, rng_img, rng_drift = rng.spawn(4)
    dt = system.temporal_offset_ms
    # clocks: images from t_img0; the tracker (same clock up to dt) from LEAD_S before to TAIL_S after,
    # so that t + dt' lies in the tracked range for every candidate offset dt' in [-300, 0) ms
    t_img0 = 1_000_000 + 180_000 * record_index + int(rng.integers(0, 5000))
    duration_ms = length / cfg.probe_speed_mm_s * 1000.0
    track_t0 = t_img0 - LEAD_S * 1000.0
    track_t1 = track_t0 + duration_ms
    motion = HandMotion(plan, track_t0, track_t1, direction == "backward", cfg, rng_motion)
    n_img = frames_in_sweep(length, cfg)
    period = 1000.0 / cfg.image_rate_hz
    img_t = np.unique(t_img0 + np.rint(np.arange(n_img) * period + rng_img.normal(0, 1.0, n_img)).astype(np.int64))
    trk_t = np.round(np.arange(track_t0, track_t1, 1000.0 / cfg.tracker_rate_hz), 3)
    width_mm = cfg.image_width * cfg.pixel_spacing_mm
    inv_calib = geometry.invert_transform(system.calibration)
    ct_us_trk = image_planes(motion, trk_t, scene, width_mm) @ inv_calib
    # recorded: a slowly varying error in the probe-marker frame about its fiducial centroid, then jitter and fit
    drift = SmoothProcess(rng_drift, 1.0, cfg.drift_timescale_s, dims=6)
    # the error's size varies between records (tracker working-volume region, marker visibility): log-normal
    dv = drift(trk_t) * np.exp(rng_drift.normal(0.0, DRIFT_SPREAD) - DRIFT_SPREAD**2 / 2)
    centroid = geometry.PROBE_FIDUCIALS_MM.mean(axis=0)
    d_rot = Rotation.from_rotvec(np.radians(cfg.tracking_drift_deg) * dv[:, :3]).as_matrix()
    d_trans = cfg.tracking_drift_mm * dv[:, 3:] + centroid - np.einsum("nij,j->ni", d_rot, centroid)
    d_pose = geometry.make_transform(d_rot, d_trans)
    ot_us_rec = measure_marker(ot_from_ct @ ct_us_trk @ d_pose, geometry.PROBE_FIDUCIALS_MM,
                               cfg.fiducial_jitter_mm, rng_track)
    ot_sm_true = np.broadcast_to(ot_from_ct @ ct_from_marker, (len(trk_t), 4, 4))
    ot_sm_rec = measure_marker(ot_sm_true, SPECIMEN_FIDUCIALS_MM, cfg.fiducial_jitter_mm, rng_track)
    t_form = img_t + dt
    planes = image_planes(motion, t_form, scene, width_mm)
    ct_us_rec = (ct_from_marker @ geometry.invert_transform(geometry.interpolate_poses(trk_t, ot_sm_rec, t_form))
                 @ geometry.interpolate_poses(trk_t, ot_us_rec, t_form))
    tracker = pose_frame(trk_t, {"": ot_us_rec, "s": ot_sm_rec})
    return RecordStreams(plan, img_t, trk_t, planes, planes @ inv_calib, ct_us_rec, tracker)


def simulate_record(paths: Paths, specimen: str, rec: str, group: str, direction: str, variant: int,
                    an: anatomy.Anatomy, scene: bmode.Scene, cfg: TwinConfig, system: System,
                    ct_from_marker: np.ndarray, ot_from_ct: np.ndarray, rng: np.random.Generator,
                    record_index: int = 0, progress: bool = True, tqdm=None) -> dict:
    """One sweep: tracker stream, frames and labels, written as they are made; returns statistics."""
    st = record_streams(group, direction, variant, an, scene, cfg, system, ct_from_marker, ot_from_ct, rng,
                        record_index)
    rng_img = np.random.default_rng(rng.integers(0, 2**63))
    plan, img_t, planes, ct_us_true, ct_us_rec = st.plan, st.image_t, st.planes, st.ct_us_true, st.ct_us_recorded
    width_mm = cfg.image_width * cfg.pixel_spacing_mm
    raw_r = paths.raw / specimen / rec
    truth_r = truth_dir(paths) / specimen / rec
    write_csv(raw_r / "tracker.csv", st.tracker)
    released = geometry.released_calibration()
    correction = (geometry.invert_transform(ct_us_rec) @ ct_us_true @ system.calibration
                  @ geometry.invert_transform(released))
    required = geometry.mean_fiducial_displacement(np.eye(4), correction)
    pose_err = geometry.mean_fiducial_displacement(ct_us_rec, ct_us_true)
    write_csv(truth_r / "poses.csv", pose_frame(img_t, {"": ct_us_true}, time_col="timestamp"))
    extent = (width_mm, cfg.image_height * cfg.pixel_spacing_mm)
    bp = cfg.bmode_params()
    frame_rows = []
    iterator = range(len(img_t))
    if tqdm is not None:
        iterator = tqdm(iterator, desc=f"{specimen}/{rec}", leave=False, disable=not progress)
    for i in iterator:
        t = int(img_t[i])
        f = bmode.render_frame(scene, planes[i], cfg.image_width, cfg.image_height, cfg.spacing, rng_img, bp,
                               cfg.label_gamma_mm, cfg.max_incidence_deg)
        dataset.write_image(raw_r / "images" / f"{t}.png", f.image)
        dataset.write_label(truth_r / dataset.LABELS_FULL / f"{t}_label.png", f.full)
        dataset.write_label(truth_r / dataset.LABELS / f"{t}_label.png", f.visible)
        mis = float("nan")
        if i % MISALIGNMENT_EVERY == 0:
            rec_pts, _ = plane_contour(scene, ct_us_rec[i] @ released, cfg.image_width, cfg.image_height,
                                             cfg.spacing, margin_mm=0.0)
            mis = chamfer_mm(rec_pts, f.contour, extent)
        n_full, n_vis = int(f.full.sum()), int(f.visible.sum())
        frame_rows.append({
            "timestamp": t, "bone_in_view": n_full > 0, "full_pixels": n_full, "visible_pixels": n_vis,
            "recorded_pose_error_mm": float(pose_err[i]), "required_correction_mm": float(required[i]),
            "misalignment_mm": mis,
            "mean_incidence_deg": float(np.nanmean(f.contour_incidence_deg)) if len(f.contour) else float("nan"),
            "bone_depth_mm": float(np.nanmin(np.where(np.isfinite(f.bone_depth_mm), f.bone_depth_mm, np.nan)))
            if np.isfinite(f.bone_depth_mm).any() else float("nan"),
        })
    frames = pd.DataFrame(frame_rows)
    write_csv(truth_r / "frames.csv", frames)
    return {"record": rec, "bone": group, "direction": direction, "n_frames": len(frames),
            "visible_pixels": int(frames["visible_pixels"].sum()), "full_pixels": int(frames["full_pixels"].sum()),
            "misalignment_mm": frames["misalignment_mm"].dropna().tolist(),
            "required_correction_mm": frames["required_correction_mm"].tolist(),
            "bone_in_view": int(frames["bone_in_view"].sum()),
            "path_start_mm": plan.points[0].tolist(), "path_end_mm": plan.points[-1].tolist()}
