"""``rp-pick-log``: training-free LoG / Adaptive-LoG blob picker as a RELION External job.

Reads the micrographs of ``--in_mics``, picks blobs between ``--diameter_min`` and ``--diameter_max`` Å
with a multiscale Laplacian-of-Gaussian filter bank (UPicker's A-LoG proposal generator), removes picks on
ice, contaminants and carbon, and writes RELION coordinate files mirroring the micrograph tree, the
``autopick.star`` list (and the legacy ``coords_suffix_autopick.star``), and ``logfile.pdf``.
"""

from __future__ import annotations

import pandas as pd

from ..relion.external import JobContext, JobFailed, JobSpec, OutputNode, Param
from ..relion.micrographs import Micrograph, read_micrographs
from ._picking import coordinate_files, coordinates_table, finish_picking, pick_all, read_finite_micrograph

PARAMS = [
    Param("diameter_min", 150.0, "smallest particle diameter to pick", float, "Å", minimum=1),
    Param("diameter_max", 180.0, "largest particle diameter to pick", float, "Å", minimum=1),
    Param(
        "threshold",
        0.0,
        "adjust the picking threshold like RELION's log_adjust_thr: the threshold is mean + this x stddev "
        "of the best responses; higher picks fewer",
        float,
        "stddev",
    ),
    Param(
        "upper_threshold",
        999.0,
        "reject responses above mean + this x stddev (like RELION's log_upper_thr; against dark junk); 999 = off",
        float,
        "stddev",
    ),
    Param(
        "lowpass", 20.0, "low-pass filter before picking (like RELION's log_maxres)", float, "Å", minimum=0
    ),
    Param("invert", False, "particles are white on a dark background (like RELION's log_invert)", bool),
    Param("junk_mask", True, "remove picks on ice crystals, contaminants and carbon", bool),
    Param(
        "top_k",
        0,
        "keep at most this many picks per micrograph, best first; 0 = all",
        int,
        "picks",
        minimum=0,
    ),
    Param(
        "min_distance",
        0.0,
        "minimum distance between picks; 0 = the detected diameter of each blob",
        float,
        "Å",
        minimum=0,
    ),
    Param("angpix", -1.0, "pixel size of the micrographs; -1 = from the optics table", float, "Å"),
    Param("pick_name", "autopick", "suffix of the coordinate files: <micrograph>_<pick_name>.star", str),
    Param("nr_plots", 4, "number of micrographs drawn with their picks in logfile.pdf", int, minimum=0),
]


def _pick_one(mic: Micrograph, ctx: JobContext, angpix: float) -> pd.DataFrame:
    from ..pick.blob import pick_blobs

    image = read_finite_micrograph(mic)
    p = ctx.params
    result = pick_blobs(
        image,
        angpix,
        p["diameter_min"],
        p["diameter_max"],
        adjust_threshold=p["threshold"],
        upper_threshold=None if p["upper_threshold"] >= 999 else p["upper_threshold"],
        lowpass_A=p["lowpass"] or None,
        use_junk_mask=p["junk_mask"],
        top_k=p["top_k"] or None,
        min_distance_A=p["min_distance"] or None,
        invert=p["invert"],
    )
    return coordinates_table(result.x, result.y, result.fom)


def run(ctx: JobContext) -> list[OutputNode]:
    p = ctx.params
    if p["diameter_max"] < p["diameter_min"]:
        raise JobFailed(
            f"--diameter_max {p['diameter_max']:g} Å is smaller than --diameter_min {p['diameter_min']:g} Å"
        )
    override = p["angpix"] if p["angpix"] > 0 else None
    mics = read_micrographs(ctx.in_mics, ctx.project_dir, angpix_override=override)
    angpix = mics.angpix
    ctx.log(
        f" {len(mics)} micrographs at {angpix:g} Å/px; diameters {p['diameter_min']:g}-{p['diameter_max']:g} Å"
    )
    files = coordinate_files(ctx, mics, p["pick_name"])
    # Micrographs are independent: run up to --j at once (the FFTs release the GIL).
    pick_all(ctx, mics, files, lambda mic: _pick_one(mic, ctx, angpix), workers=ctx.threads)
    diameter_px = 0.5 * (p["diameter_min"] + p["diameter_max"]) / angpix
    return finish_picking(ctx, mics, files, p["pick_name"], diameter_px, p["nr_plots"])


JOB = JobSpec(
    name="rp-pick-log",
    description=__doc__ or "",
    params=PARAMS,
    run=run,
    inputs=("in_mics",),
    required_inputs=("in_mics",),
)
