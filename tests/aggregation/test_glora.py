"""GLoRA-specific behaviour: projection identity, readout, gauge invariance, ties, zero clients."""

from __future__ import annotations

import math

import pytest
import torch

import glora
from glora.errors import ConfigError
from lora_helpers import exact_average, regauge

D_OUT, D_IN = 40, 33


def clients(ranks=(2, 4, 8, 4, 2), dtype=torch.float64, seed=0, shared: int = 0):
    """Random clients; with ``shared > 0`` their column spaces share a ``shared``-dim block."""
    gen = torch.Generator().manual_seed(seed)
    common = torch.randn(D_OUT, shared, dtype=dtype, generator=gen)
    ups = []
    for i, r in enumerate(ranks):
        B = torch.randn(D_OUT, r, dtype=dtype, generator=gen)
        if shared:
            B[:, : min(r, shared)] = common[:, : min(r, shared)] * 3 + 0.3 * B[:, : min(r, shared)]
        ups.append(glora.ClientUpdate(B, torch.randn(r, D_IN, dtype=dtype, generator=gen),
                                      10 + 7 * i, 16.0 / r))
    return ups


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def best_rank(M, r):
    U, S, Vh = torch.linalg.svd(M.double())
    return U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]


@pytest.mark.parametrize("two_sided", [False, True])
def test_update_is_projection_of_exact_average(two_sided):
    ups = clients()
    state = glora.aggregate("glora", ups, rank=8, two_sided=two_sided)
    U = state.U
    expected = U @ U.mT @ exact_average(ups)
    if two_sided:
        expected = expected @ state.V @ state.V.mT
    assert rel(state.delta(), expected) < 1e-12
    assert state.info["rank"] == 8 and state.info["eigengap"] > 0


def test_exact_when_rank_covers_K_and_rank_is_capped():
    ups = clients()
    state = glora.aggregate("glora", ups, rank=64)
    assert rel(state.delta(), exact_average(ups)) < 1e-12
    assert state.info["rank"] == sum(u.rank for u in ups) == 20  # numerical rank of K
    assert state.info["rank_capped"]


@pytest.mark.parametrize("two_sided", [False, True])
@pytest.mark.parametrize("r", [1, 2, 4, 8])
def test_readout_is_best_rank_r_of_server_update(r, two_sided):
    state = glora.aggregate("glora", clients(), rank=8, two_sided=two_sided)
    B, A = state.readout(rank=r, scaling=2.0)
    assert B.shape == (D_OUT, r) and A.shape == (r, D_IN)
    assert rel(2.0 * B @ A, best_rank(state.delta(), r)) < 1e-10


def test_readout_pads_when_state_has_fewer_directions():
    state = glora.aggregate("glora", clients(ranks=(2,)), rank=2)
    B, A = state.readout(rank=4, scaling=1.0)
    assert B.shape == (D_OUT, 4) and torch.all(A[2:] == 0) and torch.all(B[:, 2:] == 0)
    assert rel(B @ A, state.delta()) < 1e-12


@pytest.mark.parametrize("consensus", ["uniform", "energy"])
@pytest.mark.parametrize("two_sided", [False, True])
@pytest.mark.parametrize("cond", [1.0, 10.0, 1e3])
def test_gauge_invariance_float64(cond, two_sided, consensus):
    ups = clients()
    kw = dict(rank=8, two_sided=two_sided, consensus=consensus)
    state = glora.aggregate("glora", ups, **kw)
    assert state.info["eigengap"] > 1e-3
    assert rel(glora.aggregate("glora", regauge(ups, cond), **kw).delta(), state.delta()) < 1e-9


@pytest.mark.parametrize("cond", [10.0, 1e3])
def test_gauge_invariance_float32(cond):
    ups = clients(dtype=torch.float32)
    state = glora.aggregate("glora", ups, rank=8)
    assert state.delta().dtype == torch.float32 and state.info["eigengap"] > 1e-3
    assert rel(glora.aggregate("glora", regauge(ups, cond), rank=8).delta(), state.delta()) < 1e-4


def test_fedit_is_not_gauge_invariant_on_the_same_clients():
    ups = clients(ranks=(4, 4, 4))
    assert rel(glora.aggregate("fedit", regauge(ups, 10.0)).delta(),
               glora.aggregate("fedit", ups).delta()) > 1e-2


def tied_clients(dtype=torch.float64):
    """Four orthogonal rank-2 clients with equal weights: all eight eigenvalues of K tie."""
    gen = torch.Generator().manual_seed(3)
    Q, _ = torch.linalg.qr(torch.randn(D_OUT, 8, dtype=dtype, generator=gen))
    return [glora.ClientUpdate(Q[:, 2 * i:2 * i + 2] * torch.tensor([4.0 - i, 1.0 + i], dtype=dtype),
                               torch.randn(2, D_IN, dtype=dtype, generator=gen), 10, 1.0)
            for i in range(4)]


def test_tie_break_keeps_glora_invariant():
    ups = tied_clients()
    state = glora.aggregate("glora", ups, rank=3)
    assert state.info["tie_broken"] and state.info["eigengap"] < 1e-12
    for seed in range(3):
        assert rel(glora.aggregate("glora", regauge(ups, 1e2, seed), rank=3).delta(),
                   state.delta()) < 1e-9
    # The tie is broken by the average update itself: the best rank-3 subspace of it.
    assert rel(state.delta(), best_rank(exact_average(ups), 3)) < 1e-9


