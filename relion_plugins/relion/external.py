"""The RELION External-job protocol, owned in one place (reference §4).

RELION runs ``EXE --o External/jobNNN/ [--in_mics F] ... [--LABEL VALUE ...] --j N [other_args]`` through
``sh`` with stdout/stderr appended to ``run.out`` / ``run.err``, ignores the exit code, and waits for one of
the marker files ``RELION_JOB_EXIT_{SUCCESS,FAILURE,ABORTED}`` — forever, if none appears. This module makes
sure one always does:

* SUCCESS is written last, after every output and ``RELION_OUTPUT_NODES.star``;
* FAILURE on any exception, on SIGTERM/SIGINT/SIGHUP, and on a failed import of the job module (torch
  included), with a one-line reason on stderr (run.err) and the traceback in ``traceback.txt``;
* ABORTED when RELION creates ``RELION_JOB_ABORT_NOW``: jobs poll :meth:`JobContext.check_abort` between
  micrographs, and a watchdog thread writes the marker itself if the job does not stop within a few seconds.

Continue runs are incremental: a journal in the job directory records each finished item after its outputs
are on disk, so a re-run (RELION "continue", or the same command after ``kill -9``) skips them and loses at
most the item that was in flight.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shlex
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import remove_stale_temporaries, write_text
from .nodes import node_label, project_relion_version, star_version_number

SUCCESS = "RELION_JOB_EXIT_SUCCESS"
FAILURE = "RELION_JOB_EXIT_FAILURE"
ABORTED = "RELION_JOB_EXIT_ABORTED"
ABORT_NOW = "RELION_JOB_ABORT_NOW"
OUTPUT_NODES = "RELION_OUTPUT_NODES.star"
JOURNAL = ".rp_done.jsonl"
TRACEBACK = "traceback.txt"

# Flags RELION itself puts on an External command line (reference §4.1), and what they hold.
RELION_INPUT_FLAGS = {
    "in_movies": "movies STAR file (RELION: Input movies)",
    "in_mics": "micrographs STAR file (RELION: Input micrographs)",
    "in_parts": "particles STAR file (RELION: Input particles)",
    "in_coords": "coordinates STAR file, e.g. autopick.star (RELION: Input coordinates)",
    "in_3dref": "3D reference map (RELION: Input 3D reference)",
    "in_mask": "3D mask (RELION: Input 3D mask)",
}

ABORT_POLL_S = 0.5
ABORT_GRACE_S = 3.0  # the watchdog ends the job this long after ABORT_NOW if the job has not stopped


class JobFailed(Exception):
    """An error whose message is already the one-line reason a RELION user should read in run.err."""


class JobAborted(Exception):
    """RELION asked the job to stop (RELION_JOB_ABORT_NOW)."""


class _Terminated(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT/SIGHUP."""


_BOOL_TRUE = {"yes", "true", "1", "on", "y"}
_BOOL_FALSE = {"no", "false", "0", "off", "n"}


@dataclass(frozen=True)
class Param:
    """One job parameter: ``--name VALUE`` on the command line (a RELION ``paramN_label``).

    ``type`` is ``float``, ``int``, ``str`` or ``bool``. A bool may be given bare (``--name``, true) or with
    Yes/No/true/false/1/0. ``default=None`` means "not set". ``unit`` is shown in ``--help`` (Å, px, ...).
    """

    name: str
    default: Any
    help: str
    type: type = float
    unit: str = ""
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    def convert(self, raw: str | None) -> Any:
        """Turn the command-line text into a value, or raise JobFailed with a one-line reason."""
        if self.type is bool:
            if raw is None or raw == "":
                return True
            low = raw.strip().lower()
            if low in _BOOL_TRUE:
                return True
            if low in _BOOL_FALSE:
                return False
            raise JobFailed(f"--{self.name}: expected Yes or No, got {raw!r}")
        if raw is None:
            if self.type is str:
                return ""
            raise JobFailed(f"--{self.name}: a value is needed ({self.help})")
        if self.type is str:
            value: Any = raw
        else:
            try:
                number = float(raw)
            except ValueError:
                kind = "a whole number" if self.type is int else "a number"
                raise JobFailed(f"--{self.name}: expected {kind}, got {raw!r}") from None
            if number != number or number in (float("inf"), float("-inf")):
                raise JobFailed(f"--{self.name}: expected a finite number, got {raw!r}")
            if self.type is int:
                if number != int(number):
                    raise JobFailed(f"--{self.name}: expected a whole number, got {raw!r}")
                value = int(number)
            else:
                value = number
            if self.minimum is not None and value < self.minimum:
                raise JobFailed(f"--{self.name}: {raw} is below the minimum {self.minimum:g}")
            if self.maximum is not None and value > self.maximum:
                raise JobFailed(f"--{self.name}: {raw} is above the maximum {self.maximum:g}")
        if self.choices is not None and value not in self.choices:
            raise JobFailed(f"--{self.name}: {value!r} is not one of {', '.join(self.choices)}")
        return value

    def help_line(self) -> str:
        """The parameter as ``--help`` shows it: flag, default with unit, description."""
        if self.type is bool:
            default = "Yes" if self.default else "No"
        elif self.default is None or self.default == "":
            default = "unset"
        else:
            default = f"{self.default:g}" if isinstance(self.default, float) else str(self.default)
        unit = f" {self.unit}" if self.unit and self.default not in (None, "") else ""
        choices = f" [{'|'.join(self.choices)}]" if self.choices else ""
        return f"  --{self.name:<24} (default: {default}{unit}){choices}  {self.help}"


