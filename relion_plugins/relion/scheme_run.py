"""Walking a scheme the way ``relion_schemer --run`` does: for dry runs and for running without RELION 4/5.

``SchemeWalker`` follows edges and forks, executes operators (``scheme_ops``), prepares each job node as
``Scheme::prepareJob`` does (``$$`` variables, then job-name aliases), gives the job a pipeline name
(``External/job012/``: new jobs get the next number, ``continue`` nodes re-use theirs) and hands it to an
executor. Two executors exist:

* ``DryRunExecutor`` runs nothing: ``scheme dry-run`` prints the path the scheme would take, with the
  answers of file-reading operators given on the command line;
* ``DebianRelionExecutor`` runs External jobs exactly as RELION's command line would, and ``relion.extract``
  / ``relion.class2d`` with RELION 3.1's ``relion_preprocess`` / ``relion_refine`` (Debian's package),
  translating the RELION 4/5 job options into the 3.1 flags. That is how the tests and the demo run a
  shipped scheme end to end where ``relion_schemer`` (RELION 4/5) is not installed.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .scheme import JobStar, Scheme, SchemeError, read_job_star, read_scheme, write_job_star, write_scheme
from .scheme_check import input_nodes
from .scheme_ops import OperatorRunner, substitute_dollars, substitute_jobnames

SUCCESS, FAILURE, ABORTED = "RELION_JOB_EXIT_SUCCESS", "RELION_JOB_EXIT_FAILURE", "RELION_JOB_EXIT_ABORTED"
JOB_DIRS = {
    "relion.external": "External",
    "relion.extract": "Extract",
    "relion.class2d": "Class2D",
    "relion.select": "Select",
    "relion.autopick": "AutoPick",
    "relion.import": "Import",
    "relion.motioncorr": "MotionCorr",
    "relion.ctffind": "CtfFind",
}


@dataclass
class Step:
    """One visited node: what it was and what happened."""

    node: str
    kind: str  # "operator" or "job"
    detail: str = ""


@dataclass
class WalkResult:
    steps: list[Step] = field(default_factory=list)
    ended: str = ""  # "exit", "end", "failed", "max_steps", "max_time"
    failed_job: str = ""

    def path(self) -> list[str]:
        return [s.node for s in self.steps]


class Executor:
    """Runs one prepared job; returns the exit marker that appeared."""

    def execute(self, job_type: str, job_dir: str, options: dict[str, str], is_continue: bool) -> str:
        raise NotImplementedError


class DryRunExecutor(Executor):
    def execute(self, job_type: str, job_dir: str, options: dict[str, str], is_continue: bool) -> str:
        return SUCCESS


def job_type_label(star: JobStar) -> str:
    return ".".join(star.type_label.split(".")[:2])


class SchemeWalker:
    """Execute a scheme from its current node (or its start) until exit, its end, or a failed job."""

    def __init__(
        self,
        project_dir: str | os.PathLike,
        scheme: Scheme,
        executor: Executor,
        file_reader: Callable[[str, object], object] | None = None,
        persist: bool = False,
        log: Callable[[str], None] = print,
        max_steps: int = 10_000,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.project_dir = Path(project_dir)
        self.scheme = scheme
        self.executor = executor
        self.persist = persist
        self.log = log
        self.max_steps = max_steps
        self.ops = OperatorRunner(scheme, self.project_dir, file_reader=file_reader, sleep=sleep)
        self.dry = isinstance(executor, DryRunExecutor)
        self._next_job = self._job_counter()

    # -- bookkeeping ------------------------------------------------------------------------------
    @property
    def scheme_dir(self) -> Path:
        return self.project_dir / self.scheme.name

    def _job_counter(self) -> int:
        counter = 1
        pipeline = self.project_dir / "default_pipeline.star"
        if pipeline.is_file():
            from .star import read_star

            general = read_star(pipeline, blocks=["pipeline_general"]).get("pipeline_general")
            if isinstance(general, dict) and "rlnPipeLineJobCounter" in general:
                counter = int(general["rlnPipeLineJobCounter"])
        for p in self.project_dir.glob("*/job[0-9][0-9][0-9]"):
            counter = max(counter, int(p.name[3:]) + 1)
        return counter

    def _save(self) -> None:
        if self.persist:
            write_scheme(self.scheme, self.scheme_dir, with_jobs=False)

    # -- walking ------------------------------------------------------------------------------------
    def run(self) -> WalkResult:
        s = self.scheme
        result = WalkResult()
        node = s.current_node if s.current_node in s.nodes() else s.start_node()
        if node in s.operators and s.operators[node].type == "exit" and result.steps == []:
            if s.current_node == node:
                raise SchemeError(f"{s.name}: the current node is {node} (exit); reset the scheme first")
        while node is not None:
            if len(result.steps) >= self.max_steps:
                result.ended = "max_steps"
                break
            s.current_node = node
            if node in s.operators:
                outcome = self.ops.run(node)
                detail = outcome.changed or outcome.note
                result.steps.append(Step(node, "operator", detail))
                self.log(f" + {node}: {detail}" if detail else f" + {node}")
                if outcome.stop:
                    result.ended = "exit" if s.operators[node].type == "exit" else "max_time"
                    self._save()
                    return result
            else:
                marker, job_dir = self._run_job(node)
                result.steps.append(Step(node, "job", f"{job_dir} {marker.replace('RELION_JOB_EXIT_', '')}"))
                if marker != SUCCESS:
                    self.log(f" + Stopping scheme due to job {job_dir} ending with {marker}")
                    result.ended, result.failed_job = "failed", job_dir
                    self._save()
                    return result
            nxt = s.next_node(node)
            if nxt is not None:
                s.current_node = nxt
            self._save()
            node = nxt
        result.ended = result.ended or "end"
        return result

    def prepare_job(self, node: str) -> tuple[JobStar, dict[str, str]]:
        """Re-read the template and substitute ``$$`` variables and job-name aliases (Scheme::prepareJob)."""
        path = self.scheme_dir / node / "job.star"
        star = self.scheme.job_stars.get(node) if self.dry else None
        if star is None:
            if not path.is_file():
                raise SchemeError(
                    f"there was a problem reading job {self.scheme.name}{node}: {path} is missing"
                )
            star = read_job_star(path)
        label = job_type_label(star)
        options = {}
        for key, value in star.options.items():
            text = substitute_dollars(self.scheme, key, value, label) if "$$" in value else value
            options[key] = substitute_jobnames(self.scheme, text, self.project_dir, missing_ok=self.dry)
        return star, options

    def _run_job(self, node: str) -> tuple[str, str]:
        s = self.scheme
        job = s.jobs[node]
        star, options = self.prepare_job(node)
        label = job_type_label(star)
        is_continue = job.mode == "continue" and job.has_started
        if is_continue:
            job_dir = job.name
        else:
            job_dir = f"{JOB_DIRS.get(label, label.split('.')[-1].capitalize())}/job{self._next_job:03d}/"
            self._next_job += 1
        self.log(f" + {node}: {'continuing' if is_continue else 'running'} {job_dir} ({star.type_label})")
        if not self.dry:
            missing = [
                options[k]
                for k in input_nodes(star.type_label, options)
                if not (self.project_dir / options[k]).exists()
            ]
            if missing:
                self.log(f" + Gave up on waiting for {missing[0]}")
                return ABORTED, job_dir
            (self.project_dir / job_dir).mkdir(parents=True, exist_ok=True)
            for marker in (SUCCESS, FAILURE, ABORTED):
                (self.project_dir / job_dir / marker).unlink(missing_ok=True)
            executed = JobStar(star.type_label, dict(options), is_continue=is_continue, is_tomo=star.is_tomo)
            write_job_star(executed, self.project_dir / job_dir / "job.star")
        job.has_started = True
        job.name = job_dir
        self._save()
        t0 = time.monotonic()
        marker = self.executor.execute(star.type_label, job_dir, options, is_continue)
        if not self.dry:
            self._record_in_pipeline(job_dir, star.type_label, marker)
            self.log(f" + {node}: {job_dir} {marker} after {time.monotonic() - t0:.0f} s")
        return marker, job_dir

    def _record_in_pipeline(self, job_dir: str, type_label: str, marker: str) -> None:
        """Keep default_pipeline.star's job counter (and process list) in step, as the pipeliner does."""
        import pandas as pd

        from .star import read_star, write_star

        pipeline = self.project_dir / "default_pipeline.star"
        if not pipeline.is_file():
            return
        blocks = read_star(pipeline)
        general = dict(blocks.get("pipeline_general") or {})
        general["rlnPipeLineJobCounter"] = max(int(general.get("rlnPipeLineJobCounter", 1)), self._next_job)
        blocks["pipeline_general"] = general
        status = {SUCCESS: "Succeeded", FAILURE: "Failed", ABORTED: "Aborted"}.get(marker, "Running")
        procs = blocks.get("pipeline_processes")
        if isinstance(procs, pd.DataFrame) and "rlnPipeLineProcessName" in procs.columns:
            procs = procs[procs["rlnPipeLineProcessName"] != job_dir]
            row = {c: "None" for c in procs.columns}
            row["rlnPipeLineProcessName"] = job_dir
            if "rlnPipeLineProcessTypeLabel" in procs.columns:
                row["rlnPipeLineProcessTypeLabel"] = type_label
            if "rlnPipeLineProcessStatusLabel" in procs.columns:
                row["rlnPipeLineProcessStatusLabel"] = status
            blocks["pipeline_processes"] = pd.concat([procs, pd.DataFrame([row])], ignore_index=True)
        version = 50001 if "50001" in pipeline.read_text()[:200] else 30001
        write_star(pipeline, blocks, version=version)


