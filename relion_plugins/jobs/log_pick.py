"""``rp-pick-log``: training-free LoG / Adaptive-LoG blob picker as a RELION External job.

Reads the micrographs of ``--in_mics``, picks blobs between ``--diameter_min`` and ``--diameter_max`` Å
with a multiscale Laplacian-of-Gaussian filter bank (UPicker's A-LoG proposal generator), removes picks on
ice, contaminants and carbon, and writes RELION coordinate files mirroring the micrograph tree, the
``autopick.star`` list (and the legacy ``coords_suffix_autopick.star``), and ``logfile.pdf``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from ..relion.coords import coordinate_path, read_coordinates, write_coordinate_list, write_coordinates
from ..relion.external import JobContext, JobFailed, JobSpec, OutputNode, Param
from ..relion.micrographs import Micrograph, read_micrographs
from ..relion.mrc import MrcError, read_mrc

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

    image, _ = read_mrc(mic.path)
    if not np.isfinite(image).all():
        raise MrcError(f"{mic.name}: the image contains NaN or Inf values")
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


def coordinates_table(x: np.ndarray, y: np.ndarray, fom: np.ndarray) -> pd.DataFrame:
    """A RELION autopick coordinate table (class 0 and psi 0 as RELION's LoG picker writes)."""
    n = len(x)
    return pd.DataFrame(
        {
            "rlnCoordinateX": np.asarray(x, dtype=float),
            "rlnCoordinateY": np.asarray(y, dtype=float),
            "rlnAutopickFigureOfMerit": np.asarray(fom, dtype=float),
            "rlnClassNumber": np.zeros(n, dtype=int),
            "rlnAnglePsi": np.zeros(n, dtype=float),
        }
    )


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
    by_name = {m.name: m for m in mics.items}
    todo = ctx.pending(by_name)
    if len(todo) < len(mics):
        ctx.log(f" {len(mics) - len(todo)} micrographs already picked by an earlier run; {len(todo)} to do")

    coord_files = {name: coordinate_path(ctx.out_dir, name, p["pick_name"]) for name in by_name}
    for path in coord_files.values():
        ctx.output_path(path.relative_to(ctx.out_dir))  # refuse micrograph names that escape the job dir

    done = 0
    ctx.progress(0, len(todo))
    # Micrographs are independent: run up to --j at once (the FFTs release the GIL) and write results in
    # input order, so the journal and outputs stay deterministic.
    with ThreadPoolExecutor(max_workers=max(1, ctx.threads)) as pool:
        for start in range(0, len(todo), max(1, ctx.threads)):
            ctx.check_abort()
            batch = todo[start : start + max(1, ctx.threads)]
            futures = [pool.submit(_pick_one, by_name[name], ctx, angpix) for name in batch]
            for name, future in zip(batch, futures):
                table = future.result()
                write_coordinates(coord_files[name], table)
                ctx.mark_done(name, {"n": len(table)})
                done += 1
                ctx.progress(done, len(todo))
                ctx.check_abort()

    pairs = [(name, coord_files[name].as_posix()) for name in by_name]
    list_path = write_coordinate_list(ctx.out_dir, pairs, name=p["pick_name"], mics_star=ctx.in_mics)
    n_total = sum(int(r.get("n", 0)) for k, r in ctx.done_items().items() if k in by_name)
    ctx.log(
        f" {n_total} particles picked on {len(mics)} micrographs ({n_total / len(mics):.1f} per micrograph)"
    )
    nodes = [OutputNode(list_path.relative_to(ctx.out_dir).as_posix(), "coords", "autopick")]
    if _write_logfile(ctx, mics.items, coord_files, angpix):
        nodes.append(OutputNode("logfile.pdf", "logfile", "autopick"))
    return nodes


def _write_logfile(
    ctx: JobContext, mics: list[Micrograph], coord_files: dict[str, Path], angpix: float
) -> bool:
    """logfile.pdf: picks drawn on a few micrographs and the figure-of-merit histogram."""
    from ..plots.figures import histogram_figure, picks_figure, write_pdf

    p = ctx.params
    foms = []
    for mic in mics:
        table = read_coordinates(coord_files[mic.name])
        if "rlnAutopickFigureOfMerit" in table:
            foms.append(table["rlnAutopickFigureOfMerit"].to_numpy(dtype=float))
    figures = [
        histogram_figure(
            np.concatenate(foms) if foms else np.zeros(0),
            "Figure of merit of all picks",
            "rlnAutopickFigureOfMerit",
        )
    ]
    diameter_px = 0.5 * (p["diameter_min"] + p["diameter_max"]) / angpix
    for mic in mics[: p["nr_plots"]]:
        image, _ = read_mrc(mic.path)
        table = read_coordinates(coord_files[mic.name])
        figures.append(
            picks_figure(
                image,
                table["rlnCoordinateX"].to_numpy(),
                table["rlnCoordinateY"].to_numpy(),
                diameter_px,
                f"{mic.name}: {len(table)} picks",
            )
        )
    write_pdf(ctx.out_dir / "logfile.pdf", figures)
    return True


JOB = JobSpec(
    name="rp-pick-log",
    description=__doc__ or "",
    params=PARAMS,
    run=run,
    inputs=("in_mics",),
    required_inputs=("in_mics",),
)
