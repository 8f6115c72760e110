"""``rp-rank-select``: automatic 2D class selection (class ranker score and %/Res) as a RELION External job.

Reads a 2D classification (``--in_parts Class2D/jobNNN/run_itNNN_data.star``, or its optimiser / model STAR
or the job directory), scores every class with the ranker network (a CNN on the class average plus
RELION 4's 24 class features; shipped weights, no download), computes %/Res = 100 x class distribution /
resolution (Å), and selects the classes with score >= min_score and %/Res >= min_pres (either test can be
switched off with -1), then applies RELION's minimum-particles / minimum-classes rule.

Outputs in the job directory: ``particles.star`` (the particles of the selected classes, optics
included, optionally recentred, duplicates removed: two picks of one particle that 2D alignment brought
within 30 Å keep only the better-aligned one), ``class_averages.star`` (selected classes, RELION Select's columns),
``rank_model.star`` (every class: rlnClassScore, %/Res in rlnParticleFigureOfMerit, rlnSelected),
``backup_selection.star`` (the GUI's per-class rlnSelected), ``rank_summary.star`` (one row of numbers
for relion_schemer's ``float=read_star``) and ``logfile.pdf``.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd

from ..relion.external import JobContext, JobFailed, JobSpec, OutputNode, Param

# Labels of rank_summary.star (block data_rank_summary, one row). Only labels RELION parses as numbers
# can be read by relion_schemer's float=read_star, so existing RELION labels are borrowed:
SUMMARY_LABELS = {
    "rlnGroupNrParticles": "number of selected particles (int)",
    "rlnNrClasses": "number of selected classes (int)",
    "rlnClassDistribution": "fraction of the input particles that were selected",
    "rlnParticleFigureOfMerit": "particle-weighted mean %/Res of the selected classes",
    "rlnClassScore": "particle-weighted mean ranker score of the selected classes",
    "rlnPredictedClassScore": "score threshold used (min_score or the adaptive one; -1 = off)",
}
PRES_LABEL = "rlnParticleFigureOfMerit"  # %/Res per class in rank_model.star (a double RELION knows)
NOT_SCORED = -999.0

PARAMS = [
    Param(
        "min_score",
        0.5,
        "select classes with a ranker score >= this (0..1, like RELION's rank_threshold); -1 = off",
        float,
        "score",
        minimum=-1,
        maximum=1,
    ),
    Param(
        "min_pres",
        -1.0,
        "select classes with %/Res = 100 x class distribution / resolution >= this; -1 = off",
        float,
        "%/Å",
        minimum=-1,
    ),
    Param(
        "min_particles",
        -1,
        "if fewer particles are selected, add the best remaining classes until this many (RELION's "
        "select_nr_parts); -1 = off",
        int,
        "particles",
    ),
    Param(
        "min_classes",
        -1,
        "if fewer classes are selected, add the best remaining classes until this many (RELION's "
        "select_nr_classes); -1 = off",
        int,
        "classes",
    ),
    Param(
        "adaptive_quantile",
        0.0,
        "for on-the-fly batches: replace min_score by the score below which this fraction of the "
        "particles falls (0.3 rejects the worst 30 %); 0 = off",
        float,
        "fraction",
        minimum=0,
        maximum=1,
    ),
    Param(
        "recenter",
        False,
        "shift each selected particle's origin by its class average's centre of mass (like Select's "
        "do_recenter)",
        bool,
    ),
    Param(
        "model", "", "ranker weights (.pt from `relion-plugins ranker train`); empty = shipped default", str
    ),
    Param(
        "diameter",
        -1.0,
        "mask diameter for the class features; -1 = the Class2D job's rlnParticleDiameter",
        float,
        "Å",
    ),
    Param(
        "remove_duplicates",
        30.0,
        "drop selected particles whose refined centres (coordinate - origin) lie closer than this to a "
        "better-aligned one (higher rlnMaxValueProbDistribution) of the same micrograph, like Select's "
        "duplicate_threshold; -1 = off",
        float,
        "Å",
    ),
    Param(
        "image_angpix",
        -1.0,
        "micrograph pixel size for the duplicate test; -1 = rlnMicrographOriginalPixelSize of the optics table",
        float,
        "Å",
    ),
    Param("nr_gallery", 200, "classes drawn in logfile.pdf, best score first", int, "classes", minimum=0),
]


def _read(ctx: JobContext):
    from ..relion.class2d import Class2DError, read_class2d

    try:
        result = read_class2d(ctx.in_parts, project_dir=ctx.project_dir)
    except Class2DError as exc:
        raise JobFailed(str(exc)) from None
    if result.particles is None or result.n_particles == 0:
        raise JobFailed(f"{ctx.in_parts}: no particles found (give the Class2D run_itNNN_data.star)")
    if "rlnClassNumber" not in result.particles.columns:
        raise JobFailed(f"{result.files.data_star}: the particles have no rlnClassNumber")
    return result


def _scores(
    ctx: JobContext, result, diameter: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """(scores with -999 where unscored, scored mask, resolutions, CNN images, ranker description)."""
    import torch

    from ..pick.model_file import ModelFileError
    from ..rank.features import job_features
    from ..rank.network import load_ranker

    torch.set_num_threads(max(1, min(ctx.threads, 4)))
    try:
        ranker = load_ranker(ctx.params["model"] or None)
    except ModelFileError as exc:
        raise JobFailed(str(exc)) from None
    try:
        res = result.estimated_resolution()
        # RELION 3.1 writes "inf" when a class's SSNR is below 1 from the first shell on: the worst
        # resolution there is, which for the features is the box size (the coarsest shell).
        box_A = result.box_size * result.angpix
        res_feat = np.where(np.isfinite(res) & (res > 0), res, box_A)
        jf = job_features(
            result.averages,
            result.angpix,
            diameter,
            result.distribution,
            result.n_particles,
            res_feat,
            result.accuracy_rotation,
            result.accuracy_translation_A,
        )
    except ValueError as exc:
        raise JobFailed(f"{result.files.model_star}: {exc}") from None
    scores = np.full(result.n_classes, NOT_SCORED)
    if jf.scored.any():
        s = ranker.score_job(jf.images, jf.normalized, jf.scored)
        scores[jf.scored] = s[jf.scored]
    return scores, jf.scored, res, jf.images, ranker.describe()


def _centre_of_mass(avg: np.ndarray) -> tuple[float, float]:
    """(x, y) centre of mass of the positive density, in pixels from the box centre (n // 2)."""
    a = np.clip(np.asarray(avg, dtype=np.float64), 0.0, None)
    total = a.sum()
    if not total > 0:
        return 0.0, 0.0
    n = a.shape[-1]
    g = np.arange(n) - n // 2
    return float((a.sum(axis=0) * g).sum() / total), float((a.sum(axis=1) * g).sum() / total)


def _recenter(particles: pd.DataFrame, result, selected_classes: np.ndarray) -> pd.DataFrame:
    """Move each particle's origin so that its class's centre of mass becomes the centre.

    The class frame maps to the particle by RELION's 2D rotation A(psi) = [[c, s], [-s, c]]; the centre
    of mass ``com`` (Å) of the class is at ``A^T com`` from the particle's current origin.
    """
    out = particles.copy()
    for lab in ("rlnOriginXAngst", "rlnOriginYAngst"):
        if lab not in out.columns:
            out[lab] = 0.0
    psi = np.deg2rad(out["rlnAnglePsi"].to_numpy(dtype=np.float64)) if "rlnAnglePsi" in out else None
    cls = out["rlnClassNumber"].to_numpy(dtype=np.int64)
    ox = out["rlnOriginXAngst"].to_numpy(dtype=np.float64).copy()
    oy = out["rlnOriginYAngst"].to_numpy(dtype=np.float64).copy()
    for k in selected_classes:
        cx, cy = _centre_of_mass(result.class_average(int(k)))
        cx *= result.angpix
        cy *= result.angpix
        m = cls == k
        if psi is None:
            dx, dy = np.full(m.sum(), cx), np.full(m.sum(), cy)
        else:
            c, s = np.cos(psi[m]), np.sin(psi[m])
            dx, dy = c * cx - s * cy, s * cx + c * cy
        ox[m] -= dx
        oy[m] -= dy
    out["rlnOriginXAngst"] = ox
    out["rlnOriginYAngst"] = oy
    return out


def _duplicates(
    ctx: JobContext, parts: pd.DataFrame, optics: pd.DataFrame | None, min_A: float, angpix: float
) -> np.ndarray:
    """Duplicate mask of ``parts`` (see :func:`..rank.selection.duplicate_mask`), distances in Å."""
    from ..rank.selection import duplicate_mask

    need = ("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY")
    if any(lab not in parts.columns for lab in need):
        ctx.warn("no micrograph names or coordinates in the particles: duplicates not removed")
        return np.zeros(len(parts), dtype=bool)
    n = len(parts)
    if angpix > 0:
        mic_apix = np.full(n, float(angpix))
    else:
        col = "rlnMicrographOriginalPixelSize"
        if optics is None or col not in optics.columns or "rlnOpticsGroup" not in parts.columns:
            ctx.warn(f"no {col} in the optics table: duplicates not removed (give --image_angpix in Å)")
            return np.zeros(n, dtype=bool)
        by_group = dict(zip(optics["rlnOpticsGroup"].astype(int), optics[col].astype(float)))
        groups = parts["rlnOpticsGroup"].astype(int)
        missing = sorted(set(groups) - set(by_group))
        if missing:
            raise JobFailed(f"optics group(s) {missing} of the particles are not in the optics table")
        mic_apix = groups.map(by_group).to_numpy(dtype=np.float64)
    x = parts["rlnCoordinateX"].to_numpy(dtype=np.float64) * mic_apix
    y = parts["rlnCoordinateY"].to_numpy(dtype=np.float64) * mic_apix
    if "rlnOriginXAngst" in parts.columns and "rlnOriginYAngst" in parts.columns:
        x = x - parts["rlnOriginXAngst"].to_numpy(dtype=np.float64)
        y = y - parts["rlnOriginYAngst"].to_numpy(dtype=np.float64)
    prio = parts["rlnMaxValueProbDistribution"] if "rlnMaxValueProbDistribution" in parts.columns else None
    return duplicate_mask(parts["rlnMicrographName"].to_numpy(), x, y, min_A, prio)


def _logfile(ctx: JobContext, result, images, scores, pres, selected, counts, thr_score, min_pres) -> None:
    from ..plots.figures import gallery_figure, histogram_figure, scatter_figure, write_pdf

    order = np.argsort(-scores, kind="stable")[: ctx.params["nr_gallery"]]
    captions = [f"{k + 1}: {scores[k]:.2f}" if scores[k] != NOT_SCORED else f"{k + 1}: n/s" for k in order]
    captions = [f"{c} {pres[k]:.2f} ({int(round(counts[k]))})" for c, k in zip(captions, order)]
    pages: list = []
    pages.extend(
        gallery_figure(
            [images[k] for k in order],
            captions,
            f"{result.n_classes} classes by ranker score (class: score %/Res (particles))",
            marked=selected[order],
        )
    )
    ok = scores != NOT_SCORED
    pages.append(
        scatter_figure(
            scores[ok],
            pres[ok],
            "%/Res against ranker score",
            "ranker score",
            "%/Res (% / Å)",
            groups=selected[ok],
            labels=["not selected", "selected"],
            vlines=[thr_score] if thr_score is not None else [],
            hlines=[min_pres] if min_pres is not None else [],
        )
    )
    if ok.any():
        pages.append(
            histogram_figure(scores[ok], "Ranker scores of the scored classes", "score", threshold=thr_score)
        )
    write_pdf(ctx.output_path("logfile.pdf"), pages)


def run(ctx: JobContext) -> list[OutputNode]:
    from ..rank.selection import adaptive_threshold, percent_per_resolution, select_classes
    from ..relion.nodes import star_version_number
    from ..relion.star import write_star

    p = ctx.params
    t0 = time.monotonic()
    result = _read(ctx)
    diameter = p["diameter"] if p["diameter"] > 0 else (result.particle_diameter_A or 0.0)
    if not diameter > 0:
        raise JobFailed(
            f"{ctx.in_parts}: no rlnParticleDiameter (optimiser STAR not found); give --diameter in Å"
        )
    ctx.log(
        f" {result.n_classes} classes, {result.n_particles} particles, {result.angpix:g} Å/px, box "
        f"{result.box_size}, mask {diameter:g} Å, RELION {result.relion_version or '?'} ({result.files.root})"
    )
    ctx.check_abort()
    scores, scored, res, images, desc = _scores(ctx, result, diameter)
    ctx.log(f" {desc}")
    pres, _ = percent_per_resolution(result.distribution, res)
    counts = result.expected_counts()

    thr_score: float | None = p["min_score"] if p["min_score"] >= 0 else None
    if p["adaptive_quantile"] > 0:
        thr_score = adaptive_threshold(
            np.where(scored, scores, np.nan), p["adaptive_quantile"], counts, floor=0.0
        )
        ctx.log(
            f" adaptive score threshold: {thr_score:.3f} (quantile {p['adaptive_quantile']:g} of the particles)"
        )
    min_pres = p["min_pres"] if p["min_pres"] >= 0 else None
    sel = select_classes(
        np.where(scored, scores, np.nan),
        pres,
        counts,
        min_score=thr_score,
        min_pres=min_pres,
        min_particles=p["min_particles"],
        min_classes=p["min_classes"],
    )
    selected = sel.selected
    if thr_score is None and min_pres is None and not selected.any():
        ctx.warn("min_score and min_pres are both off: only min_particles / min_classes select classes")
    for k in range(result.n_classes):
        score = f"{scores[k]:.3f}" if scored[k] else "  n/s"
        ctx.log(
            f"  class {k + 1:3d}: score {score}  %/Res {pres[k]:7.3f}  {counts[k]:8.1f} particles  {sel.reasons[k]}"
        )
    ctx.check_abort()

    version = star_version_number(ctx.version)
    classes = result.classes
    sel_numbers = np.nonzero(selected)[0] + 1

    # particles.star: the selected classes' particles in their original order.
    parts = result.particles
    keep = np.isin(parts["rlnClassNumber"].to_numpy(dtype=np.int64), sel_numbers)
    chosen = parts.loc[keep].reset_index(drop=True)
    if p["recenter"] and len(chosen):
        chosen = _recenter(chosen, result, sel_numbers)
    if p["remove_duplicates"] > 0 and len(chosen):
        drop = _duplicates(ctx, chosen, result.optics, p["remove_duplicates"], p["image_angpix"])
        if drop.any():
            ctx.log(
                f" removed {int(drop.sum())} duplicates (refined centres closer than {p['remove_duplicates']:g} Å)"
            )
            chosen = chosen.loc[~drop].reset_index(drop=True)
    blocks = {} if result.optics is None else {"optics": result.optics}
    blocks["particles"] = chosen
    write_star(ctx.output_path("particles.star"), blocks, version)

    # class_averages.star: RELION Select's columns, selected classes only (unnamed block).
    cols = [
        "rlnReferenceImage",
        "rlnClassDistribution",
        "rlnAccuracyRotations",
        "rlnAccuracyTranslationsAngst",
    ]
    cav = classes.loc[selected, cols].reset_index(drop=True)
    cav.insert(1, "rlnPredictedClassScore", scores[selected])
    cav["rlnEstimatedResolution"] = res[selected]
    write_star(ctx.output_path("class_averages.star"), {"": cav}, version)

    # rank_model.star: every class, model_classes as RELION's ranker writes it plus %/Res and rlnSelected.
    model = classes.copy()
    for lab in ("rlnGradMoment1", "rlnGradMoment2"):
        if lab in model.columns:
            model = model.drop(columns=lab)
    model.insert(1, "rlnClassScore", scores)
    model["rlnEstimatedResolution"] = res
    model[PRES_LABEL] = pres
    model["rlnSelected"] = selected.astype(np.int64)
    write_star(ctx.output_path("rank_model.star"), {"model_classes": model}, version)

    write_star(
        ctx.output_path("backup_selection.star"),
        {"": pd.DataFrame({"rlnSelected": selected.astype(np.int64)})},
        version,
    )

    n_sel = int(len(chosen))
    w = counts[selected]
    mean = lambda v: float(np.average(v, weights=w)) if w.sum() > 0 else 0.0  # noqa: E731
    summary = {
        "rlnGroupNrParticles": n_sel,
        "rlnNrClasses": int(selected.sum()),
        "rlnClassDistribution": n_sel / max(1, result.n_particles),
        PRES_LABEL: mean(pres[selected]) if selected.any() else 0.0,
        "rlnClassScore": mean(np.where(scored, scores, 0.0)[selected]) if selected.any() else 0.0,
        "rlnPredictedClassScore": -1.0 if thr_score is None else float(thr_score),
    }
    write_star(ctx.output_path("rank_summary.star"), {"rank_summary": summary}, version)
    ctx.check_abort()

    _logfile(ctx, result, images, scores, pres, selected, counts, thr_score, min_pres)
    ctx.log(
        f" selected {int(selected.sum())}/{result.n_classes} classes, {n_sel}/{result.n_particles} particles "
        f"({100.0 * n_sel / max(1, result.n_particles):.1f} %) in {time.monotonic() - t0:.1f} s"
    )
    if not math.isfinite(summary["rlnClassScore"]):
        raise JobFailed("internal error: the mean score is not a number")
    return [
        OutputNode("particles.star", "particles"),
        OutputNode("class_averages.star", "images2d", "classaverages"),
        OutputNode("logfile.pdf", "logfile"),
    ]


JOB = JobSpec(
    name="rp-rank-select",
    description=__doc__ or "",
    params=PARAMS,
    run=run,
    inputs=("in_parts",),
    required_inputs=("in_parts",),
)
