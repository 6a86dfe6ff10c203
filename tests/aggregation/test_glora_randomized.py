"""GLoRA's randomized consensus solver against the exact one: within its own error estimate,
deterministic, gauge-invariant, and breaking ties as the exact path does."""

from __future__ import annotations

import warnings

import pytest
import torch
from lora_helpers import regauge
from test_glora import clients, rel, tied_clients

import glora
from glora.errors import ConfigError

RANDOMIZED = {"solver": "randomized"}


@pytest.mark.parametrize("rank, shared", [(8, 0), (4, 6), (12, 0)])
def test_randomized_equals_exact_within_its_reported_bound(rank, shared):
    ups = clients(shared=shared)
    exact = glora.aggregate("glora", ups, rank=rank)
    fast = glora.aggregate("glora", ups, rank=rank, **RANDOMIZED)
    assert exact.info["eigengap"] > 1e-2
    error = rel(fast.delta(), exact.delta())
    info = fast.info
    assert info["solver"] == "randomized" and info["iterations"] >= 1
    assert info["residual"] <= 1e-10
    assert error <= info["error_estimate"] + 1e-12 and error < 1e-6
    assert fast.info["eigenvalues"] == pytest.approx(exact.info["eigenvalues"], rel=1e-9)


def test_randomized_is_deterministic_for_a_seed_and_gauge_invariant():
    ups = clients()
    a = glora.aggregate("glora", ups, rank=8, **RANDOMIZED)
    b = glora.aggregate("glora", ups, rank=8, **RANDOMIZED)
    assert torch.equal(a.delta(), b.delta())
    for seed in (1, 2):
        gauged = glora.aggregate("glora", regauge(ups, 1e3, seed), rank=8, **RANDOMIZED)
        assert rel(gauged.delta(), a.delta()) < 1e-8
    other = glora.aggregate("glora", ups, rank=8, seed=5, **RANDOMIZED)
    assert rel(other.delta(), a.delta()) < 1e-8  # another start, the same subspace


def test_ties_are_broken_by_the_update_as_in_the_exact_path():
    ups = tied_clients()
    exact = glora.aggregate("glora", ups, rank=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the block of 8 + 3 holds the whole tie (all of K's range)
        fast = glora.aggregate("glora", ups, rank=3, **RANDOMIZED)
    assert fast.info["tie_broken"] and rel(fast.delta(), exact.delta()) < 1e-8
    assert fast.info["error_estimate"] == float("inf")  # the tie-break, not K, chose the subspace


def test_a_tie_that_fills_the_solver_s_block_is_named():
    """Eight tied eigenvalues and a block of 3 + 1: the tie may run on past what the solver sees,
    so its tie-break may differ from the exact path's, and it says so."""
    ups = tied_clients()
    with pytest.warns(UserWarning, match=r"tie across R = 3 up to the last of its 4 Ritz pairs"):
        fast = glora.aggregate("glora", ups, rank=3, oversample=1, **RANDOMIZED)
    assert fast.info["tie_broken"] and fast.info["error_estimate"] == float("inf")


def test_an_unconverged_iteration_warns_and_bad_options_are_named():
    ups = clients()
    with pytest.warns(UserWarning, match="randomized solver stopped after 1 products"):
        glora.aggregate("glora", ups, rank=8, max_iter=1, **RANDOMIZED)
    with pytest.raises(ConfigError, match=r"`solver` must be one of \('auto', 'exact', "):
        glora.aggregate("glora", ups, solver="lanczos")
    with pytest.raises(ConfigError, match="`max_iter` must be a positive integer"):
        glora.aggregate("glora", ups, max_iter=0, **RANDOMIZED)


def test_auto_runs_the_exact_solver_up_to_the_threshold_and_the_randomized_one_beyond(
        monkeypatch):
    """`solver="auto"` (the default) by the number of client directions m = sum r_i: exact at
    m <= AUTO_EXACT_MAX, randomized beyond; the same update either way (clear eigengap)."""
    from glora.aggregation import glora as module

    ups = clients()
    m = sum(u.rank for u in ups)
    small = glora.aggregate("glora", ups, rank=8)
    assert small.info["solver"] == "exact" and m <= module.AUTO_EXACT_MAX
    monkeypatch.setattr(module, "AUTO_EXACT_MAX", m - 1)
    large = glora.aggregate("glora", ups, rank=8)
    assert large.info["solver"] == "randomized"
    assert rel(large.delta(), small.delta()) <= large.info["error_estimate"]


def shared_start_clients(dtype: torch.dtype, d: int = 256, n: int = 48, r: int = 8):
    """Clients after a shared start: a common rank-``r`` update plus 50% client noise, so ``K``
    has ``r`` large eigenvalues and a bulk of close ones after them (as the scale benchmark's)."""
    g = torch.Generator().manual_seed(3)
    B0, A0 = torch.randn(d, r, generator=g), torch.randn(r, d, generator=g)
    return [glora.ClientUpdate((B0 + 0.5 * torch.randn(d, r, generator=g)).to(dtype),
                               (A0 + 0.5 * torch.randn(r, d, generator=g)).to(dtype), 10 + i, 2.0)
            for i in range(n)]


def test_a_bulk_after_the_rank_does_not_hold_the_iteration():
    """With a wide gap at R and a bulk after it, the solver stops once the R wanted pairs have
    converged and the next eigenvalue is known to a tenth of the gap: inside the first Krylov
    cycle (it took several while the pair after R also had to reach `solver_tol`, and a whole
    cycle while convergence was checked only at its end)."""
    from glora.aggregation import subspace

    ups = shared_start_clients(torch.float64)
    exact = glora.aggregate("glora", ups, rank=8)
    fast = glora.aggregate("glora", ups, rank=8, **RANDOMIZED)
    assert exact.info["eigengap"] > 0.5
    assert fast.info["iterations"] < subspace.DEPTH
    assert rel(fast.delta(), exact.delta()) <= fast.info["error_estimate"] < 1e-6


def test_float32_clients_converge_to_their_precision_within_the_estimate():
    """Products in float32 leave residuals near float32's epsilon: the solver stops there (no
    warning, far below `max_iter`), and its estimate still bounds the error against the exact
    update of the same clients in float64."""
    ups = shared_start_clients(torch.float32)
    exact = glora.aggregate("glora", [glora.ClientUpdate(u.B.double(), u.A.double(),
                                                         u.num_examples, u.scaling) for u in ups],
                            rank=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = glora.aggregate("glora", ups, rank=12, **RANDOMIZED)
    assert fast.info["residual"] <= 10 * torch.finfo(torch.float32).eps
    assert fast.info["iterations"] < 100
    assert rel(fast.delta(), exact.delta()) <= fast.info["error_estimate"]
