"""Training the 3D U-Net: plainly, or by RobPicker's bi-level optimisation with meta-learned label
correction (LC) and data reweighting (DR).

Each meta step does a one-step unrolled ("virtual") update of the segmentation weights,
``w' = w - step(grad_w L_train(w, meta))``, evaluates the loss on clean, class-balanced validation patches at
``w'`` and takes its gradient ``g = grad_w' L_val(w')``. With ``D`` the (diagonal) derivative of the step
with respect to the training gradient, the hypergradient of the meta parameters is obtained by finite
differences (as in DARTS and Meta-Weight-Net):

    dL_val/dmeta ~= -(grad_meta L_train(w + eps D g) - grad_meta L_train(w - eps D g)) / (2 eps)

with ``eps = epsilon / |D g|``. For plain SGD ``step(x) = lr x`` and ``D = lr``. The segmentation network is
trained with Adam, whose real step is some 10^4 times longer than ``lr x`` (it divides by the gradient's RMS),
and with an SGD virtual step the hypergradients are small: on the benchmark's data (width 8, lr 3e-3) their
median per tensor was 1e-8 for the meta networks' first layers, at the meta optimiser's own epsilon (1e-8),
which then damps those layers' steps, and 2e-7 to 1e-6 for their last layers (30-60 times more with the Adam
virtual step; Adam on the meta networks makes the step sizes alike once the gradients are well above its
epsilon, so the virtual step mainly sets the direction). ``virtual_step="adam"`` takes the Adam step the
optimiser would take instead (``D = lr (1 - beta1) / (1 - beta1^t) / (sqrt(v_t) + eps_adam)``); on the
benchmark (docs/benchmarks.md, tomo_robpicker) that cost the tiny and small species 0.1-0.2 F1, so SGD stays
the default. The meta networks are updated with the hypergradient, then the segmentation network takes its
real step on the training loss built with the updated meta networks: the three updates alternate.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .data import PatchSampler
from .losses import dice_loss, one_hot, voxel_cross_entropy, weighted_dice_loss
from .unet import DataReweighting, LabelCorrection, UNet3D

METHODS = ("robpicker", "dr", "lc", "plain")


@dataclass
class TrainConfig:
    """Everything that shapes a training run (stored in the model file)."""

    method: str = "robpicker"  # robpicker (LC + DR), dr (DR only), lc (LC only), plain (no meta networks)
    iterations: int = 2000
    batch: int = 4
    learning_rate: float = 1e-3  # Adam, segmentation network
    meta_lr: float = 1e-3  # Adam, meta networks
    lc_meta_lr: float = 0.0  # Adam, the label-correction network alone; 0 = meta_lr
    virtual_step: str = "sgd"  # the unrolled update: "sgd" (lr * grad) or the optimiser's own "adam" step
    virtual_lr: float = 0.0  # learning rate of an SGD virtual step; 0 = learning_rate
    epsilon: float = 0.01  # finite-difference step, relative to |grad L_val|
    meta_interval: int = 1  # a meta step every this many iterations
    meta_start: int = 0  # plain training (no LC, no DR) for this many iterations before the first meta step
    val_batch: int = 4
    eval_every: int = 50  # validation loss on fixed patches every this many iterations
    eval_patches: int = 8
    val_loss: str = "dice"  # the meta networks' validation loss: "dice", "dice_ce" (+ mean voxel cross-entropy), "dice_cbce" (+ class-balanced)
    lc_hidden: int = 16
    dr_hidden: int = 500
    dr_floor: float = 0.5  # every voxel keeps at least this weight: w = floor + (1 - floor) * DR's weight (0-1; 0 = unbounded)
    dr_ceiling: float = 0.0  # no voxel weighs more than this many times its label class's mean (0 = no limit)
    lc_relabel: str = "background"  # voxels LC may relabel: those labelled background, or "all"
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def uses_lc(self) -> bool:
        return self.method in ("robpicker", "lc")

    @property
    def uses_dr(self) -> bool:
        return self.method in ("robpicker", "dr")


@dataclass
class TrainResult:
    model: UNet3D
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    best_iteration: int = 0
    lc: LabelCorrection | None = None
    dr: DataReweighting | None = None


@contextlib.contextmanager
def frozen_buffers(module: torch.nn.Module) -> Iterator[None]:
    """Restore batch-norm running statistics afterwards: virtual forward passes must not move them."""
    saved = [b.detach().clone() for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(module.buffers(), saved):
                b.copy_(s)


Step = Callable[[Sequence[torch.Tensor]], tuple[list[torch.Tensor], list[torch.Tensor]]]


def sgd_step(lr: float) -> Step:
    """The virtual step ``lr g`` of SGD and its derivative ``lr``."""

    def step(grads: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [lr * g for g in grads], [torch.full_like(g, lr) for g in grads]

    return step


def adam_step(optimiser: torch.optim.Adam, params: Sequence[torch.Tensor]) -> Step:
    """The step ``optimiser`` (Adam, no weight decay) would take for ``params`` with the gradients given,
    and its derivative with respect to them (the second-moment estimate taken as constant)."""
    params = list(params)
    group_of = {id(p): g for g in optimiser.param_groups for p in g["params"]}

    def step(grads: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        moves, derivs = [], []
        for p, g in zip(params, grads):
            group = group_of[id(p)]
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            state = optimiser.state.get(p, {})
            t = int(state["step"]) + 1 if "step" in state else 1
            m = b1 * state["exp_avg"] + (1 - b1) * g if "exp_avg" in state else (1 - b1) * g
            v = b2 * state["exp_avg_sq"] + (1 - b2) * g * g if "exp_avg_sq" in state else (1 - b2) * g * g
            c1, c2 = 1 - b1**t, 1 - b2**t
            inv = 1.0 / ((v / c2).sqrt() + eps)
            moves.append(lr * (m / c1) * inv)
            derivs.append(lr * (1 - b1) / c1 * inv)
        return moves, derivs

    return step


def fd_hypergradient(
    params: Sequence[torch.Tensor],
    meta_params: Sequence[torch.Tensor],
    train_loss: Callable[[], torch.Tensor],
    val_loss: Callable[[], torch.Tensor],
    lr: float | Step,
    epsilon: float,
) -> tuple[list[torch.Tensor], float]:
    """Hypergradient of ``L_val(w - step(grad_w L_train(w, meta)))`` w.r.t. ``meta`` by finite differences.

    ``lr``: the learning rate of an SGD virtual step, or a step function (:func:`sgd_step`,
    :func:`adam_step`). ``train_loss()`` / ``val_loss()`` evaluate the losses at the current values of
    ``params`` (they are changed in place and restored). Returns one gradient per meta parameter and the
    value of L_val at the virtual weights.
    """
    params = list(params)
    meta_params = list(meta_params)
    step = sgd_step(lr) if isinstance(lr, (int, float)) else lr
    saved = [p.detach().clone() for p in params]
    try:
        g_train = torch.autograd.grad(train_loss(), params, allow_unused=True)
        g_train = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_train)]
        moves, derivs = step(g_train)
        with torch.no_grad():
            for p, move in zip(params, moves):
                p.sub_(move)
        lv = val_loss()
        g_val = torch.autograd.grad(lv, params, allow_unused=True)
        direction = [d * (torch.zeros_like(p) if g is None else g) for p, g, d in zip(params, g_val, derivs)]
        norm = torch.sqrt(sum((u * u).sum() for u in direction)).item()
        eps = epsilon / max(norm, 1e-12)

        def meta_grad(sign: float) -> list[torch.Tensor]:
            with torch.no_grad():
                for p, s, u in zip(params, saved, direction):
                    p.copy_(s + sign * eps * u)
            grads = torch.autograd.grad(train_loss(), meta_params, allow_unused=True)
            return [torch.zeros_like(m) if g is None else g for m, g in zip(meta_params, grads)]

        plus = meta_grad(1.0)
        minus = meta_grad(-1.0)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    hyper = [-(a - b) / (2 * eps) for a, b in zip(plus, minus)]
    return hyper, float(lv.detach())


def robust_train_loss(
    net: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    y: torch.Tensor,
    lc: LabelCorrection | None,
    dr: DataReweighting | None,
    meta_grad: bool = True,
    frozen: dict | None = None,
    stats: dict | None = None,
    dr_floor: float = 0.0,
    dr_ceiling: float = 0.0,
    lc_relabel: str = "background",
) -> torch.Tensor:
    """Training loss on noisy labels ``y``: multi-class Dice (each class pooled over the batch, as the
    validation loss and DeepFinder) against the LC-corrected labels (when ``lc``), each voxel counted with
    DR's weight of its cross-entropy (when ``dr``), normalised within its label class.

    The meta networks' inputs (the segmentation features and softmax, the loss values) are detached: corrected labels
    and weights are targets for the segmentation network, not something it may move. With ``meta_grad``
    the outputs keep their graph to the meta networks. ``frozen`` (a dict, filled on the first call)
    keeps those inputs from the first evaluation, so that the finite-difference evaluations at
    ``w +- eps g`` differentiate the same function as autograd through the unrolled step does.
    ``dr_floor`` and ``dr_ceiling`` bound DR's weights (see :func:`bounded_weights`). With ``lc_relabel``
    "background" LC corrects only the voxels labelled background (see :func:`corrected_where_unlabelled`),
    with "all" every voxel.
    """
    logits, features = net(x)
    target = one_hot(y, logits.shape[1])
    ctx = contextlib.nullcontext() if meta_grad else torch.no_grad()
    own = torch.softmax(logits.detach(), dim=1)
    if frozen is not None:
        features = frozen.setdefault("features", features.detach())
        own = frozen.setdefault("own", own)
    if lc is not None:
        with ctx:
            corrected, alpha = lc(features.detach(), target, own)
            target = corrected_where_unlabelled(corrected, target, y) if lc_relabel == "background" else corrected
        if stats is not None:
            stats.setdefault("alpha", []).append(float(alpha.detach().mean()))
            # where LC matters: voxels labelled background that the network gives to a species (a dropped
            # particle, or a false positive); alpha near 1 there means LC keeps the label
            disputed = (y == 0) & (own.argmax(1) != 0)
            if bool(disputed.any()):
                stats.setdefault("alpha_disputed", []).append(float(alpha.detach()[:, 0][disputed].mean()))
    if dr is None:
        return dice_loss(logits, target)
    # DR weighs voxels, where sphere labels are wrong (a rim around a shifted or oversized sphere, a
    # dropped particle painted as background), by each voxel's loss value.
    voxel_loss = voxel_cross_entropy(logits.detach(), target.detach())
    if frozen is not None:
        voxel_loss = frozen.setdefault("voxel_loss", voxel_loss)
    with ctx:
        relative = class_normalised(dr(voxel_loss), y, logits.shape[1])
        w = bounded_weights(relative, dr_floor, dr_ceiling)
    if stats is not None:
        stats.setdefault("weight_sd", []).append(float(w.detach().std()))
        # what DR itself would drop, before the floor: voxels weighed below half their label class's mean
        stats.setdefault("dr_below_half", []).append(float((relative.detach() < 0.5).float().mean()))
    return weighted_dice_loss(logits, target, w)


LC_RELABEL = ("background", "all")


def corrected_where_unlabelled(corrected: torch.Tensor, noisy_onehot: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """LC's corrected labels on the voxels labelled background, the noisy one-hot label on the others.

    Sphere labels err both ways: a dropped particle or the edge of a too-small sphere is background where a
    species is (LC's job: relabel it), the rim of a too-large or shifted sphere is a species where background
    is (DR's job too: weigh it down). Relabelling a species' own voxels lets LC move a species the network
    does not yet find into the background, where a one-step look-ahead of an untrained network favours it;
    with hard label noise that lost the tiny species (docs/tomo_picker.md).
    """
    return torch.where((labels != 0)[:, None], noisy_onehot, corrected)


def class_normalised(weights: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``weights`` divided by their mean over the voxels of the same (noisy) label class in the batch.

    DR may then trust one voxel of a class more than another, but cannot move weight from a hard class
    (a tiny species) to an easy one (the background), which would lower the training loss by giving up on
    the hard class.
    """
    idx = labels.reshape(-1).long()
    flat = weights.reshape(-1)
    sums = torch.zeros(n_classes, dtype=flat.dtype, device=flat.device).index_add(0, idx, flat)
    counts = torch.bincount(idx, minlength=n_classes).to(flat.dtype)
    means = sums / counts.clamp(min=1)
    return (flat / (means[idx] + 1e-8)).reshape(weights.shape)


def check_dr_bounds(floor: float, ceiling: float) -> None:
    """Raise ValueError (naming the parameter and its value) unless 0 <= floor <= 1 and ceiling is 0 or >= 1."""
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"dr_floor {floor:g}: give a share of the class mean between 0 and 1")
    if ceiling < 0.0 or 0.0 < ceiling < 1.0:
        raise ValueError(f"dr_ceiling {ceiling:g}: give 0 (no cap) or a multiple of at least 1")


def bounded_weights(weights: torch.Tensor, floor: float = 0.0, ceiling: float = 0.0) -> torch.Tensor:
    """Class-normalised weights (mean 1 per label class) capped at ``ceiling`` (0: no cap) and mixed with
    uniform weights, ``floor + (1 - floor) * w``, so that no voxel weighs less than ``floor``.

    DR weighs a voxel by its loss alone. Once the network misses a species, that species' voxels have high
    loss; a DR that down-weights high losses (as it should for wrong labels) then drops them from the loss,
    and the network is never pulled back (see docs/tomo_picker.md): the floor keeps every voxel in play.
    """
    check_dr_bounds(floor, ceiling)
    if ceiling:
        weights = weights.clamp(max=ceiling)
    return floor + (1.0 - floor) * weights if floor else weights


VAL_LOSSES = ("dice", "dice_ce", "dice_cbce")


def validation_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "dice") -> torch.Tensor:
    """The loss on clean validation labels. A class absent from a batch has Dice loss ~1 however many voxels
    are wrongly given to it; only the background's Dice notices them, diluted by the background's size and
    the number of classes, so Dice hardly tells the meta networks that a species spreads over the
    background. ``dice_ce`` adds the mean voxel cross-entropy, which counts each such voxel by how wrong it
    is (some 30 times the signal in ``tests/test_tomo_core.py``)."""
    loss = dice_loss(logits, target)
    if kind == "dice_ce":
        loss = loss + voxel_cross_entropy(logits, target).mean()
    elif kind == "dice_cbce":  # class-balanced: the mean over each true class's voxels, averaged over the classes present
        ce = voxel_cross_entropy(logits, target)
        n_voxels = target.sum((0, 2, 3, 4))
        per_class = (ce[:, None] * target).sum((0, 2, 3, 4)) / n_voxels.clamp(min=1)
        loss = loss + per_class[n_voxels > 0].mean()
    return loss


