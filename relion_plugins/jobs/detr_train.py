"""``rp-detr-train``: train the transformer picker (UPicker method) as a RELION External job.

Two phases, as UPicker: *pretraining* on the micrographs of ``--in_mics`` alone, with the A-LoG picker's
top-K proposals as pseudo-labels, then *fine-tuning* from the pretrained weights on the labelled
micrographs (labels from ``--in_parts``, a particles STAR, or ``--in_coords``, ``autopick.star`` /
``manualpick.star``; 5-50 micrographs are enough). ``--mode`` runs either phase alone; ``--init_model``
starts fine-tuning from an earlier job's model instead of pretraining again. A share of the labelled
micrographs is held out: the validation F1 after each epoch drives early stopping and sets the score
threshold the pick job uses by default (one per test-time augmentation it offers). Writes ``model.pt`` (weights, pixel size, diameter, preprocessing,
threshold, provenance) and ``logfile.pdf``.
"""

from __future__ import annotations

import time

import numpy as np

from ..relion.external import JobContext, JobFailed, JobSpec, OutputNode, Param
from ..relion.micrographs import read_micrographs
from ._picking import TRAIN_JOB_COMMON_PARAMS, labelled_centres, read_finite_micrograph, torch_device

SIZES = ("full", "small", "tiny")
BACKBONES = ("", "resnet50", "resnet34", "resnet18", "resnet_small", "resnet_tiny")

PARAMS = [
    Param("diameter", 150.0, "particle diameter", float, "Å", minimum=1),
    Param(
        "scaled_diameter",
        24.0,
        "micrographs are Fourier-cropped so that the particle is about this wide (never upsampled)",
        float,
        "px",
        minimum=4,
    ),
    Param(
        "mode",
        "both",
        "pretrain (A-LoG pseudo-labels), finetune (labels), or both",
        str,
        choices=("both", "pretrain", "finetune"),
    ),  # fmt: skip
    Param(
        "model_size",
        "full",
        "full (ResNet-50, 6+6 layers, 300 queries; GPU), small or tiny (CPU)",
        str,
        choices=SIZES,
    ),  # fmt: skip
    Param(
        "backbone",
        "",
        "backbone instead of the model size's (empty = the size's own)",
        str,
        choices=BACKBONES,
    ),
    Param("queries", 0, "detection queries per patch (0 = the model size's, or 5 x the particles a crop holds on "
          "average when that is more)", int, minimum=0),
    Param(
        "init_model",
        "",
        "fine-tune from this model file (an earlier rp-detr-train job's model.pt) instead of pretraining again",
        str,
    ),
    Param(
        "pretrain_topk",
        0,
        "A-LoG proposals per micrograph used as pseudo-labels; 0 = 1.2 x the mean labelled particles per "
        "labelled micrograph (100 without labels)",
        int,
        "particles",
        minimum=0,
    ),
    Param("pretrain_epochs", 20, "pretraining epochs (of --steps_per_epoch minibatches)", int, "epochs", minimum=1),
    Param("cdn", True, "contrastive denoising queries in training", bool),
    Param("lambda_l", 0.5, "denoising label-noise rate", float, minimum=0, maximum=1),
    Param(
        "lambda_p",
        0.4,
        "denoising box noise of positive queries: below this (share of the box size)",
        float,
        minimum=0,
    ),  # fmt: skip
    Param(
        "lambda_n", 1.0, "denoising box noise of hard negatives: from lambda_p up to this", float, minimum=0
    ),
    Param(
        "augment",
        "hybrid",
        "hybrid (offline rotations/flips + online), online, offline or none",
        str,
        choices=("hybrid", "online", "offline", "none"),
    ),  # fmt: skip
    Param(
        "offline_crops",
        0,
        "random crops per labelled micrograph added once (offline augmentation)",
        int,
        minimum=0,
    ),  # fmt: skip
    Param("denoise", "bilateral", "denoising before equalisation", str, choices=("bilateral", "none")),
    Param("equalize", "clahe", "histogram equalisation", str, choices=("clahe", "hist", "none")),
    Param("invert", False, "particles are white on a dark background", bool),
    Param("recenter", True, "recentre --in_parts coordinates by rlnOriginXAngst/YAngst", bool),
    Param("crop", 256, "training crops and picking patches are this wide", int, "px", minimum=32),
    Param("learning_rate", 1e-4, "AdamW learning rate", float, minimum=0),
    Param("minibatch", 2, "crops per minibatch", int, minimum=1),
    Param("epochs", 20, "maximum number of fine-tuning epochs", int, "epochs", minimum=1),
    Param("steps_per_epoch", 100, "minibatches per epoch", int, "minibatches", minimum=1),
    Param(
        "patience",
        4,
        "after this many epochs without validation F1 gain, lower the rate or stop",
        int,
        "epochs",
        minimum=1,
    ),
    Param(
        "lr_drops",
        1,
        "times the learning rate is lowered 10x (from the best weights) on a plateau before stopping",
        int,
        minimum=0,
    ),
    Param("grad_clip", 0.1, "gradient-norm clipping (DETR's clip_max_norm; 0 = none)", float, minimum=0),
    Param("ema_decay", 0.0, "fine-tuning validates and keeps a moving average of the weights with this decay per "
          "minibatch (0 = the weights themselves)", float, minimum=0, maximum=0.9999),
    *TRAIN_JOB_COMMON_PARAMS,
]


