"""Read and write STAR files the way RELION 3.1 / 4 / 5 does.

A parsed file is a ``dict`` of blocks in file order (the unnamed ``data_`` block under the key ``""``).
A *list* block (``_rlnLabel value`` lines) becomes ``dict[label, value]``; a *loop* block becomes a
``pandas.DataFrame`` whose columns are the labels without the leading underscore. Value types come from
:mod:`relion_plugins.relion.labels`; unknown labels are kept with a per-column inferred type. String
columns are always ``object`` dtype, whatever pandas' default string dtype is.

Syntax follows RELION's own reader (``src/metadata_table.cpp``, ``nextTokenInSTAR``): tokens are split
on blanks, ``"`` or ``'`` quote a token (the closing quote must be followed by a blank or the line end),
``#`` at the start of a token starts a comment, a loop ends at an empty line or the next ``data_`` line,
and CR+LF line endings are rejected.

Large loops are parsed with pandas' C reader when the body holds nothing that it could misread (comments,
single quotes, non-trivial double quotes); otherwise an exact pure-Python tokenizer is used. Both give
identical tables.
"""

from __future__ import annotations

import csv
import math
import mmap
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from relion_plugins.relion.atomic import atomic_open
from relion_plugins.relion.labels import BOOL, DOUBLE, DTYPES, INT, STRING, infer_type, label_type

__all__ = ["StarError", "MissingBlockError", "read_star", "read_block", "write_star", "format_value", "Block"]

Block = pd.DataFrame | dict[str, Any]

DEFAULT_VERSION = 50001
# Loops with fewer rows than this are parsed in pure Python: pandas' start-up cost is not worth it.
FAST_MIN_ROWS = 1000
# Rows formatted and written at a time, so that writing a huge table needs bounded extra memory.
WRITE_CHUNK = 100_000

_PANDAS_MAJOR = int(pd.__version__.split(".")[0])
# Strings RELION (printf / iostream) writes for not-a-number; pandas' C parser needs to be told.
_NAN_STRINGS = ["nan", "NaN", "NAN", "-nan", "-NaN", "-NAN", "+nan"]
# End of a loop body: an empty (or blank) line, or the next ``data_`` line.
_LOOP_END = re.compile(rb"\n[ \t]*(?:\n|data_)")
# A double-quoted token pandas reads the same way RELION does: quote at the token start, no quote inside,
# closing quote followed by a blank or the line end.
_SIMPLE_QUOTED = re.compile(rb'(?<![^ \t\n])"[^"\n]*"(?![^ \t\n])')
# A value that needs no quoting: no blanks, and nothing a reader would take for syntax.
_PLAIN = re.compile(r"(?!data_|loop_)[^\s\"'#_;][^\s]*")


class StarError(ValueError):
    """A STAR file could not be read or written; the message names the file and line."""


class MissingBlockError(StarError, KeyError):
    """:func:`read_block` did not find the block (also a KeyError, as for a dict lookup)."""

    def __str__(self) -> str:
        return Exception.__str__(self)  # KeyError would quote the message


# --------------------------------------------------------------------------------------------------
# reading


def read_star(path: str | os.PathLike, blocks: Iterable[str] | None = None) -> dict[str, Block]:
    """Read a STAR file into ``{block name: DataFrame | dict}`` in file order.

    ``blocks`` restricts the result to the named blocks; scanning stops as soon as all of them have
    been read, so reading ``["optics"]`` from a huge particles file is cheap. Missing requested blocks
    are simply absent from the result (use :func:`read_block` to get an error instead).
    """
    return _read(path, blocks, fast=True)


def read_block(path: str | os.PathLike, name: str) -> Block:
    """Read one block; a missing block raises :class:`StarError`."""
    found = _read(path, [name], fast=True)
    if name not in found:
        shown = f"data_{name}" if name else "the unnamed data_ block"
        raise MissingBlockError(f"{path}: no block {shown}")
    return found[name]


