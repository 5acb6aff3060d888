"""PLUS / 3D Slicer sequence files: layout C of the input dataset, read and written with SimpleITK.

A tracked sweep recorded with the PLUS toolkit (or SlicerIGT) is one *sequence
file*: ``.igs.mha`` / ``.seq.mha`` / ``.mha``, ``.mhd`` + ``.raw``/``.zraw``, or
``.seq.nrrd`` / ``.nrrd``. It holds the B-mode frames as one volume (columns x
rows x frames) and, per frame ``k``, header fields (PLUS's Sequence File
format)::

    Seq_Frame0007_ProbeToTrackerTransform = 16 numbers, row by row (mm)
    Seq_Frame0007_ProbeToTrackerTransformStatus = OK | INVALID | ...
    Seq_Frame0007_Timestamp = seconds
    Seq_Frame0007_ImageStatus = OK | INVALID       (optional)

with ``UltrasoundImageOrientation`` (``MF``, ``UF``, ``MN`` or ``UN`` for 2D
B-mode; NRRD: ``ultrasound image orientation``) in the header. SimpleITK
reads the volume and every field (MetaImage and NRRD); nothing here parses a
header by hand.

Layout C (see :mod:`ultrabones.core.dataset`)::

    <root>/<specimen>/<record>.igs.mha        one sequence file per record
    <root>/<specimen>/CT_bone_model.stl       the CT bone model (CT frame, mm)
    <root>/<specimen>/recording.yaml          the transform chain (below)

or the specimen folder itself as ``<root>`` (specimen name: the folder's).

``recording.yaml``::

    image_to_probe: {file: ImageToProbe.txt}   # or {matrix: [16 numbers]}, or a PLUS configuration .xml,
    #                                            or this project's calibration.json
    image_to_probe_units: pixel                # pixel (PLUS: pixel indices -> mm, scale inside) or mm
    pose: [TrackerToCT, ProbeToTracker]        # probe marker -> CT: the product, left to right
    transforms:                                # the fixed transforms of `pose`: {matrix: ...} or {file: ...}
      TrackerToCT: {file: TrackerToCT.txt}
    spacing_mm: [0.05392, 0.05392]             # only with image_to_probe_units: mm, when the header lacks it

A name of ``pose`` that is not in ``transforms`` is a per-frame field
(``Seq_FrameNNNN_<name>Transform``); ``AToB`` is also found as the inverse of
a stored ``BToA``. A frame whose image status or any used transform status
is not ``OK`` is skipped and counted.

Conventions. PLUS's *Image* frame has its origin at the first pixel of the MF
image and the pixel as unit, so ``ImageToProbe @ [u, v, 0, 1]`` is pixel
``(u, v)``'s centre in mm. This project's Eq. 1 puts that centre at
``calib @ diag(sx, sy, 1, 1) @ [u + 0.5, v + 0.5, 0, 1]`` with a rigid
``calib``, hence ``ImageToProbe = calib @ diag(sx, sy, 1, 1) @ T(0.5, 0.5, 0)``
(:func:`ultrabones.core.recording.plus_image_to_probe` and its inverse).
Frames are returned in MF orientation (rows: depth from the transducer) and
timestamps in integer milliseconds (``round(1000 t)``). The pose is the probe
marker in CT space, as in ``tracking.csv``.
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ultrabones.core.errors import DatasetError
from ultrabones.core.recording import RECORDING, Recording, parse_matrix, read_recording

__all__ = ["RECORDING", "SUFFIXES", "ORIENTATIONS", "SequenceHeader", "read_header", "read_frame", "sequence_files",
           "record_name", "data_files", "is_sequence_file", "read_recording", "clear_caches"]
#: Longest first: a name is matched against these in order.
SUFFIXES = (".igs.mha", ".seq.mha", ".seq.mhd", ".seq.nrrd", ".mha", ".mhd", ".nrrd")
#: 2D B-mode orientations: (flip columns, flip rows) that make the stored frame MF.
ORIENTATIONS = {"MF": (False, False), "UF": (True, False), "MN": (False, True), "UN": (True, True)}
ORIENTATION_FIELDS = ("UltrasoundImageOrientation", "ultrasound image orientation")
TYPE_FIELDS = ("UltrasoundImageType", "ultrasound image type")
#: Largest decoded volume kept in memory per process (bytes); larger files are read frame by frame.
CACHE_BYTES = 1 << 30
_FRAME = re.compile(r"^Seq_Frame(\d+)_(.+)$")


def is_sequence_file(path: Path) -> bool:
    """Whether ``path`` is a file with a sequence-file suffix."""
    return path.is_file() and any(path.name.lower().endswith(s) for s in SUFFIXES)


def record_name(path: Path | str) -> str:
    """The record name of a sequence file: its name less the suffix (``record01.igs.mha`` -> ``record01``)."""
    name = Path(path).name
    for s in SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return Path(path).stem


def sequence_files(folder: Path | str) -> list[Path]:
    """The sequence files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(f for f in folder.iterdir() if not f.name.startswith(".") and is_sequence_file(f))


