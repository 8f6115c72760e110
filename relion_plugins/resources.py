"""Where the files that ship with the package are: scheme directories, job templates, model weights."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """``schemes`` or ``job_templates``: inside an installed wheel, else beside the package in a checkout."""
    for candidate in (_PACKAGE / "resources" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"relion-plugins resource directory {name!r} is missing from this installation")


def model_search_path() -> list[Path]:
    """Directories searched for trained model files, first match wins."""
    paths = []
    if os.environ.get("RELION_PLUGINS_MODELS"):
        paths += [Path(p) for p in os.environ["RELION_PLUGINS_MODELS"].split(os.pathsep) if p]
    paths.append(Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "relion_plugins" / "models")
    paths.append(_PACKAGE / "models")
    return paths