# Parameters every job understands besides RELION's own flags.
COMMON_PARAMS = (
    Param(
        "relion_version", "auto", "node-type labels to write: 4, 5, or auto (from default_pipeline.star)", str
    ),
    Param("seed", 0, "random seed (results are deterministic for a seed)", int),
)
GPU_PARAM = Param("gpu", "", "GPU to use, e.g. 0; empty or -1 = CPU", str)


@dataclass(frozen=True)
class OutputNode:
    """A file the job produced and RELION should register: path under the job dir and node kind."""

    path: str  # relative to the job directory, e.g. "autopick.star"
    kind: str  # see relion.nodes.NODE_LABELS, e.g. "coords"
    suffix: str = ""  # e.g. "autopick" -> MicrographCoordsGroup.star.relion.autopick


@dataclass
class JobSpec:
    """What an External executable is: its name, its parameters and the function that does the work."""

    name: str
    description: str
    params: Sequence[Param]
    run: Callable[[JobContext], Iterable[OutputNode]]
    inputs: Sequence[str] = ("in_mics",)  # RELION input flags the job reads; the first ones are required
    required_inputs: Sequence[str] = ("in_mics",)
    uses_gpu: bool = False

    def all_params(self) -> list[Param]:
        extra = [GPU_PARAM] if self.uses_gpu else []
        return list(self.params) + extra + list(COMMON_PARAMS)


