"""Local training: it learns, it is reproducible, and it honours frozen factors, start adapters
with dead rows and base deltas."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import Tensor

from glora.contract import TrainTask
from glora.global_model import LORA_A, LORA_B
from glora.tasks.classification import score
from glora.training.cache import ModelCache
from glora.training.train import batch_order, start_adapter, train_client

QUERY0 = "base_model.model.bert.encoder.layer.0.attention.self.query"


def make_task(data: tuple[Tensor, ...], **changes) -> TrainTask:
    task = TrainTask(client_id=3, round=1, rank=4, seed=11, adapter=None, init_seed=5, head=None,
                     base={}, frozen=(), data=data, steps=6, batch_size=8, lr=5e-3)
    return replace(task, **changes)


def deltas(result, cache: ModelCache, rank: int) -> dict[str, Tensor]:
    """Dense ``s B A`` per layer of a client's adapter."""
    s = cache.scaling(rank)
    return {k.removesuffix(LORA_A): s * result.adapter[k.removesuffix(LORA_A) + LORA_B] @ a
            for k, a in result.adapter.items() if k.endswith(LORA_A)}


def test_training_changes_the_adapter_and_reduces_the_loss(cache: ModelCache, sentiment):
    task = make_task(sentiment, steps=20, lr=3e-2)
    before = score(cache.global_model({}, None), sentiment)
    result = train_client(cache, task)
    after = score(cache.global_model(deltas(result, cache, 4), result.head), sentiment)
    start = start_adapter(task, cache.adapter(4))
    assert after["loss"] < 0.6 * before["loss"]
    assert after["accuracy"] > 0.85
    assert all(not torch.equal(result.adapter[k], start[k]) for k in start)
    assert not torch.equal(result.head["base_model.model.classifier.weight"],
                           cache.head_init["base_model.model.classifier.weight"])
    assert result.num_examples == 48 and result.client_id == 3 and result.seconds > 0


def test_head_has_its_own_learning_rate(cache: ModelCache, sentiment):
    """``head_lr`` moves the head alone: SGD moves each parameter in proportion to its rate."""
    weight = "base_model.model.classifier.weight"
    base = dict(steps=1, optimizer="sgd", lr=1e-2)
    same = train_client(cache, make_task(sentiment, **base))
    slow = train_client(cache, make_task(sentiment, head_lr=1e-3, **base))
    for k in same.adapter:
        assert torch.equal(same.adapter[k], slow.adapter[k])
    moved = lambda r: r.head[weight] - cache.head_init[weight]  # noqa: E731
    assert torch.allclose(moved(slow), 0.1 * moved(same), rtol=1e-2, atol=1e-7)  # float32 sums
    assert float(moved(same).abs().max()) > 0
    with pytest.raises(ValueError, match="`head_lr` must be a positive number"):
        make_task(sentiment, head_lr=0.0)


