"""Tests for relion_plugins.relion.mrc."""

from __future__ import annotations

import os
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from relion_plugins.relion import mrc
from relion_plugins.relion.mrc import MrcError

REAL_DIR = Path("/work/shared/data/real/empiar10017_bgal/micrographs")


def _values(dtype, shape, rng):
    """Random values that fit ``dtype`` exactly."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return (rng.standard_normal(shape) * 10).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dt)


@pytest.mark.parametrize(
    "dtype, mode",
    [(np.int8, 0), (np.int16, 1), (np.float32, 2), (np.uint16, 6), (np.float16, 12)],
)
@pytest.mark.parametrize("stack", [False, True])
def test_round_trip_every_mode(tmp_path, dtype, mode, stack):
    rng = np.random.default_rng(0)
    shape = (3, 16, 20) if stack else (16, 20)
    data = _values(dtype, shape, rng)
    path = tmp_path / ("x.mrcs" if stack else "x.mrc")
    mrc.write_mrc(path, data, 1.25, stack=stack)

    info = mrc.read_header(path)
    assert info.mode == mode
    assert info.angpix == pytest.approx(1.25)
    assert info.shape == ((3, 16, 20) if stack else (1, 16, 20))
    assert info.n_images == (3 if stack else 1)
    assert info.is_stack == stack

    out, angpix = mrc.read_mrc(path)
    assert out.dtype == np.float32
    assert out.shape == shape
    assert angpix == pytest.approx(1.25)
    np.testing.assert_array_equal(out, data.astype(np.float32))

    with mrcfile.open(path) as m:  # header stats were written
        assert float(m.header.dmax) == pytest.approx(float(data.astype(np.float64).max()), rel=1e-3)
        assert float(m.header.dmin) == pytest.approx(float(data.astype(np.float64).min()), rel=1e-3)


def test_float64_written_as_float32(tmp_path):
    data = np.linspace(0, 1, 30, dtype=np.float64).reshape(5, 6)
    mrc.write_mrc(tmp_path / "a.mrc", data, 2.0)
    assert mrc.read_header(tmp_path / "a.mrc").mode == 2
    out, _ = mrc.read_mrc(tmp_path / "a.mrc")
    np.testing.assert_allclose(out, data, rtol=1e-6)


def test_float16_upcast_before_maths(tmp_path):
    # 4096 values of 60000: fine in float16 one by one, but their float16 sum overflows.
    data = np.full((64, 64), 60000, dtype=np.float16)
    mrc.write_mrc(tmp_path / "h.mrc", data, 1.0)
    out, _ = mrc.read_mrc(tmp_path / "h.mrc")
    assert out.dtype == np.float32
    assert np.isfinite(out.sum())
    assert out.mean() == pytest.approx(60000.0)
    img = mrc.read_image(tmp_path / "h.mrc", 0)
    assert img.dtype == np.float32 and img.shape == (64, 64)


def test_stack_voxel_size_is_not_multiplied_by_nz(tmp_path):
    data = np.zeros((7, 8, 8), np.float32)
    mrc.write_mrc(tmp_path / "s.mrcs", data, 1.5, stack=True)
    with mrcfile.open(tmp_path / "s.mrcs") as m:
        assert int(m.header.ispg) == 0
        assert float(m.voxel_size.z) == pytest.approx(1.5)
        assert float(m.header.cella.z) == pytest.approx(1.5)
    # A volume keeps mz = nz, so its Z pixel size is the pixel size as well.
    mrc.write_mrc(tmp_path / "v.mrc", data, 1.5)
    with mrcfile.open(tmp_path / "v.mrc") as m:
        assert int(m.header.ispg) == 1
        assert float(m.voxel_size.z) == pytest.approx(1.5)
    assert mrc.count_images(tmp_path / "v.mrc") == 1


def test_single_image_stack(tmp_path):
    mrc.write_mrc(tmp_path / "one.mrcs", np.ones((4, 5), np.float32), 1.0, stack=True)
    assert mrc.count_images(tmp_path / "one.mrcs") == 1
    assert mrc.open_stack(tmp_path / "one.mrcs").shape == (1, 4, 5)


def test_header_only_count_is_fast(tmp_path):
    path = tmp_path / "big.mrcs"
    mrc.write_mrc(path, np.zeros((50, 64, 64), np.float16), 1.0, stack=True)
    assert mrc.count_images(path) == 50
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        mrc.count_images(path)
    per_file = (time.perf_counter() - t0) / n
    assert per_file < 1e-3, per_file


def test_open_stack_and_read_image(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((5, 6, 7)).astype(np.float16)
    path = tmp_path / "p.mrcs"
    mrc.write_mrc(path, data, 1.0, stack=True)
    stack = mrc.open_stack(path)
    assert isinstance(stack, np.memmap)
    assert stack.shape == (5, 6, 7)
    assert stack.dtype == np.float16  # stays float16 in the map; callers upcast
    np.testing.assert_array_equal(np.asarray(stack[3], dtype=np.float32), data[3].astype(np.float32))
    del stack
    np.testing.assert_array_equal(mrc.read_image(path, 4), data[4].astype(np.float32))
    np.testing.assert_array_equal(mrc.read_images(path, [2, 0, 2]), data[[2, 0, 2]].astype(np.float32))
    with pytest.raises(MrcError, match="out of range"):
        mrc.read_image(path, 5)


def test_truncated_file(tmp_path):
    path = tmp_path / "t.mrc"
    mrc.write_mrc(path, np.zeros((32, 32), np.float32), 1.0)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size - 100)
    for fn in (mrc.read_mrc, mrc.read_header, mrc.open_stack, mrc.count_images):
        with pytest.raises(MrcError, match="truncated") as err:
            fn(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_garbage_file(tmp_path):
    path = tmp_path / "g.mrc"
    path.write_bytes(np.random.default_rng(2).bytes(5000))
    with pytest.raises(MrcError) as err:
        mrc.read_mrc(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    text = tmp_path / "text.mrc"
    text.write_text("data_\nloop_\n_rlnMicrographName #1\n" * 100)
    with pytest.raises(MrcError, match="not an MRC file"):
        mrc.read_header(text)
    short = tmp_path / "short.mrc"
    short.write_bytes(b"MAP \x00" * 10)
    with pytest.raises(MrcError, match="short.mrc"):
        mrc.read_mrc(short)


def test_missing_file(tmp_path):
    with pytest.raises(MrcError, match="not found"):
        mrc.read_mrc(tmp_path / "nope.mrc")
    with pytest.raises(MrcError, match="nope.mrc"):
        mrc.read_header(tmp_path / "nope.mrc")


def test_unsupported_mode(tmp_path):
    path = tmp_path / "c.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.zeros((4, 4), np.complex64))
    with pytest.raises(MrcError, match="unsupported MRC mode 4"):
        mrc.read_mrc(path)
    with pytest.raises(MrcError, match="complex"):
        mrc.write_mrc(tmp_path / "d.mrc", np.zeros((4, 4), np.complex64), 1.0)


def test_damaged_header_is_tolerated(tmp_path):
    # Wrong MAP id and machine stamp: mrcfile's strict mode refuses, we read it.
    path = tmp_path / "d.mrc"
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    mrc.write_mrc(path, data, 3.0)
    with open(path, "r+b") as fh:
        fh.seek(208)
        fh.write(b"XXXX\x00\x00\x00\x00")
    out, angpix = mrc.read_mrc(path)
    np.testing.assert_array_equal(out, data)
    assert angpix == pytest.approx(3.0)


def test_unset_pixel_size(tmp_path):
    path = tmp_path / "u.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.zeros((4, 4), np.float32))
        m.header.cella.x = 0
    assert mrc.read_mrc(path)[1] == 0.0


def test_nan_detection(tmp_path):
    data = np.zeros((8, 8), np.float32)
    data[3, 4] = np.nan
    data[0, 0] = np.inf
    path = tmp_path / "n.mrc"
    mrc.write_mrc(path, data, 1.0)
    with pytest.raises(MrcError, match="2 NaN/Inf"):
        mrc.read_mrc(path)
    out, _ = mrc.read_mrc(path, require_finite=False)
    assert np.isnan(out[3, 4])
    with pytest.raises(MrcError, match="somewhere"):
        mrc.check_finite(data, "somewhere")
    mrc.check_finite(np.full(4, 3e38, np.float32))  # finite values whose float32 sum would overflow
    mrc.check_finite(np.zeros(4, np.int16))


def test_atomic_write_leaves_nothing_on_error(tmp_path, monkeypatch):
    def boom(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(mrcfile.mrcobject.MrcObject, "set_image_stack", boom)
    target = tmp_path / "out" / "a.mrcs"
    with pytest.raises(RuntimeError, match="disk on fire"):
        mrc.write_mrc(target, np.zeros((2, 4, 4), np.float32), 1.0, stack=True)
    assert os.listdir(target.parent) == []

    # An existing file survives a failed overwrite untouched.
    monkeypatch.undo()
    mrc.write_mrc(target, np.ones((2, 4, 4), np.float32), 1.0, stack=True)
    monkeypatch.setattr(mrcfile.mrcobject.MrcObject, "set_image_stack", boom)
    with pytest.raises(RuntimeError):
        mrc.write_mrc(target, np.zeros((2, 4, 4), np.float32), 1.0, stack=True)
    assert os.listdir(target.parent) == ["a.mrcs"]
    monkeypatch.undo()
    np.testing.assert_array_equal(mrc.read_mrc(target)[0], 1.0)


def test_parse_image_name():
    assert mrc.parse_image_name("000012@Extract/job007/mic.mrcs") == (12, "Extract/job007/mic.mrcs")
    assert mrc.parse_image_name("1@a.mrcs") == (1, "a.mrcs")
    assert mrc.parse_image_name("Movies/mic.mrc") == (0, "Movies/mic.mrc")
    for bad in ("abc@x.mrcs", "0@x.mrcs", "3@"):
        with pytest.raises(ValueError):
            mrc.parse_image_name(bad)


def test_real_empiar10017_micrograph():
    files = sorted(REAL_DIR.glob("*.mrc")) if REAL_DIR.is_dir() else []
    if not files:
        pytest.skip("EMPIAR-10017 micrographs not available")
    info = mrc.read_header(files[0])
    assert info.mode == 12 and info.shape == (1, 1024, 1024)
    assert info.angpix == pytest.approx(7.08)
    data, angpix = mrc.read_mrc(files[0])
    assert data.dtype == np.float32 and data.shape == (1024, 1024)
    assert angpix == pytest.approx(7.08)
    assert np.isfinite(data).all() and data.std() > 0


def test_big_endian_file(tmp_path):
    path = tmp_path / "be.mrc"
    data = np.arange(20, dtype=">f4").reshape(4, 5)
    with mrcfile.new(path) as m:
        m.set_data(data)
        m.voxel_size = 2.5
    out, angpix = mrc.read_mrc(path)
    np.testing.assert_array_equal(out, data.astype(np.float32))
    assert angpix == 2.5
    assert mrc.read_header(path).dtype == np.dtype(">f4")


def test_huge_extended_header_claim_fails_fast(tmp_path):
    # A header claiming a 2 GB extended header must be rejected from the file size, not allocated.
    path = tmp_path / "x.mrc"
    mrc.write_mrc(path, np.zeros((4, 4), np.float32), 1.0)
    with open(path, "r+b") as fh:
        fh.seek(92)
        fh.write(np.int32(2**31 - 1).tobytes())
    t0 = time.perf_counter()
    with pytest.raises(MrcError, match="truncated"):
        mrc.read_mrc(path)
    assert time.perf_counter() - t0 < 0.1
