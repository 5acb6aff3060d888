"""Inference: bone probabilities of frames at their own size, masks as thresholded maps or as surfaces
(:func:`surface_mask`), a record's frames written as ``Labels_pred/``, and the speed of it.

Public API used by the evaluation stage: :func:`ultrabones.segmentation.checkpoint.load_checkpoint`,
:func:`predict`, :func:`predict_record`, :func:`ultrabones.segmentation.checkpoint.convert_released_checkpoint`,
and ``paths.models_dir / "best.ckpt"`` (see :func:`ultrabones.segmentation.fit.train`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ultrabones.core import dataset as ds
from ultrabones.segmentation import segdata
from ultrabones.segmentation.checkpoint import load_checkpoint
from ultrabones.segmentation.net import channels_last, uses_bf16


def as_model(model_or_ckpt, trust_pickle: bool = False):
    if isinstance(model_or_ckpt, (str, Path)):
        return load_checkpoint(model_or_ckpt, trust_pickle)
    if isinstance(model_or_ckpt, tuple):
        return model_or_ckpt
    meta = getattr(model_or_ckpt, "metadata", None)
    if meta is None:
        raise ValueError("predict: a model needs its metadata (use load_checkpoint, or pass (model, metadata))")
    return model_or_ckpt, meta


def predict(
    model_or_ckpt,
    images,
    batch_size: int = 16,
    device: str | None = None,
    input_size: tuple[int, int] | None = None,
    threshold: float | None = None,
) -> np.ndarray | list[np.ndarray]:
    """Bone probability of every pixel, at each image's own size.

    Parameters
    ----------
    model_or_ckpt : a checkpoint path, ``(model, metadata)``, or a model from
        :func:`load_checkpoint`.
    images : (N, H, W) uint8 array, or a list of (H, W) uint8 arrays (sizes may differ).
    batch_size : frames per forward pass.
    device : ``"cpu"``, ``"cuda"``...; None: CUDA when present.
    input_size : network input (h, w); None: the checkpoint's (training) size.
    threshold : None returns float32 probabilities; a number returns bool masks ``p >= threshold``.

    Returns
    -------
    (N, H, W) float32 (or bool) array; a list when the sizes differ.
    """
    model, meta = as_model(model_or_ckpt)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = tuple(input_size or meta["input_size"])
    mean, std = float(meta["norm_mean"]), float(meta["norm_std"])
    in_ch = int(meta.get("in_channels", 1))
    bf16 = uses_bf16(meta, device)  # as trained: bf16 or fp32
    dev = torch.device(device).type
    layout = torch.channels_last if channels_last("bf16-mixed" if bf16 else "32-true", dev) else torch.contiguous_format
    model = model.to(device, memory_format=layout).eval()
    single = isinstance(images, np.ndarray) and images.ndim == 3
    seq = list(images)
    out = []
    with torch.inference_mode(), torch.autocast(dev, torch.bfloat16, enabled=bf16):
        for i in range(0, len(seq), batch_size):
            chunk = seq[i : i + batch_size]
            x = np.stack([segdata.resize_image(im, size) for im in chunk])
            x = torch.from_numpy((x - mean) / std)[:, None].to(device)
            if in_ch != 1:
                x = x.repeat(1, in_ch, 1, 1)
            logits = model(x.contiguous(memory_format=layout)).float()
            for im, lg in zip(chunk, logits):
                prob = torch.sigmoid(F.interpolate(lg[None], size=im.shape, mode="bilinear", align_corners=False))
                p = prob[0, 0].cpu().numpy()
                out.append(p >= threshold if threshold is not None else p)
    if single or (out and all(o.shape == out[0].shape for o in out)):
        return np.stack(out) if out else np.zeros((0,) + tuple(np.asarray(images).shape[1:]), np.float32)
    return out


def surface_mask(prob: np.ndarray, threshold: float, half_rows: int) -> np.ndarray:
    """The bone surface in a probability map: per scan line, the rows where the probability peaks.

    A bone label is a band ``2 gamma`` thick along the surface (Section 3.1). A network trained on such
    bands answers with a blob as thick as the echo it sees (a real echo is a bright cap about 1 mm
    thick), whose pixels off the surface count against its accuracy. Along every column (scan line),
    the rows where the probability is at least ``threshold`` and a local maximum along that column (the
    upper of two equal rows) mark the surface; each is widened by ``half_rows`` rows above and below, the
    labels' own thickness. Where two bones are in view, a column keeps both.

    Parameters
    ----------
    prob : (H, W) probabilities.
    threshold : least probability of a surface pixel.
    half_rows : rows added above and below each peak (:func:`band_half_rows` of the band's thickness).

    Returns
    -------
    (H, W) bool.
    """
    p = np.asarray(prob, float)
    if p.ndim != 2:
        raise ValueError(f"prob must be (H, W), got shape {p.shape}")
    if int(half_rows) < 0:
        raise ValueError(f"half_rows must be >= 0, got {half_rows}")
    above = np.vstack([np.full((1, p.shape[1]), -np.inf), p[:-1]])
    below = np.vstack([p[1:], np.full((1, p.shape[1]), -np.inf)])
    peak = (p >= threshold) & (p > above) & (p >= below)
    if half_rows:
        peak = ndimage.binary_dilation(peak, structure=np.ones((2 * int(half_rows) + 1, 1), bool))
    return peak


def band_half_rows(band_mm: float, spacing) -> int:
    """Rows each side of a surface pixel for a band ``band_mm`` thick at ``spacing`` (sx, sy) mm.

    The rows whose centre lies within ``band_mm / 2`` of the surface pixel's centre, as a label's pixels
    are those whose centre lies within ``gamma`` of ``C``: ``floor(band_mm / (2 sy))``.
    """
    return int(np.floor(0.5 * float(band_mm) / float(spacing[1]) + 1e-9))


def predict_record(
    record,
    ckpt,
    out_kind: str = ds.LABELS_PRED,
    timestamps: Sequence[int] | None = None,
    batch_size: int = 16,
    device: str | None = None,
    skip_existing: bool = False,
    progress: bool = True,
    surface_band_mm: float | None = None,
    spacing: Sequence[float] | None = None,
) -> list[Path]:
    """Segment a record's frames and write ``<out_kind>/<t>_label_pred.png`` (0/255).

    Frames stream in batches: memory does not grow with the record's length. With ``surface_band_mm``,
    each frame's mask is the surface of its probability map (:func:`surface_mask`), a band that thick.

    Parameters
    ----------
    record : a :class:`~ultrabones.core.dataset.Record` or a record folder (holding ``UltrasoundImages/``).
    ckpt : a checkpoint path, ``(model, metadata)`` or a loaded model.
    out_kind : label kind to write (``Labels_pred``).
    timestamps : only these frames (ms); None: every image.
    skip_existing : leave frames already predicted (resume).
    surface_band_mm : None: the thresholded probability map; a thickness (mm): :func:`surface_mask` with
        that band (the labels' ``2 gamma``), which needs ``spacing``.
    spacing : (sx, sy) mm per pixel of the record's images.

    Returns
    -------
    The written files.
    """
    if surface_band_mm is not None and spacing is None:
        raise ValueError("predict_record: surface_band_mm needs the images' spacing")
    half = None if surface_band_mm is None else band_half_rows(surface_band_mm, spacing)
    if not isinstance(record, ds.Record):
        p = Path(record)
        record = ds.Record(specimen=p.parent.name, name=p.name, path=p)
    model, meta = as_model(ckpt)
    ts = record.timestamps() if timestamps is None else np.asarray(timestamps, dtype=np.int64)
    if skip_existing:
        ts = np.array([t for t in ts if not record.label_path(t, out_kind).is_file()], dtype=np.int64)
    thr = float(meta.get("threshold", 0.5))
    from tqdm import tqdm

    written = []
    for i in tqdm(range(0, len(ts), batch_size), desc=f"predict {record.key}", disable=not progress):
        chunk = ts[i : i + batch_size]
        images = [record.read_image(t) for t in chunk]
        if half is None:
            masks = predict((model, meta), images, batch_size=batch_size, device=device, threshold=thr)
        else:
            probs = predict((model, meta), images, batch_size=batch_size, device=device)
            masks = [surface_mask(p, thr, half) for p in probs]
        for t, m in zip(chunk, masks):
            written.append(ds.write_label(record.label_path(t, out_kind), m))
    return written


def inference_speed(model_or_ckpt, size=(256, 256), n: int = 32, batch_size: int = 8, threads: int | None = 2,
                    device: str = "cpu") -> float:
    """Frames per second of :func:`predict` on ``n`` random ``size`` frames (after one warm-up batch).

    ``threads`` sets torch's CPU threads for the measurement (restored after).
    """
    model, meta = as_model(model_or_ckpt)
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 256, size=(n,) + tuple(size), dtype=np.uint8)
        predict((model, meta), frames[:batch_size], batch_size, device, input_size=size)
        t0 = time.perf_counter()
        predict((model, meta), frames, batch_size, device, input_size=size)
        return n / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)


def predict_frames(frames: Sequence, ckpt, threads: int | None = None, progress: bool = True,
                   surface_band_mm: float | None = None, spacing=None) -> float:
    """Segment ``frames`` into ``Labels_pred/``, record by record; returns the wall time (s).

    ``threads`` sets torch's CPU threads for the predictions (restored after); None: torch's default.
    ``surface_band_mm``, ``spacing``: see :func:`predict_record`. Notebook 05 writes its predictions with it.
    """
    by_record: dict = {}
    for fr in frames:
        by_record.setdefault(fr.record, []).append(fr.timestamp)
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    try:
        t0 = time.perf_counter()
        for rec, ts in by_record.items():
            predict_record(rec, ckpt, timestamps=ts, progress=progress, surface_band_mm=surface_band_mm,
                           spacing=spacing)
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(old)
