"""Reading and writing the released UltraBones100k layouts, validated on read.

Layout A (first release; the digital twin writes this one)::

    <root>/<specimen>/CT_bone_model.stl
    <root>/<specimen>/<record>/UltrasoundImages/<timestamp>.png
    <root>/<specimen>/<record>/Labels/<timestamp>_label.png        (visible label)
    <root>/<specimen>/<record>/Labels_full/<timestamp>_label.png   (whole CT contour)
    <root>/<specimen>/<record>/tracking.csv

Layout B (newer release)::

    <root>/<specimen>/ultrasound_records/{tibia,fibula,foot}/<record>/...   (as above)
    <root>/<specimen>/CT_bone_segmentations/{tibia,fibula,foot,CT_bone_model_merged}.stl

``tracking.csv``: ``timestamp`` (integer ms), ``x, y, z`` (mm), ``euler_x,
euler_y, euler_z`` (degrees, extrinsic xyz), optionally the same six with suffix
``_optimized`` and ``space_factor`` (mm per pixel). The pose is the probe marker
in CT space, synchronised with the images.

Input and derived folders
-------------------------
The input dataset (images, ``tracking.csv`` with the recorded poses, CT
models) is read-only to the method. What the stages make (``tracking.csv``
with the ``*_optimized`` / ``*_registered`` columns, ``Labels/``,
``Labels_full/``, ``Labels_pred/``, ``labeling_report.csv``, a simulated
``LabelsManual/``) goes to a *derived* dataset of the same layout
(``Paths.derived``). :func:`scan`, :func:`discover` and :func:`read_specimen`
take the derived root and give every :class:`Record` both folders:
``record.path`` (input) and ``record.out`` (derived); :meth:`Record.label_path`
and :attr:`Record.poses_csv` resolve to the right one. Without a derived root,
both are the input folder (a dataset that ships its labels, as the released one).

Layout C (PLUS / 3D Slicer sequence files, :mod:`ultrabones.core.sequence`)::

    <root>/<specimen>/<record>.igs.mha     (or .seq.mha, .mha, .mhd + .raw/.zraw, .seq.nrrd, .nrrd)
    <root>/<specimen>/CT_bone_model.stl
    <root>/<specimen>/recording.yaml       (the transform chain: image -> probe -> ... -> CT)

or the specimen folder itself as the root. A record is one sequence file
(``record.path``); its frames and poses are read from it through
:meth:`Record.read_image` and :meth:`Record.read_tracking`, which every stage
uses for all layouts: nothing is converted on disk (``python -m ultrabones
convert`` does that on request). The derived dataset is layout A either way.

Every reader raises :class:`~ultrabones.core.errors.DatasetError` with the file (and
row, column or pixel value) named; every writer is atomic.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from ultrabones.core import atomic, sequence
from ultrabones.core.errors import DatasetError
from ultrabones.core.geometry import POSE_COLUMNS, params_from_pose, pose_from_params
from ultrabones.core.recording import read_recording

IMAGES = "UltrasoundImages"
LABELS = "Labels"
LABELS_FULL = "Labels_full"
LABELS_PRED = "Labels_pred"
LABELS_MANUAL = "LabelsManual"
TRACKING = "tracking.csv"
OPTIMIZED_COLUMNS = tuple(f"{c}_optimized" for c in POSE_COLUMNS)
#: The global-registration baseline's poses (this project's addition to the format).
REGISTERED_COLUMNS = tuple(f"{c}_registered" for c in POSE_COLUMNS)
CALIBRATION = "calibration.json"
BONES = ("tibia", "fibula", "foot")

_LABEL_SUFFIX = {LABELS: "_label", LABELS_FULL: "_label", LABELS_MANUAL: "_label", LABELS_PRED: "_label_pred"}


@dataclass(frozen=True)
class Record:
    """One tracked sweep.

    Attributes
    ----------
    specimen : specimen folder name.
    name : record folder name, e.g. ``record01``.
    path : the record folder of the input dataset (images, recorded poses).
    bone : ``tibia``, ``fibula`` or ``foot`` in layout B, else None.
    derived : the record's folder in the derived dataset (labels, optimised
        poses, reports), or None: the input folder itself.
    recording : layout C only: the folder of the ``recording.yaml`` that says how
        to read ``path``, the record's sequence file; None for layouts A and B.
    """

    specimen: str
    name: str
    path: Path
    bone: str | None = None
    derived: Path | None = None
    recording: Path | None = None

    @property
    def is_sequence(self) -> bool:
        """Whether the record is a sequence file (layout C)."""
        return self.recording is not None

    def header(self) -> "sequence.SequenceHeader":
        """Layout C: the sequence file's validated header (frames kept, poses, pixel size)."""
        if not self.is_sequence:
            raise DatasetError(f"{self.path}: a layout {'B' if self.bone else 'A'} record has no sequence file")
        return sequence.read_header(self.path, self.recording)

    @property
    def out(self) -> Path:
        """The folder the stages' products of this record live in (derived, else the input folder)."""
        return self.derived if self.derived is not None else self.path

    @property
    def poses_csv(self) -> Path:
        """The ``tracking.csv`` with the optimised and registered poses (written by notebook 02 into :attr:`out`)."""
        return self.out / TRACKING

    def label_dir(self, kind: str = LABELS) -> Path:
        """The folder of labels of ``kind``.

        Labels the stages make are in :attr:`out`. ``LabelsManual/`` is read
        from the input when the dataset ships one (real manual labels), else
        from :attr:`out` (where the twin's simulated annotator writes).
        """
        if kind not in _LABEL_SUFFIX:
            raise ValueError(f"unknown label kind {kind!r}; one of {sorted(_LABEL_SUFFIX)}")
        if kind == LABELS_MANUAL and (self.path / kind).is_dir():
            return self.path / kind
        return self.out / kind

    @property
    def images_dir(self) -> Path:
        if self.is_sequence:
            raise DatasetError(f"{self.path}: a sequence file has no {IMAGES}/ folder (use Record.read_image)")
        return self.path / IMAGES

    @property
    def tracking_csv(self) -> Path:
        if self.is_sequence:
            raise DatasetError(f"{self.path}: a sequence file has no {TRACKING} (use Record.read_tracking)")
        return self.path / TRACKING

    @property
    def tracking_source(self) -> Path:
        """The file the recorded poses are read from: ``tracking.csv``, or the sequence file."""
        return self.path if self.is_sequence else self.path / TRACKING

    def read_tracking(self, allow_missing_pose: bool = False) -> pd.DataFrame:
        """The recorded poses as a tracking table (``timestamp`` and the six pose columns).

        Layouts A/B: :func:`read_tracking` of ``tracking.csv``. Layout C: the
        kept frames of the sequence file, the pose chain of ``recording.yaml``
        as ``x, y, z, euler_x, euler_y, euler_z``.
        """
        if not self.is_sequence:
            return read_tracking(self.tracking_csv, allow_missing_pose=allow_missing_pose)
        head = self.header()
        df = pd.DataFrame(params_from_pose(head.poses).reshape(-1, 6), columns=list(POSE_COLUMNS))
        df.insert(0, "timestamp", head.timestamps.astype(np.int64))
        return df

    def read_image(self, timestamp: int) -> np.ndarray:
        """The B-mode frame at ``timestamp`` (ms) as a (H, W) uint8 array (all layouts)."""
        if not self.is_sequence:
            return read_image(self.image_path(timestamp))
        head = self.header()
        i = np.searchsorted(head.timestamps, int(timestamp))
        if i >= len(head.timestamps) or head.timestamps[i] != int(timestamp):
            raise DatasetError(f"{self.path}: no kept frame at timestamp {int(timestamp)} ms")
        return sequence.read_frame(head, int(head.index[i]))

    def image_shape(self, timestamp: int) -> tuple[int, int]:
        """(H, W) of the frame at ``timestamp`` without decoding it where the layout allows."""
        if self.is_sequence:
            head = self.header()
            return head.height, head.width
        with Image.open(self.image_path(timestamp)) as im:
            return im.size[1], im.size[0]

    def input_files(self, timestamps=None) -> list[Path]:
        """The input files the frames at ``timestamps`` (all when None) are read from, for cache keys.

        Layouts A/B: the image PNGs. Layout C: the sequence file (and its data
        file), the record's ``recording.yaml`` and the matrix files it names.
        """
        if self.is_sequence:
            return sequence.data_files(self.path) + list(read_recording(self.recording).sources)
        ts = self.timestamps() if timestamps is None else timestamps
        return [self.image_path(int(t)) for t in ts]

    @property
    def key(self) -> str:
        """``specimen/record`` (with the bone in layout B): unique within a dataset."""
        return "/".join(p for p in (self.specimen, self.bone, self.name) if p)

    def image_path(self, timestamp: int) -> Path:
        """The image PNG at ``timestamp`` (layouts A and B; layout C raises: see :meth:`read_image`)."""
        return self.images_dir / f"{int(timestamp)}.png"

    def label_path(self, timestamp: int, kind: str = LABELS) -> Path:
        """Path of a label PNG of kind ``Labels``, ``Labels_full``, ``Labels_pred`` or ``LabelsManual``."""
        return self.label_dir(kind) / f"{int(timestamp)}{_LABEL_SUFFIX[kind]}.png"

    def timestamps(self) -> np.ndarray:
        """Image timestamps (ms) found in ``UltrasoundImages/`` (layout C: the kept frames), sorted."""
        if self.is_sequence:
            return self.header().timestamps.copy()
        return image_timestamps(self.images_dir)

    def labelled_timestamps(self, kind: str = LABELS) -> np.ndarray:
        """Timestamps that have a label of ``kind``, sorted."""
        folder = self.label_dir(kind)
        if not folder.is_dir():
            return np.zeros(0, dtype=np.int64)
        suffix = _LABEL_SUFFIX[kind]
        pat = re.compile(rf"^(\d+){re.escape(suffix)}\.png$")
        ts = [int(m.group(1)) for f in folder.iterdir() if (m := pat.match(f.name))]
        return np.array(sorted(ts), dtype=np.int64)


