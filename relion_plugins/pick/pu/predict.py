"""Applying a trained PU picker: preprocessing, score maps, one pick per particle, calibrated scores.

Preprocessing mirrors training exactly: Fourier-crop to the model's pixel size, then the stored
normalisation (the scaled two-component mixture re-estimates this micrograph's scale from the stored
global parameters, or plain standardisation), then particles are made bright or dark as in training.

**Calibrated score.** The network's logit is not a probability: PU training sees unlabelled particles
as partly negative, and the class prior shifts it. After training, the job marks every pick on held-out
micrographs by whether it lies within a particle radius of a labelled particle, and fits
``P(marked) = c * sigmoid(a * logit + b)``, where ``c`` is the labelled share of the particles on those
micrographs (labels from 2D classification, or a few hand picks, rarely cover every particle); that fit
gives the slope ``a``. The offset puts ``p = 0.5`` at the logit that keeps the expected number of
particles per micrograph on the held-out micrographs (:func:`operating_calibration`): with tens of labels
the fitted offset is noisy, the count is not. ``p = sigmoid(a * logit + b)`` is the figure of merit the
pick job writes; its threshold (default 0.5) keeps about the expected number of particles.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ...imaging.fourier import fourier_crop, resampled_shape
from ...imaging.normalize import GmmNormalization, standardize
from ..nms import score_map_peaks
from .models import PUClassifier


def working_shape(shape: tuple[int, int], angpix: float, model_angpix: float) -> tuple[int, int]:
    """Shape of a micrograph of ``shape`` at ``angpix`` resampled to ``model_angpix``."""
    factor = float(model_angpix) / float(angpix)
    if factor < 1.0 - 1e-3:
        raise ValueError(
            f"the model was trained at {model_angpix:g} Å/px, finer than these micrographs ({angpix:g} Å/px)"
        )
    return resampled_shape(shape, factor) if factor > 1.0 + 1e-3 else tuple(shape)


def downsample(image: np.ndarray, angpix: float, model_angpix: float) -> np.ndarray:
    """Fourier-crop ``image`` from ``angpix`` to ``model_angpix`` (no-op when they agree)."""
    shape = working_shape(image.shape, angpix, model_angpix)
    if tuple(shape) == tuple(image.shape):
        return np.asarray(image, dtype=np.float32)
    return fourier_crop(np.asarray(image, dtype=np.float32), shape)


def normalize(image: np.ndarray, normalization: dict) -> np.ndarray:
    """Apply a stored normalisation (``{"method": "scaled_gmm", ...}`` or ``{"method": "standardize"}``)."""
    method = normalization.get("method", "standardize")
    if method == "scaled_gmm":
        return GmmNormalization.from_dict(normalization).apply(image)
    if method == "standardize":
        return standardize(image)
    raise ValueError(f"unknown normalisation method {method!r}")


def prepare(
    image: np.ndarray, angpix: float, model_angpix: float, normalization: dict, invert: bool = False
) -> np.ndarray:
    """Micrograph -> the network's input: resampled, normalised, contrast as in training."""
    out = normalize(downsample(image, angpix, model_angpix), normalization)
    return -out if invert else out


def total_stride(model: PUClassifier) -> int:
    """Product of the network's strides: its strided output samples every this many input pixels."""
    out = 1
    for block in model.blocks:
        out *= int(getattr(block, "stride", 1))
    return out


def score_map(
    model: PUClassifier, image: np.ndarray, device: str | torch.device = "cpu", step: int = 1
) -> np.ndarray:
    """Logit map of a prepared micrograph (same shape).

    ``step`` 1 is the exact dense map (Topaz's dilated network: every pixel scored). A larger ``step``
    (a divisor of :func:`total_stride`) runs the strided network on ``(stride / step)^2`` shifted copies
    of the micrograph, which scores every ``step``-th pixel exactly at a fraction of the cost, and fills in
    the rest by bilinear interpolation of the logits; particles span many pixels at the model's scale, so
    the peaks barely move (see docs/pu_picker.md for the measured effect).
    """
    with torch.inference_mode():
        t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)
        if step <= 1:
            return model.score_map(t).float().cpu().numpy()
        return _strided_map(model, t, int(step)).float().cpu().numpy()


