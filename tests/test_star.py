"""Tests for relion_plugins.relion.star and labels: edge cases, round trips, fast path == exact path."""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relion_plugins.relion import star
from relion_plugins.relion.labels import LABEL_TYPES, infer_type, label_type
from relion_plugins.relion.star import MissingBlockError, StarError, read_block, read_star, write_star

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _write(tmp_path: Path, text: str, name: str = "t.star") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode())
    return p


@contextlib.contextmanager
def fast_min_rows(n: int) -> Iterator[None]:
    old = star.FAST_MIN_ROWS
    star.FAST_MIN_ROWS = n
    try:
        yield
    finally:
        star.FAST_MIN_ROWS = old


# ----------------------------------------------------------------------------------------------
# labels


def test_label_types() -> None:
    expect = {
        "rlnMicrographName": "string",
        "rlnImageName": "string",
        "rlnCoordinateX": "double",
        "rlnCenteredCoordinateZAngst": "double",
        "rlnTomoName": "string",
        "rlnClassNumber": "int",
        "rlnOpticsGroup": "int",
        "rlnOpticsGroupName": "string",
        "rlnImageSize": "int",
        "rlnSelected": "int",
        "rlnJobIsContinue": "bool",
        "rlnJobIsTomo": "bool",
        "rlnSchemeJobHasStarted": "bool",
        "rlnSchemeEdgeIsFork": "bool",
        "rlnSchemeBooleanVariableValue": "bool",
        "rlnSchemeFloatVariableValue": "double",
        "rlnPipeLineNodeTypeLabelDepth": "int",
        "rlnClassScore": "double",
        "rlnPredictedClassScore": "double",
        "rlnMicrographCoordinates": "string",
        "rlnJobOptionValue": "string",
        "rlnNrOfSignificantSamples": "int",
        "rlnRandomSubset": "int",
    }
    for lab, kind in expect.items():
        assert label_type(lab) == kind, lab
    assert label_type("_rlnCoordinateY") == "double"
    assert label_type("rlnNoSuchLabel") is None
    assert len(LABEL_TYPES) > 600


def test_infer_type() -> None:
    assert infer_type(["1", "-2", "0"]) == "int"
    assert infer_type(["1", "2.5", "1e-30", "nan"]) == "double"
    assert infer_type(["001", "002"]) == "string"
    assert infer_type(["a", "1"]) == "string"
    assert infer_type([]) == "string"


# ----------------------------------------------------------------------------------------------
# reading edge cases

EDGE = """# version 50001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographPixelSize #3
opticsGroup1 1 0.885
'group two' 2 1e-20

# version 50001

data_
_rlnJobTypeLabel   relion.external   # a comment
_rlnJobIsContinue  1
_rlnUnknownThing   001
_rlnOtherUnknown   2.5
_rlnJobOptionValue ""

data_empty

loop_
_rlnCoordinateX #1
_rlnMicrographName #2
_rlnClassNumber #3
_rlnMysteryLabel #4

data_particles
loop_
# a comment in the header
_rlnCoordinateX #1
_rlnImageName #2
_rlnGroupName #3
_rlnMyId #4
1.5 000001@Extract/job007/Movies/mic001.mrcs "with space" 007
2 "" '"q"' 010 # trailing comment
"""


def test_edge_cases(tmp_path: Path) -> None:
    p = _write(tmp_path, EDGE)
    d = read_star(p)
    assert list(d) == ["optics", "", "empty", "particles"]
    opt = d["optics"]
    assert opt["rlnOpticsGroupName"].tolist() == ["opticsGroup1", "group two"]
    assert opt["rlnOpticsGroupName"].dtype == object
    assert opt["rlnOpticsGroup"].dtype == np.int64
    assert opt["rlnMicrographPixelSize"].tolist() == [0.885, 1e-20]
    gen = d[""]
    assert gen == {
        "rlnJobTypeLabel": "relion.external",
        "rlnJobIsContinue": True,
        "rlnUnknownThing": "001",
        "rlnOtherUnknown": 2.5,
        "rlnJobOptionValue": "",
    }
    empty = d["empty"]
    assert empty.empty and list(empty.columns) == [
        "rlnCoordinateX",
        "rlnMicrographName",
        "rlnClassNumber",
        "rlnMysteryLabel",
    ]
    assert empty.dtypes.tolist() == [np.float64, object, np.int64, object]
    parts = d["particles"]
    assert parts["rlnCoordinateX"].tolist() == [1.5, 2.0]
    assert parts["rlnImageName"].tolist() == ["000001@Extract/job007/Movies/mic001.mrcs", ""]
    assert parts["rlnGroupName"].tolist() == ["with space", '"q"']
    assert parts["rlnMyId"].tolist() == ["007", "010"]
    assert parts["rlnMyId"].dtype == object


