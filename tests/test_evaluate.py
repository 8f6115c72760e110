"""Tests for relion_plugins.evaluate."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest

from relion_plugins.evaluate import (
    average_precision,
    best_f1,
    evaluate_coordinates,
    match_micrograph_names,
    match_picks,
    match_picks_per_micrograph,
    precision_recall_curve,
    precision_recall_curve_per_micrograph,
)
from relion_plugins.evaluate import matching as M


def _df(xy, scores=None):
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    d = {"rlnCoordinateX": xy[:, 0], "rlnCoordinateY": xy[:, 1]}
    if scores is not None:
        d["rlnAutopickFigureOfMerit"] = np.asarray(scores, dtype=float)
    return pd.DataFrame(d)


def test_hand_computed_small_case():
    truth = [[10, 10], [50, 50], [90, 90]]
    picks = [[12, 10], [50, 55], [200, 200], [11, 11]]  # 2 matches + 1 far + 1 duplicate of truth 0
    r = match_picks(picks, truth, radius=6)
    assert (r.tp, r.fp, r.fn) == (2, 2, 1)
    assert r.precision == pytest.approx(0.5)
    assert r.recall == pytest.approx(2 / 3)
    assert r.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    # Truth 0 goes to the closer of the two candidates (minimum total distance).
    pairs = dict(zip(r.pick_index.tolist(), r.truth_index.tolist()))
    assert pairs == {3: 0, 1: 1}
    np.testing.assert_allclose(sorted(r.distance), [np.sqrt(2), 5.0])


def test_greedy_and_hungarian_differ():
    # Pick A (high score) lies between both truths but nearer T1; pick B only reaches T1.
    truth = [[0, 0], [10, 0]]
    picks = [[4.5, 0], [-4, 0]]
    scores = [0.9, 0.1]
    hung = match_picks(picks, truth, radius=6)
    assert hung.tp == 2  # A-T2 (5.5) and B-T1 (4)
    assert dict(zip(hung.pick_index.tolist(), hung.truth_index.tolist())) == {0: 1, 1: 0}
    curve = precision_recall_curve(picks, scores, truth, radius=6)
    np.testing.assert_allclose(curve.thresholds, [0.9, 0.1])
    np.testing.assert_array_equal(curve.tp, [1, 1])  # greedy: A takes T1, B is left without a partner
    np.testing.assert_allclose(curve.precision, [1.0, 0.5])
    np.testing.assert_allclose(curve.recall, [0.5, 0.5])
    assert average_precision(curve) == pytest.approx(0.5)
    assert best_f1(curve) == (pytest.approx(2 / 3), 0.9)
    # Hungarian at a threshold only sees the kept picks.
    assert match_picks(picks, truth, 6, scores=scores, threshold=0.5).tp == 1


def test_perfect_picks():
    rng = np.random.default_rng(0)
    truth = np.stack(np.meshgrid(np.arange(20, 1000, 40), np.arange(20, 1000, 40)), -1).reshape(-1, 2)
    picks = truth + rng.uniform(-3, 3, truth.shape)
    r = match_picks(picks, truth, 10)
    assert r.f1 == 1.0 and r.precision == 1.0 and r.recall == 1.0
    curve = precision_recall_curve(picks, rng.random(len(picks)), truth, 10)
    assert average_precision(curve) == pytest.approx(1.0)
    assert best_f1(curve)[0] == pytest.approx(1.0)


def test_aupr_of_random_scores_is_prevalence():
    rng = np.random.default_rng(1)
    truth = rng.uniform(0, 1000, (1000, 2))
    fp = rng.uniform(2000, 5000, (9000, 2))  # never within the radius of a truth particle
    picks = np.vstack([truth, fp])
    ap = [
        average_precision(precision_recall_curve(picks, rng.random(len(picks)), truth, 5)) for _ in range(5)
    ]
    assert np.mean(ap) == pytest.approx(0.1, abs=0.01)
    # Perfect ranking of the same picks gives AP 1.
    scores = np.r_[np.ones(1000), np.zeros(9000)]
    assert average_precision(precision_recall_curve(picks, scores, truth, 5)) == pytest.approx(1.0)


def test_ap_matches_sklearn_definition_with_ties():
    # Step-wise AP: sum (R_k - R_{k-1}) P_k over distinct thresholds (ties grouped).
    truth = [[0, 0], [100, 0], [200, 0], [300, 0]]
    picks = [[0, 0], [500, 0], [100, 0], [600, 0], [200, 0]]
    scores = [0.9, 0.8, 0.8, 0.5, 0.1]
    c = precision_recall_curve(picks, scores, truth, 3)
    np.testing.assert_allclose(c.thresholds, [0.9, 0.8, 0.5, 0.1])
    np.testing.assert_allclose(c.recall, [0.25, 0.5, 0.5, 0.75])
    np.testing.assert_allclose(c.precision, [1, 2 / 3, 0.5, 0.6])
    expected = 0.25 * 1 + 0.25 * (2 / 3) + 0 * 0.5 + 0.25 * 0.6
    assert average_precision(c) == pytest.approx(expected)


def test_radius_boundary_is_inclusive():
    truth = [[0, 0]]
    assert match_picks([[3, 4]], truth, 5.0).tp == 1
    assert match_picks([[3, 4]], truth, 4.999).tp == 0
    assert match_picks([[0, 0]], truth, 0.0).tp == 1  # coincident points match even at radius 0


def test_empty_inputs():
    r = match_picks(np.zeros((0, 2)), [[1, 1]], 5)
    assert (r.tp, r.n_picks, r.n_truth, r.precision, r.recall, r.f1) == (0, 0, 1, 0.0, 0.0, 0.0)
    r = match_picks([[1, 1]], np.zeros((0, 2)), 5)
    assert (r.fp, r.fn) == (1, 0)
    c = precision_recall_curve(np.zeros((0, 2)), [], [[1, 1]], 5)
    assert average_precision(c) == 0.0 and best_f1(c)[0] == 0.0
    assert math.isnan(average_precision(precision_recall_curve([[1, 1]], [1.0], np.zeros((0, 2)), 5)))


def test_per_micrograph_pooling_and_border():
    truth = {"a": [[10, 10], [50, 50]], "b": [[50, 50], [98, 50]]}
    picks = {"a": [[50, 51], [5, 5]], "b": [[10, 10], [97, 50]], "c": [[1, 1]]}
    scores = {"a": [0.9, 0.8], "b": [0.7, 0.6], "c": [1.0]}
    # Picks in "b" at (10, 10) must not match the truth in "a"; "c" has no truth and is ignored.
    r = match_picks_per_micrograph(picks, truth, 6)
    assert (r.tp, r.n_picks, r.n_truth) == (2, 4, 4)
    # Border 5 on a 100x100 image: (98, 50) is within 5 px of the right edge (x > 94), so is its pick
    # at (97, 50); (5, 5) is exactly 5 px away and stays.
    r = match_picks_per_micrograph(picks, truth, 6, border=5, shape=(100, 100))
    assert (r.tp, r.n_picks, r.n_truth) == (1, 3, 3)
    c = precision_recall_curve_per_micrograph(
        picks, scores, truth, 6, border=5, shape={"a": (100, 100), "b": (100, 100)}
    )
    np.testing.assert_array_equal(c.tp, [1, 1, 1])
    with pytest.raises(ValueError, match="shape"):
        match_picks_per_micrograph(picks, truth, 6, border=5)


def test_large_component_fallback_keeps_counts(monkeypatch):
    rng = np.random.default_rng(2)
    for _ in range(20):
        picks = rng.uniform(0, 60, (rng.integers(1, 70), 2))
        truth = rng.uniform(0, 60, (rng.integers(1, 70), 2))
        exact = match_picks(picks, truth, 9)
        monkeypatch.setattr(M, "_DENSE_LIMIT", 0)
        fallback = match_picks(picks, truth, 9)
        monkeypatch.undo()
        assert fallback.tp == exact.tp
        assert len(set(fallback.pick_index.tolist())) == fallback.tp
        assert len(set(fallback.truth_index.tolist())) == fallback.tp
        assert np.all(fallback.distance <= 9)


def test_speed_10k_by_10k():
    rng = np.random.default_rng(3)
    truth = rng.uniform(0, 4096, (10_000, 2))
    picks = np.vstack([truth[:8000] + rng.normal(0, 4, (8000, 2)), rng.uniform(0, 4096, (2000, 2))])
    scores = rng.random(10_000)
    t0 = time.perf_counter()
    r = match_picks(picks, truth, 20)
    curve = precision_recall_curve(picks, scores, truth, 20)
    ap = average_precision(curve)
    elapsed = time.perf_counter() - t0
    assert r.tp >= 8000 and 0 < ap < 1
    assert elapsed < 2.0, elapsed
    # Uniformly random points at a radius that chains them into large components stay fast too.
    t0 = time.perf_counter()
    match_picks(rng.uniform(0, 4096, (10_000, 2)), truth, 40)
    assert time.perf_counter() - t0 < 2.0


def test_evaluate_coordinates():
    truth = {"mics/a.mrc": _df([[10, 10], [50, 50], [90, 90]]), "mics/b.mrc": _df([[30, 30]])}
    picks = {
        "mics/a.mrc": _df([[11, 10], [50, 52], [70, 20]], scores=[0.9, 0.5, 0.7]),
        "mics/b.mrc": _df([[31, 31]], scores=[0.2]),
    }
    out = evaluate_coordinates(picks, truth, radius_px=5)
    assert out["name_matching"] == "exact"
    assert (out["tp"], out["n_picks"], out["n_truth"]) == (3, 4, 4)
    assert out["precision"] == pytest.approx(0.75) and out["recall"] == pytest.approx(0.75)
    assert out["f1"] == pytest.approx(0.75)
    # Ranked: 0.9 TP, 0.7 FP, 0.5 TP, 0.2 TP -> AP = .25*1 + .25*(2/3) + .25*(3/4)
    assert out["aupr"] == pytest.approx(0.25 + 0.25 * 2 / 3 + 0.25 * 0.75)
    assert out["best_f1"] == pytest.approx(0.75) and out["best_threshold"] == pytest.approx(0.2)
    thr = evaluate_coordinates(picks, truth, radius_px=5, threshold=0.6)
    assert (thr["tp"], thr["n_picks"]) == (1, 2)

    # Names that differ only by directory / extension fall back to basename matching.
    renamed = {
        "MotionCorr/job002/Movies/a.tiff": picks["mics/a.mrc"],
        "MotionCorr/job002/Movies/b.tiff": picks["mics/b.mrc"],
    }
    out2 = evaluate_coordinates(renamed, truth, radius_px=5)
    assert out2["name_matching"] == "basename" and out2["tp"] == 3

    # Without scores: fixed-threshold numbers only.
    plain = {k: v.drop(columns="rlnAutopickFigureOfMerit") for k, v in picks.items()}
    out3 = evaluate_coordinates(plain, truth, radius_px=5)
    assert out3["f1"] == pytest.approx(0.75) and math.isnan(out3["aupr"])
    with pytest.raises(ValueError, match="threshold"):
        evaluate_coordinates(plain, truth, radius_px=5, threshold=0.5)

    # A truth micrograph without picks counts its particles as missed.
    out4 = evaluate_coordinates({"mics/a.mrc": picks["mics/a.mrc"]}, truth, radius_px=5)
    assert (out4["tp"], out4["n_truth"], out4["n_micrographs"]) == (2, 4, 2)


def test_match_micrograph_names_ambiguous():
    with pytest.raises(ValueError, match="not unique"):
        match_micrograph_names(["x/a.mrc", "y/a.mrc"], ["a"])
    assert match_micrograph_names(["x/a.mrc"], ["z/a.tif", "z/b.tif"]) == ({"z/a.tif": "x/a.mrc"}, "basename")


def test_smoothed_threshold_avoids_a_sharp_peak_at_a_cliff():
    n_kept = np.array([10, 70, 90, 100, 110, 200])
    tp = np.array([10, 65, 66, 70, 80, 85])
    curve = M.PRCurve(np.array([0.9, 0.6, 0.55, 0.5, 0.3, 0.2]), tp / n_kept, tp / 100, tp, n_kept, 100)
    # F1 is 0.765 on (0.55, 0.6] next to 0.18 above it; 0.762 on the broad (0.2, 0.3]
    assert M.best_f1(curve) == pytest.approx((130 / 170, 0.6))
    thr, f1 = M.smoothed_best_threshold(curve, 0.05)
    assert 0.2 < thr <= 0.3 and f1 == pytest.approx(160 / 210)
    thr, f1 = M.smoothed_best_threshold(curve, 0.0)
    assert 0.55 < thr <= 0.6 and f1 == pytest.approx(130 / 170)
    empty = M.PRCurve(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), 5)
    thr, f1 = M.smoothed_best_threshold(empty, 0.05)
    assert math.isnan(thr) and f1 == 0.0
