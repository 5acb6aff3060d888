"""Dataset I/O: both released layouts, validation with clear messages, atomic writes."""

import numpy as np
import pandas as pd
import pytest
import trimesh
from PIL import Image

from ultrabones.core import dataset as ds
from ultrabones.core.calibration_file import write_calibration
from ultrabones.core.tracking_table import OPTIMIZED_COLUMNS
from ultrabones.core.errors import DatasetError


def _tracking(n=4, t0=1000):
    return pd.DataFrame(
        {"timestamp": t0 + 48 * np.arange(n), "x": 1.0, "y": 2.0, "z": 3.0,
         "euler_x": 10.0, "euler_y": 0.0, "euler_z": -5.0}
    )


def _record(path, n=3, labels=True):
    df = _tracking(n)
    ds.write_tracking(path / ds.TRACKING, df)
    for t in df.timestamp:
        img = np.full((8, 10), 40, np.uint8)
        ds.write_image(path / ds.IMAGES / f"{t}.png", img)
        if labels:
            lab = np.zeros((8, 10), bool)
            lab[4, 2:7] = True
            ds.write_label(path / ds.LABELS / f"{t}_label.png", lab)
    return df


@pytest.fixture
def layout_a(tmp_path):
    root = tmp_path / "A"
    for s in ("specimen01", "specimen02"):
        (root / s).mkdir(parents=True)
        trimesh.creation.icosphere(radius=5).export(root / s / "CT_bone_model.stl")
        for r in ("record01", "record02"):
            _record(root / s / r)
    return root


def test_layout_a(layout_a):
    specs = ds.discover(layout_a)
    assert [s.name for s in specs] == ["specimen01", "specimen02"]
    s = specs[0]
    assert s.layout == "A" and [r.name for r in s.records] == ["record01", "record02"]
    rec = s.records[0]
    ts = rec.timestamps()
    assert list(ts) == [1000, 1048, 1096]
    assert list(rec.labelled_timestamps()) == list(ts)
    img = ds.read_image(rec.image_path(ts[0]))
    lab = ds.read_label(rec.label_path(ts[0]), img.shape)
    assert img.dtype == np.uint8 and lab.sum() == 5
    df = ds.read_tracking(rec.tracking_csv)
    assert df.timestamp.dtype == np.int64
    poses = ds.poses(df)
    assert poses.shape == (3, 4, 4)
    assert ds.read_mesh(s.ct_model).is_watertight
    assert ds.discover(layout_a, ["specimen02"])[0].name == "specimen02"


def test_layout_b(tmp_path):
    root = tmp_path / "B"
    spec = root / "specimen03"
    for bone in ("tibia", "foot"):
        _record(spec / "ultrasound_records" / bone / "record01", labels=False)
    seg = spec / "CT_bone_segmentations"
    seg.mkdir(parents=True)
    trimesh.creation.box().export(seg / "CT_bone_model_merged.stl")
    trimesh.creation.box().export(seg / "tibia.stl")
    s = ds.discover(root)[0]
    assert s.layout == "B"
    assert [(r.bone, r.name) for r in s.records] == [("tibia", "record01"), ("foot", "record01")]
    assert s.records[0].key == "specimen03/tibia/record01"
    assert set(s.ct_models) == {"merged", "tibia"}
    assert len(s.records[0].labelled_timestamps()) == 0


def test_missing_root_and_specimen(tmp_path, layout_a):
    with pytest.raises(DatasetError, match="data root not found"):
        ds.discover(tmp_path / "nope")
    with pytest.raises(DatasetError, match="specimen09 not found"):
        ds.discover(layout_a, ["specimen09"])


def test_misnamed_record_folders_are_warned_about_and_returned(layout_a):
    """A specimen whose record folders are misnamed used to vanish without a word (a third of the frames)."""
    import warnings

    spec2 = layout_a / "specimen02"
    for r in ("record01", "record02"):
        (spec2 / r / ds.IMAGES).rename(spec2 / r / "Ultrasound_Images")
        (spec2 / r / ds.TRACKING).rename(spec2 / r / "Tracking.csv")
    (layout_a / "specimen01" / "notes").mkdir()  # a stray folder in a good specimen
    (layout_a / "README.md").write_text("files at the root are not inputs")
    with pytest.warns(UserWarning, match=r"2 input folder\(s\) not recognised") as rec:
        specs = ds.discover(layout_a)
    assert [s.name for s in specs] == ["specimen01"]
    msg = str(rec[0].message)
    assert str(spec2) in msg and "record01, record02" in msg and str(layout_a / "specimen01" / "notes") in msg
    found, skipped = ds.scan(layout_a)
    assert [s.name for s in found] == ["specimen01"]
    rows = ds.skipped_inputs(skipped)
    assert {r["path"] for r in rows} == {str(spec2), str(layout_a / "specimen01" / "notes")}
    assert all(r["reason"] for r in rows)
    # naming the broken specimen says why it is not there
    with pytest.raises(DatasetError, match=r"specimen02 not found .* no records .*not records: record01, record02"):
        ds.discover(layout_a, ["specimen02"])
    # a clean dataset warns about nothing
    (layout_a / "specimen01" / "notes").rmdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [s.name for s in ds.discover(layout_a, ["specimen01"])] == ["specimen01"]


