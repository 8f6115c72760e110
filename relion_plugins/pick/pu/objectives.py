"""Positive-unlabelled objectives on the logits of one minibatch (Topaz's ``topaz/methods.py``).

Every objective has ``loss(logits_pos, logits_unl) -> (loss, metrics)``: ``logits_pos`` are the scores of
crops centred on labelled-positive pixels, ``logits_unl`` those of unlabelled crops; ``loss`` is the
scalar tensor to back-propagate and ``metrics`` plain floats for logging. Build one by name with
:func:`make_objective`.

The class prior ``pi`` (fraction of positive pixels) comes from the caller. With ``n`` expected particles
per micrograph, a label radius ``r`` and micrographs of ``A`` pixels, ``pi = n * disk(r) / A``
(:func:`class_prior`; ``disk(r)`` = pixels within ``r`` of a centre, :func:`disk_area`). What ``pi`` means
depends on the objective, as in Topaz:

* ``PN`` and ``NNPU`` take the prior of the whole data, ``pi``.
* ``GE-KL`` and ``GE-binomial`` constrain the unlabelled samples only. When those exclude the labelled
  pixels (the sampler's default), give them :func:`unlabeled_prior` ``(pi, labeled_fraction)`` =
  ``(pi - f) / (1 - f)``, ``f`` = labelled share of all pixels (Topaz uses ``pi - f``; the same to first
  order). Topaz falls back to PN when ``pi <= f``; here :func:`unlabeled_prior` raises instead.

Objectives:

* **PN**: positives vs. unlabelled-as-negative binary cross-entropy; with ``pi`` the two class terms are
  weighted ``pi`` and ``1 - pi``, without it the mean over all samples.
* **NNPU** (Kiryo et al. 2017): ``pi R_p^+ + max(-beta, R_u^- - pi R_p^-)``; when the negative-class risk
  estimate ``R_u^- - pi R_p^-`` drops below ``-beta`` the step follows ``-gamma`` times its gradient
  (Topaz: ``beta = 0``, ``gamma = 1``). ``metrics["risk"]`` is the non-negative risk estimate.
* **GE-KL**: positive cross-entropy + ``slack * KL(pi || p_hat)``, ``p_hat`` = mean predicted positive
  probability of the unlabelled (optionally an exponential running mean, ``momentum < 1``). Topaz's
  default slack is 10.
* **GE-binomial** (the paper's): positive cross-entropy + ``slack`` x the cross-entropy between ``q``, the
  normal approximation (mean ``sum p_i``, variance ``sum p_i (1 - p_i)``) to the number of positives
  among the ``N`` unlabelled samples discretised on ``0..N`` (a softmax over counts), and the
  ``Binomial(N, pi)`` prior. Topaz's default slack is 1; its optional entropy penalty
  ``0.5 log(2 pi e var)`` is ``entropy_penalty`` (default 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "OBJECTIVES",
    "GEBinomial",
    "GEKL",
    "NNPU",
    "PN",
    "PUObjective",
    "class_prior",
    "disk_area",
    "make_objective",
    "unlabeled_prior",
]


def disk_area(radius: float) -> int:
    """Number of pixels ``(dy, dx)`` with ``dx^2 + dy^2 <= radius^2`` (the labelled area of a particle)."""
    r = int(math.floor(radius))
    d = torch.arange(-r, r + 1, dtype=torch.float64)
    return int(((d[:, None] ** 2 + d[None, :] ** 2) <= float(radius) ** 2).sum())


def class_prior(particles_per_micrograph: float, radius: float, micrograph_area_px: float) -> float:
    """``pi`` = expected positive-pixel fraction: particles x :func:`disk_area` / micrograph pixels."""
    if micrograph_area_px <= 0:
        raise ValueError("micrograph area must be > 0")
    pi = float(particles_per_micrograph) * disk_area(radius) / float(micrograph_area_px)
    if not 0.0 < pi < 1.0:
        raise ValueError(f"class prior pi={pi:.4g} outside (0, 1): check particle count, radius and area")
    return pi


def unlabeled_prior(pi: float, labeled_fraction: float) -> float:
    """Positive fraction among the unlabelled pixels, ``(pi - f) / (1 - f)`` with ``f`` labelled."""
    f = float(labeled_fraction)
    if not 0.0 <= f < 1.0:
        raise ValueError(f"labelled fraction must be in [0, 1), got {f}")
    if pi <= f:
        raise ValueError(
            f"pi={pi:.4g} is not above the labelled fraction {f:.4g}: the unlabelled data would hold no "
            "particles; raise pi (more particles per micrograph) or use the PN objective"
        )
    return (float(pi) - f) / (1.0 - f)


def _check_pi(pi: float | None, name: str) -> float:
    if pi is None or not 0.0 < float(pi) < 1.0:
        raise ValueError(f"{name} needs a class prior pi in (0, 1), got {pi}")
    return float(pi)


class PUObjective:
    """Base class: subclasses implement :meth:`loss`; :meth:`__call__` is an alias."""

    name = "base"

    def loss(
        self, logits_pos: torch.Tensor, logits_unl: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(scalar loss to back-propagate, metrics as floats)."""
        raise NotImplementedError

    def __call__(
        self, logits_pos: torch.Tensor, logits_unl: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss(logits_pos, logits_unl)

    @staticmethod
    def _metrics(logits_pos: torch.Tensor, logits_unl: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            p_pos = torch.sigmoid(logits_pos.float())
            p_unl = torch.sigmoid(logits_unl.float())
            total = float(p_pos.sum() + p_unl.sum())
            return {
                # Topaz's training "precision": the labelled share of the predicted positive mass
                "precision": float(p_pos.sum()) / total if total > 0 else 0.0,
                "tpr": float(p_pos.mean()) if p_pos.numel() else float("nan"),
                "unlabeled_positive_fraction": float(p_unl.mean()) if p_unl.numel() else float("nan"),
            }


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Mean binary cross-entropy against a constant label (0 for an empty tensor)."""
    if logits.numel() == 0:
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


class PN(PUObjective):
    """Positives vs. unlabelled-as-negatives cross-entropy, optionally class-weighted by ``pi``."""

    name = "PN"

    def __init__(self, pi: float | None = None):
        self.pi = None if pi is None else _check_pi(pi, "PN")

    def loss(
        self, logits_pos: torch.Tensor, logits_unl: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if self.pi is None:
            logits = torch.cat([logits_pos.reshape(-1), logits_unl.reshape(-1)])
            labels = torch.cat(
                [torch.ones_like(logits_pos.reshape(-1)), torch.zeros_like(logits_unl.reshape(-1))]
            )
            loss = F.binary_cross_entropy_with_logits(logits, labels)
        else:
            loss = self.pi * _bce(logits_pos, 1.0) + (1.0 - self.pi) * _bce(logits_unl, 0.0)
        metrics = self._metrics(logits_pos, logits_unl)
        metrics["loss"] = float(loss.detach())
        return loss, metrics


class NNPU(PUObjective):
    """Non-negative PU risk (Kiryo et al. 2017) with Topaz's defaults ``beta = 0``, ``gamma = 1``."""

    name = "NNPU"

    def __init__(self, pi: float, beta: float = 0.0, gamma: float = 1.0):
        self.pi = _check_pi(pi, "NNPU")
        self.beta = float(beta)
        self.gamma = float(gamma)

    def loss(
        self, logits_pos: torch.Tensor, logits_unl: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        risk_pos = _bce(logits_pos, 1.0)  # R_p^+
        risk_pos_as_neg = _bce(logits_pos, 0.0)  # R_p^-
        risk_unl_neg = _bce(logits_unl, 0.0)  # R_u^-
        risk_neg = risk_unl_neg - self.pi * risk_pos_as_neg
        corrected = float(risk_neg.detach()) < -self.beta
        if corrected:
            # The unbiased estimate went negative (overfitting the unlabelled): step back along -grad.
            loss = -self.gamma * risk_neg
            risk = self.pi * float(risk_pos.detach()) - self.beta
        else:
            loss = self.pi * risk_pos + risk_neg
            risk = float(loss.detach())
        metrics = self._metrics(logits_pos, logits_unl)
        metrics.update(loss=float(loss.detach()), risk=risk, negative_risk=float(risk_neg.detach()))
        metrics["corrected"] = float(corrected)
        return loss, metrics


class GEKL(PUObjective):
    """Positive cross-entropy + ``slack * KL(pi || mean unlabelled posterior)``."""

    name = "GE-KL"

    def __init__(self, pi: float, slack: float = 10.0, momentum: float = 1.0):
        self.pi = _check_pi(pi, "GE-KL")
        self.slack = float(slack)
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.running = self.pi

    def loss(
        self, logits_pos: torch.Tensor, logits_unl: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        pos_loss = _bce(logits_pos, 1.0)
        p_hat = torch.sigmoid(logits_unl).mean()
        if self.momentum < 1.0:
            p_hat = self.momentum * p_hat + (1.0 - self.momentum) * self.running
            self.running = float(p_hat.detach())
        pi = self.pi
        # KL(Bernoulli(pi) || Bernoulli(p_hat)); the clamp keeps the logs finite when p_hat saturates
        eps = 1e-7
        p_hat = p_hat.clamp(eps, 1.0 - eps)
        kl = (
            pi * math.log(pi)
            + (1 - pi) * math.log1p(-pi)
            - pi * torch.log(p_hat)
            - (1 - pi) * torch.log1p(-p_hat)
        )
        # Topaz divides by the momentum so the minibatch gradient keeps its size.
        penalty = kl * self.slack / self.momentum
        loss = pos_loss + penalty
        metrics = self._metrics(logits_pos, logits_unl)
        metrics.update(
            loss=float(loss.detach()), positive_loss=float(pos_loss.detach()), ge_penalty=float(kl.detach())
        )
        return loss, metrics


class GEBinomial(PUObjective):
    """Positive cross-entropy + ``slack`` x cross-entropy of the predicted positive count vs Binomial(N, pi)."""

    name = "GE-binomial"

    def __init__(self, pi: float, slack: float = 1.0, entropy_penalty: float = 0.0):
        self.pi = _check_pi(pi, "GE-binomial")
        self.slack = float(slack)
        self.entropy_penalty = float(entropy_penalty)
        self._log_binom: dict[tuple[int, torch.device], torch.Tensor] = {}

    def log_binomial(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``log Binomial(k; n, pi)`` for ``k = 0..n`` (cached per ``n``)."""
        key = (int(n), torch.device(device))
        if key not in self._log_binom:
            k = torch.arange(0, n + 1, dtype=torch.float64)
            log_choose = (
                torch.lgamma(torch.tensor(n + 1.0, dtype=torch.float64))
                - torch.lgamma(k + 1)
                - torch.lgamma(n - k + 1)
            )
            logp = log_choose + k * math.log(self.pi) + (n - k) * math.log1p(-self.pi)
            self._log_binom[key] = logp.to(device=key[1], dtype=torch.float32)
        return self._log_binom[key]

    def penalty(self, logits_unl: torch.Tensor) -> torch.Tensor:
        """The GE term alone (without ``slack``): ``-sum_k q(k) log Binomial(k; N, pi)``."""
        logits = logits_unl.reshape(-1)
        n = logits.numel()
        p = torch.sigmoid(logits.float())
        mu = p.sum()
        var = (p * (1.0 - p)).sum()
        counts = torch.arange(0, n + 1, dtype=torch.float32, device=logits.device)
        q = torch.softmax(-0.5 * (mu - counts) ** 2 / (var + 1e-10), dim=0)  # epsilon as in Topaz
        ge = -(self.log_binomial(n, logits.device) * q).sum()
        if self.entropy_penalty > 0:
            ge = ge + self.entropy_penalty * 0.5 * (torch.log(var + 1e-10) + math.log(2 * math.pi) + 1.0)
        return ge

    def loss(
        self, logits_pos: torch.Tensor, logits_unl: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if logits_unl.numel() == 0:
            raise ValueError("GE-binomial needs unlabelled samples in the minibatch")
        pos_loss = _bce(logits_pos, 1.0)
        ge = self.penalty(logits_unl)
        loss = pos_loss + self.slack * ge
        metrics = self._metrics(logits_pos, logits_unl)
        metrics.update(
            loss=float(loss.detach()), positive_loss=float(pos_loss.detach()), ge_penalty=float(ge.detach())
        )
        return loss, metrics


OBJECTIVES = {"pn": PN, "nnpu": NNPU, "pu": NNPU, "ge-kl": GEKL, "ge-binomial": GEBinomial}


def make_objective(name: str, pi: float | None, **kwargs) -> PUObjective:
    """Objective by name: ``PN``, ``NNPU`` (alias ``PU``), ``GE-KL``, ``GE-binomial`` (case-insensitive).

    ``pi``: class prior (see the module docstring for which one each objective wants; ``PN`` accepts None).
    ``kwargs`` go to the class: ``beta``/``gamma`` (NNPU), ``slack``/``momentum`` (GE-KL),
    ``slack``/``entropy_penalty`` (GE-binomial).
    """
    key = name.strip().lower().replace("_", "-")
    if key not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose from PN, NNPU, GE-KL, GE-binomial")
    return OBJECTIVES[key](pi, **kwargs)
