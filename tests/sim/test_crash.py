"""A run killed with SIGKILL at random moments, also inside checkpoint writes, resumes to the
result of an uninterrupted run."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path

import torch

from glora.config import save_config
from glora.federation.checkpoint import PAUSE_ENV
from glora.federation.server import load_state
from glora.sim.experiment import run_experiment

# Two kills in checkpoint writes come first: each leaves a round to do, so both happen.
KILLS = ("write", "write", "random", "write", "random")  # then one run to the end
PAUSE = 0.4  # seconds a checkpoint waits before its rename in "write" runs


def glora_run(argv: list[str], pause: float) -> None:
    """Child process: ``glora run`` (forked, so nothing is imported again)."""
    from glora.cli import main

    if pause:
        os.environ[PAUSE_ENV] = str(pause)
    os._exit(main(argv))


def start(argv: list[str], pause: float = 0.0) -> mp.Process:
    child = mp.get_context("fork").Process(target=glora_run, args=(argv, pause))
    child.start()
    return child


def kill_during_write(child: mp.Process, folder: Path, nth: int) -> bool:
    """SIGKILL ``child`` while its ``nth`` checkpoint write waits to be renamed (``False``: it
    finished first)."""
    stale = set(folder.glob(".checkpoint.pt.*.tmp"))  # left by a killed write: not this run's
    written: set[Path] = set()
    while child.is_alive():
        pending = set(folder.glob(".checkpoint.pt.*.tmp")) - stale
        written |= pending
        if pending and len(written) >= nth:
            os.kill(child.pid, signal.SIGKILL)
            return True
        time.sleep(0.005)
    return False


def lines(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("seconds")}
            for line in path.read_text().splitlines()]


def delta(folder: Path) -> dict[str, torch.Tensor]:
    return load_state(folder / "glora/checkpoint.pt").model.total_delta()


def test_killed_run_resumes_to_the_uninterrupted_result(tiny_config, tmp_path):
    started = time.perf_counter()
    run_experiment(tiny_config(f"output_dir={tmp_path / 'straight'}"))
    duration = time.perf_counter() - started
    out = tmp_path / "killed"
    save_config(tiny_config(f"output_dir={out}"), tmp_path / "killed.yaml")
    argv = ["run", "--resume", "--config", str(tmp_path / "killed.yaml")]
    rng = random.Random(0)
    killed_in_write = 0
    for mode in (*KILLS, None):
        done = len((out / "glora/metrics.jsonl").read_text().splitlines()) \
            if (out / "glora/metrics.jsonl").exists() else 0
        child = start(argv, PAUSE if mode == "write" else 0.0)
        if mode == "write":
            killed_in_write += kill_during_write(child, out / "glora",
                                                 nth=rng.randint(1, max(1, 3 - done)))
        elif mode == "random":
            time.sleep(rng.uniform(0, duration))
            os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode in ((0, -signal.SIGKILL) if mode else (0,))
    assert killed_in_write >= 2
    assert lines(out / "glora/metrics.jsonl") == lines(tmp_path / "straight/glora/metrics.jsonl")
    a, b = delta(out), delta(tmp_path / "straight")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(out.rglob("*.tmp"))

    # Killed after the last checkpoint but before its metrics line: a resume writes it.
    log = out / "glora/metrics.jsonl"
    log.write_text(log.read_text().splitlines(keepends=True)[0])
    child = start(argv)
    child.join()
    assert child.exitcode == 0
    assert lines(log) == lines(tmp_path / "straight/glora/metrics.jsonl")

