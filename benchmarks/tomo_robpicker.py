"""RobPicker (U-Net + meta-learned label correction and data reweighting) against the same U-Net trained
plainly on the same noisy labels (DeepFinder-like baseline), and the DR-only and LC-only ablations.

Data: simulated tomograms (``relion_plugins.simulate.tomogram``) at 10 Å/voxel with four species, tiny to
large (a 60 Å rescaled phantom, apoferritin 130 Å, a 200 Å ring phantom, the 70S ribosome 260 Å), in
imbalanced numbers, closely packed, with noise and a ±60° missing wedge. Training tomograms carry noisy
sphere labels (30 % of particles missing, centres shifted by 0.35 x radius per axis, radii x U(0.6, 1.6));
one validation tomogram carries exact shape labels (used by every method to choose its best checkpoint,
and by the meta networks for their hypergradients); the test tomograms are scored against the true
centres: one-to-one matching within half the species' diameter (at least 2 voxels), per species.

All methods see the same patches in the same order (same seeds), the same network, optimiser and number
of iterations; they differ only in the meta networks. Run on CPU with one thread unless told otherwise.
Run:  python benchmarks/tomo_robpicker.py [--quick] [--seeds 2026 2027 2028] [--label-noise moderate|hard] [--processes 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import device_words, machine_line, run_args, update_section  # noqa: E402

from relion_plugins.evaluate.tomo import species_scores  # noqa: E402
from relion_plugins.jobs._tomo import validation_picking  # noqa: E402
from relion_plugins.pick.tomo.bilevel import LC_RELABEL, TrainConfig, train_picker  # noqa: E402
from relion_plugins.pick.tomo.data import PatchSampler  # noqa: E402
from relion_plugins.pick.tomo.infer import (  # noqa: E402
    MIN_FRACTION_GRID,
    SPLIT_GRID,
    cluster_picks,
    predict_volume,
)
from relion_plugins.simulate.tomogram import (  # noqa: E402
    DEFAULT_SPECIES,
    Species,
    TomogramConfig,
    noisy_sphere_labels,
    simulate_tomogram,
)

METHODS = (("plain", "U-Net, plain (baseline)"), ("dr", "DR only"), ("lc", "LC only"), ("robpicker", "RobPicker (LC + DR)"))


def centres(table) -> np.ndarray:
    return table[["x", "y", "z", "species"]].to_numpy(dtype=float)


NOISE = {
    # every particle equally likely to be missed; centre errors in proportion to the particle
    "moderate": {"drop": [0.3], "shift_voxels": 0.0},
    # as annotators label small particles: the smaller, the more often missed, and a clicking error of
    # 1 voxel (10 Å) per axis that does not shrink with the particle
    "hard": {"drop": [0.5, 0.4, 0.3, 0.2], "shift_voxels": 1.0},
}


def simulate(args, seed: int):
    """The benchmark's tomograms and noisy labels (deterministic for ``seed``)."""
    cfg = TomogramConfig(shape=tuple(args.shape), snr=args.snr, species=args.species)
    train_t = [simulate_tomogram(cfg, seed=seed * 100 + i) for i in range(args.train_tomograms)]
    val_t = simulate_tomogram(cfg, seed=seed * 100 + 50)
    test_t = [simulate_tomogram(cfg, seed=seed * 100 + 80 + i) for i in range(args.test_tomograms)]
    noisy = [noisy_sphere_labels(t, seed=seed * 100 + i, drop=args.drop, shift_voxels=args.shift_voxels)
             for i, t in enumerate(train_t)]
    return cfg, train_t, val_t, test_t, noisy


