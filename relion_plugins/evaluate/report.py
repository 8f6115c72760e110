"""Evaluate picked coordinates (RELION tables) against ground truth: one dict of numbers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import PurePath

import numpy as np

from .matching import (
    average_precision,
    best_f1,
    match_picks_per_micrograph,
    precision_recall_curve_per_micrograph,
)

__all__ = ["SCORE_LABEL", "evaluate_coordinates", "match_micrograph_names"]

SCORE_LABEL = "rlnAutopickFigureOfMerit"
_X, _Y = "rlnCoordinateX", "rlnCoordinateY"


def _stem(name: str) -> str:
    """Basename without its last extension: ``MotionCorr/job002/Movies/mic_001.mrc`` -> ``mic_001``."""
    return PurePath(str(name).replace("\\", "/")).stem


def match_micrograph_names(pick_names, truth_names) -> tuple[dict[str, str], str]:
    """Map truth micrograph names to pick micrograph names; returns (mapping, "exact" | "basename").

    Names are matched exactly when at least one name is shared. Otherwise (e.g. picks made on
    ``MotionCorr/job002/Movies/x.mrc`` and truth listed as ``Micrographs/x.mrc`` or just ``x``) both sides
    are reduced to the basename without extension; stems that are not unique on either side raise
    ValueError rather than guessing.
    """
    picks = list(pick_names)
    truth = list(truth_names)
    shared = set(picks) & set(truth)
    if shared:
        return {t: t for t in truth if t in shared}, "exact"
    by_stem: dict[str, str] = {}
    for side, names in (("picks", picks), ("truth", truth)):
        stems = [_stem(n) for n in names]
        if len(set(stems)) != len(stems):
            dup = next(s for s in stems if stems.count(s) > 1)
            raise ValueError(f"micrograph names differ and basename {dup!r} is not unique in the {side}")
        if side == "picks":
            by_stem = dict(zip(stems, names))
    return {t: by_stem[_stem(t)] for t in truth if _stem(t) in by_stem}, "basename"


def _xy(df) -> np.ndarray:
    if df is None or len(df) == 0:
        return np.zeros((0, 2))
    missing = [c for c in (_X, _Y) if c not in df.columns]
    if missing:
        raise ValueError(f"coordinate table lacks {', '.join(missing)}")
    return np.column_stack([np.asarray(df[_X], dtype=np.float64), np.asarray(df[_Y], dtype=np.float64)])


def evaluate_coordinates(
    picks: Mapping[str, object],
    truth: Mapping[str, object],
    radius_px: float,
    threshold: float | None = None,
    border: float = 0,
    shape: tuple[int, int] | Mapping[str, tuple[int, int]] | None = None,
) -> dict:
    """Precision / recall / F1 / AUPR of ``picks`` against ``truth`` (both ``{micrograph: DataFrame}``).

    DataFrames have ``rlnCoordinateX``/``rlnCoordinateY`` (pixels) and, for picks, optionally
    ``rlnAutopickFigureOfMerit`` (the score; needed for ``threshold``, AUPR and the best-F1 threshold).
    Every micrograph in ``truth`` is evaluated (an empty table means "no particles"); picks on other
    micrographs are ignored (see :func:`match_micrograph_names` for how names are paired). ``threshold``
    keeps picks with score >= threshold (None: all picks). ``border`` > 0 drops picks and truth closer
    than that to the image edge and needs ``shape = (ny, nx)`` (or a dict of them, keyed by truth name).

    precision / recall / f1 use the optimal (Hungarian) matching at the threshold; aupr, best_f1 and
    best_threshold come from the greedy-by-score PR curve (see :mod:`.matching`).
    """
    mapping, how = match_micrograph_names(picks.keys(), truth.keys())
    truth_xy = {name: _xy(df) for name, df in truth.items()}
    tables = {t_name: picks[p_name] for t_name, p_name in mapping.items()}
    picks_xy = {name: _xy(df) for name, df in tables.items()}
    # Scores are usable only if every non-empty pick table has them.
    nonempty = {name: df for name, df in tables.items() if df is not None and len(df)}
    pick_scores = None
    if nonempty and all(SCORE_LABEL in df.columns for df in nonempty.values()):
        pick_scores = {name: np.asarray(df[SCORE_LABEL], dtype=np.float64) for name, df in nonempty.items()}
    if threshold is not None and pick_scores is None:
        raise ValueError(f"a score threshold needs {SCORE_LABEL} in every pick table")

    result = match_picks_per_micrograph(
        picks_xy, truth_xy, radius_px, scores=pick_scores, threshold=threshold, border=border, shape=shape
    )
    out = {
        "precision": result.precision,
        "recall": result.recall,
        "f1": result.f1,
        "aupr": math.nan,
        "n_picks": result.n_picks,
        "n_truth": result.n_truth,
        "tp": result.tp,
        "fp": result.fp,
        "fn": result.fn,
        "best_f1": result.f1,
        "best_threshold": math.nan,
        "threshold": math.nan if threshold is None else float(threshold),
        "radius_px": float(radius_px),
        "border": float(border),
        "n_micrographs": len(truth),
        "n_micrographs_with_picks": len(mapping),
        "name_matching": how,
    }
    if pick_scores is not None:
        curve = precision_recall_curve_per_micrograph(
            picks_xy, pick_scores, truth_xy, radius_px, border=border, shape=shape
        )
        out["aupr"] = average_precision(curve)
        out["best_f1"], out["best_threshold"] = best_f1(curve)
    return out
