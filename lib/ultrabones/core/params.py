"""Parameter profiles: loading, merging and strict validation.

A profile (``params/<name>.yaml``) holds *common* keys at the top level and one
section per stage (``simulate``, ``calibration``, ...). ``params/default.yaml``
gives every key; another profile says ``extends: default`` (or another profile)
and lists only the keys whose values differ (:func:`resolve_profile_files`;
``python -m ultrabones params --profile hard --explain`` shows where each value
came from). A notebook receives the
common keys plus its own section's keys, flat, as papermill parameters; its
``parameters`` cell names exactly those keys (``tests/test_params.py`` checks).

Per-specimen overrides (``params/specimens/<id>.yaml``) hold sections only and
are merged over the profile for that specimen: notebooks receive them as
``specimen_overrides`` and call :func:`for_specimen`.

Every key is validated against :data:`SCHEMA`: an unknown key, a wrong type or
a value out of range raises :class:`~ultrabones.core.errors.ParamsError` naming the
file and the key. papermill only warns about unknown parameters, so this module
is the only guard.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import yaml

from ultrabones.core.errors import ParamsError
from ultrabones.core.paths import PARAMS_DIR


@dataclass(frozen=True)
class Spec:
    """The allowed values of one parameter.

    Parameters
    ----------
    kind : one of ``"int"``, ``"float"``, ``"bool"``, ``"str"``, ``"list"``, ``"dict"``.
    lo, hi : inclusive bounds for numbers (and for list items of a numeric ``item``).
    choices : allowed values, if restricted.
    nullable : whether ``null`` is allowed.
    item : the spec of each list item.
    length : exact list length, if fixed.
    doc : one line of documentation, with the unit.
    """

    kind: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple | None = None
    nullable: bool = False
    item: "Spec | None" = None
    length: int | None = None
    doc: str = ""

    def check(self, value: Any, where: str) -> Any:
        """Return ``value`` (ints widened to float where a float is expected) or raise."""
        if value is None:
            if self.nullable:
                return None
            raise ParamsError(f"{where}: null is not allowed ({self.doc or self.kind})")
        kind = self.kind
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParamsError(f"{where}: expected a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value):  # NaN compares false against every bound; inf is no setting either
                raise ParamsError(f"{where}: {value!r} is not a finite number ({self.doc or 'a number'}); "
                                  "give a number" + (" or null" if self.nullable else ""))
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ParamsError(f"{where}: expected an integer, got {value!r}")
        elif kind == "bool":
            if not isinstance(value, bool):
                raise ParamsError(f"{where}: expected true or false, got {value!r}")
        elif kind == "str":
            if not isinstance(value, str):
                raise ParamsError(f"{where}: expected a string, got {value!r}")
        elif kind == "list":
            if not isinstance(value, (list, tuple)):
                raise ParamsError(f"{where}: expected a list, got {value!r}")
            if self.length is not None and len(value) != self.length:
                raise ParamsError(f"{where}: expected a list of {self.length} items, got {len(value)}")
            if self.item is not None:
                value = [self.item.check(v, f"{where}[{i}]") for i, v in enumerate(value)]
            else:
                value = list(value)
        elif kind == "dict":
            if not isinstance(value, dict):
                raise ParamsError(f"{where}: expected a mapping, got {value!r}")
        else:  # pragma: no cover - schema bug
            raise AssertionError(f"unknown spec kind {kind}")
        if kind in ("int", "float"):
            if self.lo is not None and value < self.lo:
                raise ParamsError(f"{where}: {value!r} is below the minimum {self.lo} ({self.doc})")
            if self.hi is not None and value > self.hi:
                raise ParamsError(f"{where}: {value!r} is above the maximum {self.hi} ({self.doc})")
        if self.choices is not None and value not in self.choices:
            raise ParamsError(f"{where}: {value!r} is not one of {list(self.choices)}")
        return value


def _f(lo=None, hi=None, doc="", nullable=False):
    return Spec("float", lo, hi, nullable=nullable, doc=doc)


def _i(lo=None, hi=None, doc="", nullable=False):
    return Spec("int", lo, hi, nullable=nullable, doc=doc)


def _b(doc=""):
    return Spec("bool", doc=doc)


def _s(choices=None, doc="", nullable=False):
    return Spec("str", choices=tuple(choices) if choices else None, nullable=nullable, doc=doc)


def _l(item=None, length=None, doc="", nullable=False):
    return Spec("list", item=item, length=length, nullable=nullable, doc=doc)


#: Keys at the top level of a profile, passed to every notebook.
COMMON: dict[str, Spec] = {
    "data_root": _s(nullable=True, doc="real dataset root (layout A or B); null runs the digital twin"),
    "derived_root": _s(nullable=True, doc="where the stages write labels, optimised poses, reports and predictions "
                       "(a dataset in the input's layout; the input is never written); null: build/<profile>/dataset"),
    "specimens": _l(_s(), nullable=True, doc="specimen folder names to process; null: all"),
    "seed": _i(0, 2**31 - 1, doc="master random seed"),
    "dask_scheduler": _s(nullable=True, doc="Dask scheduler address; null: a local cluster"),
    "n_workers": _i(1, 512, doc="local Dask workers (processes)"),
}

#: Keys the runner adds for every notebook (not set in profiles).
INJECTED: dict[str, Spec] = {
    "profile": _s(doc="profile name"),
    "specimen": _s(nullable=True, doc="process only this specimen (make specimen); metrics still cover all"),
    "specimen_overrides": Spec("dict", doc="per-specimen section overrides, validated"),
    "twin_dir": _s(doc="digital twin folder: raw/, truth/, dataset/"),
    "build_dir": _s(doc="build folder of this profile"),
    "figures_dir": _s(doc="where figures and tables are saved"),
}

#: One section per stage. Each stage owns its section; keys documented with units.
SCHEMA: dict[str, dict[str, Spec]] = {
    "simulate": {
        "n_specimens": _i(1, 100, doc="number of twin specimens"),
        "image_width": _i(1, 4096, doc="B-mode image width (px)"),
        "image_height": _i(1, 4096, doc="B-mode image height (px)"),
        "pixel_spacing_mm": _f(doc="B-mode pixel size, sx = sy (mm/px); must be positive"),
        "image_rate_hz": _f(0.1, 1000, doc="image stream rate (Hz; real data about 21)"),
        "tracker_rate_hz": _f(0.1, 2000, doc="optical tracker rate (Hz); faster than the images"),
        "probe_speed_mm_s": _f(0.5, 200, doc="mean probe speed along a sweep (mm/s)"),
        "sweep_length_mm": _l(_f(), length=3, doc="sweep length over tibia, fibula, foot (mm); positive"),
        "hand_tilt_deg": _f(0, 45, doc="std of the slowly varying hand tilt (degrees)"),
        "hand_pressure_mm": _f(0, 10, doc="mean probe indentation of the skin (mm)"),
        "fiducial_jitter_mm": _f(0, 5, doc="3D RMS error of each tracked fiducial position (mm)"),
        "tracking_drift_deg": _f(0, 10, doc="std per axis of the slowly varying recorded-pose rotation error (degrees)"),
        "tracking_drift_mm": _f(0, 20, doc="std per axis of the slowly varying recorded-pose translation error (mm)"),
        "drift_timescale_s": _f(0.05, 600, doc="typical period of the recorded-pose error (s)"),
        "calibration_error_deg": _f(0, 10, doc="rotation between the true and the released calibration (degrees)"),
        "calibration_error_mm": _f(0, 20, doc="translation between the true and the released calibration (mm)"),
        "ct_spacing_mm": _l(_f(), length=3, doc="CT voxel size x, y, z (mm; paper 0.839, 0.839, 0.6); positive"),
        "ct_noise_hu": _f(0, 500, doc="CT noise standard deviation (HU)"),
        "phantom_frames": _i(10, 100000, doc="images of the Z-phantom recording"),
        "frequency_mhz": _f(1, 30, doc="probe centre frequency (MHz)"),
        "tgc_fraction": _f(0, 1, doc="share of the round-trip attenuation restored by time-gain compensation"),
        "dynamic_range_db": _f(10, 120, doc="displayed dynamic range of the log compression (dB)"),
        "specular_exponent": _f(0.5, 50, doc="bone echo amplitude falls as cos(incidence)^p"),
        "label_gamma_mm": _f(0.01, 5, doc="true label band half-width around the bone contour (mm; paper 0.3)"),
        "max_incidence_deg": _f(0, 180, doc="visible label keeps in-plane incidence up to this (degrees; paper 85)"),
        "psf_axial_mm": _f(0.01, 5, doc="axial standard deviation of the Gaussian point-spread function (mm)"),
        "psf_lateral_mm": _f(0.01, 5, doc="lateral standard deviation of the Gaussian point-spread function (mm)"),
        "display_smoothing_mm": _f(0, 5, doc="scanner's display smoothing of the envelope, Gaussian std (mm; 0: none)"),
        "gain_db": _f(0, 120, doc="envelope level displayed as white (dB re unit-power tissue speckle)"),
        "shadow_level": _f(0, 1, doc="power fraction beneath bone: the shadow's speckled floor of weak transmission and clutter (0..1)"),
        "reverb_level": _f(0, 100, doc="reverberation power beneath a bone echo relative to unit-power tissue (0: none)"),
        "ringdown_mm": _f(0, 5, doc="decay length of the bone echo's amplitude below the surface (mm): echo thickness"),
        "speckle_cell_mm": _f(0, 2, doc="cell of the scatterers fixed in the tissue (mm); 0: fresh speckle every frame"),
        "septa_spacing_mm": _f(0.5, 50, doc="mean distance between connective-tissue sheets (fascia lines) (mm)"),
        "speed_of_sound_m_s": _f(1400, 1700, doc="speed of sound in tissue (m/s); the scanner assumes 1540: depths scale by 1540/c"),
        "phantom_speed_of_sound_m_s": _f(1400, 1700, doc="speed of sound in the Z-phantom's water bath (m/s; about 1485 at room temperature)"),
        "ct_blur_mm": _f(0, 5, doc="CT point-spread function, Gaussian std (mm; 0: one-voxel partial volume only)"),
        "ct_cortical_hu": _f(200, 3000, doc="HU of the twin's cortical bone (1400: the bone threshold 720 is the midpoint to muscle)"),
        "real_frames_dir": _s(nullable=True, doc="folder with real frames (reference_images/, real_sweep/) for notebook 00's realism table; relative to where the command ran; null or missing: the section is skipped"),
    },
    "calibration": {
        "wire_threshold": _f(0, 255, doc="grey level (0..255, after smoothing) above which a pixel is a wire echo"),
        "wire_sigma_px": _f(0, 10, doc="Gaussian smoothing of phantom images before wire detection (px)"),
        "wire_min_area_px": _i(1, 10000, doc="smallest wire echo kept (px); smaller bright spots are speckle"),
        "wire_max_extent_mm": _f(0.1, 1000, doc="bright structures wider or taller than this are not wire echoes (mm)"),
        "wire_min_separation_mm": _f(0.05, 100, doc="least distance between two wire echoes' peaks (mm)"),
        "wire_collinearity_mm": _f(0, 10, doc="a frame is rejected when an N's middle echo is farther than this from its outer echoes' line (mm)"),
        "offset_min_ms": _f(-10000, 10000, doc="first temporal offset of the sweep (ms, inclusive)"),
        "offset_max_ms": _f(-10000, 10000, doc="end of the temporal offset sweep (ms, exclusive)"),
        "offset_step_ms": _f(0.001, 1000, doc="step of the temporal offset sweep (ms)"),
        "bone_threshold_hu": _f(-1000, 4000, doc="bone threshold and iso-surface level of the CT bone model (HU)"),
        "fiducial_threshold_hu": _f(-1000, 10000, doc="threshold and iso-level of the marker's fiducial spheres in CT (HU)"),
        "min_bone_volume_mm3": _f(0, 1e7, doc="bone components smaller than this are dropped (mm^3)"),
        "smooth_iterations": _i(0, 100, doc="Taubin smoothing iterations of the bone mesh (0: none)"),
        "decimate_fraction": _f(0.01, 1, doc="fraction of the bone mesh's triangles kept by quadric decimation"),
        "icp_max_distance_mm": _f(0.01, 100, doc="ICP correspondence distance, virtual to CT fiducial spheres (mm)"),
        "surface_samples": _i(100, 10000000, doc="points sampled per mesh to measure surface distances on the twin"),
    },
    "labeling": {
        "objective": _s(("eq2", "released"), doc="the pose objective: eq2 (the paper's Eq. 2 as printed) or released (the objective of the authors' public code that made the released labels: sum of exp(5 I) over image points within 0.5 mm of C minus 3000 times the fiducial displacement, with its image preparation and skip rules; labels.released)"),
        "released_ct_samples": _i(1000, 100000000, doc="objective released: points sampled uniformly on the CT bone model for C (upstream: 1000000)"),
        "density_per_mm2": _f(0.01, 1000.0, doc="points of C per mm^2 of CT bone surface, for the objective of Eq. 2"),
        "label_density_per_mm2": _f(0.01, 1000.0, doc="points of C per mm^2 for drawing the label PNGs and measuring them (denser: a continuous band)"),
        "objective_region": _s(("auto", "full", "first_hit"), doc="part of I_t that Eq. 2 averages: full (as written), first_hit (the surface facing the probe, per scan line), or auto (chosen with lambda by the truth-free rule)"),
        "gamma_mm": _f(0.01, 5.0, doc="intersection thickness gamma: image points within this distance of C (mm; paper 0.3)"),
        "bound_deg": _f(0.0, 10.0, doc="rotation perturbation bound of Eq. 2, each Euler angle (degrees; paper 1)"),
        "bound_mm": _f(0.0, 10.0, doc="translation perturbation bound of Eq. 2, each axis (mm; paper 1)"),
        "popsize": _i(1, 200, doc="differential evolution population per parameter (scipy popsize)"),
        "maxiter": _i(1, 10000, doc="differential evolution generations at most"),
        "tol": _f(0.0, 1.0, doc="differential evolution relative convergence tolerance"),
        "lambdas": _l(_f(0.0, 1e6), doc="candidate weights of the fiducial term (1/mm; paper 0.01..1000)"),
        "lambda_frames": _i(1, 100000, doc="frames sampled to choose lambda"),
        "selection_rule": _s(("split", "temporal"), doc="truth-free score of a (lambda, region): split (fit on one half of the bone's scan lines, score on the other) or temporal (score on frames +-selection_offset_frames)"),
        "selection_eval_region": _s(("first_hit", "full"), doc="region whose held-out mean intensity scores every candidate"),
        "selection_offset_frames": _i(1, 100, doc="neighbour distance in rows of tracking.csv (temporal rule only)"),
        "fallback_region": _s(("first_hit", "full"), doc="region used with objective_region auto when lambda is fixed or no frame could be scored"),
        "lambda_value": _f(0.0, 1e6, nullable=True, doc="fixed lambda (1/mm); null: choose among lambdas"),
        "selection_inseparable": _s(("keep", "one_se"), doc="when the chosen candidate's score does not beat the runner-up's by more than the standard error of that margin (paired over the sampled frames; reported in lambda_selection.separation): keep (the rule's choice stands) or one_se (the largest lambda among the candidates within that standard error of the best, in fallback_region when possible: labels.select.one_se_choice)"),
        "max_correction_mm": _f(0.0, 100.0, doc="validation: discard a frame whose mean fiducial correction exceeds this (mm; paper 1)"),
        "min_label_fraction": _f(0.0, 1.0, doc="validation (not in the paper): discard a frame whose optimised label keeps fewer than this share of the initial label's pixels; 0: off"),
        "halves_check": _s(("first_hit", "full"), nullable=True, doc="validation (not in the paper): discard a frame whose correction does not raise the mean intensity, in this region, on both halves of the bone's scan lines; null: off"),
        "incidence_max_deg": _f(0.0, 90.0, doc="visible label keeps incidence angles up to this (degrees; paper 85)"),
        "frame_stride": _i(1, 100000, doc="label every k-th frame of a record"),
        "max_frames_per_record": _i(1, 1000000, nullable=True, doc="at most this many labelled frames per record (spread evenly); null: no cap"),
        "chunk_size": _i(1, 100000, doc="frames per resumable result file (optimizer de: also per Dask task)"),
        "optimizer": _s(("sweep", "de"), doc="sweep: one task per sweep, frames in time order, each warm-started (local pattern search) from its predecessor's correction, differential evolution as cold start and fallback; de: every frame by differential evolution from scratch"),
        "warm_step_deg": _f(0.05, 1.0, doc="sweep optimizer: initial rotation step of the pattern search (degrees)"),
        "warm_step_mm": _f(0.05, 1.0, doc="sweep optimizer: initial translation step of the pattern search (mm)"),
        "warm_min_step_deg": _f(0.005, 0.1, doc="sweep optimizer: rotation resolution of the pattern search (degrees)"),
        "warm_min_step_mm": _f(0.005, 0.1, doc="sweep optimizer: translation resolution of the pattern search (mm)"),
        "warm_max_calls": _i(10, 200, doc="sweep optimizer: batched objective calls of the pattern search at most"),
        "warm_max_gap": _i(1, doc="sweep optimizer: a kept frame's correction warm-starts frames at most this many labelled frames later; farther: differential evolution"),
        "warm_cold_every": _i(0, 100000, doc="solve every this-many-th frame of a sweep (tracking.csv row) cold with full differential evolution, restarting the warm chain; 0: never"),
        "registration_frames": _i(1, 100000, doc="frames per sweep used by the global-registration baseline"),
        "registration_bound_deg": _f(0.0, 30.0, doc="global registration search box, Euler angles about the sweep centre (degrees)"),
        "registration_bound_mm": _f(0.0, 100.0, doc="global registration search box, translation (mm)"),
        "registration_maxiter": _i(1, 10000, doc="differential evolution generations of the global registration"),
        "precision_tolerance_mm": _f(0.0, 10.0, doc="distance within which a visible-label pixel matches the truth (mm; issue: 0.5)"),
        "executor": _s(("dask", "synchronous"), doc="dask: a LocalCluster of n_workers (or dask_scheduler); synchronous: in process"),
        "compare_objectives_frames": _i(0, 1000000, doc="twin only: after labelling, fit Eq. 2 (first_hit and full) and the released objective on at most this many frames and measure each one's delivered labels against the truth (notebook 02's twin section; labels.compare, twin.objectives); 0: off"),
        "device": _s(("auto", "cuda", "cpu"), nullable=True, doc="optimizer de: the torch device that optimises a chunk's frames together (labels.torch_objective; Eq. 2 and each frame's correction equal to numpy/scipy's); null: numpy/scipy, frame by frame; auto: cuda where torch sees a CUDA device, else null; cuda (stops if there is none); cpu (tests)"),
        "min_echo_level": _f(0, 1, doc="a frame whose brightest 1% of pixels average below this grey level (0..1 of full scale) carries no echo (a blank frame) and is skipped as no_echo; 0: off"),
    },
    "rating": {
        "frames_per_sweep": _i(1, 1000, doc="frames drawn per sweep for the rating set (paper: 1, 119 frames)"),
        "image_format": _s(("jpeg", "png"), doc="encoding of the items embedded in the rating page"),
        "jpeg_quality": _i(50, 100, doc="JPEG quality of the embedded items (4:4:4 chroma)"),
        "overlay_alpha": _f(0.0, 1.0, doc="opacity of the label colour over the image (0-1)"),
        "rubric_large_share": _f(0.001, 1.0, doc="simulated rater: share of the contour with error > 3 mm that makes 'large sections' (rating 0)"),
        "rubric_some_share": _f(0.001, 1.0, doc="simulated rater: share with error > 1 mm that makes 'some sections' (rating 1)"),
        "rubric_visible_mm": _f(0.01, 0.99, doc="simulated rater: smallest error seen at full resolution (mm)"),
        "rubric_minor_share": _f(0.001, 1.0, doc="simulated rater: share with error > rubric_visible_mm that makes 'minor errors' (rating 2, else 3)"),
        "rater_gain_sd": _f(0.0, 2.0, doc="simulated rater: SD of the log of the per-item error-size misjudgement factor"),
        "rater_lapse": _f(0.0, 1.0, doc="simulated rater: probability that a rating slips one step up or down"),
        "zero_method": _s(("wilcox", "pratt", "zsplit"), doc="Wilcoxon treatment of zero differences (scipy zero_method)"),
        "wilcoxon_method": _s(("auto", "exact", "asymptotic"), doc="Wilcoxon p-value: exact, asymptotic (normal, tie-corrected) or auto"),
        "alpha": _f(1e-9, 0.5, doc="significance level of the Bonferroni-adjusted tests (paper: p < 0.001)"),
        "ratings_csv": _s(nullable=True, doc="ratings exported from the rating page; null: the simulated rater (twin only)"),
        "ratings_key": _s(nullable=True, doc="key.csv of the set that ratings_csv rates; null: this run's set"),
    },
    "training": {
        "arch": _s(("fpn", "unet"), doc="network: fpn (released code) or unet (paper text)"),
        "encoder": _s(doc="segmentation-models-pytorch encoder, e.g. resnet34"),
        "encoder_weights": _s(nullable=True, doc="local encoder weights file; null: random init (nothing downloaded)"),
        "input_size": _l(_i(32, 4096), length=2, doc="network input [h, w] in pixels (released: 256 x 256)"),
        "label_band_px": _i(1, 15, doc="label widened to a band this thick at the input size, px (released: 3)"),
        "norm_mean": _f(0, 1, nullable=True, doc="normalisation mean of [0, 1] intensities; null: from training frames"),
        "norm_std": _f(1e-6, 1, nullable=True, doc="normalisation std of [0, 1] intensities; null: from training frames"),
        "train_specimens": _l(_s(), nullable=True, doc="training specimens (names or numbers); null: automatic"),
        "val_specimens": _l(_s(), nullable=True, doc="validation specimens; null: automatic (one)"),
        "test_specimens": _l(_s(), nullable=True, doc="test specimens; null: automatic (3/14 of them)"),
        "n_folds": _i(1, 20, doc="cross-validation folds over train+val specimens; 1: the plain split"),
        "memory_budget_mb": _f(0.001, 10**7, doc="memory for the training frames decoded at input_size (3 bytes per pixel: image, band, label), MiB: every labelled frame of the training specimens when they fit, else an evenly spaced subset that fits (the metrics give used of labelled)"),
        "max_val_frames_per_specimen": _i(1, nullable=True, doc="validation frames kept per specimen, evenly spaced (validated every epoch, held in memory beside the training frames); null: all"),
        "augment": _b(doc="geometric (image and label) and photometric (image) augmentation"),
        "epochs": _i(1, 10000, doc="training epochs (paper: 100)"),
        "samples_per_epoch": _i(1, 10**9, nullable=True, doc="frames an epoch draws from the training frames, seeded by seed and epoch (no frame twice before each once): the compute per epoch, whatever the number of frames; null: every frame once (the paper)"),
        "batch_size": _i(1, 4096, doc="frames per batch and device (paper: 32)"),
        "optimizer": _s(("adam", "adamw"), doc="adam (paper) or adamw (released); betas (0.9, 0.999)"),
        "lr": _f(1e-8, 1.0, doc="initial learning rate (paper: 1e-5)"),
        "weight_decay": _f(0, 1.0, doc="weight decay"),
        "lr_step_epochs": _i(1, 10000, doc="learning-rate step every this many epochs (paper: 10)"),
        "lr_gamma": _f(0.01, 1.0, doc="learning-rate factor per step (paper: 0.9; released: 0.8)"),
        "dice_weight": _f(0, 100, doc="Dice loss weight (paper: 1)"),
        "bce_weight": _f(0, 100, doc="binary cross-entropy weight (paper: 1)"),
        "tv_weight": _f(0, 100, doc="total-variation loss weight (RSN-U-net: 0.4; 0: off)"),
        "skeleton_weight": _f(0, 100, doc="soft-skeleton (clDice) loss weight (released: 0.1; 0: off)"),
        "threshold": _f(0.01, 0.99, doc="probability threshold of a bone pixel"),
        "f1_sigma_mm": _f(0.01, 10, doc="distance threshold of the validation F1, mm (paper: 0.5)"),
        "accelerator": _s(("auto", "cpu", "gpu"), doc="auto: GPU when present"),
        "devices": _i(1, 1024, nullable=True, doc="devices (GPUs: DDP when > 1); null: all GPUs, or 1 CPU"),
        "precision": _s(("auto", "32-true", "bf16-mixed", "16-mixed"), doc="auto: bf16-mixed on GPU, 32-true on CPU"),
        "deterministic": _b(doc="deterministic algorithms (warn only on GPU, where upsampling has none)"),
        "num_workers": _i(0, 64, doc="DataLoader worker processes (0: in the main process)"),
        "threads": _i(1, 1024, nullable=True, doc="torch CPU threads; null: torch's default"),
        "resume": _b(doc="resume from the last checkpoint of a run with the same parameters"),
        "expect_learning": _b(doc="assert that validation F1 beats both baselines (off for smoke: too short to learn)"),
        "mode": _s(("train", "evaluate", "auto", "finetune"), doc="train: a model from scratch on the data's split; evaluate: the init_checkpoint model (e.g. twin-trained) on every labelled frame of the data, no training; auto: evaluate when the data has too few specimens to split, else train; finetune: init_checkpoint trained further on the earlier frames of each sweep and scored before and after on the later ones (segmentation.finetune)"),
        "init_checkpoint": _s(nullable=True, doc="checkpoint evaluated by mode evaluate, or fine-tuned by mode finetune (e.g. the twin's build/default/models/best.ckpt); a path, relative to where the command ran"),
        "finetune_test_fraction": _f(0.01, 0.99, doc="mode finetune: share of each sweep's tracking rows, at its end, that test (0.25: the later 50 of 200)"),
        "finetune_gap_frames": _i(0, 100000, doc="mode finetune: tracking rows left out between the training and the test frames"),
        "finetune_epochs": _i(1, 10000, doc="mode finetune: epochs over the training frames"),
        "finetune_lr": _f(1e-9, 1.0, doc="mode finetune: Adam learning rate"),
    },
    "evaluation": {
        "sigmas_mm": _l(_f(0.0, 100.0), doc="distance thresholds sigma of Eqs. 4-5, strictly increasing (mm)"),
        "report_sigma_mm": _f(0.0, 100.0, doc="threshold of the table and headline metrics; one of sigmas_mm (mm)"),
        "max_frames": _i(1, 10**7, nullable=True, doc="test frames evaluated, drawn with seed (paper: 700); null: all"),
        "checkpoint": _s(nullable=True, doc="checkpoint to evaluate (e.g. a converted released model); null: models/best.ckpt"),
        "predict_scope": _s(("evaluated", "test_specimens"), doc="frames segmented into Labels_pred/: the evaluated ones, or every labelled test frame (for 06)"),
        "n_examples": _i(1, 12, doc="rows of Fig. 6a (example frames)"),
        "annotator_visible_quantile": _f(0.0, 1.0, doc="simulated annotator: grey-level quantile of the frame a visible echo exceeds"),
        "annotator_visible_contrast": _f(0.0, 100.0, doc="simulated annotator: least ratio of a visible echo to the frame's median grey level"),
        "annotator_visible_fraction": _f(0.0, 1.0, doc="simulated annotator: least share of the frame's brightest contour echo"),
        "annotator_smooth_mm": _f(0.0, 10.0, doc="simulated annotator: image smoothing before judging brightness (mm)"),
        "annotator_search_mm": _f(0.0, 10.0, doc="simulated annotator: depth range each side where the echo is looked for (mm)"),
        "annotator_gap_mm": _f(0.0, 50.0, doc="simulated annotator: dim stretches shorter than this are traced through (mm)"),
        "annotator_min_length_mm": _f(0.0, 100.0, doc="simulated annotator: visible stretches shorter than this are not marked (mm)"),
        "annotator_jitter_mm": _f(0.0, 10.0, doc="simulated annotator: std of the hand-tracing displacement (mm)"),
        "annotator_jitter_corr_mm": _f(0.0, 100.0, doc="simulated annotator: correlation length of that displacement (mm)"),
        "annotator_brush_mm": _f(0.0, 10.0, doc="simulated annotator: width of the drawn stroke (mm)"),
        "annotator_sweep_quantiles": _l(_f(0.0, 1.0), doc="simulated annotator sensitivity study: visible_quantile of each level (twin only; as long as annotator_sweep_fractions)"),
        "annotator_sweep_fractions": _l(_f(0.0, 1.0), doc="simulated annotator sensitivity study: visible_fraction of each level (as long as annotator_sweep_quantiles)"),
        "annotator_sweep_contrasts": _l(_f(0.0, 100.0), doc="simulated annotator sensitivity study: visible_contrast of each level (as long as annotator_sweep_quantiles; one level is the lenient 0, 0, 0)"),
        "detector_fit_frames": _i(5, 10**7, doc="shadow-peak detector: training-specimen frames its parameters are fitted on (drawn with seed)"),
        "detector_enhancements": _l(_s(("intensity", "phase_symmetry")), doc="shadow-peak detector: bright-echo terms the fit chooses among (intensity, phase_symmetry)"),
        "surface_band_mm": _f(0.01, 10.0, nullable=True, doc="the model's masks: per scan line, the peaks of its probability map widened to a band this thick (the labels' 2 gamma, mm); null: the thresholded map (the paper's)"),
    },
    "reconstruction": {
        "sources": _l(_s(("labels", "predicted")), doc="label sources of the grid: CT-derived Labels/, model Labels_pred/"),
        "pose_methods": _l(_s(("original", "optimized")), doc="poses of the grid: recorded (original) and optimised"),
        "voxel_mm": _f(0.01, 10.0, doc="voxel edge of the point-cloud downsampling (mm)"),
        "frame_step": _i(1, 10000, doc="use every n-th labelled frame (1: all)"),
        "surface_sample_mm": _f(0.05, 10.0, doc="spacing of CT surface samples for coverage and Chamfer (mm)"),
        "visibility_gamma_mm": _f(0.01, 5.0, doc="a surface sample within this of an image plane is swept (mm)"),
        "max_incidence_deg": _f(0.0, 90.0, doc="largest incidence angle of a visible surface sample (degrees)"),
        "coverage_mm": _f(0.01, 10.0, doc="a visible sample within this of the reconstruction is covered (mm)"),
        "save_ply": _b(doc="write the point clouds as PLY (build/<profile>/cache/06_reconstruction/point_clouds)"),
        "render": _s(("open3d", "matplotlib"), doc="renderer of the 3D figure; open3d falls back to matplotlib"),
    },
    "summary": {
        "require_all": _b(doc="fail if a headline number is missing from the stages' metrics"),
        "gallery": _l(_s(), doc="figure names (without extension) shown in the gallery, in order"),
    },
}

#: Notebook stem -> profile section.
NOTEBOOKS: dict[str, str] = {
    "00_simulate": "simulate",
    "01_calibration": "calibration",
    "02_labeling": "labeling",
    "03_rating_statistics": "rating",
    "04_training": "training",
    "05_evaluation": "evaluation",
    "06_reconstruction": "reconstruction",
    "07_summary": "summary",
}

#: Stages that work specimen by specimen (``make specimen`` reruns these).
PER_SPECIMEN = ("00_simulate", "01_calibration", "02_labeling", "06_reconstruction")

#: Path-valued keys: section (None: common) -> keys. Relative values are read
#: from the directory where the command ran and ``~`` expands
#: (:func:`resolve_paths`), because papermill runs notebooks in ``notebooks/``.
PATH_KEYS: dict[str | None, tuple[str, ...]] = {
    None: ("data_root", "derived_root"),
    "simulate": ("real_frames_dir",),
    "rating": ("ratings_csv", "ratings_key"),
    "training": ("encoder_weights", "init_checkpoint"),
    "evaluation": ("checkpoint",),
}


def resolve_path(value: str | None, base: Path | str) -> str | None:
    """An absolute path for a user-given one: ``~`` expanded, a relative one joined to ``base``.

    Symbolic links are kept as given (``os.path.normpath``, not ``resolve``);
    None stays None.
    """
    if value is None:
        return None
    p = Path(os.path.expanduser(str(value)))
    if not p.is_absolute():
        p = Path(base) / p
    return os.path.normpath(str(p))


def resolve_paths(values: Mapping, base: Path | str, sections_only: bool = False) -> dict:
    """A copy of validated ``values`` with every key of :data:`PATH_KEYS` made absolute.

    Parameters
    ----------
    values : a validated profile (common keys and sections) or, with
        ``sections_only``, a specimen override (sections only, any subset).
    base : the directory relative paths are read from (the command's cwd).
    """
    out = copy.deepcopy(dict(values))
    for section, keys in PATH_KEYS.items():
        if section is None:
            if sections_only:
                continue
            target = out
        else:
            target = out.get(section)
            if not isinstance(target, dict):
                continue
        for k in keys:
            if k in target and isinstance(target[k], str):
                target[k] = resolve_path(target[k], base)
    return out


def profile_name(path: Path | str, params_dir: Path | str) -> str:
    """The build-folder name of a profile file.

    ``params/<name>.yaml`` gives ``<name>``; a file elsewhere gives
    ``<stem>-<8 hex digits of the SHA-256 of its absolute path>``, so that
    ``--profile /elsewhere/smoke.yaml`` never writes over ``build/smoke``
    (or over ``figures/`` for a foreign ``default.yaml``).
    """
    path = Path(os.path.abspath(os.path.expanduser(str(path))))
    if path.parent == Path(os.path.abspath(params_dir)):
        return path.stem
    return f"{path.stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one YAML mapping (``line`` is 1-based)."""

    def __init__(self, key: Any, line: int, first_line: int, mark):
        super().__init__(None, None, f"duplicate key {key!r} (first given on line {first_line})", mark)
        self.key, self.line, self.first_line = key, line, first_line


class StrictLoader(yaml.SafeLoader):
    """A ``yaml.SafeLoader`` that refuses a key repeated within one mapping.

    PyYAML keeps the last of two equal keys silently; a profile with
    ``gamma_mm`` written twice in one section would run with whichever came
    last. Raises :class:`DuplicateKeyError` naming the key and both lines.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # the base class reports unhashable keys
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise DuplicateKeyError(key, line, seen[key], key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str, where: str = "<string>") -> Any:
    """Parse YAML text with :class:`StrictLoader`.

    Raises
    ------
    ParamsError
        Naming ``where``, the line and the key of a duplicate key, or the
        parser's message for malformed YAML.
    """
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as exc:
        raise ParamsError(
            f"{where} line {exc.line}: duplicate key {exc.key!r} (first given on line {exc.first_line});"
            " each key may appear once per section"
        ) from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{where}: not valid YAML: {exc}") from None


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping, with a clear error for a missing or malformed file or a duplicate key."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameter file not found")
    data = load_yaml_text(path.read_text(), str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return data


EXTENDS_KEY = "extends"


def profile_path(name: str, params_dir: Path, relative_to: Path | None = None) -> Path:
    """The file of a profile named ``name`` (``params/<name>.yaml``) or given as a path to a YAML file."""
    if name.endswith((".yaml", ".yml")):
        path = Path(os.path.expanduser(name))
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
        return path
    return Path(params_dir) / f"{name}.yaml"


def _merge_into(target: dict, values: Mapping, origins: dict, source: str) -> None:
    """Overlay one profile file's ``values`` on ``target``: sections key by key, common keys whole."""
    for key, value in values.items():
        if key in SCHEMA and value is None:
            continue  # an empty section: the base's stands
        if key in SCHEMA and isinstance(value, Mapping):
            section = target.setdefault(key, {})
            if not isinstance(section, dict):
                section = target[key] = {}
            for sub, v in value.items():
                section[sub] = copy.deepcopy(v)
                origins[f"{key}.{sub}"] = source
        else:
            target[key] = copy.deepcopy(value)
            origins[key] = source


def resolve_profile_files(path: Path | str, params_dir: Path | str) -> tuple[dict, dict[str, str], list[Path]]:
    """Read a profile and the chain of profiles it ``extends``, merged, before validation.

    A profile may start with ``extends: <name>`` (another profile of ``params_dir``, or a path to a YAML file,
    relative to the file that names it) and then give only the keys whose values differ: a section's keys are
    overlaid one by one on the base's section, a common key replaces the base's.

    Parameters
    ----------
    path : the profile's file.
    params_dir : the ``params/`` folder, where named bases are looked up.

    Returns
    -------
    values : the merged profile (not yet validated).
    origins : ``"<section>.<key>"`` or ``"<common key>"`` -> the file that gave its value.
    files : the chain's files, the base first.

    Raises
    ------
    ParamsError
        For a missing base, a cycle (naming the chain) or an ``extends`` that is not a string.
    """
    chain: list[Path] = []
    raw: list[dict] = []
    current: Path | None = Path(path)
    while current is not None:
        current = Path(os.path.abspath(current))
        if current in chain:
            names = " -> ".join(str(p) for p in [*chain, current])
            raise ParamsError(f"{chain[0]}: 'extends' makes a cycle: {names}")
        data = dict(read_yaml(current))
        base = data.pop(EXTENDS_KEY, None)
        _validate_partial(data, str(current))  # a bad key or value is named with the file that gives it
        chain.append(current)
        raw.append(data)
        if base is None:
            current = None
        elif not isinstance(base, str) or not base.strip():
            raise ParamsError(f"{current}: 'extends' must name a profile (e.g. extends: default), got {base!r}")
        else:
            current = profile_path(base.strip(), Path(params_dir), relative_to=current.parent)
            if not current.is_file():
                raise ParamsError(f"{chain[-1]}: extends {base!r}, but {current} does not exist")
    merged: dict = {}
    origins: dict[str, str] = {}
    for file, data in zip(reversed(chain), reversed(raw)):
        _merge_into(merged, data, origins, str(file))
    return merged, origins, list(reversed(chain))


def _validate_partial(data: Mapping, where: str) -> None:
    """Check one file of a profile chain: known keys, valid values, any subset of them."""
    for key, value in data.items():
        if key in SCHEMA:
            validate_section(key, value if value is not None else {}, where, partial=True)
        elif key in COMMON:
            COMMON[key].check(value, f"{where}: {key}")
        else:
            raise ParamsError(
                f"{where}: unknown key '{key}' (known: {', '.join(sorted(COMMON) + sorted(SCHEMA))}, {EXTENDS_KEY})"
            )


def resolved_profile(name: str, params_dir: Path | str | None = None) -> dict:
    """A profile's validated values, its ``extends`` chain merged, paths as written (for tests and tools).

    Parameters
    ----------
    name : profile name (``params/<name>.yaml``) or a path to a YAML file.
    params_dir : the ``params/`` folder (default: the project's).
    """
    params_dir = PARAMS_DIR if params_dir is None else params_dir
    path = profile_path(name, Path(params_dir))
    merged, _, files = resolve_profile_files(path, params_dir)
    return validate_profile(merged, _chain_name(files))


def _chain_name(files: list[Path]) -> str:
    """``smoke.yaml`` for one file, ``/.../smoke.yaml (extends default.yaml)`` for a chain: where messages point."""
    top = str(files[-1])
    if len(files) == 1:
        return top
    return f"{top} (extends {' <- '.join(f.name for f in files[:-1])})"


def explain_profile(name: str, params_dir: Path | str) -> str:
    """Every key of a profile with its value and the file that gave it (``ultrabones params --explain``)."""
    path = profile_path(name, Path(params_dir))
    merged, origins, files = resolve_profile_files(path, params_dir)
    values = validate_profile(merged, _chain_name(files))
    lines = [f"# {path.name}: " + " <- ".join(f.name for f in reversed(files))]
    width = max(len(k) for k in origins)
    for key in list(COMMON) + [s for s in SCHEMA]:
        if key in SCHEMA:
            for sub in SCHEMA[key]:
                full = f"{key}.{sub}"
                lines.append(f"{full:<{width}}  {values[key][sub]!r}  [{Path(origins[full]).name}]")
        else:
            lines.append(f"{key:<{width}}  {values[key]!r}  [{Path(origins[key]).name}]")
    return "\n".join(lines)


def validate_section(section: str, values: Mapping, where: str, partial: bool = False) -> dict:
    """Validate one section's keys.

    Parameters
    ----------
    section : section name, a key of :data:`SCHEMA`.
    values : the section's mapping.
    where : file name used in messages.
    partial : allow missing keys (overrides).
    """
    schema = SCHEMA[section]
    if not isinstance(values, Mapping):
        raise ParamsError(f"{where}: section '{section}' must be a mapping")
    out = {}
    for key, value in values.items():
        if key not in schema:
            raise ParamsError(
                f"{where}: unknown key '{section}.{key}' (known: {', '.join(sorted(schema)) or 'none'})"
            )
        out[key] = schema[key].check(value, f"{where}: {section}.{key}")
    if not partial:
        missing = sorted(set(schema) - set(out))
        if missing:
            raise ParamsError(f"{where}: section '{section}' lacks key(s) {', '.join(missing)}")
    return out


class SectionParams:
    """Base of a stage's parameters: a frozen dataclass with one typed field per key of its section ``SECTION``.

    Construction, and so ``dataclasses.replace``, validates every value (:func:`validate_section`); lists
    become tuples. :meth:`from_section` builds it from the profile's section, :meth:`for_specimen` applies a
    specimen's overrides, :meth:`as_dict` gives the section back as plain data (tuples as lists, in the fields'
    order): what cache keys and provenance hash.
    """

    SECTION: ClassVar[str]

    def __post_init__(self):
        for name, value in validate_section(self.SECTION, self.as_dict(), type(self).__name__).items():
            object.__setattr__(self, name, tuple(value) if isinstance(value, list) else value)

    @classmethod
    def from_section(cls, section: Mapping[str, Any], where: str | None = None):
        """From the profile's section, every key (e.g. ``params.collect(globals(), stem)``).

        Raises
        ------
        ParamsError
            Naming the key (``<section>.<key>``) of an unknown, missing or invalid value.
        """
        return cls(**validate_section(cls.SECTION, section, where or f"{cls.SECTION} section"))

    def for_specimen(self, specimen_overrides: Mapping | None, specimen: str):
        """These parameters with a specimen's overrides (``params/specimens/<id>.yaml``) applied, validated."""
        over = dict((specimen_overrides or {}).get(specimen, {}))
        return dataclasses.replace(self, **validate_section(self.SECTION, over, f"{specimen} overrides",
                                                            partial=True))

    def as_dict(self) -> dict[str, Any]:
        """The section as plain data (tuples as lists), in the fields' order."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}


def validate_profile(data: Mapping, where: str) -> dict:
    """Validate a whole profile: common keys and every section, nothing unknown."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in SCHEMA:
            out[key] = validate_section(key, value if value is not None else {}, where)
        elif key in COMMON:
            out[key] = COMMON[key].check(value, f"{where}: {key}")
        else:
            raise ParamsError(
                f"{where}: unknown key '{key}' (known: {', '.join(sorted(COMMON) + sorted(SCHEMA))})"
            )
    missing = sorted((set(COMMON) | set(SCHEMA)) - set(out))
    if missing:
        raise ParamsError(f"{where}: missing key(s) {', '.join(missing)}")
    return out


def validate_override(data: Mapping, where: str) -> dict:
    """Validate a per-specimen override file: known sections, known keys, any subset."""
    out = {}
    for key, value in data.items():
        if key not in SCHEMA:
            raise ParamsError(
                f"{where}: unknown section '{key}' (a specimen file may set: {', '.join(SCHEMA)})"
            )
        out[key] = validate_section(key, value or {}, where, partial=True)
    return out


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse a command-line ``key=value`` (value read as YAML)."""
    if "=" not in text:
        raise ParamsError(f"-p {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    if not raw.strip():  # YAML reads an empty value as null, which would silently mean "no limit" for some keys
        raise ParamsError(f"-p {text!r}: empty value for '{key.strip()}'; give a value, or write "
                          f"{key.strip()}=null where null is meant")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


@dataclass
class Profile:
    """A validated profile and its per-specimen overrides."""

    name: str
    values: dict
    overrides: dict  # specimen id -> validated override sections
    source: Path
    specimen: str | None = None

    def notebook_parameters(self, stem: str) -> dict:
        """Common keys, this notebook's section, and its per-specimen overrides."""
        section = NOTEBOOKS[stem]
        params = {k: copy.deepcopy(self.values[k]) for k in COMMON}
        params.update(copy.deepcopy(self.values[section]))
        params["specimen"] = self.specimen
        params["specimen_overrides"] = {
            spec: copy.deepcopy(ov[section]) for spec, ov in self.overrides.items() if section in ov
        }
        return params


def load_profile(
    name: str,
    params_dir: Path,
    assignments: list[str] | None = None,
    specimen: str | None = None,
    section_hint: str | None = None,
    cwd: Path | str | None = None,
) -> Profile:
    """Load, validate and merge a profile.

    Parameters
    ----------
    name : profile name (``params/<name>.yaml``) or a path to a YAML file.
    params_dir : the ``params/`` folder.
    assignments : ``key=value`` overrides; ``section.key`` or, with
        ``section_hint``, a bare key of that section or a common key.
    specimen : process only this specimen (``make specimen``); it must be
        one of ``specimens`` when that list is given.
    section_hint : the section a bare key belongs to.
    cwd : the directory where the command ran (default: the current one).
        Path-valued keys (:data:`PATH_KEYS`) given relative, in the profile,
        a specimen file or ``-p``, are read from here, and ``~`` expands.

    A profile file outside ``params_dir`` is named by :func:`profile_name`
    (``<stem>-<hash>``), so that it gets its own build folder.
    """
    params_dir = Path(params_dir)
    base = Path(cwd) if cwd is not None else Path.cwd()
    path = profile_path(name, params_dir)
    merged, _, files = resolve_profile_files(path, params_dir)
    values = validate_profile(merged, _chain_name(files))
    for text in assignments or []:
        key, value = parse_assignment(text)
        if "." in key:
            section, sub = key.split(".", 1)
        elif key in COMMON:
            section, sub = None, key
        elif section_hint is not None:
            section, sub = section_hint, key
        else:
            raise ParamsError(f"-p {text}: give the key as section.key")
        if section is None:
            values[sub] = COMMON[sub].check(value, f"-p {key}")
        else:
            if section not in SCHEMA:
                raise ParamsError(f"-p {text}: unknown section '{section}'")
            values[section].update(validate_section(section, {sub: value}, "-p", partial=True))
    overrides = {}
    spec_dir = params_dir / "specimens"
    if spec_dir.is_dir():
        for f in sorted(spec_dir.glob("*.yaml")):
            overrides[f.stem] = validate_override(read_yaml(f), str(f))
    if specimen is not None and values["specimens"] is not None and specimen not in values["specimens"]:
        raise ParamsError(f"{path}: specimen {specimen!r} is not in specimens {values['specimens']}")
    values = resolve_paths(values, base)
    overrides = {k: resolve_paths(v, base, sections_only=True) for k, v in overrides.items()}
    return Profile(name=profile_name(path, params_dir), values=values, overrides=overrides, source=path,
                   specimen=specimen)


def for_specimen(section_params: Mapping, specimen_overrides: Mapping, specimen: str) -> dict:
    """A section's parameters for one specimen: the profile's, then its override file's."""
    out = dict(section_params)
    out.update(specimen_overrides.get(specimen, {}))
    return out


def collect(namespace: Mapping, stem: str) -> dict:
    """A notebook's section parameters gathered back from its namespace.

    Notebooks receive parameters as variables; ``collect(globals(), "02_labeling")``
    returns them as one validated dict to hand to the package.
    """
    section = NOTEBOOKS[stem]
    return validate_section(section, {k: namespace[k] for k in SCHEMA[section]}, f"notebook {stem}")
