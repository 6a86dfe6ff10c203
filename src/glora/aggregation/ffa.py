"""FFA-LoRA (Sun et al., "Improving LoRA in Privacy-preserving Federated Learning", ICLR 2024).

Every client keeps ``A`` frozen at the same seeded initialization and trains only ``B``, so the
average ``B = sum_i p_i B_i`` is exact: ``s B A = sum_i p_i dW_i``. The server checks that the
``A_i`` really agree (a client that trained ``A``, or used another seed, would silently break the
exactness). Equal ranks only.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import (ClientUpdate, FactorState, SharedFactorOptions, average_factors,
                   check_shared_A)
from .registry import MethodSpec, StreamRule, register_method


@dataclass
class FFAConfig(SharedFactorOptions):
    """Options of FFA-LoRA: ``rtol`` (:class:`~glora.aggregation.base.SharedFactorOptions`)
    bounds how far a client's ``A`` may differ from client 0's."""


def aggregate_ffa(updates: list[ClientUpdate], p: list[float], config: FFAConfig) -> FactorState:
    """``B = sum_i p_i (s_i / s) B_i`` with the shared frozen ``A`` (:func:`average_factors`)."""
    check_shared_A(updates, config.rtol, "FFA-LoRA needs every client to keep `A` frozen at the "
                                         "same seeded initialization")
    B, A, s = average_factors(updates, p)
    return FactorState("ffa", B, A, s)


register_method(MethodSpec("ffa", FFAConfig, aggregate_ffa, mixed_ranks=False, uploads=("B",),
                           frozen=("A",), stream=StreamRule(shared=("A",)),
                           paper="https://arxiv.org/abs/2403.12313"))
