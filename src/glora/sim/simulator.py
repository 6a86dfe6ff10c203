"""The in-process federated simulator: sample, train in worker processes, aggregate, evaluate.

One :class:`Simulation` runs one method; :func:`glora.sim.experiment.run_experiment` runs several
on the same partitions and seeds. After every round the whole state is checkpointed atomically,
and ``resume=True`` continues from it with identical results (every random choice is a function of
``(seed, round, client)``, so the round counter is the only RNG state). A run killed at any moment
loses at most the round in progress.

A round with fewer than ``server.min_clients`` valid replies is run again (the same tasks, so the
same seeds) up to ``server.retries`` times; then the run stops with an
:class:`~glora.errors.AggregationError`, the checkpoint still holding the previous round.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

from glora.config import ExperimentConfig
from glora.contract import TrainResult, TrainTask
from glora.federation import rounds
from glora.federation.prepare import Prepared
from glora.federation.server import FederatedServer


class Simulation:
    """Federated rounds of one method over prepared data.

    Args:
        cfg: the experiment config.
        method: registry name of the aggregation method.
        prepared: tokenized data, partitions and evaluation.
        out_dir: where ``checkpoint.pt`` and ``metrics.jsonl`` go.
        executor: trains a list of client tasks (worker processes or inline).
    """

    def __init__(self, cfg: ExperimentConfig, method: str, prepared: Prepared, out_dir: Path,
                 executor: Callable[[list[TrainTask]], list[TrainResult]]) -> None:
        self.cfg, self.data, self.out, self.execute = cfg, prepared, Path(out_dir), executor
        self.server = FederatedServer(cfg, method, prepared, prepared.reply_schema(),
                                      prepared.examples)
        self.out.mkdir(parents=True, exist_ok=True)

    @property
    def label(self) -> str:
        return self.server.label

    @property
    def checkpoint_path(self) -> Path:
        return self.out / rounds.CHECKPOINT

    def run(self, resume: bool = False, stop_after: int | None = None,
            progress: Callable[[dict[str, Any]], None] | None = None) -> FederatedServer:
        """Run the remaining rounds (``stop_after`` stops early, as an interruption would)."""
        if resume:
            rounds.resume(self.server, self.out)
        while self.server.round < self.cfg.train.rounds:
            if stop_after is not None and self.server.round >= stop_after:
                break
            record = self._round()
            rounds.persist(self.server, self.out)
            if progress:
                progress(record)
        return self.server

    def _round(self) -> dict[str, Any]:
        """Train and aggregate one round, running it again while too few replies are valid."""
        tasks = [dataclasses.replace(t, data=self.data.client_train(t.client_id))
                 for t in self.server.configure()]

        def attempt(_: int) -> dict[str, Any]:
            started = time.perf_counter()
            results = self.execute(tasks)
            return self.server.aggregate(results, {"train_seconds": time.perf_counter() - started})

        return rounds.retry_round(self.server, attempt, self.checkpoint_path)