def data_files(path: Path | str) -> list[Path]:
    """The files a sequence file's content lives in: itself and, for ``.mhd``/detached NRRD, its data file."""
    path = Path(path)
    out = [path]
    if path.name.lower().endswith(".mhd"):
        with open(path, "rb") as fh:
            for line in fh:
                key, _, value = line.decode("latin-1").partition("=")
                if key.strip() == "ElementDataFile" and value.strip() not in ("LOCAL", ""):
                    out.append(path.parent / value.strip())
                    break
    return out


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class SequenceHeader:
    """What a sequence file's header says, validated against its ``recording.yaml``.

    Attributes
    ----------
    path : the sequence file.
    width, height : frame size (px), MF orientation.
    n_frames : frames in the file.
    orientation : the stored orientation (``MF``, ``UF``, ``MN``, ``UN``).
    spacing : (sx, sy) mm per pixel.
    index : (K,) file frame index of each kept frame.
    timestamps : (K,) int64 ms of each kept frame, increasing.
    poses : (K, 4, 4) probe marker in CT of each kept frame.
    skipped : reason -> number of frames skipped for it (a status not OK).
    """

    path: Path
    width: int
    height: int
    n_frames: int
    orientation: str
    spacing: tuple[float, float]
    index: np.ndarray
    timestamps: np.ndarray
    poses: np.ndarray
    skipped: dict

    @property
    def n_skipped(self) -> int:
        return int(sum(self.skipped.values()))


def _reader(path: Path):
    import SimpleITK as sitk

    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    try:
        r.ReadImageInformation()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else "unreadable"
        raise DatasetError(f"{path}: not a readable MetaImage/NRRD sequence file ({first})") from None
    return r


def _geometry(r, path: Path) -> tuple[int, int, int, str]:
    """(width, height, frames, how): how the frames lie in the volume SimpleITK reads."""
    size, dim, comp = tuple(r.GetSize()), r.GetDimension(), r.GetNumberOfComponents()
    if comp == 1 and dim == 3:
        return size[0], size[1], size[2], "z"
    if comp == 1 and dim == 4 and size[2] == 1:
        return size[0], size[1], size[3], "t"
    if comp > 1 and (dim == 2 or (dim == 3 and size[2] == 1)):  # NRRD: a list axis read as components
        return size[0], size[1], comp, "c"
    raise DatasetError(f"{path}: DimSize {' '.join(map(str, size))} with {comp} component(s) is not a sequence of "
                       "2D frames (expected columns x rows x frames, or columns x rows x 1 x frames)")


def _field(r, names) -> str | None:
    for n in names:
        if r.HasMetaDataKey(n):
            return r.GetMetaData(n).strip()
    return None


def _spacing(r, path: Path) -> tuple[float, float]:
    sp = tuple(float(v) for v in r.GetSpacing()[:2])
    direction = np.asarray(r.GetDirection(), dtype=float)
    d = int(round(np.sqrt(direction.size)))
    block = np.abs(direction.reshape(d, d)[:2, :2])
    if not np.allclose(block, np.eye(2), atol=1e-6):
        raise DatasetError(f"{path}: the header's axis directions (TransformMatrix / space directions) are not "
                           "axis-aligned: pixels are not on a rectangular grid of uniform spacing")
    if not (np.isfinite(sp).all() and min(sp) > 0):
        raise DatasetError(f"{path}: ElementSpacing {sp} is not positive")
    return sp


