"""Training data and training loop of the class ranker (:mod:`relion_plugins.rank.network`).

**Default weights.** Training classes are simulated directly (:mod:`relion_plugins.simulate.classes`):
``n_jobs`` simulated 2D classification jobs of 8-20 classes each. Every job draws one particle (phantoms
``globular``, ``twolobe``, ``small`` with several shape seeds, and the ``apoferritin`` map, scaled to
90-300 Å), a pixel size (2-6 Å/px), a box (1.3-2.2 diameters, 48-96 px), an SNR and a share of good
classes. Its classes are a mix of

* good: 60-100 % true particles (the rest empty ice, ice, carbon, off-centre, neighbours), small
  misalignment;
* borderline: 30-70 % true particles or moderate misalignment (the soft target says how good);
* junk: dominated by one junk kind or a random mixture of kinds (ice, carbon, empty, off-centre,
  aggregate), with 0-30 % true particles;
* misaligned: true particles with 15-90 degrees and 10-30 % of the diameter of alignment error.

The held-out shapes of the benchmark (the ``ring`` phantom, ribosome and spliceosome maps) are never
used here. Features come from :func:`relion_plugins.rank.features.job_features` per job (features 21-23
are normalised within a job, as in RELION) and the images from the same call.

**Target.** A soft target from the simulator's quality (true fraction x misalignment penalties, see
``simulate/classes.py``): ``clip((quality - 0.3) / 0.4, 0, 1)``: 0.5 at quality 0.5, where the
simulator's ``good`` flag flips. Loss: binary cross-entropy on the logits; Adam; 90 % of the jobs train,
10 % validate (ROC AUC of the good flag is printed per epoch); the weights of the last epoch are kept.
Images are augmented by the 8 symmetries of the square (rotations by 90 degrees and flips), which do
not change what a class average shows.

**Retraining on a user's labels** (:func:`labelled_classes_from_star`): a RELION Select job's
``rank_model.star`` or ``backup_selection.star``, our ``rank_model.star``, any model STAR with
``rlnClassScore``, or a ``class_averages.star`` (the classes it lists are good, the other classes of the
same Class2D iteration bad). Labels: ``rlnSelected`` when present, else ``rlnClassScore`` (RELION's -999
for unscored classes is skipped), else membership. The class images and features are recomputed from the
Class2D iteration the ``rlnReferenceImage`` names point to. Retraining starts from the default weights
and mixes the user's classes (weighted x 4) with a smaller simulated set, so a few dozen labelled classes
adapt the ranker without making it forget.

Everything is deterministic for a seed (one CPU thread, seeded numpy and torch).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..relion.class2d import Class2DError, find_class2d_files, read_class2d, read_class2d_files
from ..relion.mrc import parse_image_name
from ..relion.star import StarError, read_star
from .features import job_features

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_JOBS",
    "DEFAULT_SEED",
    "TRAIN_PARTICLES",
    "TrainingData",
    "TrainResult",
    "class2d_job_data",
    "labelled_classes_from_star",
    "quality_target",
    "roc_auc",
    "simulate_job",
    "simulate_training_data",
    "train_ranker",
]

DEFAULT_SEED = 20250101
DEFAULT_JOBS = 240
DEFAULT_EPOCHS = 25
# (particle, phantom seed, pixel size Å, diameter Å) of the default weights' training jobs: a fixed list, as
# each projection bank costs 1-3 s to make. The benchmark's shapes (ring, ribosome, spliceosome) are not here.
TRAIN_BANKS: tuple[tuple[str, int, float, float], ...] = (
    ("globular", 0, 4.0, 150.0),
    ("globular", 1, 3.0, 150.0),
    ("globular", 2, 5.0, 220.0),
    ("globular", 3, 2.0, 100.0),
    ("twolobe", 0, 5.0, 250.0),
    ("twolobe", 1, 4.0, 180.0),
    ("twolobe", 2, 6.0, 300.0),
    ("small", 0, 2.0, 100.0),
    ("small", 1, 3.0, 120.0),
    ("small", 2, 4.0, 160.0),
    ("apoferritin", 0, 3.0, 130.0),
    ("apoferritin", 0, 2.5, 130.0),
)
TRAIN_PARTICLES = tuple(sorted({b[0] for b in TRAIN_BANKS}))
JUNK_MIX_KINDS = ("ice", "carbon", "empty", "offcentre", "aggregate")


def quality_target(quality: np.ndarray) -> np.ndarray:
    """Soft training target from the simulator's class quality: ``clip((q - 0.3) / 0.4, 0, 1)``."""
    return np.clip((np.asarray(quality, dtype=np.float64) - 0.3) / 0.4, 0.0, 1.0)


