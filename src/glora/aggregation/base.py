"""The one-layer aggregation API shared by every method.

A method is a config dataclass plus a pure function ``(updates, weights, config) -> ServerState``
registered under a lower-case name (see :mod:`glora.aggregation.registry`).

Notation (SPEC.md): client ``i`` holds ``B_i`` (``d_out x r_i``), ``A_i`` (``r_i x d_in``) and a
LoRA scaling ``s_i``; its intrinsic update is ``dW_i = s_i B_i A_i``; ``p_i = n_i / sum_j n_j``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from glora.errors import ConfigError, InvalidUpdateError

from . import linalg


@dataclass(frozen=True)
class ClientUpdate:
    """One client's LoRA factors for one layer, as returned after local training.

    Args:
        B: ``d_out x r`` (PEFT's ``lora_B.weight``).
        A: ``r x d_in`` (PEFT's ``lora_A.weight``).
        num_examples: the client's number of training examples (its weight is proportional).
        scaling: the client's LoRA scaling ``alpha / r`` (or ``alpha / sqrt(r)`` with rsLoRA).
    """

    B: Tensor
    A: Tensor
    num_examples: int
    scaling: float = 1.0

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def delta(self) -> Tensor:
        """Dense ``s B A`` (``d_out x d_in``): for tests and analysis only."""
        return self.scaling * self.B @ self.A


@dataclass
class ServerState:
    """What the server holds for one layer after a round.

    Subclasses say how the global update is represented. Every state can give its dense update
    (:meth:`delta`, tests and analysis only) and the adapter a client of a given rank and scaling
    starts its next round from (:meth:`readout`).
    """

    method: str
    info: dict[str, Any] = field(default_factory=dict, kw_only=True)

    #: True when clients start every round from a fresh LoRA init (FLoRA).
    fresh_adapter: ClassVar[bool] = False

    def delta(self) -> Tensor:
        raise NotImplementedError

    def factors(self) -> tuple[Tensor, Tensor]:
        """``(L, R)`` with ``L @ R == delta()``: the update in factored form, for analysis
        (:mod:`glora.aggregation.shadow`) without a dense ``d_out x d_in`` product."""
        raise NotImplementedError

    def readout(self, rank: int, scaling: float) -> tuple[Tensor, Tensor] | None:
        """Factors ``(B, A)`` of rank ``rank`` with ``scaling * B @ A`` the client's start.

        ``None`` means the method starts clients from a fresh LoRA initialization.
        """
        raise NotImplementedError

    def base_update(self) -> Tensor | tuple[Tensor, Tensor] | None:
        """What every client folds into its frozen weight this round, if anything.

        A dense ``d_out x d_in`` tensor, a low-rank pair ``(L, R)`` meaning ``L @ R``, or ``None``.
        """
        return None

    def tensors(self) -> dict[str, Tensor]:
        """The tensors of the state (for byte counts and checkpoints)."""
        return {k: v for k, v in vars(self).items() if isinstance(v, Tensor)}

    def download_tensors(self, rank: int, scaling: float) -> dict[str, Tensor]:
        """What is sent to a client of ``rank`` (used to count bytes down)."""
        out: dict[str, Tensor] = {}
        start = self.readout(rank, scaling)
        if start is not None:
            out["B"], out["A"] = start
        base = self.base_update()
        if isinstance(base, Tensor):
            out["base"] = base
        elif base is not None:
            out["base_L"], out["base_R"] = base
        return out


@dataclass
class LowRankState(ServerState):
    """Global update ``left @ right``; readout is its best rank-``r`` approximation, its singular
    values divided between ``B`` and ``A`` as ``split`` says (:func:`linalg.split_factors`)."""

    left: Tensor  # d_out x k
    right: Tensor  # k x d_in
    split: str = "symmetric"

    def delta(self) -> Tensor:
        return self.left @ self.right

    def factors(self) -> tuple[Tensor, Tensor]:
        return self.left, self.right

    def readout(self, rank: int, scaling: float) -> tuple[Tensor, Tensor] | None:
        U, S, Vh = linalg.lowrank_svd(self.left, self.right)
        return linalg.split_factors(U, S, Vh, rank, scaling, self.split)


@dataclass
class FactorState(ServerState):
    """Global adapter kept as factors ``(B, A)`` with the scaling they were averaged at.

    The readout hands these very factors down (that is what factor-averaging methods do), so a
    client must ask for the state's rank, or less where ``truncatable`` (HetLoRA).
    """

    B: Tensor  # d_out x r
    A: Tensor  # r x d_in
    scaling: float
    truncatable: bool = False

    def delta(self) -> Tensor:
        return self.scaling * self.B @ self.A

    def factors(self) -> tuple[Tensor, Tensor]:
        return self.scaling * self.B, self.A

    def readout(self, rank: int, scaling: float) -> tuple[Tensor, Tensor] | None:
        check_readout_rank(rank, self.A.shape[0], truncate=self.truncatable, method=self.method)
        return self.B[:, :rank] * (self.scaling / scaling), self.A[:rank]


def check_readout_rank(rank: int, available: int, *, truncate: bool, method: str) -> None:
    """Reject a readout rank the state cannot serve."""
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"`rank` must be a positive integer, got {rank!r}.")
    if rank > available or (not truncate and rank != available):
        allowed = f"at most {available}" if truncate else f"exactly {available}"
        raise ValueError(f"`{method}` can serve rank {allowed} here, got rank {rank}.")


@dataclass
class MethodConfig:
    """Base of every method's config dataclass."""


@dataclass
class RandomizedOptions(MethodConfig):
    """Options of a randomized top-``R`` solver (:mod:`glora.aggregation.subspace`).

    Args:
        seed (`int`, defaults to `0`): start of the iteration (results are deterministic for it).
        solver_tol (`float`, defaults to `1e-10`): stop once every wanted Ritz pair's residual is
            below ``solver_tol`` times the largest Ritz value.
        max_iter (`int`, defaults to `200`): products with the operator at most.
        oversample (`int`, defaults to `8`): directions iterated beyond ``R``.
    """

    seed: int = 0
    solver_tol: float = 1e-10
    max_iter: int = 200
    oversample: int = 8

    def randomized_problems(self) -> list[str]:
        problems = []
        if not self.solver_tol > 0:
            problems.append(f"`solver_tol` must be positive, got {self.solver_tol!r}.")
        for name in ("max_iter", "oversample"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"`{name}` must be a positive integer, got {value!r}.")
        return problems


@dataclass
class SharedFactorOptions(MethodConfig):
    """Options of a method whose clients keep a factor frozen at the server's copy.

    Args:
        rtol (`float`, defaults to `1e-5`): the frozen factor may differ between clients by at
            most ``rtol`` times its largest entry (room for dtype round trips; a frozen factor
            is normally bit-identical).
    """

    rtol: float = 1e-5

    def __post_init__(self) -> None:
        if not self.rtol >= 0:
            raise ConfigError(f"`rtol` must be non-negative, got {self.rtol!r}.")


def rank_option_problems(rank: object) -> list[str]:
    """What is wrong with an optional server ``rank`` option (a positive ``int`` or ``None``)."""
    if rank is None or (isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1):
        return []
    return [f"`rank` must be a positive integer or None, got {rank!r}."]


def validate_updates(updates: list[ClientUpdate], *, mixed_ranks: bool = True,
                     method: str = "", reference: ClientUpdate | None = None,
                     ) -> list[ClientUpdate]:
    """Check a round's updates; return them in one common floating dtype (at least float32).

    ``reference`` is client 0's update, already checked, where ``updates`` are later ones (an
    accumulator's): the layer shape and rank are compared with it, and it is not checked again.

    Raises:
        InvalidUpdateError: naming the client index and the problem.
    """
    if not isinstance(updates, (list, tuple)) or len(updates) == 0:
        raise InvalidUpdateError("no client updates to aggregate (the list is empty).")
    first = updates[0] if reference is None else reference
    dtype = None
    largest: dict[tuple[int, str], float] = {}  # max |entry| of each factor (one pass over it)
    for i, u in enumerate(updates):
        if not isinstance(u, ClientUpdate):
            raise InvalidUpdateError(f"expected a glora.ClientUpdate, got {type(u).__name__}.", i)
        for name, t in (("B", u.B), ("A", u.A)):
            if not isinstance(t, Tensor):
                raise InvalidUpdateError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}.", i)
            if t.dim() != 2:
                raise InvalidUpdateError(f"`{name}` must be 2-D, got shape {tuple(t.shape)}.", i)
            if not t.is_floating_point():
                raise InvalidUpdateError(f"`{name}` must be floating point, got {t.dtype}.", i)
            largest[i, name] = _largest_abs(t)
            if not math.isfinite(largest[i, name]):
                raise InvalidUpdateError(f"`{name}` has non-finite values (NaN or inf).", i)
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
        if u.B.shape[1] != u.A.shape[0]:
            raise InvalidUpdateError(
                f"rank mismatch: `B` is {tuple(u.B.shape)} (rank {u.B.shape[1]}) but `A` is "
                f"{tuple(u.A.shape)} (rank {u.A.shape[0]}); expected B: d_out x r, A: r x d_in.", i)
        d_out, d_in = first.B.shape[0], first.A.shape[1]
        if (u.B.shape[0], u.A.shape[1]) != (d_out, d_in):
            raise InvalidUpdateError(
                f"layer shape {u.B.shape[0]} x {u.A.shape[1]} differs from client 0's "
                f"{d_out} x {d_in}.", i)
        if u.rank < 1 or u.rank > min(d_out, d_in):
            raise InvalidUpdateError(
                f"rank {u.rank} is not in 1..{min(d_out, d_in)} for a {d_out} x {d_in} layer.", i)
        if isinstance(u.num_examples, bool) or not isinstance(u.num_examples, int) \
                or u.num_examples <= 0:
            raise InvalidUpdateError(
                f"`num_examples` must be a positive integer, got {u.num_examples!r}.", i)
        if not isinstance(u.scaling, (int, float)) or not math.isfinite(u.scaling) \
                or u.scaling <= 0:
            raise InvalidUpdateError(f"`scaling` must be a positive finite number, got {u.scaling!r}.", i)
        if not mixed_ranks and u.rank != first.rank:
            raise InvalidUpdateError(
                f"rank {u.rank} differs from client 0's rank {first.rank}, and `{method}` "
                "needs equal ranks; use a method that takes mixed ranks (glora, flexlora, flora, "
                "hetlora) or give every client the same rank.", i)
    assert dtype is not None
    # Half precision has no CPU linear algebra (eigh, QR): aggregate it in float32.
    dtype = torch.promote_types(dtype, torch.float32)
    # The methods square scalings (as Python floats and in the dtype), and `s B A` must be
    # representable: bound its entries by `s r max|B| max|A|`.
    big = torch.finfo(dtype).max
    for i, u in enumerate(updates):
        if u.scaling > math.sqrt(big):
            raise InvalidUpdateError(
                f"`scaling` {u.scaling!r} overflows {dtype} when squared; at most "
                f"{math.sqrt(big):.3g}.", i)
        bound = u.scaling * u.rank * largest[i, "B"] * largest[i, "A"]
        if bound > big:
            raise InvalidUpdateError(
                f"the update `s B A` can overflow {dtype} (entries up to {bound:.3g}); send "
                "smaller factors.", i)
    return [u if u.B.dtype == u.A.dtype == dtype else
            ClientUpdate(u.B.to(dtype), u.A.to(dtype), u.num_examples, float(u.scaling))
            for u in updates]


def _largest_abs(t: Tensor) -> float:
    """``max |t|`` (NaN if ``t`` holds one), from one ``aminmax`` pass: several times faster than
    ``isfinite(t).all()`` plus an infinity norm on large factors."""
    if t.numel() == 0:
        return 0.0
    lo, hi = torch.aminmax(t)
    return max(-float(lo), float(hi))  # NaN propagates: a NaN entry makes both NaN


def weights(updates: list[ClientUpdate]) -> list[float]:
    """``p_i = n_i / sum_j n_j`` (Python floats: exact and dtype-free)."""
    total = sum(u.num_examples for u in updates)
    return [u.num_examples / total for u in updates]


def unshared(updates: list[ClientUpdate], factor: str, rtol: float,
             ) -> tuple[int, float, float] | None:
    """The first client whose ``factor`` (``"A"`` or ``"B"``) differs from client 0's by more
    than ``rtol`` times its largest entry (room for dtype round trips), as
    ``(index, largest difference, allowed)``; ``None`` when every client holds the same one."""
    first = getattr(updates[0], factor)
    tol = rtol * float(first.abs().max())
    for i, u in enumerate(updates[1:], start=1):
        diff = float((getattr(u, factor) - first).abs().max())
        if diff > tol:
            return i, diff, tol
    return None


def check_shared_A(updates: list[ClientUpdate], rtol: float, why: str) -> None:
    """Check that every client's ``A`` is client 0's (a frozen, shared factor), up to ``rtol``.

    Raises:
        InvalidUpdateError: naming the first client whose ``A`` differs, by how much, and ``why``
            the method needs it.
    """
    found = unshared(updates, "A", rtol)
    if found is not None:
        i, diff, tol = found
        raise InvalidUpdateError(f"`A` differs from client 0's by up to {diff:.3g} (allowed "
                                 f"{tol:.3g}); {why}.", i)


def average_factors(updates: list[ClientUpdate], w: list[float]) -> tuple[Tensor, Tensor, float]:
    """Weighted factor average ``(B, A, s)`` with ``s = sum w_i s_i``.

    ``B = sum_i w_i (s_i / s) B_i`` and ``A = sum_i w_i A_i``: each ``B_i`` keeps its scaling
    relative to the mean, so ``s B A = sum_i w_i s_i B_i A`` whenever the ``A_i`` agree
    (FFA-LoRA's exactness). When every client has the same scaling (equal ranks, one ``alpha``)
    this is the published plain average of the factors.
    """
    s = sum(wi * u.scaling for wi, u in zip(w, updates))
    B = sum(wi * u.scaling / s * u.B for wi, u in zip(w, updates))
    A = sum(wi * u.A for wi, u in zip(w, updates))
    return B, A, s