@dataclass(frozen=True)
class Frame:
    """One frame of a record: the record and the image's timestamp (ms).

    The one frame type of the package: training, evaluation and the twin's
    measurements list frames of a dataset as these.

    Attributes
    ----------
    record : the frame's :class:`Record`.
    timestamp : the image's timestamp (ms), its file name in ``UltrasoundImages/``.
    """

    record: Record
    timestamp: int

    @property
    def specimen(self) -> str:
        return self.record.specimen

    @property
    def key(self) -> str:
        """``specimen/record/timestamp``: unique within a dataset."""
        return f"{self.record.key}/{self.timestamp}"

    @property
    def image(self) -> Path:
        """The image PNG (layouts A and B)."""
        return self.record.image_path(self.timestamp)

    def read_image(self) -> np.ndarray:
        """The frame as a (H, W) uint8 array (all layouts)."""
        return self.record.read_image(self.timestamp)

    @property
    def label(self) -> Path:
        """The visible label PNG (``Labels/``)."""
        return self.record.label_path(self.timestamp)


@dataclass(frozen=True)
class Specimen:
    """One specimen: its records and CT bone model(s).

    Attributes
    ----------
    name : folder name, e.g. ``specimen01`` or ``cadaver01_F231091``.
    path : the specimen folder.
    layout : ``"A"``, ``"B"`` or ``"C"`` (sequence files).
    records : the specimen's records, sorted.
    ct_models : bone name -> STL path; ``"merged"`` is the whole bone model.
    skipped : folders inside the specimen that are not records (see :class:`Skipped`).
    derived : the specimen's folder in the derived dataset, or None.
    """

    name: str
    path: Path
    layout: str
    records: tuple[Record, ...] = field(default_factory=tuple)
    ct_models: dict = field(default_factory=dict)
    skipped: tuple["Skipped", ...] = field(default_factory=tuple)
    derived: Path | None = None

    @property
    def ct_model(self) -> Path:
        """The merged CT bone model."""
        if "merged" not in self.ct_models:
            raise DatasetError(f"{self.path}: no CT bone model (CT_bone_model.stl) found")
        return self.ct_models["merged"]