@dataclass
class TrainingData:
    """Network inputs (already through :func:`~relion_plugins.rank.network.prepare_inputs`) and labels.

    ``job`` numbers the job each class came from (for the train / validation split), ``weight`` is the
    per-class loss weight and ``good`` the hard label used for the AUC.
    """

    images: np.ndarray  # [N, 64, 64] float32
    features: np.ndarray  # [N, 24] float32
    target: np.ndarray  # [N] float32 in 0..1
    good: np.ndarray  # [N] bool
    job: np.ndarray  # [N] int
    weight: np.ndarray  # [N] float32
    source: list[str] = field(default_factory=list)  # per job: where it came from

    def __len__(self) -> int:
        return int(self.target.shape[0])

    @staticmethod
    def concat(parts: Sequence[TrainingData]) -> TrainingData:
        """Join several data sets; job numbers are kept apart."""
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("no training classes")
        offset = 0
        jobs = []
        for p in parts:
            jobs.append(p.job + offset)
            offset += int(p.job.max()) + 1
        return TrainingData(
            images=np.concatenate([p.images for p in parts]),
            features=np.concatenate([p.features for p in parts]),
            target=np.concatenate([p.target for p in parts]).astype(np.float32),
            good=np.concatenate([p.good for p in parts]),
            job=np.concatenate(jobs),
            weight=np.concatenate([p.weight for p in parts]).astype(np.float32),
            source=[s for p in parts for s in p.source],
        )


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN when one class is missing."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=bool).reshape(-1)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < s.size:  # average ranks over ties
        j = i
        while j + 1 < s.size and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# ----------------------------------------------------------------------------------------------------
# simulated jobs


def _job_config(rng: np.random.Generator, bank: tuple[str, int, float, float]):
    from ..simulate.classes import ClassSimConfig

    name, phantom_seed, angpix, diameter = bank
    d_px = diameter / angpix
    box = int(np.clip(round(float(rng.uniform(1.3, 2.0)) * d_px / 8.0) * 8, 48, 80))
    box = max(box, int(math.ceil(1.2 * d_px / 8.0)) * 8)
    return ClassSimConfig(
        box=box,
        angpix=float(angpix),
        particle=name,
        diameter_A=float(diameter),
        phantom_seed=int(phantom_seed),
        bank_size=48,
        snr=float(math.exp(rng.uniform(math.log(0.02), math.log(0.3)))),
        bfactor=float(rng.uniform(30.0, 150.0)),
    )


def _random_mixture(rng: np.random.Generator) -> dict[str, float]:
    kinds = rng.choice(JUNK_MIX_KINDS, size=int(rng.integers(1, 4)), replace=False)
    return {str(k): float(rng.uniform(0.2, 1.0)) for k in kinds}


def _one_class(cfg, rng: np.random.Generator, role: str, n_img: int):
    from ..simulate.classes import simulate_class

    d = float(cfg.diameter_A)
    if role == "good":
        return simulate_class(
            cfg,
            rng,
            true_fraction=float(rng.uniform(0.6, 1.0)),
            junk={"empty": 0.4, "ice": 0.15, "carbon": 0.1, "offcentre": 0.15, "neighbour": 0.2},
            rot_jitter_deg=float(rng.uniform(0.0, 8.0)),
            shift_jitter_A=float(rng.uniform(0.0, 0.05)) * d,
            n_images=n_img,
        )
    if role == "borderline":
        return simulate_class(
            cfg,
            rng,
            true_fraction=float(rng.uniform(0.3, 0.8)),
            junk=_random_mixture(rng),
            rot_jitter_deg=float(rng.uniform(0.0, 15.0)),
            shift_jitter_A=float(rng.uniform(0.0, 0.12)) * d,
            n_images=n_img,
        )
    if role == "misaligned":
        return simulate_class(
            cfg,
            rng,
            true_fraction=float(rng.uniform(0.6, 1.0)),
            junk="empty",
            rot_jitter_deg=float(rng.uniform(15.0, 90.0)),
            shift_jitter_A=float(rng.uniform(0.1, 0.3)) * d,
            n_images=n_img,
        )
    junk: str | dict[str, float]
    junk = _random_mixture(rng) if rng.random() < 0.4 else str(rng.choice(JUNK_MIX_KINDS))
    return simulate_class(cfg, rng, true_fraction=float(rng.uniform(0.0, 0.3)), junk=junk, n_images=n_img)