def test_blocks_selection_and_read_block(tmp_path: Path) -> None:
    p = _write(tmp_path, EDGE)
    assert list(read_star(p, blocks=["particles", "optics"])) == ["optics", "particles"]
    assert read_block(p, "")["rlnJobIsContinue"] is True
    with pytest.raises(MissingBlockError, match="no block data_nothere") as exc:
        read_block(p, "nothere")
    assert isinstance(exc.value, KeyError) and isinstance(exc.value, StarError)


def test_selection_stops_early(tmp_path: Path) -> None:
    # everything after the optics block is garbage: a selective read must never look at it
    text = "data_optics\nloop_\n_rlnOpticsGroup\n1\n\ndata_particles\nloop_\n_rlnCoordinateX\nnot-a-number\n"
    p = _write(tmp_path, text)
    assert read_star(p, blocks=["optics"])["optics"]["rlnOpticsGroup"].tolist() == [1]
    with pytest.raises(StarError, match=r"t\.star:9: rlnCoordinateX: not a number"):
        read_star(p)


def test_relion30_without_optics(tmp_path: Path) -> None:
    text = (
        "\ndata_\n\nloop_ \n_rlnMicrographName #1 \n_rlnCoordinateX #2 \n_rlnCoordinateY #3 \n"
        "_rlnDetectorPixelSize #4 \n_rlnMagnification #5 \n"
        "Micrographs/a.mrc   100.000000   200.000000     5.000000 50000.000000 \n"
        "Micrographs/b.mrc   101.000000   201.000000     5.000000 50000.000000 \n\n"
    )
    d = read_star(_write(tmp_path, text))
    t = d[""]
    assert t["rlnCoordinateX"].tolist() == [100.0, 101.0]
    assert t["rlnMagnification"].dtype == np.float64


def test_crlf_rejected(tmp_path: Path) -> None:
    p = _write(tmp_path, "data_\r\nloop_\r\n_rlnCoordinateX\r\n1\r\n")
    with pytest.raises(StarError, match=r"t\.star:1: CR\+LF"):
        read_star(p)
    # CR+LF only inside a loop body
    p = _write(tmp_path, "data_\nloop_\n_rlnCoordinateX\n1\n2\r\n")
    with pytest.raises(StarError, match=r"t\.star:5: CR\+LF"):
        read_star(p)


def test_errors_name_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(StarError, match="no such file"):
        read_star(tmp_path / "missing.star")
    p = _write(tmp_path, "data_x\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n1 2\n3\n")
    with pytest.raises(StarError, match=r"t\.star:6: row has 1 values but the loop has 2 labels"):
        read_star(p)
    p = _write(tmp_path, 'data_x\n_rlnMicrographName "unclosed\n')
    with pytest.raises(StarError, match=r"t\.star:2: closing quote"):
        read_star(p)
    p = _write(tmp_path, "junk\n")
    with pytest.raises(StarError, match=r"t\.star:1: unexpected text"):
        read_star(p)
    p = _write(tmp_path, "data_x\n_rlnImageSize\n")
    with pytest.raises(StarError, match="no value after _rlnImageSize"):
        read_star(p)
    p = _write(tmp_path, "data_x\nloop_\n_rlnClassNumber\nabc\n")
    with pytest.raises(StarError, match=r":4: rlnClassNumber: not an integer"):
        read_star(p)
    assert read_star(_write(tmp_path, "")) == {}


def test_integral_floats_in_int_columns(tmp_path: Path) -> None:
    # other tools (pyem) write "1.000000" for integer labels; keep them as integers
    p = _write(tmp_path, "data_\nloop_\n_rlnClassNumber\n_rlnOpticsGroup\n1.000000 2\n3.0 1\n")
    t = read_star(p)[""]
    assert t["rlnClassNumber"].dtype == np.int64 and t["rlnClassNumber"].tolist() == [1, 3]


