"""Mask of bad micrograph areas (ice crystals, contaminants, carbon, aggregates) for the blob picker.

No learned model: everything comes from robust (median / MAD) statistics of a strongly downsampled copy of
the micrograph, so that a 4096² image costs a few tens of milliseconds.

Three detectors, each on a grid of about a quarter particle diameter per pixel:

1. *Intensity outliers*: after a low-pass at about the particle size, pixels much darker or brighter than the
   micrograph's robust distribution. Contaminants and thick ice crystals are dark and far outside the range a
   single protein particle reaches; holes and cracks are bright.
2. *Regions differing from the majority*: local mean over a few particle diameters (carbon support is
   darker or lighter than the thin ice over the hole, over a large area) and local standard deviation of the
   particle-scale band (carbon has a different texture and aggregates a much larger variance).
3. *Edges*: every bad region is grown by a particle radius (plus a margin) because a particle centred
   within a radius of a contaminant or a carbon edge is either overlapped or a false "blob" made by the edge.

Outlier thresholds are in robust standard deviations (1.4826 * MAD) of the same quantity over the whole
micrograph; since the majority of a usable micrograph is good ice, the median describes the good area.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

_MAD_TO_SD = 1.4826


def _robust_z(values: np.ndarray, sample: np.ndarray | None = None) -> np.ndarray:
    """(values - median) / (1.4826 MAD), statistics from ``sample`` (default: ``values``)."""
    ref = values if sample is None else sample
    med = float(np.median(ref))
    mad = float(np.median(np.abs(ref - med))) * _MAD_TO_SD
    if not np.isfinite(mad) or mad <= 1e-12:
        mad = float(np.std(ref)) or 1.0
    return (values - med) / mad


def _bin(image: np.ndarray, f: int) -> np.ndarray:
    """Mean-bin by an integer factor (crop the remainder); cheap anti-aliased downsampling."""
    if f <= 1:
        return image.astype(np.float32, copy=False)
    ny, nx = (image.shape[0] // f) * f, (image.shape[1] // f) * f
    return image[:ny, :nx].reshape(ny // f, f, nx // f, f).mean(axis=(1, 3), dtype=np.float32)


def _disk(radius: float) -> np.ndarray:
    r = max(int(math.ceil(radius)), 0)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy * yy + xx * xx) <= radius * radius + 1e-6


def junk_mask(
    image: np.ndarray,
    angpix: float,
    diameter_A: float,
    *,
    invert: bool = False,
    dark_sigma: float = 4.0,
    bright_sigma: float = 5.0,
    region_sigma: float = 4.0,
    texture_sigma: float = 5.0,
    min_area_particles: float = 0.5,
    grow_fraction: float = 0.5,
    out_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Return a boolean mask (True = bad area) of ``image``'s shape, or ``out_shape`` if given.

    ``image`` is the micrograph (any pixel size ``angpix``), particles dark unless ``invert``;
    ``diameter_A`` is the particle diameter. ``dark_sigma`` / ``bright_sigma``: thresholds (robust SD) for
    particle-scale intensity outliers in the particle's contrast direction / the other one;
    ``region_sigma``: local-mean outliers at a few diameters (carbon, thick ice); ``texture_sigma``: local
    standard deviation outliers (upper side only: carbon texture, aggregates). Regions smaller than
    ``min_area_particles`` particle areas are ignored (a single particle can be an outlier too); the rest
    is grown by ``grow_fraction`` × diameter.
    """
    img = np.asarray(image, dtype=np.float32)
    full_shape = img.shape if out_shape is None else tuple(out_shape)
    d_px = float(diameter_A) / float(angpix)
    # Grid of ~ d/4 per pixel: still resolves a particle-sized blob, makes all filters cheap.
    f = max(int(d_px // 4), 1)
    small = _bin(img, f)
    if not invert:
        small = -small  # particles (and contaminants) bright from here on
    ds = d_px / f  # particle diameter on the small grid (~4 px)
    bad = np.zeros(small.shape, dtype=bool)

    # 1. particle-scale intensity outliers. sigma ~ d/4 smooths noise but keeps particle-sized junk.
    g = ndi.gaussian_filter(small, sigma=max(ds / 4.0, 0.7), mode="reflect")
    # background at several diameters removed so that a slow ice gradient does not trigger the mask
    bg = ndi.gaussian_filter(small, sigma=3.0 * ds, mode="reflect")
    z = _robust_z(g - bg)
    bad |= z > dark_sigma
    bad |= z < -bright_sigma

    # 2a. local mean at ~2 diameters against the micrograph majority (carbon, thick ice, empty holes)
    m = ndi.gaussian_filter(small, sigma=2.0 * ds, mode="reflect")
    zm = _robust_z(m)
    bad |= np.abs(zm) > region_sigma
    # 2b. local SD of the particle band: aggregates and carbon texture have far more variance
    band = g - ndi.gaussian_filter(small, sigma=ds, mode="reflect")
    lv = ndi.gaussian_filter(band * band, sigma=2.0 * ds, mode="reflect")
    ls = np.sqrt(np.maximum(lv, 0.0))
    zs = _robust_z(ls)
    bad |= zs > texture_sigma

    # ignore isolated specks: at most a particle's worth of outlier pixels is plausibly a strong particle
    if bad.any():
        lab, n = ndi.label(bad)
        if n:
            areas = ndi.sum_labels(bad, lab, index=np.arange(1, n + 1))
            min_area = min_area_particles * math.pi * (ds / 2.0) ** 2
            keep = np.concatenate([[False], areas >= min_area])
            bad = keep[lab]
        grow = grow_fraction * ds
        if grow > 0 and bad.any():
            bad = ndi.binary_dilation(bad, structure=_disk(grow))
    return _resize_mask(bad, f, full_shape)


def _resize_mask(small: np.ndarray, f: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour map of the small mask onto ``shape`` (the same field of view).

    Binning drops at most ``f - 1`` remainder pixels, so treating both grids as covering the same field
    shifts the mask by under one small pixel, far below the particle-radius growth.
    """
    ny, nx = shape
    yi = np.minimum(((np.arange(ny) + 0.5) * (small.shape[0] / ny)).astype(np.intp), small.shape[0] - 1)
    xi = np.minimum(((np.arange(nx) + 0.5) * (small.shape[1] / nx)).astype(np.intp), small.shape[1] - 1)
    return small[np.ix_(yi, xi)]
