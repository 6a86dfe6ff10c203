"""FLoRA (Wang et al., "FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous
Low-Rank Adaptations", NeurIPS 2024).

Stacking: ``L = [p_1 s_1 B_1, ..., p_N s_N B_N]`` (``d_out x sum r_i``) and
``R = [A_1; ...; A_N]``, so ``L @ R = sum_i p_i dW_i`` exactly, for any mixture of ranks. Every
client merges ``L @ R`` into its frozen weight and starts the next round from a fresh LoRA
initialization. Gauge-invariant; the download has rank ``sum r_i``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from . import linalg
from .base import ClientUpdate, LowRankState, MethodConfig
from .registry import MethodSpec, register_method


@dataclass
class FLoRAConfig(MethodConfig):
    """FLoRA has no options."""


@dataclass
class FLoRAState(LowRankState):
    """The stacked pair: merged into the frozen weight, with a fresh adapter every round."""

    fresh_adapter: ClassVar[bool] = True

    def readout(self, rank: int, scaling: float) -> None:
        return None

    def base_update(self) -> tuple[Tensor, Tensor]:
        return self.left, self.right


def aggregate_flora(updates: list[ClientUpdate], p: list[float], config: FLoRAConfig,
                    ) -> FLoRAState:
    """Stack the scaled factors (exact average in low-rank form)."""
    left, right = linalg.stack_factors([u.B for u in updates], [u.A for u in updates],
                                       [pi * u.scaling for pi, u in zip(p, updates)])
    return FLoRAState("flora", left, right, info={"rank": left.shape[1]})


register_method(MethodSpec("flora", FLoRAConfig, aggregate_flora, mixed_ranks=True,
                           paper="https://arxiv.org/abs/2409.05976"))
