"""Non-maximum suppression shared by the pickers: one pick per particle from a score map.

Candidates are the local maxima of the score map; accepted best first, each acceptance blocks a disk so
that no later pick lands within the suppression radius. The greedy pass is order-preserving: the picks
above any threshold are the same whether or not weaker candidates took part, so a job can pick once at a
low threshold and cut later.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi


def greedy_disks(
    cy: np.ndarray,
    cx: np.ndarray,
    diam_px: np.ndarray,
    shape: tuple[int, int],
    min_dist_px: float | None,
    top_k: int | None,
) -> np.ndarray:
    """Indices of accepted candidates (input sorted best first); each acceptance blocks a disk.

    A raster of blocked pixels makes every test O(1); painting a disk costs its area, so the total work
    is (number of picks) x (particle area), independent of the number of candidates.
    """
    blocked = np.zeros(shape, dtype=bool)
    ny, nx = shape
    keep: list[int] = []
    limit = np.inf if top_k is None else int(top_k)
    if limit <= 0:
        return np.zeros(0, dtype=np.intp)
    disks: dict[int, np.ndarray] = {}
    # plain Python ints: most candidates are rejected by one lookup, where numpy scalars cost most
    ys, xs = np.asarray(cy).astype(np.intp).tolist(), np.asarray(cx).astype(np.intp).tolist()
    for i, (y, x) in enumerate(zip(ys, xs)):
        if blocked[y, x]:
            continue
        keep.append(i)
        if len(keep) >= limit:
            break
        r = 0.5 * float(diam_px[i]) if min_dist_px is None else float(min_dist_px)
        key = int(round(r * 4))  # radii on a quarter-pixel grid: few distinct disks to build
        disk = disks.get(key)
        if disk is None:
            rr = key / 4.0
            ri0 = int(math.ceil(rr))
            yy, xx = np.mgrid[-ri0 : ri0 + 1, -ri0 : ri0 + 1]
            disk = (yy * yy + xx * xx) < rr * rr
            disks[key] = disk
        ri = disk.shape[0] // 2
        y0, y1, x0, x1 = y - ri, y + ri + 1, x - ri, x + ri + 1
        if y0 >= 0 and x0 >= 0 and y1 <= ny and x1 <= nx:  # the common case: no clipping
            blocked[y0:y1, x0:x1] |= disk
            continue
        sy0, sx0 = max(0, -y0), max(0, -x0)
        sy1 = disk.shape[0] - max(0, y1 - ny)
        sx1 = disk.shape[1] - max(0, x1 - nx)
        blocked[max(y0, 0) : min(y1, ny), max(x0, 0) : min(x1, nx)] |= disk[sy0:sy1, sx0:sx1]
    return np.asarray(keep, dtype=np.intp)


def disk_footprint(radius_px: float) -> np.ndarray:
    """Boolean disk of radius ``radius_px`` (at least the centre pixel)."""
    r = max(float(radius_px), 0.0)
    ri = int(math.floor(r))
    yy, xx = np.mgrid[-ri : ri + 1, -ri : ri + 1]
    return (yy * yy + xx * xx) <= r * r + 1e-9


def score_map_peaks(
    score: np.ndarray,
    radius_px: float,
    *,
    threshold: float = -np.inf,
    border_px: int = 0,
    exclude: np.ndarray | None = None,
    max_picks: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Picks ``(y, x, score)`` from ``score``, best first, no two closer than ``radius_px``.

    Local maxima within a disk of ``radius_px / 2`` are the candidates (a plateau keeps all its pixels
    as candidates; the greedy pass then keeps one). ``border_px`` pixels at each edge and ``exclude``
    (True = bad area) give no picks.
    """
    s = np.asarray(score, dtype=np.float32)
    if s.ndim != 2:
        raise ValueError(f"score map must be 2D, got shape {s.shape}")
    foot = disk_footprint(max(0.5 * radius_px, 1.0))
    cand = s >= ndi.maximum_filter(s, footprint=foot, mode="nearest")
    cand &= np.isfinite(s) & (s > threshold)
    b = int(border_px)
    if b > 0:
        cand[:b] = cand[-b:] = False
        cand[:, :b] = cand[:, -b:] = False
    if exclude is not None:
        cand &= ~np.asarray(exclude, dtype=bool)
    cy, cx = np.nonzero(cand)
    cs = s[cy, cx]
    order = np.lexsort((cx, cy, -cs))  # by score, ties by position: deterministic
    cy, cx, cs = cy[order], cx[order], cs[order]
    keep = greedy_disks(cy, cx, np.full(cy.size, 2.0 * radius_px), s.shape, None, max_picks)
    return cy[keep], cx[keep], cs[keep]
