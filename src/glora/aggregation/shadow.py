"""Shadow aggregates of one layer: how far a method's update is from the exact average of the
same replies and from its best rank-``R`` truncation (FlexLoRA's result), in factored form.

The exact average is ``D = sum_i p_i s_i B_i A_i`` (stacked factors), the best rank-``R``
approximation is its truncated SVD from a QR of each side and the SVD of the small core, and a
state's update is its :meth:`~glora.aggregation.base.ServerState.factors`. A squared distance
``||L1 R1 - L2 R2||_F^2`` is ``trace(([L1, -L2]^T [L1, -L2]) ([R1; R2] [R1; R2]^T))``: no
``d_out x d_in`` matrix is built (FedEx-LoRA's dense residual aside). It is computed in float64;
the trace form cancels, so a distance that is exactly zero reads as about ``1e-8`` relative.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import linalg
from .base import ClientUpdate, ServerState, weights


def _squared(left: Tensor, right: Tensor) -> float:
    return float(linalg.product_norm(left, right)) ** 2


def _difference(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> float:
    """``||a_L a_R - b_L b_R||_F^2``."""
    return _squared(torch.cat([a[0], -b[0]], 1), torch.cat([a[1], b[1]], 0))


def shadow_norms(updates: list[ClientUpdate], state: ServerState, rank: int) -> dict[str, float]:
    """Squared Frobenius norms of one layer, to be summed over layers before the ratios.

    Returns ``exact`` (``||D||^2``), ``to_exact`` (``||dW - D||^2``, ``dW`` the state's update),
    ``to_best`` (``||dW - D_R||^2``, ``D_R`` the best rank-``rank`` approximation of ``D``) and
    ``best_to_exact`` (``||D_R - D||^2``, the truncation's own loss). ``p_i`` are the example
    shares every method weighs clients by.
    """
    p = weights(updates)
    exact = linalg.stack_factors([u.B.double() for u in updates], [u.A.double() for u in updates],
                                 [pi * u.scaling for pi, u in zip(p, updates)])
    U, S, Vh = linalg.lowrank_svd(*exact)
    R = min(rank, S.numel())
    best = (U[:, :R] * S[:R], Vh[:R])
    mine = tuple(t.double() for t in state.factors())
    return {"exact": _squared(*exact), "to_exact": _difference(mine, exact),
            "to_best": _difference(mine, best), "best_to_exact": _difference(best, exact)}
