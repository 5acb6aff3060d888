"""The N-wire (Z) calibration phantom: its geometry, its JSON, and where it meets an image.

Frames
------
- *phantom* (the phantom-marker frame, mm): the frame of the tracked marker
  fixed to the phantom. The wires and the marker's fiducials are given in it.
  In the default phantom, ``X`` runs across the image (lateral), ``Y`` grows
  with depth, and the wires run along ``Z``, so that an image plane with
  ``z`` along ``Z`` cuts every wire once.
- *image plane* (IP, mm): ``x`` lateral, ``y`` depth, ``z`` out of plane; the
  plane is ``z = 0`` (see :mod:`ultrabones.core.geometry`).

An *N* is three wires: two parallel wires (the first and the third) and a
diagonal (the middle one) that runs from a point of the first wire's line to a
point of the third wire's line. The image plane cuts them at three collinear
points ``a, b, c``; because the triangles the diagonal makes with the parallel
wires are similar, ``|ab| / |ac|`` is the fraction of the diagonal at which the
plane cuts it, which places ``b`` in phantom coordinates from the image alone
(:func:`ultrabones.calibration.wires.middle_points_in_phantom`).

Recordings hold the probe about :func:`nominal_phantom_from_image`: the
image's depth along the phantom's ``+Y`` and its lateral axis along ``+X`` or
``-X`` (calibration tries both), tilted and moved by a few degrees and
millimetres, so that every wire is cut within its segment and inside the image.

The phantom's JSON (``raw/phantom/phantom.json``, docs/twin_format.md)::

    {"fiducials_mm": [[x, y, z], ...],          # phantom-marker fiducials
     "fiducial_radius_mm": r,
     "n_wires": [{"wires": [[p0, p1], [p0, p1], [p0, p1]]}, ...]}

with the diagonal's ``p0`` on the first wire's line and its ``p1`` on the
third wire's line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ultrabones.core.errors import DatasetError

#: Tolerance (mm) for the diagonal's endpoints to lie on the parallel wires' lines.
_ON_LINE_TOL_MM = 1e-6
#: Tolerance (sine of the angle) for the first and third wires to be parallel.
_PARALLEL_TOL = 1e-9


@dataclass(frozen=True)
class NWirePhantom:
    """An N-wire phantom in its marker's frame.

    Attributes
    ----------
    wires : (n_N, 3, 2, 3) float array, mm, phantom-marker frame. ``wires[n, w]``
        is the segment ``[p0, p1]`` of wire ``w`` of N ``n``; ``w = 1`` is the
        diagonal, with ``p0`` on wire 0's line and ``p1`` on wire 2's line.
    fiducials : (F, 3) float array, mm, the phantom marker's fiducials in its frame.
    fiducial_radius_mm : radius of the fiducial spheres (mm).
    """

    wires: np.ndarray
    fiducials: np.ndarray
    fiducial_radius_mm: float = 5.0
    name: str = field(default="nwire")

    def __post_init__(self):
        wires = np.asarray(self.wires, dtype=float)
        fid = np.asarray(self.fiducials, dtype=float)
        object.__setattr__(self, "wires", wires)
        object.__setattr__(self, "fiducials", fid)
        validate_wires(wires, where="NWirePhantom")
        if fid.ndim != 2 or fid.shape[1] != 3 or len(fid) < 3 or not np.isfinite(fid).all():
            raise DatasetError(f"NWirePhantom: fiducials must be a finite (F >= 3, 3) array, got shape {fid.shape}")
        if not self.fiducial_radius_mm > 0:
            raise DatasetError(f"NWirePhantom: fiducial_radius_mm must be positive, got {self.fiducial_radius_mm}")

    @property
    def n_n(self) -> int:
        """Number of N-wires."""
        return int(self.wires.shape[0])

    def to_dict(self) -> dict:
        """The JSON form (``raw/phantom/phantom.json``)."""
        return {
            "name": self.name,
            "fiducials_mm": self.fiducials.tolist(),
            "fiducial_radius_mm": float(self.fiducial_radius_mm),
            "n_wires": [{"wires": n.tolist()} for n in self.wires],
        }

    @classmethod
    def from_dict(cls, data: dict, where: str = "phantom.json") -> "NWirePhantom":
        """Read the JSON form, validated.

        Raises
        ------
        DatasetError
            If a key is missing, or the wires are not N-shaped (naming the N).
        """
        try:
            wires = np.array([n["wires"] for n in data["n_wires"]], dtype=float)
            fid = np.asarray(data["fiducials_mm"], dtype=float)
            radius = float(data.get("fiducial_radius_mm", 5.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{where}: not a valid N-wire phantom ({type(exc).__name__}: {exc})") from None
        validate_wires(wires, where=where)
        return cls(wires=wires, fiducials=fid, fiducial_radius_mm=radius, name=str(data.get("name", "nwire")))


def validate_wires(wires: np.ndarray, where: str) -> None:
    """Check that ``wires`` is an (n_N, 3, 2, 3) array of finite N-shaped segments.

    Raises
    ------
    DatasetError
        Naming ``where`` and the N at fault.
    """
    if wires.ndim != 4 or wires.shape[1:] != (3, 2, 3) or len(wires) == 0:
        raise DatasetError(f"{where}: wires must have shape (n_N, 3, 2, 3), got {wires.shape}")
    if not np.isfinite(wires).all():
        raise DatasetError(f"{where}: wire endpoints must be finite")
    for n, (w0, wd, w2) in enumerate(wires):
        d0, d2 = w0[1] - w0[0], w2[1] - w2[0]
        if min(np.linalg.norm(d0), np.linalg.norm(d2), np.linalg.norm(wd[1] - wd[0])) <= 0:
            raise DatasetError(f"{where}: N {n} has a wire of zero length")
        sin = np.linalg.norm(np.cross(d0, d2)) / (np.linalg.norm(d0) * np.linalg.norm(d2))
        if sin > _PARALLEL_TOL:
            raise DatasetError(f"{where}: N {n}: the first and third wires are not parallel (sin = {sin:.3g})")
        if _line_distance(wd[0], w0) > _ON_LINE_TOL_MM or _line_distance(wd[1], w2) > _ON_LINE_TOL_MM:
            raise DatasetError(
                f"{where}: N {n}: the diagonal must run from a point of wire 0's line (p0) "
                f"to a point of wire 2's line (p1)"
            )


def _line_distance(point: np.ndarray, segment: np.ndarray) -> float:
    """Distance (mm) from ``point`` to the infinite line through ``segment``."""
    d = segment[1] - segment[0]
    return float(np.linalg.norm(np.cross(point - segment[0], d)) / np.linalg.norm(d))


def default_phantom(
    width_mm: float = 36.0,
    depth_mm: float = 44.0,
    n_layers: int = 3,
    n_per_layer: int = 2,
    wire_length_mm: float = 40.0,
    n_width_mm: float = 10.0,
) -> NWirePhantom:
    """The twin's N-wire phantom: ``n_layers`` layers of ``n_per_layer`` N's.

    The N's of a layer lie in the plane ``Y = depth`` and share the lateral
    range ``[-width_mm / 2, width_mm / 2]``; layers are spread over
    ``[0.2, 0.8] * depth_mm`` and shifted laterally layer by layer, so that the
    middle points (the ones calibration uses) span the image in both
    directions and are never collinear. Wires run along ``Z`` over
    ``[-wire_length_mm / 2, wire_length_mm / 2]``.

    Parameters
    ----------
    width_mm, depth_mm : the image's lateral width and depth (mm) to cover.
    n_layers : number of depths.
    n_per_layer : N's per depth.
    wire_length_mm : length of the parallel wires along ``Z`` (mm).
    n_width_mm : lateral distance between an N's parallel wires (mm).

    Returns
    -------
    NWirePhantom, with four phantom-marker fiducials (radius 5 mm) on a post
    beyond the wires' far end (``Z > wire_length_mm / 2``), asymmetric so
    that their pose is unique.
    """
    if n_layers < 1 or n_per_layer < 1:
        raise ValueError("default_phantom: need at least one layer and one N per layer")
    if n_per_layer * n_width_mm > width_mm:
        raise ValueError(
            f"default_phantom: {n_per_layer} N's of {n_width_mm} mm do not fit in {width_mm} mm"
        )
    half = wire_length_mm / 2.0
    depths = np.linspace(0.2, 0.8, n_layers) * depth_mm if n_layers > 1 else np.array([0.5 * depth_mm])
    slack = width_mm - n_per_layer * n_width_mm
    ns = []
    for layer, y in enumerate(depths):
        # Lateral shift alternating between layers, within the slack left by the N's.
        shift = (layer % 2) * slack / max(n_per_layer, 1) * 0.5
        for k in range(n_per_layer):
            x0 = -width_mm / 2.0 + shift + k * (n_width_mm + slack / n_per_layer)
            x2 = x0 + n_width_mm
            # Alternate the diagonal's direction so that N's are not all alike.
            za, zb = (-half, half) if (layer + k) % 2 == 0 else (half, -half)
            ns.append(
                [
                    [[x0, y, -half], [x0, y, half]],
                    [[x0, y, za], [x2, y, zb]],
                    [[x2, y, -half], [x2, y, half]],
                ]
            )
    # On a post at the phantom's end face, beyond the wires' far ends, clear of the probe.
    fiducials = np.array(
        [[-25.0, -10.0, half + 25.0], [20.0, -10.0, half + 25.0],
         [30.0, -30.0, half + 40.0], [-15.0, -35.0, half + 50.0]]
    )
    return NWirePhantom(wires=np.array(ns, dtype=float), fiducials=fiducials, fiducial_radius_mm=5.0)


def nominal_phantom_from_image(phantom: NWirePhantom, image_width_mm: float) -> np.ndarray:
    """A pose of the image plane in the phantom frame at which it cuts every wire mid-length.

    The image plane's ``x`` along phantom ``X``, ``y`` along ``Y`` (image depth
    equals phantom ``Y``, so the default phantom's layers sit at 20-80 % of the
    depth it was made for) and ``z`` along ``Z``; laterally the wires are
    centred in an image ``image_width_mm`` wide. A simulator holds the probe
    around this pose.

    Parameters
    ----------
    phantom : the phantom.
    image_width_mm : the image's lateral width (mm).

    Returns
    -------
    (4, 4) array, image plane -> phantom frame (mm).
    """
    pts = phantom.wires.reshape(-1, 3)
    mid_x = 0.5 * (pts[:, 0].min() + pts[:, 0].max())
    mid_z = 0.5 * (pts[:, 2].min() + pts[:, 2].max())
    out = np.eye(4)
    out[:3, 3] = [mid_x - 0.5 * float(image_width_mm), 0.0, mid_z]
    return out


def wire_points_in_image(phantom: NWirePhantom, image_from_phantom: np.ndarray) -> np.ndarray:
    """Where the image plane cuts each wire, in image-plane millimetres.

    Parameters
    ----------
    phantom : the phantom.
    image_from_phantom : (4, 4) or (..., 4, 4) array, phantom-marker frame ->
        image plane (mm). Vectorised over leading axes.

    Returns
    -------
    (n_N, 3, 2) array, or (..., n_N, 3, 2): image-plane ``(x, y)`` (mm) of the
    cut of wire ``w`` of N ``n``; NaN where the wire is parallel to the plane
    or the plane misses the wire's segment.
    """
    T = np.asarray(image_from_phantom, dtype=float)
    w = phantom.wires  # (n, 3, 2, 3)
    q = np.einsum("...ij,nwej->...nwei", T[..., :3, :3], w) + T[..., None, None, None, :3, 3]
    z0, z1 = q[..., 0, 2], q[..., 1, 2]
    dz = z0 - z1
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(dz != 0, z0 / np.where(dz != 0, dz, 1.0), np.nan)
    inside = (s >= 0.0) & (s <= 1.0)
    xy = q[..., 0, :2] + s[..., None] * (q[..., 1, :2] - q[..., 0, :2])
    return np.where(inside[..., None], xy, np.nan)
