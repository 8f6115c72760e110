"""What every pick job shares: the incremental micrograph loop, the coordinate outputs and the PDF pages.

A pick job supplies one function, micrograph -> coordinate table; :func:`pick_all` runs it over the
micrographs the journal has not seen (continue mode), writes each coordinate file atomically as soon as it
is ready, records it in the journal, and reports progress; :func:`finish_picking` writes ``autopick.star``
(+ the legacy ``coords_suffix_<name>.star``), the summary line and the pages of ``logfile.pdf``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd

from ..relion.coords import (
    coordinate_path,
    read_coordinate_list,
    read_coordinates,
    read_particle_coordinates,
    write_coordinate_list,
    write_coordinates,
)
from ..relion.external import JobContext, JobFailed, OutputNode, Param
from ..relion.micrographs import Micrograph, MicrographSet
from ..relion.mrc import MrcError, read_mrc

# Parameters that the PU and transformer pick jobs, and their train jobs, share (same names, defaults, units).
PICK_JOB_COMMON_PARAMS = [
    Param("max_picks", 0, "keep at most this many picks per micrograph, best first; 0 = all", int, minimum=0),
    Param(
        "border", -1.0, "no picks closer than this to the edge; -1 = half the particle diameter", float, "Å"
    ),
    Param("angpix", -1.0, "pixel size of the micrographs; -1 = from the optics table", float, "Å"),
    Param("pick_name", "autopick", "suffix of the coordinate files: <micrograph>_<pick_name>.star", str),
    Param("nr_plots", 4, "number of micrographs drawn with their picks in logfile.pdf", int, minimum=0),
]

TRAIN_JOB_COMMON_PARAMS = [
    Param(
        "validation_fraction",
        0.2,
        "share of labelled micrographs held out for validation (at least 1 when there are 2 or more)",
        float,
        minimum=0,
        maximum=0.9,
    ),
    Param("angpix", -1.0, "pixel size of the micrographs; -1 = from the optics table", float, "Å"),
    Param("model_name", "model.pt", "file name of the trained model in the job directory", str),
]


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


def read_finite_micrograph(mic: Micrograph) -> np.ndarray:
    """The micrograph as float32 (float16 upcast by the reader), refusing NaN / Inf with a clear reason."""
    image, _ = read_mrc(mic.path)
    if not np.isfinite(image).all():
        raise MrcError(f"{mic.name}: the image contains NaN or Inf values")
    return image


def coordinate_files(ctx: JobContext, mics: MicrographSet, pick_name: str) -> dict[str, Path]:
    """Coordinate file of each micrograph, mirroring the micrograph tree under the job directory."""
    files = {m.name: coordinate_path(ctx.out_dir, m.name, pick_name) for m in mics.items}
    for path in files.values():
        ctx.output_path(path.relative_to(ctx.out_dir))  # refuse micrograph names that escape the job dir
    return files


def pick_all(
    ctx: JobContext,
    mics: MicrographSet,
    files: dict[str, Path],
    pick_one: Callable[[Micrograph], pd.DataFrame],
    workers: int = 1,
) -> None:
    """Run ``pick_one`` on every micrograph not yet done, up to ``workers`` at once, results in input order.

    Each result is written and journalled before the next is started, so a killed job loses at most the
    micrographs in flight and a continue run picks up where it stopped.
    """
    by_name = {m.name: m for m in mics.items}
    todo = ctx.pending(by_name)
    if len(todo) < len(by_name):
        ctx.log(
            f" {len(by_name) - len(todo)} micrographs already picked by an earlier run; {len(todo)} to do"
        )
    done = 0
    ctx.progress(0, len(todo))
    step = max(1, int(workers))
    with ThreadPoolExecutor(max_workers=step) if step > 1 else nullcontext() as pool:
        for start in range(0, len(todo), step):
            ctx.check_abort()
            batch = todo[start : start + step]
            if pool is None:  # one worker: run in this thread (no hand-offs; profilers see the work)
                results = [pick_one(by_name[batch[0]])]
            else:
                futures = [pool.submit(pick_one, by_name[n]) for n in batch]
                results = (f.result() for f in futures)  # each written as soon as it is ready
            for name, table in zip(batch, results):
                write_coordinates(files[name], table)
                ctx.mark_done(name, {"n": len(table)})
                done += 1
                ctx.progress(done, len(todo))
                ctx.check_abort()


def finish_picking(
    ctx: JobContext,
    mics: MicrographSet,
    files: dict[str, Path],
    pick_name: str,
    diameter_px: float,
    nr_plots: int,
    extra_pages: Sequence = (),
) -> list[OutputNode]:
    """Write the coordinate list and ``logfile.pdf``; return the output nodes."""
    pairs = [(m.name, files[m.name].as_posix()) for m in mics.items]
    list_path = write_coordinate_list(ctx.out_dir, pairs, name=pick_name, mics_star=ctx.in_mics)
    done = ctx.done_items()
    n_total = sum(int(done.get(m.name, {}).get("n", 0)) for m in mics.items)
    ctx.log(
        f" {n_total} particles picked on {len(mics)} micrographs ({n_total / max(len(mics), 1):.1f} per micrograph)"
    )
    nodes = [OutputNode(list_path.relative_to(ctx.out_dir).as_posix(), "coords", "autopick")]
    write_picking_logfile(ctx, mics.items, files, diameter_px, nr_plots, extra_pages)
    nodes.append(OutputNode("logfile.pdf", "logfile", "autopick"))
    return nodes


def write_picking_logfile(
    ctx: JobContext,
    mics: Sequence[Micrograph],
    files: dict[str, Path],
    diameter_px: float,
    nr_plots: int,
    extra_pages: Sequence = (),
) -> None:
    """``logfile.pdf``: the figure-of-merit histogram, picks drawn on a few micrographs, then extra pages."""
    from ..plots.figures import histogram_figure, picks_figure, write_pdf

    foms = []
    for mic in mics:
        table = read_coordinates(files[mic.name])
        if "rlnAutopickFigureOfMerit" in table:
            foms.append(table["rlnAutopickFigureOfMerit"].to_numpy(dtype=float))
    pages = [
        histogram_figure(
            np.concatenate(foms) if foms else np.zeros(0),
            "Figure of merit of all picks",
            "rlnAutopickFigureOfMerit",
        )
    ]
    for mic in list(mics)[: max(nr_plots, 0)]:
        image, _ = read_mrc(mic.path)
        table = read_coordinates(files[mic.name])
        pages.append(
            picks_figure(
                image,
                table["rlnCoordinateX"].to_numpy(),
                table["rlnCoordinateY"].to_numpy(),
                diameter_px,
                f"{mic.name}: {len(table)} picks",
            )
        )
    pages.extend(extra_pages)
    write_pdf(ctx.out_dir / "logfile.pdf", pages)


def torch_device(ctx: JobContext):
    """``--gpu`` as a torch device: CPU when empty or -1, a clear error when CUDA is not there."""
    import torch

    gpu = (ctx.gpu or "").strip()
    if gpu in ("", "-1"):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise JobFailed(f"--gpu {gpu}: no CUDA GPU is available to torch {torch.__version__}")
    index = int(gpu.split(",")[0].split(":")[0] or 0)
    if index >= torch.cuda.device_count():
        raise JobFailed(f"--gpu {gpu}: only {torch.cuda.device_count()} GPU(s) visible")
    return torch.device(f"cuda:{index}")


def labelled_centres(ctx: JobContext, names: list[str]) -> dict[str, np.ndarray]:
    """Labelled centres (original pixels) per micrograph name of the micrographs STAR, from ``--in_parts``
    (recentred when the job's ``recenter`` parameter says so) or ``--in_coords``; training jobs share it."""
    if ctx.in_parts:
        tables = read_particle_coordinates(ctx.project_dir / ctx.in_parts, recenter=ctx.params["recenter"])
        source = ctx.in_parts
    elif ctx.in_coords:
        tables = read_coordinate_list(ctx.project_dir / ctx.in_coords, ctx.project_dir)
        source = ctx.in_coords
    else:
        raise JobFailed(
            "no labelled particles: give --in_parts (particles STAR) or --in_coords (autopick.star)"
        )
    known = set(names)
    by_stem = {n.rsplit("/", 1)[-1].rsplit(".", 1)[0]: n for n in names}
    out: dict[str, np.ndarray] = {}
    unknown = 0
    for mic, table in tables.items():
        name = mic if mic in known else by_stem.get(mic.rsplit("/", 1)[-1].rsplit(".", 1)[0])
        if name is None:
            unknown += 1
            continue
        xy = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(dtype=np.float64)
        out[name] = np.concatenate([out[name], xy]) if name in out else xy
    if unknown:
        ctx.warn(f"{unknown} micrographs of {source} are not in --in_mics; their particles are ignored")
    if not any(len(v) for v in out.values()):
        raise JobFailed(f"{source} has no particles on the micrographs of --in_mics")
    return out
