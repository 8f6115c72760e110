"""Class selection rules: %/Res, RELION's score thresholds with minimum particles / classes, and an
adaptive threshold for on-the-fly batches. Arrays in, arrays out: no STAR labels here.

RELION's rule (``ClassRanker::performRanking`` with ``--auto_select``, 4.0 and 5.0 alike):

1. Only scored classes take part: those with ``rlnClassDistribution x n_particles > 10``. The others get
   the score -999 and are never selected, not even to reach a minimum.
2. A class is selected when ``min_score <= score <= max_score`` (``--min_score``, default 0.5;
   ``--max_score``, default 999).
3. If fewer than ``--select_min_nr_particles`` particles or fewer than ``--select_min_nr_classes`` classes
   are selected, the not-yet-selected scored classes are visited from the best score down (ties: the
   later class first). While the particle minimum is unmet, each visited class is added and the loop
   **stops as soon as the particle minimum is reached**, even if the class minimum is still unmet; when
   the particle minimum is already met, classes are added until the class minimum is reached.
   ``relion_compatible=False`` keeps adding until both minimums are met.
4. Particle numbers are RELION's ``distribution x n_particles``, accumulated as a float and truncated to
   an integer after each addition (``long += double``); pass whatever per-class numbers you want counted.

The Select job maps ``rank_threshold`` to ``--min_score`` and ``select_nr_parts`` /
``select_nr_classes`` to the two minimums. ``--relative_thresholds`` (scale the thresholds by the
maximum score) never takes effect in RELION because the maximum is never updated; it is not offered.

On top of RELION's rule, :func:`select_classes` can also require ``%/Res >= min_pres``
(:func:`percent_per_resolution`); a class must then pass both the score and the %/Res test. When no
scores are given, %/Res alone decides and also orders the fill-up of step 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "NOT_SCORED",
    "Selection",
    "adaptive_threshold",
    "percent_per_resolution",
    "select_classes",
]

NOT_SCORED = -999.0  # RELION's score for classes with <= 10 particles
RELION_MIN_PARTICLES = 10.0
# rlnEstimatedResolution RELION writes for classes it could not estimate (e.g. empty classes).
UNESTIMATED_RESOLUTION = 999.0


def percent_per_resolution(
    distribution: np.ndarray, resolution_A: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """%/Res = 100 x class distribution / estimated resolution (Å), per class.

    Returns ``(values, reasons)``. A value is 0 with a reason (empty string otherwise) when the
    resolution is 0, negative, NaN, infinite or RELION's "not estimated" 999 Å, or when the distribution
    is NaN or negative.
    """
    dist = np.asarray(distribution, dtype=np.float64).reshape(-1)
    res = np.asarray(resolution_A, dtype=np.float64).reshape(-1)
    if dist.shape != res.shape:
        raise ValueError(f"{dist.size} class distributions but {res.size} resolutions")
    out = np.zeros(dist.shape, dtype=np.float64)
    reasons: list[str] = []
    for i, (d, r) in enumerate(zip(dist.tolist(), res.tolist())):
        if not math.isfinite(d) or d < 0:
            reasons.append(f"class distribution {d} is not a valid fraction")
        elif math.isnan(r):
            reasons.append("resolution is NaN")
        elif math.isinf(r):
            reasons.append("resolution is infinite")
        elif r <= 0:
            reasons.append(f"resolution {r:g} Å is not positive")
        elif r >= UNESTIMATED_RESOLUTION:
            reasons.append(f"resolution {r:g} Å: not estimated by RELION")
        else:
            out[i] = 100.0 * d / r
            reasons.append("")
    return out, reasons


@dataclass
class Selection:
    """Result of :func:`select_classes`: ``selected[k]`` and a one-line ``reasons[k]`` per class.

    ``n_particles`` / ``n_classes`` are the selected totals (particles counted as RELION does);
    ``added`` marks classes added only to reach a minimum.
    """

    selected: np.ndarray
    reasons: list[str]
    added: np.ndarray
    n_particles: int
    n_classes: int


def select_classes(
    scores: np.ndarray | None,
    pres: np.ndarray | None,
    n_particles_per_class: np.ndarray,
    min_score: float | None = 0.5,
    min_pres: float | None = None,
    min_particles: int = -1,
    min_classes: int = -1,
    max_score: float | None = None,
    min_scored_particles: float = RELION_MIN_PARTICLES,
    relion_compatible: bool = True,
) -> Selection:
    """Select classes by score and/or %/Res, then top up to minimum particle / class numbers.

    ``scores`` (from the ranker) and ``pres`` (%/Res) may each be None; ``min_score`` / ``min_pres`` of
    None switch that test off. Classes with ``n_particles_per_class <= min_scored_particles`` (RELION: 10)
    are never selected. ``min_particles`` / ``min_classes`` <= 0 switch the minimums off (RELION's
    default -1). See the module doc for the exact order of the top-up.
    """
    n = np.asarray(n_particles_per_class, dtype=np.float64).reshape(-1)
    k = n.size
    s = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    p = None if pres is None else np.asarray(pres, dtype=np.float64).reshape(-1)
    for name, arr in (("scores", s), ("pres", p)):
        if arr is not None and arr.size != k:
            raise ValueError(f"{name} has {arr.size} values for {k} classes")
    use_score = s is not None and min_score is not None
    use_pres = p is not None and min_pres is not None
    if s is None and p is None:
        raise ValueError("give scores, %/Res values or both")

    eligible = n > min_scored_particles
    selected = np.zeros(k, dtype=bool)
    added = np.zeros(k, dtype=bool)
    reasons = [""] * k
    tests = [""] * k  # what the threshold tests said, reused when a class is added to reach a minimum
    for i in range(k):
        if not eligible[i]:
            reasons[i] = f"not scored: {n[i]:g} particles (<= {min_scored_particles:g})"
            continue
        why: list[str] = []
        ok = True
        if use_score:
            assert s is not None and min_score is not None
            hi = math.inf if max_score is None else max_score
            if not math.isfinite(s[i]):
                ok = False
                why.append(f"score {s[i]} is not a number")
            elif s[i] < min_score:
                ok = False
                why.append(f"score {s[i]:.3f} < {min_score:g}")
            elif s[i] > hi:
                ok = False
                why.append(f"score {s[i]:.3f} > max {hi:g}")
            else:
                why.append(f"score {s[i]:.3f} >= {min_score:g}")
        if use_pres:
            assert p is not None and min_pres is not None
            if not (p[i] >= min_pres):
                ok = False
                why.append(f"%/Res {p[i]:.3f} < {min_pres:g}")
            else:
                why.append(f"%/Res {p[i]:.3f} >= {min_pres:g}")
        if not use_score and not use_pres:
            ok = False
            why.append("no threshold given")
        selected[i] = ok
        tests[i] = ", ".join(why)
        reasons[i] = ("selected: " if ok else "rejected: ") + tests[i]

    # RELION: nr_sel_parts is a long; "long += double" truncates the running sum each time.
    n_parts = 0
    for i in np.nonzero(selected)[0]:
        n_parts = int(n_parts + n[i])
    n_cls = int(selected.sum())

    if (min_particles > 0 and n_parts < min_particles) or (min_classes > 0 and n_cls < min_classes):
        # Best first; RELION sorts (score, index) pairs ascending and walks from the end.
        key = s if s is not None else p
        assert key is not None
        key = np.where(np.isfinite(key), key, -np.inf)
        order = sorted(np.nonzero(eligible & ~selected)[0], key=lambda i: (key[i], i), reverse=True)
        for i in order:
            need_parts = min_particles > 0 and n_parts < min_particles
            need_classes = min_classes > 0 and n_cls < min_classes
            if not (need_parts or need_classes):
                break
            selected[i] = added[i] = True
            n_parts = int(n_parts + n[i])
            n_cls += 1
            target = f"{min_particles} particles" if need_parts else f"{min_classes} classes"
            reasons[i] = f"added: best remaining class, to reach {target} ({tests[i]})"
            if relion_compatible:
                if need_parts and n_parts >= min_particles:
                    break  # RELION stops here even if the class minimum is still unmet
                if not need_parts and n_cls >= min_classes:
                    break
    return Selection(selected=selected, reasons=reasons, added=added, n_particles=n_parts, n_classes=n_cls)


def adaptive_threshold(
    scores: np.ndarray,
    quantile: float,
    weights: np.ndarray | None = None,
    floor: float | None = None,
    ceiling: float | None = None,
) -> float:
    """Score threshold below which a ``quantile`` fraction of the classes (or of ``weights``) falls.

    For on-the-fly processing, where each batch of classes is ranked separately: e.g. ``quantile=0.3``
    rejects the worst 30 % of a batch. With ``weights`` (particles per class) the quantile is taken over
    particles instead of classes. Non-finite scores (RELION's -999 for unscored classes included) are
    ignored; the result is clipped to ``[floor, ceiling]`` when given. No usable score gives ``floor``
    (or -inf).
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    ok = np.isfinite(s) & (s != NOT_SCORED)
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.size != s.size:
            raise ValueError(f"weights has {w.size} values for {s.size} scores")
        ok &= np.isfinite(w) & (w > 0)
    if not ok.any():
        return float(floor) if floor is not None else -math.inf
    s = s[ok]
    if w is None:
        t = float(np.quantile(s, quantile))
    else:
        w = w[ok]
        order = np.argsort(s, kind="stable")
        cum = np.cumsum(w[order])
        # Smallest score whose cumulative weight reaches the quantile of the total.
        pos = int(np.searchsorted(cum, quantile * cum[-1], side="left"))
        t = float(s[order][min(pos, s.size - 1)])
    if floor is not None:
        t = max(t, float(floor))
    if ceiling is not None:
        t = min(t, float(ceiling))
    return t


def duplicate_mask(
    groups: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    min_distance: float,
    priority: np.ndarray | None = None,
) -> np.ndarray:
    """True for particles to drop as duplicates: within ``min_distance`` of a kept particle of the same group.

    ``groups``: micrograph of each particle; ``x``, ``y``: refined centres (same unit as ``min_distance``).
    Within a group particles are visited by decreasing ``priority`` (ties: input order) and each is kept
    unless a kept one lies closer than ``min_distance``, so of two copies of one particle the better one
    stays. RELION's Select job does the same test (``do_remove_duplicates``, default 30 Å) in input order.
    """
    groups = np.asarray(groups)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = x.size
    drop = np.zeros(n, dtype=bool)
    if n == 0 or not min_distance > 0:
        return drop
    prio = np.zeros(n) if priority is None else np.nan_to_num(np.asarray(priority, dtype=np.float64))
    d2 = float(min_distance) ** 2
    _, inverse = np.unique(groups, return_inverse=True)
    # one sort: by group, then by decreasing priority, then input order (stable) -> one slice per group
    order = np.lexsort((np.arange(n), -prio, inverse))
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    neighbours = [(ox, oy) for ox in (-1, 0, 1) for oy in (-1, 0, 1)]
    for idx in np.split(order, bounds):
        if idx.size < 2:
            continue
        gx, gy = x[idx].tolist(), y[idx].tolist()
        # cell list on a grid of min_distance: only the 3 x 3 neighbouring cells can hold a duplicate
        cx = np.floor(x[idx] / min_distance).astype(np.int64).tolist()
        cy = np.floor(y[idx] / min_distance).astype(np.int64).tolist()
        cells: dict[tuple[int, int], list[int]] = {}
        for j in range(idx.size):
            near = any(
                (gx[j] - gx[k]) ** 2 + (gy[j] - gy[k]) ** 2 < d2
                for ox, oy in neighbours
                for k in cells.get((cx[j] + ox, cy[j] + oy), ())
            )
            if near:
                drop[idx[j]] = True
            else:
                cells.setdefault((cx[j], cy[j]), []).append(j)
    return drop
