"""Atomic file writes: a reader (RELION, a scheme, a re-run) never sees a half-written file.

Every writer creates a temporary file in the destination directory (same file system, so the final
``os.replace`` is atomic), flushes and fsyncs it, then renames it over the destination.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TMP_PREFIX = ".rp_tmp_"


def _umask() -> int:
    # Reading the umask means setting it: do it once, at import, before any job thread runs.
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


_UMASK: int | None = None
_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it.

    Use this for libraries that insist on opening the file themselves (mrcfile, torch.save).
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=dest.suffix, dir=dest.parent)
    # mkstemp makes the file private (0600); outputs in a shared RELION project must get the permissions
    # any other new file would (0666 minus the umask), or colleagues cannot read them.
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file for writing that replaces ``path`` only when the block succeeds."""
    if "b" in mode:
        encoding = None
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding, newline="\n" if encoding else None) as fh:
        yield fh


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` (LF line endings, UTF-8) to ``path``."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def touch(path: str | os.PathLike) -> None:
    """Create an empty file (or leave an existing one), creating parent directories."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.touch()


def remove_stale_temporaries(directory: str | os.PathLike) -> int:
    """Delete temporaries left by a killed writer under ``directory``; return how many were removed."""
    removed = 0
    for tmp in Path(directory).rglob(TMP_PREFIX + "*"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed += 1
    return removed


def _fsync_file(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
