"""The transformer picker's train and pick External jobs end to end, run as RELION runs them.

A tiny configuration (ResNet-tiny, 1 + 2 layers, a few dozen minibatches) keeps this fast on CPU; what is
checked is the job contract: model file contents, outputs and nodes, continue, and bad inputs.
"""

from __future__ import annotations

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
MICS = "CtfFind/job003/micrographs_ctf.star"
TINY = ["--model_size", "tiny", "--scaled_diameter", "16", "--crop", "128", "--learning_rate", "2e-3",
        "--pretrain_epochs", "1", "--epochs", "2", "--steps_per_epoch", "15"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("detr") / "project"
    make_project(project, n_micrographs=4, shape=(512, 512), angpix=4.0, seed=7)
    args = ["--in_mics", MICS, "--in_coords", "truth/truth.star", "--diameter", "150", *TINY]
    assert (
        run_external_like_relion(project, TRAIN, "rp-detr-train", args, threads=1, timeout=600) == ext.SUCCESS
    )
    return project


def run_pick(project: Path, job: str = PICK, extra: tuple[str, ...] = ()) -> str:
    args = ["--in_mics", MICS, "--model", f"{TRAIN}model.pt", *extra]
    return run_external_like_relion(project, job, "rp-detr-pick", args, threads=1, timeout=600)


def test_train_writes_model_and_nodes(trained: Path):
    job = trained / TRAIN
    mf = load_model(job / "model.pt", picker="detr")
    assert mf.arch["name"] == "detr-resnet_tiny" and mf.arch["anchor_px"] == pytest.approx(16)
    assert mf.meta["angpix"] == pytest.approx(150 / 16)
    assert mf.meta["preprocess"]["equalize"] == "clahe" and mf.meta["crop"] == 128
    assert 0 <= mf.meta["threshold"] <= 1
    assert set(mf.meta["thresholds"]) == {"1", "4", "8"} and mf.meta["thresholds"]["1"] == mf.meta["threshold"]
    assert all(0 <= t <= 1 for t in mf.meta["thresholds"].values())
    assert set(mf.meta["validation_f1_views"]) == {"1", "4", "8"}
    phases = [h["phase"] for h in mf.meta["history"]]
    assert phases == ["pretraining", "fine-tuning", "fine-tuning"]
    assert mf.meta["provenance"]["initial_weights"] == "A-LoG pretraining"
    nodes = read_star(job / "RELION_OUTPUT_NODES.star")["output_nodes"]
    assert set(nodes["rlnPipeLineNodeName"]) == {f"{TRAIN}model.pt", f"{TRAIN}logfile.pdf"}
    assert (job / "logfile.pdf").read_bytes().startswith(b"%PDF")
    out = (job / "run.out").read_text()
    assert "A-LoG pseudo-labels" in out and "fine-tuning epoch 2/2" in out
    assert " 4 view(s): validation F1" in out and "pick threshold" in out


def test_pick_outputs_and_continue(trained: Path):
    assert run_pick(trained, extra=("--threshold", "0.05")) == ext.SUCCESS
    job = trained / PICK
    coords = read_coordinate_list(job / "autopick.star", trained)
    assert len(coords) == 4 and sum(len(t) for t in coords.values()) > 0
    for table in coords.values():
        fom = table["rlnAutopickFigureOfMerit"].to_numpy()
        assert ((fom >= 0.05) & (fom <= 1)).all()
        xy = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
        if len(xy) > 1:
            d = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1)) + np.eye(len(xy)) * 1e9
            assert d.min() >= 0.6 * 150 / 4 - 2  # NMS radius 0.6 x diameter
        assert ((xy >= 150 / 8 - 1) & (xy <= 512 - 150 / 8)).all()  # border: half a diameter
    assert (job / "logfile.pdf").exists()
    before = (job / "autopick.star").read_text()
    (job / ext.SUCCESS).unlink()
    assert run_pick(trained, extra=("--threshold", "0.05")) == ext.SUCCESS
    assert "4 micrographs already picked" in (job / "run.out").read_text()
    assert (job / "autopick.star").read_text() == before


