"""Synthetic cryo-EM micrographs with ground truth, for benchmarking particle pickers.

Image formation (weak-phase approximation, one FFT pair per micrograph):

1. A projected-density image ``D`` holds the particle projections (from a cached bank of projections at
   uniformly random 3D orientations, with a further random in-plane rotation and sub-pixel shift), the
   members of aggregates, the phase part of ice/contaminant junk and the carbon film with its grain.
2. ``D`` is multiplied in Fourier space by the micrograph's CTF (RELION convention, positive defocus =
   underfocus, see :mod:`relion_plugins.imaging.ctf`) and the image contrast is ``-IFT[CTF * FT[D]]``:
   protein is dark on a light background, as in real micrographs.
3. In real space: a smooth ice-thickness field ``t(x, y)`` darkens thick ice (low-frequency background
   ramp) and raises the noise there; ice and contaminants add strong amplitude contrast (dark); carbon
   is darker than the hole. Noise is white Gaussian plus a mild 1/f component (added in Fourier space at
   low frequencies only, where it matters).
4. The image is normalised to mean 0, SD 1 (float32).

SNR is defined as the variance of the particle signal (step 2, particles only) over the variance of the
noise, both taken over the particles' footprints (disks of the particle diameter at the truth
positions). The signal scale is set from the projection bank and the CTF before any FFT of the full
image, so the requested SNR holds to within a few per cent (neighbouring particles add a little).

Only isolated particles are truth. Aggregates (clumps of overlapping particles) are junk.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from ..imaging.ctf import ctf_2d
from .phantoms import Volume, get_volume

__all__ = [
    "JUNK_PRESETS",
    "JunkConfig",
    "JunkItem",
    "MicrographConfig",
    "SimulatedMicrograph",
    "clear_bank_cache",
    "projection_bank",
    "simulate_micrograph",
]


# ----------------------------------------------------------------------------------------------------
# configuration and results


@dataclass(frozen=True)
class JunkConfig:
    """How much junk a micrograph gets. Counts are per 1024 x 1024 pixels and scale with the area."""

    ice_prob: float = 0.6  # chance that a micrograph has ice crystals / contaminants
    ice_count: tuple[int, int] = (1, 5)
    ice_small_fraction: float = 0.5  # share of particle-sized ones (the rest are 1.5-5 diameters)
    carbon_prob: float = 0.35  # chance of a carbon-film edge
    carbon_cover: tuple[float, float] = (0.1, 0.35)  # fraction of the image under carbon
    aggregate_prob: float = 0.6
    aggregate_count: tuple[int, int] = (1, 4)
    aggregate_size: tuple[int, int] = (3, 9)  # particles per clump
    empty_prob: float = 0.3  # chance of particle-free patches of plain ice
    empty_count: tuple[int, int] = (1, 2)


JUNK_PRESETS: dict[str, JunkConfig] = {
    "none": JunkConfig(ice_prob=0.0, carbon_prob=0.0, aggregate_prob=0.0, empty_prob=0.0),
    "light": JunkConfig(
        ice_prob=0.4, ice_count=(1, 2), carbon_prob=0.15, aggregate_prob=0.3, aggregate_count=(1, 2)
    ),
    "default": JunkConfig(),
    "heavy": JunkConfig(
        ice_prob=0.9,
        ice_count=(3, 9),
        carbon_prob=0.5,
        aggregate_prob=0.9,
        aggregate_count=(2, 6),
        empty_prob=0.5,
    ),
}


@dataclass(frozen=True)
class MicrographConfig:
    """Parameters of one simulated micrograph (defaults: a 4096^2 K3 image binned 4x, ~4 Å/px)."""

    shape: tuple[int, int] = (1024, 1024)  # (ny, nx)
    angpix: float = 4.0
    particle: str = "globular"  # phantom name, map alias (ribosome, apoferritin, spliceosome) or MRC path
    diameter_A: float | None = None  # scale the particle to this outer diameter; None: its own size
    n_particles: tuple[int, int] = (40, 120)  # per 1024 x 1024 pixels, scaled with the area
    crowding: float = 1.0  # minimum centre distance between true particles, in diameters
    edge_margin: float = 0.5  # minimum distance of truth from the image edge, in diameters
    snr: float | tuple[float, float] = 0.1  # fixed, or drawn per micrograph from a range
    defocus_um: tuple[float, float] = (1.0, 3.0)  # mean defocus range (underfocus, µm)
    astigmatism_um: float = 0.05  # up to this |U - V| / 2 (µm)
    voltage_kV: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    bfactor: float = 80.0  # Å^2, envelope of the CTF
    junk: JunkConfig | str = "default"
    ice_gradient: float = 0.3  # relative ice-thickness variation across the image
    coloured_noise: float = 0.15  # share of the noise variance in the 1/f component
    bank_size: int = 128  # projections per map in the bank
    phantom_seed: int = 0  # shape seed of built-in phantoms (the same particle in every micrograph)
    keep_components: bool = False  # also return signal / noise images (two extra FFTs; for tests)

    def junk_config(self) -> JunkConfig:
        """The junk settings, resolving a preset name."""
        if isinstance(self.junk, JunkConfig):
            return self.junk
        try:
            return JUNK_PRESETS[str(self.junk)]
        except KeyError as exc:
            raise ValueError(f"unknown junk preset {self.junk!r}; known: {', '.join(JUNK_PRESETS)}") from exc


@dataclass
class JunkItem:
    """One piece of junk: kind (ice, contaminant, carbon, aggregate, empty), bbox (x0, y0, x1, y1) in
    pixels (clipped to the image), its centre and a bounding radius (for carbon: the region's extent)."""

    kind: str
    bbox: tuple[float, float, float, float]
    x: float
    y: float
    radius: float


@dataclass
class SimulatedMicrograph:
    """A simulated micrograph and its ground truth (coordinates: 0-based pixels, x = column)."""

    image: np.ndarray  # float32 [ny, nx], mean 0, SD 1
    particles: np.ndarray  # [n, 2] float64 (x, y) of the true, isolated particles
    junk: list[JunkItem]
    defocus_u: float  # Å, positive = underfocus
    defocus_v: float
    defocus_angle: float  # degrees
    angpix: float
    diameter_A: float
    snr: float  # the SNR requested for this micrograph
    aggregates: np.ndarray  # [m, 2] centres of the particles inside aggregates (not truth)
    junk_mask: np.ndarray  # bool [ny, nx]: ice, contaminants, carbon, aggregates
    components: dict[str, np.ndarray] = field(default_factory=dict)  # "signal", "noise" (same scale)

    @property
    def diameter_px(self) -> float:
        """Particle diameter in pixels."""
        return self.diameter_A / self.angpix


# ----------------------------------------------------------------------------------------------------
# projection bank


_BANK_CACHE: OrderedDict[tuple, tuple[np.ndarray, float]] = OrderedDict()
_BANK_CACHE_SIZE = 6


def clear_bank_cache() -> None:
    """Forget all cached projection banks."""
    _BANK_CACHE.clear()


def _random_rotations(n: int, seed: int) -> np.ndarray:
    """n rotation matrices uniformly distributed on SO(3) (normalised 4D Gaussian quaternions)."""
    q = np.random.default_rng(seed).standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )


def _project_volume(volume: Volume, angpix: float, n_proj: int, seed: int) -> np.ndarray:
    """Projections [n_proj, B, B] of ``volume`` at random orientations, sampled at ``angpix``.

    The rotated volume is sampled by trilinear interpolation on a grid of ``angpix`` spacing restricted
    to the ball inside the box (outside it the map is empty), then summed along z (line integral, Å).
    The box B is the map's, or 1.15 x the particle diameter where that is smaller: pasting cost grows
    with B^2 and the map's margin is empty.
    """
    vol = volume.data.astype(np.float32, copy=False)
    n = vol.shape[0]
    scale = angpix / volume.angpix  # output pixels -> volume voxels
    box = min(int(math.ceil(n / scale)), int(math.ceil(1.15 * volume.diameter_A / angpix)) + 2)
    box += box % 2
    half = box // 2
    radius = min(half, n / 2 / scale)
    g = np.arange(box, dtype=np.float32) - half
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    inside = zz * zz + yy * yy + xx * xx <= radius * radius
    pts = np.stack([xx[inside], yy[inside], zz[inside]])  # (3, m), x/y/z in output pixels
    flat_yx = (yy[inside] + half).astype(np.int64) * box + (xx[inside] + half).astype(np.int64)
    centre = n // 2
    out = np.empty((n_proj, box, box), dtype=np.float32)
    for i, rot in enumerate(_random_rotations(n_proj, seed)):
        # Volume coordinate of each output sample: rot @ p, scaled to voxels; map_coordinates wants z,y,x.
        xyz = (rot.astype(np.float32) @ pts) * np.float32(scale) + np.float32(centre)
        vals = ndimage.map_coordinates(vol, xyz[::-1], order=1, mode="constant", cval=0.0, prefilter=False)
        out[i] = np.bincount(flat_yx, weights=vals, minlength=box * box).reshape(box, box) * angpix
    return out