# --------------------------------------------------------------------------------------------------
# executing jobs with Debian's RELION 3.1


def _yes(options: dict[str, str], key: str, default: str = "No") -> bool:
    return options.get(key, default).strip() == "Yes"


def _num(options: dict[str, str], key: str, default: float) -> float:
    text = options.get(key, "").strip()
    try:
        return float(text) if text else default
    except ValueError:
        raise SchemeError(f"option {key}: {text!r} is not a number") from None


def _fmt(x: float) -> str:
    return f"{x:g}"


def extract_command(
    options: dict[str, str], job_dir: str, is_continue: bool, relion31: bool = True
) -> list[str]:
    """relion_preprocess arguments for a relion.extract job (RELION 4/5 getCommandsExtractJob, 3.1 flags)."""
    coords = options.get("coords_suffix", "")
    cmd = ["relion_preprocess", "--i", options["star_mics"]]
    if "coords_suffix" in coords or relion31:
        # RELION 3.1 has no --coord_list; our pickers also write <dir>/<micrograph>_<name>.star files.
        directory, name = coords.rsplit("/", 1) if "/" in coords else (".", coords)
        suffix = name.split("coords_suffix", 1)[1] if "coords_suffix" in name else "_" + name
        cmd += ["--coord_dir", directory + "/", "--coord_suffix", suffix]
    else:
        cmd += ["--coord_list", coords]
    cmd += ["--part_star", f"{job_dir}particles.star", "--part_dir", job_dir, "--extract"]
    size = _num(options, "extract_size", 128)
    cmd += ["--extract_size", _fmt(size)]
    if _yes(options, "do_rescale"):
        cmd += ["--scale", _fmt(_num(options, "rescale", size))]
    if _yes(options, "do_norm", "Yes"):
        bg = _num(options, "bg_diameter", -1)
        radius = (0.75 * size if bg < 0 else bg) / 2
        if _yes(options, "do_rescale"):
            radius = radius * _num(options, "rescale", size) / size
        cmd += ["--norm", "--bg_radius", _fmt(int(radius))]
        for key in ("white_dust", "black_dust"):
            if _num(options, key, -1) > 0:
                cmd += [f"--{key}", _fmt(_num(options, key, -1))]
    if _yes(options, "do_invert", "Yes"):
        cmd += ["--invert_contrast"]
    if _yes(options, "do_fom_threshold") and not relion31:
        cmd += ["--minimum_pick_fom", options.get("minimum_pick_fom", "0")]
    if _yes(options, "do_float16") and not relion31:
        cmd += ["--float16"]
    if is_continue:
        cmd += ["--only_do_unfinished"]
    cmd += shlex.split(options.get("other_args", ""))
    return cmd


