"""Write one benchmark's results into its own section of docs/benchmarks.md.

Each benchmark owns the text between ``<!-- begin NAME -->`` and ``<!-- end NAME -->`` so several
benchmark scripts can update the page without clobbering each other.
"""

from __future__ import annotations

import fcntl
import os
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


def run_args(argv: list[str], with_value: tuple[str, ...] = (), flags: tuple[str, ...] = ()) -> list[str]:
    """A benchmark's command line for its "Run:" line, less the options that do not change the figures:
    ``with_value`` (dropped with their value, e.g. a work directory) and ``flags``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in with_value:
            skip = True
        elif a not in flags and not any(a.startswith(o + "=") for o in with_value):
            out.append(a)
    return out


def update_section(name: str, markdown: str, page: Path = PAGE) -> None:
    """Replace (or append) the section ``name`` of the benchmarks page with ``markdown``.

    Benchmarks run side by side update the page one at a time (a lock file beside it), so neither
    loses the other's section."""
    page.parent.mkdir(parents=True, exist_ok=True)
    with open(page.with_suffix(".md.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = page.read_text() if page.exists() else HEADER
        block = f"<!-- begin {name} -->\n{markdown.rstrip()}\n<!-- end {name} -->"
        pattern = re.compile(rf"<!-- begin {re.escape(name)} -->.*?<!-- end {re.escape(name)} -->", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _m: block, text)
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        tmp = page.with_suffix(f".md.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(page)


def sync(device) -> None:
    """Wait for the GPU's queued work, so that a clock read after it times the work (no-op on a CPU)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()


def device_words(device, threads: int) -> str:
    """Where a timing ran: the GPU's name, or the CPU and its torch threads."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return f"CPU, {threads} thread(s)"
