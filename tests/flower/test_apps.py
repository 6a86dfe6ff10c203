"""The ServerApp, ClientApp and strategy in one process: a Grid whose nodes answer inline.

Fast checks of the protocol and the failure rules (the deployment tests run the same apps in real
SuperLink / SuperNode processes).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from glora.config import load_config
from glora.errors import AggregationError, ConfigError
from glora.flower import client_app, server_app
from glora.flower.run_config import RunOptions
from glora.flower.strategy import GloraStrategy
from glora.federation.server import FederatedServer, load_state
from glora.sim.experiment import run_experiment
from glora.federation.prepare import prepare
from tests.flower.conftest import checkpoint_history, history

#: ``behave(node partition, round or None for queries, message) -> reply or None (no answer)``.
Behaviour = Callable[[int, int | None, Message], Message | None]


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a ServerApp process knows about itself (messages are stamped with it)."""
    for attribute, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attribute, value)


class LoopbackGrid(Grid):
    """Nodes ``100 + i`` serve partition ``partitions[i]``; the glora ClientApp answers each
    pushed message at once unless ``behave`` says otherwise."""

    def __init__(self, run_config: dict[str, Any], partitions: Iterable[int] = (0, 1, 2),
                 behave: Behaviour | None = None) -> None:
        self.contexts = {100 + i: Context(1, 100 + i, {"partition-id": p, "num-partitions": 3},
                                          RecordDict(), run_config)
                         for i, p in enumerate(partitions)}
        self.behave = behave
        self.replies: dict[str, Message] = {}

    def answer(self, message: Message) -> Message:
        return client_app.app(message, self.contexts[message.metadata.dst_node_id])

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id  # as the real Grid does
            context = self.contexts[m.metadata.dst_node_id]
            t = int(m.metadata.group_id) if m.metadata.group_id else None
            reply = self.behave(context.node_config["partition-id"], t, m) if self.behave \
                else self.answer(m)
            if reply is not None:
                self.replies[m.metadata.message_id] = reply
            ids.append(m.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self.replies.pop(i) for i in message_ids if i in self.replies]

    def set_run(self, run: Any) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Any:
        raise NotImplementedError

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        raise NotImplementedError

    def send_and_receive(self, *args: Any, **kwargs: Any) -> list[Message]:
        raise NotImplementedError


def run_config(overrides: list[str], out: Path, **options: Any) -> dict[str, Any]:
    return {"config": "", "overrides": shlex.join([*overrides, f"output_dir={out}"]),
            "resume": False, "round-timeout": 0.3, **options}


def strategy(overrides: list[str], out: Path) -> GloraStrategy:
    cfg = load_config(None, [*overrides, f"output_dir={out}"])
    prepared = prepare(cfg)
    server = FederatedServer(cfg, "glora", prepared, prepared.reply_schema(),
                             [len(p) for p in prepared.parts])
    return GloraStrategy(server, out / "glora")


def strip_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in records]


def test_apps_match_simulator(overrides: list[str], tmp_path: Path) -> None:
    # Prepare
    run_experiment(load_config(None, [*overrides, f"output_dir={tmp_path / 'sim'}"]), export=False)
    config = run_config(overrides, tmp_path / "flower")
    # Execute
    server_app.app(LoopbackGrid(config), Context(1, 0, {}, RecordDict(), config))
    # Assert: the same records (timings aside) and bit-identical states
    flower = history(tmp_path / "flower")
    assert [(r.pop("missing_clients"), r.pop("attempt")) for r in flower] == [([], 1), ([], 1)]
    assert strip_timing(flower) == strip_timing(history(tmp_path / "sim"))
    a = load_state(tmp_path / "sim/glora/checkpoint.pt").model
    b = load_state(tmp_path / "flower/glora/checkpoint.pt").model
    assert all(torch.equal(a.total_delta()[k], v) for k, v in b.total_delta().items())
    assert (tmp_path / "flower/summary.md").exists()


@pytest.mark.parametrize("failure", ["error", "silent", "nan"])
def test_failed_client_is_left_out_and_reported(overrides: list[str], tmp_path: Path,
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

    grid = LoopbackGrid(run_config(overrides, tmp_path), behave=behave)
    s = strategy(overrides, tmp_path)
    # Execute
    s.start(grid, timeout=0.3)
    # Assert: left out and reported as missing (no valid reply) or rejected (by the server)
    records = history(tmp_path)
    assert [r["clients"] for r in records] == [[0, 1], [0, 1, 2]]
    assert (records[0]["missing_clients"], list(records[0]["rejected"])) == \
        (([], ["2"]) if failure == "nan" else ([2], []))
    assert checkpoint_history(tmp_path) == records


def test_round_with_too_few_answers_is_sent_again(overrides: list[str], tmp_path: Path) -> None:
    # Prepare: only client 0 answers the first attempt of round 2 (2 valid replies needed)
    sent: list[tuple[int | None, int]] = []

    def behave(client: int, t: int | None, m: Message) -> Message | None:
        sent.append((t, client))
        first_try = t == 2 and sent.count((2, client)) == 1
        return None if first_try and client != 0 else grid.answer(m)

    grid = LoopbackGrid(run_config(overrides, tmp_path), behave=behave)
    clean = strategy(overrides, tmp_path / "clean")
    clean_result = clean.start(LoopbackGrid(run_config(overrides, tmp_path / "clean")),
                               timeout=0.3)
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


def test_state_stays_at_last_complete_round(overrides: list[str], tmp_path: Path) -> None:
    # Prepare: nobody answers in round 2
    def behave(client: int, t: int | None, m: Message) -> Message | None:
        return None if t == 2 else grid.answer(m)

    grid = LoopbackGrid(run_config(overrides, tmp_path), behave=behave)
    s = strategy(overrides, tmp_path)
    # Execute
    with pytest.raises(AggregationError, match=r"round 2: 0 valid replies .* Stopped after 2 "
                                               r"attempt\(s\) \(`server.retries` = 1\); .* holds "
                                               r"round 1\. Start the missing SuperNodes"):
        s.start(grid, timeout=0.3)
    # Assert
    assert s.server.round == 1 and len(history(tmp_path)) == 1
    assert load_state(s.checkpoint_path).model.round == 1


def test_nodes_with_unusable_partitions_are_ignored(overrides: list[str], tmp_path: Path) -> None:
    # Prepare: partition 1 twice, partition 7 of 3
    grid = LoopbackGrid(run_config(overrides, tmp_path), partitions=(0, 1, 1, 7, 2))
    s = strategy(overrides, tmp_path)
    # Execute
    s._discover(grid, ask_silent=False)
    # Assert
    assert s.partitions == {100: 0, 101: 1, 104: 2}


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