def class2d_command(options: dict[str, str], job_dir: str, relion31: bool = True) -> list[str]:
    """relion_refine arguments for a relion.class2d job (RELION 4/5 getCommandsClass2DJob)."""
    if _yes(options, "do_grad") and relion31:
        raise SchemeError(
            "relion.class2d with do_grad Yes (VDAM) needs RELION 4 or 5; set do_grad No for RELION 3.1"
        )
    threads = int(_num(options, "nr_threads", 1))
    cmd = ["relion_refine", "--o", f"{job_dir}run", "--i", options["fn_img"]]
    if _yes(options, "do_grad"):
        cmd += ["--grad", "--class_inactivity_threshold", "0.1", "--grad_write_iter", "10"]
        cmd += ["--iter", options.get("nr_iter_grad", "200")]
    else:
        cmd += ["--iter", options.get("nr_iter_em", "25")]
    if not _yes(options, "do_combine_thru_disc"):
        cmd += ["--dont_combine_weights_via_disc"]
    if not _yes(options, "do_parallel_discio", "Yes"):
        cmd += ["--no_parallel_disc_io"]
    if _yes(options, "do_preread_images"):
        cmd += ["--preread_images"]
    cmd += ["--pool", options.get("nr_pool", "3"), "--pad", "2"]
    if _yes(options, "do_ctf_correction", "Yes"):
        cmd += ["--ctf"]
        if _yes(options, "ctf_intact_first_peak"):
            cmd += ["--ctf_intact_first_peak"]
    cmd += [
        "--tau2_fudge",
        options.get("tau_fudge", "2"),
        "--particle_diameter",
        options["particle_diameter"],
    ]
    cmd += ["--K", options.get("nr_classes", "1"), "--flatten_solvent"]
    if _yes(options, "do_zero_mask", "Yes"):
        cmd += ["--zero_mask"]
    if _num(options, "highres_limit", -1) > 0:
        cmd += ["--strict_highres_exp", options["highres_limit"]]
    if _yes(options, "do_center") and not relion31:
        cmd += ["--center_classes"]
    cmd += ["--oversampling", "1"]
    if _yes(options, "dont_skip_align", "Yes"):
        cmd += ["--psi_step", _fmt(_num(options, "psi_sampling", 6) * 2)]
        cmd += ["--offset_range", options.get("offset_range", "5")]
        cmd += ["--offset_step", _fmt(_num(options, "offset_step", 1) * 2)]
    else:
        cmd += ["--skip_align"]
    cmd += ["--norm", "--scale", "--j", str(threads)]
    if _yes(options, "use_gpu") and not relion31:
        cmd += ["--gpu", options.get("gpu_ids", "")]
    cmd += shlex.split(options.get("other_args", ""))
    return cmd


