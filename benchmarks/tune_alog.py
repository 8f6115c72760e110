"""Score the A-LoG blob picker on the EMPIAR-10017 train split (and simulated micrographs when available).

Usage::

    python benchmarks/tune_alog.py [--test] [--settings default,...] [--write]

Only the train split (first 14 micrographs by name) is used to compare settings; ``--test`` additionally
reports the held-out 6 at the default settings (never used to choose anything). Matching radius = particle
radius (13.5 px), detections and labels within 32 px of the border are ignored.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relion_plugins.evaluate import border_mask, match_picks, prf  # noqa: E402
from relion_plugins.pick.blob import pick_blobs  # noqa: E402
from relion_plugins.relion.coords import read_coordinates  # noqa: E402
from relion_plugins.relion.mrc import read_mrc  # noqa: E402
from relion_plugins.simulate.micrograph import MicrographConfig, simulate_micrograph  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "empiar10017_bgal"
ANGPIX = 7.08
DIAM_A = 190.0
RADIUS_PX = 13.5
BORDER_PX = 32

SETTINGS: dict[str, dict] = {
    "default": {},
    "no_mask": {"use_junk_mask": False},
    "adj+0.5": {"adjust_threshold": 0.5},
    "adj+1": {"adjust_threshold": 1.0},
    "adj-0.5": {"adjust_threshold": -0.5},
    "upper4": {"upper_threshold": 4.0},
    "upper3": {"upper_threshold": 3.0},
    "adj+1.5": {"adjust_threshold": 1.5},
    "lp30": {"lowpass_A": 30.0},
    "d100-140": {"diameters_A": (100.0, 140.0)},
    "d80-120": {"diameters_A": (80.0, 120.0)},
    "d60-120a1": {"diameters_A": (60.0, 120.0), "adjust_threshold": 1.0},
    "d70-110a1": {"diameters_A": (70.0, 110.0), "adjust_threshold": 1.0},
    "d80-120nm": {"diameters_A": (80.0, 120.0), "use_junk_mask": False},
    "d80-120a.5": {"diameters_A": (80.0, 120.0), "adjust_threshold": 0.5},
    "d80-120a1": {"diameters_A": (80.0, 120.0), "adjust_threshold": 1.0},
}


def _score(items, kwargs: dict) -> dict:
    """Pooled P/R/F1 over ``(image, angpix, truth_xy, (d_min_A, d_max_A), radius_px, border_px)`` items."""
    tp = n_pick = n_true = n_items = 0
    t_total = 0.0
    for img, angpix, truth, (d_min, d_max), radius, border in items:
        n_items += 1
        kw = dict(kwargs)
        d_min, d_max = kw.pop("diameters_A", (d_min, d_max))
        t0 = time.perf_counter()
        res = pick_blobs(img, angpix, d_min, d_max, **kw)
        t_total += time.perf_counter() - t0
        picks = res.xy[border_mask(res.xy, img.shape, border)]
        truth = truth[border_mask(truth, img.shape, border)]
        tp += match_picks(picks, truth, radius).tp
        n_pick += len(picks)
        n_true += len(truth)
    precision, recall, f1 = prf(tp, n_pick, n_true)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "picks": n_pick,
        "truth": n_true,
        "s_per_mic": t_total / max(n_items, 1),
    }


def score_empiar(names: list[str], kwargs: dict) -> dict:
    """EMPIAR-10017 micrographs by name; diameters 0.8-1.2 x 190 Å unless the setting gives them."""

    def items():
        for name in names:
            img, _ = read_mrc(DATA / "micrographs" / f"{name}.mrc")
            truth = read_coordinates(DATA / "coordinates" / f"{name}.star")
            xy = truth[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(dtype=float)
            yield img, ANGPIX, xy, (0.8 * DIAM_A, 1.2 * DIAM_A), RADIUS_PX, BORDER_PX

    return _score(items(), kwargs)


def score_simulated(seeds: list[int], kwargs: dict) -> dict:
    """Simulated micrographs (default simulator settings, junk included); border = particle radius."""
    kwargs = {k: v for k, v in kwargs.items() if k != "diameters_A"}  # EMPIAR-specific

    def items():
        for seed in seeds:
            sim = simulate_micrograph(MicrographConfig(), seed)
            r_px = 0.5 * sim.diameter_A / sim.angpix
            yield (
                sim.image,
                sim.angpix,
                sim.particles,
                (0.8 * sim.diameter_A, 1.2 * sim.diameter_A),
                r_px,
                r_px,
            )

    return _score(items(), kwargs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--test", action="store_true", help="also report the test split at default settings")
    ap.add_argument(
        "--sim", type=int, default=0, help="also score N simulated micrographs (tuning seeds 1000+)"
    )
    ap.add_argument("--no-empiar", action="store_true")
    args = ap.parse_args(argv)
    names = sorted(p.stem for p in (DATA / "micrographs").glob("*.mrc"))
    train, test = names[:14], names[14:]
    print(
        f"{'setting':12s} {'split':6s} {'P':>6s} {'R':>6s} {'F1':>6s} {'picks':>6s} {'truth':>6s} {'s/mic':>6s}"
    )
    for key in args.settings.split(","):
        runs = [] if args.no_empiar else [("train", score_empiar(train, SETTINGS[key]))]
        if args.sim:
            runs.append(("sim", score_simulated(list(range(1000, 1000 + args.sim)), SETTINGS[key])))
        for split, m in runs:
            if m is None:
                continue
            print(
                f"{key:12s} {split:6s} {m['precision']:6.3f} {m['recall']:6.3f} {m['f1']:6.3f} {m['picks']:6d} {m['truth']:6d} {m['s_per_mic']:6.3f}"
            )
    if args.test:
        m = score_empiar(test, {})
        print(
            f"{'default':12s} {'test':6s} {m['precision']:6.3f} {m['recall']:6.3f} {m['f1']:6.3f} {m['picks']:6d} {m['truth']:6d} {m['s_per_mic']:6.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
