"""Shipped starting weights for the PU picker, and how they are made.

Topaz starts training from weights pretrained on many labelled data sets; with 10 labelled particles most of
what its network knows comes from there. Ours does the same with weights trained on simulated micrographs of
six particles (three atomic maps, three phantoms) at several signal-to-noise ratios, every particle
labelled, at the working scale that the train job uses by default (the particle ``SCALED_DIAMETER`` px
wide). The benchmark's simulated particle (the ``globular`` phantom) and its seeds are never used here.

``make_pretrained`` reproduces the shipped file (``relion-plugins pu pretrain``); ``load_pretrained``
copies the weights into a freshly built network of the same architecture, so that training continues from
them. Nothing is downloaded at run time: the file is package data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where the weights are used: the CLI reads the defaults without it
    from .models import PUClassifier

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SCALED_DIAMETER = 24.0  # px: the train job's default --scaled_diameter
DEFAULT_SEED = 20261121
DEFAULT_MICROGRAPHS = 8  # per set
DEFAULT_STEPS = 2000


@dataclass(frozen=True)
class PretrainSet:
    """One simulated data set of the pretraining mix."""

    particle: str  # phantom name or map alias (simulate.phantoms / the shared maps)
    angpix: float  # Å/px of the simulated micrographs
    snr: tuple[float, float]


# Particles of 100-300 Å at pixel sizes that put them 25-60 px wide before downsampling, with the
# simulator's default junk; noise from easy to harder than the benchmark's 0.1.
PRETRAIN_SETS: tuple[PretrainSet, ...] = (
    PretrainSet("apoferritin", 3.0, (0.05, 0.2)),
    PretrainSet("ribosome", 5.0, (0.05, 0.2)),
    PretrainSet("spliceosome", 5.0, (0.05, 0.2)),
    PretrainSet("twolobe", 4.5, (0.05, 0.2)),
    PretrainSet("ring", 4.0, (0.05, 0.2)),
    PretrainSet("small", 2.5, (0.05, 0.2)),
)


def weights_path(arch: str, units: int) -> Path:
    """Where the shipped weights of ``arch`` with ``units`` first-layer filters live (may not exist)."""
    return WEIGHTS_DIR / f"{arch}_u{int(units)}.pt"


def load_weights(model: PUClassifier, path: str | Path) -> dict:
    """Copy the weights of the model file at ``path`` into ``model`` (same architecture); returns the file's
    metadata. A decoder (autoencoder) missing from the file keeps its own initialisation.

    Raises ValueError when the file holds a different network: half-copied weights are worse than random."""
    from ..model_file import load_model

    mf = load_model(path, picker="pu")
    own = model.state_dict()
    wanted = [k for k in own if not k.startswith("decoder.")]
    missing = [k for k in wanted if k not in mf.state or mf.state[k].shape != own[k].shape]
    if missing:
        raise ValueError(
            f"{path}: holds a different network ({mf.arch.get('name', '?')}, units {mf.arch.get('units', '?')}) "
            f"than the one being trained ({model.config.get('name')}, units {model.config.get('units')})"
        )
    model.load_state_dict({k: v for k, v in mf.state.items() if k in own}, strict=False)
    return mf.meta


def load_pretrained(model: PUClassifier, arch: str, units: int) -> dict | None:
    """Copy the shipped weights of ``(arch, units)`` into ``model``; None (model unchanged) when none are
    shipped for that network."""
    path = weights_path(arch, units)
    return load_weights(model, path) if path.is_file() else None


def make_pretrained(
    out: str | Path | None = None,
    *,
    arch: str = "resnet8",
    units: int = 32,
    micrographs_per_set: int = DEFAULT_MICROGRAPHS,
    steps: int = DEFAULT_STEPS,
    seed: int = DEFAULT_SEED,
    threads: int = 1,
    progress: Callable[[str], None] | None = print,
) -> Path:
    """Simulate the pretraining mix, train ``arch`` on it with every particle labelled (PN objective) and
    write the weights as a model file to ``out`` (default: the shipped location)."""
    import torch

    from ...imaging.normalize import fit_gmm_normalization
    from ...simulate.micrograph import MicrographConfig, simulate_micrograph
    from ..model_file import ModelFile, save_model
    from . import predict
    from .models import get_state
    from .train import TrainConfig, train_pu

    say = progress or (lambda _msg: None)
    torch.set_num_threads(max(1, int(threads)))
    started = time.monotonic()
    images: list[np.ndarray] = []
    coords: list[np.ndarray] = []
    counts: list[int] = []
    for k, spec in enumerate(PRETRAIN_SETS):
        cfg = MicrographConfig(shape=(1024, 1024), angpix=spec.angpix, particle=spec.particle, snr=spec.snr)
        raw, xy = [], []
        for i in range(micrographs_per_set):
            sim = simulate_micrograph(cfg, np.random.default_rng([seed, k, i]))
            work_angpix = max(spec.angpix, sim.diameter_A / SCALED_DIAMETER)
            small = predict.downsample(sim.image, spec.angpix, work_angpix)
            raw.append(small)
            xy.append(sim.particles * (np.array(small.shape[::-1], float) / np.array(sim.image.shape[::-1])))
        norm = fit_gmm_normalization(raw, seed=seed).to_dict()
        images += [predict.normalize(im, norm) for im in raw]
        coords += xy
        counts += [len(c) for c in xy]
        say(f" simulated {spec.particle}: {micrographs_per_set} micrographs, {sum(len(c) for c in xy)} particles")
    config = TrainConfig(
        arch=arch,
        units=units,
        objective="PN",
        radius_px=SCALED_DIAMETER / 8.0,
        learning_rate=1e-3,
        steps_per_epoch=max(1, steps // 10),
        max_epochs=10,
        seed=seed,
        threads=threads,
        pretrained=False,
    )
    result = train_pu(
        images,
        coords,
        float(np.mean(counts)),
        config,
        progress=lambda r: say(f" epoch {r['epoch']}/{config.max_epochs}: loss {r.get('loss', float('nan')):.4f}"),
    )
    state = get_state(result.model)
    meta = {
        "angpix": None,
        "scaled_diameter_px": SCALED_DIAMETER,
        "objective": "PN",
        "train_config": config.to_dict(),
        "history": result.history,
        "provenance": {
            "made_by": "relion_plugins.pick.pu.pretrain.make_pretrained",
            "sets": [vars(s) | {"snr": list(s.snr)} for s in PRETRAIN_SETS],
            "micrographs_per_set": micrographs_per_set,
            "particles": int(sum(counts)),
            "seed": seed,
            "torch": torch.__version__,
            "seconds": round(time.monotonic() - started, 1),
        },
    }
    path = Path(out) if out else weights_path(arch, units)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(path, ModelFile("pu", state["architecture"], state["state_dict"], meta))
    say(f" wrote {path} ({time.monotonic() - started:.0f} s)")
    return path
