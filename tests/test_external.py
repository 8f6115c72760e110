"""The External-job runtime: flags, markers, output nodes, abort, signals, continue and kill -9 recovery.

Jobs are run in a subprocess through ``sh`` with RELION's own redirection (``>> run.out 2>> run.err``), so
the tests see exactly what RELION would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from relion_plugins.relion import external as ext
from relion_plugins.relion.external import JobFailed, JobSpec, Param, parse_command_line, tokenize_flags

TOY_JOB = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from relion_plugins.relion.atomic import write_text
    from relion_plugins.relion.external import JobFailed, JobSpec, OutputNode, Param, run_job

    def run(ctx):
        n = ctx.params["n"]
        items = [f"item{i:03d}" for i in range(n)]
        todo = ctx.pending(items)
        with open(ctx.out_dir / "processed.log", "a") as fh:
            for i, key in enumerate(todo):
                ctx.check_abort()
                if ctx.params["stuck"]:
                    time.sleep(60)  # a long computation that never polls
                if ctx.params["fail_at"] == i:
                    raise ValueError(f"cannot read {key}.mrc: file is corrupt")
                time.sleep(ctx.params["delay"])
                write_text(ctx.out_dir / "items" / f"{key}.txt", key + "\\n")
                fh.write(key + "\\n"); fh.flush()
                ctx.mark_done(key)
                ctx.progress(i + 1, len(todo))
        write_text(ctx.out_dir / "all.txt", "\\n".join(items) + "\\n")
        return [OutputNode("all.txt", "micrographs"), OutputNode("all.txt", "coords", "autopick")]

    JOB = JobSpec(
        name="toy-job",
        description="A toy job for the runtime tests.",
        params=[
            Param("n", 3, "number of items", int, "items"),
            Param("delay", 0.0, "seconds per item", float, "s"),
            Param("fail_at", -1, "raise at this item", int),
            Param("stuck", False, "hang without polling", bool),
            Param("label", "", "free text", str),
        ],
        run=run,
        inputs=("in_mics", "in_parts"),
        required_inputs=(),
    )

    if __name__ == "__main__":
        sys.exit(run_job(JOB))
    """
)


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    (tmp_path / "toy_job.py").write_text(TOY_JOB)
    return tmp_path


def relion_command(project: Path, args: str, job: str = "External/job005/") -> str:
    """The shell command RELION builds for a non-queued External job (reference §4.1)."""
    exe = f"{sys.executable} {project / 'toy_job.py'}"
    return f"{exe} --o {job} {args} --j 1 >> {job}run.out 2>> {job}run.err"


def start(project: Path, args: str = "", job: str = "External/job005/") -> subprocess.Popen:
    (project / job).mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    return subprocess.Popen(["sh", "-c", "exec " + relion_command(project, args, job)], cwd=project, env=env)


def run(project: Path, args: str = "", job: str = "External/job005/", timeout: float = 60) -> Path:
    proc = start(project, args, job)
    proc.wait(timeout=timeout)
    return project / job


def markers(job_dir: Path) -> set[str]:
    return {m for m in (ext.SUCCESS, ext.FAILURE, ext.ABORTED) if (job_dir / m).exists()}


def wait_for(predicate, timeout: float) -> float:
    start_time = time.monotonic()
    while time.monotonic() - start_time < timeout:
        if predicate():
            return time.monotonic() - start_time
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


# --- command line ---------------------------------------------------------------------------------


def test_tokenize_joins_split_values_and_keeps_bare_flags():
    pairs, strays = tokenize_flags(
        ["x", "--o", "External/job001/", "--label", "a", "b", "--flag", "--thr", "-1.5"]
    )
    assert strays == ["x"]
    assert pairs == [("o", "External/job001/"), ("label", "a b"), ("flag", None), ("thr", "-1.5")]


def test_parse_command_line_types_unknown_flags_and_pipeline_control():
    spec = JobSpec(
        "t",
        "d",
        [Param("thr", 0.5, "h"), Param("n", 2, "h", int), Param("on", False, "h", bool)],
        run=lambda ctx: [],
        inputs=("in_mics",),
        required_inputs=("in_mics",),
    )
    argv = [
        "--o",
        "J/",
        "--in_mics",
        "m.star",
        "--thr",
        "0.25",
        "--on",
        "--n",
        "7",
        "--j",
        "4",
        "--pipeline_control",
        "J/",
        "--mystery",
        "1",
    ]
    inputs, params, threads, warnings = parse_command_line(spec, argv)
    assert inputs == {"in_mics": "m.star"}
    assert params["thr"] == 0.25 and params["n"] == 7 and params["on"] is True
    assert params["relion_version"] == "auto" and params["seed"] == 0
    assert threads == 4
    assert any("--mystery" in w for w in warnings)
    assert not any("pipeline_control" in w for w in warnings)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--thr", "abc"], "expected a number"),
        (["--n", "2.5"], "whole number"),
        (["--on", "maybe"], "Yes or No"),
        (["--thr", "nan"], "finite"),
        ([], "missing --in_mics"),
    ],
)
def test_bad_parameter_values_give_one_line_reasons(argv, message):
    spec = JobSpec(
        "t",
        "d",
        [Param("thr", 0.5, "h"), Param("n", 2, "h", int), Param("on", False, "h", bool)],
        run=lambda ctx: [],
        inputs=("in_mics",),
        required_inputs=("in_mics",),
    )
    extra = [] if not argv else ["--in_mics", "m.star"]
    with pytest.raises(JobFailed, match=message):
        parse_command_line(spec, ["--o", "J/", *extra, *argv])


