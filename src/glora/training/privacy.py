"""Differentially private local training (DP-SGD) with Opacus, and the privacy account.

A private client clips every example's gradient of its trainable parameters (LoRA factors and
head) to ``max_grad_norm`` and adds Gaussian noise of standard deviation
``noise_multiplier * max_grad_norm`` to their sum (Opacus's ``GradSampleModule`` and
``DPOptimizer``); frozen weights take no part. The account is Opacus's RDP accountant over the
client's history of ``(noise_multiplier, sample_rate, steps)``, one entry per round it trained:
its batches are shuffled fixed-size slices of its data, accounted at ``sample_rate = batch / n``
as Opacus accounts a shuffled loader.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from glora.errors import ConfigError


def check_private(model: nn.Module) -> None:
    """Raise a :class:`ConfigError` naming the trainable modules Opacus cannot compute per-sample
    gradients for (nothing when it can)."""
    from opacus import GradSampleModule

    errors = GradSampleModule.validate(model, strict=False)
    if errors:
        raise ConfigError(["Opacus cannot train this model privately (`train.dp_*`); "
                           "its per-sample gradients are not supported for:",
                           *[str(e) for e in errors[:4]]])


@contextlib.contextmanager
def private(model: nn.Module, optimizer: torch.optim.Optimizer, noise_multiplier: float,
            max_grad_norm: float, batch_size: int) -> Iterator[torch.optim.Optimizer]:
    """The optimizer made private for the block: per-sample clipping and noise on ``model``'s
    parameters that require gradients; the model is left as it was afterwards."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    check_private(model)
    sampled = GradSampleModule(model, loss_reduction="mean", strict=False)
    try:
        yield DPOptimizer(optimizer, noise_multiplier=noise_multiplier,
                          max_grad_norm=max_grad_norm, expected_batch_size=batch_size)
    finally:
        sampled._close()  # hooks and per-sample gradients removed: the cache's model is reused


def epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """ε after the DP-SGD steps of ``history`` (``(noise_multiplier, sample_rate, steps)`` each),
    by Opacus's RDP accountant."""
    from opacus.accountants import RDPAccountant

    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [tuple(h) for h in history]
    return float(accountant.get_epsilon(delta))


def noise_for(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The noise multiplier that spends ``target_epsilon`` in ``steps`` steps at ``sample_rate``."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                      sample_rate=sample_rate, steps=steps, accountant="rdp"))
