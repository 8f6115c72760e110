"""``relion-plugins scheme ...`` (list, install, check, dry-run, run) and the self-supervised loop demo."""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .relion.scheme import SchemeError, read_scheme
from .resources import resource_dir


def shipped_schemes() -> dict[str, Path]:
    """Scheme name -> directory of every scheme that ships with the package."""
    root = resource_dir("schemes")
    return {p.parent.name: p.parent for p in sorted(root.glob("*/scheme.star"))}


def _scheme_source(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if (path / "scheme.star").is_file():
        return path
    shipped = shipped_schemes()
    if name_or_path in shipped:
        return shipped[name_or_path]
    raise SchemeError(
        f"{name_or_path!r} is neither a scheme directory nor a shipped scheme ({', '.join(shipped)})"
    )


def job_start_command(exe: str) -> str:
    """Shell words that start one of our executables (console script, else ``python -m``)."""
    from .cli import EXECUTABLES, job_command

    return " ".join(shlex.quote(c) for c in job_command(exe)) if exe in EXECUTABLES else exe


def cmd_list(args: argparse.Namespace) -> int:
    """List the shipped schemes."""
    for name, path in shipped_schemes().items():
        scheme = read_scheme(path)
        print(f"{name:14s} {len(scheme.jobs)} jobs, {len(scheme.operators)} operators   {path}")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    """Copy a shipped scheme into a project's Schemes/, set its variables and job options, and check it."""
    from .relion.scheme_install import install_scheme, parse_assignments

    try:
        target = install_scheme(
            _scheme_source(args.scheme),
            args.project,
            name=args.name,
            variables=parse_assignments(args.set or [], "--set"),
            job_options=parse_assignments(args.job_option or [], "--job_option"),
            relion_version=args.relion_version,
            force=args.force,
        )
    except SchemeError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    name = target.name
    print(f"Installed {target}")
    print(f"Run it from {Path(args.project).resolve()} with:")
    print(f"  relion_schemer --scheme {name} --reset && \\")
    print(f"  relion_schemer --scheme {name} --run --pipeline_control Schemes/{name}/ --verb 2 "
          f">> Schemes/{name}/run.out 2>> Schemes/{name}/run.err &")  # fmt: skip
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Check scheme directories against every rule of relion_schemer (default: all shipped schemes)."""
    from .relion.scheme_check import check_scheme_dir

    paths = [Path(p) for p in args.paths] or list(shipped_schemes().values())
    n_errors = 0
    for path in paths:
        findings = check_scheme_dir(path)
        errors = [f for f in findings if f.level == "error"]
        n_errors += len(errors)
        status = "OK" if not errors else f"{len(errors)} error(s)"
        warnings = len(findings) - len(errors)
        print(f"{path}: {status}" + (f", {warnings} warning(s)" if warnings else ""))
        for f in findings:
            print(f"  {f}")
    return 1 if n_errors else 0


def cmd_dry_run(args: argparse.Namespace) -> int:
    """Print the path a scheme takes for given variable values, without running any job."""
    from .relion.scheme_install import configure_scheme, parse_assignments
    from .relion.scheme_run import dry_run, parse_answers

    try:
        scheme = read_scheme(_scheme_source(args.scheme))
        configure_scheme(scheme, parse_assignments(args.set or [], "--set"))
        scheme.reset()
        result = dry_run(
            scheme, parse_answers(args.answer or []), project_dir=args.project, max_steps=args.max_steps
        )
    except SchemeError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    jobs = [s.node for s in result.steps if s.kind == "job"]
    print(f"Ended by {result.ended} after {len(result.steps)} nodes; jobs run: {' -> '.join(jobs)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run an installed scheme: with relion_schemer (RELION 4/5) if found, else with Debian RELION 3.1."""
    project = Path(args.project).resolve()
    if shutil.which("relion_schemer") and not args.local:
        return run_with_schemer(project, args.scheme)
    from .relion.scheme_run import run_scheme_locally

    try:
        result = run_scheme_locally(project, args.scheme, start=job_start_command, reset=not args.resume)
    except SchemeError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    print(f"Scheme ended by {result.ended}" + (f" ({result.failed_job})" if result.failed_job else ""))
    return 0 if result.ended in ("exit", "end") else 1


def run_with_schemer(project: Path, name: str) -> int:
    """``relion_schemer --reset`` then ``--run`` with --pipeline_control; success is read from job markers."""
    subprocess.run(["relion_schemer", "--scheme", name, "--reset"], cwd=project, check=True)
    with (
        open(project / "Schemes" / name / "run.out", "a") as out,
        open(project / "Schemes" / name / "run.err", "a") as err,
    ):
        subprocess.run(
            [
                "relion_schemer",
                "--scheme",
                name,
                "--run",
                "--pipeline_control",
                f"Schemes/{name}/",
                "--verb",
                "2",
            ],
            cwd=project,
            stdout=out,
            stderr=err,
            check=False,
        )
    text = (project / "Schemes" / name / "run.out").read_text(errors="replace")
    if "Stopping scheme due to" in text:  # the schemer exits 0 even when a job failed (reference §9.7)
        print(text.splitlines()[-1], file=sys.stderr)
        return 1
    return 0


def add_scheme_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scheme", help="install, check, dry-run and run the shipped RELION Schemes")
    ssub = p.add_subparsers(dest="scheme_command", required=True)

    p = ssub.add_parser("list", help=cmd_list.__doc__, description=cmd_list.__doc__)
    p.set_defaults(func=cmd_list)

    p = ssub.add_parser("install", help=cmd_install.__doc__, description=cmd_install.__doc__)
    p.add_argument("scheme", help="shipped scheme name (selfpick, selfpick_otf) or a scheme directory")
    p.add_argument("--project", default=".", help="RELION project directory (default: %(default)s)")
    p.add_argument("--name", default=None, help="install under this name (e.g. proc for relion_it.py)")
    p.add_argument("--set", action="append", metavar="VAR=VALUE", help="set a scheme variable (repeatable)")
    p.add_argument(
        "--job_option", action="append", metavar="JOB:OPTION=VALUE", help="set a job option (repeatable)"
    )
    p.add_argument(
        "--relion_version", default="auto", help="4, 5 or auto (from default_pipeline.star); sets node labels"
    )
    p.add_argument("--force", action="store_true", help="replace an installed scheme of that name")
    p.set_defaults(func=cmd_install)

    p = ssub.add_parser("check", help=cmd_check.__doc__, description=cmd_check.__doc__)
    p.add_argument("paths", nargs="*", help="scheme directories (default: the shipped schemes)")
    p.set_defaults(func=cmd_check)

    p = ssub.add_parser("dry-run", help=cmd_dry_run.__doc__, description=cmd_dry_run.__doc__)
    p.add_argument("scheme", help="shipped scheme name or a scheme directory")
    p.add_argument("--set", action="append", metavar="VAR=VALUE", help="set a scheme variable (repeatable)")
    p.add_argument(
        "--answer",
        action="append",
        metavar="OPERATOR=V1,V2,...",
        help="what a file-reading operator returns on successive visits (default: as for a missing file)",
    )
    p.add_argument("--project", default=".", help="project directory for other schemes' files")
    p.add_argument(
        "--max_steps", type=int, default=300, help="stop after this many nodes (default: %(default)s)"
    )
    p.set_defaults(func=cmd_dry_run)

    p = ssub.add_parser("run", help=cmd_run.__doc__, description=cmd_run.__doc__)
    p.add_argument("scheme", help="installed scheme name (Schemes/NAME/)")
    p.add_argument("--project", default=".", help="RELION project directory (default: %(default)s)")
    p.add_argument("--local", action="store_true", help="use Debian RELION 3.1 even if relion_schemer exists")
    p.add_argument(
        "--resume", action="store_true", help="continue from the current node instead of resetting"
    )
    p.set_defaults(func=cmd_run)


# --------------------------------------------------------------------------------------------------
# The self-supervised loop on a simulated project (demo, tests, benchmark)


@dataclass
class LoopSettings:
    """Sizes that keep one loop small enough for 2 CPU cores (see docs/schemes.md)."""

    micrographs: int = 6
    shape: tuple[int, int] = (768, 768)
    angpix: float = 3.0
    snr: float = 0.3
    junk: str = "light"
    nr_classes: int = 4
    class2d_iter: int = 15
    rescaled_size: int = 40
    max_iter: int = 2
    train_epochs: int = 3
    train_steps: int = 60
    threads: int = 2
    seed: int = 0


def loop_variables(diameter_A: float, angpix: float, s: LoopSettings) -> tuple[list, list]:
    """(variables, job options) for installing ``selfpick`` with settings ``s``."""
    box = int(round(1.5 * diameter_A / angpix / 2)) * 2
    variables = [
        ("particle_diameter", f"{diameter_A:g}"),
        ("box_size", str(box)),
        ("rescaled_size", str(min(s.rescaled_size, box))),
        ("nr_classes", str(s.nr_classes)),
        ("max_iter", str(s.max_iter)),
        ("train_epochs", str(s.train_epochs)),
        ("train_steps", str(s.train_steps)),
        ("nr_threads", str(s.threads)),
        ("class2d_gpu", "false"),
        ("gpu", "-1"),
    ]
    it = f"{s.class2d_iter:03d}"
    options = [
        ("class2d:do_grad", "No"),
        ("class2d:do_em", "Yes"),
        ("class2d:nr_iter_em", str(s.class2d_iter)),
        ("class2d:other_args", f"--random_seed {s.seed + 1}"),
        ("rank:in_part", f"Schemes/selfpick/class2d/run_it{it}_data.star"),
        ("report:other_args", "--truth truth/truth.star"),
    ]
    return variables, options


def selfpick_demo(project_dir: Path, s: LoopSettings, log=print, use_schemer: bool | None = None) -> int:
    """Simulate a project, install ``selfpick`` and run it unattended; print per-iteration F1."""
    from .relion.scheme_install import install_scheme
    from .relion.scheme_run import run_scheme_locally
    from .simulate import make_project

    t0 = time.monotonic()
    log(f"Simulating {s.micrographs} micrographs in {project_dir} ...")
    sim = make_project(
        project_dir, n_micrographs=s.micrographs, shape=s.shape, angpix=s.angpix, seed=s.seed, junk=s.junk,
        snr=s.snr, relion_version=5,
    )  # fmt: skip
    log(
        f"  {sim.n_particles} particles of {sim.diameter_A:g} Å at {sim.angpix:g} Å/px ({time.monotonic() - t0:.0f} s)"
    )
    variables, options = loop_variables(sim.diameter_A, sim.angpix, s)
    variables.append(("mics_star", sim.micrographs_star.relative_to(project_dir).as_posix()))
    install_scheme(shipped_schemes()["selfpick"], project_dir, variables=variables, job_options=options)
    schemer = shutil.which("relion_schemer") if use_schemer is None else use_schemer
    if schemer:
        log("Running Schemes/selfpick/ with relion_schemer ...")
        status = run_with_schemer(project_dir, "selfpick")
        ended = "exit" if status == 0 else "failed"
    else:
        log(
            "relion_schemer (RELION 4/5) not found: running the scheme's nodes in its order with Debian RELION 3.1 ..."
        )
        result = run_scheme_locally(project_dir, "selfpick", log=log, start=job_start_command)
        ended = result.ended
    log(f"Scheme ended by {ended} after {time.monotonic() - t0:.0f} s")
    print_history(project_dir, log)
    return 0 if ended in ("exit", "end") else 1


def loop_history(project_dir: Path):
    """The loop's history table (from the report job), or None."""
    from .relion.scheme import read_scheme as _read
    from .relion.star import read_star

    scheme = _read(project_dir / "Schemes" / "selfpick", with_jobs=False)
    job = scheme.jobs.get("report")
    if job is None or not job.has_started:
        return None
    path = project_dir / job.name / "loop_history.star"
    return read_star(path)["loop_history"] if path.is_file() else None


def print_history(project_dir: Path, log=print) -> None:
    table = loop_history(project_dir)
    if table is None:
        log("No loop history (the report job did not run).")
        return
    log("iteration  picks  selected  mean %/Res  picks F1  selection F1")
    for _, row in table.iterrows():

        def get(name: str, fmt: str = "{:.3f}", row=row) -> str:
            v = row.get(name)
            return "-" if v is None or v != v or v == -1 else fmt.format(v)

        log(
            f"{get('rpLoopIteration', '{:.0f}'):>9}  {get('rpNrPicks', '{:.0f}'):>5}  "
            f"{get('rpNrSelectedParticles', '{:.0f}'):>8}  {get('rpMeanPercentPerRes'):>10}  "
            f"{get('rpPicksF1'):>8}  {get('rpSelectionF1'):>12}"
        )
    final = project_dir / "SelfPick" / "particles.star"
    if final.is_file():
        log(f"Final selection: {final}")
