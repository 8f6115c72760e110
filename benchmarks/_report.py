"""Write one benchmark's results into its own section of docs/benchmarks.md.

Each benchmark owns the text between ``<!-- begin NAME -->`` and ``<!-- end NAME -->`` so several
benchmark scripts can update the page without clobbering each other.
"""

from __future__ import annotations

import platform
import re
from datetime import datetime, timezone
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nFigures written by the scripts in `benchmarks/`; each section says how to re-run it.\n"


def machine_line() -> str:
    """One line describing where the figures were measured."""
    import os

    return (
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {platform.machine()} with {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}."
    )


def update_section(name: str, markdown: str, page: Path = PAGE) -> None:
    """Replace (or append) the section ``name`` of the benchmarks page with ``markdown``."""
    text = page.read_text() if page.exists() else HEADER
    block = f"<!-- begin {name} -->\n{markdown.rstrip()}\n<!-- end {name} -->"
    pattern = re.compile(rf"<!-- begin {re.escape(name)} -->.*?<!-- end {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _m: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    tmp = page.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(page)
