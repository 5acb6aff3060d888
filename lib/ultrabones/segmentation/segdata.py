"""Training data for bone segmentation: frames, resizing, augmentation (splits: :mod:`ultrabones.segmentation.splits`).

The network sees the labelled frames of layout A/B (``UltrasoundImages/<t>.png``
with ``Labels/<t>_label.png``) resized to a fixed input size, its intensities
scaled to [0, 1] and normalised with a mean and standard deviation, and the
visible label widened to a band (3 px in the released model) so that a thin
bone contour survives the resizing and gives the loss enough positive pixels.

Training uses **every labelled frame of its training specimens**, decoded once
at the input size and held in memory, as far as a memory budget allows: when
they do not all fit, an evenly spaced subset that fits (:func:`within_budget`,
:func:`training_frames`). Compute does not grow with the pool: an epoch draws a
fixed number of samples from it (:class:`EpochSampler`).

Splits are **by specimen** (no specimen contributes frames to two sets). The
random parts (augmentation, the draws of an epoch) depend only on ``(seed,
epoch, index)``, never on a global random state, so a run stopped after epoch
*k* and resumed draws exactly what an uninterrupted run draws.
"""

from __future__ import annotations

import warnings

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from ultrabones.core import dataset as ds
from ultrabones.core.dataset import Frame
from ultrabones.core.errors import DatasetError, ParamsError
# resolve_specimens is re-exported: evaluation.benchmark calls segdata.resolve_specimens
from ultrabones.segmentation.splits import Split, resolve_specimens  # noqa: F401


# ----------------------------------------------------------------------------- frames


def available_specimens(root: Path | str, specimens: Sequence[str] | None = None) -> list[str]:
    """The specimen folder names of a dataset, sorted (``specimens``: only these, each must exist; None: all).

    Raises
    ------
    DatasetError
        If the root holds no specimen, or a named one is absent (see ``dataset.discover``).
    """
    return [s.name for s in ds.discover(root, list(specimens) if specimens else None)]


