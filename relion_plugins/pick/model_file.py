"""The one model-file format of every trained picker (PU, transformer, tomogram).

A model file is a torch zip archive (``torch.save``) holding a plain dictionary:

| key          | holds                                                                                  |
|--------------|----------------------------------------------------------------------------------------|
| ``format``   | ``"relion-plugins-model"``                                                             |
| ``version``  | format version (``FORMAT_VERSION``); newer files are refused with a clear message      |
| ``picker``   | which picker family made it: ``"pu"``, ``"detr"``, ``"tomo"``                          |
| ``arch``     | json-able architecture description: enough to rebuild the network without the weights |
| ``state``    | the network's ``state_dict`` (tensors only)                                            |
| ``meta``     | json-able facts needed to use the weights: ``angpix`` (pixel size the network saw),    |
|              | ``diameter_A``, ``normalization`` (method + parameters), ``objective``, ``pi``,        |
|              | ``threshold`` calibration, ``provenance`` (package version, date, seed, data, counts)  |

Only tensors and json-able values are stored, so loading uses ``torch.load(weights_only=True)``: opening a
model file never executes code from it. Files are written atomically, so a killed training job leaves the
previous model (or none), never half a file.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..relion.atomic import atomic_path

FORMAT = "relion-plugins-model"
FORMAT_VERSION = 1
SUFFIX = ".pt"


class ModelFileError(ValueError):
    """A model file is missing, unreadable, of another format or for another picker."""


@dataclass
class ModelFile:
    """A trained picker: architecture, weights and the facts needed to apply them."""

    picker: str
    arch: dict[str, Any]
    state: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def angpix(self) -> float:
        """Pixel size (Å) of the images the network was trained on."""
        return float(self.meta["angpix"])

    @property
    def diameter_A(self) -> float:
        return float(self.meta["diameter_A"])

    def describe(self) -> str:
        """One line for run.out: what this model is and what it was trained on."""
        prov = self.meta.get("provenance", {})
        parts = [
            f"{self.picker} model {self.arch.get('name', '?')}",
            f"{self.meta.get('angpix', '?')} Å/px",
            f"diameter {self.meta.get('diameter_A', '?')} Å",
        ]
        if "objective" in self.meta:
            parts.append(f"objective {self.meta['objective']}")
        if "n_positives" in prov:
            parts.append(f"{prov['n_positives']} positives on {prov.get('n_micrographs', '?')} micrographs")
        if "created" in prov:
            parts.append(f"trained {prov['created']}")
        return ", ".join(parts)


def _check_jsonable(what: str, value: Any) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"model file {what} must be json-able: {exc}") from None


def save_model(path: str | os.PathLike, model: ModelFile) -> Path:
    """Write ``model`` to ``path`` atomically; returns the path."""
    _check_jsonable("arch", model.arch)
    _check_jsonable("meta", model.meta)
    meta = dict(model.meta)
    prov = dict(meta.get("provenance", {}))
    prov.setdefault("created", _dt.datetime.now().isoformat(timespec="seconds"))
    from .. import __version__

    prov.setdefault("package_version", __version__)
    meta["provenance"] = prov
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "picker": model.picker,
        # json text, not nested dicts: weights_only loading accepts it, and it stays readable as is
        "arch": json.dumps(model.arch),
        "meta": json.dumps(meta),
        "state": {k: v.detach().cpu().contiguous() for k, v in model.state.items()},
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    model.meta = meta
    return path


def load_model(path: str | os.PathLike, picker: str | None = None) -> ModelFile:
    """Read a model file; ``picker`` (e.g. ``"pu"``) is checked when given."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise ModelFileError(f"cannot read model file {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a relion-plugins model file")
    if int(payload.get("version", 0)) > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has model-file format {payload['version']}; this relion-plugins reads up to "
            f"{FORMAT_VERSION}: upgrade relion-plugins"
        )
    if picker is not None and payload.get("picker") != picker:
        raise ModelFileError(f"{path} is a {payload.get('picker')} model, expected a {picker} model")
    try:
        arch = json.loads(payload["arch"])
        meta = json.loads(payload["meta"])
        state = dict(payload["state"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: damaged model file ({exc})") from None
    return ModelFile(picker=str(payload["picker"]), arch=arch, state=state, meta=meta)
