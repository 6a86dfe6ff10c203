"""RoLoRA: one factor trained per round against the other, shared; the average is exact."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from lora_helpers import exact_average, make_clients, rel

import glora
from glora.global_model import LORA_A, LORA_B, ClientReply, upload_bytes


def test_the_trained_factor_is_averaged_exactly_whichever_it_is():
    ups = make_clients((3, 3, 3), shared_A=True)  # a round that trained B against a shared A
    assert rel(glora.aggregate("rolora", ups).delta(), exact_average(ups)) < 1e-13
    B = ups[0].B
    swapped = [dataclasses.replace(u, B=B) for u in make_clients((3, 3, 3))]  # trained A
    assert rel(glora.aggregate("rolora", swapped).delta(), exact_average(swapped)) < 1e-13
    with pytest.raises(glora.InvalidUpdateError, match="neither `A` nor `B` is the same"):
        glora.aggregate("rolora", make_clients((3, 3, 3)))


def test_the_rounds_alternate_which_factor_trains_and_what_is_uploaded():
    spec = glora.get_method("rolora")
    assert [spec.frozen_in(t) for t in range(4)] == [("A",), ("B",), ("A",), ("B",)]
    reply = ClientReply(0, {"p" + LORA_B: torch.ones(6, 2, dtype=torch.float32),
                            "p" + LORA_A: torch.ones(2, 5, dtype=torch.float32)}, {}, 10, 1.0)
    assert [upload_bytes("rolora", reply, t) for t in range(2)] == [6 * 2 * 4, 2 * 5 * 4]
    assert upload_bytes("fedit", reply, 1) == (6 * 2 + 2 * 5) * 4  # no alternation
