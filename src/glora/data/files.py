"""Load the user's own data: a CSV file with a header row, or a JSONL file, one object a line.

Each example has a text, optionally a second text (sentence-pair tasks), a label and optionally
the name of its task (task heterogeneity). Column names are configurable. Classification labels
may be class ids (integers) or names (strings, mapped to ids in sorted order); regression labels
are real numbers.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from glora.errors import ConfigError

from .dataset import Splits, TaskType, TextDataset, train_test_split

SUFFIXES = (".csv", ".jsonl")
BINARY_METRICS = ("accuracy", "f1")
MULTICLASS_METRICS = ("accuracy", "macro_f1")
REGRESSION_METRICS = ("pearson", "spearman")
_INT = re.compile(r"[+-]?\d+")


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each example of a CSV or JSONL file."""
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            for row in reader:
                yield reader.line_num, row
        return
    with path.open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}, line {number}: not valid JSON ({err.msg}).") from err
            if not isinstance(record, dict):
                raise ConfigError(f"{path}, line {number}: expected a JSON object, "
                                  f"got {type(record).__name__}.")
            yield number, record


def _as_int(value: Any) -> int | None:
    """``value`` as a class id if it is written as an integer, else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value)
    return None


def _class_ids(path: Path, raw: list[tuple[int, Any]], label_names: Sequence[str] | None,
               ) -> tuple[list[int], tuple[str, ...] | None]:
    """Class ids and label names: integers are ids; otherwise names, mapped via ``label_names``."""
    ids = [i for i in (_as_int(v) for _, v in raw) if i is not None]
    if len(ids) == len(raw):
        negative = next(((n, i) for (n, _), i in zip(raw, ids, strict=True) if i < 0), None)
        if negative:
            raise ConfigError(
                f"{path}, line {negative[0]}: class ids must be >= 0, got {negative[1]}.")
        return ids, tuple(label_names) if label_names else None
    names = tuple(label_names) if label_names else tuple(sorted({str(v) for _, v in raw}))
    index = {name: i for i, name in enumerate(names)}
    unknown = next(((n, v) for n, v in raw if str(v) not in index), None)
    if unknown:
        raise ConfigError(f"{path}, line {unknown[0]}: label {unknown[1]!r} is not among the "
                          f"label names {list(names)}.")
    return [index[str(v)] for _, v in raw], names


def _real_values(path: Path, raw: list[tuple[int, Any]]) -> list[float]:
    values = []
    for number, v in raw:
        try:
            values.append(float(v))
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"{path}, line {number}: regression label {v!r} is not a number.") from err
    return values


def load_file(path: str | Path, *, text_column: str = "text", text_pair_column: str | None = None,
              label_column: str = "label", task_type: TaskType = "classification",
              task_column: str | None = None, label_names: Sequence[str] | None = None,
              metrics: Sequence[str] | None = None, name: str | None = None) -> TextDataset:
    """Read one CSV or JSONL file into a :class:`TextDataset`.

    Args:
        path: a ``.csv`` file with a header row, or a ``.jsonl`` file with one object per line.
        text_column: column of the (first) text.
        text_pair_column: column of the second text of sentence-pair tasks, if any.
        label_column: column of the label.
        task_type: ``"classification"`` or ``"regression"`` (real-valued labels).
        task_column: column naming each example's task, for partitioning by task.
        label_names: class names in id order; pass the training set's names when reading its
            test file so both map names to the same ids. Default: the sorted distinct names.
        metrics: metric names; default accuracy and F1 (binary) or macro F1 (multiclass), or
            Pearson and Spearman for regression.
        name: data set name; default the file name without suffix.

    Raises:
        ConfigError: the file is missing, of another type, empty, lacks a column (the message
            lists the columns present) or holds a label that cannot be read.
    """
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ConfigError(f"{path}: expected a file ending in {' or '.join(SUFFIXES)}.")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file.")
    optional = {"text_pair_column": text_pair_column, "task_column": task_column}
    columns = {"text_column": text_column, "label_column": label_column,
               **{option: column for option, column in optional.items() if column is not None}}
    texts: list[str] = []
    pairs: list[str] = []
    tasks: list[str] = []
    raw_labels: list[tuple[int, Any]] = []
    for number, record in _records(path):
        for option, column in columns.items():
            if record.get(column) is None:
                what = "no column" if column not in record else "no value in column"
                raise ConfigError(f"{path}, line {number}: {what} `{column}` (columns: "
                                  f"{list(record)}); set `{option}` to the right one.")
        texts.append(str(record[text_column]))
        if text_pair_column is not None:
            pairs.append(str(record[text_pair_column]))
        if task_column is not None:
            tasks.append(str(record[task_column]))
        raw_labels.append((number, record[label_column]))
    if not texts:
        raise ConfigError(f"{path}: no examples.")
    labels: list[int] | list[float]
    if task_type == "regression":
        labels, names, default_metrics = _real_values(path, raw_labels), None, REGRESSION_METRICS
    else:
        labels, names = _class_ids(path, raw_labels, label_names)
        binary = (len(names) if names else max(labels) + 1) <= 2
        default_metrics = BINARY_METRICS if binary else MULTICLASS_METRICS
    return TextDataset(texts=texts, labels=labels, text_pairs=pairs if text_pair_column else None,
                       label_names=names, task_type=task_type, name=name or path.stem,
                       metrics=tuple(metrics or default_metrics),
                       tasks=tasks if task_column else None)


def load_files(train_file: str | Path, test_file: str | Path | None = None, *,
               test_fraction: float = 0.2, seed: int = 0, **options: Any) -> Splits:
    """Train and test sets from the user's files; without a test file, a seeded stratified split.

    ``options`` are :func:`load_file`'s keyword arguments. The test file is read with the
    training set's label names, task type and metrics, so class ids agree across both.
    """
    train = load_file(train_file, **options)
    if test_file is None:
        return train_test_split(train, test_fraction, seed)
    options.update(label_names=train.label_names, task_type=train.task_type, metrics=train.metrics,
                   name=train.name)
    return Splits(train=train, test=load_file(test_file, **options))
