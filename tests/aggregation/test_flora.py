"""FLoRA: stacked factors, exact average, merged into the base, fresh adapter each round."""

from __future__ import annotations

import torch
from lora_helpers import D_IN, D_OUT, exact_average, make_clients, probabilities, rel

import glora


def test_stacked_factors():
    ups = make_clients((2, 4, 3))
    p = probabilities(ups)
    state = glora.aggregate("flora", ups)
    assert state.left.shape == (D_OUT, 9) and state.right.shape == (9, D_IN)
    assert rel(state.left[:, 2:6], p[1] * ups[1].scaling * ups[1].B) < 1e-15
    assert rel(state.right[2:6], ups[1].A) < 1e-15
    assert rel(state.delta(), exact_average(ups)) < 1e-13
    assert state.info["rank"] == 9


def test_merged_into_the_base_with_a_fresh_adapter():
    ups = make_clients((2, 4, 3))
    state = glora.aggregate("flora", ups)
    assert state.fresh_adapter and state.readout(2, 4.0) is None
    L, R = state.base_update()
    assert rel(L @ R, exact_average(ups)) < 1e-13
    down = state.download_tensors(2, 4.0)
    assert sorted(down) == ["base_L", "base_R"]
    assert torch.equal(down["base_L"], state.left)
