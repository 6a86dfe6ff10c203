"""FlexLoRA (Bai et al., "Federated Fine-tuning of Large Language Models under Heterogeneous
Tasks and Client Resources", NeurIPS 2024).

The server forms the exact average ``sum_i p_i dW_i`` and its SVD; a client of rank ``r`` gets
the best rank-``r`` truncation. Two paths give the same result:

- ``"factored"`` (default): thin QR of ``[p_i s_i B_i]`` and of ``[A_i^T]``, SVD of the small
  ``sum r_i x sum r_i`` core; no ``d_out x d_in`` matrix is built.
- ``"dense"``: build ``sum_i p_i dW_i`` and take ``torch.linalg.svd`` (as published).

The state keeps the best rank-``R`` approximation of the exact average (``R`` the server rank).
A client of rank ``r`` and scaling ``s`` gets, as the official code splits it (``split=
"published"``, default), ``B = U_r S_r / s`` and ``A = V_r^T`` (orthonormal rows of ``A``);
``split="symmetric"`` gives GLoRA's balanced ``S_r^(1/2)`` on each factor. The product
``s B A`` is the same either way; what differs is where the next round's training starts.
The exact paths compute in float64 and return the input dtype: the truncation amplifies
rounding by ``sigma_1 / (sigma_R - sigma_R+1)``, and float32 factors of a badly conditioned gauge
(``B M``, ``M^-1 A``) would otherwise make the result gauge-dependent at the 1e-4 level. The
randomized path takes its products in the factors' dtype, but on the clients' singular bases
(built in float64), which do not depend on the gauge.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from glora.errors import ConfigError

from . import linalg, subspace
from .base import ClientUpdate, LowRankState, RandomizedOptions, rank_option_problems
from .registry import MethodSpec, register_method

PATHS = ("factored", "dense", "randomized")


@dataclass
class FlexLoRAConfig(RandomizedOptions):
    """Options of FlexLoRA.

    Args:
        path (`str`, defaults to `"factored"`): ``"factored"`` (low-rank QR + small SVD),
            ``"dense"`` (the published dense SVD; for comparison and benchmarks) or
            ``"randomized"`` (the top-``R`` left singular vectors from GLoRA's seeded block
            Krylov solver on ``D D^T``, its products on the clients' singular bases in the
            factors' dtype, then the exact SVD of ``Q^T D``; options of
            :class:`~glora.aggregation.base.RandomizedOptions`).
        rank (`int`, *optional*): server rank ``R``: the state is the best rank-``R``
            approximation of the exact average. Defaults to the largest client rank.
        split (`str`, defaults to `"published"`): how a readout divides the singular values:
            ``"published"`` (``B = U_r S_r / s``, ``A = V_r^T``, the official code) or
            ``"symmetric"`` (``S_r^(1/2)`` on each factor, as GLoRA's readout).
    """

    path: str = "factored"
    rank: int | None = None
    split: str = "published"

    def __post_init__(self) -> None:
        problems = []
        if self.path not in PATHS:
            problems.append(f"`path` must be one of {PATHS}, got {self.path!r}.")
        if self.split not in linalg.SPLITS:
            problems.append(f"`split` must be one of {linalg.SPLITS}, got {self.split!r}.")
        problems += rank_option_problems(self.rank) + self.randomized_problems()
        if problems:
            raise ConfigError(problems)


def aggregate_flexlora(updates: list[ClientUpdate], p: list[float], config: FlexLoRAConfig,
                       ) -> LowRankState:
    """Best rank-``R`` approximation of the exact average; readout truncates it further."""
    dtype = updates[0].B.dtype
    rank = config.rank or max(u.rank for u in updates)
    if config.path == "randomized":
        return _randomized(updates, p, rank, config)
    left, right = linalg.stack_factors([u.B.double() for u in updates],
                                       [u.A.double() for u in updates],
                                       [pi * u.scaling for pi, u in zip(p, updates)])
    if config.path == "dense":
        U, S, Vh = torch.linalg.svd(left @ right, full_matrices=False)
    else:
        U, S, Vh = linalg.lowrank_svd(left, right)
    R = min(rank, S.shape[0])
    energy = float((S**2).sum())
    tail = float((S[R:] ** 2).sum()) / energy if energy > 0 else 0.0
    return LowRankState("flexlora", (U[:, :R] * S[:R]).to(dtype), Vh[:R].to(dtype), config.split,
                        info={"rank": R, "relative_truncation_error": tail**0.5})


def _randomized(updates: list[ClientUpdate], p: list[float], rank: int,
                config: FlexLoRAConfig) -> LowRankState:
    """Top-``rank`` truncation of the exact average ``D`` from Ritz vectors of ``D D^T``.

    ``D = U diag(c) V^T`` over the clients' own SVDs (``U``, ``V`` their singular bases, built in
    float64 and kept in the factors' dtype: gauge-free, so the products can be taken in that
    dtype, as GLoRA's are); the truncation is then the exact SVD of ``Q^T D``, client by client
    in float64. ``info`` reports the products, the largest relative residual, the Davis-Kahan
    bound on the subspace's angle (``subspace_error``) and the relative error of the update it
    implies (``error_estimate``, :func:`~glora.aggregation.subspace.projection_error`), as
    GLoRA's solver does.
    """
    dtype = updates[0].B.dtype
    d_out, d_in = updates[0].B.shape[0], updates[0].A.shape[1]
    svds = linalg.factored_column_bases([u.B for u in updates], [u.A for u in updates])
    m = sum(S.numel() for _, S, _ in svds)
    U, V = updates[0].B.new_empty(d_out, m), updates[0].A.new_empty(d_in, m)  # filled in place
    start = 0
    for u, (X, S, Y) in zip(updates, svds):
        U[:, start:start + S.numel()] = u.B.double() @ X
        V[:, start:start + S.numel()] = u.A.double().mT @ Y
        start += S.numel()
    c = torch.cat([pi * u.scaling * S for pi, u, (_, S, _) in zip(p, updates, svds)])
    c = c.to(dtype)[:, None]
    block = min(m, d_out, d_in, rank + config.oversample)
    R = min(rank, block)
    if R == 0:  # every update is zero
        return LowRankState("flexlora", updates[0].B.new_zeros(d_out, 0),
                            updates[0].A.new_zeros(0, d_in), config.split, info={"rank": 0})

    def apply(X: Tensor) -> Tensor:  # D D^T X in the factors' dtype
        return (U @ (c * (V.mT @ (V @ (c * (U.mT @ X.to(dtype))))))).double()

    tol = max(config.solver_tol, subspace.PRODUCT_ULPS * torch.finfo(dtype).eps)
    pairs = subspace.top_eigenpairs(apply, d_out, R, block, config.seed, tol, config.max_iter,
                                    inner=2 * m)  # D D^T X: products with U and V
    Q = pairs.vectors[:, :R]
    core = linalg.project_average(Q, [u.B for u in updates], [u.A for u in updates],
                                  [pi * u.scaling for pi, u in zip(p, updates)])  # Q^T D
    P, S, Vh = torch.linalg.svd(core, full_matrices=False)
    top = float(pairs.values[0]) if float(pairs.values[0]) > 0 else 1.0
    norms = sum(pi * u.scaling * float(S_i.norm()) for pi, u, (_, S_i, _) in zip(p, updates, svds))
    sine = pairs.sine(R)
    return LowRankState("flexlora", ((Q @ P) * S).to(dtype), Vh.to(dtype), config.split,
                        info={"rank": R, "iterations": pairs.iterations,
                              "residual": float(pairs.residuals[:R].max()) / top,
                              "subspace_error": sine, "error_estimate": subspace.projection_error(
                                  sine, norms, float(S.norm()), dtype)})


register_method(MethodSpec("flexlora", FlexLoRAConfig, aggregate_flexlora, mixed_ranks=True,
                           paper="https://arxiv.org/abs/2402.11505"))
