"""Glue shared by the tomogram train and pick jobs: inputs, volumes, validation picking, logfile pages."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..relion.external import JobContext, JobFailed
from ..relion.mrc import MrcError, read_mrc
from ..relion.tomograms import Tomogram, TomogramsError, read_tomograms


def load_tomograms(ctx: JobContext) -> tuple[list[Tomogram], str]:
    """The tomograms of ``--in_mics`` (tomograms STAR or MRC) or ``--tomograms``, and where they came from."""
    source = ctx.in_mics or ctx.params.get("tomograms", "")
    if not source:
        raise JobFailed("no tomograms: give --in_mics (a RELION 5 tomograms STAR) or --tomograms (MRC files)")
    angpix = ctx.params.get("angpix", -1.0)
    try:
        return read_tomograms(source, ctx.project_dir, angpix if angpix and angpix > 0 else None), source
    except TomogramsError as exc:
        raise JobFailed(str(exc)) from None


def read_volume(tomo: Tomogram) -> np.ndarray:
    """The tomogram's voxels (float32), refusing files that are not 3D or hold NaN / Inf."""
    try:
        data, _ = read_mrc(tomo.path)
    except (MrcError, OSError) as exc:
        raise JobFailed(f"cannot read tomogram {tomo.path}: {exc}") from None
    if data.ndim != 3:
        raise JobFailed(f"{tomo.path} is not a 3D volume")
    return data


def f1_against(centres: list[np.ndarray], radii):
    """``picks -> each species' F1`` against true ``centres`` of tomograms (rows x, y, z, species; the picks'
    ``tomo`` column indexes the list), a pick matching within its species' radius in voxels (at least 2)."""
    from ..evaluate.tomo import species_scores

    truth = pd.concat(
        [pd.DataFrame(c[:, :4], columns=["x", "y", "z", "species"]).assign(tomo=i) for i, c in enumerate(centres)],
        ignore_index=True,
    )
    match = {s + 1: max(2.0, float(r)) for s, r in enumerate(radii)}

    def f1(picks) -> dict[int, float]:
        return {s: v["f1"] for s, v in species_scores(picks, truth, match).items()}

    return f1


def validation_picking(vols: list[np.ndarray], centres: list[np.ndarray], radii, patch: int, overlap: int,
                       device="cpu", check_abort=None, split_grid=None):
    """``model -> (probabilities of each validation tomogram, each species' component-size floor and split
    threshold of best F1 on them, those F1s)``, for validation tomograms ``vols`` with true ``centres`` (rows x, y, z, species) and
    species ``radii`` in voxels (a pick matches within the radius, at least 2 voxels); ``split_grid``: the split
    thresholds tried (default :data:`SPLIT_GRID`)."""
    from ..pick.tomo.infer import SPLIT_GRID, choose_operating_point, predict_volume

    f1 = f1_against(centres, radii)

    def validate(model):
        probs = [predict_volume(model, v, patch, overlap, device, check_abort) for v in vols]
        floors, splits, scores = choose_operating_point(probs, f1, radii, split_grid=split_grid or SPLIT_GRID)
        return probs, floors, splits, scores

    return validate


def species_radii(diameters_A: list[float], angpix: float) -> np.ndarray:
    """Radius in voxels of each species."""
    return 0.5 * np.asarray(diameters_A, float) / angpix


def slice_pages(volume: np.ndarray, picks: pd.DataFrame, radii: np.ndarray, title: str, n_slices: int = 3) -> list:
    """Pages with z-slices of ``volume`` (average of 5 sections) and circles at the picks whose particle cuts
    the slice (within its radius in z); one circle size per page: that of the largest species shown."""
    from ..plots.figures import picks_figure

    nz = volume.shape[0]
    pages = []
    for k in range(n_slices):
        z = int(round((k + 1) * nz / (n_slices + 1)))
        img = volume[max(0, z - 2) : z + 3].mean(0)
        sel = picks[np.abs(picks["z"].to_numpy() - z) <= radii[picks["species"].to_numpy(dtype=int) - 1]] if len(picks) else picks
        counts = sel["species"].value_counts().sort_index().to_dict() if len(sel) else {}
        d = 2 * float(radii.max())
        caption = ", ".join(f"species {int(s)}: {c}" for s, c in counts.items()) or "no picks"
        pages.append(picks_figure(img, sel["x"].to_numpy(), sel["y"].to_numpy(), d, f"{title}, z = {z} ({caption})"))
    return pages
