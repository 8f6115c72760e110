"""3D densities for the simulator: built-in Gaussian phantoms and the shipped Coulomb-potential maps.

A :class:`Volume` is a cubic float32 array ``[z, y, x]`` with the particle centred on voxel ``n // 2``
(RELION's box centre), its voxel size in Å and an outer particle diameter in Å (used for spacing the
particles and for the truth footprint).

Phantoms are sums of isotropic Gaussians whose centres are drawn with a seed, so each name gives a
fixed, reproducible shape at any pixel size. Densities are in arbitrary units: the simulator scales the
signal to the requested SNR, so only the shape matters.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft as sfft

__all__ = [
    "MAPS_DIR",
    "MAP_ALIASES",
    "PHANTOMS",
    "Volume",
    "get_volume",
    "load_map",
    "make_phantom",
    "resample_volume",
]

# Where the shipped maps live; override with RELION_PLUGINS_MAPS.
MAPS_DIR = Path(os.environ.get("RELION_PLUGINS_MAPS", "/work/shared/data/maps"))

# Short names for the maps of MAPS_DIR (see its README): file name, outer diameter in Å.
MAP_ALIASES: dict[str, tuple[str, float]] = {
    "apoferritin": ("4v1w_2.0A.mrc", 130.0),
    "ribosome": ("4v5d_2.0A.mrc", 260.0),
    "spliceosome": ("3jb9_2.0A.mrc", 280.0),
}

# name -> (nominal outer diameter in Å, one-line description)
PHANTOMS: dict[str, tuple[float, str]] = {
    "globular": (150.0, "cluster of ~40 Gaussian blobs in a 150 Å sphere"),
    "twolobe": (250.0, "elongated particle: two lobes joined by a neck, 250 Å long"),
    "ring": (200.0, "barrel / ring, 200 Å across and ~110 Å high, with a hollow centre"),
    "small": (100.0, "compact 100 Å particle"),
}


@dataclass(frozen=True)
class Volume:
    """A cubic density ``data[z, y, x]`` (float32), its voxel size (Å) and particle diameter (Å)."""

    data: np.ndarray
    angpix: float
    diameter_A: float
    name: str = ""


def _box_for(diameter_A: float, angpix: float) -> int:
    # 1.25 x the diameter leaves room for the Gaussian tails in every orientation; even box like RELION.
    n = int(math.ceil(1.25 * diameter_A / angpix))
    return max(16, n + (n % 2))


def _render_gaussians(
    centres_A: np.ndarray, sigmas_A: np.ndarray, weights: np.ndarray, n: int, angpix: float
) -> np.ndarray:
    """Sum of isotropic 3D Gaussians (centres in Å from the box centre) on an n³ grid."""
    axis = (np.arange(n, dtype=np.float64) - n // 2) * angpix
    vol = np.zeros((n, n, n), dtype=np.float64)
    for (cx, cy, cz), s, w in zip(centres_A, sigmas_A, weights):
        # Separable: exp(-r^2/2s^2) = gz * gy * gx; only the outer product costs n^3.
        gx = np.exp(-0.5 * ((axis - cx) / s) ** 2)
        gy = np.exp(-0.5 * ((axis - cy) / s) ** 2)
        gz = np.exp(-0.5 * ((axis - cz) / s) ** 2)
        vol += w * gz[:, None, None] * (gy[:, None] * gx[None, :])[None]
    return vol.astype(np.float32)


def _ball_points(rng: np.random.Generator, n: int, radius: float) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v * (radius * rng.random(n) ** (1 / 3))[:, None]


def _phantom_blobs(name: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres (Å), sigmas (Å) and weights of the Gaussians of one phantom."""
    if name == "globular":
        # Dense core plus surface lumps: globular but not a featureless sphere.
        c = np.vstack([_ball_points(rng, 30, 52.0), _ball_points(rng, 16, 62.0)])
        s = rng.uniform(9.0, 15.0, len(c))
    elif name == "small":
        c = _ball_points(rng, 14, 28.0)
        s = rng.uniform(7.0, 11.0, len(c))
    elif name == "twolobe":
        # Two lobes of different size along x, joined by a thinner neck.
        big = _ball_points(rng, 26, 48.0) + np.array([-68.0, 0.0, 0.0])
        lobe = _ball_points(rng, 16, 36.0) + np.array([82.0, 5.0, 0.0])
        t = np.linspace(-25.0, 50.0, 7)
        neck = np.stack([t, rng.normal(0, 4.0, 7), rng.normal(0, 4.0, 7)], axis=1)
        c = np.vstack([big, lobe, neck])
        s = np.concatenate([rng.uniform(10, 15, 26), rng.uniform(9, 13, 16), np.full(7, 11.0)])
    elif name == "ring":
        # Barrel: blobs on a cylinder of radius ~75 Å, height ~80 Å, with 12-fold-ish lumps.
        n = 48
        phi = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.normal(0, 0.05, n)
        r = 72.0 + rng.normal(0, 3.0, n)
        z = np.tile([-28.0, 0.0, 28.0], n // 3)[:n] + rng.normal(0, 3.0, n)
        c = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
        s = rng.uniform(10.0, 13.0, n)
    else:
        raise KeyError(name)
    w = rng.uniform(0.7, 1.3, len(c))
    # Centre the mass on the box centre (the truth coordinate is the box centre).
    c = c - (w[:, None] * s[:, None] ** 3 * c).sum(0) / (w * s**3).sum()
    return c, s, w


def make_phantom(name: str, angpix: float, seed: int = 0) -> Volume:
    """A built-in phantom (see ``PHANTOMS``) sampled at ``angpix`` Å/voxel."""
    if name not in PHANTOMS:
        raise ValueError(f"unknown phantom {name!r}; known: {', '.join(PHANTOMS)}")
    diameter, _ = PHANTOMS[name]
    # The seed is mixed with the name so that different phantoms never share a blob layout.
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    centres, sigmas, weights = _phantom_blobs(name, rng)
    n = _box_for(diameter, angpix)
    data = _render_gaussians(centres, sigmas, weights, n, angpix)
    return Volume(data=data, angpix=float(angpix), diameter_A=diameter, name=name)


def resample_volume(data: np.ndarray, angpix_in: float, angpix_out: float) -> tuple[np.ndarray, float]:
    """Resample a cubic volume by Fourier cropping (coarser) or zero-padding (finer).

    The new box is ``round(n * angpix_in / angpix_out)`` (even), so the returned voxel size
    ``angpix_in * n / n_new`` can differ slightly from ``angpix_out``; it is returned. Cropping applies
    a raised-cosine taper over the outer 15 % of the kept frequencies to avoid Gibbs ringing.
    """
    n = data.shape[0]
    n_new = int(round(n * angpix_in / angpix_out))
    n_new += n_new % 2
    if n_new == n:
        return data.astype(np.float32, copy=False), float(angpix_in)
    spec = sfft.fftshift(sfft.fftn(data.astype(np.float64)))
    c = n // 2
    if n_new < n:
        h = n_new // 2
        spec = spec[c - h : c + h, c - h : c + h, c - h : c + h]
        f = (np.arange(n_new) - h) / h  # -1 .. 1 of the new Nyquist
        r = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2)
        taper = np.clip((1.0 - r) / 0.15, 0.0, 1.0)
        spec *= 0.5 - 0.5 * np.cos(np.pi * taper)
    else:
        padded = np.zeros((n_new,) * 3, dtype=spec.dtype)
        h = n_new // 2
        padded[h - c : h - c + n, h - c : h - c + n, h - c : h - c + n] = spec
        spec = padded
    out = sfft.ifftn(sfft.ifftshift(spec)).real * (n_new / n) ** 3
    return out.astype(np.float32), float(angpix_in * n / n_new)


