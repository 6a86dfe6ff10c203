"""Top eigenpairs of a symmetric positive semi-definite operator known only through products.

Restarted block Krylov with Rayleigh-Ritz, from a seeded Gaussian start: a cycle applies ``K``
up to ``depth`` times to build the orthonormal basis of ``[X, K X, ..., K^(depth-1) X]``, takes the
Ritz pairs of ``K`` on the basis so far as often as :data:`CHECK_SHARE` allows and at the
cycle's end (the products are kept, so no product is spent on the Ritz step), stops as soon as
they converge, and otherwise restarts from the top ``block`` Ritz vectors. Over a Krylov space, the error in a direction falls
with the square root of the relative eigengap where subspace iteration's (``depth = 1``) falls
with the gap itself, so small gaps (GLoRA's uniform vote) take far fewer products.
Deterministic for a seed, and independent of how the operator is written down, so an operator
that does not depend on the clients' gauges (GLoRA's ``K``) gives gauge-independent eigenpairs up
to rounding. It stops once every wanted Ritz pair's residual ``||K v - lam v||`` is below
``tol * lam_1``, or after ``max_iter`` products.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

#: Blocks of the Krylov basis per cycle (products with ``K`` between restarts). Measured on
#: GLoRA's ``K`` (d = 768-1024, N = 10-100, R = 8-16, float64): depth 4 took 28-112 products,
#: 8 took 5-56, 16 took 5-32; plain subspace iteration (one block) did not converge in 400 on
#: the smaller gaps. The basis holds ``depth * block`` vectors of length ``d``.
DEPTH = 8
#: Products taken in float32 (half the time of float64; GLoRA's and FlexLoRA's, on orthonormal
#: client bases) leave Ritz residuals of about one epsilon (measured 1e-8 to 4e-8 of lambda_1 on
#: 1,000 float32 clients): callers stop at their tolerance or this many epsilons of the products'
#: dtype, whichever is larger, and report the residuals reached.
PRODUCT_ULPS = 10.0


@dataclass(frozen=True)
class RitzPairs:
    """Ritz values (descending), their vectors (``d x q``, orthonormal) and how far they got."""

    values: Tensor  # q, float64
    vectors: Tensor  # d x q, float64
    residuals: Tensor  # q: ||K v_j - lam_j v_j||_2
    iterations: int  # products with K (each of one block)

    def gap(self, wanted: int) -> float:
        """The eigengap after the top ``wanted`` pairs, net of the next pair's residual (its
        eigenvalue is within that of its Ritz value). Where no pair follows, the block held the
        operator's whole range (callers want fewer pairs than the block otherwise): the next
        eigenvalue is 0."""
        nxt = (float(self.values[wanted].clamp_min(0)) + float(self.residuals[wanted])
               if wanted < self.values.numel() else 0.0)
        return float(self.values[wanted - 1].clamp_min(0)) - nxt

    def sine(self, wanted: int) -> float:
        """Davis-Kahan bound on the sine of the largest angle between the top ``wanted`` Ritz
        vectors' span and ``K``'s top-``wanted`` eigenspace: ``||residuals||_F / gap``, at most 1
        (no bound without a gap). A bound as far as :meth:`gap` is: it takes the next eigenvalue
        from the next Ritz pair, so an eigenvalue the Krylov space missed entirely escapes it."""
        gap = self.gap(wanted)
        return min(float(self.residuals[:wanted].norm()) / gap, 1.0) if gap > 0 else 1.0


#: The error estimate's allowance for rounding the result to the factors' dtype, in machine
#: epsilons: the exact and randomized updates each end in that dtype, and in float32 they were
#: measured up to 5 epsilons apart where the solver's own bound was 1e-8 or less.
ROUNDING_ULPS = 100.0


def projection_error(sine: float, norm_bound: float, size: float, dtype: torch.dtype) -> float:
    """A bound on the relative error of ``P' D`` against ``P D`` (``P``, ``P'`` orthogonal
    projectors on subspaces at most ``sine`` apart, ``||D||_F <= norm_bound``, ``||P' D||_F =
    size``): ``||(P' - P) D|| <= sine ||D||``, plus :data:`ROUNDING_ULPS` of the dtype."""
    bound = sine * norm_bound / size if size > 0 else 0.0
    return bound + ROUNDING_ULPS * torch.finfo(dtype).eps


def _extend(basis: Tensor, Y: Tensor) -> Tensor:
    """An orthonormal basis of the part of ``Y``'s span outside ``basis`` (columns orthonormal),
    by two rounds of block Gram-Schmidt; directions that were (numerically) inside it are
    dropped, so the result may have fewer columns, or none once the Krylov space is exhausted."""
    scale = float(Y.norm(dim=0).max()) if Y.numel() else 0.0
    for _ in range(2):
        Y = Y - basis @ (basis.mT @ Y)
    U, S, _ = torch.linalg.svd(Y, full_matrices=False)
    return U[:, S > 1e-10 * max(scale, 1e-300)]


#: Share of the products' work a convergence check may add. A check over a basis of ``n``
#: columns costs about ``3 d n q`` float64 flops (the new column block of ``basis^T K basis``,
#: and the Ritz vectors read), a product about ``2 d m q`` in float64 terms for an operator of
#: inner size ``m`` (float32 products). A check is taken once the products since the last one did
#: at least ``1 / CHECK_SHARE`` times its work, and always at the end of a cycle. Against checks
#: at the cycle's end only (``CHECK_SHARE = 0``), benchmarks/results/krylov_checks.md measured
#: 0.83x the time with a wide gap and 0.93x-1.11x in a bulk.
CHECK_SHARE = 0.25


def top_eigenpairs(apply: Callable[[Tensor], Tensor], d: int, wanted: int, block: int, seed: int,
                   tol: float, max_iter: int, depth: int = DEPTH,
                   next_fraction: float | None = None, *, inner: int) -> RitzPairs:
    """Ritz approximations of the top ``block`` eigenpairs of ``K`` (``apply(X) = K X`` for
    ``X`` of shape ``d x q``, float64); iterates until the top ``wanted`` residuals are at most
    ``tol * lam_1``, or ``max_iter`` products were taken.

    With ``next_fraction``, the pair after the wanted ones must also be known, to within
    ``next_fraction`` of its distance from the last wanted one (or to ``tol``), so that the gap
    after them is known to that fraction: its eigenvector is not wanted, and where it sits in a
    bulk of close eigenvalues resolving it to ``tol`` took most of the products (56 against 8 on
    GLoRA's ``K`` of rank-8 clients at R = 8, relative gap 0.97).

    ``inner`` is the operator's inner size (a product costs about ``d * inner`` flops a column):
    convergence is checked as often as :data:`CHECK_SHARE` allows.
    """
    if depth < 2:
        raise ValueError(f"`depth` must be at least 2 (one block does not move), got {depth}.")
    g = torch.Generator().manual_seed(seed)
    X = torch.linalg.qr(torch.randn(d, block, generator=g, dtype=torch.float64))[0]
    products = since = 0  # products in all, and since the last check
    while True:
        blocks, images = [X], []
        T = X.new_empty(0, 0)  # basis^T K basis, grown by a column block per product
        for j in range(depth):
            images.append(apply(blocks[j]))
            products += 1
            since += 1
            basis = torch.cat(blocks, 1)
            T = _grown(T, basis.mT @ images[-1])
            last = j + 1 == depth or products >= max_iter
            nxt = None if last else _extend(basis, images[-1])
            exhausted = nxt is not None and nxt.shape[1] == 0  # its Ritz pairs are exact
            if last or exhausted or 3 * basis.shape[1] <= CHECK_SHARE * since * 2 * inner:
                since = 0
                ritz = _Ritz(basis, torch.cat(images, 1), T, block)
                if products >= max_iter or ritz.converged(wanted, tol, next_fraction):
                    return ritz.pairs(products)
            if nxt is None or exhausted:
                break
            blocks.append(nxt)
        X = ritz.vectors()  # restart from the top `block` Ritz vectors


def _grown(T: Tensor, column: Tensor) -> Tensor:
    """``T`` (``n x n``) with the column block ``column`` (``(n + k) x k``: the basis so far against
    the new image) appended, and its transpose as the new row block (``K`` is symmetric)."""
    n, k = T.shape[0], column.shape[1]
    out = T.new_empty(n + k, n + k)
    out[:n, :n] = T
    out[:, n:] = column
    out[n:, :n] = column[:n].mT
    return out


class _Ritz:
    """The top ``block`` Ritz pairs of ``K`` on ``basis`` (``image = K basis``, ``T = basis^T
    image``), taken inside a cycle as well as at its end: a wide gap converges in fewer products
    than a cycle holds. ``T`` grows by a column block a product, and a convergence check builds
    only the Ritz vectors it reads (the wanted ones and the next): ``O(d n q)`` for a basis of
    ``n`` columns."""

    def __init__(self, basis: Tensor, image: Tensor, T: Tensor, block: int) -> None:
        lam, W = torch.linalg.eigh((T + T.mT) / 2)
        self.basis, self.image = basis, image
        self.lam, self.W = lam.flip(0)[:block], W.flip(1)[:, :block]

    def _residuals(self, count: int) -> tuple[Tensor, Tensor]:
        W = self.W[:, :count]
        V = self.basis @ W
        return V, (self.image @ W - V * self.lam[:count]).norm(dim=0)

    def converged(self, wanted: int, tol: float, next_fraction: float | None) -> bool:
        """Whether the top ``wanted`` residuals are at most ``tol * lam_1`` and, with
        ``next_fraction``, the next pair's is within that fraction of the gap before it."""
        lam = self.lam
        if lam.numel() < wanted:
            return False
        check = wanted + 1 if next_fraction is not None and wanted < lam.numel() else wanted
        residuals = self._residuals(check)[1]
        top = float(lam[0]) if float(lam[0]) > 0 else 1.0
        if not bool((residuals[:wanted] <= tol * top).all()):
            return False
        if check > wanted:
            gap = float(lam[wanted - 1] - lam[wanted])
            return float(residuals[wanted]) <= max(tol * top, next_fraction * gap)
        return True

    def vectors(self) -> Tensor:
        return self.basis @ self.W

    def pairs(self, products: int) -> RitzPairs:
        V, residuals = self._residuals(self.lam.numel())
        return RitzPairs(self.lam, V, residuals, products)
