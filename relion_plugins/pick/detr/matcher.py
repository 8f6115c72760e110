"""Box geometry and the Hungarian matching of predictions to particles (``linear_sum_assignment``)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU and union of ``xyxy`` boxes ``[N, 4]`` x ``[M, 4]``."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None] - inter
    return inter / union.clamp(min=1e-9), union


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU (Rezatofighi et al. 2019) of ``xyxy`` boxes: IoU minus the empty share of the hull."""
    iou, union = box_iou(a, b)
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    hull = (rb - lt).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-9)


def focal_cost(logits: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Matching cost of calling each prediction a particle: focal loss of positive minus of negative."""
    p = logits.sigmoid()
    neg = (1 - alpha) * p**gamma * -(1 - p + 1e-8).log()
    pos = alpha * (1 - p) ** gamma * -(p + 1e-8).log()
    return pos - neg


@torch.no_grad()
def match_cost(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    targets: torch.Tensor,
    w_class: float,
    w_l1: float,
    w_giou: float,
) -> torch.Tensor:
    """Cost matrix ``[Q, T]`` for one image: ``logits`` ``[Q]``, ``boxes`` ``[Q, 4]``, ``targets`` ``[T, 4]``."""
    c_cls = focal_cost(logits)[:, None].expand(-1, targets.shape[0])
    c_l1 = torch.cdist(boxes, targets, p=1)
    c_giou = -generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(targets))
    return w_class * c_cls + w_l1 * c_l1 + w_giou * c_giou


def hungarian_match(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    targets: list[torch.Tensor],
    w_class: float = 2.0,
    w_l1: float = 5.0,
    w_giou: float = 2.0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One-to-one assignment per image: ``(query indices, target indices)`` of least total cost.

    ``logits`` ``[B, Q]``, ``boxes`` ``[B, Q, 4]``; ``targets[b]`` ``[T_b, 4]`` (``cxcywh``, normalised). With
    more particles than queries only ``Q`` particles are matched (the rest stay unmatched)."""
    out = []
    for b, t in enumerate(targets):
        if t.shape[0] == 0:
            out.append((np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)))
            continue
        cost = match_cost(logits[b].float(), boxes[b].float(), t.float(), w_class, w_l1, w_giou)
        qi, ti = linear_sum_assignment(cost.cpu().numpy())
        out.append((qi.astype(np.int64), ti.astype(np.int64)))
    return out
