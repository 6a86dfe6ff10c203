"""The model-level server state: what each client starts from and what that costs to send."""

from __future__ import annotations

import torch
from torch import Tensor

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