def _read(path: str | os.PathLike, blocks: Iterable[str] | None, fast: bool) -> dict[str, Block]:
    wanted = None if blocks is None else set(blocks)
    p = Path(path)
    try:
        fh = open(p, "rb")
    except FileNotFoundError:
        raise StarError(f"{p}: no such file") from None
    except OSError as exc:
        raise StarError(f"{p}: cannot open ({exc.strerror or exc})") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return {}
        # mmap: only the pages actually scanned are read, so an early stop costs nothing.
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _Parser(buf, str(p), wanted, fast, p).parse()


class _Parser:
    """Line-oriented STAR parser over a bytes-like buffer."""

    def __init__(
        self, buf: Any, name: str, wanted: set[str] | None, fast: bool, path: Path | None = None
    ) -> None:
        self.buf = buf
        self.path = path  # the file itself, which pandas reads big loop bodies from
        self.n = len(buf)
        self.name = name
        self.wanted = wanted
        self.fast = fast
        self.pos = 0
        self.lineno = 0

    # -- helpers
    def error(self, msg: str, lineno: int | None = None) -> StarError:
        return StarError(f"{self.name}:{self.lineno if lineno is None else lineno}: {msg}")

    def next_line(self) -> str | None:
        """The next line without its newline, or None at the end of the buffer."""
        if self.pos >= self.n:
            return None
        end = self.buf.find(b"\n", self.pos)
        if end < 0:
            end = nxt = self.n
        else:
            nxt = end + 1
        raw = self.buf[self.pos : end]
        self.pos = nxt
        self.lineno += 1
        if raw.endswith(b"\r"):
            raise self.error("CR+LF line ending; RELION accepts LF only (convert with dos2unix)")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error("not valid UTF-8 text") from None

    def peek_line(self) -> str | None:
        pos, lineno = self.pos, self.lineno
        line = self.next_line()
        self.pos, self.lineno = pos, lineno
        return line

    def tokens(self, line: str) -> list[str]:
        try:
            return tokenize(line)
        except ValueError as exc:
            raise self.error(str(exc)) from None

    # -- grammar
    def parse(self) -> dict[str, Block]:
        out: dict[str, Block] = {}
        while True:
            if self.wanted is not None and self.wanted.issubset(out):
                break  # everything asked for is read: do not touch the rest of the file
            line = self.next_line()
            if line is None:
                break
            s = line.strip()
            if not s or s.startswith("#"):
                continue  # includes "# version NNNNN"; the version changes nothing we read
            if not s.startswith("data_"):
                raise self.error(f"unexpected text outside a data_ block: {s[:40]!r}")
            block_name = s.split()[0][5:]
            keep = (self.wanted is None or block_name in self.wanted) and block_name not in out
            block = self.parse_block(keep)
            if keep:
                # RELION looks blocks up by name from the file start, so the first of duplicates wins.
                out[block_name] = block  # type: ignore[assignment]
        return out

    def parse_block(self, keep: bool) -> Block | None:
        """Parse what follows a ``data_`` line: a list, a loop, or nothing (an empty dict)."""
        while True:
            line = self.peek_line()
            if line is None:
                return {}
            s = line.strip()
            if not s or s.startswith("#"):
                self.next_line()
                continue
            if s.startswith("data_"):
                return {}
            if s.startswith("loop_"):
                self.next_line()
                return self.parse_loop(keep)
            if s.startswith("_"):
                return self.parse_list(keep)
            self.next_line()
            raise self.error(f"expected loop_ or _label after data_, found {s[:40]!r}")

    def parse_list(self, keep: bool) -> dict[str, Any] | None:
        items: dict[str, Any] = {}
        while True:
            line = self.peek_line()
            if line is None:
                break
            s = line.strip()
            if s.startswith("data_"):
                break
            self.next_line()
            toks = self.tokens(s)
            if not toks:
                continue
            if toks[0].startswith("loop_"):
                raise self.error("a block with both _label value lines and a loop_ is not supported")
            if not toks[0].startswith("_"):
                raise self.error(f"expected _label value, found {s[:40]!r}")
            if len(toks) < 2:
                raise self.error(f"no value after {toks[0]}")
            if len(toks) > 2:
                raise self.error(f"more than one value after {toks[0]} (quote values that contain spaces)")
            label = toks[0][1:]
            if keep:
                try:
                    items[label] = _convert_scalar(label, toks[1])
                except ValueError as exc:
                    raise self.error(str(exc)) from None
        return items if keep else None

    def parse_loop(self, keep: bool) -> pd.DataFrame | None:
        labels: list[str] = []
        header_line = self.lineno
        while True:
            line = self.peek_line()
            if line is None:
                break
            s = line.strip()
            if not s or s.startswith("#"):
                self.next_line()
                continue
            if s.startswith("_"):
                self.next_line()
                # "_rlnLabel #3": the column number after the label is decoration only.
                labels.append(s.split()[0][1:])
                continue
            break
        if len(set(labels)) != len(labels):
            dup = sorted({lab for lab in labels if labels.count(lab) > 1})
            raise self.error(f"duplicate label(s) in loop: {', '.join(dup)}", header_line)
        line = self.peek_line()
        if line is None or line.strip().startswith("data_"):
            return _empty_table(labels) if keep else None
        if not labels:
            raise self.error("loop_ rows without any _label lines")

        # The body runs from here to the first blank line or data_ line (RELION stops a loop there).
        start = self.pos
        m = _LOOP_END.search(self.buf, start - 1) if start > 0 else _LOOP_END.search(self.buf, 0)
        end = m.start() + 1 if m else self.n
        first_line = self.lineno + 1
        if not keep:
            self.lineno += _count_newlines(self.buf, start, end)
            self.pos = end
            return None
        self.lineno += _count_newlines(self.buf, start, end)
        self.pos = end
        bad = self.buf.find(b"\r", start, end)
        if bad >= 0:
            raise self.error(
                "CR+LF line ending; RELION accepts LF only (convert with dos2unix)",
                first_line + _count_newlines(self.buf, start, bad),
            )
        table = None
        if self.fast and self.path is not None:
            table = _parse_body_fast(self.buf, self.path, start, end, labels)
        if table is None:
            table = self.parse_body_slow(self.buf[start:end], labels, first_line)
        return table

    def parse_body_slow(self, body: bytes, labels: list[str], first_line: int) -> pd.DataFrame:
        """Exact tokenizer: every row is split with RELION's rules."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error("not valid UTF-8 text", first_line) from None
        ncol = len(labels)
        rows: list[list[str]] = []
        row_lines: list[int] = []
        for i, line in enumerate(text.split("\n")):
            if not line or line.isspace():
                continue  # only the trailing "" after the final newline
            if '"' in line or "'" in line or "#" in line or "\a" in line:
                try:
                    toks = tokenize(line)
                except ValueError as exc:
                    raise self.error(str(exc), first_line + i) from None
                if not toks:
                    continue  # a comment line inside a loop
            else:
                # only space and tab separate values in RELION (str.split() would also split on
                # other Unicode blanks)
                toks = [t for t in line.replace("\t", " ").split(" ") if t]
            if len(toks) != ncol:
                raise self.error(f"row has {len(toks)} values but the loop has {ncol} labels", first_line + i)
            rows.append(toks)
            row_lines.append(first_line + i)
        columns = list(zip(*rows)) if rows else [() for _ in labels]
        data: dict[str, pd.Series] = {}
        for j, label in enumerate(labels):
            try:
                data[label] = _convert_column(label, list(columns[j]))
            except _BadValue as bad:
                raise self.error(f"{label}: {bad.msg}", row_lines[bad.index]) from None
        return pd.DataFrame(data, index=pd.RangeIndex(len(rows)))


def _count_newlines(buf: Any, start: int, end: int, chunk: int = 1 << 24) -> int:
    # mmap has no count(); counting slice by slice keeps memory bounded for a skipped huge loop.
    return sum(buf[i : min(i + chunk, end)].count(b"\n") for i in range(start, end, chunk))


def tokenize(line: str) -> list[str]:
    """Split one STAR line into values following RELION's ``nextTokenInSTAR``.

    Quotes (``"`` or ``'``) open a value only at its start and close only when followed by a blank or
    the line end; ``\\a`` is RELION's escape before such a quote and is dropped. ``#`` at the start of
    a token ends the line.
    """
    out: list[str] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in " \t\n":
            i += 1
        if i >= n or line[i] == "#":
            return out
        c = line[i]
        if c == '"' or c == "'":
            j = i + 1
            while True:
                j = line.find(c, j)
                if j < 0:
                    raise ValueError("closing quote not found")
                if line[j - 1] != "\a" and (j + 1 == n or line[j + 1] in " \t\n"):
                    break
                j += 1
            out.append(line[i + 1 : j].replace("\a", ""))
            i = j + 1
        else:
            j = i + 1
            while j < n and line[j] not in " \t\n":
                j += 1
            out.append(line[i:j])
            i = j


class _BadValue(Exception):
    def __init__(self, index: int, msg: str) -> None:
        super().__init__(msg)
        self.index = index
        self.msg = msg


def _column_type(label: str, values: list[str]) -> str:
    kind = label_type(label)
    return kind if kind is not None else infer_type(values)


def _convert_column(label: str, values: list[str]) -> pd.Series:
    """Typed Series from the string values of one column."""
    kind = _column_type(label, values)
    n = len(values)
    if kind == STRING:
        return pd.Series(np.array(values, dtype=object), dtype=object)
    if kind == DOUBLE:
        try:
            return pd.Series(np.fromiter(map(float, values), dtype=np.float64, count=n))
        except ValueError:
            raise _first_bad(values, float, "not a number") from None
    # int and bool: RELION writes integers; tolerate integral floats ("1.000000") that other tools write
    try:
        arr = np.fromiter(map(int, values), dtype=np.int64, count=n)
    except (ValueError, OverflowError):
        try:
            farr = np.fromiter(map(float, values), dtype=np.float64, count=n)
        except ValueError:
            raise _first_bad(values, float, "not an integer") from None
        if not (np.isfinite(farr).all() and (farr == np.round(farr)).all()):
            if kind == BOOL:
                raise _first_bad(values, int, "not 0 or 1") from None
            return pd.Series(farr)  # non-integral values under an int label: keep them rather than lose them
        arr = farr.astype(np.int64)
    if kind == BOOL:
        return pd.Series(arr != 0)
    return pd.Series(arr)


def _first_bad(values: list[str], conv: Any, what: str) -> _BadValue:
    for i, v in enumerate(values):
        try:
            conv(v)
        except (ValueError, OverflowError):
            return _BadValue(i, f"{what}: {v!r}")
    return _BadValue(0, what)


def _convert_scalar(label: str, value: str) -> Any:
    try:
        s = _convert_column(label, [value])
    except _BadValue as bad:
        raise ValueError(f"{label}: {bad.msg}") from None
    v = s.iloc[0]
    return v.item() if hasattr(v, "item") else v


def _empty_table(labels: list[str]) -> pd.DataFrame:
    data = {lab: pd.Series([], dtype=DTYPES[label_type(lab) or STRING]) for lab in labels}
    return pd.DataFrame(data, index=pd.RangeIndex(0))


def _parse_body_fast(buf: Any, path: Path, start: int, end: int, labels: list[str]) -> pd.DataFrame | None:
    """Parse the loop body ``buf[start:end]`` with pandas' C reader, reading the file itself (no copy of
    the body in memory); None when the exact tokenizer must be used instead."""
    nrows = _count_newlines(buf, start, end) + (0 if buf[end - 1 : end] == b"\n" else 1)
    if nrows < FAST_MIN_ROWS:
        return None
    # Things pandas would read differently from RELION: comments, single quotes, RELION's \a escape,
    # vertical tab / form feed (blanks to pandas, not to RELION), and any double quote that is not a
    # plain whole-token quote.
    # NUL ends a field for pandas, and a byte-order mark at the start of the stream would be dropped.
    for ch in (b"#", b"'", b"\a", b"\x0b", b"\x0c", b"\x00"):
        if buf.find(ch, start, end) >= 0:
            return None
    if buf[start : start + 3] == b"\xef\xbb\xbf":
        return None
    if buf.find(b'"', start, end) >= 0:
        nq = sum(buf[i : min(i + (1 << 24), end)].count(b'"') for i in range(start, end, 1 << 24))
        if nq != 2 * sum(1 for _ in _SIMPLE_QUOTED.finditer(buf, start, end)):
            return None
    if hasattr(buf, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        # The scans above made the body resident through the mapping; drop those pages (they stay in
        # the page cache) so they do not add to the peak memory of the parse below.
        page = mmap.PAGESIZE
        lo = (start // page) * page
        buf.madvise(mmap.MADV_DONTNEED, lo, end - lo)
    kinds = [label_type(lab) for lab in labels]
    dtypes: dict[int, Any] = {}
    na_values: dict[int, list[str]] = {}
    for j, kind in enumerate(kinds):
        if kind == DOUBLE:
            dtypes[j] = np.float64
            na_values[j] = _NAN_STRINGS
        elif kind in (INT, BOOL):
            dtypes[j] = np.int64
        else:
            dtypes[j] = object  # strings, and unknown labels (typed below)
    kwargs: dict[str, Any] = {}
    if _PANDAS_MAJOR < 3:
        kwargs["float_precision"] = "round_trip"  # pandas 3's default parser is already exact
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            df = pd.read_csv(
                fh,
                sep=r"\s+",
                header=None,
                names=list(range(len(labels))),
                index_col=False,
                nrows=nrows,
                dtype=dtypes,
                engine="c",
                quotechar='"',
                quoting=csv.QUOTE_MINIMAL,
                na_filter=bool(na_values),
                keep_default_na=False,
                na_values=na_values or None,
                skip_blank_lines=False,
                encoding="utf-8",
                **kwargs,
            )
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OSError):
        return None  # let the exact path find and report the problem
    if len(df) != nrows:
        return None
    # A short row leaves its last column empty: "" in a text column (only a quoted "" is legitimately
    # empty), NaN in a double column (or a genuine nan). Re-check such tables the slow, exact way.
    last = df[len(labels) - 1]
    if dtypes[len(labels) - 1] is object:
        if (last == "").any():
            return None
    elif last.dtype.kind == "f" and last.isna().any():
        return None
    # Fix types in place: rebuilding the frame would copy every column once more.
    for j, kind in enumerate(kinds):
        if kind == BOOL:
            df[j] = df[j] != 0
        elif kind is None:
            try:
                df[j] = _convert_column(labels[j], df[j].tolist()).to_numpy()
            except _BadValue:
                return None
    df.columns = labels
    return df


# --------------------------------------------------------------------------------------------------
# writing


def write_star(
    path: str | os.PathLike, blocks: Mapping[str, Block], version: int | None = DEFAULT_VERSION
) -> None:
    """Write blocks (DataFrame -> loop, mapping -> list) atomically, with ``# version`` lines unless None."""
    for name in blocks:
        if not isinstance(name, str) or any(c.isspace() for c in name):
            raise StarError(f"{path}: invalid block name {name!r}")
    with atomic_open(path, "w") as fh:
        for name, block in blocks.items():
            _write_block(fh, str(path), name, block, version)