QUERIES_PER_PARTICLE = 5  # a DETR needs queries to spare over the objects in an image


def auto_queries(
    preset: int, per_mic: float, image_shapes: list[tuple[int, int]], crop: int,
    per_particle: float = QUERIES_PER_PARTICLE,
) -> tuple[int, float]:  # fmt: skip
    """Queries for crops of ``crop`` px of micrographs of ``image_shapes`` (working pixels) holding ``per_mic``
    particles each: ``preset``, or ``per_particle`` x the particles of an average crop rounded up to 10 if
    more; and that average. A dense data set (EMPIAR-10017: ~30 particles per 192 px crop, up to 54) would otherwise leave the
    tiny model's 60 queries with none to spare."""
    area = float(np.mean([h * w for h, w in image_shapes]))
    per_crop = per_mic * min(float(crop * crop), area) / area
    return max(int(preset), int(np.ceil(per_particle * per_crop / 10.0)) * 10), per_crop


def _architecture(p: dict):
    from ..pick.detr.model import PRESETS, DetrConfig

    arch = DetrConfig.from_dict(PRESETS[p["model_size"]].to_dict())
    if p["backbone"]:
        arch.backbone = p["backbone"]
    if p["queries"]:
        arch.queries = p["queries"]
    arch.lambda_l, arch.lambda_p, arch.lambda_n = p["lambda_l"], p["lambda_p"], p["lambda_n"]
    if not 0 <= arch.lambda_p < arch.lambda_n:
        raise JobFailed(f"--lambda_p {arch.lambda_p} must be below --lambda_n {arch.lambda_n}")
    return arch


THRESHOLD_HALFWIDTH = 0.05  # the pick threshold: best mean validation F1 over +- this (smoothed_best_threshold)


def validation_scorer(images, coords, diameter_px: float, crop: int, device, views: int = 1, check_abort=None):
    """``model -> (best F1, pick threshold, F1 at that threshold)`` on held-out prepared images (pooled over
    them), the detector seeing ``views`` views of each (test-time augmentation, see :func:`detect`). The
    best F1 measures the model (early stopping); the threshold is the one of best F1 averaged over
    +-:data:`THRESHOLD_HALFWIDTH`, which transfers better to other micrographs than the sharp maximum."""
    score_all = validation_scorer_by_views(images, coords, diameter_px, crop, device, (views,), check_abort)
    return lambda model: score_all(model)[views]


