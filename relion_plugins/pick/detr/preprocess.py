"""Micrograph preprocessing as in UPicker: downsampling, normalisation, bilateral denoising, histogram
equalisation or CLAHE; and the overlapping patches that dense micrographs are split into.

All numpy / scipy; the same function prepares training and picking images (the settings are stored in the
model file), so the network always sees the same kind of input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ...imaging.fourier import fourier_crop, resampled_shape
from ...imaging.normalize import standardize


@dataclass
class PreprocessConfig:
    denoise: str = "bilateral"  # "bilateral" or "none"
    bilateral_sigma_px: float = 1.5  # spatial sigma at the working scale
    bilateral_sigma_range: float = 1.0  # intensity sigma, in standard deviations of the normalised image
    equalize: str = "clahe"  # "clahe", "hist" or "none"
    clahe_tiles: int = 8
    clahe_clip: float = 2.0  # contrast limit, in multiples of the mean histogram count
    invert: bool = False  # particles white on a dark background

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> PreprocessConfig:
        d = d or {}
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def downsample(image: np.ndarray, angpix: float, work_angpix: float) -> np.ndarray:
    """Fourier-crop to ``work_angpix`` (never upsampled); no-op when the pixel sizes agree."""
    factor = float(work_angpix) / float(angpix)
    if factor < 1.0 - 1e-3:
        raise ValueError(
            f"the model works at {work_angpix:g} Å/px, finer than these micrographs ({angpix:g} Å/px)"
        )
    img = np.asarray(image, dtype=np.float32)
    if factor <= 1.0 + 1e-3:
        return img
    return fourier_crop(img, resampled_shape(img.shape, factor))


def bilateral(image: np.ndarray, sigma_px: float, sigma_range: float) -> np.ndarray:
    """Edge-preserving smoothing: neighbours weighted by distance and by intensity difference.

    A loop over the window's offsets with whole-image arithmetic: cheap for the small windows used here."""
    img = np.asarray(image, dtype=np.float32)
    r = max(1, int(np.ceil(2 * sigma_px)))
    pad = np.pad(img, r, mode="reflect")
    num = np.zeros_like(img)
    den = np.zeros_like(img)
    inv_s = -0.5 / sigma_px**2
    inv_r = -0.5 / sigma_range**2
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            ws = np.exp((dy * dy + dx * dx) * inv_s)
            nb = pad[r + dy : r + dy + img.shape[0], r + dx : r + dx + img.shape[1]]
            w = ws * np.exp((nb - img) ** 2 * inv_r)
            num += w * nb
            den += w
    return num / den


def _levels(image: np.ndarray, bins: int) -> np.ndarray:
    lo, hi = np.percentile(image, [0.1, 99.9])
    q = (np.clip(image, lo, hi) - lo) / max(float(hi - lo), 1e-12)
    return np.minimum((q * bins).astype(np.int64), bins - 1)


def equalize_histogram(image: np.ndarray, bins: int = 256) -> np.ndarray:
    """Global histogram equalisation: each pixel -> its rank quantile."""
    lv = _levels(image, bins)
    cdf = np.cumsum(np.bincount(lv.ravel(), minlength=bins)).astype(np.float64)
    cdf /= cdf[-1]
    return cdf[lv].astype(np.float32)


