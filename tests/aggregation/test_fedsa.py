"""FedSA-LoRA: A averaged and shared; B and the head stay on the client."""

from __future__ import annotations

from lora_helpers import make_clients, probabilities, rel

import glora


def test_a_and_the_global_b_are_weighted_averages():
    ups = make_clients((3, 3, 3))
    p = probabilities(ups)
    state = glora.aggregate("fedsa", ups)
    A = sum(pi * u.A for pi, u in zip(p, ups))
    B = sum(pi * u.B for pi, u in zip(p, ups))
    assert rel(state.A, A) < 1e-14 and rel(state.B, B) < 1e-14
    assert rel(state.delta(), ups[0].scaling * B @ A) < 1e-14
    assert "global evaluation only" in state.info["B"]
    assert rel(state.readout(3, ups[0].scaling)[1], A) < 1e-14

