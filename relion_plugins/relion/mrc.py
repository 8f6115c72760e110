"""MRC / MRCS reading and writing on top of ``mrcfile``.

Design notes:

* Files are opened with ``permissive=True`` so that slightly damaged headers that RELION itself reads
  (missing ``MAP`` id, wrong machine stamp) do not stop a job, but we then run our own sanity checks
  (dimensions, mode, file size) and raise :class:`MrcError` with a one-line message naming the file.
  ``mrcfile.validate()`` is deliberately never used: it rejects valid float16 (mode 12) files.
* Data are read with ``np.fromfile`` after the header has been checked, so a garbage header can never
  make us allocate a gigantic buffer.
* Everything returned by :func:`read_mrc` / :func:`read_image` is float32; float16 is upcast before
  any arithmetic (sums of float16 overflow at 65504 and lose precision quickly).
* Writes go through :func:`relion_plugins.relion.atomic.atomic_path` (temp file + ``os.replace``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import mrcfile.utils
import numpy as np
from mrcfile.dtypes import HEADER_DTYPE

from .atomic import atomic_path

__all__ = [
    "MrcError",
    "MrcInfo",
    "SUPPORTED_MODES",
    "check_finite",
    "count_images",
    "open_stack",
    "parse_image_name",
    "read_header",
    "read_image",
    "read_images",
    "read_mrc",
    "write_mrc",
]

HEADER_BYTES = 1024

# MRC mode -> numpy dtype (native order; the file's byte order is applied separately).
SUPPORTED_MODES: dict[int, np.dtype] = {
    0: np.dtype(np.int8),
    1: np.dtype(np.int16),
    2: np.dtype(np.float32),
    6: np.dtype(np.uint16),
    12: np.dtype(np.float16),
}

# Every mode the MRC2014 standard (plus IMOD's 101) defines; used to pick the byte order.
_KNOWN_MODES = {0, 1, 2, 3, 4, 6, 12, 101}

# dtypes written as-is (anything else is converted, see write_mrc).
_WRITE_DTYPES = {np.dtype(d) for d in (np.float32, np.float16, np.int8, np.int16, np.uint16)}


class MrcError(ValueError):
    """An MRC file cannot be used; the message is one line and names the file."""


@dataclass(frozen=True)
class MrcInfo:
    """What the header of an MRC file says.

    ``shape`` is always ``(nz, ny, nx)``; ``n_images`` is ``nz`` for image stacks and 1 for a single
    image or a volume. ``is_stack`` is true for image stacks (space group 0 with nz > 1, or any
    ``.mrcs`` file, since some writers put volume space groups on particle stacks).
    """

    path: str
    shape: tuple[int, int, int]
    mode: int
    dtype: np.dtype
    angpix: float
    n_images: int
    is_stack: bool
    data_offset: int

    @property
    def nx(self) -> int:
        return self.shape[2]

    @property
    def ny(self) -> int:
        return self.shape[1]

    @property
    def nz(self) -> int:
        return self.shape[0]


def _parse_header(raw: bytes) -> tuple[np.void, str]:
    """Interpret 1024 header bytes like ``mrcfile``'s permissive mode; return (header, byte order).

    We do not call ``mrcfile.open(header_only=True)`` here: it allocates the extended header at the
    size the header claims before checking the file, so a garbage file can make it allocate up to
    2 GB. Parsing the fixed 1024 bytes with mrcfile's own header dtype is safe and ~10x faster.
    """
    header = np.frombuffer(raw, dtype=HEADER_DTYPE)[0]
    try:
        order = mrcfile.utils.byte_order_from_machine_stamp(header["machst"])
    except ValueError:
        order = "<"  # unknown machine stamp: little-endian is by far the most common
    header = np.frombuffer(raw, dtype=HEADER_DTYPE.newbyteorder(order))[0]
    if int(header["mode"]) not in _KNOWN_MODES:
        # Some writers put a wrong machine stamp on otherwise good files: try the other byte order.
        other = ">" if order == "<" else "<"
        flipped = np.frombuffer(raw, dtype=HEADER_DTYPE.newbyteorder(other))[0]
        if int(flipped["mode"]) in _KNOWN_MODES:
            header, order = flipped, other
    return header, order


def _header_info(path: str | os.PathLike) -> MrcInfo:
    """Read and sanity-check the header; raise MrcError for anything we cannot read safely.

    Tolerated (like ``mrcfile``'s permissive mode): missing ``MAP`` id, unknown or wrong machine stamp.
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            raw = fh.read(HEADER_BYTES)
            file_size = os.fstat(fh.fileno()).st_size
    except FileNotFoundError:
        raise MrcError(f"{p}: MRC file not found") from None
    except OSError as exc:
        raise MrcError(f"{p}: cannot open MRC file ({exc.strerror or exc})") from None
    if len(raw) < HEADER_BYTES:
        raise MrcError(f"{p}: not an MRC file ({len(raw)} bytes, shorter than the 1024-byte header)")

    h, byteorder = _parse_header(raw)
    nx, ny, nz = int(h["nx"]), int(h["ny"]), int(h["nz"])
    mode = int(h["mode"])
    mx = int(h["mx"])
    cella_x = float(h["cella"]["x"])
    ispg = int(h["ispg"])
    nsymbt = int(h["nsymbt"])
    has_map_id = bytes(h["map"])[:3] == b"MAP"

    if nx <= 0 or ny <= 0 or nz <= 0 or nsymbt < 0:
        what = "not an MRC file" if not has_map_id else "corrupt MRC header"
        raise MrcError(f"{p}: {what} (nx, ny, nz = {nx}, {ny}, {nz}; nsymbt = {nsymbt})")
    if mode not in SUPPORTED_MODES:
        if not has_map_id:
            raise MrcError(f"{p}: not an MRC file (no MAP id, mode {mode})")
        raise MrcError(f"{p}: unsupported MRC mode {mode} (supported: 0, 1, 2, 6, 12)")
    dtype = SUPPORTED_MODES[mode].newbyteorder(byteorder)
    offset = HEADER_BYTES + nsymbt
    expected = offset + nx * ny * nz * dtype.itemsize
    if file_size < expected:
        what = "truncated" if has_map_id else "not an MRC file or truncated"
        raise MrcError(
            f"{p}: {what}: {file_size} bytes, header needs {expected} ({nx}x{ny}x{nz}, mode {mode})"
        )

    # Pixel size = cell length / sampling; 0 when unset (mx = 0 or cell = 0 in many files).
    # The header holds float32; take the shortest decimal that round-trips it (7.08, not 7.0799999237).
    angpix = float(str(np.float32(cella_x) / np.float32(mx))) if mx > 0 and 0 < cella_x < np.inf else 0.0
    is_stack = (ispg == 0 and nz > 1) or p.suffix.lower() == ".mrcs"
    return MrcInfo(
        path=str(p),
        shape=(nz, ny, nx),
        mode=mode,
        dtype=dtype,
        angpix=angpix,
        n_images=nz if is_stack else 1,
        is_stack=is_stack,
        data_offset=offset,
    )


def read_header(path: str | os.PathLike) -> MrcInfo:
    """Header-only read (~10 µs); also checks that the file is long enough for its data."""
    return _header_info(path)


def count_images(path: str | os.PathLike) -> int:
    """Number of images in a stack (1 for a single micrograph or a volume), from the header only."""
    return _header_info(path).n_images


def check_finite(arr: np.ndarray, path: str | os.PathLike = "<array>") -> None:
    """Raise MrcError if ``arr`` holds NaN or Inf (a float64 sum propagates both, in one pass)."""
    if arr.dtype.kind != "f":
        return
    if not np.isfinite(np.sum(arr, dtype=np.float64)):
        n_bad = int(np.count_nonzero(~np.isfinite(arr)))
        if n_bad:
            raise MrcError(f"{path}: {n_bad} NaN/Inf values in the data")
        # The sum overflowed float64 although every value is finite: nothing wrong with the data.


def read_mrc(path: str | os.PathLike, *, require_finite: bool = True) -> tuple[np.ndarray, float]:
    """Read a whole MRC file as float32: ``[ny, nx]`` for one image, ``[nz, ny, nx]`` otherwise.

    Returns ``(data, angpix)``, angpix in Å (0.0 if unset). A file with nz = 1 is returned 2D whatever
    its space group. With ``require_finite`` (default) NaN/Inf values raise MrcError.
    """
    info = _header_info(path)
    nz, ny, nx = info.shape
    try:
        raw = np.fromfile(info.path, dtype=info.dtype, count=nz * ny * nx, offset=info.data_offset)
    except (OSError, ValueError) as exc:
        raise MrcError(f"{info.path}: cannot read data ({exc})") from None
    if raw.size != nz * ny * nx:  # file shrank between the size check and the read
        raise MrcError(f"{info.path}: truncated: read {raw.size} of {nz * ny * nx} values")
    # astype to native float32 upcasts float16 and fixes byte order in one copy.
    data = raw.astype(np.float32).reshape((ny, nx) if nz == 1 else (nz, ny, nx))
    if require_finite:
        check_finite(data, info.path)
    return data, info.angpix


def open_stack(path: str | os.PathLike) -> np.memmap:
    """Memory-map a stack (or a single image) read-only as ``[n, ny, nx]`` in the file's dtype.

    The result is a plain ``np.memmap`` (no close needed: the mapping is released when the array is
    garbage collected). Values keep the file's dtype, so float16 stays float16 and integer modes stay
    integers: callers upcast with ``np.asarray(stack[i], dtype=np.float32)`` before any maths, or use
    :func:`read_image` / :func:`read_images`, which do that.
    """
    info = _header_info(path)
    try:
        return np.memmap(info.path, dtype=info.dtype, mode="r", offset=info.data_offset, shape=info.shape)
    except (OSError, ValueError) as exc:
        raise MrcError(f"{info.path}: cannot memory-map ({exc})") from None


def read_image(path: str | os.PathLike, index: int) -> np.ndarray:
    """One image ``[ny, nx]`` float32 from a stack; ``index`` is 0-based (RELION's ``N@`` minus 1)."""
    return read_images(path, [index])[0]


def read_images(path: str | os.PathLike, indices) -> np.ndarray:
    """Images ``[k, ny, nx]`` float32 at 0-based ``indices`` of a stack (order kept, repeats allowed)."""
    stack = open_stack(path)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    n = stack.shape[0]
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = int(idx[(idx < 0) | (idx >= n)][0])
        raise MrcError(f"{path}: image index {bad} (0-based) out of range for {n} images")
    out = np.asarray(stack[idx], dtype=np.float32)
    del stack  # release the mapping promptly
    return out


def write_mrc(
    path: str | os.PathLike,
    data: np.ndarray,
    angpix: float,
    stack: bool = False,
) -> None:
    """Write ``data`` atomically with pixel size ``angpix`` (Å).

    float32/float16/int8/int16/uint16 are written in their own modes (2/12/0/1/6); float64 and other
    integer or boolean types are written as float32 (uint8 as uint16). ``stack=True`` marks a 2D or 3D
    array as an image stack (space group 0, Z pixel size = angpix); otherwise 3D data is a volume.
    Header statistics (min, max, mean, rms) are updated.
    """
    arr = np.asarray(data)
    if arr.ndim not in (2, 3):
        raise MrcError(f"{path}: can only write 2D or 3D data, got shape {arr.shape}")
    if arr.dtype.kind == "c":
        raise MrcError(f"{path}: complex data is not supported")
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 1:
        arr = arr.astype(np.uint16)
    elif arr.dtype.newbyteorder("=") not in _WRITE_DTYPES:
        arr = arr.astype(np.float32)
    # mrcfile keeps the array's byte order; normalise so every file we write is little-endian.
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    if stack and arr.ndim == 2:
        arr = arr[np.newaxis]

    with atomic_path(path) as tmp, warnings.catch_warnings():
        # mrcfile warns about NaN/Inf when computing stats; the caller owns its data.
        warnings.simplefilter("ignore", RuntimeWarning)
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(arr)
            if arr.ndim == 3:
                # Must precede voxel_size: set_image_stack sets mz = 1, so cella.z = angpix (not nz*angpix).
                if stack:
                    mrc.set_image_stack()
                else:
                    mrc.set_volume()
            mrc.voxel_size = float(angpix)
            # set_data() already filled dmin/dmax/dmean/rms (float32 accumulators, safe for float16).


def parse_image_name(name: str) -> tuple[int, str]:
    """Split a RELION image name ``"000012@Extract/job007/mic.mrcs"`` into ``(12, "Extract/...")``.

    The index is RELION's 1-based one. A name without ``@`` (a whole file) gives index 0.
    """
    text = str(name).strip()
    if "@" not in text:
        return 0, text
    num, _, file_name = text.partition("@")
    try:
        index = int(num)
    except ValueError:
        raise ValueError(f"bad RELION image name {name!r}: {num!r} is not an integer") from None
    if index < 1 or not file_name:
        raise ValueError(f"bad RELION image name {name!r}: expected N@file with N >= 1")
    return index, file_name
