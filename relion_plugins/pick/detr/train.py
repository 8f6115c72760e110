"""Training the detector: A-LoG pseudo-label pretraining and few-label fine-tuning, with early stopping.

Both phases are one loop (:func:`train_detr`) on different labels: pretraining takes micrographs alone
and the A-LoG picker's top-K proposals as pseudo-labels (:func:`pseudo_labels`), fine-tuning starts from
the pretrained weights and uses the user's labelled micrographs. The loop takes prepared images (see
:mod:`.preprocess`) and particle centres in their pixels; validation is a callback (``model -> F1``),
so that the loop does not depend on how picks are scored.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..early_stopping import BestEpoch
from .augment import offline_augment, online_augment
from .losses import LossWeights, total_loss
from .model import DetrConfig, ParticleDETR, build_model


@dataclass
class TrainConfig:
    """Training settings (stored in the model file's ``meta``)."""

    crop: int = 256  # square training crops and picking patches, working pixels
    batch_size: int = 2
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    steps_per_epoch: int = 100
    max_epochs: int = 20
    patience: int = 4  # epochs without validation F1 gain before stopping (or lowering the rate)
    lr_drops: int = 1  # on a plateau, lower the learning rate 10x this many times before stopping
    cdn: bool = True  # contrastive denoising queries
    offline_augment: bool = True  # rotations and flips added once
    offline_crops: int = 0  # random crops per micrograph added once
    online_augment: bool = True
    ema_decay: float = 0.0  # validate and keep an exponential moving average of the weights (0 = off)
    seed: int = 0
    threads: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    model: ParticleDETR
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("nan")
    seconds: float = 0.0
    n_train_images: int = 0


def pseudo_labels(image: np.ndarray, angpix: float, diameter_A: float, top_k: int) -> np.ndarray:
    """The A-LoG picker's ``top_k`` best proposals ``[n, 2]`` (x, y, original pixels) as pseudo-labels.

    The threshold is off: pretraining wants the K most blob-like places, not a calibrated pick."""
    from ..blob import pick_blobs

    res = pick_blobs(image, angpix, 0.85 * diameter_A, 1.15 * diameter_A, adjust_threshold=-1e6, top_k=top_k)
    return np.stack([res.x, res.y], 1).astype(np.float64) if len(res) else np.zeros((0, 2))


class WeightAverage:
    """Exponential moving average of a model's weights, updated after each optimiser step.

    Few-label fine-tuning validates on a handful of micrographs, where the F1 of single-step weights jumps
    by a few hundredths from epoch to epoch; early stopping then keeps a lucky epoch and stops on noise.
    The average's curve is steady (as DINO's ``use_ema``), but on our benchmark it did not raise test F1
    (docs/detr_picker.md), so ``TrainConfig.ema_decay`` is 0 by default."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.updates = 0
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        # the decay ramps up over the first updates, so that the starting weights fade out fast
        self.updates += 1
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        own = self.model.state_dict()
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                own[k].mul_(decay).add_(v.detach(), alpha=1.0 - decay)
            else:
                own[k].copy_(v)

    def reset(self, state: dict) -> None:
        self.model.load_state_dict(state)


class CropSampler:
    """Random square crops with the particles whose centres fall inside them, as normalised boxes."""

    def __init__(self, images, coords, diameter_px: float, crop: int, seed: int, online: bool) -> None:
        self.images = [np.asarray(im, dtype=np.float32) for im in images]
        self.coords = [np.asarray(c, dtype=np.float64).reshape(-1, 2) for c in coords]
        self.diameter = float(diameter_px)
        self.crop = int(crop)
        self.online = online
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(int(seed))
        area = np.array([im.size for im in self.images], dtype=np.float64)
        self.p = area / area.sum()

    def one(self) -> tuple[torch.Tensor, torch.Tensor]:
        i = int(self.rng.choice(len(self.images), p=self.p))
        img, xy = self.images[i], self.coords[i]
        c = self.crop
        ny, nx = img.shape
        y0 = int(self.rng.integers(0, max(ny - c, 0) + 1))
        x0 = int(self.rng.integers(0, max(nx - c, 0) + 1))
        out = np.zeros((c, c), np.float32)
        part = img[y0 : y0 + c, x0 : x0 + c]
        out[: part.shape[0], : part.shape[1]] = part
        inside = (
            (xy[:, 0] >= x0)
            & (xy[:, 0] < x0 + part.shape[1])
            & (xy[:, 1] >= y0)
            & (xy[:, 1] < y0 + part.shape[0])
        )
        p = xy[inside] - [x0, y0]
        boxes = np.zeros((len(p), 4), np.float32)
        boxes[:, 0] = (p[:, 0] + 0.5) / c
        boxes[:, 1] = (p[:, 1] + 0.5) / c
        boxes[:, 2:] = self.diameter / c
        x, b = torch.from_numpy(out)[None], torch.from_numpy(boxes)
        if self.online:
            x, b = online_augment(x, b, self.gen)
        return x, b

    def batch(self, n: int, device) -> tuple[torch.Tensor, list[torch.Tensor]]:
        items = [self.one() for _ in range(n)]
        return torch.stack([x for x, _ in items]).to(device), [b.to(device) for _, b in items]


def train_detr(
    images: Sequence[np.ndarray],
    coords: Sequence[np.ndarray],
    diameter_px: float,
    config: TrainConfig | None = None,
    arch: DetrConfig | dict | str | None = None,
    *,
    init_state: dict | None = None,
    validate: Callable[[ParticleDETR], float] | None = None,
    progress: Callable[[dict], None] | None = None,
    check_abort: Callable[[], None] | None = None,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train a detector on prepared ``images`` with particle centres ``coords`` (``[n, 2]`` x, y each).

    ``init_state``: start from these weights (the pretrained model when fine-tuning). ``validate(model)``
    -> F1 after each epoch; the best epoch's weights are returned and training stops after ``patience``
    epochs without gain (without ``validate`` the last epoch's weights)."""
    cfg = config or TrainConfig()
    if cfg.threads > 0:
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(cfg.seed)
    started = time.monotonic()
    if isinstance(arch, str):
        arch = build_model(arch).config
    a = DetrConfig.from_dict(arch) if isinstance(arch, dict) else (arch or DetrConfig())
    a = DetrConfig.from_dict(a.to_dict() | {"anchor_px": float(diameter_px)})
    if not cfg.cdn:
        a.dn_number = 0
    model = build_model(a)
    if init_state is not None:
        own = model.state_dict()
        bad = [k for k in own if k not in init_state or init_state[k].shape != own[k].shape]
        if bad:
            raise ValueError(
                f"the initial weights are of another network ({len(bad)} tensors differ, e.g. {bad[0]})"
            )
        model.load_state_dict(init_state)
    model.to(device)
    imgs, xys = list(images), [np.asarray(c, dtype=np.float64).reshape(-1, 2) for c in coords]
    if cfg.offline_augment or cfg.offline_crops:
        imgs, xys = offline_augment(
            imgs, xys, rotations=cfg.offline_augment, flips=cfg.offline_augment, crops=cfg.offline_crops,
            crop_size=cfg.crop, seed=cfg.seed,
        )  # fmt: skip
    sampler = CropSampler(imgs, xys, diameter_px, cfg.crop, cfg.seed, cfg.online_augment)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    weights = LossWeights()

    history: list[dict] = []
    average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    kept = average.model if average is not None else model  # the weights validated and returned
    best = BestEpoch(kept, cfg.patience, validated=validate is not None)
    drops_left = cfg.lr_drops if validate is not None else 0
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        sums: dict[str, float] = {}
        for _ in range(cfg.steps_per_epoch):
            if check_abort is not None:
                check_abort()
            x, targets = sampler.batch(cfg.batch_size, device)
            out = model(x, targets, generator=sampler.gen)
            loss, metrics = total_loss(out, targets, weights)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimiser.step()
            if average is not None:
                average.update(model)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        record, stop = best.close_epoch(kept, epoch, sums, cfg.steps_per_epoch, started, validate)
        if stop and drops_left > 0:
            # DETR-style step decay, triggered by the plateau rather than a fixed epoch (few labels give
            # no epoch count to fix in advance): resume from the best weights at a tenth of the rate
            drops_left -= 1
            stop = False
            for group in optimiser.param_groups:
                group["lr"] *= 0.1
            best.restart_patience(model)
            if average is not None:
                average.reset(best.state)
            record["lr_drop"] = True
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
        seconds=time.monotonic() - started,
        n_train_images=len(imgs),
    )
