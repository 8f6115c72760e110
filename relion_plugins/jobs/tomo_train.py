"""``rp-tomo-train``: train the tomogram picker (RobPicker method) as a RELION 5 External job.

Tomograms come from ``--in_mics`` (a RELION 5 tomograms STAR: ``rlnTomoName`` + ``rlnTomoReconstructedTomogram``)
or ``--tomograms`` (MRC files or glob patterns). Particles from ``--in_parts`` or ``--in_coords``: a STAR table
with ``rlnTomoName``, ``rlnCenteredCoordinateX/Y/ZAngst`` (or ``rlnCoordinateX/Y/Z``) and a species column
(``rlnClassNumber`` = 1, 2, ...). They become cheap sphere labels. A 3D U-Net is trained on them; with the
RobPicker method, a label-correction and a data-reweighting network are meta-learned from a small set of
clean validation labels (``--val_coords`` or ``--val_label_maps``; otherwise held-out tomograms of the
training coordinates). Writes ``model.pt`` and ``logfile.pdf``.
"""

from __future__ import annotations

import glob

import numpy as np

from ..relion.external import JobContext, JobFailed, JobSpec, OutputNode, Param
from ._tomo import load_tomograms, read_volume, species_radii, validation_picking

PARAMS = [
    Param("tomograms", "", "tomograms if not in --in_mics: a tomograms STAR or MRC files / glob patterns", str),
    Param("diameters", "", "particle diameter in Å of each species 1, 2, ..., comma-separated, e.g. 60,130,260", str, "Å"),
    Param("species_names", "", "names of the species, comma-separated (for the log); empty = species1, ...", str),
    Param("method", "robpicker", "robpicker (label correction + reweighting), dr, lc (ablations) or plain", str,
          choices=("robpicker", "dr", "lc", "plain")),
    Param("val_coords", "", "clean coordinates STAR for validation (its tomograms are held out from training)", str),
    Param("val_label_maps", "", "exact label volumes for validation (MRC files or globs named <rlnTomoName>.mrc; "
          "0 = background, s = species s); override --val_coords' spheres", str),
    Param("validation_fraction", 0.2, "share of tomograms held out for validation when no --val_coords are given",
          float, minimum=0, maximum=0.9),
    Param("label_radius", 1.0, "sphere labels have this fraction of each species' radius", float, minimum=0.05),
    Param("patch", 64, "patch side (a multiple of 2^depth)", int, "voxels", minimum=16),
    Param("width", 32, "channels of the U-Net's first block (doubling per level)", int, minimum=2),
    Param("depth", 4, "down-blocks of the U-Net", int, minimum=1, maximum=6),
    Param("iterations", 2000, "training iterations (minibatches)", int, minimum=1),
    Param("batch", 4, "patches per minibatch", int, minimum=1),
    Param("learning_rate", 1e-3, "Adam learning rate of the U-Net", float, minimum=0),
    Param("meta_lr", 1e-3, "Adam learning rate of the meta networks", float, minimum=0),
    Param("lc_meta_lr", 0.0, "Adam learning rate of the label-correction network alone (0 = meta_lr)", float,
          minimum=0),
    Param("meta_interval", 1, "one meta (bi-level) step every this many iterations", int, "iterations", minimum=1),
    Param("meta_start", 0, "train the U-Net plainly for this many iterations before the first meta step (warm-up)",
          int, "iterations", minimum=0),
    Param("virtual_step", "sgd", "the one-step unrolled update of a meta step: a plain SGD step of learning_rate, or "
          "the U-Net's own Adam step (larger hypergradients in another direction; on our benchmark that hurt the small "
          "species)", str, choices=("sgd", "adam")),
    Param("epsilon", 0.01, "finite-difference step of the hypergradient, relative to |grad L_val|", float, minimum=1e-8),
    Param("eval_every", 100, "validation loss (and best-checkpoint choice) every this many iterations", int,
          "iterations", minimum=1),
    Param("val_loss", "dice", "the meta networks' validation loss: dice, or dice_ce (Dice + voxel cross-entropy: on our "
          "SNR 0.25 benchmark it stopped the small species collapsing onto the background on one seed, but made it "
          "under-called on another; see docs/tomo_picker.md)",
          str, choices=("dice", "dice_ce")),
    Param("dr_floor", 0.5, "least weight the data-reweighting network may give a voxel: "
          "floor + (1 - floor) x its weight relative to its label class's mean (0 = unbounded: on our SNR 0.25 "
          "benchmark DR then weighed the small species out of the loss on one seed in five; see docs/tomo_picker.md)",
          float,
          minimum=0, maximum=1),
    Param("dr_ceiling", 0.0, "most weight the data-reweighting network may give a voxel, as a "
          "multiple of its label class's mean (0 = no cap; otherwise at least 1)", float, minimum=0),
    Param("lc_relabel", "background", "voxels the label-correction network may relabel: background (only those "
          "labelled background: dropped particles and the edges of too-small spheres; the species' own labels are "
          "kept, their wrong rims left to data reweighting), or all (on our SNR 0.25 benchmark LC could then move a "
          "species the network had not yet found into the background; see docs/tomo_picker.md)", str,
          choices=("background", "all")),
    Param("checkpoint", "f1", "how the best checkpoint is chosen: f1 = mean picking F1 of the species on the whole "
          "validation tomograms (each at its best size floor), dice = Dice loss on validation patches (cheaper: no "
          "pass over whole tomograms; blind to one species' predictions spreading over the background)", str,
          choices=("f1", "dice")),
    Param("species_column", "rlnClassNumber", "STAR column holding the species (1, 2, ...)", str),
    Param("angpix", -1.0, "voxel size of plain MRC tomograms; -1 = from their headers", float, "Å"),
    Param("model_name", "model.pt", "file name of the trained model in the job directory", str),
]


