"""A run's output folder: never silently reused, never written by two runs at once.

:func:`claim` refuses a folder that already holds something unless the run resumes it (and then
only under the config it was started with) or is told to overwrite it, and writes the resolved
``config.yaml``. :func:`locked` holds an exclusive lock on the folder while a run writes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import yaml

from glora.config import ExperimentConfig, config_changes, save_config
from glora.errors import ConfigError

LOCK = ".lock"
#: Keys a resumed run may change: they do not change its results.
HARMLESS = ("output_dir", "workers", "eval.batch_size")


def claim(cfg: ExperimentConfig, resume: bool = False, overwrite: bool = False,
          force: bool = False) -> Path:
    """Make ``cfg.output_dir`` this run's and write its ``config.yaml``; return the folder.
    Call it holding :func:`locked` on the folder.

    Raises:
        ConfigError: the folder holds files and neither ``resume`` nor ``overwrite`` is set
            (says which flag does what), or ``resume`` finds a stored config that differs from
            ``cfg`` (lists the keys) and ``force`` is not set.
    """
    out = Path(cfg.output_dir)
    stored = out / "config.yaml"
    if resume and stored.is_file():
        changed = config_changes(yaml.safe_load(stored.read_text()) or {}, cfg, HARMLESS)
        if changed and not force:
            raise ConfigError([f"`--resume`: {stored} was written by a run with another config; "
                               "resume it with the same config (`glora run --resume --config "
                               f"{stored}`), pass `--force` to continue under the new one, or "
                               "choose another `output_dir`. Changed keys:", *changed])
    elif not resume and out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
        if not overwrite:
            raise ConfigError(f"`output_dir` {out} already holds a run; pass `--resume` to "
                              "continue it, `--overwrite` to delete it and start again, or set "
                              "another `output_dir=...`.")
        for child in out.iterdir():
            if child.name != LOCK:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, stored)
    return out


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` (a ``.lock`` file in it) for the block.

    Raises:
        ConfigError: another process holds it (names that process).
    """
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise ConfigError(f"{out} is being written by {owner}; wait for that run to end or "
                              "choose another `output_dir`.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