def projection_bank(
    particle: str | os.PathLike,
    angpix: float,
    size: int = 128,
    phantom_seed: int = 0,
    diameter_A: float | None = None,
) -> tuple[np.ndarray, float]:
    """Cached ``(projections [size, B, B] float32, diameter_A)`` of a particle at ``angpix``.

    With ``diameter_A`` the particle is scaled isotropically to that outer diameter (a 250 Å ribosome
    can stand in for a 180 Å particle); otherwise it keeps its own size. Keyed by the particle (a map
    path also by its modification time), pixel size, bank size, phantom seed and diameter; the
    orientations are fixed (seeded), so every run sees the same bank.
    """
    key_particle = str(particle)
    path = Path(key_particle)
    if path.is_file():
        key_particle = f"{path.resolve()}@{path.stat().st_mtime_ns}"
    target = None if diameter_A is None else round(float(diameter_A), 3)
    key = (key_particle, round(float(angpix), 6), int(size), int(phantom_seed), target)
    if key in _BANK_CACHE:
        _BANK_CACHE.move_to_end(key)
        return _BANK_CACHE[key]
    volume = get_volume(particle, angpix, seed=phantom_seed)
    if target is not None and abs(target / volume.diameter_A - 1.0) > 1e-3:
        # Scaling by s = target / own: sample the original at angpix / s, then call its voxels s times
        # bigger. Resampling at the finer size first keeps the scaled particle band-limited.
        s = target / volume.diameter_A
        volume = get_volume(particle, angpix / s, seed=phantom_seed)
        volume = Volume(volume.data, volume.angpix * s, target, volume.name)
    bank = _project_volume(volume, angpix, size, seed=20240611)
    bank.flags.writeable = False
    _BANK_CACHE[key] = (bank, volume.diameter_A)
    while len(_BANK_CACHE) > _BANK_CACHE_SIZE:
        _BANK_CACHE.popitem(last=False)
    return bank, volume.diameter_A


# ----------------------------------------------------------------------------------------------------
# layout


def _uniform_int(rng: np.random.Generator, lo_hi: tuple[int, int], scale: float = 1.0) -> int:
    lo, hi = lo_hi
    return int(round(rng.uniform(lo, hi) * scale))


@dataclass
class _Carbon:
    """Carbon region: signed distance > 0 inside. A half-plane (radius 0) or the inside of a big circle."""

    nx_: float
    ny_: float
    offset: float
    cx: float = 0.0
    cy: float = 0.0
    radius: float = 0.0

    def signed_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.radius > 0:
            # (x-cx)^2 and (y-cy)^2 separately: on a broadcast grid they are a row and a column only.
            return self.radius - np.sqrt((x - self.cx) ** 2 + (y - self.cy) ** 2)
        return x * self.nx_ + y * self.ny_ - self.offset


def _make_carbon(rng: np.random.Generator, ny: int, nx: int, cover: float) -> _Carbon:
    """A straight or curved film edge covering about ``cover`` of the image."""
    theta = rng.uniform(0, 2 * np.pi)
    ux, uy = math.cos(theta), math.sin(theta)
    # Projections of the image corners on the normal give the range of the edge offset.
    corners = np.array([[0, 0], [nx, 0], [0, ny], [nx, ny]], dtype=float)
    proj = corners @ np.array([ux, uy])
    offset = proj.max() - cover * (proj.max() - proj.min()) * 1.1
    if rng.random() < 0.5:
        return _Carbon(ux, uy, offset)
    # Curved edge: a circle of radius R whose boundary passes through the same point on the normal.
    r = rng.uniform(0.8, 2.5) * max(nx, ny)
    centre_proj = offset + r
    mid = corners.mean(0)
    mid_proj = mid @ np.array([ux, uy])
    cx = mid[0] + (centre_proj - mid_proj) * ux
    cy = mid[1] + (centre_proj - mid_proj) * uy
    return _Carbon(ux, uy, offset, cx=cx, cy=cy, radius=r)