def test_loop_ends_at_blank_line_like_relion(tmp_path: Path) -> None:
    p = _write(tmp_path, "data_a\nloop_\n_rlnCoordinateX\n1\n2\n\ndata_b\nloop_\n_rlnCoordinateX\n3\n")
    d = read_star(p)
    assert d["a"]["rlnCoordinateX"].tolist() == [1.0, 2.0]
    assert d["b"]["rlnCoordinateX"].tolist() == [3.0]


# ----------------------------------------------------------------------------------------------
# writing


def test_write_format(tmp_path: Path) -> None:
    p = tmp_path / "w.star"
    df = pd.DataFrame(
        {
            "rlnCoordinateX": [1.0, 1e-30],
            "rlnClassNumber": [1, 2],
            "rlnCtfDataAreCtfPremultiplied": [True, False],
            "rlnMicrographName": pd.Series(["a b", ""], dtype=object),
        }
    )
    write_star(p, {"optics": df, "": {"rlnJobIsContinue": False, "rlnJobTypeLabel": "relion.external"}})
    text = p.read_text()
    assert text.count("# version 50001") == 2
    assert "data_optics\n" in text and "\ndata_\n" in text
    assert '1.0 1 1 "a b"\n1e-30 2 0 ""\n' in text
    assert "_rlnJobIsContinue 0\n_rlnJobTypeLabel  relion.external\n" in text
    back = read_star(p)
    pd.testing.assert_frame_equal(back["optics"], df)
    assert back[""] == {"rlnJobIsContinue": False, "rlnJobTypeLabel": "relion.external"}
    write_star(p, {"x": df}, version=None)
    assert "# version" not in p.read_text()
    write_star(p, {"x": df}, version=30001)
    assert p.read_text().startswith("\n# version 30001\n\ndata_x\n")
    assert not list(tmp_path.glob(".rp_tmp_*"))  # atomic writer left nothing behind


def test_write_int_label_from_float_column(tmp_path: Path) -> None:
    p = tmp_path / "w.star"
    write_star(p, {"": pd.DataFrame({"rlnClassNumber": [1.0, 2.0]})})
    assert "\n1\n2\n" in p.read_text()


def test_write_rejects_newline_values(tmp_path: Path) -> None:
    with pytest.raises(StarError, match="line break"):
        write_star(tmp_path / "w.star", {"": pd.DataFrame({"rlnMicrographName": ["a\nb"]})})
    assert not (tmp_path / "w.star").exists()


def test_quoting_roundtrip(tmp_path: Path) -> None:
    values = [
        "plain",
        "",
        "a b",
        "#hash",
        "_under",
        "data_x",
        "loop_",
        "'single",
        '"double',
        "it's",
        'a"b c\'d"',
        'x" y',
        "tab\there",
        ";semi",
    ]
    df = pd.DataFrame({"rlnMicrographName": values})
    p = tmp_path / "q.star"
    write_star(p, {"": df, "l": {"rlnGroupName": 'both " and \' here"'}})
    back = read_star(p)
    assert back[""]["rlnMicrographName"].tolist() == values
    assert back["l"]["rlnGroupName"] == 'both " and \' here"'


# ----------------------------------------------------------------------------------------------
# property tests: random tables of known labels round-trip exactly

_LABELS_BY_KIND = {
    k: sorted(lab for lab, t in LABEL_TYPES.items() if t == k) for k in ("int", "double", "bool", "string")
}
_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\a"), max_size=12
)


@st.composite
def tables(draw: st.DrawFn, min_rows: int = 0, max_rows: int = 20) -> pd.DataFrame:
    n = draw(st.integers(min_rows, max_rows))
    ncol = draw(st.integers(1, 6))
    cols: dict[str, pd.Series] = {}
    for _ in range(ncol):
        kind = draw(st.sampled_from(["int", "double", "bool", "string"]))
        label = draw(st.sampled_from(_LABELS_BY_KIND[kind]))
        if kind == "int":
            vals = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n))
            cols[label] = pd.Series(np.array(vals, dtype=np.int64))
        elif kind == "double":
            vals = draw(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=n, max_size=n))
            cols[label] = pd.Series(np.array(vals, dtype=np.float64))
        elif kind == "bool":
            vals = draw(st.lists(st.booleans(), min_size=n, max_size=n))
            cols[label] = pd.Series(np.array(vals, dtype=bool))
        else:
            vals = draw(st.lists(_TEXT, min_size=n, max_size=n))
            cols[label] = pd.Series(vals, dtype=object)
    return pd.DataFrame(cols, index=pd.RangeIndex(n))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(df=tables(), version=st.sampled_from([None, 30001, 50001]))
