"""Registry of aggregation methods by name (PEFT style: one registration call per method file)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch

from glora.errors import ConfigError, InvalidUpdateError

from .base import ClientUpdate, MethodConfig, ServerState, validate_updates, weights

AggregateFn = Callable[[list[ClientUpdate], list[float], Any], ServerState]


@dataclass(frozen=True)
class StreamRule:
    """How a method whose aggregate is linear in the factors reduces a round, update by update,
    to one equivalent update (:class:`~glora.aggregation.accumulator.Accumulator`).

    Args:
        scaled_B: ``B`` is averaged with weights ``p_i s_i / s`` (:func:`average_factors`), else
            plainly with ``p_i`` (FedIT).
        shared: factors every client must hold as client 0 does (within the config's ``rtol``).
        one_shared: at least one of the factors must be shared by every client (RoLoRA).
    """

    scaled_B: bool = True
    shared: tuple[str, ...] = ()
    one_shared: bool = False


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Args:
        name: lower-case registry key (also the config and CLI value).
        config_cls: the method's config dataclass.
        aggregate: ``(updates, weights, config) -> ServerState``, pure.
        mixed_ranks: whether clients may have different ranks.
        uploads: which factors a client sends up (``"B"``, ``"A"``), for byte counts.
        frozen: factors the client does not train (FFA-LoRA freezes ``"A"``).
        alternate: frozen factors by round, in turn (RoLoRA: ``(("A",), ("B",))`` trains ``B``
            in round 1, ``A`` in round 2, ...); empty: ``frozen`` in every round.
        local: parts that stay on the client (FedSA-LoRA keeps ``"B"`` and ``"head"``).
        stream: how the round folds into running sums as updates arrive; ``None`` when the
            method needs every update at once (an accumulator then keeps them).
        paper: where the rule is published.
    """

    name: str
    config_cls: type[MethodConfig]
    aggregate: AggregateFn
    mixed_ranks: bool
    uploads: tuple[str, ...] = ("B", "A")
    frozen: tuple[str, ...] = ()
    alternate: tuple[tuple[str, ...], ...] = ()
    local: tuple[str, ...] = ()
    stream: StreamRule | None = None
    paper: str = ""

    def frozen_in(self, round_: int) -> tuple[str, ...]:
        """The factors clients do not train in ``round_`` (0-based)."""
        return self.alternate[round_ % len(self.alternate)] if self.alternate else self.frozen

    def uploads_in(self, round_: int) -> tuple[str, ...]:
        """The factors clients send up in ``round_``: those they upload and trained."""
        return tuple(f for f in self.uploads if f not in self.frozen_in(round_))

    def make_config(self, **options: Any) -> MethodConfig:
        """Build the config, naming unknown options and the allowed ones."""
        allowed = [f.name for f in dataclasses.fields(self.config_cls)]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {unknown} for method `{self.name}`; allowed: {allowed or 'none'}.")
        return self.config_cls(**options)


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method; its name must be lower-case and new."""
    if spec.name != spec.name.lower() or not spec.name.isidentifier():
        raise ValueError(f"Method name {spec.name!r} must be a lower-case identifier.")
    if spec.name in _REGISTRY:
        raise ValueError(f"Method {spec.name!r} is already registered.")
    _REGISTRY[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """The spec registered under ``name``; the error lists the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; known methods: {methods()}.") from None


def methods() -> list[str]:
    """Names of the registered methods, sorted."""
    return sorted(_REGISTRY)


def aggregate(name: str, updates: list[ClientUpdate], **options: Any) -> ServerState:
    """Aggregate one layer's client updates with method ``name``.

    >>> import torch, glora
    >>> ups = [glora.ClientUpdate(torch.randn(6, 2), torch.randn(2, 5), 10, 0.5) for _ in range(3)]
    >>> state = glora.aggregate("glora", ups)
    >>> B, A = state.readout(rank=2, scaling=0.5)
    """
    spec = get_method(name)
    config = spec.make_config(**options)
    updates = validate_updates(list(updates) if isinstance(updates, tuple) else updates,
                               mixed_ranks=spec.mixed_ranks, method=name)
    return finite(spec.aggregate(updates, weights(updates), config), updates[0].B.dtype)


def finite(state: ServerState, dtype: torch.dtype) -> ServerState:
    """``state``, once every tensor of it is checked to be finite."""
    if not all(bool(torch.isfinite(t).all()) for t in state.tensors().values()):
        raise InvalidUpdateError(
            f"`{state.method}`'s aggregate is not finite: the updates overflow {dtype}; "
            "send smaller updates (or clip them: `server.clip_norm`).")
    return state