def validation_scorer_by_views(images, coords, diameter_px: float, crop: int, device, views=None, check_abort=None):
    """As :func:`validation_scorer`, for each view count in ``views`` (default: all the pick job offers)
    at once: ``model -> {views: (best F1, threshold, F1 there)}``. The detector runs once over the most
    views asked for; fewer views are its first ones (:func:`detect_views`), ``check_abort`` before each."""
    from ..evaluate.matching import best_f1, precision_recall_curve, smoothed_best_threshold
    from ..pick.detr.predict import VIEWS, detect_views, finish_detections

    views = tuple(views or VIEWS)

    radius = 0.5 * diameter_px

    def score(model) -> dict[int, tuple[float, float, float]]:
        passes = [
            detect_views(model, im, crop, max(views), overlap=int(np.ceil(diameter_px)), device=device,
                         check_abort=check_abort)
            for im in images
        ]
        out = {}
        for n in views:
            xy, sc, truth = [], [], []
            for k, (im, c, per_view) in enumerate(zip(images, coords, passes)):
                x, y, s = finish_detections(per_view[:n], im.shape, model.config.anchor_px,
                                            nms_radius=0.6 * diameter_px)  # fmt: skip
                xy.append(np.stack([x + 1e5 * k, y], 1))
                sc.append(s)
                truth.append(np.asarray(c).reshape(-1, 2) + [1e5 * k, 0])
            curve = precision_recall_curve(
                np.concatenate(xy), np.concatenate(sc), np.concatenate(truth), radius
            )
            thr, f1_there = smoothed_best_threshold(curve, THRESHOLD_HALFWIDTH)
            out[n] = (float(best_f1(curve)[0]), thr, f1_there)
        return out

    return score


def _set_queries(ctx: JobContext, arch, per_mic: float, shapes, crop: int) -> None:
    n, per_crop = auto_queries(arch.queries, per_mic, shapes, crop)
    if n != arch.queries:
        ctx.log(f" {n} decoder queries instead of {arch.queries}: a {crop} px crop holds about {per_crop:.0f} "
                f"particles (--queries sets them)")
        arch.queries = n


