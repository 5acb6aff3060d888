"""B-mode image formation of the digital twin, and the true labels of a frame.

One frame of a linear probe is formed scan line by scan line (one image
column each, straight down the image's ``y`` axis):

1. **Geometry.** Each scan line is cast against the bone meshes (trimesh with
   Embree): its first bone hit gives the bone depth and the surface normal.
   A second cast finds where it enters the skin: above that is coupling gel
   (anechoic); a line that meets no skin within ``gel_max_mm`` has no contact
   and stays dark.
2. **Echogenicity** (scatterer power per pixel): epidermis entry echo and
   dermis, subcutaneous fat, the deep fascia, muscle, and connective-tissue
   septa (wavy sheets roughly parallel to the skin). Layers follow the depth
   below the skin; texture and waviness come from smooth random 3D fields
   sampled at each pixel's CT position, so they stay put across frames.
3. **Bone.** A coherent specular echo at the first hit with amplitude
   ``cos(theta)^p`` of the 3D incidence angle ``theta`` between the beam and
   the surface normal (bright when the beam meets bone head on, dim when
   oblique, absent beyond 90 degrees), plus a weak diffuse part; beneath it
   the acoustic shadow (power times ``shadow_level``). A bone below another
   bone lies in its shadow.
4. **Speckle.** Circular complex Gaussian scatterers (amplitude ``sqrt`` of the
   echogenicity) convolved with a Gaussian axial x lateral point-spread
   function: the envelope is Rayleigh distributed in homogeneous tissue
   (SNR = 1.91).
5. **Attenuation** ``a`` dB/cm/MHz at ``f`` MHz over the round trip, of which
   time-gain compensation restores the fraction ``tgc``; electronic noise.
6. **Display**: a light Gaussian filter of the detected envelope (a scanner's
   speckle smoothing and compounding), then **log compression** over
   ``dynamic_range_db`` to 8 bits. Under pressure the soft tissue conforms to
   the probe face (skin gaps up to ``conform_mm`` close); the bone geometry
   itself is rigid.

The scene and the scan-line casts are :mod:`ultrabones.twin.scene`; the true labels
(:func:`ultrabones.twin.true_labels.label_frame`), drawn from the plane's cut of the
bones, are :mod:`ultrabones.twin.true_labels`; :func:`render_frame` returns both.

Frames: ``ct_from_image`` maps image-plane millimetres (``x`` along the image
width, ``y`` down the depth, ``z`` out of plane) to CT; pixel ``(u, v)`` sits
at ``x = (u + 0.5) sx``, ``y = (v + 0.5) sy`` (Eq. 1, ``pose @ calib``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from ultrabones.core.errors import ParamsError
from ultrabones.twin.scene import Scene, check_geometry, first_hits, skin_depths
from ultrabones.twin.true_labels import label_frame


#: Thickness (mm) of the connective-tissue sheets (septa, fascia) in muscle and fat (their spacing: BModeParams).
SEPTA_WIDTH_MM = 0.3

#: Period (mm) of the reverberation bands beneath a bone echo (multiple reflections inside the cortex).
REVERB_PERIOD_MM = 0.8

#: The scanner's assumed speed of sound (m/s): depths are displayed as ``time x SCANNER_SPEED_M_S / 2``.
SCANNER_SPEED_M_S = 1540.0


@dataclass(frozen=True)
class BModeParams:
    """Imaging physics of the twin's linear probe.

    Attributes
    ----------
    frequency_mhz : centre frequency (MHz).
    attenuation_db_cm_mhz : soft-tissue attenuation (dB/cm/MHz, one way).
    tgc_fraction : share of the round-trip attenuation that time-gain compensation restores (0..1).
    psf_axial_mm, psf_lateral_mm : standard deviations of the Gaussian point-spread function (mm).
    specular_exponent : ``p`` of the bone echo's ``cos(theta)^p``.
    bone_amplitude : specular bone echo at normal incidence: coherent reflector amplitude per pixel of the
        surface, relative to unit-power tissue scatterers.
    bone_diffuse : diffuse (rough-surface) bone echo power, relative to unit-power tissue, times ``cos(theta)``.
    shadow_level : power fraction transmitted beyond bone (0..1): the shadow's floor of weak transmission,
        side-lobe clutter and multiple scattering, speckled like tissue.
    reverb_level : power of the reverberation beneath a bone echo, relative to unit-power tissue, at the
        surface, times ``cos(theta)^p``; banded with period ``REVERB_PERIOD_MM`` and decaying over
        ``5 x ringdown_mm`` (0: none).
    ringdown_mm : decay length of the bone echo's amplitude below the surface (mm): a thick bright cap with a
        soft lower edge (the cortex's internal reflections and the pulse length).
    speckle_cell_mm : size of the cells of the fixed tissue scatterers (mm): the speckle is a deterministic
        function of the CT position, so a plane seen twice shows the same speckle and frames closer than a
        cell correlate; 0 draws fresh speckle for every frame.
    septa_spacing_mm : mean distance between connective-tissue sheets (fascia, septa) in fat and muscle (mm).
    speed_of_sound_m_s : speed of sound in the tissue (m/s). The scanner assumes ``SCANNER_SPEED_M_S``: an
        echo from true depth ``d`` is displayed at ``d x 1540 / c`` (deeper in slower tissue).
    noise_level : electronic noise amplitude, relative to unit-power tissue speckle at the surface.
    dynamic_range_db : displayed dynamic range (dB).
    gain_db : envelope level (dB re unit-power speckle) displayed as white.
    gel_max_mm : a scan line meeting no skin within this depth has no contact (dark) (mm).
    conform_mm : gaps between probe face and skin up to this close under pressure (soft tissue conforms) (mm).
    display_smoothing_mm : Gaussian display filter (std, mm) on the detected envelope before log compression, as a
        scanner's speckle smoothing and compounding soften the Rayleigh nulls.
    muscle, fat, dermis, fascia, septa : scatterer power of the tissue layers (unit-free).
    """

    frequency_mhz: float = 7.5
    attenuation_db_cm_mhz: float = 0.5
    tgc_fraction: float = 0.75
    psf_axial_mm: float = 0.18
    psf_lateral_mm: float = 0.35
    specular_exponent: float = 4.0
    bone_amplitude: float = 30.0
    bone_diffuse: float = 6.0
    shadow_level: float = 0.01
    noise_level: float = 0.03
    dynamic_range_db: float = 50.0
    gain_db: float = 28.0
    gel_max_mm: float = 25.0
    conform_mm: float = 12.0
    display_smoothing_mm: float = 0.25
    muscle: float = 0.3
    fat: float = 0.05
    dermis: float = 1.0
    fascia: float = 3.0
    septa: float = 2.5
    reverb_level: float = 0.0
    ringdown_mm: float = 0.25
    speckle_cell_mm: float = 0.0
    septa_spacing_mm: float = 5.0
    speed_of_sound_m_s: float = SCANNER_SPEED_M_S

    def __post_init__(self):
        for name in ("frequency_mhz", "psf_axial_mm", "psf_lateral_mm", "dynamic_range_db", "specular_exponent"):
            if not getattr(self, name) > 0:
                raise ParamsError(f"BModeParams.{name} must be positive, got {getattr(self, name)!r}")
        for name in ("tgc_fraction", "shadow_level"):
            if not 0 <= getattr(self, name) <= 1:
                raise ParamsError(f"BModeParams.{name} must lie in [0, 1], got {getattr(self, name)!r}")
        for name in ("reverb_level", "ringdown_mm", "speckle_cell_mm", "display_smoothing_mm", "noise_level"):
            if not getattr(self, name) >= 0:
                raise ParamsError(f"BModeParams.{name} must be zero or positive, got {getattr(self, name)!r}")
        if not 1000.0 <= self.speed_of_sound_m_s <= 2000.0:
            raise ParamsError(f"BModeParams.speed_of_sound_m_s must lie in [1000, 2000] m/s (soft tissue and "
                              f"water: 1450 to 1600), got {self.speed_of_sound_m_s!r}")
        if not self.septa_spacing_mm > 0:
            raise ParamsError(f"BModeParams.septa_spacing_mm must be positive, got {self.septa_spacing_mm!r}")


@dataclass
class RenderedFrame:
    """One rendered frame of the twin: the image and its true labels (not a dataset frame).

    Attributes
    ----------
    image : (H, W) uint8 B-mode image.
    full : (H, W) bool, true full label.
    visible : (H, W) bool, true visible label.
    bone_depth_mm : (W,) depth of the first bone hit per scan line (mm; inf where none).
    incidence_deg : (W,) 3D incidence angle of the beam on that hit (degrees; nan where none).
    contour : (M, 2) image-plane mm points sampled along the plane's cut of the bones (in view).
    contour_incidence_deg : (M,) in-plane incidence angle at each contour point (degrees).
    """

    image: np.ndarray
    full: np.ndarray
    visible: np.ndarray
    bone_depth_mm: np.ndarray
    incidence_deg: np.ndarray
    contour: np.ndarray
    contour_incidence_deg: np.ndarray


# ----------------------------------------------------------------------------- image


def psf_gain(spacing, params: BModeParams) -> float:
    """Amplitude factor that gives unit mean power to PSF-filtered unit-power white scatterers."""
    sa = params.psf_axial_mm / float(spacing[1])
    sl = params.psf_lateral_mm / float(spacing[0])
    return float(np.sqrt(4 * np.pi * sa * sl))


def log_compress(envelope: np.ndarray, params: BModeParams) -> np.ndarray:
    """8-bit log compression: ``gain_db`` maps to 255, ``gain_db - dynamic_range_db`` to 0."""
    k = np.float32(20.0 * 255.0 / params.dynamic_range_db)
    g = np.log10(np.maximum(envelope, np.float32(1e-12))) * k - np.float32(
        (params.gain_db - params.dynamic_range_db) * 255.0 / params.dynamic_range_db)
    return np.clip(np.rint(g), 0, 255).astype(np.uint8)


def attenuation_profile(height: int, sy: float, params: BModeParams) -> np.ndarray:
    """(H,) amplitude factor of depth after partial TGC: ``10^(-(1 - tgc) 2 a f d / 20)``, d in cm."""
    d_cm = (np.arange(height) + 0.5) * sy / 10.0
    net_db = (1 - params.tgc_fraction) * 2 * params.attenuation_db_cm_mhz * params.frequency_mhz * d_cm
    return 10.0 ** (-net_db / 20.0)


def form_image(power: np.ndarray, coherent: np.ndarray | None, spacing, rng: np.random.Generator,
               params: BModeParams, scatterers: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Speckle, PSF, attenuation, noise and log compression of a scatterer map.

    Parameters
    ----------
    power : (H, W) scatterer power (unit-free; 1 = reference tissue).
    coherent : (H, W) complex coherent reflectors (specular echoes), or None.
    spacing : (sx, sy) mm/px.
    scatterers : (2, H, W) unit-variance real and imaginary scatterers (e.g. :meth:`Scene.speckle`);
        None draws them from ``rng``.

    Returns
    -------
    image : (H, W) uint8 (display filter, then log compression).
    envelope : (H, W) float32, the detected envelope (before the display filter and log compression).
    """
    h, w = power.shape
    sx, sy = (float(v) for v in spacing)
    gain = np.float32(psf_gain(spacing, params))
    z = rng.standard_normal((2, h, w), dtype=np.float32) if scatterers is None else scatterers
    amp = np.sqrt(np.maximum(power, 0) * np.float32(0.5), dtype=np.float32)
    re, im = z[0] * amp, z[1] * amp
    if coherent is not None:
        re += (coherent.real / gain).astype(np.float32)
        im += (coherent.imag / gain).astype(np.float32)
    sigma = (params.psf_axial_mm / sy, params.psf_lateral_mm / sx)
    att = (attenuation_profile(h, sy, params)[:, None] * gain).astype(np.float32)
    re = gaussian_filter(re, sigma, truncate=3.0, mode="nearest") * att
    im = gaussian_filter(im, sigma, truncate=3.0, mode="nearest") * att
    n = rng.standard_normal((2, h, w), dtype=np.float32) * np.float32(params.noise_level / np.sqrt(2))
    re += n[0]
    im += n[1]
    env = np.sqrt(re * re + im * im)
    ds = params.display_smoothing_mm
    shown = gaussian_filter(env, (ds / sy, ds / sx), truncate=2.0) if ds > 0 else env
    return log_compress(shown, params), env


def blur_rows(image: np.ndarray, sigma_px: float, truncate: float = 4.0) -> np.ndarray:
    """``gaussian_filter1d(image, sigma_px, axis=1, truncate=truncate)``, filtering each run of equal rows once.

    The same result to the bit (each row is filtered alone), in a fraction of the time for images made of
    few distinct rows, such as a shadow mask below bone.

    Parameters
    ----------
    image : (H, W) array.
    sigma_px : standard deviation along the rows (pixels).
    truncate : kernel half-width in standard deviations.
    """
    if not len(image):
        return np.array(image, dtype=image.dtype)
    new = np.ones(len(image), dtype=bool)
    new[1:] = (image[1:] != image[:-1]).any(axis=1)
    distinct = gaussian_filter1d(image[new], sigma_px, axis=1, truncate=truncate)
    return distinct[np.cumsum(new) - 1]


@lru_cache(maxsize=8)
def _lerp_matrix(n_out: int, n_in: int, factor: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation from a grid of step ``factor`` to unit step (cached, read-only)."""
    x = np.arange(n_out) / factor
    i0 = np.minimum(np.floor(x).astype(int), n_in - 2)
    w = (x - i0).astype(np.float32)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), i0] = 1 - w
    m[np.arange(n_out), i0 + 1] = w
    m.flags.writeable = False
    return m


@lru_cache(maxsize=8)
def _einsum_path(*shapes) -> list:
    """The contraction order ``np.einsum(..., optimize=True)`` picks for :func:`echogenicity`'s interpolation."""
    return np.einsum_path("ij,tjk,lk->til", *(np.empty(sh, dtype=np.float32) for sh in shapes), optimize=True)[0]


def echogenicity(scene: Scene, ct_from_image, width: int, height: int, spacing, skin_depth: np.ndarray,
                 params: BModeParams, coarse: int = 4) -> np.ndarray:
    """(H, W) scatterer power of the soft tissue (before bone and shadow)."""
    t = np.asarray(ct_from_image, dtype=float)
    sx, sy = (float(v) for v in spacing)
    depth = ((np.arange(height) + 0.5) * sy)[:, None]
    # smooth texture fields on a coarse grid, interpolated to pixels
    hc, wc = -(-height // coarse) + 1, -(-width // coarse) + 1
    yc, xc = np.meshgrid(np.arange(hc) * coarse * sy, np.arange(wc) * coarse * sx, indexing="ij")
    pts = t[:3, 3] + xc.reshape(-1, 1) * t[:3, 0] + yc.reshape(-1, 1) * t[:3, 1]
    tex = scene.texture(pts).reshape(3, hc, wc) if len(scene.texture_k) else np.zeros((3, hc, wc))
    ay, ax = _lerp_matrix(height, hc, coarse), _lerp_matrix(width, wc, coarse)
    tex = tex.astype(np.float32)
    tex = np.einsum("ij,tjk,lk->til", ay, tex, ax, optimize=_einsum_path(ay.shape, tex.shape, ax.shape))
    # depth below the skin (mm); bounded where there is no skin (contact everywhere) or no contact
    rel = np.clip(depth - skin_depth[None, :], -100.0, 1000.0).astype(np.float32)
    t0, t1, t2 = tex
    fat_t = np.float32(scene.fat_mm) * (1 + np.float32(0.25) * t1)
    # septa: wavy sheets roughly parallel to the skin, SEPTA_SPACING_MM apart, fading in and out along them
    # (float32 throughout, in place: exp(-((g - rint(g)) * spacing / width)^2))
    sept = rel * np.float32(1 / params.septa_spacing_mm) + np.float32(0.7) * t2
    sept -= np.rint(sept)
    sept *= np.float32(params.septa_spacing_mm / SEPTA_WIDTH_MM)
    np.square(sept, out=sept)
    np.negative(sept, out=sept)
    np.exp(sept, out=sept)
    sept *= np.clip(np.float32(0.6) + np.float32(0.8) * t1, 0, None)
    # muscle with septa, then each shallower layer over the deeper ones (values computed where they show)
    power = np.float32(0.6) * t0
    power += 1
    np.maximum(power, np.float32(0.15), out=power)
    power *= np.float32(params.muscle)
    power += np.float32(params.septa) * sept
    m = rel < fat_t
    sept_fat = sept[m]
    power[m] = (np.float32(params.fat) * (1 + np.float32(0.3) * t0[m])
                + np.float32(0.5 * params.septa) * sept_fat * (sept_fat > 0.5))
    power[np.abs(rel - fat_t) < 0.35] = np.float32(params.fascia)
    m = rel < 1.6
    power[m] = np.float32(params.dermis) * (1 + np.float32(0.3) * t0[m])
    power[np.abs(rel - 0.15) < 0.25] = np.float32(4 * params.dermis)  # epidermis / gel interface
    power[rel < 0] = 0.0
    power[:, ~(skin_depth < params.gel_max_mm)] = 0.0  # no contact: nothing enters
    return power


def render_frame(scene: Scene, ct_from_image, width: int, height: int, spacing, rng: np.random.Generator,
                 params: BModeParams | None = None, gamma_mm: float = 0.3,
                 max_incidence_deg: float = 85.0) -> RenderedFrame:
    """Render one B-mode frame with its true labels (see the module docstring for the model).

    Parameters
    ----------
    scene : bones, skin and tissue texture.
    ct_from_image : (4, 4) image plane (mm) -> CT (mm), i.e. ``pose @ calib``.
    width, height : image size (px).
    spacing : (sx, sy) pixel size (mm/px).
    rng : random generator (speckle and noise).
    params : imaging physics (defaults of :class:`BModeParams`).
    gamma_mm, max_incidence_deg : label band half-width (mm) and visible-incidence limit (degrees).

    Returns
    -------
    :class:`RenderedFrame`. Its labels lie where the bone is displayed; its ``bone_depth_mm`` and ``contour`` are in
    true millimetres (they differ from the displayed ones when ``params.speed_of_sound_m_s`` is not 1540).
    """
    params = params or BModeParams()
    t, width, height, sx, sy = check_geometry(ct_from_image, width, height, spacing)
    # speed of sound: row v shows the echo of true depth (v + 0.5) sy c / 1540; everything below (geometry,
    # labels, speckle positions) works in true millimetres of that axial pixel size
    sy = sy * params.speed_of_sound_m_s / SCANNER_SPEED_M_S
    depth_b, cosi, _ = first_hits(scene, t, width, (sx, sy))
    skin = skin_depths(scene, t, width, (sx, sy))
    # under pressure the soft tissue conforms to the probe face: small gaps close
    skin = np.where(skin < params.gel_max_mm, np.maximum(skin - params.conform_mm, np.minimum(skin, 0.0)), skin)
    power = echogenicity(scene, t, width, height, (sx, sy), skin, params)
    depth = ((np.arange(height) + 0.5) * sy)[:, None]
    contact = skin < params.gel_max_mm
    hit = np.isfinite(depth_b) & contact & (depth_b < height * sy)
    c = np.clip(np.nan_to_num(cosi, nan=0.0), 0, 1)
    # bone: diffuse part at the surface, shadow below
    below = depth > depth_b[None, :]
    surf = np.abs(depth - depth_b[None, :]) < max(sy, 0.25)
    power = np.where(surf & hit[None, :], power + params.bone_diffuse * c[None, :], power)
    # shadow: transmission falls to shadow_level beneath the hit; its edges are soft (finite beam width).
    # Rows above the first shadowed one are skipped: they would be multiplied by 1 and have 0 added.
    shadow = below & hit[None, :] & ~surf
    r0 = int(np.argmax(shadow.any(axis=1))) if shadow.any() else height
    shadowed = blur_rows(shadow[r0:].astype(np.float32), params.psf_lateral_mm * 2 / sx, truncate=2.0)
    power[r0:] *= 1 - shadowed * np.float32(1 - params.shadow_level)
    if params.reverb_level > 0 and hit.any():
        # reverberation: banded echoes inside the cortex, decaying below the surface
        # a profile of the row offset below the hit row, gathered per pixel (cheaper than exp and cos per pixel)
        d = (np.arange(height + 1) + 0.5) * sy
        prof = (np.exp(-d / (5 * max(params.ringdown_mm, 1e-3))) * (0.6 + 0.4 * np.cos(2 * np.pi / REVERB_PERIOD_MM * d))
                * params.reverb_level).astype(np.float32)
        prof[-1] = 0.0
        row_b = np.where(hit, np.floor(np.nan_to_num(depth_b, posinf=0.0) / sy), height + 1).astype(np.int32)
        k = np.arange(r0, height, dtype=np.int32)[:, None] - row_b[None, :]  # rows below the hit; above: prof[-1] = 0
        k[k < 0] = height
        np.minimum(k, height, out=k)
        wgt = np.where(hit, c ** params.specular_exponent, 0.0).astype(np.float32)
        power[r0:] += shadowed * prof[k] * wgt[None, :]
    coherent = None
    if hit.any():
        coherent = np.zeros((height, width), dtype=np.complex64)
        cols = np.flatnonzero(hit)
        rows = np.floor(depth_b[cols] / sy).astype(int)
        phase = np.exp(1j * rng.uniform(0, 2 * np.pi, len(cols)) * 0.3)
        amp = params.bone_amplitude * c[cols] ** params.specular_exponent * phase
        # the echo rings down below the surface (amplitude exp(-depth / ringdown_mm), a random phase per row):
        # a thick bright cap with a soft lower edge
        n_ring = int(np.ceil(3 * params.ringdown_mm / sy)) if params.ringdown_mm > 0 else 0
        ring_phase = np.exp(2j * np.pi * rng.uniform(0, 1, (n_ring + 1, len(cols)))) if n_ring else None
        for k in range(n_ring + 1):
            r = rows + k
            ok = r < height
            wgt = np.exp(-k * sy / params.ringdown_mm) if params.ringdown_mm > 0 else 1.0
            ph = ring_phase[k] if (k and ring_phase is not None) else 1.0
            coherent[r[ok], cols[ok]] += (wgt * amp * ph)[ok]
    scat = scene.speckle(t, width, height, (sx, sy), params.speckle_cell_mm) if params.speckle_cell_mm > 0 else None
    image, _ = form_image(power, coherent, (sx, sy), rng, params, scatterers=scat)
    full, visible, pts, inc = label_frame(scene, t, width, height, (sx, sy), gamma_mm, max_incidence_deg,
                                          bone_depth_mm=np.where(contact, depth_b, depth_b))
    inc3d = np.where(np.isfinite(cosi), np.degrees(np.arccos(np.clip(cosi, -1, 1))), np.nan)
    return RenderedFrame(image, full, visible, depth_b, inc3d, pts, inc)


def render(scene: Scene, ct_from_image, width: int, height: int, spacing, rng: np.random.Generator,
           params: BModeParams | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one frame of a scene: ``(image uint8, full label bool, visible label bool)``, each (H, W).

    The simplest entry point for tests of other stages, e.g. a flat bone 15 mm
    deep seen head on::

        import trimesh
        from ultrabones.twin import bmode
        bone = trimesh.creation.box(extents=(200, 200, 20))          # top face at z = +10 mm
        scene = bmode.Scene.from_meshes(bone)                         # no skin: contact everywhere
        ct_from_image = np.array([[1, 0, 0, -25], [0, 0, 1, 0], [0, -1, 0, 25], [0, 0, 0, 1.]])
        image, full, visible = bmode.render(scene, ct_from_image, 256, 218, (0.2, 0.2),
                                            np.random.default_rng(0))

    (image ``x`` along CT ``x``, depth along CT ``-z``, the top row at ``z = 25``:
    the bone's top face appears 15 mm deep.) See :func:`render_frame` for the
    parameters and for the per-column bone depth and incidence.
    """
    f = render_frame(scene, ct_from_image, width, height, spacing, rng, params)
    return f.image, f.full, f.visible


def render_points(points_mm: np.ndarray, width: int, height: int, spacing, rng: np.random.Generator,
                  params: BModeParams | None = None, amplitude: float = 25.0, background: float = 0.004,
                  floor_depth_mm: float | None = None) -> np.ndarray:
    """A frame of point reflectors (e.g. phantom wires) in water: bright dots with speckle around.

    Parameters
    ----------
    points_mm : (N, 2) image-plane positions (x, y) in mm; NaN rows are skipped.
    amplitude : peak echo amplitude of a wire, relative to unit-power tissue speckle.
    background : scatterer power of the medium (water with a little scattering).
    floor_depth_mm : depth (mm) of the phantom's floor (a bright flat echo), or None.

    Returns
    -------
    (H, W) uint8 image.
    """
    params = params or BModeParams()
    sx, sy = (float(v) for v in spacing)
    power = np.full((height, width), background, dtype=np.float32)
    coherent = np.zeros((height, width), dtype=np.complex64)
    p = np.asarray(points_mm, dtype=float).reshape(-1, 2)
    p = p[np.isfinite(p).all(axis=1)]
    u = np.floor(p[:, 0] / sx).astype(int)
    v = np.floor(p[:, 1] / sy).astype(int)
    ok = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    # a point reflector spread by the PSF peaks at ``amplitude`` (relative to unit-power speckle)
    coherent[v[ok], u[ok]] = amplitude * 2 * np.pi * (params.psf_axial_mm / sy) * (params.psf_lateral_mm / sx)
    if floor_depth_mm is not None and 0 < floor_depth_mm < height * sy:
        row = int(floor_depth_mm / sy)
        coherent[row, :] += params.bone_amplitude * 0.5
        power[row + 1:, :] *= params.shadow_level
    image, _ = form_image(power, coherent, (sx, sy), rng, params)
    return image


__all__ = ["BModeParams", "Scene", "RenderedFrame", "render", "render_frame", "render_points", "form_image",
           "log_compress", "attenuation_profile", "echogenicity", "psf_gain", "blur_rows"]
