"""Everything a run needs before round 1: data, partitions, tokenized tensors, evaluation, export.

Built once per ``glora run`` and shared by every method, so all methods see the same partitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from glora.config import ExperimentConfig
from glora.errors import ConfigError
from glora.validation import ReplySchema


@dataclass
class Prepared:
    """Tokenized data per client, the held-out sets and the evaluation model."""

    cfg: ExperimentConfig
    model_spec: dict[str, Any]
    train: tuple[Tensor, ...]  # input_ids, attention_mask, labels
    test: tuple[Tensor, ...]
    parts: list[list[int]]  # client -> train indices
    test_parts: list[list[int]]  # client -> test indices (personalized evaluation)
    metrics: tuple[str, ...]
    _cache: Any = field(default=None, repr=False)

    def client_train(self, client: int) -> tuple[Tensor, ...]:
        idx = torch.tensor(self.parts[client])
        return tuple(t[idx] for t in self.train)

    @property
    def cache(self) -> Any:
        if self._cache is None:
            from glora.models import ModelCache

            self._cache = ModelCache(**self.model_spec)
        return self._cache

    def evaluate(self, deltas: dict[str, Tensor], head: dict[str, Tensor], prefix: str,
                 client: int | None = None) -> dict[str, float]:
        """Metrics of the model ``W0 + deltas`` with ``head`` on the test set (or a client's part)."""
        from glora.client.evaluate import evaluate

        data = self.test
        if client is not None:
            idx = torch.tensor(self.test_parts[client])
            data = tuple(t[idx] for t in self.test)
        scores = evaluate(self.cache, deltas, head, data, self.metrics, self.cfg.eval.batch_size)
        return {prefix + k: float(v) for k, v in scores.items()}

    def reply_schema(self) -> ReplySchema:
        """The layer and head shapes of the model, which every valid client reply has."""
        return ReplySchema(dict(self.cache.layers),
                           {k: tuple(t.shape) for k, t in self.cache.head_init.items()})

    def export(self, model: Any, path: Path) -> None:
        from glora.export import export_adapter

        export_adapter(self.cache, model.total_delta(), model.head, path,
                       metadata={"method": model.method, "rounds": model.round})


def prepare(cfg: ExperimentConfig) -> Prepared:
    """Load, split, partition and tokenize; errors name the dataset and the client."""
    from glora.lm.prepare import is_lm_dataset, prepare_lm

    if is_lm_dataset(cfg.data.dataset):  # instruction tuning of a causal LM (glora.lm)
        return prepare_lm(cfg)  # type: ignore[return-value]
    from glora.client.tokenize import tokenize
    from glora.data import load_dataset, partition
    from glora.models import load_tokenizer

    splits = load_dataset(cfg.data.dataset, test_file=cfg.data.test_file, seed=cfg.seed)
    train, test = splits.train, splits.test
    if cfg.data.max_test_examples and len(test) > cfg.data.max_test_examples:
        g = torch.Generator().manual_seed(cfg.seed)
        test = test.subset(sorted(torch.randperm(len(test), generator=g)[: cfg.data.max_test_examples].tolist()))
    n = cfg.data.num_clients
    if cfg.data.partition == "iid":
        parts = partition.iid(len(train), n, cfg.seed)
    elif cfg.data.partition == "dirichlet":
        if train.task_type == "regression":
            raise ConfigError(f"`data.partition=dirichlet` skews labels by class, but "
                              f"{cfg.data.dataset!r} is a regression task; use iid.")
        parts = partition.dirichlet(train.labels, n, cfg.data.alpha, cfg.seed,
                                    min_size=cfg.data.min_client_size)
    else:
        if getattr(train, "tasks", None) is None:
            raise ConfigError(f"`data.partition=task` needs a dataset with tasks; "
                              f"{cfg.data.dataset!r} has none. Use iid or dirichlet.")
        parts = partition.by_task(train.tasks, n, cfg.seed)
    if train.task_type == "regression":  # no classes to match: an even split of the test set
        test_parts = partition.iid(len(test), n, cfg.seed)
    else:
        test_parts = partition.match_label_proportions(parts, train.labels, test.labels, cfg.seed)
    model_spec = {"model": cfg.model.name, "num_labels": train.num_labels,
                  "target_modules": list(cfg.model.target_modules), "alpha": cfg.lora.alpha,
                  "rslora": cfg.lora.rslora, "dropout": cfg.lora.dropout,
                  "max_rank": max(cfg.lora.ranks)}
    tokenizer = load_tokenizer(cfg.model.name)
    return Prepared(cfg, model_spec, tokenize(tokenizer, train, cfg.data.max_length),
                    tokenize(tokenizer, test, cfg.data.max_length), parts, test_parts,
                    tuple(train.metrics))