def _frame_transform(fields: dict, k: int, name: str, path: Path) -> tuple[np.ndarray, str]:
    """(matrix, status) of transform ``name`` in frame ``k`` (``AToB`` or the inverse of a stored ``BToA``)."""
    a, _, b = name.partition("To")
    for key, invert in ((name, False), (f"{b}To{a}", True)):
        text = fields.get(f"{key}Transform")
        if text is not None:
            m = parse_matrix(text, f"{path}: Seq_Frame{k:04d}_{key}Transform")
            status = fields.get(f"{key}TransformStatus", "OK").strip().upper()
            return (np.linalg.inv(m) if invert else m), status
    have = sorted(f[: -len("Transform")] for f in fields if f.endswith("Transform"))
    raise DatasetError(f"{path}: Seq_Frame{k:04d}_{name}Transform missing (recording.yaml's pose needs {name}; "
                       f"this frame holds: {', '.join(have) or 'no transform'})")


def _read_header(path: Path, recording: Recording) -> SequenceHeader:
    r = _reader(path)
    width, height, n, _ = _geometry(r, path)
    import SimpleITK as sitk

    if r.GetNumberOfComponents() == 1 and r.GetPixelID() != sitk.sitkUInt8 or \
            r.GetNumberOfComponents() > 1 and r.GetPixelID() != sitk.sitkVectorUInt8:
        raise DatasetError(f"{path}: ElementType is {r.GetPixelIDTypeAsString()}, expected 8-bit unsigned (B-mode grey)")
    orientation = _field(r, ORIENTATION_FIELDS) or "MF"
    if orientation.upper() not in ORIENTATIONS:
        raise DatasetError(f"{path}: UltrasoundImageOrientation is {orientation!r}; known 2D B-mode orientations: "
                           f"{', '.join(ORIENTATIONS)}")
    kind = _field(r, TYPE_FIELDS)
    if kind is not None and kind.upper() != "BRIGHTNESS":
        raise DatasetError(f"{path}: UltrasoundImageType is {kind!r}; only BRIGHTNESS (B-mode) frames are read")
    header_spacing = _spacing(r, path)
    if recording.spacing is not None:
        spacing = recording.spacing
        if header_spacing != (1.0, 1.0) and not np.allclose(header_spacing, spacing, rtol=1e-6):
            warnings.warn(f"{path}: ElementSpacing {header_spacing} differs from {recording.path}'s pixel size "
                          f"{spacing}; using the latter (PLUS ignores the header's spacing)", stacklevel=3)
    elif header_spacing == (1.0, 1.0):
        raise DatasetError(f"{path}: ElementSpacing is 1 1 (MetaImage's default) and {recording.path} gives no "
                           "pixel size: set spacing_mm, or give image_to_probe in pixel units")
    else:
        spacing = header_spacing
    frames: dict[int, dict] = {}
    for key in r.GetMetaDataKeys():
        m = _FRAME.match(key)
        if m:
            frames.setdefault(int(m.group(1)), {})[m.group(2)] = r.GetMetaData(key)
    missing = [k for k in range(n) if k not in frames]
    if missing:
        raise DatasetError(f"{path}: {len(missing)} of {n} frames have no Seq_Frame fields (first: "
                           f"Seq_Frame{missing[0]:04d}_)")
    extra = sorted(k for k in frames if k >= n)
    if extra:
        raise DatasetError(f"{path}: Seq_Frame{extra[0]:04d}_ fields but the volume holds {n} frames")
    keep, times, poses, skipped = [], [], [], {}
    for k in range(n):
        fields = frames[k]
        status = fields.get("ImageStatus", "OK").strip().upper()
        if status != "OK":
            skipped[f"ImageStatus {status}"] = skipped.get(f"ImageStatus {status}", 0) + 1
            continue
        pose, bad = np.eye(4), None
        for name in recording.pose:
            if name in recording.fixed:
                m = recording.fixed[name]
            else:
                m, st = _frame_transform(fields, k, name, path)
                if st != "OK" and bad is None:
                    bad = f"{name}TransformStatus {st}"
            pose = pose @ m
        if bad is not None:
            skipped[bad] = skipped.get(bad, 0) + 1
            continue
        if "Timestamp" not in fields:
            raise DatasetError(f"{path}: Seq_Frame{k:04d}_Timestamp missing")
        try:
            t = float(fields["Timestamp"])
        except ValueError:
            raise DatasetError(f"{path}: Seq_Frame{k:04d}_Timestamp is {fields['Timestamp']!r}, not a number") from None
        keep.append(k)
        times.append(t)
        poses.append(pose)
    ts = np.round(np.asarray(times, dtype=float) * 1000.0).astype(np.int64)
    steps = np.diff(ts)
    if np.any(steps <= 0):
        i = int(np.flatnonzero(steps <= 0)[0]) + 1
        raise DatasetError(f"{path}: Seq_Frame{keep[i]:04d}_Timestamp {times[i]} s ({ts[i]} ms) does not increase "
                           f"(previous kept frame: {ts[i - 1]} ms)")
    poses = np.asarray(poses, dtype=float).reshape(-1, 4, 4)
    return SequenceHeader(path, width, height, n, orientation.upper(), spacing, np.asarray(keep, dtype=np.int64),
                          ts, poses, skipped)


