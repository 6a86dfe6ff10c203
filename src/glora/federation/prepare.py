"""Everything a run needs before round 1: the task's data and partitions, evaluation, export.

Built once per ``glora run`` (or Flower app process) and shared by every method, so all methods
see the same partitions. The task (:mod:`glora.tasks`) is the one that claims ``data.dataset``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from glora.config import ExperimentConfig
from glora.devices import resolve_device
from glora.global_model import GlobalModel
from glora.tasks import TaskData, task_for
from glora.training.cache import ModelCache
from glora.training.export import export_adapter
from glora.validation import ReplySchema


@dataclass
class Prepared:
    """A run's task data, with the model cache that evaluates and exports global models."""

    cfg: ExperimentConfig
    data: TaskData
    _cache: ModelCache | None = field(default=None, repr=False)

    @property
    def model_spec(self) -> dict[str, Any]:
        """Keyword arguments of :class:`ModelCache` (worker processes build theirs from it)."""
        return self.data.model_spec

    @property
    def parts(self) -> list[list[int]]:
        return self.data.parts

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.data.metrics

    def client_train(self, client: int) -> tuple[Tensor, ...]:
        return self.data.client_train(client)

    @property
    def cache(self) -> ModelCache:
        if self._cache is None:
            device = resolve_device(self.cfg.train.device)
            self._cache = ModelCache(**self.model_spec, device=device)
        return self._cache

    def evaluate(self, deltas: dict[str, Tensor], head: dict[str, Tensor], prefix: str,
                 client: int | None = None) -> dict[str, float]:
        """Metrics of the model ``W0 + deltas`` with ``head`` on the test data (or a client's)."""
        model = self.cache.global_model(deltas, head)
        return self.data.evaluate(model, prefix, client, self.cfg.eval.batch_size)

    def reply_schema(self) -> ReplySchema:
        """The layer and head shapes of the model, which every valid client reply has."""
        return ReplySchema(dict(self.cache.layers),
                           {k: tuple(t.shape) for k, t in self.cache.head_init.items()})

    def export(self, model: GlobalModel, path: Path) -> None:
        export_adapter(self.cache, model.total_delta(), model.head, path,
                       metadata={"method": model.method, "rounds": model.round})


def prepare(cfg: ExperimentConfig) -> Prepared:
    """Load, split, partition and tokenize with the task ``data.dataset`` names; errors name the
    dataset and the client."""
    return Prepared(cfg, task_for(cfg.data.dataset).prepare(cfg))