def run(ctx: JobContext) -> list[OutputNode]:

    p = ctx.params
    override = p["angpix"] if p["angpix"] > 0 else None
    mics = read_micrographs(ctx.in_mics, ctx.project_dir, angpix_override=override)
    angpix = mics.angpix
    finetune = p["mode"] in ("both", "finetune")
    # labels before torch is imported: a job without labels fails in a fraction of a second
    labels = labelled_centres(ctx, [m.name for m in mics.items]) if finetune else {}

    import torch

    from ..pick.detr.predict import VIEWS
    from ..pick.detr.preprocess import PreprocessConfig, prepare
    from ..pick.detr.train import TrainConfig, pseudo_labels, train_detr
    from ..pick.model_file import ModelFile, ModelFileError, load_model, save_model

    arch = _architecture(p)
    init = None
    if p["init_model"]:
        try:
            init = load_model(ctx.project_dir / p["init_model"], picker="detr")
        except ModelFileError as exc:
            raise JobFailed(str(exc)) from None
        # the network is the earlier model's; the denoising noise only shapes training: the user's holds
        arch = type(arch).from_dict(init.arch | {k: p[k] for k in ("lambda_l", "lambda_p", "lambda_n")})
    pretrain = p["mode"] in ("both", "pretrain") and init is None
    auto = p["queries"] == 0 and init is None  # a model to start from fixes the queries
    labelled = [m for m in mics.items if m.name in labels and len(labels[m.name])]
    if finetune and len(labelled) < 2:
        raise JobFailed("fine-tuning needs labelled particles on at least 2 micrographs (one is held out)")
    n_labels = sum(len(labels[m.name]) for m in labelled)
    rng = np.random.default_rng(p["seed"])
    order = rng.permutation(len(labelled))
    n_val = 0 if len(labelled) < 2 else max(1, int(round(p["validation_fraction"] * len(labelled))))
    n_val = min(n_val, len(labelled) - 1)
    val_mics = [labelled[i] for i in sorted(order[:n_val])]
    train_mics = [labelled[i] for i in sorted(order[n_val:])]
    work_angpix = max(angpix, p["diameter"] / p["scaled_diameter"])
    diameter_px = p["diameter"] / work_angpix
    crop = int(p["crop"])
    pre = PreprocessConfig(denoise=p["denoise"], equalize=p["equalize"], invert=p["invert"])
    device = torch_device(ctx)
    torch.set_num_threads(max(1, ctx.threads))
    if labelled:
        ctx.log(
            f" {n_labels} labelled particles on {len(labelled)} of {len(mics)} micrographs; "
            f"{len(train_mics)} for fine-tuning, {len(val_mics)} for validation"
        )
    ctx.log(
        f" working at {work_angpix:.3g} Å/px (particle {diameter_px:.1f} px), crops {crop} px, "
        f"model {arch.to_dict()['name']} with {arch.queries} queries, on {device}"
    )

    t0 = time.monotonic()
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> (prepared image, scale x, y)

    def load(mic):
        if mic.name not in cache:
            ctx.check_abort()
            raw = read_finite_micrograph(mic)
            img = prepare(raw, angpix, work_angpix, pre)
            cache[mic.name] = (img, np.array(img.shape[::-1], float) / np.array(raw.shape[::-1], float), raw)
        return cache[mic.name]

    aug = p["augment"]
    base = dict(
        crop=crop, batch_size=p["minibatch"], learning_rate=p["learning_rate"], grad_clip=p["grad_clip"], steps_per_epoch=p["steps_per_epoch"],
        cdn=p["cdn"], offline_augment=aug in ("hybrid", "offline"), offline_crops=p["offline_crops"],
        online_augment=aug in ("hybrid", "online"), seed=p["seed"], threads=max(1, ctx.threads),
    )  # fmt: skip
    history: list[dict] = []
    state = init.state if init is not None else None
    started_from = p["init_model"] or "random"

    def progress_for(phase: str, total: int):
        def progress(record: dict) -> None:
            val = f", validation F1 {record['validation']:.3f}" if "validation" in record else ""
            if record.get("lr_drop"):
                val += "; no gain for --patience epochs: back to the best epoch, learning rate lowered 10x"
            ctx.log(
                f" {phase} epoch {record['epoch']}/{total}: loss {record.get('loss', float('nan')):.4f}{val}"
            )
            ctx.progress(record["epoch"], total, f"{phase} epochs")
            history.append(record | {"phase": phase})

        return progress

    if pretrain:
        topk = p["pretrain_topk"] or (int(round(1.2 * n_labels / len(labelled))) if labelled else 100)
        imgs, coords = [], []
        for mic in mics.items:
            img, scale, raw = load(mic)
            imgs.append(img)
            coords.append(pseudo_labels(raw, angpix, p["diameter"], topk) * scale)
        ctx.log(
            f" pretraining on {len(imgs)} micrographs with {sum(len(c) for c in coords)} A-LoG pseudo-labels "
            f"(top {topk} per micrograph); preprocessing took {time.monotonic() - t0:.1f} s"
        )
        if auto:
            _set_queries(ctx, arch, topk, [im.shape for im in imgs], crop)
        cfg = TrainConfig(**base, max_epochs=p["pretrain_epochs"], patience=p["pretrain_epochs"])
        res = train_detr(imgs, coords, diameter_px, cfg, arch, progress=progress_for("pretraining", cfg.max_epochs),
                         check_abort=ctx.check_abort, device=device)  # fmt: skip
        model, state, started_from = res.model, res.model.state_dict(), "A-LoG pretraining"
        ctx.log(f" pretraining took {res.seconds:.1f} s")
    threshold = 0.5
    best_f1 = float("nan")
    view_thresholds: dict[str, float] = {}  # views -> validated threshold (rp-detr-pick --tta)
    view_f1: dict[str, float] = {}
    if finetune:
        tr = [load(m) for m in train_mics]
        va = [load(m) for m in val_mics]
        tr_xy = [labels[m.name] * s for m, (_, s, _) in zip(train_mics, tr)]
        va_xy = [labels[m.name] * s for m, (_, s, _) in zip(val_mics, va)]
        if auto and state is None:
            _set_queries(ctx, arch, n_labels / len(labelled), [t[0].shape for t in tr], crop)
        scorer = validation_scorer([v[0] for v in va], va_xy, diameter_px, crop, device, check_abort=ctx.check_abort)
        cfg = TrainConfig(**base, max_epochs=p["epochs"], patience=p["patience"], lr_drops=p["lr_drops"],
                          ema_decay=p["ema_decay"])
        res = train_detr([t[0] for t in tr], tr_xy, diameter_px, cfg, arch, init_state=state,
                         validate=lambda m: scorer(m)[0], progress=progress_for("fine-tuning", cfg.max_epochs),
                         check_abort=ctx.check_abort, device=device)  # fmt: skip
        model = res.model
        by_views = validation_scorer_by_views([v[0] for v in va], va_xy, diameter_px, crop, device,
                                              check_abort=ctx.check_abort)(model)
        best_f1, threshold, f1_there = by_views[1]
        ctx.log(
            f" fine-tuning took {res.seconds:.1f} s; best epoch {res.best_epoch}, validation F1 {best_f1:.3f}; "
            f"started from {started_from} weights"
        )
        # averaged over views, scores shift: each test-time augmentation the pick job offers gets its own
        for views in VIEWS:
            f1, thr, there = by_views[views]
            view_thresholds[str(views)], view_f1[str(views)] = thr, f1
            ctx.log(f" {views} view(s): validation F1 {f1:.3f} at best; pick threshold {thr:.3f} (best F1 averaged "
                    f"over +-{THRESHOLD_HALFWIDTH:g}), F1 {there:.3f} there")  # fmt: skip
    elif not pretrain:
        raise JobFailed("--mode pretrain with --init_model: nothing to do")

    meta = {
        "angpix": work_angpix,
        "diameter_A": p["diameter"],
        "normalization": {"method": "upicker", **pre.to_dict()},
        "preprocess": pre.to_dict(),
        "crop": crop,
        "threshold": threshold,
        "validation_f1": best_f1,
        "thresholds": view_thresholds,
        "validation_f1_views": view_f1,
        "train_config": base
        | {"epochs": p["epochs"], "pretrain_epochs": p["pretrain_epochs"], "mode": p["mode"],
           "ema_decay": p["ema_decay"]},
        "history": history,
        "provenance": {
            "in_mics": ctx.in_mics,
            "labels": ctx.in_parts or ctx.in_coords or "",
            "n_positives": n_labels,
            "n_micrographs": len(labelled),
            "validation_micrographs": [m.name for m in val_mics],
            "seed": p["seed"],
            "initial_weights": started_from,
            "device": str(device),
            "torch": torch.__version__,
            "micrograph_angpix": angpix,
        },
    }
    model_path = ctx.output_path(p["model_name"])
    save_model(model_path, ModelFile("detr", model.config.to_dict(), model.state_dict(), meta))
    ctx.log(f" model written to {model_path}")
    examples = [(cache[m.name][0], labels[m.name] * cache[m.name][1]) for m in (val_mics or train_mics)[:2]]
    _write_logfile(ctx, history, model, examples, diameter_px, crop, device, threshold)
    return [OutputNode(p["model_name"], "model"), OutputNode("logfile.pdf", "logfile")]