@dataclass
class JobContext:
    """Everything a job body needs from RELION, and the services the runtime provides."""

    spec: JobSpec
    out_dir: Path
    inputs: dict[str, str]
    params: dict[str, Any]
    threads: int
    version: int
    is_continue: bool
    project_dir: Path = field(default_factory=Path.cwd)
    _abort_event: threading.Event = field(default_factory=threading.Event)
    _started: float = field(default_factory=time.monotonic)
    _journal: dict[str, dict] = field(default_factory=dict)
    _progress_start: tuple[float, int] | None = None

    # --- inputs -----------------------------------------------------------------------------------
    @property
    def in_mics(self) -> str | None:
        return self.inputs.get("in_mics")

    @property
    def in_parts(self) -> str | None:
        return self.inputs.get("in_parts")

    @property
    def in_coords(self) -> str | None:
        return self.inputs.get("in_coords")

    @property
    def gpu(self) -> str | None:
        """The GPU id asked for, or None for CPU."""
        value = str(self.params.get("gpu", "") or "").strip()
        return None if value in ("", "-1", "cpu", "No", "no") else value

    def output_path(self, relative: str | os.PathLike) -> Path:
        """A path inside the job directory; anything that would leave it is refused."""
        path = (self.out_dir / relative).resolve()
        root = self.out_dir.resolve()
        if path != root and root not in path.parents:
            raise JobFailed(f"refusing to write outside the job directory: {relative}")
        return self.out_dir / relative

    def node_label(self, kind: str, suffix: str = "") -> str:
        return node_label(kind, self.version, suffix)

    # --- progress and abort ------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """A line for run.out."""
        print(message, flush=True)

    def warn(self, message: str) -> None:
        """A warning line in run.out (run.err is kept for the failure reason)."""
        print(f"WARNING: {message}", flush=True)

    def progress(self, done: int, total: int, what: str = "micrographs") -> None:
        """``12/50 micrographs done, 0:42 elapsed, about 2:55 left`` in run.out."""
        now = time.monotonic()
        if self._progress_start is None or done == 0:
            self._progress_start = (now, done)
        start_time, start_done = self._progress_start
        elapsed = now - self._started
        rate_n = done - start_done
        left = ""
        if 0 < rate_n and done < total:
            remaining = (now - start_time) / rate_n * (total - done)
            left = f", about {_fmt_seconds(remaining)} left"
        self.log(f" {done}/{total} {what} done, {_fmt_seconds(elapsed)} elapsed{left}")

    def abort_requested(self) -> bool:
        return self._abort_event.is_set() or (self.out_dir / ABORT_NOW).exists()

    def check_abort(self) -> None:
        """Raise :class:`JobAborted` if RELION asked to stop. Call it between micrographs."""
        if self.abort_requested():
            raise JobAborted()

    # --- continue / resume -------------------------------------------------------------------------
    def done_items(self) -> dict[str, dict]:
        """Items finished by earlier runs in this job directory (key -> what mark_done recorded)."""
        return dict(self._journal)

    def pending(self, keys: Iterable[str]) -> list[str]:
        """The keys not finished by an earlier run, in the given order."""
        return [k for k in keys if k not in self._journal]

    def mark_done(self, key: str, info: dict | None = None) -> None:
        """Record that ``key``'s outputs are complete on disk (call after writing them)."""
        record = {"key": key, **(info or {})}
        self._journal[key] = record
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with open(self.out_dir / JOURNAL, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


def _fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def tokenize_flags(argv: Sequence[str]) -> tuple[list[tuple[str, str | None]], list[str]]:
    """Split ``--key value ...`` tokens into (key, value) pairs, in order.

    RELION does not quote anything, so a value with spaces arrives as several words: they are joined again
    with single spaces. A ``--key`` followed by another ``--key`` (or nothing) is a bare flag (value None).
    Words before the first flag are returned as strays.
    """
    pairs: list[tuple[str, str | None]] = []
    strays: list[str] = []
    key: str | None = None
    words: list[str] = []

    def flush() -> None:
        if key is not None:
            pairs.append((key, " ".join(words) if words else None))

    for token in argv:
        if token.startswith("--") and len(token) > 2:
            flush()
            key, words = token[2:], []
            if "=" in key:  # tolerate --key=value from hand-written other_args
                key, value = key.split("=", 1)
                words = [value]
        elif key is None:
            strays.append(token)
        else:
            words.append(token)
    flush()
    return pairs, strays


def help_text(spec: JobSpec) -> str:
    """``--help``: every flag RELION passes and every parameter with its default and unit."""
    lines = [
        f"usage: {spec.name} --o External/jobNNN/ "
        + " ".join(f"--{i} FILE" for i in spec.inputs)
        + " [options]"
    ]
    lines += ["", spec.description.strip(), "", "RELION flags:"]
    lines.append(f"  --{'o':<24} job directory, e.g. External/job012/ (required; every output goes there)")
    for flag in spec.inputs:
        need = "required" if flag in spec.required_inputs else "optional"
        lines.append(f"  --{flag:<24} {RELION_INPUT_FLAGS[flag]} ({need})")
    lines.append(f"  --{'j':<24} number of threads (default: 1)")
    lines.append(f"  --{'pipeline_control':<24} accepted and ignored (RELION adds it to some commands)")
    lines += ["", "Parameters (RELION External job: paramN_label = name without --, paramN_value = value):"]
    lines += [p.help_line() for p in spec.all_params()]
    lines += [
        "",
        "Unknown flags are ignored with a warning. Outputs, RELION_OUTPUT_NODES.star and exit markers",
        "are written in the --o directory; progress goes to stdout (run.out), the failure reason to",
        "stderr (run.err).",
    ]
    return "\n".join(lines)


def parse_command_line(
    spec: JobSpec, argv: Sequence[str]
) -> tuple[dict[str, str], dict[str, Any], int, list[str]]:
    """Parse RELION's flags and the job's parameters; return inputs, params, threads and warnings."""
    pairs, strays = tokenize_flags(argv)
    known = {p.name: p for p in spec.all_params()}
    inputs: dict[str, str] = {}
    raw_params: dict[str, str | None] = {}
    threads = 1
    warnings = [f"ignoring stray argument {s!r}" for s in strays]
    for key, value in pairs:
        if key == "o":
            continue
        if key in RELION_INPUT_FLAGS:
            if value:
                inputs[key] = value
        elif key == "j":
            try:
                threads = max(1, int(float(value or "1")))
            except ValueError:
                raise JobFailed(f"--j: expected a number of threads, got {value!r}") from None
        elif key == "pipeline_control":
            pass  # RELION appends it to commands containing "relion_"; the markers go to --o anyway
        elif key in known:
            raw_params[key] = value
        else:
            warnings.append(f"ignoring unknown flag --{key}" + (f" {value}" if value else ""))
    params = {}
    for p in spec.all_params():
        params[p.name] = p.convert(raw_params[p.name]) if p.name in raw_params else p.default
    for flag in spec.required_inputs:
        if flag not in inputs:
            raise JobFailed(
                f"missing --{flag} ({RELION_INPUT_FLAGS[flag]}): set it in the External job's Input tab"
            )
    for flag, value in inputs.items():
        if flag not in spec.inputs:
            warnings.append(f"--{flag} {value} is not used by {spec.name}")
    return inputs, params, threads, warnings


def _find_out_dir(argv: Sequence[str]) -> str | None:
    pairs, _ = tokenize_flags(argv)
    for key, value in pairs:
        if key == "o" and value:
            return value
    return None


# ---------------------------------------------------------------------------------------------------
# Markers and output nodes
# ---------------------------------------------------------------------------------------------------


class _Markers:
    """Writes exactly one exit marker per run, whichever thread gets there first."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.lock = threading.Lock()
        self.written: str | None = None

    def clear_old(self) -> None:
        for name in (SUCCESS, FAILURE, ABORTED):
            with contextlib.suppress(FileNotFoundError):
                (self.out_dir / name).unlink()

    def write(self, name: str) -> bool:
        with self.lock:
            if self.written is not None:
                return False
            with contextlib.suppress(OSError):
                self.out_dir.mkdir(parents=True, exist_ok=True)
                (self.out_dir / name).touch()
            if name == ABORTED:
                with contextlib.suppress(FileNotFoundError):
                    (self.out_dir / ABORT_NOW).unlink()
            self.written = name
            return True


def write_output_nodes(out_dir: Path, nodes: Iterable[OutputNode], version: int) -> Path:
    """Write ``RELION_OUTPUT_NODES.star`` (``_rlnPipeLineNodeTypeLabel`` column, reference §4.3)."""
    rows = []
    for node in nodes:
        name = (out_dir / node.path).as_posix()
        if not (out_dir / node.path).exists():
            raise JobFailed(f"output node {name} was not written")
        label = node_label(node.kind, version, node.suffix)
        rows.append(f"{_star_token(name)} {label}")
    text = (
        f"# version {star_version_number(version)}\n\ndata_output_nodes\n\nloop_\n"
        "_rlnPipeLineNodeName #1\n_rlnPipeLineNodeTypeLabel #2\n"
        + "\n".join(rows)
        + ("\n" if rows else "")
        + "\n"
    )
    path = out_dir / OUTPUT_NODES
    write_text(path, text)
    return path


def _star_token(value: str) -> str:
    # not relion.star: the runtime stays stdlib-only so that a broken numpy/pandas still gets a marker
    return f'"{value}"' if (not value or any(c.isspace() for c in value)) else value


# ---------------------------------------------------------------------------------------------------
# Running a job
# ---------------------------------------------------------------------------------------------------


def _read_journal(out_dir: Path) -> dict[str, dict]:
    journal: dict[str, dict] = {}
    path = out_dir / JOURNAL
    if not path.exists():
        return journal
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:  # the last line may be torn by kill -9: skip what does not parse
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "key" in record:
                journal[str(record["key"])] = record
    return journal


def _job_star_says_continue(out_dir: Path) -> bool:
    path = out_dir / "job.star"
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "_rlnJobIsContinue":
                return parts[1] in ("1", "true", "True")
    return False


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, JobFailed | ValueError | OSError | KeyError) and str(exc):
        text = str(exc)
        if isinstance(exc, OSError) and exc.filename and exc.strerror:
            text = f"{exc.strerror}: {exc.filename}"
        if not isinstance(exc, JobFailed | ValueError):
            text = f"{type(exc).__name__}: {text}"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())


def _watchdog(ctx: JobContext, markers: _Markers, stop: threading.Event) -> None:
    """Turn ABORT_NOW into EXIT_ABORTED even if the job is stuck in a long computation."""
    flag = ctx.out_dir / ABORT_NOW
    while not stop.wait(ABORT_POLL_S):
        if flag.exists():
            ctx._abort_event.set()
            if stop.wait(ABORT_GRACE_S):
                return  # the job noticed and is finishing on its own
            if markers.write(ABORTED):
                print("Aborted by RELION (RELION_JOB_ABORT_NOW) while busy; stopping now.", flush=True)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(2)
            return


def run_job(spec: JobSpec, argv: Sequence[str] | None = None) -> int:
    """Run ``spec`` as RELION would: parse flags, call ``spec.run``, write nodes and the exit marker.

    Returns the process exit code (0 success, 1 failure, 2 aborted); RELION itself only reads markers.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("--help", "-h") for a in argv):
        print(help_text(spec))
        return 0
    out = _find_out_dir(argv)
    if out is None:
        print(f"ERROR: {spec.name}: missing --o <job directory> (run --help for usage)", file=sys.stderr)
        return 1
    out_dir = Path(out)
    markers = _Markers(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"ERROR: cannot create the job directory {out}: {exc.strerror}", file=sys.stderr)
        return 1
    markers.clear_old()
    return _guarded(spec.name, out_dir, markers, lambda: _execute(spec, argv, out_dir, markers))


