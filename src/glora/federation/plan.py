"""Who trains when: client ranks, per-round sampling and seeds, all derived from the run seed.

Every random choice is a pure function of ``(seed, round, client)``, so a resumed run draws exactly
what an uninterrupted one would, whatever process executes a client.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from glora.aggregation import get_method
from glora.config import ExperimentConfig, clients_per_round
from glora.contract import lora_scaling
from glora.errors import ConfigError
from glora.training import privacy


def client_ranks(cfg: ExperimentConfig) -> list[int]:
    """Each client's LoRA rank: the list cycled over clients, or drawn from it."""
    ranks, n = cfg.lora.ranks, cfg.data.num_clients
    if cfg.lora.rank_sampling == "random":
        rng = np.random.default_rng([cfg.seed, 7])
        return [int(r) for r in rng.choice(ranks, size=n)]
    return [ranks[i % len(ranks)] for i in range(n)]


def method_ranks(cfg: ExperimentConfig, method: str) -> tuple[list[int], str]:
    """Ranks a method runs with, and a label saying so where it needs equal ranks."""
    ranks = client_ranks(cfg)
    if get_method(method).mixed_ranks or len(set(ranks)) == 1:
        return ranks, method
    r = min(ranks) if cfg.lora.equal_rank == "min" else max(ranks)
    return [r] * len(ranks), f"{method} (all r={r})"


def method_options(cfg: ExperimentConfig, method: str, ranks: list[int]) -> dict:
    """The method's options from ``method_options``, with its server ``rank`` (where it has one)
    set to the largest client rank of the run unless given: the rank of the round's largest
    participant would change between rounds under partial participation, and a state of rank 8
    cannot serve a rank-16 client that a factor-handing method (HetLoRA) must truncate for."""
    options = dict(cfg.method_options.get(method, {}))
    fields = {f.name for f in dataclasses.fields(get_method(method).config_cls)}
    if "rank" in fields and options.get("rank") is None:
        options["rank"] = max(ranks)
    return options


def client_scaling(cfg: ExperimentConfig, rank: int) -> float:
    """The LoRA scaling of a client of ``rank`` under the run's ``lora`` settings."""
    return lora_scaling(cfg.lora.alpha, rank, cfg.lora.rslora)


def dp_noise(cfg: ExperimentConfig, examples: dict[int, int] | None) -> float | None:
    """The clients' DP-SGD noise multiplier: ``train.dp_noise_multiplier``, or the one with which
    the client of the largest sampling rate (the fewest examples) spends ``train.dp_epsilon`` at
    ``train.dp_delta`` over all rounds if it takes part in every one; ``None``: no DP.

    Raises:
        ConfigError: ``train.dp_epsilon`` without the clients' example counts.
    """
    train = cfg.train
    if train.dp_epsilon is None:
        return train.dp_noise_multiplier
    if not examples:
        raise ConfigError("`train.dp_epsilon` needs the clients' example counts to set the noise; "
                          "set `train.dp_noise_multiplier` instead.")
    rate = min(1.0, train.batch_size / min(examples.values()))
    return privacy.noise_for(train.dp_epsilon, train.dp_delta, rate,
                             train.rounds * train.local_steps)


def round_lr(cfg: ExperimentConfig, round_: int) -> tuple[float, float | None]:
    """The learning rate and head rate of ``round_`` (0-based) under ``train.lr_schedule``.

    ``cosine`` decays both from their set values by ``(1 + cos(pi t / T)) / 2`` over the
    ``T = train.rounds`` rounds, so late rounds take small steps and the final global model is
    not left wherever one round's noisy client steps put it.
    """
    factor = 1.0
    if cfg.train.lr_schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * round_ / cfg.train.rounds))
    head = cfg.train.head_lr
    return cfg.train.lr * factor, None if head is None else head * factor


def sample_clients(cfg: ExperimentConfig, round_: int) -> list[int]:
    """The clients taking part in ``round_`` (sorted)."""
    n, k = cfg.data.num_clients, clients_per_round(cfg)
    if k == n:
        return list(range(n))
    rng = np.random.default_rng([cfg.seed, round_, 11])
    return sorted(int(i) for i in rng.choice(n, size=k, replace=False))


def train_seed(cfg: ExperimentConfig, round_: int, client: int) -> int:
    """Seed of one client's local training in one round."""
    return int(np.random.default_rng([cfg.seed, round_, client, 13]).integers(2**31))


def init_seed(cfg: ExperimentConfig, round_: int, client: int, method: str) -> int:
    """Seed of a client's fresh adapter init (and of re-initialized ``lora_A`` rows).

    ``train.init=shared``: one seed per round for every client (a shared start);
    ``independent``: one per client and round, so clients start in unrelated gauges. A method
    that freezes ``A`` (FFA-LoRA) always gets the shared seed: its exact average needs every
    client to hold the same ``A``.
    """
    if cfg.train.init == "shared" or "A" in get_method(method).frozen_in(round_):
        return int(np.random.default_rng([cfg.seed, round_, 17]).integers(2**31))
    return int(np.random.default_rng([cfg.seed, round_, client, 19]).integers(2**31))
