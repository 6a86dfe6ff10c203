"""FedSVD: the averaged B with the shared A, re-factorized so that A has orthonormal rows."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from lora_helpers import exact_average, make_clients, rel

import glora
from glora.errors import ConfigError


def test_the_product_is_the_exact_average_and_a_has_orthonormal_rows():
    ups = make_clients((4, 4, 4), shared_A=True)
    state = glora.aggregate("fedsvd", ups)
    assert rel(state.delta(), exact_average(ups)) < 1e-12  # rank <= r: nothing truncated
    eye = torch.eye(4, dtype=state.A.dtype)
    assert torch.allclose(state.A @ state.A.mT, eye, atol=1e-12)
    assert state.info["singular_values"] == sorted(state.info["singular_values"], reverse=True)


def test_each_round_keeps_a_orthonormal_and_the_product_of_b_and_the_previous_a():
    """Round after round: clients start from the server's factors, move only B; the server's new
    state is the averaged B times the previous A, re-factorized."""
    gen = torch.Generator().manual_seed(0)
    ups = make_clients((3, 3), shared_A=True)
    for _ in range(3):
        state = glora.aggregate("fedsvd", ups)
        B, A = state.readout(3, ups[0].scaling)
        ups = [dataclasses.replace(u, B=B + 0.1 * torch.randn(B.shape, dtype=B.dtype,
                                                               generator=gen), A=A) for u in ups]
        nxt = glora.aggregate("fedsvd", ups)
        assert torch.allclose(nxt.A @ nxt.A.mT, torch.eye(3, dtype=A.dtype), atol=1e-12)
        assert rel(nxt.delta(), exact_average(ups)) < 1e-12  # = s (sum p_i B_i) A_previous


def test_clients_that_trained_a_are_refused_and_ranks_must_be_equal():
    ups = make_clients((3, 3))  # every client its own A
    with pytest.raises(glora.InvalidUpdateError, match="FedSVD clients train `B` only"):
        glora.aggregate("fedsvd", ups)
    with pytest.raises(glora.InvalidUpdateError, match="needs equal ranks"):
        glora.aggregate("fedsvd", make_clients((2, 4), shared_A=True))
    with pytest.raises(ConfigError, match="`rtol` must be non-negative"):
        glora.aggregate("fedsvd", make_clients((3, 3), shared_A=True), rtol=-1.0)
