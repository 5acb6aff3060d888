"""Checkpoints: this project's format, foreign ones, and Lightning's own during training.

The exported checkpoint is a plain dict -- ``{"format", "state_dict", "metadata"}`` -- that loads with
``torch.load(weights_only=True)``; a pickled foreign checkpoint (the released whole-module ``smp.FPN``) is opened
only with ``trust_pickle=True`` (:func:`convert_released_checkpoint` converts it once). The Lightning checkpoints
of a training run (``last.ckpt``, the best) load with ``weights_only=True`` too.
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from ultrabones.core import atomic
from ultrabones.core.cache import git_commit
from ultrabones.core.errors import DatasetError
from ultrabones.segmentation.net import ARCHS, build_model

FORMAT = "ultrabones-segmentation/1"
#: Normalisation of the released model ([0, 1] intensities), from DESIGN.md.
RELEASED_MEAN, RELEASED_STD = 0.17475835978984833, 0.16475939750671387
#: Input size (h, w) and label band (px) of the released model.
RELEASED_SIZE, RELEASED_BAND_PX = (256, 256), 3


def save_checkpoint(path: Path | str, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Path:
    """Save ``{"format", "state_dict", "metadata"}`` atomically; loadable with ``weights_only=True``.

    ``metadata`` is reduced to JSON types (lists, dicts, str, numbers, None)
    and given the git commit and creation time.
    """
    meta = atomic.to_jsonable(dict(metadata))
    meta.setdefault("git_commit", git_commit())
    meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    blob = {"format": FORMAT, "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
            "metadata": meta}
    with atomic.atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return Path(path)


def _model_from_state(state: Mapping[str, torch.Tensor], metadata: Mapping, where: Path):
    model = build_model(metadata["arch"], metadata["encoder"], None, int(metadata.get("in_channels", 1)))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DatasetError(f"{where}: weights do not fit {metadata['arch']}-{metadata['encoder']}: {exc}") from None
    model.eval()
    model.metadata = dict(metadata)
    return model


def load_checkpoint(path: Path | str, trust_pickle: bool = False):
    """Load a segmentation checkpoint.

    Parameters
    ----------
    path : a checkpoint of this project's format (state dict + metadata), or,
        with ``trust_pickle=True``, a pickled foreign one (the released
        whole-module ``smp.FPN`` or a state dict of one).
    trust_pickle : allow unpickling, which can run arbitrary code. Only for
        files you trust.

    Returns
    -------
    (model, metadata) : the network in eval mode on the CPU (``model.metadata``
        is the same dict), and its metadata (architecture, input size,
        normalisation, split, params, git commit).

    Raises
    ------
    DatasetError
        If the file is missing, not a checkpoint, or pickled without ``trust_pickle``.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        head = path.read_bytes()[:64]
        if not head.startswith((b"PK\x03\x04", b"\x80")):  # neither torch's zip format nor a pickle
            raise DatasetError(
                f"{path}: not a torch checkpoint (it starts with {head[:24]!r}: neither torch's zip format nor a "
                f"pickle; a text file, a Git LFS pointer or a truncated download?); replace it with the checkpoint "
                f"file (notebook 04 writes best.ckpt)") from None
        if not trust_pickle:
            raise DatasetError(
                f"{path}: a pickled checkpoint (loading it can run arbitrary code); refused. If you trust the file,"
                f" convert it once with convert_released_checkpoint(path, out, trust_pickle=True)"
                f" ({str(exc).splitlines()[0][:120]})"
            ) from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as exc:
        raise DatasetError(f"{path}: not a readable torch checkpoint ({exc})") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return _model_from_state(obj["state_dict"], obj["metadata"], path), dict(obj["metadata"])
    if not trust_pickle:
        raise DatasetError(
            f"{path}: not an ultrabones checkpoint (no format {FORMAT!r}); convert it with"
            f" convert_released_checkpoint(path, out, trust_pickle=True)"
        )
    state, meta = _foreign_state(obj, path)
    return _model_from_state(state, meta, path), meta


