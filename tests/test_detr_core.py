"""The transformer picker's parts: matching, GIoU, deformable attention, denoising queries, preprocessing,
augmentation, and a tiny configuration that learns two simulated micrographs on CPU."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from relion_plugins.pick.detr.augment import offline_augment, online_augment, rot90_points
from relion_plugins.pick.detr.deformable import MSDeformAttn, ms_deform_attn
from relion_plugins.pick.detr.denoising import make_denoising_queries
from relion_plugins.pick.detr.matcher import cxcywh_to_xyxy, generalized_box_iou, hungarian_match, match_cost
from relion_plugins.pick.detr.model import TINY, build_model
from relion_plugins.pick.detr.preprocess import PreprocessConfig, clahe, equalize_histogram, patches, prepare
from relion_plugins.pick.detr.train import TrainConfig, train_detr
from relion_plugins.pick.model_file import ModelFile, load_model, save_model

torch.set_num_threads(1)


def test_hungarian_matches_brute_force():
    gen = torch.Generator().manual_seed(1)
    for q, t in [(5, 3), (4, 4), (6, 2)]:
        logits = torch.randn(1, q, generator=gen)
        boxes = torch.rand(1, q, 4, generator=gen) * 0.5 + 0.2
        target = torch.rand(t, 4, generator=gen) * 0.5 + 0.2
        ((qi, ti),) = hungarian_match(logits, boxes, [target])
        cost = match_cost(logits[0], boxes[0], target, 2.0, 5.0, 2.0).numpy()
        best = min(sum(cost[p[j], j] for j in range(t)) for p in itertools.permutations(range(q), t))
        assert len(qi) == t and sorted(ti) == list(range(t))
        assert cost[qi, ti].sum() == pytest.approx(best, abs=1e-5)


def test_generalized_iou():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    assert generalized_box_iou(a, a).item() == pytest.approx(1.0)
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])  # IoU 1/7, hull 9, union 7 -> 1/7 - 2/9
    assert generalized_box_iou(a, b).item() == pytest.approx(1 / 7 - 2 / 9)
    c = torch.tensor([[4.0, 0.0, 6.0, 2.0]])  # disjoint: IoU 0, hull 12, union 8
    assert generalized_box_iou(a, c).item() == pytest.approx(-4 / 12)
    assert torch.allclose(cxcywh_to_xyxy(torch.tensor([[1.0, 1.0, 2.0, 2.0]])), a)


def test_deformable_attention_samples_and_backpropagates():
    # values 0..(h*w-1) at one level: sampling at a pixel centre returns that pixel's value
    h, w = 4, 5
    value = torch.arange(h * w, dtype=torch.float32).view(1, h * w, 1, 1)
    loc = torch.tensor([(2 + 0.5) / w, (1 + 0.5) / h]).view(1, 1, 1, 1, 1, 2)
    out = ms_deform_attn(value, [(h, w)], loc, torch.ones(1, 1, 1, 1, 1))
    assert out.item() == pytest.approx(1 * w + 2)
    attn = MSDeformAttn(dim=16, levels=2, heads=4, points=3)
    torch.manual_seed(0)
    for lin in (
        attn.offsets,
        attn.attn,
    ):  # zero at initialisation by design; random here to test the gradients
        torch.nn.init.normal_(lin.weight, std=0.1)
    shapes = [(8, 8), (4, 4)]
    memory = torch.randn(2, 80, 16, requires_grad=True)
    query = torch.randn(2, 7, 16, requires_grad=True)
    ref = torch.rand(2, 7, 2, 4)
    y = attn(query, ref, memory, shapes)
    assert y.shape == (2, 7, 16)
    y.square().sum().backward()
    assert memory.grad.abs().sum() > 0 and query.grad.abs().sum() > 0
    assert attn.offsets.weight.grad.abs().sum() > 0  # gradients reach the sampling locations


def test_denoising_queries():
    targets = [torch.tensor([[0.3, 0.3, 0.1, 0.1], [0.6, 0.6, 0.1, 0.1]]), torch.zeros(0, 4)]
    gen = torch.Generator().manual_seed(0)
    dn = make_denoising_queries(targets, 10, 20, 0.0, 0.4, 1.0, gen)
    assert dn.groups == 5 and dn.per_group == 4 and dn.size == 20
    assert (dn.target_index[1] == -1).all()  # an image without particles: padding only
    idx = dn.target_index[0]
    true = targets[0][idx]
    shift = (dn.boxes[0, :, :2] - true[:, :2]).abs() / (0.5 * true[:, 2:])
    pos, neg = dn.positive[0], ~dn.positive[0]
    assert pos.sum() == 10 and neg.sum() == 10
    assert (shift[pos] < 0.4 + 1e-6).all()
    assert (shift[neg] >= 0.4 - 1e-6).all() and (shift[neg] < 1.0 + 1e-6).all()
    assert (dn.labels[0] == 1).all()  # lambda_l = 0: no label flipped
    m = dn.attn_mask
    assert m.shape == (30, 30)
    assert m[20:, :20].all() and not m[:20, 20:].any()  # matching queries never see denoising ones
    assert not m[0:4, 0:4].any() and m[0:4, 4:20].all()  # a group sees only itself (and the matching ones)
    flipped = make_denoising_queries(targets, 10, 400, 0.5, 0.4, 1.0, gen)
    rate = (flipped.labels[0] == 0).float().mean().item()
    assert 0.35 < rate < 0.65
    with pytest.raises(ValueError):
        make_denoising_queries(targets, 10, 20, 0.5, 1.0, 0.4)


def test_denoising_queries_do_not_leak_into_matching_outputs():
    # The matching queries must not see the noised true boxes: their outputs in training with denoising
    # queries equal those without (otherwise CDN teaches a shortcut that is gone at picking time).
    torch.manual_seed(0)
    model = build_model("tiny").train()
    images = torch.randn(2, 1, 128, 128)
    targets = [torch.tensor([[0.3, 0.3, 0.1, 0.1], [0.6, 0.6, 0.1, 0.1]]), torch.tensor([[0.5, 0.2, 0.1, 0.1]])]
    plain = model(images)
    with_dn = model(images, targets, torch.Generator().manual_seed(1))
    assert with_dn["dn"]["queries"].size > 0 and "dn" not in plain
    for key in ("logits", "boxes"):
        assert torch.allclose(plain[key], with_dn[key], atol=1e-5)
    # and the denoising outputs do depend on the noised boxes they were given
    other = model(images, targets, torch.Generator().manual_seed(2))
    assert not torch.allclose(with_dn["dn"]["layers"][-1]["boxes"], other["dn"]["layers"][-1]["boxes"])


def test_preprocessing_and_patches():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(96, 80)).astype(np.float32)
    for eq in (clahe(img, tiles=4), equalize_histogram(img)):
        assert eq.shape == img.shape and eq.min() >= 0 and eq.max() <= 1
    out = prepare(img, 2.0, 4.0, PreprocessConfig())
    assert out.shape == (48, 40) and abs(out.mean()) < 1e-3 and out.std() == pytest.approx(1, abs=1e-3)
    # patch cores tile the image exactly once
    cover = np.zeros((300, 200), int)
    for y0, x0, (ylo, yhi, xlo, xhi) in patches(cover.shape, 128, 32):
        assert y0 <= ylo and yhi <= y0 + 128 and x0 <= xlo and xhi <= x0 + 128
        cover[ylo:yhi, xlo:xhi] += 1
    assert (cover == 1).all()


def test_augmentation_moves_coordinates_with_pixels():
    img = np.zeros((20, 30), np.float32)
    xy = np.array([[3.0, 5.0], [25.0, 12.0]])
    img[5, 3] = img[12, 25] = 1
    for k in range(4):
        r = np.rot90(img, k)
        p = rot90_points(xy, img.shape, k).round().astype(int)
        assert (r[p[:, 1], p[:, 0]] == 1).all()
    images, coords = offline_augment([img], [xy], crops=2, crop_size=16)
    assert len(images) == 10
    for im, c in zip(images, coords):
        c = c.round().astype(int)
        assert (im[c[:, 1], c[:, 0]] == 1).all()
    t = torch.zeros(1, 16, 16)
    t[0, 4, 10] = 1
    box = torch.tensor([[(10 + 0.5) / 16, (4 + 0.5) / 16, 0.1, 0.1]])
    for seed in range(6):
        a, b = online_augment(t, box, torch.Generator().manual_seed(seed), contrast=0, noise=0)
        x, y = (b[0, :2] * 16 - 0.5).round().long().tolist()
        assert a[0, y, x] == a.max()


@pytest.fixture(scope="module")
def two_micrographs(tmp_path_factory):
    from relion_plugins.relion.mrc import read_mrc
    from relion_plugins.simulate import make_project

    sim = make_project(
        tmp_path_factory.mktemp("detr") / "p", n_micrographs=2, shape=(512, 512), angpix=4.0, seed=3
    )
    work = sim.diameter_A / 16
    imgs, xys = [], []
    for name in sim.micrograph_names:
        raw, _ = read_mrc(sim.micrograph_path(name))
        im = prepare(raw, 4.0, work, PreprocessConfig())
        imgs.append(im)
        xys.append(np.asarray(sim.truth[name], float) * im.shape[1] / raw.shape[1])
    return imgs, xys


def test_tiny_config_learns_two_micrographs(two_micrographs):
    from relion_plugins.evaluate.matching import best_f1, precision_recall_curve
    from relion_plugins.pick.detr.predict import detect

    imgs, xys = two_micrographs

    def f1(model) -> float:
        x, y, s = detect(model, imgs[0], 128, overlap=16, nms_radius=8)
        return best_f1(precision_recall_curve(np.stack([x, y], 1), s, xys[0], 8.0))[0]

    cfg = TrainConfig(crop=128, learning_rate=2e-3, steps_per_epoch=50, max_epochs=3, seed=0)
    res = train_detr(imgs, xys, 16.0, cfg, "tiny", validate=f1)
    assert res.history[-1]["loss"] < 0.7 * res.history[0]["loss"]
    assert res.best_score > 0.45, res.history  # about 0.55 after 150 minibatches; untrained: < 0.15


def test_one_eight_view_pass_serves_one_four_and_eight_views(two_micrographs):
    """Validation scores 1, 4 and 8 views from one pass (detect_views): its first views must give what
    detect gives for fewer views."""
    from relion_plugins.pick.detr.predict import detect, detect_views, finish_detections

    imgs, xys = two_micrographs
    model = train_detr(imgs, xys, 16.0, TrainConfig(crop=64, steps_per_epoch=3, max_epochs=1, seed=2), "tiny").model
    img = imgs[0][:200, :160]  # not square: views 1 and 3 swap the axes
    passes = detect_views(model, img, 64, 8, overlap=16)
    floor = float(np.median(passes[0][2]))  # an untrained model's scores are low: cut inside them
    for views in (1, 4, 8):
        want = detect(model, img, 64, overlap=16, nms_radius=6.0, min_score=floor, views=views)
        got = finish_detections(passes[:views], img.shape, model.config.anchor_px, floor, 6.0)
        assert len(want[0]) > 0
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)


def test_detect_views_checks_for_abort_before_each_view():
    from relion_plugins.pick.detr.model import build_model
    from relion_plugins.pick.detr.predict import detect_views

    calls = []

    def check_abort() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("aborted")

    with pytest.raises(RuntimeError, match="aborted"):
        detect_views(build_model("tiny").eval(), np.zeros((64, 64), np.float32), 64, 8, check_abort=check_abort)
    assert len(calls) == 3  # stopped at the third view, not after all eight


def test_seeded_training_is_deterministic(two_micrographs):
    imgs, xys = two_micrographs
    cfg = TrainConfig(crop=64, steps_per_epoch=3, max_epochs=1, seed=5)
    a = train_detr(imgs, xys, 16.0, cfg, "tiny").model.state_dict()
    b = train_detr(imgs, xys, 16.0, cfg, "tiny").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("drops, epochs_run", [(0, 3), (1, 6)])
def test_plateau_lowers_rate_before_stopping(two_micrographs, drops, epochs_run):
    imgs, xys = two_micrographs
    scores = iter([0.5, 0.4, 0.4, 0.6, 0.3, 0.3, 0.9])
    cfg = TrainConfig(crop=64, steps_per_epoch=1, max_epochs=7, patience=2, lr_drops=drops, seed=5)
    res = train_detr(imgs, xys, 16.0, cfg, "tiny", validate=lambda m: next(scores))
    assert len(res.history) == epochs_run
    assert [r["epoch"] for r in res.history if r.get("lr_drop")] == ([3] if drops else [])
    assert res.best_epoch == (4 if drops else 1)


def test_weight_average_follows_the_closed_form():
    from relion_plugins.pick.detr.train import WeightAverage

    net = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        net[0].weight.fill_(0.0)
    avg = WeightAverage(net, decay=0.9)
    want = 0.0
    for n, value in enumerate([1.0, 2.0, 3.0, 4.0], start=1):
        with torch.no_grad():
            net[0].weight.fill_(value)
        net[1].num_batches_tracked += 1
        avg.update(net)
        d = min(0.9, (1 + n) / (10 + n))  # the decay ramps up from 2/11
        want = d * want + (1 - d) * value
    torch.testing.assert_close(avg.model[0].weight, torch.full((1, 2), want))
    assert int(avg.model[1].num_batches_tracked) == 4  # integer buffers are copied, not averaged
    assert not avg.model[0].weight.requires_grad


def test_averaged_weights_are_validated_and_kept(two_micrographs):
    """With ema_decay the validation callback sees the average, whose best epoch is what training returns."""
    imgs, xys = two_micrographs
    seen: list[tuple[int, dict]] = []
    scores = iter([0.2, 0.7, 0.1])

    def validate(model) -> float:
        seen.append((id(model), {k: v.clone() for k, v in model.state_dict().items()}))
        return next(scores)

    cfg = TrainConfig(crop=64, steps_per_epoch=2, max_epochs=3, patience=5, seed=5, ema_decay=0.9)
    res = train_detr(imgs, xys, 16.0, cfg, "tiny", validate=validate)
    assert res.best_epoch == 2
    assert all(i != id(res.model) for i, _ in seen)  # the averaged copy, not the trained network
    kept = res.model.state_dict()
    assert all(torch.equal(kept[k], seen[1][1][k]) for k in kept)
    plain = train_detr(imgs, xys, 16.0, TrainConfig(crop=64, steps_per_epoch=2, max_epochs=2, seed=5), "tiny")
    raw = plain.model.state_dict()  # the same minibatches without averaging end elsewhere
    assert not all(torch.equal(kept[k], raw[k]) for k in kept if kept[k].dtype.is_floating_point)


def test_model_file_round_trip(tmp_path):
    model = build_model(TINY).eval()
    meta = {"angpix": 9.4, "diameter_A": 150.0, "normalization": {"method": "upicker"}, "crop": 128}
    save_model(tmp_path / "m.pt", ModelFile("detr", model.config.to_dict(), model.state_dict(), meta))
    mf = load_model(tmp_path / "m.pt", picker="detr")
    again = build_model(mf.arch).eval()
    again.load_state_dict(mf.state)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)["logits"], again(x)["logits"])
    assert mf.arch["name"] == "detr-resnet_tiny" and mf.angpix == pytest.approx(9.4)


@pytest.mark.parametrize("shape", [(40, 40), (37, 52)])
def test_view_points_map_back_to_the_image(shape):
    from relion_plugins.pick.detr.predict import points_from_view, view_of

    rng = np.random.default_rng(len(shape) + shape[1])
    for _ in range(5):
        y, x = int(rng.integers(shape[0])), int(rng.integers(shape[1]))
        img = np.zeros(shape, np.float32)
        img[y, x] = 1
        for k in range(8):
            v = view_of(img, k)
            vy, vx = np.unravel_index(np.argmax(v), v.shape)
            bx, by = points_from_view(np.array([vx]), np.array([vy]), shape, k)
            assert (bx[0], by[0]) == (x, y), (k, shape)
    assert len({view_of(np.arange(12.0).reshape(3, 4), k).tobytes() for k in range(8)}) == 8


def test_fuse_views_averages_over_views():
    from relion_plugins.pick.detr.predict import fuse_views

    a = (np.array([10.0, 50.0, 52.0]), np.array([10.0, 50.0, 50.0]), np.array([0.9, 0.9, 0.2]))
    b = (np.array([11.0]), np.array([10.0]), np.array([0.6]))
    c = (np.array([9.0, 80.0]), np.array([12.0, 80.0]), np.array([0.3, 0.1]))
    x, y, s = fuse_views([a, b, c], radius=5.0)
    # the particle seen in every view; noise seen in one; a second detection of a's view is not fused into
    # the first (one per view); the lone detection of the last view
    assert s == pytest.approx([0.6, 0.3, 0.2 / 3, 0.1 / 3])
    assert (x[0], y[0]) == pytest.approx(((9 + 6.6 + 2.7) / 1.8, (9 + 6 + 3.6) / 1.8))
    assert (x[1], y[1]) == (50.0, 50.0) and (x[2], y[2]) == (52.0, 50.0) and (x[3], y[3]) == (80.0, 80.0)
    empty = (np.zeros(0), np.zeros(0), np.zeros(0))
    assert all(len(v) == 0 for v in fuse_views([empty, empty], 3.0))
