"""Mask of bad micrograph areas (ice crystals, contaminants, carbon, aggregates) for the blob picker.

No learned model: everything comes from robust (median / MAD) statistics of a strongly downsampled copy of
the micrograph, so that a 4096² image costs a few tens of milliseconds.

Detectors, on a grid of about a quarter particle diameter per pixel (particles made bright first):

1. *Large dark / bright blobs*: the particle-scale band (smoothed at d/4, background at 3 d removed) after a
   grey opening with a disk of 1.5 diameters. The opening erases everything particle-sized, however strong,
   so what survives above ``dark_sigma`` / ``bright_sigma`` robust SDs is larger than a particle:
   contaminants, ice crystals, aggregates, cracks.
2. *Regions differing from the majority*: an open-close filter removes particle-sized structure of both
   signs, the rest is smoothed over a diameter and compared with the micrograph's median (carbon support,
   thick ice, holes). Since most of a usable micrograph is good ice, the median describes the good area.
3. *Edges*: the union is grown by half a diameter, because a particle centred within a radius of a
   contaminant or a carbon edge is either overlapped or a false "blob" made by the edge.

Known limit: in images of unrealistically high SNR (a lone particle 30x above the noise) the smoothed
tails of a particle can survive the opening; at cryo-EM SNR this does not happen.
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
    dark_sigma: float = 3.0,
    bright_sigma: float = 3.0,
    open_fraction: float = 1.5,
    region_sigma: float = 5.0,
    region_floor: float = 0.6,
    grow_fraction: float = 0.5,
    out_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Return a boolean mask (True = bad area) of ``image``'s shape, or ``out_shape`` if given.

    ``image`` is the micrograph (pixel size ``angpix``), particles dark unless ``invert``; ``diameter_A`` is
    the particle diameter. Units: ``s0`` = robust SD of the particle-scale band (noise plus particles).

    * ``dark_sigma`` / ``bright_sigma``: after a grey opening with a disk of ``open_fraction`` diameters,
      which removes everything particle-sized, what is still above this many ``s0`` in the particle's
      contrast direction / the other one is junk (contaminants, ice crystals / holes, cracks).
    * ``region_sigma`` / ``region_floor``: the local mean over ~1 diameter, opened with a disk of 4 diameters, differs from the micrograph's
      median by more than ``region_sigma`` robust SDs of that local mean and more than ``region_floor`` x
      ``s0`` (carbon, thick ice, holes; the floor keeps uniform images from masking their own fluctuations).

    The union is grown by ``grow_fraction`` x diameter, so picks on junk edges go too.
    """
    img = np.asarray(image, dtype=np.float32)
    full_shape = img.shape if out_shape is None else tuple(out_shape)
    d_px = float(diameter_A) / float(angpix)
    # Grid of ~ d/4 per pixel: still resolves a particle-sized blob, makes all filters cheap.
    f = max(int(d_px // 4), 1)
    small = _bin(img, f)
    if not invert:
        small = -small  # particles (and dark contaminants) bright from here on
    ds = d_px / f  # particle diameter on the small grid (~4 px)

    # particle-scale band: smoothed at ~d/4, background over a few diameters removed (ice gradients)
    g = ndi.gaussian_filter(small, sigma=max(ds / 4.0, 0.7), mode="reflect")
    band = g - ndi.gaussian_filter(small, sigma=3.0 * ds, mode="reflect")
    s0 = float(np.median(np.abs(band - np.median(band)))) * _MAD_TO_SD or 1.0
    z = (band - np.float32(np.median(band))) / np.float32(s0)

    # Size separates junk from particles better than strength does (a high-SNR particle can be as strong
    # as ice): a grey opening with a disk of ~1.5 diameters erases every particle-sized bright structure
    # and keeps anything larger at full strength.
    foot = _disk(open_fraction * ds / 2.0)
    bad = ndi.grey_opening(z, footprint=foot) > dark_sigma
    bad |= ndi.grey_opening(-z, footprint=foot) > bright_sigma

    # Large-area detector (carbon, thick ice, holes): first an open-close filter with the same disk erases
    # every particle-sized structure of either sign, so that neither a lone strong particle nor a crowd of
    # them shifts the local mean; what remains, smoothed over a diameter, is compared with the majority.
    flat = ndi.grey_closing(ndi.grey_opening(g, footprint=foot), footprint=foot)
    if bad.any():
        # Compact junk found above is already masked; left in, its strength would leak into the smoothed
        # local mean and mask diameters of good ice around every contaminant.
        near_junk = ndi.binary_dilation(bad, structure=_disk(max(ds / 2.0, 1.0)))
        flat = np.where(
            near_junk, np.float32(np.median(flat[~near_junk]) if (~near_junk).any() else 0.0), flat
        )
    m = ndi.gaussian_filter(flat, sigma=ds, mode="reflect")
    med_m = float(np.median(m))
    spread_m = max(float(np.median(np.abs(m - med_m))) * _MAD_TO_SD * region_sigma, region_floor * s0)
    bad |= np.abs(m - med_m) > spread_m

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
