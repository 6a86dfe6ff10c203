"""Fault injection for reliability drills: a wrapper around a simulator's executor.

``FaultInjector(executor, {(round, client): kind})`` trains the round's tasks with ``executor`` and
then damages the named clients' results the way a broken or hostile client would (rounds counted
from 1, as in the metrics records):

* ``drop``: no result at all (the client is not even trained);
* ``nan``: a NaN in the first ``lora_B``;
* ``shape``: the first ``lora_A`` loses a row (a rank the server did not send);
* ``scale``: every ``lora_B`` times ``1e6``;
* ``examples``: ten times the client's example count.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from glora.global_model import LORA_A, LORA_B

FAULTS = ("drop", "nan", "shape", "scale", "examples")


class FaultInjector:
    """Callable like the executor it wraps: ``tasks -> results`` (faulty ones damaged or missing)."""

    def __init__(self, execute: Callable[[list], list], faults: dict[tuple[int, int], str]) -> None:
        unknown = sorted({k for k in faults.values() if k not in FAULTS})
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; allowed: {list(FAULTS)}.")
        self.execute, self.faults = execute, dict(faults)

    def __call__(self, tasks: list) -> list:
        kinds = [self.faults.get((t.round + 1, t.client_id)) for t in tasks]
        kept = [(t, k) for t, k in zip(tasks, kinds) if k != "drop"]
        results = self.execute([t for t, _ in kept])
        return [damage(r, k) if k else r for r, (_, k) in zip(results, kept)]


def damage(result: Any, kind: str) -> Any:
    """A copy of a ``TrainResult`` with fault ``kind`` (not ``drop``) applied."""
    adapter = dict(result.adapter)
    first_a = min(k for k in adapter if k.endswith(LORA_A))
    first_b = first_a.removesuffix(LORA_A) + LORA_B
    if kind == "nan":
        adapter[first_b] = adapter[first_b].clone()
        adapter[first_b][0, 0] = float("nan")
    elif kind == "shape":
        adapter[first_a] = adapter[first_a][1:]
    elif kind == "scale":
        adapter = {k: v * 1e6 if k.endswith(LORA_B) else v for k, v in adapter.items()}
    elif kind == "examples":
        return dataclasses.replace(result, num_examples=10 * result.num_examples)
    return dataclasses.replace(result, adapter=adapter)
