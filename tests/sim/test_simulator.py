"""End-to-end runs of the in-process simulator on the tiny setting."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from glora.aggregation import get_method, methods
from glora.errors import ConfigError
from glora.federation.prepare import prepare
from glora.federation.server import FederatedServer, load_state
from glora.global_model import LORA_A, LORA_B
from glora.sim.experiment import run_experiment
from glora.sim.simulator import Simulation
from glora.sim.workers import ClientExecutor
from glora.tasks.classification import load_classifier, logits
from glora.training.train import train_client


def history(out: Path, method: str = "glora") -> list[dict]:
    return [json.loads(line) for line in (out / method / "metrics.jsonl").read_text().splitlines()]


def strip_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in records]


def test_resumed_run_equals_uninterrupted_run(tiny_config, tmp_path):
    straight = tiny_config(f"output_dir={tmp_path / 'straight'}")
    run_experiment(straight, export=False)
    interrupted = tiny_config(f"output_dir={tmp_path / 'resumed'}")
    run_experiment(interrupted, stop_after=1, export=False)
    assert len(history(tmp_path / "resumed")) == 1
    run_experiment(interrupted, resume=True, export=False)
    assert strip_timing(history(tmp_path / "resumed")) == strip_timing(history(tmp_path / "straight"))
    a = load_state(tmp_path / "straight/glora/checkpoint.pt").model.total_delta()
    b = load_state(tmp_path / "resumed/glora/checkpoint.pt").model.total_delta()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_exported_adapter_gives_the_in_memory_predictions(tiny_config, tiny_model_dir):
    from peft import PeftModel

    cfg = tiny_config("train.rounds=2")
    run_experiment(cfg)
    prepared = prepare(cfg)
    state = load_state(Path(cfg.output_dir) / "glora/checkpoint.pt")
    in_memory = logits(prepared.cache.global_model(state.model.total_delta(), state.model.head),
                       prepared.data.test)
    peft_model = PeftModel.from_pretrained(load_classifier(tiny_model_dir, num_labels=2),
                                           str(Path(cfg.output_dir) / "glora/adapter")).eval()
    exported = logits(peft_model, prepared.data.test)
    assert torch.allclose(exported, in_memory, atol=1e-5)
    assert not torch.allclose(in_memory, logits(prepared.cache.global_model({}, None), prepared.data.test))


def test_every_method_runs_with_mixed_ranks_and_learns(tiny_config):
    cfg = tiny_config("train.rounds=3", "train.local_steps=8", "train.lr=0.03",
                      f"methods={methods()}", "lora.equal_rank=min")
    rows = run_experiment(cfg, export=False)
    assert [r["method"] for r in rows] == [
        m if get_method(m).mixed_ranks else f"{m} (all r=2)" for m in methods()]
    untrained = prepare(cfg).evaluate({}, {}, prefix="")["loss"]
    for row in rows:
        assert row["global_loss"] < untrained - 0.03, row
        if not row["method"].startswith("ffa"):  # FFA-LoRA trains B only against a frozen A: slower
            assert row["global_accuracy"] > 0.7, row  # the tiny task is separable
        assert row["MB_up_per_round"] > 0 and row["MB_down_per_round"] > 0
    fedsa = next(r for r in rows if r["method"].startswith("fedsa"))
    assert "personal_accuracy" in fedsa  # FedSA-LoRA's personalized models, labelled as such
    out = Path(cfg.output_dir)
    assert (out / "summary.md").exists() and (out / "summary.csv").exists()
    assert (out / "metric_per_round.png").stat().st_size > 0
    assert (out / "config.yaml").exists()


def test_two_worker_processes_or_server_threads_give_the_same_result_as_one(tiny_config,
                                                                            tmp_path):
    records = []
    for workers, threads in ((1, 1), (2, 1), (1, 2)):
        cfg = tiny_config("train.rounds=1", f"server.threads={threads}")
        prepared = prepare(cfg)
        with ClientExecutor(prepared.model_spec, workers) as executor:
            server = Simulation(cfg, "glora", prepared, tmp_path / f"w{workers}t{threads}",
                                executor).run()
        records.append(strip_timing(server.state.history))
    assert records[0] == records[1] == records[2]


def test_participation_samples_a_fraction_of_clients(tiny_config):
    cfg = tiny_config("train.participation=0.5", "train.rounds=2")
    run_experiment(cfg, export=False)
    rounds = history(Path(cfg.output_dir))
    assert [len(r["clients"]) for r in rounds] == [2, 2]


def test_server_rank_is_the_runs_largest_under_partial_participation(tiny_config):
    """One client a round (ranks 2, 4 cycled): a round of only rank-2 clients must still give a
    state that serves the rank-4 clients of the next (HetLoRA hands down truncated factors)."""
    cfg = tiny_config("train.participation=0.25", "train.rounds=4", "methods=[hetlora,glora]",
                      "method_options={glora: {rank: 3}}")
    rows = run_experiment(cfg, export=False)
    assert [r["rounds"] for r in rows] == [4, 4]
    ranks = {Simulation(cfg, m, prepare(cfg), Path(cfg.output_dir) / m, lambda t: []).server
             .state.model.options["rank"] for m in ("hetlora", "glora")}
    assert ranks == {4, 3}  # the largest client rank by default; the user's where given
    sizes = [r["clients"] for r in history(Path(cfg.output_dir), "hetlora")]
    assert {len(c) for c in sizes} == {1} and {c[0] % 2 for c in sizes} == {0, 1}


@pytest.mark.parametrize("overrides, message", [
    (["methods=[fedavg]"], "unknown method 'fedavg'"),
    (["lora.ranks=[2,64]"], "rank 64 is larger than layer"),
    (["data.num_clients=500"], "500 clients but only 96 examples"),
    (["data.partition=dirichlet", "data.alpha=0.01", "data.min_client_size=20"], "client"),
    (["lora.equal_rank=error", "methods=[glora,fedit]"], r"\['fedit'\] need equal client ranks"),
])
def test_bad_input_is_named_before_training(tiny_config, overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        run_experiment(tiny_config(*overrides), export=False)
    assert not (tmp_path / "run" / "glora" / "checkpoint.pt").exists()  # nothing trained


def test_missing_column_names_the_file_and_column(tiny_config, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,label\nfine movie,1\n")
    with pytest.raises(ConfigError, match=r"bad.csv.*no column `text`"):
        run_experiment(tiny_config(f"data.dataset={bad}", "data.test_file=null"), export=False)


def test_baseline_row_scores_the_untuned_model_once(tiny_config, tmp_path):
    """``eval.baseline``: the first table row is the pretrained model with no adapter, scored
    like every round's global model; a resumed run reads it back instead of scoring it again."""
    cfg = tiny_config("eval.baseline=true", "train.rounds=1")
    rows = run_experiment(cfg, export=False)
    assert [r["method"] for r in rows] == ["untuned (zero-shot)", "glora"]
    untuned = prepare(cfg).evaluate({}, {}, prefix="global_")
    assert rows[0]["global_accuracy"] == untuned["global_accuracy"]
    assert rows[0]["global_loss"] == pytest.approx(untuned["global_loss"], rel=1e-6)
    saved = Path(cfg.output_dir) / "untuned.json"
    saved.write_text(json.dumps({**rows[0], "global_accuracy": -1.0}))  # marks a reread
    again = run_experiment(cfg, resume=True, export=False)
    assert again[0]["global_accuracy"] == -1.0


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_round_learning_rates_follow_the_schedule(tiny_config, tmp_path, schedule):
    """Every client of a round gets the round's rates; cosine halves them mid-run."""
    cfg = tiny_config("train.rounds=4", "train.lr=0.02", "train.head_lr=0.002",
                      f"train.lr_schedule={schedule}")
    sim = Simulation(cfg, "glora", prepare(cfg), tmp_path / "run", lambda tasks: [])
    rates = []
    for round_ in range(4):
        sim.server.state.model.round = round_
        tasks = sim.server.configure()
        assert len({(t.lr, t.head_lr) for t in tasks}) == 1
        rates.append((tasks[0].lr, tasks[0].head_lr))
    if schedule == "constant":
        assert rates == [(0.02, 0.002)] * 4
    else:
        assert rates[0] == (0.02, 0.002)
        assert rates[2] == pytest.approx((0.01, 0.001))
        assert rates[1][0] > rates[2][0] > rates[3][0] > 0


