"""The detector: backbone -> deformable encoder -> mixed query selection -> deformable decoder -> heads.

One class ("particle"), so the classification head gives one objectness logit per query. Boxes are
``(cx, cy, w, h)`` normalised to the input; every decoder layer refines the previous layer's boxes in
inverse-sigmoid space (iterative box refinement) and is supervised (auxiliary losses).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import ResNet, sine_position
from .deformable import MSDeformAttn
from .denoising import DenoisingQueries, make_denoising_queries


@dataclass
class DetrConfig:
    """Architecture and denoising settings (stored in the model file's ``arch``)."""

    backbone: str = "resnet50"
    dim: int = 256
    heads: int = 8
    points: int = 4
    enc_layers: int = 6
    dec_layers: int = 6
    ffn: int = 1024
    queries: int = 300  # the paper splits micrographs with more particles than this
    anchor_px: float = (
        24.0  # width of the encoder's anchor boxes (the particle diameter at the working scale)
    )
    dn_number: int = 100  # denoising queries per image (0 = no contrastive denoising)
    lambda_l: float = 0.5  # label-noise rate
    lambda_p: float = 0.4  # positives: box noise below this
    lambda_n: float = 1.0  # hard negatives: box noise in [lambda_p, lambda_n)
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"name": f"detr-{self.backbone}"}

    @classmethod
    def from_dict(cls, d: dict) -> DetrConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


TINY = DetrConfig(backbone="resnet_tiny", dim=32, heads=4, points=2, enc_layers=1, dec_layers=2, ffn=64,
                  queries=60, dn_number=40)  # fmt: skip
SMALL = DetrConfig(backbone="resnet_small", dim=64, heads=4, points=4, enc_layers=2, dec_layers=3, ffn=256,
                   queries=100, dn_number=60)  # fmt: skip
PRESETS = {"tiny": TINY, "small": SMALL, "full": DetrConfig()}


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


