"""Matching particle picks to ground truth, and the precision / recall numbers built on it.

Two matchings are used, each where it is the standard:

* **Fixed threshold** (:func:`match_picks`): an optimal one-to-one matching (Hungarian algorithm) of
  picks to truth particles closer than ``radius`` pixels (inclusive). It maximises the number of
  matches first and, among those, minimises the total distance. Candidate pairs come from a KD-tree;
  the bipartite graph is split into connected components so that each assignment problem is tiny
  (10,000 x 10,000 points take tens of milliseconds). Components that are still large (dense,
  overlapping picks: more than ``_DENSE_LIMIT`` pick x truth cells) get a maximum-cardinality
  matching (nearest-first greedy + Hopcroft-Karp) instead: the same counts, hence the same precision /
  recall / F1, but without the minimum-total-distance tie-break.
* **Precision-recall curve** (:func:`precision_recall_curve`): greedy matching in order of decreasing
  score, each pick taking the nearest still-unmatched truth particle within ``radius`` -- the COCO /
  Topaz convention. The greedy matching is nested (the matches at a threshold are a subset of the
  matches at any lower threshold), so the whole curve comes from one pass over the sorted picks.
  Re-running the Hungarian at every threshold would be O(n) assignments and is not nested; at a
  given threshold greedy can find fewer matches than the Hungarian (never more), typically only
  when picks overlap.

Micrographs are independent: the ``*_per_micrograph`` functions take ``dict[name -> array]`` and pool
the counts (picks in one micrograph only ever match truth in the same micrograph). The truth dict
defines the evaluated micrographs; picks on micrographs absent from it are ignored.

Precision, recall and F1 are 0 when their denominator is 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

__all__ = [
    "MatchResult",
    "PRCurve",
    "average_precision",
    "best_f1",
    "border_mask",
    "candidate_pairs",
    "match_picks",
    "match_picks_per_micrograph",
    "precision_recall_curve",
    "precision_recall_curve_per_micrograph",
    "prf",
    "smoothed_best_threshold",
]

# Components with more candidate cells than this (picks x truth) use Hopcroft-Karp (see module doc).
_DENSE_LIMIT = 250_000


def prf(tp: int, n_picks: int, n_truth: int) -> tuple[float, float, float]:
    """(precision, recall, F1) from counts; 0 where undefined."""
    precision = tp / n_picks if n_picks else 0.0
    recall = tp / n_truth if n_truth else 0.0
    f1 = 2 * tp / (n_picks + n_truth) if (n_picks + n_truth) and tp else 0.0
    return precision, recall, f1


@dataclass(frozen=True)
class MatchResult:
    """One-to-one matches: ``pick_index[k]`` matches ``truth_index[k]`` at ``distance[k]`` pixels.

    Indices refer to the arrays given (for the per-micrograph version: to the concatenation in the
    truth dict's order, see :func:`match_picks_per_micrograph`). ``n_picks`` counts only the picks
    that took part (score >= threshold, inside the border).
    """

    pick_index: np.ndarray
    truth_index: np.ndarray
    distance: np.ndarray
    n_picks: int
    n_truth: int

    @property
    def tp(self) -> int:
        return int(self.pick_index.size)

    @property
    def fp(self) -> int:
        return self.n_picks - self.tp

    @property
    def fn(self) -> int:
        return self.n_truth - self.tp

    @property
    def precision(self) -> float:
        return prf(self.tp, self.n_picks, self.n_truth)[0]

    @property
    def recall(self) -> float:
        return prf(self.tp, self.n_picks, self.n_truth)[1]

    @property
    def f1(self) -> float:
        return prf(self.tp, self.n_picks, self.n_truth)[2]


@dataclass(frozen=True)
class PRCurve:
    """Precision and recall when keeping picks with score >= ``thresholds[k]`` (thresholds decreasing).

    ``tp[k]`` and ``n_kept[k]`` are the counts behind point k; ``n_truth`` is the recall denominator.
    """

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    tp: np.ndarray
    n_kept: np.ndarray
    n_truth: int

    @property
    def f1(self) -> np.ndarray:
        denom = self.n_kept + self.n_truth
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, 2.0 * self.tp / np.maximum(denom, 1), 0.0)


# --------------------------------------------------------------------------------------------------
# Helpers


def _as_xy(xy) -> np.ndarray:
    arr = np.asarray(xy, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 2))
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"expected coordinates of shape (n, 2), got {arr.shape}")
    return arr


def _as_points(xy) -> np.ndarray:
    """Coordinates ``(n, 2)`` or ``(n, 3)``: matching works the same in micrographs and tomograms."""
    arr = np.asarray(xy, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, arr.shape[1] if arr.ndim == 2 and arr.shape[1] in (2, 3) else 2))
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise ValueError(f"expected coordinates of shape (n, 2) or (n, 3), got {arr.shape}")
    return arr


def border_mask(xy, shape: tuple[int, int] | None, border: float) -> np.ndarray:
    """True for points at least ``border`` px from every edge of an image of ``shape = (ny, nx)``.

    A pixel x is kept if ``border <= x <= nx - 1 - border`` (same for y). ``border = 0`` keeps all.
    """
    arr = _as_xy(xy)
    if border <= 0:
        return np.ones(len(arr), dtype=bool)
    if shape is None:
        raise ValueError("border exclusion needs the micrograph shape (ny, nx)")
    ny, nx = shape
    x, y = arr[:, 0], arr[:, 1]
    return (x >= border) & (x <= nx - 1 - border) & (y >= border) & (y <= ny - 1 - border)


def candidate_pairs(picks_xy, truth_xy, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (pick, truth, distance) with distance <= radius, via KD-trees (2D or 3D coordinates)."""
    p, t = _as_points(picks_xy), _as_points(truth_xy)
    if len(p) == 0 or len(t) == 0 or radius < 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    rec = cKDTree(p).sparse_distance_matrix(cKDTree(t), float(radius), output_type="ndarray")
    return rec["i"].astype(np.int64), rec["j"].astype(np.int64), rec["v"].astype(np.float64)


def _hungarian(n_p: int, n_t: int, pi: np.ndarray, ti: np.ndarray, d: np.ndarray, radius: float):
    """Maximum-cardinality, then minimum-distance, one-to-one matching on the candidate edges."""
    if pi.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0)
    # Components of the bipartite graph (picks 0..n_p-1, truth n_p..n_p+n_t-1).
    graph = csr_matrix((np.ones(pi.size), (pi, ti + n_p)), shape=(n_p + n_t, n_p + n_t))
    _, labels = connected_components(graph, directed=False)
    comp = labels[pi]
    cost = d / radius if radius > 0 else np.zeros_like(d)  # in [0, 1]

    # Edges sorted by component, then distance.
    order = np.lexsort((d, comp))
    comp_s = comp[order]
    starts = np.r_[0, np.flatnonzero(np.diff(comp_s)) + 1]
    ends = np.r_[starts[1:], comp_s.size]
    # Distinct picks / truths per component: with one of either, the best matching is the shortest edge.
    n_pick_c = np.bincount(labels[:n_p], minlength=labels.max() + 1)
    n_truth_c = np.bincount(labels[n_p:], minlength=labels.max() + 1)
    c_ids = comp_s[starts]
    simple = (n_pick_c[c_ids] == 1) | (n_truth_c[c_ids] == 1)

    out_p = [pi[order[starts[simple]]]]
    out_t = [ti[order[starts[simple]]]]
    for s, e in zip(starts[~simple], ends[~simple]):
        idx = order[s:e]
        mp, mt = _solve_component(pi[idx], ti[idx], cost[idx])
        out_p.append(mp)
        out_t.append(mt)
    mp, mt = np.concatenate(out_p), np.concatenate(out_t)
    # Look the chosen pairs' distances up in the edge list through a combined (pick, truth) key.
    key = pi * (n_t + 1) + ti
    key_order = np.argsort(key)
    pos = key_order[np.searchsorted(key[key_order], mp * (n_t + 1) + mt)]
    srt = np.argsort(mp, kind="stable")
    return mp[srt], mt[srt], d[pos][srt]


