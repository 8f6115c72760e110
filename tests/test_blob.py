"""A-LoG blob picker on synthetic micrographs with blobs of known size, position and contrast."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from relion_plugins.imaging.log_filter import best_response, diameter_to_sigma, log_bank
from relion_plugins.pick.blob import filter_diameters, pick_blobs
from relion_plugins.pick.junk_mask import junk_mask

ANGPIX = 2.0
DIAM_A = 120.0  # 60 px at 2 Å/px: the picker works on a downsampled copy


def _sphere_image(shape, centres, diam_px, amplitude, rng, noise=0.5):
    """Particles (dark if amplitude < 0) on white noise.

    Gaussian profiles of SD 0.21 d: like real particles and the simulator's phantoms, most density sits in
    the core, so the best filter is ~0.6 d (``blob.SPHERE_FACTOR``), not the 0.85 d of a uniform sphere.
    """
    ny, nx = shape
    img = rng.normal(scale=noise, size=shape).astype(np.float32)
    r = diam_px / 2.0
    rr = int(np.ceil(2.0 * r)) + 1
    yy, xx = np.mgrid[-rr : rr + 1, -rr : rr + 1]
    pad = np.pad(img, rr)  # spheres may cross the edge
    for (cx, cy), a in zip(centres, np.broadcast_to(amplitude, (len(centres),))):
        ix, iy = int(round(cx)), int(round(cy))
        prof = np.exp(-((yy + iy - cy) ** 2 + (xx + ix - cx) ** 2) / (2.0 * (0.42 * r) ** 2))
        pad[iy : iy + 2 * rr + 1, ix : ix + 2 * rr + 1] += a * prof
    return pad[rr:-rr, rr:-rr].copy()


def _grid_centres(shape, spacing, margin, rng, jitter=3.0):
    ys = np.arange(margin, shape[0] - margin + 1, spacing)
    xs = np.arange(margin, shape[1] - margin + 1, spacing)
    c = np.array([(x, y) for y in ys for x in xs], dtype=float)
    return c + rng.uniform(-jitter, jitter, size=c.shape)


def _match(picks: np.ndarray, truth: np.ndarray, radius: float) -> tuple[int, int]:
    """(#truth with a pick within radius, #picks with another pick closer than radius)."""
    d, _ = cKDTree(picks).query(truth)
    found = int(np.sum(d <= radius))
    dd, _ = cKDTree(picks).query(picks, k=2)
    dup = int(np.sum(dd[:, 1] < radius))
    return found, dup


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(1)
    shape = (1024, 1024)
    d_px = DIAM_A / ANGPIX
    centres = _grid_centres(shape, spacing=2.0 * d_px, margin=1.5 * d_px, rng=rng)
    img = _sphere_image(shape, centres, d_px, -1.0, rng)
    return img, centres


def test_log_bank_normalised():
    """Scale normalisation: disks of different size give the same peak response at their own filter."""
    n = 256
    yy, xx = np.mgrid[:n, :n] - n // 2
    peaks = []
    for d in (16.0, 32.0, 64.0):
        disk = (np.hypot(yy, xx) <= d / 2).astype(np.float32)
        best, best_d, _ = best_response(disk, np.geomspace(8, 128, 25))
        peaks.append(best[n // 2, n // 2])
        assert abs(best_d[n // 2, n // 2] / d - 1.0) < 0.15
    assert np.ptp(peaks) / np.mean(peaks) < 0.05
    bank = log_bank((64, 64), [diameter_to_sigma(10.0)])
    assert bank.shape == (1, 64, 33) and bank.dtype == np.float32 and bank[0, 0, 0] == 0.0


def test_filter_diameters_layout():
    d, lo, hi = filter_diameters(100.0, 150.0)
    assert d.size == 11 and (lo, hi) == (4, 7)
    assert np.all(np.diff(d) > 0)
    assert np.allclose(d[lo:hi], [100.0, np.sqrt(100 * 150), 150.0])
    d1, _, _ = filter_diameters(100.0, 100.0)  # narrow range still probes other sizes
    assert d1[3] < 100.0 / 1.19 and d1[7] > 100.0 * 1.19


def test_all_blobs_found_no_duplicates(scene):
    img, centres = scene
    res = pick_blobs(img, ANGPIX, 0.8 * DIAM_A, 1.2 * DIAM_A)
    assert res.working_angpix > ANGPIX  # downsampled
    found, dup = _match(res.xy, centres, radius=0.25 * DIAM_A / ANGPIX)
    assert found == len(centres)
    assert dup == 0
    # the adaptive default threshold lets the upper tail of the noise peaks through (a few percent)
    assert len(res) <= 1.15 * len(centres)
    assert np.all(np.diff(res.fom) <= 0)  # sorted best first
    assert np.all((res.diameter_A > 0.6 * DIAM_A) & (res.diameter_A < 1.4 * DIAM_A))


def test_wrong_size_rejected():
    """Blobs three times too large are never picked; specks a third of the size are not picked among real
    particles. (Alone on a micrograph, a low-passed speck looks like a small particle: like RELION's rule,
    ours needs the best filter to be clearly out of range, and low-pass filtering blurs a speck into the
    range's neighbour.)"""
    rng = np.random.default_rng(2)
    shape = (768, 768)
    d_px = DIAM_A / ANGPIX
    centres = _grid_centres(shape, spacing=2.0 * d_px, margin=1.5 * d_px, rng=rng)
    big = _sphere_image(shape, centres, d_px * 3.0, -0.6, np.random.default_rng(3))
    res = pick_blobs(big, ANGPIX, 0.8 * DIAM_A, 1.2 * DIAM_A, use_junk_mask=False)
    assert (0 if len(res) == 0 else _match(res.xy, centres, 0.25 * d_px)[0]) <= 0.1 * len(centres)

    good, specks = centres[::2], centres[1::2]
    img = _sphere_image(shape, good, d_px, -1.0, rng)
    img += _sphere_image(shape, specks, d_px / 3.0, -1.0, np.random.default_rng(5), noise=0.0)
    res = pick_blobs(img, ANGPIX, 0.8 * DIAM_A, 1.2 * DIAM_A, use_junk_mask=False)
    assert _match(res.xy, good, 0.25 * d_px)[0] == len(good)
    assert _match(res.xy, specks, 0.25 * d_px)[0] <= 0.1 * len(specks)


def test_dark_contaminant_masked(scene):
    img, centres = scene
    img = img.copy()
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    blob = np.hypot(yy - 512.0, xx - 512.0) < 150.0  # big, very dark ice crystal
    img[blob] -= 8.0
    mask = junk_mask(img, ANGPIX, DIAM_A)
    assert mask.shape == img.shape
    assert mask[blob].mean() > 0.95
    assert mask[np.hypot(yy - 512.0, xx - 512.0) > 300].mean() < 0.02
    res = pick_blobs(img, ANGPIX, 0.8 * DIAM_A, 1.2 * DIAM_A)
    r = np.hypot(res.x - 512.0, res.y - 512.0)
    assert np.all(r > 150.0 + 0.3 * DIAM_A / ANGPIX)  # nothing on or at the edge of the contaminant
    far = np.hypot(centres[:, 0] - 512, centres[:, 1] - 512) > 300
    assert _match(res.xy, centres[far], 0.25 * DIAM_A / ANGPIX)[0] == far.sum()


def test_invert(scene):
    img, centres = scene
    res = pick_blobs(-img, ANGPIX, 0.8 * DIAM_A, 1.2 * DIAM_A, invert=True)
    assert _match(res.xy, centres, 0.25 * DIAM_A / ANGPIX)[0] == len(centres)
    wrong = pick_blobs(-img, ANGPIX, 0.8 * DIAM_A, 1.2 * DIAM_A, invert=False)
    assert len(wrong) == 0 or _match(wrong.xy, centres, 0.25 * DIAM_A / ANGPIX)[0] < 0.1 * len(centres)


def test_top_k_and_determinism(scene):
    img, _ = scene
    a = pick_blobs(img, ANGPIX, 0.8 * DIAM_A, 1.2 * DIAM_A)
    b = pick_blobs(img.copy(), ANGPIX, 0.8 * DIAM_A, 1.2 * DIAM_A)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y) and np.array_equal(a.fom, b.fom)
    k = pick_blobs(img, ANGPIX, 0.8 * DIAM_A, 1.2 * DIAM_A, top_k=10)
    assert len(k) == 10
    assert np.array_equal(k.x, a.x[:10]) and np.array_equal(k.y, a.y[:10])


def test_coordinates_in_original_pixels():
    """A single blob at a known position is reported there whatever the working pixel size."""
    rng = np.random.default_rng(4)
    shape = (1000, 1200)  # not square, not a power of two
    cx, cy = 701.0, 333.0
    img = _sphere_image(shape, [(cx, cy)], DIAM_A / ANGPIX, -3.0, rng, noise=0.1)
    for wa in (None, 2.0, 4.0, 8.0):
        res = pick_blobs(
            img, ANGPIX, 0.8 * DIAM_A, 1.2 * DIAM_A, working_angpix=wa, top_k=1, use_junk_mask=False
        )
        assert len(res) == 1
        tol = 1.0 + res.working_angpix / ANGPIX  # within one working pixel
        assert abs(res.x[0] - cx) <= tol and abs(res.y[0] - cy) <= tol, (wa, res.x, res.y)


def test_bad_input():
    with pytest.raises(ValueError):
        pick_blobs(np.zeros((10, 10, 3)), 1.0, 100, 150)
    img = np.zeros((64, 64), dtype=np.float32)
    img[3, 3] = np.nan
    with pytest.raises(ValueError):
        pick_blobs(img, 1.0, 100, 150)
    flat = pick_blobs(np.zeros((256, 256), dtype=np.float32), 2.0, 40, 60)
    assert len(flat) == 0 or np.all(np.isfinite(flat.fom))
