"""GLoRA: gauge-aware low-rank server representation for federated LoRA (SPEC.md, "GLoRA").

Per layer and round:

1. client subspaces ``U_i`` = column basis of ``dW_i = s_i B_i A_i`` (factored; gauge-free);
2. consensus ``U_ref`` = top-``R`` eigenvectors of ``K = sum_i p_i U_i U_i^T``, found from the
   small Gram matrix of ``Z = [sqrt(p_1) U_1, ...]`` (``K`` itself is never formed);
3. core ``C = sum_i p_i s_i (U_ref^T B_i) A_i`` (``R x d_in``): the state is ``(U_ref, C)``,
   the update ``U_ref C`` is the projection of the exact average onto the consensus;
4. readout for rank ``r``: SVD of the small core, best rank-``r`` part of ``U_ref C``.

Two-sided variant: a right consensus ``V_ref`` from the row spaces of ``A_i`` and an ``R x R``
core ``sum_i p_i s_i (U_ref^T B_i)(A_i V_ref)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from glora.errors import ConfigError

from . import linalg
from .base import ClientUpdate, MethodConfig, ServerState
from .registry import MethodSpec, register_method

CONSENSUS = ("uniform", "energy")


@dataclass
class GLoRAConfig(MethodConfig):
    """Options of GLoRA.

    Args:
        rank (`int`, *optional*): server rank ``R``; defaults to the largest client rank.
            Capped at the numerical rank of ``K``.
        consensus (`str`, defaults to `"uniform"`): ``"uniform"`` is the paper's vote (each client
            direction weighs ``p_i``); ``"energy"`` weighs each direction by its share of the
            client's squared singular values (still gauge-invariant; SPEC.md says it roughly halves
            the projection error on shared subspaces).
        two_sided (`bool`, defaults to `False`): also take a right consensus from the row spaces.
        tie_rtol (`float`, *optional*): eigenvalues of ``K`` closer than ``tie_rtol * lambda_1``
            tie; defaults to the square root of the dtype's machine epsilon.
    """

    rank: int | None = None
    consensus: str = "uniform"
    two_sided: bool = False
    tie_rtol: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int)
                                      or self.rank < 1):
            problems.append(f"`rank` must be a positive integer or None, got {self.rank!r}.")
        if self.consensus not in CONSENSUS:
            problems.append(f"`consensus` must be one of {CONSENSUS}, got {self.consensus!r}.")
        if self.tie_rtol is not None and not self.tie_rtol >= 0:
            problems.append(f"`tie_rtol` must be non-negative, got {self.tie_rtol!r}.")
        if problems:
            raise ConfigError(problems)


@dataclass
class GLoRAState(ServerState):
    """``U`` (``d_out x R``, orthonormal), ``C`` (``R x d_in``, or ``R x R`` with ``V``)."""

    U: Tensor
    C: Tensor
    V: Tensor | None = None  # d_in x R, two-sided only

    def delta(self) -> Tensor:
        return self.U @ (self.C if self.V is None else self.C @ self.V.mT)

    def readout(self, rank: int, scaling: float) -> tuple[Tensor, Tensor]:
        P, S, Qh = torch.linalg.svd(self.C.double(), full_matrices=False)
        P, S, Qh = P.to(self.C.dtype), S.to(self.C.dtype), Qh.to(self.C.dtype)
        B, A = linalg.split_factors(self.U @ P, S, Qh, rank, scaling)
        return B, (A if self.V is None else A @ self.V.mT)


TieBreak = Callable[[Tensor], Tensor]


def consensus_subspace(bases: list[Tensor], coefs: list[Tensor], rank: int, tie_rtol: float,
                       tie_break: TieBreak) -> tuple[Tensor, dict]:
    """Top-``rank`` eigenvectors of ``K = sum_i U_i diag(c_i) U_i^T`` via the Gram matrix.

    ``Z = [U_1 diag(sqrt c_1), ...]``; eigenpairs ``(lam, v)`` of ``Z^T Z`` give ``K``'s
    eigenvectors ``Z v / sqrt(lam)``. Where eigenvalues tie across ``rank``, the tied block is
    ordered by ``tie_break(W)`` (an orthogonal matrix ranking the block's directions ``W``) so the
    choice is made from the updates, not from arithmetic noise.

    Returns ``U_ref`` (``d x R'``, ``R' <= rank``, capped at the numerical rank) and an info dict.
    """
    d = bases[0].shape[0]
    dtype = bases[0].dtype
    Z = torch.cat([U * c.sqrt() for U, c in zip(bases, coefs)], dim=1)  # d x m
    info: dict = {"requested_rank": rank}
    if Z.shape[1] == 0:
        info.update(rank=0, eigengap=0.0, eigenvalues=[], tie_broken=False)
        return Z.new_zeros(d, 0), info
    lam, vec = torch.linalg.eigh((Z.mT @ Z).double())
    lam, vec = lam.flip(0).clamp_min(0), vec.flip(1)
    numerical_rank = int((lam > linalg.rtol_for(dtype) * lam[0]).sum())
    R = min(rank, numerical_rank)
    tol = tie_rtol * float(lam[0])
    nxt = float(lam[R]) if R < lam.numel() else 0.0
    gap = (float(lam[R - 1]) - nxt) / float(lam[0])
    info.update(rank=R, eigenvalues=lam[: R + 1].tolist(), eigengap=gap, tie_broken=False,
                rank_capped=R < rank)

    lo, hi = R, R  # tied block [lo, hi) that straddles R
    if R < numerical_rank and float(lam[R - 1]) - float(lam[R]) <= tol:
        while lo > 0 and float(lam[lo - 1]) - float(lam[lo]) <= tol:
            lo -= 1
        while hi < numerical_rank and float(lam[hi - 1]) - float(lam[hi]) <= tol:
            hi += 1
    directions = Z @ (vec[:, :hi] / lam[:hi].sqrt()).to(dtype)  # d x hi, orthonormal up to noise
    if hi > R:
        order = tie_break(directions[:, lo:hi])
        directions = torch.cat([directions[:, :lo], directions[:, lo:hi] @ order[:, : R - lo]], 1)
        info.update(tie_broken=True, tied=(lo, hi))
    U_ref, r = torch.linalg.qr(directions[:, :R])
    return U_ref * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, 1.0), info


def _ranking(project: Callable[[Tensor], tuple[Tensor, Tensor]], rtol: float) -> TieBreak:
    """Order a tied block ``W`` by the SVD of ``W^T D`` (``D`` the exact average, factored).

    ``project(W)`` returns a pair whose product is ``W^T D``. Warns when the ranking ties too.
    """

    def tie_break(W: Tensor) -> Tensor:
        left, right = project(W)
        P, S, _ = linalg.lowrank_svd(left, right)
        m = W.shape[1]
        if P.shape[1] < m:  # the average has no component on some tied directions
            P = torch.linalg.qr(torch.cat([P, torch.eye(m, dtype=P.dtype)], 1))[0][:, :m]
        if S.numel() > 1 and bool(((S[:-1] - S[1:]) <= rtol * S[0].clamp_min(1e-30)).any()):
            warnings.warn("GLoRA: tied eigenvalues of K could not be ranked by the update either; "
                          "`U_ref` is not unique and gauge invariance may be lost. Change the "
                          "server `rank` to fall on an eigengap (see state.info['eigenvalues']).",
                          stacklevel=4)
        return P

    return tie_break


def aggregate_glora(updates: list[ClientUpdate], p: list[float], config: GLoRAConfig,
                    ) -> GLoRAState:
    """GLoRA's server step for one layer (see the module docstring)."""
    dtype = updates[0].B.dtype
    rank = config.rank or max(u.rank for u in updates)
    tie_rtol = torch.finfo(dtype).eps ** 0.5 if config.tie_rtol is None else config.tie_rtol
    L, Rt = linalg.stack_factors([u.B for u in updates], [u.A for u in updates],
                                 [pi * u.scaling for pi, u in zip(p, updates)])  # sum = exact avg

    left_bases, right_bases, coefs = [], [], []
    for pi, u in zip(p, updates):
        U, S, V = linalg.column_basis(u.B, u.A)
        if S.numel() == 0:
            continue  # a zero update has no directions; its weight stays in the core
        energy = S**2 / (S**2).sum() if config.consensus == "energy" else torch.ones_like(S)
        left_bases.append(U)
        right_bases.append(V)
        coefs.append(pi * energy)
    if not left_bases:
        d_out, d_in = updates[0].B.shape[0], updates[0].A.shape[1]
        info = {"rank": 0, "requested_rank": rank, "eigengap": 0.0, "eigenvalues": []}
        return GLoRAState("glora", L.new_zeros(d_out, 0), L.new_zeros(0, d_in), info=info)

    rtol = linalg.rtol_for(dtype)
    U_ref, info = consensus_subspace(left_bases, coefs, rank, tie_rtol,
                                     _ranking(lambda W: (W.mT @ L, Rt), rtol))
    core = (U_ref.mT @ L) @ Rt  # R x d_in
    if not config.two_sided:
        return GLoRAState("glora", U_ref, core, info=info)
    V_ref, right_info = consensus_subspace(right_bases, coefs, rank, tie_rtol,
                                           _ranking(lambda W: (W.mT @ Rt.mT, L.mT), rtol))
    info["right"] = right_info
    return GLoRAState("glora", U_ref, core @ V_ref, V_ref, info=info)


register_method(MethodSpec("glora", GLoRAConfig, aggregate_glora, mixed_ranks=True,
                           paper="Beyond Factor Aggregation: Gauge-Aware Low-Rank Server "
                                 "Representations for Federated LoRA"))
