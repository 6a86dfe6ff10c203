"""Run client tasks in worker processes, one torch thread each, so every core trains.

Each worker builds its model cache once, for whatever task the model spec names. Results do not
depend on which worker ran a task: a task carries its own seeds.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

from glora.contract import TrainResult, TrainTask
from glora.training.cache import ModelCache
from glora.training.train import train_client

_CACHE: ModelCache | None = None


def _init(model_spec: dict[str, Any]) -> None:
    global _CACHE
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    _CACHE = ModelCache(**model_spec)


def _run(task: TrainTask) -> TrainResult:
    assert _CACHE is not None, "worker not initialized"
    return train_client(_CACHE, task)


class ClientExecutor:
    """Callable that trains a list of tasks and returns their results in task order.

    ``workers=1`` runs inline in this process (no pickling; handy in tests and debuggers).
    """

    def __init__(self, model_spec: dict[str, Any], workers: int) -> None:
        self.workers = workers
        self.model_spec = model_spec
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1:
            self.pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                            initializer=_init, initargs=(model_spec,))
        else:
            _init(model_spec)

    def __call__(self, tasks: list[TrainTask]) -> list[TrainResult]:
        if self.pool is None:
            return [_run(t) for t in tasks]
        return list(self.pool.map(_run, tasks))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None

    def __enter__(self) -> "ClientExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
