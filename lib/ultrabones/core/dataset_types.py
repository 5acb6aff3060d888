"""The dataset's types and folder names: a :class:`Record` (one tracked sweep), a :class:`Frame` (a record and a
timestamp), a :class:`Specimen` (its records and CT models) and a :class:`Skipped` input folder.

A record reads its frames and poses the same way in every layout (:meth:`Record.read_image`,
:meth:`Record.read_tracking`) and knows where its products live in the derived dataset (:attr:`Record.out`). The
layouts and the input/derived split are described in :mod:`ultrabones.core.dataset`, which finds these on disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ultrabones.core import sequence
from ultrabones.core.errors import DatasetError
from ultrabones.core.geometry import POSE_COLUMNS, params_from_pose
from ultrabones.core.images import image_timestamps, read_image
from ultrabones.core.recording import read_recording
from ultrabones.core.tracking_table import read_tracking

IMAGES = "UltrasoundImages"
LABELS = "Labels"
LABELS_FULL = "Labels_full"
LABELS_PRED = "Labels_pred"
LABELS_MANUAL = "LabelsManual"
TRACKING = "tracking.csv"
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
