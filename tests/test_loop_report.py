"""rp-loop-report end to end, run exactly as RELION (and relion_schemer in continue mode) runs it, on tiny
fake rp-rank-select outputs: rows append per iteration, a re-run of an iteration replaces its row, F1 of a
hand-made case, and one-line failures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from relion_plugins.cli import run_external_like_relion
from relion_plugins.relion import external as ext
from relion_plugins.relion.coords import write_coordinate_list, write_coordinates
from relion_plugins.relion.star import read_block, write_star

JOB = "External/job020/"
MICS = ("MotionCorr/job002/Movies/mic_A.mrc", "MotionCorr/job002/Movies/mic_B.mrc")
ANGPIX = 2.0  # micrograph pixel size (rlnMicrographPixelSize); diameter 150 Å -> radius 37.5 px

# truth: 4 particles on A, 2 on B
TRUTH = {MICS[0]: [(100, 100), (300, 300), (500, 500), (700, 700)], MICS[1]: [(100, 100), (300, 300)]}
# picks: 3 of 5 within 5 px of a true particle -> P 3/5, R 3/6
PICKS = {MICS[0]: [(102, 101), (300, 305), (900, 900)], MICS[1]: [(100, 100), (600, 600)]}
# selected particles (x, y, origin x Å): (180, 100) with a 160 Å origin is centred at (100, 100); 3 of 4 true
SELECTED = [(MICS[0], 180.0, 100.0, 160.0), (MICS[0], 300.0, 300.0, 0.0), (MICS[1], 100.0, 100.0, 0.0)]
SELECTED += [(MICS[1], 400.0, 400.0, 0.0)]


def f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r)


def write_coords(project: Path, job: str, tables: dict, name: str) -> str:
    pairs = []
    for mic, xy in tables.items():
        rel = f"{job}Movies/{Path(mic).stem}_{name}.star"
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        arr = np.asarray(xy, dtype=float).reshape(-1, 2)
        write_coordinates(
            project / rel, pd.DataFrame({"rlnCoordinateX": arr[:, 0], "rlnCoordinateY": arr[:, 1]})
        )
        pairs.append((mic, rel))
    write_coordinate_list(project / job, pairs, name=name)
    return f"{job}{name}.star"


def write_rank_job(
    project: Path, job: str, n_classes: int = 2, pres: float = 0.41, summary: bool = True
) -> str:
    """particles.star (optics + particles) and rank_summary.star as rp-rank-select writes them."""
    (project / job).mkdir(parents=True, exist_ok=True)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": pd.Series(["opticsGroup1"], dtype=object),
            "rlnOpticsGroup": [1],
            "rlnMicrographOriginalPixelSize": [ANGPIX / 4],  # the movies': must not set the match radius
            "rlnMicrographPixelSize": [ANGPIX],
            "rlnImagePixelSize": [4.0],
            "rlnImageSize": [64],
            "rlnImageDimensionality": [2],
        }
    )
    parts = pd.DataFrame(
        {
            "rlnCoordinateX": [s[1] for s in SELECTED],
            "rlnCoordinateY": [s[2] for s in SELECTED],
            "rlnImageName": pd.Series([f"{i + 1:06d}@Extract/job008/x.mrcs" for i in range(4)], dtype=object),
            "rlnMicrographName": pd.Series([s[0] for s in SELECTED], dtype=object),
            "rlnOpticsGroup": [1] * 4,
            "rlnClassNumber": [1, 1, 2, 2],
            "rlnOriginXAngst": [s[3] for s in SELECTED],
            "rlnOriginYAngst": [0.0] * 4,
        }
    )
    write_star(project / job / "particles.star", {"optics": optics, "particles": parts})
    if summary:
        row = {
            "rlnGroupNrParticles": 4,
            "rlnNrClasses": n_classes,
            "rlnClassDistribution": 0.5,
            "rlnParticleFigureOfMerit": pres,
            "rlnClassScore": 0.73,
            "rlnPredictedClassScore": 0.5,
        }
        write_star(project / job / "rank_summary.star", {"rank_summary": row})
    return f"{job}particles.star"


def set_continue(project: Path, flag: bool) -> None:
    """The job.star RELION writes into the job directory; the runtime reads _rlnJobIsContinue there."""
    (project / JOB).mkdir(parents=True, exist_ok=True)
    (project / JOB / "job.star").write_text(
        "# version 50001\n\ndata_job\n\n_rlnJobTypeLabel relion.external\n"
        f"_rlnJobIsContinue {int(flag)}\n_rlnJobIsTomo 0\n\n"
    )


def run(project: Path, parts: str, coords: str | None = None, *extra: str) -> str:
    args = ["--in_parts", parts] + (["--in_coords", coords] if coords else []) + list(extra)
    return run_external_like_relion(project, JOB, "rp-loop-report", args, timeout=120)


def history(project: Path) -> pd.DataFrame:
    return read_block(project / JOB / "loop_history.star", "loop_history")


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    write_coords(tmp_path, "Truth/", TRUTH, "truth")
    write_coords(tmp_path, "External/job005/", PICKS, "autopick")
    return tmp_path


def test_history_appends_replaces_and_scores_against_truth(project: Path):
    truth = ["--truth", "Truth/truth.star"]
    parts0 = write_rank_job(project, "External/job010/")
    assert run(project, parts0, "External/job005/autopick.star", *truth) == ext.SUCCESS, (
        project / JOB / "run.err"
    ).read_text()
    h = history(project)
    assert len(h) == 1
    r = h.iloc[0]
    assert r["rpLoopIteration"] == 0 and r["rpRankJob"] == "External/job010/"
    assert r["rpPickJob"] == "External/job005/" and r["rpNrPicks"] == 5
    assert r["rpNrSelectedParticles"] == 4 and r["rpNrSelectedClasses"] == 2
    assert r["rpSelectedFraction"] == pytest.approx(0.5) and r["rpMeanClassScore"] == pytest.approx(0.73)
    assert (r["rpPicksPrecision"], r["rpPicksRecall"]) == pytest.approx((0.6, 0.5))
    assert r["rpPicksF1"] == pytest.approx(f1(0.6, 0.5))
    # the first selected particle is a true one only once recentred by its origin (80 px)
    assert (r["rpSelectionPrecision"], r["rpSelectionRecall"]) == pytest.approx((0.75, 0.5))
    assert r["rpSelectionF1"] == pytest.approx(f1(0.75, 0.5))
    out = (project / JOB / "run.out").read_text()
    assert "iteration 0: 5 picks, 4 selected in 2 classes (50.0 %), mean %/Res 0.410" in out
    assert f"picks F1 {f1(0.6, 0.5):.3f}" in out
    assert (project / JOB / "run.err").read_text() == ""
    assert (project / JOB / "logfile.pdf").read_bytes().startswith(b"%PDF-1.4")
    nodes = read_block(project / JOB / ext.OUTPUT_NODES, "output_nodes")
    assert list(nodes["rlnPipeLineNodeName"]) == [f"{JOB}logfile.pdf"]

    # next iteration, as relion_schemer continues the job: a row is appended
    set_continue(project, True)
    parts1 = write_rank_job(project, "External/job011/", n_classes=3, pres=0.5)
    assert run(project, parts1, "External/job005/autopick.star", *truth) == ext.SUCCESS
    h = history(project)
    assert list(h["rpLoopIteration"]) == [0, 1]
    assert list(h["rpRankJob"]) == ["External/job010/", "External/job011/"]
    assert list(h["rpNrSelectedClasses"]) == [2, 3]

    # the same iteration again (rank job re-run, no picks given): its row is replaced, not appended
    write_rank_job(project, "External/job011/", n_classes=5, pres=0.7)
    assert run(project, parts1) == ext.SUCCESS
    h = history(project)
    assert list(h["rpLoopIteration"]) == [0, 1]
    assert list(h["rpNrSelectedClasses"]) == [2, 5]
    assert h["rpMeanPercentPerRes"].iloc[1] == pytest.approx(0.7)
    assert h["rpPickJob"].iloc[1] == "" and h["rpNrPicks"].iloc[1] == -1
    assert math.isnan(h["rpPicksF1"].iloc[1]) and math.isnan(h["rpSelectionF1"].iloc[1])
    assert h["rpPicksF1"].iloc[0] == pytest.approx(f1(0.6, 0.5))  # the other row is kept as it was
    out = (project / JOB / "run.out").read_text().split("replaced iteration 1")[-1]
    assert "* iteration 1: 4 selected in 5 classes" in out and "F1" not in out.split("* iteration 1")[1]

    # a new (non-continue) run starts a fresh history
    set_continue(project, False)
    assert run(project, parts1) == ext.SUCCESS
    h = history(project)
    assert list(h["rpLoopIteration"]) == [0] and list(h["rpRankJob"]) == ["External/job011/"]


def test_missing_rank_summary_and_bad_truth_fail_with_one_line(project: Path):
    parts = write_rank_job(project, "External/job012/", summary=False)
    assert run(project, parts) == ext.FAILURE
    err = (project / JOB / "run.err").read_text().strip().splitlines()
    assert len(err) == 1 and "External/job012/rank_summary.star not found" in err[0], err
    assert not (project / JOB / "loop_history.star").exists()

    parts = write_rank_job(project, "External/job013/")
    (project / "bad_truth.star").write_text("data_\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n1 2 3\n")
    (project / JOB / "run.err").unlink()
    assert run(project, parts, None, "--truth", "bad_truth.star") == ext.FAILURE
    err = (project / JOB / "run.err").read_text().strip().splitlines()
    assert len(err) == 1 and "--truth bad_truth.star" in err[0], err
