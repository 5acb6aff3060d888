"""The twin's configuration: the ``simulate`` section typed (:class:`TwinConfig`) and the plan every specimen shares.

Every specimen holds the same records (:data:`RECORDS`, over the bone groups :data:`GROUPS`); every record is
tracked for :data:`LEAD_S` seconds before its first image and :data:`TAIL_S` after its last, which with the
sweep's length and the probe's speed sets its frames (:func:`frames_in_sweep`). Some keys describe the probe,
the clocks and the phantom shared by every specimen (:data:`SYSTEM_KEYS`, not overridable per specimen), some
change no simulated byte (:data:`NOT_SIMULATION_KEYS`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ultrabones.core.errors import ParamsError
from ultrabones.core.params import SectionParams, validate_section
from ultrabones.twin import bmode

#: Records of a specimen: (name, bone group, direction, variant).
RECORDS = tuple(
    (f"record{i + 1:02d}", group, "forward" if i % 2 == 0 else "backward", i % 3)
    for i, group in enumerate(["tibia"] * 3 + ["fibula"] * 3 + ["foot"] * 3)
)
GROUPS = ("tibia", "fibula", "foot")

#: Keys that describe the probe, the clocks and the phantom: shared by all specimens, not overridable per specimen.
SYSTEM_KEYS = ("n_specimens", "image_width", "image_height", "pixel_spacing_mm", "image_rate_hz", "tracker_rate_hz",
               "calibration_error_deg", "calibration_error_mm", "phantom_frames", "frequency_mhz", "tgc_fraction",
               "dynamic_range_db", "specular_exponent", "psf_axial_mm", "psf_lateral_mm", "display_smoothing_mm",
               "gain_db", "speckle_cell_mm", "phantom_speed_of_sound_m_s")


#: ``simulate`` keys that change no simulated byte (left out of the cache keys).
NOT_SIMULATION_KEYS = ("real_frames_dir",)


@dataclass(frozen=True)
class TwinConfig(SectionParams):
    """The ``simulate`` section, typed and frozen: the stage's parameters (units: ``schema.SCHEMA["simulate"]``).

    Build it with :meth:`~ultrabones.core.params.SectionParams.from_section`; a specimen's overrides give
    :meth:`for_specimen`. Construction, and so ``dataclasses.replace``, validates every value against the schema,
    then the combinations a schema cannot check. ``as_dict`` gives the section back as plain data.
    """

    SECTION: ClassVar[str] = "simulate"

    n_specimens: int
    image_width: int
    image_height: int
    pixel_spacing_mm: float
    image_rate_hz: float
    tracker_rate_hz: float
    probe_speed_mm_s: float
    sweep_length_mm: tuple
    hand_tilt_deg: float
    hand_pressure_mm: float
    fiducial_jitter_mm: float
    tracking_drift_deg: float
    tracking_drift_mm: float
    drift_timescale_s: float
    calibration_error_deg: float
    calibration_error_mm: float
    ct_spacing_mm: tuple
    ct_noise_hu: float
    phantom_frames: int
    frequency_mhz: float
    tgc_fraction: float
    dynamic_range_db: float
    specular_exponent: float
    label_gamma_mm: float
    max_incidence_deg: float
    # image realism (issue 15); defaults: the twin before it
    psf_axial_mm: float = 0.18
    psf_lateral_mm: float = 0.35
    display_smoothing_mm: float = 0.25
    gain_db: float = 28.0
    shadow_level: float = 0.01
    reverb_level: float = 0.0
    ringdown_mm: float = 0.25
    speckle_cell_mm: float = 0.0
    septa_spacing_mm: float = 5.0
    # the lab's error sources (issue 15); defaults: none
    speed_of_sound_m_s: float = 1540.0
    phantom_speed_of_sound_m_s: float = 1540.0
    ct_blur_mm: float = 0.0
    ct_cortical_hu: float = 1400.0
    # notebook 00's realism table only: changes no simulated byte (NOT_SIMULATION_KEYS)
    real_frames_dir: str | None = None

    def for_specimen(self, specimen_overrides: dict | None, specimen: str) -> "TwinConfig":
        """This configuration with a specimen's overrides (``params/specimens/<id>.yaml``) applied, validated.

        Raises
        ------
        ParamsError
            If an override sets a key of the probe or the phantom (:data:`SYSTEM_KEYS`), shared by every specimen.
        """
        over = validate_section("simulate", (specimen_overrides or {}).get(specimen, {}), f"{specimen} overrides",
                                partial=True)
        bad = sorted(set(over) & set(SYSTEM_KEYS))
        if bad:
            raise ParamsError(f"params/specimens/{specimen}.yaml: simulate.{bad[0]} describes the probe or the "
                              f"phantom shared by every specimen; it cannot be set per specimen")
        return dataclasses.replace(self, **over)

    def simulation_key(self) -> dict:
        """:meth:`as_dict` less the keys that change no simulated byte: what the cache keys hash."""
        return {k: v for k, v in self.as_dict().items() if k not in NOT_SIMULATION_KEYS}

    @classmethod
    def from_params(cls, P: dict) -> "TwinConfig":
        """From a ``simulate`` section, its known keys (the realism and error keys may be missing: their defaults)."""
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in P.items() if k in known})

    def __post_init__(self):
        """Validate against the schema (:class:`~ultrabones.core.params.SectionParams`), then the combinations."""
        super().__post_init__()
        cfg = self
        for key in ("psf_axial_mm", "psf_lateral_mm", "septa_spacing_mm", "speed_of_sound_m_s",
                    "phantom_speed_of_sound_m_s", "ct_cortical_hu"):
            if not getattr(cfg, key) > 0:
                raise ParamsError(f"simulate.{key} must be positive, got {getattr(cfg, key)!r}")
        for key in ("display_smoothing_mm", "reverb_level", "ringdown_mm", "speckle_cell_mm", "ct_blur_mm"):
            if not getattr(cfg, key) >= 0:
                raise ParamsError(f"simulate.{key} must be zero or positive, got {getattr(cfg, key)!r}")
        if not 0 <= cfg.shadow_level <= 1:
            raise ParamsError(f"simulate.shadow_level must lie in [0, 1], got {cfg.shadow_level!r}")
        for key in ("speed_of_sound_m_s", "phantom_speed_of_sound_m_s"):
            if not 1000.0 <= getattr(cfg, key) <= 2000.0:
                raise ParamsError(f"simulate.{key} must lie in [1000, 2000] m/s (soft tissue and water: 1450 to "
                                  f"1600), got {getattr(cfg, key)!r}")
        if cfg.pixel_spacing_mm <= 0:
            raise ParamsError(f"simulate.pixel_spacing_mm must be positive, got {cfg.pixel_spacing_mm}")
        if min(cfg.ct_spacing_mm) <= 0:
            raise ParamsError(f"simulate.ct_spacing_mm must be positive, got {list(cfg.ct_spacing_mm)}")
        if cfg.image_width < 1 or cfg.image_height < 1:
            raise ParamsError(f"simulate: image size must be positive, got {cfg.image_width} x {cfg.image_height}")
        if len(cfg.sweep_length_mm) != 3 or min(cfg.sweep_length_mm) <= 0:
            raise ParamsError(f"simulate.sweep_length_mm must be three positive lengths (tibia, fibula, foot), "
                              f"got {list(cfg.sweep_length_mm)}")
        if cfg.tracker_rate_hz <= cfg.image_rate_hz:
            raise ParamsError(f"simulate.tracker_rate_hz ({cfg.tracker_rate_hz}) must exceed image_rate_hz "
                              f"({cfg.image_rate_hz}): the tracker is the faster stream")
        for g, length in zip(GROUPS, cfg.sweep_length_mm):
            n = frames_in_sweep(length, cfg)
            if n < 1:
                raise ParamsError(f"simulate.sweep_length_mm ({g}: {length} mm) at {cfg.probe_speed_mm_s} mm/s and "
                                  f"{cfg.image_rate_hz} Hz gives zero frames; lengthen the sweep or slow the probe")

    @property
    def spacing(self) -> tuple[float, float]:
        return (self.pixel_spacing_mm, self.pixel_spacing_mm)

    def bmode_params(self) -> bmode.BModeParams:
        return bmode.BModeParams(frequency_mhz=self.frequency_mhz, tgc_fraction=self.tgc_fraction,
                                 dynamic_range_db=self.dynamic_range_db, specular_exponent=self.specular_exponent,
                                 psf_axial_mm=self.psf_axial_mm, psf_lateral_mm=self.psf_lateral_mm,
                                 display_smoothing_mm=self.display_smoothing_mm, gain_db=self.gain_db,
                                 shadow_level=self.shadow_level, reverb_level=self.reverb_level,
                                 ringdown_mm=self.ringdown_mm, speckle_cell_mm=self.speckle_cell_mm,
                                 septa_spacing_mm=self.septa_spacing_mm, speed_of_sound_m_s=self.speed_of_sound_m_s)


#: Seconds of tracking before the first image and after the last: every candidate offset in [-300, 0) ms
#: keeps ``t + offset`` in the tracked range.
LEAD_S = 0.32
TAIL_S = 0.02


def frames_in_sweep(length_mm: float, cfg: TwinConfig) -> int:
    """Images of a sweep of ``length_mm`` at the mean probe speed (the tracking lead and tail excluded)."""
    duration = length_mm / cfg.probe_speed_mm_s - LEAD_S - TAIL_S
    return int(np.floor(duration * cfg.image_rate_hz))
