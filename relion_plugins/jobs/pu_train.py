"""``rp-pu-train``: train the PU-learning CNN picker (Topaz method) as a RELION External job.

Micrographs come from ``--in_mics``; labelled particles from ``--in_parts`` (a particles STAR, e.g. the
selection after 2D classification, optionally recentred by its origin offsets) or ``--in_coords``
(``autopick.star`` / ``manualpick.star``). Everything not labelled is unlabelled, not negative. A share of
the labelled micrographs is held out: the validation AUPR after each epoch drives early stopping, and the
picks on them calibrate the score that the pick job thresholds. Writes ``model.pt`` (weights plus pixel
size, diameter, normalisation, objective, calibration and provenance) and ``logfile.pdf``.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..relion.external import JobContext, JobFailed, JobSpec, OutputNode, Param
from ..relion.micrographs import read_micrographs
from ._picking import TRAIN_JOB_COMMON_PARAMS, labelled_centres, read_finite_micrograph, torch_device

ARCHS = ("resnet8", "resnet16", "conv31", "conv63", "conv127")
OBJECTIVES = ("GE-binomial", "NNPU", "PN", "GE-KL")

PARAMS = [
    Param("diameter", 150.0, "particle diameter", float, "Å", minimum=1),
    Param(
        "particles_per_mic",
        0.0,
        "expected number of particles per micrograph, labelled or not (sets the class prior); "
        "0 = 1.5 x the mean number of labelled particles per labelled micrograph",
        float,
        "particles",
        minimum=0,
    ),
    Param(
        "scaled_diameter",
        24.0,
        "micrographs are Fourier-cropped so that the particle is about this wide (never upsampled)",
        float,
        "px",
        minimum=4,
    ),
    Param(
        "label_radius",
        0.0,
        "pixels within this distance of a labelled centre are positive; 0 = diameter / 8",
        float,
        "Å",
        minimum=0,
    ),
    Param("objective", "GE-binomial", "PU objective", str, choices=OBJECTIVES),
    Param("model_arch", "resnet8", "network architecture", str, choices=ARCHS),
    Param("units", 32, "filters in the first layer (later layers scale from it)", int, minimum=1),
    Param("dropout", 0.0, "dropout probability", float, minimum=0, maximum=0.9),
    Param(
        "pretrained",
        True,
        "start from the shipped weights (trained on simulated micrographs, every particle labelled; only "
        "for resnet8 with 32 units) instead of random ones, as Topaz starts from its pretrained models",
        bool,
    ),
    Param(
        "init_model",
        "",
        "start from this model file instead (e.g. the model.pt of an earlier rp-pu-train job, to retrain "
        "in a loop); same architecture and units",
        str,
    ),
    Param(
        "autoencoder",
        0.0,
        "weight of the autoencoder reconstruction loss (the paper uses 10 / number of labelled); 0 = off",
        float,
        minimum=0,
    ),
    Param("normalization", "gmm", "per-micrograph normalisation", str, choices=("gmm", "standardize")),
    Param("invert", False, "particles are white on a dark background", bool),
    Param("recenter", True, "recentre --in_parts coordinates by rlnOriginXAngst/YAngst", bool),
    Param(
        "learning_rate",
        2e-4,
        "Adam learning rate (the paper's; 1e-3 learns faster from few minibatches)",
        float,
        minimum=0,
    ),
    Param("minibatch", 256, "crops per minibatch", int, minimum=2),
    Param(
        "positive_fraction",
        0.0625,
        "share of labelled-positive crops per minibatch",
        float,
        minimum=0.0,
        maximum=1.0,
    ),
    Param("epochs", 10, "maximum number of epochs", int, "epochs", minimum=1),
    Param("steps_per_epoch", 200, "minibatches per epoch", int, "minibatches", minimum=1),
    Param("patience", 3, "stop after this many epochs without validation gain", int, "epochs", minimum=1),
    *TRAIN_JOB_COMMON_PARAMS,
]


def run(ctx: JobContext) -> list[OutputNode]:
    import torch

    from ..evaluate.matching import average_precision, match_picks, precision_recall_curve
    from ..imaging.normalize import fit_gmm_normalization
    from ..pick.model_file import ModelFile, save_model
    from ..pick.pu import predict
    from ..pick.pu.models import get_state
    from ..pick.pu.train import TrainConfig, train_pu

    p = ctx.params
    override = p["angpix"] if p["angpix"] > 0 else None
    mics = read_micrographs(ctx.in_mics, ctx.project_dir, angpix_override=override)
    angpix = mics.angpix
    if p["init_model"] and not (ctx.project_dir / p["init_model"]).is_file():
        raise JobFailed(f"--init_model {p['init_model']}: no such file")
    labels = labelled_centres(ctx, [m.name for m in mics.items])
    labelled = [m for m in mics.items if m.name in labels and len(labels[m.name])]
    n_labels = sum(len(labels[m.name]) for m in labelled)
    rng = np.random.default_rng(p["seed"])
    order = rng.permutation(len(labelled))
    n_val = 0 if len(labelled) < 2 else max(1, int(round(p["validation_fraction"] * len(labelled))))
    n_val = min(n_val, len(labelled) - 1)
    val_mics = [labelled[i] for i in sorted(order[:n_val])]
    train_mics = [labelled[i] for i in sorted(order[n_val:])]

    work_angpix = max(angpix, p["diameter"] / p["scaled_diameter"])
    radius_A = p["label_radius"] or p["diameter"] / 8.0
    radius_px = max(radius_A / work_angpix, 0.5)
    ppm = p["particles_per_mic"] or 1.5 * n_labels / len(labelled)
    ctx.log(
        f" {n_labels} labelled particles on {len(labelled)} of {len(mics)} micrographs; "
        f"{len(train_mics)} for training, {len(val_mics)} for validation"
    )
    ctx.log(
        f" working at {work_angpix:.3g} Å/px (particle {p['diameter'] / work_angpix:.1f} px), label radius "
        f"{radius_px:.2f} px, {ppm:.1f} particles per micrograph expected"
    )

    # --- preprocessing: downsample, fit the normalisation on the training micrographs, apply to all
    shapes: dict[str, tuple[int, int]] = {}

    def load(mic):
        ctx.check_abort()
        image = read_finite_micrograph(mic)
        shapes[mic.name] = image.shape
        return predict.downsample(image, angpix, work_angpix)

    t0 = time.monotonic()
    raw_train = [load(m) for m in train_mics]
    raw_val = [load(m) for m in val_mics]
    if p["normalization"] == "gmm":
        norm = fit_gmm_normalization(raw_train, seed=p["seed"]).to_dict()
    else:
        norm = {"method": "standardize"}
    imgs_train = [predict.normalize(im, norm) for im in raw_train]
    imgs_val = [predict.normalize(im, norm) for im in raw_val]
    if p["invert"]:
        imgs_train = [-im for im in imgs_train]
        imgs_val = [-im for im in imgs_val]
    # (x, y) scale factors from the original to the working grid, per micrograph
    scale = {
        m.name: np.array(im.shape[::-1], float) / np.array(shapes[m.name][::-1], float)
        for m, im in zip(train_mics + val_mics, raw_train + raw_val)
    }
    coords_train = [labels[m.name] * scale[m.name] for m in train_mics]
    coords_val = [labels[m.name] * scale[m.name] for m in val_mics]
    ctx.log(f" preprocessing took {time.monotonic() - t0:.1f} s")

    device = torch_device(ctx)
    cfg = TrainConfig(
        arch=p["model_arch"],
        units=p["units"],
        dropout=p["dropout"],
        objective=p["objective"],
        radius_px=radius_px,
        batch_size=p["minibatch"],
        positive_fraction=p["positive_fraction"],
        learning_rate=p["learning_rate"],
        steps_per_epoch=p["steps_per_epoch"],
        max_epochs=p["epochs"],
        patience=p["patience"],
        autoencoder=p["autoencoder"],
        pretrained=p["pretrained"],
        init_weights=str(ctx.project_dir / p["init_model"]) if p["init_model"] else "",
        seed=p["seed"],
        threads=max(1, ctx.threads),
    )
    match_radius = 0.5 * p["diameter"] / work_angpix
    border = int(math.ceil(match_radius))

    def val_picks(model):
        out = []
        for im in imgs_val:
            lm = predict.score_map(model, im, device, step=2)
            out.append(predict.pick_from_map(lm, match_radius, border_px=border))
        return out

    def validate(model) -> float:
        picks = val_picks(model)
        xy = np.concatenate([np.stack([x + 1e5 * i, y], 1) for i, (x, y, _) in enumerate(picks)])
        sc = np.concatenate([s for _, _, s in picks])
        truth = np.concatenate([c + np.array([1e5 * i, 0]) for i, c in enumerate(coords_val)])
        return average_precision(precision_recall_curve(xy, sc, truth, match_radius))

    def progress(record: dict) -> None:
        val = f", validation AUPR {record['validation']:.3f}" if "validation" in record else ""
        ctx.log(
            f" epoch {record['epoch']}/{cfg.max_epochs}: loss {record.get('loss', float('nan')):.4f}{val}"
        )
        ctx.progress(record["epoch"], cfg.max_epochs, "epochs")

    ctx.progress(0, cfg.max_epochs, "epochs")
    result = train_pu(
        imgs_train,
        coords_train,
        ppm,
        cfg,
        validate=validate if imgs_val else None,
        progress=progress,
        check_abort=ctx.check_abort,
        device=device,
    )
    ctx.log(
        f" training took {result.seconds:.1f} s; best epoch {result.best_epoch}; started from "
        f"{result.initialised_from} weights"
    )

    # --- calibration on the validation picks (or the training ones when nothing is held out)
    cal_imgs, cal_coords = (imgs_val, coords_val) if imgs_val else (imgs_train, coords_train)
    logits, hits, n_lab, cal_picks, cal_maps = [], [], 0, [], []
    for im, truth in zip(cal_imgs, cal_coords):
        lm = predict.score_map(result.model, im, device, step=2)
        x, y, s = predict.pick_from_map(lm, match_radius, border_px=border)
        cal_picks.append((x, y, s))
        if len(cal_maps) < 2:  # shown in logfile.pdf
            cal_maps.append(lm)
        m = match_picks(np.stack([x, y], 1), truth, match_radius)
        h = np.zeros(len(x))
        h[m.pick_index] = 1
        logits.append(s)
        hits.append(h)
        n_lab += len(truth)
    completeness = min(1.0, n_lab / max(len(cal_imgs) * ppm, 1e-9))
    calibration = predict.operating_calibration(logits, hits, ppm, completeness)

    meta = {
        "angpix": work_angpix,
        "diameter_A": p["diameter"],
        "normalization": norm,
        "invert": p["invert"],
        "objective": p["objective"],
        "pi": result.pi,
        "label_radius_A": radius_A,
        "calibration": calibration.to_dict(),
        "train_config": cfg.to_dict(),
        "history": result.history,
        "provenance": {
            "in_mics": ctx.in_mics,
            "labels": ctx.in_parts or ctx.in_coords,
            "n_positives": n_labels,
            "n_micrographs": len(labelled),
            "validation_micrographs": [m.name for m in val_mics],
            "seed": p["seed"],
            "initial_weights": result.initialised_from,
            "device": str(device),
            "torch": torch.__version__,
            "micrograph_angpix": angpix,
        },
    }
    model_path = ctx.output_path(p["model_name"])
    state = get_state(result.model)
    save_model(model_path, ModelFile("pu", state["architecture"], state["state_dict"], meta))
    ctx.log(f" model written to {model_path}")
    _write_logfile(ctx, result, cal_picks, cal_maps, cal_coords, match_radius)
    return [OutputNode(p["model_name"], "model"), OutputNode("logfile.pdf", "logfile")]


def _write_logfile(ctx, result, picks, maps, coords, match_radius) -> None:
    """Loss and validation curves, the held-out precision-recall curve, example score maps.

    ``picks`` / ``maps`` are the calibration pass's picks and first score maps: nothing is scored again."""
    from ..evaluate.matching import precision_recall_curve
    from ..plots.figures import curves_figure, image_figure, write_pdf

    hist = result.history
    epochs = [h["epoch"] for h in hist]
    pages = [
        curves_figure(
            [("training loss", epochs, [h.get("loss", np.nan) for h in hist])],
            "Training loss",
            "epoch",
            "loss",
        )
    ]
    if any("validation" in h for h in hist):
        pages.append(
            curves_figure(
                [("validation AUPR", epochs, [h.get("validation", np.nan) for h in hist])],
                f"Validation AUPR (best epoch {result.best_epoch})",
                "epoch",
                "AUPR",
                ylim=(0.0, 1.0),
            )
        )
    for i, lm in enumerate(maps):
        pages.append(image_figure(lm, f"Score map (logit) of held-out micrograph {i + 1}", cmap="viridis"))
    xy = [np.stack([x + 1e5 * i, y], 1) for i, (x, y, _) in enumerate(picks)]
    sc = [s for _, _, s in picks]
    truth = [c + np.array([1e5 * i, 0]) for i, c in enumerate(coords)]
    if xy:
        curve = precision_recall_curve(
            np.concatenate(xy), np.concatenate(sc), np.concatenate(truth), match_radius
        )
        pages.append(
            curves_figure(
                [("held-out", curve.recall, curve.precision)],
                "Precision-recall against the labelled particles (unlabelled particles count as false)",
                "recall",
                "precision",
                xlim=(0.0, 1.0),
                ylim=(0.0, 1.0),
            )
        )
    write_pdf(ctx.out_dir / "logfile.pdf", pages)


JOB = JobSpec(
    name="rp-pu-train",
    description=__doc__ or "",
    params=PARAMS,
    run=run,
    inputs=("in_mics", "in_parts", "in_coords"),
    required_inputs=("in_mics",),
    uses_gpu=True,
)
