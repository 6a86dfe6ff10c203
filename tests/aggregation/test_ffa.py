"""FFA-LoRA: shared frozen A, exact B average, A agreement check."""

from __future__ import annotations

import pytest
from lora_helpers import exact_average, make_clients, probabilities, rel

import glora
from glora.errors import ConfigError


def test_b_is_the_weighted_average_and_the_update_is_exact():
    ups = make_clients((4, 4, 4), shared_A=True)
    p = probabilities(ups)
    state = glora.aggregate("ffa", ups)
    assert rel(state.B, sum(pi * u.B for pi, u in zip(p, ups))) < 1e-14
    assert rel(state.A, ups[0].A) < 1e-14 and state.scaling == ups[0].scaling
    assert rel(state.delta(), exact_average(ups)) < 1e-13


def test_exact_with_different_scalings():
    """rsLoRA and plain LoRA clients of one rank: s B A still sums p_i s_i B_i A."""
    ups = make_clients((4, 4), shared_A=True)
    ups[1] = glora.ClientUpdate(ups[1].B, ups[1].A, ups[1].num_examples, 8.0 / 4**0.5)
    state = glora.aggregate("ffa", ups)
    assert rel(state.delta(), exact_average(ups)) < 1e-13
    B, A = state.readout(4, 0.5)
    assert rel(0.5 * B @ A, exact_average(ups)) < 1e-13


def test_a_client_whose_a_differs_is_named():
    ups = make_clients((4, 4, 4), shared_A=True)
    ups[2] = glora.ClientUpdate(ups[2].B, ups[2].A + 1e-3, ups[2].num_examples, ups[2].scaling)
    with pytest.raises(glora.InvalidUpdateError, match="`A` differs from client 0's") as err:
        glora.aggregate("ffa", ups)
    assert err.value.client == 2


def test_tolerance_admits_round_trips():
    ups = make_clients((4, 4), shared_A=True)
    A = ups[0].A.float().double()  # a float32 round trip: relative change ~6e-8
    ups[1] = glora.ClientUpdate(ups[1].B, A, ups[1].num_examples, ups[1].scaling)
    glora.aggregate("ffa", ups)
    with pytest.raises(glora.InvalidUpdateError):
        glora.aggregate("ffa", ups, rtol=0.0)
    with pytest.raises(ConfigError, match="`rtol` must be non-negative"):
        glora.aggregate("ffa", ups, rtol=-1.0)