class MLP(nn.Module):
    def __init__(self, din: int, hidden: int, dout: int, layers: int) -> None:
        super().__init__()
        dims = [din] + [hidden] * (layers - 1) + [dout]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def box_sine_embedding(boxes: torch.Tensor, dim: int) -> torch.Tensor:
    """Sine embedding of each of the 4 box coordinates, ``dim / 2`` features each -> ``[..., 2 dim]``."""
    half = dim // 2
    t = 10000 ** (2 * (torch.arange(half, device=boxes.device) // 2) / half)
    x = boxes[..., None] * (2 * math.pi) / t
    emb = torch.stack([x[..., 0::2].sin(), x[..., 1::2].cos()], -1).flatten(-2)
    return emb.flatten(-2)


class EncoderLayer(nn.Module):
    def __init__(self, c: DetrConfig, levels: int) -> None:
        super().__init__()
        self.attn = MSDeformAttn(c.dim, levels, c.heads, c.points)
        self.norm1 = nn.LayerNorm(c.dim)
        self.ffn = nn.Sequential(
            nn.Linear(c.dim, c.ffn), nn.ReLU(), nn.Dropout(c.dropout), nn.Linear(c.ffn, c.dim)
        )
        self.norm2 = nn.LayerNorm(c.dim)

    def forward(self, src, pos, ref, shapes):
        src = self.norm1(src + self.attn(src + pos, ref, src, shapes))
        return self.norm2(src + self.ffn(src))


class DecoderLayer(nn.Module):
    def __init__(self, c: DetrConfig, levels: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(c.dim, c.heads, dropout=c.dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(c.dim)
        self.cross = MSDeformAttn(c.dim, levels, c.heads, c.points)
        self.norm2 = nn.LayerNorm(c.dim)
        self.ffn = nn.Sequential(
            nn.Linear(c.dim, c.ffn), nn.ReLU(), nn.Dropout(c.dropout), nn.Linear(c.ffn, c.dim)
        )
        self.norm3 = nn.LayerNorm(c.dim)

    def forward(self, tgt, query_pos, ref_boxes, memory, shapes, attn_mask):
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.self_attn(q, q, tgt, attn_mask=attn_mask, need_weights=False)[0])
        ref = ref_boxes[:, :, None, :].expand(-1, -1, len(shapes), -1)
        tgt = self.norm2(tgt + self.cross(tgt + query_pos, ref, memory, shapes))
        return self.norm3(tgt + self.ffn(tgt))


class ParticleDETR(nn.Module):
    """DINO-style deformable DETR for one class of object: particles."""

    def __init__(self, config: DetrConfig | None = None) -> None:
        super().__init__()
        c = self.config = config or DetrConfig()
        self.backbone = ResNet(c.backbone)
        levels = len(self.backbone.out_channels)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(ch, c.dim, 1), nn.GroupNorm(min(32, c.dim // 2), c.dim))
            for ch in self.backbone.out_channels
        )
        self.level_embed = nn.Parameter(torch.randn(levels, c.dim) * 0.02)
        self.encoder = nn.ModuleList(EncoderLayer(c, levels) for _ in range(c.enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(c, levels) for _ in range(c.dec_layers))
        # mixed query selection: encoder outputs give the positional part (boxes) of the queries,
        # the content part is learnt
        self.enc_output = nn.Sequential(nn.Linear(c.dim, c.dim), nn.LayerNorm(c.dim))
        self.enc_class = nn.Linear(c.dim, 1)
        self.enc_box = MLP(c.dim, c.dim, 4, 3)
        self.content = nn.Embedding(c.queries, c.dim)
        self.label_embed = nn.Embedding(2, c.dim)  # denoising content: 0 background, 1 particle
        self.ref_point_head = MLP(2 * c.dim, c.dim, c.dim, 2)
        self.class_heads = nn.ModuleList(nn.Linear(c.dim, 1) for _ in range(c.dec_layers))
        self.box_heads = nn.ModuleList(MLP(c.dim, c.dim, 4, 3) for _ in range(c.dec_layers))
        prior = -math.log((1 - 0.01) / 0.01)  # start every query at p = 0.01 (focal-loss practice)
        for head in [self.enc_class, *self.class_heads]:
            nn.init.constant_(head.bias, prior)
        for mlp in [self.enc_box, *self.box_heads]:
            nn.init.zeros_(mlp.layers[-1].weight)
            nn.init.zeros_(mlp.layers[-1].bias)

    def _flatten(self, feats: list[torch.Tensor]):
        srcs, poss, shapes = [], [], []
        for lvl, f in enumerate(feats):
            b, _, h, w = f.shape
            s = self.input_proj[lvl](f)
            pos = (
                sine_position((b, h, w), self.config.dim, f.device)
                + self.level_embed[lvl][None, :, None, None]
            )
            srcs.append(s.flatten(2).transpose(1, 2))
            poss.append(pos.flatten(2).transpose(1, 2))
            shapes.append((h, w))
        return torch.cat(srcs, 1), torch.cat(poss, 1), shapes

    @staticmethod
    def _grid(shapes: list[tuple[int, int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Centres of every cell of every level (normalised) and each cell's level index."""
        pts, lvls = [], []
        for lvl, (h, w) in enumerate(shapes):
            y, x = torch.meshgrid(
                (torch.arange(h, device=device) + 0.5) / h,
                (torch.arange(w, device=device) + 0.5) / w,
                indexing="ij",
            )
            pts.append(torch.stack([x, y], -1).reshape(-1, 2))
            lvls.append(torch.full((h * w,), lvl, device=device))
        return torch.cat(pts), torch.cat(lvls)

    def forward(
        self,
        images: torch.Tensor,
        targets: list[torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict:
        """``images`` ``[B, 1, H, W]``; ``targets`` (training, for denoising) ``[T_b, 4]`` per image.

        Returns ``logits [B, Q]``, ``boxes [B, Q, 4]`` of the last layer, ``aux`` (earlier layers), ``enc``
        (selected encoder proposals) and ``dn`` (denoising outputs, training with targets only)."""
        c = self.config
        b, _, height, width = images.shape
        src, pos, shapes = self._flatten(self.backbone(images))
        centres, _ = self._grid(shapes, images.device)
        ref = centres[None, :, None, :].expand(b, -1, len(shapes), -1)
        memory = src
        for layer in self.encoder:
            memory = layer(memory, pos, ref, shapes)

        # --- mixed query selection
        out_mem = self.enc_output(memory)
        enc_logits = self.enc_class(out_mem)[..., 0]
        anchor_wh = torch.tensor([c.anchor_px / width, c.anchor_px / height], device=images.device)
        anchors = torch.cat([centres, anchor_wh.expand(centres.shape[0], 2)], -1)
        enc_boxes_unact = self.enc_box(out_mem) + inverse_sigmoid(anchors)[None]
        k = min(c.queries, enc_logits.shape[1])
        top = enc_logits.topk(k, dim=1).indices
        sel_unact = torch.gather(enc_boxes_unact, 1, top[..., None].expand(-1, -1, 4))
        enc_out = {"logits": torch.gather(enc_logits, 1, top), "boxes": sel_unact.sigmoid()}
        ref_boxes = sel_unact.detach().sigmoid()
        tgt = self.content.weight[None, :k].expand(b, -1, -1)

        dn: DenoisingQueries | None = None
        attn_mask = None
        if self.training and targets is not None and c.dn_number > 0:
            dn = make_denoising_queries(
                targets, k, c.dn_number, c.lambda_l, c.lambda_p, c.lambda_n, generator
            )
            if dn is not None:
                tgt = torch.cat([self.label_embed(dn.labels), tgt], 1)
                ref_boxes = torch.cat([dn.boxes, ref_boxes], 1)
                attn_mask = dn.attn_mask

        layers = []
        for i, layer in enumerate(self.decoder):
            query_pos = self.ref_point_head(box_sine_embedding(ref_boxes, c.dim))
            tgt = layer(tgt, query_pos, ref_boxes, memory, shapes, attn_mask)
            new_boxes = (self.box_heads[i](tgt) + inverse_sigmoid(ref_boxes)).sigmoid()
            layers.append({"logits": self.class_heads[i](tgt)[..., 0], "boxes": new_boxes})
            ref_boxes = (
                new_boxes.detach()
            )  # each layer refines the last one's boxes; gradients stay per layer

        n_dn = dn.size if dn is not None else 0
        match = [{"logits": lay["logits"][:, n_dn:], "boxes": lay["boxes"][:, n_dn:]} for lay in layers]
        out = {"logits": match[-1]["logits"], "boxes": match[-1]["boxes"], "aux": match[:-1], "enc": enc_out}
        if dn is not None:
            out["dn"] = {
                "queries": dn,
                "layers": [
                    {"logits": lay["logits"][:, :n_dn], "boxes": lay["boxes"][:, :n_dn]} for lay in layers
                ],
            }
        return out


def build_model(config: DetrConfig | dict | str | None = None) -> ParticleDETR:
    """A detector from a config, its dict (model file ``arch``) or a preset name (tiny / small / full)."""
    if isinstance(config, str):
        config = PRESETS[config]
    elif isinstance(config, dict):
        config = DetrConfig.from_dict(config)
    return ParticleDETR(config)
