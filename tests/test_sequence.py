"""Layout C: PLUS sequence files written with SimpleITK / pynrrd from the real fixtures and a small twin, read back.

Poses must equal layout A's to 1e-9 (mm, and the rotation entries), frames byte for byte, labels of the
labelling stage pixel for pixel; bad headers must fail naming the file and the field.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from ultrabones.core import dataset as ds
from ultrabones.core.tracking_table import OPTIMIZED_COLUMNS
from ultrabones.core import geometry, recording, sequence
from ultrabones.core.errors import DatasetError
from ultrabones.pipeline import convert

sys.path.insert(0, str(Path(__file__).parent))
from test_labeling import labeling_params, make_twin  # noqa: E402  (the small twin of the labelling tests)

FIXTURE = Path(__file__).parent / "fixtures" / "real_sweep"
#: A tracker far from the CT frame, so that the chain TrackerToCT @ ProbeToTracker is exercised.
TRACKER_TO_CT = geometry.pose_from_params(np.array([120.0, -340.0, 905.0, 33.0, -61.0, 147.0]))


def real_copy(tmp_path: Path) -> Path:
    data = tmp_path / "layout_a"
    shutil.copytree(FIXTURE, data)
    (data / "README.md").unlink()
    return data


def same_records(a_root: Path, c_root: Path, tol: float = 1e-9, layout: str = "C"):
    """Assert every layout-A record reads back from ``c_root`` (of ``layout``) with equal frames, timestamps, poses."""
    (spec_a,), _ = ds.scan(a_root)
    (spec_c,), _ = ds.scan(c_root)
    assert spec_c.layout == layout and [r.name for r in spec_c.records] == [r.name for r in spec_a.records]
    for ra, rc in zip(spec_a.records, spec_c.records):
        assert np.array_equal(ra.timestamps(), rc.timestamps())
        pa, pc = ds.poses(ra.read_tracking()), ds.poses(rc.read_tracking())
        assert pa.shape == pc.shape and np.abs(pa - pc).max() < tol
        for t in ra.timestamps():
            assert np.array_equal(ra.read_image(t), rc.read_image(t))
    ca, sa, _ = ds.read_calibration(a_root)
    cc, sc, _ = ds.read_calibration(c_root)
    assert np.abs(ca - cc).max() < 1e-12 and sa == sc
    return spec_a, spec_c


@pytest.mark.parametrize("suffix", [".igs.mha", ".mhd", ".seq.nrrd"])
def test_real_fixtures_read_back_as_layout_a(tmp_path, suffix):
    a = real_copy(tmp_path)
    convert.to_sequences(a, tmp_path / "c", suffix, tracker_to_ct=TRACKER_TO_CT, compress=suffix == ".mhd")
    f = sequence.sequence_files(tmp_path / "c" / "specimen01")
    assert [p.name for p in f] == [f"record01{suffix}"]
    if suffix == ".mhd":
        assert (tmp_path / "c" / "specimen01" / "record01.zraw").is_file()
        assert sequence.data_files(f[0])[1].name == "record01.zraw"
    if suffix == ".seq.nrrd":  # written by pynrrd in PLUS's layout: columns x rows x 1 x frames, a list axis
        head = f[0].read_bytes()[:600].decode("latin-1")
        assert "pynrrd" in head and "kinds: domain domain domain list" in head and "sizes: 950 811 1 6" in head
    same_records(a, tmp_path / "c")
    # the flat form: the specimen folder itself as the data root
    (spec,), _ = ds.scan(tmp_path / "c" / "specimen01")
    assert spec.name == "specimen01" and ds.specimen(tmp_path / "c" / "specimen01", "specimen01").layout == "C"


def test_plus_calibration_convention_known_answer():
    calib, spacing = geometry.released_calibration(), (0.05392, 0.07)
    m = recording.plus_image_to_probe(calib, spacing)
    # PLUS: pixel (u, v) is (u, v) in the Image frame; Eq. 1: its centre is at (u + 0.5, v + 0.5) * spacing
    uv = np.array([[0.0, 0.0], [949.0, 810.0], [17.0, 400.0]])
    eq1 = geometry.pixels_to_ct(uv, np.eye(4), calib, spacing)
    plus = (m @ np.c_[uv, np.zeros(3), np.ones(3)].T).T[:, :3]
    assert np.abs(eq1 - plus).max() < 1e-12
    back, sp = recording.calibration_from_plus(m)
    assert sp == spacing and np.abs(back - calib).max() < 1e-12
    sheared = m.copy()
    sheared[:3, 1] += 0.01 * m[:3, 0]
    with pytest.raises(DatasetError, match="ImageToProbe: image x and y axes are 89.* degrees apart"):
        recording.calibration_from_plus(sheared)


@pytest.mark.parametrize("orientation", ["UF", "MN", "UN"])
def test_stored_orientations_read_back_in_mf(tmp_path, orientation):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 7, 5), dtype=np.uint8)
    folder = tmp_path / "spec"
    convert.write_recording(folder, geometry.released_calibration(), (0.1, 0.1), np.eye(4))
    poses = geometry.pose_from_params(rng.normal(size=(3, 6)) * 10)
    f = convert.write_sequence(folder / "r.igs.mha", frames, [10, 20, 30], {"ProbeToTracker": poses},
                               orientation=orientation)
    text = f.read_bytes()[:2000].decode("latin-1")
    assert f"UltrasoundImageOrientation = {orientation}" in text
    head = sequence.read_header(f, folder)
    assert head.orientation == orientation
    stored = convert._to_stored(frames, orientation)
    assert not np.array_equal(stored, frames)  # the file really holds flipped frames
    for k in range(3):
        assert np.array_equal(sequence.read_frame(head, k), frames[k])


def _one_file(tmp_path, frames=None, transforms=None, recording_kw=None, **kw):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (4, 6, 8), dtype=np.uint8) if frames is None else frames
    poses = geometry.pose_from_params(rng.normal(size=(len(frames), 6)) * 10)
    folder = tmp_path / "spec"
    convert.write_recording(folder, geometry.released_calibration(), (0.2, 0.2), TRACKER_TO_CT, **(recording_kw or {}))
    f = convert.write_sequence(folder / "r.igs.mha", frames, 100 + 40 * np.arange(len(frames)),
                               {"ProbeToTracker": poses} if transforms is None else transforms, **kw)
    sequence.clear_caches()
    return folder, f, poses


def test_frames_whose_status_is_not_ok_are_skipped_and_counted(tmp_path):
    folder, f, poses = _one_file(tmp_path, statuses={"ProbeToTracker": ["OK", "INVALID", "OK", "OUT_OF_VIEW"]},
                                 image_status=["OK", "OK", "OK", "OK"])
    (spec,), skipped = ds.scan(folder)
    rec = spec.records[0]
    assert list(rec.timestamps()) == [100, 180]
    assert np.abs(ds.poses(rec.read_tracking()) - TRACKER_TO_CT @ poses[[0, 2]]).max() < 1e-9
    assert len(skipped) == 1 and skipped[0].path == f
    assert skipped[0].reason == ("2 of 4 frames skipped (1 ProbeToTrackerTransformStatus INVALID, "
                                 "1 ProbeToTrackerTransformStatus OUT_OF_VIEW)")
    folder, f, _ = _one_file(tmp_path / "img", image_status=["OK", "OK", "INVALID", "OK"])
    assert list(ds.scan(folder)[0][0].records[0].timestamps()) == [100, 140, 220]
    with pytest.raises(DatasetError, match="no kept frame at timestamp 180 ms"):
        ds.scan(folder)[0][0].records[0].read_image(180)


def test_inverse_transforms_and_fixed_chains(tmp_path):
    """``pose: [TrackerToCT, ProbeToTracker]`` read from a file that stores TrackerToProbe."""
    rng = np.random.default_rng(2)
    poses = geometry.pose_from_params(rng.normal(size=(4, 6)) * 10)
    folder, f, _ = _one_file(tmp_path, transforms={"TrackerToProbe": np.linalg.inv(poses)})
    rec = ds.scan(folder)[0][0].records[0]
    assert np.abs(ds.poses(rec.read_tracking()) - TRACKER_TO_CT @ poses).max() < 1e-9
    # a new registration in TrackerToCT.txt is read (the cached header is keyed on the files recording.yaml names)
    (folder / "TrackerToCT.txt").write_text(recording.format_matrix(np.eye(4)) + "\n")
    assert np.abs(ds.poses(rec.read_tracking()) - poses).max() < 1e-9
    assert folder / "TrackerToCT.txt" in rec.input_files()


def test_calibration_from_a_plus_configuration_file_and_mm_units(tmp_path):
    folder, f, poses = _one_file(tmp_path)
    m = recording.plus_image_to_probe(geometry.released_calibration(), (0.2, 0.2))
    (folder / "PlusDeviceSet.xml").write_text(
        '<PlusConfiguration><CoordinateDefinitions>\n'
        f'<Transform From="Image" To="Probe" Matrix="{recording.format_matrix(m)}" />\n'
        '</CoordinateDefinitions></PlusConfiguration>\n')
    rec_yaml = folder / sequence.RECORDING
    rec_yaml.write_text(rec_yaml.read_text().replace("file: ImageToProbe.txt", "file: PlusDeviceSet.xml"))
    calib, spacing, _ = ds.read_calibration(folder)
    assert spacing == (0.2, 0.2) and np.abs(calib - geometry.released_calibration()).max() < 1e-12
    # units mm: the rigid calibration, the pixel size from spacing_mm (the header says 1 1)
    rec_yaml.write_text(f"image_to_probe: {{matrix: [{', '.join(repr(float(v)) for v in geometry.released_calibration().ravel())}]}}\n"
                        "image_to_probe_units: mm\npose: [TrackerToCT, ProbeToTracker]\n"
                        "transforms: {TrackerToCT: {file: TrackerToCT.txt}}\nspacing_mm: [0.3, 0.25]\n")
    sequence.clear_caches()
    assert ds.read_calibration(folder)[1] == (0.3, 0.25)
    assert ds.scan(folder)[0][0].records[0].header().spacing == (0.3, 0.25)


# ----------------------------------------------------------------------------- bad headers


def test_missing_transform_names_the_file_and_field(tmp_path):
    folder, f, _ = _one_file(tmp_path, transforms={"StylusToTracker": np.tile(np.eye(4), (4, 1, 1))})
    with pytest.raises(DatasetError, match=r"r\.igs\.mha: Seq_Frame0000_ProbeToTrackerTransform missing "
                                           r"\(recording.yaml's pose needs ProbeToTracker; this frame holds: StylusToTracker\)"):
        ds.scan(folder)


def test_wrong_matrix_size_names_the_file_and_field(tmp_path):
    folder, f, poses = _one_file(tmp_path)
    text = f.read_bytes()
    good = f"Seq_Frame0002_ProbeToTrackerTransform = {recording.format_matrix(poses[2])}".encode()
    bad = f"Seq_Frame0002_ProbeToTrackerTransform = {recording.format_matrix(poses[2][:3])}".encode()
    assert good in text
    f.write_bytes(text.replace(good, bad))
    sequence.clear_caches()
    with pytest.raises(DatasetError, match=r"r\.igs\.mha: Seq_Frame0002_ProbeToTrackerTransform: 12 numbers, "
                                           r"expected 16 \(a 4x4 matrix, row by row\)"):
        ds.scan(folder)
    f.write_bytes(text.replace(good, good.replace(b" 0.0 0.0 0.0 1.0", b" 0.0 0.0 0.5 1.0")))
    sequence.clear_caches()
    with pytest.raises(DatasetError, match=r"Seq_Frame0002_ProbeToTrackerTransform: last row is \[0.0, 0.0, 0.5, 1.0\]"):
        ds.scan(folder)


@pytest.mark.parametrize("value, why", [("XY", "known 2D B-mode orientations: MF, UF, MN, UN"),
                                        ("FM", "known 2D B-mode orientations")])
def test_unknown_orientation_names_the_file_and_field(tmp_path, value, why):
    folder, f, _ = _one_file(tmp_path, extra={"UltrasoundImageOrientation": value})
    with pytest.raises(DatasetError, match=rf"r\.igs\.mha: UltrasoundImageOrientation is '{value}'; {why}"):
        ds.scan(folder)


def test_non_uniform_spacing_names_the_file_and_field(tmp_path):
    folder, f, _ = _one_file(tmp_path, spacing=(0.2, 0.2))
    rec_yaml = folder / sequence.RECORDING
    rec_yaml.write_text(f"image_to_probe: {{matrix: [{', '.join(repr(float(v)) for v in geometry.released_calibration().ravel())}]}}\n"
                        "image_to_probe_units: mm\npose: [TrackerToCT, ProbeToTracker]\n"
                        "transforms: {TrackerToCT: {file: TrackerToCT.txt}}\n")
    frames = np.zeros((2, 6, 8), np.uint8)
    convert.write_sequence(folder / "s.igs.mha", frames, [1, 2], {"ProbeToTracker": np.tile(np.eye(4), (2, 1, 1))},
                           spacing=(0.2, 0.25))
    sequence.clear_caches()
    with pytest.raises(DatasetError, match=r"s\.igs\.mha: ElementSpacing \(0\.2, 0\.25\) differs from r\.igs\.mha's "
                                           r"\(0\.2, 0\.2\): one pixel size per dataset \(non-uniform spacing\)"):
        ds.scan(folder)
    (folder / "s.igs.mha").unlink()
    convert.write_sequence(folder / "s.igs.mha", frames, [1, 2], {"ProbeToTracker": np.tile(np.eye(4), (2, 1, 1))})
    sequence.clear_caches()
    with pytest.raises(DatasetError, match=r"s\.igs\.mha: ElementSpacing is 1 1 .* gives no pixel size"):
        ds.scan(folder)


def test_other_bad_inputs_name_the_file(tmp_path):
    folder, f, _ = _one_file(tmp_path, frames=np.zeros((3, 4, 5), np.uint8))
    (folder / sequence.RECORDING).unlink()
    with pytest.raises(DatasetError, match=r"spec: sequence files \(r\.igs\.mha, \.\.\.\) but no recording\.yaml"):
        ds.read_specimen(folder)
    folder, f, _ = _one_file(tmp_path / "b")
    f.write_bytes(f.read_bytes().replace(b"Seq_Frame0002_Timestamp = 0.18", b"Seq_Frame0002_Timestamp = 0.10"))
    sequence.clear_caches()
    with pytest.raises(DatasetError, match=r"r\.igs\.mha: Seq_Frame0002_Timestamp 0\.1 s \(100 ms\) does not increase"):
        ds.scan(folder)
    folder, f, _ = _one_file(tmp_path / "c")
    (folder / sequence.RECORDING).write_text("image_to_probe: {file: ImageToProbe.txt}\npose: ProbeToTracker\n")
    with pytest.raises(DatasetError, match=r"recording\.yaml: pose must be a list of transform names"):
        ds.scan(folder)
    (folder / sequence.RECORDING).write_text("image_to_probe: {file: ImageToProbe.txt}\npose: [ProbeToTracker]\n"
                                             "tracker: 1\n")
    with pytest.raises(DatasetError, match=r"recording\.yaml: unknown key\(s\) tracker"):
        ds.scan(folder)
    f.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 4 4\n")
    (folder / sequence.RECORDING).write_text("image_to_probe: {file: ImageToProbe.txt}\npose: [ProbeToTracker]\n")
    sequence.clear_caches()
    with pytest.raises(DatasetError, match=r"r\.igs\.mha: not a readable MetaImage/NRRD sequence file"):
        ds.scan(folder)


# ----------------------------------------------------------------------------- the labelling stage on both layouts


def _labels_equal(a_root: Path, c_root: Path, a_derived: Path, c_derived: Path) -> int:
    (sa,), _ = ds.scan(a_root, derived=a_derived)
    (sc,), _ = ds.scan(c_root, derived=c_derived)
    n = 0
    for ra, rc in zip(sa.records, sc.records):
        for kind in (ds.LABELS, ds.LABELS_FULL):
            ts = ra.labelled_timestamps(kind)
            assert np.array_equal(ts, rc.labelled_timestamps(kind))
            for t in ts:
                assert np.array_equal(ds.read_label(ra.label_path(t, kind)), ds.read_label(rc.label_path(t, kind)))
                n += 1
        oa, oc = ds.read_tracking(ra.poses_csv), ds.read_tracking(rc.poses_csv)
        assert np.array_equal(oa["timestamp"], oc["timestamp"])
        pa, pc = ds.poses(oa, "optimized"), ds.poses(oc, "optimized")
        assert np.array_equal(np.isfinite(pa), np.isfinite(pc))
        assert np.nanmax(np.abs(pa - pc)) < 1e-9
    return n


def test_labelling_the_small_twin_from_sequence_files_gives_layout_a_labels(tmp_path):
    from ultrabones.core.paths import Paths
    from ultrabones.labels import batch

    pa = make_twin(tmp_path / "a")
    convert.to_sequences(pa.dataset, tmp_path / "c", ".seq.nrrd", tracker_to_ct=TRACKER_TO_CT)
    same_records(pa.dataset, tmp_path / "c")
    pc = Paths(tmp_path / "c_build", tmp_path / "c_twin", tmp_path / "c_fig", data_root=tmp_path / "c")
    ra = batch.run(pa, labeling_params(), seed=0).report
    rc = batch.run(pc, labeling_params(), seed=0).report
    assert ra["status"].tolist() == rc["status"].tolist() and (ra["status"] == "kept").sum() >= 2
    assert _labels_equal(pa.dataset, tmp_path / "c", pa.derived, pc.derived) >= 4


def test_labelling_the_real_fixtures_from_sequence_files_gives_layout_a_labels(tmp_path):
    from test_labeling_real import PARAMS

    from ultrabones.core.paths import Paths
    from ultrabones.labels import batch

    a = real_copy(tmp_path)
    convert.to_sequences(a, tmp_path / "c", tracker_to_ct=TRACKER_TO_CT)
    pa = Paths(tmp_path / "a_build", tmp_path / "twin", tmp_path / "fig", data_root=a)
    pc = Paths(tmp_path / "c_build", tmp_path / "twin", tmp_path / "fig", data_root=tmp_path / "c")
    ra, rc = batch.run(pa, PARAMS, seed=0).report, batch.run(pc, PARAMS, seed=0).report
    assert ra["status"].tolist() == rc["status"].tolist() and (ra["status"] == "kept").sum() >= 2
    assert _labels_equal(a, tmp_path / "c", pa.derived, pc.derived) >= 4
    # and back to layout A on request: the same frames and poses
    convert.to_layout_a(tmp_path / "c", tmp_path / "a2")
    same_records(a, tmp_path / "a2", layout="A")


# ----------------------------------------------------------------------------- the export for 3D Slicer


def test_slicer_export_opens_in_simpleitk_trimesh_and_open3d(tmp_path):
    import open3d as o3d
    import SimpleITK as sitk
    import trimesh

    from ultrabones.core.paths import Paths
    from ultrabones.pipeline import slicer

    a = real_copy(tmp_path)
    convert.to_sequences(a, tmp_path / "c", tracker_to_ct=TRACKER_TO_CT)
    paths = Paths(tmp_path / "build", tmp_path / "twin", tmp_path / "fig", data_root=tmp_path / "c")
    (spec,), _ = ds.scan(paths.dataset, derived=paths.derived)
    rec = spec.records[0]
    ts = rec.timestamps()
    calib, spacing, _ = ds.read_calibration(paths.dataset)
    # a derived dataset as notebook 02 leaves it: labels of two frames, an optimised pose for one of them
    rng = np.random.default_rng(3)
    masks = {int(t): rng.random((811, 950)) < 0.01 for t in ts[[1, 4]]}
    for t, m in masks.items():
        ds.write_label(rec.label_path(t, ds.LABELS), m)
    tab = rec.read_tracking()
    opt = tab[list(geometry.POSE_COLUMNS)].to_numpy().copy()
    opt[np.arange(len(ts)) != 1] = np.nan
    opt[1, 0] += 0.5  # 0.5 mm along CT x
    tab[list(OPTIMIZED_COLUMNS)] = opt
    ds.write_tracking(rec.poses_csv, tab)
    cloud = paths.cache("06_reconstruction") / "point_clouds" / "specimen01" / "labels_optimized_all.ply"
    cloud.parent.mkdir(parents=True)
    o3d.io.write_point_cloud(str(cloud), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(rng.random((50, 3)))))

    written = slicer.export_run(paths, tmp_path / "slicer")
    out = tmp_path / "slicer" / "specimen01"
    assert {p.name for p in written} == {"ImageToProbe.txt", "record01_image.igs.mha", "record01_labels.igs.mha",
                                         "CT_bone_model.stl", "CT_bone_model.ply", "reconstruction_labels_optimized_all.ply"}
    lab = sitk.ReadImage(str(out / "record01_labels.igs.mha"))
    assert lab.GetSize() == (950, 811, len(ts))  # one label frame per input frame
    assert np.allclose(lab.GetSpacing()[:2], spacing, rtol=1e-12)
    arr = sitk.GetArrayFromImage(lab)
    for i, t in enumerate(ts):
        assert np.array_equal(arr[i], masks[int(t)].astype(np.uint8)) if int(t) in masks else not arr[i].any()
        status = lab.GetMetaData(f"Seq_Frame{i:04d}_ImageStatus")
        assert status == ("OK" if int(t) in masks else "INVALID")
        assert round(float(lab.GetMetaData(f"Seq_Frame{i:04d}_Timestamp")) * 1000) == t
    img = sitk.ReadImage(str(out / "record01_image.igs.mha"))
    assert np.array_equal(sitk.GetArrayFromImage(img)[2], rec.read_image(ts[2]))
    # ImageToCT puts a pixel where Eq. 1 does: the optimised pose on frame 1, the recorded one elsewhere
    poses = ds.poses(rec.read_tracking())
    poses[1] = ds.poses(ds.read_tracking(rec.poses_csv), "optimized")[1]  # as notebook 02 wrote it
    assert abs(poses[1][0, 3] - ds.poses(rec.read_tracking())[1][0, 3] - 0.5) < 1e-6
    uv = np.array([[0.0, 0.0], [949.0, 810.0], [300.0, 20.0]])
    for i in (0, 1):
        m = recording.parse_matrix(img.GetMetaData(f"Seq_Frame{i:04d}_ImageToCTTransform"), "test")
        phys = np.c_[uv * spacing, np.zeros(3), np.ones(3)]
        assert np.abs((m @ phys.T).T[:, :3] - geometry.pixels_to_ct(uv, poses[i], calib, spacing)).max() < 1e-9
    assert img.GetMetaData("Seq_Frame0001_ProbeToCTTransformStatus") == "OK"
    assert img.GetMetaData("Seq_Frame0000_ProbeToCTTransformStatus") == "INVALID"
    mesh = trimesh.load_mesh(out / "CT_bone_model.ply")
    assert len(mesh.faces) == len(ds.read_mesh(spec.ct_model).faces)
    assert len(o3d.io.read_point_cloud(str(out / "reconstruction_labels_optimized_all.ply")).points) == 50
    assert len(o3d.io.read_triangle_mesh(str(out / "CT_bone_model.stl")).triangles) == len(mesh.faces)


def test_convert_verb_both_ways_and_its_errors(tmp_path, capsys):
    from ultrabones.pipeline.cli import main

    a = real_copy(tmp_path)
    assert main(["convert", str(a), str(tmp_path / "c"), "--format", ".seq.mha", "--compress"]) == 0
    assert "1 record(s) written" in capsys.readouterr().out
    assert (tmp_path / "c" / "specimen01" / "record01.seq.mha").is_file()
    assert main(["convert", str(tmp_path / "c"), str(tmp_path / "a2")]) == 0
    same_records(a, tmp_path / "a2", layout="A")
    assert main(["convert", str(tmp_path / "c"), str(tmp_path / "a2")]) == 2
    assert "a2: output folder is not empty" in capsys.readouterr().err
