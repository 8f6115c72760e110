"""The tomogram train and pick External jobs end to end, run exactly as RELION runs them, on a tiny
RELION 5 project (two simulated tomograms, binned by 2, in a tomograms STAR). A tiny network and a few
iterations keep this fast on CPU; what is checked is the job contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from relion_plugins.cli import run_external_like_relion
from relion_plugins.pick.model_file import load_model
from relion_plugins.relion import external as ext
from relion_plugins.relion.mrc import write_mrc
from relion_plugins.relion.star import read_star, write_star
from relion_plugins.relion.tomograms import read_tomo_coordinates, read_tomograms, write_tomo_particles
from relion_plugins.simulate import write_pipeline
from relion_plugins.simulate.tomogram import Species, TomogramConfig, noisy_sphere_labels, simulate_tomogram

TRAIN = "External/job020/"
PICK = "External/job021/"
TINY = ["--patch", "16", "--width", "2", "--depth", "2", "--iterations", "4", "--batch", "2", "--eval_every", "2"]
SPECIES = (Species("small@60", 6, "tiny"), Species("globular", 3, "big"))


def _make_project(root: Path) -> Path:
    project = root / "project"
    (project / "Tomograms/job006/tomograms").mkdir(parents=True)
    write_pipeline(project / "default_pipeline.star", 5)
    rows, sims = [], {}
    for i, name in enumerate(("TS_01", "TS_02", "TS_03")):
        sim = simulate_tomogram(TomogramConfig(shape=(24, 40, 40), angpix=10.0, species=SPECIES), seed=10 + i)
        sims[name] = sim
        path = f"Tomograms/job006/tomograms/rec_{name}.mrc"
        write_mrc(project / path, sim.volume, 10.0)
        rows.append({"rlnTomoName": name, "rlnTomoTiltSeriesPixelSize": 5.0, "rlnTomoTomogramBinning": 2.0,
                     "rlnTomoSizeX": 80, "rlnTomoSizeY": 80, "rlnTomoSizeZ": 48, "rlnTomoReconstructedTomogram": path})
    write_star(project / "Tomograms/job006/tomograms.star", {"global": pd.DataFrame(rows)})
    tomos = read_tomograms("Tomograms/job006/tomograms.star", project)
    noisy = {n: noisy_sphere_labels(sims[n], seed=1)[1].assign(score=1.0) for n in ("TS_01", "TS_02")}
    (project / "Picks/job009").mkdir(parents=True)
    write_tomo_particles(project / "Picks/job009/particles.star", noisy, tomos)
    clean = {"TS_03": sims["TS_03"].particles.assign(score=1.0)}
    (project / "Picks/job010").mkdir(parents=True)
    write_tomo_particles(project / "Picks/job010/particles.star", clean, [t for t in tomos if t.name == "TS_03"])
    return project


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    project = _make_project(tmp_path_factory.mktemp("tomo"))
    args = ["--in_mics", "Tomograms/job006/tomograms.star", "--in_parts", "Picks/job009/particles.star",
            "--val_coords", "Picks/job010/particles.star", "--diameters", "60,150", "--species_names", "tiny,big",
            *TINY]
    assert run_external_like_relion(project, TRAIN, "rp-tomo-train", args, threads=1, timeout=300) == ext.SUCCESS, (
        (project / TRAIN / "run.err").read_text()
    )
    return project


def test_train_writes_model_nodes_and_log(trained: Path):
    job = trained / TRAIN
    mf = load_model(job / "model.pt", picker="tomo")
    assert mf.arch["name"] == "unet3d" and mf.arch["n_classes"] == 3 and mf.arch["width"] == 2
    assert mf.angpix == 10.0 and mf.meta["species"][0] == {"name": "tiny", "diameter_A": 60.0}
    assert mf.meta["train_config"]["method"] == "robpicker"
    assert mf.meta["provenance"]["validation_tomograms"] == ["TS_03"]
    assert [h["iteration"] for h in mf.meta["history"]] == [2, 4]
    nodes = read_star(job / ext.OUTPUT_NODES)["output_nodes"]
    assert set(nodes["rlnPipeLineNodeTypeLabel"]) == {"ProcessData.pt.relion_plugins.model", "LogFile.pdf.relion"}
    assert (job / "logfile.pdf").read_bytes().startswith(b"%PDF")
    out = (job / "run.out").read_text()
    assert "4/4 iterations done" in out and "validating on 1" in out
    from relion_plugins.pick.tomo.infer import MIN_FRACTION_GRID, SPLIT_GRID

    floors, f1 = mf.meta["min_fraction"], mf.meta["validation_pick_f1"]
    assert len(floors) == len(f1) == 2 and set(floors) <= set(MIN_FRACTION_GRID) and all(0 <= v <= 1 for v in f1)
    splits = mf.meta["split_above"]
    assert len(splits) == 2 and set(splits) <= set(SPLIT_GRID)
    assert f"picking floors chosen on the validation tomograms (components of at least this fraction of the " \
           f"species' sphere volume; split above this many sphere volumes, 0 = never): tiny {floors[0]:g}, split " \
           f"{splits[0]:g} (F1 {f1[0]:.3f}), big {floors[1]:g}, split {splits[1]:g}" in out
    # the checkpoint kept is the one of best mean validation picking F1, and picking with it again gives its F1s
    assert mf.meta["checkpoint"] == "f1" and "validation picking F1" in out
    hist = {h["iteration"]: h["validation_scores"] for h in mf.meta["history"]}
    assert np.mean(hist[mf.meta["best_iteration"]]) == max(np.mean(v) for v in hist.values())
    assert f1 == pytest.approx(hist[mf.meta["best_iteration"]])


def test_pick_writes_relion5_particles(trained: Path):
    args = ["--in_mics", "Tomograms/job006/tomograms.star", "--model", f"{TRAIN}model.pt", "--patch", "16",
            "--overlap", "4"]
    assert run_external_like_relion(trained, PICK, "rp-tomo-pick", args, threads=1, timeout=300) == ext.SUCCESS, (
        (trained / PICK / "run.err").read_text()
    )
    job = trained / PICK
    blocks = read_star(job / "particles.star")
    assert list(blocks) == ["general", "optics", "particles"]
    parts = blocks["particles"]
    assert {"rlnTomoName", "rlnCenteredCoordinateXAngst", "rlnClassNumber", "rlnAutopickFigureOfMerit"} <= set(
        parts.columns
    )
    tomos = read_tomograms("Tomograms/job006/tomograms.star", trained)
    if len(parts):
        back = read_tomo_coordinates(job / "particles.star", tomos)
        for table in back.values():  # every pick lies inside its tomogram
            assert table.x.between(0, 40).all() and table.z.between(0, 24).all()
    nodes = read_star(job / ext.OUTPUT_NODES)["output_nodes"]
    labels = dict(zip(nodes["rlnPipeLineNodeName"], nodes["rlnPipeLineNodeTypeLabel"]))
    assert labels[f"{PICK}particles.star"] == "ParticleGroupMetadata.star.relion.tomo"
    assert labels[f"{PICK}optimisation_set.star"] == "TomoOptimisationSet.star.relion.tomo"
    out = (job / "run.out").read_text()
    assert "3/3 tomograms done" in out
    meta = load_model(trained / TRAIN / "model.pt", picker="tomo").meta
    floors, splits = meta["min_fraction"], meta["split_above"]
    assert (f"components of at least {floors[0]:g} / {floors[1]:g} of their species' sphere volume, split above "
            f"{splits[0]:g} / {splits[1]:g} (0 = never)") in out
    opt = read_star(job / "optimisation_set.star")[""]
    assert opt["rlnTomoTomogramsFile"] == "Tomograms/job006/tomograms.star"
    # continue: nothing left to pick, same result
    before = (job / "particles.star").read_text()
    assert run_external_like_relion(trained, PICK, "rp-tomo-pick", args, threads=1, timeout=300) == ext.SUCCESS
    assert "3 tomograms were picked by an earlier run" in (job / "run.out").read_text()
    assert (job / "particles.star").read_text() == before


def test_train_with_exact_label_maps_in_process(trained: Path, monkeypatch, capsys):
    """--val_label_maps (exact labels named after the tomogram) and an ablation method, with plain MRC input."""
    sim = simulate_tomogram(TomogramConfig(shape=(24, 40, 40), angpix=10.0, species=SPECIES), seed=12)
    (trained / "Labels").mkdir(exist_ok=True)
    write_mrc(trained / "Labels/TS_03.mrc", sim.shape_labels.astype(np.float32), 10.0)
    monkeypatch.chdir(trained)
    job = "External/job040/"
    args = ["--o", job, "--in_mics", "Tomograms/job006/tomograms.star", "--in_parts", "Picks/job009/particles.star",
            "--val_label_maps", "Labels/*.mrc", "--diameters", "60 150", "--method", "lc", "--virtual_step", "adam",
            "--val_loss", "dice_ce", "--checkpoint", "dice", *TINY, "--j", "1"]
    assert ext.launch("tomo_train", args) == 0
    mf = load_model(trained / job / "model.pt", picker="tomo")
    assert mf.meta["train_config"]["method"] == "lc" and mf.meta["train_config"]["virtual_step"] == "adam"
    assert mf.meta["provenance"]["validation_tomograms"] == ["TS_03"]
    assert mf.meta["provenance"]["train_tomograms"] == ["TS_01", "TS_02"]
    assert all("alpha" in h for h in mf.meta["history"])
    run_out = capsys.readouterr().out  # in process, run.out is what the job prints
    for h in mf.meta["history"]:  # run.out says what LC did where the network overrules a background label
        if "alpha_disputed" in h:
            assert f"LC alpha {h['alpha_disputed']:.2f} where labelled background" in run_out
    assert "DR weighs" not in run_out  # LC only
    # Dice + cross-entropy for the meta networks, the best checkpoint by that loss (no picking F1 per checkpoint)
    assert mf.meta["train_config"]["val_loss"] == "dice_ce" and mf.meta["checkpoint"] == "dice"
    assert not any("validation_scores" in h for h in mf.meta["history"])
    best = min(mf.meta["history"], key=lambda h: h["validation"])
    assert mf.meta["best_iteration"] == best["iteration"]


def _fails(project: Path, job: str, module: str, args: list[str], capsys, monkeypatch) -> str:
    """Run a job in-process (as its console script would, minus the interpreter start) and expect FAILURE."""
    monkeypatch.chdir(project)
    capsys.readouterr()
    assert ext.launch(module, ["--o", job, *args, "--j", "1"]) == 1
    assert (project / job / ext.FAILURE).exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert not (project / job / ext.OUTPUT_NODES).exists()
    return err[0]


def test_bad_inputs_fail_cleanly(trained: Path, capsys, monkeypatch):
    def fails(job: str, module: str, args: list[str]) -> str:
        return _fails(trained, job, module, args, capsys, monkeypatch)

    model = ["--model", f"{TRAIN}model.pt", "--patch", "16"]
    assert "model file not found" in fails(
        "External/job030/", "tomo_pick", ["--in_mics", "Tomograms/job006/tomograms.star", "--model", "nope.pt"]
    )
    assert "not found" in fails("External/job031/", "tomo_pick", ["--tomograms", "missing/*.mrc", *model])
    bad = trained / "bad"
    bad.mkdir(exist_ok=True)
    vol = np.zeros((24, 40, 40), np.float32)
    vol[3, 4, 5] = np.nan
    write_mrc(bad / "nan.mrc", vol, 10.0)
    (bad / "corrupt.mrc").write_bytes(b"\0" * 100)
    assert "NaN" in fails("External/job032/", "tomo_pick", ["--tomograms", "bad/nan.mrc", *model])
    assert not (trained / "External/job032/particles.star").exists()
    assert "cannot read tomogram" in fails("External/job035/", "tomo_pick", ["--tomograms", "bad/corrupt.mrc", *model])
    # training without labels, and with species beyond the diameters given
    tomograms = ["--in_mics", "Tomograms/job006/tomograms.star"]
    assert "no particles" in fails("External/job033/", "tomo_train", [*tomograms, "--diameters", "60,150"])
    assert "no diameter" in fails(
        "External/job034/", "tomo_train", [*tomograms, "--in_parts", "Picks/job009/particles.star", "--diameters",
                                           "60", *TINY]
    )
    assert not (trained / "External/job034/model.pt").exists()
    assert "--diameters" in fails("External/job036/", "tomo_train", [*tomograms, "--in_parts",
                                                                      "Picks/job009/particles.star"])
    assert "--dr_ceiling 0.5" in fails("External/job038/", "tomo_train", [*tomograms, "--dr_ceiling", "0.5"])
    assert "--dr_floor" in fails("External/job039/", "tomo_train", [*tomograms, "--dr_floor", "2"])
    # a model whose stored picking floors do not match its species
    from relion_plugins.pick.model_file import save_model

    mf = load_model(trained / TRAIN / "model.pt", picker="tomo")
    mf.meta["min_fraction"] = [0.1]
    save_model(bad / "floors.pt", mf)
    assert "1 picking floors for 2 species" in fails(
        "External/job037/", "tomo_pick", ["--in_mics", "Tomograms/job006/tomograms.star", "--model", "bad/floors.pt"]
    )
    mf = load_model(trained / TRAIN / "model.pt", picker="tomo")
    mf.meta["split_above"] = [2.0, 2.0, 2.0]
    save_model(bad / "splits.pt", mf)
    assert "3 split thresholds for 2 species" in fails(
        "External/job041/", "tomo_pick", ["--in_mics", "Tomograms/job006/tomograms.star", "--model", "bad/splits.pt"]
    )
