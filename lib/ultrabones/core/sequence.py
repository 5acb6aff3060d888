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
(:func:`plus_image_to_probe` and its inverse :func:`calibration_from_plus`).
Frames are returned in MF orientation (rows: depth from the transducer) and
timestamps in integer milliseconds (``round(1000 t)``). The pose is the probe
marker in CT space, as in ``tracking.csv``.
"""

from __future__ import annotations

import functools
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ultrabones.core.errors import DatasetError

RECORDING = "recording.yaml"
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


# ----------------------------------------------------------------------------- matrices and conventions


def parse_matrix(text, where: str) -> np.ndarray:
    """A 4x4 matrix from 16 numbers (a string or a list, row by row, or a 4x4 list).

    Raises
    ------
    DatasetError
        Naming ``where`` (file and field) if there are not 16 finite numbers or
        the last row is not ``0 0 0 1``.
    """
    try:
        vals = np.array(str(text).split() if isinstance(text, str) else text, dtype=float).ravel()
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: not a list of numbers ({str(text)[:60]!r})") from None
    if vals.size != 16:
        raise DatasetError(f"{where}: {vals.size} numbers, expected 16 (a 4x4 matrix, row by row)")
    m = vals.reshape(4, 4)
    if not np.isfinite(m).all():
        raise DatasetError(f"{where}: holds a value that is not a finite number")
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-9):
        raise DatasetError(f"{where}: last row is {m[3].tolist()}, expected [0, 0, 0, 1] (an affine transform)")
    return m


def format_matrix(m: np.ndarray) -> str:
    """16 numbers row by row, each with ``repr`` precision (round trips exactly)."""
    return " ".join(repr(float(v)) for v in np.asarray(m, dtype=float).ravel())


def plus_image_to_probe(calib: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """PLUS's ``ImageToProbe`` (pixel indices -> mm) of this project's rigid ``calib`` and pixel size.

    ``calib @ diag(sx, sy, 1, 1) @ T(0.5, 0.5, 0)``: pixel ``(u, v)``'s centre is
    ``(u, v)`` in PLUS's Image frame and ``(u + 0.5, v + 0.5)`` in Eq. 1.
    """
    shift = np.eye(4)
    shift[:2, 3] = 0.5
    return np.asarray(calib, dtype=float) @ np.diag([spacing[0], spacing[1], 1.0, 1.0]) @ shift


def calibration_from_plus(m: np.ndarray, where: str = "ImageToProbe",
                          max_shear_cos: float = 1e-3) -> tuple[np.ndarray, tuple[float, float]]:
    """This project's rigid ``calib`` and ``(sx, sy)`` from PLUS's ``ImageToProbe`` (inverse of :func:`plus_image_to_probe`).

    The pixel size is the length of the matrix's first two columns; the third
    column of ``calib`` is their cross product. A calibration whose x and y
    axes are not perpendicular (|cos| above ``max_shear_cos``, 0.06 degrees)
    cannot be written as a rotation and a pixel size and is refused; below that,
    the nearest rotation is kept.

    Raises
    ------
    DatasetError
        Naming ``where`` for a zero-length axis or a sheared calibration.
    """
    m = np.asarray(m, dtype=float)
    cx, cy = m[:3, 0], m[:3, 1]
    # 12 significant digits: a column norm carries rounding noise (1e-17 mm) that is not a pixel size
    sx, sy = (float(f"{float(np.linalg.norm(c)):.12g}") for c in (cx, cy))
    if min(sx, sy) <= 0:
        raise DatasetError(f"{where}: an image axis has zero length (no pixel size)")
    cos = abs(float(cx @ cy)) / (sx * sy)
    if cos > max_shear_cos:
        raise DatasetError(f"{where}: image x and y axes are {np.degrees(np.arccos(cos)):.3f} degrees apart, "
                           "not 90: a sheared calibration is not a rotation and a pixel size")
    ex, ey = cx / sx, cy / sy
    rot = np.stack([ex, ey, np.cross(ex, ey)], axis=1)
    u, _, vt = np.linalg.svd(rot)
    rot = u @ vt
    shift = np.eye(4)
    shift[:2, 3] = -0.5
    origin = (m @ shift)[:3, 3]
    calib = np.eye(4)
    calib[:3, :3] = rot
    calib[:3, 3] = origin
    return calib, (sx, sy)


# ----------------------------------------------------------------------------- recording.yaml


@dataclass(frozen=True)
class Recording:
    """A layout-C folder's ``recording.yaml``, resolved.

    Attributes
    ----------
    path : the ``recording.yaml``.
    calib : (4, 4) rigid image-plane-to-probe-marker transform (mm), Eq. 1's ``calib``.
    spacing : (sx, sy) mm per pixel, or None: from the sequence files' headers.
    pose : transform names whose product (left to right) maps the probe marker to CT.
    fixed : name -> (4, 4) matrix of the fixed transforms of ``pose``.
    sources : every file read: the ``recording.yaml`` and the files it names.
    """

    path: Path
    calib: np.ndarray
    spacing: tuple[float, float] | None
    pose: tuple[str, ...]
    fixed: dict
    sources: tuple[Path, ...] = ()

    def frame_names(self) -> tuple[str, ...]:
        """The names of ``pose`` read per frame from the sequence files."""
        return tuple(n for n in self.pose if n not in self.fixed)


def _matrix_source(spec, folder: Path, where: str) -> np.ndarray:
    """A 4x4 matrix from ``{matrix: ...}`` or ``{file: ...}`` (16 numbers in a text file)."""
    if not isinstance(spec, dict) or len(set(spec) & {"matrix", "file"}) != 1:
        raise DatasetError(f"{where}: give exactly one of matrix: (16 numbers) or file: (a path)")
    if "matrix" in spec:
        return parse_matrix(spec["matrix"], where)
    f = folder / str(spec["file"])
    if not f.is_file():
        raise DatasetError(f"{where}: file {f} not found")
    return parse_matrix(f.read_text(), f"{f}")


def _plus_config_matrix(f: Path, name: str) -> np.ndarray:
    """``<Transform From="A" To="B" Matrix="...">`` of a PLUS device-set configuration file (``name``: ``AToB``)."""
    try:
        tree = ET.parse(f)
    except ET.ParseError as exc:
        raise DatasetError(f"{f}: not a readable XML file ({exc})") from None
    for el in tree.iter("Transform"):
        if f"{el.get('From')}To{el.get('To')}" == name and el.get("Matrix") is not None:
            return parse_matrix(el.get("Matrix"), f"{f} Transform {name}")
    raise DatasetError(f"{f}: no <Transform From=... To=... Matrix=...> named {name}")


def _calibration(spec, units: str, folder: Path, where: str):
    """(calib, spacing or None) from ``image_to_probe`` and its units."""
    if isinstance(spec, dict) and "file" in spec and str(spec["file"]).lower().endswith(".json"):
        from ultrabones.core.dataset import read_calibration_file

        calib, spacing, _ = read_calibration_file(folder / str(spec["file"]))
        return calib, spacing
    if isinstance(spec, dict) and "file" in spec and str(spec["file"]).lower().endswith(".xml"):
        f = folder / str(spec["file"])
        if not f.is_file():
            raise DatasetError(f"{where}: file {f} not found")
        m = _plus_config_matrix(f, "ImageToProbe")
        where = f"{f} Transform ImageToProbe"
    else:
        m = _matrix_source(spec, folder, where)
    if units == "pixel":
        return calibration_from_plus(m, where)
    rot = m[:3, :3]
    if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-6) or np.linalg.det(rot) <= 0:
        raise DatasetError(f"{where}: image_to_probe_units is mm but the matrix is not rigid "
                           "(a PLUS ImageToProbe holds the pixel size: use units pixel)")
    return m, None


def read_recording(folder: Path | str) -> Recording:
    """Read and validate ``<folder>/recording.yaml``.

    Raises
    ------
    DatasetError
        Naming the file and the key for a missing or malformed entry.
    """
    import yaml

    f = Path(folder) / RECORDING
    if not f.is_file():
        raise DatasetError(f"{f}: not found (layout C needs it beside the sequence files)")
    try:
        data = yaml.safe_load(f.read_text())
    except yaml.YAMLError as exc:
        raise DatasetError(f"{f}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{f}: expected a mapping with image_to_probe, pose and transforms")
    known = {"image_to_probe", "image_to_probe_units", "pose", "transforms", "spacing_mm"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise DatasetError(f"{f}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    for key in ("image_to_probe", "pose"):
        if key not in data:
            raise DatasetError(f"{f}: {key} missing")
    units = data.get("image_to_probe_units", "pixel")
    if units not in ("pixel", "mm"):
        raise DatasetError(f"{f}: image_to_probe_units is {units!r}, expected pixel or mm")
    calib, spacing = _calibration(data["image_to_probe"], units, f.parent, f"{f} image_to_probe")
    sources = [f] + [f.parent / str(spec["file"]) for spec in [data["image_to_probe"], *(data.get("transforms") or {}).values()]
                     if isinstance(spec, dict) and "file" in spec]
    pose = data["pose"]
    if isinstance(pose, str) or not pose or not all(isinstance(n, str) and "To" in n for n in pose):
        raise DatasetError(f"{f}: pose must be a list of transform names such as [TrackerToCT, ProbeToTracker]")
    fixed = {name: _matrix_source(spec, f.parent, f"{f} transforms.{name}")
             for name, spec in (data.get("transforms") or {}).items()}
    if not any(n not in fixed for n in pose):
        raise DatasetError(f"{f}: pose names no per-frame transform (every name is in transforms)")
    if data.get("spacing_mm") is not None:
        sp = data["spacing_mm"]
        if spacing is not None:
            raise DatasetError(f"{f}: spacing_mm given, but image_to_probe is in pixel units and holds the pixel size")
        try:
            spacing = (float(sp[0]), float(sp[1]))
            ok = len(sp) == 2 and min(spacing) > 0 and np.isfinite(spacing).all()
        except (TypeError, ValueError, IndexError, KeyError):
            ok = False
        if not ok:
            raise DatasetError(f"{f}: spacing_mm must be two positive numbers (mm per pixel), got {sp!r}")
    return Recording(f, calib, spacing, tuple(pose), fixed, tuple(sources))


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
