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
