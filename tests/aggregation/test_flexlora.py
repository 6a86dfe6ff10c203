"""FlexLoRA: best low-rank approximations of the exact average, factored or dense."""

from __future__ import annotations

import pytest
import torch
from lora_helpers import best_rank, exact_average, make_clients, rel

import glora
from glora.errors import ConfigError


@pytest.mark.parametrize("path", ["factored", "dense"])
def test_state_is_best_rank_R_of_the_exact_average(path):
    ups = make_clients((2, 4, 3))
    D = exact_average(ups)
    state = glora.aggregate("flexlora", ups, path=path)
    assert state.info["rank"] == 4  # default: the largest client rank
    assert rel(state.delta(), best_rank(D, 4)) < 1e-12
    S = torch.linalg.svdvals(D)
    assert state.info["relative_truncation_error"] == pytest.approx(
        float(S[4:].norm() / S.norm()), rel=1e-10)


@pytest.mark.parametrize("path", ["factored", "dense"])
@pytest.mark.parametrize("r, s", [(1, 8.0), (2, 4.0), (3, 8 / 3), (4, 2.0)])
def test_readout_is_best_rank_r(path, r, s):
    ups = make_clients((2, 4, 3))
    B, A = glora.aggregate("flexlora", ups, path=path).readout(r, s)
    assert B.shape == (ups[0].B.shape[0], r) and A.shape == (r, ups[0].A.shape[1])
    assert rel(s * B @ A, best_rank(exact_average(ups), r)) < 1e-12


@pytest.mark.parametrize("r, s", [(1, 8.0), (3, 8 / 3), (4, 2.0)])
def test_default_split_is_the_published_one_and_keeps_the_product(r, s):
    ups = make_clients((2, 4, 3))
    B, A = glora.aggregate("flexlora", ups).readout(r, s)
    Bs, As = glora.aggregate("flexlora", ups, split="symmetric").readout(r, s)
    # Published: A = V_r^T has orthonormal rows, B = U_r S_r / s carries the singular values.
    assert rel(A @ A.mT, torch.eye(r, dtype=A.dtype)) < 1e-12
    S = torch.linalg.svdvals(exact_average(ups))[:r]
    assert rel(s * B.mT @ B, torch.diag(S**2 / s)) < 1e-12
    # Symmetric: balanced factors, s B^T B = s A A^T (the diagonal of singular values).
    assert rel(s * Bs.mT @ Bs, s * As @ As.mT) < 1e-12
    assert rel(B @ A, Bs @ As) < 1e-12


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_dense_and_factored_paths_agree(dtype, tol):
    ups = make_clients((2, 4, 3), dtype=dtype)
    dense = glora.aggregate("flexlora", ups, path="dense", rank=6)
    factored = glora.aggregate("flexlora", ups, rank=6)
    assert factored.delta().dtype == dtype
    assert rel(factored.delta(), dense.delta()) < tol
    for r in (2, 6):
        (Bd, Ad), (Bf, Af) = dense.readout(r, 1.0), factored.readout(r, 1.0)
        assert rel(Bf @ Af, Bd @ Ad) < tol


def test_server_rank_option_and_exactness():
    ups = make_clients((2, 4, 3))
    assert rel(glora.aggregate("flexlora", ups, rank=9).delta(), exact_average(ups)) < 1e-12
    state = glora.aggregate("flexlora", ups, rank=50)  # capped at sum r_i
    assert state.info["rank"] == 9
    B, A = state.readout(12, 1.0)  # more than the state holds: zero-padded
    assert torch.all(B[:, 9:] == 0) and rel(B @ A, exact_average(ups)) < 1e-12


@pytest.mark.parametrize("options, message", [
    ({"path": "svd"}, "`path` must be one of"),
    ({"rank": 0}, "`rank` must be a positive integer"),
    ({"split": "balanced"}, r"`split` must be one of \('symmetric', 'published'\)")])
def test_bad_options_name_the_key(options, message):
    with pytest.raises(ConfigError, match=message):
        glora.aggregate("flexlora", make_clients(), **options)


def test_the_randomized_path_gives_the_factored_result():
    ups = make_clients((2, 4, 3, 4))
    exact = glora.aggregate("flexlora", ups, rank=4)
    fast = glora.aggregate("flexlora", ups, rank=4, path="randomized")
    assert rel(fast.delta(), exact.delta()) < 1e-8 and fast.info["residual"] <= 1e-10
    again = glora.aggregate("flexlora", ups, rank=4, path="randomized")
    assert torch.equal(fast.delta(), again.delta())  # deterministic for the seed


@pytest.mark.parametrize("max_iter", [200, 1])
def test_the_randomized_path_reports_a_bound_on_its_error(max_iter):
    """Converged, the estimate is tight; stopped after one product, it is loose but still bounds."""
    ups = make_clients((4, 4, 4, 4, 4), d_out=40, d_in=30)
    exact = glora.aggregate("flexlora", ups, rank=3)
    fast = glora.aggregate("flexlora", ups, rank=3, path="randomized", max_iter=max_iter)
    error, estimate = rel(fast.delta(), exact.delta()), fast.info["error_estimate"]
    assert error <= estimate
    if max_iter == 1:
        assert error > 1e-6 and fast.info["iterations"] == 1
    else:
        assert estimate < 1e-6


def test_the_randomized_path_in_float32_is_gauge_free_and_near_the_exact_one():
    """Its products run on the clients' singular bases in float32: an ill-conditioned gauge of
    the factors changes the result by float32 rounding only (as the factored path's)."""
    from lora_helpers import regauge

    ups = make_clients((2, 4, 3, 4))
    exact = glora.aggregate("flexlora", ups, rank=4)
    f32 = [glora.ClientUpdate(u.B.float(), u.A.float(), u.num_examples, u.scaling) for u in ups]
    fast = glora.aggregate("flexlora", f32, rank=4, path="randomized")
    assert rel(fast.delta(), exact.delta()) < 1e-5
    assert fast.info["residual"] <= 10 * torch.finfo(torch.float32).eps
    gauged = glora.aggregate("flexlora", regauge(f32, 1e3, 0), rank=4, path="randomized")
    assert rel(gauged.delta(), fast.delta()) < 1e-5