def external_command(options: dict[str, str], job_dir: str, start: Callable[[str], str] | None = None) -> str:
    """The External job's shell command, word for word as RELION builds it (unquoted). ``start`` may map
    the executable to the command that starts it (e.g. ``python -m ...`` where no console script exists)."""
    exe = options.get("fn_exe", "")
    if not exe:
        raise SchemeError("empty field for the external executable")
    cmd = f"{start(exe) if start else exe} --o {job_dir}"
    for key, flag in (
        ("in_mov", "in_movies"),
        ("in_mic", "in_mics"),
        ("in_part", "in_parts"),
        ("in_coords", "in_coords"),
        ("in_3dref", "in_3dref"),
        ("in_mask", "in_mask"),
    ):
        if options.get(key, ""):
            cmd += f" --{flag} {options[key]}"
    for i in range(1, 11):
        label = options.get(f"param{i}_label", "")
        if label:
            cmd += f" --{label} {options.get(f'param{i}_value', '')}"
    cmd += f" --j {int(_num(options, 'nr_threads', 1))}"
    if "relion_" in exe:
        cmd += f" --pipeline_control {job_dir}"
    if options.get("other_args", ""):
        cmd += " " + options["other_args"]
    return cmd


class DebianRelionExecutor(Executor):
    """External jobs as RELION runs them; extraction and 2D classification with RELION 3.1 binaries."""

    def __init__(
        self,
        project_dir: str | os.PathLike,
        log: Callable[[str], None] = print,
        timeout: float = 7200,
        start: Callable[[str], str] | None = None,
    ) -> None:
        self.project_dir = Path(project_dir)
        self.log = log
        self.timeout = timeout
        self.start = start

    def execute(self, job_type: str, job_dir: str, options: dict[str, str], is_continue: bool) -> str:
        label = ".".join(job_type.split(".")[:2])
        if label == "relion.external":
            command = external_command(options, job_dir, self.start)
        elif label == "relion.extract":
            command = shlex.join(extract_command(options, job_dir, is_continue))
        elif label == "relion.class2d":
            command = shlex.join(class2d_command(options, job_dir))
        else:
            raise SchemeError(
                f"{job_type} jobs need RELION 4/5 (relion_schemer); only External, Extract and Class2D run here"
            )
        directory = self.project_dir / job_dir
        with open(directory / "note.txt", "a") as note:
            note.write(
                f" ++++ Executing new job on {time.ctime()}\n ++++ with the following command(s):\n{command}\n"
            )
        self.log(f"   {command}")
        proc = subprocess.run(
            ["sh", "-c", f"{command} >> {job_dir}run.out 2>> {job_dir}run.err"],
            cwd=self.project_dir,
            timeout=self.timeout,
            check=False,
        )
        if label != "relion.external":
            # RELION's own programs write their marker through --pipeline_control; 3.1 does not, so the exit
            # status decides here, with the outputs RELION 4/5 would have checked.
            ok = proc.returncode == 0 and self._outputs_exist(label, job_dir, options)
            from .atomic import touch

            touch(directory / (SUCCESS if ok else FAILURE))
        for marker in (SUCCESS, FAILURE, ABORTED):
            if (directory / marker).exists():
                return marker
        return FAILURE  # RELION would wait forever; a local run reports the missing marker as a failure

    def _outputs_exist(self, label: str, job_dir: str, options: dict[str, str]) -> bool:
        d = self.project_dir / job_dir
        if label == "relion.extract":
            return (d / "particles.star").is_file()
        if label == "relion.class2d":
            last = options.get("nr_iter_grad" if _yes(options, "do_grad") else "nr_iter_em", "25")
            return (d / f"run_it{int(float(last)):03d}_data.star").is_file()
        return True


