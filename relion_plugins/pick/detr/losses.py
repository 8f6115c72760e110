"""The set loss of the detector: focal classification, L1 + GIoU on boxes, after Hungarian matching.

Applied to every decoder layer (auxiliary losses) and to the encoder's selected proposals; the denoising
queries are scored against the boxes they were made from, without matching.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .denoising import DenoisingQueries
from .matcher import cxcywh_to_xyxy, generalized_box_iou, hungarian_match


@dataclass
class LossWeights:
    cls: float = 1.0
    l1: float = 5.0
    giou: float = 2.0
    match_cls: float = 2.0  # the matching cost weights (DINO's)
    match_l1: float = 5.0
    match_giou: float = 2.0


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0):
    """Summed focal loss (Lin et al. 2017): most queries are background, and easy ones should not dominate."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - pt) ** gamma
    loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.sum()


def _box_losses(pred: torch.Tensor, true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.numel() == 0:
        z = pred.sum() * 0.0
        return z, z
    l1 = F.l1_loss(pred, true, reduction="sum")
    giou = (1 - torch.diag(generalized_box_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(true)))).sum()
    return l1, giou


def set_loss(
    logits: torch.Tensor, boxes: torch.Tensor, targets: list[torch.Tensor], w: LossWeights
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one prediction set ``logits [B, Q]``, ``boxes [B, Q, 4]`` against ``targets``."""
    matches = hungarian_match(logits.detach(), boxes.detach(), targets, w.match_cls, w.match_l1, w.match_giou)
    n_boxes = max(1.0, float(sum(int(t.shape[0]) for t in targets)))
    cls_target = torch.zeros_like(logits)
    pred, true = [], []
    for b, (qi, ti) in enumerate(matches):
        cls_target[b, qi] = 1.0
        pred.append(boxes[b, qi])
        true.append(targets[b][ti])
    l_cls = sigmoid_focal_loss(logits, cls_target) / n_boxes
    l1, giou = _box_losses(torch.cat(pred), torch.cat(true))
    loss = w.cls * l_cls + w.l1 * l1 / n_boxes + w.giou * giou / n_boxes
    return loss, {"cls": l_cls.item(), "l1": l1.item() / n_boxes, "giou": giou.item() / n_boxes}


def denoising_loss(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    dn: DenoisingQueries,
    targets: list[torch.Tensor],
    w: LossWeights,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Positives reconstruct their box and say "particle"; hard negatives say "no particle"."""
    valid = dn.target_index >= 0
    n_boxes = max(1.0, float(sum(int(t.shape[0]) for t in targets)) * dn.groups)
    cls_target = (dn.positive & valid).float()
    l_cls = sigmoid_focal_loss(logits[valid], cls_target[valid]) / n_boxes
    pos = dn.positive & valid
    pred = boxes[pos]
    true = torch.cat([targets[b][dn.target_index[b][pos[b]]] for b in range(len(targets))])
    l1, giou = _box_losses(pred, true)
    loss = w.cls * l_cls + w.l1 * l1 / n_boxes + w.giou * giou / n_boxes
    return loss, {"dn_cls": l_cls.item(), "dn_l1": l1.item() / n_boxes}


def total_loss(
    out: dict, targets: list[torch.Tensor], w: LossWeights
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over the decoder layers, the encoder proposals and (when present) the denoising queries."""
    loss, metrics = set_loss(out["logits"], out["boxes"], targets, w)
    for aux in out.get("aux", []):
        l_aux, _ = set_loss(aux["logits"], aux["boxes"], targets, w)
        loss = loss + l_aux
    if "enc" in out:
        l_enc, _ = set_loss(out["enc"]["logits"], out["enc"]["boxes"], targets, w)
        loss = loss + l_enc
    dn = out.get("dn")
    if dn is not None:
        for layer in dn["layers"]:
            l_dn, m_dn = denoising_loss(layer["logits"], layer["boxes"], dn["queries"], targets, w)
            loss = loss + l_dn
        metrics.update(m_dn)
    metrics["loss"] = loss.item()
    return loss, metrics
