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

Where the pieces live: this module finds specimens and records (:func:`discover`,
:func:`scan`, :func:`read_specimen`) and a dataset's calibration
(:func:`read_calibration`), and is the dataset's public face: it re-exports the
types and folder names (:mod:`ultrabones.core.dataset_types`) and the readers and
writers of the files: images and labels (:mod:`ultrabones.core.images`), tracking
tables (:mod:`ultrabones.core.tracking_table`) and CT models
(:mod:`ultrabones.core.mesh`). ``calibration.json`` itself is
:mod:`ultrabones.core.calibration_file`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ultrabones.core import sequence
from ultrabones.core.calibration_file import CALIBRATION, read_calibration_file
from ultrabones.core.dataset_types import (
    BONES, IMAGES, LABELS, LABELS_FULL, LABELS_MANUAL, LABELS_PRED, TRACKING, Frame, Record, Skipped, Specimen,
)
from ultrabones.core.errors import DatasetError
from ultrabones.core.geometry import RELEASED_SPACING_MM, released_calibration
from ultrabones.core.images import read_image, read_label, write_image, write_label
from ultrabones.core.mesh import read_mesh, write_mesh
from ultrabones.core.recording import read_recording
from ultrabones.core.tracking_table import poses, read_tracking, write_tracking

#: The dataset's API: finding specimens and records (here), and, re-exported, its types, folder names and the
#: readers and writers of its files (images and labels, tracking tables, CT models).
__all__ = [
    "BONES", "IMAGES", "LABELS", "LABELS_FULL", "LABELS_MANUAL", "LABELS_PRED", "TRACKING",
    "Frame", "Record", "Skipped", "Specimen",
    "read_specimen", "is_layout_c_specimen", "specimen", "scan", "warn_skipped", "discover", "skipped_inputs",
    "calibration_source", "read_calibration",
    "read_image", "read_label", "write_image", "write_label", "read_tracking", "poses", "write_tracking",
    "read_mesh", "write_mesh",
]


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


# ----------------------------------------------------------------------------- calibration


def _refuse_misnamed_calibration(root: Path) -> None:
    """Raise when ``root`` has no ``calibration.json`` but a file that looks meant as one
    (``Calibration.json``, ``calibration.JSON``, ``calibration.json.txt``, ...): the released calibration
    must not be used silently in place of the user's."""
    if not root.is_dir():
        return
    near = sorted(p.name for p in root.iterdir()
                  if p.is_file() and p.name != CALIBRATION and p.name.lower().startswith("calibration")
                  and ".json" in p.name.lower())
    if near:
        raise DatasetError(
            f"{root}: no {CALIBRATION}, but {', '.join(near)} is there; rename it to {CALIBRATION} (the name is "
            f"case-sensitive) to use it, or move it away to use the released calibration")


def calibration_source(root: Path | str) -> str:
    """Which calibration :func:`read_calibration` uses for ``root``, in words for the metrics: the file's path,
    or ``"released (no calibration.json in <root>)"``."""
    c_folders = _recording_folders(Path(root))
    if c_folders:
        return f"image_to_probe of {c_folders[0] / sequence.RECORDING} (layout C)"
    f = Path(root) / CALIBRATION
    return str(f) if f.is_file() else f"released (no {CALIBRATION} in {root})"


def read_calibration(root: Path | str) -> tuple[np.ndarray, tuple[float, float], float | None]:
    """The image-to-probe calibration of a dataset.

    Layout C: ``image_to_probe`` of the ``recording.yaml`` files (one per
    specimen, all equal) and the pixel size they or the sequence files' headers
    give. Else ``<root>/calibration.json`` (written by notebook 01) when
    present, else the released calibration of UltraBones100k (DESIGN.md). A file
    that looks meant as ``calibration.json`` under another name
    (``Calibration.json``) is refused rather than silently replaced by the
    released calibration; :func:`calibration_source` says which one was used.

    Returns
    -------
    calib : (4, 4) array, image plane -> probe marker (mm).
    spacing : (sx, sy) mm per pixel.
    temporal_offset_ms : the offset found by calibration, or None (released).
    """
    root = Path(root)
    c_folders = _recording_folders(root)
    if c_folders:
        return _layout_c_calibration(c_folders)
    f = root / CALIBRATION
    if not f.is_file():
        _refuse_misnamed_calibration(Path(root))
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
