"""The model-level server state: what each client starts from, what that costs to send, and
which work the server times as its own."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import Tensor

from glora import global_model
from glora.federation import server
from glora.config import load_config
from glora.errors import InvalidUpdateError
from glora.global_model import LORA_A, LORA_B, ClientReply, GlobalModel, aggregate_model

RANK, SCALING = 2, 8.0


def reply(client: int) -> ClientReply:
    g = torch.Generator().manual_seed(client)
    adapter = {"p" + LORA_B: torch.randn(6, RANK, generator=g),
               "p" + LORA_A: torch.randn(RANK, 5, generator=g)}
    return ClientReply(client, adapter, {"h": torch.full((3,), float(client))}, 10 + client, SCALING)


def nbytes(tensors: dict[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def test_fedsa_newcomer_keeps_its_fresh_head_and_a_zero_b():
    replies = [reply(0), reply(1)]
    model = aggregate_model(GlobalModel("fedsa"), replies)
    own = {**{k: v for k, v in replies[1].adapter.items() if k.endswith(LORA_B)},
           **replies[1].head}
    for newcomer in (None, {}):
        assert model.start_head(newcomer) is None  # the trainer's initial head
        start = model.start_adapter(RANK, SCALING, newcomer)
        assert torch.all(start["p" + LORA_B] == 0)
        assert torch.equal(start["p" + LORA_A], model.layers["p"].A)
        # Sent: the shared A only (B is a zero init, the head the client's fresh one).
        assert model.download_bytes(RANK, SCALING) == nbytes({"A": start["p" + LORA_A]})
    assert model.start_head(own)["h"] is own["h"]  # a returning client: its own head and B
    assert model.start_adapter(RANK, SCALING, own)["p" + LORA_B] is own["p" + LORA_B]


def test_shared_heads_go_to_newcomers_and_are_counted():
    model = aggregate_model(GlobalModel("fedit"), [reply(0), reply(1)])
    assert torch.allclose(model.start_head(None)["h"], torch.full((3,), 11 / 21))
    start = model.start_adapter(RANK, SCALING)
    assert model.download_bytes(RANK, SCALING) == nbytes(start) + nbytes(model.head)


def test_flora_merge_is_timed_as_client_work_not_server_work(monkeypatch):
    """A fake clock that jumps 1000 s inside the dense ``L @ R``: only the merge's time sees it."""
    now = [0.0]

    def tick() -> float:
        now[0] += 1.0
        return now[0]

    def slow_dense(update):
        now[0] += 1000.0
        return dense(update)

    dense = global_model._dense
    monkeypatch.setattr(server.time, "perf_counter", tick)
    monkeypatch.setattr(global_model, "_dense", slow_dense)
    cfg = load_config(None, ["data.num_clients=2", f"lora.ranks=[{RANK}]", "methods=[flora]"])
    srv = server.FederatedServer(cfg, "flora", None)
    srv.configure([0, 1])
    record = srv.aggregate([SimpleNamespace(client_id=r.client_id, adapter=r.adapter, head=r.head,
                                            num_examples=r.num_examples, train_loss=0.5)
                            for r in (reply(0), reply(1))])
    assert record["server_seconds"] < 1000 <= record["client_merge_seconds"]
    layer = srv.state.model.layers["p"]
    assert torch.allclose(srv.state.model.base["p"], layer.left @ layer.right)


def layered_reply(client: int, layers: int = 6) -> ClientReply:
    g = torch.Generator().manual_seed(100 + client)
    adapter = {}
    for j in range(layers):
        adapter[f"l{j}" + LORA_B] = torch.randn(24, RANK + client % 2, generator=g)
        adapter[f"l{j}" + LORA_A] = torch.randn(RANK + client % 2, 20, generator=g)
    return ClientReply(client, adapter, {}, 10 + client, SCALING)


def test_layers_aggregated_in_threads_equal_one_at_a_time():
    replies = [layered_reply(i) for i in range(5)]
    before = torch.get_num_threads()
    one = aggregate_model(GlobalModel("glora"), replies)
    two = aggregate_model(GlobalModel("glora"), replies, threads=3)
    assert torch.get_num_threads() == before  # the threads' share is given back
    assert list(two.layers) == list(one.layers)
    for key, state in one.layers.items():
        torch.testing.assert_close(two.layers[key].delta(), state.delta(), rtol=1e-5, atol=1e-6)


