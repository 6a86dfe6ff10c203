"""Low-rank linear algebra shared by the methods. Nothing here builds a ``d_out x d_in`` matrix.

Tall factors are processed in the input dtype; the small ``k x k`` cores are decomposed in
float64, which costs nothing at these sizes and keeps float32 results gauge-stable.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rtol_for(dtype: torch.dtype) -> float:
    """Relative threshold under which a singular value counts as zero."""
    return 1000.0 * torch.finfo(dtype).eps


def lowrank_svd(left: Tensor, right: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD of ``left @ right`` (``d_out x k`` times ``k x d_in``) without forming it.

    Thin QR of ``left`` and of ``right^T``, then the SVD of the ``k x k`` core.
    Returns ``U`` (``d_out x k``), ``S`` (``k``, descending), ``Vh`` (``k x d_in``).
    """
    dtype = left.dtype
    q_l, r_l = torch.linalg.qr(left)  # d_out x k, k x k
    q_r, r_r = torch.linalg.qr(right.mT)  # d_in x k, k x k
    core = r_l.double() @ r_r.double().mT
    p, s, th = torch.linalg.svd(core, full_matrices=False)
    return q_l @ p.to(dtype), s.to(dtype), th.to(dtype) @ q_r.mT


def factored_column_basis(B: Tensor, A: Tensor, rtol: float | None = None,
                          ) -> tuple[Tensor, Tensor, Tensor]:
    """Bases of the column and row spaces of ``B @ A`` as coordinates on the factors.

    Returns ``X`` (``r x k``), ``S`` (``k``, descending) and ``Y`` (``r x k``), float64, with
    ``B X`` and ``A^T Y`` orthonormal and ``B A = (B X) diag(S) (A^T Y)^T``: the singular value
    decomposition of ``B A``. Only these small matrices are kept, so a caller can rebuild a
    client's ``d x k`` bases when it needs them instead of holding all clients' at once.
    Directions whose singular value is below ``rtol`` times the largest are dropped (all of them
    when ``B A = 0``); the projectors ``(B X)(B X)^T`` do not depend on the gauge ``(B M, M^-1 A)``.

    Thin QR of ``B`` and ``A^T`` in float64 (:func:`triangular_factors`), SVD of the ``r x r`` core
    ``R_B R_A^T = P S T^T``; ``X = R_B^+ P``, since ``P`` lies in the range of ``R_B``,
    ``B X = Q_B P`` (likewise ``Y``).
    """
    return factored_column_bases([B], [A], rtol)[0]


def factored_column_bases(Bs: list[Tensor], As: list[Tensor], rtol: float | None = None,
                          ) -> list[tuple[Tensor, Tensor, Tensor]]:
    """:func:`factored_column_basis` of every ``(B_i, A_i)``, the small ``r x r`` work of the
    clients of one rank in batched calls: one client at a time, the overhead of its 40-odd small
    operations dominated (a 7B-shaped layer's 1,000 clients took 0.49 s one at a time, 0.26 s
    batched, with other work running)."""
    out: list[tuple[Tensor, Tensor, Tensor]] = [None] * len(Bs)  # type: ignore[list-item]
    ranks: dict[int, list[int]] = {}
    for i, B in enumerate(Bs):
        ranks.setdefault(B.shape[1], []).append(i)
    for idx in ranks.values():
        r_b = triangular_factors([Bs[i] for i in idx])  # g x r x r
        r_a = triangular_factors([As[i].mT for i in idx])
        P, S, Th = torch.linalg.svd(r_b @ r_a.mT)
        X, Y = _r_solve(r_b, P), _r_solve(r_a, Th.mT)
        tol = rtol_for(Bs[idx[0]].dtype) if rtol is None else rtol
        keep = (S > tol * S[:, :1]) & (S[:, :1] > 0)
        for j, i in enumerate(idx):
            k = keep[j]
            out[i] = (X[j][:, k], S[j][k], Y[j][:, k])
    return out


#: Cholesky QR (``R`` from the Cholesky factor of ``F^T F``: a matrix product instead of
#: Householder reflections, 3x faster on a 4096 x 8 factor) loses about ``eps64 * cond(F)^2`` of
#: orthogonality; :func:`triangular_factors` takes it where that stays below this share of the
#: factor's own rounding (float32: ``cond(F)`` up to about 2,000), Householder QR elsewhere
#: (float64 factors always).
CHOLESKY_SHARE = 0.01