def launch(module_name: str, argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: import ``relion_plugins.jobs.<module_name>`` inside the failure guard.

    A job module that cannot be imported (a broken torch install, say) still gets a FAILURE marker and a
    one-line reason, so a scheme waiting on it stops instead of hanging.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        module = importlib.import_module(f"relion_plugins.jobs.{module_name}")
        spec = module.JOB
    except BaseException as exc:  # noqa: BLE001 - any import failure must become a marker
        out = _find_out_dir(argv)
        reason = f"cannot load the {module_name} job: {_one_line(exc)}"
        print(f"ERROR: {reason}", file=sys.stderr)
        if out is not None:
            with contextlib.suppress(OSError):
                Path(out).mkdir(parents=True, exist_ok=True)
                write_text(Path(out) / TRACEBACK, traceback.format_exc())
                _Markers(Path(out)).write(FAILURE)
        return 1
    return run_job(spec, argv)


def main_for(module_name: str) -> Callable[[], None]:
    """A ``main()`` for a console script that launches one job module."""

    def main() -> None:
        sys.exit(launch(module_name))

    return main


def _guarded(name: str, out_dir: Path, markers: _Markers, body: Callable[[], None]) -> int:
    def on_signal(signum: int, _frame: Any) -> None:
        raise _Terminated(signal.Signals(signum).name)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):  # not in the main thread (tests): skip
            previous[sig] = signal.signal(sig, on_signal)
    try:
        body()
        return 0
    except JobAborted:
        if markers.write(ABORTED):
            print("Aborted by RELION (RELION_JOB_ABORT_NOW).", flush=True)
        return 2
    except _Terminated as exc:
        reason = f"killed by {exc.args[0]}"
    except BaseException as exc:  # noqa: BLE001 - every failure must leave a marker
        reason = _one_line(exc)
        with contextlib.suppress(OSError):
            write_text(out_dir / TRACEBACK, traceback.format_exc())
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, handler)
    print(f"ERROR: {name}: {reason}", file=sys.stderr, flush=True)
    markers.write(FAILURE)
    return 1


