"""RELION 5 tomography files: tomograms STAR (or plain MRC volumes) and particle coordinates.

Coordinates inside the package are 0-based voxels of the tomogram *as stored* (``x`` = column, ``y`` = row,
``z`` = section of ``data[z, y, x]``). RELION 5 particle sets hold ``rlnCenteredCoordinateX/Y/ZAngst``: Å from
the tomogram centre, converted by RELION as pixel = Å / tiltSeriesPixelSize + centre with centre =
``rlnTomoSizeX/Y/Z`` / 2 in unbinned (tilt-series) pixels (reference §5.6). Old ``rlnCoordinateX/Y/Z``
(unbinned pixels) are read as a fallback. A reconstructed tomogram binned by ``rlnTomoTomogramBinning``
has voxel = unbinned pixel / binning.

No torch here: reading a STAR file must not cost a torch import.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .mrc import MrcError, read_header
from .star import StarError, read_star, write_star

__all__ = [
    "Tomogram",
    "TomogramsError",
    "read_tomograms",
    "read_tomo_coordinates",
    "write_tomo_particles",
    "write_optimisation_set",
    "CENTERED",
    "PIXEL",
]

CENTERED = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")
PIXEL = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
_SIZE = ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")
_OPTICS_COPY = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")


class TomogramsError(ValueError):
    """Tomograms or coordinates a tomogram job cannot use; the message is one line for run.err."""


@dataclass(frozen=True)
class Tomogram:
    """One tomogram: RELION's name, the volume file, and what converts voxels to RELION's frames."""

    name: str  # rlnTomoName
    path: Path  # reconstructed tomogram (resolved against the project directory)
    angpix: float  # voxel size of the stored volume, Å
    ts_angpix: float  # rlnTomoTiltSeriesPixelSize, Å (= angpix for a plain MRC)
    binning: float  # rlnTomoTomogramBinning (1 for a plain MRC)
    size: tuple[float, float, float]  # rlnTomoSizeX/Y/Z in unbinned pixels
    shape: tuple[int, int, int]  # stored volume, (nz, ny, nx)
    optics: dict | None = None  # voltage etc. from the tomograms STAR, copied to the particles' optics

    def voxels_from_centered(self, xyz_A: np.ndarray) -> np.ndarray:
        """``[n, 3]`` centred Å (x, y, z) -> voxels of the stored volume."""
        centre = np.asarray(self.size, float) / 2.0
        return (np.asarray(xyz_A, float) / self.ts_angpix + centre) / self.binning

    def centered_from_voxels(self, xyz: np.ndarray) -> np.ndarray:
        """Voxels of the stored volume (x, y, z) -> RELION 5 centred Å."""
        centre = np.asarray(self.size, float) / 2.0
        return (np.asarray(xyz, float) * self.binning - centre) * self.ts_angpix


def _header_shape(path: Path) -> tuple[tuple[int, int, int], float]:
    try:
        info = read_header(path)
    except (MrcError, OSError) as exc:
        raise TomogramsError(f"cannot read tomogram {path}: {exc}") from None
    if len(info.shape) != 3 or info.shape[0] < 2:
        raise TomogramsError(f"{path} is not a 3D volume (shape {info.shape})")
    return tuple(int(v) for v in info.shape), float(info.angpix)


def _from_mrc(path: Path, angpix: float | None) -> Tomogram:
    shape, header_angpix = _header_shape(path)
    a = angpix if angpix and angpix > 0 else header_angpix
    if a <= 0:
        raise TomogramsError(f"{path}: voxel size not set in the header; give --angpix")
    nz, ny, nx = shape
    return Tomogram(path.stem, path, a, a, 1.0, (float(nx), float(ny), float(nz)), shape)


def read_tomograms(source: str, project_dir: str | os.PathLike = ".", angpix: float | None = None) -> list[Tomogram]:
    """Tomograms from a RELION 5 tomograms STAR, or MRC files (paths or glob patterns, space-separated).

    In a STAR file the table holding ``rlnTomoName`` is used (``data_global`` in RELION 5); the volume is
    ``rlnTomoReconstructedTomogram``. ``angpix`` overrides the voxel size of plain MRC volumes.
    """
    project = Path(project_dir)
    source = source.strip()
    if not source:
        raise TomogramsError("no tomograms given: a tomograms STAR file or MRC volumes")
    if source.endswith(".star"):
        return _from_star(project / source, project)
    paths: list[Path] = []
    for word in source.replace(",", " ").split():
        hits = sorted(glob.glob(str(project / word)))
        if not hits:
            raise TomogramsError(f"tomogram not found: {word}")
        paths += [Path(h) for h in hits]
    tomos = [_from_mrc(p, angpix) for p in paths]
    names = [t.name for t in tomos]
    if len(set(names)) != len(names):
        raise TomogramsError("two tomograms have the same file name stem; rename them or use a tomograms STAR")
    return tomos


def _from_star(path: Path, project: Path) -> list[Tomogram]:
    try:
        blocks = read_star(path)
    except (StarError, OSError) as exc:
        raise TomogramsError(f"cannot read tomograms STAR {path}: {exc}") from None
    table = next(
        (b for b in blocks.values() if isinstance(b, pd.DataFrame) and "rlnTomoName" in b.columns), None
    )
    if table is None:
        raise TomogramsError(f"{path}: no table with rlnTomoName")
    if "rlnTomoReconstructedTomogram" not in table.columns:
        raise TomogramsError(f"{path}: no rlnTomoReconstructedTomogram column (reconstruct the tomograms first)")
    out = []
    for _, row in table.iterrows():
        vol = project / str(row["rlnTomoReconstructedTomogram"])
        shape, header_angpix = _header_shape(vol)
        binning = float(row.get("rlnTomoTomogramBinning", 1.0) or 1.0)
        ts = float(row.get("rlnTomoTiltSeriesPixelSize", 0.0) or 0.0)
        if ts <= 0:
            if header_angpix <= 0:
                raise TomogramsError(f"{path}: no rlnTomoTiltSeriesPixelSize and no voxel size in {vol}")
            ts = header_angpix / binning
        nz, ny, nx = shape
        if all(c in table.columns for c in _SIZE):
            size = tuple(float(row[c]) for c in _SIZE)
        else:
            size = (nx * binning, ny * binning, nz * binning)
        optics = {c: float(row[c]) for c in _OPTICS_COPY if c in table.columns}
        out.append(Tomogram(str(row["rlnTomoName"]), vol, ts * binning, ts, binning, size, shape, optics))
    if not out:
        raise TomogramsError(f"{path}: no tomograms listed")
    return out


def read_tomo_coordinates(
    path: str | os.PathLike, tomograms: list[Tomogram], species_column: str = "rlnClassNumber"
) -> dict[str, pd.DataFrame]:
    """Particles per tomogram name as tables ``x, y, z`` (stored-volume voxels) and ``species`` (int).

    Reads ``rlnCenteredCoordinate*Angst`` (RELION 5), else ``rlnCoordinateX/Y/Z`` (unbinned pixels).
    A missing species column means one species (1). Particles on unknown tomograms are an error.
    """
    path = Path(path)
    try:
        blocks = read_star(path)
    except (StarError, OSError) as exc:
        raise TomogramsError(f"cannot read coordinates {path}: {exc}") from None
    table = blocks.get("particles")
    if not isinstance(table, pd.DataFrame):
        table = next((b for b in blocks.values() if isinstance(b, pd.DataFrame) and "rlnTomoName" in b.columns), None)
    if table is None or "rlnTomoName" not in table.columns:
        raise TomogramsError(f"{path}: no particle table with rlnTomoName")
    centred = all(c in table.columns for c in CENTERED)
    if not centred and not all(c in table.columns for c in PIXEL):
        raise TomogramsError(f"{path}: needs rlnCenteredCoordinateX/Y/ZAngst or rlnCoordinateX/Y/Z")
    by_name = {t.name: t for t in tomograms}
    if species_column in table.columns:
        species = pd.to_numeric(table[species_column], errors="coerce").to_numpy()
        if not np.all(np.isfinite(species)) or np.any(species < 1) or np.any(species != np.round(species)):
            raise TomogramsError(f"{path}: {species_column} must hold whole numbers 1, 2, ... (the species)")
        species = species.astype(int)
    else:
        species = np.ones(len(table), int)
    cols = CENTERED if centred else PIXEL
    xyz = table[list(cols)].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(xyz)):
        raise TomogramsError(f"{path}: coordinates contain NaN or infinite values")
    names = table["rlnTomoName"].astype(str).to_numpy()
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        raise TomogramsError(f"{path}: particles on tomograms not in the tomograms input: {', '.join(unknown[:3])}")
    out: dict[str, pd.DataFrame] = {}
    for name in dict.fromkeys(names):
        tomo = by_name[name]
        sel = names == name
        vox = tomo.voxels_from_centered(xyz[sel]) if centred else xyz[sel] / tomo.binning
        out[name] = pd.DataFrame({"x": vox[:, 0], "y": vox[:, 1], "z": vox[:, 2], "species": species[sel]})
    return out


def write_tomo_particles(
    path: str | os.PathLike,
    picks: dict[str, pd.DataFrame],
    tomograms: list[Tomogram],
) -> None:
    """Write a RELION 5 particle set (``data_general``, ``data_optics``, ``data_particles``), atomically.

    ``picks`` maps tomogram names to tables with ``x, y, z`` (stored-volume voxels), ``species`` and
    ``score``; they become ``rlnCenteredCoordinate*Angst``, ``rlnClassNumber`` and
    ``rlnAutopickFigureOfMerit``. One optics group per tilt-series pixel size.
    """
    by_name = {t.name: t for t in tomograms}
    groups: dict[float, int] = {}
    optics_rows = []
    for t in tomograms:
        if t.ts_angpix not in groups:
            groups[t.ts_angpix] = len(groups) + 1
            row = {
                "rlnOpticsGroup": groups[t.ts_angpix],
                "rlnOpticsGroupName": f"opticsGroup{groups[t.ts_angpix]}",
                "rlnTomoTiltSeriesPixelSize": t.ts_angpix,
            }
            row.update(t.optics or {})
            optics_rows.append(row)
    optics = pd.DataFrame(optics_rows).fillna(0.0)
    rows = []
    for name, table in picks.items():
        tomo = by_name[name]
        if len(table) == 0:
            continue
        a = tomo.centered_from_voxels(table[["x", "y", "z"]].to_numpy(dtype=np.float64))
        rows.append(
            pd.DataFrame(
                {
                    "rlnTomoName": name,
                    CENTERED[0]: a[:, 0],
                    CENTERED[1]: a[:, 1],
                    CENTERED[2]: a[:, 2],
                    "rlnClassNumber": table["species"].to_numpy(dtype=int),
                    "rlnAutopickFigureOfMerit": table["score"].to_numpy(dtype=float),
                    "rlnOpticsGroup": groups[tomo.ts_angpix],
                }
            )
        )
    columns = ["rlnTomoName", *CENTERED, "rlnClassNumber", "rlnAutopickFigureOfMerit", "rlnOpticsGroup"]
    particles = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)
    write_star(path, {"general": {"rlnTomoSubTomosAre2DStacks": 1}, "optics": optics, "particles": particles})


def write_optimisation_set(path: str | os.PathLike, particles: str, tomograms: str) -> None:
    """RELION 5's optimisation set: the particles and tomograms files that go together."""
    write_star(path, {"": {"rlnTomoParticlesFile": particles, "rlnTomoTomogramsFile": tomograms}})
