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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relion_plugins.pick.blob import pick_blobs  # noqa: E402

DATA = Path("/work/shared/data/real/empiar10017_bgal")
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


def _read_mrc(path: Path) -> np.ndarray:
    try:
        from relion_plugins.relion.mrc import read_mrc

        return read_mrc(path)[0]
    except ImportError:  # pragma: no cover - module written concurrently
        import mrcfile

        with mrcfile.open(path, permissive=True) as m:
            return np.asarray(m.data, dtype=np.float32)


def _read_xy(path: Path) -> np.ndarray:
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.lstrip().startswith(("_", "data_", "loop_", "#")):
            try:
                rows.append((float(parts[0]), float(parts[1])))
            except ValueError:
                continue
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def match_count(picks: np.ndarray, truth: np.ndarray, radius: float) -> int:
    """Number of one-to-one matches within ``radius`` (optimal assignment on the close pairs)."""
    try:
        from relion_plugins.evaluate import match_picks

        res = match_picks(picks, truth, radius)
        for attr in ("n_tp", "tp"):
            if hasattr(res, attr):
                v = getattr(res, attr)
                return int(v if np.isscalar(v) else np.sum(v))
        if isinstance(res, tuple):
            return int(len(res[0]))
    except ImportError:
        pass
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    if len(picks) == 0 or len(truth) == 0:
        return 0
    dist = cdist(picks, truth)
    big = 1e6
    cost = np.where(dist <= radius, dist, big)
    r, c = linear_sum_assignment(cost)
    return int(np.sum(cost[r, c] < big))


def _inside(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    ny, nx = shape
    return (
        (xy[:, 0] >= BORDER_PX)
        & (xy[:, 0] < nx - BORDER_PX)
        & (xy[:, 1] >= BORDER_PX)
        & (xy[:, 1] < ny - BORDER_PX)
    )


def score_empiar(names: list[str], kwargs: dict) -> dict:
    tp = n_pick = n_true = 0
    t_total = 0.0
    for name in names:
        img = _read_mrc(DATA / "micrographs" / f"{name}.mrc")
        truth = _read_xy(DATA / "coordinates" / f"{name}.star")
        t0 = time.perf_counter()
        kw = dict(kwargs)
        d_min, d_max = kw.pop("diameters_A", (0.8 * DIAM_A, 1.2 * DIAM_A))
        res = pick_blobs(img, ANGPIX, d_min, d_max, **kw)
        t_total += time.perf_counter() - t0
        picks = res.xy[_inside(res.xy, img.shape)]
        truth = truth[_inside(truth, img.shape)]
        tp += match_count(picks, truth, RADIUS_PX)
        n_pick += len(picks)
        n_true += len(truth)
    p = tp / max(n_pick, 1)
    r = tp / max(n_true, 1)
    f1 = 2 * p * r / max(p + r, 1e-12)
    return {
        "precision": p,
        "recall": r,
        "f1": f1,
        "picks": n_pick,
        "truth": n_true,
        "s_per_mic": t_total / len(names),
    }


def score_simulated(seeds: list[int], kwargs: dict) -> dict | None:
    """Pooled P/R/F1 on simulated micrographs (default simulator settings, junk included)."""
    try:
        from relion_plugins.simulate.micrograph import MicrographConfig, simulate_micrograph
    except ImportError:
        return None
    tp = n_pick = n_true = 0
    t_total = 0.0
    for seed in seeds:
        sim = simulate_micrograph(MicrographConfig(), seed)
        d_A = sim.diameter_A
        kw = dict(kwargs)
        kw.pop("diameters_A", None)  # EMPIAR-specific
        t0 = time.perf_counter()
        res = pick_blobs(sim.image, sim.angpix, 0.8 * d_A, 1.2 * d_A, **kw)
        t_total += time.perf_counter() - t0
        r_px = 0.5 * d_A / sim.angpix
        ny, nx = sim.image.shape

        def inside(xy, b=r_px, ny=ny, nx=nx):
            return (xy[:, 0] >= b) & (xy[:, 0] < nx - b) & (xy[:, 1] >= b) & (xy[:, 1] < ny - b)

        picks = res.xy[inside(res.xy)]
        truth = sim.particles[inside(sim.particles)]
        tp += match_count(picks, truth, r_px)
        n_pick += len(picks)
        n_true += len(truth)
    p = tp / max(n_pick, 1)
    r = tp / max(n_true, 1)
    f1 = 2 * p * r / max(p + r, 1e-12)
    return {
        "precision": p,
        "recall": r,
        "f1": f1,
        "picks": n_pick,
        "truth": n_true,
        "s_per_mic": t_total / len(seeds),
    }


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
