"""Shared non-maximum suppression: one pick per blob, separation, threshold, border and exclusion."""

from __future__ import annotations

import numpy as np

from relion_plugins.pick.nms import disk_footprint, greedy_disks, score_map_peaks


def _blobs(shape, centres, sigma=4.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape, np.float32)
    for cy, cx, a in centres:
        img += a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return img


def test_one_pick_per_blob_and_order():
    centres = [(30, 30, 1.0), (30, 80, 2.0), (80, 50, 1.5)]
    rng = np.random.default_rng(0)
    score = _blobs((120, 120), centres) + rng.normal(0, 0.01, (120, 120)).astype(np.float32)
    y, x, s = score_map_peaks(score, radius_px=10, threshold=0.5)
    assert len(y) == 3
    assert list(zip(y.tolist(), x.tolist())) == [(30, 80), (80, 50), (30, 30)]  # best first
    assert np.all(np.diff(s) <= 0)


def test_separation_and_border_and_exclude():
    rng = np.random.default_rng(1)
    score = rng.normal(size=(200, 200)).astype(np.float32)
    y, x, _ = score_map_peaks(score, radius_px=7, border_px=12)
    d = np.hypot(y[:, None] - y[None], x[:, None] - x[None]) + np.eye(len(y)) * 1e9
    assert d.min() >= 7
    assert y.min() >= 12 and x.min() >= 12 and y.max() < 188 and x.max() < 188
    ex = np.zeros_like(score, dtype=bool)
    ex[:, :100] = True
    y2, x2, _ = score_map_peaks(score, radius_px=7, exclude=ex, max_picks=5)
    assert len(y2) == 5 and x2.min() >= 100


def test_greedy_threshold_consistency():
    # picks above a threshold are the same whether weaker candidates took part or not
    rng = np.random.default_rng(2)
    score = rng.normal(size=(150, 150)).astype(np.float32)
    y_all, x_all, s_all = score_map_peaks(score, radius_px=5)
    y_hi, x_hi, _ = score_map_peaks(score, radius_px=5, threshold=1.5)
    keep = s_all > 1.5
    assert np.array_equal(y_all[keep], y_hi) and np.array_equal(x_all[keep], x_hi)


def test_disk_and_greedy_basics():
    assert disk_footprint(0).sum() == 1
    assert disk_footprint(2).sum() == 13
    keep = greedy_disks(np.array([5, 5, 5]), np.array([5, 7, 20]), np.full(3, 6.0), (30, 30), None, None)
    assert keep.tolist() == [0, 2]
