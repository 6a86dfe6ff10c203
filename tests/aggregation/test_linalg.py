"""The per-client bases of the low-rank methods: fast where it is safe, exact where it is not."""

from __future__ import annotations

import pytest
import torch

from glora.aggregation import linalg
from lora_helpers import gauge


def _factor(cond: float, dtype: torch.dtype, d: int = 512, r: int = 8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    Q = torch.linalg.qr(torch.randn(d, r, dtype=torch.float64, generator=gen))[0]
    return (Q @ gauge(r, cond, torch.float64, gen)).to(dtype)


def _orthonormality_error(F: torch.Tensor, R: torch.Tensor) -> float:
    Q = torch.linalg.solve_triangular(R, F.double(), upper=True, left=False)  # F R^-1
    return float((Q.mT @ Q - torch.eye(R.shape[0], dtype=torch.float64)).abs().max())


@pytest.mark.parametrize("cond", [1.0, 100.0, 1e5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_r_factor_gives_an_orthonormal_q_however_the_factor_is_conditioned(cond, dtype):
    """Cholesky QR would lose ``eps64 cond^2`` (2e-6 at cond 1e5): the fallback must catch it."""
    F = _factor(cond, dtype)
    R = linalg.triangular_factors([F])[0]
    assert R.dtype == torch.float64 and torch.equal(R, R.triu())
    assert _orthonormality_error(F, R) < 1e-10


def test_cholesky_is_taken_only_for_a_well_conditioned_float32_factor(monkeypatch):
    good, ill, double = (_factor(10.0, torch.float32), _factor(1e5, torch.float32),
                       _factor(10.0, torch.float64))
    calls = []
    cholesky = torch.linalg.cholesky_ex
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda *a, **k: calls.append(1) or
                        cholesky(*a, **k))
    householder = torch.linalg.qr
    monkeypatch.setattr(torch.linalg, "qr", lambda *a, **k: calls.append(2) or
                        householder(*a, **k))
    linalg.triangular_factors([good])
    assert calls == [1]
    calls.clear()
    linalg.triangular_factors([ill])  # tried, too ill-conditioned: Householder
    assert calls == [1, 2]
    calls.clear()
    linalg.triangular_factors([double])  # float64 input: Cholesky never meets its rounding
    assert calls == [2]
    calls.clear()
    linalg.triangular_factors([good, ill, good])  # one batched Cholesky, Householder for one
    assert calls == [1, 2]


def test_a_rank_deficient_factor_keeps_its_zero_directions_out():
    B = _factor(1.0, torch.float32)
    B[:, 3] = 0
    A = _factor(1.0, torch.float32, d=300).mT.contiguous()
    X, S, Y = linalg.factored_column_basis(B, A)
    assert S.numel() == 7
    U = B.double() @ X
    assert float((U.mT @ U - torch.eye(7, dtype=torch.float64)).abs().max()) < 1e-6


def test_a_batch_of_clients_gives_what_each_gives_alone():
    """Mixed ranks, a zero update, a rank-deficient and an ill-conditioned factor in one call."""
    gen = torch.Generator().manual_seed(4)
    Bs = [torch.randn(200, r, generator=gen) for r in (4, 8, 4, 8, 4)]
    As = [torch.randn(r, 150, generator=gen) for r in (4, 8, 4, 8, 4)]
    Bs[1][:, 2] = 0  # rank-deficient: Householder and a pseudo-inverse
    As[2] = torch.zeros_like(As[2])  # a zero update: no directions
    Bs[3] = Bs[3] @ gauge(8, 1e5, torch.float64, gen).float()  # too ill-conditioned for Cholesky
    together = linalg.factored_column_bases(Bs, As)
    kept = [S.numel() for _, S, _ in together]
    assert kept[:3] + kept[4:] == [4, 7, 0, 4]  # (cond 1e5 in float32 drops some directions)
    for (B, A), got in zip(zip(Bs, As), together):
        alone = linalg.factored_column_basis(B, A)
        for a, b in zip(got, alone):
            assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-9, atol=1e-12)
        X, S, Y = got
        U, V = B.double() @ X, A.double().mT @ Y
        dense = B.double() @ A.double()
        assert torch.allclose((U * S) @ V.mT, dense, atol=1e-3 * float(dense.abs().max()))
