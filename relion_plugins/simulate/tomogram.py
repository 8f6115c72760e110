"""Synthetic cryo-ET tomograms with several species, exact shape labels and noisy sphere labels.

A tomogram is a slab of randomly rotated particles of several species (the shipped maps, the built-in
phantoms, or either rescaled to another diameter with ``name@DIAMETER``), in imbalanced numbers and packed
closely, plus white noise at a given SNR; the sum is then low-passed and a missing wedge (tilt about y,
±``tilt_max`` degrees) is removed from its Fourier transform, so particles are smeared along z as in a real
reconstruction.

Labels: ``shape_labels`` marks each particle's own voxels (density above a fraction of its peak) with its
species (1, 2, ...); this is the exact truth used for validation and testing. :func:`noisy_sphere_labels`
gives what annotators cheaply produce instead: spheres with wrong radii around shifted centres, with some
particles missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.ndimage as ndi

from ..imaging.spheres import paint_spheres
from .phantoms import MAP_ALIASES, PHANTOMS, Volume, get_volume

__all__ = [
    "Species",
    "TomogramConfig",
    "SimulatedTomogram",
    "species_volume",
    "simulate_tomogram",
    "noisy_sphere_labels",
    "DEFAULT_SPECIES",
]


@dataclass(frozen=True)
class Species:
    """A particle species: what it looks like (``get_volume`` spec, optionally ``@diameter``) and how many."""

    particle: str
    count: int
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or self.particle


# tiny / small / medium / large, imbalanced: many small ones, few large ones (as in SHREC 2019)
DEFAULT_SPECIES = (
    Species("small@60", 30, "tiny"),
    Species("apoferritin", 18, "small"),
    Species("ring", 10, "medium"),
    Species("ribosome", 6, "large"),
)


@dataclass(frozen=True)
class TomogramConfig:
    """Size, sampling and imaging conditions of one simulated tomogram."""

    shape: tuple[int, int, int] = (96, 128, 128)  # (nz, ny, nx)
    angpix: float = 10.0
    species: tuple[Species, ...] = DEFAULT_SPECIES
    snr: float = 0.5  # signal variance inside particles / noise variance
    tilt_max: float = 60.0  # degrees; 90 = no missing wedge
    lowpass_px: float = 0.8  # Gaussian blur sigma (voxels) standing in for the CTF envelope
    packing: float = 0.9  # centres at least packing x (r_i + r_j) apart: < 1 lets particles touch
    shape_threshold: float = 0.2  # voxels above this fraction of a particle's peak are its shape label


@dataclass
class SimulatedTomogram:
    """A simulated tomogram ``volume[z, y, x]``, its particles and exact shape labels."""

    volume: np.ndarray
    angpix: float
    particles: pd.DataFrame  # x, y, z (voxels), species (1-based)
    shape_labels: np.ndarray  # uint8 [z, y, x]
    species: list[tuple[str, float]] = field(default_factory=list)  # (name, diameter Å) per species

    @property
    def diameters_A(self) -> np.ndarray:
        return np.array([d for _, d in self.species], float)


def species_volume(spec: str, angpix: float, seed: int = 0) -> Volume:
    """A species' density at ``angpix``; ``name@D`` rescales phantom or map ``name`` to diameter D Å."""
    if "@" not in spec:
        return get_volume(spec, angpix, seed=seed)
    name, diameter = spec.split("@", 1)
    target = float(diameter)
    if name in PHANTOMS:
        nominal = PHANTOMS[name][0]
    elif name in MAP_ALIASES:
        nominal = MAP_ALIASES[name][1]
    else:
        raise ValueError(f"{spec!r}: only phantoms and map aliases can be rescaled with @")
    # Sampling a D0-Å particle at angpix*D0/D gives the same voxels as a D-Å particle at angpix.
    vol = get_volume(name, angpix * nominal / target, seed=seed)
    return Volume(vol.data, float(angpix), target, f"{name}@{diameter}")


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _rotate(data: np.ndarray, rot: np.ndarray) -> np.ndarray:
    c = np.array(data.shape) // 2  # RELION box centre: the particle centre stays on voxel n // 2
    return ndi.affine_transform(data, rot, offset=c - rot @ c, order=1, mode="constant", cval=0.0)


def _place(
    rng: np.random.Generator, shape: tuple[int, int, int], radii: np.ndarray, packing: float
) -> np.ndarray:
    """Centres (x, y, z) for particles of the given radii (largest first), without overlaps."""
    nz, ny, nx = shape
    placed: list[np.ndarray] = []
    placed_r: list[float] = []
    out = np.full((len(radii), 3), np.nan)
    for i in np.argsort(-radii, kind="stable"):
        r = radii[i]
        lo = np.array([r, r, min(r, nz / 2 - 1)]) * 0.6
        hi = np.array([nx, ny, nz]) - 1 - lo
        for _ in range(400):
            p = lo + rng.random(3) * (hi - lo)
            if placed:
                d = np.linalg.norm(np.asarray(placed) - p, axis=1)
                if np.any(d < packing * (np.asarray(placed_r) + r)):
                    continue
            placed.append(p)
            placed_r.append(r)
            out[i] = p
            break
    return out


