"""Console-script entry points of the External executables.

Each one only imports the stdlib-only runtime; the job module itself (numpy, scipy, torch, ...) is imported
inside the runtime's failure guard, so even a broken installation leaves RELION_JOB_EXIT_FAILURE behind.
"""

from __future__ import annotations

import sys

from ..relion.external import launch


def log_pick() -> None:
    """``rp-pick-log``: the LoG / Adaptive-LoG picker."""
    sys.exit(launch("log_pick"))


def pu_train() -> None:
    """``rp-pu-train``: train the PU-learning CNN picker."""
    sys.exit(launch("pu_train"))


def pu_pick() -> None:
    """``rp-pu-pick``: pick with a trained PU-learning CNN."""
    sys.exit(launch("pu_pick"))


def rank_select() -> None:
    """``rp-rank-select``: rank 2D classes and select the good ones."""
    sys.exit(launch("rank_select"))


def tomo_train() -> None:
    """``rp-tomo-train``: train the tomogram picker (RobPicker method)."""
    sys.exit(launch("tomo_train"))


def tomo_pick() -> None:
    """``rp-tomo-pick``: pick particles in tomograms with a trained RobPicker U-Net."""
    sys.exit(launch("tomo_pick"))


def loop_report() -> None:
    """``rp-loop-report``: per-iteration history and logfile of the self-supervised picking loop."""
    sys.exit(launch("loop_report"))


def detr_train() -> None:
    """``rp-detr-train``: train the transformer picker (UPicker method)."""
    sys.exit(launch("detr_train"))


def detr_pick() -> None:
    """``rp-detr-pick``: pick with a trained transformer picker."""
    sys.exit(launch("detr_pick"))
