"""Contrast transfer function (CTF) in RELION's convention.

Sign conventions (the same as RELION's ``CTF::getCTF``):

* Defocus values are in Å and **positive means underfocus** (the usual case for cryo-EM data).
* ``defocus_angle_deg`` is the angle of the defocus-U axis from the x axis (columns), counter-clockwise
  when y (rows) points up; the defocus along direction ``a`` of frequency space is
  ``(U + V)/2 + (U - V)/2 * cos(2 (a - angle))``.
* The CTF is ``sin(chi)`` with
  ``chi = pi * lambda * df * k^2 - pi/2 * Cs * lambda^3 * k^4 + phase_shift + atan(Q / sqrt(1 - Q^2))``,
  so it starts at ``+Q`` (amplitude contrast) at k = 0 and stays positive up to the first zero at
  underfocus. RELION writes this as ``-sin(K1 * deltaf * k^2 + K2 * k^4 - K5 - K3)`` with a negated
  defocus internally, which is the same function.
* An image of a weak phase object with projected potential ``P`` is then
  ``I = 1 - c * IFT[CTF * FT[P]]`` (c > 0): protein, whose potential is higher than the solvent's, is
  **dark** in an underfocused micrograph.

Frequencies are in Å⁻¹ on the numpy FFT grid: ``rfftfreq`` along x (last axis) and ``fftfreq`` along y.
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["ctf_1d", "ctf_2d", "ctf_zeros", "electron_wavelength"]


def electron_wavelength(voltage_kV: float) -> float:
    """Relativistic electron wavelength in Å at an acceleration voltage in kV (0.0197 Å at 300 kV)."""
    volts = voltage_kV * 1e3
    # lambda = h / sqrt(2 m0 e V (1 + e V / (2 m0 c^2))); 12.2643 = h / sqrt(2 m0 e) in Å·V^0.5.
    return 12.264259 / math.sqrt(volts * (1.0 + volts * 0.978466e-6))


def _chi_terms(voltage_kV: float, cs_mm: float, amplitude_contrast: float, phase_shift_deg: float):
    lam = electron_wavelength(voltage_kV)
    cs = cs_mm * 1e7  # mm -> Å
    k1 = math.pi * lam
    k2 = 0.5 * math.pi * cs * lam**3
    q = float(amplitude_contrast)
    k_const = math.atan2(q, math.sqrt(max(1.0 - q * q, 0.0))) + math.radians(phase_shift_deg)
    return k1, k2, k_const


def ctf_2d(
    shape: tuple[int, int],
    angpix: float,
    defocus_u_A: float,
    defocus_v_A: float,
    defocus_angle_deg: float,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    phase_shift_deg: float = 0.0,
    bfactor: float = 0.0,
    rfft: bool = True,
    dtype=np.float32,
) -> np.ndarray:
    """Real CTF on the FFT grid of an image of ``shape`` = (ny, nx) with pixel size ``angpix``.

    With ``rfft=True`` (default) the result has shape ``(ny, nx // 2 + 1)`` and multiplies
    ``np.fft.rfft2(image)`` directly; with ``rfft=False`` it is the full ``(ny, nx)`` grid of ``fft2``.
    ``bfactor`` (Å²) applies the envelope ``exp(-B k^2 / 4)``. Defocus in Å, positive = underfocus.
    """
    ny, nx = int(shape[0]), int(shape[1])
    k2, cos2a, sin2a = _polar_grid(ny, nx, float(angpix), bool(rfft), np.dtype(dtype))
    mean_df = 0.5 * (defocus_u_A + defocus_v_A)
    half_diff = 0.5 * (defocus_u_A - defocus_v_A)
    k1, k2c, k_const = _chi_terms(voltage_kV, cs_mm, amplitude_contrast, phase_shift_deg)
    # chi = k^2 (k1 df(a) - k2c k^2) + K with df(a) = mean + half cos(2(a - t)), built in place (each
    # full-grid temporary costs as much as the arithmetic on a 4096^2 grid).
    t = math.radians(defocus_angle_deg)
    chi = np.multiply(cos2a, half_diff * math.cos(2 * t))
    chi += sin2a * (half_diff * math.sin(2 * t))
    chi += mean_df
    chi *= k1
    chi -= k2c * k2
    chi *= k2
    chi += k_const
    # sin() is several times slower for large arguments; reduce to [-pi, pi] first (exact enough).
    two_pi = 2.0 * math.pi
    chi -= two_pi * np.round(chi * (1.0 / two_pi))
    out = np.sin(chi, out=chi)
    if bfactor:
        out *= np.exp(k2 * (-0.25 * bfactor))
    return out


@functools.lru_cache(maxsize=2)
def _polar_grid(ny: int, nx: int, angpix: float, rfft: bool, dtype: np.dtype):
    """k^2, cos(2a), sin(2a) of the FFT grid (a = angle from the x axis); cached per image geometry."""
    ky = np.fft.fftfreq(ny, d=angpix).astype(dtype)[:, None]
    kx = (np.fft.rfftfreq(nx, d=angpix) if rfft else np.fft.fftfreq(nx, d=angpix)).astype(dtype)[None, :]
    k2 = kx * kx + ky * ky
    inv = np.divide(1.0, k2, out=np.zeros_like(k2), where=k2 > 0)
    cos2a = (kx * kx - ky * ky) * inv
    cos2a[0, 0] = 1.0
    sin2a = (2.0 * kx * ky) * inv
    arrays = (k2, cos2a, sin2a)
    for a in arrays:
        a.flags.writeable = False  # shared through the cache
    return arrays


def ctf_1d(
    k: np.ndarray,
    defocus_A: float,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    phase_shift_deg: float = 0.0,
    bfactor: float = 0.0,
) -> np.ndarray:
    """Radial CTF at spatial frequencies ``k`` (Å⁻¹) for one defocus (Å, positive = underfocus)."""
    k = np.asarray(k, dtype=np.float64)
    k1, k2c, k_const = _chi_terms(voltage_kV, cs_mm, amplitude_contrast, phase_shift_deg)
    out = np.sin(k1 * defocus_A * k * k - k2c * k**4 + k_const)
    if bfactor:
        out *= np.exp(-0.25 * bfactor * k * k)
    return out


def ctf_zeros(
    defocus_A: float,
    n_zeros: int = 5,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    phase_shift_deg: float = 0.0,
) -> np.ndarray:
    """Analytic positions (Å⁻¹) of the first ``n_zeros`` CTF zeros for one defocus.

    Solves ``chi(k) = n pi`` (n = 1, 2, ...) for u = k^2: ``k2c u^2 - k1 df u + n pi - K = 0``, taking
    the smaller root (the one reached first going out from k = 0).
    """
    k1, k2c, k_const = _chi_terms(voltage_kV, cs_mm, amplitude_contrast, phase_shift_deg)
    zeros = []
    n = 1
    while len(zeros) < n_zeros:
        c = n * math.pi - k_const
        b = k1 * defocus_A
        if k2c > 0:
            disc = b * b - 4 * k2c * c
            if disc < 0:
                break  # beyond the Scherzer turnaround: no more zeros of this branch
            u = (b - math.sqrt(disc)) / (2 * k2c)
        else:
            u = c / b
        zeros.append(math.sqrt(u))
        n += 1
    return np.asarray(zeros)