def _write_block(fh: TextIO, path: str, name: str, block: Block, version: int | None) -> None:
    if version is not None:
        fh.write(f"\n# version {int(version)}\n")
    fh.write(f"\ndata_{name}\n\n")
    if isinstance(block, pd.DataFrame):
        _write_loop(fh, path, name, block)
    elif isinstance(block, Mapping):
        _write_list(fh, path, name, block)
    else:
        raise StarError(f"{path}: block {name!r} is a {type(block).__name__}, not a DataFrame or dict")


def _label_name(path: str, block: str, label: Any) -> str:
    lab = str(label)
    lab = lab[1:] if lab.startswith("_") else lab
    if not lab or any(c.isspace() for c in lab) or lab.startswith("#"):
        raise StarError(f"{path}: block {block!r}: invalid label {label!r}")
    return lab


def _write_list(fh: TextIO, path: str, block: str, items: Mapping[str, Any]) -> None:
    labels = [_label_name(path, block, k) for k in items]
    width = max((len(lab) for lab in labels), default=0) + 2
    for lab, value in zip(labels, items.values()):
        try:
            text = format_value(value, label_type(lab))
        except ValueError as exc:
            raise StarError(f"{path}: block {block!r}, {lab}: {exc}") from None
        fh.write(f"_{lab:<{width - 1}}{text}\n")
    fh.write("\n")


