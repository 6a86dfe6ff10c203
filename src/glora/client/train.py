"""One client's local training, independent of any engine (in-process simulator or Flower).

A :class:`TrainTask` carries everything that decides the result (start weights, data, seeds), so
a client's result is bit-for-bit the same whichever process runs it, and whatever ran there before.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from glora.client.tokenize import batch_inputs
from glora.models import LORA_A, LORA_B, Adapter, ModelCache, check_tensors, copy_into

OPTIMIZERS = ("adamw", "sgd")


@dataclass
class TrainTask:
    """What a client trains from and how.

    Args:
        client_id, round: who and when (they seed the batch order together with ``seed``).
        rank: LoRA rank of this client's adapter.
        seed: seed of the batch order and dropout.
        adapter: start adapter (PEFT keys without the adapter name, ``lora_A``/``lora_B`` of
            ``rank``); ``None``: a fresh PEFT-style init drawn from ``init_seed``. All-zero rows of
            ``lora_A`` (a readout padded to a larger rank) are re-initialized the same way.
        init_seed: seed of fresh or re-initialized ``lora_A`` rows; the same for every client of
            a round unless ``train.init=independent`` (:func:`glora.sim.plan.init_seed`).
        head: classifier head to start from (``modules_to_save`` keys); ``None``: the initial head.
        base: layer prefix -> dense ``d_out x d_in`` delta added to that layer's frozen weight
            (FLoRA merges, FedEx-LoRA residuals); empty for most methods.
        frozen: factors not trained, from ``("A", "B")`` (FFA-LoRA freezes ``A``).
        data: ``(input_ids, attention_mask[, token_type_ids], labels)`` of the client's examples.
        steps, batch_size, lr, optimizer, weight_decay: the local optimization.
        head_lr: learning rate of the classification head (``None``: ``lr``).
    """

    client_id: int
    round: int
    rank: int
    seed: int
    adapter: dict[str, Tensor] | None
    init_seed: int
    head: dict[str, Tensor] | None
    base: dict[str, Tensor]
    frozen: tuple[str, ...]
    data: tuple[Tensor, ...]
    steps: int
    batch_size: int
    lr: float
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    head_lr: float | None = None

    def __post_init__(self) -> None:
        problems = [f"`{name}` must be a positive integer, got {value!r}."
                    for name, value in (("rank", self.rank), ("steps", self.steps),
                                        ("batch_size", self.batch_size))
                    if isinstance(value, bool) or not isinstance(value, int) or value < 1]
        for name, value in (("lr", self.lr), ("head_lr", 1.0 if self.head_lr is None
                                              else self.head_lr)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                problems.append(f"`{name}` must be a positive number, got {value!r}.")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"`optimizer` must be one of {list(OPTIMIZERS)}, "
                            f"got {self.optimizer!r}.")
        if not set(self.frozen) <= {"A", "B"}:
            problems.append(f"`frozen` may hold only 'A' and 'B', got {self.frozen!r}.")
        if self.data:  # empty: the engine attaches the client's data before training
            problems += self.data_problems()
        if problems:
            raise ValueError(f"client {self.client_id}, round {self.round}: " + " ".join(problems))

    def data_problems(self) -> list[str]:
        if len(self.data) not in (3, 4) or len({len(t) for t in self.data}) != 1 \
                or len(self.data[0]) == 0:
            return ["`data` must be (input_ids, attention_mask[, token_type_ids], labels) with one "
                    f"row per example, got {len(self.data)} tensors of lengths "
                    f"{[len(t) for t in self.data]}."]
        return []


@dataclass
class TrainResult:
    """A client's whole adapter and head after local training (CPU tensors, detached copies)."""

    client_id: int
    adapter: dict[str, Tensor]
    head: dict[str, Tensor]
    num_examples: int
    train_loss: float  # mean training loss over the local steps
    seconds: float


def init_lora_A(shape: tuple[int, int], generator: torch.Generator) -> Tensor:
    """PEFT's default ``lora_A`` init (Kaiming-uniform, ``a = sqrt(5)``), from ``generator``."""
    return torch.nn.init.kaiming_uniform_(torch.empty(shape), a=math.sqrt(5), generator=generator)


