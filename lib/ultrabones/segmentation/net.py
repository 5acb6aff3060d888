"""The network: a ``segmentation_models_pytorch`` FPN (the released code) or U-Net (the paper's text) with a ResNet
encoder and one output channel, from random weights or a local file of encoder weights (nothing is downloaded).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from ultrabones.core.errors import ParamsError

ARCHS = {"fpn": "FPN", "unet": "Unet"}


def build_model(arch: str = "fpn", encoder: str = "resnet34", encoder_weights: str | None = None, in_channels: int = 1):
    """A ``segmentation_models_pytorch`` FPN or U-Net with one output channel (logits).

    Parameters
    ----------
    arch : ``"fpn"`` (released code) or ``"unet"`` (paper text).
    encoder : smp encoder name, e.g. ``"resnet34"``.
    encoder_weights : None (random initialisation; nothing is downloaded) or a
        local file with the encoder's weights (torchvision/timm ResNet state
        dict; a classifier head is dropped and 3-channel first-layer weights are
        summed to one channel).
    in_channels : input channels (1: grayscale).

    Raises
    ------
    ParamsError
        For an unknown architecture or encoder, or a missing weights file.
    """
    import segmentation_models_pytorch as smp

    if arch not in ARCHS:
        raise ParamsError(f"training.arch: {arch!r} is not one of {sorted(ARCHS)}")
    try:
        model = getattr(smp, ARCHS[arch])(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=1)
    except KeyError as exc:
        raise ParamsError(f"training.encoder: {encoder!r} is not an smp encoder ({exc})") from None
    if encoder_weights:
        _load_encoder_weights(model, Path(encoder_weights), in_channels)
    return model


def _load_encoder_weights(model, path: Path, in_channels: int) -> None:
    if not path.is_file():
        raise ParamsError(f"training.encoder_weights: {path} not found (weights are never downloaded)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
    w = state.get("conv1.weight")
    if w is not None and w.shape[1] != in_channels:
        state["conv1.weight"] = w.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels
    missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    if unexpected or len(missing) > 0.1 * len(model.encoder.state_dict()):
        raise ParamsError(
            f"training.encoder_weights: {path} does not fit the encoder "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys)"
        )


@functools.cache  # a machine's CPU does not change while it runs: /proc/cpuinfo is read once
def cpu_has_bf16_matrix_units() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (Intel AMX-BF16): there bf16-mixed training is
    2-3 times faster than fp32; elsewhere it is slower, and ``precision: auto`` stays at 32-true."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_bf16" in line for line in f)
    except OSError:
        return False


def uses_bf16(meta: dict, device: str) -> bool:
    """Whether a model trained with ``meta["precision"]`` predicts in bf16 on ``device``: a model trained in
    bf16-mixed does where the hardware multiplies bf16 (a GPU, or a CPU with AMX), as it was validated in
    training; an fp32 model always predicts in fp32."""
    return meta.get("precision") == "bf16-mixed" and (str(device).startswith("cuda") or cpu_has_bf16_matrix_units())


def channels_last(precision: str, device_type: str) -> bool:
    """Whether the network runs on channels-last tensors: bf16 on the CPU, where oneDNN's bf16 kernels prefer
    them (measured 2.1x -> 2.8x fp32's images per core-second, FPN/ResNet-34 at 192 x 160, batch 16); fp32 and
    the GPU keep the default layout (and fp32 its golden values)."""
    return device_type == "cpu" and precision == "bf16-mixed"