def image_timestamps(folder: Path) -> np.ndarray:
    """Integer timestamps (ms) of ``<timestamp>.png`` files in ``folder``, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: image folder not found")
    ts = [int(f.stem) for f in folder.iterdir() if f.suffix == ".png" and f.stem.isdigit()]
    return np.array(sorted(ts), dtype=np.int64)


@dataclass(frozen=True)
class Skipped:
    """An input folder the readers did not recognise, and why.

    Attributes
    ----------
    path : the folder.
    reason : one line, e.g. ``no UltrasoundImages/ or tracking.csv``.
    """

    path: Path
    reason: str

    def as_dict(self) -> dict:
        return {"path": str(self.path), "reason": self.reason}


_NOT_A_RECORD = f"not a record: no {IMAGES}/ or {TRACKING} inside"


def _records_in(specimen_dir: Path, specimen: str, bone: str | None, base: Path,
                skipped: list | None = None, derived: Path | None = None) -> list[Record]:
    recs = []
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        if not d.is_dir() or d.name.startswith("."):
            continue
        if (d / IMAGES).is_dir() or (d / TRACKING).is_file():
            out = None if derived is None else Path(derived) / d.relative_to(specimen_dir)
            recs.append(Record(specimen=specimen, name=d.name, path=d, bone=bone, derived=out))
        elif skipped is not None:
            skipped.append(Skipped(d, _NOT_A_RECORD))
    return recs


def read_specimen(path: Path | str, derived: Path | str | None = None) -> Specimen:
    """Read one specimen folder of layout A, B or C (sequence files with a ``recording.yaml``).

    Parameters
    ----------
    path : the specimen folder of the input dataset.
    derived : the specimen's folder in the derived dataset (``<derived root>/<specimen>``),
        or None (products live beside the inputs).

    Raises
    ------
    DatasetError
        If the folder holds neither layout.
    """
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: specimen folder not found")
    name = path.name
    skipped: list[Skipped] = []
    if (path / "ultrasound_records").is_dir():
        records = []
        for bone in BONES:
            records += _records_in(path, name, bone, path / "ultrasound_records" / bone, skipped, derived)
        for d in sorted((path / "ultrasound_records").iterdir()):
            if d.is_dir() and not d.name.startswith(".") and d.name not in BONES:
                skipped.append(Skipped(d, f"not a bone folder (layout B has {', '.join(BONES)})"))
        seg = path / "CT_bone_segmentations"
        models = {}
        for bone in BONES:
            if (seg / f"{bone}.stl").is_file():
                models[bone] = seg / f"{bone}.stl"
        if (seg / "CT_bone_model_merged.stl").is_file():
            models["merged"] = seg / "CT_bone_model_merged.stl"
        return Specimen(name, path, "B", tuple(records), models, tuple(skipped),
                        Path(derived) if derived is not None else None)
    if sequence.sequence_files(path) or (path / sequence.RECORDING).is_file():
        return _layout_c(path, derived)
    records = _records_in(path, name, None, path, skipped, derived)
    if not records:
        raise DatasetError(f"{path}: no records (folders with {IMAGES}/ or {TRACKING}) in layout A or B"
                           + (f"; not records: {', '.join(sk.path.name for sk in skipped)}" if skipped else ""))
    return Specimen(name, path, "A", tuple(records), _ct_models(path), tuple(skipped),
                    Path(derived) if derived is not None else None)


def _ct_models(path: Path) -> dict:
    models = {}
    if (path / "CT_bone_model.stl").is_file():
        models["merged"] = path / "CT_bone_model.stl"
    for bone in BONES:
        if (path / f"CT_bone_model_{bone}.stl").is_file():
            models[bone] = path / f"CT_bone_model_{bone}.stl"
    return models


def _layout_c(path: Path, derived: Path | str | None) -> Specimen:
    """A specimen folder of sequence files with its ``recording.yaml`` (layout C).

    Every header is read and validated here (a bad file fails the scan, naming
    the file and the field); a file with frames skipped for a status that is
    not OK is listed in ``skipped`` with the counts.
    """
    files = sequence.sequence_files(path)
    if not files:
        raise DatasetError(f"{path}: {sequence.RECORDING} but no sequence file ({', '.join(sequence.SUFFIXES)})")
    if not (path / sequence.RECORDING).is_file():
        raise DatasetError(f"{path}: sequence files ({files[0].name}, ...) but no {sequence.RECORDING} "
                           "naming the transform chain (see docs/slicer.md)")
    names = [sequence.record_name(f) for f in files]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DatasetError(f"{path}: two sequence files for record {dup[0]} (e.g. .mha and .nrrd)")
    records, skipped, spacing = [], [], None
    for f, rname in zip(files, names):
        head = sequence.read_header(f, path)
        if spacing is None:
            spacing = (f, head.spacing)
        elif not np.allclose(head.spacing, spacing[1], rtol=1e-9):
            raise DatasetError(f"{f}: ElementSpacing {head.spacing} differs from {spacing[0].name}'s {spacing[1]}: "
                               "one pixel size per dataset (non-uniform spacing)")
        if head.n_skipped:
            why = ", ".join(f"{n} {reason}" for reason, n in sorted(head.skipped.items()))
            skipped.append(Skipped(f, f"{head.n_skipped} of {head.n_frames} frames skipped ({why})"))
        out = None if derived is None else Path(derived) / rname
        records.append(Record(specimen=path.name, name=rname, path=f, derived=out, recording=path))
    return Specimen(path.name, path, "C", tuple(records), _ct_models(path), tuple(skipped),
                    Path(derived) if derived is not None else None)


def is_layout_c_specimen(path: Path | str) -> bool:
    """Whether ``path`` is itself a layout-C specimen folder (a ``recording.yaml`` beside sequence files)."""
    path = Path(path)
    return (path / sequence.RECORDING).is_file() and bool(sequence.sequence_files(path))


def specimen(root: Path | str, name: str, derived_root: Path | str | None = None) -> Specimen:
    """The specimen ``name`` of a dataset root (``<root>/<name>``, or the root itself for a flat layout C)."""
    return scan(root, [name], derived_root)[0][0]


def scan(root: Path | str, specimens: list[str] | None = None,
         derived: Path | str | None = None) -> tuple[list[Specimen], list[Skipped]]:
    """Every specimen under a dataset root, and every folder that was not recognised.

    Like :func:`discover`, without the warning: returns ``(specimens, skipped)``
    where ``skipped`` lists the specimen folders that hold no record (with
    :func:`read_specimen`'s reason) and, inside the returned specimens, the
    folders that are not records. Folders whose name starts with ``.`` are
    ignored; files at the root (a README) are not inputs. ``derived``: the
    derived dataset's root, mirrored from ``root`` for every record (see the
    module's "Input and derived folders"); None keeps products beside the inputs.

    Raises
    ------
    DatasetError
        If the root is missing, holds no specimen, or a named specimen is
        absent or unrecognised (its reason is given).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: data root not found (set data_root, or run notebook 00 for the twin)")
    found: dict[str, Specimen] = {}
    bad: dict[str, Skipped] = {}
    if is_layout_c_specimen(root):  # the root is one specimen's folder of sequence files
        spec = read_specimen(root, None if derived is None else Path(derived) / root.name)
        if specimens is not None and list(specimens) != [spec.name]:
            raise DatasetError(f"{root}: specimen(s) {', '.join(s for s in specimens if s != spec.name)} not found "
                               f"(have: {spec.name}, the folder of sequence files itself)")
        return [spec], list(spec.skipped)
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        try:
            found[d.name] = read_specimen(d, None if derived is None else Path(derived) / d.name)
        except DatasetError as exc:
            bad[d.name] = Skipped(d, str(exc).removeprefix(f"{d}: "))
    if specimens is not None:
        missing = [s for s in specimens if s not in found]
        if missing:
            why = "; ".join(f"{s}: {bad[s].reason}" for s in missing if s in bad)
            raise DatasetError(f"{root}: specimen(s) {', '.join(missing)} not found (have: {', '.join(found)})"
                               + (f" -- {why}" if why else ""))
        chosen = [found[s] for s in specimens]
        skipped = [sk for s in chosen for sk in s.skipped]
        return chosen, skipped
    if not found:
        detail = "; ".join(f"{sk.path.name}: {sk.reason}" for sk in bad.values())
        raise DatasetError(f"{root}: no specimen folders in layout A, B or C" + (f" ({detail})" if detail else ""))
    chosen = list(found.values())
    skipped = list(bad.values()) + [sk for s in chosen for sk in s.skipped]
    return chosen, skipped


def warn_skipped(root: Path | str, skipped: list[Skipped], stacklevel: int = 3) -> None:
    """One ``UserWarning`` listing every unrecognised input folder (nothing when the list is empty)."""
    if skipped:
        lines = "\n".join(f"  {sk.path}: {sk.reason}" for sk in skipped)
        warnings.warn(f"{root}: {len(skipped)} input folder(s) not recognised and skipped:\n{lines}",
                      stacklevel=stacklevel)


def discover(root: Path | str, specimens: list[str] | None = None,
             derived: Path | str | None = None) -> list[Specimen]:
    """Every specimen under a dataset root (layout A or B), sorted by name.

    Folders that are neither specimens nor records are never dropped in
    silence: they are listed in a warning (see :func:`scan`, which also
    returns them, for a stage's ``skipped_inputs`` metric).

    Parameters
    ----------
    root : dataset root.
    specimens : restrict to these folder names (each must exist).
    derived : the derived dataset's root (labels, optimised poses), or None.

    Raises
    ------
    DatasetError
        If the root is missing, holds no specimen, or a named specimen is absent.
    """
    found, skipped = scan(root, specimens, derived)
    warn_skipped(root, skipped)
    return found


def skipped_inputs(skipped: list[Skipped]) -> list[dict]:
    """The ``skipped_inputs`` metric: ``[{"path", "reason"}, ...]``."""
    return [sk.as_dict() for sk in skipped]


# ----------------------------------------------------------------------------- tracking


def read_csv(path: Path | str, required: tuple[str, ...] | list[str], what: str = "CSV file") -> pd.DataFrame:
    """Read a CSV table that must hold the ``required`` columns.

    Raises
    ------
    DatasetError
        If the file is missing (``what`` names it), unreadable, or lacks a column.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: {what} not found")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def read_tracking(path: Path | str, allow_missing_pose: bool = False) -> pd.DataFrame:
    """Read and validate a ``tracking.csv``.

    Checks: required columns present; ``timestamp`` integer and strictly
    increasing; no NaN or infinite pose value (in the original and, when
    present, the optimised columns).

    Parameters
    ----------
    allow_missing_pose : accept NaN (not infinite) values in the original pose
        columns too, for per-frame stages that report such a frame and go on.

    Returns
    -------
    DataFrame with ``timestamp`` as int64 and the pose columns as float.
    """
    path = Path(path)
    df = read_csv(path, ("timestamp",) + POSE_COLUMNS, "tracking file")
    ts = pd.to_numeric(df["timestamp"], errors="coerce")
    bad = ts.isna() | (ts != np.round(ts))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DatasetError(f"{path} row {row + 1}: timestamp {df['timestamp'].iloc[row]} is not an integer")
    ts = ts.astype(np.int64)
    steps = np.diff(ts.to_numpy())
    if np.any(steps <= 0):
        row = int(np.flatnonzero(steps <= 0)[0]) + 1
        raise DatasetError(
            f"{path} row {row + 1}: timestamp {ts.iloc[row]} does not increase (previous {ts.iloc[row - 1]})"
        )
    df["timestamp"] = ts
    extra = OPTIMIZED_COLUMNS + REGISTERED_COLUMNS
    cols = list(POSE_COLUMNS) + [c for c in extra if c in df.columns]
    for c in cols:
        vals = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
        nonfinite = ~np.isfinite(vals)
        if c in extra or allow_missing_pose:
            # Discarded frames carry no optimised pose: NaN allowed there, inf not.
            nonfinite = np.isinf(vals) | (np.isnan(vals) & df[c].notna().to_numpy())
        if nonfinite.any():
            row = int(np.flatnonzero(nonfinite)[0])
            raise DatasetError(f"{path} row {row + 1}: {c} is {df[c].iloc[row]} (not a finite number)")
        df[c] = vals
    return df


def poses(df: pd.DataFrame, method: str = "initial") -> np.ndarray:
    """(N, 4, 4) probe-marker-in-CT poses from a tracking table.

    Parameters
    ----------
    method : ``"initial"`` (the recorded ``x..euler_z``), ``"optimized"``
        (``*_optimized``) or ``"registered"`` (``*_registered``). Rows without
        a pose (a discarded frame) give NaN matrices.
    """
    cols = list({"initial": POSE_COLUMNS, "optimized": OPTIMIZED_COLUMNS, "registered": REGISTERED_COLUMNS}[method])
    if not set(cols) <= set(df.columns):
        raise DatasetError(f"tracking table has no {cols[0]}.. columns (run notebook 02 first)")
    vals = df[cols].to_numpy(dtype=float)
    out = np.full((len(df), 4, 4), np.nan)
    ok = np.isfinite(vals).all(axis=1)
    if ok.any():
        out[ok] = pose_from_params(vals[ok])
    return out


def write_tracking(path: Path | str, df: pd.DataFrame) -> Path:
    """Write a tracking table atomically (columns as given, ``timestamp`` first)."""
    cols = ["timestamp"] + [c for c in df.columns if c != "timestamp"]
    with atomic.atomic_path(path) as tmp:
        df[cols].to_csv(tmp, index=False, float_format="%.10g")
    return Path(path)


# ----------------------------------------------------------------------------- calibration


def read_calibration(root: Path | str) -> tuple[np.ndarray, tuple[float, float], float | None]:
    """The image-to-probe calibration of a dataset.

    Layout C: ``image_to_probe`` of the ``recording.yaml`` files (one per
    specimen, all equal) and the pixel size they or the sequence files' headers
    give. Else ``<root>/calibration.json`` (written by notebook 01) when
    present, else the released calibration of UltraBones100k (DESIGN.md).

    Returns
    -------
    calib : (4, 4) array, image plane -> probe marker (mm).
    spacing : (sx, sy) mm per pixel.
    temporal_offset_ms : the offset found by calibration, or None (released).
    """
    from ultrabones.core.geometry import RELEASED_SPACING_MM, released_calibration

    root = Path(root)
    c_folders = _recording_folders(root)
    if c_folders:
        return _layout_c_calibration(c_folders)
    f = root / CALIBRATION
    if not f.is_file():
        return released_calibration(), RELEASED_SPACING_MM, None
    return read_calibration_file(f)


def _recording_folders(root: Path) -> list[Path]:
    """Layout-C specimen folders of a dataset root (the root itself, or its subfolders)."""
    if not root.is_dir():
        return []
    if is_layout_c_specimen(root):
        return [root]
    return [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".") and is_layout_c_specimen(d)]


def _layout_c_calibration(folders: list[Path]) -> tuple[np.ndarray, tuple[float, float], None]:
    """The one calibration and pixel size of a layout-C dataset (every specimen's must agree)."""
    first = None
    for d in folders:
        rec = read_recording(d)
        spacing = rec.spacing or sequence.read_header(sequence.sequence_files(d)[0], d).spacing
        if first is None:
            first = (d, rec.calib, spacing)
            continue
        if not np.allclose(rec.calib, first[1], atol=1e-9):
            raise DatasetError(f"{rec.path}: image_to_probe differs from {first[0] / sequence.RECORDING}'s: "
                               "one probe calibration per dataset")
        if not np.allclose(spacing, first[2], rtol=1e-9):
            raise DatasetError(f"{rec.path}: pixel size {spacing} differs from {first[0].name}'s {first[2]}: "
                               "one pixel size per dataset (non-uniform spacing)")
    return first[1], tuple(float(v) for v in first[2]), None


def read_calibration_file(f: Path | str) -> tuple[np.ndarray, tuple[float, float], float | None]:
    """Read a ``calibration.json`` (see :func:`read_calibration`)."""
    f = Path(f)
    import json

    if not f.is_file():
        raise DatasetError(f"{f}: calibration file not found")
    try:
        data = json.loads(f.read_text())
        calib = np.asarray(data["calibration"], dtype=float)
        spacing = tuple(float(v) for v in data["spacing_mm"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{f}: not a valid calibration file ({exc})") from None
    if calib.shape != (4, 4) or not np.isfinite(calib).all() or len(spacing) != 2 or min(spacing) <= 0:
        raise DatasetError(f"{f}: calibration must be a finite 4x4 matrix and spacing_mm two positive numbers")
    return calib, spacing, data.get("temporal_offset_ms")


def write_calibration(root: Path | str, calib: np.ndarray, spacing, temporal_offset_ms: float | None, **extra) -> Path:
    """Write ``<root>/calibration.json`` atomically (``extra`` keys are kept as provenance)."""
    data = {"calibration": np.asarray(calib).tolist(), "spacing_mm": [float(v) for v in spacing],
            "temporal_offset_ms": temporal_offset_ms, **extra}
    return atomic.write_json(Path(root) / CALIBRATION, data)


# ----------------------------------------------------------------------------- images


def read_image(path: Path | str) -> np.ndarray:
    """Read an 8-bit single-channel ultrasound PNG as a (H, W) uint8 array.

    Raises
    ------
    DatasetError
        If the file is missing, not a readable image, or not 8-bit grayscale.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from None
    if mode != "L" or arr.dtype != np.uint8 or arr.ndim != 2:
        raise DatasetError(f"{path}: expected an 8-bit single-channel image, got mode {mode} shape {arr.shape}")
    return arr


def read_label(path: Path | str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a 0/255 label PNG as a (H, W) bool array.

    Parameters
    ----------
    shape : the image's (H, W); the label must match it.

    Raises
    ------
    DatasetError
        If unreadable, not single channel, holding values other than 0 and 255,
        or of another size than the image.
    """
    path = Path(path)
    arr = read_image(path)
    bad = (arr != 0) & (arr != 255)
    if bad.any():
        v, u = np.argwhere(bad)[0]
        raise DatasetError(
            f"{path}: label is not binary: pixel (row {v}, col {u}) is {arr[v, u]} (allowed: 0 and 255)"
        )
    if shape is not None and arr.shape != tuple(shape):
        raise DatasetError(f"{path}: label size {arr.shape[::-1]} (W x H) differs from the image's {tuple(shape)[::-1]}")
    return arr == 255


def encode_png(arr: np.ndarray) -> bytes:
    """PNG bytes of a (H, W) uint8 or bool array (bool written as 0/255)."""
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ValueError(f"encode_png: expected a (H, W) uint8 or bool array, got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_image(path: Path | str, arr: np.ndarray) -> Path:
    """Write a (H, W) uint8 image (or bool label as 0/255) as PNG, atomically."""
    return atomic.write_bytes(path, encode_png(arr))


def write_label(path: Path | str, mask: np.ndarray) -> Path:
    """Write a (H, W) bool mask as a 0/255 PNG, atomically."""
    return write_image(path, np.asarray(mask, dtype=bool))


# ----------------------------------------------------------------------------- meshes


def read_mesh(path: Path | str):
    """Read a CT bone model (STL) as a ``trimesh.Trimesh``; warn if not watertight.

    Raises
    ------
    DatasetError
        If the file is missing or holds no triangles.
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: mesh not found")
    try:
        mesh = trimesh.load_mesh(path, file_type=path.suffix.lstrip(".").lower() or "stl", process=True)
    except Exception as exc:  # trimesh raises many types on corrupt files
        raise DatasetError(f"{path}: not a readable mesh ({exc})") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise DatasetError(f"{path}: mesh holds no triangles")
    if not mesh.is_watertight:
        warnings.warn(f"{path}: mesh is not watertight", stacklevel=2)
    return mesh


def write_mesh(path: Path | str, mesh) -> Path:
    """Write a trimesh mesh (binary STL by suffix) atomically."""
    with atomic.atomic_path(path) as tmp:
        mesh.export(tmp)
    return Path(path)