def _label_maps(spec: str, project, names: set[str]) -> dict[str, str]:
    out = {}
    for word in spec.replace(",", " ").split():
        hits = sorted(glob.glob(str(project / word)))
        if not hits:
            raise JobFailed(f"--val_label_maps: no file matches {word}")
        for h in hits:
            stem = h.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            if stem in names:
                out[stem] = h
    if not out:
        raise JobFailed("--val_label_maps: no file is named after a tomogram (<rlnTomoName>.mrc)")
    return out


def run(ctx: JobContext) -> list[OutputNode]:
    import torch

    from ..imaging.spheres import paint_spheres
    from ..pick.model_file import ModelFile, save_model
    from ..pick.tomo.bilevel import TrainConfig, check_dr_bounds, train_picker
    from ..pick.tomo.data import PatchSampler
    from ..relion.mrc import MrcError, read_mrc
    from ..relion.tomograms import TomogramsError, read_tomo_coordinates
    from ._picking import torch_device

    p = ctx.params
    try:
        check_dr_bounds(p["dr_floor"], p["dr_ceiling"])
    except ValueError as e:
        raise JobFailed(f"--{e}") from None
    tomos, source = load_tomograms(ctx)
    diam = [float(v) for v in str(p["diameters"]).replace(",", " ").split()] if p["diameters"] else []
    if not diam or any(not np.isfinite(d) or d <= 0 for d in diam):
        raise JobFailed("--diameters: give one positive diameter in Å per species, e.g. 60,130,260")
    n_species = len(diam)
    names = [s.strip() for s in str(p["species_names"]).split(",") if s.strip()] or [
        f"species{i + 1}" for i in range(n_species)
    ]
    if len(names) != n_species:
        raise JobFailed(f"--species_names has {len(names)} names for {n_species} diameters")
    coord_file = ctx.in_parts or ctx.in_coords
    if not coord_file:
        raise JobFailed("no particles: give --in_parts or --in_coords (a STAR file with rlnTomoName and coordinates)")
    try:
        coords = read_tomo_coordinates(ctx.project_dir / coord_file, tomos, p["species_column"])
        val_coords = (
            read_tomo_coordinates(ctx.project_dir / p["val_coords"], tomos, p["species_column"])
            if p["val_coords"]
            else {}
        )
    except TomogramsError as exc:
        raise JobFailed(str(exc)) from None
    for table in [*coords.values(), *val_coords.values()]:
        if len(table) and table["species"].max() > n_species:
            raise JobFailed(f"species {table['species'].max()} has no diameter in --diameters ({n_species} given)")
    angpix = tomos[0].angpix
    if any(abs(t.angpix - angpix) > 0.01 * angpix for t in tomos):
        raise JobFailed("the tomograms have different voxel sizes; train on tomograms of one binning")
    by_name = {t.name: t for t in tomos}
    maps = _label_maps(p["val_label_maps"], ctx.project_dir, set(by_name)) if p["val_label_maps"] else {}
    val_names = sorted(set(val_coords) | set(maps))
    train_names = [n for n in coords if n not in val_names and len(coords[n])]
    if not val_names and len(train_names) >= 2 and p["validation_fraction"] > 0:
        rng = np.random.default_rng(p["seed"])
        n_val = max(1, int(round(p["validation_fraction"] * len(train_names))))
        val_names = sorted(rng.choice(train_names, n_val, replace=False).tolist())
        train_names = [n for n in train_names if n not in val_names]
        val_coords = {n: coords[n] for n in val_names}
        ctx.warn("no --val_coords or --val_label_maps: validating on held-out tomograms whose labels are as noisy as "
                 "the training ones; the meta networks learn best from a few carefully checked tomograms")
    if not train_names:
        raise JobFailed(f"{coord_file} has no particles on tomograms left for training")
    if p["method"] != "plain" and not val_names:
        raise JobFailed(f"--method {p['method']} needs validation labels: give --val_coords, --val_label_maps or "
                        "at least 2 tomograms (or use --method plain)")
    depth = p["depth"]
    if p["patch"] % 2**depth:
        raise JobFailed(f"--patch {p['patch']} must be a multiple of 2^depth = {2**depth}")
    radii = species_radii(diam, angpix)
    ctx.log(f" {len(tomos)} tomograms from {source} at {angpix:.4g} Å/voxel; species: "
            + ", ".join(f"{n} ({d:g} Å = {2 * r:.1f} voxels)" for n, d, r in zip(names, diam, radii)))
    ctx.log(f" training on {len(train_names)} tomograms ({sum(len(coords[n]) for n in train_names)} particles), "
            f"validating on {len(val_names)}")

    def volume(name: str) -> np.ndarray:
        ctx.check_abort()
        return read_volume(by_name[name])

    def spheres(name: str, table) -> np.ndarray:
        s = table["species"].to_numpy()
        return paint_spheres(by_name[name].shape, table[["x", "y", "z"]].to_numpy(), s,
                             p["label_radius"] * radii[s - 1])

    def centres(table) -> np.ndarray:
        return table[["x", "y", "z", "species"]].to_numpy(dtype=float)

    rng = np.random.default_rng(p["seed"])
    train_vols = [volume(n) for n in train_names]
    train = PatchSampler(train_vols, [spheres(n, coords[n]) for n in train_names],
                         [centres(coords[n]) for n in train_names], p["patch"], rng)
    val = None
    val_vols, val_labels = [], []
    if val_names:
        val_centres = []
        for n in val_names:
            val_vols.append(volume(n))
            if n in maps:
                try:
                    lab, _ = read_mrc(maps[n])
                except (MrcError, OSError) as exc:
                    raise JobFailed(f"cannot read label map {maps[n]}: {exc}") from None
                if lab.shape != by_name[n].shape:
                    raise JobFailed(f"label map {maps[n]} has shape {lab.shape}, its tomogram {by_name[n].shape}")
                if lab.min() < 0 or lab.max() > n_species or np.any(lab != np.round(lab)):
                    raise JobFailed(f"label map {maps[n]} must hold whole numbers 0..{n_species}")
                lab = lab.astype(np.uint8)
                table = val_coords.get(n)
                if table is None:  # centres for class-balanced sampling from the label map's components
                    table = _components(lab)
            else:
                table = val_coords[n]
                lab = spheres(n, table)
            val_labels.append(lab)
            val_centres.append(centres(table))
        val = PatchSampler(val_vols, val_labels, val_centres, p["patch"], np.random.default_rng(p["seed"] + 1),
                           class_balanced=True)

    device = torch_device(ctx)
    torch.set_num_threads(max(1, ctx.threads))
    cfg = TrainConfig(
        method=p["method"], iterations=p["iterations"], batch=p["batch"], learning_rate=p["learning_rate"],
        meta_lr=p["meta_lr"], lc_meta_lr=p["lc_meta_lr"], meta_interval=p["meta_interval"], meta_start=p["meta_start"], virtual_step=p["virtual_step"], epsilon=p["epsilon"], eval_every=p["eval_every"],
        val_loss=p["val_loss"], dr_floor=p["dr_floor"], dr_ceiling=p["dr_ceiling"],
        lc_relabel=p["lc_relabel"], seed=p["seed"],
    )

    def progress(record: dict) -> None:
        val_txt = f", validation Dice loss {record['validation']:.4f}" if "validation" in record else ""
        if "validation_scores" in record:
            val_txt += ", validation picking F1 " + " ".join(f"{v:.3f}" for v in record["validation_scores"])
        # what the meta networks do: how far LC lets the network overrule a background label, what DR weighs out
        if "alpha_disputed" in record:
            val_txt += f", LC alpha {record['alpha_disputed']:.2f} where labelled background but predicted a species"
        if "dr_below_half" in record:
            val_txt += f", DR weighs {record['dr_below_half']:.0%} of voxels below half"
        ctx.log(f" iteration {record['iteration']}/{cfg.iterations}: training loss {record['loss']:.4f}{val_txt}")
        ctx.progress(record["iteration"], cfg.iterations, "iterations")

    validate = (validation_picking(val_vols, val_centres, radii, p["patch"], min(20, p["patch"] // 2), device,
                                   ctx.check_abort) if val_vols else None)

    def checkpoint_score(model) -> list[float]:
        return validate(model)[3]

    ctx.progress(0, cfg.iterations, "iterations")
    result = train_picker(train, val, n_species + 1, cfg, p["width"], depth, device,
                          progress=progress, check_abort=ctx.check_abort,
                          checkpoint_score=checkpoint_score if validate and p["checkpoint"] == "f1" else None)
    ctx.log(f" training took {result.seconds:.1f} s; best iteration {result.best_iteration}")
    min_fraction, split_above, val_f1, val_probs = [0.25] * n_species, [0.0] * n_species, None, []
    if validate is not None:
        val_probs, min_fraction, split_above, val_f1 = validate(result.model)
        ctx.log(" picking floors chosen on the validation tomograms (components of at least this fraction of the "
                "species' sphere volume; split above this many sphere volumes, 0 = never): "
                + ", ".join(f"{n} {f:g}, split {s:g} (F1 {v:.3f})" for n, f, s, v in
                            zip(names, min_fraction, split_above, val_f1)))

    meta = {
        "angpix": angpix,
        "diameter_A": max(diam),
        "species": [{"name": n, "diameter_A": d} for n, d in zip(names, diam)],
        "normalization": {"method": "standardize"},
        "patch": p["patch"],
        "label_radius": p["label_radius"],
        "train_config": cfg.to_dict(),
        "checkpoint": p["checkpoint"] if validate is not None else "last",
        "best_iteration": result.best_iteration,
        "min_fraction": min_fraction,
        "split_above": split_above,
        "validation_pick_f1": val_f1,
        "history": result.history,
        "provenance": {
            "tomograms": source,
            "labels": coord_file,
            "validation": p["val_label_maps"] or p["val_coords"] or "held-out tomograms",
            "train_tomograms": train_names,
            "validation_tomograms": val_names,
            "n_positives": int(sum(len(coords[n]) for n in train_names)),
            "n_micrographs": len(train_names),
            "seed": p["seed"],
            "device": str(device),
            "torch": torch.__version__,
        },
    }
    model_path = ctx.output_path(p["model_name"])
    save_model(model_path, ModelFile("tomo", dict(result.model.config), result.model.state_dict(), meta))
    ctx.log(f" model written to {model_path}")
    _write_logfile(ctx, result, val_vols[:1] or train_vols[:1], (val_names or train_names)[:1], p, radii, device,
                   val_probs[:1], min_fraction, split_above)
    return [OutputNode(p["model_name"], "model"), OutputNode("logfile.pdf", "logfile")]


def _components(labels: np.ndarray):
    """A table of the centres (x, y, z, species) of the connected regions of a label volume."""
    from ..pick.tomo.infer import cluster_picks

    onehot = np.stack([labels == c for c in range(int(labels.max()) + 1)]).astype(np.float32)
    return cluster_picks(onehot, min_voxels=1)


def _write_logfile(ctx, result, vols, names, p, radii, device, probs_done=(), min_fraction=0.25,
                   split_above=0.0) -> None:
    """Loss curves and the picks of the trained network on one (validation) tomogram."""
    from ..pick.tomo.infer import cluster_picks, predict_volume
    from ..plots.figures import curves_figure, write_pdf
    from ._tomo import slice_pages

    hist = result.history
    its = [h["iteration"] for h in hist]
    series = [("training loss", its, [h["loss"] for h in hist])]
    if any("validation" in h for h in hist):
        series.append(("validation Dice loss (clean labels)", its, [h.get("validation", np.nan) for h in hist]))
    if any("virtual_val_loss" in h for h in hist):
        series.append(("validation loss after the virtual step", its, [h.get("virtual_val_loss", np.nan) for h in hist]))
    if any("validation_scores" in h for h in hist):  # 1 - F1, on the losses' scale: lower is better
        series.append(("1 - mean validation picking F1", its,
                       [1 - np.mean(h["validation_scores"]) if "validation_scores" in h else np.nan for h in hist]))
    pages = [curves_figure(series, f"Losses ({p['method']}; best iteration {result.best_iteration})", "iteration",
                           "loss")]
    for k, (vol, name) in enumerate(zip(vols, names)):
        if k < len(probs_done):
            probs = probs_done[k]
        else:
            probs = predict_volume(result.model, vol, p["patch"], min(20, p["patch"] // 2), device, ctx.check_abort)
        picks = cluster_picks(probs, radii=radii, min_fraction=min_fraction, split_above=split_above)
        pages += slice_pages(vol, picks, radii, f"{name}: picks of the trained network")
    write_pdf(ctx.out_dir / "logfile.pdf", pages)


JOB = JobSpec(
    name="rp-tomo-train",
    description=__doc__ or "",
    params=PARAMS,
    run=run,
    inputs=("in_mics", "in_parts", "in_coords"),
    required_inputs=(),
    uses_gpu=True,
)