def _key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _cached_header(key: tuple, rec_keys: tuple) -> SequenceHeader:
    return _read_header(Path(key[0]), read_recording(Path(rec_keys[0][0]).parent))


def read_header(path: Path | str, recording_folder: Path | str) -> SequenceHeader:
    """The validated header of a sequence file (cached per process on path, size and mtime of it and the recording's files).

    Parameters
    ----------
    path : the sequence file.
    recording_folder : the folder of its ``recording.yaml``.

    Raises
    ------
    DatasetError
        Naming the file and the field: unreadable file, frames that are not
        8-bit 2D B-mode, an unknown orientation, a missing or malformed
        transform (not 16 numbers, last row not 0 0 0 1), a missing or
        non-increasing timestamp, no pixel size, axes not on a rectangular grid.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: sequence file not found")
    return _cached_header(_key(path), tuple(_key(f) for f in read_recording(recording_folder).sources))


@functools.lru_cache(maxsize=1)
def _volume(key: tuple) -> np.ndarray:
    """The whole decoded volume as (frames, rows, columns) uint8, as stored."""
    import SimpleITK as sitk

    path = Path(key[0])
    r = _reader(path)
    _, _, _, how = _geometry(r, path)
    arr = sitk.GetArrayFromImage(r.Execute())
    if how == "t":
        arr = arr[:, 0]
    elif how == "c":
        arr = np.moveaxis(arr.reshape(arr.shape[-3], arr.shape[-2], arr.shape[-1]), -1, 0)
    return np.ascontiguousarray(arr)


def read_frame(header: SequenceHeader, k: int) -> np.ndarray:
    """File frame ``k`` as a (rows, columns) uint8 array in MF orientation.

    Volumes up to :data:`CACHE_BYTES` are decoded once per process and kept
    (the last one read); larger ones are read frame by frame (SimpleITK's
    streaming, whole-file for compressed data).
    """
    path = header.path
    if header.width * header.height * header.n_frames <= CACHE_BYTES:
        img = _volume(_key(path))[k]
    else:
        import SimpleITK as sitk

        r = _reader(path)
        _, _, _, how = _geometry(r, path)
        if how == "c":
            img = _volume(_key(path))[k]
        else:
            index = [0, 0, k] if how == "z" else [0, 0, 0, k]
            r.SetExtractIndex(index)
            r.SetExtractSize([header.width, header.height] + [0] * (len(index) - 2))
            img = sitk.GetArrayFromImage(r.Execute())
    flip_cols, flip_rows = ORIENTATIONS[header.orientation]
    if flip_cols:
        img = img[:, ::-1]
    if flip_rows:
        img = img[::-1, :]
    return np.ascontiguousarray(img, dtype=np.uint8)


def clear_caches() -> None:
    """Forget cached headers and volumes (a test that rewrites a file within one mtime tick)."""
    _cached_header.cache_clear()
    _volume.cache_clear()