def test_pick_views_use_their_own_validated_threshold(trained: Path):
    job = "External/job012/"
    assert run_pick(trained, job, ("--tta", "1")) == ext.SUCCESS
    mf = load_model(trained / TRAIN / "model.pt", picker="detr")
    out = (trained / job / "run.out").read_text()
    assert f"1 view(s) each; threshold {mf.meta['thresholds']['1']:.3g}" in out
    one = read_coordinate_list(trained / job / "autopick.star", trained)
    job = "External/job013/"
    assert run_pick(trained, job, ("--tta", "8", "--threshold", "0")) == ext.SUCCESS
    assert "8 view(s) each; threshold 0," in (trained / job / "run.out").read_text()
    eight = read_coordinate_list(trained / job / "autopick.star", trained)
    assert sum(len(t) for t in eight.values()) >= sum(len(t) for t in one.values())
    job = "External/job014/"
    assert run_external_like_relion(trained, job, "rp-detr-pick", ["--in_mics", MICS, "--model",
                                    f"{TRAIN}model.pt", "--tta", "3"]) == ext.FAILURE  # fmt: skip
    assert "--tta: '3' is not one of 1, 4, 8" in (trained / job / "run.err").read_text()


def test_pick_bad_model(trained: Path):
    job = "External/job020/"
    args = ["--in_mics", MICS, "--model", "External/nothing/model.pt"]
    assert run_external_like_relion(trained, job, "rp-detr-pick", args) == ext.FAILURE
    err = (trained / job / "run.err").read_text().strip().splitlines()
    assert len(err) == 1 and "model file not found" in err[0]
    assert not (trained / job / "autopick.star").exists()


def test_train_bad_inputs(trained: Path):
    job = "External/job022/"
    args = ["--in_mics", MICS, "--diameter", "150", *TINY]
    assert run_external_like_relion(trained, job, "rp-detr-train", args) == ext.FAILURE
    err = (trained / job / "run.err").read_text().strip().splitlines()
    assert len(err) == 1 and "no labelled particles" in err[0]
    assert not (trained / job / "model.pt").exists()
    job = "External/job023/"
    args += ["--in_coords", "truth/truth.star", "--lambda_p", "1.5"]
    assert run_external_like_relion(trained, job, "rp-detr-train", args) == ext.FAILURE
    assert "--lambda_p 1.5 must be below --lambda_n" in (trained / job / "run.err").read_text()


def test_finetune_from_init_model(trained: Path):
    """--init_model skips pretraining and fine-tunes the earlier job's network."""
    job = "External/job024/"
    args = ["--in_mics", MICS, "--in_coords", "truth/truth.star", "--diameter", "150", *TINY]
    args += ["--epochs", "1", "--init_model", f"{TRAIN}model.pt", "--lambda_p", "0.7", "--lambda_n", "1.5"]
    assert run_external_like_relion(trained, job, "rp-detr-train", args) == ext.SUCCESS
    mf = load_model(trained / job / "model.pt", picker="detr")
    assert (mf.arch["lambda_p"], mf.arch["lambda_n"], mf.arch["lambda_l"]) == (0.7, 1.5, 0.5)  # not the init's
    assert mf.meta["provenance"]["initial_weights"] == f"{TRAIN}model.pt"
    assert [h["phase"] for h in mf.meta["history"]] == ["fine-tuning"]
    assert mf.arch["queries"] == load_model(trained / TRAIN / "model.pt", picker="detr").arch["queries"]


def test_auto_queries_leave_room_over_the_particles_of_a_crop():
    from relion_plugins.jobs.detr_train import auto_queries

    # sparse: 80 particles on 655² px, ~7 per 192 px crop -> the model size's 60 stay
    assert auto_queries(60, 80, [(655, 655)], 192) == (60, pytest.approx(80 * 192**2 / 655**2))
    # dense (EMPIAR-10017-like): 650 particles on 660² px, ~55 per crop -> 5 x 55 rounded up to 10
    n, per_crop = auto_queries(60, 650, [(660, 660), (660, 660)], 192)
    assert per_crop == pytest.approx(650 * 192**2 / 660**2) and n == 280
    # a micrograph smaller than the crop: the crop holds all of it
    assert auto_queries(60, 30, [(100, 100)], 192) == (150, pytest.approx(30.0))
