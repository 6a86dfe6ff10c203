"""GLUE tasks through the Hugging Face ``datasets`` library (``pip install 'glora[glue]'``).

GLUE's test labels are hidden, so the validation split serves as the test set, as in the
federated LoRA papers this project compares against (SPEC.md, "Public reference settings").
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from glora.errors import ConfigError, GloraError

from .dataset import Splits, TaskType, TextDataset

HUB_ID = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueTask:
    """How one GLUE task is read and scored.

    Args:
        text_keys: the column(s) holding the text, or the two texts of a pair.
        num_labels: number of classes; 1 for the regression task STS-B.
        metrics: the official metric(s), the first being the headline number.
        eval_split: the labelled split used as the test set.
    """

    text_keys: tuple[str] | tuple[str, str]
    num_labels: int
    metrics: tuple[str, ...]
    eval_split: str = "validation"

    @property
    def task_type(self) -> TaskType:
        return "regression" if self.num_labels == 1 else "classification"


GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(("sentence",), 2, ("matthews",)),
    "sst2": GlueTask(("sentence",), 2, ("accuracy",)),
    "mrpc": GlueTask(("sentence1", "sentence2"), 2, ("f1", "accuracy")),
    "qqp": GlueTask(("question1", "question2"), 2, ("f1", "accuracy")),
    "stsb": GlueTask(("sentence1", "sentence2"), 1, ("pearson", "spearman")),
    "mnli": GlueTask(("premise", "hypothesis"), 3, ("accuracy",), "validation_matched"),
    "qnli": GlueTask(("question", "sentence"), 2, ("accuracy",)),
    "rte": GlueTask(("sentence1", "sentence2"), 2, ("accuracy",)),
    "wnli": GlueTask(("sentence1", "sentence2"), 2, ("accuracy",)),
}


def glue_task(task: str) -> GlueTask:
    """The table entry of ``task``; :class:`ConfigError` listing the known tasks otherwise."""
    if task not in GLUE_TASKS:
        raise ConfigError(f"unknown GLUE task {task!r}; known: {sorted(GLUE_TASKS)}.")
    return GLUE_TASKS[task]


def _to_dataset(split: Any, task: str, spec: GlueTask) -> TextDataset:
    """Convert a ``datasets.Dataset`` split (column access by name) to a :class:`TextDataset`."""
    names = getattr(split.features["label"], "names", None)
    pairs = list(split[spec.text_keys[1]]) if len(spec.text_keys) == 2 else None
    return TextDataset(texts=list(split[spec.text_keys[0]]), labels=list(split["label"]),
                       text_pairs=pairs,
                       label_names=tuple(names) if names else None, task_type=spec.task_type,
                       metrics=spec.metrics, name=f"glue/{task}")


def load_glue(task: str) -> Splits:
    """The ``train`` split and the labelled evaluation split of a GLUE task.

    Raises:
        ConfigError: unknown task.
        GloraError: ``datasets`` is not installed, or the Hub (or its local cache) cannot serve
            the task.
    """
    spec = glue_task(task)
    try:
        datasets = importlib.import_module("datasets")
    except ImportError as err:
        raise GloraError(f"GLUE task {task!r} needs the `datasets` library: "
                         f"pip install 'glora[glue]' (or pip install datasets).") from err
    try:
        data = datasets.load_dataset(HUB_ID, task)
    except Exception as err:  # the Hub client raises many unrelated types for "no network"
        raise GloraError(
            f"Could not load GLUE task {task!r} from the Hugging Face Hub ({HUB_ID}): "
            f"{type(err).__name__}: {err}. On a machine without Hub access, copy a filled "
            f"Hugging Face cache (HF_HOME) from a connected machine and set HF_DATASETS_OFFLINE=1, "
            f"or export the task to CSV/JSONL and load that file instead.") from err
    return Splits(train=_to_dataset(data["train"], task, spec),
                  test=_to_dataset(data[spec.eval_split], task, spec))