def simulate_job(
    seed: int | Sequence[int],
    bank: tuple[str, int, float, float] = TRAIN_BANKS[0],
    n_classes: tuple[int, int] = (8, 20),
    n_images: tuple[int, int] = (15, 200),
):
    """One simulated 2D classification job of particle ``bank``: ``(classes, config)`` (see the module doc)."""
    rng = np.random.default_rng(seed)
    cfg = _job_config(rng, bank)
    k = int(rng.integers(n_classes[0], n_classes[1] + 1))
    p_good = float(rng.uniform(0.2, 0.7))
    roles = rng.choice(
        ["good", "borderline", "junk", "misaligned"],
        size=k,
        p=[p_good, 0.15, 0.85 - p_good - 0.1, 0.1] if p_good < 0.75 else [p_good, 0.1, 0.85 - p_good, 0.05],
    )
    classes = []
    for i, role in enumerate(roles):
        crng = np.random.default_rng([*np.atleast_1d(seed).tolist(), i])
        n_img = int(round(math.exp(crng.uniform(math.log(n_images[0]), math.log(n_images[1])))))
        classes.append(_one_class(cfg, crng, str(role), n_img))
    return classes, cfg


def _job_arrays(classes, cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from ..simulate.classes import stack_classes
    from .network import prepare_inputs

    s = stack_classes(classes)
    jf = job_features(
        s["averages"],
        cfg.angpix,
        classes[0].mask_diameter_A,
        s["distribution"],
        int(s["n_images"].sum()),
        s["resolution_A"],
        s["acc_rot"],
        s["acc_trans_A"],
    )
    img, feat = prepare_inputs(jf.images, jf.normalized, jf.scored)
    return img[jf.scored], feat[jf.scored], jf.scored


def simulate_training_data(
    n_jobs: int = DEFAULT_JOBS,
    seed: int = DEFAULT_SEED,
    banks: Sequence[tuple[str, int, float, float]] = TRAIN_BANKS,
    log: Callable[[str], None] | None = None,
) -> TrainingData:
    """Simulate ``n_jobs`` jobs and turn them into network inputs.

    Job ``j`` uses the particle ``banks[j % len(banks)]`` and the seed ``[seed, j]``; jobs are simulated
    grouped by bank (the projection cache holds only a few), which changes nothing in the result.
    """
    imgs, feats, targets, goods, jobs, sources = [], [], [], [], [], []
    t0 = time.monotonic()
    order = sorted(range(n_jobs), key=lambda j: (j % len(banks), j))
    for count, j in enumerate(order):
        classes, cfg = simulate_job([seed, j], banks[j % len(banks)])
        img, feat, scored = _job_arrays(classes, cfg)
        q = np.array([c.quality for c in classes])[scored]
        g = np.array([c.good for c in classes])[scored]
        imgs.append(img)
        feats.append(feat)
        targets.append(quality_target(q))
        goods.append(g)
        jobs.append(np.full(len(q), j))
        sources.append(
            f"sim:{cfg.particle}/{cfg.phantom_seed} {cfg.diameter_A:g}A {cfg.angpix:g}A/px box{cfg.box}"
        )
        if log and ((count + 1) % 40 == 0 or count + 1 == n_jobs):
            log(f" simulated {count + 1}/{n_jobs} jobs ({sum(len(t) for t in targets)} classes), "
                f"{time.monotonic() - t0:.0f} s")  # fmt: skip
    back = np.argsort(np.array(order), kind="stable")  # job order again
    imgs, feats, targets, goods, jobs, sources = (
        [x[i] for i in back] for x in (imgs, feats, targets, goods, jobs, sources)
    )
    target = np.concatenate(targets).astype(np.float32)
    return TrainingData(
        images=np.concatenate(imgs),
        features=np.concatenate(feats),
        target=target,
        good=np.concatenate(goods),
        job=np.concatenate(jobs),
        weight=np.ones(target.shape, np.float32),
        source=sources,
    )


# ----------------------------------------------------------------------------------------------------
# real jobs and user labels


def class2d_job_data(result, scored_only: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Network inputs of a read Class2D result: ``(images, features, scored)``; see :func:`job_features`."""
    from .network import prepare_inputs

    diameter = result.particle_diameter_A
    if diameter is None or not diameter > 0:
        diameter = 0.9 * result.box_size * result.angpix
    res = result.estimated_resolution()
    res = np.where(np.isfinite(res) & (res > 0), res, result.box_size * result.angpix)  # RELION 3.1's "inf"
    jf = job_features(
        result.averages,
        result.angpix,
        diameter,
        result.distribution,
        result.n_particles,
        res,
        result.accuracy_rotation,
        result.accuracy_translation_A,
    )
    img, feat = prepare_inputs(jf.images, jf.normalized, jf.scored)
    if scored_only:
        return img[jf.scored], feat[jf.scored], jf.scored
    return img, feat, jf.scored


def _first_table(blocks: dict[str, Any], labels: Sequence[str]) -> pd.DataFrame | None:
    for name in ("model_classes", "", *blocks.keys()):
        block = blocks.get(name)
        if isinstance(block, pd.DataFrame) and any(lab in block.columns for lab in labels):
            return block
    return None


def _class2d_for_references(refs: Sequence[str], star: Path, project_dir: Path | None):
    """The Class2D iteration whose class stack the ``rlnReferenceImage`` names point to."""
    _, fname = parse_image_name(str(refs[0]))
    if not fname.endswith("_classes.mrcs"):
        raise ValueError(f"{star}: rlnReferenceImage {refs[0]} is not a Class2D *_classes.mrcs stack")
    model_name = fname[: -len("_classes.mrcs")] + "_model.star"
    bases = [project_dir] if project_dir is not None else []
    bases += [Path.cwd(), *star.resolve().parents]
    for base in bases:
        if base is not None and (base / model_name).is_file():
            return read_class2d(base / model_name, project_dir=base)
    raise ValueError(f"{star}: cannot find {model_name} (the Class2D model of the labelled classes)")


def labelled_classes_from_star(
    path: str | os.PathLike, project_dir: str | os.PathLike | None = None
) -> tuple[TrainingData, str]:
    """A user's labelled classes as training data, and a one-line description of what was read.

    ``path``: ``rank_model.star`` / ``backup_selection.star`` of a RELION Select or rp-rank-select job, a
    model STAR with ``rlnClassScore``, or a ``class_averages.star`` (see the module doc). Raises
    ``ValueError`` with a one-line reason.
    """
    star = Path(path)
    proj = Path(project_dir) if project_dir is not None else None
    try:
        blocks = read_star(star)
    except (StarError, OSError) as exc:
        raise ValueError(f"cannot read {star}: {exc}") from None
    table = _first_table(blocks, ("rlnSelected", "rlnClassScore", "rlnReferenceImage"))
    if table is None:
        raise ValueError(f"{star}: no table with rlnSelected, rlnClassScore or rlnReferenceImage")
    if "rlnReferenceImage" not in table.columns:
        # backup_selection.star: one rlnSelected per class, in class order; classes from a sibling model
        sibling = next((star.parent / n for n in ("rank_model.star",) if (star.parent / n).is_file()), None)
        if sibling is None or "rlnSelected" not in table.columns:
            raise ValueError(
                f"{star}: has no rlnReferenceImage and no sibling rank_model.star to say which classes "
                "its rows are"
            )
        refs_table = _first_table(read_star(sibling), ("rlnReferenceImage",))
        if refs_table is None or len(refs_table) != len(table):
            raise ValueError(f"{star}: {len(table)} rows but {sibling} lists a different number of classes")
        table = refs_table.assign(rlnSelected=table["rlnSelected"].to_numpy())
    refs = [str(r) for r in table["rlnReferenceImage"]]
    result = _class2d_for_references(refs, star, proj)
    images, features, scored = class2d_job_data(result, scored_only=False)
    all_refs = [str(r) for r in result.classes["rlnReferenceImage"]]

    def key(name: str) -> tuple[int, str]:
        i, f = parse_image_name(name)
        return i, os.path.basename(f)

    index = {key(r): k for k, r in enumerate(all_refs)}
    labels = np.full(len(all_refs), np.nan)
    if "rlnSelected" in table.columns:
        how = "rlnSelected"
        values = table["rlnSelected"].to_numpy(dtype=np.float64)
    elif "rlnClassScore" in table.columns:
        how = "rlnClassScore"
        values = table["rlnClassScore"].to_numpy(dtype=np.float64)
    else:
        how = "membership (listed classes good, others bad)"
        values = np.ones(len(table))
        labels[:] = 0.0
    for ref, v in zip(refs, values):
        k = index.get(key(ref))
        if k is None:
            raise ValueError(f"{star}: {ref} is not a class of {result.files.model_star}")
        if v == -999 or not np.isfinite(v):
            continue  # RELION's "not scored"
        labels[k] = float(np.clip(v, 0.0, 1.0))
    use = scored & np.isfinite(labels)
    if not use.any():
        raise ValueError(f"{star}: no labelled class with more than 10 particles")
    t = labels[use].astype(np.float32)
    data = TrainingData(
        images=images[use],
        features=features[use],
        target=t,
        good=t >= 0.5,
        job=np.zeros(int(use.sum()), dtype=np.int64),
        weight=np.ones(int(use.sum()), np.float32),
        source=[str(star)],
    )
    desc = f"{star}: {int(use.sum())} labelled classes ({int((t >= 0.5).sum())} good) from {how}"
    return data, desc


# ----------------------------------------------------------------------------------------------------
# training


@dataclass
class TrainResult:
    """What :func:`train_ranker` returns: the trained network, its architecture and history."""

    net: Any
    arch: dict[str, Any]
    history: list[dict[str, float]]
    val_auc: float
    n_train: int
    n_val: int


def _augment(images, generator):
    import torch

    k = int(torch.randint(0, 4, (1,), generator=generator))
    out = torch.rot90(images, k, dims=(-2, -1))
    if int(torch.randint(0, 2, (1,), generator=generator)):
        out = torch.flip(out, dims=(-1,))
    return out


def train_ranker(
    data: TrainingData,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = DEFAULT_SEED,
    lr: float = 2e-3,
    batch_size: int = 64,
    val_fraction: float = 0.1,
    init_state: dict | None = None,
    arch: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train (or fine-tune from ``init_state``) a ranker network on ``data``; deterministic for a seed."""
    import torch

    from .network import build_network, default_arch

    torch.set_num_threads(1)  # small network: one thread is fastest and reproducible
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    arch = dict(default_arch() if arch is None else arch)
    net = build_network(arch)
    if init_state is not None:
        net.load_state_dict(init_state)
    jobs = np.unique(data.job)
    n_val_jobs = int(round(val_fraction * len(jobs))) if len(jobs) >= 10 else 0
    val_jobs = set(rng.permutation(jobs)[:n_val_jobs].tolist())
    is_val = np.array([j in val_jobs for j in data.job], dtype=bool)
    tr = np.nonzero(~is_val)[0]
    va = np.nonzero(is_val)[0]
    img = torch.from_numpy(np.ascontiguousarray(data.images, dtype=np.float32))
    feat = torch.from_numpy(np.ascontiguousarray(data.features, dtype=np.float32))
    target = torch.from_numpy(np.asarray(data.target, dtype=np.float32))
    weight = torch.from_numpy(np.asarray(data.weight, dtype=np.float32))
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    gen = torch.Generator().manual_seed(seed)
    bce = torch.nn.BCEWithLogitsLoss(reduction="none")
    history: list[dict[str, float]] = []
    val_auc = float("nan")
    for epoch in range(epochs):
        t0 = time.monotonic()
        net.train()
        order = tr[rng.permutation(len(tr))]
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = torch.from_numpy(order[start : start + batch_size])
            if len(idx) < 2:
                continue  # batch norm needs two samples
            x = _augment(img[idx], gen)
            loss_each = bce(net(x, feat[idx]), target[idx])
            loss = (loss_each * weight[idx]).sum() / weight[idx].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        row = {"epoch": epoch + 1, "loss": total / max(1, len(tr)), "seconds": time.monotonic() - t0}
        if len(va):
            with torch.no_grad():
                s = net.score(img[va], feat[va]).numpy()
            val_auc = roc_auc(s, data.good[va])
            row["val_auc"] = val_auc
            row["val_acc"] = float(((s >= 0.5) == data.good[va]).mean())
        history.append(row)
        if log:
            extra = f", val AUC {row['val_auc']:.3f}, acc {row['val_acc']:.3f}" if "val_auc" in row else ""
            log(f" epoch {epoch + 1}/{epochs}: loss {row['loss']:.4f}{extra} ({row['seconds']:.1f} s)")
    net.eval()
    return TrainResult(net=net, arch=arch, history=history, val_auc=val_auc, n_train=len(tr), n_val=len(va))


def read_model_for_training(path: str | os.PathLike):
    """A Class2D result from any entry point (job dir, optimiser / model / data STAR)."""
    try:
        return read_class2d_files(find_class2d_files(path))
    except Class2DError as exc:
        raise ValueError(str(exc)) from None


def make_ranker(
    out: str | os.PathLike,
    seed: int = DEFAULT_SEED,
    n_jobs: int = DEFAULT_JOBS,
    epochs: int = DEFAULT_EPOCHS,
    from_star: Sequence[str | os.PathLike] = (),
    init: str | os.PathLike | None = None,
    project_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train a ranker and write it to ``out`` (what ``relion-plugins ranker train`` runs).

    Without ``from_star`` this reproduces the shipped default weights (same seed, jobs and epochs).
    With labelled STAR files it fine-tunes ``init`` (default: the shipped weights) on the user's classes
    (weight 4 each) plus ``n_jobs // 4`` simulated jobs, for ``epochs // 2`` epochs at a lower rate.
    """
    from .network import load_ranker, save_ranker

    t0 = time.monotonic()
    command = f"relion-plugins ranker train --seed {seed} --jobs {n_jobs} --epochs {epochs}"
    if not from_star:
        log(f"Simulating {n_jobs} training jobs (seed {seed}) ...")
        data = simulate_training_data(n_jobs, seed, log=log)
        log(f" {len(data)} classes, {int(data.good.sum())} good; training {epochs} epochs ...")
        result = train_ranker(data, epochs=epochs, seed=seed, log=log)
        n_user = 0
    else:
        user_parts = []
        for path in from_star:
            part, desc = labelled_classes_from_star(path, project_dir)
            log(f" {desc}")
            part.weight[:] = 4.0
            user_parts.append(part)
        user = TrainingData.concat(user_parts)
        n_sim = max(1, n_jobs // 4)
        log(f"Simulating {n_sim} jobs to keep the default behaviour (seed {seed}) ...")
        sim = simulate_training_data(n_sim, seed, log=log)
        data = TrainingData.concat([sim, user])
        base = load_ranker(init)
        log(f" fine-tuning {base.describe()} on {len(user)} user + {len(sim)} simulated classes")
        result = train_ranker(
            data,
            epochs=max(1, epochs // 2),
            seed=seed,
            lr=5e-4,
            init_state=base.net.state_dict(),
            arch=base.arch,
            log=log,
        )
        n_user = len(user)
        command += " " + " ".join(f"--from_star {p}" for p in from_star)
    meta = {
        "objective": "bce-soft-quality",
        "provenance": {
            "command": command,
            "seed": int(seed),
            "n_jobs": int(n_jobs),
            "epochs": int(epochs),
            "n_classes": int(len(data)),
            "n_user_classes": int(n_user),
            "n_good": int(data.good.sum()),
            "val_auc": None if math.isnan(result.val_auc) else round(float(result.val_auc), 4),
            "particles": list(TRAIN_PARTICLES),
            "train_seconds": round(time.monotonic() - t0, 1),
        },
    }
    save_ranker(out, result.net, result.arch, meta)
    log(f"Wrote {out} ({time.monotonic() - t0:.0f} s; validation AUC {result.val_auc:.3f})")
    return result
