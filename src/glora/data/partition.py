"""Split a data set across federated clients.

Every partitioner returns one sorted list of example indices per client; the lists are disjoint
and, unless stated otherwise, cover every example. The same arguments and seed give the same
partition.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from glora.errors import ConfigError

Partition = list[list[int]]


def _check_num_clients(num_clients: int, available: int, what: str) -> None:
    if num_clients < 1:
        raise ConfigError(f"`num_clients` must be at least 1, got {num_clients}.")
    if num_clients > available:
        raise ConfigError(f"{num_clients} clients but only {available} {what}: every client needs "
                          f"at least one; use at most {available} clients.")


def _class_ids(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """``labels`` as non-negative integer class ids; regression targets are refused."""
    y = np.asarray(labels)
    if y.ndim != 1 or (y.size and (not np.all(np.mod(y, 1) == 0) or y.min() < 0)):
        raise ConfigError("label-based partitioning needs class ids (non-negative integers); "
                          "for regression data use `iid`.")
    return y.astype(np.int64)


def _sorted(parts: list[np.ndarray] | list[list[int]]) -> Partition:
    return [sorted(int(i) for i in part) for part in parts]


def _apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Integer shares of ``total`` proportional to ``weights`` (largest remainder method)."""
    exact = total * weights / weights.sum()
    shares = np.floor(exact).astype(np.int64)
    remainder = total - int(shares.sum())
    shares[np.argsort(shares - exact, kind="stable")[:remainder]] += 1
    return shares


def label_counts(parts: Partition, labels: Sequence[int] | np.ndarray,
                 num_classes: int | None = None) -> np.ndarray:
    """``num_clients x num_classes`` matrix: how many examples of each class each client holds."""
    y = _class_ids(labels)
    k = num_classes if num_classes is not None else int(y.max(initial=-1)) + 1
    return np.stack([np.bincount(y[np.asarray(part, dtype=np.int64)], minlength=k)
                     for part in parts]) if parts else np.zeros((0, k), dtype=np.int64)


def iid(n: int, num_clients: int, seed: int) -> Partition:
    """Shuffle ``n`` examples and deal them into ``num_clients`` parts of (nearly) equal size."""
    _check_num_clients(num_clients, n, "examples")
    perm = np.random.default_rng(seed).permutation(n)
    return _sorted(np.array_split(perm, num_clients))


def dirichlet(labels: Sequence[int] | np.ndarray, num_clients: int, alpha: float, seed: int,
              min_size: int = 1, max_tries: int = 100) -> Partition:
    """Label skew: each class is split across clients in proportions drawn from ``Dir(alpha)``.

    The standard non-IID benchmark partition (Hsu et al. 2019, https://arxiv.org/abs/1909.06335):
    small ``alpha`` (0.1) gives each client a few dominant classes, large ``alpha`` approaches
    IID. Draws are repeated until every client holds at least ``min_size`` examples.

    Raises:
        ConfigError: ``alpha <= 0``, too few examples, non-class labels, or ``max_tries`` draws
            all left some client below ``min_size`` (the message names the client).
    """
    if not alpha > 0:
        raise ConfigError(f"`alpha` must be positive, got {alpha}.")
    if min_size < 1 or max_tries < 1:
        raise ConfigError(f"`min_size` and `max_tries` must be at least 1, got {min_size} and "
                          f"{max_tries}.")
    y = _class_ids(labels)
    _check_num_clients(num_clients, len(y), "examples")
    if num_clients * min_size > len(y):
        raise ConfigError(f"{num_clients} clients with min_size={min_size} need at least "
                          f"{num_clients * min_size} examples, got {len(y)}.")
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for members in by_class:
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
            for part, chunk in zip(parts, np.split(rng.permutation(members), cuts), strict=True):
                part.extend(chunk.tolist())
        sizes = [len(p) for p in parts]
        if min(sizes) >= min_size:
            return _sorted(parts)
    worst = int(np.argmin(sizes))
    raise ConfigError(
        f"Dirichlet partition (alpha={alpha}, {num_clients} clients, {len(y)} examples): after "
        f"{max_tries} draws client {worst} still held {sizes[worst]} examples (min_size="
        f"{min_size}); use fewer clients, a larger `alpha`, or a smaller `min_size`.")


def by_task(task_ids: Sequence[Hashable], num_clients: int, seed: int) -> Partition:
    """Task heterogeneity: each client holds whole tasks (one, or several when tasks outnumber
    clients), assigned round-robin after a seeded shuffle of the tasks."""
    tasks = sorted(set(task_ids), key=str)
    _check_num_clients(num_clients, len(tasks), "tasks")
    order = np.random.default_rng(seed).permutation(len(tasks))
    client_of = {tasks[t]: pos % num_clients for pos, t in enumerate(order)}
    parts: Partition = [[] for _ in range(num_clients)]
    for i, task in enumerate(task_ids):
        parts[client_of[task]].append(i)
    return parts


def match_label_proportions(train_parts: Partition, train_labels: Sequence[int] | np.ndarray,
                            test_labels: Sequence[int] | np.ndarray, seed: int) -> Partition:
    """Split a test set across clients with each client's training label mix (personalized eval).

    The test examples of class ``c`` are dealt to clients in proportion to how many training
    examples of ``c`` each holds, so a client's test part mirrors its training part (and its
    size is roughly proportional to it). Test examples of a class no client trains on are left
    out.

    Raises:
        ConfigError: some client would get no test example (the message names it).
    """
    y_test = _class_ids(test_labels)
    y_train = _class_ids(train_labels)
    num_classes = int(max(y_train.max(initial=-1), y_test.max(initial=-1))) + 1
    counts = label_counts(train_parts, y_train, num_classes)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in train_parts]
    for c in np.unique(y_test):
        if counts[:, c].sum() == 0:
            continue
        members = rng.permutation(np.flatnonzero(y_test == c))
        shares = _apportion(len(members), counts[:, c].astype(np.float64))
        for part, chunk in zip(parts, np.split(members, np.cumsum(shares)[:-1]), strict=True):
            part.extend(chunk.tolist())
    for k, part in enumerate(parts):
        if not part:
            raise ConfigError(
                f"client {k} gets no test example (it trains on {len(train_parts[k])} examples, "
                f"{len(y_test)} test examples in all); use fewer clients or a larger test set.")
    return _sorted(parts)
