"""Segmentation: splits, data, losses, checkpoints, inference, training and resume (CPU, tiny)."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from ultrabones.core import dataset as ds
from ultrabones.segmentation import checkpoint, fit, inference, losses, net, segdata, splits, training, validation
from ultrabones.core.errors import DatasetError, ParamsError
from ultrabones.core.params import resolved_profile, validate_section

torch.set_num_threads(1)


def synthetic_frame(rng: np.random.Generator, shape=(60, 72)):
    """A B-mode-like frame: speckle, a bright curved bone surface, its acoustic shadow; label = the surface."""
    h, w = shape
    u = np.arange(w)
    depth = (0.45 * h + rng.uniform(-0.15, 0.15) * h + 0.12 * h * np.sin(u / w * np.pi * rng.uniform(0.5, 2.0)))
    rows = np.clip(np.round(depth).astype(int), 2, h - 3)
    img = rng.gamma(2.0, 18.0, size=shape)
    vv = np.arange(h)[:, None]
    img[vv > rows[None, :] + 1] *= 0.15  # shadow
    img[rows, u] = 235.0
    img[rows - 1, u] += 60.0
    label = np.zeros(shape, bool)
    label[rows, u] = True
    return np.clip(img, 0, 255).astype(np.uint8), label


def make_dataset(root, n_specimens=3, frames=6, shape=(60, 72), seed=0, unlabeled=2):
    """Layout A with ``n_specimens`` specimens of one record each; some frames have no label."""
    rng = np.random.default_rng(seed)
    for s in range(n_specimens):
        rec = root / f"specimen{s + 1:02d}" / "record01"
        for i in range(frames + unlabeled):
            t = 1000 + 48 * i
            img, lab = synthetic_frame(rng, shape)
            ds.write_image(rec / ds.IMAGES / f"{t}.png", img)
            if i < frames:
                ds.write_label(rec / ds.LABELS / f"{t}_label.png", lab)
    return root


def tiny_params(**kw):
    P = validate_section("training", resolved_profile("smoke")["training"], "smoke")
    P.update(input_size=[32, 32], encoder="resnet18", epochs=2, batch_size=4, memory_budget_mb=64,
             samples_per_epoch=None, max_val_frames_per_specimen=None, threads=1, augment=True, tv_weight=0.4,
             skeleton_weight=0.1)
    P.update(kw)
    return validate_section("training", P, "test")


# ----------------------------------------------------------------------------- splits


def test_automatic_split_matches_the_paper_proportions():
    names = [f"specimen{i:02d}" for i in range(1, 15)]
    s = splits.split_specimens(names)
    assert (len(s.train), len(s.val), len(s.test)) == (10, 1, 3)
    s7 = splits.split_specimens(names[:7])
    assert (s7.train, s7.val, s7.test) == (tuple(names[:4]), (names[4],), tuple(names[5:7]))
    s3 = splits.split_specimens(names[:3])
    assert (len(s3.train), len(s3.val), len(s3.test)) == (1, 1, 1)


def test_released_split_resolves_numbers_to_folder_names():
    names = [f"cadaver{i:02d}_F23{i}" for i in range(1, 15)]
    P = resolved_profile("paper")["training"]
    s = splits.split_specimens(names, P["train_specimens"], P["val_specimens"], P["test_specimens"])
    assert s.test == ("cadaver02_F232", "cadaver07_F237", "cadaver08_F238")
    assert len(s.train) == 10 and s.val == ("cadaver14_F2314",)
    assert not set(s.train) & set(s.test)


def test_split_rejects_overlap_unknown_and_too_few():
    names = ["specimen01", "specimen02", "specimen03"]
    with pytest.raises(ParamsError, match="specimen01.*more than one"):
        splits.split_specimens(names, train=["specimen01"], test=["1"])
    with pytest.raises(ParamsError, match="val_specimens.*'9' matches no"):
        splits.split_specimens(names, val=["9"])
    with pytest.raises(ParamsError, match="empty split"):
        splits.split_specimens(names[:2])


def test_cross_validation_folds_rotate_validation_and_keep_test():
    s = splits.split_specimens([f"s{i}" for i in range(1, 8)])
    folds = splits.cross_validation_folds(s, 5)
    assert len(folds) == 5
    vals = [v for f in folds for v in f.val]
    assert sorted(vals) == sorted(s.train + s.val)
    for f in folds:
        assert f.test == s.test and not set(f.train) & set(f.val)
        assert sorted(f.train + f.val) == sorted(s.train + s.val)
    assert splits.cross_validation_folds(s, 1) == [s]


# ----------------------------------------------------------------------------- data


def test_frames_skip_unlabelled_and_subsample(tmp_path):
    root = make_dataset(tmp_path, n_specimens=2, frames=6, unlabeled=3)
    frames = segdata.labelled_frames(root, ["specimen01", "specimen02"])
    assert len(frames) == 12  # 3 unlabelled frames per specimen skipped
    sub = segdata.labelled_frames(root, ["specimen01"], max_per_specimen=3)
    assert [f.timestamp for f in sub] == [1000, 1000 + 48 * 2, 1000 + 48 * 5]  # evenly spaced, ends kept


def test_a_budget_smaller_than_the_pool_keeps_an_evenly_spaced_subset_that_fits(tmp_path):
    root = make_dataset(tmp_path, n_specimens=3, frames=6, unlabeled=1)
    split = splits.Split(("specimen01", "specimen02"), ("specimen03",), ())
    per_mb = segdata.frame_bytes((32, 32)) / 2**20  # 3 KiB a frame at 32 x 32: image, band, label
    assert segdata.frame_bytes((32, 32)) == 3 * 32 * 32
    frames = segdata.training_frames(root, split, (32, 32), 4.5 * per_mb, 2)  # room for 4 and a half frames
    assert frames.n_train_labelled == 12 and len(frames.train) == 4
    assert len(frames.train) * segdata.frame_bytes((32, 32)) <= 4.5 * per_mb * 2**20
    # evenly spaced over both specimens' 12 frames (indices 0, 4, 7, 11), the ends kept
    assert [(f.specimen, f.timestamp) for f in frames.train] == [
        ("specimen01", 1000), ("specimen01", 1000 + 48 * 4), ("specimen02", 1000 + 48 * 1), ("specimen02", 1000 + 48 * 5)]
    assert [f.timestamp for f in frames.val] == [1000, 1000 + 48 * 5]  # max_val_per_specimen = 2


def test_a_budget_that_holds_every_frame_keeps_them_all(tmp_path):
    root = make_dataset(tmp_path, n_specimens=3, frames=6, unlabeled=1)
    split = splits.Split(("specimen01", "specimen02"), ("specimen03",), ())
    exact = 12 * segdata.frame_bytes((32, 32)) / 2**20
    for budget in (exact, 64.0):
        frames = segdata.training_frames(root, split, (32, 32), budget)
        assert frames.train == tuple(segdata.labelled_frames(root, split.train)) and frames.n_train_labelled == 12
        assert len(frames.val) == 6  # no cap: every validation frame
    assert len(segdata.training_frames(root, split, (32, 32), exact * 0.99).train) == 11


def test_a_bad_memory_budget_names_the_key():
    with pytest.raises(ParamsError, match=r"training.memory_budget_mb: 0.002 MiB holds no frame at 32 x 32 px"):
        segdata.within_budget([], (32, 32), 0.002)
    with pytest.raises(ParamsError, match=r"training.memory_budget_mb.*give at least"):
        training.TrainingParams.from_section(tiny_params() | {"memory_budget_mb": 0.001})
    for bad in (0, -5, "2 GB", None):
        with pytest.raises(ParamsError, match=r"training.memory_budget_mb"):
            tiny_params(memory_budget_mb=bad)
    with pytest.raises(ParamsError, match=r"training.samples_per_epoch"):
        tiny_params(samples_per_epoch=0)


def test_missing_label_folder_and_non_binary_label_are_named(tmp_path):
    root = make_dataset(tmp_path, n_specimens=1, frames=2)
    other = root / "specimen01" / "record02" / ds.IMAGES
    ds.write_image(other / "5.png", np.zeros((8, 8), np.uint8))
    with pytest.warns(UserWarning, match=r"record02/Labels: label folder not found; record skipped"):
        assert len(segdata.labelled_frames(root, ["specimen01"])) == 2
    import shutil

    shutil.rmtree(root / "specimen01" / "record01" / ds.LABELS)
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match=r"specimen01: no labelled frames"):
        segdata.labelled_frames(root, ["specimen01"])
    root = make_dataset(tmp_path / "again", n_specimens=1, frames=2)
    ds.write_image(root / "specimen01" / "record02" / ds.IMAGES / "5.png", np.zeros((8, 8), np.uint8))
    (root / "specimen01" / "record02" / ds.LABELS).mkdir()
    ds.write_image(root / "specimen01" / "record02" / ds.LABELS / "5_label.png", np.full((8, 8), 7, np.uint8))
    frames = segdata.labelled_frames(root, ["specimen01"])
    with pytest.raises(DatasetError, match=r"5_label.png: label is not binary.* is 7"):
        segdata.FrameDataset(frames, (16, 16), 3, 0.2, 0.2, (0.1, 0.1))


def test_resize_and_widen_keep_a_thin_contour_connected():
    lab = np.zeros((200, 240), bool)
    lab[100, :] = True
    small = segdata.resize_label(lab, (20, 24))
    assert small[10].all() and small.sum() == 24  # one full row, nothing else
    band = segdata.widen_label(small, 3)
    assert band[9:12].all() and band.sum() == 3 * 24
    img = segdata.resize_image(np.full((200, 240), 255, np.uint8), (20, 24))
    assert img.dtype == np.float32 and img.shape == (20, 24) and np.allclose(img, 1.0)


IDENTITY = [0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]  # segdata.AUG_FIELDS


def _aug(img, band, line, rows):
    t = lambda a: torch.from_numpy(np.asarray(a))[None, None]  # noqa: E731
    n = len(rows)
    out = segdata.augment_batch(t(img).repeat(n, 1, 1, 1).float(), t(band).repeat(n, 1, 1, 1).float(),
                                t(line).repeat(n, 1, 1, 1), torch.tensor(rows, dtype=torch.float64))
    return [o.numpy()[:, 0] for o in out]


def test_augmentation_known_maps():
    rng = np.random.default_rng(3)
    img = rng.random((8, 12)).astype(np.float32)
    line = np.zeros((8, 12), bool)
    line[4, 2:7] = True
    band = segdata.widen_label(line, 3)
    flip = list(IDENTITY)
    flip[0] = 1.0
    shift = list(IDENTITY)
    shift[4] = 0.25  # a quarter of the width (3 px) to the right
    (im, bd, ln) = _aug(img, band, line, [IDENTITY, flip, shift])
    np.testing.assert_allclose(im[0], img, atol=1e-6)
    assert (ln[0] == line).all() and (bd[0] == band).all()
    np.testing.assert_allclose(im[1], img[:, ::-1], atol=1e-6)
    assert (ln[1] == line[:, ::-1]).all()
    np.testing.assert_allclose(im[2][:, 3:], img[:, :-3], atol=1e-6)
    assert np.allclose(im[2][:, :3], 0, atol=1e-5) and (ln[2][4] == np.isin(np.arange(12), range(5, 10))).all()


def test_augmentation_moves_image_and_label_together_and_is_reproducible():
    p1 = segdata.augment_params(segdata.sample_rng(0, 2, 5))
    np.testing.assert_array_equal(p1, segdata.augment_params(segdata.sample_rng(0, 2, 5)))
    assert not np.array_equal(p1, segdata.augment_params(segdata.sample_rng(0, 3, 5)))
    rng = np.random.default_rng(3)
    img8, lab = synthetic_frame(rng, (64, 80))
    img = segdata.resize_image(img8, (64, 80))
    rows = [segdata.augment_params(segdata.sample_rng(0, e, 1)) for e in range(6)]
    a1 = _aug(img, segdata.widen_label(lab, 3), lab, rows)
    a2 = _aug(img, segdata.widen_label(lab, 3), lab, rows)
    for x, y in zip(a1, a2):
        np.testing.assert_array_equal(x, y)
    for im, band, line in zip(*a1):
        assert line.any() and (band[line] == 1).all()  # the thin label stays inside the band
        assert im.min() >= 0 and im.max() <= 1
        # the bright surface follows the label: label pixels are much brighter than the rest
        assert im[line].mean() > im[band < 0.5].mean() + 0.3


def test_epoch_sampler_depends_only_on_seed_and_epoch_and_shards():
    s = segdata.EpochSampler(10, seed=1, shuffle=True)
    s.set_epoch(3)
    a = list(s)
    s2 = segdata.EpochSampler(10, seed=1, shuffle=True)
    s2.set_epoch(3)
    assert a == list(s2) and sorted(i for i, _, _ in a) == list(range(10)) and {(e, d) for _, e, d in a} == {(3, 0)}
    ranks = [list(segdata.EpochSampler(10, 1, True, r, 3)) for r in range(3)]
    assert all(len(r) == 4 for r in ranks)
    assert {i for r in ranks for i, _, _ in r} == set(range(10))


def test_epoch_sampler_draws_a_fixed_number_of_samples_whatever_the_pool():
    def epoch(n, samples, e=2):
        s = segdata.EpochSampler(n, seed=5, shuffle=True, samples=samples)
        s.set_epoch(e)
        return list(s)

    assert epoch(10, None) == epoch(10, 10)  # null: every frame once, as before
    few = epoch(1000, 16)
    assert len(few) == 16 and len({i for i, _, _ in few}) == 16  # 16 of 1000, none twice
    assert [i for i, _, _ in few] == [i for i, _, _ in epoch(1000, 1000)[:16]]
    assert few != epoch(1000, 16, e=3)
    many = epoch(4, 10)  # more draws than frames: whole passes first, then part of another
    assert len(many) == 10 and sorted(i for i, _, _ in many[:4]) == sorted(i for i, _, _ in many[4:8]) == [0, 1, 2, 3]
    assert [d for _, _, d in many] == [0] * 4 + [1] * 4 + [2] * 2
    assert len({(i, d) for i, _, d in many}) == 10  # a repeat has its own draw number, so its own augmentation
    assert len(segdata.EpochSampler(4, 5, True, samples=10)) == 10
    assert [i for i, _, _ in segdata.EpochSampler(3, 5, False, samples=5)] == [0, 1, 2, 0, 1]
    aug = lambda draw: segdata.augment_params(segdata.sample_rng(5, 2, 7, draw))  # noqa: E731
    assert not np.array_equal(aug(0), aug(1))
    np.testing.assert_array_equal(aug(0), segdata.augment_params(segdata.sample_rng(5, 2, 7)))  # first draws: as before


# ----------------------------------------------------------------------------- losses and metric


def test_losses_known_values():
    p = torch.zeros(1, 1, 4, 4)
    p[..., :, 2:] = 1.0  # a vertical edge: 4 of 12 horizontal neighbour pairs differ, no vertical ones
    assert losses.total_variation(p).item() == pytest.approx(4 / 12)
    target = torch.zeros(1, 1, 16, 16)
    target[..., 7:10, 2:14] = 1
    assert losses.skeleton_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    skel = losses.soft_skeleton(target)[0, 0]
    assert skel.nonzero().tolist() == [[8, u] for u in range(3, 13)]  # the bar's centre line
    # empty prediction: precision term (0+1)/(0+1) = 1, sensitivity (0+1)/(10+1) -> 1 - clDice = 1 - 2/12
    assert losses.skeleton_loss(torch.zeros_like(target), target).item() == pytest.approx(1 - 2 / 12)
    loss = losses.SegmentationLoss(1, 1, 0.4, 0.1)
    terms = loss(torch.where(target > 0, 20.0, -20.0), target)
    assert set(terms) == {"dice", "bce", "tv", "skeleton", "loss"}
    # a perfect prediction leaves only the bar's own edges in TV: 24 vertical + 6 horizontal of 240 pairs each
    assert terms["tv"].item() == pytest.approx(30 / 240, abs=1e-6)
    assert terms["loss"].item() == pytest.approx(0.4 * 30 / 240, abs=1e-4)


def test_distance_f1_known_answer():
    gt = np.zeros((50, 50), bool)
    gt[20, 10:40] = True
    spacing = (0.1, 0.1)  # mm per pixel
    near = np.roll(gt, 4, axis=0)  # 0.4 mm away
    far = np.roll(gt, 6, axis=0)  # 0.6 mm away
    assert validation.f1_at_distance(near, gt, spacing, 0.5) == (1.0, 1.0, 1.0)
    assert validation.f1_at_distance(far, gt, spacing, 0.5)[2] == 0.0
    # anisotropic spacing: a 4-row shift at 0.2 mm/row is 0.8 mm
    assert validation.f1_at_distance(near, gt, (0.1, 0.2), 0.5)[2] == 0.0
    half = near.copy()
    half[24, 10:25] = False  # prediction on columns 25..39 only
    acc, com, f1 = validation.f1_at_distance(half, gt, spacing, 0.5)
    # label columns 23..39 lie within 0.5 mm (column 23: sqrt(4^2 + 2^2) * 0.1 = 0.447 mm; 22: exactly 0.5, not <)
    assert acc == 1.0 and com == pytest.approx(17 / 30) and f1 == pytest.approx(2 * com / (1 + com))
    assert validation.f1_at_distance(np.zeros_like(gt), gt, spacing, 0.5)[2] == 0.0


# ----------------------------------------------------------------------------- checkpoints and inference


def _tiny_model():
    torch.manual_seed(0)
    model = net.build_model("fpn", "resnet18")
    meta = {"arch": "fpn", "encoder": "resnet18", "in_channels": 1, "input_size": [32, 32], "norm_mean": 0.2,
            "norm_std": 0.2, "threshold": 0.5, "split": {"train": ["a"], "val": ["b"], "test": ["c"]}}
    model.eval()
    return model, meta


def test_checkpoint_reloads_with_weights_only_and_predicts_identically(tmp_path):
    model, meta = _tiny_model()
    path = checkpoint.save_checkpoint(tmp_path / "m.ckpt", model.state_dict(), meta)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == checkpoint.FORMAT and raw["metadata"]["split"]["test"] == ["c"]
    loaded, meta2 = checkpoint.load_checkpoint(path)
    assert meta2["input_size"] == [32, 32] and "git_commit" in meta2
    imgs = np.random.default_rng(0).integers(0, 256, (3, 45, 50), dtype=np.uint8)
    a = inference.predict((model, meta), imgs, device="cpu")
    b = inference.predict(path, imgs, device="cpu")
    assert a.shape == (3, 45, 50) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    mixed = inference.predict(loaded, [imgs[0], imgs[1, :40, :30]], device="cpu", threshold=0.5)
    assert isinstance(mixed, list) and mixed[1].shape == (40, 30) and mixed[1].dtype == bool


def test_precision_auto_is_bf16_channels_last_only_on_a_cpu_with_amx(monkeypatch):
    P = {"accelerator": "cpu", "devices": None, "precision": "auto", "deterministic": True}
    for amx, want in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(fit, "cpu_has_bf16_matrix_units", lambda amx=amx: amx)
        hw = fit._resolve_hardware(P)
        assert hw["precision"] == want and hw["channels_last"] is amx
    assert fit._resolve_hardware({**P, "precision": "32-true"})["channels_last"] is False  # fp32: default layout


def test_a_bf16_model_predicts_in_bf16_where_the_hardware_has_it_and_close_to_fp32(monkeypatch):
    model, meta = _tiny_model()
    imgs = np.random.default_rng(1).integers(0, 256, (4, 45, 50), dtype=np.uint8)
    fp32 = inference.predict((model, meta), imgs, device="cpu")
    monkeypatch.setattr(net, "cpu_has_bf16_matrix_units", lambda: True)
    assert net.uses_bf16({**meta, "precision": "bf16-mixed"}, "cpu")
    assert not net.uses_bf16({**meta, "precision": "32-true"}, "cpu") and not net.uses_bf16(meta, "cpu")
    bf16 = inference.predict((model, {**meta, "precision": "bf16-mixed"}), imgs, device="cpu")
    assert bf16.dtype == np.float32 and not np.array_equal(bf16, fp32)  # it did run in bf16
    assert np.abs(bf16 - fp32).max() < 0.05  # probabilities: bf16 keeps 8 bits of mantissa
    monkeypatch.setattr(net, "cpu_has_bf16_matrix_units", lambda: False)
    np.testing.assert_array_equal(inference.predict((model, {**meta, "precision": "bf16-mixed"}), imgs,
                                                    device="cpu"), fp32)  # no AMX: fp32, identical


def test_pickled_checkpoint_is_refused_without_trust_and_converts_with_it(tmp_path):
    model, _ = _tiny_model()
    pickled = tmp_path / "released.pth"
    torch.save(model, pickled)  # a whole pickled module, as the released epoch_100.pth
    with pytest.raises(DatasetError, match=r"released.pth: a pickled checkpoint.*trust_pickle=True"):
        checkpoint.load_checkpoint(pickled)
    with pytest.raises(DatasetError, match="needs trust_pickle=True"):
        checkpoint.convert_released_checkpoint(pickled, tmp_path / "safe.ckpt")
    out = checkpoint.convert_released_checkpoint(pickled, tmp_path / "safe.ckpt", trust_pickle=True)
    loaded, meta = checkpoint.load_checkpoint(out)  # now safe: weights_only
    assert meta["arch"] == "fpn" and meta["encoder"] == "resnet18" and meta["input_size"] == [256, 256]
    assert meta["norm_mean"] == pytest.approx(checkpoint.RELEASED_MEAN) and meta["split"]["test"] == ["2", "7", "8"]
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=0, atol=1e-6)
    with pytest.raises(DatasetError, match="not found"):
        checkpoint.load_checkpoint(tmp_path / "nope.ckpt")


def test_predict_record_writes_labels_pred(tmp_path):
    root = make_dataset(tmp_path, n_specimens=1, frames=3, unlabeled=2)
    model, meta = _tiny_model()
    rec = ds.read_specimen(root / "specimen01").records[0]
    written = inference.predict_record(rec, (model, meta), batch_size=2, device="cpu", progress=False)
    assert len(written) == 5 and all(p.name.endswith("_label_pred.png") for p in written)
    pred = ds.read_label(rec.label_path(1000, ds.LABELS_PRED), (60, 72))
    assert pred.dtype == bool
    again = inference.predict_record(rec.path, (model, meta), device="cpu", skip_existing=True, progress=False)
    assert again == []


def test_surface_mask_keeps_each_scan_lines_peaks_as_thick_as_the_labels():
    """A thick blob and a second, weaker bone below: per column the peak rows, widened by half_rows."""
    prob = np.zeros((20, 3))
    prob[4:10, 0] = [0.6, 0.8, 0.9, 0.95, 0.7, 0.55]  # one thick echo: peak at row 7
    prob[4:10, 1] = [0.6, 0.9, 0.9, 0.6, 0.5, 0.4]  # a plateau: its upper row (5) only
    prob[[3, 15], 2] = [0.8, 0.6]  # two bones in one column; both kept
    prob[17, 2] = 0.4  # a peak under the threshold
    m = inference.surface_mask(prob, 0.5, 0)
    assert np.flatnonzero(m[:, 0]).tolist() == [7] and np.flatnonzero(m[:, 1]).tolist() == [5]
    assert np.flatnonzero(m[:, 2]).tolist() == [3, 15]
    m1 = inference.surface_mask(prob, 0.5, 1)
    assert np.flatnonzero(m1[:, 0]).tolist() == [6, 7, 8] and m1.sum() == 4 * 3
    assert inference.band_half_rows(0.6, (0.2, 0.2)) == 1 and inference.band_half_rows(0.6, (0.05392, 0.05392)) == 5
    with pytest.raises(ValueError, match="half_rows"):
        inference.surface_mask(prob, 0.5, -1)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        inference.surface_mask(prob[None], 0.5, 0)


def test_predict_record_writes_the_surface_band(tmp_path):
    root = make_dataset(tmp_path, n_specimens=1, frames=3, unlabeled=0)
    model, meta = _tiny_model()
    rec = ds.read_specimen(root / "specimen01").records[0]
    with pytest.raises(ValueError, match="spacing"):
        inference.predict_record(rec, (model, meta), device="cpu", progress=False, surface_band_mm=0.6)
    inference.predict_record(rec, (model, meta), device="cpu", progress=False, surface_band_mm=0.6, spacing=(0.2, 0.2))
    img = ds.read_image(rec.image_path(1000))
    prob = inference.predict((model, meta), img[None], device="cpu")[0]
    want = inference.surface_mask(prob, float(meta.get("threshold", 0.5)), 1)
    np.testing.assert_array_equal(ds.read_label(rec.label_path(1000, ds.LABELS_PRED), img.shape), want)


# ----------------------------------------------------------------------------- training


def _weights(path):
    ck = torch.load(path, map_location="cpu", weights_only=True)  # our own Lightning file loads safely
    return ck["state_dict"]


def test_tiny_model_overfits_a_handful_of_frames():
    rng = np.random.default_rng(0)
    pairs = [synthetic_frame(rng, (64, 64)) for _ in range(4)]
    x = torch.from_numpy(np.stack([(segdata.resize_image(i, (32, 32)) - 0.2) / 0.2 for i, _ in pairs]))[:, None]
    y = torch.from_numpy(np.stack([segdata.widen_label(segdata.resize_label(l, (32, 32)), 3) for _, l in pairs]))
    y = y[:, None].float()
    torch.manual_seed(0)
    model = net.build_model("unet", "resnet18")
    loss_fn = losses.SegmentationLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    trace = []
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(model(x), y)["loss"]
        loss.backward()
        opt.step()
        trace.append(loss.item())
    assert trace[-1] < trace[0] / 10, (trace[0], trace[-1])


def test_training_resumes_to_the_same_weights_as_an_uninterrupted_run(tmp_path):
    root = make_dataset(tmp_path / "data", n_specimens=3, frames=6)
    split = splits.split_specimens(["specimen01", "specimen02", "specimen03"])
    P4 = tiny_params(epochs=3)
    full = fit.train_fold(root, tmp_path / "full", split, P4, seed=7, progress=False)
    part = fit.train_fold(root, tmp_path / "part", split, tiny_params(epochs=1), seed=7, progress=False)
    assert list(part.history["epoch"]) == [0]
    resumed = fit.train_fold(root, tmp_path / "part", split, P4, seed=7, progress=False)
    assert list(resumed.history["epoch"]) == [0, 1, 2] and resumed.history["session"].tolist() == [0, 1, 1]
    a = _weights(tmp_path / "full" / "checkpoints" / "last.ckpt")
    b = _weights(tmp_path / "part" / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # the exported best checkpoint carries the split and loads safely
    model, meta = checkpoint.load_checkpoint(full.checkpoint)
    assert meta["split"] == split.as_dict() and meta["n_train_frames"] == 6
    assert {"train_loss", "val_loss", "val_f1", "val_dice", "train_images_per_second"} <= set(full.history)
    # changed parameters do not resume a stale run
    other = fit.train_fold(root, tmp_path / "part", split, tiny_params(epochs=1, lr=5e-4), seed=7, progress=False)
    assert list(other.history["epoch"]) == [0]


def test_an_epoch_draws_samples_per_epoch_from_the_frames_the_budget_holds(tmp_path):
    root = make_dataset(tmp_path / "data", n_specimens=3, frames=6)
    split = splits.split_specimens(["specimen01", "specimen02", "specimen03"])
    budget = 3.5 * segdata.frame_bytes((32, 32)) / 2**20  # three frames of the training specimen's six
    P = tiny_params(epochs=1, memory_budget_mb=budget, samples_per_epoch=10, augment=False)
    res = fit.train_fold(root, tmp_path / "run", split, P, seed=0, progress=False)
    assert (res.n_train, res.n_train_labelled) == (3, 6)
    assert (res.metadata["n_train_frames"], res.metadata["n_train_labelled"], res.metadata["samples_per_epoch"]) == (
        3, 6, 10)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3  # 10 draws in batches of 4


def test_corrupt_last_checkpoint_names_the_file_and_how_to_start_fresh(tmp_path):
    root = make_dataset(tmp_path / "data", n_specimens=3, frames=4)
    split = splits.split_specimens(["specimen01", "specimen02", "specimen03"])
    fit.train_fold(root, tmp_path / "run", split, tiny_params(epochs=1, augment=False), seed=3, progress=False)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])  # a write cut short
    with pytest.raises(DatasetError) as err:
        fit.train_fold(root, tmp_path / "run", split, tiny_params(epochs=2, augment=False), seed=3, progress=False)
    msg = str(err.value)
    assert str(last) in msg and "corrupt" in msg and "start fresh" in msg and "training.resume=false" in msg
    # resume=false starts fresh over the corrupt run
    res = fit.train_fold(root, tmp_path / "run", split, tiny_params(epochs=1, augment=False, resume=False), seed=3,
                         progress=False)
    assert list(res.history["epoch"]) == [0]
    with pytest.raises(DatasetError, match="checkpoint not found"):
        checkpoint.load_lightning_checkpoint(tmp_path / "nope.ckpt")


def test_no_torch_load_without_weights_only_in_the_package():
    """Every torch.load of the package passes weights_only=True, except the opt-in foreign-pickle path."""
    import ast
    from pathlib import Path

    pkg = Path(net.__file__).parents[1]  # the whole package
    unsafe = []
    for f in sorted(pkg.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and \
                    getattr(node.func, "value", None) is not None and getattr(node.func.value, "id", None) == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                if not ok:
                    unsafe.append(f"{f.relative_to(pkg)}:{node.lineno}")
    # load_checkpoint(trust_pickle=True) is the one documented exception: a released whole-module file
    assert len(unsafe) <= 1 and all(u.startswith("segmentation/checkpoint.py") for u in unsafe), unsafe


def test_train_writes_best_checkpoint_and_kfold(tmp_path):
    root = make_dataset(tmp_path / "data", n_specimens=4, frames=4)
    res = fit.train(root, tmp_path / "models", tiny_params(epochs=1, n_folds=2, augment=False), seed=1,
                    progress=False)
    assert len(res.folds) == 2 and res.checkpoint == tmp_path / "models" / "best.ckpt"
    # automatic split of 4: train 01, 02 / val 03 / test 04; two folds deal 01, 02, 03 round robin
    assert [f.split.val for f in res.folds] == [("specimen01", "specimen03"), ("specimen02",)]
    _, meta = checkpoint.load_checkpoint(res.checkpoint)
    assert meta["split"]["test"] == ["specimen04"] and meta["fold"] == res.best.fold


def test_bad_params_are_named():
    with pytest.raises(ParamsError, match="training.arch"):
        net.build_model("segformer")
    with pytest.raises(ParamsError, match="training.encoder_weights.*not found"):
        net.build_model("fpn", "resnet18", "/nonexistent/resnet18.pth")
    P = tiny_params()
    bad = copy.deepcopy(P)
    bad["input_size"] = [32]
    with pytest.raises(ParamsError, match="input_size"):
        validate_section("training", bad, "test")


def test_a_finished_run_is_stale_once_its_labels_change(tmp_path):
    """Resume continues only onto the same data: relabelled frames give another resume key."""
    root = make_dataset(tmp_path, n_specimens=2, frames=4)
    split = splits.Split(("specimen01",), ("specimen02",), ())
    P = {"input_size": [32, 32], "memory_budget_mb": 64, "max_val_frames_per_specimen": None}
    before = fit.data_fingerprint(root, split, P)
    assert fit.data_fingerprint(root, split, P) == before
    frame = segdata.labelled_frames(root, ["specimen01"])[0]
    label = ds.read_label(frame.label)
    label[0, 0] = not label[0, 0]
    ds.write_label(frame.label, label)
    assert fit.data_fingerprint(root, split, P) != before


# ----------------------------------------------------------------------------- the stage (train mode)


def test_training_params_are_the_schema_section_typed_and_round_trip():
    from ultrabones.core.params import SCHEMA

    section = tiny_params()
    tp = training.TrainingParams.from_section(section)
    assert [f.name for f in dataclasses.fields(tp)] == list(SCHEMA["training"])
    assert tp.input_size == (32, 32) and tp.encoder == "resnet18"
    assert tp.as_dict() == section
    with pytest.raises(dataclasses.FrozenInstanceError):
        tp.epochs = 3
    with pytest.raises(ParamsError, match="training.batch_size"):
        training.TrainingParams.from_section({**section, "batch_size": 0})


def _stage_result(tmp_path, **params):
    """A stage result in train mode with known numbers: two epochs, four validation frames (one with an empty label)."""
    tp = training.TrainingParams.from_section(tiny_params(epochs=2, **params))
    split = splits.Split(("specimen01",), ("specimen02",), ("specimen03",))
    history = pd.DataFrame({"epoch": [0, 1], "train_images_per_second": [10.0, 30.0], "val_f1": [0.2, 0.4]})
    fold = fit.FoldResult(0, split, tmp_path / "run" / "best.ckpt", history,
                          {"epoch": 1, "val_f1": 0.4, "val_dice": 0.5}, 6, 4, "cpu (1 threads, 32-true)", 12.5,
                          tmp_path / "run", 9)
    trained = fit.TrainResult(split, [fold], fold, tmp_path / "best.ckpt")
    frame = lambda spec, t: ds.Frame(ds.Record(spec, "record01", tmp_path / spec / "record01"), t)  # noqa: E731
    frames = segdata.TrainingFrames(tuple(frame("specimen01", t) for t in range(6)), 9,
                                    tuple(frame("specimen02", t) for t in range(4)))
    scores = pd.DataFrame({"label_pixels": [0, 5, 7, 9], "model_acc": [1.0, 0.5, 0.5, 0.2],
                           "model_com": [1.0, 0.5, 0.5, 0.0], "model_f1": [1.0, 0.5, 0.5, 0.0],
                           "background_f1": [1.0, 0.0, 0.0, 0.0], "threshold_f1": [0.0, 0.2, 0.2, 0.4]})
    return training.Result("train", tp, training.TrainingResult(tp, trained, frames, scores, 0.6, 100.0, 20.0))


def test_stage_metrics_known_answer(tmp_path):
    m = training.metrics(_stage_result(tmp_path))
    assert (m["epochs"], m["best_epoch"], m["train_images"], m["val_images"]) == (2, 1, 6, 4)
    assert (m["train_images_labelled"], m["train_images_per_epoch"]) == (9, 6)  # 6 of 9 in memory, each once
    assert training.metrics(_stage_result(tmp_path, samples_per_epoch=480))["train_images_per_epoch"] == 480
    assert m["val_frames_empty_label"] == 1
    assert m["val_f1_at_0p5mm"] == pytest.approx(0.5) and m["val_accuracy_at_0p5mm"] == pytest.approx(0.55)
    assert m["val_completeness_at_0p5mm"] == pytest.approx(0.5)
    assert m["baseline_background_f1_at_0p5mm"] == pytest.approx(0.25)
    assert m["baseline_threshold_f1_at_0p5mm"] == pytest.approx(0.2) and m["baseline_threshold"] == 0.6
    assert m["images_per_second_train"] == 30.0  # the first epoch (warm-up) left out
    assert (m["val_f1_at_0p5mm_input_size"], m["val_dice"], m["fold_val_f1"]) == (0.4, 0.5, [0.4])
    assert (m["frames_per_second_inference"], m["frames_per_second_inference_end_to_end"]) == (20.0, 100.0)
    assert m["train_seconds"] == 12.5 and m["input_size"] == [32, 32] and m["n_folds"] == 1
    assert m["split"] == {"train": ["specimen01"], "val": ["specimen02"], "test": ["specimen03"]}
    json.dumps(m)  # JSON types only
    training.check(_stage_result(tmp_path))
    training.check_train(m, training.TrainingParams.from_section(tiny_params(epochs=2)))


def test_stage_check_names_what_failed(tmp_path):
    m = training.metrics(_stage_result(tmp_path))
    tp = training.TrainingParams.from_section(tiny_params(epochs=2))
    with pytest.raises(AssertionError, match="stopped early"):
        training.check_train(m, training.TrainingParams.from_section(tiny_params(epochs=3)))
    with pytest.raises(AssertionError, match="stopped early"):
        r = _stage_result(tmp_path)
        training.check(dataclasses.replace(r, params=dataclasses.replace(r.params, epochs=3)))
    with pytest.raises(AssertionError, match="leaked"):
        training.check_train({**m, "split": {"train": ["a"], "val": ["b"], "test": ["a"]}}, tp)
    learning = training.TrainingParams.from_section(tiny_params(epochs=2, expect_learning=True))
    training.check_train(m, learning)  # F1 0.5: 0.25 above the better baseline (background 0.25, threshold 0.2)
    with pytest.raises(AssertionError, match="did not clearly learn"):
        training.check_train({**m, "baseline_threshold_f1_at_0p5mm": 0.4}, learning)  # 0.1 above it