def clahe(image: np.ndarray, tiles: int = 8, clip: float = 2.0, bins: int = 256) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (Zuiderveld 1994).

    One clipped, redistributed histogram per tile; each pixel's value is the bilinear interpolation of the
    mappings of the four nearest tile centres (no tile seams)."""
    lv = _levels(image, bins)
    ny, nx = lv.shape
    ty, tx = max(1, min(tiles, ny)), max(1, min(tiles, nx))
    ey = np.linspace(0, ny, ty + 1).astype(int)
    ex = np.linspace(0, nx, tx + 1).astype(int)
    lut = np.zeros((ty, tx, bins))
    for i in range(ty):
        for j in range(tx):
            h = np.bincount(lv[ey[i] : ey[i + 1], ex[j] : ex[j + 1]].ravel(), minlength=bins).astype(
                np.float64
            )
            limit = clip * h.sum() / bins
            excess = np.maximum(h - limit, 0).sum()
            h = np.minimum(h, limit) + excess / bins  # clipped counts spread evenly: limits the contrast gain
            c = np.cumsum(h)
            lut[i, j] = c / max(c[-1], 1e-12)
    cy = (ey[:-1] + ey[1:]) / 2.0
    cx = (ex[:-1] + ex[1:]) / 2.0

    def axis(n: int, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.interp(np.arange(n) + 0.5, centres, np.arange(len(centres)))
        i0 = np.floor(pos).astype(int)
        i1 = np.minimum(i0 + 1, len(centres) - 1)
        return i0, i1, (pos - i0)

    y0, y1, wy = axis(ny, cy)
    x0, x1, wx = axis(nx, cx)
    wy, wx = wy[:, None], wx[None, :]
    top = lut[y0[:, None], x0[None, :], lv] * (1 - wx) + lut[y0[:, None], x1[None, :], lv] * wx
    bot = lut[y1[:, None], x0[None, :], lv] * (1 - wx) + lut[y1[:, None], x1[None, :], lv] * wx
    return (top * (1 - wy) + bot * wy).astype(np.float32)


def preprocess(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Normalise (robustly clipped), denoise, equalise, then standardise again for the network."""
    img = standardize(np.asarray(image, dtype=np.float32))
    img = np.clip(img, -5.0, 5.0)  # hot pixels and carbon edges would otherwise squash the histogram
    if config.invert:
        img = -img
    if config.denoise == "bilateral":
        img = bilateral(img, config.bilateral_sigma_px, config.bilateral_sigma_range)
    elif config.denoise != "none":
        raise ValueError(f"unknown denoising {config.denoise!r}")
    if config.equalize == "clahe":
        img = clahe(img, config.clahe_tiles, config.clahe_clip)
    elif config.equalize == "hist":
        img = equalize_histogram(img)
    elif config.equalize != "none":
        raise ValueError(f"unknown equalisation {config.equalize!r}")
    return standardize(img).astype(np.float32)


def prepare(image: np.ndarray, angpix: float, work_angpix: float, config: PreprocessConfig) -> np.ndarray:
    """Micrograph -> network input: downsampled to the working pixel size, then :func:`preprocess`."""
    return preprocess(downsample(image, angpix, work_angpix), config)


def patch_origins(length: int, patch: int, overlap: int) -> list[int]:
    """Start offsets of patches of ``patch`` px covering ``length`` px with at least ``overlap`` px overlap."""
    if length <= patch:
        return [0]
    step = max(1, patch - overlap)
    n = int(np.ceil((length - patch) / step)) + 1
    return [int(round(v)) for v in np.linspace(0, length - patch, n)]


def patches(
    shape: tuple[int, int], patch: int, overlap: int
) -> list[tuple[int, int, tuple[int, int, int, int]]]:
    """``(y0, x0, core)`` of every patch; ``core`` = ``(ylo, yhi, xlo, xhi)`` in image pixels: the part of the
    patch whose detections are kept when merging (the middle of each overlap goes to one patch each)."""
    ys = patch_origins(shape[0], patch, overlap)
    xs = patch_origins(shape[1], patch, overlap)

    def cores(origins: list[int], length: int) -> list[tuple[int, int]]:
        out = []
        for i, o in enumerate(origins):
            lo = 0 if i == 0 else (origins[i - 1] + patch + o) // 2
            hi = length if i == len(origins) - 1 else (o + patch + origins[i + 1]) // 2
            out.append((lo, hi))
        return out

    cy, cx = cores(ys, shape[0]), cores(xs, shape[1])
    return [
        (y, x, (cy[i][0], cy[i][1], cx[j][0], cx[j][1])) for i, y in enumerate(ys) for j, x in enumerate(xs)
    ]
