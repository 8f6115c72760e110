"""Matching picks to ground truth: precision, recall, F1 and AUPR (numpy + scipy only)."""

from __future__ import annotations

from .matching import (
    MatchResult,
    PRCurve,
    average_precision,
    best_f1,
    border_mask,
    candidate_pairs,
    match_picks,
    match_picks_per_micrograph,
    precision_recall_curve,
    precision_recall_curve_per_micrograph,
    prf,
)
from .report import SCORE_LABEL, evaluate_coordinates, match_micrograph_names

__all__ = [
    "SCORE_LABEL",
    "MatchResult",
    "PRCurve",
    "average_precision",
    "best_f1",
    "border_mask",
    "candidate_pairs",
    "evaluate_coordinates",
    "match_micrograph_names",
    "match_picks",
    "match_picks_per_micrograph",
    "precision_recall_curve",
    "precision_recall_curve_per_micrograph",
    "prf",
]
