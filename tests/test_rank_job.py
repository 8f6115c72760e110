"""rp-rank-select end to end, run exactly as RELION runs it, on Class2D outputs written in the RELION 3.1,
4.0 and 5.0 layouts (classes simulated with simulate/classes.py), plus one real RELION 3.1 run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from relion_plugins.cli import run_external_like_relion
from relion_plugins.relion import external as ext
from relion_plugins.relion.labels import label_type
from relion_plugins.relion.mrc import write_mrc
from relion_plugins.relion.star import read_star, write_star
from relion_plugins.simulate.classes import ClassSimConfig, simulate_class_set, stack_classes

JOB = "External/job007/"
C2D = "Class2D/job006"
DEFAULT_WEIGHTS_OK = (
    Path(__file__).resolve().parents[1] / "relion_plugins/rank/weights/default_ranker.pt"
).is_file()


def write_class2d(
    project: Path, version: int = 4, k: int = 10, seed: int = 5, it: int = 25
) -> tuple[str, dict]:
    """A Class2D iteration of simulated classes (64 px, 4 Å/px); returns (data STAR path, truth arrays)."""
    cfg = ClassSimConfig(box=64, angpix=4.0, particle="globular")
    classes = simulate_class_set(k, seed=seed, config=cfg, n_images=(30, 120))
    s = stack_classes(classes)
    base = f"{C2D}/run_it{it:03d}"
    (project / C2D).mkdir(parents=True, exist_ok=True)
    write_mrc(project / f"{base}_classes.mrcs", s["averages"], 4.0, stack=True)
    star_version = {3: 30001, 4: 30001, 5: 50001}[version]
    general = {
        "rlnReferenceDimensionality": 2,
        "rlnDataDimensionality": 2,
        "rlnOriginalImageSize": 64,
        "rlnCurrentResolution": 10.0,
        "rlnPixelSize": 4.0,
        "rlnNrClasses": k,
        "rlnNrBodies": 1,
        "rlnNrGroups": 1,
        "rlnTau2FudgeFactor": 2.0,
    }
    if version >= 4:
        general["rlnNrOpticsGroups"] = 1
    cls = pd.DataFrame(
        {
            "rlnReferenceImage": pd.Series(
                [f"{i + 1:06d}@{base}_classes.mrcs" for i in range(k)], dtype=object
            ),
            "rlnClassDistribution": s["distribution"],
            "rlnAccuracyRotations": s["acc_rot"],
            "rlnAccuracyTranslationsAngst": s["acc_trans_A"],
            "rlnEstimatedResolution": s["resolution_A"],
            "rlnOverallFourierCompleteness": np.ones(k),
            "rlnClassPriorOffsetX": np.zeros(k),
            "rlnClassPriorOffsetY": np.zeros(k),
        }
    )
    if version >= 5:
        cls.insert(1, "rlnGradMoment1", pd.Series([f"{i + 1:06d}@{base}_1moment.mrcs" for i in range(k)]))
    noise = "model_optics_group_1" if version >= 4 else "model_group_1"
    write_star(
        project / f"{base}_model.star",
        {
            "model_general": general,
            "model_classes": cls,
            noise: pd.DataFrame({"rlnSpectralIndex": np.arange(33), "rlnSigma2Noise": np.ones(33)}),
        },
        star_version,
    )
    numbers = np.repeat(np.arange(1, k + 1), s["n_images"])
    n = len(numbers)
    rng = np.random.default_rng(seed)
    parts = pd.DataFrame(
        {
            "rlnCoordinateX": rng.uniform(50, 900, n),
            "rlnCoordinateY": rng.uniform(50, 900, n),
            "rlnImageName": pd.Series(
                [f"{i + 1:06d}@Extract/job005/parts.mrcs" for i in range(n)], dtype=object
            ),
            "rlnMicrographName": pd.Series(["MotionCorr/job002/mic.mrc"] * n, dtype=object),
            "rlnOpticsGroup": np.ones(n, dtype=np.int64),
            "rlnClassNumber": numbers,
            "rlnAnglePsi": rng.uniform(-180, 180, n),
            "rlnOriginXAngst": np.zeros(n),
            "rlnOriginYAngst": np.zeros(n),
        }
    )
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": pd.Series(["opticsGroup1"], dtype=object),
            "rlnOpticsGroup": [1],
            "rlnImagePixelSize": [4.0],
            "rlnImageSize": [64],
            "rlnImageDimensionality": [2],
        }
    )
    write_star(project / f"{base}_data.star", {"optics": optics, "particles": parts}, star_version)
    opt = {
        "rlnOutputRootName": f"{C2D}/run",
        "rlnModelStarFile": f"{base}_model.star",
        "rlnExperimentalDataStarFile": f"{base}_data.star",
        "rlnCurrentIteration": it,
        "rlnParticleDiameter": classes[0].mask_diameter_A,
        "rlnDoCorrectCtf": 1,
    }
    write_star(project / f"{base}_optimiser.star", {"optimiser_general": opt}, star_version)
    return f"{base}_data.star", s


def run_job(project: Path, args: list[str], job: str = JOB) -> str:
    return run_external_like_relion(project, job, "rp-rank-select", args, timeout=120)


def one_line_err(project: Path, job: str = JOB) -> str:
    lines = [x for x in (project / job / "run.err").read_text().splitlines() if x.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.skipif(not DEFAULT_WEIGHTS_OK, reason="default weights not built yet")
@pytest.mark.parametrize("version", [3, 4, 5])
def test_job_end_to_end(tmp_path: Path, version: int):
    data_star, truth = write_class2d(tmp_path, version)
    header = 50001 if version == 5 else 30001  # the project's RELION decides the node labels
    (tmp_path / "default_pipeline.star").write_text(f"# version {header}\n\ndata_pipeline_general\n")
    marker = run_job(tmp_path, ["--in_parts", data_star, "--recenter", "Yes" if version == 4 else "No"])
    assert marker == ext.SUCCESS, (tmp_path / JOB / "run.err").read_text()
    job = tmp_path / JOB
    model = read_star(job / "rank_model.star")["model_classes"]
    k = len(model)
    assert k == 10
    for lab in model.columns:
        assert label_type(lab) is not None, lab  # only labels RELION knows
    score, sel = model["rlnClassScore"].to_numpy(), model["rlnSelected"].to_numpy().astype(bool)
    assert ((score >= 0) & (score <= 1)).all()
    assert (sel == (score >= 0.5)).all()
    np.testing.assert_allclose(
        model["rlnParticleFigureOfMerit"], 100 * truth["distribution"] / truth["resolution_A"], rtol=1e-6
    )
    # the simulated good classes get the higher scores
    from relion_plugins.rank.training import roc_auc

    assert roc_auc(score, truth["good"]) >= 0.8
    backup = read_star(job / "backup_selection.star")[""]
    assert backup["rlnSelected"].tolist() == sel.astype(int).tolist()
    parts = read_star(job / "particles.star")
    assert set(parts) == {"optics", "particles"}
    chosen = set(np.nonzero(sel)[0] + 1)
    assert set(parts["particles"]["rlnClassNumber"]) <= chosen
    assert len(parts["particles"]) == int(truth["n_images"][sel].sum())
    if version == 4:  # recentred: origins moved, coordinates kept
        assert np.abs(parts["particles"]["rlnOriginXAngst"]).max() > 0
    else:
        assert (parts["particles"]["rlnOriginXAngst"] == 0).all()
    cav = read_star(job / "class_averages.star")[""]
    assert len(cav) == sel.sum() and "rlnPredictedClassScore" in cav.columns
    summary = read_star(job / "rank_summary.star")["rank_summary"]
    for lab, value in summary.items():
        assert label_type(lab) in ("int", "double"), lab  # relion_schemer float=read_star
        assert np.isfinite(value)
    assert summary["rlnGroupNrParticles"] == len(parts["particles"])
    assert summary["rlnNrClasses"] == sel.sum()
    assert (job / "logfile.pdf").read_bytes().startswith(b"%PDF")
    nodes = read_star(job / ext.OUTPUT_NODES)["output_nodes"]
    labels = dict(zip(nodes["rlnPipeLineNodeName"], nodes["rlnPipeLineNodeTypeLabel"]))
    want = "ParticleGroupMetadata" if version == 5 else "ParticlesData"
    assert labels[f"{JOB}particles.star"].startswith(want)
    assert labels[f"{JOB}class_averages.star"].endswith(".classaverages")
    text = (job / "rank_model.star").read_text()
    assert text.lstrip().startswith("# version 50001" if version == 5 else "# version 30001")


@pytest.mark.skipif(not DEFAULT_WEIGHTS_OK, reason="default weights not built yet")
def test_thresholds_minimums_and_retraining_labels(tmp_path: Path):
    data_star, truth = write_class2d(tmp_path, 4, seed=9)
    opt = data_star.replace("_data.star", "_optimiser.star")
    assert run_job(
        tmp_path, ["--in_parts", opt, "--min_score", "-1", "--min_pres", "1e9", "--min_classes", "3"]
    ) == (ext.SUCCESS)
    model = read_star(tmp_path / JOB / "rank_model.star")["model_classes"]
    assert model["rlnSelected"].sum() == 3
    best3 = np.argsort(-model["rlnClassScore"].to_numpy())[:3]
    assert set(np.nonzero(model["rlnSelected"].to_numpy())[0]) == set(best3)
    job2 = "External/job008/"
    assert run_job(tmp_path, ["--in_parts", data_star, "--adaptive_quantile", "0.5"], job2) == ext.SUCCESS
    summary = read_star(tmp_path / job2 / "rank_summary.star")["rank_summary"]
    assert 0 < summary["rlnPredictedClassScore"] < 1
    assert 0.3 <= summary["rlnClassDistribution"] <= 0.75

    # the job's outputs are labelled classes for `relion-plugins ranker train --from_star`
    from relion_plugins.rank.training import labelled_classes_from_star

    for name in ("rank_model.star", "backup_selection.star"):
        data, desc = labelled_classes_from_star(tmp_path / JOB / name, tmp_path)
        assert len(data) == 10 and data.images.shape == (10, 64, 64) and "rlnSelected" in desc
        assert data.good.sum() == 3
    data, desc = labelled_classes_from_star(tmp_path / JOB / "class_averages.star", tmp_path)
    assert data.good.sum() == 3 and len(data) == 10 and "membership" in desc


@pytest.mark.parametrize(
    "args, reason",
    [
        (["--in_parts", "Class2D/job099/run_it025_data.star"], "job099"),
        (["--in_parts", "@DATA@", "--model", "nothere.pt"], "nothere.pt"),
        (["--in_parts", "@DATA@", "--min_score", "2"], "--min_score"),
        (["--in_parts", "@DATA@", "--recenter", "maybe"], "--recenter"),
    ],
)
def test_bad_input_fails_with_one_line(tmp_path: Path, args: list[str], reason: str):
    data_star, _ = write_class2d(tmp_path, 4, k=3)
    args = [a.replace("@DATA@", data_star) for a in args]
    assert run_job(tmp_path, args) == ext.FAILURE
    assert reason in one_line_err(tmp_path)
    assert not (tmp_path / JOB / "particles.star").exists()


def test_missing_diameter_and_particles(tmp_path: Path):
    data_star, _ = write_class2d(tmp_path, 4, k=3)
    (tmp_path / data_star.replace("_data.star", "_optimiser.star")).unlink()
    model = data_star.replace("_data.star", "_model.star")
    assert run_job(tmp_path, ["--in_parts", model]) == ext.FAILURE
    assert "--diameter" in one_line_err(tmp_path)


@pytest.mark.relion
@pytest.mark.skipif(not DEFAULT_WEIGHTS_OK, reason="default weights not built")
def test_real_relion31_class2d(real_class2d):
    root = real_class2d.root
    marker = run_job(root, ["--in_parts", "Class2D/job005/run_it004_data.star"])
    assert marker == ext.SUCCESS, (root / JOB / "run.err").read_text()
    model = read_star(root / JOB / "rank_model.star")["model_classes"]
    assert len(model) == 3
    scored = model["rlnClassScore"] > -999
    assert scored.any()
    # all particles are true: the populated classes should look good
    big = model["rlnClassDistribution"].idxmax()
    assert model.loc[big, "rlnClassScore"] >= 0.5
    n_sel = len(read_star(root / JOB / "particles.star")["particles"])
    summary = read_star(root / JOB / "rank_summary.star")["rank_summary"]
    assert summary["rlnGroupNrParticles"] == n_sel > 0


@pytest.mark.skipif(not DEFAULT_WEIGHTS_OK, reason="default weights not built yet")
def test_duplicates_of_selected_particles_are_removed(tmp_path: Path):
    """Two picks that alignment brought onto one particle: the better-aligned one stays (30 Å default)."""
    data_star, truth = write_class2d(tmp_path, 4, seed=5)
    blocks = read_star(tmp_path / data_star)
    optics, parts = blocks["optics"], blocks["particles"]
    optics["rlnMicrographOriginalPixelSize"] = [2.0]
    parts["rlnMaxValueProbDistribution"] = 0.5
    parts["rlnMicrographName"] = [f"MotionCorr/job002/mic{i:04d}.mrc" for i in range(len(parts))]
    sel_class = int(np.argmax(truth["good"])) + 1  # a class the ranker selects
    first = parts.index[parts["rlnClassNumber"] == sel_class][0]
    twin = parts.loc[[first]].copy()
    # 20 px (40 Å) off in the micrograph, but its origin brings the refined centre within 6 Å
    twin["rlnCoordinateX"] += 20.0
    twin["rlnOriginXAngst"] = 34.0
    twin["rlnMaxValueProbDistribution"] = 0.2
    twin["rlnImageName"] = "999999@Extract/job005/parts.mrcs"
    far = twin.copy()
    far["rlnOriginXAngst"] = 0.0  # 40 Å away after alignment: not a duplicate
    far["rlnImageName"] = "999998@Extract/job005/parts.mrcs"
    parts = pd.concat([parts, twin, far], ignore_index=True)
    write_star(tmp_path / data_star, {"optics": optics, "particles": parts})
    marker = run_job(tmp_path, ["--in_parts", data_star])
    assert marker == ext.SUCCESS, (tmp_path / JOB / "run.err").read_text()
    out = read_star(tmp_path / JOB / "particles.star")["particles"]
    names = set(out["rlnImageName"])
    assert "999999@Extract/job005/parts.mrcs" not in names and "999998@Extract/job005/parts.mrcs" in names
    assert parts.loc[first, "rlnImageName"] in names
    assert "removed 1 duplicates" in (tmp_path / JOB / "run.out").read_text()
    job2 = "External/job009/"
    assert run_job(tmp_path, ["--in_parts", data_star, "--remove_duplicates", "-1"], job2) == ext.SUCCESS
    assert len(read_star(tmp_path / job2 / "particles.star")["particles"]) == len(out) + 1
