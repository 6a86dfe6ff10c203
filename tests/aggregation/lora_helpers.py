"""Shared helpers of the aggregation tests: random clients, gauges, dense references, and a
recorder of every tensor shape torch creates (to prove a method builds no dense matrix)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import glora

D_OUT, D_IN = 24, 17


def make_clients(ranks: Sequence[int] = (2, 4, 3), *, d_out: int = D_OUT, d_in: int = D_IN,
                 dtype: torch.dtype = torch.float64, seed: int = 0, alpha: float = 8.0,
                 shared_A: bool = False) -> list[glora.ClientUpdate]:
    """Random clients with scaling ``alpha / r`` and unequal ``num_examples``.

    ``shared_A`` gives every client the same ``A`` (a frozen seeded init, as in FFA-LoRA).
    """
    gen = torch.Generator().manual_seed(seed)
    A0 = torch.randn(max(ranks), d_in, dtype=dtype, generator=gen)
    ups = []
    for i, r in enumerate(ranks):
        B = torch.randn(d_out, r, dtype=dtype, generator=gen)
        A = A0[:r].clone() if shared_A else torch.randn(r, d_in, dtype=dtype, generator=gen)
        ups.append(glora.ClientUpdate(B, A, 10 + 7 * i, alpha / r))
    return ups


def gauge(r: int, cond: float, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """A random invertible ``r x r`` matrix ``Q1 diag(logspace(0, log10 cond)) Q2``."""
    q1, _ = torch.linalg.qr(torch.randn(r, r, dtype=torch.float64, generator=gen))
    q2, _ = torch.linalg.qr(torch.randn(r, r, dtype=torch.float64, generator=gen))
    s = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), r, dtype=torch.float64)
    return (q1 @ torch.diag(s) @ q2).to(dtype)


def regauge(ups: Sequence[glora.ClientUpdate], cond: float, seed: int = 1,
            ) -> list[glora.ClientUpdate]:
    """The same updates, each refactored as ``(B M_i, M_i^-1 A)`` with its own random ``M_i``."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for u in ups:
        M = gauge(u.rank, cond, torch.float64, gen)
        B, A = u.B.double() @ M, torch.linalg.solve(M, u.A.double())
        out.append(glora.ClientUpdate(B.to(u.B.dtype), A.to(u.A.dtype), u.num_examples, u.scaling))
    return out


def probabilities(ups: Sequence[glora.ClientUpdate]) -> list[float]:
    n = sum(u.num_examples for u in ups)
    return [u.num_examples / n for u in ups]


def exact_average(ups: Sequence[glora.ClientUpdate]) -> torch.Tensor:
    """Dense ``sum_i p_i s_i B_i A_i`` in float64."""
    return sum(p * u.delta().double() for p, u in zip(probabilities(ups), ups))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Frobenius distance of ``a`` from ``b``."""
    return float((a.double() - b.double()).norm() / b.double().norm())


def best_rank(M: torch.Tensor, r: int) -> torch.Tensor:
    """Best rank-``r`` approximation (dense SVD; the reference the methods must match)."""
    U, S, Vh = torch.linalg.svd(M.double(), full_matrices=False)
    return U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]


class ShapeRecorder(TorchDispatchMode):
    """Records the shape of every tensor any torch op outputs while active.

    >>> with ShapeRecorder() as rec:
    ...     _ = torch.ones(2, 3) @ torch.ones(3, 4)
    >>> rec.created((2, 4))
    True
    """

    def __init__(self) -> None:
        super().__init__()
        self.shapes: set[tuple[int, ...]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.shapes.update(tuple(t.shape) for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out

    def created(self, *shapes: tuple[int, ...]) -> bool:
        """Whether a tensor of any of ``shapes`` was created."""
        return any(tuple(s) in self.shapes for s in shapes)
