"""Tests for relion_plugins.relion.coords, including a real RELION 3.1 extraction."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from relion_plugins.relion.coords import (
    coordinate_path,
    micrograph_post,
    read_coordinate_list,
    read_coordinates,
    read_particle_coordinates,
    read_topaz_txt,
    write_coordinate_list,
    write_coordinates,
    write_topaz_txt,
)
from relion_plugins.relion.star import StarError, read_star, write_star


@pytest.mark.parametrize(
    ("mic", "expected"),
    [
        ("MotionCorr/job002/Movies/mic001.mrc", "External/job012/Movies/mic001_pick.star"),
        ("MotionCorr/job002/mic001.mrc", "External/job012/mic001_pick.star"),
        ("Import/job001/Movies/sub/a.b.mrc", "External/job012/Movies/sub/a.b_pick.star"),
        ("Micrographs/mic002.mrc", "External/job012/Micrographs/mic002_pick.star"),
        ("mic003.tiff", "External/job012/mic003_pick.star"),
        ("/data/raw/mic004.mrc", "External/job012/data/raw/mic004_pick.star"),
        ("job003/x.mrc", "External/job012/x_pick.star"),
        ("MotionCorr/job002/Movies/job004/y.mrc", "External/job012/Movies/job004/y_pick.star"),
        ("Data/job12/z.mrc", "External/job012/Data/job12/z_pick.star"),
    ],
)
def test_coordinate_path(mic: str, expected: str) -> None:
    assert coordinate_path("External/job012", mic, "pick") == Path(expected)
    assert coordinate_path("External/job012/", mic, "_pick.star") == Path(expected)


def test_micrograph_post_no_extension() -> None:
    assert micrograph_post("MotionCorr/job002/Movies/mic") == "Movies/mic"


def test_write_coordinates_defaults(tmp_path: Path) -> None:
    p = tmp_path / "Movies" / "a_pick.star"
    write_coordinates(p, pd.DataFrame({"x": [10.5, 20.0], "y": [30.0, 40.25], "fom": [0.5, 1e-7]}))
    text = p.read_text()
    assert "data_\n" in text and "loop_" in text
    blocks = read_star(p)
    assert list(blocks) == [""]
    t = blocks[""]
    assert list(t.columns) == [
        "rlnCoordinateX",
        "rlnCoordinateY",
        "rlnAutopickFigureOfMerit",
        "rlnClassNumber",
        "rlnAnglePsi",
    ]
    assert t["rlnClassNumber"].tolist() == [0, 0]
    assert t["rlnAnglePsi"].tolist() == [0.0, 0.0]
    assert t["rlnAutopickFigureOfMerit"].tolist() == [0.5, 1e-7]
    back = read_coordinates(p)
    assert back["rlnCoordinateX"].tolist() == [10.5, 20.0]


def test_write_coordinates_needs_xy(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_coordinates(tmp_path / "a.star", pd.DataFrame({"x": [1.0]}))


def test_write_coordinate_list(tmp_path: Path) -> None:
    job = tmp_path / "External" / "job012"
    pairs = [
        ("MotionCorr/job002/Movies/mic001.mrc", "External/job012/Movies/mic001_pick.star"),
        ("MotionCorr/job002/Movies/mic002.mrc", "External/job012/Movies/mic002_pick.star"),
    ]
    out = write_coordinate_list(job, pairs, name="pick", mics_star="CtfFind/job003/micrographs_ctf.star")
    assert out == job / "pick.star"
    table = read_star(out)["coordinate_files"]
    assert table.values.tolist() == [list(p) for p in pairs]
    assert (job / "coords_suffix_pick.star").read_text() == "CtfFind/job003/micrographs_ctf.star\n"
    # without mics_star no legacy file
    write_coordinate_list(job, pairs, name="other")
    assert not (job / "coords_suffix_other.star").exists()


def test_read_coordinate_list_missing_file_warns(tmp_path: Path) -> None:
    job = tmp_path / "External" / "job012"
    mic1, mic2 = "MotionCorr/job002/Movies/mic001.mrc", "MotionCorr/job002/Movies/mic002.mrc"
    c1 = coordinate_path("External/job012", mic1, "pick")
    write_coordinates(tmp_path / c1, pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0], "fom": [0.1, 0.2]}))
    c2 = coordinate_path("External/job012", mic2, "pick")
    lst = write_coordinate_list(job, [(mic1, c1), (mic2, c2)], name="pick", mics_star="mics.star")
    with pytest.warns(UserWarning, match="does not exist"):
        got = read_coordinate_list(lst, project_dir=tmp_path)
    assert list(got) == [mic1, mic2]
    assert got[mic1]["rlnCoordinateY"].tolist() == [3.0, 4.0]
    assert got[mic2].empty and "rlnCoordinateX" in got[mic2].columns

    # legacy coords_suffix file resolves through the micrographs STAR
    write_star(tmp_path / "mics.star", {"micrographs": pd.DataFrame({"rlnMicrographName": [mic1]})})
    legacy = read_coordinate_list(job / "coords_suffix_pick.star", project_dir=tmp_path)
    assert list(legacy) == [mic1] and len(legacy[mic1]) == 2


def test_read_box(tmp_path: Path) -> None:
    p = tmp_path / "a.box"
    p.write_text("10\t20\t64\t64\n100 200 64 32\n")
    t = read_coordinates(p)
    assert t["rlnCoordinateX"].tolist() == [42.0, 132.0]
    assert t["rlnCoordinateY"].tolist() == [52.0, 216.0]


def test_read_plain_text(tmp_path: Path) -> None:
    p = tmp_path / "a.coords"
    p.write_text("x y\n1 2\n3.5 4\n")
    t = read_coordinates(p)
    assert t[["rlnCoordinateX", "rlnCoordinateY"]].values.tolist() == [[1.0, 2.0], [3.5, 4.0]]
    p.write_text("1 2 3\n4 5 6\n")
    t = read_coordinates(p)
    assert t["rlnCoordinateZ"].tolist() == [3.0, 6.0]
    p.write_text("")
    assert read_coordinates(p).empty
    p.write_text("1 2\nfoo bar\n")
    with pytest.raises(StarError, match=":2:"):
        read_coordinates(p)


def test_topaz_roundtrip(tmp_path: Path) -> None:
    p = tmp_path / "topaz.txt"
    p.write_text(
        "image_name\tx_coord\ty_coord\tscore\nmic1\t10\t20\t1.5\nmic1\t30\t40\t-0.5\nmic2\t5\t6\t2\n"
    )
    t = read_coordinates(p)
    assert t["rlnMicrographName"].tolist() == ["mic1", "mic1", "mic2"]
    assert t["rlnAutopickFigureOfMerit"].tolist() == [1.5, -0.5, 2.0]
    one = tmp_path / "one.txt"
    write_topaz_txt(one, t[t["rlnMicrographName"] == "mic1"], image_name="mic1")
    back = read_coordinates(one)
    assert "rlnMicrographName" not in back.columns  # a single image: plain coordinates
    assert back["rlnCoordinateX"].tolist() == [10.0, 30.0]
    assert read_topaz_txt(one)["rlnMicrographName"].tolist() == ["mic1", "mic1"]


def _particles_star(path: Path, origins: bool = True) -> None:
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["g1", "g2"],
            "rlnOpticsGroup": [1, 2],
            "rlnMicrographPixelSize": [1.0, 2.0],
            "rlnImagePixelSize": [4.0, 4.0],
            "rlnImageSize": [64, 64],
        }
    )
    parts = pd.DataFrame(
        {
            "rlnCoordinateX": [100.0, 200.0, 300.0],
            "rlnCoordinateY": [10.0, 20.0, 30.0],
            "rlnImageName": [
                "000001@Extract/job007/Movies/a.mrcs",
                "000002@Extract/job007/Movies/a.mrcs",
                "000001@Extract/job007/Movies/b.mrcs",
            ],
            "rlnMicrographName": [
                "MotionCorr/job002/Movies/a.mrc",
                "MotionCorr/job002/Movies/a.mrc",
                "MotionCorr/job002/Movies/b.mrc",
            ],
            "rlnOpticsGroup": [1, 1, 2],
        }
    )
    if origins:
        parts["rlnOriginXAngst"] = [4.0, -2.0, 8.0]
        parts["rlnOriginYAngst"] = [0.0, 1.0, -4.0]
    write_star(path, {"optics": optics, "particles": parts})


def test_read_particle_coordinates(tmp_path: Path) -> None:
    p = tmp_path / "particles.star"
    _particles_star(p)
    got = read_particle_coordinates(p)
    assert list(got) == ["MotionCorr/job002/Movies/a.mrc", "MotionCorr/job002/Movies/b.mrc"]
    assert got["MotionCorr/job002/Movies/a.mrc"]["rlnCoordinateX"].tolist() == [100.0, 200.0]
    rec = read_particle_coordinates(p, recenter=True)
    # centre = coordinate - origin(Å) / micrograph pixel size (group 1: 1 Å, group 2: 2 Å)
    a = rec["MotionCorr/job002/Movies/a.mrc"]
    assert a["rlnCoordinateX"].tolist() == [96.0, 202.0]
    assert a["rlnCoordinateY"].tolist() == [10.0, 19.0]
    b = rec["MotionCorr/job002/Movies/b.mrc"]
    assert b["rlnCoordinateX"].tolist() == [296.0] and b["rlnCoordinateY"].tolist() == [32.0]
    assert (a["rlnOriginXAngst"] == 0).all()


def test_read_particle_coordinates_relion30(tmp_path: Path) -> None:
    p = tmp_path / "old.star"
    p.write_text(
        "data_\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnMicrographName\n_rlnOriginX\n_rlnOriginY\n"
        "10 20 m1.mrc 1.5 -2\n30 40 m2.mrc 0 0\n"
    )
    got = read_particle_coordinates(p, recenter=True)
    assert got["m1.mrc"][["rlnCoordinateX", "rlnCoordinateY"]].values.tolist() == [[8.5, 22.0]]


# ----------------------------------------------------------------------------------------------
# real RELION 3.1 extraction from our coordinate files


def _write_mrc(path: Path, data: np.ndarray, angpix: float) -> None:
    mrcfile = pytest.importorskip("mrcfile")
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(str(path), overwrite=True) as m:
        m.set_data(data.astype(np.float32))
        m.voxel_size = angpix


@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_preprocess") is None, reason="relion_preprocess not on PATH")
def test_relion31_extract_finds_our_coordinates(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # a micrograph under a job dir, one under a plain dir, and one given by its absolute path
    mics = [
        "MotionCorr/job002/Movies/mic001.mrc",
        "Micrographs/mic002.mrc",
        str(tmp_path / "Abs" / "mic003.mrc"),
    ]
    picks = {
        mics[0]: pd.DataFrame({"x": [64.0, 128.0, 190.0], "y": [64.0, 128.0, 100.0], "fom": [1.0, 2.0, 3.0]}),
        mics[1]: pd.DataFrame({"x": [80.0, 170.0], "y": [90.0, 150.0], "fom": [0.5, 0.7]}),
        mics[2]: pd.DataFrame({"x": [100.0], "y": [100.0], "fom": [0.1]}),
    }
    for m in mics:
        _write_mrc(tmp_path / m, rng.normal(size=(256, 256)), 2.0)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnMicrographOriginalPixelSize": [2.0],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
            "rlnMicrographPixelSize": [2.0],
        }
    )
    micrographs = pd.DataFrame({"rlnMicrographName": mics, "rlnOpticsGroup": [1, 1, 1]})
    write_star(tmp_path / "mics.star", {"optics": optics, "micrographs": micrographs}, version=30001)
    job = "External/job005"
    pairs = []
    for m in mics:
        c = coordinate_path(job, m, "pick")
        write_coordinates(tmp_path / c, picks[m])
        pairs.append((m, c))
    write_coordinate_list(tmp_path / job, pairs, name="pick", mics_star="mics.star")

    cmd = [
        "relion_preprocess",
        "--i", "mics.star",
        "--coord_dir", job + "/",
        "--coord_suffix", "_pick.star",
        "--part_star", "Extract/job006/particles.star",
        "--part_dir", "Extract/job006/",
        "--extract",
        "--extract_size", "32",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    parts = read_star(tmp_path / "Extract/job006/particles.star")["particles"]
    assert len(parts) == 6
    counts = {mics[0]: 3, mics[1]: 2, mics[2]: 1}
    assert parts.groupby("rlnMicrographName", sort=False).size().to_dict() == counts
    # and our reader sees the same particles, grouped the same way
    got = read_particle_coordinates(tmp_path / "Extract/job006/particles.star")
    assert {m: len(t) for m, t in got.items()} == counts
    assert got[mics[0]]["rlnCoordinateX"].tolist() == [64.0, 128.0, 190.0]

    # --recenter: RELION moves each coordinate by -origin / pixel size; so must our reader
    blocks = read_star(tmp_path / "Extract/job006/particles.star")
    p = blocks["particles"]
    p["rlnOriginXAngst"] = np.where(np.arange(len(p)) % 2 == 0, 4.0, -6.0)  # whole pixels at 2 Å/px
    p["rlnOriginYAngst"] = np.where(np.arange(len(p)) % 3 == 0, -2.0, 8.0)
    write_star(tmp_path / "refined.star", blocks)
    proc = subprocess.run(
        [*cmd[:3], "--reextract_data_star", "refined.star", "--recenter", "--part_star", "Extract/job008/particles.star", "--part_dir", "Extract/job008/", "--extract", "--extract_size", "32"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    relion = read_particle_coordinates(tmp_path / "Extract/job008/particles.star")
    ours = read_particle_coordinates(tmp_path / "refined.star", recenter=True)
    for m in mics:
        cols = ["rlnCoordinateX", "rlnCoordinateY"]
        np.testing.assert_allclose(relion[m][cols].to_numpy(), ours[m][cols].to_numpy())
        assert not np.allclose(relion[m][cols].to_numpy(), got[m][cols].to_numpy())  # it did move
