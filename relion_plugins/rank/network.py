"""The class-ranker network: a small CNN on the 64 x 64 class image plus RELION's 24 normalised class
features, concatenated, then two fully connected layers -> one score in 0..1 (sigmoid).

Like RELION 4's ranker (reference §6) the network sees the class average windowed to the mask diameter and
Fourier-resized to 64 x 64 (:func:`relion_plugins.rank.features.class_image_for_cnn`) and the feature
vector of :func:`relion_plugins.rank.features.job_features`. Two input conventions are ours:

* **image scale**: every class image of a job is divided by one job-wide scale, the median over the
  job's scored classes of the per-image standard deviation. Relative contrast between classes (an
  empty class against a particle class) is kept, while the absolute scale, which depends on RELION's
  normalisation and the CTF correction, is not learnt. Images are then clipped to +-10.
* **features**: NaN (unscored classes) becomes 0 and values are clipped to +-10; granulometry sums of
  large boxes would otherwise dominate.

The weights are stored in the package's model-file format (:mod:`relion_plugins.pick.model_file`,
``picker="ranker"``), ~25k parameters, ~110 kB; the shipped default is
``relion_plugins/rank/weights/default_ranker.pt`` (how it was made: ``weights/README.md``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..pick.model_file import ModelFile, ModelFileError, load_model, save_model
from .features import CNN_SIZE, N_FEATURES

__all__ = [
    "ARCH_NAME",
    "DEFAULT_WEIGHTS",
    "Ranker",
    "RankerNet",
    "build_network",
    "default_arch",
    "load_ranker",
    "prepare_inputs",
    "save_ranker",
]

ARCH_NAME = "ranker-cnn-v1"
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "default_ranker.pt"
CLIP = 10.0


def default_arch() -> dict[str, Any]:
    """The architecture of the shipped network (json-able; stored in every model file)."""
    return {
        "name": ARCH_NAME,
        "image_size": CNN_SIZE,
        "n_features": N_FEATURES,
        "channels": [8, 16, 32, 32],
        "hidden": 64,
        "dropout": 0.1,
    }


class RankerNet(nn.Module):
    """CNN(image) ++ features -> FC -> FC -> logit. ``forward`` returns logits; :meth:`score` sigmoids."""

    def __init__(
        self,
        image_size: int = CNN_SIZE,
        n_features: int = N_FEATURES,
        channels: tuple[int, ...] | list[int] = (8, 16, 32, 32),
        hidden: int = 64,
        dropout: float = 0.1,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        size = image_size
        for i, c in enumerate(channels):
            k = 5 if i == 0 else 3
            # stride-2 convolutions: each halves the image, so 4 layers take 64 px to 4 px
            layers += [nn.Conv2d(c_in, c, k, stride=2, padding=k // 2), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
            size = (size + 1) // 2
        self.cnn = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)  # a little spatial layout, independent of the input size
        n_cnn = c_in * 4
        self.fc1 = nn.Linear(n_cnn + n_features, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, 1)
        self.n_features = n_features
        self.image_size = image_size

    def forward(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Logits ``[B]`` from images ``[B, H, W]`` (or ``[B, 1, H, W]``) and features ``[B, n_features]``."""
        if images.dim() == 3:
            images = images.unsqueeze(1)
        x = self.pool(self.cnn(images)).flatten(1)
        x = torch.cat([x, features], dim=1)
        x = self.drop(torch.relu(self.fc1(x)))
        return self.fc2(x).squeeze(1)

    @torch.no_grad()
    def score(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Scores in 0..1 ``[B]`` (eval mode; the module's mode is restored afterwards)."""
        was_training = self.training
        self.eval()
        try:
            return torch.sigmoid(self.forward(images, features))
        finally:
            self.train(was_training)


def build_network(arch: dict[str, Any] | None = None) -> RankerNet:
    """A fresh network for ``arch`` (default: :func:`default_arch`)."""
    a = dict(default_arch() if arch is None else arch)
    if a.get("name", ARCH_NAME) != ARCH_NAME:
        raise ModelFileError(f"unknown ranker architecture {a.get('name')!r}; this version knows {ARCH_NAME}")
    return RankerNet(
        image_size=int(a.get("image_size", CNN_SIZE)),
        n_features=int(a.get("n_features", N_FEATURES)),
        channels=tuple(int(c) for c in a.get("channels", (8, 16, 32, 32))),
        hidden=int(a.get("hidden", 64)),
        dropout=float(a.get("dropout", 0.1)),
    )


def prepare_inputs(
    images: np.ndarray, features: np.ndarray, scored: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs of **one job**: ``(images / job scale, clipped features)`` as float32.

    ``images`` ``[K, 64, 64]`` and ``features`` ``[K, 24]`` (normalised, NaN where unscored) as from
    :func:`~relion_plugins.rank.features.job_features`; ``scored`` picks the classes the job scale is
    taken from (default: rows with finite features; all rows if none).
    """
    img = np.asarray(images, dtype=np.float32)
    feat = np.asarray(features, dtype=np.float32)
    if img.ndim != 3 or feat.ndim != 2 or img.shape[0] != feat.shape[0]:
        raise ValueError(f"expected images [K, n, n] and features [K, F], got {img.shape} and {feat.shape}")
    k = img.shape[0]
    if k == 0:
        return img.copy(), feat.copy()
    use = np.isfinite(feat).all(axis=1) if scored is None else np.asarray(scored, dtype=bool).reshape(-1)
    if not use.any():
        use = np.ones(k, dtype=bool)
    sd = img.reshape(k, -1).std(axis=1)
    scale = float(np.median(sd[use]))
    if not np.isfinite(scale) or scale <= 0:
        finite = sd[np.isfinite(sd) & (sd > 0)]
        scale = float(np.median(finite)) if finite.size else 1.0
    img = np.clip(np.nan_to_num(img / scale, nan=0.0, posinf=CLIP, neginf=-CLIP), -CLIP, CLIP)
    feat = np.clip(np.nan_to_num(feat, nan=0.0, posinf=CLIP, neginf=-CLIP), -CLIP, CLIP)
    return img.astype(np.float32), feat.astype(np.float32)


@dataclass
class Ranker:
    """A loaded ranker: the network in eval mode and the facts of its model file."""

    net: RankerNet
    arch: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def score_job(
        self, images: np.ndarray, features: np.ndarray, scored: np.ndarray | None = None, batch: int = 256
    ) -> np.ndarray:
        """Scores in 0..1 ``[K]`` for the classes of one job (inputs as :func:`prepare_inputs` takes)."""
        img, feat = prepare_inputs(images, features, scored)
        if img.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        if img.shape[-1] != self.net.image_size or feat.shape[1] != self.net.n_features:
            raise ValueError(
                f"the ranker expects {self.net.image_size} px images and {self.net.n_features} features, "
                f"got {img.shape[-1]} px and {feat.shape[1]}"
            )
        out = []
        for start in range(0, img.shape[0], batch):
            out.append(
                self.net.score(
                    torch.from_numpy(img[start : start + batch]),
                    torch.from_numpy(feat[start : start + batch]),
                ).numpy()
            )
        return np.concatenate(out).astype(np.float64)

    def describe(self) -> str:
        """One line for run.out: which weights these are."""
        prov = self.meta.get("provenance", {})
        where = "shipped default" if self.path == DEFAULT_WEIGHTS else str(self.path or "in memory")
        bits = [f"ranker {self.arch.get('name', '?')} ({where})"]
        if "n_classes" in prov:
            bits.append(f"trained on {prov['n_classes']} classes")
        if "command" in prov:
            bits.append(f"by `{prov['command']}`")
        return ", ".join(bits)


def load_ranker(path: str | os.PathLike | None = None) -> Ranker:
    """Load ranker weights (``None`` or ``""``: the shipped default) into an eval-mode network on CPU.

    Raises :class:`~relion_plugins.pick.model_file.ModelFileError` with a one-line reason.
    """
    p = DEFAULT_WEIGHTS if path in (None, "") else Path(path)  # type: ignore[arg-type]
    if p == DEFAULT_WEIGHTS and not p.is_file():
        raise ModelFileError(
            f"the shipped ranker weights are missing ({p}); reinstall relion-plugins or run "
            "`relion-plugins ranker train --out FILE` and pass --model FILE"
        )
    model = load_model(p, picker="ranker")
    net = build_network(model.arch)
    try:
        net.load_state_dict(model.state)
    except RuntimeError as exc:
        raise ModelFileError(
            f"{p}: weights do not fit the {model.arch.get('name')} network ({exc})"
        ) from None
    net.eval()
    return Ranker(net=net, arch=model.arch, meta=model.meta, path=p)


def save_ranker(path: str | os.PathLike, net: RankerNet, arch: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write a ranker model file (atomic)."""
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    return save_model(path, ModelFile(picker="ranker", arch=dict(arch), state=state, meta=dict(meta)))
