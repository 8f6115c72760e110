"""Picking with a trained detector: overlapping patches, detections merged, optional NMS.

The network sees patches of the size it was trained on (its crop): a dense micrograph thus never asks
more of the fixed number of queries than training did (UPicker splits micrographs with more than 300
particles for the same reason). Each patch keeps the detections in its core, the middle of every overlap
going to one side; a distance NMS removes what remains doubled at the seams (optional).
"""

from __future__ import annotations

import numpy as np
import torch

from ..nms import greedy_disks
from .model import ParticleDETR
from .preprocess import patches


@torch.inference_mode()
def detect(
    model: ParticleDETR,
    image: np.ndarray,
    patch: int,
    *,
    overlap: int = 32,
    device: str | torch.device = "cpu",
    min_score: float = 0.0,
    nms_radius: float | None = None,
    batch: int = 4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, score)`` of the particles in a prepared image (its pixels), best first.

    ``score`` is the detector's probability; ``nms_radius`` (px): no two picks closer, None = no NMS."""
    was_training = model.training
    model.eval()
    img = np.asarray(image, dtype=np.float32)
    tiles = patches(img.shape, patch, overlap)
    xs, ys, ss = [], [], []
    try:
        for start in range(0, len(tiles), batch):
            chunk = tiles[start : start + batch]
            crops = np.zeros(
                (len(chunk), 1, patch, patch), np.float32
            )  # zero = the mean of a normalised image
            for k, (y0, x0, _core) in enumerate(chunk):
                part = img[y0 : y0 + patch, x0 : x0 + patch]
                crops[k, 0, : part.shape[0], : part.shape[1]] = part
            out = model(torch.from_numpy(crops).to(device))
            prob = out["logits"].sigmoid().float().cpu().numpy()
            box = out["boxes"].float().cpu().numpy()
            for k, (y0, x0, (ylo, yhi, xlo, xhi)) in enumerate(chunk):
                x = box[k, :, 0] * patch - 0.5 + x0
                y = box[k, :, 1] * patch - 0.5 + y0
                keep = (prob[k] >= min_score) & (x >= xlo) & (x < xhi) & (y >= ylo) & (y < yhi)
                xs.append(x[keep])
                ys.append(y[keep])
                ss.append(prob[k][keep])
    finally:
        model.train(was_training)
    x, y, s = np.concatenate(xs), np.concatenate(ys), np.concatenate(ss)
    order = np.argsort(-s, kind="stable")
    x, y, s = x[order], y[order], s[order]
    if nms_radius and len(x):
        keep = greedy_disks(
            np.clip(np.round(y), 0, img.shape[0] - 1).astype(int),
            np.clip(np.round(x), 0, img.shape[1] - 1).astype(int),
            np.full(len(x), 2.0 * nms_radius),
            img.shape,
            nms_radius,
            None,
        )
        x, y, s = x[keep], y[keep], s[keep]
    return x.astype(np.float64), y.astype(np.float64), s.astype(np.float64)