def one_round(cfg, method: str):
    """A server of ``method`` on the tiny setting, the round-1 tasks with data, their results."""
    prepared = prepare(cfg)
    server = FederatedServer(cfg, method, prepared, prepared.reply_schema(),
                             prepared.examples)
    tasks = [dataclasses.replace(t, data=prepared.client_train(t.client_id))
             for t in server.configure()]
    return server, tasks, [train_client(prepared.cache, t) for t in tasks]


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_ffa_clients_train_b_against_one_shared_a_and_upload_b_only(tiny_config):
    cfg = tiny_config("methods=[ffa]", "lora.ranks=[2]", "train.rounds=2")
    server, tasks, results = one_round(cfg, "ffa")
    first = results[0].adapter
    for task, result in zip(tasks, results):
        for key, value in result.adapter.items():
            if key.endswith(LORA_A):  # A never moves, and every client holds the same one
                assert torch.equal(value, first[key])
            else:
                assert value.abs().sum() > 0  # B trained from zero
    record = server.aggregate(results)
    assert record["bytes_up"] == sum(
        nbytes(v for k, v in r.adapter.items() if k.endswith(LORA_B)) + nbytes(r.head.values())
        for r in results)
    for task in server.configure():  # the next start keeps that A
        assert all(torch.equal(v, first[k]) for k, v in task.adapter.items()
                   if k.endswith(LORA_A))