def _foreign_state(obj, path: Path) -> tuple[dict, dict]:
    """State dict and metadata of a foreign checkpoint (released whole module, or state dicts)."""
    arch = None
    if isinstance(obj, torch.nn.Module):
        arch = {v: k for k, v in ARCHS.items()}.get(type(obj).__name__)
        name = getattr(obj, "name", "") or ""
        encoder = name.split("-", 1)[1] if "-" in name else "resnet34"
        state = obj.state_dict()
    elif isinstance(obj, dict):
        state = obj.get("state_dict", obj.get("model_state_dict", obj))
        if not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise DatasetError(f"{path}: no state dict of tensors found (keys: {list(obj)[:8]})")
        if all(k.startswith("model.") for k in state):
            state = {k[len("model."):]: v for k, v in state.items()}
        encoder = "resnet34"
    else:
        raise DatasetError(f"{path}: unrecognised checkpoint content ({type(obj).__name__})")
    if arch is None:
        arch = "fpn" if any(k.startswith("decoder.p5") for k in state) else "unet"
    conv1 = state.get("encoder.conv1.weight")
    meta = {
        "arch": arch, "encoder": encoder, "in_channels": int(conv1.shape[1]) if conv1 is not None else 1,
        "input_size": list(RELEASED_SIZE), "norm_mean": RELEASED_MEAN, "norm_std": RELEASED_STD,
        "label_band_px": RELEASED_BAND_PX, "threshold": 0.5, "split": {
            "train": ["1", "3", "4", "5", "6", "9", "10", "11", "12", "13", "14"], "val": [], "test": ["2", "7", "8"]},
        "source": str(path), "converted_from": "released pickled checkpoint",
    }
    return {k: v for k, v in state.items()}, meta


def convert_released_checkpoint(path: Path | str, out: Path | str, trust_pickle: bool = False) -> Path:
    """Convert the released pickled ``smp.FPN`` checkpoint to this project's safe format.

    Unpickling can run code: this refuses unless ``trust_pickle=True``. The
    released model's input size (256 x 256), normalisation and split (DESIGN.md)
    go into the metadata.

    Raises
    ------
    DatasetError
        Without ``trust_pickle``, or if the file holds no FPN/U-Net weights.
    """
    path = Path(path)
    if not trust_pickle:
        raise DatasetError(f"{path}: converting a pickled checkpoint needs trust_pickle=True (it can run code)")
    model, meta = load_checkpoint(path, trust_pickle=True)
    return save_checkpoint(out, model.state_dict(), meta)


def load_lightning_checkpoint(path: Path | str, run_dir: Path | str | None = None) -> dict:
    """Load one of this project's own Lightning checkpoints with ``weights_only=True``.

    Parameters
    ----------
    path : a ``.ckpt`` written by :func:`ultrabones.segmentation.fit.train_fold` (``last.ckpt`` or the best).
    run_dir : the training run's folder, named in the message as what to delete.

    Raises
    ------
    DatasetError
        If the file is missing, truncated or otherwise unreadable (for example
        ``PytorchStreamReader failed reading zip archive`` after a killed
        write), or holds more than tensors and plain data. The message names
        the file and how to start fresh.
    """
    path = Path(path)
    fresh = (f"to start fresh, delete {run_dir if run_dir is not None else path}"
             " or rerun with -p training.resume=false")
    if not path.is_file():
        raise DatasetError(f"{path}: checkpoint not found; {fresh}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DatasetError(f"{path}: checkpoint holds objects other than tensors and plain data, refused "
                           f"({str(exc).splitlines()[0][:160]}); {fresh}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise DatasetError(f"{path}: corrupt or truncated checkpoint ({first}); {fresh}") from None
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise DatasetError(f"{path}: not a Lightning checkpoint (no state_dict); {fresh}")
    return obj