def labelled_frames(root: Path | str, specimens: Sequence[str], max_per_specimen: int | None = None,
                    derived: Path | str | None = None) -> list[Frame]:
    """Every frame with a visible label in the given specimens, sorted.

    Parameters
    ----------
    root : dataset root (layout A or B): the images.
    derived : the derived dataset holding the labels (``Paths.derived``); None: beside the images.
    specimens : specimen folder names.
    max_per_specimen : keep at most this many frames per specimen, evenly
        spaced over its sorted frames (None: all).

    A record without a ``Labels/`` folder (the labeling stage labels a subset
    of frames, and may keep none of a record) is reported with a warning
    naming the folder and skipped.

    Raises
    ------
    DatasetError
        If a label has no image, or a specimen has no labelled frame in any
        record; the folder or file is named.
    """
    frames: list[Frame] = []
    for spec in ds.discover(root, list(specimens), derived):
        mine = []
        for rec in spec.records:
            label_dir = rec.label_dir(ds.LABELS)
            if not label_dir.is_dir():
                warnings.warn(f"{label_dir}: label folder not found; record skipped", stacklevel=2)
                continue
            for t in rec.labelled_timestamps(ds.LABELS):
                if not rec.is_sequence and not rec.image_path(t).is_file():
                    raise DatasetError(f"{rec.label_path(t)}: label without an image ({rec.image_path(t)} not found)")
                if rec.is_sequence and t not in rec.timestamps():
                    raise DatasetError(f"{rec.label_path(t)}: label without an image (no kept frame at {t} ms "
                                       f"in {rec.path})")
                mine.append(Frame(rec, int(t)))
        if not mine:  # name the folder the labels were looked for in: the derived dataset, where 02 writes them
            where = spec.derived if spec.derived is not None else spec.path
            raise DatasetError(f"{where}: no labelled frames ({ds.LABELS}/<t>_label.png) in any record of specimen "
                               f"{spec.name}; the labels are written by notebook 02: run it first "
                               f"(python -m ultrabones run 02 --profile <profile>)")
        if max_per_specimen is not None:
            mine = [mine[i] for i in evenly_spaced(len(mine), max_per_specimen)]
        frames += mine
    return frames


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """Indices of ``min(k, n)`` of ``n`` items, evenly spaced, the first and the last kept (all when ``k >= n``)."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int))


def frame_bytes(size: Sequence[int]) -> int:
    """Bytes one frame holds in memory at the input size ``(h, w)``: the 8-bit image, band and thin label."""
    return 3 * int(size[0]) * int(size[1])


def within_budget(frames: Sequence[Frame], size: Sequence[int], budget_mb: float) -> list[Frame]:
    """The frames that fit a memory budget once decoded at the input size: all, or an evenly spaced subset.

    Parameters
    ----------
    frames : the labelled frames, in order (specimen, record, time).
    size : network input (h, w), pixels.
    budget_mb : memory for the decoded frames, MiB (``training.memory_budget_mb``); each takes
        :func:`frame_bytes`.

    Returns
    -------
    Every frame when they all fit; otherwise as many as fit, evenly spaced over the whole list (each specimen
    keeps its share), the first and the last kept.

    Raises
    ------
    ParamsError
        If the budget does not hold a single frame, naming ``training.memory_budget_mb`` and the least budget.
    """
    return [frames[i] for i in evenly_spaced(len(frames), frames_in_budget(size, budget_mb))]


def frames_in_budget(size: Sequence[int], budget_mb: float) -> int:
    """How many frames decoded at the input size ``(h, w)`` fit ``budget_mb`` MiB (:func:`frame_bytes` each).

    Raises
    ------
    ParamsError
        If not one does, naming ``training.memory_budget_mb`` and the least budget that holds one.
    """
    per = frame_bytes(size)
    fit = int(budget_mb * 2**20 // per)
    if fit < 1:
        raise ParamsError(f"training.memory_budget_mb: {budget_mb} MiB holds no frame at {size[0]} x {size[1]} px "
                          f"({per / 2**20:.3g} MiB each); give at least {per / 2**20:.3g}")
    return fit


@dataclass(frozen=True)
class TrainingFrames:
    """The frames of a split that training holds in memory.

    Attributes
    ----------
    train : the training pool: every labelled frame of the training specimens, or the evenly spaced subset
        that fits the memory budget (:func:`within_budget`).
    n_train_labelled : labelled frames of the training specimens (the pool's source).
    val : the validation frames (at most ``max_val_frames_per_specimen`` per specimen, evenly spaced).
    """

    train: tuple[Frame, ...]
    n_train_labelled: int
    val: tuple[Frame, ...]


def training_frames(root: Path | str, split: Split, size: Sequence[int], budget_mb: float,
                    max_val_per_specimen: int | None = None, derived: Path | str | None = None) -> TrainingFrames:
    """The training pool and validation frames of a split (see :class:`TrainingFrames`).

    Parameters
    ----------
    root : dataset root (the images).
    split : the specimens.
    size : network input (h, w), pixels.
    budget_mb : memory for the decoded training frames, MiB (``training.memory_budget_mb``).
    max_val_per_specimen : validation frames kept per specimen (``training.max_val_frames_per_specimen``); None: all.
    derived : the derived dataset holding the labels (``Paths.derived``); None: beside the images.

    Raises
    ------
    ParamsError, DatasetError
        A budget below one frame; a specimen without labelled frames (see :func:`labelled_frames`).
    """
    labelled = labelled_frames(root, split.train, None, derived)
    return TrainingFrames(tuple(within_budget(labelled, size, budget_mb)), len(labelled),
                          tuple(labelled_frames(root, split.val, max_val_per_specimen, derived)))


# ----------------------------------------------------------------------------- resizing


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an 8-bit image to ``size = (h, w)`` as float32 in [0, 1] (bilinear, antialiased).

    Used for training and inference alike, so that both see the same pixels.
    """
    h, w = size
    f = Image.fromarray(np.asarray(image, dtype=np.float32) / 255.0, mode="F")
    return np.asarray(f.resize((w, h), Image.BILINEAR), dtype=np.float32)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a bool label to ``size = (h, w)``: a target pixel is set if any source pixel in it is.

    A box average > 0 keeps a one-pixel contour connected when shrinking
    (nearest-neighbour sampling would break it into dots).
    """
    h, w = size
    f = Image.fromarray(np.asarray(label, dtype=np.float32), mode="F")
    return np.asarray(f.resize((w, h), Image.BOX), dtype=np.float32) > 1e-6


def widen_label(label: np.ndarray, band_px: int) -> np.ndarray:
    """Widen a bool label to a band ``band_px`` pixels thick (odd; 1 keeps it as is).

    A dilation by a ``band_px x band_px`` square, as the released model's 3-pixel band.
    """
    if band_px <= 1:
        return np.asarray(label, dtype=bool)
    return ndimage.binary_dilation(label, structure=np.ones((band_px, band_px), dtype=bool))


# ----------------------------------------------------------------------------- augmentation

#: Fields of one sample's augmentation parameters (a row of :func:`augment_params`).
AUG_FIELDS = ("flip", "scale", "angle_rad", "shift_y", "shift_x", "gain", "offset", "gamma", "noise_std", "noise_seed")


def augment_params(rng: np.random.Generator) -> np.ndarray:
    """Draw one sample's augmentation (:data:`AUG_FIELDS`, float64).

    Geometry (applied to the image and labels alike): a left-right flip
    (p = 0.5; the probe can be held either way, depth never flips), scale in
    [0.9, 1.1], rotation in [-10, 10] degrees and shift in [-5, 5] % of the
    size, about the centre. Photometry (image only): gain [0.8, 1.2], offset
    [-0.05, 0.05], gamma [0.8, 1.25], Gaussian noise of standard deviation in
    [0, 0.03] (intensities in [0, 1]).
    """
    return np.array([
        float(rng.random() < 0.5), rng.uniform(0.9, 1.1), np.deg2rad(rng.uniform(-10.0, 10.0)),
        rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), rng.uniform(0.8, 1.2), rng.uniform(-0.05, 0.05),
        rng.uniform(0.8, 1.25), rng.uniform(0.0, 0.03), float(rng.integers(0, 2**31 - 1)),
    ])


def augment_batch(
    image: torch.Tensor, label: torch.Tensor, line: torch.Tensor, params: torch.Tensor, noise_seed: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply :func:`augment_params` rows to a batch, on its device (GPU or CPU).

    Batched so that augmentation never bottlenecks a GPU: one ``affine_grid``
    / ``grid_sample`` per batch (bilinear for the image, nearest for the
    labels, zeros outside), then the photometric changes; the noise comes from
    a generator seeded by the batch's first ``noise_seed``.

    Parameters
    ----------
    image : (N, 1, h, w) float, intensities in [0, 1].
    label, line : (N, 1, h, w) band-widened target (float) and thin label (bool).
    params : (N, len(AUG_FIELDS)) rows of :func:`augment_params`.
    noise_seed : the noise generator's seed; None: the first row's ``noise_seed``
        (pass it from the host when ``params`` is on a GPU, to spare a sync).
    """
    n, _, h, w = image.shape
    p = params.to(device=image.device, dtype=torch.float32)
    flip, scale, ang, sy, sx = p[:, 0] > 0.5, p[:, 1], p[:, 2], p[:, 3], p[:, 4]
    # output -> input map in pixels: x_in = R(ang)/scale (x_out - c - shift) + c, with x = (col, row);
    # in affine_grid's normalised coordinates (x, y in [-1, 1]) the pixel axes scale by w/2 and h/2.
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.zeros(n, 2, 3, device=image.device)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    shift = torch.stack([2 * sx, 2 * sy], dim=1)  # fractions of the size -> normalised units
    theta[:, :, 2] = -(theta[:, :, :2] @ shift[:, :, None])[:, :, 0]
    grid = F.affine_grid(theta, (n, 1, h, w), align_corners=False)
    fl = flip[:, None, None, None]
    image = torch.where(fl, image.flip(-1), image)
    labels = torch.cat([label.float(), line.float()], dim=1)
    labels = torch.where(fl, labels.flip(-1), labels)
    image = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    labels = F.grid_sample(labels, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    gain, offset, gamma, noise = (p[:, i, None, None, None] for i in (5, 6, 7, 8))
    image = torch.clamp(image * gain + offset, 0.0, 1.0) ** gamma
    gen = torch.Generator(device=image.device).manual_seed(int(params[0, 9]) if noise_seed is None else noise_seed)
    image = image + noise * torch.randn(image.shape, generator=gen, device=image.device)
    return torch.clamp(image, 0.0, 1.0), labels[:, :1], labels[:, 1:] > 0.5


# ----------------------------------------------------------------------------- dataset


def sample_rng(seed: int, epoch: int, index: int, draw: int = 0) -> np.random.Generator:
    """The generator of one sample's augmentation: a function of (seed, epoch, index, draw) only.

    ``draw`` counts an item's earlier draws in the same epoch (:class:`EpochSampler` draws a small pool more
    than once); a repeat gets its own augmentation, the first draw the one of ``(seed, epoch, index)``.
    """
    return np.random.default_rng([int(seed), int(epoch), int(index)] + ([int(draw)] if draw else []))


class FrameDataset(Dataset):
    """Resized, normalised frames and labels for a segmentation network, decoded once and held in memory.

    Items are dicts: ``image`` (1, h, w) uint8, the resized frame (the model
    scales it to [0, 1] and normalises it on the device, after augmentation),
    ``label`` (1, h, w) bool band-widened target, ``line`` (1, h, w) bool thin
    label at the input size (8-bit items keep memory, :func:`frame_bytes` per
    frame, and the host-to-device copies small),
    ``spacing`` (2,) float32 mm per pixel (sx, sy) at the input size,
    ``index``, and with ``augment`` the sample's ``aug`` parameters
    (:func:`augment_params`, applied to whole batches on the device by
    :func:`augment_batch`). Indices may be ``(index, epoch)`` or ``(index,
    epoch, draw)`` tuples (from :class:`EpochSampler`); they seed the
    augmentation (:func:`sample_rng`).

    Parameters
    ----------
    frames : the frames (choose them to fit memory: :func:`within_budget`).
    size : input (h, w) in pixels.
    band_px : label band thickness at the input size (pixels).
    mean, std : normalisation of [0, 1] intensities (recorded; applied by the model).
    spacing_mm : (sx, sy) mm per pixel of the original images.
    augment : whether to augment.
    seed : augmentation seed.
    progress : progress bar while decoding.

    Raises
    ------
    DatasetError
        For an unreadable image or label (named), while decoding.
    """

    def __init__(
        self,
        frames: Sequence[Frame],
        size: tuple[int, int],
        band_px: int,
        mean: float,
        std: float,
        spacing_mm: tuple[float, float],
        augment: bool = False,
        seed: int = 0,
        progress: bool = False,
    ):
        from tqdm import tqdm

        self.frames = list(frames)
        self.size = (int(size[0]), int(size[1]))
        self.band_px = int(band_px)
        self.mean, self.std = float(mean), float(std)
        self.spacing_mm = (float(spacing_mm[0]), float(spacing_mm[1]))
        self.augment = augment
        self.seed = seed
        self._items = [self._load(i) for i in tqdm(range(len(self.frames)), desc="decoding frames",
                                                   disable=not progress)]

    def __len__(self) -> int:
        return len(self.frames)

    def _load(self, i: int):
        f = self.frames[i]
        img = f.read_image()
        lab = ds.read_label(f.label, img.shape)
        line = resize_label(lab, self.size)
        spacing = (self.spacing_mm[0] * img.shape[1] / self.size[1], self.spacing_mm[1] * img.shape[0] / self.size[0])
        small = np.round(resize_image(img, self.size) * 255.0).astype(np.uint8)
        return small, widen_label(line, self.band_px), line, np.float32(spacing)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every decoded frame, stacked: images (N, h, w) uint8, bands and thin labels (N, h, w) bool,
        spacings (N, 2) float32 mm per pixel (sx, sy) at the input size."""
        images, bands, lines, spacings = zip(*self._items)
        return np.stack(images), np.stack(bands), np.stack(lines), np.stack(spacings)

    def __getitem__(self, item):
        index, epoch, draw = (*item, 0, 0)[:3] if isinstance(item, (tuple, list)) else (item, 0, 0)
        img, lab, line, spacing = self._items[index]
        out = {
            "image": torch.from_numpy(np.array(img, dtype=np.uint8))[None],
            "label": torch.from_numpy(np.array(lab, dtype=bool))[None],
            "line": torch.from_numpy(np.array(line, dtype=bool))[None],
            "spacing": torch.from_numpy(np.asarray(spacing, dtype=np.float32)),
            "index": int(index),
        }
        if self.augment:
            out["aug"] = torch.from_numpy(augment_params(sample_rng(self.seed, epoch, index, draw)))
        return out


def intensity_stats(frames: Sequence[Frame], size: tuple[int, int], max_frames: int = 200) -> tuple[float, float]:
    """Mean and standard deviation of resized [0, 1] intensities over (up to ``max_frames``, evenly spaced) frames."""
    vals = np.stack([resize_image(frames[i].read_image(), size) for i in evenly_spaced(len(frames), max_frames)])
    return float(vals.mean()), float(vals.std())


class EpochSampler(Sampler):
    """Yields an epoch's ``(index, epoch, draw)`` items, drawn by ``(seed, epoch)``, sharded by rank.

    An epoch draws ``samples`` items from a pool of ``n`` (None: ``n``): shuffled, the first ``n`` draws a
    permutation of the pool, the next ``n`` another, and so on, so that no frame is drawn twice before every
    frame has been drawn once; ``draw`` counts an item's earlier draws in the epoch (0 for the first), so that a
    repeat gets its own augmentation. Compute per epoch is set by ``samples``, not by the pool's size. Unshuffled
    (validation), the pool in order.

    Lightning calls :meth:`set_epoch` at the start of every epoch, so the draws
    and the augmentation of epoch *e* depend only on the seed and *e*: a
    resumed run repeats an uninterrupted one. Under DDP every rank takes every
    ``world_size``-th item of the same draws (padded to equal length).
    """

    def __init__(self, n: int, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1,
                 samples: int | None = None):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.samples = n if samples is None else int(samples)
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.samples / self.world_size)

    def __iter__(self):
        if self.n == 0:
            return
        rng = np.random.default_rng([int(self.seed), self.epoch])
        order = np.concatenate([rng.permutation(self.n) if self.shuffle else np.arange(self.n)
                                for _ in range(math.ceil(self.samples / self.n))])[: self.samples]
        draw = np.arange(len(order)) // self.n
        total = len(self) * self.world_size
        if total > len(order):
            order = np.concatenate([order, order[: total - len(order)]])
            draw = np.concatenate([draw, draw[: total - len(draw)]])
        for i, d in zip(order[self.rank :: self.world_size], draw[self.rank :: self.world_size]):
            yield int(i), self.epoch, int(d)
