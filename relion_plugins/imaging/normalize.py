"""Micrograph normalisation: plain standardisation and Topaz's per-image scaled Gaussian mixture.

The mixture model is the one of the Topaz paper (Bepler et al. 2019, Nature Methods; ``topaz normalize``
up to v0.2.1, class ``ScaledGaussianMixture``): every micrograph ``i`` has its own scale ``s_i`` (dose,
gain), and after dividing by it all pixels of all micrographs follow one shared two-component Gaussian
mixture::

    x_ij / s_i  ~  w_0 N(mu_0, var_0) + w_1 N(mu_1, var_1)      (so p(x_ij) carries a 1 / s_i Jacobian)

It is fitted by coordinate-ascent EM over a random pixel sample of every micrograph: responsibilities,
then the shared weights / means / variances, then each scale in closed form (the positive root of
``a t^2 - b t - n = 0`` for ``t = 1 / s_i``; the ``-n log s_i`` Jacobian term keeps the scales from
collapsing). A micrograph is normalised as ``(x / s_i - mu_b) / sqrt(var_b)`` with ``b`` the component of
largest weight (the background: ice). The stored global parameters let a *new* micrograph get its own
scale from a few EM steps on that image alone (:meth:`GmmNormalization.estimate_scale`).

Differences from Topaz, on purpose:

* Topaz v0.2 initialises the responsibilities at random and the scales from the image means; here the
  scales start from the images' RMS (also right for zero-mean data, where means say nothing) and the
  components from the pooled median / MAD (background) and mean / variance (the rest): deterministic,
  so the seed only chooses the pixel sample.
* Topaz fits on every 25th pixel and gives a new micrograph its scale with hard assignments and a 0.5
  prior on "no rescaling"; here a fixed-size random sample (10,000 px per micrograph: 30 micrographs in
  well under a second) and soft EM steps from an RMS-matched start.
* The scale is only defined up to a global factor (scaling all ``s_i`` by ``g`` and the means by
  ``1/g`` changes nothing); it is fixed here by a geometric mean of the fitted scales of 1.
* Topaz >= 0.2.2 (``topaz/stats.py``, ``normalize``) replaced this by an independent 2-component GMM per
  micrograph with one shared variance, a Beta(900, 1) prior pushing the background weight to ~1 and
  restarts from 12 quantile splits. That fits every micrograph alone (no shared model to store for pick
  time); the scaled model is kept here because it can be saved with a trained picker and re-applied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit

__all__ = ["GmmNormalization", "fit_gmm_normalization", "standardize"]

_LOG_2PI = math.log(2.0 * math.pi)
# Variances never fall below this share of the pooled variance: a component collapsing onto a few
# identical pixel values (saturated / dead pixels) would otherwise drive the likelihood to infinity.
_VAR_FLOOR = 1e-6


def standardize(image: np.ndarray) -> np.ndarray:
    """``(image - mean) / std`` as float32; a constant image gives zeros (no division by 0)."""
    arr = np.asarray(image)
    mean = float(np.mean(arr, dtype=np.float64))
    std = float(np.std(arr, dtype=np.float64))
    out = arr.astype(np.float32) - np.float32(mean)
    if std > 0 and np.isfinite(std):
        out /= np.float32(std)
    else:
        out[...] = 0.0
    return out


@dataclass
class GmmNormalization:
    """Fitted global parameters of the scaled two-component mixture (see the module docstring).

    ``weights``, ``means``, ``variances``: the two shared components, in units of scaled pixels.
    ``background``: index of the dominant component, whose mean / std define the normalisation.
    ``n_iter_apply``: EM steps used to estimate a new micrograph's scale. ``scales``: the fitted scales of
    the training inputs, in input order (not stored by :meth:`to_dict`: a model file only needs the
    global parameters).
    """

    weights: tuple[float, float]
    means: tuple[float, float]
    variances: tuple[float, float]
    background: int
    n_iter_apply: int = 10
    scales: np.ndarray = field(default_factory=lambda: np.ones(0), repr=False, compare=False)

    def to_dict(self) -> dict:
        """JSON-able dict of the global parameters."""
        return {
            "method": "scaled_gmm",
            "weights": [float(v) for v in self.weights],
            "means": [float(v) for v in self.means],
            "variances": [float(v) for v in self.variances],
            "background": int(self.background),
            "n_iter_apply": int(self.n_iter_apply),
        }

    @classmethod
    def from_dict(cls, d: dict) -> GmmNormalization:
        """Inverse of :meth:`to_dict`."""
        if d.get("method", "scaled_gmm") != "scaled_gmm":
            raise ValueError(f"not a scaled-GMM normalisation: method={d.get('method')!r}")
        return cls(
            weights=tuple(float(v) for v in d["weights"]),  # type: ignore[arg-type]
            means=tuple(float(v) for v in d["means"]),  # type: ignore[arg-type]
            variances=tuple(float(v) for v in d["variances"]),  # type: ignore[arg-type]
            background=int(d["background"]),
            n_iter_apply=int(d.get("n_iter_apply", 10)),
        )

    @property
    def mean(self) -> float:
        """Background mean (scaled pixel units)."""
        return float(self.means[self.background])

    @property
    def std(self) -> float:
        """Background standard deviation (scaled pixel units)."""
        return math.sqrt(float(self.variances[self.background]))

    def estimate_scale(self, image: np.ndarray, n_samples: int = 20_000, n_iter: int | None = None) -> float:
        """Scale of one micrograph under the stored mixture: a few EM steps with the globals fixed.

        Uses an evenly strided pixel subsample (``n_samples``), so the result is deterministic.
        """
        x = _strided_sample(np.asarray(image), n_samples)[None, :]
        w = np.asarray(self.weights, dtype=np.float64)
        mu = np.asarray(self.means, dtype=np.float64)
        var = np.asarray(self.variances, dtype=np.float64)
        # Start where the image's RMS matches the model's: E[y^2] = sum w (mu^2 + var) at scale 1.
        m2 = float(np.sum(w * (mu**2 + var)))
        rms = math.sqrt(float(np.mean(x**2)))
        if not rms > 0:
            return 1.0  # an all-zero image has no scale to find
        s = np.array([rms / math.sqrt(m2)])
        for _ in range(self.n_iter_apply if n_iter is None else n_iter):
            r1, _ = _responsibilities(x / s[:, None], w, mu, var)
            s = _update_scales(x, r1, mu, var)
        return float(s[0])

    def apply(self, image: np.ndarray, scale: float | None = None) -> np.ndarray:
        """Normalised float32 micrograph ``(x / s - mu_b) / std_b``; ``scale`` estimated when None."""
        arr = np.asarray(image)
        s = self.estimate_scale(arr) if scale is None else float(scale)
        out = arr.astype(np.float32) / np.float32(s)
        out -= np.float32(self.mean)
        out /= np.float32(self.std)
        return out


def _strided_sample(img: np.ndarray, n: int) -> np.ndarray:
    flat = img.reshape(-1)
    step = max(1, flat.size // max(1, n))
    return flat[::step].astype(np.float64)


def _responsibilities(
    y: np.ndarray, w: np.ndarray, mu: np.ndarray, var: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(P(component 1 | y), log p(y)) for scaled pixels ``y`` (the 1/s Jacobian not included)."""
    l0 = math.log(w[0]) - 0.5 * (_LOG_2PI + math.log(var[0])) - (y - mu[0]) ** 2 / (2.0 * var[0])
    l1 = math.log(w[1]) - 0.5 * (_LOG_2PI + math.log(var[1])) - (y - mu[1]) ** 2 / (2.0 * var[1])
    d = l1 - l0
    # Two components: the posterior is a logistic of the log-odds, log p = l0 + softplus(d).
    return expit(d), l0 + np.logaddexp(0.0, d)


