"""``server.stream`` under Flower: the strategy decodes each reply only when the server takes
it, so a streaming method folds one decoded reply at a time; the round equals the list path's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message

from glora import global_model
from glora.config import load_config
from glora.federation.server import FederatedServer
from glora.flower import strategy as strategy_module
from glora.flower.strategy import GloraStrategy
from glora.federation.prepare import prepare_server
from tests.flower.conftest import Fed
from tests.flower.test_codec import over_the_wire

STREAM = ["server.stream=true", "server.max_update_norm=null", "eval.shadow=false"]


def fedit_strategy(overrides: list[str], out: Path, stream: bool) -> GloraStrategy:
    cfg = load_config(None, [*overrides, "data.num_labels=2", f"output_dir={out}",
                             "methods=[fedit]", *(STREAM if stream else STREAM[1:])])
    server = FederatedServer(cfg, "fedit", None, prepare_server(cfg).reply_schema(), examples={})
    return GloraStrategy(server, out / "fedit")


def test_a_streaming_strategy_decodes_each_reply_as_the_server_folds_it(
        overrides: list[str], fed: Fed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    streamed = fedit_strategy(overrides, tmp_path / "stream", stream=True)
    grid = fed(tmp_path / "grid", ["methods=[fedit]"])
    streamed._discover(grid, ask_silent=False)
    requests = streamed.configure_train(1, ArrayRecord(), ConfigRecord(), grid)
    contents = {n: r.content for n, r in streamed._exchange(grid, requests).items()}
    listed = fedit_strategy(overrides, tmp_path / "list", stream=False)
    listed.partitions, listed._sent = dict(streamed.partitions), dict(streamed._sent)
    listed.server.examples = dict(streamed.server.examples or {})
    listed._sampled = list(streamed._sampled)
    listed.server.configure(listed._sampled)
    events: list[str] = []
    decode, add = strategy_module.codec.decode_result, global_model.ModelAccumulator.add
    monkeypatch.setattr(strategy_module.codec, "decode_result",
                        lambda content: events.append("decode") or decode(content))
    monkeypatch.setattr(global_model.ModelAccumulator, "add",
                        lambda self, reply: events.append("add") or add(self, reply))

    def replies() -> list[Message]:
        return [Message(over_the_wire(contents[m.metadata.dst_node_id]), reply_to=m)
                for m in requests]

    record = streamed._aggregate(1, replies())
    assert record["clients"] == [0, 1, 2] and events == ["decode", "add"] * 3
    events.clear()
    listed._aggregate(1, replies())
    assert events == ["decode"] * 3  # the control: all decoded first, no accumulator
    mine, theirs = streamed.server.state.model, listed.server.state.model
    for key, delta in theirs.total_delta().items():
        torch.testing.assert_close(mine.total_delta()[key], delta)
    for key, head in theirs.head.items():
        torch.testing.assert_close(mine.head[key], head)
