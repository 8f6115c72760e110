"""Benchmark STAR reading and writing: ours against starfile, on a realistic particles table.

Usage::

    python benchmarks/star_io.py               # 1,000,000 rows x 23 columns, updates docs/benchmarks.md
    python benchmarks/star_io.py --rows 20000  # quick run (still updates the page unless --no-report)

Every measured operation runs in its own fresh child process, which reports its wall time and its
own peak RSS (``getrusage(RUSAGE_SELF)``), so each peak belongs to one operation only. A write child
first loads the pickled table (that memory is part of its peak: a writer needs the table).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def make_particles(rows: int, seed: int = 0) -> dict:
    """A seeded optics + particles pair shaped like RELION's Class2D ``_data.star`` (23 particle columns)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_mics = max(1, rows // 200)
    mic = rng.integers(0, n_mics, rows)
    mic.sort()
    # index of each particle within its micrograph, 1-based, as in RELION's stack names
    first = np.searchsorted(mic, mic)
    idx = np.arange(rows) - first + 1
    mic_names = np.array([f"MotionCorr/job002/Movies/mic{m:05d}.mrc" for m in range(n_mics)], dtype=object)
    stack_names = np.array([f"Extract/job007/Movies/mic{m:05d}.mrcs" for m in range(n_mics)], dtype=object)
    image_names = [f"{i:06d}@{s}" for i, s in zip(idx.tolist(), stack_names[mic].tolist())]

    def r(x: np.ndarray, d: int) -> np.ndarray:
        return np.round(x, d)  # RELION writes 6 significant decimals at most

    defu = r(rng.uniform(5000, 30000, rows), 6)
    particles = pd.DataFrame(
        {
            "rlnCoordinateX": r(rng.uniform(0, 4096, rows), 0),
            "rlnCoordinateY": r(rng.uniform(0, 4096, rows), 0),
            "rlnAutopickFigureOfMerit": r(rng.normal(1.0, 0.5, rows), 6),
            "rlnClassNumber": rng.integers(1, 101, rows),
            "rlnAnglePsi": r(rng.uniform(-180, 180, rows), 6),
            "rlnImageName": pd.Series(image_names, dtype=object),
            "rlnMicrographName": pd.Series(mic_names[mic], dtype=object),
            "rlnOpticsGroup": np.ones(rows, dtype=np.int64),
            "rlnCtfMaxResolution": r(rng.uniform(2.5, 8, rows), 6),
            "rlnCtfFigureOfMerit": r(rng.uniform(0, 0.3, rows), 6),
            "rlnDefocusU": defu,
            "rlnDefocusV": r(defu - rng.uniform(0, 500, rows), 6),
            "rlnDefocusAngle": r(rng.uniform(-90, 90, rows), 6),
            "rlnCtfBfactor": np.zeros(rows),
            "rlnCtfScalefactor": np.ones(rows),
            "rlnPhaseShift": np.zeros(rows),
            "rlnAngleRot": r(rng.uniform(-180, 180, rows), 6),
            "rlnAngleTilt": r(rng.uniform(0, 180, rows), 6),
            "rlnOriginXAngst": r(rng.normal(0, 3, rows), 6),
            "rlnOriginYAngst": r(rng.normal(0, 3, rows), 6),
            "rlnNormCorrection": r(rng.normal(1, 0.1, rows), 6),
            "rlnLogLikeliContribution": r(rng.normal(1.5e5, 1e3, rows), 6),
            "rlnMaxValueProbDistribution": r(rng.uniform(0, 1, rows), 6),
        }
    )
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": pd.Series(["opticsGroup1"], dtype=object),
            "rlnOpticsGroup": [1],
            "rlnMicrographOriginalPixelSize": [0.885],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
            "rlnMicrographPixelSize": [0.885],
            "rlnImagePixelSize": [1.77],
            "rlnImageSize": [128],
            "rlnImageDimensionality": [2],
            "rlnCtfDataAreCtfPremultiplied": [False],
        }
    )
    return {"optics": optics, "particles": particles}


# ----------------------------------------------------------------------------------------------
# child side: one operation per process


