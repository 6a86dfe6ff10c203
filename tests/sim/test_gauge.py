"""The gauge experiment: the gauge, what it changes on the server, `train.init`, the command."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from glora.cli import main
from glora.training.train import TrainResult, start_adapter
from glora.config import load_config
from glora.errors import ConfigError
from glora.global_model import LORA_A, LORA_B
from glora.federation.server import FederatedServer
from glora.sim.gauge import (CHANGE_MAX, FLOOR, GaugedSimulation, GaugeInjector, gauge_adapter,
                             layer_gauge)
from glora.federation.prepare import prepare
from glora.sim.simulator import Simulation
from glora.sim.workers import ClientExecutor

LAYERS = ("enc.0.query", "enc.1.value")
INVARIANT = ("glora", "flexlora", "flora", "fedex")


def adapter(rank: int, dtype: torch.dtype = torch.float32, seed: int = 0,
            ) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {"classifier.weight": torch.randn(2, 24, generator=g)}
    for layer in LAYERS:
        out[layer + LORA_B] = (0.01 * torch.randn(24, rank, generator=g)).to(dtype)
        out[layer + LORA_A] = torch.randn(rank, 24, generator=g).to(dtype)
    return out


def product(ad: dict[str, torch.Tensor], layer: str) -> torch.Tensor:
    return ad[layer + LORA_B].double() @ ad[layer + LORA_A].double()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


# -- the gauge -------------------------------------------------------------------------------
@pytest.mark.parametrize("rank", [2, 4, 8])
def test_gauge_keeps_the_update_and_has_the_drawn_condition_number(rank):
    for client in range(5):
        conds = []
        for layer in LAYERS:
            M, cond = layer_gauge(3, 1, client, layer, rank, (1e2, 1e3))
            assert 1e2 <= cond <= 1e3
            assert np.linalg.cond(M) == pytest.approx(cond, rel=1e-9)
            conds.append(cond)
        assert conds[0] != conds[1]  # every layer its own gauge
        for dtype, tol in ((torch.float64, 1e-11), (torch.float32, 1e-4)):
            ad = adapter(rank, dtype, seed=client)
            out = gauge_adapter(ad, 3, 1, client, (1e2, 1e3))
            assert out["classifier.weight"] is ad["classifier.weight"]
            for layer in LAYERS:
                M = torch.from_numpy(layer_gauge(3, 1, client, layer, rank, (1e2, 1e3))[0])
                assert out[layer + LORA_A].dtype == out[layer + LORA_B].dtype == dtype
                assert rel(product(out, layer), product(ad, layer)) < tol
                assert rel(out[layer + LORA_B].double(), ad[layer + LORA_B].double() @ M) < 1e-6
                assert rel(out[layer + LORA_A].double(), ad[layer + LORA_A].double()) > 1e-2


def test_gauge_is_a_pure_function_of_seed_round_client_and_layer():
    ad = adapter(4)
    a, b = gauge_adapter(ad, 0, 2, 1, (1, 1e3)), gauge_adapter(ad, 0, 2, 1, (1, 1e3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for other in (gauge_adapter(ad, 1, 2, 1, (1, 1e3)), gauge_adapter(ad, 0, 3, 1, (1, 1e3)),
                  gauge_adapter(ad, 0, 2, 0, (1, 1e3))):
        assert not torch.equal(other[LAYERS[0] + LORA_B], a[LAYERS[0] + LORA_B])
    M, cond = layer_gauge(0, 0, 0, LAYERS[0], 1, (1e2, 1e3))  # rank 1: a gauge is +-1
    assert abs(M[0, 0]) == pytest.approx(1.0) and 1e2 <= cond <= 1e3
    assert layer_gauge(0, 0, 0, LAYERS[0], 3, (50, 50))[1] == 50


def test_a_frozen_factor_is_sent_as_it_was_while_the_client_holds_it_gauged():
    raw = TrainResult(client_id=2, adapter=adapter(4), head={}, num_examples=10, train_loss=0.5,
                      seconds=0.0)
    task = type("Task", (), {"round": 0, "frozen": ("A",)})()
    injector = GaugeInjector(lambda tasks: [raw], seed=0, cond_range=(10, 100))
    (sent,) = injector([task])
    (held,) = injector.held
    for layer in LAYERS:
        assert torch.equal(sent.adapter[layer + LORA_A], raw.adapter[layer + LORA_A])
        assert torch.equal(sent.adapter[layer + LORA_B], held.adapter[layer + LORA_B])
        assert not torch.equal(held.adapter[layer + LORA_A], raw.adapter[layer + LORA_A])
        assert rel(product(held.adapter, layer), product(raw.adapter, layer)) < 1e-5


# -- what the gauge changes on the server ----------------------------------------------------
def test_gauge_invariant_methods_keep_their_update_and_factor_averaging_does_not(tiny_config,
                                                                                 tmp_path):
    cfg = tiny_config("train.rounds=2", "train.local_steps=2", "eval.every=2",
                      "train.lr_schedule=constant",  # the run the 2e-4 bound was set on
                      f"methods=[{','.join(INVARIANT)},fedit]")
    prepared = prepare(cfg)
    with ClientExecutor(prepared.model_spec, 1) as executor:
        history = {m: GaugedSimulation(cfg, m, prepared, tmp_path / m, executor, (1e2, 1e3))
                   .run().state.history for m in cfg.methods}
    for m in INVARIANT:  # float32 rounding of the gauged factors only (about 1e-8 cond)
        for record in history[m]:
            assert record[CHANGE_MAX] < 2e-4 and record[CHANGE_MAX] < 5 * record[FLOOR], m
            assert record["gauge_update_change_mean"] <= record[CHANGE_MAX]
    assert all(record[CHANGE_MAX] > 1e-2 for record in history["fedit"])
    logged = [json.loads(line) for line in (tmp_path / "glora/metrics.jsonl").read_text()
              .splitlines()]
    assert [r[CHANGE_MAX] for r in logged] == [r[CHANGE_MAX] for r in history["glora"]]


def test_a_gauged_run_resumes_to_the_same_records(tiny_config, tmp_path):
    cfg = tiny_config("train.rounds=2", "train.local_steps=1", "methods=[fedit]")
    prepared = prepare(cfg)
    with ClientExecutor(prepared.model_spec, 1) as executor:
        whole = GaugedSimulation(cfg, "fedit", prepared, tmp_path / "a", executor, (1, 1e3)).run()
        GaugedSimulation(cfg, "fedit", prepared, tmp_path / "b", executor, (1, 1e3)).run(
            stop_after=1)
        resumed = GaugedSimulation(cfg, "fedit", prepared, tmp_path / "b", executor,
                                   (1, 1e3)).run(resume=True)
    keep = lambda h: [{k: v for k, v in r.items()  # noqa: E731
                       if not k.endswith("seconds")} for r in h]
    assert keep(resumed.state.history) == keep(whole.state.history)


# -- train.init ------------------------------------------------------------------------------
def start_A(cfg, method: str) -> list[torch.Tensor]:
    """The first layer's fresh ``lora_A`` of clients 0 and 2 (both rank 2) in round 1."""
    prepared = prepare(cfg)
    tasks = FederatedServer(cfg, method, None).configure()
    out = []
    for t in (tasks[0], tasks[2]):
        start = start_adapter(t, prepared.cache.adapter(t.rank))
        out.append(start[min(k for k in start if k.endswith(LORA_A))])
    return out