def _poisson_disk(
    rng: np.random.Generator,
    n_target: int,
    ny: int,
    nx: int,
    margin: float,
    min_dist: float,
    ok,
    max_tries: int = 40,
) -> np.ndarray:
    """Up to ``n_target`` points at least ``min_dist`` apart, inside the margin, where ``ok(x, y)``.

    Dart throwing with a background grid of cell ``min_dist / sqrt 2`` (one point per cell at most).
    """
    if n_target <= 0 or nx - 2 * margin <= 0 or ny - 2 * margin <= 0:
        return np.zeros((0, 2))
    cell = max(min_dist / math.sqrt(2), 1e-6)
    gw, gh = int(nx / cell) + 1, int(ny / cell) + 1
    grid = -np.ones((gh, gw), dtype=np.int64)
    pts: list[tuple[float, float]] = []
    md2 = min_dist * min_dist
    reach = 2 if min_dist > 0 else 0
    n_cand = n_target * max_tries
    cand = np.column_stack(
        [rng.uniform(margin, nx - margin, n_cand), rng.uniform(margin, ny - margin, n_cand)]
    )
    cand = cand[ok(cand[:, 0], cand[:, 1])]
    misses = 0
    # Stop once the free area is used up (long run of rejections) instead of trying every candidate.
    miss_limit = max(200, 5 * n_target)
    for x, y in cand:
        if misses > miss_limit:
            break
        gx, gy = int(x / cell), int(y / cell)
        near = grid[max(gy - reach, 0) : gy + reach + 1, max(gx - reach, 0) : gx + reach + 1]
        clash = False
        for j in near[near >= 0]:
            px, py = pts[j]
            if (px - x) ** 2 + (py - y) ** 2 < md2:
                clash = True
                break
        if clash:
            misses += 1
            continue
        misses = 0
        grid[gy, gx] = len(pts)
        pts.append((float(x), float(y)))
        if len(pts) >= n_target:
            break
    return np.array(pts, dtype=np.float64).reshape(-1, 2)


# ----------------------------------------------------------------------------------------------------
# rendering helpers


def _paste(dest: np.ndarray, img: np.ndarray, x0: int, y0: int) -> None:
    """dest[y0:y0+h, x0:x0+w] += img, clipped to dest."""
    h, w = img.shape
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + h, dest.shape[0]), min(x0 + w, dest.shape[1])
    if ye > ys and xe > xs:
        dest[ys:ye, xs:xe] += img[ys - y0 : ye - y0, xs - x0 : xe - x0]


def _place_projection(dest: np.ndarray, proj: np.ndarray, x: float, y: float, angle: float) -> None:
    """Add ``proj`` (centre at B//2) rotated in-plane by ``angle`` with its centre at (x, y)."""
    b = proj.shape[0]
    c = b // 2
    ix, iy = math.floor(x), math.floor(y)
    fx, fy = x - ix, y - iy
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    # Output (row, col) o -> input R^T (o - (c + f)) + c; matrix in (row, col) order.
    mat = np.array([[cos_a, sin_a], [-sin_a, cos_a]])
    offset = np.array([c, c]) - mat @ np.array([c + fy, c + fx])
    rotated = ndimage.affine_transform(proj, mat, offset=offset, order=1, mode="constant", cval=0.0)
    _paste(dest, rotated, ix - c, iy - c)


def _blob_shape(rng: np.random.Generator, radius: float, crystal: bool) -> np.ndarray:
    """Soft mask [0, 1] of an irregular blob (contaminant) or a faceted crystal in a box of half-width
    ``half = ceil(radius) + 3``, zero beyond ``half`` from the centre."""
    half = int(math.ceil(radius)) + 3
    g = np.arange(-half, half + 1, dtype=np.float32)
    yy, xx = np.meshgrid(g, g, indexing="ij")
    if crystal:
        # Intersection of 5-7 half-planes at irregular angles and distances: an angular ice crystal.
        k = int(rng.integers(5, 8))
        angles = (
            np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.normal(0, 0.25, k) + rng.uniform(0, 2 * np.pi)
        )
        dist = radius * rng.uniform(0.6, 1.0, k)
        sd = np.full(xx.shape, np.inf, dtype=np.float32)
        for a, d in zip(angles, dist):
            sd = np.minimum(sd, d - (xx * math.cos(a) + yy * math.sin(a)))
        return np.clip(sd / 1.5 + 0.5, 0.0, 1.0) * (xx * xx + yy * yy <= half * half)
    # Contaminant: union of elliptical Gaussian lumps, thresholded softly.
    field = np.zeros_like(xx)
    k = int(rng.integers(3, 8))
    for _ in range(k):
        r0 = radius * 0.45 * math.sqrt(rng.random())
        a0 = rng.uniform(0, 2 * np.pi)
        cx, cy = r0 * math.cos(a0), r0 * math.sin(a0)
        sa, sb = radius * rng.uniform(0.25, 0.5), radius * rng.uniform(0.2, 0.4)
        th = rng.uniform(0, np.pi)
        u = (xx - cx) * math.cos(th) + (yy - cy) * math.sin(th)
        v = -(xx - cx) * math.sin(th) + (yy - cy) * math.cos(th)
        field += np.exp(-0.5 * ((u / sa) ** 2 + (v / sb) ** 2))
    # Cut at the inscribed circle of the box, so the shape never reaches past ``half`` from its centre
    # (the layout keeps particles that far away).
    return np.clip((field - 0.5) / 0.15 + 0.5, 0.0, 1.0) * (xx * xx + yy * yy <= half * half)


