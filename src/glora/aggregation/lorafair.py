"""LoRA-FAIR (Bian et al., "LoRA-FAIR: Federated LoRA Fine-Tuning with Aggregation and
Initialization Refinement", ICCV 2025).

``B``, ``A`` are averaged, then ``B`` is corrected to ``B + dB`` so that ``s (B + dB) A`` best
matches the exact average ``D = sum_i p_i dW_i``. The paper scores the match by cosine similarity
plus ``lambda ||dB||`` (``lambda = 0.01``); this implementation uses the regularized least
squares SPEC.md allows, with ``lambda`` scaled to the data term:

    min_dB ||E - s dB A||_F^2 + lam m ||dB||_F^2,   E = D - s B A,   m = trace(s^2 A A^T) / r
    =>  dB = s E A^T (s^2 A A^T + lam m I)^-1,

``m`` being the mean eigenvalue of the data term's curvature ``s^2 A A^T``. So ``lam`` is relative
(``0.01``: the ridge is 1% of that mean curvature) and the update does not depend on the scale of
the factors (clients sending ``(B_i / k, k A_i)`` get the same ``s (B + dB) A``). An absolute
``lam`` would: at PEFT's init (``A A^T ~ I/3``, ``s = 2``) ``0.01`` is 0.75% of the curvature's
diagonal, and it vanishes or dominates as ``A`` grows or shrinks.
``E A^T = sum_i p_i s_i B_i (A_i A^T) - s B (A A^T)``
(``d_out x r``), so no ``d_out x d_in`` matrix is built. Equal ranks only.
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
        lam (`float`, defaults to `0.01`): ridge weight on the correction ``dB``, relative to the
            data term: the ridge is ``lam`` times the mean eigenvalue of ``s^2 A A^T``. ``0.01``
            is a light pull towards the plain average; ``0`` gives the pure least-squares
            correction (minimum-norm ``dB`` where ``A`` loses row rank).
    """

    lam: float = 0.01

    def __post_init__(self) -> None:
        if not self.lam >= 0:
            raise ConfigError(f"`lam` must be non-negative, got {self.lam!r}.")


def aggregate_lorafair(updates: list[ClientUpdate], p: list[float], config: LoRAFAIRConfig,
                       ) -> FactorState:
    """Averaged factors with the scaled ridge least-squares correction of ``B``."""
    B, A, s = average_factors(updates, p)
    curvature = s**2 * (A @ A.mT).double()  # r x r
    EAt = sum(pi * u.scaling * u.B @ (u.A @ A.mT) for pi, u in zip(p, updates)) \
        - s * B @ (A @ A.mT)  # d_out x r
    ridge = config.lam * float(curvature.trace()) / A.shape[0]
    gram = curvature + ridge * torch.eye(A.shape[0], dtype=torch.float64)
    dB = s * EAt @ torch.linalg.pinv(gram, hermitian=True).to(B.dtype)
    return FactorState("lorafair", B + dB, A, s,
                       info={"correction_norm": float(dB.norm()), "ridge": ridge})


register_method(MethodSpec("lorafair", LoRAFAIRConfig, aggregate_lorafair, mixed_ranks=False,
                           paper="https://arxiv.org/abs/2411.14961"))
