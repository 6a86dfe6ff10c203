"""LoRA-FAIR (Bian et al., "LoRA-FAIR: Federated LoRA Fine-Tuning with Aggregation and
Initialization Refinement", ICCV 2025).

``B``, ``A`` are averaged, then ``B`` is corrected to ``X = B + dB`` so that ``s X A`` best
matches the exact average ``D = sum_i p_i dW_i`` (SPEC.md's regularized least squares):

    min_X ||D - s X A||_F^2 + lam ||X - B||_F^2
    =>  X = (s D A^T + lam B) (s^2 A A^T + lam I)^-1,

with ``D A^T = sum_i p_i s_i B_i (A_i A^T)`` (``d_out x r``), so no ``d_out x d_in`` matrix is
built. Equal ranks only. (The paper states the objective with a similarity measure; this is the
least-squares form SPEC.md fixes.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from glora.errors import ConfigError

from .base import ClientUpdate, FactorState, MethodConfig, average_factors
from .registry import MethodSpec, register_method


@dataclass
class LoRAFAIRConfig(MethodConfig):
    """Options of LoRA-FAIR.

    Args:
        lam (`float`, defaults to `0.01`): ridge weight on the correction ``dB``, absolute, in the
            units of ``s^2 A A^T``. With PEFT's default init of ``A`` the diagonal of ``A A^T`` is
            about ``1/3``, so ``0.01`` is a light pull towards the plain average; ``0`` gives the
            pure least-squares correction (minimum-norm where ``A`` loses row rank).
    """

    lam: float = 0.01

    def __post_init__(self) -> None:
        if not self.lam >= 0:
            raise ConfigError(f"`lam` must be non-negative, got {self.lam!r}.")


def aggregate_lorafair(updates: list[ClientUpdate], p: list[float], config: LoRAFAIRConfig,
                       ) -> FactorState:
    """Averaged factors with the ridge-regularized least-squares correction of ``B``."""
    B, A, s = average_factors(updates, p)
    DAt = sum(pi * u.scaling * u.B @ (u.A @ A.mT) for pi, u in zip(p, updates))  # d_out x r
    gram = s**2 * (A @ A.mT).double() + config.lam * torch.eye(A.shape[0], dtype=torch.float64)
    X = (s * DAt + config.lam * B) @ torch.linalg.pinv(gram, hermitian=True).to(B.dtype)
    return FactorState("lorafair", X, A, s, info={"correction_norm": float((X - B).norm())})


register_method(MethodSpec("lorafair", LoRAFAIRConfig, aggregate_lorafair, mixed_ranks=False,
                           paper="https://arxiv.org/abs/2411.14961"))
