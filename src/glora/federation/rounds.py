"""What every engine does around a round: run it again while too few replies are valid, and keep
its result (checkpoint and ``metrics.jsonl``) once it aggregated.

The in-process simulator and the Flower strategy differ only in how a round's tasks reach the
clients; both call :func:`retry_round` and :func:`persist`, so a failed round and a resumed run
behave the same in a laptop simulation and in a deployment.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glora.atomic import write_atomic
from glora.errors import AggregationError

from .server import FederatedServer

log = logging.getLogger("glora.federation.rounds")
CHECKPOINT, METRICS = "checkpoint.pt", "metrics.jsonl"


def retry_round(server: FederatedServer, attempt: Callable[[int], dict[str, Any]],
                checkpoint: Path, hint: str = "") -> dict[str, Any]:
    """``attempt(n)`` for ``n = 1, 2, ...`` until one returns the round's record.

    An attempt that raises :class:`AggregationError` (too few valid replies) is logged and run
    again, up to ``server.retries`` times; every seed is a function of seed, round and client, so
    an attempt sends the same tasks.

    Raises:
        AggregationError: every attempt failed; says which round ``checkpoint`` holds, then
            ``hint`` (what to do before resuming).
    """
    retries = server.cfg.server.retries
    for n in range(1, retries + 2):
        try:
            return attempt(n)
        except AggregationError as err:
            log.warning("attempt %d of %d: %s", n, retries + 1, err)
            failure = err
    raise AggregationError(f"{failure} Stopped after {retries + 1} attempt(s) (`server.retries` = "
                           f"{retries}); {checkpoint} holds round {server.round}.{hint}")


def write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl`` (one record per round) under ``out``, replaced atomically."""
    write_atomic(Path(out) / METRICS, "".join(json.dumps(h) + "\n" for h in history))


def persist(server: FederatedServer, out: Path) -> None:
    """The server's checkpoint and metrics under ``out``, each replaced atomically."""
    server.save(Path(out) / CHECKPOINT)
    write_metrics(out, server.state.history)


def resume(server: FederatedServer, out: Path) -> bool:
    """Load the checkpoint under ``out`` into ``server`` if there is one, and rewrite the metrics
    from it (a run may have died between the checkpoint and the log); whether it was there."""
    path = Path(out) / CHECKPOINT
    if not path.exists():
        return False
    server.load(path)
    write_metrics(out, server.state.history)
    return True
