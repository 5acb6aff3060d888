"""Label overlays: a grey B-mode image with coloured masks painted or blended on.

The one overlay helper of the package: the labelling figures (Fig. 3), the
rating items (Fig. 5), the evaluation examples (Fig. 6a), the training
figures and the twin's example frames all draw with :func:`overlay`.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def overlay(image: np.ndarray, layers: Iterable[Sequence], white: float = 1.0, dtype=np.float64) -> np.ndarray:
    """An RGB picture of a grey image with coloured masks on it, in order (later on top).

    Parameters
    ----------
    image : (H, W) uint8 grey image (0-255).
    layers : ``(mask, colour)`` or ``(mask, colour, alpha)`` items: a (H, W) bool mask, an RGB
        colour on the output's scale (``[0, white]``) and the colour's opacity (0-1, default 1:
        painted over; below 1 blended, ``(1 - alpha) * pixel + alpha * colour``, so that the
        echo under the label stays visible).
    white : the output value of grey 255: 1 gives RGB in ``[0, 1]``, 255 keeps the grey values.
    dtype : the output's float type (a blend is computed in the wider of it and the colour's).

    Returns
    -------
    (H, W, 3) array of ``dtype`` in ``[0, white]``.
    """
    rgb = np.repeat(np.asarray(image)[..., None], 3, axis=2).astype(dtype)
    if white != 255:
        rgb = rgb / dtype(255.0 / white)
    for layer in layers:
        mask, colour = np.asarray(layer[0], bool), layer[1]
        alpha = float(layer[2]) if len(layer) > 2 else 1.0
        if alpha >= 1.0:
            rgb[mask] = colour
        else:
            rgb[mask] = (1.0 - alpha) * rgb[mask] + alpha * np.asarray(colour)
    return rgb
