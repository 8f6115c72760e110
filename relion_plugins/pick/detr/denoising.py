"""Contrastive denoising (DINO, Zhang et al. 2023): noised copies of the true boxes as extra queries.

Each group holds, for every true particle, one *positive* query (box noised by less than ``lambda_p``: it
must reconstruct the particle) and one *hard negative* (noised by ``lambda_p`` to ``lambda_n``: it must say
"no particle"). Content embeddings come from the (possibly flipped, rate ``lambda_l``) label. An attention
mask keeps the matching queries from seeing the denoising ones (they would leak the answer) and the groups
from seeing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DenoisingQueries:
    """The denoising part of the decoder input and what the loss needs to score it."""

    labels: torch.Tensor  # [B, N] noised label index (1 = particle, 0 = background) -> content embedding
    boxes: torch.Tensor  # [B, N] x 4 noised reference boxes, cxcywh in [0, 1]
    attn_mask: torch.Tensor  # [N + Q, N + Q] bool, True = may not attend
    target_index: torch.Tensor  # [B, N] index of the true box each query was made from (-1 = padding)
    positive: torch.Tensor  # [B, N] bool: positive (reconstruct) or negative (reject) query
    groups: int
    per_group: int  # 2 x the largest particle count in the batch

    @property
    def size(self) -> int:
        return int(self.boxes.shape[1])


def make_denoising_queries(
    targets: list[torch.Tensor],
    n_queries: int,
    dn_number: int,
    lambda_l: float,
    lambda_p: float,
    lambda_n: float,
    generator: torch.Generator | None = None,
) -> DenoisingQueries | None:
    """Denoising queries for a batch; None when no image has a particle or ``dn_number`` is 0.

    ``targets[b]`` ``[T_b, 4]`` cxcywh in [0, 1]; about ``dn_number`` queries in all (at least one group).
    """
    if not 0 <= lambda_p < lambda_n:
        raise ValueError(f"need 0 <= lambda_p < lambda_n, got {lambda_p}, {lambda_n}")
    t_max = max((int(t.shape[0]) for t in targets), default=0)
    if t_max == 0 or dn_number <= 0:
        return None
    device = targets[0].device
    b = len(targets)
    groups = max(1, dn_number // (2 * t_max))
    per_group = 2 * t_max
    n = groups * per_group

    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(device)

    boxes = torch.zeros(b, n, 4, device=device)
    index = torch.full((b, n), -1, dtype=torch.long, device=device)
    positive = torch.zeros(b, n, dtype=torch.bool, device=device)
    for i, t in enumerate(targets):
        k = int(t.shape[0])
        if k == 0:
            continue
        for g in range(groups):
            s = g * per_group
            for half, is_pos in ((0, True), (1, False)):
                sl = slice(s + half * t_max, s + half * t_max + k)
                boxes[i, sl] = t
                index[i, sl] = torch.arange(k, device=device)
                positive[i, sl] = is_pos
    # box noise: |noise| in [0, lambda_p) for positives, [lambda_p, lambda_n) for negatives, in units of
    # half the box size for the centre and the box size for width / height (DINO's scaling)
    mag = rand(b, n, 4)
    mag = torch.where(positive[..., None], mag * lambda_p, lambda_p + mag * (lambda_n - lambda_p))
    sign = torch.where(rand(b, n, 4) < 0.5, -1.0, 1.0)
    wh = boxes[..., 2:]
    scale = torch.cat([0.5 * wh, wh], -1)
    noised = (boxes + sign * mag * scale).clamp(0.0, 1.0)
    noised[..., 2:] = noised[..., 2:].clamp(min=1e-3)
    # label noise: flip the "particle" label with probability lambda_l
    labels = torch.ones(b, n, dtype=torch.long, device=device)
    labels = torch.where(rand(b, n) < lambda_l, 0, labels)
    labels = torch.where(index >= 0, labels, 0)

    total = n + n_queries
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    mask[n:, :n] = True  # matching queries never see the denoising ones
    for g in range(groups):
        s, e = g * per_group, (g + 1) * per_group
        mask[s:e, :s] = True
        mask[s:e, e:n] = True
    return DenoisingQueries(labels, noised, mask, index, positive, groups, per_group)