def _strided_map(model: PUClassifier, image: torch.Tensor, step: int) -> torch.Tensor:
    from .models import _reflect_pad

    stride = total_stride(model)
    if stride % step:
        raise ValueError(f"step {step} must divide the network's total stride {stride}")
    h, w = image.shape
    r = model.receptive_field // 2
    xp = _reflect_pad(image[None, None], r)
    per = stride // step
    gh, gw = -(-h // step), -(-w // step)  # samples at 0, step, 2 step, ... covering the image
    grid = torch.empty((gh, gw), dtype=torch.float32, device=image.device)
    was_training = model.training
    model.eval()
    try:
        for iy in range(per):
            for ix in range(per):
                oy, ox = iy * step, ix * step
                if oy >= h or ox >= w:
                    continue
                z = model.classifier(model._features(xp[..., oy:, ox:]))[0, 0]
                # z[i, j] scores the window centred on pixel (oy + stride i, ox + stride j)
                ny = min(z.shape[0], -(-(h - oy) // stride))
                nx = min(z.shape[1], -(-(w - ox) // stride))
                grid[iy::per, ix::per][:ny, :nx] = z[:ny, :nx]
    finally:
        model.train(was_training)
    full = torch.nn.functional.interpolate(
        grid[None, None], size=((gh - 1) * step + 1, (gw - 1) * step + 1), mode="bilinear", align_corners=True
    )[0, 0]
    if full.shape[0] < h or full.shape[1] < w:  # the last samples sit before the last pixels: extend
        full = torch.nn.functional.pad(
            full[None, None], (0, max(0, w - full.shape[1]), 0, max(0, h - full.shape[0])), mode="replicate"
        )[0, 0]
    return full[:h, :w]


@dataclass
class Calibration:
    """``p = min(1, sigmoid(a * logit + b) / completeness)`` (see the module docstring)."""

    a: float = 1.0
    b: float = 0.0
    completeness: float = 1.0

    def __call__(self, logit: np.ndarray) -> np.ndarray:
        z = np.clip(self.a * np.asarray(logit, dtype=np.float64) + self.b, -50.0, 50.0)
        return np.minimum(1.0, 1.0 / (1.0 + np.exp(-z)) / max(self.completeness, 1e-6))

    def logit_for(self, probability: float) -> float:
        """The logit at which the calibrated score equals ``probability`` (for thresholding maps)."""
        q = min(max(float(probability) * max(self.completeness, 1e-6), 1e-12), 1 - 1e-12)
        if self.a <= 0:  # a constant score: every pick passes, or none
            return -math.inf if q <= 1.0 / (1.0 + math.exp(-self.b)) else math.inf
        return (math.log(q / (1 - q)) - self.b) / self.a

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> Calibration:
        return cls(**d) if d else cls()


def fit_calibration(logits: np.ndarray, hits: np.ndarray, completeness: float = 1.0) -> Calibration:
    """Fit ``P(hit | logit) = completeness * sigmoid(a * logit + b)`` by maximum likelihood.

    ``hits`` marks picks near a *labelled* particle; a real particle is labelled with probability
    ``completeness`` whatever its score (Elkan & Noto 2008), so the fitted sigmoid itself is the
    probability that a pick is a particle. Fitting a plain logistic to sparse labels and dividing by the
    completeness afterwards flattens the curve (a logistic cannot level off at ``completeness``); this
    fits the capped model directly. The slope is kept >= 0."""
    from scipy.optimize import minimize

    x = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(hits, dtype=np.float64).ravel()
    c = float(min(max(completeness, 1e-3), 1.0))
    if x.size < 2 or y.min() == y.max():
        return Calibration(1.0, 0.0, 1.0)
    mu, sd = float(x.mean()), float(x.std()) or 1.0
    z = (x - mu) / sd
    # Platt's target smoothing keeps the fit finite when the classes separate perfectly
    n1, n0 = y.sum(), y.size - y.sum()
    t = np.where(y > 0.5, (n1 + 1) / (n1 + 2), 1 / (n0 + 2))

    def nll(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = 1.0 / (1.0 + np.exp(-np.clip(w[0] * z + w[1], -50, 50)))
        q = np.clip(c * s, 1e-12, 1 - 1e-12)
        value = -np.sum(t * np.log(q) + (1 - t) * np.log1p(-q))
        dq = c * s * (1 - s)  # dq/du
        du = -(t / q - (1 - t) / (1 - q)) * dq
        return float(value), np.array([np.sum(du * z), np.sum(du)])

    start = np.array([1.0, float(np.log(max(min(y.mean() / c, 0.99), 0.01) / (1 - min(y.mean() / c, 0.99))))])
    res = minimize(nll, start, jac=True, method="L-BFGS-B", bounds=[(0.0, 50.0), (-50.0, 50.0)])
    w = res.x
    a = float(w[0]) / sd
    return Calibration(a, float(w[1]) - a * mu, 1.0)


def count_threshold(logits_per_micrograph: list[np.ndarray], expected_per_micrograph: float) -> float:
    """The logit above which the picks number ``expected_per_micrograph`` per micrograph on average.

    Pooled over the micrographs (one global cut, so crowded micrographs keep more picks than sparse
    ones). Fewer picks than expected: the lowest logit (every pick passes)."""
    pooled = np.sort(np.concatenate([np.ravel(x) for x in logits_per_micrograph] or [np.zeros(0)]))[::-1]
    if pooled.size == 0:
        return 0.0
    n = int(round(float(expected_per_micrograph) * len(logits_per_micrograph)))
    return float(pooled[min(max(n, 1), pooled.size) - 1])


def operating_calibration(
    logits_per_micrograph: list[np.ndarray],
    hits_per_micrograph: list[np.ndarray],
    expected_per_micrograph: float,
    completeness: float,
) -> Calibration:
    """Calibration whose 0.5 point keeps the expected number of particles per micrograph.

    The slope comes from the labelled hits (:func:`fit_calibration`); the offset puts ``p = 0.5`` at
    :func:`count_threshold`. With few labels (tens, as when a user clicks a few particles) the offset
    of a fit to them is noisy by a logit or more, while the count uses every pick of the held-out
    micrographs and the particle count the user gave for the class prior."""
    fit = fit_calibration(
        np.concatenate(logits_per_micrograph), np.concatenate(hits_per_micrograph), completeness
    )
    t = count_threshold(logits_per_micrograph, expected_per_micrograph)
    a = fit.a if fit.a > 0 else 1.0
    return Calibration(a, -a * t, 1.0)


def pick_from_map(
    logit_map: np.ndarray,
    radius_px: float,
    *,
    threshold_logit: float = -math.inf,
    border_px: int = 0,
    max_picks: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-maximum suppression on a logit map: ``(x, y, logit)`` in map pixels, best first.

    ``radius_px``: no two picks closer than this (the particle radius: one pick per particle)."""
    y, x, s = score_map_peaks(
        logit_map, radius_px, threshold=threshold_logit, border_px=border_px, max_picks=max_picks
    )
    return x.astype(np.float64), y.astype(np.float64), s.astype(np.float64)
