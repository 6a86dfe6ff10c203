"""The tiny setting of the Flower tests: three clients of ranks 2, 4, 8 on a small CSV task;
a round needs two valid replies and is retried once. Each node reads its own partition files, as
the local launcher writes them."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from glora.config import load_config
from glora.federation.prepare import prepare_server
from glora.federation.server import FederatedServer, load_state
from glora.flower import client_app
from glora.flower.launch import node_files
from glora.flower.strategy import GloraStrategy
from tests.sim.conftest import write_csv

EXPERIMENT = ["data.num_clients=3", "data.partition=iid", "data.max_length=12",
              "data.min_client_size=1", "train.rounds=2", "train.local_steps=3",
              "train.batch_size=8", "train.lr=0.01", "lora.ranks=[2,4,8]", "lora.alpha=4",
              "methods=[glora]", "seed=3", "workers=1", "server.min_clients=2", "server.retries=1"]


@pytest.fixture(scope="session")
def overrides(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``key=value`` overrides of the tiny run (without ``output_dir``): 72 training sentences."""
    folder = tmp_path_factory.mktemp("flower_data")
    train, test = write_csv(folder / "train.csv", 72, 1), write_csv(folder / "test.csv", 30, 2)
    return [f"model.name={tiny_model_dir}", f"data.dataset={train}", f"data.test_file={test}",
            *EXPERIMENT]


@pytest.fixture(scope="session")
def nodes(overrides: list[str], tmp_path_factory: pytest.TempPathFactory,
          ) -> tuple[list[dict[str, str]], list[str]]:
    """Each partition's node data (``data-path``, ``test-path``) and the overrides the server
    needs, as ``glora run --engine flower`` writes them."""
    return node_files(load_config(None, overrides), tmp_path_factory.mktemp("node_data"))


def history(out: Path, method: str = "glora") -> list[dict]:
    """The records of ``out/<method>/metrics.jsonl``."""
    return [json.loads(line) for line in (out / method / "metrics.jsonl").read_text().splitlines()]


def checkpoint_history(out: Path, method: str = "glora") -> list[dict]:
    """The history in ``out/<method>/checkpoint.pt``, as ``metrics.jsonl`` spells it (JSON)."""
    state = load_state(out / method / "checkpoint.pt")
    return [json.loads(json.dumps(record)) for record in state.history]


Fed = Callable[..., "LoopbackGrid"]  # the `fed` fixture
#: ``behave(node partition, round or None for queries, message) -> reply or None (no answer)``.
Behaviour = Callable[[int, int | None, Message], Message | None]


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a ServerApp process knows about itself (messages are stamped with it)."""
    for attribute, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attribute, value)


class LoopbackGrid(Grid):
    """Nodes ``100 + i`` serve partition ``partitions[i]``; the glora ClientApp answers each
    pushed message at once unless ``behave`` says otherwise."""

    def __init__(self, run_config: dict[str, Any], data: list[dict[str, str]],
                 partitions: Iterable[int] = (0, 1, 2), behave: Behaviour | None = None) -> None:
        self.contexts = {100 + i: Context(1, 100 + i, {"partition-id": p, "num-partitions": 3,
                                                       **data[p % len(data)]},
                                          RecordDict(), run_config)
                         for i, p in enumerate(partitions)}
        self.behave = behave
        self.run_config = run_config
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


@pytest.fixture
def fed(overrides: list[str], nodes: tuple[list[dict[str, str]], list[str]],
        task_identity: None) -> Fed:
    """``fed(out, extra overrides, **grid_options)``: a LoopbackGrid of the tiny run writing to
    ``out``."""
    def make(out: Path, extra: Iterable[str] = (), **options: Any) -> LoopbackGrid:
        return LoopbackGrid(run_config([*overrides, *nodes[1], *extra], out), nodes[0],
                            **options)
    return make


def run_config(overrides: list[str], out: Path, **options: Any) -> dict[str, Any]:
    return {"config": "", "overrides": shlex.join([*overrides, f"output_dir={out}"]),
            "resume": False, "round-timeout": 0.3, **options}


def strategy(overrides: list[str], out: Path) -> GloraStrategy:
    """The ServerApp's strategy: a server that holds no data (the model only)."""
    cfg = load_config(None, [*overrides, "data.num_labels=2", f"output_dir={out}"])
    server = FederatedServer(cfg, "glora", None, prepare_server(cfg).reply_schema(), examples={})
    return GloraStrategy(server, out / "glora")
