"""ResNet backbones written here (torchvision is not available) returning multiscale feature maps.

``resnet50`` is the paper's backbone (bottleneck blocks 3-4-6-3); ``resnet18`` and ``resnet_tiny`` are
lighter choices for CPU. Micrographs have one channel, so the stem takes one channel. The features of
the last three stages (strides 8, 16, 32) feed the transformer, as in deformable DETR.
"""

from __future__ import annotations

import torch
from torch import nn

POSITION_PERIOD = 64.0  # cells per 2 pi of the slowest positional frequency

# name -> (block kind, blocks per stage, base width of the stages)
ARCHS: dict[str, tuple[str, tuple[int, int, int, int], int]] = {
    "resnet50": ("bottleneck", (3, 4, 6, 3), 64),
    "resnet34": ("basic", (3, 4, 6, 3), 64),
    "resnet18": ("basic", (2, 2, 2, 2), 64),
    "resnet_small": ("basic", (1, 1, 1, 1), 32),
    "resnet_tiny": ("basic", (1, 1, 1, 1), 8),
}


def _norm(channels: int) -> nn.Module:
    # GroupNorm, not BatchNorm: minibatches are 1-4 micrographs, too few for batch statistics
    return nn.GroupNorm(min(8, channels), channels)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 3, stride, 1, bias=False), _norm(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 3, 1, 1, bias=False), _norm(cout),
        )  # fmt: skip
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class Bottleneck(BasicBlock):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        nn.Module.__init__(self)
        cout = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), _norm(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), _norm(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), _norm(cout),
        )  # fmt: skip
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout))
        )


class ResNet(nn.Module):
    """One-channel ResNet; ``forward`` returns the stage outputs at strides 8, 16 and 32."""

    def __init__(self, name: str = "resnet50") -> None:
        super().__init__()
        if name not in ARCHS:
            raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(ARCHS)}")
        kind, blocks, base = ARCHS[name]
        block = Bottleneck if kind == "bottleneck" else BasicBlock
        self.stem = nn.Sequential(
            nn.Conv2d(1, base, 7, 2, 3, bias=False), _norm(base), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        stages, cin = [], base
        self.out_channels: list[int] = []
        for i, n in enumerate(blocks):
            width = base * 2**i
            layers = []
            for j in range(n):
                layers.append(block(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * block.expansion
            stages.append(nn.Sequential(*layers))
            self.out_channels.append(cin)
        self.stages = nn.ModuleList(stages)
        self.out_channels = self.out_channels[1:]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i > 0:
                feats.append(x)
        return feats


def sine_position(mask_shape: tuple[int, int, int], dim: int, device: torch.device) -> torch.Tensor:
    """2D sine positional embedding ``[B, dim, H, W]`` (half for y, half for x) of absolute cell positions.

    Absolute (in units of ``POSITION_PERIOD`` cells), not normalised to the map size as in DETR: the picker
    sees crops in training and patches of any size in picking, and a particle looks the same anywhere."""
    b, h, w = mask_shape
    y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * (6.2832 / POSITION_PERIOD)
    x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * (6.2832 / POSITION_PERIOD)
    npf = dim // 2
    t = 10000 ** (2 * (torch.arange(npf, device=device) // 2) / npf)
    py = y[:, None] / t
    px = x[:, None] / t
    py = torch.stack([py[:, 0::2].sin(), py[:, 1::2].cos()], 2).flatten(1)  # [h, npf]
    px = torch.stack([px[:, 0::2].sin(), px[:, 1::2].cos()], 2).flatten(1)  # [w, npf]
    pos = torch.cat([py[:, None, :].expand(h, w, npf), px[None, :, :].expand(h, w, npf)], 2)
    return pos.permute(2, 0, 1)[None].expand(b, dim, h, w)
