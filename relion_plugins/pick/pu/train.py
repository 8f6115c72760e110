"""Training loop of the PU picker: minibatches from the sampler, a PU objective, Adam, early stopping.

The loop knows nothing of RELION: it takes normalised micrographs (already at the training pixel size),
labelled particle centres in their pixels, and plain parameters. Validation is a callback (the job scores
held-out micrographs with it), so the loop stays independent of how "good" is measured.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..early_stopping import BestEpoch
from .models import PUClassifier, build_model, reconstruction_loss
from .objectives import class_prior, make_objective, unlabeled_prior
from .sampling import CropSampler


@dataclass
class TrainConfig:
    """Hyper-parameters; defaults are the paper's (Bepler et al. 2019) unless noted."""

    arch: str = "resnet8"  # Topaz's default model
    units: int = 32
    dropout: float = 0.0
    objective: str = "GE-binomial"
    slack: float | None = None  # objective weight; None = Topaz's default for the objective
    radius_px: float = 3.0  # label radius at the training pixel size
    batch_size: int = 256
    positive_fraction: float = 1 / 16  # 16 positive + 240 unlabelled
    learning_rate: float = 2e-4  # the paper's; 1e-3 learnt faster on the tuning set (seed 3001)
    weight_decay: float = 0.0
    steps_per_epoch: int = 200  # Topaz uses 5000; validation every epoch lets early stopping act sooner
    max_epochs: int = 10
    patience: int = 3  # epochs without validation improvement before stopping
    augment: bool = True
    autoencoder: float = 0.0  # > 0: weight of the reconstruction loss (the paper's c = 10 / P)
    pretrained: bool = True  # start from the shipped weights of arch/units when there are any (as Topaz)
    init_weights: str = ""  # start from this model file instead (e.g. the previous round's model.pt)
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    model: PUClassifier
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("nan")
    pi: float = float("nan")
    pi_unlabeled: float = float("nan")
    seconds: float = 0.0
    initialised_from: str = "random"  # "random", "shipped <file>" or the path of --init_model


def expected_prior(particles_per_micrograph: float, radius_px: float, mean_area_px: float) -> float:
    """Class prior from the expected number of particles per micrograph (Topaz's ``-n``)."""
    return class_prior(particles_per_micrograph, radius_px, mean_area_px)


def train_pu(
    images: Sequence[np.ndarray],
    coords: Sequence[np.ndarray],
    particles_per_micrograph: float,
    config: TrainConfig | None = None,
    *,
    validate: Callable[[PUClassifier], float] | None = None,
    progress: Callable[[dict], None] | None = None,
    check_abort: Callable[[], None] | None = None,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train a PU classifier on ``images`` with labelled centres ``coords`` (``[n, 2]`` x, y per image).

    ``particles_per_micrograph``: expected number of particles per micrograph (all of them, labelled or
    not) -> the class prior. ``validate(model) -> score`` (higher is better) is called after every epoch;
    the best epoch's weights are returned and training stops after ``patience`` epochs without gain.
    Without ``validate`` the last epoch's weights are returned.
    """
    cfg = config or TrainConfig()
    if cfg.threads > 0:
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(cfg.seed)
    started = time.monotonic()
    model = build_model(cfg.arch, units=cfg.units, dropout=cfg.dropout, decoder=cfg.autoencoder > 0)
    initialised_from = "random"
    if cfg.init_weights:
        from .pretrain import load_weights

        load_weights(model, cfg.init_weights)
        initialised_from = str(cfg.init_weights)
    elif cfg.pretrained:
        from .pretrain import load_pretrained, weights_path

        if load_pretrained(model, cfg.arch, cfg.units) is not None:
            initialised_from = f"shipped {weights_path(cfg.arch, cfg.units).name}"
    model.to(device)
    crop = model.receptive_field if model.receptive_field % 2 else model.receptive_field + 1
    key = cfg.objective.strip().lower().replace("_", "-")
    sampler = CropSampler(
        images,
        coords,
        radius=cfg.radius_px,
        crop=crop,
        batch_size=cfg.batch_size,
        positive_fraction=cfg.positive_fraction,
        seed=cfg.seed,
        augment=cfg.augment,
        exclude_labeled=key != "nnpu" and key != "pu",
    )
    mean_area = float(np.mean([np.asarray(im).size for im in images]))
    pi = expected_prior(particles_per_micrograph, cfg.radius_px, mean_area)
    kwargs = {} if cfg.slack is None or key in ("pn", "nnpu", "pu") else {"slack": cfg.slack}
    if key in ("ge-kl", "ge-binomial"):
        # Complete labels (e.g. a class selection of every particle it kept, or all true particles) put the
        # labelled pixel fraction at pi, or above it because label disks rasterise larger than pi r^2 and
        # dense micrographs cover more: then nearly nothing unlabelled is positive, not an error.
        pi = max(pi, 1.05 * sampler.labeled_fraction)
        pi_u = unlabeled_prior(pi, sampler.labeled_fraction)
        objective = make_objective(cfg.objective, pi_u, **kwargs)
    else:
        pi_u = pi
        objective = make_objective(cfg.objective, pi, **kwargs)
    # Start from the prior: a random network says p ~ 0.5 everywhere, and the GE term first spends hundreds
    # of minibatches pushing that down to pi before anything is learnt (Topaz hides this with pretrained
    # weights); a classifier bias of logit(pi) starts where that phase ends.
    with torch.no_grad():
        model.classifier.bias.fill_(math.log(pi_u / (1.0 - pi_u)))
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    n_pos = sampler.n_positive

    history: list[dict] = []
    best = BestEpoch(model, cfg.patience, validated=validate is not None)
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        sums: dict[str, float] = {}
        for _ in range(cfg.steps_per_epoch):
            if check_abort is not None:
                check_abort()
            x, _labels = sampler.sample(device)
            if model.decoder is not None:
                logits, recon, target = model.forward_with_reconstruction(x)
                loss, metrics = objective.loss(logits[:n_pos], logits[n_pos:])
                rec = reconstruction_loss(recon, target)
                loss = loss + cfg.autoencoder * rec
                metrics["reconstruction"] = float(rec.detach())
            else:
                logits = model(x)
                loss, metrics = objective.loss(logits[:n_pos], logits[n_pos:])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        record, stop = best.close_epoch(model, epoch, sums, cfg.steps_per_epoch, started, validate)
        history.append(record)
        if progress is not None:
            progress(record)
        if stop:
            break
    model.load_state_dict(best.state)
    model.eval()
    return TrainResult(
        model=model,
        history=history,
        best_epoch=best.epoch,
        best_score=best.score,
        pi=pi,
        pi_unlabeled=pi_u,
        seconds=time.monotonic() - started,
        initialised_from=initialised_from,
    )
