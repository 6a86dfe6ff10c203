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
def test_qr_r_gives_an_orthonormal_q_however_the_factor_is_conditioned(cond, dtype):
    """Cholesky QR would lose ``eps64 cond^2`` (2e-6 at cond 1e5): the fallback must catch it."""
    F = _factor(cond, dtype)
    R = linalg.qr_r(F)
    assert R.dtype == torch.float64 and torch.equal(R, R.triu())
    assert _orthonormality_error(F, R) < 1e-10


def test_qr_r_takes_cholesky_only_for_a_well_conditioned_float32_factor(monkeypatch):
    good, ill, double = (_factor(10.0, torch.float32), _factor(1e5, torch.float32),
                       _factor(10.0, torch.float64))
    calls = []
    cholesky = torch.linalg.cholesky_ex
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda *a, **k: calls.append(1) or
                        cholesky(*a, **k))
    householder = torch.linalg.qr
    monkeypatch.setattr(torch.linalg, "qr", lambda *a, **k: calls.append(2) or
                        householder(*a, **k))
    linalg.qr_r(good)
    assert calls == [1]
    calls.clear()
    linalg.qr_r(ill)  # tried, too ill-conditioned: Householder
    assert calls == [1, 2]
    calls.clear()
    linalg.qr_r(double)  # float64 input: Cholesky never meets its rounding
    assert calls == [2]


def test_a_rank_deficient_factor_keeps_its_zero_directions_out():
    B = _factor(1.0, torch.float32)
    B[:, 3] = 0
    A = _factor(1.0, torch.float32, d=300).mT.contiguous()
    X, S, Y = linalg.factored_column_basis(B, A)
    assert S.numel() == 7
    U = B.double() @ X
    assert float((U.mT @ U - torch.eye(7, dtype=torch.float64)).abs().max()) < 1e-6