def _thickness_field(rng: np.random.Generator, ny: int, nx: int, strength: float) -> np.ndarray:
    """Smooth relative ice thickness around 1: a tilted plane plus a few broad bumps (separable)."""
    strength = strength * rng.uniform(0.3, 1.0)
    y = (np.arange(ny, dtype=np.float32) / ny - 0.5)[:, None]
    x = (np.arange(nx, dtype=np.float32) / nx - 0.5)[None, :]
    a = rng.uniform(0, 2 * np.pi)
    t = (strength * math.cos(a)) * x + (strength * math.sin(a)) * y + np.float32(1.0)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(-0.5, 0.5, 2)
        s = rng.uniform(0.15, 0.4)
        amp = strength * rng.uniform(-0.5, 0.5)
        gx = np.exp(-0.5 * ((x - cx) / s) ** 2).astype(np.float32)
        gy = np.exp(-0.5 * ((y - cy) / s) ** 2).astype(np.float32) * np.float32(amp)
        t += gy * gx
    return t.astype(np.float32, copy=False)


def _coloured_spectrum(rng: np.random.Generator, ny: int, nx: int, variance: float) -> np.ndarray:
    """rfft2-grid spectrum of 1/f noise (power ~ 1/k) with real-space ``variance``.

    Only frequencies below a quarter of Nyquist are filled (the 1/f excess is negligible above, where the
    white noise dominates), which keeps the cost at 1/16 of a full-grid noise field.
    """
    kmax = 0.125  # cycles per pixel
    hy, hx = int(ny * kmax) + 1, int(nx * kmax) + 1
    spec = np.zeros((ny, nx // 2 + 1), dtype=np.complex64)
    rows = np.r_[0:hy, ny - hy + 1 : ny]
    ky = np.fft.fftfreq(ny)[rows][:, None]
    kx = np.fft.rfftfreq(nx)[:hx][None, :]
    k = np.sqrt(kx * kx + ky * ky)
    k0 = 2.0 / min(ny, nx)
    amp = 1.0 / np.sqrt(np.maximum(k, k0))
    amp *= np.where(k < kmax, np.cos(0.5 * np.pi * k / kmax) ** 2, 0.0)
    amp[0, 0] = 0.0  # no DC: the mean is set by normalisation anyway
    # Real-space variance of irfft2 = (1/N^2) * sum over the full grid of E|X|^2; the half grid counts
    # twice except the x = 0 column.
    power = amp * amp
    full = 2.0 * power.sum() - power[:, 0].sum()
    n_pix = float(ny) * nx
    amp *= math.sqrt(variance * n_pix * n_pix / full) if full > 0 else 0.0
    z = rng.standard_normal((len(rows), hx, 2), dtype=np.float32)
    block = (z[..., 0] + 1j * z[..., 1]).astype(np.complex64) * (amp * math.sqrt(0.5)).astype(np.float32)
    spec[rows[:, None], np.arange(hx)[None, :]] = block
    return spec


def _signal_variance(bank: np.ndarray, ctf_args: dict, angpix: float, radius: float) -> float:
    """Variance, over the footprint disk, of CTF-filtered bank projections (unit density scale)."""
    b = bank.shape[1]
    pad = 2 * b  # room for the CTF's delocalised fringes before they wrap around
    ctf = ctf_2d((pad, pad), angpix, **ctf_args)
    g = np.arange(pad) - pad // 2
    disk = (g[:, None] ** 2 + g[None, :] ** 2) <= radius * radius
    step = max(1, len(bank) // 24)
    vals = []
    for proj in bank[::step]:
        img = np.zeros((pad, pad), dtype=np.float32)
        img[pad // 2 - b // 2 : pad // 2 - b // 2 + b, pad // 2 - b // 2 : pad // 2 - b // 2 + b] = proj
        filt = sfft.irfft2(sfft.rfft2(img) * ctf, s=(pad, pad))
        vals.append(filt[disk])
    return float(np.var(np.concatenate(vals)))


# ----------------------------------------------------------------------------------------------------
# the simulator


def simulate_micrograph(
    config: MicrographConfig | None = None, rng: np.random.Generator | int | None = 0
) -> SimulatedMicrograph:
    """Simulate one micrograph. The same ``config`` and integer seed give a bit-identical image."""
    cfg = config or MicrographConfig()
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    ny, nx = int(cfg.shape[0]), int(cfg.shape[1])
    angpix = float(cfg.angpix)
    junk_cfg = cfg.junk_config()
    area = ny * nx / 1024.0**2

    bank, diameter_A = projection_bank(cfg.particle, angpix, cfg.bank_size, cfg.phantom_seed, cfg.diameter_A)
    d_px = diameter_A / angpix
    r_px = 0.5 * d_px

    # Independent streams: layout changes never shift the noise, and vice versa.
    seeds = rng.integers(0, 2**63 - 1, size=5)
    lay = np.random.default_rng(seeds[0])
    white_seed, col_rng = seeds[1], np.random.default_rng(seeds[2])
    shape_rng = np.random.default_rng(seeds[3])
    phys = np.random.default_rng(seeds[4])

    # --- optics and levels of this micrograph
    mean_df = phys.uniform(*cfg.defocus_um) * 1e4
    half_astig = phys.uniform(0.0, cfg.astigmatism_um) * 1e4
    defocus_u, defocus_v = mean_df + half_astig, mean_df - half_astig
    defocus_angle = float(phys.uniform(0.0, 180.0))
    snr = float(phys.uniform(*cfg.snr)) if isinstance(cfg.snr, (tuple, list)) else float(cfg.snr)
    ctf_args = dict(
        defocus_u_A=defocus_u,
        defocus_v_A=defocus_v,
        defocus_angle_deg=defocus_angle,
        voltage_kV=cfg.voltage_kV,
        cs_mm=cfg.cs_mm,
        amplitude_contrast=cfg.amplitude_contrast,
        bfactor=cfg.bfactor,
    )

    # --- layout: carbon, ice/contaminants, aggregates, empty patches, then the true particles
    junk: list[JunkItem] = []
    carbon = None
    if lay.random() < junk_cfg.carbon_prob:
        carbon = _make_carbon(lay, ny, nx, lay.uniform(*junk_cfg.carbon_cover))
    ice: list[tuple[float, float, float, bool]] = []  # x, y, radius, crystal
    if lay.random() < junk_cfg.ice_prob:
        for _ in range(max(1, _uniform_int(lay, junk_cfg.ice_count, area))):
            small = lay.random() < junk_cfg.ice_small_fraction
            rad = r_px * (lay.uniform(0.6, 1.4) if small else lay.uniform(1.5, 5.0))
            ice.append((lay.uniform(0, nx), lay.uniform(0, ny), rad, bool(lay.random() < 0.4)))

    def clear_of_carbon(x, y, margin):
        return np.ones(np.shape(x), bool) if carbon is None else carbon.signed_distance(x, y) < -margin

    clumps: list[np.ndarray] = []
    if lay.random() < junk_cfg.aggregate_prob:
        n_clumps = max(1, _uniform_int(lay, junk_cfg.aggregate_count, area))
        centres = _poisson_disk(
            lay, n_clumps, ny, nx, d_px, 6 * d_px, lambda x, y: clear_of_carbon(x, y, 2 * d_px)
        )
        for cx, cy in centres:
            k = int(lay.integers(junk_cfg.aggregate_size[0], junk_cfg.aggregate_size[1] + 1))
            members = [(cx, cy)]
            while len(members) < k:
                # Grow the clump from a random member; overlapping neighbours (0.45-0.75 d apart).
                bx, by = members[int(lay.integers(len(members)))]
                a = lay.uniform(0, 2 * np.pi)
                step = d_px * lay.uniform(0.45, 0.75)
                members.append((bx + step * math.cos(a), by + step * math.sin(a)))
            clumps.append(np.array(members))
    empties: list[tuple[float, float, float]] = []
    if lay.random() < junk_cfg.empty_prob:
        for _ in range(max(1, _uniform_int(lay, junk_cfg.empty_count, area))):
            empties.append((lay.uniform(0, nx), lay.uniform(0, ny), d_px * lay.uniform(2.0, 4.0)))

    # Exclusion circles for the truth: junk bounding circles grown by the particle radius.
    # The rendered shapes stay inside a box of half-width ceil(r) + 3 (see _blob_shape).
    excl = [(x, y, math.ceil(r) + 3 + r_px) for x, y, r, _ in ice]
    for members in clumps:
        c = members.mean(0)
        excl.append((c[0], c[1], float(np.hypot(*(members - c).T).max()) + d_px))
    excl += [(x, y, r) for x, y, r in empties]
    excl_arr = np.array(excl, dtype=np.float64).reshape(-1, 3)

    def ok(x, y):
        good = clear_of_carbon(x, y, r_px)
        for ex, ey, er in excl_arr:
            good &= (x - ex) ** 2 + (y - ey) ** 2 >= er * er
        return good

    n_target = _uniform_int(lay, cfg.n_particles, area)
    particles = _poisson_disk(
        lay, n_target, ny, nx, max(cfg.edge_margin * d_px, 0.0), cfg.crowding * d_px, ok
    )

    # --- projected density D (particles, aggregates, junk phase, carbon film)
    density = np.zeros((ny, nx), dtype=np.float32)
    n_bank = len(bank)
    for x, y in particles:
        _place_projection(
            density, bank[int(shape_rng.integers(n_bank))], x, y, shape_rng.uniform(0, 2 * np.pi)
        )
    particle_density = density.copy() if cfg.keep_components else None
    peak = float(np.mean([p.max() for p in bank[:: max(1, n_bank // 16)]]))
    for members in clumps:
        for x, y in members:
            _place_projection(
                density, bank[int(shape_rng.integers(n_bank))], x, y, shape_rng.uniform(0, 2 * np.pi)
            )
    junk_mask = np.zeros((ny, nx), dtype=bool)
    darkening: list[tuple[np.ndarray, int, int]] = []  # real-space amplitude contrast, in noise SDs
    for x, y, rad, crystal in ice:
        mask = _blob_shape(shape_rng, rad, crystal)
        h = mask.shape[0] // 2
        x0, y0 = int(round(x)) - h, int(round(y)) - h
        # Thick ice: strong phase (Fresnel fringes after the CTF) and amplitude contrast (dark).
        _paste(density, mask * np.float32(peak * shape_rng.uniform(1.0, 3.0)), x0, y0)
        darkening.append((mask * np.float32(-shape_rng.uniform(2.5, 6.0)), x0, y0))
        ys, xs = (
            slice(max(y0, 0), min(y0 + mask.shape[0], ny)),
            slice(max(x0, 0), min(x0 + mask.shape[1], nx)),
        )
        if ys.stop > ys.start and xs.stop > xs.start:
            junk_mask[ys, xs] |= mask[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] > 0.5
        kind = "ice" if crystal else "contaminant"
        # Report the extent of the rendered shape (crystal corners may reach past rad, up to the box).
        extent = (
            float(np.sqrt(((np.argwhere(mask > 0.5) - h) ** 2).sum(1).max())) + 0.5
            if (mask > 0.5).any()
            else 0.0
        )
        junk.append(
            JunkItem(kind, _bbox(x0 + h, y0 + h, extent, nx, ny), float(x0 + h), float(y0 + h), extent)
        )
    for members in clumps:
        c = members.mean(0)
        rad = float(np.hypot(*(members - c).T).max()) + r_px
        junk.append(JunkItem("aggregate", _bbox(c[0], c[1], rad, nx, ny), float(c[0]), float(c[1]), rad))
        for x, y in members:
            _disk_or(junk_mask, x, y, r_px)
    carbon_rows = None
    if carbon is not None:
        # Find the rows the carbon reaches on a coarse grid first (the signed distance changes by at
        # most one per pixel), then evaluate it only there.
        step = 8
        coarse = carbon.signed_distance(
            np.arange(0, nx + step, step, dtype=np.float32)[None, :],
            np.arange(0, ny + step, step, dtype=np.float32)[:, None],
        )
        hit = np.nonzero((coarse > -2 * step).any(1))[0]
        rows = np.zeros(0, dtype=np.int64)
        if len(hit):
            r0, r1 = max(hit[0] * step - step, 0), min(hit[-1] * step + step, ny)
            yy = np.arange(r0, r1, dtype=np.float32)[:, None]
            xx = np.arange(nx, dtype=np.float32)[None, :]
            sd = carbon.signed_distance(xx, yy).astype(np.float32, copy=False)
            junk_mask[r0:r1] |= sd > 0
            # 1-px soft edge; maximum/minimum in place (np.clip is several times slower on big arrays).
            sd += np.float32(0.5)
            band = np.minimum(np.maximum(sd, np.float32(0.0), out=sd), np.float32(1.0), out=sd)
            rows = np.nonzero(band.any(1))[0] + r0
            cols = np.nonzero(band.any(0))[0]
        if len(rows):
            # Carbon film: a uniform phase layer plus a fine amorphous grain (Thon rings show in it).
            # The grain is white noise: the point-reflected white noise of the image (drawn below), which
            # is independent of the noise at each pixel and saves a second 16-Mpixel draw.
            sl = slice(rows[0], rows[-1] + 1)
            carbon_rows = (sl, band[rows[0] - r0 : rows[-1] + 1 - r0])
            bbox = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
            junk.append(JunkItem("carbon", bbox, 0.5 * (bbox[0] + bbox[2]), 0.5 * (bbox[1] + bbox[3]), 0.0))
    for x, y, rad in empties:
        junk.append(JunkItem("empty", _bbox(x, y, rad, nx, ny), float(x), float(y), float(rad)))

    # --- noise fields (drawn now: the carbon grain reuses the white noise)
    white = np.random.default_rng(white_seed).standard_normal((ny, nx), dtype=np.float32)
    if carbon_rows is not None:
        sl, frac = carbon_rows
        grain = white[::-1, ::-1][sl]
        density[sl] += frac * (grain * np.float32(0.5 * peak) + np.float32(0.6 * peak))

    # --- CTF (one FFT pair) and the signal scale for the requested SNR (noise variance = 1)
    ctf = ctf_2d((ny, nx), angpix, **ctf_args)
    unit_var = _signal_variance(bank, ctf_args, angpix, r_px)
    gain = -math.sqrt(snr / unit_var) if unit_var > 0 else 0.0  # minus: protein is dark
    col_var = float(np.clip(cfg.coloured_noise, 0.0, 1.0))
    spec = sfft.rfft2(density)
    ctf *= np.float32(gain)
    spec *= ctf
    col_spec = _coloured_spectrum(col_rng, ny, nx, col_var) if col_var > 0 else None
    if col_spec is not None:
        spec += col_spec
    image = sfft.irfft2(spec, s=(ny, nx))
    del spec

    # --- real space: ice thickness, white noise, amplitude contrast of junk and carbon
    thick = _thickness_field(phys, ny, nx, cfg.ice_gradient)
    # Noise SD ~ sqrt(thickness), normalised to average 1 over the truth footprints; the white part
    # carries (1 - coloured share) of the variance.
    at_truth = thick[particles[:, 1].astype(int), particles[:, 0].astype(int)] if len(particles) else thick
    white_var = (1.0 - col_var) / float(np.mean(at_truth))
    # Thicker ice scatters more electrons out of the beam: darker by ~2.5 noise SDs per unit thickness
    # (the constant offset is removed by the normalisation).
    image -= thick * np.float32(2.5)
    thick *= np.float32(white_var)
    noise_sd = np.sqrt(thick, out=thick)
    white *= noise_sd
    del thick, noise_sd
    image += white
    for patch, x0, y0 in darkening:
        _paste(image, patch, x0, y0)
    if carbon_rows is not None:
        sl, frac = carbon_rows
        image[sl] -= frac * np.float32(phys.uniform(0.6, 1.5))

    # float32 pairwise sums are accurate to ~1e-7 here and ~20x faster than float64 ones.
    mean = float(image.mean())
    image -= np.float32(mean)
    sd = math.sqrt(float(np.square(image).mean())) or 1.0
    image *= np.float32(1.0 / sd)

    components: dict[str, np.ndarray] = {}
    if cfg.keep_components:
        sig = sfft.irfft2(sfft.rfft2(particle_density) * ctf, s=(ny, nx))
        noise = white if col_spec is None else white + sfft.irfft2(col_spec, s=(ny, nx))
        components = {"signal": sig / np.float32(sd), "noise": noise / np.float32(sd)}

    aggregates = np.concatenate(clumps) if clumps else np.zeros((0, 2))
    return SimulatedMicrograph(
        image=image.astype(np.float32, copy=False),
        particles=particles,
        junk=junk,
        defocus_u=float(defocus_u),
        defocus_v=float(defocus_v),
        defocus_angle=defocus_angle,
        angpix=angpix,
        diameter_A=diameter_A,
        snr=snr,
        aggregates=aggregates,
        junk_mask=junk_mask,
        components=components,
    )


def _bbox(x: float, y: float, r: float, nx: int, ny: int) -> tuple[float, float, float, float]:
    return (max(0.0, x - r), max(0.0, y - r), min(float(nx), x + r), min(float(ny), y + r))


def _disk_or(mask: np.ndarray, x: float, y: float, r: float) -> None:
    """mask |= disk of radius r at (x, y), in place."""
    y0, y1 = max(int(y - r), 0), min(int(y + r) + 2, mask.shape[0])
    x0, x1 = max(int(x - r), 0), min(int(x + r) + 2, mask.shape[1])
    if y1 <= y0 or x1 <= x0:
        return
    yy = np.arange(y0, y1)[:, None]
    xx = np.arange(x0, x1)[None, :]
    mask[y0:y1, x0:x1] |= (xx - x) ** 2 + (yy - y) ** 2 <= r * r
