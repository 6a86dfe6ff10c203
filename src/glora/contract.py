"""What the server asks of a client and what the client returns, whatever the engine.

A :class:`TrainTask` carries everything that decides the result (start weights, data, seeds), so
a client's result is bit-for-bit the same whichever process runs it, and whatever ran there before.
This module imports no model code: the server, the engines and the wire format use it as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from glora.devices import PRECISIONS

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
            a round unless ``train.init=independent`` (:func:`glora.federation.plan.init_seed`).
        init_rank: the rank every layer's init is drawn at before a client keeps its first
            ``rank`` rows (the run's largest client rank), so that, in every layer, a rank-4
            start is the first 4 rows of a rank-8 start from the same seed; ``None``: ``rank``.
        head: classifier head to start from (``modules_to_save`` keys); ``None``: the initial head.
        base: layer prefix -> dense ``d_out x d_in`` delta added to that layer's frozen weight
            (FLoRA merges, FedEx-LoRA residuals); empty for most methods.
        frozen: factors not trained, from ``("A", "B")`` (FFA-LoRA freezes ``A``).
        data: the client's examples as tensors of one row each (the task says which: for
            classification ``(input_ids, attention_mask[, token_type_ids], labels)``).
        steps, batch_size, lr, optimizer, weight_decay: the local optimization.
        head_lr: learning rate of the classification head (``None``: ``lr``).
        precision: ``fp32``, or ``bf16``/``fp16`` autocast of the forward pass (the trained
            parameters and optimizer state stay float32; fp16 scales the gradients).
        grad_accum_steps: micro-batches a step's ``batch_size`` examples are split into (less
            memory, the same step).
        gradient_checkpointing: recompute activations in the backward pass (less memory).
        dp_noise_multiplier: DP-SGD (:mod:`glora.training.privacy`): Gaussian noise of this many
            times ``dp_max_grad_norm`` on the sum of per-example gradients clipped to
            ``dp_max_grad_norm``; ``None``: no DP.
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
    init_rank: int | None = None
    precision: str = "fp32"
    grad_accum_steps: int = 1
    gradient_checkpointing: bool = False
    dp_noise_multiplier: float | None = None
    dp_max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        problems = [f"`{name}` must be a positive integer, got {value!r}."
                    for name, value in (("rank", self.rank), ("steps", self.steps),
                                        ("batch_size", self.batch_size),
                                        ("init_rank", self.rank if self.init_rank is None
                                         else self.init_rank),
                                        ("grad_accum_steps", self.grad_accum_steps))
                    if isinstance(value, bool) or not isinstance(value, int) or value < 1]
        for name, value in (("lr", self.lr), ("head_lr", 1.0 if self.head_lr is None
                                              else self.head_lr)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                problems.append(f"`{name}` must be a positive number, got {value!r}.")
        if isinstance(self.init_rank, int) and isinstance(self.rank, int) \
                and self.init_rank < self.rank:
            problems.append(f"`init_rank` ({self.init_rank}) must be at least `rank` "
                            f"({self.rank}).")
        if self.precision not in PRECISIONS:
            problems.append(f"`precision` must be one of {list(PRECISIONS)}, "
                            f"got {self.precision!r}.")
        if self.dp_noise_multiplier is not None:
            if not (isinstance(self.dp_noise_multiplier, (int, float))
                    and 0 <= self.dp_noise_multiplier < math.inf):
                problems.append("`dp_noise_multiplier` must be a non-negative number, got "
                                f"{self.dp_noise_multiplier!r}.")
            if not (isinstance(self.dp_max_grad_norm, (int, float))
                    and 0 < self.dp_max_grad_norm < math.inf):
                problems.append("`dp_max_grad_norm` must be a positive number, got "
                                f"{self.dp_max_grad_norm!r}.")
            if self.grad_accum_steps != 1 or self.gradient_checkpointing \
                    or self.precision != "fp32":
                problems.append("DP-SGD runs in fp32 without gradient accumulation or "
                                "checkpointing (per-example gradients are taken per step).")
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
        """What is wrong with ``data`` whatever the task: tensors of one row per example."""
        if not self.data or len({len(t) for t in self.data}) != 1 or len(self.data[0]) == 0:
            return ["`data` must be tensors with one row per example, got "
                    f"{len(self.data)} tensors of lengths {[len(t) for t in self.data]}."]
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


def lora_scaling(alpha: float, rank: int, rslora: bool = False) -> float:
    """LoRA's scaling of ``B A``: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
    return alpha / (math.sqrt(rank) if rslora else rank)