def test_roundtrip_property(tmp_path: Path, df: pd.DataFrame, version: int | None) -> None:
    p = tmp_path / "rt.star"
    listing = {c: df[c].iloc[0] for c in df.columns} if len(df) else {}
    write_star(
        p,
        {"table": df, "": {k: (v.item() if hasattr(v, "item") else v) for k, v in listing.items()}},
        version=version,
    )
    back = read_star(p)
    pd.testing.assert_frame_equal(back["table"], df)
    for k, v in listing.items():
        got = back[""][k]
        if isinstance(v, float) and math.isnan(v):
            assert math.isnan(got)
        else:
            assert got == v and type(got) is type(v.item() if hasattr(v, "item") else v)
    with fast_min_rows(1):
        pd.testing.assert_frame_equal(star._read(p, None, fast=True)["table"], df)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(df=tables(min_rows=1, max_rows=40))
def test_fast_equals_slow_property(tmp_path: Path, df: pd.DataFrame) -> None:
    p = tmp_path / "fs.star"
    write_star(p, {"a": df, "b": df})
    with fast_min_rows(1):
        fast = star._read(p, None, fast=True)
    slow = star._read(p, None, fast=False)
    for k in ("a", "b"):
        pd.testing.assert_frame_equal(fast[k], slow[k])
        pd.testing.assert_frame_equal(fast[k], df)


def test_fast_path_is_used_and_identical(tmp_path: Path) -> None:
    from star_io import make_particles

    blocks = make_particles(5000, seed=3)
    blocks["particles"].loc[7, "rlnDefocusU"] = np.nan
    blocks["particles"].loc[8, "rlnAnglePsi"] = -np.inf
    blocks["particles"].loc[9, "rlnMicrographName"] = "with space/mic.mrc"
    p = tmp_path / "particles.star"
    write_star(p, blocks)
    used = []
    orig = star._parse_body_fast

    def spy(*args: object) -> pd.DataFrame | None:
        out = orig(*args)  # type: ignore[arg-type]
        used.append(out is not None)
        return out

    star._parse_body_fast = spy  # type: ignore[assignment]
    try:
        fast = read_star(p)
    finally:
        star._parse_body_fast = orig  # type: ignore[assignment]
    assert used == [False, True]  # optics is too small for the fast path; particles used it
    slow = star._read(p, None, fast=False)
    for k in blocks:
        pd.testing.assert_frame_equal(fast[k], slow[k])
        pd.testing.assert_frame_equal(fast[k], blocks[k])


@pytest.mark.parametrize(
    ("row", "expect"),
    [
        ("1.0 'single quoted' 3", "single quoted"),  # single quotes: exact path
        ("1.0 x # comment", None),  # comment: exact path
        ('1.0 "a"b" 3', 'a"b'),  # quote not closing a token: RELION keeps reading
    ],
)
def test_fast_path_falls_back(tmp_path: Path, row: str, expect: str | None) -> None:
    ncol = 3 if expect is not None else 2
    labels = ["rlnCoordinateX", "rlnMicrographName", "rlnClassNumber"][:ncol]
    body = "\n".join(f"{i}.5 m{i} 1"[: None if ncol == 3 else -2] for i in range(30))
    text = "data_\nloop_\n" + "".join(f"_{lab}\n" for lab in labels) + body + "\n" + row + "\n"
    p = _write(tmp_path, text)
    with fast_min_rows(1):
        fast = star._read(p, None, fast=True)[""]
    slow = star._read(p, None, fast=False)[""]
    pd.testing.assert_frame_equal(fast, slow)
    if expect is not None:
        assert fast["rlnMicrographName"].iloc[-1] == expect


def test_fast_path_short_row_reports_line(tmp_path: Path) -> None:
    rows = "".join(f"{i}.5 m{i}.mrc\n" for i in range(50)) + "7.5\n"
    p = _write(tmp_path, "data_\nloop_\n_rlnCoordinateX\n_rlnMicrographName\n" + rows)
    with fast_min_rows(1), pytest.raises(StarError, match=r":55: row has 1 values"):
        star._read(p, None, fast=True)
