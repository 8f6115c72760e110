"""Training minibatches for the PU picker: labelled-positive and unlabelled crops from micrographs.

Labels follow Topaz: every pixel within ``radius`` (inclusive) of a labelled particle centre (rounded to
the nearest pixel) is positive; everything else is unlabelled. A minibatch holds a fixed number of crops
centred on random positive pixels (uniform over all positive pixels of all micrographs) followed by crops
centred on random unlabelled pixels (uniform over all pixels, hence micrographs weighted by area). Topaz's
defaults: 256 crops, 1/16 positive (16 + 240). Topaz draws the positive count per minibatch at random
with that rate; here it is fixed, which keeps the GE-binomial ``N`` constant.

``exclude_labeled=True`` (Topaz's "PN split", used with PN / GE-KL / GE-binomial) draws unlabelled
pixels outside the positive mask; ``False`` (Topaz's "PU split", NNPU) draws them from all pixels.

Micrographs are mirror-padded (``reflect``) by ``crop // 2``, so crops exist around every pixel; the
models' dense score maps pad the same way. Crops are odd-sized, centred on their pixel, and optionally
augmented by one of the 8 rotations by 90 degrees / flips. Everything is gathered with one fancy-index
into a flat buffer of all padded micrographs (augmentation is a permutation of the gather offsets), so
there is no Python loop per crop. Randomness comes from one seeded ``numpy.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

__all__ = ["CropSampler", "disk_offsets", "positive_mask"]


def disk_offsets(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """``(dy, dx)`` integer offsets with ``dy^2 + dx^2 <= radius^2``."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    r = int(np.floor(radius))
    d = np.arange(-r, r + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    inside = dy**2 + dx**2 <= float(radius) ** 2
    return dy[inside], dx[inside]


def _rounded_inside(coords_xy: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    xy = np.asarray(coords_xy, dtype=np.float64).reshape(-1, 2)
    x = np.rint(xy[:, 0]).astype(np.int64)
    y = np.rint(xy[:, 1]).astype(np.int64)
    keep = (x >= 0) & (x < shape[1]) & (y >= 0) & (y < shape[0])
    return y[keep], x[keep]


def positive_mask(shape: tuple[int, int], coords_xy: np.ndarray, radius: float) -> np.ndarray:
    """Bool mask of pixels within ``radius`` of any ``(x, y)`` centre (centres outside are ignored)."""
    h, w = int(shape[0]), int(shape[1])
    mask = np.zeros((h, w), dtype=bool)
    y, x = _rounded_inside(coords_xy, (h, w))
    if y.size == 0:
        return mask
    dy, dx = disk_offsets(radius)
    yy = (y[:, None] + dy[None, :]).ravel()
    xx = (x[:, None] + dx[None, :]).ravel()
    ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    mask[yy[ok], xx[ok]] = True
    return mask


def _dihedral_offsets(crop: int) -> tuple[np.ndarray, np.ndarray]:
    """``[8, crop, crop]`` row / column offsets (from the centre) for the 8 rot90 / flip variants."""
    h = crop // 2
    dy, dx = np.meshgrid(np.arange(-h, h + 1), np.arange(-h, h + 1), indexing="ij")
    ys, xs = [], []
    for flip in (False, True):
        gy, gx = (dy[:, ::-1], dx[:, ::-1]) if flip else (dy, dx)
        for k in range(4):
            ys.append(np.rot90(gy, k))
            xs.append(np.rot90(gx, k))
    return np.stack(ys), np.stack(xs)


class CropSampler:
    """Seeded minibatch sampler over a set of (normalised) micrographs with labelled particle centres.

    ``images``: 2D float arrays; ``coords``: per micrograph an ``[n, 2]`` array of ``(x, y)`` centres in
    that image's pixels (may be empty); ``radius``: label radius in px; ``crop``: odd crop edge, at least
    the model's receptive field. ``batch_size`` and ``positive_fraction`` give the positive count
    ``round(batch_size * positive_fraction)``. ``augment``: random rot90 / flips.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        coords: Sequence[np.ndarray],
        radius: float,
        crop: int,
        batch_size: int = 256,
        positive_fraction: float = 0.0625,
        seed: int | None = 0,
        augment: bool = True,
        exclude_labeled: bool = True,
    ):
        if len(images) == 0:
            raise ValueError("no micrographs given")
        if len(coords) != len(images):
            raise ValueError(f"{len(images)} micrographs but {len(coords)} coordinate arrays")
        crop = int(crop)
        if crop < 1 or crop % 2 == 0:
            raise ValueError(f"crop must be a positive odd number of pixels, got {crop}")
        if batch_size < 1 or not 0.0 <= positive_fraction <= 1.0:
            raise ValueError("batch_size must be >= 1 and positive_fraction in [0, 1]")
        self.crop = crop
        self.radius = float(radius)
        self.n_positive = int(round(batch_size * positive_fraction))
        self.n_unlabeled = int(batch_size) - self.n_positive
        self.augment = bool(augment)
        self.exclude_labeled = bool(exclude_labeled)
        self.rng = np.random.default_rng(seed)

        pad = crop // 2
        self.shapes = []
        padded, masks, positives = [], [], []
        for i, (img, xy) in enumerate(zip(images, coords)):
            arr = np.asarray(img, dtype=np.float32)
            if arr.ndim != 2:
                raise ValueError(f"micrograph {i} is not 2D: shape {arr.shape}")
            self.shapes.append(arr.shape)
            padded.append(np.pad(arr, pad, mode="reflect").ravel())
            mask = positive_mask(arr.shape, xy, radius)
            masks.append(mask.ravel())
            positives.append(np.flatnonzero(mask))
        sizes = np.array([h * w for h, w in self.shapes], dtype=np.int64)
        self._widths = np.array([w for _, w in self.shapes], dtype=np.int64)
        self._padded_widths = self._widths + 2 * pad
        self._starts = np.r_[0, np.cumsum(sizes)[:-1]]  # image offsets in the unpadded pixel numbering
        padded_sizes = np.array([p.size for p in padded], dtype=np.int64)
        self._padded_starts = np.r_[0, np.cumsum(padded_sizes)[:-1]]
        self._buffer = np.concatenate(padded)
        self._mask = np.concatenate(masks)
        self._pos_global = np.concatenate([p + s for p, s in zip(positives, self._starts)])
        self.total_pixels = int(sizes.sum())
        if self.n_positive > 0 and self._pos_global.size == 0:
            raise ValueError(
                "no labelled particle lies inside the micrographs: nothing to sample as positive"
            )
        if self.exclude_labeled and self._pos_global.size >= self.total_pixels and self.n_unlabeled > 0:
            raise ValueError("every pixel is labelled positive: no unlabelled pixels left")
        self._dy, self._dx = _dihedral_offsets(crop)

    @property
    def n_positive_pixels(self) -> int:
        """Number of labelled-positive pixels over all micrographs."""
        return int(self._pos_global.size)

    @property
    def labeled_fraction(self) -> float:
        """Labelled-positive share of all pixels (``f`` of ``objectives.unlabeled_prior``)."""
        return self.n_positive_pixels / self.total_pixels

    def _split(self, global_index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        img = np.searchsorted(self._starts, global_index, side="right") - 1
        local = global_index - self._starts[img]
        y, x = np.divmod(local, self._widths[img])
        return img, y, x

    def draw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Centres of one minibatch: (micrograph index, y, x, label 1/0), positives first."""
        pos = self._pos_global[self.rng.integers(0, self._pos_global.size, size=self.n_positive)]
        unl = self.rng.integers(0, self.total_pixels, size=self.n_unlabeled)
        if self.exclude_labeled and self._pos_global.size:
            for _ in range(1000):  # positives are a small share: a few rounds suffice
                bad = np.flatnonzero(self._mask[unl])
                if bad.size == 0:
                    break
                unl[bad] = self.rng.integers(0, self.total_pixels, size=bad.size)
            else:
                raise RuntimeError("could not draw unlabelled pixels outside the positive mask")
        img, y, x = self._split(np.concatenate([pos, unl]))
        labels = np.r_[np.ones(self.n_positive, np.float32), np.zeros(self.n_unlabeled, np.float32)]
        return img, y, x, labels

    def extract(
        self, image_index: np.ndarray, y: np.ndarray, x: np.ndarray, transform: np.ndarray | None = None
    ) -> np.ndarray:
        """``[n, crop, crop]`` float32 crops centred on ``(y, x)`` of the given micrographs.

        ``transform`` (0..7 per crop; None = identity): ``k`` rotations by 90 degrees (``t % 4``), after a
        left-right flip when ``t >= 4``.
        """
        image_index = np.asarray(image_index, dtype=np.int64)
        t = np.zeros(image_index.size, np.int64) if transform is None else np.asarray(transform, np.int64)
        pad = self.crop // 2
        wp = self._padded_widths[image_index]
        centre = self._padded_starts[image_index] + (np.asarray(y) + pad) * wp + (np.asarray(x) + pad)
        idx = centre[:, None, None] + self._dy[t] * wp[:, None, None] + self._dx[t]
        return self._buffer[idx]

    def sample_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """One minibatch as numpy: crops ``[B, crop, crop]`` float32, labels ``[B]`` (1 = positive)."""
        img, y, x, labels = self.draw()
        t = self.rng.integers(0, 8, size=img.size) if self.augment else None
        return self.extract(img, y, x, t), labels

    def sample(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One minibatch as tensors: crops ``[B, 1, crop, crop]``, labels ``[B]``; positives first
        (``logits[:n_positive]`` / ``logits[n_positive:]`` feed the objectives)."""
        crops, labels = self.sample_arrays()
        xt = torch.from_numpy(crops).unsqueeze(1)
        yt = torch.from_numpy(labels)
        if device is not None:
            xt, yt = xt.to(device), yt.to(device)
        return xt, yt

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.sample()
