"""FedIT (Zhang et al., "Towards Building the FederatedGPT", ICASSP 2024): average the factors.

``B = sum_i p_i B_i``, ``A = sum_i p_i A_i``. Gauge-dependent; equal ranks only.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import ClientUpdate, FactorState, MethodConfig
from .registry import MethodSpec, StreamRule, register_method


@dataclass
class FedITConfig(MethodConfig):
    """FedIT has no options."""


def aggregate_fedit(updates: list[ClientUpdate], p: list[float], config: FedITConfig) -> FactorState:
    B = sum(pi * u.B for pi, u in zip(p, updates))
    A = sum(pi * u.A for pi, u in zip(p, updates))
    scaling = sum(pi * u.scaling for pi, u in zip(p, updates))
    return FactorState("fedit", B, A, scaling)


register_method(MethodSpec("fedit", FedITConfig, aggregate_fedit, mixed_ranks=False,
                           stream=StreamRule(scaled_B=False),
                           paper="https://arxiv.org/abs/2305.05644"))
