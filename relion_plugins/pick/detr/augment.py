"""Hybrid augmentation (UPicker): offline copies made once, plus random online changes per minibatch.

Offline: the 90° rotations and the flip of every labelled micrograph, and random crops, added to the
training set once (with few labelled micrographs the set is small enough to hold). Online: random flips,
90° rotations, contrast and noise on every crop the loop draws. Coordinates follow every geometric change.
"""

from __future__ import annotations

import numpy as np
import torch


def rot90_points(xy: np.ndarray, shape: tuple[int, int], k: int) -> np.ndarray:
    """Pixel centres after ``np.rot90(image, k)`` of an image of ``shape`` (counter-clockwise)."""
    out = np.asarray(xy, dtype=np.float64).reshape(-1, 2).copy()
    ny, nx = shape
    for _ in range(k % 4):
        out = np.stack([out[:, 1], nx - 1 - out[:, 0]], 1)
        ny, nx = nx, ny
    return out


def offline_augment(
    images: list[np.ndarray],
    coords: list[np.ndarray],
    *,
    rotations: bool = True,
    flips: bool = True,
    crops: int = 0,
    crop_size: int = 256,
    seed: int = 0,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The originals plus their rotations by 90, 180, 270°, their left-right flips and ``crops`` random
    crops per micrograph; coordinates transformed alike (crops keep the particles inside them)."""
    rng = np.random.default_rng(seed)
    out_i, out_c = [], []
    for img, xy in zip(images, coords):
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        variants = [(img, xy)]
        if rotations:
            variants += [
                (np.ascontiguousarray(np.rot90(img, k)), rot90_points(xy, img.shape, k)) for k in (1, 2, 3)
            ]
        if flips:
            variants += [
                (np.ascontiguousarray(v[:, ::-1]), np.stack([v.shape[1] - 1 - c[:, 0], c[:, 1]], 1))
                for v, c in list(variants)
            ]
        out_i += [v for v, _ in variants]
        out_c += [c for _, c in variants]
        ny, nx = img.shape
        for _ in range(crops):
            if ny <= crop_size or nx <= crop_size:
                break
            y0 = int(rng.integers(0, ny - crop_size + 1))
            x0 = int(rng.integers(0, nx - crop_size + 1))
            inside = (
                (xy[:, 0] >= x0)
                & (xy[:, 0] < x0 + crop_size)
                & (xy[:, 1] >= y0)
                & (xy[:, 1] < y0 + crop_size)
            )
            out_i.append(np.ascontiguousarray(img[y0 : y0 + crop_size, x0 : x0 + crop_size]))
            out_c.append(xy[inside] - [x0, y0])
    return out_i, out_c


def online_augment(
    image: torch.Tensor,
    boxes: torch.Tensor,
    generator: torch.Generator,
    contrast: float = 0.2,
    noise: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips, 90° rotation (square crops), contrast scaling and Gaussian noise of one crop.

    ``image`` ``[1, H, W]``; ``boxes`` ``[T, 4]`` cxcywh normalised (a pixel centre at ``(x + 0.5) / W``)."""

    def coin() -> bool:
        return bool(torch.rand((), generator=generator) < 0.5)

    b = boxes.clone()
    if coin():
        image = image.flip(-1)
        b[:, 0] = 1 - b[:, 0]
    if coin():
        image = image.flip(-2)
        b[:, 1] = 1 - b[:, 1]
    if image.shape[-1] == image.shape[-2] and coin():
        image = torch.rot90(image, 1, dims=(-2, -1))  # as np.rot90: (cx, cy) -> (cy, 1 - cx)
        b = torch.stack([b[:, 1], 1 - b[:, 0], b[:, 3], b[:, 2]], 1)
    gain = 1.0 + contrast * (2 * torch.rand((), generator=generator) - 1)
    sigma = noise * torch.rand((), generator=generator)
    image = image * gain + sigma * torch.randn(image.shape, generator=generator)
    return image, b
