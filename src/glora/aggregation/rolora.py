"""RoLoRA (Chen et al., "Robust Federated Finetuning of LLMs via Alternating Optimization of
LoRA", NeurIPS 2025).

Clients train one factor per round and keep the other frozen at the server's copy, alternating
(the server names the frozen factor in each task). Here ``B`` goes first: with PEFT's init (``B``
zero, ``A`` the shared seeded init) a round that trained ``A`` first would see zero gradients;
then ``A`` in round 2, ``B`` in round 3, and so on. With the other factor common to every
client, averaging the trained one is exact: ``s (sum p_i B_i) A = sum p_i s B_i A``. The server checks that one factor is indeed shared, and
clients upload only the factor they trained. Equal ranks only.
"""

from __future__ import annotations

from dataclasses import dataclass

from glora.errors import InvalidUpdateError

from .base import ClientUpdate, FactorState, SharedFactorOptions, average_factors, unshared
from .registry import MethodSpec, StreamRule, register_method


@dataclass
class RoLoRAConfig(SharedFactorOptions):
    """Options of RoLoRA: ``rtol`` (:class:`~glora.aggregation.base.SharedFactorOptions`)
    bounds how far the frozen factor may differ between clients."""


def aggregate_rolora(updates: list[ClientUpdate], p: list[float], config: RoLoRAConfig,
                     ) -> FactorState:
    """Average the trained factor against the shared frozen one (both averages: the frozen
    factor's is itself)."""
    if unshared(updates, "A", config.rtol) and unshared(updates, "B", config.rtol):
        raise InvalidUpdateError("neither `A` nor `B` is the same for every client; RoLoRA clients "
                                 "train one factor per round and keep the other at the server's.")
    B, A, s = average_factors(updates, p)
    return FactorState("rolora", B, A, s)


register_method(MethodSpec("rolora", RoLoRAConfig, aggregate_rolora, mixed_ranks=False,
                           alternate=(("A",), ("B",)), stream=StreamRule(one_shared=True),
                           paper="https://arxiv.org/abs/2502.01755"))
