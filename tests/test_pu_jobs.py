"""The PU train and pick External jobs end to end, run exactly as RELION runs them, on a tiny project.

A small configuration (conv31, 8 units, a few dozen minibatches) keeps this fast on CPU; what is checked
is the job contract: model file contents, outputs and nodes, calibrated scores, continue, bad inputs, and
RELION 3.1's own extraction from the picks.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from relion_plugins.cli import run_external_like_relion
from relion_plugins.pick.model_file import load_model
from relion_plugins.relion import external as ext
from relion_plugins.relion.coords import read_coordinate_list
from relion_plugins.relion.star import read_star
from relion_plugins.simulate import make_project

TRAIN = "External/job010/"
PICK = "External/job011/"
TINY = [
    "--model_arch",
    "conv31",
    "--units",
    "8",
    "--epochs",
    "2",
    "--steps_per_epoch",
    "25",
    "--minibatch",
    "64",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("pu") / "project"
    sim = make_project(project, n_micrographs=5, shape=(512, 512), angpix=4.0, seed=7)
    args = ["--in_mics", str(Path(sim.micrographs_star).relative_to(project))]
    args += ["--in_coords", "truth/truth.star", "--diameter", "150", *TINY]
    assert (
        run_external_like_relion(project, TRAIN, "rp-pu-train", args, threads=1, timeout=600) == ext.SUCCESS
    )
    return project


def run_pick(project: Path, job: str = PICK, extra: tuple[str, ...] = ()) -> str:
    args = ["--in_mics", "CtfFind/job003/micrographs_ctf.star", "--model", f"{TRAIN}model.pt", *extra]
    return run_external_like_relion(project, job, "rp-pu-pick", args, threads=1, timeout=600)


def test_train_writes_model_and_nodes(trained: Path):
    job = trained / TRAIN
    mf = load_model(job / "model.pt", picker="pu")
    assert mf.arch["name"] == "conv31"
    assert mf.meta["angpix"] == pytest.approx(150 / 24)
    assert mf.meta["normalization"]["method"] == "scaled_gmm"
    assert mf.meta["provenance"]["n_positives"] > 100
    assert 0 < mf.meta["pi"] < 1
    assert len(mf.meta["history"]) == 2
    assert mf.meta["calibration"]["a"] >= 0
    nodes = read_star(job / "RELION_OUTPUT_NODES.star")["output_nodes"]
    assert set(nodes["rlnPipeLineNodeName"]) == {f"{TRAIN}model.pt", f"{TRAIN}logfile.pdf"}
    assert (job / "logfile.pdf").read_bytes().startswith(b"%PDF")
    assert "epoch 2/2" in (job / "run.out").read_text()


def test_pick_outputs_and_continue(trained: Path):
    assert run_pick(trained, extra=("--threshold", "0.05")) == ext.SUCCESS
    job = trained / PICK
    coords = read_coordinate_list(job / "autopick.star", trained)
    assert len(coords) == 5
    for table in coords.values():
        fom = table["rlnAutopickFigureOfMerit"].to_numpy()
        assert ((fom >= 0.05) & (fom <= 1)).all()  # calibrated probability above the threshold
        xy = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
        d = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1)) + np.eye(len(xy)) * 1e9
        assert d.min() >= 0.6 * 150 / 4 - 1  # one pick per particle: NMS radius 0.6 x diameter
    # continue: nothing new to do, outputs unchanged
    before = (job / "autopick.star").read_text()
    (job / ext.SUCCESS).unlink()
    assert run_pick(trained, extra=("--threshold", "0.05")) == ext.SUCCESS
    assert "5 micrographs already picked" in (job / "run.out").read_text()
    assert (job / "autopick.star").read_text() == before


def test_pick_bad_inputs(trained: Path, tmp_path: Path):
    job = "External/job020/"
    args = ["--in_mics", "CtfFind/job003/micrographs_ctf.star", "--model", "External/nothing/model.pt"]
    assert run_external_like_relion(trained, job, "rp-pu-pick", args) == ext.FAILURE
    err = (trained / job / "run.err").read_text().strip().splitlines()
    assert len(err) == 1 and "model file not found" in err[0]
    assert not (trained / job / "autopick.star").exists()
    (trained / "bogus.pt").write_bytes(b"PK\x03\x04 not really")
    args[-1] = "bogus.pt"
    job = "External/job021/"
    assert run_external_like_relion(trained, job, "rp-pu-pick", args) == ext.FAILURE
    assert "cannot read model file" in (trained / job / "run.err").read_text()


def test_train_needs_labels(trained: Path):
    job = "External/job022/"
    args = ["--in_mics", "CtfFind/job003/micrographs_ctf.star", *TINY]
    assert run_external_like_relion(trained, job, "rp-pu-train", args) == ext.FAILURE
    assert "no labelled particles" in (trained / job / "run.err").read_text()
    assert not (trained / job / "model.pt").exists()


@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_preprocess") is None, reason="Debian RELION not installed")
def test_relion_31_extracts_from_pu_picks(trained: Path):
    job = "External/job012/"
    assert run_pick(trained, job, ("--threshold", "0")) == ext.SUCCESS
    n_picks = sum(len(t) for t in read_coordinate_list(trained / job / "autopick.star", trained).values())
    cmd = ["relion_preprocess", "--i", "CtfFind/job003/micrographs_ctf.star", "--coord_dir", job]
    cmd += ["--coord_suffix", "_autopick.star", "--part_star", "Extract/job013/particles.star"]
    cmd += [
        "--part_dir",
        "Extract/job013/",
        "--extract",
        "--extract_size",
        "48",
        "--norm",
        "--bg_radius",
        "18",
    ]
    result = subprocess.run(cmd, cwd=trained, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    particles = read_star(trained / "Extract/job013/particles.star")["particles"]
    assert n_picks > 0 and len(particles) == n_picks


def test_train_continues_from_init_model(trained: Path):
    """--init_model starts from an earlier job's weights (the loop's retrain step) and says so."""
    job = "External/job023/"
    args = ["--in_mics", "CtfFind/job003/micrographs_ctf.star", "--in_coords", "truth/truth.star"]
    args += ["--diameter", "150", *TINY, "--epochs", "1", "--init_model", f"{TRAIN}model.pt"]
    assert run_external_like_relion(trained, job, "rp-pu-train", args) == ext.SUCCESS
    mf = load_model(trained / job / "model.pt", picker="pu")
    assert mf.meta["provenance"]["initial_weights"].endswith(f"{TRAIN}model.pt")
    assert "started from" in (trained / job / "run.out").read_text()
    # the tiny conv31 has no shipped weights: the first job started from random ones
    first = load_model(trained / TRAIN / "model.pt", picker="pu")
    assert first.meta["provenance"]["initial_weights"] == "random"


def test_train_init_model_errors(trained: Path):
    base = ["--in_mics", "CtfFind/job003/micrographs_ctf.star", "--in_coords", "truth/truth.star"]
    base += ["--diameter", "150", *TINY]
    job = "External/job024/"
    assert run_external_like_relion(trained, job, "rp-pu-train", [*base, "--init_model", "nope.pt"]) == ext.FAILURE
    assert "--init_model nope.pt: no such file" in (trained / job / "run.err").read_text()
    job = "External/job025/"  # same file, other network: refused, not half-copied
    args = [*base, "--units", "16", "--init_model", f"{TRAIN}model.pt"]
    assert run_external_like_relion(trained, job, "rp-pu-train", args) == ext.FAILURE
    err = (trained / job / "run.err").read_text()
    assert "holds a different network" in err and len(err.strip().splitlines()) == 1
    assert not (trained / job / "model.pt").exists()


def test_complete_labels_train_with_ge_binomial(trained: Path):
    """Every particle labelled and particles_per_mic at or a little under their number (the loop's case, whose
    estimate is selected / micrographs): the prior is raised just above the labelled pixel fraction instead of
    refusing to train."""
    from relion_plugins.relion.coords import read_coordinate_list

    truth = read_coordinate_list(trained / "truth/truth.star", trained)
    per_mic = sum(len(t) for t in truth.values()) / len(truth)
    args = ["--in_mics", "CtfFind/job003/micrographs_ctf.star", "--in_coords", "truth/truth.star"]
    args += ["--diameter", "150", "--particles_per_mic", f"{0.9 * per_mic:.1f}", *TINY]
    job = "External/job020/"
    marker = run_external_like_relion(trained, job, "rp-pu-train", args, threads=1, timeout=600)
    assert marker == ext.SUCCESS, (trained / job / "run.err").read_text()
