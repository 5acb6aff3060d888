"""Known-answer and bad-input tests of the CT bone model and fiducial sphere detection."""

import numpy as np
import pytest

from ultrabones.calibration import ct
from ultrabones.core.errors import DatasetError


def _grid(shape=(40, 44, 48), spacing=(0.8, 0.9, 1.0), origin=(-10.0, 5.0, 100.0)):
    nz, ny, nx = shape
    k, j, i = np.mgrid[0:nz, 0:ny, 0:nx].astype(float)
    sp, org = np.array(spacing), np.array(origin)
    x, y, z = org[0] + sp[0] * i, org[1] + sp[1] * j, org[2] + sp[2] * k
    return x, y, z, sp, org


def _sphere_ct(centre, radius, hu=1200.0, background=0.0, shape=(40, 44, 48)):
    """A binary voxelised sphere (voxel centre inside -> ``hu``)."""
    x, y, z, sp, org = _grid(shape)
    inside = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2
    vol = np.where(inside, hu, background).astype(np.int16)
    return ct.CTVolume(vol, sp, org)


def test_marching_cubes_of_a_voxelised_sphere_gives_its_radius_within_half_a_voxel():
    centre, radius = np.array([8.3, 24.1, 119.7]), 12.0
    vol = _sphere_ct(centre, radius)
    labels, n = ct.segment_bones(vol, 600.0, 10.0)
    assert n == 1
    mesh = ct.component_mesh(vol, labels, 1, 600.0, smooth_iterations=5, decimate_fraction=0.5)
    assert mesh.is_watertight and mesh.volume > 0
    r = np.linalg.norm(mesh.vertices - centre, axis=1)
    half_voxel = 0.5 * vol.spacing_mm.max()
    assert abs(r.mean() - radius) < half_voxel
    assert np.abs(r - radius).max() < 2 * half_voxel
    c, rf = ct.fit_sphere(mesh.vertices)
    assert np.linalg.norm(c - centre) < 0.1 and abs(rf - radius) < half_voxel


def test_fit_sphere_is_exact_on_a_sphere():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(200, 3))
    pts = np.array([1.0, -2.0, 3.0]) + 7.5 * u / np.linalg.norm(u, axis=1, keepdims=True)
    c, r = ct.fit_sphere(pts)
    np.testing.assert_allclose(c, [1, -2, 3], atol=1e-10)
    assert abs(r - 7.5) < 1e-10


def test_fiducial_spheres_are_found_and_excluded_from_bone():
    x, y, z, sp, org = _grid((50, 60, 60))
    # A bone-like block and two spheres of radius 4 mm, one touching nothing.
    vol = np.zeros(x.shape)
    vol[(np.abs(x - 5) < 8) & (np.abs(y - 30) < 8) & (np.abs(z - 120) < 15)] = 1000
    centres = np.array([[30.0, 15.0, 110.0], [30.0, 45.0, 135.0]])
    for c in centres:
        d = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
        # Partial volume at the rim, as a CT scanner gives.
        vol = np.maximum(vol, 2000 * np.clip(4.0 - d + 0.5, 0, 1))
    vol = ct.CTVolume(vol.astype(np.int16), sp, org)
    spheres = ct.find_fiducial_spheres(vol, 4.0, 1000.0)
    assert len(spheres.centres) == 2
    order = np.argsort(spheres.centres[:, 1])
    np.testing.assert_allclose(spheres.centres[order], centres, atol=0.15)
    np.testing.assert_allclose(spheres.radii, 4.0, atol=0.3)
    labels, n = ct.segment_bones(vol, 300.0, 50.0, exclude=spheres.mask)
    assert n == 1  # only the block


def test_hollow_bone_is_filled_so_the_model_has_no_inner_surface():
    x, y, z, sp, org = _grid((60, 44, 48))
    r = np.hypot(x - 9, y - 24)
    shaft = (r < 10) & (np.abs(z - 130) < 20)
    marrow = (r < 6) & (np.abs(z - 130) < 17)
    vol = np.where(shaft & ~marrow, 1200, 0).astype(np.int16)
    vol = ct.CTVolume(vol, sp, org)
    labels, n = ct.segment_bones(vol, 600.0, 10.0)
    mesh = ct.component_mesh(vol, labels, 1, 600.0, 0, 1.0)
    assert mesh.body_count == 1
    v = mesh.vertices[np.abs(mesh.vertices[:, 2] - 130) < 15]  # along the shaft, away from its end caps
    assert len(v) > 100 and np.hypot(v[:, 0] - 9, v[:, 1] - 24).min() > 8.0


def test_surface_distance_of_concentric_spheres():
    import trimesh

    a = trimesh.creation.icosphere(subdivisions=5, radius=10.0)
    b = trimesh.creation.icosphere(subdivisions=5, radius=10.5)
    d = ct.symmetric_surface_distance(a, b, 5000)
    assert abs(d["mean_mm"] - 0.5) < 0.02 and d["p95_mm"] < 0.55


def test_empty_ct_stops_with_a_clear_message():
    vol = ct.CTVolume(np.full((10, 10, 10), -1000, np.int16), np.ones(3), np.zeros(3))
    msg = r"specimen01/ct.npz: no bone found: no voxel above the bone threshold 250 HU"
    with pytest.raises(DatasetError, match=msg):
        ct.segment_bones(vol, 250.0, 100.0, where="specimen01/ct.npz")


def test_bad_ct_file_is_named(tmp_path):
    f = tmp_path / "ct.npz"
    np.savez(f, volume=np.zeros((4, 4)), spacing_mm=np.ones(3), origin_mm=np.zeros(3))
    with pytest.raises(DatasetError, match="ct.npz: expected a 3-D volume"):
        ct.read_ct(f)
    with pytest.raises(DatasetError, match="CT volume not found"):
        ct.read_ct(tmp_path / "missing.npz")
