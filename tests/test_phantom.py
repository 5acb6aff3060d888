"""Known-answer and bad-input tests of the N-wire phantom geometry."""

import json

import numpy as np
import pytest

from ultrabones.core.errors import DatasetError
from ultrabones.core.geometry import invert_transform, pose_from_params
from ultrabones.calibration.phantom import NWirePhantom, default_phantom, nominal_phantom_from_image, wire_points_in_image


def _one_n(z0=-20.0, z1=20.0):
    """One N in the plane Y = 10: wires at X = 0 and X = 10 along Z, diagonal (0, z0) -> (10, z1)."""
    wires = [
        [[0, 10, -20], [0, 10, 20]],
        [[0, 10, z0], [10, 10, z1]],
        [[10, 10, -20], [10, 10, 20]],
    ]
    fid = [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    return NWirePhantom(wires=np.array([wires], float), fiducials=np.array(fid, float))


def test_identity_plane_cuts_wires_at_known_points():
    p = _one_n()
    pts = wire_points_in_image(p, np.eye(4))
    # Plane Z = 0 cuts the diagonal at mid-length: X = 5.
    np.testing.assert_allclose(pts[0], [[0, 10], [5, 10], [10, 10]], atol=1e-12)


def test_shifted_plane_moves_the_diagonal_point_by_similar_triangles():
    p = _one_n()
    # Image plane at phantom Z = 10: image z = Z - 10; the diagonal is cut at 3/4 of its length.
    image_from_phantom = np.eye(4)
    image_from_phantom[2, 3] = -10.0
    pts = wire_points_in_image(p, image_from_phantom)
    np.testing.assert_allclose(pts[0, 1], [7.5, 10], atol=1e-12)


def test_plane_missing_a_segment_gives_nan():
    p = _one_n()
    image_from_phantom = np.eye(4)
    image_from_phantom[2, 3] = -25.0  # plane at Z = 25, beyond every wire's end
    pts = wire_points_in_image(p, image_from_phantom)
    assert np.isnan(pts).all()


def test_plane_parallel_to_wires_gives_nan():
    p = _one_n()
    # Rotate so the wires (along Z) run along the image's x, 0.3 mm off the plane (image z = 0.3 - X).
    rot = pose_from_params(np.array([0, 0, 0.3, 0, 90.0, 0]))
    pts = wire_points_in_image(p, rot)
    assert np.isnan(pts[0, [0, 2]]).all()
    # The diagonal crosses X = 0.3, i.e. 3 % along its length: Z = -20 + 0.03 * 40 -> image x = Z.
    np.testing.assert_allclose(pts[0, 1], [-18.8, 10.0], atol=1e-9)


def test_points_are_the_plane_intersection_for_a_random_pose():
    p = default_phantom()
    rng = np.random.default_rng(3)
    base = nominal_phantom_from_image(p, 40.0)
    for _ in range(5):
        d = pose_from_params(np.concatenate([rng.uniform(-3, 3, 3), rng.uniform(-8, 8, 3)]))
        phantom_from_image = base @ d
        pts = wire_points_in_image(p, invert_transform(phantom_from_image))
        assert np.isfinite(pts).all()
        # Map back to the phantom frame: each point lies on its wire's line.
        xyz = np.concatenate([pts, np.zeros(pts.shape[:-1] + (1,))], axis=-1)
        back = xyz @ phantom_from_image[:3, :3].T + phantom_from_image[:3, 3]
        a, b = p.wires[:, :, 0], p.wires[:, :, 1]
        dist = np.linalg.norm(np.cross(back - a, b - a), axis=-1) / np.linalg.norm(b - a, axis=-1)
        assert dist.max() < 1e-9
        # And the three points of each N are collinear.
        u, v = pts[:, 1] - pts[:, 0], pts[:, 2] - pts[:, 0]
        assert np.abs(u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]).max() < 1e-9


def test_vectorised_over_poses():
    p = default_phantom()
    base = invert_transform(nominal_phantom_from_image(p, 40.0))
    many = np.stack([base, base, base])
    out = wire_points_in_image(p, many)
    assert out.shape == (3, p.n_n, 3, 2)
    np.testing.assert_allclose(out[1], wire_points_in_image(p, base))


def test_default_phantom_spans_the_image_and_round_trips_json():
    p = default_phantom()
    pts = wire_points_in_image(p, invert_transform(nominal_phantom_from_image(p, 40.0)))
    mid = pts[:, 1]
    assert np.isfinite(pts).all()
    assert 0 < mid[:, 0].min() and mid[:, 0].max() < 40.0
    assert np.ptp(mid[:, 1]) > 20.0 and np.ptp(mid[:, 0]) > 15.0
    q = NWirePhantom.from_dict(json.loads(json.dumps(p.to_dict())))
    np.testing.assert_array_equal(q.wires, p.wires)
    np.testing.assert_array_equal(q.fiducials, p.fiducials)
    assert q.fiducial_radius_mm == p.fiducial_radius_mm


def test_bad_phantoms_are_rejected_with_the_n_named():
    d = _one_n().to_dict()
    d["n_wires"][0]["wires"][2][1] = [12.0, 10.0, 20.0]  # third wire no longer parallel
    with pytest.raises(DatasetError, match="N 0: the first and third wires are not parallel"):
        NWirePhantom.from_dict(d)
    d = _one_n().to_dict()
    d["n_wires"][0]["wires"][1][1] = [8.0, 10.0, 20.0]  # diagonal ends off wire 2
    with pytest.raises(DatasetError, match="N 0: the diagonal"):
        NWirePhantom.from_dict(d)
    with pytest.raises(DatasetError, match="phantom.json: not a valid N-wire phantom"):
        NWirePhantom.from_dict({"fiducials_mm": []})
