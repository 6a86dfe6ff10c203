"""Run client tasks in worker processes, one torch thread each, so every core trains.

Each worker builds its model cache once, for whatever task the model spec names, on its device
(with CUDA the visible GPUs in turn: worker ``i`` on ``cuda:{i % n}``). Results do not depend on
which worker ran a task: a task carries its own seeds.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

from glora.contract import TrainResult, TrainTask
from glora.devices import worker_device
from glora.training.cache import ModelCache
from glora.training.train import train_client

_CACHE: ModelCache | None = None


def _init(model_spec: dict[str, Any], device: str, counter: Any = None) -> None:
    """Build this worker's cache; ``counter`` (shared) numbers the workers for their GPUs."""
    global _CACHE
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    index = 0
    if counter is not None:
        with counter.get_lock():
            index, counter.value = counter.value, counter.value + 1
    _CACHE = ModelCache(**model_spec, device=worker_device(device, index))


def _run(task: TrainTask) -> TrainResult:
    assert _CACHE is not None, "worker not initialized"
    return train_client(_CACHE, task)


class ClientExecutor:
    """Callable that trains a list of tasks and returns their results in task order.

    ``workers=1`` runs inline in this process (no pickling; handy in tests and debuggers).
    ``device`` is ``train.device`` (:func:`glora.devices.worker_device` places each worker).
    """

    def __init__(self, model_spec: dict[str, Any], workers: int, device: str = "auto") -> None:
        self.workers = workers
        self.model_spec = model_spec
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1:
            context = mp.get_context("spawn")
            self.pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init,
                                            initargs=(model_spec, device, context.Value("i", 0)))
        else:
            _init(model_spec, device)

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
