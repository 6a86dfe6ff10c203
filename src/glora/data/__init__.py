"""The data layer: data sets, metrics and client partitions.

::

    from glora.data import load_dataset, dirichlet
    splits = load_dataset("rotten_tomatoes")            # or "glue/sst2", or "my_train.csv"
    parts = dirichlet(splits.train.labels, num_clients=10, alpha=0.5, seed=0)
    clients = [splits.train.subset(p) for p in parts]
"""

from pathlib import Path, PurePath
from typing import Any

from glora.errors import ConfigError

from .dataset import Splits, TextDataset, train_test_split
from .files import SUFFIXES, load_file, load_files
from .glue import GLUE_TASKS, GlueTask, load_glue
from .metrics import METRICS, compute_metrics
from .partition import by_task, dirichlet, iid, label_counts, match_label_proportions
from .sentiment import load_rotten_tomatoes

DEFAULT_DATASET = "rotten_tomatoes"


def load_dataset(name_or_path: str = DEFAULT_DATASET, *, test_file: str | Path | None = None,
                 seed: int = 0, **options: Any) -> Splits:
    """Train and test sets by name or file path.

    Args:
        name_or_path: ``"rotten_tomatoes"`` (default; :func:`load_rotten_tomatoes`),
            ``"glue/<task>"`` (:func:`load_glue`), or a ``.csv`` / ``.jsonl`` path
            (:func:`load_files`).
        test_file: a separate test file; only with a file path.
        seed: seed of the train/test split where one is drawn (``rotten_tomatoes``, a file
            without ``test_file``); GLUE's splits are fixed.
        options: further keyword arguments of the loader chosen.

    Raises:
        ConfigError: the name is none of the above (the message lists the options), or
            ``test_file`` is given with a named data set.
    """
    if PurePath(name_or_path).suffix in SUFFIXES:
        return load_files(name_or_path, test_file, seed=seed, **options)
    if name_or_path != DEFAULT_DATASET and not name_or_path.startswith("glue/"):
        raise ConfigError(
            f"unknown data set {name_or_path!r}; use {DEFAULT_DATASET!r}, one of "
            f"{[f'glue/{t}' for t in GLUE_TASKS]}, or a path to a {' or '.join(SUFFIXES)} file.")
    if test_file is not None:
        raise ConfigError(f"`test_file` applies only to a .csv/.jsonl data set; {name_or_path!r} "
                          f"has its own test split. Remove `test_file`.")
    if name_or_path == DEFAULT_DATASET:
        return load_rotten_tomatoes(seed=seed, **options)
    return load_glue(name_or_path.removeprefix("glue/"), **options)


__all__ = ["DEFAULT_DATASET", "GLUE_TASKS", "METRICS", "GlueTask", "Splits", "TextDataset",
           "by_task", "compute_metrics", "dirichlet", "iid", "label_counts", "load_dataset",
           "load_file", "load_files", "load_glue", "load_rotten_tomatoes",
           "match_label_proportions", "train_test_split"]
