"""Multiscale deformable attention (Zhu et al. 2021) computed with ``grid_sample``: no custom CUDA op.

Each query attends to ``n_points`` sampled locations per head and per feature level around its reference
point (or inside its reference box); the sampling offsets and the weights are predicted from the query.
Bilinear sampling by ``torch.nn.functional.grid_sample`` gives the same values as the CUDA kernel of the
paper's code and is differentiable in both the values and the sampling locations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn(
    value: torch.Tensor,
    shapes: list[tuple[int, int]],
    locations: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted sum of bilinearly sampled values.

    ``value`` ``[B, S, heads, dh]`` (``S`` = sum of ``H*W`` over levels, level after level);
    ``locations`` ``[B, Q, heads, L, P, 2]`` as ``(x, y)`` in ``[0, 1]`` of each level;
    ``weights`` ``[B, Q, heads, L, P]`` (softmax over ``L*P``). Returns ``[B, Q, heads*dh]``.
    """
    b, _, heads, dh = value.shape
    _, q, _, levels, points, _ = locations.shape
    grids = 2.0 * locations - 1.0  # grid_sample wants [-1, 1]
    sampled = []
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        v = value[:, start : start + h * w].permute(0, 2, 3, 1).reshape(b * heads, dh, h, w)
        start += h * w
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(b * heads, q, points, 2)
        # align_corners=False: location 0 and 1 are the outer edges of the map, matching pixel centres at (i+0.5)/n
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # [B*heads, dh, Q, L*P]
    w = weights.transpose(1, 2).reshape(b * heads, 1, q, levels * points)
    out = (stacked * w).sum(-1)  # [B*heads, dh, Q]
    return out.view(b, heads * dh, q).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """The attention module: offsets and weights from the query, values from the flattened feature maps."""

    def __init__(self, dim: int, levels: int, heads: int, points: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.dim, self.levels, self.heads, self.points = dim, levels, heads, points
        self.offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attn = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Start with each head looking in its own direction, farther for later points: the first
        # updates then see a spread neighbourhood instead of one collapsed point.
        nn.init.zeros_(self.offsets.weight)
        theta = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.heads, 1, 1, 2).repeat(1, self.levels, self.points, 1)
        grid = grid * torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attn.weight)
        nn.init.zeros_(self.attn.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference: torch.Tensor,
        value: torch.Tensor,
        shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """``query`` ``[B, Q, dim]``; ``reference`` ``[B, Q, L, 2]`` points or ``[B, Q, L, 4]`` boxes
        (normalised); ``value`` ``[B, S, dim]``. Returns ``[B, Q, dim]``."""
        b, q, _ = query.shape
        v = self.value_proj(value).view(b, value.shape[1], self.heads, self.dim // self.heads)
        off = self.offsets(query).view(b, q, self.heads, self.levels, self.points, 2)
        w = self.attn(query).view(b, q, self.heads, self.levels * self.points).softmax(-1)
        w = w.view(b, q, self.heads, self.levels, self.points)
        if reference.shape[-1] == 2:
            # offsets in pixels of each level
            norm = torch.tensor([[w_, h_] for h_, w_ in shapes], dtype=query.dtype, device=query.device)
            loc = reference[:, :, None, :, None, :] + off / norm[None, None, None, :, None, :]
        else:
            # offsets relative to the box: points spread over the reference box, as in the paper
            loc = (
                reference[:, :, None, :, None, :2]
                + off / self.points * reference[:, :, None, :, None, 2:] * 0.5
            )
        return self.out_proj(ms_deform_attn(v, shapes, loc, w))
