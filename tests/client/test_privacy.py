"""DP-SGD clients (Opacus): the clipping bound holds, the account matches Opacus's accountant
and survives a resume, and a model Opacus cannot wrap is named."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from glora.contract import TrainTask
from glora.errors import ConfigError
from glora.global_model import LORA_B
from glora.training import privacy
from glora.training.cache import ModelCache
from glora.training.train import train_client


def make_task(data, **changes) -> TrainTask:
    task = TrainTask(client_id=0, round=0, rank=4, seed=1, adapter=None, init_seed=2, head=None,
                     base={}, frozen=(), data=data, steps=1, batch_size=16, lr=1.0,
                     optimizer="sgd", dp_noise_multiplier=0.0, dp_max_grad_norm=1e-3)
    return replace(task, **changes)


def step_norm(cache: ModelCache, task: TrainTask) -> float:
    """Norm of one SGD step at rate 1 over every trained parameter: the mean of the clipped
    per-example gradients (plus noise)."""
    start = {k: v.clone() for k, v in train_client(cache, replace(task, steps=1, lr=1e-30))
             .adapter.items()}
    after = train_client(cache, task)
    moved = [after.adapter[k] - start[k] for k in start if k.endswith(LORA_B)]
    head = cache.head_init
    moved += [after.head[k] - head[k] for k in head]
    return float(torch.cat([m.flatten() for m in moved]).norm())


def test_per_example_gradients_are_clipped_to_max_grad_norm(cache: ModelCache, sentiment):
    """Without noise, one SGD step at rate 1 is the mean of per-example gradients, each clipped
    to norm C: its norm is at most C. (B starts at zero and A's gradient is then zero, so the
    step is in B and the head.)"""
    for bound in (1e-3, 1e-2):
        assert step_norm(cache, make_task(sentiment, dp_max_grad_norm=bound)) <= bound * 1.0001
    unclipped = step_norm(cache, make_task(sentiment, dp_noise_multiplier=None))
    assert unclipped > 1e-2  # the plain step is larger: the bound is doing the work


def test_noise_is_added_and_drawn_from_the_task_seed(cache: ModelCache, sentiment):
    noisy = make_task(sentiment, dp_noise_multiplier=1.0, dp_max_grad_norm=1.0, lr=1e-2)
    a, b = train_client(cache, noisy), train_client(cache, noisy)
    assert all(torch.equal(a.adapter[k], b.adapter[k]) for k in a.adapter)  # reproducible
    quiet = train_client(cache, replace(noisy, dp_noise_multiplier=0.0))
    assert any(not torch.equal(a.adapter[k], quiet.adapter[k]) for k in a.adapter)
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None
                   for p in cache.adapter(4).model.parameters())  # the cache's model is clean


def test_the_account_is_opacus_s_and_grows_with_the_rounds():
    from opacus.accountants import RDPAccountant

    step = (1.1, 16 / 120, 10)
    eps = [privacy.epsilon([step] * rounds, 1e-5) for rounds in (1, 2, 3)]
    assert eps[0] < eps[1] < eps[2]
    reference = RDPAccountant()
    for _ in range(3):
        reference.step(noise_multiplier=1.1, sample_rate=16 / 120)
    history = [(1.1, 16 / 120, 1)] * 3
    assert privacy.epsilon(history, 1e-5) == pytest.approx(reference.get_epsilon(1e-5))
    noise = privacy.noise_for(2.0, 1e-5, 16 / 120, 30)
    assert privacy.epsilon([(noise, 16 / 120, 30)], 1e-5) == pytest.approx(2.0, rel=0.02)


def test_a_layer_opacus_cannot_train_privately_is_named():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    with pytest.raises(ConfigError, match="(?s)Opacus cannot train this model privately.*BatchNorm1d"):
        privacy.check_private(model)
    privacy.check_private(nn.Sequential(nn.Linear(4, 4)))  # supported: no error
