"""Evaluation metrics as pure numpy functions (no sklearn or scipy dependency).

Every function takes predictions and references as 1-D sequences of the same length: class ids
for classification metrics, real numbers for correlations. Logits must be turned into class ids
(argmax) by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from glora.errors import ConfigError

ArrayLike = Sequence[Any] | np.ndarray


def _pair(preds: ArrayLike, labels: ArrayLike, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    p: np.ndarray = np.asarray(preds, dtype=dtype)
    y: np.ndarray = np.asarray(labels, dtype=dtype)
    if p.ndim != 1 or p.shape != y.shape or p.size == 0:
        raise ValueError(f"`preds` and `labels` must be non-empty 1-D of one length, "
                         f"got shapes {p.shape} and {y.shape}.")
    return p, y


def accuracy(preds: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of predictions equal to the label."""
    p, y = _pair(preds, labels, np.int64)
    return float(np.mean(p == y))


def _f1_of_class(p: np.ndarray, y: np.ndarray, c: int) -> float:
    tp = np.sum((p == c) & (y == c))
    denom = np.sum(p == c) + np.sum(y == c)
    return float(2 * tp / denom) if denom else 0.0


def f1(preds: ArrayLike, labels: ArrayLike) -> float:
    """Binary F1 of the positive class 1 (GLUE's MRPC and QQP metric); 0 when undefined."""
    p, y = _pair(preds, labels, np.int64)
    return _f1_of_class(p, y, 1)


def macro_f1(preds: ArrayLike, labels: ArrayLike) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    p, y = _pair(preds, labels, np.int64)
    return float(np.mean([_f1_of_class(p, y, c) for c in np.union1d(p, y)]))


def matthews(preds: ArrayLike, labels: ArrayLike) -> float:
    """Matthews correlation (multiclass form of Gorodkin 2004; GLUE's CoLA metric).

    0 when undefined (all predictions or all labels in one class), as scikit-learn does.
    """
    p, y = _pair(preds, labels, np.int64)
    classes, codes = np.unique(np.concatenate([y, p]), return_inverse=True)
    k, n = len(classes), len(y)
    confusion = np.zeros((k, k), dtype=np.float64)  # rows: label, columns: prediction
    np.add.at(confusion, (codes[:n], codes[n:]), 1.0)
    t, q = confusion.sum(axis=1), confusion.sum(axis=0)
    cov = np.trace(confusion) * n - t @ q
    denom = np.sqrt((n * n - q @ q) * (n * n - t @ t))
    return float(cov / denom) if denom else 0.0


def pearson(preds: ArrayLike, labels: ArrayLike) -> float:
    """Pearson correlation; NaN when either side is constant (the correlation is undefined)."""
    p, y = _pair(preds, labels, np.float64)
    pc, yc = p - p.mean(), y - y.mean()
    denom = np.sqrt((pc @ pc) * (yc @ yc))
    return float(pc @ yc / denom) if denom else float("nan")


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks starting at 1, ties sharing their average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # rank of the last member of each group of equal values
    return (upper - (counts - 1) / 2.0)[inverse]


def spearman(preds: ArrayLike, labels: ArrayLike) -> float:
    """Spearman rank correlation (Pearson of average ranks); NaN when either side is constant."""
    p, y = _pair(preds, labels, np.float64)
    return pearson(_ranks(p), _ranks(y))


METRICS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "accuracy": accuracy, "f1": f1, "macro_f1": macro_f1, "matthews": matthews,
    "pearson": pearson, "spearman": spearman,
}


def check_metric_names(names: Sequence[str]) -> None:
    """Raise :class:`ConfigError` naming every unknown metric and the known ones."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}.")


def compute_metrics(names: Sequence[str], preds: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """``{name: value}`` for each metric in ``names`` (see :data:`METRICS`)."""
    check_metric_names(names)
    return {n: METRICS[n](preds, labels) for n in names}
