"""B-mode physics in controlled scenes, and the true labels."""

import numpy as np
import pytest
import trimesh

from ultrabones.twin import bmode
from ultrabones.twin.contour import chamfer_mm
from ultrabones.twin.scene import FACE_CHUNK
from ultrabones.twin.true_labels import rasterise_contour
from ultrabones.core.errors import ParamsError

W, H, SP = 128, 120, (0.2, 0.2)  # 25.6 x 24 mm


def looking_down(top_z: float = 25.0, tilt_deg: float = 0.0, x0: float = 0.0) -> np.ndarray:
    """Image plane over CT: x along CT x, depth along -z, top row at ``top_z``; tilted in plane about the top centre."""
    a = np.radians(tilt_deg)
    ex = np.array([np.cos(a), 0.0, np.sin(a)])
    ey = np.array([np.sin(a), 0.0, -np.cos(a)])
    ez = np.cross(ex, ey)
    centre = np.array([x0, 0.0, top_z])
    t = np.eye(4)
    t[:3, :3] = np.stack([ex, ey, ez], 1)
    t[:3, 3] = centre - 0.5 * W * SP[0] * ex
    return t


@pytest.fixture(scope="module")
def slab():
    """A flat bone slab whose top face is at z = +10 mm: 15 mm deep under ``looking_down()``."""
    return bmode.Scene.from_meshes(trimesh.creation.box(extents=(300, 300, 20)))


def test_shadow_below_bone_is_dark(slab):
    img, full, vis = bmode.render(slab, looking_down(), W, H, SP, np.random.default_rng(0))
    row = int(15.0 / SP[1])
    above = img[10:row - 5].mean()
    below = img[row + 5:].mean()
    assert below < 0.35 * above
    assert img[row - 1:row + 3].mean() > 1.5 * above  # the bone line is bright


def test_full_label_is_the_contour_within_gamma(slab):
    _, full, vis = bmode.render(slab, looking_down(), W, H, SP, np.random.default_rng(0))
    rows = np.flatnonzero(full.any(axis=1))
    depth = (rows + 0.5) * SP[1]
    assert np.all(np.abs(depth - 15.0) <= 0.3 + 1e-9)
    assert full[rows].all()  # every column
    assert np.array_equal(full, vis)  # head on, nothing shadowed


def test_echo_falls_monotonically_with_incidence(slab):
    means = []
    for tilt in (0, 15, 30, 45, 60, 75):
        vals = []
        for seed in range(3):
            f = bmode.render_frame(slab, looking_down(tilt_deg=tilt), W, H, SP, np.random.default_rng(seed))
            cols = np.flatnonzero(np.isfinite(f.bone_depth_mm))
            rows = np.floor(f.bone_depth_mm[cols] / SP[1]).astype(int)
            ok = rows + 2 < H
            vals.append(np.mean([f.image[r:r + 3, c].max() for r, c in zip(rows[ok], cols[ok])]))
            assert np.allclose(f.incidence_deg[cols], tilt, atol=0.5)
        means.append(np.mean(vals))
    assert np.all(np.diff(means) < 0), means
    assert means[0] - means[-1] > 60  # bright head on, dim oblique


def test_beyond_85_degrees_is_not_visible():
    # a thin wedge whose top face is inclined by 88 degrees to the beam in the image plane
    box = trimesh.creation.box(extents=(200, 200, 20))
    rot = trimesh.transformations.rotation_matrix(np.radians(88), [0, 1, 0])
    scene = bmode.Scene.from_meshes(box.apply_transform(rot))
    f = bmode.render_frame(scene, looking_down(top_z=40), W, H, SP, np.random.default_rng(0))
    assert f.full.sum() > 0
    assert f.visible.sum() == 0


