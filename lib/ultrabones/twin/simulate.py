"""The digital twin: tracked freehand ultrasound of synthetic lower legs, with ground truth.

What a real acquisition records goes to ``raw/``, the truth to ``truth/``
(``docs/twin_format.md``). The pieces:

- **Anatomy** (:mod:`ultrabones.twin.anatomy`): bones, skin and the CT volume.
- **Markers and tracking** (:mod:`ultrabones.twin.tracking`). A specimen marker on
  K-wires (fiducial spheres visible in CT) and the probe marker (the released
  fiducials). An optical tracker samples both at ``tracker_rate_hz``: each
  fiducial is measured with isotropic Gaussian jitter (``fiducial_jitter_mm`` RMS
  in 3D) and the marker pose is the least-squares rigid fit to the measured
  fiducials (Kabsch), as an optical tracker's pose is.
- **Recorded-pose error** (:func:`ultrabones.twin.specimen.record_streams`). Besides
  the jitter, the recorded probe pose carries a slowly varying rigid error
  (``tracking_drift_deg``, ``tracking_drift_mm``, correlation time
  ``drift_timescale_s``) about the probe marker's fiducial centroid: the
  pose-dependent bias of the tracker over its working volume, and the small
  motion of the bones relative to their K-wire-mounted marker under probe
  pressure. Both are what the labeling stage's per-frame correction of at most
  1 mm fiducial displacement is meant to absorb.
- **Calibration** (:class:`~ultrabones.twin.tracking.System`). The true
  image-to-probe calibration is the released one perturbed by a random rigid
  error (``calibration_error_deg``, ``calibration_error_mm``): the released
  calibration is then a realistic calibration with error for this probe. The
  true temporal offset is drawn in ``[-300, 0)`` ms; the image with timestamp
  ``t`` was formed at tracker time ``t + dt``.
- **Sweeps** (:mod:`ultrabones.twin.sweeps`; a specimen's records:
  :mod:`ultrabones.twin.specimen`). Nine records per specimen (three along the
  tibia, three along the fibula, three over the foot; forward and backward)
  with natural hand motion: speed, tilt, roll, lateral wobble and pressure vary
  smoothly; the probe face stays on the skin.
- **Images** (:mod:`ultrabones.twin.bmode`), written frame by frame (memory does not
  grow with record length), with the true full and visible labels.
- **Z-phantom** recordings (:mod:`ultrabones.twin.phantom_session`, the phantom of
  :mod:`ultrabones.calibration.phantom`) with the same probe, clocks and offset.

This module is the stage (notebook 00), under the stage contract (docs/architecture.md): :data:`Params`
(:class:`~ultrabones.twin.config.TwinConfig`), :func:`run` (nothing on real data; else :func:`simulate_twin`:
the system, the phantom and every specimen, then the realism check against real frames), :data:`Result`,
:func:`metrics`, :func:`check`, :func:`figures` (drawn by :mod:`ultrabones.twin.figures`) and :func:`tables`.

Everything is seeded from the profile's ``seed``: the same parameters give the
same bytes, whatever the number of workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from ultrabones.core import geometry
from ultrabones.core.cache import SpecimenCache
from ultrabones.core.errors import ParamsError
from ultrabones.core.executor import executor
from ultrabones.core.paths import Paths, twin_specimen_name
from ultrabones.twin import realism
from ultrabones.twin.config import SYSTEM_KEYS, TwinConfig
from ultrabones.twin.figures import figure_anatomy_and_sweeps, figure_example_frames, figure_statistics, specimen_table
from ultrabones.twin.phantom_session import simulate_phantom
from ultrabones.twin.specimen import simulate_specimen
from ultrabones.twin.tracking import System, write_system


def _specimen_job(args):
    paths, index, cfg, system, seed, progress = args
    return simulate_specimen(paths, index, cfg, system, seed, progress)


#: The stage's parameters (the ``simulate`` section).
Params = TwinConfig
#: The stage's name (notebook stem): its cache and metrics.
STEM = "00_simulate"


@dataclass(frozen=True)
class SimulationResult:
    """What :func:`run` (or :func:`simulate_twin`) simulated.

    Attributes
    ----------
    specimens : specimen name -> its statistics, every specimen of the run in the cache, sorted.
    phantom : the phantom session's statistics (``n_frames``, ...).
    wall_seconds : wall time of the simulation (s).
    system : the drawn :class:`~ultrabones.twin.tracking.System` (true calibration, temporal offset, ...);
        None when nothing was simulated.
    config : the configuration simulated.
    n_workers : processes the specimens ran on.
    paths : where the twin was written (the figures read its frames back), or None.
    simulated : False on real data (``data_root`` set), where there is nothing to simulate.
    realism_checked : whether :func:`run` compared the twin's frames with real ones (the metrics key
        ``realism``).
    realism : that comparison (:func:`ultrabones.twin.realism.run_realism`), None without real frames.
    """

    specimens: dict
    phantom: dict | None
    wall_seconds: float
    system: "System | None"
    config: TwinConfig
    n_workers: int = 1
    paths: Paths | None = None
    simulated: bool = True
    realism_checked: bool = False
    realism: "realism.RealismResult | None" = None


#: What :func:`run` returns.
Result = SimulationResult


def simulate_twin(paths: Paths, P: TwinConfig, seed: int, specimens: list[str] | None = None, n_workers: int = 1,
                  progress: bool = True, cache=None, overrides: dict | None = None) -> SimulationResult:
    """Simulate the twin: system, phantom and every (or the named) specimen.

    Parameters
    ----------
    paths : where ``raw/`` and ``truth/`` go.
    P : the stage's parameters (:meth:`TwinConfig.from_section`).
    seed : master seed.
    specimens : only these specimen names (the others are kept); None: all.
    n_workers : processes (specimens run in parallel; the output does not depend on it).
    cache : a :class:`~ultrabones.pipeline.cache.SpecimenCache`; specimens whose result is cached with the same
        parameters are skipped, and cached specimens not asked for are reported too.
    overrides : per-specimen section overrides (``specimen_overrides`` of the notebook;
        :meth:`TwinConfig.for_specimen`).
    """
    cfg = P
    names = [twin_specimen_name(i) for i in range(cfg.n_specimens)]
    if specimens is not None:
        unknown = [s for s in specimens if s not in names]
        if unknown:
            raise ParamsError(f"specimen(s) {', '.join(unknown)} not in the twin ({names[0]}..{names[-1]})")
    cfgs = {n: cfg.for_specimen(overrides, n) for n in names}
    keys = {n: {"simulate": cfgs[n].simulation_key(), "seed": seed} for n in names}
    system = System.draw(seed, cfg)
    t0 = time.perf_counter()
    write_system(paths, system, cfg)
    results = {}
    section = cfg.as_dict()
    phantom_key = {"simulate": {k: section[k] for k in SYSTEM_KEYS + ("fiducial_jitter_mm",)}, "seed": seed}
    phantom_stats = cache.get("phantom", phantom_key) if cache is not None else None
    if phantom_stats is None or not (paths.raw / "phantom" / "tracker.csv").is_file():
        phantom_stats = simulate_phantom(paths, cfg, system, seed, progress)
        if cache is not None:
            cache.put("phantom", phantom_key, phantom_stats)
    jobs = []
    for i, name in enumerate(names):
        hit = cache.get(name, keys[name]) if cache is not None else None
        if hit is not None and (paths.raw / name / "ct.npz").is_file():
            results[name] = hit
        elif specimens is None or name in specimens:
            jobs.append(i)
    if jobs:
        args = [(paths, i, cfgs[names[i]], system, seed, progress and n_workers == 1) for i in jobs]

        def done(_, res):
            results[res["specimen"]] = res
            if cache is not None:
                cache.put(res["specimen"], keys[res["specimen"]], res)

        with executor("auto", None, n_workers, progress) as ex:
            ex.map(_specimen_job, args, desc="specimens", on_result=done)
    return SimulationResult(dict(sorted(results.items())), phantom_stats, time.perf_counter() - t0, system, cfg,
                            n_workers, paths)


def run(paths: Paths, params: TwinConfig, *, specimens: list[str] | None = None, seed: int = 0, n_workers: int = 1,
        progress: bool = True, overrides: dict | None = None, cache: bool = True) -> SimulationResult:
    """Notebook 00's work: the twin simulated (:func:`simulate_twin`), then its frames against real ones.

    On real data (``paths.is_twin`` false) there is nothing to simulate: the result says so (``simulated``
    False) and nothing is written. Otherwise the twin is simulated, then a sample of its frames is compared
    with the real frames under ``params.real_frames_dir`` (:func:`ultrabones.twin.realism.run_realism`;
    skipped, and the metrics say so, when there are none).

    Parameters
    ----------
    paths : the run's paths.
    params : the ``simulate`` section (:meth:`TwinConfig.from_section`).
    specimens : only these specimen names are simulated (the cached others are kept); None: all.
    seed : the profile's master seed.
    n_workers : processes for the specimens (the output does not depend on it).
    progress : progress bars.
    overrides : per-specimen section overrides (``specimen_overrides``; :meth:`TwinConfig.for_specimen`).
    cache : keep the specimens in the stage's :class:`~ultrabones.core.cache.SpecimenCache` (a rerun with the
        same parameters skips them).
    """
    if not paths.is_twin:
        return SimulationResult({}, None, 0.0, None, params, n_workers, paths, simulated=False)

    res = simulate_twin(paths, params, seed, specimens=specimens, n_workers=n_workers, progress=progress,
                        cache=SpecimenCache(paths, STEM) if cache else None, overrides=overrides)
    real = realism.run_realism(paths.raw, params.real_frames_dir, cache_dir=paths.cache(STEM))
    return replace(res, realism_checked=True, realism=real)


def metrics(result: SimulationResult) -> dict:
    """The 00 metrics from :func:`run`'s result (every specimen in it).

    Off the twin only ``n_specimens``, ``n_frames`` (0) and ``simulated`` (False).

    ``frames_per_second`` is frames per CPU-second of one worker process (rendering, labels, PNG writes;
    the CT and the phantom excluded): a per-core rate that a busy machine does not distort much.
    ``initial_misalignment_mm`` is the mean and std over sampled frames of the contour distance between
    the true cut and the cut placed with the recorded tracking and the released calibration (paper:
    1.13 +- 0.606 mm); ``required_correction_mm`` the fiducial displacement of the rigid correction each
    frame needs (the labeling stage discards frames above 1 mm; paper: 18.7 %).
    """
    if not result.simulated:
        return {"n_specimens": 0, "n_frames": 0, "simulated": False}
    specs = result.specimens
    recs = [r for s in specs.values() for r in s["records"]]
    mis = np.array([m for r in recs for m in r["misalignment_mm"]], dtype=float)
    req = np.array([m for r in recs for m in r["required_correction_mm"]], dtype=float)
    n_frames = int(sum(s["n_frames"] for s in specs.values()))
    render_s = float(sum(s["render_seconds"] for s in specs.values()))
    full = sum(r["full_pixels"] for r in recs)
    vis = sum(r["visible_pixels"] for r in recs)
    out = {
        "n_specimens": len(specs),
        "n_records": len(recs),
        "n_frames": n_frames,
        "n_phantom_frames": int(result.phantom["n_frames"]) if result.phantom else 0,
        "frames_with_bone_fraction": float(sum(r["bone_in_view"] for r in recs) / max(n_frames, 1)),
        "visible_bone_fraction": float(vis / full) if full else float("nan"),
        "frames_per_second": float(n_frames / render_s) if render_s > 0 else float("nan"),
        "wall_seconds": float(result.wall_seconds),
        "n_workers": int(result.n_workers),
        "initial_misalignment_mm": {"mean": float(np.mean(mis)) if len(mis) else float("nan"),
                                    "std": float(np.std(mis)) if len(mis) else float("nan"),
                                    "n_frames": int(len(mis))},
        "required_correction_mm": {"mean": float(np.mean(req)) if len(req) else float("nan"),
                                   "fraction_over_1mm": float(np.mean(req > 1.0)) if len(req) else float("nan")},
        "temporal_offset_ms": float(result.system.temporal_offset_ms),
        "calibration_error_deg": float(geometry.rotation_angle_deg(
            geometry.invert_transform(geometry.released_calibration()) @ result.system.calibration)),
    }
    if result.realism_checked:
        out["realism"] = realism.realism_metrics_or_skip(result.realism, result.config.real_frames_dir)
    return out


def specimen_names(P: TwinConfig) -> list[str]:
    """Specimen folder names of a twin simulated with ``P``."""
    return [twin_specimen_name(i) for i in range(int(P.n_specimens))]


def check(result: SimulationResult) -> None:
    """Sanity of a simulated twin (nothing to check off the twin): frames and specimens as configured, an
    initial misalignment of the paper's order (a simulator setting, paper 1.13 mm), and bone visible in some
    but not all of the image."""
    if not result.simulated:
        return
    m = metrics(result)
    n, want = m["n_specimens"], result.config.n_specimens
    assert m["n_frames"] > 0 and n == want, \
        f"the twin holds {n} specimen(s) and {m['n_frames']} frames; the profile asks for n_specimens = {want}"
    mis = m["initial_misalignment_mm"]["mean"]
    assert 0.5 < mis < 2.0, f"initial misalignment {mis:.2f} mm is not of the paper's order (1.13 mm)"
    vis = m["visible_bone_fraction"]
    assert 0.05 < vis < 0.95, f"visible bone fraction {vis:.3f} is outside (0.05, 0.95): labels or shadow are off"


def figures(result: SimulationResult) -> dict:
    """The stage's figures (:mod:`ultrabones.twin.figures`; none off the twin): ``twin_example_frames`` and
    ``twin_anatomy_sweeps`` of the first specimen, ``twin_statistics``, and ``twin_vs_real_frames`` when
    real frames were compared."""
    if not result.simulated:
        return {}
    first = specimen_names(result.config)[0]
    out = {"twin_example_frames": figure_example_frames(result.paths, first),
           "twin_anatomy_sweeps": figure_anatomy_and_sweeps(result.paths, first),
           "twin_statistics": figure_statistics(result.specimens)}
    if result.realism is not None:
        out["twin_vs_real_frames"] = realism.figure_side_by_side(result.realism)
    return out


def tables(result: SimulationResult) -> dict:
    """The stage's tables (none off the twin): ``twin_specimens`` (:func:`ultrabones.twin.figures.specimen_table`)
    and, when real frames were compared, ``twin_realism`` (the statistics, rounded to 3 decimals)."""
    if not result.simulated:
        return {}
    out = {"twin_specimens": specimen_table(result.specimens)}
    if result.realism is not None:
        out["twin_realism"] = result.realism.table.round(3).reset_index()
    return out
