"""The umbrella command: the README's demo, doctor and evaluate, run as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from relion_plugins.cli import main


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relion_plugins.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_demo_runs_the_log_job_and_scores_it(tmp_path: Path):
    result = run_cli("demo", "--dir", str(tmp_path / "demo"), "--micrographs", "3", "--log_only")
    assert result.returncode == 0, result.stderr
    assert "RELION_JOB_EXIT_SUCCESS" in result.stdout
    f1 = float(result.stdout.split("F1 ")[1].split()[0])
    assert f1 > 0.2  # the picker finds particles, not noise (truth is known)
    job = tmp_path / "demo" / "External/job004/"
    assert (job / "logfile.pdf").exists() and (job / "autopick.star").exists()
    assert "rp-pick-log" in (job / "note.txt").read_text()

    # evaluate: the picks against the simulator's own truth list, by the command a user would type
    result = run_cli("evaluate", "External/job004/autopick.star", "truth/truth.star", "--diameter", "150",
                     "--angpix", "4", cwd=tmp_path / "demo")
    assert result.returncode == 0, result.stderr
    assert abs(float(result.stdout.split("f1")[1].split()[0]) - f1) < 1e-3


def test_demo_refuses_to_overwrite(tmp_path: Path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    result = run_cli("demo", "--dir", str(tmp_path / "x"))
    assert result.returncode == 1 and (tmp_path / "x" / "keep.txt").exists()


def test_doctor_reports_environment(capsys):
    try:
        main(["doctor"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    assert "Python" in out and "torch" in out and "relion_refine" in out and "rp-pick-log" in out
