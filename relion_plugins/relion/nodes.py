"""Pipeline node-type labels for RELION 4.0 and 5.0, and which version a project runs.

RELION 5 renamed the node categories and does not translate labels read from
``RELION_OUTPUT_NODES.star`` (reference §4.3), so a job must write the labels of the version in use.
That version is read from the ``# version`` header of the project's ``default_pipeline.star``
(30001 = RELION 4.0, 50001 = RELION 5.0), unless the user overrides it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_VERSION = 5

# kind -> (RELION 4.0 label, RELION 5.0 label); suffixes such as ".autopick" are appended by callers.
NODE_LABELS: dict[str, tuple[str, str]] = {
    "movies": ("MicrographMoviesData.star.relion", "MicrographMovieGroupMetadata.star.relion"),
    "micrographs": ("MicrographsData.star.relion", "MicrographGroupMetadata.star.relion"),
    "coords": ("MicrographsCoords.star.relion", "MicrographCoordsGroup.star.relion"),
    "particles": ("ParticlesData.star.relion", "ParticleGroupMetadata.star.relion"),
    "images2d": ("ImagesData.star.relion", "Image2DGroupMetadata.star.relion"),
    "optimiser": ("ProcessData.star.relion.optimiser", "OptimiserData.star.relion"),
    "map": ("DensityMap.mrc", "DensityMap.mrc"),
    "halfmap": ("DensityMap.mrc.halfmap", "DensityMap.mrc.halfmap"),
    "mask": ("Mask3D.mrc", "Mask3D.mrc"),
    "logfile": ("LogFile.pdf.relion", "LogFile.pdf.relion"),
    "tomograms": ("ProcessData.star.relion.tomo.relion.tomogram_set", "TomogramGroupMetadata.star.relion"),
    "tomo_optimisation_set": (
        "ProcessData.star.relion.tomo.optimisation_set",
        "TomoOptimisationSet.star.relion",
    ),
    # A trained picker model has no RELION category; RELION keeps unknown categories as they are.
    "model": ("ProcessData.pt.relion_plugins.model", "ProcessData.pt.relion_plugins.model"),
}

_VERSION_RE = re.compile(r"^#\s*version\s+(\d+)")


class NodeError(ValueError):
    """A node kind or RELION version we do not know."""


def node_label(kind: str, version: int, suffix: str = "") -> str:
    """The node-type label for ``kind`` in RELION ``version`` (4 or 5), with an optional ``.suffix``."""
    try:
        labels = NODE_LABELS[kind]
    except KeyError as exc:
        raise NodeError(f"unknown node kind {kind!r}; known: {', '.join(sorted(NODE_LABELS))}") from exc
    if version not in (4, 5):
        raise NodeError(f"RELION version must be 4 or 5, not {version}")
    label = labels[0] if version == 4 else labels[1]
    return label + (("." + suffix.lstrip(".")) if suffix else "")


def version_from_header(number: int) -> int:
    """Map a STAR ``# version`` number (30001, 50001, ...) to a RELION major version (4 or 5)."""
    return 5 if number >= 50000 else 4


def project_relion_version(project_dir: str | os.PathLike = ".", override: int | str | None = None) -> int:
    """The RELION major version (4 or 5) whose node labels this project needs.

    ``override`` (e.g. from ``--relion_version``) wins; then the first ``# version`` line of
    ``default_pipeline.star``; with no pipeline file the default is RELION 5.
    """
    if override not in (None, "", "auto"):
        try:
            value = int(float(str(override)))
        except ValueError as exc:
            raise NodeError(f"--relion_version must be 4, 5 or auto, not {override!r}") from exc
        if value not in (4, 5):
            raise NodeError(f"--relion_version must be 4, 5 or auto, not {override!r}")
        return value
    pipeline = Path(project_dir) / "default_pipeline.star"
    try:
        with open(pipeline, encoding="utf-8", errors="replace") as fh:
            for _, line in zip(range(50), fh):
                match = _VERSION_RE.match(line.strip())
                if match:
                    return version_from_header(int(match.group(1)))
    except OSError:
        pass
    # RELION 4 and 5 both write the header; a pipeline without one is from RELION 3.1, whose
    # labels RELION 4 and 5 convert on read, so the newest labels are the safe choice.
    return DEFAULT_VERSION


def star_version_number(version: int) -> int:
    """The ``# version`` number RELION writes in STAR files (30001 for 4.0, 50001 for 5.0)."""
    return 50001 if version >= 5 else 30001
