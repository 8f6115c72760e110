"""Multi-class soft Dice loss (optionally with per-voxel weights) and per-voxel cross-entropy."""

from __future__ import annotations

import torch


def weighted_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, smooth: float = 1.0
) -> torch.Tensor:
    """:func:`dice_loss` with each voxel counted ``weights[b, z, y, x]`` times (``[B, D, H, W]``); all-ones
    weights give :func:`dice_loss`."""
    p = torch.softmax(logits, dim=1)
    w = weights[:, None]
    dims = (0, 2, 3, 4)
    inter = (w * p * target).sum(dims)
    denom = (w * (p + target)).sum(dims)
    return (1.0 - (2.0 * inter + smooth) / (denom + smooth)).mean()


def voxel_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per voxel ``[B, D, H, W]`` against a (soft) one-hot ``target``."""
    return -(target * torch.log_softmax(logits, dim=1)).sum(1)


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