def test_same_task_gives_identical_results_whatever_ran_before(cache: ModelCache, sentiment,
                                                               tiny_model_dir: str):
    task = make_task(sentiment)
    first = train_client(cache, task)
    other = ModelCache(tiny_model_dir, num_labels=2, alpha=8.0)  # as in another process
    train_client(other, make_task(sentiment, rank=2, seed=1, base={QUERY0: torch.ones(32, 32)},
                                  head={k: v + 1 for k, v in first.head.items()}))
    train_client(other, make_task(sentiment, adapter=first.adapter, head=first.head))
    second = train_client(other, task)
    assert first.train_loss == second.train_loss
    for part in ("adapter", "head"):
        a, b = getattr(first, part), getattr(second, part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(t.requires_grad for t in first.adapter.values())
    changed = train_client(cache, make_task(sentiment, seed=12))
    assert not torch.equal(changed.adapter[QUERY0 + LORA_B], first.adapter[QUERY0 + LORA_B])


def test_results_do_not_alias_the_model(cache: ModelCache, sentiment):
    result = train_client(cache, make_task(sentiment, steps=1))
    saved = result.adapter[QUERY0 + LORA_B].clone()
    train_client(cache, make_task(sentiment, steps=2, seed=2))
    assert torch.equal(result.adapter[QUERY0 + LORA_B], saved)


def test_ffa_keeps_lora_A_exactly(cache: ModelCache, sentiment):
    task = make_task(sentiment, frozen=("A",), weight_decay=0.1)
    result = train_client(cache, task)
    start = start_adapter(task, cache.adapter(4))
    for key in start:
        assert torch.equal(result.adapter[key], start[key]) == key.endswith(LORA_A)


def test_fresh_start_is_peft_init_shared_through_init_seed(cache: ModelCache, sentiment):
    start = start_adapter(make_task(sentiment), cache.adapter(4))
    again = start_adapter(make_task(sentiment, client_id=7, seed=1), cache.adapter(4))
    A = start[QUERY0 + LORA_A]
    assert torch.equal(A, again[QUERY0 + LORA_A])
    assert float(A.abs().max()) <= 32 ** -0.5 and float(A.abs().min()) > 0  # U(-1/sqrt(d_in), ..)
    assert all(float(t.abs().max()) == 0 for k, t in start.items() if k.endswith(LORA_B))
    other = start_adapter(make_task(sentiment, init_seed=6), cache.adapter(4))
    assert not torch.equal(A, other[QUERY0 + LORA_A])


def test_fresh_starts_of_smaller_ranks_are_nested_in_every_layer(cache: ModelCache, sentiment):
    """A rank-2 start is the first 2 rows of a rank-4 start from the same seed, in every layer
    (HetLoRA truncates one rank-r_max init; `train.init=shared` assumes it too)."""
    big = start_adapter(make_task(sentiment, rank=4, init_rank=4), cache.adapter(4))
    small = start_adapter(make_task(sentiment, rank=2, init_rank=4), cache.adapter(2))
    layers = [k for k in big if k.endswith(LORA_A)]
    assert len(layers) == 4
    for key in layers:
        assert torch.equal(small[key], big[key][:2]), key


def test_each_layer_draws_from_its_own_seed(cache: ModelCache, sentiment):
    start = start_adapter(make_task(sentiment), cache.adapter(4))
    firsts = [start[k][0] for k in sorted(start) if k.endswith(LORA_A)]
    assert all(not torch.equal(a, b) for a, b in zip(firsts, firsts[1:]))
    with pytest.raises(ValueError, match=r"`init_rank` \(2\) must be at least `rank` \(4\)"):
        make_task(sentiment, init_rank=2)


def test_zero_rows_of_A_are_reinitialized_keeping_the_update(cache: ModelCache, sentiment):
    fresh = start_adapter(make_task(sentiment), cache.adapter(4))
    g = torch.Generator().manual_seed(0)
    padded = {k: torch.randn(t.shape, generator=g) for k, t in fresh.items()}
    for k in padded:
        if k.endswith(LORA_A):
            padded[k][2:] = 0  # a rank-2 readout padded to rank 4 (B's columns 2, 3 are junk)
    task = make_task(sentiment, adapter=padded)
    start = start_adapter(task, cache.adapter(4))
    A, B = start[QUERY0 + LORA_A], start[QUERY0 + LORA_B]
    assert torch.equal(A[:2], padded[QUERY0 + LORA_A][:2])
    assert torch.equal(A[2:], fresh[QUERY0 + LORA_A][2:])  # PEFT's init from init_seed
    assert torch.equal(B[:, 2:], torch.zeros(32, 2))
    assert torch.allclose(B @ A, padded[QUERY0 + LORA_B] @ padded[QUERY0 + LORA_A])
    result = train_client(cache, task)
    assert not torch.equal(result.adapter[QUERY0 + LORA_A][2:], A[2:])  # the new rows train


def test_base_delta_acts_as_part_of_the_frozen_weight(cache: ModelCache, sentiment):
    """Training with ``W0 + s b2 a2`` folded in and factors ``[b1, 0] [a1; a2]`` sees the same
    model as training on ``W0`` with ``[b1, b2] [a1; a2]``, so the first losses agree."""
    g = torch.Generator().manual_seed(1)
    full = {k: 0.3 * torch.randn(t.shape, generator=g)
            for k, t in start_adapter(make_task(sentiment), cache.adapter(4)).items()}
    part, base = dict(full), {}
    for k in [k for k in full if k.endswith(LORA_B)]:
        prefix = k.removesuffix(LORA_B)
        part[k] = full[k].clone()
        part[k][:, 3:] = 0
        base[prefix] = cache.scaling(4) * full[k][:, 3:] @ full[prefix + LORA_A][3:]
    head = {"base_model.model.classifier.weight": torch.randn(2, 32, generator=g),
            "base_model.model.classifier.bias": torch.zeros(2)}  # a head the loss is sensitive to
    probe = dict(steps=1, lr=1e-12, optimizer="sgd", head=head)
    folded = train_client(cache, make_task(sentiment, adapter=part, base=base, **probe))
    plain = train_client(cache, make_task(sentiment, adapter=full, **probe))
    without = train_client(cache, make_task(sentiment, adapter=part, **probe))
    assert folded.train_loss == pytest.approx(plain.train_loss, rel=1e-5)
    assert abs(without.train_loss - plain.train_loss) > 1e-3


def test_unknown_base_delta_and_wrong_adapter_shapes_are_named(cache: ModelCache, sentiment):
    with pytest.raises(ValueError, match="base deltas for layers the model does not adapt: "
                                         r"\['bert.query'\]"):
        train_client(cache, make_task(sentiment, base={"bert.query": torch.zeros(32, 32)}))
    rank2 = start_adapter(make_task(sentiment, rank=2), cache.adapter(2))
    with pytest.raises(ValueError, match=rf"rank-4 adapter `{QUERY0}.lora_A.weight` has shape "
                                         r"\(2, 32\), the model expects \(4, 32\)"):
        train_client(cache, make_task(sentiment, adapter=rank2))


def test_task_validation_collects_problems(sentiment):
    with pytest.raises(ValueError, match=r"client 3, round 1: `steps` must be a positive integer, "
                                         r"got 0\. `optimizer` must be one of"):
        make_task(sentiment, steps=0, optimizer="adam")


def test_batch_order_walks_shuffled_epochs():
    order = batch_order(10, 5, 4, torch.Generator().manual_seed(0))
    stream = torch.cat(order)
    assert [len(b) for b in order] == [4] * 5
    assert sorted(stream[:10].tolist()) == list(range(10))  # the first epoch, whole
    assert [len(b) for b in batch_order(3, 2, 8, torch.Generator())] == [3, 3]
