"""FedSVD (Lee et al., "FedSVD: Adaptive Orthogonalization for Private Federated Learning with
LoRA", NeurIPS 2025).

Clients train only ``B`` against the server's ``A`` (frozen on the client, the same for all), so
``B = sum_i p_i B_i`` is exact for the product. The server then re-factorizes ``s B A`` by SVD,
in factored form (QR of ``s B`` and of ``A^T``, SVD of the ``r x r`` core; no ``d_out x d_in``
matrix): the new ``A = V_r^T`` has orthonormal rows and ``B = U_r S_r / s`` carries the rest,
so ``s B A`` is unchanged (the product has rank at most ``r``: nothing is truncated) while ``A``
adapts to the directions the clients' updates took. Round 1's ``A`` is the shared seeded init, as
FFA-LoRA's. Equal ranks only.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import linalg
from .base import (ClientUpdate, FactorState, SharedFactorOptions, average_factors,
                   check_shared_A)
from .registry import MethodSpec, StreamRule, register_method


@dataclass
class FedSVDConfig(SharedFactorOptions):
    """Options of FedSVD: ``rtol`` (:class:`~glora.aggregation.base.SharedFactorOptions`)
    bounds how far a client's ``A`` may differ from client 0's (clients must not train the
    server's ``A``)."""


def aggregate_fedsvd(updates: list[ClientUpdate], p: list[float], config: FedSVDConfig,
                     ) -> FactorState:
    """The averaged ``B`` times the shared ``A``, re-factorized with orthonormal rows of ``A``."""
    check_shared_A(updates, config.rtol, "FedSVD clients train `B` only, against the server's `A`")
    B, A, s = average_factors(updates, p)
    U, S, Vh = linalg.lowrank_svd(s * B.double(), A.double())
    r = A.shape[0]
    return FactorState("fedsvd", (U[:, :r] * S[:r] / s).to(B.dtype), Vh[:r].to(A.dtype), s,
                       info={"singular_values": S[:r].tolist()})


register_method(MethodSpec("fedsvd", FedSVDConfig, aggregate_fedsvd, mixed_ranks=False,
                           uploads=("B",), frozen=("A",), stream=StreamRule(shared=("A",)),
                           paper="https://arxiv.org/abs/2505.12805"))
