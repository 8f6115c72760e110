"""Whole-tomogram prediction over overlapping patches, and picks by connected-component clustering."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.ndimage as ndi
import torch

from .data import standardize


def _starts(n: int, patch: int, stride: int) -> list[int]:
    if n <= patch:
        return [0]
    starts = list(range(0, n - patch + 1, stride))
    if starts[-1] != n - patch:
        starts.append(n - patch)
    return starts


@torch.no_grad()
def predict_volume(
    model: torch.nn.Module,
    volume: np.ndarray,
    patch: int = 64,
    overlap: int = 20,
    device: torch.device | str = "cpu",
    check_abort: Callable[[], None] | None = None,
) -> np.ndarray:
    """Class probabilities ``[C, Z, Y, X]`` (float32): softmax of the network on patches overlapping by
    ``overlap`` voxels, averaged where they overlap. Volumes smaller than a patch are padded."""
    model.eval()
    vol = standardize(volume)
    shape = vol.shape
    padded = np.pad(vol, [(0, max(0, patch - n)) for n in shape], mode="reflect") if min(shape) < patch else vol
    pshape = padded.shape
    stride = max(1, patch - overlap)
    n_classes = model.config["n_classes"]
    acc = np.zeros((n_classes, *pshape), np.float32)
    count = np.zeros(pshape, np.float32)
    for z in _starts(pshape[0], patch, stride):
        if check_abort is not None:
            check_abort()
        for y in _starts(pshape[1], patch, stride):
            for x in _starts(pshape[2], patch, stride):
                sl = (slice(z, z + patch), slice(y, y + patch), slice(x, x + patch))
                t = torch.from_numpy(np.ascontiguousarray(padded[sl]))[None, None].to(device)
                logits, _ = model(t)
                acc[(slice(None), *sl)] += torch.softmax(logits, 1)[0].float().cpu().numpy()
                count[sl] += 1
    probs = acc / count[None]
    return probs[:, : shape[0], : shape[1], : shape[2]]


def size_floors(min_voxels: int, radii: Sequence[float], min_fraction: float | Sequence[float]) -> np.ndarray:
    """The smallest component (voxels) that counts as a particle of each species: ``min_voxels``, or
    ``min_fraction`` (one value, or one per species) of the species' sphere volume if that is more."""
    fractions = np.broadcast_to(np.asarray(min_fraction, float), (len(radii),))
    return np.maximum(float(min_voxels), fractions * 4.0 / 3.0 * np.pi * np.asarray(radii, float) ** 3)