def _write_logfile(ctx, history, model, examples, diameter_px, crop, device, threshold) -> None:
    """Loss per epoch, validation F1, and the picks on held-out micrographs."""
    from ..pick.detr.predict import detect
    from ..plots.figures import curves_figure, picks_figure, write_pdf

    epochs = list(range(1, len(history) + 1))
    pages = [curves_figure([("loss", epochs, [h.get("loss", np.nan) for h in history])],
                           "Training loss (pretraining, then fine-tuning)", "epoch", "loss")]  # fmt: skip
    val = [(e, h["validation"]) for e, h in zip(epochs, history) if "validation" in h]
    if val:
        pages.append(curves_figure([("validation F1", [v[0] for v in val], [v[1] for v in val])],
                                   "Validation F1 (best threshold)", "epoch", "F1", ylim=(0.0, 1.0)))  # fmt: skip
    for i, (img, _truth) in enumerate(examples):
        x, y, s = detect(model, img, crop, overlap=int(np.ceil(diameter_px)), device=device,
                         min_score=threshold, nms_radius=0.6 * diameter_px)  # fmt: skip
        pages.append(picks_figure(img, x, y, diameter_px, f"held-out micrograph {i + 1}: {len(x)} picks"))
    write_pdf(ctx.out_dir / "logfile.pdf", pages)


JOB = JobSpec(
    name="rp-detr-train",
    description=__doc__ or "",
    params=PARAMS,
    run=run,
    inputs=("in_mics", "in_parts", "in_coords"),
    required_inputs=("in_mics",),
    uses_gpu=True,
)
