"""Atomic checkpoints: write to a temporary file in the same folder, fsync, then rename.

A run killed at any moment (also during a write) leaves either the previous checkpoint or the new
one, never a torn file.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


#: Test hook: seconds to wait between writing a checkpoint and renaming it into place, so a test
#: can kill a run in the middle of a checkpoint write.
PAUSE_ENV = "GLORA_CHECKPOINT_PAUSE"


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically.

    Temporaries a killed write left beside ``path`` are removed first (one process writes a given
    checkpoint at a time).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(path.name + ".*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        time.sleep(float(os.environ.get(PAUSE_ENV, 0)))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(path: str | Path) -> Any:
    """Load a checkpoint written by :func:`save_atomic` (it holds our own dataclasses)."""
    return torch.load(path, weights_only=False)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace a text file atomically (metrics logs are rewritten whole from the checkpoint)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
