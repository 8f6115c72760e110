"""``rp-pu-pick``: pick particles with a trained PU-learning CNN (Topaz method) as a RELION External job.

Each micrograph of ``--in_mics`` is resampled and normalised as the model's training data were, scored
densely by the network, and reduced to one pick per particle by non-maximum suppression within
``--radius`` Å. The figure of merit is the calibrated score: the estimated probability that the pick is a
particle (see ``docs/pu_picker.md``); picks below ``--threshold`` are dropped. Continue runs pick only
new micrographs. Outputs as the LoG job: coordinate files mirroring the micrograph tree,
``autopick.star`` (and the legacy ``coords_suffix_autopick.star``), output nodes and ``logfile.pdf``.
"""

from __future__ import annotations

import math

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
    Param("model", "", "trained model file (model.pt of an rp-pu-train job)", str),
    Param(
        "threshold",
        0.5,
        "keep picks whose calibrated score (estimated probability of being a particle) is at least this",
        float,
        minimum=0,
        maximum=1,
    ),
    Param(
        "radius",
        0.0,
        "no two picks closer than this (one pick per particle); 0 = 0.6 x the model's particle diameter",
        float,
        "Å",
        minimum=0,
    ),
    Param(
        "step",
        2,
        "score every step-th pixel exactly and interpolate the rest (1 = every pixel, as Topaz; 2 is about "
        "4x faster, 4 about 15x, at a small cost in accuracy); must divide the network's stride",
        int,
        "px",
        minimum=1,
    ),
    *PICK_JOB_COMMON_PARAMS,
]


def run(ctx: JobContext) -> list[OutputNode]:
    import torch

    from ..pick.model_file import ModelFileError, load_model
    from ..pick.pu import predict
    from ..pick.pu.models import from_state

    p = ctx.params
    if not p["model"]:
        raise JobFailed("--model is required: the model.pt written by an rp-pu-train job")
    model_path = ctx.project_dir / p["model"]
    try:
        mf = load_model(model_path, picker="pu")
    except ModelFileError as exc:
        raise JobFailed(str(exc)) from None
    ctx.log(f" {mf.describe()}")
    override = p["angpix"] if p["angpix"] > 0 else None
    mics = read_micrographs(ctx.in_mics, ctx.project_dir, angpix_override=override)
    angpix = mics.angpix
    model_angpix = mf.angpix
    try:
        predict.working_shape((512, 512), angpix, model_angpix)
    except ValueError as exc:
        raise JobFailed(str(exc)) from None
    device = torch_device(ctx)
    torch.set_num_threads(max(1, ctx.threads))
    model = from_state({"architecture": mf.arch, "state_dict": mf.state}).to(device).eval()
    calibration = predict.Calibration.from_dict(mf.meta.get("calibration"))
    step = p["step"]
    if predict.total_stride(model) % step:
        raise JobFailed(f"--step {step} must divide the network's total stride {predict.total_stride(model)}")
    threshold_logit = calibration.logit_for(p["threshold"]) if p["threshold"] > 0 else -math.inf
    diameter_A = mf.diameter_A
    radius_A = p["radius"] or 0.6 * diameter_A
    border_A = 0.5 * diameter_A if p["border"] < 0 else p["border"]
    ctx.log(
        f" {len(mics)} micrographs at {angpix:g} Å/px, scored at {model_angpix:.3g} Å/px on {device}; "
        f"threshold {p['threshold']:g} (logit {threshold_logit:.2f}), radius {radius_A:g} Å"
    )

    def pick_one(mic: Micrograph) -> pd.DataFrame:
        image = read_finite_micrograph(mic)
        prepared = predict.prepare(
            image, angpix, model_angpix, mf.meta["normalization"], mf.meta.get("invert", False)
        )
        sy = image.shape[0] / prepared.shape[0]
        sx = image.shape[1] / prepared.shape[1]
        s = 0.5 * (sx + sy)
        logit_map = predict.score_map(model, prepared, device, step=step)
        x, y, logit = predict.pick_from_map(
            logit_map,
            radius_A / (angpix * s),
            threshold_logit=threshold_logit,
            border_px=int(math.ceil(border_A / (angpix * s))),
            max_picks=p["max_picks"] or None,
        )
        return coordinates_table(x * sx, y * sy, calibration(logit))

    files = coordinate_files(ctx, mics, p["pick_name"])
    pick_all(ctx, mics, files, pick_one, workers=1)
    return finish_picking(ctx, mics, files, p["pick_name"], diameter_A / angpix, p["nr_plots"])


JOB = JobSpec(
    name="rp-pu-pick",
    description=__doc__ or "",
    params=PARAMS,
    run=run,
    inputs=("in_mics",),
    required_inputs=("in_mics",),
    uses_gpu=True,
)
