"""FedEx-LoRA: averaged factors plus the dense residual in nn.Linear orientation."""

from __future__ import annotations

from lora_helpers import D_IN, D_OUT, exact_average, make_clients, probabilities, rel

import glora


def test_factors_residual_and_exact_update():
    ups = make_clients((3, 3, 3))
    p = probabilities(ups)
    s = ups[0].scaling
    B = sum(pi * u.B for pi, u in zip(p, ups))
    A = sum(pi * u.A for pi, u in zip(p, ups))
    residual = exact_average(ups) - s * B @ A
    state = glora.aggregate("fedex", ups)
    assert rel(state.B, B) < 1e-14 and rel(state.A, A) < 1e-14 and state.scaling == s
    assert rel(state.residual, residual) < 1e-12
    assert rel(state.delta(), exact_average(ups)) < 1e-13
    start_B, start_A = state.readout(3, s)
    assert rel(s * start_B @ start_A + state.base_update(), exact_average(ups)) < 1e-13


def test_residual_is_not_transposed():
    """d_out x d_in like nn.Linear.weight (the Conv1D transpose is a known defect)."""
    state = glora.aggregate("fedex", make_clients((2, 2)))
    assert D_OUT != D_IN and state.base_update().shape == (D_OUT, D_IN)
    assert state.download_tensors(2, 4.0)["base"].shape == (D_OUT, D_IN)