def _execute(spec: JobSpec, argv: list[str], out_dir: Path, markers: _Markers) -> None:
    inputs, params, threads, warnings = parse_command_line(spec, argv)
    version = project_relion_version(".", params.get("relion_version"))
    remove_stale_temporaries(out_dir)
    journal = _read_journal(out_dir)
    ctx = JobContext(
        spec=spec,
        out_dir=out_dir,
        inputs=inputs,
        params=params,
        threads=threads,
        version=version,
        is_continue=bool(journal) or _job_star_says_continue(out_dir),
        project_dir=Path.cwd(),
        _journal=journal,
    )
    from .. import __version__

    ctx.log(f"{spec.name} (relion-plugins {__version__}): {shlex.join([spec.name, *argv])}")
    ctx.log(
        f" RELION {version} node labels; {threads} thread(s)" + ("; continuing" if ctx.is_continue else "")
    )
    for w in warnings:
        ctx.warn(w)
    stop = threading.Event()
    watchdog = threading.Thread(target=_watchdog, args=(ctx, markers, stop), daemon=True)
    watchdog.start()
    try:
        ctx.check_abort()
        nodes = list(spec.run(ctx) or [])
        ctx.check_abort()
        write_output_nodes(out_dir, nodes, version)
    finally:
        stop.set()
    if markers.write(SUCCESS):
        ctx.log(f" done in {_fmt_seconds(time.monotonic() - ctx._started)}")
