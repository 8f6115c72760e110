"""``python -m relion_plugins.jobs JOB [RELION flags]``: run an External job without its console script."""

from __future__ import annotations

import sys

from ..relion.external import launch


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        from ..cli import EXECUTABLES

        jobs = ", ".join(EXECUTABLES.values())
        print(f"usage: python -m relion_plugins.jobs JOB --o External/jobNNN/ ... (JOB: {jobs})")
        sys.exit(0 if len(sys.argv) >= 2 else 1)
    sys.exit(launch(sys.argv[1], sys.argv[2:]))


if __name__ == "__main__":
    main()
