"""The dataset type every loader returns, and a seeded train/test split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from glora.errors import ConfigError

from .metrics import check_metric_names

TaskType = Literal["classification", "regression"]
TASK_TYPES: tuple[TaskType, ...] = ("classification", "regression")


@dataclass(frozen=True)
class TextDataset:
    """Texts (or text pairs) with one label each, in memory.

    Args:
        texts: the first (or only) text of each example.
        labels: class ids ``0..num_labels-1`` for classification, real numbers for regression.
        text_pairs: the second text of each example (sentence-pair tasks), else ``None``.
        label_names: class names indexed by class id (classification); ``None`` for regression.
        task_type: ``"classification"`` or ``"regression"``.
        metrics: names from :data:`glora.data.metrics.METRICS`, the first one being the headline.
        name: a short name for logs and result files.
        tasks: the task each example belongs to (task heterogeneity, see
            :func:`glora.data.partition.by_task`), else ``None``.
    """

    texts: list[str]
    labels: list[int] | list[float]
    text_pairs: list[str] | None = None
    label_names: tuple[str, ...] | None = None
    task_type: TaskType = "classification"
    metrics: tuple[str, ...] = ("accuracy",)
    name: str = ""
    tasks: list[str] | None = None

    def __post_init__(self) -> None:
        problems = []
        if len(self.labels) != len(self.texts):
            problems.append(f"{len(self.texts)} texts but {len(self.labels)} labels.")
        for field_name in ("text_pairs", "tasks"):
            values = getattr(self, field_name)
            if values is not None and len(values) != len(self.texts):
                problems.append(f"{len(self.texts)} texts but {len(values)} {field_name}.")
        if self.task_type not in TASK_TYPES:
            problems.append(f"`task_type` must be one of {TASK_TYPES}, got {self.task_type!r}.")
        if self.task_type == "classification" and self.label_names is not None and self.labels:
            lo, hi = min(self.labels), max(self.labels)
            if lo < 0 or hi >= len(self.label_names):
                problems.append(f"class ids must lie in 0..{len(self.label_names) - 1} "
                                f"(one per label name), got {lo}..{hi}.")
        if problems:
            raise ConfigError([f"dataset {self.name!r}: {p}" for p in problems])
        check_metric_names(self.metrics)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        """Number of classes (1 for regression, as Hugging Face heads expect)."""
        if self.task_type == "regression":
            return 1
        return len(self.label_names) if self.label_names else int(max(self.labels, default=-1)) + 1

    def subset(self, indices: Sequence[int] | np.ndarray) -> TextDataset:
        """The examples at ``indices`` (in that order), with the same metadata."""
        idx = [int(i) for i in indices]

        def pick(values: list[str] | None) -> list[str] | None:
            return None if values is None else [values[i] for i in idx]

        return replace(self, texts=[self.texts[i] for i in idx],
                       labels=[self.labels[i] for i in idx],
                       text_pairs=pick(self.text_pairs), tasks=pick(self.tasks))


@dataclass(frozen=True)
class Splits:
    """A training set and the held-out set it is evaluated on."""

    train: TextDataset
    test: TextDataset


def train_test_split(data: TextDataset, test_fraction: float, seed: int) -> Splits:
    """Seeded split; stratified by class for classification so both parts keep its label balance.

    Each class (or, for regression, the whole set) is shuffled and its first
    ``round(test_fraction * size)`` examples go to the test part. Indices stay in their original
    order inside each part.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(
            f"`test_fraction` must lie strictly between 0 and 1, got {test_fraction}.")
    rng = np.random.default_rng(seed)
    labels = np.asarray(data.labels)
    groups = ([np.flatnonzero(labels == c) for c in np.unique(labels)]
              if data.task_type == "classification" else [np.arange(len(data))])
    is_test = np.zeros(len(data), dtype=bool)
    for group in groups:
        is_test[rng.permutation(group)[: round(test_fraction * len(group))]] = True
    return Splits(train=data.subset(np.flatnonzero(~is_test)),
                  test=data.subset(np.flatnonzero(is_test)))