def run_scheme_locally(
    project_dir: str | os.PathLike,
    scheme_name: str,
    log: Callable[[str], None] = print,
    reset: bool = True,
    start: Callable[[str], str] | None = None,
) -> WalkResult:
    """Run ``Schemes/<scheme_name>/`` of a project with Debian RELION 3.1 and our External jobs."""
    project_dir = Path(project_dir)
    scheme = read_scheme(project_dir / "Schemes" / scheme_name)
    if reset:
        scheme.reset()
    executor = DebianRelionExecutor(project_dir, log=log, start=start)
    walker = SchemeWalker(project_dir, scheme, executor, persist=True, log=log)
    return walker.run()


_ANSWER = re.compile(r"^(\w+)=(.+)$")


def parse_answers(items: list[str]) -> dict[str, list[str]]:
    """``OPERATOR=v1,v2,...`` -> the values file-reading operators return on successive visits."""
    out: dict[str, list[str]] = {}
    for item in items:
        m = _ANSWER.match(item.strip())
        if not m:
            raise SchemeError(f"--answer {item!r}: expected OPERATOR=value[,value...]")
        out[m.group(1)] = m.group(2).split(",")
    return out


def dry_run(
    scheme: Scheme,
    answers: dict[str, list[str]] | None = None,
    project_dir: str | os.PathLike = ".",
    max_steps: int = 500,
    log: Callable[[str], None] = print,
) -> WalkResult:
    """Walk ``scheme`` without running jobs. File-reading operators take their answers from ``answers``
    (one per visit, the last one repeating); without an answer they return RELION's value for a missing
    file (0, false). Waits do not sleep."""
    answers = answers or {}
    visits: dict[str, int] = {}

    def reader(op_name: str, default: object) -> object:
        values = answers.get(op_name)
        if not values:
            return default
        i = visits.get(op_name, 0)
        visits[op_name] = i + 1
        text = values[min(i, len(values) - 1)]
        if isinstance(default, bool):
            return text.strip() in ("1", "true", "True", "Yes")
        if isinstance(default, float):
            return float(text)
        return text

    walker = SchemeWalker(
        project_dir,
        scheme,
        DryRunExecutor(),
        file_reader=reader,
        log=log,
        max_steps=max_steps,
        sleep=lambda _s: None,
    )
    return walker.run()