def parse_species(text: str) -> Species:
    """``PARTICLE:COUNT:NAME`` (e.g. ``globular@90:18:small``) as one simulated species."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) < 1 or not parts[2]:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PARTICLE:COUNT:NAME with COUNT >= 1, e.g. globular@90:18:small")
    return Species(parts[0], int(parts[1]), parts[2])


def fmt_floor(floor) -> str:
    return "/".join(f"{f:g}" for f in floor) if isinstance(floor, list) else f"{floor:g}"


def run_device(args) -> torch.device:
    """Where every method trains, validates and picks."""
    return torch.device("cuda" if args.gpu else "cpu")


def run_method(method: str, seed: int, args) -> tuple:
    """Train one method on the data simulated for ``seed`` and score its picks on the test tomograms."""
    import pandas as pd

    torch.set_num_threads(args.threads)
    device = run_device(args)
    cfg, train_t, val_t, test_t, noisy = simulate(args, seed)
    species = test_t[0].species
    radii = {s + 1: max(2.0, 0.5 * d / cfg.angpix) for s, (_, d) in enumerate(species)}
    radius_list = [radii[s] for s in sorted(radii)]
    truth_all = pd.concat([t.particles.assign(tomo=i) for i, t in enumerate(test_t)], ignore_index=True)
    train = PatchSampler([t.volume for t in train_t], [n[0] for n in noisy], [centres(n[1]) for n in noisy],
                         args.patch, np.random.default_rng(seed))
    val = PatchSampler([val_t.volume], [val_t.shape_labels], [centres(val_t.particles)], args.patch,
                       np.random.default_rng(seed + 1), class_balanced=True, stratified=args.stratified_val,
                       background_stratum=args.val_background)
    tc = TrainConfig(method=method, iterations=args.iterations, batch=args.batch, learning_rate=args.learning_rate,
                     meta_lr=args.meta_lr, lc_meta_lr=args.lc_meta_lr, meta_interval=args.meta_interval, meta_start=args.meta_start, virtual_step=args.virtual_step,
                     val_loss=args.val_loss, dr_floor=args.dr_floor, dr_ceiling=args.dr_ceiling,
                     lc_relabel=args.lc_relabel, eval_every=max(1, args.iterations // 8), eval_patches=8, seed=seed)
    # as rp-tomo-train: the validation tomogram's probabilities, each species' best size floor and F1
    validate = validation_picking([val_t.volume], [centres(val_t.particles)], radius_list, patch=48, overlap=16,
                                  device=device, split_grid=tuple(args.split_grid))

    res = train_picker(train, val, len(species) + 1, tc, width=args.width, depth=4, device=device,
                       checkpoint_score=(lambda m: validate(m)[3]) if args.checkpoint == "f1" else None)
    if args.checkpoint == "f1":  # how each species fared at each checkpoint
        print(f"seed {seed}, {dict(METHODS)[method]}: validation F1 per checkpoint "
              + "; ".join(f"{h['iteration']}: " + "/".join(f"{v:.2f}" for v in h["validation_scores"])
                          + (f" (DR would weigh {h['dr_below_half']:.0%} of voxels below half)" if "dr_below_half" in h else "")
                          + (f" (LC alpha {h['alpha_disputed']:.2f} where labelled background, predicted a species)" if "alpha_disputed" in h else "")
                          for h in res.history), flush=True)  # fmt: skip
    floor, split = args.min_fraction, 0.0
    if floor is None:  # the operating point of each method, chosen on the validation tomogram
        (val_probs,), floor, split, val_f1 = validate(res.model)
        if args.save_probs:
            args.save_probs.mkdir(parents=True, exist_ok=True)
            np.save(args.save_probs / f"{method}_{seed}_val.npy", val_probs.astype(np.float32))
        print(f"seed {seed}, {dict(METHODS)[method]}: validation F1 at its floors "
              + " ".join(f"{v:.3f}" for v in val_f1), flush=True)  # fmt: skip
    t1 = time.monotonic()
    picks = []
    for i, t in enumerate(test_t):
        probs = predict_volume(res.model, t.volume, patch=48, overlap=16, device=device)
        if args.save_probs:
            args.save_probs.mkdir(parents=True, exist_ok=True)
            np.save(args.save_probs / f"{method}_{seed}_{i}.npy", probs.astype(np.float32))
        picks.append(cluster_picks(probs, 5, radius_list, floor, split).assign(tomo=i))
    t_pick = time.monotonic() - t1
    scores = species_scores(pd.concat(picks, ignore_index=True), truth_all, radii)
    print(f"seed {seed}, {dict(METHODS)[method]}: train {res.seconds:.0f} s (best iteration {res.best_iteration}), pick {t_pick:.0f} s; "
          f"size floors {fmt_floor(floor)}, split above {fmt_floor(split)}; F1 " + ", ".join(f"{species[s - 1][0]} {v['f1']:.3f} ({v['n_picks']} picks / {v['n_truth']})"
                                                  for s, v in scores.items()), flush=True)
    return scores, res.seconds, t_pick, res.best_iteration, floor, split


def dr_bounds_words(args: argparse.Namespace) -> str:
    """How DR's voxel weights were bounded, for the report's settings line."""
    words = f"; DR weights at least {args.dr_floor:g}" if args.dr_floor else "; DR weights unbounded below (--dr-floor 0)"
    return words + (f", at most {args.dr_ceiling:g} x their class mean" if args.dr_ceiling else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2026, 2027, 2028],
                        help="simulation and training seeds: each gives new tomograms, labels and initial weights")
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--patch", type=int, default=32, help="training patch side, voxels")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--meta-interval", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--meta-lr", type=float, default=1e-3)
    parser.add_argument("--lc-meta-lr", type=float, default=0.0, help="LC's own meta lr (0 = --meta-lr)")
    parser.add_argument("--meta-start", type=int, default=0,
                        help="plain training for this many iterations before the first meta step")  # fmt: skip
    parser.add_argument("--stratified-val", action="store_true",
                        help="validation batches hold every species equally often (PatchSampler stratified)")
    parser.add_argument("--val-loss", choices=("dice", "dice_ce", "dice_cbce"), default="dice",
                        help="the meta networks' validation loss (and the checkpoint Dice): Dice, Dice + cross-entropy, or Dice + "
                             "class-balanced cross-entropy")
    parser.add_argument("--val-background", action="store_true",
                        help="validation patches: the background (patches anywhere) as one more class-balanced stratum")
    parser.add_argument("--train-tomograms", type=int, default=3)
    parser.add_argument("--test-tomograms", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=(80, 128, 128), help="nz ny nx")
    parser.add_argument("--snr", type=float, default=2.0, help="signal variance in particles / noise variance")
    parser.add_argument("--species", type=parse_species, nargs="+", default=DEFAULT_SPECIES, metavar="PARTICLE:COUNT:NAME",
                        help="the species, smallest first, each as a simulator particle spec (a map alias or phantom, "
                             "@DIAMETER to rescale it in Å), its count per tomogram and its size-class name; default: "
                             + " ".join(f"{s.particle}:{s.count}:{s.name}" for s in DEFAULT_SPECIES))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per method")
    parser.add_argument("--processes", type=int, default=1, help="methods trained side by side")
    parser.add_argument("--gpu", action="store_true", help="train and pick on the first CUDA GPU (default: CPU)")
    parser.add_argument("--methods", nargs="+", default=[m for m, _ in METHODS])
    parser.add_argument("--quick", action="store_true", help="a few iterations on small tomograms (smoke test)")
    parser.add_argument("--label-noise", choices=sorted(NOISE), default="moderate",
                        help="preset of --drop and --shift-voxels; each writes its own section of the report")
    parser.add_argument("--drop", type=float, nargs="+",
                        help="share of particles missing from the training labels: one value or one per species")
    parser.add_argument("--shift-voxels", type=float,
                        help="absolute clicking error of the label centres (Gaussian per axis, voxels)")
    parser.add_argument("--min-fraction", type=float,
                        help="smallest picked component as a fraction of its species' sphere volume; default: each "
                             "method's best on the validation tomogram")
    parser.add_argument("--checkpoint", choices=("f1", "dice"), default="f1",
                        help="best checkpoint by mean picking F1 on the validation tomogram (rp-tomo-train's default) or "
                             "by Dice loss on validation patches (the rule of the sections written before 2026-11-22)")
    parser.add_argument("--virtual-step", choices=("adam", "sgd"), default="sgd",
                        help="the unrolled update of the meta step: the optimiser's Adam step or a plain SGD step")
    parser.add_argument("--dr-floor", type=float, default=TrainConfig.dr_floor,
                        help="least weight DR may give a voxel: w = floor + (1 - floor) * DR's class-normalised weight")
    parser.add_argument("--dr-ceiling", type=float, default=TrainConfig.dr_ceiling,
                        help="most weight DR may give a voxel, as a multiple of its label class's mean (0: no cap)")
    parser.add_argument("--lc-relabel", choices=LC_RELABEL, default=TrainConfig.lc_relabel,
                        help="voxels LC may relabel: only those labelled background, or all (the rule of the sections "
                             "written before tomo_robpicker_snr025_hard_smallphantom75_lcbg)")
    parser.add_argument("--split-grid", type=float, nargs="+", default=list(SPLIT_GRID),
                        help="split thresholds tried on the validation tomogram (components of more than this many "
                             "sphere volumes split at probability peaks; 0 = never); 0 alone: the rule of the sections "
                             "written before 2026-11-23")
    parser.add_argument("--section", help="section of docs/benchmarks.md to write (default from --label-noise)")
    parser.add_argument("--save-probs", type=Path, help="keep each method's class probabilities of the validation and test tomograms here "
                             "(float32, as picked: tomo_split_rescore.py picks them again exactly)")
    parser.add_argument("--no-report", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args()
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu: torch sees no CUDA GPU on this machine")
    if args.quick:
        args.iterations, args.shape, args.train_tomograms, args.test_tomograms = 20, (48, 64, 64), 1, 1
    args.species = tuple(args.species)  # nargs gives a list; TomogramConfig and the default are tuples
    preset = NOISE[args.label_noise]
    args.drop = args.drop if args.drop is not None else preset["drop"]
    args.shift_voxels = args.shift_voxels if args.shift_voxels is not None else preset["shift_voxels"]
    t0 = time.monotonic()
    cfg, train_t, _, test_t, _ = simulate(args, args.seeds[0])
    species = test_t[0].species
    print(f"simulated {len(train_t)} + 1 + {len(test_t)} tomograms {tuple(args.shape)} in {time.monotonic() - t0:.0f} s; "
          f"species {species}; label noise {args.label_noise}: drop {args.drop}, click error {args.shift_voxels} voxels",
          flush=True)
    names = dict(METHODS)
    tasks = [(m, seed, args) for seed in args.seeds for m in args.methods]
    if args.processes > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(args.processes, len(tasks))) as pool:
            done = pool.starmap(run_method, tasks, chunksize=1)
    else:
        done = [run_method(*t) for t in tasks]
    runs: dict[str, list] = {m: [] for m in args.methods}
    for (m, _, _), r in zip(tasks, done):
        runs[m].append(r)
    n_species = len(species)
    # F1 per method: [seeds, species]
    f1 = {m: np.array([[r[0][s]["f1"] for s in range(1, n_species + 1)] for r in rs]) for m, rs in runs.items()}

    def cell(values: np.ndarray) -> str:
        return f"{values.mean():.3f}" + (f" ± {values.std(ddof=1):.3f}" if len(values) > 1 else "")

    header = ("| method | " + " | ".join(f"{n} ({d:g} Å) F1" for n, d in species) + " | train s | pick s |"
              + (" size floors | split above |" if args.min_fraction is None else ""))
    command = " ".join(run_args(sys.argv[1:], with_value=("--save-probs",), flags=("--no-report",)))
    lines = [
        f"Run: `python benchmarks/tomo_robpicker.py {command}`. " + machine_line(),
        f"Per seed: {len(train_t)} training tomograms (noisy sphere labels: "
        + (f"{args.drop[0]:.0%} of particles missing" if len(args.drop) == 1 else
           "missing " + ", ".join(f"{species[i][0]} {d:.0%}" for i, d in enumerate(args.drop)))
        + f", centres shifted by 0.35 x radius{f' and {args.shift_voxels:g} voxel(s)' if args.shift_voxels else ''} "
        "per axis, radii x U(0.6, 1.6)), 1 validation tomogram (exact shape labels), "
        f"{len(test_t)} test tomograms, each {args.shape[2]}x{args.shape[1]}x{args.shape[0]} voxels at "
        f"{cfg.angpix:g} Å"
        + ("" if args.species == DEFAULT_SPECIES else
           " with species " + ", ".join(f"{sp.name} = {sp.particle} ({sp.count} per tomogram)" for sp in args.species))
        + f", SNR {args.snr:g}; U-Net width {args.width}, depth 4, patches {args.patch}³, batch {args.batch}, "
        f"{args.iterations} iterations, Adam lr {args.learning_rate:g}, meta lr {args.meta_lr:g}"
        + (f" (LC {args.lc_meta_lr:g})" if args.lc_meta_lr and {"lc", "robpicker"} & set(args.methods) else "")
        + ", a meta step every "
        f"{args.meta_interval} iterations"
        + (f" after {args.meta_start} iterations of plain training (warm-up)" if args.meta_start else "")
        + ("; validation batches stratified by species" if args.stratified_val else "")
        + ("; validation patches: background (anywhere) as one more stratum beside the species" if args.val_background else "")
        + {"dice": "", "dice_ce": "; validation loss Dice + voxel cross-entropy",
           "dice_cbce": "; validation loss Dice + class-balanced voxel cross-entropy"}[args.val_loss]
        + (dr_bounds_words(args) if {"dr", "robpicker"} & set(args.methods) else "")
        + ({"background": "; LC relabels only voxels labelled background (`--lc-relabel background`)",
            "all": "; LC may relabel every voxel (`--lc-relabel all`, the rule of the sections before "
                   "`tomo_robpicker_snr025_hard_smallphantom75_lcbg`)"}[args.lc_relabel] if {"lc", "robpicker"} & set(args.methods) else "")
        + f"; {device_words(run_device(args), args.threads)} per run, "
        f"{args.processes} run(s) side by side. "
        "F1 per species, matched within half the species' diameter; truth counts per seed: "
        + ", ".join(f"{species[s - 1][0]} {v['n_truth']}" for s, v in runs[args.methods[0]][0][0].items())
        + f". Mean ± sd over {len(args.seeds)} seed(s); picks: connected components of at least "
        + (f"{args.min_fraction:g} of the species' sphere volume" if args.min_fraction is not None else
           "a fraction of the species' sphere volume chosen per run and species on the validation tomogram from "
           + ", ".join(f"{g:g}" for g in MIN_FRACTION_GRID) + " (the `size floors` column: tiny/small/medium/large per seed)"
           + (", and components of more than " + " or ".join(f"{g:g}" for g in args.split_grid if g > 0)
              + " sphere volumes split at the peaks of the species' probability where that scored better there (the "
              "`split above` column, 0 = not split)" if any(g > 0 for g in args.split_grid) else ""))
        + f"; {'Adam' if args.virtual_step == 'adam' else 'SGD'} virtual step in the meta (bi-level) updates; best "
        + ("checkpoint (of 8) by mean picking F1 on the validation tomogram." if args.checkpoint == "f1" else
           "checkpoint (of 8) by Dice loss on 8 validation patches."),
        "",
        header,
        "|---" * (n_species + 3 + 2 * (args.min_fraction is None)) + "|",
    ]
    for m, rs in runs.items():
        lines.append(f"| {names[m]} | " + " | ".join(cell(f1[m][:, j]) for j in range(n_species))
                     + f" | {np.mean([r[1] for r in rs]):.0f} | {np.mean([r[2] for r in rs]):.0f} |"
                     + (" " + ", ".join(fmt_floor(r[4]) for r in rs) + " | " + ", ".join(fmt_floor(r[5]) for r in rs) + " |"
                        if args.min_fraction is None else ""))
    if "plain" in f1 and "robpicker" in f1:
        gain = f1["robpicker"] - f1["plain"]
        lines += ["", "Gain of RobPicker over the baseline (mean; per seed): "
                  + ", ".join(f"{species[j][0]} {gain[:, j].mean():+.3f} ("
                              + " ".join(f"{g:+.2f}" for g in gain[:, j]) + ")" for j in range(n_species)) + "."]
        small = [j for j in (0, 1) if j < n_species]
        met = all(gain[:, j].mean() >= 0.15 for j in small) and gain[:, -1].mean() >= -0.02
        lines.append("Acceptance (mean tiny and small F1 >= baseline + 0.15, large not worse): "
                     + ("**met**." if met else "**not met** on this run."))
        if "dr" in f1 and "lc" in f1:
            both = all(f1["robpicker"][:, j].mean() > f1[m][:, j].mean() for j in small for m in ("dr", "lc"))
            lines.append("Both meta networks contribute (mean full > DR-only and > LC-only on tiny and small): "
                         + ("**yes**." if both else "**no** on this run."))
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_report:
        section = args.section or ("tomo_robpicker" if args.label_noise == "moderate" else f"tomo_robpicker_{args.label_noise}")
        update_section(section, f"## Tomogram picker: RobPicker vs plain U-Net ({args.label_noise} label noise, SNR {args.snr:g})\n\n"
                       + text)


if __name__ == "__main__":
    main()
