"""``relion-plugins``: the umbrella command (demo, doctor, simulate, evaluate)."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import __version__

# Executables and the job module each one launches (jobs/_entry.py, setup.cfg console_scripts).
EXECUTABLES = {"rp-pick-log": "log_pick", "rp-pu-train": "pu_train", "rp-pu-pick": "pu_pick"}
EXECUTABLES["rp-rank-select"] = "rank_select"
EXECUTABLES.update({"rp-tomo-train": "tomo_train", "rp-tomo-pick": "tomo_pick"})
EXECUTABLES["rp-loop-report"] = "loop_report"
EXECUTABLES.update({"rp-detr-train": "detr_train", "rp-detr-pick": "detr_pick"})

RELION_PROGRAMS = (
    "relion",
    "relion_refine",
    "relion_preprocess",
    "relion_autopick",
    "relion_pipeliner",
    "relion_schemer",
    "relion_it.py",
    "relion_class_ranker",
    "relion_python_classranker",
)


def job_command(executable: str) -> list[str]:
    """How to start an External executable: its console script, else ``python -m relion_plugins.jobs``."""
    found = shutil.which(executable)
    if found:
        return [found]
    return [sys.executable, "-m", "relion_plugins.jobs", EXECUTABLES[executable]]


def run_external_like_relion(
    project_dir: Path, job_dir: str, executable: str, args: list[str], threads: int = 1, timeout: float = 3600
) -> str:
    """Run an External job exactly as RELION does: ``sh -c "EXE --o DIR ... --j N >> DIR/run.out 2>> DIR/run.err"``.

    Returns the marker that appeared (SUCCESS, FAILURE or ABORTED); RELION ignores the exit code too.
    """
    from .relion import external as ext

    (project_dir / job_dir).mkdir(parents=True, exist_ok=True)
    command = " ".join(shlex.quote(c) for c in job_command(executable))
    command += f" --o {job_dir} " + " ".join(shlex.quote(a) for a in args) + f" --j {threads}"
    with open(project_dir / job_dir / "note.txt", "a") as note:  # RELION records the command there
        note.write(
            f" ++++ Executing new job on {time.ctime()}\n ++++ with the following command(s):\n{command}\n"
        )
    subprocess.run(
        ["sh", "-c", f"{command} >> {job_dir}run.out 2>> {job_dir}run.err"],
        cwd=project_dir,
        timeout=timeout,
        check=False,
    )
    for marker in (ext.SUCCESS, ext.FAILURE, ext.ABORTED):
        if (project_dir / job_dir / marker).exists():
            return marker
    return "none"


# --------------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """Simulate a small project and run the self-supervised loop (scheme selfpick) on it, printing picking
    F1 against the truth per iteration; without RELION programs, run the LoG picker alone."""
    project_dir = Path(args.dir).resolve()
    if project_dir.exists() and any(project_dir.iterdir()) and not args.force:
        print(f"{project_dir} exists and is not empty; use --force or another --dir", file=sys.stderr)
        return 1
    if project_dir.exists() and args.force:
        shutil.rmtree(project_dir)
    has_relion = shutil.which("relion_schemer") or (shutil.which("relion_refine") and shutil.which("relion_preprocess"))
    if not args.log_only and has_relion:
        from .scheme_cli import LoopSettings, selfpick_demo

        settings = LoopSettings(micrographs=args.micrographs, seed=args.seed, threads=args.j)
        return selfpick_demo(project_dir, settings, log=lambda line: print(line, flush=True))
    if not args.log_only:
        print(
            "No RELION programs found (relion_schemer, or Debian's relion_refine + relion_preprocess: "
            "apt-get install relion): running the LoG picker alone instead of the whole loop.",
            flush=True,
        )
    return demo_log_picker(project_dir, args)


def demo_log_picker(project_dir: Path, args: argparse.Namespace) -> int:
    """Simulate a small project, run the LoG External job as RELION would, and score it against the truth."""
    from .evaluate import evaluate_coordinates
    from .relion.coords import read_coordinate_list
    from .simulate import make_project

    t0 = time.monotonic()
    print(f"Simulating {args.micrographs} micrographs in {project_dir} ...", flush=True)
    sim = make_project(project_dir, n_micrographs=args.micrographs, seed=args.seed)
    print(
        f"  done in {time.monotonic() - t0:.1f} s: {sim.n_particles} particles of {sim.diameter_A:g} Å at "
        f"{sim.angpix:g} Å/px, with ice, contaminants, carbon edges and aggregates",
        flush=True,
    )

    job_dir = "External/job004/"
    d = sim.diameter_A
    job_args = [
        "--in_mics",
        sim.micrographs_star.relative_to(project_dir).as_posix(),
        "--diameter_min",
        f"{0.9 * d:g}",
        "--diameter_max",
        f"{1.1 * d:g}",
    ]
    print(
        f"Running the LoG picker as RELION would: rp-pick-log --o {job_dir} {' '.join(job_args)} --j {args.j}",
        flush=True,
    )
    t0 = time.monotonic()
    marker = run_external_like_relion(project_dir, job_dir, "rp-pick-log", job_args, threads=args.j)
    print(f"  {marker} after {time.monotonic() - t0:.1f} s", flush=True)
    if marker != "RELION_JOB_EXIT_SUCCESS":
        print((project_dir / job_dir / "run.err").read_text(), file=sys.stderr)
        return 1

    picks = read_coordinate_list(project_dir / job_dir / "autopick.star", project_dir)
    truth = truth_tables(sim)
    radius = 0.5 * d / sim.angpix
    scores = evaluate_coordinates(picks, truth, radius_px=radius)
    print(
        f"LoG picker against the truth ({sum(len(t) for t in truth.values())} particles, match radius "
        f"{radius:.1f} px):"
    )
    print(
        f"  precision {scores['precision']:.3f}  recall {scores['recall']:.3f}  F1 {scores['f1']:.3f}  "
        f"(AUPR {scores['aupr']:.3f})"
    )
    print(f"Pictures: {project_dir / job_dir / 'logfile.pdf'}")
    return 0


def truth_tables(sim) -> dict:
    """The simulator's truth as coordinate tables, keyed by micrograph name."""
    import pandas as pd

    return {
        name: pd.DataFrame({"rlnCoordinateX": xy[:, 0], "rlnCoordinateY": xy[:, 1]})
        for name, xy in sim.truth.items()
    }


