"""Micrographs STAR files (``data_optics`` + ``data_micrographs``) as a list of micrographs to process."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .star import StarError, read_star


class MicrographsError(ValueError):
    """A micrographs STAR file that a picker cannot use; the message is one line for run.err."""


@dataclass(frozen=True)
class Micrograph:
    """One micrograph as RELION names it, where its file is, and its optics."""

    name: str  # rlnMicrographName exactly as in the STAR file (extraction matches it as a string)
    path: Path  # file to open (name resolved against the project directory)
    angpix: float  # rlnMicrographPixelSize of its optics group, Å
    optics_group: int = 1
    ctf: dict = field(default_factory=dict)  # defocus etc. when the STAR file has them


@dataclass(frozen=True)
class MicrographSet:
    """Every micrograph of a micrographs STAR file, with the optics table it came with."""

    star_path: Path
    items: list[Micrograph]
    optics: pd.DataFrame

    @property
    def angpix(self) -> float:
        """The common pixel size (Å); reading already refused mixed pixel sizes."""
        return self.items[0].angpix

    def __len__(self) -> int:
        return len(self.items)


_CTF_LABELS = (
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnCtfMaxResolution",
    "rlnCtfFigureOfMerit",
    "rlnPhaseShift",
)


def read_micrographs(
    star_path: str | os.PathLike,
    project_dir: str | os.PathLike = ".",
    *,
    angpix_override: float | None = None,
    check_files: bool = True,
    allow_mixed_pixel_sizes: bool = False,
) -> MicrographSet:
    """Read a RELION 3.1/4/5 micrographs STAR file and resolve every micrograph file.

    Raises :class:`MicrographsError` with a one-line reason for: a missing or unreadable file, no
    ``data_optics`` table (pre-3.1 files; pass ``angpix_override`` to use them anyway), no micrographs,
    an optics group the optics table does not define, mixed pixel sizes, or (``check_files``) a
    micrograph file that does not exist.
    """
    star_path = Path(star_path)
    project = Path(project_dir)
    try:
        blocks = read_star(star_path)
    except StarError as exc:
        raise MicrographsError(str(exc)) from exc
    except OSError as exc:
        raise MicrographsError(f"cannot read micrographs STAR {star_path}: {exc.strerror}") from exc

    table = blocks.get("micrographs")
    if table is None:
        # RELION 3.0 files keep the micrographs in the unnamed/first block.
        table = next(
            (b for b in blocks.values() if isinstance(b, pd.DataFrame) and "rlnMicrographName" in b), None
        )
    if not isinstance(table, pd.DataFrame) or "rlnMicrographName" not in table.columns:
        raise MicrographsError(f"{star_path}: no micrographs table with rlnMicrographName")
    if len(table) == 0:
        raise MicrographsError(f"{star_path}: the micrographs table is empty")

    optics = blocks.get("optics")
    pixel_sizes: dict[int, float] = {}
    if isinstance(optics, pd.DataFrame) and len(optics):
        size_label = next(
            (lab for lab in ("rlnMicrographPixelSize", "rlnImagePixelSize") if lab in optics.columns), None
        )
        if size_label is None and angpix_override is None:
            raise MicrographsError(f"{star_path}: the optics table has no rlnMicrographPixelSize")
        groups = (
            optics["rlnOpticsGroup"] if "rlnOpticsGroup" in optics else pd.Series(range(1, len(optics) + 1))
        )
        if size_label is not None:
            pixel_sizes = {int(g): float(a) for g, a in zip(groups, optics[size_label])}
    elif angpix_override is None:
        raise MicrographsError(
            f"{star_path}: no data_optics table (a RELION 3.0 file?); re-import it with RELION >= 3.1 "
            "or give the pixel size explicitly"
        )
    else:
        optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnMicrographPixelSize": [float(angpix_override)]})

    groups_col = table["rlnOpticsGroup"] if "rlnOpticsGroup" in table.columns else None
    items: list[Micrograph] = []
    missing: list[str] = []
    for i, name in enumerate(table["rlnMicrographName"]):
        name = str(name)
        group = int(groups_col.iloc[i]) if groups_col is not None else 1
        if angpix_override is not None:
            angpix = float(angpix_override)
        elif group in pixel_sizes:
            angpix = pixel_sizes[group]
        else:
            raise MicrographsError(
                f"{star_path}: micrograph {name} has optics group {group}, not in data_optics"
            )
        if not (math.isfinite(angpix) and angpix > 0):
            raise MicrographsError(f"{star_path}: invalid pixel size {angpix} for optics group {group}")
        path = Path(name) if os.path.isabs(name) else project / name
        if check_files and not path.is_file():
            missing.append(name)
        ctf = {lab: float(table[lab].iloc[i]) for lab in _CTF_LABELS if lab in table.columns}
        items.append(Micrograph(name=name, path=path, angpix=angpix, optics_group=group, ctf=ctf))

    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise MicrographsError(f"micrograph file not found: {missing[0]}{more} (listed in {star_path})")
    sizes = sorted({round(m.angpix, 4) for m in items})
    if len(sizes) > 1 and not allow_mixed_pixel_sizes:
        raise MicrographsError(
            f"{star_path}: mixed pixel sizes {', '.join(f'{s:g}' for s in sizes)} Å; "
            "pick each optics group in its own job (split with a Select job)"
        )
    return MicrographSet(star_path=star_path, items=items, optics=optics)