def test_without_tie_break_the_result_depends_on_the_gauge():
    """The failure the tie-break prevents (SPEC: 70-130% change under gauges)."""
    ups = tied_clients()
    changes = [rel(glora.aggregate("glora", regauge(ups, 1e2, s), rank=3, tie_rtol=0.0).delta(),
                   glora.aggregate("glora", ups, rank=3, tie_rtol=0.0).delta()) for s in range(3)]
    assert max(changes) > 1e-2


def test_zero_clients_are_left_out_of_K_but_keep_their_weight():
    real = clients(ranks=(4,))[0]
    zero = glora.ClientUpdate(torch.zeros(D_OUT, 4, dtype=torch.float64),
                              torch.randn(4, D_IN, dtype=torch.float64), 10, 4.0)
    ups = [zero, zero, real]
    state = glora.aggregate("glora", ups, rank=4)
    p_real = real.num_examples / (20 + real.num_examples)
    assert rel(state.delta(), p_real * real.delta()) < 1e-12
    # U_ref spans the real client's space, not the unit vectors QR returns for a zero matrix.
    assert rel(state.U @ state.U.mT @ real.B, real.B) < 1e-12


def test_all_zero_clients_give_a_zero_update():
    zero = glora.ClientUpdate(torch.zeros(D_OUT, 4), torch.randn(4, D_IN), 5, 1.0)
    state = glora.aggregate("glora", [zero, zero], rank=4)
    assert state.info["rank"] == 0 and torch.count_nonzero(state.delta()) == 0
    B, A = state.readout(rank=4, scaling=1.0)
    assert B.shape == (D_OUT, 4) and torch.count_nonzero(B @ A) == 0


def test_energy_consensus_is_closer_to_the_exact_average_on_a_shared_subspace():
    errors = {}
    for consensus in ("uniform", "energy"):
        err = []
        for seed in range(5):
            ups = clients(ranks=(4,) * 6, seed=seed, shared=2)
            state = glora.aggregate("glora", ups, rank=4, consensus=consensus)
            err.append(rel(state.delta(), exact_average(ups)))
        errors[consensus] = sum(err) / len(err)
    assert errors["energy"] < errors["uniform"]


def test_one_state_serves_every_client_rank():
    state = glora.aggregate("glora", clients(), rank=8)
    for r, s in ((2, 8.0), (4, 4.0), (8, 2.0)):
        B, A = state.readout(rank=r, scaling=s)
        assert rel(s * B @ A, best_rank(state.delta(), r)) < 1e-10


@pytest.mark.parametrize("options, message", [
    ({"consensus": "median"}, "`consensus` must be one of"),
    ({"rank": 0}, "`rank` must be a positive integer"),
    ({"ranks": 4}, "unknown option"),
])
def test_bad_options_name_the_key(options, message):
    with pytest.raises(ConfigError, match=message):
        glora.aggregate("glora", clients(), **options)


@pytest.mark.parametrize("two_sided", [False, True])
def test_clients_are_streamed_without_stacking_their_bases(two_sided, shape_recorder, monkeypatch):
    """No tensor as large as all clients' bases (``d x sum r_i``) is built: row slabs."""
    d = 64
    monkeypatch.setattr(glora.aggregation.glora, "SLAB_ELEMENTS", 2 * 4 * d)  # slabs of 12 rows
    gen = torch.Generator().manual_seed(5)
    ups = [glora.ClientUpdate(torch.randn(d, 4, dtype=torch.float64, generator=gen),
                              torch.randn(4, d, dtype=torch.float64, generator=gen), 10 + i, 2.0)
           for i in range(10)]
    with shape_recorder:
        state = glora.aggregate("glora", ups, rank=4, two_sided=two_sided)
    assert max(math.prod(s) for s in shape_recorder.shapes) < d * sum(u.rank for u in ups)
    monkeypatch.undo()  # one chunk: the same result
    unchunked = glora.aggregate("glora", ups, rank=4, two_sided=two_sided)
    assert rel(state.delta(), unchunked.delta()) < 1e-12


def test_tied_block_past_the_computed_eigenpairs_is_widened(monkeypatch):
    """Only the top ``rank + EXTRA_EIGENPAIRS`` eigenpairs are computed; a tie running past them
    makes GLoRA compute more, with the same result as computing them all."""
    d = 32
    eye = torch.eye(d, dtype=torch.float64)
    ups = [glora.ClientUpdate(eye[:, 2 * i:2 * i + 2] * (1 + i), torch.randn(
        2, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(i)), 10, 2.0)
        for i in range(6)]  # equal weights, orthogonal spaces: 12 tied eigenvalues of K
    monkeypatch.setattr(glora.aggregation.glora, "EXTRA_EIGENPAIRS", 1)
    few = glora.aggregate("glora", ups, rank=3)
    assert few.info["tie_broken"] and few.info["tied"] == (0, 12)
    monkeypatch.setattr(glora.aggregation.glora, "EXTRA_EIGENPAIRS", 100)
    every = glora.aggregate("glora", ups, rank=3)
    assert rel(few.delta(), every.delta()) < 1e-12
