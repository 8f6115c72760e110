"""Region classifiers of the Topaz method: a CNN scores the window around a pixel as particle or not.

Architectures (same layer sets as Topaz's ``topaz/model/features/basic.py`` and ``resnet.py``):

* ``conv31`` / ``conv63`` / ``conv127`` (the paper's): 3 / 4 / 5 convolutions of 7, 5, 5, (5, 5) px, each
  followed by batch norm and PReLU; every convolution but the last has stride 2 and multiplies the
  channel count by ``unit_scaling`` (``units=32``: 32, 64, 128, ...). Receptive fields 31, 63, 127 px.
* ``resnet8`` (Topaz's default, 71 px) and ``resnet16`` (91 px): a 7 px convolution, residual blocks of
  two 3 px convolutions (the second dilated in ``resnet8``), a final 5 px convolution; channels
  ``[units, 2 units, 4 units]``; ReLU; two stride-2 stages.

A 1x1 convolution turns the last features into one logit. No layer is zero-padded, so a crop exactly one
receptive field wide gives exactly one logit, for its centre pixel.

Two ways to run the same weights:

* **Training** (:meth:`PUClassifier.forward`): strided convolutions on a minibatch of crops; one logit per
  crop (its centre pixel). Crops larger than the receptive field are centre-cropped first.
* **Dense** (:meth:`PUClassifier.score_map`): every stride is replaced by a dilation of the later layers
  (stride 1 everywhere, dilation = product of the earlier strides), Topaz's ``fill()``. The output then
  has one logit per input pixel, identical to what the strided net gives on the crop centred there. The
  micrograph is mirror-padded (``reflect``, as the training sampler pads) by half the receptive field,
  so the map has the input's height and width and ``map[y, x]`` scores the window centred on ``(y, x)``.
  Large micrographs are processed in tiles with the same result (the computation is local).

Optionally a DCGAN-style decoder (Topaz's ``ConvGenerator``, the paper's classifier + autoencoder)
reconstructs the centre of each crop from the feature vector at its centre; see
:meth:`PUClassifier.forward_with_reconstruction` and :func:`reconstruction_loss`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "ConvDecoder",
    "PUClassifier",
    "build_model",
    "from_state",
    "get_state",
    "reconstruction_loss",
]

ARCHITECTURES = ("conv31", "conv63", "conv127", "resnet8", "resnet16")
_CONV_LAYERS = {"conv31": (7, 5, 5), "conv63": (7, 5, 5, 5), "conv127": (7, 5, 5, 5, 5)}
STATE_VERSION = 1
# Dense maps are tiled so that one activation tensor holds about this many floats (256 MB).
_TILE_BUDGET = 2**26


class _ConvBlock(nn.Module):
    """conv -> (batch norm) -> activation -> (dropout), runnable strided or dense."""

    def __init__(
        self,
        nin: int,
        nout: int,
        kernel: int,
        stride: int = 1,
        bn: bool = True,
        activation: str = "prelu",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.conv = nn.Conv2d(nin, nout, kernel, stride=stride, bias=not bn)
        self.bn = nn.BatchNorm2d(nout) if bn else None
        self.act = nn.PReLU() if activation == "prelu" else nn.ReLU()
        self.drop = nn.Dropout(dropout) if dropout > 0 else None
        self.kernel = kernel
        self.stride = stride
        self.out_channels = nout

    def in_size(self, out: int) -> int:
        return (out - 1) * self.stride + self.kernel

    def forward(self, x: torch.Tensor, dilation: int | None = None) -> torch.Tensor:
        if dilation is None:
            y = self.conv(x)
        else:
            y = F.conv2d(x, self.conv.weight, self.conv.bias, stride=1, dilation=dilation)
        if self.bn is not None:
            y = self.bn(y)
        y = self.act(y)
        return self.drop(y) if self.drop is not None else y


class _Dropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.drop = nn.Dropout(p)
        self.stride = 1

    def in_size(self, out: int) -> int:
        return out

    def forward(self, x: torch.Tensor, dilation: int | None = None) -> torch.Tensor:
        return self.drop(x)


class _ResidA(nn.Module):
    """Topaz's residual block: 3x3 conv, 3x3 conv (dilation ``d``, stride ``s``), + cropped input.

    The shortcut is cropped to the valid region (no padding anywhere), subsampled or 1x1-projected when
    the stride or channel count changes; batch norm and ReLU come after the sum.
    """

    def __init__(
        self, nin: int, nhidden: int, nout: int, dilation: int = 1, stride: int = 1, bn: bool = True
    ):
        super().__init__()
        self.proj = nn.Conv2d(nin, nout, 1, stride=stride, bias=False) if nin != nout else None
        self.conv0 = nn.Conv2d(nin, nhidden, 3, bias=not bn)
        self.bn0 = nn.BatchNorm2d(nhidden) if bn else None
        self.conv1 = nn.Conv2d(nhidden, nout, 3, dilation=dilation, stride=stride, bias=not bn)
        self.bn1 = nn.BatchNorm2d(nout) if bn else None
        self.dilation = dilation
        self.stride = stride
        self.out_channels = nout

    def in_size(self, out: int) -> int:
        return (out - 1) * self.stride + 2 * self.dilation + 3

    def forward(self, x: torch.Tensor, dilation: int | None = None) -> torch.Tensor:
        a = 1 if dilation is None else dilation
        h = F.conv2d(x, self.conv0.weight, self.conv0.bias, dilation=a)
        if self.bn0 is not None:
            h = self.bn0(h)
        h = F.relu(h)
        stride = self.stride if dilation is None else 1
        y = F.conv2d(h, self.conv1.weight, self.conv1.bias, stride=stride, dilation=self.dilation * a)
        edge = a + self.dilation * a
        short = x[..., edge:-edge, edge:-edge]
        if self.proj is not None:
            short = F.conv2d(short, self.proj.weight, stride=stride)
        elif stride > 1:
            short = short[..., ::stride, ::stride]
        y = y + short
        if self.bn1 is not None:
            y = self.bn1(y)
        return F.relu(y)


def _conv_blocks(kernels: tuple[int, ...], units: int, unit_scaling: int, bn: bool, dropout: float) -> list:
    blocks = []
    nin = 1
    for i, k in enumerate(kernels):
        last = i == len(kernels) - 1
        blocks.append(_ConvBlock(nin, units, k, stride=1 if last else 2, bn=bn, dropout=dropout))
        nin = units
        if not last:
            units *= unit_scaling
    return blocks


def _resnet_blocks(name: str, units: int, bn: bool, dropout: float) -> list:
    u0, u1, u2 = units, 2 * units, 4 * units
    drop = [_Dropout(dropout)] if dropout > 0 else []
    if name == "resnet8":
        blocks = [_ConvBlock(1, u0, 7, stride=2, bn=bn, activation="relu"), *drop]
        blocks += [_ResidA(u0, u0, u0, dilation=2, bn=bn), _ResidA(u0, u0, u1, dilation=2, stride=2, bn=bn)]
        blocks += [*drop, _ResidA(u1, u1, u1, dilation=2, bn=bn)]
    else:  # resnet16
        blocks = [_ConvBlock(1, u0, 7, bn=bn, activation="relu"), _ResidA(u0, u0, u0, stride=2, bn=bn), *drop]
        blocks += [_ResidA(u0, u0, u0, bn=bn) for _ in range(3)]
        blocks += [_ResidA(u0, u0, u1, stride=2, bn=bn), *drop]
        blocks += [_ResidA(u1, u1, u1, bn=bn) for _ in range(2)]
    blocks += [_ConvBlock(u1, u2, 5, bn=bn, activation="relu"), *drop]
    return blocks


class ConvDecoder(nn.Module):
    """DCGAN-style generator (Topaz's ``ConvGenerator``): a feature vector -> a ``width`` x ``width`` image.

    4x4 transposed convolution, ``depth`` doublings (4x4, stride 2; batch norm, LeakyReLU), and a final
    3x3 stride-2 transposed convolution: ``width = 8 * 2**depth - 1``.
    """

    def __init__(self, nin: int, units: int = 32, depth: int = 2):
        super().__init__()
        scale = 2**depth
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nin, units * scale, 4, 1, 0, bias=False),
            nn.BatchNorm2d(units * scale),
            nn.LeakyReLU(),
        ]
        for _ in range(depth):
            layers += [
                nn.ConvTranspose2d(units * scale, units * scale // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(units * scale // 2),
                nn.LeakyReLU(),
            ]
            scale //= 2
        layers.append(nn.ConvTranspose2d(units, 1, 3, 2, 1, bias=False))
        self.layers = nn.Sequential(*layers)
        self.width = 8 * 2**depth - 1

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z``: ``[B, C]`` or ``[B, C, 1, 1]`` -> ``[B, 1, width, width]``."""
        return self.layers(z.reshape(z.shape[0], z.shape[1], 1, 1))


class PUClassifier(nn.Module):
    """Feature CNN + 1x1 logit layer (+ optional decoder); build it with :func:`build_model`."""

    def __init__(
        self,
        name: str = "conv31",
        units: int = 32,
        dropout: float = 0.0,
        bn: bool = True,
        unit_scaling: int = 2,
        decoder: bool = False,
        decoder_units: int = 32,
    ):
        super().__init__()
        name = name.lower()
        if name not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
        if units < 1 or unit_scaling < 1:
            raise ValueError("units and unit_scaling must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if name in _CONV_LAYERS:
            blocks = _conv_blocks(_CONV_LAYERS[name], units, unit_scaling, bn, dropout)
        else:
            blocks = _resnet_blocks(name, units, bn, dropout)
        self.blocks = nn.ModuleList(blocks)
        latent = [b.out_channels for b in blocks if hasattr(b, "out_channels")]
        self.latent_dim = latent[-1]
        self._max_channels = max(latent)
        self.classifier = nn.Conv2d(self.latent_dim, 1, 1)
        size = 1
        for b in reversed(blocks):
            size = b.in_size(size)
        self.receptive_field = int(size)
        self.decoder: ConvDecoder | None = None
        if decoder:
            # Topaz: the largest 8 * 2**depth - 1 that fits in the receptive field.
            depth = max(0, int(math.log2(self.receptive_field + 1) - 3))
            self.decoder = ConvDecoder(self.latent_dim, units=decoder_units, depth=depth)
        self.config = {
            "name": name,
            "units": int(units),
            "dropout": float(dropout),
            "bn": bool(bn),
            "unit_scaling": int(unit_scaling),
            "decoder": bool(decoder),
            "decoder_units": int(decoder_units),
        }

    # -- training mode: one logit per crop -------------------------------------------------------------
    def _as_crops(self, crops: torch.Tensor) -> torch.Tensor:
        x = crops if crops.dim() == 4 else crops.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected crops [B, H, W] or [B, 1, H, W], got {tuple(crops.shape)}")
        h, w = x.shape[-2:]
        rf = self.receptive_field
        if h < rf or w < rf or h % 2 == 0 or w % 2 == 0:
            raise ValueError(f"crops must be odd-sized and at least the receptive field ({rf}), got {h}x{w}")
        return x

    @staticmethod
    def _centre(x: torch.Tensor, size: int) -> torch.Tensor:
        y0 = (x.shape[-2] - size) // 2
        x0 = (x.shape[-1] - size) // 2
        return x[..., y0 : y0 + size, x0 : x0 + size]

    def _features(self, x: torch.Tensor, dense: bool = False) -> torch.Tensor:
        dilation = 1 if dense else None
        for block in self.blocks:
            x = block(x, dilation)
            if dense:
                dilation *= block.stride
        return x

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Logit of each crop's centre pixel: ``[B, H, W]`` or ``[B, 1, H, W]`` -> ``[B]``."""
        x = self._centre(self._as_crops(crops), self.receptive_field)
        return self.classifier(self._features(x)).reshape(-1)

    def forward_with_reconstruction(
        self, crops: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits ``[B]``, reconstruction ``[B, 1, w, w]``, its target: the crops' central ``w x w``)."""
        if self.decoder is None:
            raise RuntimeError("this model has no decoder (build it with decoder=True)")
        x = self._centre(self._as_crops(crops), self.receptive_field)
        z = self._features(x)
        logits = self.classifier(z).reshape(-1)
        recon = self.decoder(z)
        return logits, recon, self._centre(x, self.decoder.width)

    # -- dense mode: one logit per pixel ---------------------------------------------------------------
    def default_tile(self) -> int:
        """Output tile edge for :meth:`score_map` keeping one activation near 256 MB."""
        edge = int(math.sqrt(_TILE_BUDGET / self._max_channels)) - (self.receptive_field - 1)
        return max(64, edge)

    @torch.no_grad()
    def score_map(
        self, image: torch.Tensor | np.ndarray, tile: int | None = None, padding_mode: str = "reflect"
    ) -> torch.Tensor:
        """Logit map aligned to the input pixels: ``[H, W]`` -> ``[H, W]`` (also ``[B, H, W]``, ``[B, 1, H, W]``).

        Runs in eval mode (batch-norm running statistics, no dropout) and restores the previous mode.
        ``padding_mode``: ``"reflect"`` (as training crops near the border see) or ``"constant"`` (zeros,
        Topaz's choice). ``tile``: output tile edge in px (default :meth:`default_tile`); any value gives
        the same map.
        """
        param = next(self.parameters())
        x = torch.as_tensor(image, dtype=torch.float32, device=param.device)
        ndim = x.dim()
        if ndim == 2:
            x = x[None, None]
        elif ndim == 3:
            x = x[:, None]
        elif ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"expected an image [H, W], [B, H, W] or [B, 1, H, W], got {tuple(x.shape)}")
        r = self.receptive_field // 2
        if padding_mode == "reflect":
            xp = _reflect_pad(x, r)
        elif padding_mode == "constant":
            xp = F.pad(x, (r, r, r, r))
        else:
            raise ValueError(f"padding_mode must be 'reflect' or 'constant', got {padding_mode!r}")
        h, w = x.shape[-2:]
        step = int(tile) if tile else self.default_tile()
        out = torch.empty((x.shape[0], 1, h, w), dtype=torch.float32, device=x.device)
        was_training = self.training
        self.eval()
        try:
            for y0 in range(0, h, step):
                y1 = min(h, y0 + step)
                for x0 in range(0, w, step):
                    x1 = min(w, x0 + step)
                    window = xp[..., y0 : y1 + 2 * r, x0 : x1 + 2 * r]
                    out[..., y0:y1, x0:x1] = self.classifier(self._features(window, dense=True))
        finally:
            self.train(was_training)
        if ndim == 2:
            return out[0, 0]
        if ndim == 3:
            return out[:, 0]
        return out


def _reflect_pad(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mirror padding (edge not repeated) like ``np.pad(mode="reflect")``, also for ``r`` >= the size."""
    # torch's reflect pad needs pad < size; numpy repeats the reflection, so do it in steps the same way.
    for axis in (-1, -2):
        before = after = r
        while before or after:
            n = x.shape[axis]
            if n < 2:  # a 1-px axis has nothing to mirror; numpy repeats the pixel
                b, a = before, after
                mode = "replicate"
            else:
                b, a = min(before, n - 1), min(after, n - 1)
                mode = "reflect"
            x = F.pad(x, (b, a, 0, 0) if axis == -1 else (0, 0, b, a), mode=mode)
            before, after = before - b, after - a
    return x


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Topaz's autoencoder error: squared error summed over each crop's pixels, averaged over the batch.

    The training loss adds ``gamma * reconstruction_loss`` (Topaz ``--autoencoder gamma``, default 0 = off);
    the caller chooses ``gamma``. Note the sum: the error grows with the decoder's ``width**2``.
    """
    return ((recon - target) ** 2).flatten(1).sum(1).mean()


def build_model(
    name: str,
    units: int = 32,
    dropout: float = 0.0,
    bn: bool = True,
    unit_scaling: int = 2,
    decoder: bool = False,
    decoder_units: int = 32,
) -> PUClassifier:
    """A fresh classifier: ``name`` in :data:`ARCHITECTURES`; Topaz's defaults (``units=32``, doubling).

    ``unit_scaling`` applies to the ``conv*`` nets (ResNets always use ``[units, 2 units, 4 units]``).
    ``decoder=True`` adds the autoencoder's decoder with ``decoder_units`` (Topaz ``--ngf``).
    """
    return PUClassifier(name, units, dropout, bn, unit_scaling, decoder, decoder_units)


def get_state(model: PUClassifier) -> dict:
    """``{"architecture": json-able fields, "state_dict": CPU tensors}`` from which :func:`from_state`
    rebuilds the model (``receptive_field`` and ``version`` are informational / checked)."""
    arch = dict(model.config)
    arch["receptive_field"] = model.receptive_field
    arch["version"] = STATE_VERSION
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {"architecture": arch, "state_dict": state}


def from_state(state: dict) -> PUClassifier:
    """Rebuild a model saved by :func:`get_state` (strict: every weight must match)."""
    arch = dict(state["architecture"])
    version = int(arch.pop("version", STATE_VERSION))
    if version > STATE_VERSION:
        raise ValueError(f"model state version {version} is newer than this code ({STATE_VERSION})")
    rf = arch.pop("receptive_field", None)
    model = build_model(**arch)
    if rf is not None and int(rf) != model.receptive_field:
        raise ValueError(
            f"receptive field {rf} does not match the rebuilt {arch['name']} ({model.receptive_field})"
        )
    model.load_state_dict(state["state_dict"])
    return model
