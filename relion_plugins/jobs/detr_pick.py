"""``rp-detr-pick``: pick particles with a trained transformer picker (UPicker method) as a RELION External job.

Each micrograph of ``--in_mics`` is downsampled and preprocessed as the model's training data were
(normalisation, bilateral denoising, histogram equalisation), split into overlapping patches of the
training crop size (so that dense micrographs never have more particles per patch than the network has
queries), detected patch by patch, and the detections merged; a distance NMS within ``--radius`` Å is
optional. With ``--tta 4`` or ``8`` (test-time augmentation) the detector also sees the micrograph rotated
(and mirrored) and a pick's score is its mean over the views. The figure of merit is the detector's score;
picks below ``--threshold`` are dropped (default: the threshold the train job validated for that number of
views, stored in the model). Continue runs pick only new micrographs.
Outputs as the other pick jobs: coordinate files mirroring the micrograph tree, ``autopick.star`` (and
the legacy ``coords_suffix_autopick.star``), output nodes and ``logfile.pdf``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..relion.external import JobContext, JobFailed, JobSpec, OutputNode, Param
from ..relion.micrographs import Micrograph, read_micrographs
from ._picking import (
    PICK_JOB_COMMON_PARAMS,
    coordinate_files,
    coordinates_table,
    finish_picking,
    pick_all,
    read_finite_micrograph,
    torch_device,
)

PARAMS = [
    Param("model", "", "trained model file (model.pt of an rp-detr-train job)", str),
    Param(
        "threshold",
        -1.0,
        "keep picks whose detector score is at least this; -1 = the model's (validated for the --tta views)",
        float,
        minimum=-1,
        maximum=1,
    ),
    Param(
        "tta",
        "4",
        "test-time augmentation: the detector sees 1, 4 (90° rotations) or 8 (rotations of the micrograph and "
        "of its mirror) views of each micrograph; a pick scores its mean over them (4 and 8 take 4x and 8x as long)",
        str,
        "views",
        choices=("1", "4", "8"),
    ),
    Param("nms", True, "remove picks closer than --radius to a better one (duplicates at patch seams)", bool),
    Param(
        "radius",
        0.0,
        "no two picks closer than this when --nms; 0 = 0.6 x the model's particle diameter",
        float,
        "Å",
        minimum=0,
    ),
    Param("overlap", 0.0, "overlap of neighbouring patches; 0 = one particle diameter", float, "Å", minimum=0),
    *PICK_JOB_COMMON_PARAMS,
]


def run(ctx: JobContext) -> list[OutputNode]:
    import torch

    from ..pick.detr.model import build_model
    from ..pick.detr.predict import detect
    from ..pick.detr.preprocess import PreprocessConfig, prepare
    from ..pick.model_file import ModelFileError, load_model

    p = ctx.params
    if not p["model"]:
        raise JobFailed("--model is required: the model.pt written by an rp-detr-train job")
    try:
        mf = load_model(ctx.project_dir / p["model"], picker="detr")
    except ModelFileError as exc:
        raise JobFailed(str(exc)) from None
    ctx.log(f" {mf.describe()}")
    override = p["angpix"] if p["angpix"] > 0 else None
    mics = read_micrographs(ctx.in_mics, ctx.project_dir, angpix_override=override)
    angpix = mics.angpix
    model_angpix = mf.angpix
    if model_angpix < angpix * (1 - 1e-3):
        raise JobFailed(
            f"the model was trained at {model_angpix:g} Å/px, finer than these micrographs ({angpix:g} Å/px)"
        )
    device = torch_device(ctx)
    torch.set_num_threads(max(1, ctx.threads))
    try:
        model = build_model(mf.arch)
        model.load_state_dict(mf.state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise JobFailed(f"{p['model']}: damaged detr model ({str(exc).splitlines()[0]})") from None
    model.to(device).eval()
    pre = PreprocessConfig.from_dict(mf.meta.get("preprocess"))
    crop = int(mf.meta.get("crop", 256))
    views = int(p["tta"])
    validated = mf.meta.get("thresholds") or {}
    threshold = float(validated.get(str(views), mf.meta.get("threshold", 0.5)))
    if p["threshold"] >= 0:
        threshold = p["threshold"]
    elif views > 1 and str(views) not in validated:
        ctx.log(f" the model has no threshold validated with {views} views (trained before test-time "
                "augmentation): its single-view one is used, which may pick too few")  # fmt: skip
    diameter_A = mf.diameter_A
    radius_A = p["radius"] or 0.6 * diameter_A
    overlap_A = p["overlap"] or diameter_A
    border_A = 0.5 * diameter_A if p["border"] < 0 else p["border"]
    ctx.log(
        f" {len(mics)} micrographs at {angpix:g} Å/px, detected at {model_angpix:.3g} Å/px in {crop} px patches on "
        f"{device}, {views} view(s) each; threshold {threshold:.3g}, NMS {'radius ' + format(radius_A, 'g') + ' Å' if p['nms'] else 'off'}"
    )

    def pick_one(mic: Micrograph) -> pd.DataFrame:
        image = read_finite_micrograph(mic)
        prepared = prepare(image, angpix, model_angpix, pre)
        sy = image.shape[0] / prepared.shape[0]
        sx = image.shape[1] / prepared.shape[1]
        s = 0.5 * (sx + sy)
        x, y, score = detect(
            model, prepared, crop, overlap=int(math.ceil(overlap_A / (angpix * s))), device=device,
            min_score=threshold, nms_radius=radius_A / (angpix * s) if p["nms"] else None, views=views,
        )  # fmt: skip
        x, y = x * sx, y * sy
        b = border_A / angpix
        keep = (x >= b) & (y >= b) & (x <= image.shape[1] - 1 - b) & (y <= image.shape[0] - 1 - b)
        x, y, score = x[keep], y[keep], score[keep]
        if p["max_picks"]:
            x, y, score = x[: p["max_picks"]], y[: p["max_picks"]], score[: p["max_picks"]]
        return coordinates_table(x, y, np.asarray(score))

    files = coordinate_files(ctx, mics, p["pick_name"])
    pick_all(ctx, mics, files, pick_one, workers=1)
    return finish_picking(ctx, mics, files, p["pick_name"], diameter_A / angpix, p["nr_plots"])


JOB = JobSpec(
    name="rp-detr-pick",
    description=__doc__ or "",
    params=PARAMS,
    run=run,
    inputs=("in_mics",),
    required_inputs=("in_mics",),
    uses_gpu=True,
)
