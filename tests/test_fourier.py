"""Tests for relion_plugins.imaging.fourier."""

from __future__ import annotations

import numpy as np
import pytest

from relion_plugins.imaging import fourier as F


def _smooth_image(shape, seed=0, cutoff=0.08):
    """Random image band-limited to ``cutoff`` cycles/pixel (exactly representable after cropping)."""
    rng = np.random.default_rng(seed)
    img = rng.standard_normal(shape).astype(np.float32)
    mask = (F.radial_frequency_grid(shape, 1.0) < cutoff).astype(np.float32)
    return np.fft.irfft2(np.fft.rfft2(img) * mask, s=shape).astype(np.float32) + 5.0


def _sine(shape, cycles_x, cycles_y=0):
    """Periodic sine with an integer number of cycles across the box (no spectral leakage)."""
    y, x = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    return np.sin(2 * np.pi * (x * cycles_x / shape[1] + y * cycles_y / shape[0])).astype(np.float32)


def test_radial_frequency_grid():
    g = F.radial_frequency_grid((8, 10), 2.0)
    assert g.shape == (8, 6) and g.dtype == np.float32
    assert g[0, 0] == 0
    assert g[0, 5] == pytest.approx(0.25)  # Nyquist = 1 / (2 * angpix)
    assert g[4, 0] == pytest.approx(0.25)
    assert g[1, 1] == pytest.approx(np.hypot(1 / 16, 1 / 20))
    full = F.radial_frequency_grid((8, 10), 2.0, half=False)
    assert full.shape == (8, 10) and full[0, 9] == pytest.approx(1 / 20)


@pytest.mark.parametrize("shape, target", [((64, 64), (32, 32)), ((60, 90), (31, 45)), ((63, 65), (20, 22))])
def test_crop_preserves_mean_and_variance(shape, target):
    img = _smooth_image(shape)
    small = F.fourier_crop(img, target)
    assert small.shape == target and small.dtype == np.float32
    assert small.mean() == pytest.approx(img.mean(), rel=1e-5)
    # Band-limited content: per-pixel variance is preserved (Parseval with the size ratio).
    assert small.var() == pytest.approx(img.var(), rel=2e-2)


def test_crop_factor2_matches_block_average_of_smooth_image():
    img = _smooth_image((128, 128), cutoff=0.05)
    small = F.fourier_crop(img, 2)
    assert small.shape == (64, 64)
    # Fourier crop samples at pixel 0 (no half-pixel shift), block average at the block centre (+0.5 px):
    # compare against a block average of the image shifted by half a pixel via Fourier interpolation.
    ky = np.fft.fftfreq(128)[:, None]
    kx = np.fft.rfftfreq(128)[None, :]
    shifted = np.fft.irfft2(np.fft.rfft2(img) * np.exp(-2j * np.pi * (ky + kx) * 0.5), s=img.shape)
    block = shifted.reshape(64, 2, 64, 2).mean(axis=(1, 3))
    assert np.abs(small - block).max() < 0.02 * np.abs(img - img.mean()).max()
    # And a plain block average is close too (only the sub-pixel shift differs).
    plain = img.reshape(64, 2, 64, 2).mean(axis=(1, 3))
    assert np.corrcoef(small.ravel(), plain.ravel())[0, 1] > 0.95


def test_crop_keeps_pixel_zero_in_place():
    img = np.zeros((64, 64), np.float32)
    img[20, 40] = 1.0
    img = F.lowpass(img, 1.0, 8.0)  # a smooth blob centred at (x=40, y=20)
    small = F.fourier_crop(img, 4)
    y, x = np.unravel_index(np.argmax(small), small.shape)
    assert (x, y) == (10, 5)  # x_small = x_big / factor


