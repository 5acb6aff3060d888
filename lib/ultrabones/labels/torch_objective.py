"""Eq. 2 for many frames at once on a torch device, and differential evolution run for them in lock step.

An optional path of the per-frame labelling (``labeling.device``; :mod:`ultrabones.labels.batch`): the
numpy/scipy path of :mod:`ultrabones.labels.optimize` stays the default and needs no torch. Here:

- :class:`BatchedObjective` evaluates Eq. 2 (:class:`~ultrabones.labels.objective.FrameObjective`) for a
  population per frame, all frames in one batch of tensor ops: the frames' near points are padded into one
  (F, N, 3) tensor, every (member, point) pair is tested against the slab ``|z| <= gamma`` by one batched
  matrix product (brute force, members in blocks to bound memory), the hits' stencils are marked in the
  frame's image, the (member, pixel) pairs are deduplicated with :func:`torch.unique`, the first hit of each
  (member, column) is a ``scatter_reduce`` minimum, and the means are scatter sums. The pixel rule is
  :meth:`FrameObjective.band`'s (pixel centres at integer ``(u, v)`` after ``u = x / sx - 0.5``; in-plane
  ``d^2 <= gamma^2 - z^2`` over the stencil; pixels inside the image), in float64, so the pixel counts equal
  the numpy path's and the means agree to rounding (about 1e-15).
- :func:`optimize_frames_batched` runs differential evolution (scipy's ``best1bin``, dithered mutation,
  deferred updating, latin-hypercube start with no correction as a member, scipy's convergence test) for all
  frames together, each with its own population and scipy's random draws for its seed (:class:`_ScipyStream`),
  so that each frame follows :func:`~ultrabones.labels.optimize.optimize_frame` generation for generation and ends
  at the same correction (to rounding; ties of Eq. 2 within 1e-15 could part them). Each result is validated as :func:`~ultrabones.labels.optimize.optimize_frame` validates it.
  The populations are bookkept in numpy; only the objective runs on the device.

Sums of 8-bit images are taken in integers (exact, so the same in any order: deterministic on a GPU too).
This module imports torch; :mod:`ultrabones.labels.tasks` imports it only when ``labeling.device`` asks for it.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ultrabones.core import geometry
from ultrabones.core.errors import ParamsError
from ultrabones.labels import optimize

#: Values of ``labeling.device``: None (numpy/scipy), or one of these.
DEVICES = ("auto", "cuda", "cpu")

# Cells of one (frames x points x members) block of the slab test, and of one (hits x stencil) block.
_BLOCK_CELLS = 1 << 23


def resolve_device(device: str | None) -> str | None:
    """The torch device that ``labeling.device`` asks for, or None for the numpy/scipy path.

    Parameters
    ----------
    device : None (numpy/scipy), ``"auto"`` (CUDA when torch sees a CUDA device, else None),
        ``"cuda"`` or ``"cpu"``.

    Raises
    ------
    ParamsError
        For an unknown value, or ``"cuda"`` where torch sees no CUDA device.
    """
    if device is None:
        return None
    if device not in DEVICES:
        raise ParamsError(f"labeling.device: {device!r} is not one of {[None, *DEVICES]}")
    if device == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if device == "auto":
        return None
    raise ParamsError("labeling.device: 'cuda' was asked for but torch sees no CUDA device "
                      f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use null or 'auto'")


def _deltas(xs: np.ndarray) -> np.ndarray:
    """(F, S, 4, 4) perturbations of parameters (F, 6, S): rotation (deg), translation (mm), as
    :meth:`FrameObjective.deltas` per frame."""
    return geometry.perturbation(np.swapaxes(xs[:, :3], 1, 2), np.swapaxes(xs[:, 3:], 1, 2))


class BatchedObjective:
    """Eq. 2 of many prepared frames, each with its own population, evaluated in one batch on a torch device.

    Parameters
    ----------
    objectives : list of :class:`~ultrabones.labels.objective.FrameObjective`; frames may differ in size, spacing,
        gamma, region and number of near points (zero included).
    device : torch device (``"cpu"``, ``"cuda"``, ...).
    block_cells : largest number of (frame, point, member) cells of one slab-test block (bounds the memory).

    Attributes
    ----------
    n_frames : number of frames.
    """

    def __init__(self, objectives, device="cpu", block_cells: int = _BLOCK_CELLS):
        self.objectives = list(objectives)
        self.device = torch.device(device)
        self.block_cells = int(block_cells)
        objs = self.objectives
        n = self.n_frames = len(objs)
        dev, i64, f64 = self.device, torch.int64, torch.float64
        counts = [o.n_points for o in objs]
        nmax = max(counts, default=0)
        q = np.zeros((n, nmax, 3))
        valid = np.zeros((n, nmax), bool)
        for f, o in enumerate(objs):
            q[f, :counts[f]] = o.q
            valid[f, :counts[f]] = True
        self._q = torch.as_tensor(q, dtype=f64, device=dev)
        self._valid = torch.as_tensor(valid, device=dev)
        self._has_points = np.array(counts) > 0
        self._calib_inv = np.stack([o.calib_inv for o in objs]) if n else np.zeros((0, 4, 4))
        h = np.array([o.shape[0] for o in objs], np.int64)
        w = np.array([o.shape[1] for o in objs], np.int64)
        self._h, self._w = torch.as_tensor(h, device=dev), torch.as_tensor(w, device=dev)
        self._hw_max, self._w_max = int((h * w).max(initial=1)), int(w.max(initial=1))
        self._sx = torch.tensor([o.spacing[0] for o in objs], dtype=f64, device=dev)
        self._sy = torch.tensor([o.spacing[1] for o in objs], dtype=f64, device=dev)
        self._gamma = torch.tensor([o.gamma for o in objs], dtype=f64, device=dev)
        self._gamma2 = torch.tensor([o.gamma ** 2 for o in objs], dtype=f64, device=dev)
        self._first_hit = torch.tensor([o.region == "first_hit" for o in objs], dtype=torch.bool, device=dev)
        self._first_rows = torch.tensor([o.first_hit_rows for o in objs], dtype=i64, device=dev)
        # One stencil box for all frames, each frame's own stencil a mask in it.
        ru = max([int(np.abs(o.stencil[:, 0]).max()) for o in objs], default=0)
        rv = max([int(np.abs(o.stencil[:, 1]).max()) for o in objs], default=0)
        mask = np.zeros((n, 2 * rv + 1, 2 * ru + 1), bool)
        for f, o in enumerate(objs):
            mask[f, o.stencil[:, 1] + rv, o.stencil[:, 0] + ru] = True
        self._smask = torch.as_tensor(mask, device=dev)
        self._du = torch.arange(-ru, ru + 1, dtype=f64, device=dev)
        self._dv = torch.arange(-rv, rv + 1, dtype=f64, device=dev)
        # The images, concatenated: 8-bit levels (exact integer sums) when every image is one, else floats.
        f_all = np.concatenate([o.f for o in objs]) if n else np.zeros(0)
        levels = np.rint(f_all * 255.0)
        self._integer = bool(np.array_equal(levels / 255.0, f_all)) and bool(((levels >= 0) & (levels <= 255)).all())
        self._image = torch.as_tensor(levels.astype(np.int64) if self._integer else f_all, device=dev)
        self._image_offset = torch.as_tensor(np.concatenate([[0], np.cumsum(h * w)[:-1]]).astype(np.int64)
                                             if n else np.zeros(0, np.int64), device=dev)
        fid = [o.fiducials for o in objs]
        self._fiducials = fid[0] if n and all(np.array_equal(fid[0], x) for x in fid) else None

    # -- I_t -----------------------------------------------------------------------------

    def _transforms(self, xs: np.ndarray) -> np.ndarray:
        """(F, S, 4, 4) marker -> image-plane transforms of each member (as :meth:`FrameObjective.band`)."""
        return self._calib_inv[:, None] @ geometry.invert_transform(_deltas(xs))

    def band_keys(self, xs: np.ndarray, active=None) -> torch.Tensor:
        """The intersections ``I_t`` of every member of every frame, as sorted unique keys.

        Parameters
        ----------
        xs : (F, 6, S) parameters: rotation (deg, Euler xyz), translation (mm).
        active : (F,) bool, the frames to evaluate (None: all); the others get no pixels.

        Returns
        -------
        (M,) int64 tensor ``(f * S + s) * HW + v * W_f + u`` (``HW`` the largest frame's pixel count, ``W_f``
        frame ``f``'s width), one per (member, pixel) pair of ``I_t``.
        """
        xs = np.asarray(xs, float)
        n, s = self.n_frames, xs.shape[2]
        dev = self.device
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        if n == 0 or self._q.shape[1] == 0 or s == 0:
            return empty
        use = self._has_points if active is None else self._has_points & np.asarray(active, bool)
        if not use.any():
            return empty
        m = torch.as_tensor(self._transforms(xs), dtype=torch.float64, device=dev)  # (F, S, 4, 4)
        a = m[:, :, 2, :3].transpose(1, 2)  # (F, 3, S): z = q . a + b
        b = m[:, :, 2, 3]
        valid = self._valid & torch.as_tensor(use, device=dev)[:, None]
        step = max(1, self.block_cells // max(1, n * self._q.shape[1]))
        keys = []
        for s0 in range(0, s, step):
            s1 = min(s, s0 + step)
            z = torch.baddbmm(b[:, None, s0:s1], self._q, a[:, :, s0:s1])  # (F, N, block): out-of-plane (mm)
            hit = valid[:, :, None] & (z.abs() <= self._gamma[:, None, None])
            fi, ni, si = hit.nonzero(as_tuple=True)
            zi = z[fi, ni, si]
            si = si + s0
            cells = self._smask.shape[1] * self._smask.shape[2]
            hstep = max(1, self.block_cells // cells)
            for h0 in range(0, len(fi), hstep):
                sl = slice(h0, h0 + hstep)
                keys.append(self._stencil_keys(m, fi[sl], ni[sl], si[sl], zi[sl], s))
        return torch.unique(torch.cat(keys)) if keys else empty

    def _stencil_keys(self, m, fi, ni, si, z, s: int) -> torch.Tensor:
        """Keys of the pixels within ``gamma`` of each hit (frame ``fi``, point ``ni``, member ``si``, ``z`` mm)."""
        q = self._q[fi, ni]
        mr = m[fi, si]  # (H, 4, 4)
        cx = (mr[:, 0, :3] * q).sum(dim=1) + mr[:, 0, 3]
        cy = (mr[:, 1, :3] * q).sum(dim=1) + mr[:, 1, 3]
        sx, sy = self._sx[fi], self._sy[fi]
        u = cx / sx - 0.5  # pixel centres sit at integer (u, v)
        v = cy / sy - 0.5
        ru, rv = torch.round(u), torch.round(v)  # half to even, as np.rint
        cu2 = (((ru - u)[:, None] + self._du) * sx[:, None]) ** 2  # (H, cols)
        rem = (self._gamma2[fi] - z ** 2)[:, None] - (((rv - v)[:, None] + self._dv) * sy[:, None]) ** 2  # (H, rows)
        ok = (cu2[:, None, :] <= rem[:, :, None]) & self._smask[fi]  # in-plane d^2 <= gamma^2 - z^2
        iu = ru.to(torch.int64)[:, None] + self._du.to(torch.int64)  # (H, cols)
        iv = rv.to(torch.int64)[:, None] + self._dv.to(torch.int64)  # (H, rows)
        w, h = self._w[fi], self._h[fi]
        ok &= ((iu >= 0) & (iu < w[:, None]))[:, None, :] & ((iv >= 0) & (iv < h[:, None]))[:, :, None]
        k, r, c = ok.nonzero(as_tuple=True)
        pixel = iv[k, r] * w[k] + iu[k, c]
        return (fi[k] * s + si[k]) * self._hw_max + pixel

    # -- Eq. 2 -----------------------------------------------------------------------------

    def intensity(self, xs: np.ndarray, active=None) -> tuple[np.ndarray, np.ndarray]:
        """Mean intensity over ``I_t`` of each member of each frame (in the frame's region), and ``|I_t|``.

        Parameters
        ----------
        xs : (F, 6, S) parameters: rotation (deg, Euler xyz), translation (mm).
        active : (F,) bool, the frames to evaluate (None: all); the others get mean 0 and count 0.

        Returns
        -------
        mean : (F, S) mean of ``f`` (image / 255, or the float image) over ``I_t``, 0 where ``I_t`` is empty.
        count : (F, S) pixels averaged (the whole ``I_t``, or its first hit for a ``"first_hit"`` frame).
        """
        xs = np.asarray(xs, float)
        if xs.ndim != 3 or xs.shape[:2] != (self.n_frames, 6):
            raise ValueError(f"xs must be (F={self.n_frames}, 6, S), got shape {xs.shape}")
        n, s = self.n_frames, xs.shape[2]
        keys = self.band_keys(xs, active)
        member, pixel = keys // self._hw_max, keys % self._hw_max
        f = member // max(s, 1)
        w = self._w[f]
        if len(keys) and bool(self._first_hit.any()):
            row, col = pixel // w, pixel % w
            column = member * self._w_max + col
            top = torch.full((n * s * self._w_max,), np.iinfo(np.int64).max // 2, dtype=torch.int64,
                             device=self.device)
            top.scatter_reduce_(0, column, row, reduce="amin")
            keep = ~self._first_hit[f] | (row < top[column] + self._first_rows[f])
            member, pixel, f = member[keep], pixel[keep], f[keep]
        count = torch.bincount(member, minlength=n * s)
        values = self._image[self._image_offset[f] + pixel]
        total = torch.zeros(n * s, dtype=values.dtype, device=self.device).scatter_add_(0, member, values)
        total = total.to(torch.float64) / 255.0 if self._integer else total
        mean = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
        return mean.reshape(n, s).cpu().numpy(), count.reshape(n, s).cpu().numpy()

    def fiducial(self, xs: np.ndarray) -> np.ndarray:
        """(F, S) mean fiducial displacement (mm) of each member's correction (:meth:`FrameObjective.fiducial`)."""
        deltas = _deltas(np.asarray(xs, float))
        if self._fiducials is not None:
            return geometry.mean_fiducial_displacement(np.eye(4), deltas, self._fiducials)
        return np.stack([geometry.mean_fiducial_displacement(np.eye(4), d, o.fiducials)
                         for d, o in zip(deltas, self.objectives)])

    def value(self, xs: np.ndarray, lam: float, active=None) -> np.ndarray:
        """(F, S) Eq. 2 (to maximise): mean intensity over ``I_t`` minus ``lam`` (1/mm) times the fiducial term (mm)."""
        mean, _ = self.intensity(xs, active)
        return mean - lam * self.fiducial(xs)


# ----------------------------------------------------------------------------- differential evolution, in lock step


class _ScipyStream:
    """One frame's random draws, in the order and form of scipy's ``DifferentialEvolutionSolver``.

    scipy (``seed=int``) draws from ``numpy.random.RandomState(seed)``: the latin-hypercube start, then per
    generation the dithered mutation scale, each member's partners (a shuffle of a persistent index array,
    the candidate itself left out), the crossover fill points and draws, and fresh values for parameters that
    left the unit box. Drawing the same numbers in the same order makes :func:`optimize_frames_batched` follow
    :func:`~ultrabones.labels.optimize.optimize_frame` member for member (``tests/test_torch_objective.py``).
    """

    def __init__(self, seed: int, members: int, dims: int):
        self.rng = np.random.RandomState(seed)
        self.members, self.dims = members, dims
        self.index = np.arange(members)

    def latin_hypercube(self) -> np.ndarray:
        """(members, dims) latin-hypercube sample of the unit cube (scipy's ``init_population_lhs``)."""
        s, d, rng = self.members, self.dims, self.rng
        samples = rng.uniform(size=(s, d)) / s + np.linspace(0.0, 1.0, s, endpoint=False)[:, None]
        out = np.zeros_like(samples)
        for j in range(d):
            out[:, j] = samples[rng.permutation(range(s)), j]
        return out

    def best1bin(self, pop: np.ndarray, recombination: float, mutation) -> np.ndarray:
        """Trial vectors (unit cube) of one generation, ``best1bin`` with dithered mutation, deferred updating."""
        rng, s, d = self.rng, self.members, self.dims
        scale = rng.uniform(mutation[0], mutation[1])
        partners = np.empty((s, 2), dtype=np.int64)
        for c in range(s):
            rng.shuffle(self.index)
            idxs = self.index[:6]
            partners[c] = idxs[idxs != c][:2]
        bprime = pop[0] + scale * (pop[partners[:, 0]] - pop[partners[:, 1]])
        fill = rng.randint(0, d, size=s, dtype=np.int64)
        cross = rng.uniform(size=(s, d)) < recombination
        cross[np.arange(s), fill] = True  # one parameter always from the mutant
        trial = np.where(cross, bprime, pop)
        out = (trial > 1) | (trial < 0)
        if n_out := int(np.count_nonzero(out)):
            trial[out] = rng.uniform(size=n_out)
        return trial


def _promote_best(pop: np.ndarray, energy: np.ndarray, frames) -> None:
    """Swap each listed frame's lowest-energy member into place 0 (in place)."""
    for f in frames:
        j = int(np.argmin(energy[f]))
        pop[f, [0, j]] = pop[f, [j, 0]]
        energy[f, [0, j]] = energy[f, [j, 0]]


def optimize_frames_batched(objectives, lam: float, *, popsize: int = 15, maxiter: int = 100, tol: float = 0.01,
                            seeds=None, device="cpu", bound_deg: float = 1.0, bound_mm: float = 1.0,
                            max_correction_mm: float = 1.0, min_label_fraction: float = 0.0,
                            halves_check: str | None = None, mutation=(0.5, 1.0), recombination: float = 0.7,
                            block_cells: int = _BLOCK_CELLS) -> list[optimize.FrameResult]:
    """Refine many frames' poses by maximising Eq. 2 with differential evolution run in lock step, then validate.

    Every frame has its own population of ``popsize * 6`` members in the box
    ``[-bound_deg, bound_deg]^3 x [-bound_mm, bound_mm]^3`` (latin-hypercube start, no correction as member 0,
    as :func:`~ultrabones.labels.optimize.optimize_frame`), scipy's random draws for its seed (``seeds``) and
    ``best1bin`` strategy (mutation drawn per generation in ``mutation``, binomial crossover ``recombination``,
    deferred updating, out-of-box parameters redrawn). One generation of all frames still running is one call
    of :meth:`BatchedObjective.value`. A frame stops when ``std(energies) <= tol * |mean(energies)|``
    (scipy's test, no absolute tolerance) or after ``maxiter`` generations. With the same seed, a frame's
    correction and generations are :func:`~ultrabones.labels.optimize.optimize_frame`'s (scipy's solver, same
    draws in the same order; the values of Eq. 2 agree to about 1e-15).

    Parameters
    ----------
    objectives : list of prepared :class:`~ultrabones.labels.objective.FrameObjective`, made with the same
        ``bound_deg`` and ``bound_mm`` (their region is each frame's objective region).
    lam : the weight ``lambda`` of the fiducial term (1/mm).
    popsize, maxiter, tol : differential evolution settings (population ``popsize * 6``).
    seeds : per-frame seeds (default ``0, 1, ...``); a frame's result depends only on its own seed and inputs.
    device : torch device of the objective (``"cpu"``, ``"cuda"``).
    bound_deg, bound_mm : the search box (degrees, mm).
    max_correction_mm, min_label_fraction, halves_check : validation, as for
        :func:`~ultrabones.labels.optimize.optimize_frame`.
    mutation, recombination : differential evolution's dither range and crossover probability (scipy's defaults).
    block_cells : see :class:`BatchedObjective`.

    Returns
    -------
    list of :class:`~ultrabones.labels.optimize.FrameResult`, one per objective, ``path = "de-batched"``;
    ``"no_bone"`` where the recorded pose's intersection is empty. ``nfev`` counts the frame's generations
    plus its initial population, ``n_members`` the poses it evaluated, ``seconds`` its share of the process
    (CPU) time: the batched work split in proportion to ``nfev``, plus its own validation (time spent on
    a GPU is not CPU time).
    """
    t0 = time.process_time()
    objectives = list(objectives)
    n = len(objectives)
    seeds = list(range(n)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != n:
        raise ValueError(f"optimize_frames_batched: {len(seeds)} seeds for {n} frames")
    if n == 0:
        return []
    bo = BatchedObjective(objectives, device, block_cells)
    i0, n0 = bo.intensity(np.zeros((n, 6, 1)))
    i0, n0 = i0[:, 0], n0[:, 0]
    running = n0 > 0
    lower = np.array([-bound_deg] * 3 + [-bound_mm] * 3, float)
    upper = -lower
    centre, span = 0.5 * (lower + upper), np.abs(upper - lower)
    members = max(5, popsize * 6)
    streams = [_ScipyStream(s, members, 6) for s in seeds]
    pop = np.full((n, members, 6), 0.5)
    for f in np.flatnonzero(running):
        pop[f] = streams[f].latin_hypercube()
        pop[f, 0] = (np.zeros(6) - centre) / np.where(span > 0, span, 1.0) + 0.5  # x0: no correction

    def energies(unit, frames):
        xs = np.swapaxes(centre + (unit - 0.5) * span, 1, 2)  # (F, 6, S), degrees and mm
        return -bo.value(xs, lam, frames)

    energy = np.full((n, members), np.inf)
    energy[running] = energies(pop, running)[running]
    nfev = running.astype(int)
    _promote_best(pop, energy, np.flatnonzero(running))
    for _ in range(maxiter):
        if not running.any():
            break
        trial = pop.copy()
        for f in np.flatnonzero(running):
            trial[f] = streams[f].best1bin(pop[f], recombination, mutation)
        e_trial = energies(trial, running)
        nfev += running
        better = running[:, None] & (e_trial <= energy)
        pop = np.where(better[..., None], trial, pop)
        energy = np.where(better, e_trial, energy)
        _promote_best(pop, energy, np.flatnonzero(running))
        with np.errstate(invalid="ignore"):
            running &= ~(np.std(energy, axis=1) <= tol * np.abs(np.mean(energy, axis=1)))
    shared = time.process_time() - t0
    share = nfev / nfev.sum() if nfev.sum() else np.full(n, 1.0 / n)
    out = []
    for f, obj in enumerate(objectives):
        t1 = time.process_time()
        if n0[f] == 0:
            out.append(optimize.FrameResult("no_bone", path="de-batched",
                                         seconds=shared * share[f] + time.process_time() - t1))
            continue
        res = optimize.validated_result(obj, obj.pose, centre + (pop[f, 0] - 0.5) * span, lam, float(i0[f]), int(n0[f]),
                                     max_correction_mm, min_label_fraction, halves_check, nfev=int(nfev[f]),
                                     n_members=int(nfev[f]) * members, path="de-batched")
        res.seconds = shared * share[f] + time.process_time() - t1
        out.append(res)
    return out


def difference_from_numpy(bo: BatchedObjective, xs: np.ndarray, lam: float) -> dict:
    """How far the batched objective is from each frame's numpy :class:`~ultrabones.labels.objective.FrameObjective`.

    Parameters
    ----------
    bo : the batched objective.
    xs : (F, 6, S) parameters: rotation (deg), translation (mm).
    lam : the weight of the fiducial term (1/mm).

    Returns
    -------
    ``{"counts_equal": per frame, whether every member's ``|I_t|`` is the same, "mean": largest absolute
    difference of the mean intensities, "value": of the Eq. 2 values}`` (intensities on the [0, 1] scale).
    """
    xs = np.asarray(xs, float)
    mean, count = bo.intensity(xs)
    value = bo.value(xs, lam)
    equal, d_mean, d_value = [], 0.0, 0.0
    for f, obj in enumerate(bo.objectives):
        m, n = obj.intensity(xs[f])
        equal.append(bool(np.array_equal(count[f], n)))
        d_mean = max(d_mean, float(np.abs(mean[f] - m).max(initial=0.0)))
        d_value = max(d_value, float(np.abs(value[f] - obj.value(xs[f], lam)).max(initial=0.0)))
    return {"counts_equal": equal, "mean": d_mean, "value": d_value}
