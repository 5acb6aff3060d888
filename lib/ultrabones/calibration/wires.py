"""Wire detection: where a phantom image's plane cuts the N-wires, and where the diagonals' cuts lie in the phantom.

Bright compact echoes are found in the image (:func:`detect_blobs`), assigned to the phantom's wires by depth
and lateral order (:func:`group_wire_points`, the image order from :func:`phantom_image_order`), and each N's
diagonal cut is placed in phantom coordinates by similar triangles (:func:`middle_points_in_phantom`): the
correspondences the spatio-temporal calibration (:mod:`ultrabones.calibration.offset_sweep`) solves with.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ultrabones.calibration.phantom import NWirePhantom
from ultrabones.core.errors import DatasetError


def detect_blobs(image: np.ndarray, spacing: tuple[float, float], threshold: float, min_area_px: int,
                 sigma_px: float = 1.0, max_extent_mm: float = np.inf,
                 min_separation_mm: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Bright compact spots of an image, strongest first, in image-plane millimetres.

    The smoothed image is thresholded; connected regions wider or taller than
    ``max_extent_mm`` (the phantom's floor) are dropped; the others are split
    between their local maxima (at least ``min_separation_mm`` apart) by a
    watershed, so that two echoes that touch are still two spots.

    Parameters
    ----------
    image : (H, W) array, grey levels (0..255).
    spacing : (sx, sy), mm per pixel.
    threshold : grey level (after Gaussian smoothing) above which a pixel belongs to a spot.
    min_area_px : smaller spots are ignored (speckle).
    sigma_px : Gaussian smoothing before thresholding (px); 0 for none.
    max_extent_mm : regions wider or taller than this (mm) are not wire echoes.
    min_separation_mm : least distance between two spots' peaks (mm).

    Returns
    -------
    centres : (B, 2) array, ``(x, y)`` = ``((u + 0.5) sx, (v + 0.5) sy)`` (mm) of each spot,
        its centre weighted by the smoothed grey level above ``threshold``.
    strength : (B,) the spots' summed grey level above ``threshold``, decreasing.
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    img = np.asarray(image, dtype=float)
    smooth = ndimage.gaussian_filter(img, sigma_px) if sigma_px > 0 else img
    mask = smooth > threshold
    regions, n = ndimage.label(mask)
    empty = (np.zeros((0, 2)), np.zeros(0))
    if n == 0:
        return empty
    sx, sy = spacing
    extent = np.array([[(s[1].stop - s[1].start) * sx, (s[0].stop - s[0].start) * sy]
                       for s in ndimage.find_objects(regions)])
    ok = np.concatenate([[False], extent.max(axis=1) <= max_extent_mm])
    mask &= ok[regions]
    sep_px = max(1, int(round(min_separation_mm / min(sx, sy))))
    peaks = peak_local_max(smooth, min_distance=sep_px, threshold_abs=threshold, labels=mask.astype(np.int32),
                           exclude_border=False)
    if len(peaks) == 0:
        return empty
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    spots = watershed(-smooth, markers, mask=mask)
    idx = np.arange(1, len(peaks) + 1)
    area = np.bincount(spots.ravel(), minlength=len(peaks) + 1)[1:]
    keep = idx[area >= min_area_px]
    if len(keep) == 0:
        return empty
    weight = np.where(mask, smooth - threshold, 0.0)
    strength = np.asarray(ndimage.sum_labels(weight, spots, keep))
    centres = np.array(ndimage.center_of_mass(weight, spots, keep)).reshape(-1, 2)  # (row, col)
    order = np.argsort(-strength)
    xy = np.stack([(centres[:, 1] + 0.5) * sx, (centres[:, 0] + 0.5) * sy], axis=1)
    return xy[order], strength[order]


def phantom_image_order(phantom: NWirePhantom) -> tuple[list[list[int]], bool]:
    """How the N's appear in an image held in the phantom's nominal orientation.

    The N's are grouped in *layers* (equal mean ``Y``, i.e. equal depth) ordered
    by depth, and within a layer ordered by ``X`` (lateral); the image's ``x``
    and ``y`` run along the phantom's ``X`` and ``Y``
    (:func:`ultrabones.calibration.phantom.nominal_phantom_from_image`).

    Returns
    -------
    layers : N indices of each layer, shallow to deep, each ordered by ``X``.
    wire0_first : True when wire 0 of an N lies at smaller ``X`` than wire 2.
    """
    centre = phantom.wires.mean(axis=(1, 2))  # (n, 3)
    ys = np.round(centre[:, 1], 3)
    layers = []
    for y in np.unique(ys):
        members = np.flatnonzero(ys == y)
        layers.append([int(m) for m in members[np.argsort(centre[members, 0])]])
    w0 = phantom.wires[:, 0].mean(axis=1)[:, 0]
    w2 = phantom.wires[:, 2].mean(axis=1)[:, 0]
    if not (np.all(w0 < w2) or np.all(w0 > w2)):
        raise DatasetError("phantom: wire 0 must lie on the same lateral side of wire 2 in every N")
    return layers, bool(np.all(w0 < w2))


def group_wire_points(blobs: np.ndarray, phantom: NWirePhantom, collinearity_mm: float,
                      flip_x: bool = False) -> tuple[np.ndarray | None, str]:
    """Assign detected spots to the phantom's wires.

    The spots are split into the phantom's layers at the largest gaps in depth,
    each layer ordered laterally and cut into consecutive triples (one per N).
    ``flip_x`` says that the image's ``x`` runs along the phantom's ``-X``
    (the probe turned by 180 degrees about its axis); :func:`~ultrabones.calibration.system.calibrate_probe`
    tries both and keeps the one of least localisation error.

    Parameters
    ----------
    blobs : (B, 2) array, spot centres (image-plane mm), strongest first; the
        ``3 n_N`` strongest are taken as the wires (speckle spots are weaker).
    phantom : the phantom.
    collinearity_mm : a triple is rejected when its middle spot lies farther
        than this (mm) from the line through the outer two.

    Returns
    -------
    points : (n_N, 3, 2) array (wire 0, diagonal, wire 2 of each N, mm) or None.
    reason : ``""`` when found, else why the frame is rejected.
    """
    layers, wire0_first = phantom_image_order(phantom)
    n_expected = 3 * phantom.n_n
    if len(blobs) < n_expected:
        return None, f"found {len(blobs)} spots, expected {n_expected}"
    b = blobs[:n_expected]
    b = b[np.argsort(b[:, 1])]
    sizes = [3 * len(layer) for layer in layers]
    if len(layers) > 1:
        gaps = np.diff(b[:, 1])
        cuts = np.sort(np.argsort(gaps)[-(len(layers) - 1):]) + 1
        groups = np.split(b, cuts)
    else:
        groups = [b]
    if [len(g) for g in groups] != sizes:
        return None, f"spots per depth {[len(g) for g in groups]}, expected {sizes}"
    out = np.full((phantom.n_n, 3, 2), np.nan)
    for layer, g in zip(layers, groups):
        g = g[np.argsort(-g[:, 0] if flip_x else g[:, 0])]
        for k, n in enumerate(layer):
            tri = g[3 * k: 3 * k + 3]
            if not wire0_first:
                tri = tri[::-1]
            out[n] = tri
    a, m, c = out[:, 0], out[:, 1], out[:, 2]
    ac = c - a
    dist = np.abs(ac[:, 0] * (m - a)[:, 1] - ac[:, 1] * (m - a)[:, 0]) / np.linalg.norm(ac, axis=1)
    if np.any(dist > collinearity_mm):
        n = int(np.argmax(dist))
        return None, f"N {n}: middle spot {dist[n]:.2f} mm off the line of its outer spots"
    return out, ""


def detect_wire_points(image: np.ndarray, spacing: tuple[float, float], phantom: NWirePhantom,
                       threshold: float, min_area_px: int, sigma_px: float, collinearity_mm: float,
                       max_extent_mm: float = np.inf, min_separation_mm: float = 0.8,
                       flip_x: bool = False) -> tuple[np.ndarray | None, str]:
    """Wire points of one phantom image, or None and the reason for rejecting it.

    See :func:`detect_blobs` and :func:`group_wire_points` for the parameters.
    """
    blobs, _ = detect_blobs(image, spacing, threshold, min_area_px, sigma_px, max_extent_mm, min_separation_mm)
    return group_wire_points(blobs, phantom, collinearity_mm, flip_x)


def middle_points_in_phantom(phantom: NWirePhantom, points: np.ndarray) -> np.ndarray:
    """The diagonal's cut in phantom coordinates, by similar triangles.

    With ``a, b, c`` the image points of wire 0, the diagonal and wire 2 of an
    N, the plane cuts the diagonal ``p0 -> p1`` at the fraction
    ``r = (b - a).(c - a) / |c - a|^2`` of its length (``b`` projected onto
    ``ac``, which is exact for noise-free points and least squares otherwise).

    Parameters
    ----------
    phantom : the phantom.
    points : (..., n_N, 3, 2) array, image-plane points (mm).

    Returns
    -------
    (..., n_N, 3) array, phantom-marker frame (mm).
    """
    points = np.asarray(points, dtype=float)
    a, b, c = points[..., 0, :], points[..., 1, :], points[..., 2, :]
    ac = c - a
    r = np.einsum("...i,...i->...", b - a, ac) / np.einsum("...i,...i->...", ac, ac)
    p0, p1 = phantom.wires[:, 1, 0], phantom.wires[:, 1, 1]
    return p0 + r[..., None] * (p1 - p0)