def _merged_pieces(
    component: np.ndarray, prob: np.ndarray, radius: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split one component (a boolean mask over a box) at the peaks of its species' probability smoothed over a
    third of the particle radius, peaks at least one radius apart; each voxel goes to its nearest peak.
    Returns ``(peak zyx, piece mask)`` per piece; one piece (centroid as peak) if no peak is found."""
    smooth = ndi.gaussian_filter(prob.astype(np.float32), max(0.5, radius / 3.0)) * component
    window = 2 * int(round(0.8 * radius)) + 1
    cand = np.argwhere((smooth == ndi.maximum_filter(smooth, size=window)) & component & (smooth > 0))
    if len(cand) == 0:
        return [(np.asarray(ndi.center_of_mass(component), float), component)]
    cand = cand[np.argsort(-smooth[tuple(cand.T)], kind="stable")]
    kept: list[np.ndarray] = []
    for c in cand:  # greedy: the highest peak first, none within a radius of a kept one
        if all(np.sum((c - k) ** 2) >= radius * radius for k in kept):
            kept.append(c)
    seeds = np.zeros(component.shape, np.int32)
    for i, k in enumerate(kept, start=1):
        seeds[tuple(k)] = i
    _, nearest = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    owner = seeds[tuple(nearest)]
    return [(k.astype(float), component & (owner == i)) for i, k in enumerate(kept, start=1)]


def cluster_picks(
    probs: np.ndarray,
    min_voxels: int = 5,
    radii: Sequence[float] | None = None,
    min_fraction: float | Sequence[float] = 0.0,
    split_above: float | Sequence[float] = 0.0,
) -> pd.DataFrame:
    """One pick per particle and species: the argmax label map is split into 26-connected components of
    each species (class 0 is background); components of at least ``min_voxels`` give their centroid.

    With ``radii`` (voxels, one per species) a component must also fill ``min_fraction`` (one value, or one
    per species) of its species' sphere volume: a large particle's segmentation breaks up at its edges, and
    each crumb would otherwise be a pick. A component of more than ``split_above`` (one value, or one per
    species; 0 = never) times its species' sphere volume holds several particles run together (a network
    trained on oversized sphere labels paints the space between close particles with their species): it is
    split at the peaks of the species' probability, one pick per peak, at the peak (floors apply per piece).

    Returns ``x, y, z`` (voxels), ``species``, ``score`` (mean probability of the species in the
    component) and ``size`` (voxels).
    """
    labels = probs.argmax(0)
    structure = np.ones((3, 3, 3), bool)  # 26-neighbourhood
    rows = []
    if radii is not None and len(radii) != probs.shape[0] - 1:
        raise ValueError(f"{len(radii)} radii for {probs.shape[0] - 1} species")
    splits = np.broadcast_to(np.asarray(split_above, float), (probs.shape[0] - 1,))
    if radii is None and np.any(splits > 0):
        raise ValueError("splitting merged components needs the species' radii")
    floors = size_floors(min_voxels, radii, min_fraction) if radii is not None else None
    for c in range(1, probs.shape[0]):
        comp, n = ndi.label(labels == c, structure=structure)
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
        smallest = float(min_voxels) if floors is None else floors[c - 1]
        merged = np.zeros(n, bool)
        if splits[c - 1] > 0:
            merged = sizes > splits[c - 1] * 4.0 / 3.0 * np.pi * float(radii[c - 1]) ** 3
        keep = np.flatnonzero((sizes >= smallest) & ~merged) + 1
        if keep.size:
            cent = np.asarray(ndi.center_of_mass(np.ones_like(comp, np.float32), comp, keep), float).reshape(-1, 3)
            score = np.asarray(ndi.mean(probs[c], comp, keep), float)
            rows.append(
                pd.DataFrame(
                    {"x": cent[:, 2], "y": cent[:, 1], "z": cent[:, 0], "species": c, "score": score, "size": sizes[keep - 1]}
                )
            )
        boxes = ndi.find_objects(comp)
        for k in np.flatnonzero(merged) + 1:
            box = boxes[k - 1]
            offset = np.array([sl.start for sl in box], float)
            for peak, piece in _merged_pieces(comp[box] == k, probs[c][box], float(radii[c - 1])):
                size = int(piece.sum())
                if size < smallest:
                    continue
                z, y, x = peak + offset
                score = float(probs[c][box][piece].mean())
                rows.append(pd.DataFrame({"x": [x], "y": [y], "z": [z], "species": c, "score": score, "size": size}))
    if not rows:
        return pd.DataFrame({k: pd.Series(dtype=float) for k in ("x", "y", "z", "species", "score", "size")})
    return pd.concat(rows, ignore_index=True)


MIN_FRACTION_GRID = (0.0, 0.05, 0.1, 0.25, 0.5)


SPLIT_GRID = (0.0, 2.0)  # never split; split components of more than two particles' sphere volume


def choose_operating_point(
    probs: Sequence[np.ndarray],
    score: Callable[[pd.DataFrame], dict[int, float]],
    radii: Sequence[float],
    grid: Sequence[float] = MIN_FRACTION_GRID,
    split_grid: Sequence[float] = SPLIT_GRID,
    min_voxels: int = 5,
) -> tuple[list[float], list[float], list[float]]:
    """Each species' component-size floor (a fraction of its sphere volume) and split threshold
    (``split_above`` of :func:`cluster_picks`) of best score on validation tomograms, and those scores.

    A network trained on oversized sphere labels paints each particle as a big sphere, and close particles
    of a species run together into one component; one that learnt the particles' true shapes paints a small
    species with a fraction of its sphere, and a large one's edges break into crumbs. No fixed floor or split
    suits all, so both are an operating point chosen on validation, as a 2D picker's score threshold.
    ``score(picks)`` takes the picks of all ``probs`` (column ``tomo`` = index into ``probs``) and gives each
    species' score (e.g. F1); a species' picks depend only on its own floor and split, so each species gets
    those of its best score; ties go to not splitting, then to the smaller floor."""
    n_species = len(radii)
    best_score, best_frac, best_split = [-np.inf] * n_species, [0.0] * n_species, [0.0] * n_species
    for split in sorted(split_grid):
        # components do not depend on the floor: label once per split, then filter by size
        every = pd.concat(
            [cluster_picks(p, min_voxels, radii, 0.0, split).assign(tomo=i) for i, p in enumerate(probs)],
            ignore_index=True,
        )
        species = every["species"].to_numpy(int) - 1
        for frac in sorted(grid):
            floor = size_floors(min_voxels, radii, frac)[species]
            scores = score(every[every["size"].to_numpy() >= floor].reset_index(drop=True))
            for s in range(1, n_species + 1):
                if scores[s] > best_score[s - 1]:
                    best_score[s - 1], best_frac[s - 1], best_split[s - 1] = float(scores[s]), float(frac), float(split)
    return best_frac, best_split, best_score


def choose_min_fraction(
    probs: Sequence[np.ndarray],
    score: Callable[[pd.DataFrame], dict[int, float]],
    radii: Sequence[float],
    grid: Sequence[float] = MIN_FRACTION_GRID,
    min_voxels: int = 5,
) -> tuple[list[float], list[float]]:
    """:func:`choose_operating_point` without splitting: each species' floor of best score, and the scores."""
    frac, _, best = choose_operating_point(probs, score, radii, grid, (0.0,), min_voxels)
    return frac, best
