"""FedEx-LoRA (Singhal et al., "FedEx-LoRA: Exact Aggregation for Federated and Efficient
Fine-Tuning of Foundation Models", arXiv 2410.09432).

``B``, ``A`` are averaged; the dense residual ``sum_i p_i dW_i - s B A`` (``d_out x d_in``) is
folded into every client's frozen weight, so adapter plus residual is the exact average.
Equal ranks only. The residual is in ``nn.Linear`` orientation (``d_out x d_in``); one public
implementation transposes it, which is only right for GPT-2 ``Conv1D`` layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import linalg
from .base import ClientUpdate, FactorState, MethodConfig, average_factors
from .registry import MethodSpec, register_method


@dataclass
class FedExConfig(MethodConfig):
    """FedEx-LoRA has no options."""


@dataclass
class FedExState(FactorState):
    """Averaged factors plus the dense residual; :meth:`delta` is the exact average."""

    residual: Tensor = field(kw_only=True)  # d_out x d_in

    def delta(self) -> Tensor:
        return super().delta() + self.residual

    def factors(self) -> tuple[Tensor, Tensor]:
        """``[s B, residual] [A; I]``: the residual is dense, as published."""
        L, R = super().factors()
        eye = torch.eye(R.shape[1], dtype=R.dtype, device=R.device)
        return torch.cat([L, self.residual], 1), torch.cat([R, eye], 0)

    def base_update(self) -> Tensor:
        return self.residual


def aggregate_fedex(updates: list[ClientUpdate], p: list[float], config: FedExConfig,
                    ) -> FedExState:
    """Factor average plus the dense residual (built densely, as published)."""
    B, A, s = average_factors(updates, p)
    left, right = linalg.stack_factors([u.B for u in updates], [u.A for u in updates],
                                       [pi * u.scaling for pi, u in zip(p, updates)])
    return FedExState("fedex", B, A, s, residual=left @ right - s * B @ A)


register_method(MethodSpec("fedex", FedExConfig, aggregate_fedex, mixed_ranks=False,
                           paper="https://arxiv.org/abs/2410.09432"))