def _missing_wedge(shape: tuple[int, int, int], tilt_max: float) -> np.ndarray:
    """Fourier mask (rfft layout) keeping what a ±tilt_max tilt series about y measures."""
    nz, ny, nx = shape
    kz = np.fft.fftfreq(nz)[:, None, None]
    kx = np.fft.rfftfreq(nx)[None, None, :]
    if tilt_max >= 90:
        return np.ones((nz, ny, nx // 2 + 1), bool)
    keep = np.abs(kz) <= np.tan(np.radians(tilt_max)) * np.abs(kx) + 1e-12
    keep = keep | ((kz == 0) & (kx == 0))
    return np.broadcast_to(keep, (nz, ny, nx // 2 + 1))


def simulate_tomogram(cfg: TomogramConfig = TomogramConfig(), seed: int = 0) -> SimulatedTomogram:
    """One tomogram with its particle list and exact shape labels; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    vols = [species_volume(s.particle, cfg.angpix, seed=0) for s in cfg.species]
    species = np.concatenate([np.full(s.count, i + 1) for i, s in enumerate(cfg.species)]).astype(int)
    radii = np.array([0.5 * vols[s - 1].diameter_A / cfg.angpix for s in species])
    centres = _place(rng, cfg.shape, radii, cfg.packing)
    ok = np.all(np.isfinite(centres), axis=1)  # particles that found no room are left out
    centres, species = centres[ok], species[ok]
    signal = np.zeros(cfg.shape, np.float32)
    labels = np.zeros(cfg.shape, np.uint8)
    for (x, y, z), s in zip(centres, species):
        data = vols[s - 1].data / max(float(vols[s - 1].data.max()), 1e-12)
        rot = _rotate(data, _random_rotation(rng))
        n = rot.shape[0]
        # integer placement plus the fractional shift folded into the interpolation
        ix, iy, iz = (int(np.floor(v)) for v in (x, y, z))
        frac = np.array([z - iz, y - iy, x - ix])
        rot = ndi.shift(rot, frac, order=1, mode="constant")
        c = n // 2
        sl_dst, sl_src = [], []
        for pos, size in zip((iz, iy, ix), cfg.shape):
            a, b = pos - c, pos - c + n
            sl_dst.append(slice(max(a, 0), min(b, size)))
            sl_src.append(slice(max(a, 0) - a, n - (b - min(b, size))))
        piece = rot[tuple(sl_src)]
        signal[tuple(sl_dst)] += piece
        region = labels[tuple(sl_dst)]
        region[piece > cfg.shape_threshold * float(rot.max())] = s
    inside = labels > 0
    sig_var = float(signal[inside].var()) if inside.any() else 1.0
    noise = rng.standard_normal(cfg.shape).astype(np.float32) * np.sqrt(sig_var / cfg.snr)
    vol = signal + noise
    if cfg.lowpass_px > 0:
        vol = ndi.gaussian_filter(vol, cfg.lowpass_px)
    spec = np.fft.rfftn(vol) * _missing_wedge(cfg.shape, cfg.tilt_max)
    vol = np.fft.irfftn(spec, s=cfg.shape, axes=(0, 1, 2)).astype(np.float32)
    vol = (vol - vol.mean()) / max(float(vol.std()), 1e-12)
    table = pd.DataFrame({"x": centres[:, 0], "y": centres[:, 1], "z": centres[:, 2], "species": species})
    names = [(s.label, float(v.diameter_A)) for s, v in zip(cfg.species, vols)]
    return SimulatedTomogram(vol, float(cfg.angpix), table, labels, names)


def noisy_sphere_labels(
    tomo: SimulatedTomogram,
    seed: int = 0,
    drop: float | Sequence[float] = 0.3,
    shift: float = 0.35,
    radius_range: tuple[float, float] = (0.6, 1.6),
    shift_voxels: float = 0.0,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Cheap, wrong training labels: each particle is missed with probability ``drop`` (one value, or one
    per species: annotators miss small particles more often); the others get a sphere of radius
    ``U(radius_range)`` x their true radius around a centre shifted by a Gaussian of ``shift`` x the radius
    plus ``shift_voxels`` (a clicking error that does not scale with the particle) per axis. Returns the
    label volume and the (noisy) coordinates actually used.
    """
    rng = np.random.default_rng(seed)
    t = tomo.particles
    species = t["species"].to_numpy()
    rates = np.broadcast_to(np.asarray(drop, float), (1,)) if np.ndim(drop) == 0 else np.asarray(drop, float)
    if rates.size not in (1, len(tomo.species)):
        raise ValueError(f"drop: one rate or one per species ({len(tomo.species)}), got {rates.size}")
    p_drop = rates[0] if rates.size == 1 else rates[species - 1]
    keep = rng.random(len(t)) >= p_drop
    t = t[keep].reset_index(drop=True)
    r = 0.5 * tomo.diameters_A[t["species"].to_numpy() - 1] / tomo.angpix
    sigma = np.hypot(shift * r, shift_voxels)
    xyz = t[["x", "y", "z"]].to_numpy() + rng.standard_normal((len(t), 3)) * sigma[:, None]
    radii = r * rng.uniform(*radius_range, len(t))
    labels = paint_spheres(tomo.volume.shape, xyz, t["species"].to_numpy(), radii)
    coords = pd.DataFrame({"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "species": t["species"].to_numpy()})
    return labels, coords