def triangular_factors(factors: list[Tensor]) -> Tensor:
    """The ``r x r`` triangular factors ``R`` of thin QRs of ``factors`` (each ``d_i x r``, one
    dtype), stacked (``g x r x r``), in float64.

    Cholesky QR where a factor is well enough conditioned for its dtype
    (:data:`CHOLESKY_SHARE`; the condition is bounded above by ``||R||_F ||R^-1||_F``),
    Householder QR otherwise (ill-conditioned or rank-deficient factors, float64 input).
    """
    dtype = factors[0].dtype
    allowance = CHOLESKY_SHARE * torch.finfo(dtype).eps / torch.finfo(torch.float64).eps
    if allowance <= 1.0:
        return torch.stack([torch.linalg.qr(F.double(), mode="r")[1] for F in factors])
    grams = torch.stack([Fd.mT @ Fd for Fd in (F.double() for F in factors)])
    R, failed = torch.linalg.cholesky_ex(grams, upper=True)
    eye = torch.eye(R.shape[-1], dtype=R.dtype, device=R.device).expand_as(R)
    inverse = torch.linalg.solve_triangular(R, eye, upper=True)
    bound = R.square().sum((-2, -1)) * inverse.square().sum((-2, -1))  # >= cond(F)^2
    for i in torch.nonzero((failed != 0) | ~(bound <= allowance)).flatten().tolist():
        R[i] = torch.linalg.qr(factors[i].double(), mode="r")[1]
    return R


def _r_solve(r: Tensor, rhs: Tensor) -> Tensor:
    """``r^+ rhs`` for the triangular ``r`` of thin QRs (``g x k x k``, batched): triangular
    solves (10x cheaper) unless a diagonal entry shows an ``r`` singular to working precision
    (zero columns in a factor), whose pseudo-inverse is taken instead."""
    diag = r.diagonal(dim1=-2, dim2=-1).abs()
    singular = ~(diag.amin(-1) > rtol_for(r.dtype) * diag.amax(-1))
    out = torch.linalg.solve_triangular(r, rhs, upper=True)
    for i in torch.nonzero(singular).flatten().tolist():
        out[i] = torch.linalg.pinv(r[i]) @ rhs[i]
    return out


#: How :func:`split_factors` divides the singular values between ``B`` and ``A``.
SPLITS = ("symmetric", "published")


def split_factors(U: Tensor, S: Tensor, Vh: Tensor, rank: int, scaling: float,
                  split: str = "symmetric") -> tuple[Tensor, Tensor]:
    """LoRA factors of the best rank-``rank`` part of ``U diag(S) Vh``, with ``s B A`` equal to it.

    ``"symmetric"`` (GLoRA's readout): ``B = U_r S_r^(1/2) / sqrt(s)``, ``A = S_r^(1/2) Vh_r /
    sqrt(s)``, balanced factors. ``"published"`` (FlexLoRA's official code):
    ``B = U_r S_r / s``, ``A = Vh_r``, so ``A`` has orthonormal rows. If fewer than ``rank``
    directions exist, ``B`` gets zero columns and ``A`` zero rows (the product is unchanged; a
    trainer may re-initialize those rows of ``A``).
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"`rank` must be a positive integer, got {rank!r}.")
    if not scaling > 0:
        raise ValueError(f"`scaling` must be positive, got {scaling!r}.")
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
    k = min(rank, S.shape[0])
    S_r = S[:k].clamp_min(0) / scaling
    if split == "symmetric":
        b_scale = a_scale = S_r.sqrt()
    else:
        b_scale, a_scale = S_r, torch.ones_like(S_r)
    B = U.new_zeros(U.shape[0], rank)
    A = Vh.new_zeros(rank, Vh.shape[1])
    B[:, :k] = U[:, :k] * b_scale
    A[:k] = a_scale[:, None] * Vh[:k]
    return B, A


def project_average(W: Tensor, lefts: list[Tensor], rights: list[Tensor],
                    weights: list[float]) -> Tensor:
    """``W^T sum_i w_i L_i R_i`` (``q x d_in``, float64) for ``W`` (``d_out x q``), one term at a
    time.

    In float64: a client's factors may carry any gauge ``(B M, M^-1 A)``, and a product through
    an ill-conditioned ``M`` in float32 loses ``cond(M)`` times the dtype's precision (5x the
    rounding of the factors themselves at ``cond(M) = 100``); in float64 the result changes with
    the gauge only by that rounding.
    """
    out = torch.zeros(W.shape[1], rights[0].shape[1], dtype=torch.float64)
    Wd = W.double()
    for L, R, w in zip(lefts, rights, weights):
        out.addmm_(Wd.mT @ L.double(), R.double(), alpha=w)
    return out


def stack_factors(Bs: list[Tensor], As: list[Tensor], coefs: list[float]) -> tuple[Tensor, Tensor]:
    """``[c_1 B_1 ... c_N B_N]`` and ``[A_1; ...; A_N]``: their product is ``sum c_i B_i A_i``."""
    return torch.cat([c * B for c, B in zip(coefs, Bs)], dim=1), torch.cat(As, dim=0)


def product_norm(B: Tensor, A: Tensor) -> Tensor:
    """``||B A||_F`` from ``r x r`` products: ``||B A||_F^2 = trace((B^T B)(A A^T))``."""
    return ((B.mT @ B) * (A @ A.mT)).sum().clamp_min(0).sqrt()
