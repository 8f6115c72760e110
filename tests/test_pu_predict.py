"""PU prediction helpers: calibration fit, thresholds in logit space, resampling refusal."""

from __future__ import annotations

import math

import numpy as np
import pytest

from relion_plugins.pick.pu.predict import Calibration, fit_calibration, pick_from_map, working_shape


def test_calibration_recovers_particle_probability_from_sparse_labels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=4000) * 3
    particle = rng.random(4000) < 1 / (1 + np.exp(-(0.8 * x - 1)))
    for completeness in (1.0, 0.3, 0.1):
        labelled = particle & (rng.random(4000) < completeness)  # labels miss particles at random
        cal = fit_calibration(x, labelled, completeness=completeness)
        assert cal.a == pytest.approx(0.8, abs=0.2) and cal.b == pytest.approx(-1, abs=0.5)
    t = cal.logit_for(0.6)
    assert cal(np.array([t]))[0] == pytest.approx(0.6, abs=1e-6)


def test_degenerate_fits_do_not_diverge():
    x = np.r_[np.full(50, 5.0), np.zeros(50)]
    cal = fit_calibration(x, x > 1)  # perfectly separated
    assert math.isfinite(cal.a) and 0 < cal.a < 10
    flat = Calibration(0.0, -2.0)
    assert flat.logit_for(0.05) == -math.inf and flat.logit_for(0.5) == math.inf
    assert fit_calibration(np.ones(10), np.zeros(10)) == Calibration(1.0, 0.0, 1.0)


def test_pick_from_map_and_resampling():
    m = np.zeros((64, 64), np.float32)
    m[20, 30], m[22, 31], m[50, 10] = 5, 4, 3
    x, y, s = pick_from_map(m, radius_px=5, threshold_logit=1)
    assert list(zip(x, y)) == [(30, 20), (10, 50)] and list(s) == [5, 3]
    assert working_shape((1000, 800), 1.0, 4.0) == (250, 200)
    with pytest.raises(ValueError, match="finer than these micrographs"):
        working_shape((100, 100), 4.0, 2.0)


def test_strided_map_is_exact_on_its_samples():
    import torch

    from relion_plugins.pick.pu.models import build_model
    from relion_plugins.pick.pu.predict import score_map, total_stride

    torch.manual_seed(0)
    model = build_model("conv31", units=4).eval()
    assert total_stride(model) == 4
    img = np.random.default_rng(1).normal(size=(67, 53)).astype(np.float32)
    dense = score_map(model, img)
    for step in (2, 4):
        fast = score_map(model, img, step=step)
        assert fast.shape == dense.shape
        np.testing.assert_allclose(fast[::step, ::step], dense[::step, ::step], atol=1e-4)
    with pytest.raises(ValueError, match="must divide"):
        score_map(model, img, step=3)


def test_count_threshold_keeps_the_expected_number_per_micrograph():
    from relion_plugins.pick.pu.predict import count_threshold

    logits = [np.array([5.0, 4.0, 1.0, -2.0]), np.array([3.0, 2.0, -1.0]), np.array([0.5])]
    # 2 per micrograph over 3 micrographs = the 6 best of 8: 5, 4, 3, 2, 1, 0.5
    assert count_threshold(logits, 2.0) == 0.5
    assert count_threshold(logits, 100.0) == -2.0  # fewer picks than expected: all pass
    assert count_threshold(logits, 0.0) == 5.0  # at least the best pick
    assert count_threshold([], 3.0) == 0.0


def test_operating_calibration_puts_one_half_at_the_count_threshold():
    from relion_plugins.pick.pu.predict import count_threshold, operating_calibration

    rng = np.random.default_rng(3)
    logits = [rng.normal(size=200) for _ in range(4)]
    hits = [(x + rng.normal(scale=0.5, size=x.size) > 1.0).astype(float) for x in logits]
    cal = operating_calibration(logits, hits, 30.0, completeness=0.3)
    t = count_threshold(logits, 30.0)
    assert cal.a > 0 and cal.completeness == 1.0
    assert abs(float(cal(np.array([t]))[0]) - 0.5) < 1e-9
    assert abs(cal.logit_for(0.5) - t) < 1e-9
    kept = sum(int((x >= cal.logit_for(0.5)).sum()) for x in logits)
    assert kept == 120  # 30 per micrograph