def test_a_bone_in_another_bones_shadow_is_not_visible():
    upper = trimesh.creation.box(extents=(300, 300, 4))  # top at z = 2, bottom at -2
    lower = trimesh.creation.box(extents=(300, 300, 4)).apply_translation([0, 0, -8])  # top at -6
    scene = bmode.Scene.from_meshes([upper, lower])
    f = bmode.render_frame(scene, looking_down(top_z=12), W, H, SP, np.random.default_rng(0))
    rows = np.flatnonzero(f.full.any(axis=1)) * SP[1]
    assert rows.max() > 17  # the lower bone's contour is in the full label
    vis_rows = (np.flatnonzero(f.visible.any(axis=1)) + 0.5) * SP[1]
    assert vis_rows.max() < 10.5  # but only the upper bone's top is visible
    row = int(18.0 / SP[1])
    assert f.image[row:row + 2].mean() < 40  # no echo from the shadowed bone


def test_homogeneous_speckle_is_rayleigh():
    p = bmode.BModeParams(tgc_fraction=1.0, noise_level=0.0)
    power = np.ones((400, 400), dtype=np.float32)
    _, env = bmode.form_image(power, None, SP, np.random.default_rng(0), p)
    inner = env[20:-20, 20:-20].astype(float)
    snr = inner.mean() / inner.std()
    assert snr == pytest.approx(1.91, abs=0.06)
    assert (inner**2).mean() == pytest.approx(1.0, rel=0.1)  # PSF gain keeps unit power


def test_attenuation_is_monotonic_with_depth():
    p = bmode.BModeParams(tgc_fraction=0.5, noise_level=0.0)
    power = np.ones((400, 200), dtype=np.float32)
    img, env = bmode.form_image(power, None, (0.2, 0.1), np.random.default_rng(1), p)
    blocks = env[:, 10:-10].reshape(20, 20, -1).mean(axis=(1, 2))
    assert np.all(np.diff(blocks) < 0)
    prof = bmode.attenuation_profile(400, 0.1, p)
    assert np.all(np.diff(prof) < 0) and prof[0] < 1
    full = bmode.attenuation_profile(400, 0.1, bmode.BModeParams(tgc_fraction=1.0))
    assert np.allclose(full, 1.0)


