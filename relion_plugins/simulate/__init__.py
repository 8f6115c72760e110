"""Synthetic micrographs with ground truth, and small RELION projects built from them."""

from __future__ import annotations

from .micrograph import (
    JUNK_PRESETS,
    JunkConfig,
    JunkItem,
    MicrographConfig,
    SimulatedMicrograph,
    clear_bank_cache,
    projection_bank,
    simulate_micrograph,
)
from .phantoms import MAP_ALIASES, PHANTOMS, Volume, get_volume, load_map, make_phantom
from .project import SimulatedProject, make_project, split_names, write_pipeline, write_split

__all__ = [
    "JUNK_PRESETS",
    "MAP_ALIASES",
    "PHANTOMS",
    "JunkConfig",
    "JunkItem",
    "MicrographConfig",
    "SimulatedMicrograph",
    "SimulatedProject",
    "Volume",
    "clear_bank_cache",
    "get_volume",
    "load_map",
    "make_phantom",
    "make_project",
    "projection_bank",
    "simulate_micrograph",
    "split_names",
    "write_pipeline",
    "write_split",
]