def load_map(path: str | os.PathLike, angpix: float | None = None, diameter_A: float | None = None) -> Volume:
    """Read a cubic density map (float16 upcast to float32) and resample it to ``angpix`` Å/voxel.

    The voxel size comes from the header; a header without one (0) is an error unless the file is a
    known one. With ``diameter_A`` unset, it is estimated as twice the largest distance from the box
    centre of voxels above 5 % of the maximum.
    """
    from ..relion.mrc import read_mrc  # local import: simulate/ may import relion/, but keep startup light

    path = Path(path)
    data, header_angpix = read_mrc(path)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise ValueError(f"{path}: need a cubic 3D map, got shape {data.shape}")
    if header_angpix <= 0:
        if "aspire" in path.name.lower():
            header_angpix = 5.0  # ASPIRE's tutorials use this map at 5 Å/voxel
        else:
            raise ValueError(f"{path}: voxel size not set in the header")
    if diameter_A is None:
        diameter_A = _estimate_diameter(data, header_angpix)
    if angpix is not None and abs(angpix - header_angpix) > 1e-6:
        data, header_angpix = resample_volume(data, header_angpix, angpix)
    return Volume(data=data, angpix=float(header_angpix), diameter_A=float(diameter_A), name=path.stem)


def _estimate_diameter(data: np.ndarray, angpix: float) -> float:
    n = data.shape[0]
    zz, yy, xx = np.nonzero(data > 0.05 * float(data.max()))
    r = np.sqrt((zz - n // 2) ** 2 + (yy - n // 2) ** 2 + (xx - n // 2) ** 2).max()
    return float(2.0 * r * angpix)


def get_volume(particle: str | os.PathLike, angpix: float, seed: int = 0) -> Volume:
    """Resolve a particle spec: a phantom name, a map alias (``ribosome``...) or a path to an MRC map."""
    key = str(particle)
    if key in PHANTOMS:
        return make_phantom(key, angpix, seed=seed)
    if key in MAP_ALIASES:
        fname, diameter = MAP_ALIASES[key]
        return load_map(MAPS_DIR / fname, angpix, diameter_A=diameter)
    if Path(key).is_file():
        return load_map(key, angpix)
    raise ValueError(
        f"unknown particle {key!r}: give a phantom ({', '.join(PHANTOMS)}), a map alias "
        f"({', '.join(MAP_ALIASES)}) or the path of an MRC map"
    )
