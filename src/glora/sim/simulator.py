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
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from glora.atomic import write_atomic
from glora.config import ExperimentConfig
from glora.errors import AggregationError
from glora.server import FederatedServer
from glora.sim.prepare import Prepared

log = logging.getLogger("glora.sim")


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
                 executor: Callable[[list], list]) -> None:
        self.cfg, self.data, self.out, self.execute = cfg, prepared, Path(out_dir), executor
        self.server = FederatedServer(cfg, method, prepared, prepared.reply_schema(),
                                      [len(p) for p in prepared.parts])
        self.out.mkdir(parents=True, exist_ok=True)

    @property
    def label(self) -> str:
        return self.server.label

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def run(self, resume: bool = False, stop_after: int | None = None,
            progress: Callable[[dict[str, Any]], None] | None = None) -> FederatedServer:
        """Run the remaining rounds (``stop_after`` stops early, as an interruption would)."""
        if resume and self.checkpoint_path.exists():
            self.server.load(self.checkpoint_path)
            self._write_metrics()  # the run may have died between the checkpoint and the log
        while self.server.round < self.cfg.train.rounds:
            if stop_after is not None and self.server.round >= stop_after:
                break
            record = self._round()
            self.server.save(self.checkpoint_path)
            self._write_metrics()
            if progress:
                progress(record)
        return self.server

    def _round(self) -> dict[str, Any]:
        """Train and aggregate one round, running it again while too few replies are valid."""
        tasks = [dataclasses.replace(t, data=self.data.client_train(t.client_id))
                 for t in self.server.configure()]
        attempts = self.cfg.server.retries + 1
        for attempt in range(1, attempts + 1):
            started = time.perf_counter()
            results = self.execute(tasks)
            extra = {"train_seconds": time.perf_counter() - started}
            try:
                return self.server.aggregate(results, extra)
            except AggregationError as err:
                log.warning("attempt %d of %d: %s", attempt, attempts, err)
                failure = err
        raise AggregationError(f"{failure} Stopped after {attempts} attempt(s) "
                               f"(`server.retries` = {attempts - 1}); {self.checkpoint_path} holds "
                               f"round {self.server.round}.")

    def _write_metrics(self) -> None:
        write_atomic(self.out / "metrics.jsonl", "".join(
            json.dumps(h) + "\n" for h in self.server.state.history))
