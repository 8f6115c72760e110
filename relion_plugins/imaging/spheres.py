"""Label volumes painted from particle centres: the cheap sphere labels a tomogram picker trains on."""

from __future__ import annotations

import numpy as np


def paint_spheres(
    shape: tuple[int, int, int],
    xyz: np.ndarray,
    species: np.ndarray,
    radii_px: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """A ``uint8`` label volume ``[z, y, x]``: voxels within ``radii_px[i]`` of centre ``xyz[i]`` (x, y, z
    in voxels) get ``species[i]`` (1, 2, ...), the rest 0. Where spheres overlap the later one wins.

    ``out`` is painted into when given (so sphere labels can go on top of another label volume).
    """
    labels = np.zeros(shape, np.uint8) if out is None else out
    xyz = np.asarray(xyz, float).reshape(-1, 3)
    for (x, y, z), s, r in zip(xyz, np.asarray(species).ravel(), np.asarray(radii_px, float).ravel()):
        if r <= 0:
            continue
        lo = [max(0, int(np.floor(c - r))) for c in (z, y, x)]
        hi = [min(n, int(np.ceil(c + r)) + 1) for c, n in zip((z, y, x), shape)]
        if any(h <= low for low, h in zip(lo, hi)):
            continue
        zz, yy, xx = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        inside = (zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= r * r
        labels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]][inside] = int(s)
    return labels
