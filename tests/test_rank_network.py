"""The class-ranker network (rank/network.py) and its training code (rank/training.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relion_plugins.pick.model_file import ModelFileError
from relion_plugins.rank.network import (
    DEFAULT_WEIGHTS,
    build_network,
    default_arch,
    load_ranker,
    prepare_inputs,
    save_ranker,
)
from relion_plugins.rank.training import (
    TRAIN_BANKS,
    TrainingData,
    quality_target,
    roc_auc,
    simulate_job,
    train_ranker,
)

torch.set_num_threads(1)


def test_shapes_size_and_score_range():
    net = build_network()
    n_params = sum(p.numel() for p in net.parameters())
    assert 10_000 <= n_params <= 100_000
    torch.manual_seed(0)
    x = torch.randn(5, 64, 64) * 100
    f = torch.randn(5, 24) * 100
    logits = net(x, f)
    assert logits.shape == (5,)
    s = net.score(x, f)
    assert s.shape == (5,) and bool(((s >= 0) & (s <= 1)).all())
    assert net.training  # score() restores the mode
    assert net(x.unsqueeze(1), f).shape == (5,)


def test_prepare_inputs_is_scale_free_and_handles_nan():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(4, 64, 64)).astype(np.float32)
    feat = rng.normal(size=(4, 24)).astype(np.float32)
    feat[2] = np.nan  # an unscored class
    feat[0, 3] = 1e6
    a, fa = prepare_inputs(img, feat)
    b, fb = prepare_inputs(img * 37.0, feat)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert np.isfinite(fa).all() and (fa[2] == 0).all() and fa[0, 3] == 10.0
    with pytest.raises(ValueError):
        prepare_inputs(img, feat[:3])


def test_roc_auc_matches_pair_counting():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, 40).astype(float)  # many ties
    y = rng.random(40) < 0.4
    pairs = [(a > b) + 0.5 * (a == b) for a in s[y] for b in s[~y]]
    assert roc_auc(s, y) == pytest.approx(np.mean(pairs))
    assert np.isnan(roc_auc(s, np.ones(40, bool)))


def test_quality_target():
    np.testing.assert_allclose(quality_target([0.0, 0.3, 0.5, 0.7, 1.0]), [0, 0, 0.5, 1, 1])


def _tiny_data(n: int = 48) -> TrainingData:
    rng = np.random.default_rng(2)
    good = np.arange(n) % 2 == 0
    img = rng.normal(size=(n, 64, 64)).astype(np.float32)
    img[good, 24:40, 24:40] += 2.0  # a blob in the good ones
    feat = rng.normal(size=(n, 24)).astype(np.float32)
    return TrainingData(
        images=img,
        features=feat,
        target=good.astype(np.float32),
        good=good,
        job=np.arange(n) // 4,
        weight=np.ones(n, np.float32),
    )


def test_training_is_deterministic_and_learns(tmp_path):
    data = _tiny_data()
    a = train_ranker(data, epochs=4, seed=3, lr=3e-3)
    b = train_ranker(data, epochs=4, seed=3, lr=3e-3)
    for (ka, va), (kb, vb) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert a.history[-1]["loss"] < a.history[0]["loss"]
    path = save_ranker(tmp_path / "r.pt", a.net, a.arch, {"provenance": {"n_classes": len(data)}})
    r = load_ranker(path)
    s = r.score_job(data.images, data.features)
    assert s.shape == (len(data),) and ((s >= 0) & (s <= 1)).all()
    assert r.arch == default_arch()


def test_bad_model_files(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_ranker(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ModelFileError):
        load_ranker(tmp_path / "junk.pt")


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="default weights not built yet")
def test_shipped_weights_separate_fresh_simulated_classes():
    """A seed never used in training; one job per particle bank (6 banks, ~80 classes)."""
    ranker = load_ranker()
    assert ranker.meta["provenance"]["n_classes"] > 1000
    from relion_plugins.rank.training import _job_arrays

    scores, good = [], []
    for i, bank in enumerate(TRAIN_BANKS[::2]):
        classes, cfg = simulate_job([987654, i], bank)
        img, feat, scored = _job_arrays(classes, cfg)
        scores.append(ranker.score_job(img, feat))
        good.append(np.array([c.good for c in classes])[scored])
    s, g = np.concatenate(scores), np.concatenate(good)
    assert g.sum() >= 10 and (~g).sum() >= 10
    auc = roc_auc(s, g)
    assert auc > 0.9, auc
    assert ((s >= 0.5) == g).mean() > 0.8
