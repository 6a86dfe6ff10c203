"""Hypothesis fuzzing of the strategy's reply handler: replies as they come off the wire, each
valid or broken in one of the ways a faulty or hostile node could break it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from glora.errors import AggregationError
from glora.flower import codec
from tests.flower.conftest import Fed, strategy
from tests.flower.test_codec import over_the_wire

ADAPTER = "adapter"


def _array(content, fix: Callable) -> None:
    """Apply ``fix`` to the first adapter array of a reply."""
    record = content.array_records[ADAPTER]
    fix(record[next(iter(record))])


def _scale(content, factor: float) -> None:
    tensors = content.array_records[ADAPTER].to_torch_state_dict()
    content[ADAPTER] = ArrayRecord({k: v * factor for k, v in tensors.items()})


#: name -> how it breaks a reply's content (in place).
BREAKS: dict[str, Callable] = {
    "truncated": lambda c: _array(c, lambda a: setattr(a, "data", a.data[:-4])),
    "declared_shape": lambda c: _array(c, lambda a: setattr(a, "shape", (10**6, 10**6))),
    "pickle": lambda c: _array(c, lambda a: setattr(a, "stype", "pickle")),
    "object_dtype": lambda c: _array(c, lambda a: setattr(a, "dtype", "object")),
    "no_result": lambda c: c.__delitem__(codec.RESULT),
    "no_head": lambda c: c.__delitem__("head"),
    "float_id": lambda c: c[codec.RESULT].__setitem__("client-id", 1.5),
    "list_loss": lambda c: c[codec.RESULT].__setitem__("train-loss", [0.1, 0.2]),
    "nan_loss": lambda c: c[codec.RESULT].__setitem__("train-loss", float("nan")),
    "more_examples": lambda c: c[codec.RESULT].__setitem__("num-examples", 10**9),
    "nan": lambda c: _scale(c, float("nan")),
    "huge": lambda c: _scale(c, 1e30),
    "other_client": lambda c: c[codec.RESULT].__setitem__(
        "client-id", (c[codec.RESULT]["client-id"] + 1) % 3),
}
_ROUND: dict[str, object] = {}  # the valid round-1 exchange, computed once


def valid_round(fed: Fed, overrides: list[str], tmp_path: Path) -> tuple[dict, dict]:
    """Round 1's messages (node -> request) and their valid replies' contents (node -> bytes
    exact content), from a real exchange with the tiny run's nodes."""
    if not _ROUND:
        grid = fed(tmp_path / "template")
        s = strategy(overrides, tmp_path / "template")
        s._discover(grid, ask_silent=False)
        requests = s.configure_train(1, ArrayRecord(), ConfigRecord(), grid)
        replies = s._exchange(grid, requests)
        _ROUND.update(requests={m.metadata.dst_node_id: m for m in requests},
                      replies={n: r.content for n, r in replies.items()},
                      partitions=dict(s.partitions), examples=dict(s.server.examples))
    return _ROUND["requests"], _ROUND["replies"]  # type: ignore[return-value]


def fresh(overrides: list[str], out: Path, requests: dict[int, Message]):
    """A strategy in round 1 that sent ``requests`` to the nodes it learnt."""
    s = strategy(overrides, out)
    s.partitions = dict(_ROUND["partitions"])  # type: ignore[arg-type]
    s.server.examples = dict(_ROUND["examples"])  # type: ignore[arg-type]
    s._sampled = [0, 1, 2]
    s._sent = {m.metadata.message_id: n for n, m in requests.items()}
    s.server.configure(s._sampled)
    return s


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(broken=st.lists(st.none() | st.sampled_from(list(BREAKS)), min_size=3, max_size=3))
def test_any_reply_off_the_wire_is_aggregated_or_rejected(broken: list[str | None],
                                                          overrides: list[str], fed: Fed,
                                                          tmp_path: Path) -> None:
    """The round aggregates exactly the valid replies (the state equals a strategy given those
    alone) and names every broken one as rejected or missing; or, with fewer than two valid
    replies, raises AggregationError and leaves the state as it was. Never anything else."""
    requests, contents = valid_round(fed, overrides, tmp_path)
    nodes = sorted(requests)
    replies = []
    for node, b in zip(nodes, broken, strict=True):
        content = over_the_wire(contents[node])
        if b is not None:
            BREAKS[b](content)
        replies.append(Message(content, reply_to=requests[node]))
    s = fresh(overrides, tmp_path / "fuzz", requests)
    valid = [_ROUND["partitions"][n] for n, b in zip(nodes, broken, strict=True) if b is None]
    if len(valid) < 2:
        before = s.server.state
        with pytest.raises(AggregationError):
            s._aggregate(1, replies)
        assert s.server.state is before
        event("too few valid replies: the round is sent again")
        return
    record = s._aggregate(1, replies)
    assert record["clients"] == sorted(valid)
    left_out = {str(c) for c in [*record["missing_clients"], *record["rejected"]]}
    assert left_out == {str(c) for c in {0, 1, 2} - set(valid)}
    clean = fresh(overrides, tmp_path / "clean", requests)
    clean._aggregate(1, [Message(over_the_wire(contents[n]), reply_to=requests[n])
                         for n, b in zip(nodes, broken, strict=True) if b is None])
    mine, theirs = s.server.state.model.total_delta(), clean.server.state.model.total_delta()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    event(f"aggregated {len(valid)} of 3")
