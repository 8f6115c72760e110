"""The LoG External job end to end, run exactly as RELION runs it, on a tiny hand-made project.

Covers the outputs RELION needs (coordinate files mirroring the micrograph tree, autopick.star, the legacy
coords_suffix file, nodes, logfile.pdf), continue runs, bad input (one-line reason, FAILURE, no partial
outputs) and RELION 3.1's own extraction reading our coordinates.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from relion_plugins.cli import run_external_like_relion
from relion_plugins.relion import external as ext
from relion_plugins.relion.coords import read_coordinate_list, read_coordinates
from relion_plugins.relion.mrc import write_mrc
from relion_plugins.relion.star import read_star, write_star

ANGPIX = 4.0
DIAMETER_A = 80.0  # 20 px
JOB = "External/job004/"
MICS_STAR = "CtfFind/job003/micrographs_ctf.star"


def blob_micrograph(rng: np.random.Generator, n: int = 30, size: int = 384) -> tuple[np.ndarray, np.ndarray]:
    """Dark particle-like blobs (Gaussian profile, SD 0.21 x diameter) on white noise, well separated."""
    yy, xx = np.mgrid[0:size, 0:size]
    image = rng.normal(0, 0.5, (size, size)).astype(np.float32)
    centres = []
    while len(centres) < n:
        c = rng.uniform(30, size - 30, 2)
        if all(np.hypot(*(c - d)) > 45 for d in centres):
            centres.append(c)
    sigma = 0.21 * DIAMETER_A / ANGPIX
    for x, y in centres:
        image -= 2.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)).astype(np.float32)
    return image, np.array(centres)


def write_micrographs_star(
    project: Path, names: list[str], angpix=(ANGPIX, ANGPIX), optics: bool = True
) -> None:
    """Two optics groups (alternating micrographs); their pixel sizes are ``angpix``."""
    blocks: dict = {}
    if optics:
        blocks["optics"] = pd.DataFrame(
            {
                "rlnOpticsGroupName": ["opticsGroup1", "opticsGroup2"],
                "rlnOpticsGroup": [1, 2],
                "rlnMicrographOriginalPixelSize": [1.0, 1.0],
                "rlnVoltage": [300.0, 300.0],
                "rlnSphericalAberration": [2.7, 2.7],
                "rlnAmplitudeContrast": [0.1, 0.1],
                "rlnMicrographPixelSize": list(angpix),
            }
        )
    blocks["micrographs"] = pd.DataFrame(
        {
            "rlnMicrographName": pd.Series(names, dtype=object),
            "rlnOpticsGroup": pd.Series([1 + (i % 2) for i in range(len(names))], dtype=int),
            "rlnDefocusU": pd.Series([15000.0] * len(names), dtype=float),
        }
    )
    write_star(project / MICS_STAR, blocks)


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    names = []
    for i in range(3):
        name = f"MotionCorr/job002/Movies/mic{i:03d}.mrc"
        image, centres = blob_micrograph(rng)
        write_mrc(tmp_path / name, image, ANGPIX)
        np.savetxt(tmp_path / f"truth{i}.txt", centres)
        names.append(name)
    write_micrographs_star(tmp_path, names)
    return tmp_path


def run_log(project: Path, *extra: str, job: str = JOB) -> str:
    args = [
        "--in_mics",
        MICS_STAR,
        "--diameter_min",
        str(0.8 * DIAMETER_A),
        "--diameter_max",
        str(1.2 * DIAMETER_A),
        "--lowpass",
        "10",
        *extra,
    ]
    return run_external_like_relion(project, job, "rp-pick-log", args, threads=2, timeout=300)


def test_log_job_writes_what_relion_needs(project: Path):
    assert run_log(project) == ext.SUCCESS
    job = project / JOB
    # per-micrograph files mirror the micrograph tree below the job directory
    for i in range(3):
        coords = read_coordinates(job / f"Movies/mic{i:03d}_autopick.star")
        truth = np.loadtxt(project / f"truth{i}.txt")
        assert list(coords.columns)[:3] == ["rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit"]
        xy = coords[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
        dist = np.hypot(*(xy[:, None, :] - truth[None, :, :]).transpose(2, 0, 1))
        assert (dist.min(axis=0) < 4).mean() >= 0.9, "most blobs are found"
        assert (dist.min(axis=1) < 4).mean() >= 0.9, "few picks are not on a blob"
    listed = read_star(job / "autopick.star")["coordinate_files"]
    assert list(listed["rlnMicrographName"]) == [f"MotionCorr/job002/Movies/mic{i:03d}.mrc" for i in range(3)]
    assert list(listed["rlnMicrographCoordinates"]) == [
        f"{JOB}Movies/mic{i:03d}_autopick.star" for i in range(3)
    ]
    assert (job / "coords_suffix_autopick.star").read_text().strip() == MICS_STAR
    nodes = (job / ext.OUTPUT_NODES).read_text()
    assert f"{JOB}autopick.star MicrographCoordsGroup.star.relion.autopick" in nodes
    assert f"{JOB}logfile.pdf LogFile.pdf.relion.autopick" in nodes
    assert (job / "logfile.pdf").read_bytes()[:4] == b"%PDF"
    assert (job / "run.err").read_text() == ""
    assert "3/3 micrographs done" in (job / "run.out").read_text()


def test_continue_picks_only_new_micrographs(project: Path):
    assert run_log(project) == ext.SUCCESS
    first = (project / JOB / "Movies/mic000_autopick.star").stat().st_mtime_ns
    image, _ = blob_micrograph(np.random.default_rng(9))
    write_mrc(project / "MotionCorr/job002/Movies/mic003.mrc", image, ANGPIX)
    write_micrographs_star(project, [f"MotionCorr/job002/Movies/mic{i:03d}.mrc" for i in range(4)])
    assert run_log(project) == ext.SUCCESS
    out = (project / JOB / "run.out").read_text()
    assert "3 micrographs already picked by an earlier run; 1 to do" in out
    assert (project / JOB / "Movies/mic000_autopick.star").stat().st_mtime_ns == first
    assert len(read_coordinate_list(project / JOB / "autopick.star", project)) == 4


def _assert_clean_failure(project: Path, reason: str) -> None:
    job = project / JOB
    assert {m for m in (ext.SUCCESS, ext.FAILURE, ext.ABORTED) if (job / m).exists()} == {ext.FAILURE}
    err = (job / "run.err").read_text().strip().splitlines()
    assert len(err) == 1, err
    assert reason in err[0], err[0]
    assert not (job / "autopick.star").exists()
    assert not (job / ext.OUTPUT_NODES).exists()
    assert not list(job.rglob(".rp_tmp_*"))


def test_missing_micrograph_file(project: Path):
    (project / "MotionCorr/job002/Movies/mic001.mrc").unlink()
    assert run_log(project) == ext.FAILURE
    _assert_clean_failure(project, "micrograph file not found: MotionCorr/job002/Movies/mic001.mrc")


def test_corrupt_mrc(project: Path):
    (project / "MotionCorr/job002/Movies/mic000.mrc").write_bytes(b"this is not an MRC file" * 50)
    assert run_log(project) == ext.FAILURE
    _assert_clean_failure(project, "mic000.mrc")


def test_truncated_mrc(project: Path):
    path = project / "MotionCorr/job002/Movies/mic000.mrc"
    path.write_bytes(path.read_bytes()[:5000])
    assert run_log(project) == ext.FAILURE
    _assert_clean_failure(project, "mic000.mrc")


def test_star_without_optics_table(project: Path):
    write_micrographs_star(
        project, [f"MotionCorr/job002/Movies/mic{i:03d}.mrc" for i in range(3)], optics=False
    )
    assert run_log(project) == ext.FAILURE
    _assert_clean_failure(project, "no data_optics table")


def test_mixed_pixel_sizes(project: Path):
    write_micrographs_star(
        project, [f"MotionCorr/job002/Movies/mic{i:03d}.mrc" for i in range(3)], angpix=(4.0, 2.0)
    )
    assert run_log(project) == ext.FAILURE
    _assert_clean_failure(project, "mixed pixel sizes")


def test_empty_micrograph_list(project: Path):
    write_micrographs_star(project, [])
    assert run_log(project) == ext.FAILURE
    _assert_clean_failure(project, "empty")


def test_nan_image(project: Path):
    image = np.zeros((384, 384), np.float32)
    image[10, 10] = np.nan
    write_mrc(project / "MotionCorr/job002/Movies/mic000.mrc", image, ANGPIX)
    assert run_log(project) == ext.FAILURE
    _assert_clean_failure(project, "NaN")


def test_wrong_input_path(project: Path):
    assert (
        run_external_like_relion(project, JOB, "rp-pick-log", ["--in_mics", "CtfFind/job099/nope.star"])
        == ext.FAILURE
    )
    _assert_clean_failure(project, "CtfFind/job099/nope.star")


def test_unwritable_output_location(project: Path):
    (project / JOB).mkdir(parents=True)
    (project / JOB / "Movies").write_text("a file where the Movies directory must go")
    assert run_log(project) == ext.FAILURE
    _assert_clean_failure(project, "Movies")


def test_crlf_star_is_rejected(project: Path):
    star = project / MICS_STAR
    star.write_bytes(star.read_bytes().replace(b"\n", b"\r\n"))
    assert run_log(project) == ext.FAILURE
    _assert_clean_failure(project, "CR")


@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_preprocess") is None, reason="Debian RELION not installed")
def test_relion_31_extracts_from_our_coordinates(project: Path):
    """RELION 3.1 has no coordinate list: --coord_dir + --coord_suffix works because our files mirror the tree."""
    assert run_log(project) == ext.SUCCESS
    n_picks = sum(len(t) for t in read_coordinate_list(project / JOB / "autopick.star", project).values())
    cmd = [
        "relion_preprocess",
        "--i",
        MICS_STAR,
        "--coord_dir",
        JOB,
        "--coord_suffix",
        "_autopick.star",
        "--part_star",
        "Extract/job005/particles.star",
        "--part_dir",
        "Extract/job005/",
        "--extract",
        "--extract_size",
        "32",
        "--norm",
        "--bg_radius",
        "12",
        "--invert_contrast",
    ]
    result = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    particles = read_star(project / "Extract/job005/particles.star")["particles"]
    assert n_picks > 20
    assert len(particles) == n_picks
    assert set(particles["rlnMicrographName"]) == {
        f"MotionCorr/job002/Movies/mic{i:03d}.mrc" for i in range(3)
    }
