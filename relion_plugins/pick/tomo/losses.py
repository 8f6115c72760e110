"""Multi-class soft Dice loss, per patch and class so that terms can be reweighted."""

from __future__ import annotations

import torch


def dice_terms(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - Dice`` per patch and class, ``[B, C]``, between softmax(``logits``) and a (soft) one-hot
    ``target``, both ``[B, C, D, H, W]``."""
    p = torch.softmax(logits, dim=1)
    dims = (2, 3, 4)
    inter = (p * target).sum(dims)
    denom = p.sum(dims) + target.sum(dims)
    return 1.0 - (2.0 * inter + smooth) / (denom + smooth)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Multi-class Dice loss over the whole batch (each class's Dice pooled over patches), averaged over
    classes: a tiny species weighs as much as the background."""
    p = torch.softmax(logits, dim=1)
    dims = (0, 2, 3, 4)
    inter = (p * target).sum(dims)
    denom = p.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * inter + smooth) / (denom + smooth)).mean()


def one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``[B, D, H, W]`` integer labels -> ``[B, C, D, H, W]`` float one-hot."""
    return torch.nn.functional.one_hot(labels.long(), n_classes).permute(0, 4, 1, 2, 3).float()
