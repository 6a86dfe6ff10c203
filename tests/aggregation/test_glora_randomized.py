"""GLoRA's randomized consensus solver against the exact one: within its own error estimate,
deterministic, gauge-invariant, and breaking ties as the exact path does."""

from __future__ import annotations

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
    fast = glora.aggregate("glora", ups, rank=3, **RANDOMIZED)
    assert fast.info["tie_broken"] and rel(fast.delta(), exact.delta()) < 1e-8
    assert fast.info["error_estimate"] == float("inf")  # the tie-break, not K, chose the subspace


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