def _update_scales(x: np.ndarray, r1: np.ndarray, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Closed-form scale per row of ``x`` given responsibilities and fixed components."""
    r0 = 1.0 - r1
    x2 = x**2
    a = (r0 * x2).sum(axis=1) / var[0] + (r1 * x2).sum(axis=1) / var[1]
    b = (r0 * x).sum(axis=1) * (mu[0] / var[0]) + (r1 * x).sum(axis=1) * (mu[1] / var[1])
    n = x.shape[1]
    a = np.maximum(a, 1e-300)
    t = (b + np.sqrt(b**2 + 4.0 * a * n)) / (2.0 * a)  # t = 1/s, the positive root
    return 1.0 / t


def _sample_matrix(items: Sequence[np.ndarray], n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_images, k]`` float64 pixel sample, k = min(n_samples, smallest input)."""
    sizes = [int(np.asarray(it).size) for it in items]
    if min(sizes) == 0:
        raise ValueError("empty image in the normalisation input")
    k = min(int(n_samples), min(sizes))
    out = np.empty((len(items), k), dtype=np.float64)
    for i, it in enumerate(items):
        flat = np.asarray(it).reshape(-1)
        # with replacement: O(k), and statistically indistinguishable for k << size
        idx = rng.integers(0, flat.size, size=k) if k < flat.size else np.arange(flat.size)
        out[i] = flat[idx]
    return out


def fit_gmm_normalization(
    images_or_samples: Sequence[np.ndarray],
    n_iter: int = 100,
    seed: int | None = 0,
    n_samples: int = 10_000,
    tol: float = 1e-7,
    n_iter_apply: int = 10,
) -> GmmNormalization:
    """Fit the per-image scaled two-component Gaussian mixture over a set of micrographs.

    ``images_or_samples``: one array per micrograph (any shape: whole images or pixel samples).
    ``n_samples``: pixels drawn at random from each (with a ``seed``-ed numpy Generator); all inputs use
    the same count (at most the smallest input's size). ``n_iter``: maximum EM iterations, stopping early
    when the mean log-likelihood per pixel improves by less than ``tol``. The returned object's ``scales``
    are those of the inputs (geometric mean 1).
    """
    if len(images_or_samples) == 0:
        raise ValueError("no images to fit the normalisation on")
    rng = np.random.default_rng(seed)
    x = _sample_matrix(images_or_samples, n_samples, rng)
    if not np.all(np.isfinite(x)):
        raise ValueError("images contain NaN or Inf values")

    rms = np.sqrt(np.mean(x**2, axis=1))
    if np.any(rms <= 0):
        raise ValueError("an all-zero image cannot be scaled")
    s = rms / math.exp(float(np.mean(np.log(rms))))
    y = x / s[:, None]
    pooled_var = float(np.var(y))
    if pooled_var <= 0:
        raise ValueError("images are constant: the mixture is undefined")
    floor = _VAR_FLOOR * pooled_var
    med = float(np.median(y))
    mad = 1.4826 * float(np.median(np.abs(y - med)))
    # Component 0 starts as the bulk (robust centre / width), component 1 as a broad "everything else".
    w = np.array([0.8, 0.2])
    mu = np.array([med, float(np.mean(y))])
    var = np.array([max(mad**2, floor), max(2.0 * pooled_var, floor)])

    n_total = x.size
    prev = -np.inf
    for _ in range(int(n_iter)):
        r1, logp = _responsibilities(y, w, mu, var)
        ll = (float(logp.sum()) - x.shape[1] * float(np.log(s).sum())) / n_total
        if ll - prev < tol:
            break
        prev = ll
        # M-step for the shared components (Topaz's +1 pseudo-counts keep both weights > 0).
        r0 = 1.0 - r1
        n1 = float(r1.sum())
        n0 = n_total - n1
        w = np.array([n0 + 1.0, n1 + 1.0]) / (n_total + 2.0)
        mu = np.array([(r0 * y).sum() / max(n0, 1e-12), (r1 * y).sum() / max(n1, 1e-12)])
        var = np.array(
            [
                max(float((r0 * (y - mu[0]) ** 2).sum()) / max(n0, 1e-12), floor),
                max(float((r1 * (y - mu[1]) ** 2).sum()) / max(n1, 1e-12), floor),
            ]
        )
        # Conditional maximisation of the scales, then the gauge: geometric mean of the scales = 1.
        s = _update_scales(x, r1, mu, var)
        g = math.exp(float(np.mean(np.log(s))))
        s /= g
        mu *= g
        var *= g * g
        floor *= g * g
        y = x / s[:, None]

    background = int(np.argmax(w))
    return GmmNormalization(
        weights=(float(w[0]), float(w[1])),
        means=(float(mu[0]), float(mu[1])),
        variances=(float(var[0]), float(var[1])),
        background=background,
        n_iter_apply=int(n_iter_apply),
        scales=s.copy(),
    )