def start_adapter(task: TrainTask, adapter: Adapter) -> dict[str, Tensor]:
    """The task's start factors, with all-zero ``lora_A`` rows re-initialized.

    A zero row ``i`` of ``A`` makes column ``i`` of ``B`` irrelevant, so that column is zeroed:
    the start update ``s B A`` is unchanged, and the new row can train. A fresh start is the
    case where every row is zero. Each layer draws its init in key order from ``init_seed``,
    whether or not it needs it, so one layer's state never shifts another's draw.
    """
    shapes = {k: tuple(p.shape) for k, p in adapter.lora.items()}
    given = task.adapter if task.adapter is not None else \
        {k: torch.zeros(s) for k, s in shapes.items()}
    check_tensors(shapes, given, f"rank-{task.rank} adapter")
    g = torch.Generator().manual_seed(task.init_seed)
    start = {}
    for key_a in sorted(k for k in shapes if k.endswith(LORA_A)):
        key_b = key_a.removesuffix(LORA_A) + LORA_B
        A, B = given[key_a], given[key_b]
        fresh = init_lora_A(shapes[key_a], g)
        dead = A.abs().amax(dim=1) == 0
        if bool(dead.any()):
            A, B = A.clone(), B.clone()
            A[dead], B[:, dead] = fresh[dead], 0.0
        start[key_a], start[key_b] = A, B
    return start


def batch_order(n: int, steps: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """Example indices of each step: consecutive slices of a stream of shuffled epochs."""
    size = min(batch_size, n)
    stream = torch.empty(0, dtype=torch.long)
    batches = []
    for _ in range(steps):
        if len(stream) < size:
            stream = torch.cat([stream, torch.randperm(n, generator=generator)])
        batches.append(stream[:size])
        stream = stream[size:]
    return batches


def train_client(cache: ModelCache, task: TrainTask) -> TrainResult:
    """Train one client's adapter and head from the task's start; return copies of both.

    The LoRA settings (alpha, rsLoRA, dropout, target modules) are the cache's.
    """
    problems = task.data_problems()
    if problems:
        raise ValueError(f"client {task.client_id}, round {task.round}: {problems[0]}")
    started = time.perf_counter()
    adapter = cache.adapter(task.rank)
    copy_into(adapter.lora, start_adapter(task, adapter), f"rank-{task.rank} adapter")
    copy_into(adapter.head, task.head or cache.head_init, "head")
    cache.load_base(adapter.base_layers, task.base)

    frozen = tuple(LORA_A if f == "A" else LORA_B for f in task.frozen)
    groups = [{"params": [p for k, p in sorted(adapter.lora.items()) if not k.endswith(frozen)]},
              {"params": [p for _, p in sorted(adapter.head.items())],
               "lr": task.lr if task.head_lr is None else task.head_lr}]
    model = adapter.model.requires_grad_(False)
    for group in groups:
        for p in group["params"]:
            p.requires_grad_(True)
    if task.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=task.lr,
                                                       weight_decay=task.weight_decay)
    else:
        opt = torch.optim.SGD(groups, lr=task.lr, weight_decay=task.weight_decay)

    batch_seed, dropout_seed = np.random.SeedSequence(
        [task.seed, task.round, task.client_id]).generate_state(2)
    order = batch_order(len(task.data[0]), task.steps, task.batch_size,
                        torch.Generator().manual_seed(int(batch_seed)))
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(dropout_seed))
        model.train()
        try:
            for idx in order:
                inputs, labels = batch_inputs(task.data, idx)
                loss = model(**inputs, labels=labels).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
        finally:
            model.eval().requires_grad_(False)
    return TrainResult(
        client_id=task.client_id,
        adapter={k: p.detach().clone() for k, p in adapter.lora.items()},
        head={k: p.detach().clone() for k, p in adapter.head.items()},
        num_examples=len(task.data[0]), train_loss=sum(losses) / len(losses),
        seconds=time.perf_counter() - started)
