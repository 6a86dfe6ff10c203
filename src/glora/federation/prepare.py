"""Everything a run needs before round 1: the task's data and partitions, evaluation, export.

Built once per ``glora run`` (or Flower app process) and shared by every method, so all methods
see the same partitions. The task (:mod:`glora.tasks`) is the one that claims ``data.dataset``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import Tensor

from glora.config import ExperimentConfig
from glora.devices import resolve_device
from glora.errors import ConfigError
from glora.global_model import GlobalModel
from glora.tasks import TaskData, task_for
from glora.training.cache import ModelCache
from glora.training.export import export_adapter
from glora.validation import ReplySchema


@dataclass
class Prepared:
    """A run's task data, with the model cache that evaluates and exports global models.

    ``data`` is ``None`` on a Flower server, which holds no data: it checks replies against the
    model and exports it, and its clients evaluate (``model_spec`` and ``metrics`` then come from
    the config, :meth:`glora.tasks.base.Task.model_spec`).
    """

    cfg: ExperimentConfig
    data: TaskData | None
    model_spec: dict[str, Any]
    metrics: tuple[str, ...]
    _cache: ModelCache | None = field(default=None, repr=False)

    def _data(self) -> TaskData:
        if self.data is None:
            raise RuntimeError("this run holds no data (a Flower server); its clients train and "
                               "evaluate.")
        return self.data

    @property
    def parts(self) -> list[list[int]]:
        return self._data().parts

    @property
    def examples(self) -> dict[int, int]:
        """Client -> number of training examples."""
        return {c: len(p) for c, p in enumerate(self.parts)}

    def client_train(self, client: int) -> tuple[Tensor, ...]:
        return self._data().client_train(client)

    def test_size(self, client: int) -> int:
        """Number of ``client``'s own test examples (the weight of its federated evaluation)."""
        return len(self._data().test_parts[client])

    @property
    def cache(self) -> ModelCache:
        if self._cache is None:
            device = resolve_device(self.cfg.train.device)
            self._cache = ModelCache(**self.model_spec, device=device)
        return self._cache

    def evaluate(self, deltas: dict[str, Tensor], head: dict[str, Tensor], prefix: str,
                 client: int | None = None) -> dict[str, float]:
        """Metrics of the model ``W0 + deltas`` with ``head`` on the test data (or a client's)."""
        data = self._data()
        model = self.cache.global_model(deltas, head)
        return data.evaluate(model, prefix, client, self.cfg.eval.batch_size)

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
    data = task_for(cfg.data.dataset).prepare(cfg)
    return Prepared(cfg, data, data.model_spec, data.metrics)


def prepare_node(cfg: ExperimentConfig, data_path: str, test_path: str | None = None) -> Prepared:
    """One site's own data as a run of one client that holds all of it, in file order.

    ``data_path`` is what ``data.dataset`` can name (a CSV/JSONL file, ``natural_instructions:``
    and a folder of task files), ``test_path`` its test file (else a seeded split of it). The
    task is the run's, and so are the model and, where the config sets them, the classes and
    metrics, so every site builds the model the server checks replies against.
    """
    task = task_for(cfg.data.dataset)
    if task_for(data_path) is not task:
        raise ConfigError(f"node data {data_path!r} is not data of the run's task "
                          f"{task.name!r} (`data.dataset` = {cfg.data.dataset!r}).")
    by_task = cfg.data.partition == "task"  # instruction tasks are; a site's rows need not be
    local = replace(cfg, data=replace(cfg.data, dataset=data_path, test_file=test_path,
                                      num_clients=1, partition="task" if by_task else "iid",
                                      min_client_size=1, max_test_examples=None))
    data = task.prepare(local)
    data.parts = [sorted(i for p in data.parts for i in p)]
    data.test_parts = [sorted({i for p in data.test_parts for i in p})]
    metrics = data.metrics
    if cfg.data.num_labels is not None:
        metrics = task.model_spec(cfg)[1]
    return Prepared(cfg, replace(data, metrics=metrics), data.model_spec, metrics)


def prepare_server(cfg: ExperimentConfig) -> Prepared:
    """A server that holds no training data: the model only (see :class:`Prepared`), and the
    held-out set ``eval.server_data`` where one is named (its whole file is the test set)."""
    if cfg.eval.server_data is not None:
        return prepare_node(cfg, cfg.eval.server_data, cfg.eval.server_data)
    spec, metrics = task_for(cfg.data.dataset).model_spec(cfg)
    return Prepared(cfg, None, spec, metrics)
