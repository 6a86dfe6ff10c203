"""Server-side aggregation of federated LoRA: GLoRA and its peers, one file per method."""

from .accumulator import Accumulator
from .base import ClientUpdate, FactorState, LowRankState, MethodConfig, ServerState, validate_updates
from .registry import MethodSpec, StreamRule, aggregate, get_method, methods, register_method

# Importing a method module registers it.
from . import (  # noqa: E402,F401  (isort: skip)
    fedex, fedit, fedsa, fedsvd, ffa, flexlora, flora, glora, hetlora, lorafair, rolora)

__all__ = ["Accumulator", "ClientUpdate", "FactorState", "LowRankState", "MethodConfig", "MethodSpec",
           "ServerState", "StreamRule", "aggregate", "get_method", "methods", "register_method",
           "validate_updates"]
