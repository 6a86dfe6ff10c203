"""The ServerApp, ClientApp and strategy in one process: a Grid whose nodes answer inline.

Fast checks of the protocol and the failure rules (the deployment tests run the same apps in real
SuperLink / SuperNode processes).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, Context, Error, Message, MessageType, RecordDict

from glora.config import load_config
from glora.errors import AggregationError, ConfigError
from glora.flower import client_app, server_app
from glora.flower.run_config import RunOptions
from glora.federation import rounds
from glora.federation.server import load_state
from glora.sim.experiment import run_experiment
from tests.flower.conftest import Fed, checkpoint_history, history, strategy


def split_records(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """Each record's federated-evaluation metrics apart from the rest (timings and the server's
    own evaluation dropped)."""
    rest = [{k: v for k, v in r.items() if not k.endswith("seconds")
             and not k.startswith(("global_", "personal_", "federated_"))} for r in records]
    return rest, [{k: v for k, v in r.items() if k.startswith("federated_")} for r in records]


@pytest.mark.parametrize("method,extra", [("glora", []), ("fedsa", []),
                                          ("glora", ["train.dp_noise_multiplier=0.8"])],
                         ids=["glora", "fedsa", "glora-dp"])
def test_apps_match_simulator(overrides: list[str], fed: Fed, tmp_path: Path,
                              method: str, extra: list[str]) -> None:
    """The apps compute the simulator's rounds from node files, and the nodes' federated
    evaluation (for FedSA-LoRA also of each node's own model) equals the simulator's
    `eval.federated` on the same partitions; DP-SGD nodes train and account as the simulator's
    clients do."""
    # Prepare
    run = [*overrides, f"methods=[{method}]", *extra]
    run_experiment(load_config(None, [*run, "eval.federated=true",
                                      f"output_dir={tmp_path / 'sim'}"]), export=False)
    grid = fed(tmp_path / "flower", extra=[f"methods=[{method}]", *extra])
    # Execute
    server_app.app(grid, Context(1, 0, {}, RecordDict(), grid.run_config))
    # Assert: the same records (timings aside), bit-identical states
    flower = history(tmp_path / "flower", method)
    assert [(r.pop("missing_clients"), r.pop("attempt")) for r in flower] == [([], 1), ([], 1)]
    (rest, evaluation), (sim_rest, sim_evaluation) = (split_records(flower),
                                                      split_records(history(tmp_path / "sim",
                                                                            method)))
    assert rest == sim_rest
    assert ("dp_epsilon_max" in rest[-1]) == bool(extra)
    a = load_state(tmp_path / "sim" / method / "checkpoint.pt").model
    b = load_state(tmp_path / "flower" / method / "checkpoint.pt").model
    assert all(torch.equal(a.total_delta()[k], v) for k, v in b.total_delta().items())
    summary = (tmp_path / "flower/summary.md").read_text()  # the nodes' scores, not the counts
    assert "federated_accuracy" in summary and "federated_clients" not in summary
    # Assert: evaluated after round 2 (eval.every=2) by the three nodes on their 30 sentences;
    # the nodes get the update as SVD factors, so metrics agree to float precision
    assert [bool(e) for e in evaluation] == [False, True] == [bool(e) for e in sim_evaluation]
    assert evaluation[1].pop("federated_clients") == 3
    assert evaluation[1]["federated_examples"] == sim_evaluation[1]["federated_examples"] == 30
    assert evaluation[1] == pytest.approx(sim_evaluation[1], rel=1e-5)
    assert ("federated_personal_accuracy" in evaluation[1]) == (method == "fedsa")


def test_a_server_with_a_held_out_set_scores_the_global_model_too(overrides: list[str], fed: Fed,
                                                                  tmp_path: Path) -> None:
    """`eval.server_data` on the server's machine: the ServerApp scores the global model on it,
    as the simulator scores it on the same file (`global_*`), besides the nodes' evaluation."""
    # Prepare
    test_file = next(o for o in overrides if o.startswith("data.test_file=")).split("=", 1)[1]
    run_experiment(load_config(None, [*overrides, f"output_dir={tmp_path / 'sim'}"]), export=False)
    grid = fed(tmp_path / "flower", extra=[f"eval.server_data={test_file}"])
    # Execute
    server_app.app(grid, Context(1, 0, {}, RecordDict(), grid.run_config))
    # Assert
    final, sim = history(tmp_path / "flower")[-1], history(tmp_path / "sim")[-1]
    held_out = {k: v for k, v in sim.items() if k.startswith("global_")}
    assert held_out and {k: final[k] for k in held_out} == held_out
    assert final["federated_clients"] == 3


@pytest.mark.parametrize("failure", ["error", "silent", "nan"])
def test_failed_client_is_left_out_and_reported(overrides: list[str], fed: Fed, tmp_path: Path,
                                                failure: str) -> None:
    # Prepare: client 2 fails in round 1 (an error reply, no reply, or a NaN adapter)
    def behave(client: int, t: int | None, m: Message) -> Message | None:
        if client != 2 or t != 1:
            return grid.answer(m)
        if failure == "error":
            return Message(Error(code=0, reason="out of memory"), reply_to=m)
        if failure == "nan":
            reply = grid.answer(m)
            adapter = reply.content["adapter"].to_torch_state_dict()
            reply.content["adapter"] = ArrayRecord({k: v * math.nan for k, v in adapter.items()})
            return reply
        return None

    grid = fed(tmp_path, behave=behave)
    s = strategy(overrides, tmp_path)
    # Execute
    s.start(grid, timeout=0.3)
    # Assert: left out and reported as missing (no valid reply) or rejected (by the server)
    records = history(tmp_path)
    assert [r["clients"] for r in records] == [[0, 1], [0, 1, 2]]
    assert (records[0]["missing_clients"], list(records[0]["rejected"])) == \
        (([], ["2"]) if failure == "nan" else ([2], []))
    assert checkpoint_history(tmp_path) == records


def test_round_with_too_few_answers_is_sent_again(overrides: list[str], fed: Fed,
                                                  tmp_path: Path) -> None:
    # Prepare: only client 0 answers the first attempt of round 2 (2 valid replies needed)
    sent: list[tuple[int | None, int]] = []

    def behave(client: int, t: int | None, m: Message) -> Message | None:
        sent.append((t, client))
        first_try = t == 2 and sent.count((2, client)) == 1
        return None if first_try and client != 0 else grid.answer(m)

    grid = fed(tmp_path, behave=behave)
    clean = strategy(overrides, tmp_path / "clean")
    clean_result = clean.start(fed(tmp_path / "clean"), timeout=0.3)
    # Execute
    s = strategy(overrides, tmp_path)
    result = s.start(grid, timeout=0.3)
    # Assert: the retry trained the same tasks, so the run equals an undisturbed one
    assert [(r["clients"], r["attempt"]) for r in history(tmp_path)] == [([0, 1, 2], 1),
                                                                         ([0, 1, 2], 2)]
    assert [r["train_loss"] for r in history(tmp_path)] == \
        [r["train_loss"] for r in history(tmp_path / "clean")]
    # The Result holds the final global model: factors of W - W0 per layer (scaling 1), the head
    final = {k: torch.from_numpy(v.numpy()) for k, v in result.arrays.items()}
    assert final.keys() == dict(clean_result.arrays).keys()
    deltas = s.server.state.model.total_delta()
    for layer, delta in deltas.items():
        B, A = final[layer + ".lora_B.weight"], final[layer + ".lora_A.weight"]
        assert torch.allclose(B @ A, delta, atol=1e-5)
    assert all(torch.equal(final[k], v) for k, v in s.server.state.model.head.items())
    # The nodes' evaluation is the clientapp's (round 2: eval.every=2); the server has no test set
    assert "federated_accuracy" in result.evaluate_metrics_clientapp[2]
    assert not result.evaluate_metrics_serverapp


def test_a_reply_claiming_more_examples_than_its_node_declared_is_rejected(
        overrides: list[str], fed: Fed, tmp_path: Path) -> None:
    """The server holds no data: each node declares its example count once, at the query, and
    that caps what its replies may claim (the aggregation weight)."""
    # Prepare: client 1 claims 10,000 examples in round 1
    def behave(client: int, t: int | None, m: Message) -> Message | None:
        reply = grid.answer(m)
        if client == 1 and t == 1:
            reply.content["result"]["num-examples"] = 10_000
        return reply

    grid = fed(tmp_path, behave=behave)
    s = strategy(overrides, tmp_path)
    # Execute
    s.start(grid, timeout=0.3)
    # Assert: the counts came from the nodes' files (72 sentences, 3 iid parts)
    assert s.server.examples == {0: 24, 1: 24, 2: 24}
    first, second = history(tmp_path)
    assert first["clients"] == [0, 2] and "claims 10000" in first["rejected"]["1"]
    assert second["clients"] == [0, 1, 2] and not second["rejected"]


def test_state_stays_at_last_complete_round(overrides: list[str], fed: Fed, tmp_path: Path) -> None:
    # Prepare: nobody answers in round 2
    def behave(client: int, t: int | None, m: Message) -> Message | None:
        return None if t == 2 else grid.answer(m)

    grid = fed(tmp_path, behave=behave)
    s = strategy(overrides, tmp_path)
    # Execute
    with pytest.raises(AggregationError, match=r"round 2: 0 valid replies .* Stopped after 2 "
                                               r"attempt\(s\) \(`server.retries` = 1\); .* holds "
                                               r"round 1\. Start the missing SuperNodes"):
        s.start(grid, timeout=0.3)
    # Assert
    assert s.server.round == 1 and len(history(tmp_path)) == 1
    assert load_state(s.checkpoint_path).model.round == 1


class Killed(BaseException):
    """The ServerApp's process ends here (as SIGKILL would end it)."""


def test_a_run_stopped_during_the_evaluation_evaluates_that_round_on_resume(
        overrides: list[str], fed: Fed, tmp_path: Path) -> None:
    # Prepare: the process dies while the nodes evaluate round 2 (the last; eval.every=2)
    def behave(client: int, t: int | None, m: Message) -> Message | None:
        if m.metadata.message_type == MessageType.EVALUATE:
            raise Killed
        return grid.answer(m)

    grid = fed(tmp_path, behave=behave)
    with pytest.raises(Killed):
        strategy(overrides, tmp_path).start(grid, timeout=0.3)
    assert [("federated_accuracy" in r) for r in checkpoint_history(tmp_path)] == [False, False]
    # Execute: resumed with nodes that evaluate
    s = strategy(overrides, tmp_path)
    assert rounds.resume(s.server, tmp_path / "glora")
    result = s.start(fed(tmp_path), timeout=0.3)
    # Assert: round 2 evaluated by the three nodes, no round trained again
    assert s.server.round == 2
    records = checkpoint_history(tmp_path)
    assert [("federated_accuracy" in r) for r in records] == [False, True]
    assert records[1]["federated_clients"] == 3 and history(tmp_path) == records
    assert "federated_accuracy" in result.evaluate_metrics_clientapp[2]


def test_nodes_with_unusable_partitions_are_ignored(overrides: list[str], fed: Fed,
                                                    tmp_path: Path) -> None:
    # Prepare: partition 1 twice, partition 7 of 3
    grid = fed(tmp_path, partitions=(0, 1, 1, 7, 2))
    s = strategy(overrides, tmp_path)
    # Execute
    s._discover(grid, ask_silent=False)
    # Assert
    assert s.partitions == {100: 0, 101: 1, 104: 2}


def test_a_node_without_its_data_path_says_how_to_start_it(overrides: list[str], fed: Fed,
                                                            tmp_path: Path) -> None:
    grid = fed(tmp_path)
    node = next(iter(grid.contexts.values()))
    del node.node_config["data-path"]
    with pytest.raises(ValueError, match=r"no `data-path`; start it with --node-config "
                                         r"'partition-id=<i> data-path="):
        client_app._node_data(node)


def test_run_options_are_checked_together() -> None:
    with pytest.raises(ConfigError) as err:
        RunOptions.from_run_config({"config": "", "overrides": 3, "resume": "no"})
    assert err.value.problems == ["run config `overrides` must be a str, got 3.",
                                  "run config `resume` must be a bool, got 'no'.",
                                  "run config lacks `round-timeout`; is [tool.flwr.app.config] "
                                  "complete?"]
    with pytest.raises(ConfigError, match="`round-timeout` must be positive, got 0.0."):
        RunOptions.from_run_config({"config": "", "overrides": "", "resume": False,
                                    "round-timeout": 0})
