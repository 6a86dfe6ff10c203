"""Atomic checkpoints (:mod:`glora.atomic`): a temporary file in the same folder, synced, renamed.

A run killed at any moment (also during a write) leaves either the previous checkpoint or the new
one, never a torn file.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from glora.atomic import atomic_file
from glora.errors import CheckpointError

#: Test hook: seconds to wait between writing a checkpoint and renaming it into place, so a test
#: can kill a run in the middle of a checkpoint write.
PAUSE_ENV = "GLORA_CHECKPOINT_PAUSE"


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically, synced to disk.

    Temporaries a killed write left beside ``path`` are removed first (one process writes a given
    checkpoint at a time).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    with atomic_file(path, "wb", fsync=True) as f:
        torch.save(obj, f)
        time.sleep(float(os.environ.get(PAUSE_ENV, 0)))


def load(path: str | Path, classes: Iterable[type] = ()) -> Any:
    """Load a checkpoint written by :func:`save_atomic` with ``torch.load(weights_only=True)``:
    tensors, containers and the given ``classes`` (our own dataclasses) only, never code.

    Raises:
        CheckpointError: the file holds anything else, or is not a checkpoint (names it).
    """
    try:
        with torch.serialization.safe_globals(list(classes)):
            return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a glora checkpoint this version can load safely "
                              f"({first}); start the run again, or load it with "
                              "torch.load(weights_only=False) if you trust its origin.") from None