def test_independent_init_gives_each_client_its_own_start(tiny_config):
    own = start_A(tiny_config("train.init=independent"), "glora")
    assert own[0].shape == own[1].shape and not torch.equal(*own)
    again = start_A(tiny_config("train.init=independent"), "glora")
    assert all(torch.equal(x, y) for x, y in zip(own, again))  # reproducible
    a, b = start_A(tiny_config(), "glora")  # shared is the default
    assert torch.equal(a, b)
    a, b = start_A(tiny_config("train.init=independent", "methods=[ffa]"), "ffa")
    assert torch.equal(a, b)  # FFA-LoRA's frozen A stays shared


def test_init_mode_is_validated(tiny_config):
    with pytest.raises(ConfigError, match=r"`train.init` must be one of \['shared', "
                       r"'independent'\], got 'random'"):
        tiny_config("train.init=random")


# -- the command -----------------------------------------------------------------------------
def test_gauge_command_writes_a_row_per_method_and_init(tiny_config, tiny_model_dir, tiny_csv,
                                                        tmp_path, capsys):
    cfg = tiny_config()
    overrides = [f"model.name={tiny_model_dir}", f"data.dataset={tiny_csv[0]}",
                 f"data.test_file={tiny_csv[1]}", "data.num_clients=4", "data.partition=iid",
                 "data.max_length=12", "data.min_client_size=1", "train.rounds=1",
                 "train.local_steps=1", "train.batch_size=8", "workers=1", "lora.ranks=[2,4]",
                 f"output_dir={cfg.output_dir}", "methods=[glora,fedit,ffa]"]
    assert main(["gauge", "--cond-min", "100", "--cond-max", "1000", *overrides]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "run" / "gauge"
    table = (out / "gauge.md").read_text()
    assert table in printed
    rows = list(csv.DictReader(open(out / "gauge.csv")))
    assert [(r["method"], r["init"]) for r in rows] == [
        (m, i) for i in ("shared", "independent")
        for m in ("glora", "fedit (all r=2)", "ffa (all r=2)")]
    for m in ("glora", "fedit (all r=2)", "ffa (all r=2)"):
        assert f"| {m} | shared |" in table and f"| {m} | independent |" in table
    assert "FFA-LoRA" in table and "[100, 1000]" in table
    assert load_config(out / "independent" / "config.yaml").train.init == "independent"
    assert load_config(out / "config.yaml").methods == ["glora", "fedit", "ffa"]
    for init in ("shared", "independent"):
        for m in ("glora", "fedit", "ffa"):
            gauged = json.loads((out / init / m / "gauged" / "metrics.jsonl").read_text())
            plain = json.loads((out / init / m / "plain" / "metrics.jsonl").read_text())
            assert CHANGE_MAX in gauged and CHANGE_MAX not in plain
            assert plain["clients"] == gauged["clients"] == [0, 1, 2, 3]
    by = {(r["method"], r["init"]): float(r["update_change_max"]) for r in rows}
    assert by[("glora", "shared")] < 1e-4 < 1e-2 < by[("fedit (all r=2)", "shared")]
    assert by[("ffa (all r=2)", "independent")] > 1e-2
    assert {"global_loss_untouched", "global_loss_gauged", "global_loss_difference"} <= set(rows[0])
    # --resume reads the finished runs back (no round runs again: the checkpoints stay as they were)
    stamp = (out / "shared" / "glora" / "gauged" / "checkpoint.pt").stat().st_mtime_ns
    assert main(["gauge", "--resume", "--cond-min", "100", "--cond-max", "1000", *overrides]) == 0
    assert list(csv.DictReader(open(out / "gauge.csv"))) == rows
    assert (out / "shared" / "glora" / "gauged" / "checkpoint.pt").stat().st_mtime_ns == stamp
    # --report rebuilds the table from the metrics alone, as from a store committed without
    # checkpoints
    for checkpoint in out.glob("*/*/*/checkpoint.pt"):
        checkpoint.unlink()
    (out / "gauge.md").unlink()
    assert main(["gauge", "--report", *overrides]) == 0
    assert (out / "gauge.md").read_text() == table
    assert not list(out.glob("*/*/*/checkpoint.pt"))  # nothing trained again


@pytest.mark.parametrize("args, message", [
    (["--cond-min", "0.5"], "--cond-min` 0.5"),
    (["--cond-min", "10", "--cond-max", "5"], "1 <= cond-min <= cond-max"),
    (["--init", "shared,bogus"], "`--init` must be a comma-separated list"),
])
def test_gauge_command_rejects_bad_options(args, message, tmp_path, capsys):
    assert main(["gauge", *args, f"output_dir={tmp_path / 'x'}"]) == 2
    assert message in capsys.readouterr().err


def test_plain_and_gauged_runs_share_everything_but_the_gauge(tiny_config, tmp_path):
    """The untouched run is an ordinary run: with a gauge of condition 1 (orthogonal M) the
    gauged one only rotates the factors, so a gauge-invariant method ends where it did."""
    cfg = tiny_config("train.rounds=1", "train.local_steps=1")
    prepared = prepare(cfg)
    with ClientExecutor(prepared.model_spec, 1) as executor:
        plain = Simulation(cfg, "glora", prepared, tmp_path / "p", executor).run()
        gauged = GaugedSimulation(cfg, "glora", prepared, tmp_path / "g", executor, (1, 1)).run()
    a, b = plain.state.model.total_delta(), gauged.state.model.total_delta()
    assert all(rel(b[k], a[k]) < 1e-4 for k in a)
    assert gauged.state.history[0][CHANGE_MAX] < 1e-4