def test_fedsa_clients_keep_their_own_b_and_head_and_share_a(tiny_config):
    cfg = tiny_config("methods=[fedsa]", "lora.ranks=[2]", "train.rounds=2")
    server, _, results = one_round(cfg, "fedsa")
    record = server.aggregate(results)
    assert record["bytes_up"] == sum(
        nbytes(v for k, v in r.adapter.items() if k.endswith(LORA_A)) for r in results)
    mine = {r.client_id: r for r in results}
    starts = server.configure()
    shared_a = {k: v for k, v in starts[0].adapter.items() if k.endswith(LORA_A)}
    for task in starts:
        own = mine[task.client_id]
        for key, value in task.adapter.items():
            if key.endswith(LORA_B):
                assert torch.equal(value, own.adapter[key])  # its own B, not an average
            else:
                assert torch.equal(value, shared_a[key])  # the one averaged A
        assert all(torch.equal(task.head[k], own.head[k]) for k in own.head)


def test_every_round_records_its_shadow_distances(tiny_config):
    cfg = tiny_config("lora.ranks=[2,4]", "train.rounds=2")
    records = {}
    for method in ("flexlora", "glora", "flora"):
        server, _, results = one_round(cfg, method)
        records[method] = server.aggregate(results)
    assert records["flexlora"]["shadow_to_best"] < 1e-6  # FlexLoRA is the best rank-R
    assert records["flora"]["shadow_to_exact"] < 1e-6  # FLoRA stacks: exact
    glora_record = records["glora"]
    assert glora_record["shadow_to_exact"] >= glora_record["shadow_best_to_exact"] - 1e-9
    assert all(0 <= r["shadow_seconds"] for r in records.values())
    server, _, results = one_round(tiny_config("lora.ranks=[2,4]", "eval.shadow=false"), "glora")
    record = server.aggregate(results)  # many clients a round: the shadow can be turned off
    assert not any(k.startswith("shadow_") for k in record) and record["server_seconds"] >= 0


def test_rolora_clients_train_b_then_a_and_upload_only_what_they_trained(tiny_config):
    cfg = tiny_config("methods=[rolora]", "lora.ranks=[2]", "train.rounds=2")
    server, tasks, results = one_round(cfg, "rolora")
    assert {t.frozen for t in tasks} == {("A",)}
    first = server.aggregate(results)
    prepared = prepare(cfg)
    second = [dataclasses.replace(t, data=prepared.client_train(t.client_id))
              for t in server.configure()]
    assert {t.frozen for t in second} == {("B",)}
    trained = [train_client(prepared.cache, t) for t in second]
    for task, result in zip(second, trained):
        for key, value in result.adapter.items():  # B kept at the server's, A moved
            assert torch.equal(value, task.adapter[key]) == key.endswith(LORA_B)
    record = server.aggregate(trained)
    assert first["bytes_up"] == sum(nbytes(v for k, v in r.adapter.items() if k.endswith(LORA_B))
                                    + nbytes(r.head.values()) for r in results)
    assert record["bytes_up"] == sum(nbytes(v for k, v in r.adapter.items() if k.endswith(LORA_A))
                                     + nbytes(r.head.values()) for r in trained)
    assert record["shadow_to_exact"] < 1e-6  # the trained factor's average is exact
