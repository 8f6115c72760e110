"""``rp-tomo-pick``: pick particles in tomograms with a trained RobPicker U-Net as a RELION 5 External job.

Each tomogram of ``--in_mics`` (RELION 5 tomograms STAR) or ``--tomograms`` (MRC files) is segmented by the
network over patches overlapping by ``--overlap`` voxels (probabilities averaged), the argmax map is split
into 26-connected components per species, and each component of at least ``--min_voxels`` voxels and
``--min_fraction`` of its species' sphere volume (by default the floor the training job chose on its
validation tomograms) gives one particle at its centroid; a component of more than ``--split_above`` times its
species' sphere volume (close particles run together) is split at the peaks of the species' probability, one
particle per peak (by default as chosen on the validation tomograms). Writes ``particles.star`` in RELION 5's particle-set format (``data_general``,
``data_optics``, ``data_particles`` with ``rlnTomoName``, ``rlnCenteredCoordinateX/Y/ZAngst``,
``rlnClassNumber`` = species and ``rlnAutopickFigureOfMerit``), ``optimisation_set.star`` when the input is
a tomograms STAR, and ``logfile.pdf`` with slices and picks. Continue runs pick only new tomograms.
"""

from __future__ import annotations

import pandas as pd

from ..relion.external import JobContext, JobFailed, JobSpec, OutputNode, Param
from ._tomo import load_tomograms, read_volume, slice_pages, species_radii

PARAMS = [
    Param("model", "", "trained model file (model.pt of an rp-tomo-train job)", str),
    Param("tomograms", "", "tomograms if not in --in_mics: a tomograms STAR or MRC files / glob patterns", str),
    Param("patch", 0, "patch side for inference (a multiple of 2^depth); 0 = the training patch", int, "voxels",
          minimum=0),
    Param("overlap", 20, "overlap of neighbouring patches (probabilities are averaged)", int, "voxels", minimum=0),
    Param("min_voxels", 5, "smallest connected component (26-neighbourhood) that counts as a particle", int,
          "voxels", minimum=1),
    Param("min_fraction", -1.0, "smallest connected component as a fraction of its species' sphere volume "
          "(fragments at the edge of a large particle are not picks); 0 = only --min_voxels; -1 = the floor chosen "
          "on the validation tomograms, stored in the model (0.25 for models without one)", float,
          minimum=-1, maximum=1),
    Param("split_above", -1.0, "split a connected component of more than this many times its species' sphere "
          "volume at the peaks of the species' probability (close particles run together); 0 = never; -1 = the "
          "threshold chosen on the validation tomograms, stored in the model (never for models without one)",
          float, minimum=-1),
    Param("threshold", 0.0, "keep picks whose mean species probability is at least this", float, minimum=0,
          maximum=1),
    Param("species", "", "species to write, comma-separated numbers (e.g. 1,3); empty = all", str),
    Param("angpix", -1.0, "voxel size of plain MRC tomograms; -1 = from their headers", float, "Å"),
    Param("nr_plots", 2, "tomograms drawn with their picks in logfile.pdf (3 slices each)", int, minimum=0),
]

PICKS_DIR = "picks"


def _read_done(path, tomo) -> pd.DataFrame:
    from ..relion.star import read_block
    from ..relion.tomograms import CENTERED

    table = read_block(path, "particles")
    if len(table) == 0:
        return pd.DataFrame({k: pd.Series(dtype=float) for k in ("x", "y", "z", "species", "score")})
    vox = tomo.voxels_from_centered(table[list(CENTERED)].to_numpy(dtype=float))
    return pd.DataFrame({"x": vox[:, 0], "y": vox[:, 1], "z": vox[:, 2],
                         "species": table["rlnClassNumber"].to_numpy(dtype=int),
                         "score": table["rlnAutopickFigureOfMerit"].to_numpy(dtype=float)})