def test_help_lists_every_parameter_with_default_and_unit(capsys):
    from relion_plugins.jobs.log_pick import JOB

    assert ext.run_job(JOB, ["--help"]) == 0
    text = capsys.readouterr().out
    for p in JOB.all_params():
        assert f"--{p.name}" in text
    assert "(default: 150 Å)" in text
    assert "--in_mics" in text and "--pipeline_control" in text


# --- whole runs -----------------------------------------------------------------------------------


def test_success_writes_outputs_nodes_then_marker(project: Path):
    job = run(project, "--n 3 --label two words --unknown_flag x --pipeline_control External/job005/")
    assert markers(job) == {ext.SUCCESS}
    nodes = (job / ext.OUTPUT_NODES).read_text()
    assert "_rlnPipeLineNodeTypeLabel" in nodes
    assert "External/job005/all.txt MicrographGroupMetadata.star.relion" in nodes
    assert "External/job005/all.txt MicrographCoordsGroup.star.relion.autopick" in nodes
    out = (job / "run.out").read_text()
    assert "3/3 micrographs done" in out and "ignoring unknown flag --unknown_flag" in out
    assert (job / "run.err").read_text() == ""


def test_node_labels_follow_the_project_version(project: Path):
    (project / "default_pipeline.star").write_text(
        "# version 30001\n\ndata_pipeline_general\n\n_rlnPipeLineJobCounter 6\n"
    )
    job = run(project, "--n 1")
    assert "MicrographsCoords.star.relion.autopick" in (job / ext.OUTPUT_NODES).read_text()
    job = run(project, "--n 1 --relion_version 5", job="External/job006/")
    assert "MicrographCoordsGroup.star.relion.autopick" in (job / ext.OUTPUT_NODES).read_text()


def test_exception_gives_failure_marker_one_line_reason_and_no_nodes(project: Path):
    job = run(project, "--n 3 --fail_at 1")
    assert markers(job) == {ext.FAILURE}
    err = (job / "run.err").read_text().strip().splitlines()
    assert len(err) == 1 and "cannot read item001.mrc: file is corrupt" in err[0]
    assert "Traceback" in (job / ext.TRACEBACK).read_text()
    assert not (job / ext.OUTPUT_NODES).exists() and not (job / "all.txt").exists()
    assert not list(job.rglob(".rp_tmp_*"))


def test_bad_flag_value_fails_cleanly(project: Path):
    job = run(project, "--n many")
    assert markers(job) == {ext.FAILURE}
    assert "--n: expected a whole number" in (job / "run.err").read_text()


def test_failed_import_still_writes_failure(tmp_path: Path):
    job = tmp_path / "External/job009/"
    code = ext.launch("no_such_job_module", ["--o", str(job)])
    assert code == 1 and markers(job) == {ext.FAILURE}


def test_abort_between_items(project: Path):
    proc = start(project, "--n 50 --delay 0.2")
    job = project / "External/job005/"
    wait_for(lambda: (job / "items").exists(), 20)
    (job / ext.ABORT_NOW).touch()
    elapsed = wait_for(lambda: markers(job), 5)
    proc.wait(timeout=10)
    assert markers(job) == {ext.ABORTED} and elapsed < 5
    assert not (job / ext.ABORT_NOW).exists()
    assert not (job / ext.OUTPUT_NODES).exists()


def test_abort_while_stuck_in_a_long_computation(project: Path):
    proc = start(project, "--n 2 --stuck")
    job = project / "External/job005/"
    wait_for(lambda: (job / "run.out").exists() and "thread" in (job / "run.out").read_text(), 20)
    (job / ext.ABORT_NOW).touch()
    elapsed = wait_for(lambda: markers(job), 5)
    proc.wait(timeout=10)
    assert markers(job) == {ext.ABORTED} and elapsed < 5


def test_sigterm_gives_failure(project: Path):
    proc = start(project, "--n 50 --delay 0.2")
    job = project / "External/job005/"
    wait_for(lambda: (job / "items").exists(), 20)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    assert markers(job) == {ext.FAILURE}
    assert "killed by SIGTERM" in (job / "run.err").read_text()


def test_continue_processes_only_new_items(project: Path):
    job = run(project, "--n 3")
    assert markers(job) == {ext.SUCCESS}
    job = run(project, "--n 5")  # RELION "continue": same command, same directory, more input
    assert markers(job) == {ext.SUCCESS}
    processed = (job / "processed.log").read_text().split()
    assert processed == [f"item{i:03d}" for i in range(5)]  # items 0-2 were not redone
    assert "continuing" in (job / "run.out").read_text()


def test_kill_9_then_rerun_loses_at_most_the_item_in_flight(project: Path):
    proc = start(project, "--n 12 --delay 0.15")
    job = project / "External/job005/"
    wait_for(lambda: len(list((job / "items").glob("*.txt"))) >= 4 if (job / "items").exists() else False, 30)
    proc.kill()  # SIGKILL: no handler runs, no marker
    proc.wait(timeout=10)
    assert markers(job) == set()
    done_before = len((job / ext.JOURNAL).read_text().splitlines())
    job = run(project, "--n 12 --delay 0.0")
    assert markers(job) == {ext.SUCCESS}
    processed = (job / "processed.log").read_text().split()
    assert sorted(set(processed)) == [f"item{i:03d}" for i in range(12)]
    redone = len(processed) - 12
    assert redone <= 1, f"{redone} items processed twice after kill -9 ({done_before} journaled)"


def test_atomic_outputs_get_normal_permissions(tmp_path):
    import os
    import stat

    from relion_plugins.relion.atomic import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.star", "data_\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.star").stat().st_mode) == 0o644
