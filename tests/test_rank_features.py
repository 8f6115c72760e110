"""RELION-4 class-ranker features, the CNN image, %/Res and the Select rules, and the class simulator.

The image features are checked against literal re-implementations of RELION's loops
(``calculateGranulo``, ``makeSolventMasks``, ``calculateMoments``) on small images.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from relion_plugins.rank import features as F
from relion_plugins.rank.selection import adaptive_threshold, percent_per_resolution, select_classes
from relion_plugins.simulate.classes import ClassSimConfig, simulate_class, simulate_class_set, stack_classes

# ----------------------------------------------------------------------------------------------------
# literal RELION loops (slow, small images only)


def relion_granulo(img: np.ndarray) -> list[float]:
    ny, nx = img.shape
    lo, hi = float(img.min()), float(img.max())
    out = []
    for n in range(1, 7):
        eroded = np.empty_like(img)
        for y in range(ny):
            for x in range(nx):
                m = hi
                for yy in range(y - n, y + n + 1):
                    for xx in range(x - n, x + n + 1):
                        if 0 <= yy < ny and 0 <= xx < nx and (xx - x) ** 2 + (yy - y) ** 2 <= n * n:
                            m = min(m, img[yy, xx])
                eroded[y, x] = m
        total = 0.0
        for y in range(ny):
            for x in range(nx):
                m = lo
                for yy in range(y - n, y + n + 1):
                    for xx in range(x - n, x + n + 1):
                        if 0 <= yy < ny and 0 <= xx < nx and (xx - x) ** 2 + (yy - y) ** 2 <= n * n:
                            m = max(m, eroded[yy, xx])
                total += m
        out.append(total)
    return out


def relion_masks(lpf: np.ndarray, radius: float, thr: float):
    """makeSolventMasks as written in class_ranker.cpp: scan the central disk, flood-fill 4-neighbours."""
    n = lpf.shape[0]
    c = n // 2
    visited = np.zeros_like(lpf, dtype=bool)
    protein = np.zeros_like(lpf, dtype=bool)
    scattered_nr = protein_area = 0
    for i in range(-c, n - c):
        for j in range(-c, n - c):
            if i * i + j * j <= 0.36 * radius * radius and not visited[i + c, j + c]:
                visited[i + c, j + c] = True
                if lpf[i + c, j + c] > thr:
                    stack, island, inside = [(i, j)], [(i, j)], 1
                    while stack:
                        y0, x0 = stack.pop()
                        for dy, dx in ((0, -1), (0, 1), (-1, 0), (1, 0)):
                            y, x = y0 + dy, x0 + dx
                            if -c <= y < n - c and -c <= x < n - c:
                                if y * y + x * x <= radius * radius and not visited[y + c, x + c]:
                                    visited[y + c, x + c] = True
                                    if lpf[y + c, x + c] > thr:
                                        stack.append((y, x))
                                        island.append((y, x))
                                        if y * y + x * x <= 0.36 * radius * radius:
                                            inside += 1
                    if inside > 0.1 * 3.14 * 0.36 * radius * radius:
                        protein_area += len(island)
                        for y, x in island:
                            protein[y + c, x + c] = True
                    else:
                        scattered_nr += len(island)
    return protein, scattered_nr / (scattered_nr + protein_area + 1)


def blob_image(n: int, radius: float, centre=(0.0, 0.0), value: float = 1.0) -> np.ndarray:
    g = np.arange(n) - n // 2
    yy, xx = np.meshgrid(g, g, indexing="ij")
    return np.where((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2, value, 0.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# building blocks


def test_feature_names_follow_relion_order():
    names = F.feature_names()
    assert len(names) == 24 == len(F.GLOBAL_MEAN) + 3 == len(F.GLOBAL_STD) + 3
    assert names[:4] == [
        "accuracy_rotation",
        "accuracy_translation_A",
        "weighted_resolution",
        "relative_resolution",
    ]
    assert names[15:21] == [f"granulo_{i}" for i in range(1, 7)]
    assert names[21:] == ["protein_sum", "solvent_sum", "relative_signal_intensity"]


def test_moments_match_relion_formulas():
    v = np.random.default_rng(0).gamma(2.0, size=500)
    m = F.moments(v)
    d = v - v.mean()
    assert m.sum == pytest.approx(v.sum())
    assert m.stddev == pytest.approx(np.sqrt((d**2).mean()))  # population SD
    assert m.skew == pytest.approx((d**3).sum() * np.sqrt(v.size) / (d**2).sum() ** 1.5)
    assert m.kurt == pytest.approx((d**4).sum() * v.size / (d**2).sum() ** 2)  # not excess kurtosis
    flat = F.moments(np.full(10, 3.0))
    assert (flat.stddev, flat.skew, flat.kurt) == (0.0, 0.0, 0.0)
    assert F.moments(np.zeros(0)) == F.Moments()


def test_granulometry_equals_relion_loop():
    img = np.random.default_rng(1).normal(size=(14, 17))
    np.testing.assert_allclose(F.granulometry(img), relion_granulo(img), rtol=1e-12)
    stack = np.stack([img, 2 * img + 1])
    out = F.granulometry(stack)
    assert out.shape == (2, 6)
    np.testing.assert_allclose(out[1], relion_granulo(2 * img + 1), rtol=1e-12)
    # Openings only remove bright detail: the sums never grow with the disk radius.
    assert np.all(np.diff(out, axis=1) <= 1e-9)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_solvent_masks_equal_relion_flood_fill(seed: int):
    rng = np.random.default_rng(seed)
    n, radius = 28, 12.5
    lpf = F.relion_lowpass(rng.normal(size=(n, n)) + 2.0 * blob_image(n, 6), 4.0, 12.0)
    thr = 0.05 * lpf.std()
    protein, solvent, scattered = F.solvent_masks(lpf, radius, thr)
    ref_protein, ref_scattered = relion_masks(lpf, radius, thr)
    np.testing.assert_array_equal(protein, ref_protein)
    assert scattered == pytest.approx(ref_scattered)
    circle = (np.arange(n)[:, None] - n // 2) ** 2 + (np.arange(n)[None, :] - n // 2) ** 2 <= radius**2
    np.testing.assert_array_equal(solvent, circle & ~protein)


def test_relion_lowpass_keeps_mean_and_cuts_high_frequencies():
    rng = np.random.default_rng(5)
    img = rng.normal(size=(40, 40)) + 3.0
    out = F.relion_lowpass(img, 4.0, 25.0)
    assert out.mean() == pytest.approx(img.mean())
    spec = np.abs(np.fft.rfft2(out))
    k = np.sqrt(np.fft.fftfreq(40)[:, None] ** 2 + np.fft.rfftfreq(40)[None, :] ** 2) * 40
    shell = round(40 * 4.0 / 25.0)  # 6
    assert spec[k > shell + 1].max() < 1e-9
    ratio = spec[k < shell - 1] / np.abs(np.fft.rfft2(img))[k < shell - 1]
    np.testing.assert_allclose(ratio, 1.0)


@pytest.mark.parametrize(
    ("box", "angpix", "expected"), [(64, 1.0, 16), (100, 2.5, 62), (10, 2.0, 4), (50, 4.0, 50)]
)
def test_resample_to_uniform_box_sizes(box: int, angpix: float, expected: int):
    img = np.full((box, box), 2.0, np.float32)
    out = F.resample_to_uniform(img, angpix)
    assert out.shape == (expected, expected)
    np.testing.assert_allclose(out, 2.0, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# one class


def details(avg, angpix=4.0, diameter=160.0, **kw):
    args = dict(particle_nr=200.0, resolution_A=20.0, acc_rot=3.0, acc_trans_A=2.0)
    args.update(kw)
    return F.class_feature_details(avg, angpix, diameter, keep_masks=True, **args)


def test_centred_blob_is_protein_and_off_centre_blob_is_not():
    centred = details(blob_image(64, 12) * 3)
    assert centred.protein_area > 0.7 * math.pi * 12**2
    assert centred.edge_signal == 0.0
    assert centred.protein.mean > 1.5 and abs(centred.solvent.mean) < 0.5
    # A blob far from the centre never reaches the central disk: it is not protein (RELION's threshold
    # is so low that the filter's ringing near the centre may still be).
    blob = blob_image(64, 5, centre=(15, 0)) > 0
    off = details(blob * np.float32(3))
    assert not off.masks[0][::2, ::2][blob[::2, ::2]].any()  # masks are at 4 Å/px: same grid here
    # A blob over the mask edge gives edge signal.
    edge = details(blob_image(64, 14, centre=(10, 0)) * 3)
    assert edge.edge_signal > 0.1


def test_scalar_features_follow_relion_definitions():
    f = details(blob_image(64, 10), particle_nr=150.0, resolution_A=12.0, acc_rot=2.5, acc_trans_A=1.5)
    v = f.vector()
    assert v[0] == 2.5 and v[1] == 1.5
    assert v[2] == pytest.approx((1 / 144) / math.log(150))
    assert v[3] == pytest.approx(12.0 / (64 * 4.0))
    assert f.radius_px == 20.0  # 160 Å / (2 x 4 Å)
    assert v[23] == pytest.approx(f.protein.sum - f.solvent.mean * f.protein_area)
    # Mask diameter larger than the box: R is capped at half the box.
    assert details(blob_image(64, 10), diameter=1000.0).radius_px == 32.0


def test_unestimated_accuracies_follow_relion_fallback():
    small = details(blob_image(64, 10), particle_nr=80.0, acc_rot=999.0, acc_trans_A=999.0)
    assert (small.accuracy_rotation, small.accuracy_translation_A) == (5.0, 8.0)
    assert "default" in small.accuracy_note
    big = details(blob_image(64, 10), particle_nr=500.0, acc_rot=999.0, acc_trans_A=2.0)
    assert big.accuracy_rotation == 999.0 and "not recomputed" in big.accuracy_note
    with pytest.raises(ValueError, match="resolution"):
        details(blob_image(64, 10), resolution_A=0.0)


def test_features_do_not_depend_much_on_the_original_pixel_size():
    """The same object sampled at 2 Å/px and at 4 Å/px gives nearly the same 4 Å/px features."""
    fine = F.class_features(
        blob_image(128, 20) * 2, 2.0, 160.0, particle_nr=100, resolution_A=10, acc_rot=2, acc_trans_A=1
    )
    coarse = F.class_features(
        blob_image(64, 10) * 2, 4.0, 160.0, particle_nr=100, resolution_A=10, acc_rot=2, acc_trans_A=1
    )
    assert fine[21] == pytest.approx(coarse[21], rel=0.1)  # protein sum
    assert fine[11] == pytest.approx(coarse[11], rel=0.05)  # low-pass mean


# ----------------------------------------------------------------------------------------------------
# normalisation, CNN image, whole jobs


def test_normalize_features_global_and_per_job():
    rng = np.random.default_rng(6)
    raw = rng.normal(size=(5, 24)) * 10
    raw[3] = np.nan
    raw[:, 22] = 7.0  # constant in the job: normalised to 0
    out = F.normalize_features(raw)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, :21], (raw[0, :21] - F.GLOBAL_MEAN) / F.GLOBAL_STD, rtol=1e-5)
    ok = [0, 1, 2, 4]
    col = raw[ok, 21]
    np.testing.assert_allclose(out[ok, 21], (col - col.mean()) / col.std(), rtol=1e-5)
    assert np.all(out[ok, 22] == 0.0)
    assert np.isnan(out[3]).all()


def test_cnn_image_windows_and_resizes_like_relion():
    n, angpix = 100, 2.0
    const = np.full((n, n), 1.5, np.float32)
    img = F.class_image_for_cnn(const, angpix, 150.0)  # window 76 px inside the box
    assert img.shape == (64, 64) and img.dtype == np.float32
    np.testing.assert_allclose(img, 1.5, rtol=1e-4)
    # Window wider than the box (ceil(300 / 2) + 1 = 151 -> 152 px): zero-filled around the box.
    wide = F.class_image_for_cnn(const, angpix, 300.0)
    assert wide.mean() == pytest.approx(1.5 * (n / 152) ** 2, rel=1e-3)
    # A small window is padded up to 64 px, and the box centre stays at 32, 32.
    point = np.zeros((n, n), np.float32)
    point[n // 2, n // 2] = 1.0
    small = F.class_image_for_cnn(point, angpix, 40.0)
    assert np.unravel_index(np.argmax(small), small.shape) == (32, 32)
    stack = F.class_image_for_cnn(np.stack([const, point]), angpix, 150.0, normalize=True)
    assert stack.shape == (2, 64, 64)
    assert abs(stack[1].mean()) < 1e-5 and stack[1].std() == pytest.approx(1.0, rel=1e-4)


def test_job_features_skip_small_classes_and_match_single_class_features():
    rng = np.random.default_rng(7)
    avgs = np.stack([blob_image(48, r) * 2 + rng.normal(0, 0.1, (48, 48)) for r in (4, 6, 8, 10)]).astype(
        np.float32
    )
    dist = np.array([0.002, 0.3, 0.3, 0.398])
    res = np.array([40.0, 15.0, 12.0, 10.0])
    acc_r, acc_t = np.array([999.0, 3, 2, 1.5]), np.array([999.0, 2, 1.5, 1])
    job = F.job_features(avgs, 3.0, 120.0, dist, 1000, res, acc_r, acc_t)
    assert job.scored.tolist() == [False, True, True, True]  # 2 particles <= 10: not scored
    assert np.isnan(job.raw[0]).all() and np.isnan(job.normalized[0]).all() and job.details[0] is None
    assert job.images.shape == (4, 64, 64)
    single = F.class_features(
        avgs[2], 3.0, 120.0, particle_nr=300.0, resolution_A=12.0, acc_rot=2, acc_trans_A=1.5
    )
    np.testing.assert_allclose(job.raw[2], single, rtol=1e-9)
    assert np.isfinite(job.normalized[1:]).all()
    with pytest.raises(ValueError, match="class 2"):
        F.job_features(avgs, 3.0, 120.0, dist, 1000, [40.0, np.nan, 12, 10], acc_r, acc_t)


def test_job_features_speed_100_classes():
    rng = np.random.default_rng(8)
    for box, angpix in ((128, 2.0), (200, 4.0)):  # 200 px at 4 Å/px is the worst case: no downsampling
        avgs = rng.normal(size=(100, box, box)).astype(np.float32)
        avgs += blob_image(box, box / 5) * 3
        t0 = time.perf_counter()
        job = F.job_features(
            avgs,
            angpix,
            0.6 * box * angpix,
            np.full(100, 0.01),
            100_000,
            np.full(100, 10.0),
            np.full(100, 2.0),
            np.ones(100),
        )
        elapsed = time.perf_counter() - t0
        assert job.scored.all()
        assert elapsed < 5.0, f"{elapsed:.1f} s for 100 classes of {box} px at {angpix} Å/px"


# ----------------------------------------------------------------------------------------------------
# %/Res and selection


def test_percent_per_resolution_and_bad_resolutions():
    pres, why = percent_per_resolution(
        [0.2, 0.1, 0.1, 0.1, 0.1, 0.1, np.nan], [10.0, 0.0, np.inf, np.nan, 999.0, -4, 8]
    )
    assert pres[0] == pytest.approx(2.0)
    assert pres[1:].tolist() == [0.0] * 6
    assert why[0] == "" and all(why[1:])
    assert "not positive" in why[1] and "infinite" in why[2] and "NaN" in why[3] and "not estimated" in why[4]
    with pytest.raises(ValueError):
        percent_per_resolution([0.1], [1.0, 2.0])


def test_select_by_score_and_min_particles_like_relion():
    scores = np.array([0.9, 0.2, 0.6, 0.4, 0.3, 0.95])
    parts = np.array([500, 400, 300, 200, 100, 5])  # class 6 has <= 10 particles: never selected
    sel = select_classes(scores, None, parts, min_score=0.5)
    assert sel.selected.tolist() == [True, False, True, False, False, False]
    assert sel.n_particles == 800 and sel.n_classes == 2
    assert sel.reasons[1].startswith("rejected: score 0.200")
    assert sel.reasons[5].startswith("not scored")
    # Top up to 1000 particles: best remaining first (0.4 -> 200 particles reaches 1000), then stop.
    sel = select_classes(scores, None, parts, min_score=0.5, min_particles=1000)
    assert sel.selected.tolist() == [True, False, True, True, False, False]
    assert sel.added.tolist() == [False, False, False, True, False, False]
    assert "to reach 1000 particles" in sel.reasons[3]
    # Class minimum.
    sel = select_classes(scores, None, parts, min_score=0.5, min_classes=4)
    assert sel.selected.tolist() == [True, False, True, True, True, False]


def test_relion_stops_at_the_particle_minimum_even_if_classes_are_short():
    scores = np.array([0.9, 0.4, 0.3, 0.2])
    parts = np.array([100, 1000, 50, 50])
    relion = select_classes(scores, None, parts, min_score=0.5, min_particles=500, min_classes=4)
    assert relion.selected.tolist() == [True, True, False, False]  # particles reached: RELION stops
    full = select_classes(
        scores, None, parts, min_score=0.5, min_particles=500, min_classes=4, relion_compatible=False
    )
    assert full.selected.all()


def test_select_with_pres_and_ties():
    pres = np.array([1.0, 3.0, 0.2, 3.0])
    parts = np.full(4, 100)
    sel = select_classes(None, pres, parts, min_score=None, min_pres=0.5)
    assert sel.selected.tolist() == [True, True, False, True]
    # Both tests must pass when both are given.
    sel = select_classes([0.9, 0.1, 0.9, 0.9], pres, parts, min_score=0.5, min_pres=0.5)
    assert sel.selected.tolist() == [True, False, False, True]
    # Ties in the top-up: RELION takes the later class first.
    sel = select_classes([0.1, 0.1, 0.1, 0.1], None, parts, min_score=0.5, min_classes=1)
    assert sel.selected.tolist() == [False, False, False, True]
    with pytest.raises(ValueError):
        select_classes(None, None, parts)


def test_adaptive_threshold():
    scores = np.array([0.1, 0.2, 0.3, 0.4, -999.0, np.nan])
    assert adaptive_threshold(scores, 0.5) == pytest.approx(0.25)
    # Weighted by particles: the 0.4 class holds most particles, so 30 % of particles sit below 0.4.
    assert adaptive_threshold(scores, 0.3, weights=[10, 10, 10, 100, 5, 5]) == pytest.approx(0.4)
    assert adaptive_threshold(scores, 0.0, floor=0.15) == pytest.approx(0.15)
    assert adaptive_threshold([np.nan], 0.5) == -math.inf
    with pytest.raises(ValueError):
        adaptive_threshold(scores, 1.5)


# ----------------------------------------------------------------------------------------------------
# simulated classes


SIM = ClassSimConfig(box=64, angpix=4.0, n_images=60)


def test_simulated_classes_are_deterministic_and_labelled():
    a = simulate_class(SIM, 11)
    b = simulate_class(SIM, 11)
    np.testing.assert_array_equal(a.average, b.average)
    assert a.average.shape == (64, 64) and a.average.dtype == np.float32
    assert a.good and a.kind == "particle" and a.true_fraction == 1.0
    assert not np.array_equal(a.average, simulate_class(SIM, 12).average)
    junk = simulate_class(SIM, 11, true_fraction=0.2, junk="ice")
    assert not junk.good and junk.kind == "ice" and junk.composition == {"particle": 12, "ice": 48}
    with pytest.raises(ValueError, match="junk kind"):
        simulate_class(SIM, 1, junk="snow")


def test_simulated_numbers_follow_the_content():
    good = simulate_class(SIM, 3)
    more = simulate_class(SIM, 3, n_images=400)
    misaligned = simulate_class(SIM, 3, rot_jitter_deg=40.0, shift_jitter_A=25.0)
    empty = simulate_class(SIM, 3, true_fraction=0.0, junk="empty")
    assert more.resolution_A <= good.resolution_A < misaligned.resolution_A < empty.resolution_A
    assert good.acc_rot < misaligned.acc_rot and good.acc_trans_A < misaligned.acc_trans_A
    assert not misaligned.good and not empty.good
    # RELION-like averages: zero outside the soft mask.
    assert np.all(good.average[0] == 0)


def test_features_separate_simulated_good_and_junk_classes():
    good = simulate_class(SIM, 5)
    empty = simulate_class(SIM, 5, true_fraction=0.0, junk="empty")
    off = simulate_class(SIM, 5, true_fraction=0.0, junk="offcentre")

    def feats(c):
        return details(c.average, 4.0, c.mask_diameter_A, resolution_A=c.resolution_A)

    fg, fe, fo = feats(good), feats(empty), feats(off)
    assert fg.protein_area > 30 and fg.protein.mean > fg.solvent.mean
    assert fg.lowpass_stddev > 5 * fe.lowpass_stddev
    assert fo.ring.mean > fg.ring.mean + 0.2  # off-centre density reaches the mask edge
    assert fo.scattered_signal > fg.scattered_signal


def test_simulated_class_set_mixes_good_and_bad():
    classes = simulate_class_set(8, seed=4, good_fraction=0.5, config=SIM, n_images=(20, 40))
    arrays = stack_classes(classes)
    assert arrays["averages"].shape == (8, 64, 64)
    assert arrays["distribution"].sum() == pytest.approx(1.0)
    assert 3 <= arrays["good"].sum() <= 5  # 4 drawn good; a bad draw is never labelled good by chance here
    again = stack_classes(simulate_class_set(8, seed=4, good_fraction=0.5, config=SIM, n_images=(20, 40)))
    np.testing.assert_array_equal(arrays["averages"], again["averages"])


def test_duplicate_mask_keeps_the_better_copy_per_micrograph():
    from relion_plugins.rank.selection import duplicate_mask

    groups = np.array(["a", "a", "a", "b", "b", "a"])
    x = np.array([0.0, 20.0, 100.0, 10.0, 100.0, 129.0])
    y = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    prio = np.array([0.2, 0.9, 0.5, 0.1, 0.1, 0.6])
    drop = duplicate_mask(groups, x, y, 30.0, prio)
    # a: 1 (0.9) beats 0 (0.2, 20 Å away); 5 (0.6) beats 2 (0.5, 29 Å away); b: 3 and 4 are 90 Å apart
    assert drop.tolist() == [True, False, True, False, False, False]
    # without priorities: input order decides (RELION's rule)
    assert duplicate_mask(groups, x, y, 30.0).tolist() == [False, True, False, False, False, True]
    assert not duplicate_mask(groups, x, y, -1.0).any()
    assert duplicate_mask(np.array([]), np.array([]), np.array([]), 30.0).size == 0


def test_duplicate_mask_matches_brute_force():
    from relion_plugins.rank.selection import duplicate_mask

    rng = np.random.default_rng(11)
    n = 400
    groups = rng.integers(0, 3, n)
    x, y = rng.uniform(0, 500, n), rng.uniform(-200, 300, n)
    prio = rng.random(n)
    got = duplicate_mask(groups, x, y, 25.0, prio)
    want = np.zeros(n, bool)
    for g in range(3):
        idx = np.flatnonzero(groups == g)
        kept = []
        for i in idx[np.argsort(-prio[idx], kind="stable")]:
            if any(np.hypot(x[i] - x[k], y[i] - y[k]) < 25.0 for k in kept):
                want[i] = True
            else:
                kept.append(i)
    assert (got == want).all() and 0 < got.sum() < n
