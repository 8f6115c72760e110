"""The 3D U-Net segmentation network and the two meta networks of RobPicker."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    )


class UNet3D(nn.Module):
    """3D U-Net: ``depth`` down-blocks (two 3D conv + batch norm + ReLU, then 2x max-pooling), a bottleneck,
    ``depth`` up-blocks (2x transposed conv, concatenated skip, two conv blocks) and a 1x1x1 output over
    ``n_classes`` (species + background). ``width`` channels in the first block, doubling per level.

    ``forward`` returns the logits ``[B, n_classes, D, H, W]`` and the last decoder features, which the
    label-correction network shares. Patch sides must be multiples of ``2**depth``.
    """

    def __init__(self, n_classes: int, width: int = 32, depth: int = 4, in_channels: int = 1):
        super().__init__()
        self.config = {"name": "unet3d", "n_classes": n_classes, "width": width, "depth": depth, "in_channels": in_channels}
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        c = in_channels
        for i in range(depth):
            self.down.append(_block(c, chans[i]))
            c = chans[i]
        self.pool = nn.MaxPool3d(2)
        self.bottleneck = _block(chans[depth - 1], chans[depth])
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):
            self.upconv.append(nn.ConvTranspose3d(chans[i + 1], chans[i], 2, stride=2))
            self.up.append(_block(2 * chans[i], chans[i]))
        self.head = nn.Conv3d(chans[0], n_classes, 1)

    @property
    def multiple(self) -> int:
        return 2 ** self.config["depth"]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips)):
            x = block(torch.cat([upconv(x), skip], dim=1))
        return self.head(x), x


def build_unet(config: dict[str, Any]) -> UNet3D:
    """Rebuild a U-Net from its ``config`` (as stored in a model file)."""
    return UNet3D(int(config["n_classes"]), int(config["width"]), int(config["depth"]), int(config.get("in_channels", 1)))


class LabelCorrection(nn.Module):
    """Label-correction network: from the segmentation features, the noisy label and the segmentation
    network's softmax it predicts, per voxel, its own class distribution and a mixing coefficient alpha; the
    corrected soft label is ``alpha * noisy_onehot + (1 - alpha) * own_softmax``. Where the features show a
    particle the label misses (a dropped particle, a shifted or wrongly sized sphere), a low alpha and its
    own softmax put the particle back into the target.

    Its own class logits are the segmentation network's log-probabilities plus a learned correction that
    starts at zero, and alpha starts near ``alpha0`` (trust the labels), so early training equals plain
    training with slightly smoothed labels.
    """

    def __init__(self, feature_channels: int, n_classes: int, hidden: int = 16, alpha0: float = 0.9):
        super().__init__()
        self.n_classes = n_classes
        self.net = nn.Sequential(
            nn.Conv3d(feature_channels + 2 * n_classes, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, n_classes + 1, 1),
        )
        with torch.no_grad():
            last = self.net[-1]
            last.weight[:n_classes].zero_()
            last.bias[:n_classes].zero_()
            last.weight[n_classes:].mul_(0.1)
            last.bias[n_classes:].fill_(float(torch.logit(torch.tensor(alpha0))))

    def forward(
        self, features: torch.Tensor, noisy_onehot: torch.Tensor, seg_softmax: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(torch.cat([features, noisy_onehot, seg_softmax], dim=1))
        c = self.n_classes
        own = torch.softmax(torch.log(seg_softmax.clamp_min(1e-6)) + out[:, :c], dim=1)
        alpha = torch.sigmoid(out[:, c:])
        return alpha * noisy_onehot + (1 - alpha) * own, alpha


class DataReweighting(nn.Module):
    """Data-reweighting network (Meta-Weight-Net): an MLP 1 -> hidden -> 1 with a sigmoid, mapping a loss
    value to its weight in the training loss.

    Weighing every voxel of a batch (10^5 or more) through a 500-wide layer would cost more than the U-Net;
    since the weight is a function of one number, above ``grid`` values it is evaluated on ``grid`` points
    spanning the values and interpolated linearly (the MLP is piecewise linear itself).
    """

    def __init__(self, hidden: int = 500, grid: int = 1024):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))
        self.grid = int(grid)

    def forward(self, loss_values: torch.Tensor) -> torch.Tensor:
        shape = loss_values.shape
        flat = loss_values.reshape(-1, 1)
        if flat.shape[0] <= self.grid:
            return torch.sigmoid(self.net(flat)).reshape(shape)
        flat = flat[:, 0].detach()
        lo, hi = flat.min(), flat.max()
        span = torch.clamp(hi - lo, min=1e-12)
        points = lo + span * torch.linspace(0, 1, self.grid, dtype=flat.dtype, device=flat.device)
        at_points = torch.sigmoid(self.net(points[:, None]))[:, 0]
        pos = (flat - lo) / span * (self.grid - 1)
        i0 = torch.clamp(pos.floor().long(), 0, self.grid - 2)
        t = pos - i0.to(pos.dtype)
        return (at_points[i0] * (1 - t) + at_points[i0 + 1] * t).reshape(shape)