def test_pad_then_crop_is_identity_and_stack_axes():
    rng = np.random.default_rng(3)
    for shape, big in [((32, 32), (64, 64)), ((31, 30), (50, 47)), ((16, 17), (16, 40))]:
        img = rng.standard_normal((3, *shape)).astype(np.float32)
        up = F.fourier_pad(img, big)
        assert up.shape == (3, *big)
        assert up.mean() == pytest.approx(img.mean(), abs=1e-5)
        np.testing.assert_allclose(F.fourier_crop(up, shape), img, atol=1e-4)
        np.testing.assert_allclose(
            F.fourier_crop(img[1], (shape[0] // 2, shape[1] // 2)),
            F.fourier_crop(img, (shape[0] // 2, shape[1] // 2))[1],
            atol=1e-5,
        )


def test_pad_interpolates_a_sine():
    img = _sine((32, 32), 4, 3)
    up = F.fourier_pad(img, 2)
    np.testing.assert_allclose(up, _sine((64, 64), 4, 3), atol=1e-4)


def test_crop_nyquist_sine_is_sampled():
    # A cosine at the new Nyquist frequency must come out at full amplitude (bins ±Nyquist summed).
    x = np.arange(64)
    img = np.tile(np.cos(np.pi * x / 2), (64, 1)).astype(np.float32)
    small = F.fourier_crop(img, 2)
    np.testing.assert_allclose(small, np.tile(np.cos(np.pi * np.arange(32)), (32, 1)), atol=1e-5)


def test_bad_crop_arguments():
    img = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError):
        F.fourier_crop(img, (16, 16))
    with pytest.raises(ValueError):
        F.fourier_pad(img, (4, 4))
    with pytest.raises(ValueError):
        F.fourier_crop(img, 0)
    assert F.fourier_crop(img, 1).shape == (8, 8)


def test_lowpass_keeps_low_sine_removes_high_sine():
    angpix = 2.0
    low = _sine((128, 128), 2, 3)  # period 128 / sqrt(13) px = 71 Å
    high = _sine((128, 128), 20, 17)  # period 128 / 26.2 px = 9.8 Å
    out = F.lowpass(low + high + 3.0, angpix, 20.0)
    assert out.dtype == np.float32
    assert out.mean() == pytest.approx(3.0, abs=1e-4)
    assert np.abs(out - 3.0 - low).max() < 0.05
    hp = F.highpass(low + high + 3.0, angpix, 20.0)
    assert abs(hp.mean()) < 1e-4
    assert np.abs(hp - high).max() < 0.05
    bp = F.bandpass(low + high, angpix, 100.0, 20.0)
    assert np.abs(bp - low).max() < 0.1
    bp2 = F.bandpass(low + high, angpix, 30.0, 8.0)
    assert np.abs(bp2 - high).max() < 0.1


def test_raised_cosine_edge():
    shape, angpix = (100, 100), 1.0
    mask = F.lowpass_mask(shape, angpix, 10.0, soft_width=4.0)  # cutoff 0.1 /Å = 10 shells, edge 8..12
    g = F.radial_frequency_grid(shape, angpix)
    assert mask[g <= 0.079].min() == 1.0
    assert mask[g >= 0.121].max() == 0.0
    assert mask[0, 10] == pytest.approx(0.5)
    edge = mask[0, 8:13]
    assert np.all(np.diff(edge) < 0)
    hard = F.lowpass_mask(shape, angpix, 10.0, soft_width=0)
    assert set(np.unique(hard)) == {0.0, 1.0}


def test_energy_is_not_increased_by_filters():
    img = np.random.default_rng(4).standard_normal((64, 80)).astype(np.float32)
    for out in (F.lowpass(img, 1.5, 6.0), F.highpass(img, 1.5, 30.0), F.bandpass(img, 1.5, 30.0, 6.0)):
        assert out.shape == img.shape
        assert float((out**2).sum()) <= float((img**2).sum()) * (1 + 1e-5)


def test_log_bank_cache_gives_the_uncached_responses(monkeypatch):
    """The bank built once per (shape, diameters, low-pass) must filter exactly like one built per call."""
    from relion_plugins.imaging import log_filter as LF

    rng = np.random.default_rng(7)
    img = rng.standard_normal((96, 80)).astype(np.float32)
    diams = [6.0, 9.0, 12.0]
    cached = [r.copy() for _, r in LF.log_responses(img, diams, lowpass_px=4.0)]
    again = [r.copy() for _, r in LF.log_responses(img + 1.0, diams, lowpass_px=4.0)]  # served from cache
    monkeypatch.setattr(LF, "_BANK_CACHE_BYTES", 0)
    fresh = [r for _, r in LF.log_responses(img, diams, lowpass_px=4.0)]
    for a, b, c in zip(cached, again, fresh):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, c, rtol=1e-5, atol=1e-6)  # the mean is removed before filtering
    other = [r for _, r in LF.log_responses(img, diams, lowpass_px=None)]
    assert not np.allclose(other[0], fresh[0])  # a different low-pass is a different bank
