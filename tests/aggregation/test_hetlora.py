"""HetLoRA: zero padding, norm-proportional weights, truncation to each client's rank."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lora_helpers import D_IN, D_OUT, make_clients, rel

import glora
from glora.aggregation import linalg
from glora.errors import ConfigError


def norm_weights(ups):
    norms = [float(u.delta().norm()) for u in ups]  # dense reference
    return [n / sum(norms) for n in norms]


def test_product_norm_matches_the_dense_norm():
    u = make_clients((5,))[0]
    assert abs(float(linalg.product_norm(u.B, u.A)) - float((u.B @ u.A).norm())) < 1e-12


def test_padded_norm_weighted_average():
    ups = make_clients((2, 4, 3))
    w = norm_weights(ups)
    s = sum(wi * u.scaling for wi, u in zip(w, ups))
    B = sum(wi * u.scaling / s * F.pad(u.B, (0, 4 - u.rank)) for wi, u in zip(w, ups))
    A = sum(wi * F.pad(u.A, (0, 0, 0, 4 - u.rank)) for wi, u in zip(w, ups))
    state = glora.aggregate("hetlora", ups)
    assert state.info["weights"] == pytest.approx(w, rel=1e-12)
    assert abs(state.scaling - s) < 1e-12
    assert rel(state.B, B) < 1e-13 and rel(state.A, A) < 1e-13
    # A rank-2 client gets the first two columns / rows, rescaled to its own scaling.
    Br, Ar = state.readout(2, 4.0)
    assert Br.shape == (D_OUT, 2) and Ar.shape == (2, D_IN)
    assert rel(4.0 * Br @ Ar, s * B[:, :2] @ A[:2]) < 1e-13


def test_equal_scalings_hand_down_the_plain_weighted_factors():
    ups = make_clients((2, 2, 2))
    w = norm_weights(ups)
    B, A = glora.aggregate("hetlora", ups).readout(2, ups[0].scaling)
    assert rel(B, sum(wi * u.B for wi, u in zip(w, ups))) < 1e-13
    assert rel(A, sum(wi * u.A for wi, u in zip(w, ups))) < 1e-13


def test_zero_update_gets_zero_weight_and_ranks_above_the_largest_are_refused():
    ups = make_clients((2, 4))
    zero = glora.ClientUpdate(torch.zeros(D_OUT, 4, dtype=torch.float64), ups[1].A, 99, 2.0)
    state = glora.aggregate("hetlora", [ups[0], zero])
    assert state.info["weights"] == [1.0, 0.0]
    with pytest.raises(ValueError, match="at most 4"):
        state.readout(5, 1.0)


def test_server_rank_pads_beyond_the_round_and_refuses_larger_clients():
    ups = make_clients((2, 4))
    state = glora.aggregate("hetlora", ups, rank=6)
    B, A = state.readout(6, 1.0)
    assert torch.all(B[:, 4:] == 0) and torch.all(A[4:] == 0)
    assert rel(state.delta(), glora.aggregate("hetlora", ups).delta()) < 1e-14
    with pytest.raises(glora.InvalidUpdateError, match="exceeds the server rank 3") as err:
        glora.aggregate("hetlora", ups, rank=3)
    assert err.value.client == 1
    with pytest.raises(ConfigError, match="`rank` must be a positive integer"):
        glora.aggregate("hetlora", ups, rank=0)