def _solve_component(pi: np.ndarray, ti: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optimal matching inside one connected component (global indices in, global indices out)."""
    up, pl = np.unique(pi, return_inverse=True)
    ut, tl = np.unique(ti, return_inverse=True)
    n_p, n_t = up.size, ut.size
    # Penalty for an unmatched slot: larger than any possible sum of edge costs (each <= 1), so one more
    # match always beats any saving in distance.
    big = float(min(n_p, n_t) + 2)
    if n_p * n_t <= _DENSE_LIMIT:
        mat = np.full((n_p, n_t), big)
        mat[pl, tl] = cost
        rows, cols = linear_sum_assignment(mat)
        ok = mat[rows, cols] < big
        return up[rows[ok]], ut[cols[ok]]
    # A huge component (dense, overlapping picks): a dense assignment is O(n^3), and both scipy's sparse
    # LAPJV (with unmatched-slot penalties) and its maximum_bipartite_matching take minutes at 20k nodes.
    # Precision / recall only depend on how many pairs match, so take a maximum-cardinality matching:
    # nearest-first greedy, completed by our Hopcroft-Karp (no distance tie-break here).
    order = np.argsort(cost, kind="stable")
    match_p = [-1] * n_p
    match_t = [-1] * n_t
    for a, b in zip(pl[order].tolist(), tl[order].tolist()):
        if match_p[a] < 0 and match_t[b] < 0:
            match_p[a] = b
            match_t[b] = a
    by_pick = np.argsort(pl, kind="stable")
    indptr = np.r_[0, np.cumsum(np.bincount(pl, minlength=n_p))].tolist()
    _hopcroft_karp(indptr, tl[by_pick].tolist(), match_p, match_t)
    mp = np.asarray(match_p)
    ok = mp >= 0
    return up[ok], ut[mp[ok]]


def _hopcroft_karp(indptr: list[int], adj: list[int], match_p: list[int], match_t: list[int]) -> None:
    """Grow ``match_p`` / ``match_t`` (in place) to a maximum matching; picks' neighbours in CSR lists."""
    n_p = len(match_p)
    inf = n_p + 1
    while True:
        # BFS layers from the free picks over alternating paths.
        dist = [inf] * n_p
        queue = [u for u in range(n_p) if match_p[u] < 0]
        for u in queue:
            dist[u] = 0
        found = False
        head = 0
        while head < len(queue):
            u = queue[head]
            head += 1
            du = dist[u] + 1
            for k in range(indptr[u], indptr[u + 1]):
                w = match_t[adj[k]]
                if w < 0:
                    found = True
                elif dist[w] == inf:
                    dist[w] = du
                    queue.append(w)
        if not found:
            return
        # Iterative DFS along the layers from each free pick; augment when a free truth is reached.
        ptr = indptr[:-1].copy()
        for root in range(n_p):
            if match_p[root] >= 0 or dist[root] != 0:
                continue
            stack = [root]
            while stack:
                u = stack[-1]
                if ptr[u] == indptr[u + 1]:
                    dist[u] = inf  # dead end for the rest of this phase
                    stack.pop()
                    continue
                v = adj[ptr[u]]
                w = match_t[v]
                if w < 0:
                    for x in stack:  # flip the alternating path
                        vx = adj[ptr[x]]
                        match_p[x] = vx
                        match_t[vx] = x
                    break
                if dist[w] == dist[u] + 1:
                    stack.append(w)  # if w fails, its dist becomes inf and we move past v next time
                else:
                    ptr[u] += 1


def _greedy(scores: np.ndarray, pi: np.ndarray, ti: np.ndarray, d: np.ndarray, n_p: int, n_t: int):
    """Greedy by descending score: returns (order of picks, is_tp in that order)."""
    order = np.argsort(-_clean_scores(scores), kind="stable")
    rank = np.empty(n_p, np.int64)
    rank[order] = np.arange(n_p)
    is_tp = np.zeros(n_p, dtype=bool)
    if pi.size:
        # Edges by pick rank, then distance: each pick sees its candidates nearest first.
        e = np.lexsort((d, rank[pi]))
        pick_taken = bytearray(n_p)
        truth_taken = bytearray(n_t)
        for p, t in zip(pi[e].tolist(), ti[e].tolist()):
            if not pick_taken[p] and not truth_taken[t]:
                pick_taken[p] = 1
                truth_taken[t] = 1
        is_tp = np.frombuffer(bytes(pick_taken), dtype=np.uint8).astype(bool)
    return order, is_tp[order]


def _clean_scores(scores) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    return np.where(np.isnan(s), -np.inf, s)  # NaN scores rank last


def _curve_from_sorted(sorted_scores: np.ndarray, tp_sorted: np.ndarray, n_truth: int) -> PRCurve:
    """PR points at the end of each group of equal scores (threshold = 'score >= t')."""
    if sorted_scores.size == 0:
        z = np.zeros(0)
        return PRCurve(z, z, z, np.zeros(0, np.int64), np.zeros(0, np.int64), n_truth)
    last = np.r_[np.flatnonzero(np.diff(sorted_scores) != 0), sorted_scores.size - 1]
    tp = np.cumsum(tp_sorted)[last]
    kept = last + 1
    precision = tp / kept
    recall = tp / n_truth if n_truth else np.zeros(tp.shape)
    return PRCurve(
        sorted_scores[last], precision, recall, tp.astype(np.int64), kept.astype(np.int64), n_truth
    )


# --------------------------------------------------------------------------------------------------
# Single micrograph


def match_picks(
    picks_xy,
    truth_xy,
    radius: float,
    scores=None,
    threshold: float | None = None,
) -> MatchResult:
    """Optimal one-to-one matching within ``radius`` px (inclusive) of picks with score >= threshold.

    ``scores``/``threshold`` are optional; indices in the result refer to the original ``picks_xy``.
    Coordinates are ``(n, 2)`` or, for tomograms, ``(n, 3)``.
    """
    p, t = _as_points(picks_xy), _as_points(truth_xy)
    keep = np.arange(len(p))
    if threshold is not None:
        if scores is None:
            raise ValueError("a score threshold needs scores")
        keep = np.flatnonzero(_clean_scores(scores) >= threshold)
    pi, ti, d = candidate_pairs(p[keep], t, radius)
    mp, mt, md = _hungarian(keep.size, len(t), pi, ti, d, radius)
    return MatchResult(keep[mp], mt, md, int(keep.size), len(t))


def precision_recall_curve(picks_xy, scores, truth_xy, radius: float) -> PRCurve:
    """PR curve over all score thresholds, greedy matching by descending score (see module doc)."""
    p, t = _as_xy(picks_xy), _as_xy(truth_xy)
    s = _clean_scores(scores)
    if s.size != len(p):
        raise ValueError(f"{s.size} scores for {len(p)} picks")
    pi, ti, d = candidate_pairs(p, t, radius)
    order, tp_sorted = _greedy(s, pi, ti, d, len(p), len(t))
    return _curve_from_sorted(s[order], tp_sorted, len(t))


def average_precision(curve: PRCurve) -> float:
    """Area under the PR curve as a step-wise sum ``sum_k (R_k - R_{k-1}) P_k`` (sklearn's definition).

    Recall is relative to all truth particles, so truth that no pick reaches lowers the AP. NaN when
    there is no truth.
    """
    if curve.n_truth == 0:
        return float("nan")
    if curve.recall.size == 0:
        return 0.0
    recall_prev = np.r_[0.0, curve.recall[:-1]]
    return float(np.sum((curve.recall - recall_prev) * curve.precision))


def best_f1(curve: PRCurve) -> tuple[float, float]:
    """(best F1, its threshold) along the curve; (0.0, nan) for an empty curve."""
    if curve.thresholds.size == 0:
        return 0.0, float("nan")
    f1 = curve.f1
    k = int(np.argmax(f1))
    return float(f1[k]), float(curve.thresholds[k])


def smoothed_best_threshold(curve: PRCurve, halfwidth: float, step: float = 0.005) -> tuple[float, float]:
    """(threshold, F1 there): the threshold whose F1 averaged over ``threshold +- halfwidth`` is best; F1 at
    a threshold t counts the picks with score >= t (a grid of ``step`` from 0 to the top score; the curve
    is held flat beyond its ends). (nan, 0.0) for an empty curve.

    Few validation micrographs give a noisy F1 curve whose maximum often sits at the edge of a cliff: the
    best threshold of other micrographs lies a few hundredths away. On the detector's validation
    micrographs (choose on all but one, score the one left out) +-0.05 beat the plain maximum 11 times
    out of 12, by 0.008 F1 on average."""
    if curve.thresholds.size == 0:
        return float("nan"), 0.0
    grid = np.arange(0.0, float(curve.thresholds.max()) + step, step)
    ascending = curve.thresholds[::-1]
    # the curve's last point with threshold >= t: counted from the end of the ascending thresholds
    idx = curve.thresholds.size - 1 - np.searchsorted(ascending, grid, side="left")
    f1 = np.where(idx >= 0, curve.f1[np.maximum(idx, 0)], 0.0)
    w = max(0, int(round(halfwidth / step)))
    smoothed = np.convolve(np.pad(f1, w, mode="edge"), np.full(2 * w + 1, 1.0 / (2 * w + 1)), "valid")
    k = int(np.argmax(smoothed))
    return float(grid[k]), float(f1[k])


# --------------------------------------------------------------------------------------------------
# Many micrographs


def _filtered(
    picks: Mapping[str, np.ndarray],
    truth: Mapping[str, np.ndarray],
    scores: Mapping[str, np.ndarray] | None,
    border: float,
    shape,
):
    """Per truth micrograph: (picks_xy, scores or None, truth_xy) after border exclusion."""
    out = []
    for name, t in truth.items():
        t = _as_xy(t)
        p = _as_xy(picks.get(name, np.zeros((0, 2))))
        s = None
        if scores is not None:
            s = _clean_scores(scores.get(name, np.zeros(0)))
            if s.size != len(p):
                raise ValueError(f"micrograph {name}: {s.size} scores for {len(p)} picks")
        shp = shape.get(name) if isinstance(shape, Mapping) else shape
        keep_p = border_mask(p, shp, border)
        keep_t = border_mask(t, shp, border)
        out.append((p[keep_p], None if s is None else s[keep_p], t[keep_t]))
    return out


def _pooled_pairs(parts, radius: float):
    """Candidate edges of all micrographs with global pick / truth indices."""
    pis, tis, ds = [], [], []
    p_off = t_off = 0
    for p, _, t in parts:
        pi, ti, d = candidate_pairs(p, t, radius)
        pis.append(pi + p_off)
        tis.append(ti + t_off)
        ds.append(d)
        p_off += len(p)
        t_off += len(t)
    return np.concatenate(pis), np.concatenate(tis), np.concatenate(ds), p_off, t_off


def match_picks_per_micrograph(
    picks: Mapping[str, np.ndarray],
    truth: Mapping[str, np.ndarray],
    radius: float,
    scores: Mapping[str, np.ndarray] | None = None,
    threshold: float | None = None,
    border: float = 0,
    shape: tuple[int, int] | Mapping[str, tuple[int, int]] | None = None,
) -> MatchResult:
    """Hungarian matching per micrograph, pooled. Truth's keys define the micrographs evaluated.

    Indices in the result refer to the concatenation, in the truth dict's order, of the picks (resp.
    truth) that passed the border and threshold filters.
    """
    parts = _filtered(picks, truth, scores, border, shape)
    if threshold is not None:
        if scores is None:
            raise ValueError("a score threshold needs scores")
        parts = [(p[s >= threshold], s[s >= threshold], t) for p, s, t in parts]
    pi, ti, d, n_p, n_t = _pooled_pairs(parts, radius)
    mp, mt, md = _hungarian(n_p, n_t, pi, ti, d, radius)
    return MatchResult(mp, mt, md, n_p, n_t)


def precision_recall_curve_per_micrograph(
    picks: Mapping[str, np.ndarray],
    scores: Mapping[str, np.ndarray],
    truth: Mapping[str, np.ndarray],
    radius: float,
    border: float = 0,
    shape: tuple[int, int] | Mapping[str, tuple[int, int]] | None = None,
) -> PRCurve:
    """Pooled PR curve: thresholds are global (one score scale across micrographs)."""
    parts = _filtered(picks, truth, scores, border, shape)
    pi, ti, d, n_p, n_t = _pooled_pairs(parts, radius)
    s = np.concatenate([sc for _, sc, _ in parts]) if parts else np.zeros(0)
    order, tp_sorted = _greedy(s, pi, ti, d, n_p, n_t)
    return _curve_from_sorted(s[order], tp_sorted, n_t)
