"""The data layer: data sets, metrics and client partitions.

::

    from glora.data import load_dataset, dirichlet
    splits = load_dataset("rotten_tomatoes")            # or "glue/sst2", or "my_train.csv"
    parts = dirichlet(splits.train.labels, num_clients=10, alpha=0.5, seed=0)
    clients = [splits.train.subset(p) for p in parts]
"""

from pathlib import PurePath
from typing import Any

from glora.errors import ConfigError

from .dataset import Splits, TextDataset, train_test_split
from .files import SUFFIXES, load_file, load_files
from .glue import GLUE_TASKS, GlueTask, load_glue
from .metrics import METRICS, compute_metrics
from .partition import by_task, dirichlet, iid, label_counts, match_label_proportions
from .sentiment import load_rotten_tomatoes

DEFAULT_DATASET = "rotten_tomatoes"


def load_dataset(name_or_path: str = DEFAULT_DATASET, **options: Any) -> Splits:
    """Train and test sets by name or file path.

    Args:
        name_or_path: ``"rotten_tomatoes"`` (default; :func:`load_rotten_tomatoes`),
            ``"glue/<task>"`` (:func:`load_glue`), or a ``.csv`` / ``.jsonl`` path
            (:func:`load_files`; pass ``test_path=`` for a separate test file).
        options: keyword arguments of the loader chosen.

    Raises:
        ConfigError: the name is none of the above (the message lists the options).
    """
    if name_or_path == DEFAULT_DATASET:
        return load_rotten_tomatoes(**options)
    if name_or_path.startswith("glue/"):
        return load_glue(name_or_path.removeprefix("glue/"), **options)
    if PurePath(name_or_path).suffix in SUFFIXES:
        return load_files(name_or_path, **options)
    raise ConfigError(
        f"unknown data set {name_or_path!r}; use {DEFAULT_DATASET!r}, one of "
        f"{[f'glue/{t}' for t in GLUE_TASKS]}, or a path to a {' or '.join(SUFFIXES)} file.")


__all__ = ["DEFAULT_DATASET", "GLUE_TASKS", "METRICS", "GlueTask", "Splits", "TextDataset",
           "by_task", "compute_metrics", "dirichlet", "iid", "label_counts", "load_dataset",
           "load_file", "load_files", "load_glue", "load_rotten_tomatoes",
           "match_label_proportions", "train_test_split"]
