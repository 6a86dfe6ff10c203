"""HetLoRA (Cho et al., "Heterogeneous LoRA for Federated Fine-tuning of On-Device Foundation
Models", EMNLP 2024).

Mixed ranks: every client's factors are zero-padded to the server rank ``R`` and averaged. A
client of rank ``r`` starts from the first ``r`` columns of ``B`` and rows of ``A``. The paper's
local rank self-pruning happens on the client during training and is not part of this server
rule (there is no option for it).

Weights (the paper's sparsity-weighted aggregation, SPEC.md): per layer and round,
``w_i = ||dW_i||_F / sum_j ||dW_j||_F`` with ``dW_i = s_i B_i A_i`` the client's whole returned
adapter, scaling included (at equal ranks it cancels); computed from ``r x r`` products, never
densely; a zero update gets weight 0. Example counts ``n_i`` are ignored, as published; heads are
still averaged with ``p_i``. After a shared start the norms differ only by local drift, and a
client whose data is one-sided drifts most, so the weights favour the most skewed clients rather
than the largest (measured in docs/method.md).

Scaling: clients of different ranks have different scalings ``s_i`` (``alpha / r_i``). The state
holds ``s = sum_i w_i s_i`` and ``B = sum_i w_i (s_i / s) B_i`` (see
:func:`glora.aggregation.base.average_factors`); the readout rescales ``B`` by ``s / s_client``,
so a client's start ``s_client B_r A_r`` is the rank-``r`` truncation of the state's ``s B A``.
With one common scaling this is the published rule (the factors themselves are handed down).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from glora.errors import ConfigError, InvalidUpdateError

from . import linalg
from .base import ClientUpdate, FactorState, MethodConfig, average_factors, rank_option_problems
from .registry import MethodSpec, register_method


@dataclass
class HetLoRAConfig(MethodConfig):
    """Options of HetLoRA.

    Args:
        rank (`int`, *optional*): server rank ``R``, the rank the factors are zero-padded to and
            the largest rank the state can serve. Defaults to the largest client rank of the
            round. Set it to the largest rank of all clients when not every client takes part in
            every round: columns no participant has are then zero (a trainer re-initializes such
            zero rows of ``A``, or they never train).
    """

    rank: int | None = None

    def __post_init__(self) -> None:
        if problems := rank_option_problems(self.rank):
            raise ConfigError(problems)


def aggregate_hetlora(updates: list[ClientUpdate], p: list[float], config: HetLoRAConfig,
                      ) -> FactorState:
    """Norm-weighted average of the zero-padded factors; truncatable to every client rank.

    The weights ignore ``p`` (the paper weighs by update norm only); when every update is zero
    they fall back to ``p`` (the result is then zero in any case).
    """
    R = config.rank or max(u.rank for u in updates)
    for i, u in enumerate(updates):
        if u.rank > R:
            raise InvalidUpdateError(f"rank {u.rank} exceeds the server rank {R} (`rank` option).",
                                     i)
    norms = [u.scaling * float(linalg.product_norm(u.B, u.A)) for u in updates]
    total = sum(norms)
    w = [n / total for n in norms] if total > 0 else p
    padded = [ClientUpdate(F.pad(u.B, (0, R - u.rank)), F.pad(u.A, (0, 0, 0, R - u.rank)),
                           u.num_examples, u.scaling) for u in updates]
    B, A, s = average_factors(padded, w)
    return FactorState("hetlora", B, A, s, truncatable=True, info={"weights": w})


register_method(MethodSpec("hetlora", HetLoRAConfig, aggregate_hetlora, mixed_ranks=True,
                           paper="https://arxiv.org/abs/2401.06432"))