def _write_loop(fh: TextIO, path: str, block: str, df: pd.DataFrame) -> None:
    labels = [_label_name(path, block, c) for c in df.columns]
    if len(set(labels)) != len(labels):
        raise StarError(f"{path}: block {block!r}: duplicate column labels")
    fh.write("loop_\n")
    fh.writelines(f"_{lab} #{i}\n" for i, lab in enumerate(labels, start=1))
    n = len(df)
    for start in range(0, n, WRITE_CHUNK):
        part = df.iloc[start : start + WRITE_CHUNK]
        cols = []
        for j, lab in enumerate(labels):
            try:
                cols.append(_format_column(part.iloc[:, j], label_type(lab)))
            except ValueError as exc:
                raise StarError(f"{path}: block {block!r}, column {lab}: {exc}") from None
        fh.write("\n".join(map(" ".join, zip(*cols))))
        fh.write("\n")
    fh.write("\n")


def _format_column(col: pd.Series, kind: str | None) -> list[str]:
    """Text of every value of one column, vectorised where the dtype allows."""
    dt = col.dtype
    if not isinstance(dt, np.dtype):
        # pandas extension dtypes (str, Int64, boolean...): go value by value, missing values become ""
        return [_format_object(v, kind) for v in col.to_numpy(dtype=object, na_value=None)]
    if dt.kind == "b":
        return np.where(col.to_numpy(), "1", "0").tolist()
    if dt.kind in "iu":
        return list(map(str, col.to_numpy().tolist()))
    if dt.kind == "f":
        arr = col.to_numpy()
        if kind in (INT, BOOL) and np.isfinite(arr).all() and (arr == np.round(arr)).all():
            return list(map(str, arr.astype(np.int64).tolist()))  # e.g. class numbers that went through NaN
        if arr.dtype == np.float32:
            return arr.astype(str).tolist()  # shortest text that round-trips the float32 value
        return list(map(float.__repr__, arr.astype(np.float64).tolist()))
    values = col.to_numpy(dtype=object)
    return [_format_object(v, kind) for v in values]


