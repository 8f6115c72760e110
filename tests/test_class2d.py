"""Reading 2D classification results (relion/class2d.py), RELION 3.0 / 3.1 / 4.0 / 5.0 layouts.

The small jobs here are written the way RELION's ``MlModel::write`` / ``MlOptimiser::write`` write them
(block and label names from ``src/ml_model.cpp`` and ``src/ml_optimiser.cpp``). One integration test runs
Debian's RELION 3.1 ``relion_refine`` on a simulated particle stack and reads what it wrote.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from relion_plugins.rank.features import job_features
from relion_plugins.rank.selection import percent_per_resolution
from relion_plugins.relion.class2d import Class2DError, find_class2d_files, read_class2d, resolution_from_ssnr
from relion_plugins.relion.mrc import read_header, write_mrc
from relion_plugins.relion.star import read_star, write_star

JOB = "Class2D/job010"
ANGPIX = 2.0
BOX = 32


def write_job(
    project: Path,
    it: int = 25,
    root: str = "run",
    version: int = 4,
    k: int = 3,
    n_parts: int = 60,
    vdam: bool = False,
    optimiser: bool = True,
    translations_px: bool = False,
    old_data: bool = False,
    seed: int = 0,
) -> str:
    """Write one iteration of a fake Class2D job; return its file root relative to the project."""
    rng = np.random.default_rng(seed)
    job = project / JOB
    job.mkdir(parents=True, exist_ok=True)
    base = f"{JOB}/{root}_it{it:03d}"
    star_version = 50001 if version >= 5 else 30001
    stack = rng.normal(size=(k, BOX, BOX)).astype(np.float32)
    write_mrc(project / f"{base}_classes.mrcs", stack, ANGPIX, stack=True)

    numbers = (np.arange(n_parts) % k) + 1
    dist = np.bincount(numbers, minlength=k + 1)[1:] / n_parts
    general = {
        "rlnReferenceDimensionality": 2,
        "rlnDataDimensionality": 2,
        "rlnOriginalImageSize": BOX,
        "rlnCurrentResolution": 12.0,
        "rlnCurrentImageSize": 24,
        "rlnPaddingFactor": 2.0,
        "rlnIsHelix": 0,
        "rlnFourierSpaceInterpolator": 1,
        "rlnMinRadiusNnInterpolation": 10,
        "rlnPixelSize": ANGPIX,
        "rlnNrClasses": k,
        "rlnNrBodies": 1,
        "rlnNrGroups": 1,
        "rlnTau2FudgeFactor": 2.0,
        "rlnNormCorrectionAverage": 0.8,
        "rlnSigmaOffsetsAngst": 5.0,
        "rlnOrientationalPriorMode": 0,
        "rlnSigmaPriorRotAngle": 0.0,
        "rlnSigmaPriorTiltAngle": 0.0,
        "rlnSigmaPriorPsiAngle": 0.0,
        "rlnLogLikelihood": 1.0e5,
        "rlnAveragePmax": 0.5,
    }
    if version >= 4:
        general["rlnNrOpticsGroups"] = 1
    classes = pd.DataFrame(
        {
            "rlnReferenceImage": pd.Series(
                [f"{i + 1:06d}@{base}_classes.mrcs" for i in range(k)], dtype=object
            ),
            "rlnClassDistribution": dist,
            "rlnAccuracyRotations": np.linspace(2, 4, k),
            "rlnAccuracyTranslationsAngst": np.linspace(1, 2, k),
            "rlnEstimatedResolution": np.linspace(10, 20, k),
            "rlnOverallFourierCompleteness": np.ones(k),
            "rlnClassPriorOffsetX": np.zeros(k),
            "rlnClassPriorOffsetY": np.zeros(k),
        }
    )
    if vdam:
        classes.insert(1, "rlnGradMoment1", pd.Series([f"{i + 1:06d}@{base}_1moment.mrcs" for i in range(k)]))
        classes.insert(2, "rlnGradMoment2", pd.Series([f"{i + 1:06d}@{base}_2moment.mrcs" for i in range(k)]))
    if translations_px:  # RELION 3.0 and older
        classes = classes.rename(columns={"rlnAccuracyTranslationsAngst": "rlnAccuracyTranslations"})
        classes["rlnAccuracyTranslations"] /= ANGPIX
    blocks: dict = {"model_general": general, "model_classes": classes}
    shells = BOX // 2 + 1
    for i in range(k):
        index = np.arange(shells)
        blocks[f"model_class_{i + 1}"] = pd.DataFrame(
            {
                "rlnSpectralIndex": index,
                "rlnResolution": index / (BOX * ANGPIX),
                "rlnAngstromResolution": np.where(index > 0, BOX * ANGPIX / np.maximum(index, 1), 999.0),
                "rlnSsnrMap": np.maximum(30.0 - 3.0 * (i + 1) * index, 0.0),
            }
        )
    blocks["model_groups"] = pd.DataFrame(
        {
            "rlnGroupNumber": [1],
            "rlnGroupName": ["group_1"],
            "rlnGroupNrParticles": [n_parts],
            "rlnGroupScaleCorrection": [1.0],
        }
    )
    noise_block = "model_optics_group_1" if version >= 4 else "model_group_1"
    blocks[noise_block] = pd.DataFrame(
        {"rlnSpectralIndex": np.arange(shells), "rlnSigma2Noise": np.ones(shells)}
    )
    write_star(project / f"{base}_model.star", blocks, star_version)

    particles = pd.DataFrame(
        {
            "rlnCoordinateX": rng.uniform(0, 500, n_parts),
            "rlnCoordinateY": rng.uniform(0, 500, n_parts),
            "rlnImageName": pd.Series(
                [f"{i + 1:06d}@Extract/job005/mic.mrcs" for i in range(n_parts)], dtype=object
            ),
            "rlnMicrographName": pd.Series(["mic.mrc"] * n_parts, dtype=object),
            "rlnClassNumber": numbers,
            "rlnAnglePsi": rng.uniform(0, 360, n_parts),
            "rlnOriginXAngst": np.zeros(n_parts),
            "rlnOriginYAngst": np.zeros(n_parts),
        }
    )
    if old_data:
        write_star(project / f"{base}_data.star", {"": particles}, None)
    else:
        particles["rlnOpticsGroup"] = 1
        optics = pd.DataFrame(
            {
                "rlnOpticsGroupName": pd.Series(["opticsGroup1"], dtype=object),
                "rlnOpticsGroup": [1],
                "rlnImagePixelSize": [ANGPIX],
                "rlnImageSize": [BOX],
                "rlnImageDimensionality": [2],
            }
        )
        write_star(project / f"{base}_data.star", {"optics": optics, "particles": particles}, star_version)

    if optimiser:
        opt = {
            "rlnOutputRootName": f"{JOB}/{root}",
            "rlnModelStarFile": f"{base}_model.star",
            "rlnExperimentalDataStarFile": f"{base}_data.star",
            "rlnOrientSamplingStarFile": f"{base}_sampling.star",
            "rlnCurrentIteration": it,
            "rlnNumberOfIterations": it,
            "rlnParticleDiameter": 50.0,
            "rlnDoCorrectCtf": 1,
            "rlnDoStochasticGradientDescent": int(vdam),
        }
        path = project / f"{base}_optimiser.star"
        write_star(path, {"optimiser_general": opt}, star_version)
        text = path.read_text()
        path.write_text(f"# RELION optimiser; version {version}.0.1\n# --o {JOB}/{root}\n" + text)
    return base


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # RELION runs in the project directory; so do the tests
    return tmp_path


# ----------------------------------------------------------------------------------------------------
# finding files


@pytest.mark.parametrize("version", [4, 5])
def test_read_relion4_and_5_job_from_any_entry_point(project: Path, version: int):
    base = write_job(project, version=version)
    results = [
        read_class2d(JOB),
        read_class2d(f"{base}_optimiser.star"),
        read_class2d(f"{base}_model.star"),
        read_class2d(project / f"{base}_data.star"),
    ]
    for r in results:
        assert r.files.model_star == (project / f"{base}_model.star").resolve()
        assert r.files.data_star == (project / f"{base}_data.star").resolve()
        assert r.files.project_dir == project.resolve()
        assert r.iteration == 25 and r.n_classes == 3 and r.box_size == BOX and r.angpix == ANGPIX
        assert r.particle_diameter_A == 50.0 and r.do_ctf_correction is True
        assert r.star_version == (50001 if version == 5 else 30001)
        assert r.relion_version == f"{version}.0.1"
        assert r.class_counts().tolist() == [20, 20, 20]
        np.testing.assert_allclose(r.expected_counts(), [20, 20, 20])
        assert r.distribution.sum() == pytest.approx(1.0)
        assert r.is_vdam is False
    avgs = results[0].averages
    assert isinstance(avgs, np.memmap) and avgs.shape == (3, BOX, BOX)
    np.testing.assert_array_equal(results[0].class_average(2), np.asarray(avgs[1], dtype=np.float32))


def test_project_dir_found_from_elsewhere(project: Path, tmp_path_factory: pytest.TempPathFactory):
    write_job(project)
    os.chdir(tmp_path_factory.mktemp("elsewhere"))
    r = read_class2d(project / JOB)
    assert r.files.project_dir == project.resolve()
    assert r.averages.shape == (3, BOX, BOX)
    # Relative paths are taken relative to an explicit project directory.
    assert read_class2d(JOB, project_dir=project).files.model_star.is_file()


def test_last_iteration_vdam_and_continue_names(project: Path):
    write_job(project, it=100, vdam=True)
    write_job(project, it=200, vdam=True, seed=1)
    r = read_class2d(JOB)
    assert r.files.root == "run_it200" and r.iteration == 200 and r.is_vdam
    assert "rlnGradMoment1" in r.classes.columns
    # A continued run (run_ct25_it030) goes on from iteration 25; its last iteration wins.
    shutil.rmtree(project / JOB)
    write_job(project, it=25, root="run")
    write_job(project, it=30, root="run_ct25", seed=3)
    r = read_class2d(JOB)
    assert r.files.root == "run_ct25_it030" and r.iteration == 30
    # Same iteration written by the original run and by a continuation: the continuation is newer.
    write_job(project, it=30, root="run_ct25_ct28", seed=4)
    assert read_class2d(JOB).files.root == "run_ct25_ct28_it030"


def test_relion31_layout_and_pre31_translations(project: Path):
    """3.1: no rlnNrOpticsGroups, data_model_group_N noise blocks. 3.0: translations in pixels, one data block."""
    base = write_job(project, version=3)
    r = read_class2d(f"{base}_model.star")
    assert "rlnNrOpticsGroups" not in r.general and r.optics is not None
    shutil.rmtree(project / JOB)
    base = write_job(project, version=3, translations_px=True, old_data=True, optimiser=False)
    r = read_class2d(f"{base}_data.star")
    np.testing.assert_allclose(r.accuracy_translation_A, np.linspace(1, 2, 3))  # pixels x 2 Å
    assert r.optics is None and r.particle_diameter_A is None and r.relion_version is None
    assert r.class_counts().sum() == 60


def test_estimated_resolution_fallback_from_ssnr(project: Path):
    base = write_job(project)
    model = project / f"{base}_model.star"
    blocks = read_star(model)
    blocks["model_classes"] = blocks["model_classes"].drop(columns=["rlnEstimatedResolution"])
    write_star(model, blocks)
    r = read_class2d(JOB)
    assert (r.resolution_A == 0).all()
    # Class 1: SSNR 30 - 3 i first < 1 at i = 10 -> resolution of shell 9 = 64 / 9 Å.
    np.testing.assert_allclose(r.estimated_resolution(), [64 / 9, 64 / 4, 64 / 3])
    assert resolution_from_ssnr([5, 4, 3, 2], [999, 20, 10, 5], 1.5) == 3.0  # never below 1: Nyquist
    assert resolution_from_ssnr([5, 0.5, 3], [999, 20, 10], 1.5) == 999.0
    assert r.spectrum(2)["rlnSsnrMap"].iloc[1] == 24.0


def test_a_select_job_optimiser_points_at_its_own_model(project: Path):
    """rank_optimiser.star names rank_model.star / rank_data.star, not siblings with its own root."""
    base = write_job(project)
    sel = project / "Select/job011"
    sel.mkdir(parents=True)
    shutil.copy(project / f"{base}_model.star", sel / "rank_model.star")
    shutil.copy(project / f"{base}_data.star", sel / "rank_data.star")
    opt = read_star(project / f"{base}_optimiser.star")["optimiser_general"]
    opt["rlnModelStarFile"] = "Select/job011/rank_model.star"
    opt["rlnExperimentalDataStarFile"] = "Select/job011/rank_data.star"
    write_star(sel / "rank_optimiser.star", {"optimiser_general": opt})
    files = find_class2d_files("Select/job011/rank_optimiser.star")
    assert files.model_star == (sel / "rank_model.star").resolve()
    assert files.data_star == (sel / "rank_data.star").resolve()
    assert files.iteration is None and files.root == "rank"


# ----------------------------------------------------------------------------------------------------
# errors


def one_line_error(call, match: str) -> str:
    with pytest.raises(Class2DError, match=match) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, ValueError)
    return message


def test_missing_files(project: Path):
    one_line_error(lambda: read_class2d("Class2D/job999"), "no such file")
    (project / JOB).mkdir(parents=True)
    one_line_error(lambda: read_class2d(JOB), "no run_itNNN_model.star")
    one_line_error(lambda: read_class2d(project / "notes.txt"), "no such file")
    (project / "notes.txt").write_text("x")
    one_line_error(lambda: read_class2d("notes.txt"), "not a 2D classification file")
    base = write_job(project)
    (project / f"{base}_classes.mrcs").unlink()
    one_line_error(lambda: read_class2d(JOB), "MRC file not found")
    assert read_class2d(JOB, check_images=False).n_classes == 3  # images only mapped when used
    base = write_job(project)
    (project / f"{base}_data.star").unlink()
    one_line_error(lambda: read_class2d(JOB), "no data STAR")
    assert read_class2d(JOB, particles=False).particles is None
    base = write_job(project)
    (project / f"{base}_model.star").unlink()
    one_line_error(lambda: read_class2d(f"{base}_data.star"), "rlnModelStarFile .* not found")
    (project / f"{base}_optimiser.star").unlink()
    one_line_error(lambda: read_class2d(f"{base}_data.star"), "model STAR file .* not found beside it")


def test_missing_labels_and_inconsistent_counts(project: Path):
    base = write_job(project)
    model = project / f"{base}_model.star"
    good = read_star(model)

    def rewrite(**changes):
        blocks = {name: (b.copy() if isinstance(b, pd.DataFrame) else dict(b)) for name, b in good.items()}
        for name, fn in changes.items():
            blocks[name] = fn(blocks[name])
        write_star(model, blocks)

    rewrite(model_classes=lambda t: t.drop(columns=["rlnClassDistribution"]))
    one_line_error(lambda: read_class2d(JOB), "lacks rlnClassDistribution")
    rewrite(model_classes=lambda t: t.drop(columns=["rlnAccuracyTranslationsAngst"]))
    one_line_error(lambda: read_class2d(JOB), "neither rlnAccuracyTranslationsAngst")
    rewrite(model_general=lambda g: {**g, "rlnNrClasses": 4})
    one_line_error(lambda: read_class2d(JOB), "rlnNrClasses is 4 but data_model_classes has 3 rows")
    rewrite(model_general=lambda g: {k: v for k, v in g.items() if k != "rlnPixelSize"})
    one_line_error(lambda: read_class2d(JOB), "lacks rlnPixelSize")
    rewrite(model_general=lambda g: {**g, "rlnReferenceDimensionality": 3})
    one_line_error(lambda: read_class2d(JOB), "expected a 2D classification")
    rewrite(model_general=lambda g: {**g, "rlnNrOpticsGroups": 2})
    one_line_error(lambda: read_class2d(JOB), "rlnNrOpticsGroups 2")
    rewrite(model_general=lambda g: {**g, "rlnOriginalImageSize": 40})
    one_line_error(lambda: read_class2d(JOB), "rlnOriginalImageSize 40")
    rewrite(
        model_classes=lambda t: t.assign(
            rlnReferenceImage=[f"{i:06d}@{base}_classes.mrcs" for i in (1, 2, 5)]
        )
    )
    one_line_error(lambda: read_class2d(JOB), "refers to image 5")
    rewrite(model_classes=lambda t: t.assign(rlnClassDistribution=[0.5, np.nan, 0.5]))
    one_line_error(lambda: read_class2d(JOB), "non-finite")
    rewrite()
    data = project / f"{base}_data.star"
    blocks = read_star(data)
    blocks["particles"].loc[3, "rlnClassNumber"] = 7
    write_star(data, blocks)
    one_line_error(lambda: read_class2d(JOB), "rlnClassNumber 7 outside 1..3")
    blocks["particles"] = blocks["particles"].drop(columns=["rlnClassNumber"])
    write_star(data, blocks)
    one_line_error(lambda: read_class2d(JOB), "no rlnClassNumber")
    (project / f"{base}_model.star").write_text("data_model_general\n_rlnNrClasses 3 4\n")
    one_line_error(lambda: read_class2d(JOB), "more than one value")


# ----------------------------------------------------------------------------------------------------
# real RELION 3.1


@pytest.mark.relion
def test_real_relion_2d_classification_reads_back(real_class2d):
    root, n_extracted = real_class2d.root, real_class2d.n_extracted
    assert 100 <= n_extracted <= 250
    print(
        f"relion_refine 2D, {n_extracted} particles, K=3, 4 iterations: {real_class2d.refine_seconds:.1f} s"
    )

    r = read_class2d(root / "Class2D/job005")
    assert r.iteration == 4 and r.files.root == "run_it004"
    assert r.relion_version is not None and r.relion_version.startswith("3.1")
    assert r.star_version == 30001
    assert r.n_classes == 3 and r.box_size == 64
    assert r.angpix == pytest.approx(4.5)  # 3 Å/px x 96 / 64
    assert read_header(r.reference_paths()[0][1]).angpix == pytest.approx(4.5)
    assert r.particle_diameter_A == pytest.approx(180.0)
    assert r.averages.shape == (3, 64, 64) and np.isfinite(r.class_averages()).all()
    assert r.distribution.sum() == pytest.approx(1.0, abs=1e-4)
    counts = r.class_counts()
    assert counts.sum() == r.n_particles == n_extracted
    assert counts.tolist() == [int((r.particles["rlnClassNumber"] == c).sum()) for c in (1, 2, 3)]
    # Hard counts and soft distribution agree roughly.
    assert np.abs(counts - r.expected_counts()).max() <= max(5.0, 0.15 * n_extracted)
    for entry in ("run_it004_optimiser.star", "run_it004_data.star", "run_it004_model.star"):
        same = read_class2d(root / "Class2D/job005" / entry)
        np.testing.assert_array_equal(same.distribution, r.distribution)

    res = r.estimated_resolution()
    assert (res > 0).all()
    pres, reasons = percent_per_resolution(r.distribution, res)
    assert np.isfinite(pres).all() and (pres >= 0).all()
    np.testing.assert_allclose(
        pres[[not why for why in reasons]], (100 * r.distribution / res)[[not why for why in reasons]]
    )
    jf = job_features(
        r.averages, r.angpix, r.particle_diameter_A, r.distribution, r.n_particles, res,
        r.accuracy_rotation, r.accuracy_translation_A,
    )  # fmt: skip
    assert jf.images.shape == (3, 64, 64) and np.isfinite(jf.images).all()
    assert jf.scored.tolist() == (r.expected_counts() > 10).tolist()
    assert jf.scored.any()
    assert np.isfinite(jf.raw[jf.scored]).all() and np.isfinite(jf.normalized[jf.scored]).all()
    biggest = int(np.argmax(r.distribution))
    assert jf.details[biggest] is not None and jf.details[biggest].protein_area > 0