def run(ctx: JobContext) -> list[OutputNode]:
    import torch

    from ..pick.model_file import ModelFileError, load_model
    from ..pick.tomo.infer import cluster_picks, predict_volume
    from ..pick.tomo.unet import build_unet
    from ..plots.figures import write_pdf
    from ..relion.tomograms import write_optimisation_set, write_tomo_particles
    from ._picking import torch_device

    p = ctx.params
    if not p["model"]:
        raise JobFailed("--model is required: the model.pt written by an rp-tomo-train job")
    try:
        mf = load_model(ctx.project_dir / p["model"], picker="tomo")
        model = build_unet(mf.arch)
        model.load_state_dict(mf.state)
    except (ModelFileError, RuntimeError, KeyError) as exc:
        raise JobFailed(f"cannot use model {p['model']}: {str(exc).splitlines()[0]}") from None
    ctx.log(f" {mf.describe()}")
    tomos, source = load_tomograms(ctx)
    for t in tomos:
        if abs(t.angpix - mf.angpix) > 0.05 * mf.angpix:
            raise JobFailed(f"tomogram {t.name} has {t.angpix:.4g} Å/voxel but the model was trained at "
                            f"{mf.angpix:.4g} Å/voxel: use tomograms of the training binning")
    species = mf.meta["species"]
    diam = [s["diameter_A"] for s in species]
    radii = species_radii(diam, mf.angpix)
    wanted = {int(v) for v in p["species"].replace(",", " ").split()} if p["species"] else set(range(1, len(diam) + 1))
    if not wanted <= set(range(1, len(diam) + 1)):
        raise JobFailed(f"--species: the model knows species 1..{len(diam)}")
    patch = p["patch"] or int(mf.meta.get("patch", 64))
    if p["min_fraction"] >= 0:
        min_fraction = [p["min_fraction"]] * len(species)
    else:  # the validated floors (one per species; models from before them: 0.25)
        stored = mf.meta.get("min_fraction", 0.25)
        min_fraction = [float(f) for f in stored] if isinstance(stored, list) else [float(stored)] * len(species)
        if len(min_fraction) != len(species):
            raise JobFailed(f"the model holds {len(min_fraction)} picking floors for {len(species)} species")
    if p["split_above"] >= 0:
        split_above = [p["split_above"]] * len(species)
    else:
        split_above = [float(f) for f in mf.meta.get("split_above", [0.0] * len(species))]
        if len(split_above) != len(species):
            raise JobFailed(f"the model holds {len(split_above)} split thresholds for {len(species)} species")
    if patch % model.multiple:
        raise JobFailed(f"--patch {patch} must be a multiple of {model.multiple}")
    overlap = min(p["overlap"], patch - 1)
    device = torch_device(ctx)
    torch.set_num_threads(max(1, ctx.threads))
    model = model.to(device).eval()
    ctx.log(f" {len(tomos)} tomograms from {source}; patch {patch}, overlap {overlap} voxels, on {device}; components "
            f"of at least {' / '.join(f'{f:g}' for f in min_fraction)} of their species' sphere volume, split above "
            f"{' / '.join(f'{f:g}' for f in split_above)} (0 = never); species "
            + ", ".join(f"{i + 1} = {s['name']} ({s['diameter_A']:g} Å)" for i, s in enumerate(species)))

    (ctx.out_dir / PICKS_DIR).mkdir(exist_ok=True)
    by_name = {t.name: t for t in tomos}
    files = {t.name: ctx.output_path(f"{PICKS_DIR}/{t.name}_particles.star") for t in tomos}
    todo = ctx.pending([t.name for t in tomos])
    if len(todo) < len(tomos):
        ctx.log(f" {len(tomos) - len(todo)} tomograms were picked by an earlier run")
    plotted = []
    ctx.progress(0, len(todo), "tomograms")
    for i, name in enumerate(todo):
        ctx.check_abort()
        tomo = by_name[name]
        vol = read_volume(tomo)
        probs = predict_volume(model, vol, patch, overlap, device, ctx.check_abort)
        picks = cluster_picks(probs, p["min_voxels"], radii, min_fraction, split_above)
        picks = picks[picks["species"].isin(wanted) & (picks["score"] >= p["threshold"])].reset_index(drop=True)
        write_tomo_particles(files[name], {name: picks}, [tomo])
        ctx.mark_done(name, {"n": len(picks)})
        counts = picks["species"].value_counts().sort_index().to_dict()
        ctx.log(f" {name}: {len(picks)} particles (" + ", ".join(f"species {s}: {c}" for s, c in counts.items()) + ")")
        if len(plotted) < p["nr_plots"]:
            plotted.append((vol, picks, name))
        ctx.progress(i + 1, len(todo), "tomograms")

    all_picks = {t.name: _read_done(files[t.name], t) for t in tomos}
    write_tomo_particles(ctx.output_path("particles.star"), all_picks, tomos)
    nodes = [OutputNode("particles.star", "particles", "tomo")]
    if source.endswith(".star"):
        write_optimisation_set(ctx.output_path("optimisation_set.star"),
                               (ctx.out_dir / "particles.star").as_posix(), source)
        nodes.append(OutputNode("optimisation_set.star", "tomo_optimisation_set", "tomo"))
    pages = []
    for vol, picks, name in plotted:
        pages += slice_pages(vol, picks, radii, name)
    if not pages:
        t = tomos[0]
        pages = slice_pages(read_volume(t), all_picks[t.name], radii, t.name)
    write_pdf(ctx.out_dir / "logfile.pdf", pages)
    nodes.append(OutputNode("logfile.pdf", "logfile"))
    total = sum(len(v) for v in all_picks.values())
    ctx.log(f" {total} particles in {len(tomos)} tomograms written to {ctx.out_dir / 'particles.star'}")
    return nodes


JOB = JobSpec(
    name="rp-tomo-pick",
    description=__doc__ or "",
    params=PARAMS,
    run=run,
    inputs=("in_mics",),
    required_inputs=(),
    uses_gpu=True,
)
