"""LoRA-FAIR: averaged factors with a ridge-regularized least-squares correction of B."""

from __future__ import annotations

import pytest
import torch
from lora_helpers import exact_average, make_clients, probabilities, rel

import glora
from glora.errors import ConfigError


def averages(ups):
    p = probabilities(ups)
    return sum(pi * u.B for pi, u in zip(p, ups)), sum(pi * u.A for pi, u in zip(p, ups))


def ridge(s, A, lam):
    """The absolute ridge weight: ``lam`` times the mean eigenvalue of ``s^2 A A^T``."""
    return lam * float((s**2 * A @ A.mT).trace()) / A.shape[0]


@pytest.mark.parametrize("lam", [0.0, 0.01, 3.0])
def test_correction_matches_the_closed_form(lam):
    ups = make_clients((3, 3, 3))
    B, A = averages(ups)
    s, D = ups[0].scaling, exact_average(ups)
    mu = ridge(s, A, lam)
    G = s**2 * A @ A.mT + mu * torch.eye(3, dtype=A.dtype)
    X = (s * D @ A.mT + mu * B) @ torch.linalg.inv(G)
    state = glora.aggregate("lorafair", ups, lam=lam)
    assert rel(state.B, X) < 1e-12 and rel(state.A, A) < 1e-14 and state.scaling == s
    assert state.info["correction_norm"] == pytest.approx(float((X - B).norm()), rel=1e-10)
    assert state.info["ridge"] == pytest.approx(mu, rel=1e-12)
    # X is the minimizer: the gradient of ||D - s X A||^2 + mu ||X - B||^2 vanishes.
    grad = -s * (D - s * X @ A) @ A.mT + mu * (X - B)
    assert grad.norm() < 1e-10 * (s * D @ A.mT).norm()


def test_zero_lambda_is_the_pure_least_squares_fit():
    ups = make_clients((3, 3, 3))
    _, A = averages(ups)
    s, D = ups[0].scaling, exact_average(ups)
    X = torch.linalg.lstsq(s * A.mT, D.mT).solution.mT  # argmin ||D - s X A||_F
    assert rel(glora.aggregate("lorafair", ups, lam=0.0).B, X) < 1e-12


@pytest.mark.parametrize("k", [1e-2, 1e2])
def test_lambda_is_relative_to_the_data_term(k):
    """Clients sending ``(B_i / k, k A_i)`` (the same updates) get the same corrected update."""
    ups = make_clients((3, 3, 3))
    scaled = [glora.ClientUpdate(u.B / k, u.A * k, u.num_examples, u.scaling) for u in ups]
    for lam in (0.01, 1.0):
        state = glora.aggregate("lorafair", ups, lam=lam)
        assert rel(glora.aggregate("lorafair", scaled, lam=lam).delta(), state.delta()) < 1e-12


def test_correction_never_increases_the_error_and_default_is_light():
    ups = make_clients((3, 3, 3))
    B, A = averages(ups)
    s, D = ups[0].scaling, exact_average(ups)
    state = glora.aggregate("lorafair", ups)
    assert glora.get_method("lorafair").make_config().lam == 0.01
    assert rel(state.delta(), D) < rel(s * B @ A, D)


def test_zero_lambda_with_rank_deficient_a_gives_the_minimum_norm_solution():
    ups = make_clients((3, 3))
    deficient = ups[0].A.clone()
    deficient[2] = deficient[0]
    ups = [glora.ClientUpdate(u.B, deficient, u.num_examples, u.scaling) for u in ups]
    state = glora.aggregate("lorafair", ups, lam=0.0)
    assert torch.isfinite(state.B).all()
    assert rel(state.delta(), exact_average(ups)) < 1e-10  # one shared A: D is reachable


def test_negative_lambda_is_rejected():
    with pytest.raises(ConfigError, match="`lam` must be non-negative"):
        glora.aggregate("lorafair", make_clients((3, 3)), lam=-1.0)