def meta_param_groups(cfg: TrainConfig, lc: torch.nn.Module | None, dr: torch.nn.Module | None) -> list[dict]:
    """The meta optimiser's parameter groups: LC at ``lc_meta_lr`` (when set), DR at ``meta_lr``.

    LC starts at alpha 0.9 (logit 2.2): at a meta lr of 1e-3 Adam moves each weight by about 1e-3 per meta
    step, so within a few hundred meta steps alpha can hardly fall where a label is wrong, whatever the
    hypergradient says. DR keeps ``meta_lr``, so the two can be tuned apart.
    """
    groups = []
    if lc is not None:
        groups.append({"params": list(lc.parameters()), "lr": cfg.lc_meta_lr or cfg.meta_lr})
    if dr is not None:
        groups.append({"params": list(dr.parameters()), "lr": cfg.meta_lr})
    return groups


def _val_loss(model: UNet3D, x: torch.Tensor, target: torch.Tensor, kind: str = "dice") -> torch.Tensor:
    return validation_loss(model(x)[0], target, kind)


def train_picker(
    train: PatchSampler,
    val: PatchSampler | None,
    n_classes: int,
    cfg: TrainConfig,
    width: int = 32,
    depth: int = 4,
    device: torch.device | str = "cpu",
    progress: Callable[[dict], None] | None = None,
    check_abort: Callable[[], None] | None = None,
    checkpoint_score: Callable[[UNet3D], Sequence[float]] | None = None,
) -> TrainResult:
    """Train a U-Net on ``train`` patches (noisy labels); ``val`` patches (clean labels) drive the meta
    networks. Deterministic for ``cfg.seed`` on CPU.

    The best checkpoint is the one of lowest Dice loss on the fixed validation patches, or, with
    ``checkpoint_score``, of highest mean score (e.g. each species' picking F1 on whole validation
    tomograms; ties: lower Dice loss). The patches are centred on particles and the Dice loss is a mean over
    classes, so it can keep improving while one species' predictions spread over the background (on the
    SNR 0.25 benchmark one run kept a checkpoint whose small species had validation F1 0.025); picking F1
    measures what the picker will do."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; known: {', '.join(METHODS)}")
    if cfg.method != "plain" and val is None:
        raise ValueError(f"method {cfg.method} needs validation patches with clean labels")
    torch.manual_seed(cfg.seed)
    device = torch.device(device)
    model = UNet3D(n_classes, width, depth).to(device)
    lc = LabelCorrection(width, n_classes, cfg.lc_hidden).to(device) if cfg.uses_lc else None
    dr = DataReweighting(cfg.dr_hidden).to(device) if cfg.uses_dr else None
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    meta_groups = meta_param_groups(cfg, lc, dr)
    meta_params = [p for g in meta_groups for p in g["params"]]
    meta_opt = torch.optim.Adam(meta_groups, lr=cfg.meta_lr) if meta_groups else None
    if cfg.val_loss not in VAL_LOSSES:
        raise ValueError(f"unknown validation loss {cfg.val_loss!r}; known: {', '.join(VAL_LOSSES)}")
    if cfg.virtual_step not in ("adam", "sgd"):
        raise ValueError(f"unknown virtual step {cfg.virtual_step!r}; known: adam, sgd")
    if cfg.lc_relabel not in LC_RELABEL:
        raise ValueError(f"unknown lc_relabel {cfg.lc_relabel!r}; known: {', '.join(LC_RELABEL)}")
    loss_options = {"dr_floor": cfg.dr_floor, "dr_ceiling": cfg.dr_ceiling, "lc_relabel": cfg.lc_relabel}
    check_dr_bounds(cfg.dr_floor, cfg.dr_ceiling)
    params = [p for p in model.parameters() if p.requires_grad]
    virtual = adam_step(opt, params) if cfg.virtual_step == "adam" else sgd_step(cfg.virtual_lr or cfg.learning_rate)

    fixed_val = None
    if val is not None:
        state = val.rng.bit_generator.state
        fixed_val = val.sample(cfg.eval_patches)
        val.rng.bit_generator.state = state
        fixed_val = (fixed_val[0].to(device), fixed_val[1].to(device))

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            xs, ys = fixed_val
            losses = []
            for i in range(0, len(xs), 2):
                logits, _ = model(xs[i : i + 2])
                losses.append(validation_loss(logits, one_hot(ys[i : i + 2], n_classes), cfg.val_loss).item())
        model.train()
        return float(np.mean(losses))

    result = TrainResult(model=model, lc=lc, dr=dr)
    best: tuple[tuple[float, float], int, dict | None] = ((-np.inf, -np.inf), 0, None)  # (key, iteration, state)
    t0 = time.monotonic()
    running: list[float] = []
    meta_val: list[float] = []
    stats: dict[str, list[float]] = {}
    model.train()
    for it in range(1, cfg.iterations + 1):
        if check_abort is not None:
            check_abort()
        x, y = train.sample(cfg.batch)
        x, y = x.to(device), y.to(device)
        warm = it <= cfg.meta_start  # warm-up: plain training, the meta networks wait
        if meta_opt is not None and not warm and (it - cfg.meta_start - 1) % cfg.meta_interval == 0:
            xv, yv = val.sample(cfg.val_batch)
            xv, yv = xv.to(device), yv.to(device)
            target_v = one_hot(yv, n_classes)
            frozen: dict = {}
            with frozen_buffers(model):
                hyper, lv = fd_hypergradient(
                    params,
                    meta_params,
                    functools.partial(robust_train_loss, model, x, y, lc, dr, frozen=frozen, **loss_options),
                    functools.partial(_val_loss, model, xv, target_v, kind=cfg.val_loss),
                    virtual,
                    cfg.epsilon,
                )
            meta_opt.zero_grad(set_to_none=True)
            for p, g in zip(meta_params, hyper):
                p.grad = g
            meta_opt.step()
            meta_val.append(lv)
        meta_nets = (None, None) if warm else (lc, dr)
        loss = robust_train_loss(model, x, y, *meta_nets, meta_grad=False, stats=stats, **loss_options)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(float(loss.detach()))
        if it % cfg.eval_every == 0 or it == cfg.iterations:
            record = {"iteration": it, "loss": float(np.mean(running)), "seconds": time.monotonic() - t0}
            if meta_val:
                record["virtual_val_loss"] = float(np.mean(meta_val))
            # what the meta networks do: mean alpha of LC, spread of DR's weights
            record.update({k: float(np.mean(v)) for k, v in stats.items()})
            stats = {}
            if fixed_val is not None:
                record["validation"] = evaluate()
                key = (0.0, -record["validation"])
                if checkpoint_score is not None:
                    scores = [float(v) for v in checkpoint_score(model)]
                    model.train()
                    record["validation_scores"] = scores
                    key = (float(np.mean(scores)), key[1])
                if key > best[0]:
                    best = (key, it, copy.deepcopy(model.state_dict()))
            running, meta_val = [], []
            result.history.append(record)
            if progress is not None:
                progress(record)
    if best[2] is not None:
        model.load_state_dict(best[2])
        result.best_iteration = best[1]
    else:
        result.best_iteration = cfg.iterations
    model.eval()
    result.seconds = time.monotonic() - t0
    return result