def cmd_doctor(args: argparse.Namespace) -> int:
    """What this installation can use: Python, libraries, torch/CUDA, GPUs, RELION programs, model paths."""
    from .resources import model_search_path

    print(f"relion-plugins {__version__} at {Path(__file__).resolve().parent}")
    print(f"Python {platform.python_version()} ({sys.executable}) on {platform.platform()}")
    for name in ("numpy", "scipy", "pandas", "mrcfile", "starfile", "yaml"):
        try:
            module = importlib.import_module(name)
            print(f"  {name:<11} {getattr(module, '__version__', '?')}")
        except Exception as exc:  # noqa: BLE001 - report whatever is broken
            print(f"  {name:<11} MISSING ({type(exc).__name__}: {exc})")
    try:
        import torch

        cuda = torch.cuda.is_available()
        print(
            f"  {'torch':<11} {torch.__version__}; CUDA {'available' if cuda else 'not available'}"
            + (f" (CUDA {torch.version.cuda})" if cuda else "")
        )
        for i in range(torch.cuda.device_count() if cuda else 0):
            props = torch.cuda.get_device_properties(i)
            print(f"    GPU {i}: {props.name}, {props.total_memory / 2**30:.1f} GiB")
    except Exception as exc:  # noqa: BLE001
        print(
            f"  {'torch':<11} NOT USABLE ({type(exc).__name__}: {exc}); the training-free LoG picker still works"
        )
    print("RELION programs on PATH:")
    for prog in RELION_PROGRAMS:
        path = shutil.which(prog)
        version = ""
        if path and prog.startswith("relion_") and not prog.endswith(".py") and "python" not in prog:
            try:
                out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
                version = next((line.strip() for line in out.splitlines() if "version" in line.lower()), "")
            except (OSError, subprocess.SubprocessError):
                version = "(did not answer --version)"
        print(f"  {prog:<26} {path or 'not found'} {version}".rstrip())
    print("External executables:")
    for exe in EXECUTABLES:
        print(f"  {exe:<26} {shutil.which(exe) or 'not on PATH (python -m relion_plugins.jobs works)'}")
    print("Model files are looked for in:")
    for path in model_search_path():
        print(f"  {path}{'' if path.is_dir() else ' (does not exist)'}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Write a simulated RELION project with ground truth."""
    from .simulate import make_project

    sim = make_project(
        Path(args.dir), n_micrographs=args.micrographs, seed=args.seed, shape=(args.size, args.size)
    )
    print(
        f"{sim.project_dir}: {len(sim.micrograph_names)} micrographs, {sim.n_particles} particles; "
        f"micrographs in {sim.micrographs_star}, truth in {sim.truth_star}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score any RELION coordinate output against a truth set."""
    from .evaluate import evaluate_coordinates
    from .relion.coords import read_coordinate_list, read_particle_coordinates

    def load(path: str):
        from .relion.star import read_star

        blocks = read_star(path)
        if "coordinate_files" in blocks:
            return read_coordinate_list(path, args.project_dir)
        return read_particle_coordinates(path)

    picks = load(args.picks)
    truth = load(args.truth)
    radius = args.radius if args.radius > 0 else 0.5 * args.diameter / args.angpix
    scores = evaluate_coordinates(
        picks, truth, radius_px=radius, threshold=args.threshold, border=args.border
    )
    for key in ("precision", "recall", "f1", "aupr", "best_f1", "best_threshold", "n_picks", "n_truth"):
        if key in scores:
            value = scores[key]
            print(f"{key:<15} {value:.4f}" if isinstance(value, float) else f"{key:<15} {value}")
    return 0


def cmd_ranker_train(args: argparse.Namespace) -> int:
    """Train the class ranker: reproduce the shipped default weights, or retrain on your labelled classes."""
    from .rank.network import DEFAULT_WEIGHTS
    from .rank.training import make_ranker

    out = Path(args.out) if args.out else None
    if out is None:
        if args.from_star:
            print("--out is needed with --from_star (the shipped weights stay as they are)", file=sys.stderr)
            return 1
        out = DEFAULT_WEIGHTS
    try:
        make_ranker(
            out,
            seed=args.seed,
            n_jobs=args.jobs,
            epochs=args.epochs,
            from_star=args.from_star or (),
            init=args.init or None,
            project_dir=args.project_dir,
        )
    except ValueError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_pu_pretrain(args: argparse.Namespace) -> int:
    """Make the PU picker's shipped starting weights from simulated micrographs (every particle labelled)."""
    from .pick.pu.pretrain import make_pretrained

    make_pretrained(
        args.out or None,
        micrographs_per_set=args.micrographs,
        steps=args.steps,
        seed=args.seed,
        threads=args.threads,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relion-plugins", description=__doc__)
    parser.add_argument("--version", action="version", version=f"relion-plugins {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    p.add_argument(
        "--dir", default="relion_plugins_demo", help="project directory to create (default: %(default)s)"
    )
    p.add_argument("--micrographs", type=int, default=6, help="number of micrographs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--j", type=int, default=2, help="threads for the picker (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an existing demo directory")
    p.add_argument("--log_only", action="store_true", help="run only the LoG picker, not the whole loop")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("doctor", help=cmd_doctor.__doc__, description=cmd_doctor.__doc__)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("simulate", help=cmd_simulate.__doc__, description=cmd_simulate.__doc__)
    p.add_argument("dir", help="project directory to create")
    p.add_argument("--micrographs", type=int, default=8, help="number of micrographs (default: %(default)s)")
    p.add_argument("--size", type=int, default=1024, help="micrograph size in pixels (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("evaluate", help=cmd_evaluate.__doc__, description=cmd_evaluate.__doc__)
    p.add_argument("picks", help="autopick.star / manualpick.star coordinate list, or a particles STAR file")
    p.add_argument("truth", help="the true coordinates: a coordinate list or a particles-like STAR file")
    p.add_argument(
        "--diameter", type=float, default=200.0, help="particle diameter in Å (default: %(default)s)"
    )
    p.add_argument(
        "--angpix", type=float, default=1.0, help="micrograph pixel size in Å (default: %(default)s)"
    )
    p.add_argument(
        "--radius",
        type=float,
        default=0.0,
        help="match radius in pixels; 0 = half the diameter (default: %(default)s)",
    )
    p.add_argument("--threshold", type=float, default=None, help="score threshold for precision/recall/F1")
    p.add_argument(
        "--border", type=float, default=0.0, help="ignore picks and truth this close to the edge (px)"
    )
    p.add_argument(
        "--micrograph_size", type=int, nargs=2, metavar=("NX", "NY"), help="micrograph size in pixels"
    )
    p.add_argument("--project_dir", default=".", help="RELION project directory (default: %(default)s)")
    p.set_defaults(func=cmd_evaluate)

    from .rank.training import DEFAULT_EPOCHS, DEFAULT_JOBS, DEFAULT_SEED

    p = sub.add_parser("ranker", help="class ranker weights (train / retrain)")
    rsub = p.add_subparsers(dest="ranker_command", required=True)
    p = rsub.add_parser("train", help=cmd_ranker_train.__doc__, description=cmd_ranker_train.__doc__)
    p.add_argument("--out", default="", help="weights file to write (default: the shipped default_ranker.pt)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default: %(default)s)")
    p.add_argument(
        "--jobs", type=int, default=DEFAULT_JOBS, help="simulated 2D jobs to train on (default: %(default)s)"
    )
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs (default: %(default)s)")
    p.add_argument(
        "--from_star",
        nargs="+",
        default=[],
        metavar="STAR",
        help="retrain on labelled classes: rank_model.star / backup_selection.star of a Select or rp-rank-select "
        "job, a model STAR with rlnClassScore, or a class_averages.star (listed classes = good)",
    )
    p.add_argument("--init", default="", help="weights to start retraining from (default: the shipped ones)")
    p.add_argument("--project_dir", default=None, help="RELION project directory of the STAR files")
    p.set_defaults(func=cmd_ranker_train)

    from .pick.pu.pretrain import DEFAULT_MICROGRAPHS, DEFAULT_STEPS
    from .pick.pu.pretrain import DEFAULT_SEED as PU_SEED

    p = sub.add_parser("pu", help="PU picker starting weights")
    psub = p.add_subparsers(dest="pu_command", required=True)
    p = psub.add_parser("pretrain", help=cmd_pu_pretrain.__doc__, description=cmd_pu_pretrain.__doc__)
    p.add_argument("--out", default="", help="weights file to write (default: the shipped resnet8_u32.pt)")
    p.add_argument("--seed", type=int, default=PU_SEED, help="random seed (default: %(default)s)")
    p.add_argument(
        "--micrographs", type=int, default=DEFAULT_MICROGRAPHS, help="per simulated set (default: %(default)s)"
    )
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="minibatches (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default: %(default)s)")
    p.set_defaults(func=cmd_pu_pretrain)

    from .scheme_cli import add_scheme_parser

    add_scheme_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``relion-plugins``."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
