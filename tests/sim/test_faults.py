"""Broken and hostile clients in the simulator: left out, recorded, and otherwise harmless."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from glora.errors import AggregationError
from glora.sim.faults import FaultInjector
from glora.federation.prepare import prepare
from glora.federation.server import load_state
from glora.sim.simulator import Simulation
from glora.sim.workers import ClientExecutor

# (round, client) -> fault; rounds counted from 1. 4 clients, ranks 2 and 4 cycled.
FAULTS = {(1, 1): "nan", (2, 2): "shape", (2, 3): "scale", (3, 0): "drop", (3, 2): "examples"}
CHECKS = {"nan": "finite", "shape": "shape", "scale": "norm", "examples": "examples"}


def run(cfg, prepared, out: Path, faults: dict[tuple[int, int], str], global_seed: int):
    """A simulation with ``faults``, after scrambling every global RNG (results must not care)."""
    torch.manual_seed(global_seed)
    np.random.seed(global_seed)
    random.seed(global_seed)
    with ClientExecutor(prepared.model_spec, 1) as executor:
        return Simulation(cfg, "glora", prepared, out, FaultInjector(executor, faults)).run()


def test_faulty_clients_are_rejected_and_the_run_equals_one_without_them(
        tiny_config, tmp_path, caplog):
    cfg = tiny_config("server.max_update_norm=100")
    prepared = prepare(cfg)
    with caplog.at_level(logging.WARNING, logger="glora.federation.server"):
        faulty = run(cfg, prepared, tmp_path / "faulty", FAULTS, global_seed=1)
    silent = run(cfg, prepared, tmp_path / "silent", {k: "drop" for k in FAULTS}, global_seed=2)

    for rnd, record in enumerate(faulty.state.history, start=1):
        expected = {c: CHECKS[k] for (r, c), k in FAULTS.items() if r == rnd and k != "drop"}
        assert {c: reason.split(":")[0] for c, reason in record["rejected"].items()} == expected
        for c in expected:
            assert any(f"round {rnd}: rejected client {c}: {expected[c]}:" in m
                       for m in caplog.messages)
        assert record["clients"] == [c for c in range(4) if (rnd, c) not in FAULTS]
    assert all(r["rejected"] == {} for r in silent.state.history)

    keep = lambda h: [{k: v for k, v in r.items()  # noqa: E731
                       if k != "rejected" and not k.endswith("seconds")} for r in h]
    assert keep(faulty.state.history) == keep(silent.state.history)
    assert "global_accuracy" in faulty.state.history[-1]
    a, b = faulty.state.model.total_delta(), silent.state.model.total_delta()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_too_few_valid_clients_retry_the_round_then_stop(tiny_config, tmp_path):
    cfg = tiny_config("server.min_clients=4", "server.retries=1", "train.rounds=2")
    prepared = prepare(cfg)
    calls = []

    def execute(tasks: list) -> list:
        calls.append(tasks[0].round + 1)
        return inner(tasks)

    with ClientExecutor(prepared.model_spec, 1) as executor:
        inner = FaultInjector(executor, {(2, 1): "nan"})
        sim = Simulation(cfg, "glora", prepared, tmp_path / "run", execute)
        with pytest.raises(AggregationError, match=r"round 2: 3 valid replies .*\(rejected: "
                           r"\{1: 'finite: .*Stopped after 2 attempt"):
            sim.run()
    assert calls == [1, 2, 2]  # round 2 ran twice with the same tasks
    assert sim.server.round == 1 and len(sim.server.state.history) == 1
    saved = load_state(sim.checkpoint_path)
    assert saved.model.round == 1
    assert len((tmp_path / "run/metrics.jsonl").read_text().splitlines()) == 1
