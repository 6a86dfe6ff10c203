"""Top eigenpairs of a symmetric positive semi-definite operator known only through products.

Block subspace iteration with a Rayleigh-Ritz step each iteration, from a seeded Gaussian start:
deterministic for a seed, and independent of how the operator is written down, so an operator
that does not depend on the clients' gauges (GLoRA's ``K``) gives gauge-independent eigenpairs up
to rounding. It stops once every wanted Ritz pair's residual ``||K v - lam v||`` is below
``tol * lam_1``, or after ``max_iter`` products.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class RitzPairs:
    """Ritz values (descending), their vectors (``d x q``, orthonormal) and how far they got."""

    values: Tensor  # q, float64
    vectors: Tensor  # d x q, float64
    residuals: Tensor  # q: ||K v_j - lam_j v_j||_2
    iterations: int


def top_eigenpairs(apply: Callable[[Tensor], Tensor], d: int, wanted: int, block: int, seed: int,
                   tol: float, max_iter: int) -> RitzPairs:
    """Ritz approximations of the top ``block`` eigenpairs of ``K`` (``apply(X) = K X`` for
    ``X`` of shape ``d x q``, float64); iterates until the top ``wanted`` residuals are at most
    ``tol * lam_1``."""
    g = torch.Generator().manual_seed(seed)
    X = torch.linalg.qr(torch.randn(d, block, generator=g, dtype=torch.float64))[0]
    for it in range(1, max_iter + 1):
        Y = apply(X)  # K X
        T = X.mT @ Y
        lam, W = torch.linalg.eigh((T + T.mT) / 2)
        lam, W = lam.flip(0), W.flip(1)
        V, KV = X @ W, Y @ W
        residuals = (KV - V * lam).norm(dim=0)
        top = float(lam[0]) if float(lam[0]) > 0 else 1.0
        if it == max_iter or bool((residuals[:wanted] <= tol * top).all()):
            return RitzPairs(lam, V, residuals, it)
        X = torch.linalg.qr(KV)[0]
    raise AssertionError("unreachable")  # the loop returns at max_iter
