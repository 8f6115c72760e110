"""Particle coordinate files: per-micrograph STAR files, ``autopick.star`` lists, and foreign formats.

Coordinates are 0-based pixels of the micrograph as stored (``x`` = column, ``y`` = row), in tables
whose columns are RELION labels (``rlnCoordinateX``, ``rlnCoordinateY``, ``rlnAutopickFigureOfMerit``...).

Where coordinate files live (:func:`coordinate_path`) follows RELION's ``decomposePipelineFileName`` +
``withoutExtension`` exactly (``src/filename.cpp``, ``Preprocessing::getCoordinateFileName``), which is what
``relion_preprocess --coord_dir <job dir> --coord_suffix _<suffix>.star`` (RELION 3.1, and the legacy
``coords_suffix`` route of 4/5) looks for:

* the micrograph name is cut after its first ``jobNNN/`` directory (``MotionCorr/job002/Movies/a.mrc`` ->
  ``Movies/a.mrc``); a name without such a directory is kept whole (``Micrographs/a.mrc``);
* an absolute name keeps its directories without the leading ``/`` (RELION builds
  ``<dir>//data/a_pick.star``, which the file system reads as ``<dir>/data/a_pick.star``);
* everything from the last ``.`` is dropped, then ``_<suffix>.star`` is appended.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from relion_plugins.relion.atomic import atomic_open, write_text
from relion_plugins.relion.star import StarError, read_star, write_star

__all__ = [
    "micrograph_post",
    "coordinate_path",
    "write_coordinates",
    "write_coordinate_list",
    "read_coordinates",
    "read_coordinate_list",
    "read_particle_coordinates",
    "read_topaz_txt",
    "write_topaz_txt",
    "COORD_COLUMNS",
]

X, Y, FOM, CLASS, PSI, MIC = (
    "rlnCoordinateX",
    "rlnCoordinateY",
    "rlnAutopickFigureOfMerit",
    "rlnClassNumber",
    "rlnAnglePsi",
    "rlnMicrographName",
)
#: Columns RELION's LoG / template / Topaz pickers write, in their order.
COORD_COLUMNS = (X, Y, FOM, CLASS, PSI)
# Short names accepted by write_coordinates for convenience.
_ALIASES = {"x": X, "y": Y, "fom": FOM, "score": FOM, "class": CLASS, "psi": PSI}
_JOB_DIR = re.compile(r"job[0-9]{3}")
_TOPAZ_HEADER = ("image_name", "x_coord", "y_coord")


def micrograph_post(micrograph_name: str | os.PathLike) -> str:
    """Micrograph name without its pipeline prefix (``Type/jobNNN/``) and without extension.

    Mirrors RELION's ``decomposePipelineFileName``: the first directory after a ``/`` that starts with
    ``job`` + three digits ends the prefix; failing that, a first directory of that form does. A leading
    ``/`` is dropped (see the module docstring).
    """
    name = os.fspath(micrograph_name)
    parts = name.split("/")
    post = None
    for k in range(1, len(parts)):
        if k == 1 and parts[0] == "":
            continue  # RELION starts looking for "/" at index 1, so a leading "/" never counts
        if _JOB_DIR.match(parts[k]):
            post = "/".join(parts[k + 1 :])
            break
    if post is None:
        post = "/".join(parts[1:]) if len(parts) > 1 and _JOB_DIR.match(parts[0]) else name
    dot = post.rfind(".")  # RELION's withoutExtension: cut at the last dot, wherever it is
    if dot >= 0:
        post = post[:dot]
    return post.lstrip("/")


def coordinate_path(job_dir: str | os.PathLike, micrograph_name: str | os.PathLike, suffix: str) -> Path:
    """``<job_dir>/<post>_<suffix>.star`` for a micrograph; ``suffix`` may also be given as ``_x.star``."""
    sfx = suffix[1:] if suffix.startswith("_") else suffix
    sfx = sfx[: -len(".star")] if sfx.endswith(".star") else sfx
    if not sfx:
        raise ValueError("empty coordinate suffix")
    return Path(job_dir) / f"{micrograph_post(micrograph_name)}_{sfx}.star"


# ----------------------------------------------------------------------------------------------
# writing


def _coordinate_table(table: pd.DataFrame) -> pd.DataFrame:
    """RELION-labelled copy of ``table``: aliases renamed, class 0 / psi 0.0 added, picker columns first."""
    df = table.rename(columns={k: v for k, v in _ALIASES.items() if k in table.columns})
    if X not in df.columns or Y not in df.columns:
        raise ValueError(
            f"coordinate table needs {X} and {Y} (or x and y) columns, got {list(table.columns)}"
        )
    df = df.copy()
    df[X] = df[X].astype(np.float64)
    df[Y] = df[Y].astype(np.float64)
    if CLASS not in df.columns:
        df[CLASS] = np.zeros(len(df), dtype=np.int64)  # LoG / Topaz write a dummy class 0
    if PSI not in df.columns:
        df[PSI] = np.zeros(len(df), dtype=np.float64)
    first = [c for c in COORD_COLUMNS if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]].reset_index(drop=True)


def write_coordinates(path: str | os.PathLike, table: pd.DataFrame) -> None:
    """Write one micrograph's coordinates as RELION does: an unnamed ``data_`` block with a loop."""
    write_star(path, {"": _coordinate_table(table)})