def test_same_seed_same_image(slab):
    a = bmode.render(slab, looking_down(tilt_deg=20), W, H, SP, np.random.default_rng(5))
    b = bmode.render(slab, looking_down(tilt_deg=20), W, H, SP, np.random.default_rng(5))
    c = bmode.render(slab, looking_down(tilt_deg=20), W, H, SP, np.random.default_rng(6))
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_skin_gel_and_no_contact():
    bone = trimesh.creation.box(extents=(300, 300, 20))  # top at z = 10
    skin = trimesh.creation.box(extents=(10, 300, 60))  # a narrow ridge of tissue, top at z = 30
    scene = bmode.Scene.from_meshes(bone, skin)
    img, _, _ = bmode.render(scene, looking_down(top_z=30), W, H, SP, np.random.default_rng(0))
    centre = img[5:60, W // 2 - 5:W // 2 + 5].mean()
    off = img[5:60, :10].mean()  # no skin under these lines: no contact
    assert centre > 40 and off < 10


def test_render_points_shows_wires():
    p = np.array([[10.0, 10.0], [np.nan, np.nan]])
    img = bmode.render_points(p, W, H, SP, np.random.default_rng(0))
    assert img[48:52, 48:52].max() > 200
    assert np.median(img) < 60


def test_bad_geometry_is_refused(slab):
    with pytest.raises(ParamsError, match="spacing"):
        bmode.render(slab, looking_down(), W, H, (-0.2, 0.2), np.random.default_rng(0))
    with pytest.raises(ParamsError, match="4x4"):
        bmode.render(slab, np.eye(3), W, H, SP, np.random.default_rng(0))
    with pytest.raises(ParamsError, match="size"):
        bmode.render(slab, looking_down(), 0, H, SP, np.random.default_rng(0))
    with pytest.raises(ParamsError, match="tgc_fraction"):
        bmode.BModeParams(tgc_fraction=1.5)


def test_chamfer_distance_known_answer():
    a = np.stack([np.linspace(2, 20, 200), np.full(200, 10.0)], 1)
    b = a + [0, 0.7]
    assert chamfer_mm(a, b) == pytest.approx(0.7, abs=1e-9)
    assert chamfer_mm(a, b, (25.0, 25.0)) == pytest.approx(0.7, abs=1e-9)
    assert np.isnan(chamfer_mm(a, np.zeros((0, 2))))


def _flat_scene(seed=0):
    import trimesh

    bone = trimesh.creation.box(extents=(200, 200, 20))  # top face at z = +10 mm
    return bmode.Scene.from_meshes(bone, seed=seed)


_PLANE = np.array([[1, 0, 0, -25], [0, 0, 1, 0], [0, -1, 0, 25], [0, 0, 0, 1.0]])


def test_speckle_is_fixed_in_the_tissue():
    scene = _flat_scene()
    a = scene.speckle(_PLANE, 64, 50, (0.2, 0.2), 0.1)
    b = scene.speckle(_PLANE, 64, 50, (0.2, 0.2), 0.1)
    assert a.dtype == np.float32 and a.shape == (2, 50, 64)
    np.testing.assert_array_equal(a, b)
    assert abs(a.std() - 1) < 0.05 and abs(np.corrcoef(a[0].ravel(), a[1].ravel())[0, 1]) < 0.05
    shifted = _PLANE.copy()
    shifted[0, 3] += 0.2 * 10  # the plane moved 10 pixels along its width: the same tissue 10 columns over
    c = scene.speckle(shifted, 64, 50, (0.2, 0.2), 0.1)
    np.testing.assert_array_equal(c[:, :, :54], a[:, :, 10:])
    far = _PLANE.copy()
    far[1, 3] += 2.0  # 2 mm out of plane: other scatterers
    d = scene.speckle(far, 64, 50, (0.2, 0.2), 0.1)
    assert abs(np.corrcoef(a[0].ravel(), d[0].ravel())[0, 1]) < 0.1


def test_speed_of_sound_scales_the_displayed_depth():
    scene = _flat_scene()
    rows = {}
    for c in (1540.0, 1600.0):
        p = bmode.BModeParams(speed_of_sound_m_s=c)
        f = bmode.render_frame(scene, _PLANE, 64, 120, (0.2, 0.2), np.random.default_rng(0), p)
        rows[c] = np.flatnonzero(f.full[:, 32]).mean()
        assert f.bone_depth_mm[32] == pytest.approx(15.0, abs=1e-6)  # true depth
    # bone 15 mm deep is displayed at 15 * 1540 / c mm
    assert rows[1540.0] * 0.2 == pytest.approx(15.0, abs=0.2)
    assert rows[1600.0] * 0.2 == pytest.approx(15.0 * 1540 / 1600, abs=0.2)


def test_shadow_has_a_noise_floor_and_the_echo_rings_down():
    scene = _flat_scene()
    dark = bmode.BModeParams(shadow_level=0.0, reverb_level=0.0, noise_level=0.0)
    grey = bmode.BModeParams(shadow_level=0.08, reverb_level=0.3)
    img0 = bmode.render_frame(scene, _PLANE, 64, 150, (0.2, 0.2), np.random.default_rng(0), dark).image
    img1 = bmode.render_frame(scene, _PLANE, 64, 150, (0.2, 0.2), np.random.default_rng(0), grey).image
    shadow = slice(90, 140)  # 18 to 28 mm: 3 to 13 mm below the bone
    assert img0[shadow].mean() < 2 and img1[shadow].mean() > 10 and img1[shadow].std() > 5
    thin = bmode.BModeParams(ringdown_mm=0.1)
    thick = bmode.BModeParams(ringdown_mm=0.6)
    f_thin = bmode.render_frame(scene, _PLANE, 64, 150, (0.2, 0.2), np.random.default_rng(1), thin).image
    f_thick = bmode.render_frame(scene, _PLANE, 64, 150, (0.2, 0.2), np.random.default_rng(1), thick).image
    below = slice(76, 80)  # 0.2 to 1 mm under the surface (row 75)
    assert f_thick[below].mean() > f_thin[below].mean() + 20


# ----------------------------------------------------------------------------- fast paths: the same bits as the plain ones


def _bumpy_scene():
    """An irregular closed bone (a noisy icosphere, 20 mm across) with randomly ordered faces."""
    rng = np.random.default_rng(3)
    s = trimesh.creation.icosphere(subdivisions=5, radius=10.0)
    v = s.vertices * (1 + 0.15 * rng.standard_normal((len(s.vertices), 1)))
    faces = s.faces[rng.permutation(len(s.faces))]
    return bmode.Scene.from_meshes(trimesh.Trimesh(v, faces, process=False))


def _random_planes(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        t = np.eye(4)
        t[:3, :3] = q * np.sign(np.linalg.det(q))
        t[:3, 3] = rng.uniform(-12, 12, 3) - t[:3, :3] @ [0.5 * W * SP[0], 0.5 * H * SP[1], 0.0]
        out.append(t)
    return out


def test_faces_near_plane_hold_every_crossing_face_in_order():
    scene = _bumpy_scene()
    assert scene._chunks.shape[1] == FACE_CHUNK
    assert np.array_equal(np.sort(scene._chunks[scene._chunks >= 0]), np.arange(len(scene._faces)))
    n_near = []
    for t in _random_planes(40):
        o, ez = t[:3, 3], t[:3, 2]
        pos = scene._verts @ ez - o @ ez > 0
        cnt = pos[scene._faces].sum(axis=1)
        crossing = np.flatnonzero((cnt == 1) | (cnt == 2))
        near = scene.faces_near_plane(o, ez)
        assert np.all(np.diff(near) > 0) and np.isin(crossing, near).all()
        n_near.append(len(near))
    assert np.mean(n_near) < 0.5 * len(scene._faces)  # it does skip faces


def test_rasterise_contour_matches_every_offset():
    """Only offsets that can fall within gamma are tried; the mask and the last-written incidence do not change."""
    rng = np.random.default_rng(1)
    for gamma, spacing in ((0.3, (0.2, 0.2)), (0.5, (0.3, 0.15)), (0.2, (0.2, 0.2)), (0.05, (0.1, 0.2))):
        pts = rng.uniform(-1, 27, (500, 2))
        pts[:50] = (np.round(pts[:50] / spacing) + 0.5) * spacing + [gamma, 0]  # exactly gamma from a centre
        inc = rng.uniform(0, 120, len(pts))
        mask, pix = rasterise_contour(pts, inc, W, H, spacing, gamma)
        sx, sy = spacing
        r = int(np.ceil(gamma / min(sx, sy))) + 2
        du, dv = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1))
        u = (np.floor(pts[:, 0] / sx - 0.5).astype(int)[:, None] + du.ravel()).ravel()
        v = (np.floor(pts[:, 1] / sy - 0.5).astype(int)[:, None] + dv.ravel()).ravel()
        src = np.repeat(np.arange(len(pts)), du.size)
        ok = ((np.hypot((u + 0.5) * sx - pts[src, 0], (v + 0.5) * sy - pts[src, 1]) <= gamma)
              & (u >= 0) & (u < W) & (v >= 0) & (v < H))
        ref_mask, ref_pix = np.zeros((H, W), bool), np.full((H, W), np.nan)
        ref_mask[v[ok], u[ok]] = True
        ref_pix[v[ok], u[ok]] = inc[src[ok]]
        assert np.array_equal(mask, ref_mask) and np.array_equal(pix, ref_pix, equal_nan=True)


def test_blur_rows_is_gaussian_filter1d():
    from scipy.ndimage import gaussian_filter1d

    rng = np.random.default_rng(2)
    depth = rng.integers(0, 60, 90)
    img = (np.arange(80)[:, None] > depth[None, :]).astype(np.float32)  # a shadow: few distinct rows
    noisy = rng.standard_normal((30, 90)).astype(np.float32)
    for a in (img, noisy, img[:0], img[:1]):
        ref = gaussian_filter1d(a, 4.5, axis=1, truncate=2.0) if len(a) else a
        assert np.array_equal(bmode.blur_rows(a, 4.5, truncate=2.0), ref)