def test_layout_b_unknown_bone_folder_is_reported(tmp_path):
    spec = tmp_path / "B" / "specimen03"
    _record(spec / "ultrasound_records" / "tibia" / "record01", labels=False)
    _record(spec / "ultrasound_records" / "femur" / "record01", labels=False)
    (spec / "ultrasound_records" / "tibia" / "record02_broken").mkdir()
    found, skipped = ds.scan(tmp_path / "B")
    assert [(r.bone, r.name) for r in found[0].records] == [("tibia", "record01")]
    assert sorted(sk.path.name for sk in skipped) == ["femur", "record02_broken"]


def test_tracking_missing_column(tmp_path):
    f = tmp_path / "tracking.csv"
    _tracking().drop(columns=["euler_y"]).to_csv(f, index=False)
    with pytest.raises(DatasetError, match=r"tracking.csv: missing column\(s\) euler_y"):
        ds.read_tracking(f)


def test_tracking_non_integer_timestamp(tmp_path):
    f = tmp_path / "tracking.csv"
    df = _tracking()
    df["timestamp"] = df["timestamp"].astype(float)
    df.loc[2, "timestamp"] = 1096.5
    df.to_csv(f, index=False)
    with pytest.raises(DatasetError, match="row 3: timestamp 1096.5 is not an integer"):
        ds.read_tracking(f)


def test_tracking_not_increasing(tmp_path):
    f = tmp_path / "tracking.csv"
    df = _tracking()
    df.loc[2, "timestamp"] = 1000
    df.to_csv(f, index=False)
    with pytest.raises(DatasetError, match="row 3: timestamp 1000 does not increase"):
        ds.read_tracking(f)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_tracking_nan_or_inf_pose(tmp_path, bad):
    f = tmp_path / "tracking.csv"
    df = _tracking()
    df.loc[1, "euler_y"] = bad
    df.to_csv(f, index=False)
    with pytest.raises(DatasetError, match=r"row 2: euler_y is (nan|inf) \(not a finite number\)"):
        ds.read_tracking(f)


def test_tracking_optimized_nan_allowed_for_discarded(tmp_path):
    f = tmp_path / "tracking.csv"
    df = _tracking()
    for c in OPTIMIZED_COLUMNS:
        df[c] = 0.0
    df.loc[1, list(OPTIMIZED_COLUMNS)] = np.nan
    ds.write_tracking(f, df)
    out = ds.read_tracking(f)
    p = ds.poses(out, "optimized")
    assert np.isnan(p[1]).all() and np.isfinite(p[0]).all()
    with pytest.raises(DatasetError, match="_registered"):
        ds.poses(out, "registered")


def test_corrupt_png(tmp_path):
    f = tmp_path / "1000.png"
    f.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetError, match="1000.png: not a readable image"):
        ds.read_image(f)


def test_rgb_image_rejected(tmp_path):
    f = tmp_path / "1000.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(f)
    with pytest.raises(DatasetError, match="expected an 8-bit single-channel image, got mode RGB"):
        ds.read_image(f)


def test_sixteen_bit_image_rejected(tmp_path):
    f = tmp_path / "1000.png"
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(f)
    with pytest.raises(DatasetError, match="8-bit single-channel"):
        ds.read_image(f)


def test_non_binary_label(tmp_path):
    f = tmp_path / "1000_label.png"
    arr = np.zeros((5, 6), np.uint8)
    arr[2, 3] = 128
    Image.fromarray(arr).save(f)
    with pytest.raises(DatasetError, match=r"not binary: pixel \(row 2, col 3\) is 128"):
        ds.read_label(f)


def test_label_size_mismatch(tmp_path):
    f = tmp_path / "1000_label.png"
    ds.write_label(f, np.zeros((5, 6), bool))
    with pytest.raises(DatasetError, match=r"label size \(6, 5\) \(W x H\) differs from the image's \(7, 5\)"):
        ds.read_label(f, shape=(5, 7))


def test_mesh_missing_empty_and_open(tmp_path):
    with pytest.raises(DatasetError, match="mesh not found"):
        ds.read_mesh(tmp_path / "none.stl")
    f = tmp_path / "empty.stl"
    f.write_bytes(b"")
    with pytest.raises(DatasetError, match="empty.stl"):
        ds.read_mesh(f)
    box = trimesh.creation.box()
    open_mesh = trimesh.Trimesh(box.vertices, box.faces[:-2])
    g = tmp_path / "open.stl"
    open_mesh.export(g)
    with pytest.warns(UserWarning, match="not watertight"):
        ds.read_mesh(g)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    from ultrabones.core import atomic

    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_calibration_round_trip_and_fallback(tmp_path):
    from ultrabones.core.geometry import RELEASED_SPACING_MM, released_calibration

    calib, spacing, offset = ds.read_calibration(tmp_path)
    np.testing.assert_allclose(calib, released_calibration())
    assert spacing == RELEASED_SPACING_MM and offset is None
    write_calibration(tmp_path, np.eye(4), (0.2, 0.2), -123.4, localization_error_mm=1.0)
    calib, spacing, offset = ds.read_calibration(tmp_path)
    np.testing.assert_allclose(calib, np.eye(4))
    assert spacing == (0.2, 0.2) and offset == -123.4
    (tmp_path / "calibration.json").write_text('{"calibration": [[1, 2]], "spacing_mm": [0.2, 0.2]}')
    with pytest.raises(DatasetError, match="calibration.json: calibration must be a finite 4x4"):
        ds.read_calibration(tmp_path)
