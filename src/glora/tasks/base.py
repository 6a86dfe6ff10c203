"""The task seam: what one kind of fine-tuning task knows, and the registry of tasks.

A task (sequence classification, causal-LM instruction tuning, ...) says how to load its model
and which modules are its head, which PEFT task type its LoRA config has, what a batch's loss is,
what its client data must look like, how to prepare a run's data and partitions, how to score a
global model, and what an exported adapter's README says. Everything else, one model cache, one
trainer, one export, one server and both engines, is shared. Adding a kind of task is adding one
module that calls :func:`register_task`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from glora.errors import ConfigError

if TYPE_CHECKING:
    from peft import TaskType

    from glora.config import ExperimentConfig


@dataclass
class TaskData:
    """A run's prepared data: every client's training tensors and what evaluation reads.

    Args:
        model_spec: keyword arguments of :class:`glora.training.cache.ModelCache` (its ``task``
            included), from which every process builds the same model.
        train: the training examples as tensors of one row each (the task says which).
        parts: client -> indices into ``train``.
        test_parts: client -> indices of its own test examples (personalized evaluation).
        metrics: names of the metrics :meth:`evaluate` reports (the first is the headline).
    """

    model_spec: dict[str, Any]
    train: tuple[Tensor, ...]
    parts: list[list[int]]
    test_parts: list[list[int]]
    metrics: tuple[str, ...]

    def client_train(self, client: int) -> tuple[Tensor, ...]:
        """The training tensors of ``client``'s examples."""
        idx = torch.tensor(self.parts[client])
        return tuple(t[idx] for t in self.train)

    def evaluate(self, model: nn.Module, prefix: str, client: int | None = None,
                 batch_size: int = 128) -> dict[str, float]:
        """Metrics of ``model`` on the held-out data (or ``client``'s own), keys ``prefix + name``."""
        raise NotImplementedError


class Task(Protocol):
    """One kind of fine-tuning task (see the module docstring)."""

    name: str
    #: PEFT's task type of the task's LoRA config.
    peft_type: TaskType

    def claims(self, dataset: str) -> bool:
        """Whether ``data.dataset`` names data of this task (the default task claims none)."""

    def resolve(self, model: str | None) -> str:
        """A loadable folder or hub id for ``model.name`` (``None``: the task's packaged model)."""

    def load_model(self, path: str, num_labels: int, problem_type: str | None, seed: int,
                   dtype: torch.dtype = torch.float32) -> nn.Module:
        """The model at ``path`` in eval mode with its weights in ``dtype``, its new head (if
        any) drawn from ``seed``."""

    def head_modules(self, model: nn.Module) -> tuple[str, ...]:
        """Names of the model's children trained whole and averaged (empty: no head)."""

    def data_problems(self, data: tuple[Tensor, ...]) -> list[str]:
        """What is wrong with one client's training tensors for this task (empty: nothing)."""

    def loss(self, model: nn.Module, data: tuple[Tensor, ...], idx: Tensor) -> Tensor:
        """Mean training loss of ``model`` on the examples ``idx`` of ``data``."""

    def loss_weight(self, data: tuple[Tensor, ...], idx: Tensor) -> int:
        """What :meth:`loss` averages over for ``idx`` (examples, or answer tokens), so that
        micro-batches of one step add up to the step's mean loss."""

    def prepare(self, cfg: ExperimentConfig) -> TaskData:
        """Load, split, partition and tokenize the run's data."""

    def model_spec(self, cfg: ExperimentConfig) -> tuple[dict[str, Any], tuple[str, ...]]:
        """The :class:`TaskData` ``model_spec`` and ``metrics`` from the config alone, for a
        server that holds no data; a :class:`ConfigError` names a key the data would have told."""

    def write_partitions(self, cfg: ExperimentConfig, folder: Path,
                         ) -> tuple[list[dict[str, str]], list[str]]:
        """Each client's data under ``folder/client-<i>/``, as its node reads it: the node
        config (``data-path``, ``test-path``) of each client, whose data then prepare as
        :meth:`prepare` gives that client's, and the ``key=value`` overrides of the run (a
        server without data needs :meth:`model_spec`'s keys); a :class:`ConfigError` where the
        task's data cannot be written so."""

    def adapter_readme(self, info: dict[str, Any]) -> str:
        """README of an exported adapter folder (how to load it), from its ``glora.json``."""


def lora_spec(task: str, cfg: ExperimentConfig) -> dict[str, Any]:
    """The :class:`~glora.training.cache.ModelCache` keyword arguments every task's model spec
    has: the task, the backbone and the LoRA settings."""
    return {"task": task, "model": cfg.model.name, "target_modules": cfg.model.target_modules,
            "alpha": cfg.lora.alpha, "rslora": cfg.lora.rslora, "dropout": cfg.lora.dropout,
            "max_rank": max(cfg.lora.ranks), "dtype": cfg.model.dtype}


_TASKS: dict[str, Task] = {}
DEFAULT_TASK = "classification"


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry under ``task.name``."""
    if task.name in _TASKS:
        raise ValueError(f"task {task.name!r} is already registered.")
    _TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task ``name``; the error lists the known ones."""
    if name not in _TASKS:
        raise ConfigError(f"unknown task {name!r}; known tasks: {sorted(_TASKS)}.")
    return _TASKS[name]


def task_for(dataset: str) -> Task:
    """The task whose data ``dataset`` names: the one that claims it, else classification."""
    claimed = [t for t in _TASKS.values() if t.claims(dataset)]
    return claimed[0] if claimed else _TASKS[DEFAULT_TASK]
