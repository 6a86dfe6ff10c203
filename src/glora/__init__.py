"""glora: federated LoRA fine-tuning with gauge-aware aggregation.

The one-layer API::

    import glora
    glora.methods()                                  # registered method names
    state = glora.aggregate("glora", [glora.ClientUpdate(B, A, n, s), ...], rank=16)
    state.delta()                                    # dense update (tests/analysis only)
    B, A = state.readout(rank=8, scaling=2.0)        # a rank-8 client's start
    acc = glora.Accumulator("glora", rank=16)        # the same, fed update by update
    acc.add(update); state = acc.result()
"""

from glora.aggregation import Accumulator, ClientUpdate, ServerState, aggregate, get_method, methods
from glora.errors import AggregationError, ConfigError, GloraError, InvalidUpdateError

__all__ = ["Accumulator", "AggregationError", "ClientUpdate", "ConfigError", "GloraError", "InvalidUpdateError",
           "ServerState", "aggregate", "get_method", "methods"]
__version__ = "0.1.0"
