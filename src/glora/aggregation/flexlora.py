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
Both paths compute in float64 and return the input dtype: the truncation amplifies rounding by
``sigma_1 / (sigma_R - sigma_R+1)``, and float32 factors of a badly conditioned gauge (``B M``,
``M^-1 A``) would otherwise make the result gauge-dependent at the 1e-4 level.
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
            ``"randomized"`` (the top-``R`` left singular vectors by a seeded subspace iteration
            on ``D D^T`` in factored form, then the exact SVD of ``U^T D``; the same solver as
            GLoRA's, with the options of :class:`~glora.aggregation.base.RandomizedOptions`).
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
    left, right = linalg.stack_factors([u.B.double() for u in updates],
                                       [u.A.double() for u in updates],
                                       [pi * u.scaling for pi, u in zip(p, updates)])
    rank = config.rank or max(u.rank for u in updates)
    if config.path == "randomized":
        return _randomized(left, right, rank, config, dtype)
    if config.path == "dense":
        U, S, Vh = torch.linalg.svd(left @ right, full_matrices=False)
    else:
        U, S, Vh = linalg.lowrank_svd(left, right)
    R = min(rank, S.shape[0])
    energy = float((S**2).sum())
    tail = float((S[R:] ** 2).sum()) / energy if energy > 0 else 0.0
    return LowRankState("flexlora", (U[:, :R] * S[:R]).to(dtype), Vh[:R].to(dtype), config.split,
                        info={"rank": R, "relative_truncation_error": tail**0.5})


def _randomized(left: Tensor, right: Tensor, rank: int, config: FlexLoRAConfig,
                dtype: torch.dtype) -> LowRankState:
    """Top-``rank`` truncation of ``D = left @ right`` from Ritz vectors of ``D D^T``."""
    d_out, k = left.shape
    block = min(k, d_out, right.shape[1], rank + config.oversample)
    R = min(rank, block)
    pairs = subspace.top_eigenpairs(lambda X: left @ (right @ (right.mT @ (left.mT @ X))), d_out,
                                    R, block, config.seed, config.solver_tol, config.max_iter)
    Q = pairs.vectors[:, :R]
    P, S, Vh = torch.linalg.svd((Q.mT @ left) @ right, full_matrices=False)  # R x d_in
    top = float(pairs.values[0]) if float(pairs.values[0]) > 0 else 1.0
    return LowRankState("flexlora", ((Q @ P) * S).to(dtype), Vh.to(dtype), config.split,
                        info={"rank": R, "iterations": pairs.iterations,
                              "residual": float(pairs.residuals[:R].max()) / top})


register_method(MethodSpec("flexlora", FlexLoRAConfig, aggregate_flexlora, mixed_ranks=True,
                           paper="https://arxiv.org/abs/2402.11505"))
