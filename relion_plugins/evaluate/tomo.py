"""Scoring 3D picks against the true particles of a tomogram, per species."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .matching import match_picks, prf


def match_3d(picks_xyz: np.ndarray, truth_xyz: np.ndarray, radius: float) -> int:
    """Number of one-to-one matches between picks and true centres within ``radius`` voxels (the
    micrographs' optimal matching, so crowded particles are not double-counted)."""
    p = np.asarray(picks_xyz, float).reshape(-1, 3)
    t = np.asarray(truth_xyz, float).reshape(-1, 3)
    return match_picks(p, t, radius).tp


def species_scores(
    picks: pd.DataFrame, truth: pd.DataFrame, radii: dict[int, float]
) -> dict[int, dict[str, float]]:
    """Precision, recall and F1 per species: picks of species ``s`` matched to true particles of ``s``
    within ``radii[s]`` voxels. Both tables have ``x, y, z, species`` (and a ``tomo`` column when several
    tomograms are pooled)."""
    out = {}
    for s, r in radii.items():
        tp = n_p = n_t = 0
        keys = sorted(set(truth.get("tomo", pd.Series([0])).unique()) | set(picks.get("tomo", pd.Series([0])).unique()))
        for k in keys:
            ps = picks[(picks["species"] == s) & ((picks["tomo"] == k) if "tomo" in picks else True)]
            ts = truth[(truth["species"] == s) & ((truth["tomo"] == k) if "tomo" in truth else True)]
            tp += match_3d(ps[["x", "y", "z"]].to_numpy(), ts[["x", "y", "z"]].to_numpy(), r)
            n_p += len(ps)
            n_t += len(ts)
        precision, recall, f1 = prf(tp, n_p, n_t)
        out[s] = {"precision": precision, "recall": recall, "f1": f1, "n_picks": n_p, "n_truth": n_t}
    return out
