"""Known-answer tests for the pose chain of Eq. 1 and pose utilities."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ultrabones.core import geometry as g


def test_pixel_through_hand_built_chain():
    # Calibration: image x -> probe y, image y -> probe -z, plane normal -> probe -x, offset (10, 20, 30) mm.
    calib = np.array([[0, 0, -1, 10], [1, 0, 0, 20], [0, -1, 0, 30], [0, 0, 0, 1.0]])
    # Pose: 90 degrees about CT z, then translate by (100, 0, 5) mm.
    pose = g.make_transform(Rotation.from_euler("z", 90, degrees=True).as_matrix(), [100, 0, 5])
    spacing = (0.2, 0.5)
    uv = np.array([[3.0, 7.0]])
    # By hand: image plane point (3.5*0.2, 7.5*0.5, 0) = (0.7, 3.75, 0)
    # probe = (10 - 0, 20 + 0.7, 30 - 3.75) = (10, 20.7, 26.25)
    # CT = Rz90 (x, y, z) = (-y, x, z) + t = (-20.7 + 100, 10, 26.25 + 5) = (79.3, 10, 31.25)
    p = g.pixels_to_ct(uv, pose, calib, spacing)
    np.testing.assert_allclose(p, [[79.3, 10.0, 31.25]], atol=1e-12)


def test_pixel_ct_pixel_round_trip():
    rng = np.random.default_rng(0)
    pose = g.pose_from_params(np.r_[rng.normal(0, 50, 3), rng.uniform(-180, 180, 3)])
    calib = g.released_calibration()
    uv = rng.uniform(0, 900, size=(500, 2))
    pts = g.pixels_to_ct(uv, pose, calib, g.RELEASED_SPACING_MM)
    uv2, dist = g.ct_to_pixels(pts, pose, calib, g.RELEASED_SPACING_MM)
    np.testing.assert_allclose(uv2, uv, atol=1e-9 / g.RELEASED_SPACING_MM[0])
    np.testing.assert_allclose(dist, 0, atol=1e-9)
    # and the mapped points, back in mm, within 1e-9 mm
    np.testing.assert_allclose(g.pixels_to_ct(uv2, pose, calib, g.RELEASED_SPACING_MM), pts, atol=1e-9)


def test_out_of_plane_distance_is_signed_mm():
    calib = np.eye(4)
    pose = np.eye(4)
    uv, dist = g.ct_to_pixels(np.array([[1.0, 2.0, 0.7], [1.0, 2.0, -0.3]]), pose, calib, (0.5, 0.25))
    np.testing.assert_allclose(dist, [0.7, -0.3])
    np.testing.assert_allclose(uv, [[1.5, 7.5], [1.5, 7.5]])


def test_batched_poses():
    rng = np.random.default_rng(1)
    poses = g.pose_from_params(np.c_[rng.normal(0, 10, (5, 3)), rng.uniform(-30, 30, (5, 3))])
    uv = rng.uniform(0, 100, (7, 2))
    batched = g.pixels_to_ct(uv, poses, np.eye(4), (0.1, 0.1))
    assert batched.shape == (5, 7, 3)
    for k in range(5):
        np.testing.assert_allclose(batched[k], g.pixels_to_ct(uv, poses[k], np.eye(4), (0.1, 0.1)))


def test_euler_round_trip_and_convention():
    rng = np.random.default_rng(2)
    params = np.c_[rng.normal(0, 100, (50, 3)), rng.uniform(-170, 170, (50, 1)),
                   rng.uniform(-80, 80, (50, 1)), rng.uniform(-170, 170, (50, 1))]
    np.testing.assert_allclose(g.params_from_pose(g.pose_from_params(params)), params, atol=1e-9)
    # extrinsic xyz: R = Rz @ Ry @ Rx
    rx, ry, rz = (Rotation.from_euler(a, d, degrees=True).as_matrix() for a, d in zip("xyz", (10, 20, 30)))
    np.testing.assert_allclose(g.pose_from_params([0, 0, 0, 10, 20, 30])[:3, :3], rz @ ry @ rx, atol=1e-12)


def test_invert_transform():
    t = g.pose_from_params([1, 2, 3, 40, -20, 10])
    np.testing.assert_allclose(g.invert_transform(t) @ t, np.eye(4), atol=1e-12)


def test_slerp_midpoint_of_known_rotation():
    a = g.make_transform(np.eye(3), [0, 0, 0])
    b = g.make_transform(Rotation.from_euler("z", 90, degrees=True).as_matrix(), [10, -4, 2])
    mid = g.interpolate_poses(np.array([0.0, 100.0]), np.stack([a, b]), np.array([50.0]))[0]
    np.testing.assert_allclose(mid[:3, :3], Rotation.from_euler("z", 45, degrees=True).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(mid[:3, 3], [5, -2, 1], atol=1e-12)


def test_interpolation_refuses_out_of_range_and_bad_times():
    poses = np.stack([np.eye(4)] * 3)
    with pytest.raises(ValueError, match="leave the sampled range"):
        g.interpolate_poses(np.array([0.0, 1, 2]), poses, np.array([3.0]))
    with pytest.raises(ValueError, match="strictly increasing"):
        g.interpolate_poses(np.array([0.0, 2, 1]), poses, np.array([1.0]))
    held = g.interpolate_poses(np.array([0.0, 1, 2]), poses, np.array([5.0]), extrapolate=True)
    np.testing.assert_allclose(held[0], np.eye(4))


def test_mean_fiducial_displacement_of_pure_translation():
    pose = g.pose_from_params([5, 6, 7, 30, 10, -50])
    moved = pose @ g.perturbation([0, 0, 0], [0.3, 0.4, 0.0])
    np.testing.assert_allclose(g.mean_fiducial_displacement(pose, moved), 0.5, atol=1e-12)


def test_mean_fiducial_displacement_of_rotation_about_origin():
    # A rotation of theta about the marker z axis moves fiducial f by 2 |f_xy| sin(theta / 2).
    theta = 1.0
    d = g.mean_fiducial_displacement(np.eye(4), g.perturbation([0, 0, theta], [0, 0, 0]))
    r = np.linalg.norm(g.PROBE_FIDUCIALS_MM[:, :2], axis=1)
    np.testing.assert_allclose(d, np.mean(2 * r * np.sin(np.radians(theta) / 2)), atol=1e-12)


def test_released_calibration_values():
    c = g.released_calibration()
    np.testing.assert_allclose(c[:3, 3], g.RELEASED_CALIB_TRANSLATION_MM)
    np.testing.assert_allclose(g.params_from_pose(c)[3:], g.RELEASED_CALIB_EULER_DEG, atol=1e-9)
    assert g.rotation_angle_deg(np.eye(4)) == pytest.approx(0.0)
