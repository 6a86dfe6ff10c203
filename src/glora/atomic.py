"""Atomic file writes: each writer fills a temporary file of its own beside the target, then
renames it into place.

Readers see the old file or the new one, never a torn or empty one, also when several processes
write the same file at once (a sweep's parallel runs filling one data cache) or a writer is
killed. A temporary name shared by writers is not enough: a second writer truncates the file the
first has just renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", *, fsync: bool = False) -> Iterator[IO]:
    """An open temporary file that replaces ``path`` when the block exits without an error.

    ``fsync`` flushes it to disk before the rename (checkpoints that must survive a crash). On an
    error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) atomically."""
    with atomic_file(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
