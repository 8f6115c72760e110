"""Scale-normalised Laplacian-of-Gaussian (LoG) filter bank, applied in Fourier space.

Conventions
-----------
Frequencies ``k`` are in cycles per pixel (``numpy.fft.fftfreq``), ``|k| <= 0.5``. A real-space Gaussian of
standard deviation ``sigma`` (pixels) has the transform ``exp(-2 pi^2 sigma^2 |k|^2)``; its Laplacian
multiplies that by ``-4 pi^2 |k|^2``. We use the *negated, scale-normalised* LoG

    H_sigma(k) = 4 pi^2 sigma^2 |k|^2 exp(-2 pi^2 sigma^2 |k|^2)      (= FT of -sigma^2 lap G_sigma)

so that a *bright* blob gives a *positive* response, and the ``sigma^2`` factor makes the peak response of
an ideal blob independent of its size (Lindeberg's scale normalisation); without it the raw LoG favours
small filters and the "best size" per pixel would be biased towards the smallest one.

Relation between blob diameter ``d`` and ``sigma``
--------------------------------------------------
For a uniform disk of radius ``r`` the normalised response at its centre is ``t exp(-t/2)`` with
``t = r^2 / sigma^2`` (flux of the Gaussian gradient through the rim), maximal at ``t = 2``, i.e.

    sigma = r / sqrt(2) = d / (2 sqrt(2)).

The issue's "sigma = 2/d" is a frequency-domain statement. Written in angular frequency ``w = 2 pi k``
(radians per pixel), the Gaussian factor of the filter is ``exp(-w^2 / (2 s^2))`` with ``s = 1/sigma``. With
``sigma = d / 2`` (the radius used as sigma) that frequency width is exactly ``s = 2/d``. We keep the
better-founded ``sigma = d / (2 sqrt(2))``, i.e. ``s = 2 sqrt(2) / d`` rad/px; the only consequence is a
constant factor sqrt(2) in the diameter labels, and with ours a disk of diameter ``d`` is reported as
diameter ``d``. The pass band of ``H`` peaks at ``|k| = 1 / (sqrt(2) pi sigma) = 2 / (pi d)`` cycles/px.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import numpy as np
import scipy.fft as sfft

SQRT8 = 2.0 * math.sqrt(2.0)


def diameter_to_sigma(diameter_px: float) -> float:
    """Real-space sigma (px) of the LoG filter tuned to a disk of ``diameter_px``: d / (2 sqrt 2)."""
    return float(diameter_px) / SQRT8


def _k2_grid(shape: tuple[int, int]) -> np.ndarray:
    """|k|^2 (cycles/px squared) on the rfft2 half-plane grid of an image of ``shape``."""
    ny, nx = shape
    ky = np.fft.fftfreq(ny).astype(np.float32)
    kx = np.fft.rfftfreq(nx).astype(np.float32)
    return ky[:, None] ** 2 + kx[None, :] ** 2


def _log_filter(k2: np.ndarray, sigma: float) -> np.ndarray:
    """One scale-normalised negated LoG filter on the |k|^2 grid ``k2``."""
    a = np.float32(2.0 * math.pi**2 * float(sigma) ** 2)
    # 4 pi^2 s^2 k^2 = 2 a k^2 ; exp(-a k^2)
    return (2.0 * a) * k2 * np.exp(-a * k2)


def log_bank(shape: tuple[int, int], sigmas) -> np.ndarray:
    """Return the scale-normalised negated LoG filters ``[n, ny, nx//2+1]`` (float32, rfft2 layout)."""
    k2 = _k2_grid(tuple(shape))
    out = np.empty((len(sigmas),) + k2.shape, dtype=np.float32)
    for i, s in enumerate(sigmas):
        out[i] = _log_filter(k2, s)
    return out


def gaussian_lowpass(shape: tuple[int, int], cutoff_px: float | None) -> np.ndarray | None:
    """Gaussian low-pass (rfft2 layout) falling to 1/e^(1/2) at resolution ``cutoff_px`` (px per cycle).

    A Gaussian rather than a hard edge so that no ringing reaches the LoG responses.
    """
    if cutoff_px is None or cutoff_px <= 2.0:
        return None
    kc = 1.0 / float(cutoff_px)
    return np.exp(-0.5 * _k2_grid(tuple(shape)) / np.float32(kc * kc)).astype(np.float32)


def log_responses(
    image: np.ndarray, diameters_px, *, lowpass_px: float | None = None, workers: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(i, response)`` for each filter: one ``rfft2`` of the image, one ``irfft2`` per filter.

    Responses are scale-normalised LoG responses (bright blobs positive), float32 (complex64 spectra).
    ``lowpass_px`` optionally applies a Gaussian low-pass (resolution in pixels) first; ``workers`` is passed
    to ``scipy.fft`` (threads). Yielding one response at a time keeps memory at two images.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"LoG filtering expects a 2D image, got shape {img.shape}")
    diams = np.asarray(diameters_px, dtype=np.float64).ravel()
    if diams.size == 0 or np.any(diams <= 0):
        raise ValueError("diameters_px must be a non-empty list of positive values")
    shape = img.shape
    # scipy.fft keeps float32 -> complex64 on every numpy version and can use several threads
    spec = sfft.rfft2(img - np.float32(img.mean()), workers=workers)
    lp_key = None if lowpass_px is None else float(lowpass_px)
    key = (tuple(shape), tuple(float(d) for d in diams), lp_key)
    # a job filters many micrographs of one shape with one bank: build it once (unless it is too big)
    small = diams.size * (shape[0] * (shape[1] // 2 + 1)) * 4 <= _BANK_CACHE_BYTES
    for i, filt in enumerate(_cached_bank(key) if small else _bank_filters(key)):
        yield i, sfft.irfft2(spec * filt, s=shape, workers=workers)


_BANK_CACHE_BYTES = 64 * 2**20


def _bank_filters(key: tuple) -> Iterator[np.ndarray]:
    """The filters of the bank ``key = (shape, diameters_px, lowpass_px)``, low-pass included, one at a time."""
    shape, diams, lowpass_px = key
    k2 = _k2_grid(shape)
    lp = gaussian_lowpass(shape, lowpass_px)
    for d in diams:
        filt = _log_filter(k2, diameter_to_sigma(d))
        yield filt if lp is None else filt * lp


@functools.lru_cache(maxsize=2)
def _cached_bank(key: tuple) -> tuple[np.ndarray, ...]:
    bank = tuple(_bank_filters(key))
    for filt in bank:
        filt.setflags(write=False)  # shared between calls and threads
    return bank


def best_response(
    image: np.ndarray,
    diameters_px,
    *,
    lowpass_px: float | None = None,
    return_all: bool = False,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel best scale-normalised LoG response over ``diameters_px`` (bright blobs respond positively).

    Returns ``(best_value, best_diameter_px, best_index)``, each ``[ny, nx]``. With ``return_all`` a fourth
    element, the stack of all responses ``[n, ny, nx]``, is appended (memory heavy; for diagnostics).
    """
    diams = np.asarray(diameters_px, dtype=np.float64).ravel()
    shape = np.shape(image)
    best = np.full(shape, -np.inf, dtype=np.float32)
    idx = np.zeros(shape, dtype=np.int16)
    stack = np.empty((diams.size,) + tuple(shape), dtype=np.float32) if return_all else None
    for i, resp in log_responses(image, diams, lowpass_px=lowpass_px, workers=workers):
        better = resp > best
        best[better] = resp[better]
        idx[better] = i
        if stack is not None:
            stack[i] = resp
    best_d = diams.astype(np.float32)[idx]
    if stack is not None:
        return best, best_d, idx, stack  # type: ignore[return-value]
    return best, best_d, idx


def split_response(
    image: np.ndarray,
    diameters_px,
    inside: slice,
    *,
    lowpass_px: float | None = None,
    workers: int | None = None,
    with_minima: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Best response over the filters ``diameters_px[inside]`` and over all the others, per pixel.

    Returns ``(best_in, best_out, index_in, index_out)``: the maximum scale-normalised LoG response over the
    in-range filters, the maximum over the out-of-range ones, and the (absolute) indices of both best filters.
    A picker needs exactly these: a blob of the wanted size answers best inside the range, and comparing
    with ``best_out`` tells how much better it answers there than to smaller or larger sizes.
    ``with_minima`` appends the per-pixel minima over the same two filter sets: the best responses of the
    contrast-inverted image, whose blobs are pure noise (a picker's reference for noise peaks).
    """
    diams = np.asarray(diameters_px, dtype=np.float64).ravel()
    shape = np.shape(image)
    best_in = np.full(shape, -np.inf, dtype=np.float32)
    best_out = np.full(shape, -np.inf, dtype=np.float32)
    idx = np.zeros(shape, dtype=np.int16)
    idx_out = np.zeros(shape, dtype=np.int16)
    low_in = np.full(shape, np.inf, dtype=np.float32) if with_minima else None
    low_out = np.full(shape, np.inf, dtype=np.float32) if with_minima else None
    in_idx = set(range(diams.size)[inside])
    better = np.empty(shape, dtype=bool)
    for i, resp in log_responses(image, diams, lowpass_px=lowpass_px, workers=workers):
        best, index, low = (best_in, idx, low_in) if i in in_idx else (best_out, idx_out, low_out)
        # ufuncs with out=/where= rather than boolean indexing: no temporaries, ~3x faster per filter
        np.greater(resp, best, out=better)
        np.copyto(index, np.int16(i), where=better)
        np.maximum(best, resp, out=best)
        if low is not None:
            np.minimum(low, resp, out=low)
    if with_minima:
        return best_in, best_out, idx, idx_out, low_in, low_out  # type: ignore[return-value]
    return best_in, best_out, idx, idx_out