def test_a_bad_layer_in_threads_names_the_first_bad_layer_and_client():
    replies = [layered_reply(i) for i in range(3)]
    for key in ("l4" + LORA_B, "l2" + LORA_B):
        replies[1].adapter[key][0, 0] = float("nan")
    with pytest.raises(InvalidUpdateError) as info:
        aggregate_model(GlobalModel("glora"), replies, threads=2)
    assert (info.value.key, info.value.client) == ("l2", 1)


# -- one reply at a time -------------------------------------------------------------------------
def headed_reply(client: int) -> ClientReply:
    """A reply of 6 layers (mixed ranks for mixed-rank methods) with a head holding its id."""
    r = layered_reply(client)
    return ClientReply(client, r.adapter, {"h": torch.full((3,), float(client))}, r.num_examples,
                       r.scaling)


def layered_reply_equal(client: int) -> ClientReply:
    """:func:`headed_reply` at one rank (for equal-rank methods)."""
    g = torch.Generator().manual_seed(client)
    adapter = {}
    for j in range(6):
        adapter[f"l{j}" + LORA_B] = torch.randn(24, RANK, generator=g)
        adapter[f"l{j}" + LORA_A] = torch.randn(RANK, 20, generator=g)
    return ClientReply(client, adapter, {"h": torch.full((3,), float(client))}, 10 + client,
                       SCALING)


@pytest.mark.parametrize("method", ["fedit", "glora"])
def test_the_model_accumulator_gives_the_list_aggregate(method: str) -> None:
    replies = [headed_reply(i) if method == "glora" else layered_reply_equal(i) for i in range(5)]
    acc = global_model.ModelAccumulator(GlobalModel(method))
    for r in replies:
        acc.add(r)
    mine, theirs = acc.result(), aggregate_model(GlobalModel(method), replies)
    assert (mine.round, list(mine.layers), list(mine.head)) == \
        (theirs.round, list(theirs.layers), list(theirs.head))
    for key, state in theirs.layers.items():
        torch.testing.assert_close(mine.layers[key].delta(), state.delta())
    torch.testing.assert_close(mine.head["h"], theirs.head["h"])


@pytest.mark.parametrize("break_it, key, reason", [
    (lambda a, h: a["l4" + LORA_B].__setitem__((0, 0), float("nan")), "l4", "`B`"),
    (lambda a, h: a.pop("l5" + LORA_A), "l5", "has no matching"),
    (lambda a, h: h.update(h=torch.zeros(4)), None, "head `h` has shape (4,)"),
])
def test_a_bad_reply_is_rejected_whole_and_the_accumulator_goes_on(break_it, key, reason):
    """Layers 0-3 of the bad reply are fine: none of them may be folded in."""
    replies = [layered_reply_equal(i) for i in range(3)]
    break_it(replies[1].adapter, replies[1].head)
    acc = global_model.ModelAccumulator(GlobalModel("fedit"))
    acc.add(replies[0])
    with pytest.raises(InvalidUpdateError) as info:
        acc.add(replies[1])
    assert info.value.client == 1 and info.value.key == key and reason in str(info.value)
    acc.add(replies[2])
    mine, theirs = acc.result(), aggregate_model(GlobalModel("fedit"), [replies[0], replies[2]])
    assert acc.count == 2
    for k, state in theirs.layers.items():
        torch.testing.assert_close(mine.layers[k].delta(), state.delta())
    torch.testing.assert_close(mine.head["h"], theirs.head["h"])


def test_a_rejected_first_reply_sets_nothing_the_next_ones_are_checked_against():
    """Client 0's reply has an extra layer and a NaN: rejected, it must not fix the layer set."""
    replies = [layered_reply_equal(i) for i in range(3)]
    bad = layered_reply_equal(9)
    bad.adapter["l9" + LORA_B], bad.adapter["l9" + LORA_A] = torch.ones(24, RANK), torch.ones(RANK, 20)
    bad.adapter["l0" + LORA_B][0, 0] = float("nan")
    acc = global_model.ModelAccumulator(GlobalModel("fedit"))
    with pytest.raises(InvalidUpdateError):
        acc.add(bad)
    for r in replies:
        acc.add(r)
    mine, theirs = acc.result(), aggregate_model(GlobalModel("fedit"), replies)
    assert list(mine.layers) == list(theirs.layers)
    for k, state in theirs.layers.items():
        torch.testing.assert_close(mine.layers[k].delta(), state.delta())