def write_coordinate_list(
    job_dir: str | os.PathLike,
    pairs: Iterable[tuple[str, str | os.PathLike]],
    name: str = "autopick",
    mics_star: str | os.PathLike | None = None,
) -> Path:
    """Write ``<job_dir>/<name>.star`` (block ``coordinate_files``) and return its path.

    ``pairs`` are (micrograph name exactly as in the micrographs STAR, coordinate file path relative to
    the project directory). With ``mics_star`` the legacy ``<job_dir>/coords_suffix_<name>.star`` is
    written too: its whole content is the input micrographs STAR name (RELION 3.x External pickers).
    """
    rows = [(str(m), os.fspath(c)) for m, c in pairs]
    table = pd.DataFrame(
        {
            "rlnMicrographName": pd.Series([m for m, _ in rows], dtype=object),
            "rlnMicrographCoordinates": pd.Series([c for _, c in rows], dtype=object),
        }
    )
    out = Path(job_dir) / f"{name}.star"
    write_star(out, {"coordinate_files": table})
    if mics_star is not None:
        write_text(Path(job_dir) / f"coords_suffix_{name}.star", os.fspath(mics_star) + "\n")
    return out


def write_topaz_txt(path: str | os.PathLike, table: pd.DataFrame, image_name: str | None = None) -> None:
    """Write Topaz's tab-separated ``image_name x_coord y_coord score`` file.

    ``image_name`` names every row (Topaz uses the micrograph base name without extension); otherwise the
    table's ``rlnMicrographName`` column is used. Topaz coordinates are integers: values are rounded.
    """
    df = _coordinate_table(table)
    if image_name is not None:
        names = [image_name] * len(df)
    elif MIC in df.columns:
        names = [Path(str(m)).stem for m in df[MIC]]
    else:
        raise ValueError("write_topaz_txt needs image_name or an rlnMicrographName column")
    xs = np.rint(df[X].to_numpy()).astype(np.int64)
    ys = np.rint(df[Y].to_numpy()).astype(np.int64)
    scores = df[FOM].to_numpy(dtype=np.float64) if FOM in df.columns else np.zeros(len(df))
    with atomic_open(path) as fh:
        fh.write("image_name\tx_coord\ty_coord\tscore\n")
        for n, x, y, s in zip(names, xs.tolist(), ys.tolist(), scores.tolist()):
            fh.write(f"{n}\t{x}\t{y}\t{s!r}\n")


# ----------------------------------------------------------------------------------------------
# reading


