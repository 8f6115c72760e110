"""Picking with and without splitting run-together components, on probabilities saved by
``tomo_robpicker.py --save-probs DIR``: no training, the same networks scored two ways.

For each method and seed, the operating point (each species' component-size floor, and with splitting its
split threshold) is chosen on the saved validation tomogram's probabilities, then the saved test tomograms
are picked with it and scored against the true centres, exactly as ``tomo_robpicker.py`` does. "whole":
the rule of the sections written before 2026-11-23 (one pick per connected component); "split":
components of more than ``--split-grid`` sphere volumes may be split at the peaks of the species'
probability, where that scored better on the validation tomogram (``cluster_picks(split_above=...)``).

Pass the simulation options of the run that saved the probabilities (``--snr``, ``--species``, ``--shape``,
tomogram counts): the tomograms are simulated again (deterministic per seed) for their true centres.
Probabilities saved before 2026-11-23 are float16: rounding can tip a near-tie in the choice of a floor,
so the "whole" rows can differ from that run's own F1; the two rules are still compared on the same numbers.
Run:  python benchmarks/tomo_split_rescore.py --probs DIR --seeds 2026 2027 --snr 0.25 [--species ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine_line, run_args, update_section  # noqa: E402
from tomo_robpicker import METHODS, centres, parse_species, simulate  # noqa: E402

from relion_plugins.evaluate.tomo import species_scores  # noqa: E402
from relion_plugins.jobs._tomo import f1_against  # noqa: E402
from relion_plugins.pick.tomo.infer import SPLIT_GRID, choose_operating_point, cluster_picks  # noqa: E402
from relion_plugins.simulate.tomogram import DEFAULT_SPECIES  # noqa: E402

RULES = ("whole", "split")


def rescore(probs_dir: Path, method: str, seed: int, args) -> dict[str, tuple[np.ndarray, list, list]]:
    """Test F1 per species under each rule, with the chosen floors and split thresholds."""
    cfg, _, val_t, test_t, _ = simulate(args, seed)
    radius_list = [max(2.0, 0.5 * d / cfg.angpix) for _, d in test_t[0].species]
    radii = {s + 1: r for s, r in enumerate(radius_list)}
    val_probs = np.load(probs_dir / f"{method}_{seed}_val.npy").astype(np.float32)
    test_probs = [np.load(probs_dir / f"{method}_{seed}_{i}.npy").astype(np.float32) for i in range(len(test_t))]
    truth = pd.concat([t.particles.assign(tomo=i) for i, t in enumerate(test_t)], ignore_index=True)
    val_f1 = f1_against([centres(val_t.particles)], radius_list)  # as validation_picking scores

    out = {}
    for rule, grid in (("whole", (0.0,)), ("split", tuple(args.split_grid))):
        floors, splits, _ = choose_operating_point([val_probs], val_f1, radius_list, split_grid=grid)
        picks = pd.concat([cluster_picks(p, 5, radius_list, floors, splits).assign(tomo=i)
                           for i, p in enumerate(test_probs)], ignore_index=True)
        scores = species_scores(picks, truth, radii)
        out[rule] = (np.array([scores[s]["f1"] for s in sorted(scores)]), floors, splits)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probs", type=Path, required=True, help="the --save-probs folder of a tomo_robpicker.py run")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--methods", nargs="+", default=["plain", "robpicker"])
    parser.add_argument("--snr", type=float, default=2.0)
    parser.add_argument("--shape", type=int, nargs=3, default=(80, 128, 128), help="nz ny nx")
    parser.add_argument("--species", type=parse_species, nargs="+", default=DEFAULT_SPECIES, metavar="PARTICLE:COUNT:NAME")
    parser.add_argument("--train-tomograms", type=int, default=3)
    parser.add_argument("--test-tomograms", type=int, default=2)
    parser.add_argument("--split-grid", type=float, nargs="+", default=list(SPLIT_GRID),
                        help="split thresholds tried on the validation tomogram (sphere volumes; 0 = never)")
    parser.add_argument("--about", default="", help="what run saved the probabilities (goes into the report)")
    parser.add_argument("--section", default="tomo_split_rescore", help="section of docs/benchmarks.md to write")
    parser.add_argument("--no-report", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args()
    args.species = tuple(args.species)
    args.drop, args.shift_voxels = [0.3], 0.0  # the training labels are not used here
    missing = [f"{m}_{s}_val.npy" for m in args.methods for s in args.seeds
               if not (args.probs / f"{m}_{s}_val.npy").exists()]
    if missing:
        parser.error(f"{args.probs} lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    t0 = time.monotonic()
    res = {(m, s): rescore(args.probs, m, s, args) for m in args.methods for s in args.seeds}
    species = [sp.name for sp in args.species]
    names = dict(METHODS)

    def cell(values: np.ndarray) -> str:
        return f"{values.mean():.3f}" + (f" ± {values.std(ddof=1):.3f}" if len(values) > 1 else "")

    f1 = {(m, r): np.array([res[m, s][r][0] for s in args.seeds]) for m in args.methods for r in RULES}
    lines = [
        "Run: `python benchmarks/tomo_split_rescore.py --probs DIR "
        f"{' '.join(run_args(sys.argv[1:], with_value=('--probs', '--about'), flags=('--no-report',)))}`"
        + (f", DIR holding the probabilities of {args.about}" if args.about else "") + f". {machine_line()}",
        "Same networks, same probabilities; only the picking rule differs. Mean ± sd over "
        f"{len(args.seeds)} seed(s); rescoring took {time.monotonic() - t0:.0f} s.",
        "",
        "| method | picking | " + " | ".join(f"{n} F1" for n in species) + " | split above (per seed) |",
        "|---" * (len(species) + 3) + "|",
    ]
    for m in args.methods:
        for r in RULES:
            lines.append(f"| {names[m]} | {r} | " + " | ".join(cell(f1[m, r][:, j]) for j in range(len(species)))
                         + " | " + ", ".join("/".join(f"{v:g}" for v in res[m, s][r][2]) for s in args.seeds) + " |")
    if {"plain", "robpicker"} <= set(args.methods):
        for r in RULES:
            gain = f1["robpicker", r] - f1["plain", r]
            lines.append(f"\nRobPicker minus plain U-Net, {r} (mean; per seed): "
                         + ", ".join(f"{n} {gain[:, j].mean():+.3f} (" + " ".join(f"{g:+.2f}" for g in gain[:, j]) + ")"
                                     for j, n in enumerate(species)) + ".")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_report:
        update_section(args.section, "## Tomogram picker: splitting run-together components (rescored probabilities)\n\n" + text)


if __name__ == "__main__":
    main()
