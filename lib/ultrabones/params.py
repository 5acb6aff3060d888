"""Parameter profiles: loading, merging and strict validation.

A profile (``params/<name>.yaml``) holds *common* keys at the top level and one
section per stage (``simulate``, ``calibration``, ...). A notebook receives the
common keys plus its own section's keys, flat, as papermill parameters; its
``parameters`` cell names exactly those keys (``tests/test_params.py`` checks).

Per-specimen overrides (``params/specimens/<id>.yaml``) hold sections only and
are merged over the profile for that specimen: notebooks receive them as
``specimen_overrides`` and call :func:`for_specimen`.

Every key is validated against :data:`SCHEMA`: an unknown key, a wrong type or
a value out of range raises :class:`~ultrabones.errors.ParamsError` naming the
file and the key. papermill only warns about unknown parameters, so this module
is the only guard.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ParamsError


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
    },
    "calibration": {},
    "labeling": {},
    "rating": {
        "frames_per_sweep": _i(1, 1000, doc="frames drawn per sweep for the rating set (paper: 1, 119 frames)"),
        "label_gamma_mm": _f(0.01, 5.0, doc="label half-width: image points within this distance (mm) of the CT surface (paper gamma 0.3)"),
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
        "max_frames_per_specimen": _i(1, nullable=True, doc="training frames kept per specimen (evenly spaced); null: all"),
        "max_val_frames_per_specimen": _i(1, nullable=True, doc="validation frames kept per specimen; null: all"),
        "augment": _b(doc="geometric (image and label) and photometric (image) augmentation"),
        "epochs": _i(1, 10000, doc="training epochs (paper: 100)"),
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
        "cache_max_mb": _i(0, 1_000_000, doc="keep decoded, resized frames in memory up to this size, MiB"),
        "threads": _i(1, 1024, nullable=True, doc="torch CPU threads; null: torch's default"),
        "resume": _b(doc="resume from the last checkpoint of a run with the same parameters"),
        "expect_learning": _b(doc="assert that validation F1 beats both baselines (off for smoke: too short to learn)"),
    },
    "evaluation": {},
    "reconstruction": {},
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


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping, with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameter file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return data


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
    """
    params_dir = Path(params_dir)
    path = Path(name) if name.endswith((".yaml", ".yml")) else params_dir / f"{name}.yaml"
    values = validate_profile(read_yaml(path), str(path))
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
    return Profile(name=path.stem, values=values, overrides=overrides, source=path, specimen=specimen)


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
