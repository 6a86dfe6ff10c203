"""FedSA-LoRA (Guo et al., "Selective Aggregation for Low-Rank Adaptation in Federated Learning",
ICLR 2025).

Only the ``A`` factors are shared: ``A = sum_i p_i A_i``; each client keeps its own ``B`` and
classification head (personalization). Equal ranks only.

The state also carries ``B = sum_i p_i B_i`` so that a *global* model exists for global
evaluation; it is never sent to clients (``local=("B", "head")``). The paper's numbers are
personalized (global ``A`` with each client's own ``B``): report the two separately.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import ClientUpdate, FactorState, MethodConfig, average_factors
from .registry import MethodSpec, StreamRule, register_method


@dataclass
class FedSAConfig(MethodConfig):
    """FedSA-LoRA has no options."""


def aggregate_fedsa(updates: list[ClientUpdate], p: list[float], config: FedSAConfig,
                    ) -> FactorState:
    """Shared ``A`` average; ``B`` averaged for global evaluation only."""
    B, A, s = average_factors(updates, p)
    return FactorState("fedsa", B, A, s, info={"B": "average for global evaluation only"})


register_method(MethodSpec("fedsa", FedSAConfig, aggregate_fedsa, mixed_ranks=False,
                           uploads=("A",), local=("B", "head"), stream=StreamRule(),
                           paper="https://arxiv.org/abs/2410.01463"))