def _child(op: str, table: str, star: str) -> None:
    import pandas as pd

    t0 = time.perf_counter()
    if op == "generate":
        rows, seed = (int(v) for v in star.split(":"))
        pd.to_pickle(make_particles(rows, seed), table)
    elif op == "baseline":
        import starfile  # noqa: F401

        import relion_plugins.relion.star  # noqa: F401  (what every reader pays before reading)
    elif op == "ours_write":
        from relion_plugins.relion.star import write_star

        blocks = pd.read_pickle(table)
        t0 = time.perf_counter()
        write_star(star, blocks)
    elif op == "ours_read":
        from relion_plugins.relion.star import read_star

        t0 = time.perf_counter()
        blocks = read_star(star)
        assert len(blocks["particles"]) > 0
    elif op == "ours_read_optics":
        from relion_plugins.relion.star import read_star

        t0 = time.perf_counter()
        blocks = read_star(star, blocks=["optics"])
        assert "particles" not in blocks
    elif op == "starfile_write":
        import starfile

        blocks = pd.read_pickle(table)
        t0 = time.perf_counter()
        starfile.write(blocks, star)
    elif op == "starfile_read":
        import starfile

        t0 = time.perf_counter()
        blocks = starfile.read(star, always_dict=True)
        assert len(blocks["particles"]) > 0
    else:
        raise SystemExit(f"unknown op {op}")
    seconds = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"seconds": seconds, "peak_mib": peak_kib / 1024}))


def _measure(op: str, table: Path, star: Path) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", op, str(table), str(star)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{op} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# parent side


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-report", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--child", nargs=3, metavar=("OP", "TABLE", "STAR"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0

    with tempfile.TemporaryDirectory(prefix="star_io_") as tmp:
        tmpd = Path(tmp)
        table = tmpd / "table.pkl"
        # The parent stays small (no pandas): a child's peak RSS starts from its parent's RSS at fork.
        _measure("generate", table, f"{args.rows}:{args.seed}")
        ncol = 23
        ours, theirs = tmpd / "ours.star", tmpd / "starfile.star"
        results: dict[str, dict[str, float]] = {}
        for op, star in (
            ("baseline", ours),
            ("ours_write", ours),
            ("starfile_write", theirs),
            ("ours_read", ours),
            ("starfile_read", theirs),
            ("ours_read_optics", ours),
        ):
            results[op] = _measure(op, table, star)
            print(f"{op:18s} {results[op]['seconds']:8.2f} s {results[op]['peak_mib']:8.0f} MiB", flush=True)
        sizes = {"ours": ours.stat().st_size, "starfile": theirs.stat().st_size}

    from _report import machine_line, update_section

    def row(what: str, a: str, b: str) -> str:
        ra, rb = results[a], results[b]
        return (
            f"| {what} | {ra['seconds']:.2f} | {rb['seconds']:.2f} | {ra['seconds'] / rb['seconds']:.2f} "
            f"| {ra['peak_mib']:.0f} | {rb['peak_mib']:.0f} | {ra['peak_mib'] / rb['peak_mib']:.2f} |"
        )

    from importlib.metadata import version

    md = "\n".join(
        [
            "## STAR I/O (`benchmarks/star_io.py`)",
            "",
            f"Particles table of {args.rows:,} rows x {ncol} columns plus an optics block (seed {args.seed}); "
            f"`relion_plugins.relion.star` against starfile {version('starfile')}. "
            "Each figure is one fresh process; peak RSS is that process's own maximum (a writer includes "
            "the loaded table). "
            f"File sizes: ours {sizes['ours'] / 2**20:.0f} MiB, starfile {sizes['starfile'] / 2**20:.0f} MiB.",
            "",
            "| operation | ours (s) | starfile (s) | time ratio ours/starfile | ours peak RSS (MiB) "
            "| starfile peak RSS (MiB) | RSS ratio |",
            "|---|---|---|---|---|---|---|",
            row("write", "ours_write", "starfile_write"),
            row("read", "ours_read", "starfile_read"),
            "",
            f"Baseline (a process that has imported pandas, our reader and starfile): "
            f"{results['baseline']['peak_mib']:.0f} MiB. "
            f"Reading only `data_optics` from the same file: {results['ours_read_optics']['seconds']:.3f} s, "
            f"{results['ours_read_optics']['peak_mib']:.0f} MiB peak.",
            "",
            machine_line(),
            f"Re-run: `python benchmarks/star_io.py --rows {args.rows}`.",
        ]
    )
    print()
    print(md)
    if not args.no_report:
        update_section("star_io", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
