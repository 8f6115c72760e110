"""Numerical core of the PU (Topaz-method) picker: normalisation, models, objectives, sampling."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from relion_plugins.evaluate.matching import average_precision, precision_recall_curve_per_micrograph
from relion_plugins.imaging.normalize import GmmNormalization, fit_gmm_normalization, standardize
from relion_plugins.pick.pu.models import (
    ARCHITECTURES,
    build_model,
    from_state,
    get_state,
    reconstruction_loss,
)
from relion_plugins.pick.pu.objectives import (
    GEBinomial,
    class_prior,
    disk_area,
    make_objective,
    unlabeled_prior,
)
from relion_plugins.pick.pu.sampling import CropSampler, positive_mask


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tiny convolutions gain nothing from threads, and OpenMP workers spin-waiting on a busy 2-core
    # machine made these tests ~30x slower; restore the setting for the other test modules.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------------
# normalisation


def test_standardize_plain_and_constant():
    rng = np.random.default_rng(0)
    z = standardize(rng.normal(5.0, 3.0, (64, 80)))
    assert z.dtype == np.float32
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.std()) - 1.0) < 1e-4
    c = standardize(np.full((8, 8), 7.0))
    assert c.dtype == np.float32 and np.all(c == 0)


def _mixture(rng, n, w1=0.3, mu=(10.0, 6.0), sd=(1.0, 2.0)):
    comp = rng.random(n) < w1
    return np.where(comp, rng.normal(mu[1], sd[1], n), rng.normal(mu[0], sd[0], n))


def test_gmm_recovers_scales_and_mixture():
    rng = np.random.default_rng(1)
    scales = np.exp(rng.uniform(math.log(0.5), math.log(2.0), 12))
    images = [(_mixture(rng, 128 * 128) * s).reshape(128, 128).astype(np.float32) for s in scales]
    norm = fit_gmm_normalization(images, seed=3)
    gm = math.exp(float(np.mean(np.log(scales))))  # the fit fixes the geometric mean of the scales to 1
    assert np.allclose(norm.scales, scales / gm, rtol=0.01)
    b, o = norm.background, 1 - norm.background
    assert abs(norm.weights[b] - 0.7) < 0.02
    assert norm.means[b] / gm == pytest.approx(10.0, rel=0.01)
    assert norm.means[o] / gm == pytest.approx(6.0, rel=0.03)
    assert math.sqrt(norm.variances[b]) / gm == pytest.approx(1.0, rel=0.03)
    assert math.sqrt(norm.variances[o]) / gm == pytest.approx(2.0, rel=0.03)

    # A new micrograph: its scale from the stored globals alone, after a JSON round trip.
    restored = GmmNormalization.from_dict(json.loads(json.dumps(norm.to_dict())))
    labels = rng.random(256 * 256) < 0.3
    pix = np.where(labels, rng.normal(6.0, 2.0, labels.size), rng.normal(10.0, 1.0, labels.size))
    new = (pix * 1.7).reshape(256, 256)
    assert restored.estimate_scale(new) == pytest.approx(1.7 / gm, rel=0.01)
    z = restored.apply(new).ravel()
    assert z.dtype == np.float32
    assert abs(float(z[~labels].mean())) < 0.03 and float(z[~labels].std()) == pytest.approx(1.0, abs=0.03)


def test_gmm_fit_is_fast_on_30_large_micrographs():
    rng = np.random.default_rng(2)
    base = _mixture(rng, 1024 * 1024).reshape(1024, 1024).astype(np.float32)
    images = [base * np.float32(s) for s in np.linspace(0.5, 2.0, 30)]
    t0 = time.process_time()
    norm = fit_gmm_normalization(images, seed=0)
    elapsed = time.process_time() - t0
    assert elapsed < 2.0, f"fit took {elapsed:.2f} s CPU"
    assert np.allclose(norm.scales / norm.scales[0], np.linspace(0.5, 2.0, 30) / 0.5, rtol=0.01)


# ---------------------------------------------------------------------------------------------------------
# models


def _randomise_batch_norm(model: torch.nn.Module) -> None:
    # Non-trivial running statistics so that eval-mode alignment tests are not helped by identity BN.
    g = torch.Generator().manual_seed(0)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.3, 0.3, generator=g)
            mod.running_var.uniform_(0.5, 2.0, generator=g)


@pytest.mark.parametrize(
    "name,rf", [("conv31", 31), ("conv63", 63), ("conv127", 127), ("resnet8", 71), ("resnet16", 91)]
)
def test_score_map_dense_aligned_and_local(name, rf):
    torch.manual_seed(0)
    model = build_model(name, units=4)
    _randomise_batch_norm(model)
    assert model.receptive_field == rf
    img = torch.randn(24, rf + 12)
    smap = model.score_map(img)
    assert smap.shape == img.shape
    assert model.training  # score_map restores the mode it found

    # map[y, x] is the training-mode logit of the crop centred on (y, x) of the mirror-padded image.
    r = rf // 2
    padded = np.pad(img.numpy(), r, mode="reflect")
    ys, xs = np.array([0, 12, 23, 7]), np.array([0, rf // 2, rf + 11, rf])
    crops = torch.from_numpy(np.stack([padded[y : y + rf, x : x + rf] for y, x in zip(ys, xs)]))
    model.eval()
    assert torch.allclose(model(crops), smap[ys, xs], atol=1e-5)
    assert torch.allclose(model.score_map(img, tile=13), smap, atol=1e-5)  # tiling changes nothing

    # Pixels outside the receptive field do not matter at all ...
    y, x = 12, 5
    far = img.clone()
    far[:, x + r + 1 :] += 50.0 * torch.randn(far.shape[0], far.shape[1] - x - r - 1)
    assert model.score_map(far)[y, x] == smap[y, x]
    # ... and the receptive field is not overstated: its outermost rows and columns have an influence
    # (tiny in deep nets at initialisation, hence a gradient rather than a perturbation).
    crop = torch.randn(1, 1, rf, rf, requires_grad=True)
    model(crop).sum().backward()
    g = crop.grad[0, 0]
    assert all(bool(torch.any(edge != 0)) for edge in (g[0], g[-1], g[:, 0], g[:, -1]))


def test_model_state_round_trip_and_decoder():
    torch.manual_seed(1)
    model = build_model("resnet8", units=4, dropout=0.1, decoder=True, decoder_units=4)
    state = get_state(model)
    json.dumps(state["architecture"])  # plain JSON fields
    assert state["architecture"]["receptive_field"] == 71
    rebuilt = from_state(state)
    crops = torch.randn(5, 1, 75, 75)  # larger than the receptive field: centre-cropped
    model.eval()
    rebuilt.eval()
    assert torch.equal(model(crops), rebuilt(crops))
    images = np.random.default_rng(0).normal(size=(2, 20, 30)).astype(np.float32)
    maps = model.score_map(images)  # a batch, from numpy
    assert maps.shape == (2, 20, 30)
    assert torch.allclose(maps[1], model.score_map(torch.from_numpy(images[1])), atol=1e-6)
    logits, recon, target = model.forward_with_reconstruction(crops)
    assert logits.shape == (5,) and recon.shape == target.shape == (5, 1, 63, 63)
    assert float(reconstruction_loss(recon, target).detach()) > 0
    with pytest.raises(ValueError):
        model(torch.randn(2, 1, 70, 70))  # even-sized crops have no centre pixel
    with pytest.raises(ValueError):
        build_model("vgg16")
    assert set(ARCHITECTURES) == {"conv31", "conv63", "conv127", "resnet8", "resnet16"}


# ---------------------------------------------------------------------------------------------------------
# objectives


@pytest.mark.parametrize("name", ["PN", "NNPU", "GE-KL", "GE-binomial"])
def test_objective_gradient_raises_positive_logits(name):
    torch.manual_seed(0)
    pos = torch.zeros(16, requires_grad=True)
    unl = (0.5 * torch.randn(240)).requires_grad_()
    obj = make_objective(name, 0.05)
    loss, metrics = obj.loss(pos, unl)
    loss.backward()
    assert torch.isfinite(loss) and isinstance(metrics["loss"], float)
    assert torch.all(pos.grad < 0)  # gradient descent moves every positive logit up


def test_pn_without_prior_and_unknown_name():
    loss, _ = make_objective("pn", None).loss(torch.full((4,), 3.0), torch.full((12,), -3.0))
    assert float(loss) == pytest.approx(math.log1p(math.exp(-3.0)), rel=1e-5)
    with pytest.raises(ValueError):
        make_objective("bogus", 0.1)


def test_ge_binomial_is_minimal_near_pi():
    pi, n = 0.1, 240
    obj = GEBinomial(pi)
    ps = np.linspace(0.02, 0.3, 281)
    values = [float(obj.penalty(torch.full((n,), math.log(p / (1 - p))))) for p in ps]
    assert abs(ps[int(np.argmin(values))] - pi) < 0.01
    # the gradient of the GE term pushes a too-high unlabelled fraction down and a too-low one up
    for p, sign in ((0.2, 1.0), (0.05, -1.0)):
        logits = torch.full((n,), math.log(p / (1 - p)), requires_grad=True)
        obj.penalty(logits).backward()
        assert torch.all(torch.sign(logits.grad) == sign)


def test_nnpu_risk_is_non_negative():
    obj = make_objective("NNPU", 0.2)
    rng = torch.Generator().manual_seed(0)
    for _ in range(50):
        pos = 4.0 * torch.randn(16, generator=rng)
        unl = 4.0 * torch.randn(240, generator=rng) - 3.0
        _, m = obj.loss(pos, unl)
        assert m["risk"] >= 0.0
    # Overfit regime: the unbiased negative risk goes below zero -> corrected step that raises unl logits.
    pos = torch.full((16,), 6.0, requires_grad=True)
    unl = torch.full((240,), -8.0, requires_grad=True)
    loss, m = obj.loss(pos, unl)
    assert m["corrected"] == 1.0 and m["negative_risk"] < 0 and m["risk"] >= 0
    loss.backward()
    assert torch.all(unl.grad < 0)


def test_priors():
    assert disk_area(0) == 1 and disk_area(1) == 5 and disk_area(3) == 29
    assert class_prior(100, 3, 1000 * 1000) == pytest.approx(100 * 29 / 1e6)
    assert unlabeled_prior(0.1, 0.02) == pytest.approx(0.08 / 0.98)
    with pytest.raises(ValueError):
        unlabeled_prior(0.01, 0.02)


# ---------------------------------------------------------------------------------------------------------
# sampling


def test_positive_mask_disks():
    m = positive_mask((40, 50), np.array([[20.2, 10.4], [-5.0, 3.0], [49.0, 39.0]]), 3)
    assert m[10, 20] and not m[10, 24] and m[10, 23]
    # interior particle: full disk; corner particle: clipped quarter; outside centre: ignored
    assert int(m[:20, :].sum()) == disk_area(3)
    assert int(m[30:, 40:].sum()) == 11


def test_sampler_crops_labels_and_determinism():
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(60, 75)).astype(np.float32), rng.normal(size=(45, 50)).astype(np.float32)]
    coords = [rng.uniform(0, 44, (6, 2)), np.zeros((0, 2))]
    kw = dict(radius=3, crop=21, batch_size=64, positive_fraction=0.25, seed=7)
    sampler = CropSampler(images, coords, **kw)
    assert sampler.n_positive == 16 and sampler.n_unlabeled == 48
    img, y, x, labels = sampler.draw()
    masks = [positive_mask(im.shape, xy, 3) for im, xy in zip(images, coords)]
    hit = np.array([masks[i][yy, xx] for i, yy, xx in zip(img, y, x)])
    assert np.array_equal(hit, labels == 1)  # positives inside the disks, unlabelled outside

    crops = sampler.extract(img, y, x)
    for k in range(len(img)):
        padded = np.pad(images[img[k]], 10, mode="reflect")
        assert np.array_equal(crops[k], padded[y[k] : y[k] + 21, x[k] : x[k] + 21])
    for t in range(8):
        flipped = crops[:, :, ::-1] if t >= 4 else crops
        assert np.array_equal(
            sampler.extract(img, y, x, np.full(len(img), t)), np.rot90(flipped, t % 4, axes=(1, 2))
        )

    a, la = CropSampler(images, coords, **kw).sample()
    b, lb = CropSampler(images, coords, **kw).sample()
    assert a.shape == (64, 1, 21, 21) and a.dtype == torch.float32
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert float(la[:16].min()) == 1.0 and float(la[16:].max()) == 0.0
    with pytest.raises(ValueError):
        CropSampler(images, coords, radius=3, crop=20)


# ---------------------------------------------------------------------------------------------------------
# end to end: a tiny conv31 trained with GE-binomial from 10% labelled blobs finds the others


def _blob_micrographs(rng, n_images, size=128, n_blobs=20, sigma=2.5, min_dist=14):
    images, centres = [], []
    yy, xx = np.mgrid[:size, :size]
    for _ in range(n_images):
        pts: list[np.ndarray] = []
        while len(pts) < n_blobs:
            p = rng.uniform(8, size - 8, 2)
            if all(np.hypot(*(p - q)) >= min_dist for q in pts):
                pts.append(p)
        img = rng.normal(0.0, 1.0, (size, size))
        for x, y in pts:
            img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
        images.append(standardize(ndi.gaussian_filter(img, 1.0)))  # correlated noise, blob SNR ~ 1
        centres.append(np.array(pts))
    return images, centres


def _aupr(score_maps, truth, radius=4.0):
    picks, scores = {}, {}
    for i, s in enumerate(score_maps):
        yy, xx = np.nonzero(s == ndi.maximum_filter(s, size=9))
        picks[i], scores[i] = np.stack([xx, yy], axis=1), s[yy, xx]
    curve = precision_recall_curve_per_micrograph(picks, scores, dict(enumerate(truth)), radius=radius)
    return average_precision(curve)


def test_end_to_end_ge_binomial_finds_unlabelled_blobs():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images, centres = _blob_micrographs(rng, 6)
    labelled = [c[rng.random(len(c)) < 0.1] for c in centres]
    assert 4 <= sum(len(c) for c in labelled) <= 20

    model = build_model("conv31", units=8)
    radius = 3
    sampler = CropSampler(images, labelled, radius, model.receptive_field, batch_size=64, seed=0)
    pi = unlabeled_prior(class_prior(20, radius, 128 * 128), sampler.labeled_fraction)
    objective = make_objective("GE-binomial", pi)
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    fractions = []
    for _ in range(150):
        crops, _ = sampler.sample()
        logits = model(crops)
        loss, metrics = objective.loss(logits[: sampler.n_positive], logits[sampler.n_positive :])
        optim.zero_grad()
        loss.backward()
        optim.step()
        fractions.append(metrics["unlabeled_positive_fraction"])
    # the GE constraint holds the predicted positive share of the unlabelled near pi
    assert pi / 2 < np.mean(fractions[-30:]) < 2 * pi

    test_images, test_centres = _blob_micrographs(np.random.default_rng(100), 3)
    maps = [model.score_map(torch.from_numpy(im)).numpy() for im in test_images]
    aupr = _aupr(maps, test_centres)
    chance = _aupr(
        [np.random.default_rng(i).random(im.shape) for i, im in enumerate(test_images)], test_centres
    )
    assert chance < 0.15
    assert aupr > 0.7, f"AUPR {aupr:.3f} (chance {chance:.3f})"


def test_shipped_weights_load_into_a_fresh_model():
    """The shipped starting weights exist for the default network and load completely."""
    from relion_plugins.pick.pu.pretrain import load_pretrained, weights_path

    model = build_model("resnet8", units=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    meta = load_pretrained(model, "resnet8", 32)
    assert weights_path("resnet8", 32).is_file() and meta is not None
    assert meta["provenance"]["particles"] > 1000
    changed = [k for k, v in model.state_dict().items() if k.endswith("weight") and not torch.equal(v, before[k])]
    assert len(changed) >= 10
    assert load_pretrained(build_model("conv31", units=8), "conv31", 8) is None  # none shipped: unchanged
