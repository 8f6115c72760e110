"""Fourier-space resampling and filters for real images ``[..., ny, nx]`` (float32 in, float32 out).

All functions work on the last two axes, so a stack ``[n, ny, nx]`` is processed in one call.
``scipy.fft`` is used because it keeps float32 data in single precision (numpy 1.x upcasts to
complex128) — half the memory and roughly twice the speed on large micrographs.

Conventions:

* Frequencies are in 1/Å; a resolution of ``d`` Å is the frequency ``1/d``.
* Resampling keeps pixel 0 in place: a feature at ``x_big`` lands at ``x_small = x_big * m / n``
  (``= x_big / factor`` when the sizes divide exactly). Values are scaled so that the mean (and, for
  band-limited images, the per-pixel variance) is preserved, like a block average.
* Soft edges are raised cosines ``0.5 * (1 + cos(pi * t))`` centred on the cutoff (filter = 0.5 there),
  ``soft_width`` Fourier pixels (shells of the larger image dimension) wide, like RELION's edge widths.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

__all__ = [
    "bandpass",
    "bandpass_mask",
    "fourier_crop",
    "fourier_pad",
    "highpass",
    "lowpass",
    "lowpass_mask",
    "radial_frequency_grid",
    "resampled_shape",
]


def _as_float(img: np.ndarray) -> np.ndarray:
    """float32 view/copy of real input (float64 kept as float32: the library's working precision)."""
    arr = np.asarray(img)
    if arr.ndim < 2:
        raise ValueError(f"expected an image [..., ny, nx], got shape {arr.shape}")
    if np.iscomplexobj(arr):
        raise ValueError("expected a real image, got complex data")
    return arr.astype(np.float32, copy=False)


def resampled_shape(shape: tuple[int, ...], factor_or_shape: float | tuple[int, int]) -> tuple[int, int]:
    """Target ``(my, mx)`` for a factor (``n / factor``, rounded, at least 1) or an explicit shape."""
    ny, nx = int(shape[-2]), int(shape[-1])
    if isinstance(factor_or_shape, (tuple, list, np.ndarray)):
        my, mx = (int(v) for v in factor_or_shape)
    else:
        factor = float(factor_or_shape)
        if not factor > 0:
            raise ValueError(f"resampling factor must be > 0, got {factor_or_shape}")
        my, mx = max(1, round(ny / factor)), max(1, round(nx / factor))
    if my < 1 or mx < 1:
        raise ValueError(f"bad target shape {(my, mx)}")
    return my, mx


def _mirror_rows(spec: np.ndarray) -> np.ndarray:
    """Rows reordered as ky -> -ky (mod ny), for Hermitian pairing in the rfft layout."""
    return np.roll(spec[..., ::-1, :], 1, axis=-2)


def fourier_crop(img: np.ndarray, factor_or_shape: float | tuple[int, int]) -> np.ndarray:
    """Downsample by keeping the central (low-frequency) part of the spectrum.

    ``factor_or_shape`` is a factor > 1 (new size ``round(n / factor)``) or a target ``(my, mx)`` no
    larger than the input. For an even target size the two input bins at ±Nyquist are summed into the
    single output Nyquist bin: that is what sampling the band-limited image on the coarse grid gives,
    keeps the result Hermitian, and makes ``fourier_crop(fourier_pad(x, s), x.shape) == x``.
    """
    arr = _as_float(img)
    ny, nx = arr.shape[-2:]
    my, mx = resampled_shape(arr.shape, factor_or_shape)
    if my > ny or mx > nx:
        raise ValueError(f"fourier_crop target {(my, mx)} larger than the image {(ny, nx)}; use fourier_pad")
    if (my, mx) == (ny, nx):
        return arr.copy()
    spec = sfft.rfft2(arr)

    # Columns (x, half spectrum): keep kx = 0 .. mx//2; fold the -mx/2 bin (stored as the conjugate of
    # the mirrored row) into the output Nyquist column.
    out = spec[..., : mx // 2 + 1].copy()
    if mx % 2 == 0 and mx < nx:
        out[..., mx // 2] += np.conj(_mirror_rows(spec[..., mx // 2 : mx // 2 + 1]))[..., 0]

    # Rows (y, full spectrum): keep ky = 0 .. ceil(my/2)-1 and -my//2 .. -1; fold +my/2 into -my/2.
    rows = np.r_[0 : (my + 1) // 2, ny - my // 2 : ny]
    cropped = out[..., rows, :]
    if my % 2 == 0 and my < ny:
        cropped[..., my // 2, :] += out[..., my // 2, :]

    res = sfft.irfft2(cropped, s=(my, mx))
    res *= (my * mx) / (ny * nx)  # irfft2 divides by the new size, the spectrum carries the old one
    return res.astype(np.float32, copy=False)


def fourier_pad(img: np.ndarray, factor_or_shape: float | tuple[int, int]) -> np.ndarray:
    """Upsample by zero-padding the spectrum (sinc interpolation); ``factor`` > 1 or a larger shape.

    An input Nyquist bin (even sizes) is split equally between the output's +Nyquist and -Nyquist bins,
    so the result is real and symmetric and :func:`fourier_crop` undoes it exactly.
    """
    arr = _as_float(img)
    ny, nx = arr.shape[-2:]
    if isinstance(factor_or_shape, (tuple, list, np.ndarray)):
        my, mx = resampled_shape(arr.shape, factor_or_shape)
    else:
        factor = float(factor_or_shape)
        if not factor > 0:
            raise ValueError(f"resampling factor must be > 0, got {factor_or_shape}")
        my, mx = round(ny * factor), round(nx * factor)
    if my < ny or mx < nx:
        raise ValueError(f"fourier_pad target {(my, mx)} smaller than the image {(ny, nx)}; use fourier_crop")
    if (my, mx) == (ny, nx):
        return arr.copy()
    spec = sfft.rfft2(arr)
    if nx % 2 == 0 and mx > nx:
        spec[..., nx // 2] *= 0.5  # the other half is the implied -nx/2 column of the output

    out = np.zeros(arr.shape[:-2] + (my, mx // 2 + 1), dtype=spec.dtype)
    pos = (ny + 1) // 2  # rows 0 .. ceil(ny/2)-1 are non-negative frequencies
    out[..., :pos, : nx // 2 + 1] = spec[..., :pos, :]
    if ny // 2:
        out[..., my - ny // 2 :, : nx // 2 + 1] = spec[..., pos:, :]
    if ny % 2 == 0 and my > ny:
        # Input row -ny/2 is also +ny/2: give each output row half.
        out[..., my - ny // 2, : nx // 2 + 1] *= 0.5
        out[..., ny // 2, : nx // 2 + 1] = out[..., my - ny // 2, : nx // 2 + 1]

    res = sfft.irfft2(out, s=(my, mx))
    res *= (my * mx) / (ny * nx)
    return res.astype(np.float32, copy=False)


def radial_frequency_grid(shape: tuple[int, ...], angpix: float = 1.0, half: bool = True) -> np.ndarray:
    """|k| in 1/Å for an image of ``shape`` (last two axes used).

    ``half=True`` gives the ``rfft2`` layout ``[ny, nx//2 + 1]``; ``half=False`` the full ``fft2``
    layout ``[ny, nx]`` (not shifted; apply ``np.fft.fftshift`` to centre it).
    """
    ny, nx = int(shape[-2]), int(shape[-1])
    if not angpix > 0:
        raise ValueError(f"pixel size must be > 0, got {angpix}")
    fy = np.fft.fftfreq(ny, d=angpix).astype(np.float32)
    fx = (np.fft.rfftfreq(nx, d=angpix) if half else np.fft.fftfreq(nx, d=angpix)).astype(np.float32)
    return np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def _edge_width(shape: tuple[int, ...], angpix: float, soft_width: float) -> float:
    """Edge width in 1/Å from a width in Fourier pixels of the larger image dimension."""
    return float(soft_width) / (max(int(shape[-2]), int(shape[-1])) * angpix)


def _raised_cosine_low(freq: np.ndarray, cutoff: float, width: float) -> np.ndarray:
    """1 below ``cutoff - width/2``, 0 above ``cutoff + width/2``, raised cosine in between."""
    if width <= 0:
        return (freq <= cutoff).astype(np.float32)
    lo = cutoff - width / 2
    mask = (freq < lo).astype(np.float32)
    # cos only on the thin edge shell: evaluating it everywhere dominates the cost on 4k micrographs.
    edge = (freq >= lo) & (freq < lo + width)
    mask[edge] = 0.5 * (1.0 + np.cos(np.pi * (freq[edge] - lo) / width))
    return mask


def lowpass_mask(
    shape: tuple[int, ...], angpix: float, resolution_A: float, soft_width: float = 2.0
) -> np.ndarray:
    """rfft-layout transfer function keeping detail coarser than ``resolution_A``."""
    if not resolution_A > 0:
        raise ValueError(f"resolution must be > 0 Å, got {resolution_A}")
    freq = radial_frequency_grid(shape, angpix)
    return _raised_cosine_low(freq, 1.0 / resolution_A, _edge_width(shape, angpix, soft_width))


def bandpass_mask(
    shape: tuple[int, ...],
    angpix: float,
    low_resolution_A: float | None,
    high_resolution_A: float | None,
    soft_width: float = 2.0,
) -> np.ndarray:
    """rfft-layout transfer function keeping detail between ``high_resolution_A`` and ``low_resolution_A``.

    ``low_resolution_A`` (the larger number, in Å) is the high-pass cutoff, ``high_resolution_A`` the
    low-pass cutoff; ``None`` disables that side.
    """
    freq = radial_frequency_grid(shape, angpix)
    width = _edge_width(shape, angpix, soft_width)
    mask = np.ones(freq.shape, dtype=np.float32)
    if high_resolution_A is not None:
        if not high_resolution_A > 0:
            raise ValueError(f"resolution must be > 0 Å, got {high_resolution_A}")
        mask *= _raised_cosine_low(freq, 1.0 / high_resolution_A, width)
    if low_resolution_A is not None:
        if not low_resolution_A > 0:
            raise ValueError(f"resolution must be > 0 Å, got {low_resolution_A}")
        mask *= 1.0 - _raised_cosine_low(freq, 1.0 / low_resolution_A, width)
    return mask


def _apply(arr: np.ndarray, mask: np.ndarray) -> np.ndarray:
    spec = sfft.rfft2(arr)
    spec *= mask
    return sfft.irfft2(spec, s=arr.shape[-2:]).astype(np.float32, copy=False)


def lowpass(img: np.ndarray, angpix: float, resolution_A: float, soft_width: float = 2.0) -> np.ndarray:
    """Remove detail finer than ``resolution_A`` Å (mean preserved)."""
    arr = _as_float(img)
    return _apply(arr, lowpass_mask(arr.shape, angpix, resolution_A, soft_width))


def highpass(img: np.ndarray, angpix: float, resolution_A: float, soft_width: float = 2.0) -> np.ndarray:
    """Remove features larger than ``resolution_A`` Å (the mean too: the result averages to 0)."""
    arr = _as_float(img)
    return _apply(arr, bandpass_mask(arr.shape, angpix, resolution_A, None, soft_width))


def bandpass(
    img: np.ndarray,
    angpix: float,
    low_resolution_A: float | None,
    high_resolution_A: float | None,
    soft_width: float = 2.0,
) -> np.ndarray:
    """Keep detail between ``high_resolution_A`` and ``low_resolution_A`` Å (see :func:`bandpass_mask`)."""
    arr = _as_float(img)
    return _apply(arr, bandpass_mask(arr.shape, angpix, low_resolution_A, high_resolution_A, soft_width))