def _empty_coords() -> pd.DataFrame:
    return pd.DataFrame({X: pd.Series([], dtype=np.float64), Y: pd.Series([], dtype=np.float64)})


def read_coordinates(path: str | os.PathLike) -> pd.DataFrame:
    """Coordinates of one micrograph from a RELION STAR file, an EMAN ``.box``, a Topaz ``.txt`` or plain
    ``x y [z]`` text, recognised by content (``.box`` by extension, as RELION does).

    Always has float ``rlnCoordinateX/Y``; ``rlnAutopickFigureOfMerit`` when the file has scores; a Topaz
    file naming several images adds ``rlnMicrographName``.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StarError(f"{p}: no such file") from None
    except UnicodeDecodeError:
        raise StarError(f"{p}: not a text coordinate file") from None
    lines = text.split("\n")
    if any(line.lstrip().startswith("data_") for line in lines):
        return _star_coordinates(p)
    first = next((line.split() for line in lines if line.strip() and not line.lstrip().startswith("#")), None)
    if first is None:
        return _empty_coords()
    if p.suffix.lower() == ".box":
        return _box_coordinates(p, lines)
    if tuple(w.lower() for w in first[:3]) == _TOPAZ_HEADER:
        df = read_topaz_txt(p)
        if df[MIC].nunique() <= 1:
            df = df.drop(columns=[MIC])
        return df
    return _plain_coordinates(p, lines)


def _star_coordinates(p: Path) -> pd.DataFrame:
    blocks = read_star(p)
    table = next((b for b in blocks.values() if isinstance(b, pd.DataFrame)), None)
    if table is None or (table.empty and X not in table.columns):
        return _empty_coords()
    if X not in table.columns or Y not in table.columns:
        raise StarError(f"{p}: no {X}/{Y} columns in the coordinate table")
    table = table.copy()
    table[X] = table[X].astype(np.float64)
    table[Y] = table[Y].astype(np.float64)
    return table


def _numbers(p: Path, lines: list[str], need: int, skip_header: bool) -> list[list[float]]:
    rows: list[list[float]] = []
    for i, line in enumerate(lines, start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        try:
            vals = [float(w) for w in words[:need]]
        except ValueError:
            if skip_header and not rows:
                continue  # a header line (Ximdisp, Xmipp 2), as RELION skips it
            raise StarError(f"{p}:{i}: expected numbers, found {line.strip()[:40]!r}") from None
        if len(vals) < need:
            raise StarError(f"{p}:{i}: expected at least {need} numbers, found {len(words)}")
        rows.append(vals)
    return rows


def _box_coordinates(p: Path, lines: list[str]) -> pd.DataFrame:
    """EMAN box: lower-left corner x y and box width/height; the particle centre is x + w/2, y + h/2."""
    rows = _numbers(p, lines, 4, skip_header=False)
    arr = np.array(rows, dtype=np.float64).reshape(-1, 4)
    return pd.DataFrame({X: arr[:, 0] + arr[:, 2] / 2, Y: arr[:, 1] + arr[:, 3] / 2})


def _plain_coordinates(p: Path, lines: list[str]) -> pd.DataFrame:
    rows = _numbers(p, lines, 2, skip_header=True)
    arr = np.array(rows, dtype=np.float64).reshape(-1, 2)
    df = pd.DataFrame({X: arr[:, 0], Y: arr[:, 1]})
    # x y z text: keep z (tomograms); only when every line has a numeric third column
    zs = []
    for line in lines:
        w = line.split()
        if len(w) >= 2 and not w[0].startswith("#"):
            try:
                float(w[0])
                zs.append(float(w[2]) if len(w) > 2 else None)
            except ValueError:
                continue
    if zs and len(zs) == len(df) and all(z is not None for z in zs):
        df["rlnCoordinateZ"] = np.array(zs, dtype=np.float64)
    return df


def read_topaz_txt(path: str | os.PathLike) -> pd.DataFrame:
    """Topaz particle file (``image_name x_coord y_coord score``, tab-separated, with header) as a table with
    ``rlnMicrographName`` (Topaz's image name), ``rlnCoordinateX/Y`` and ``rlnAutopickFigureOfMerit``."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise StarError(f"{p}: no such file") from None
    header: list[str] | None = None
    names: list[str] = []
    vals: list[tuple[float, float, float]] = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        words = line.rstrip("\r").split("\t") if "\t" in line else line.split()
        if header is None:
            header = [w.strip().lower() for w in words]
            missing = [c for c in _TOPAZ_HEADER if c not in header]
            if missing:
                raise StarError(f"{p}:{i}: not a Topaz file: header lacks {', '.join(missing)}")
            continue
        if len(words) != len(header):
            raise StarError(f"{p}:{i}: {len(words)} fields, header has {len(header)}")
        rec = dict(zip(header, words))
        try:
            vals.append(
                (float(rec["x_coord"]), float(rec["y_coord"]), float(rec["score"]) if "score" in rec else 0.0)
            )
        except ValueError:
            raise StarError(f"{p}:{i}: expected numbers in {line.strip()[:60]!r}") from None
        names.append(rec["image_name"].strip())
    arr = np.array(vals, dtype=np.float64).reshape(-1, 3)
    return pd.DataFrame(
        {
            MIC: pd.Series(names, dtype=object),
            X: arr[:, 0],
            Y: arr[:, 1],
            FOM: arr[:, 2],
        }
    )


def read_coordinate_list(
    path: str | os.PathLike, project_dir: str | os.PathLike = "."
) -> dict[str, pd.DataFrame]:
    """``{micrograph name: coordinates}`` from ``autopick.star`` / ``manualpick.star`` (or a legacy
    ``coords_suffix_<name>.star``). Coordinate paths are relative to ``project_dir``; a missing coordinate
    file gives an empty table and a warning, as RELION's extraction skips it with a warning."""
    p = Path(path)
    proj = Path(project_dir)
    pairs = _legacy_pairs(p, proj) if p.name.startswith("coords_suffix_") else _list_pairs(p)
    out: dict[str, pd.DataFrame] = {}
    for mic, coord in pairs:
        cp = Path(coord)
        full = cp if cp.is_absolute() else proj / cp
        if not full.is_file():
            warnings.warn(
                f"{p}: coordinate file {coord} for {mic} does not exist; no particles", stacklevel=2
            )
            out[mic] = _empty_coords()
            continue
        out[mic] = read_coordinates(full)
    return out


def _list_pairs(p: Path) -> list[tuple[str, str]]:
    blocks = read_star(p)
    table = blocks.get("coordinate_files")
    if table is None:
        table = next((b for b in blocks.values() if isinstance(b, pd.DataFrame)), None)
    if not isinstance(table, pd.DataFrame) or not {MIC, "rlnMicrographCoordinates"} <= set(table.columns):
        raise StarError(f"{p}: no coordinate_files table with {MIC} and rlnMicrographCoordinates")
    return list(zip(table[MIC].astype(str), table["rlnMicrographCoordinates"].astype(str)))


def _legacy_pairs(p: Path, proj: Path) -> list[tuple[str, str]]:
    """coords_suffix_<name>.star holds the micrographs STAR name; files sit at <job dir>/<post>_<name>.star."""
    name = p.name[len("coords_suffix_") : -len(".star")] if p.name.endswith(".star") else p.name
    try:
        mics_star = p.read_text(encoding="utf-8").split()[0]
    except (OSError, IndexError):
        raise StarError(f"{p}: cannot read the micrographs STAR name from it") from None
    mics_path = Path(mics_star) if Path(mics_star).is_absolute() else proj / mics_star
    blocks = read_star(mics_path)
    table = blocks.get("micrographs")
    if table is None:
        table = next((b for b in blocks.values() if isinstance(b, pd.DataFrame) and MIC in b.columns), None)
    if not isinstance(table, pd.DataFrame) or MIC not in table.columns:
        raise StarError(f"{mics_path}: no {MIC} column")
    job_dir = p.parent
    try:
        job_dir = job_dir.relative_to(proj)
    except ValueError:
        pass
    return [(str(m), str(coordinate_path(job_dir, str(m), name))) for m in table[MIC]]


def read_particle_coordinates(path: str | os.PathLike, recenter: bool = False) -> dict[str, pd.DataFrame]:
    """``{micrograph name: particle rows}`` from a particles STAR (RELION 3.1+ with optics, or 3.0 without).

    With ``recenter`` the coordinates are moved to the particle centre found by refinement, as
    ``relion_preprocess --recenter`` does: ``x - rlnOriginXAngst / pixel size`` (origins are the shift
    that centres the particle in its box, in Å; the pixel size is the optics group's
    ``rlnMicrographPixelSize``, else ``rlnImagePixelSize``). RELION rounds that shift to whole pixels and
    keeps the rest in the origin; here the exact shift is applied and the origins are set to 0. RELION 3.0
    files with pixel origins (``rlnOriginX/Y``) are shifted by those directly.
    """
    p = Path(path)
    blocks = read_star(p)
    parts = blocks.get("particles")
    if parts is None:
        # RELION 3.0: a single (often unnamed) table
        parts = next((b for b in blocks.values() if isinstance(b, pd.DataFrame) and MIC in b.columns), None)
    if not isinstance(parts, pd.DataFrame):
        raise StarError(f"{p}: no particles table")
    for col in (MIC, X, Y):
        if col not in parts.columns:
            raise StarError(f"{p}: particles table lacks {col}")
    parts = parts.copy()
    parts[X] = parts[X].astype(np.float64)
    parts[Y] = parts[Y].astype(np.float64)
    if recenter:
        _recenter(p, parts, blocks.get("optics"))
    out: dict[str, pd.DataFrame] = {}
    for mic, rows in parts.groupby(MIC, sort=False):
        out[str(mic)] = rows.reset_index(drop=True)
    return out


def _recenter(p: Path, parts: pd.DataFrame, optics: object) -> None:
    if "rlnOriginXAngst" in parts.columns and "rlnOriginYAngst" in parts.columns:
        angpix = _pixel_sizes(p, parts, optics)
        for c, o in ((X, "rlnOriginXAngst"), (Y, "rlnOriginYAngst")):
            parts[c] = parts[c] - parts[o].to_numpy(dtype=np.float64) / angpix
            parts[o] = 0.0
    elif "rlnOriginX" in parts.columns and "rlnOriginY" in parts.columns:
        for c, o in ((X, "rlnOriginX"), (Y, "rlnOriginY")):
            parts[c] = parts[c] - parts[o].to_numpy(dtype=np.float64)
            parts[o] = 0.0
    # no origins: nothing was refined, the coordinates are the centres already


def _pixel_sizes(p: Path, parts: pd.DataFrame, optics: object) -> np.ndarray:
    """Micrograph pixel size (Å) for every particle, from its optics group."""
    if not isinstance(optics, pd.DataFrame) or optics.empty:
        raise StarError(f"{p}: recentering needs a data_optics block with a pixel size")
    col = next((c for c in ("rlnMicrographPixelSize", "rlnImagePixelSize") if c in optics.columns), None)
    if col is None:
        raise StarError(f"{p}: data_optics has neither rlnMicrographPixelSize nor rlnImagePixelSize")
    if "rlnOpticsGroup" in optics.columns and "rlnOpticsGroup" in parts.columns:
        lut: Mapping[int, float] = dict(zip(optics["rlnOpticsGroup"].astype(int), optics[col].astype(float)))
        groups = parts["rlnOpticsGroup"].astype(int)
        unknown = sorted(set(groups.unique()) - set(lut))
        if unknown:
            raise StarError(f"{p}: particles use optics group(s) {unknown} missing from data_optics")
        return groups.map(lut).to_numpy(dtype=np.float64)
    return np.full(len(parts), float(optics[col].iloc[0]))
