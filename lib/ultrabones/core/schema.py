"""The parameters' schema: every key of a profile, its type, range and meaning, and which notebook reads which
section.

:data:`SCHEMA` (section -> key -> :class:`Spec`) and :data:`COMMON` (top-level keys) are what
:mod:`ultrabones.core.params` validates a profile against; :data:`NOTEBOOKS` maps each notebook to its section,
:data:`TWIN_KEYS` to the keys of the ``twin`` section (read only by the digital twin's code) it also receives and
:data:`MOVED_KEYS` names the keys that moved from a method's section into ``twin``; :data:`PER_SPECIMEN` names
the stages that work specimen by specimen and :data:`PATH_KEYS` the path-valued keys.
A new key is added here (and to ``params/default.yaml``, which gives every key).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ultrabones.core.errors import ParamsError


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
    "twin": {  # read only by the digital twin's code (ultrabones.twin): measurements, the rater, the annotator
        "surface_samples": _i(100, 10000000, doc="points sampled per mesh to measure surface distances on the twin"),
        "precision_tolerance_mm": _f(0.0, 10.0, doc="distance within which a visible-label pixel matches the truth (mm; issue: 0.5)"),
        "compare_objectives_frames": _i(0, 1000000, doc="after labelling, fit Eq. 2 (first_hit and full) and the released objective on at most this many frames and measure each one's delivered labels against the truth (notebook 02's twin section; labels.compare, twin.objectives); 0: off"),
        "rubric_large_share": _f(0.001, 1.0, doc="simulated rater: share of the contour with error > 3 mm that makes 'large sections' (rating 0)"),
        "rubric_some_share": _f(0.001, 1.0, doc="simulated rater: share with error > 1 mm that makes 'some sections' (rating 1)"),
        "rubric_visible_mm": _f(0.01, 0.99, doc="simulated rater: smallest error seen at full resolution (mm)"),
        "rubric_minor_share": _f(0.001, 1.0, doc="simulated rater: share with error > rubric_visible_mm that makes 'minor errors' (rating 2, else 3)"),
        "rater_gain_sd": _f(0.0, 2.0, doc="simulated rater: SD of the log of the per-item error-size misjudgement factor"),
        "rater_lapse": _f(0.0, 1.0, doc="simulated rater: probability that a rating slips one step up or down"),
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
        "warm_cold_every": _i(0, 100000, doc="solve every this-many-th labelled frame of a sweep (counted after frame_stride) cold with full differential evolution, restarting the warm chain; 0: never"),
        "registration_frames": _i(1, 100000, doc="frames per sweep used by the global-registration baseline"),
        "registration_bound_deg": _f(0.0, 30.0, doc="global registration search box, Euler angles about the sweep centre (degrees)"),
        "registration_bound_mm": _f(0.0, 100.0, doc="global registration search box, translation (mm)"),
        "registration_maxiter": _i(1, 10000, doc="differential evolution generations of the global registration"),
        "executor": _s(("dask", "synchronous"), doc="dask: a LocalCluster of n_workers (or dask_scheduler); synchronous: in process"),
        "device": _s(("auto", "cuda", "cpu"), nullable=True, doc="optimizer de: the torch device that optimises a chunk's frames together (labels.torch_objective; Eq. 2 and each frame's correction equal to numpy/scipy's); null: numpy/scipy, frame by frame; auto: cuda where torch sees a CUDA device, else null; cuda (stops if there is none); cpu (tests)"),
        "min_echo_level": _f(0, 1, doc="a frame whose brightest 1% of pixels average below this grey level (0..1 of full scale) carries no echo (a blank frame) and is skipped as no_echo; 0: off"),
    },
    "rating": {
        "frames_per_sweep": _i(1, 1000, doc="frames drawn per sweep for the rating set (paper: 1, 119 frames)"),
        "image_format": _s(("jpeg", "png"), doc="encoding of the items embedded in the rating page"),
        "jpeg_quality": _i(50, 100, doc="JPEG quality of the embedded items (4:4:4 chroma)"),
        "overlay_alpha": _f(0.0, 1.0, doc="opacity of the label colour over the image (0-1)"),
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
        "precision": _s(("auto", "32-true", "bf16-mixed", "16-mixed"), doc="auto: bf16-mixed on a GPU or an AMX CPU (channels-last there), else 32-true"),
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

#: Notebook stem -> the ``twin`` keys its twin-only cells read. The notebook receives them as one parameter,
#: ``twin`` (a dict of these keys; :meth:`ultrabones.core.params.Profile.notebook_parameters`), and builds
#: ``ultrabones.twin.params.TwinParams`` from it; the method's own sections never hold them.
TWIN_KEYS: dict[str, tuple[str, ...]] = {
    "01_calibration": ("surface_samples",),
    "02_labeling": ("precision_tolerance_mm", "compare_objectives_frames"),
    "03_rating_statistics": ("rubric_large_share", "rubric_some_share", "rubric_visible_mm", "rubric_minor_share",
                             "rater_gain_sd", "rater_lapse"),
    "05_evaluation": tuple(k for k in SCHEMA["twin"] if k.startswith("annotator_")),
}

#: ``<section>.<key>`` of a key that moved into the ``twin`` section -> its new name (``twin.<key>``): a profile,
#: a specimen file or ``-p`` that still names the old one fails with a message naming the new one.
MOVED_KEYS: dict[str, str] = {f"{NOTEBOOKS[stem]}.{k}": f"twin.{k}" for stem, keys in TWIN_KEYS.items() for k in keys}

#: Notebook stem -> the module holding its stage's contract (``Params``, ``Result``, ``run``, ``metrics``,
#: ``check``, ``figures``: docs/architecture.md, "The stage contract"; tests/test_stage_contract.py).
STAGE_MODULES: dict[str, str] = {
    "00_simulate": "ultrabones.twin.simulate",
    "01_calibration": "ultrabones.calibration.system",
    "02_labeling": "ultrabones.labels.batch",
    "03_rating_statistics": "ultrabones.rating.study",
    "04_training": "ultrabones.segmentation.training",
    "05_evaluation": "ultrabones.evaluation.benchmark",
    "06_reconstruction": "ultrabones.reconstruction.batch",
    "07_summary": "ultrabones.pipeline.summary",
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