def _format_object(v: Any, kind: str | None) -> str:
    if isinstance(v, str):
        return v if _PLAIN.fullmatch(v) else _quote(v)
    return format_value(v, kind)


def format_value(value: Any, kind: str | None = None) -> str:
    """Text for one value as RELION reads it: bools 0/1, round-tripping floats, quoted strings."""
    if value is None or value is pd.NA:
        return '""'
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if kind == STRING and math.isnan(f):
            return '""'  # a missing text value (pandas puts NaN there), not the word "nan"
        if kind in (INT, BOOL) and math.isfinite(f) and f == round(f):
            return str(int(f))
        if isinstance(value, np.float32):
            return str(value)
        return repr(f)
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    return text if _PLAIN.fullmatch(text) else _quote(text)


def _quote(v: str) -> str:
    if "\n" in v or "\r" in v:
        raise ValueError(f"a STAR value cannot contain a line break: {v[:40]!r}")
    if '"' not in v:
        return f'"{v}"'
    if "'" not in v:
        return f"'{v}'"
    # Both quote characters: RELION's escape puts \a before a " that would otherwise close the value.
    out = []
    for i, c in enumerate(v):
        if c == '"' and (i + 1 == len(v) or v[i + 1] in " \t"):
            out.append("\a")
        out.append(c)
    return '"' + "".join(out) + '"'
