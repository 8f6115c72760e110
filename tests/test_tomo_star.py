"""RELION 5 tomography files: tomograms STAR / MRC inputs and particle coordinates in centred Å
(reference §5.6) round-trip through our reader and writer; plus the tomogram simulator's labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from relion_plugins.relion.mrc import write_mrc
from relion_plugins.relion.star import read_star, write_star
from relion_plugins.relion.tomograms import (
    CENTERED,
    TomogramsError,
    read_tomo_coordinates,
    read_tomograms,
    write_optimisation_set,
    write_tomo_particles,
)


def _project(tmp_path: Path) -> Path:
    """Two binned-by-4 tomograms in a RELION 5 tomograms STAR, as Reconstruct tomograms writes it."""
    (tmp_path / "Tomograms/job006/tomograms").mkdir(parents=True)
    for name, shape in (("TS_01", (20, 30, 40)), ("TS_02", (16, 32, 32))):
        write_mrc(tmp_path / f"Tomograms/job006/tomograms/rec_{name}.mrc", np.zeros(shape, np.float32), 6.0)
    table = pd.DataFrame(
        {
            "rlnTomoName": ["TS_01", "TS_02"],
            "rlnVoltage": [300.0, 300.0],
            "rlnSphericalAberration": [2.7, 2.7],
            "rlnAmplitudeContrast": [0.1, 0.1],
            "rlnTomoHand": [-1, -1],
            "rlnTomoTiltSeriesPixelSize": [1.5, 1.5],
            "rlnTomoTiltSeriesStarFile": ["a.star", "b.star"],
            "rlnTomoTomogramBinning": [4.0, 4.0],
            "rlnTomoSizeX": [160, 128],
            "rlnTomoSizeY": [120, 128],
            "rlnTomoSizeZ": [80, 64],
            "rlnTomoReconstructedTomogram": [
                "Tomograms/job006/tomograms/rec_TS_01.mrc",
                "Tomograms/job006/tomograms/rec_TS_02.mrc",
            ],
        }
    )
    write_star(tmp_path / "Tomograms/job006/tomograms.star", {"global": table})
    return tmp_path


def test_tomograms_star(tmp_path: Path):
    project = _project(tmp_path)
    tomos = read_tomograms("Tomograms/job006/tomograms.star", project)
    assert [t.name for t in tomos] == ["TS_01", "TS_02"]
    t = tomos[0]
    assert t.angpix == 6.0 and t.ts_angpix == 1.5 and t.binning == 4.0
    assert t.size == (160.0, 120.0, 80.0) and t.shape == (20, 30, 40)
    assert t.optics["rlnVoltage"] == 300.0


def test_centred_angstrom_convention(tmp_path: Path):
    """pixel = Å / tiltSeriesPixelSize + size / 2 (unbinned), voxel = pixel / binning."""
    t = read_tomograms("Tomograms/job006/tomograms.star", _project(tmp_path))[0]
    # the centre of the tomogram is 0 Å
    np.testing.assert_allclose(t.voxels_from_centered([[0, 0, 0]]), [[20.0, 15.0, 10.0]])
    # 30 Å = 20 unbinned pixels = 5 voxels from the centre
    np.testing.assert_allclose(t.voxels_from_centered([[30.0, -30.0, 15.0]]), [[25.0, 10.0, 12.5]])
    np.testing.assert_allclose(t.centered_from_voxels([[0, 0, 0]]), [[-120.0, -90.0, -60.0]])


def test_particles_round_trip(tmp_path: Path):
    project = _project(tmp_path)
    tomos = read_tomograms("Tomograms/job006/tomograms.star", project)
    rng = np.random.default_rng(0)
    picks = {
        "TS_01": pd.DataFrame({"x": rng.uniform(0, 40, 5), "y": rng.uniform(0, 30, 5), "z": rng.uniform(0, 20, 5),
                               "species": [1, 2, 2, 3, 1], "score": rng.random(5)}),
        "TS_02": pd.DataFrame({"x": [3.25], "y": [4.5], "z": [7.0], "species": [2], "score": [0.5]}),
    }
    out = tmp_path / "particles.star"
    write_tomo_particles(out, picks, tomos)
    blocks = read_star(out)
    assert list(blocks) == ["general", "optics", "particles"]
    assert int(blocks["general"]["rlnTomoSubTomosAre2DStacks"]) == 1
    assert blocks["optics"]["rlnTomoTiltSeriesPixelSize"].tolist() == [1.5]
    assert blocks["optics"]["rlnVoltage"].tolist() == [300.0]
    parts = blocks["particles"]
    assert "rlnCoordinateX" not in parts.columns  # RELION 5 writes centred Å only
    row = parts[parts.rlnTomoName == "TS_02"].iloc[0]
    # (3.25 * 4 - 64) * 1.5 = -76.5 Å
    assert row["rlnCenteredCoordinateXAngst"] == pytest.approx(-76.5)
    back = read_tomo_coordinates(out, tomos)
    for name, table in picks.items():
        np.testing.assert_allclose(back[name][["x", "y", "z"]].to_numpy(), table[["x", "y", "z"]].to_numpy(),
                                   atol=1e-5)
        assert back[name]["species"].tolist() == table["species"].tolist()
    write_optimisation_set(tmp_path / "optimisation_set.star", "particles.star", "tomograms.star")
    opt = read_star(tmp_path / "optimisation_set.star")[""]
    assert opt["rlnTomoParticlesFile"] == "particles.star"


def test_pixel_coordinate_fallback_and_plain_mrc(tmp_path: Path):
    project = _project(tmp_path)
    tomos = read_tomograms("Tomograms/job006/tomograms.star", project)
    old = pd.DataFrame({"rlnTomoName": ["TS_01"], "rlnCoordinateX": [80.0], "rlnCoordinateY": [40.0],
                        "rlnCoordinateZ": [8.0]})
    write_star(tmp_path / "old.star", {"particles": old})
    t = read_tomo_coordinates(tmp_path / "old.star", tomos)["TS_01"]
    assert (t.x[0], t.y[0], t.z[0], t.species[0]) == (20.0, 10.0, 2.0, 1)  # unbinned pixels / binning
    mrcs = read_tomograms("Tomograms/job006/tomograms/*.mrc", project)
    assert [m.name for m in mrcs] == ["rec_TS_01", "rec_TS_02"] and mrcs[0].angpix == 6.0
    assert mrcs[0].binning == 1.0 and mrcs[0].size == (40.0, 30.0, 20.0)
    np.testing.assert_allclose(mrcs[0].centered_from_voxels([[20, 15, 10]]), [[0, 0, 0]])


@pytest.mark.parametrize(
    "table, message",
    [
        (pd.DataFrame({"rlnTomoName": ["TS_09"], "rlnCoordinateX": [1.0], "rlnCoordinateY": [1.0],
                       "rlnCoordinateZ": [1.0]}), "not in the tomograms"),
        (pd.DataFrame({"rlnTomoName": ["TS_01"], "rlnCoordinateX": [1.0]}), "needs rlnCenteredCoordinate"),
        (pd.DataFrame({"rlnTomoName": ["TS_01"], CENTERED[0]: [np.nan], CENTERED[1]: [1.0], CENTERED[2]: [1.0]}),
         "NaN"),
        (pd.DataFrame({"rlnTomoName": ["TS_01"], CENTERED[0]: [0.0], CENTERED[1]: [1.0], CENTERED[2]: [1.0],
                       "rlnClassNumber": [0]}), "whole numbers"),
    ],
)
def test_bad_coordinates(tmp_path: Path, table: pd.DataFrame, message: str):
    project = _project(tmp_path)
    tomos = read_tomograms("Tomograms/job006/tomograms.star", project)
    write_star(tmp_path / "bad.star", {"particles": table})
    with pytest.raises(TomogramsError, match=message):
        read_tomo_coordinates(tmp_path / "bad.star", tomos)


def test_bad_tomograms(tmp_path: Path):
    project = _project(tmp_path)
    with pytest.raises(TomogramsError, match="not found"):
        read_tomograms("nothing/*.mrc", project)
    (tmp_path / "corrupt.mrc").write_bytes(b"not an mrc file")
    with pytest.raises(TomogramsError, match="cannot read tomogram"):
        read_tomograms("corrupt.mrc", project)
    write_star(tmp_path / "t.star", {"global": pd.DataFrame({"rlnTomoName": ["a"]})})
    with pytest.raises(TomogramsError, match="rlnTomoReconstructedTomogram"):
        read_tomograms("t.star", project)


def test_simulated_tomogram_labels():
    from relion_plugins.simulate.tomogram import (
        Species,
        TomogramConfig,
        noisy_sphere_labels,
        simulate_tomogram,
    )

    cfg = TomogramConfig(shape=(32, 48, 48), species=(Species("small@60", 8, "tiny"), Species("globular", 3, "big")))
    a = simulate_tomogram(cfg, seed=3)
    b = simulate_tomogram(cfg, seed=3)
    np.testing.assert_array_equal(a.volume, b.volume)
    assert a.volume.shape == (32, 48, 48) and abs(a.volume.mean()) < 1e-3
    assert set(np.unique(a.shape_labels)) == {0, 1, 2}
    # every particle's centre lies in its own shape label
    for _, r in a.particles.iterrows():
        assert a.shape_labels[int(round(r.z)), int(round(r.y)), int(round(r.x))] == r.species
    labels, coords = noisy_sphere_labels(a, seed=1, drop=0.5)
    assert len(coords) < len(a.particles)  # particles were dropped
    assert not np.array_equal(labels > 0, a.shape_labels > 0)
    none_dropped, exact = noisy_sphere_labels(a, seed=1, drop=0.0, shift=0.0, radius_range=(1.0, 1.0))
    np.testing.assert_allclose(exact[["x", "y", "z"]].to_numpy(), a.particles[["x", "y", "z"]].to_numpy())
