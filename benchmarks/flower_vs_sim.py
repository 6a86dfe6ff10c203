"""Wall time per round: a Flower deployment on loopback against the in-process simulator.

Both engines run the same config and seed, so the same tasks. Flower: what
``glora run --engine flower`` does (a TLS SuperLink and one SuperNode per client on this machine,
``flwr run``); simulator: ``glora run`` (``workers`` processes). Per round: the wall time from
handing out the tasks until the results are aggregated (``train_seconds + server_seconds``,
recorded alike by both engines), median over rounds; also each whole run's wall time, start-up and
evaluation included.

    .venv/bin/python benchmarks/flower_vs_sim.py                     # MiniLM, Rotten Tomatoes
    .venv/bin/python benchmarks/flower_vs_sim.py train.rounds=2 data.num_clients=3

Extra arguments are ``key=value`` overrides of the experiment config. The machine may be shared:
the load average is printed before and after.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from glora.config import load_config
from glora.flower.launch import run_flower
from glora.sim.experiment import run_experiment

DEFAULTS = ["methods=[glora]", "data.num_clients=4", "train.rounds=3", "train.local_steps=10",
            "data.max_test_examples=200", "workers=2"]


def round_seconds(out: Path) -> list[float]:
    """``train_seconds + server_seconds`` of every round in ``out/glora/metrics.jsonl``."""
    lines = (out / "glora" / "metrics.jsonl").read_text().splitlines()
    return [r["train_seconds"] + r["server_seconds"] for r in map(json.loads, lines)]


def main() -> None:
    overrides = [*DEFAULTS, *sys.argv[1:]]
    print(f"# Flower vs simulator; load average before: {os.getloadavg()}")
    print(f"# overrides: {' '.join(overrides)}")
    walls, rounds = {}, {}
    with tempfile.TemporaryDirectory(prefix="flower-vs-sim-") as tmp:
        for engine in ("simulator", "flower"):
            run = [*overrides, f"output_dir={Path(tmp) / engine}"]
            cfg = load_config(None, run)
            started = time.perf_counter()
            if engine == "flower":
                run_flower(cfg, None, run)
            else:
                run_experiment(cfg)
            walls[engine] = time.perf_counter() - started
            rounds[engine] = round_seconds(Path(tmp) / engine)
    print("\n| engine | s/round (median) | per round | run wall s |\n|---|---|---|---|")
    for engine in walls:
        per = ", ".join(f"{s:.1f}" for s in rounds[engine])
        print(f"| {engine} | {statistics.median(rounds[engine]):.2f} | {per} | "
              f"{walls[engine]:.1f} |")
    ratio = statistics.median(rounds["flower"]) / statistics.median(rounds["simulator"])
    print(f"\nflower / simulator, per round: {ratio:.1f}x; whole run: "
          f"{walls['flower'] / walls['simulator']:.1f}x")
    print(f"# load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
