"""Devices, precision and memory options of the one trainer, checked on the CPU."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import Tensor

from glora.config import load_config
from glora.contract import TrainTask
from glora.devices import resolve_device, worker_device
from glora.errors import ConfigError
from glora.federation.server import FederatedServer
from glora.tasks.classification import logits
from glora.tasks.tokenize import batch_inputs
from glora.training.cache import ModelCache
from glora.training.train import micro_batches, train_client


def make_task(data: tuple[Tensor, ...], **changes) -> TrainTask:
    task = TrainTask(client_id=1, round=0, rank=4, seed=3, adapter=None, init_seed=5, head=None,
                     base={}, frozen=(), data=data, steps=4, batch_size=16, lr=1e-2)
    return replace(task, **changes)


def max_difference(a, b) -> float:
    return max(float((a.adapter[k] - b.adapter[k]).abs().max()) for k in a.adapter)


# -- devices ----------------------------------------------------------------------------------
def test_every_device_name_resolves_or_says_what_this_machine_has(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=rf"`train.device` is '{spec}', but this machine has "
                                              r"no such CUDA device \(available: cpu\)"):
            resolve_device(spec)
    with pytest.raises(ConfigError, match="MPS is not available"):
        resolve_device("mps")
    with pytest.raises(ConfigError, match=r"must be one of \['auto', 'cpu', 'cuda', 'cuda:N'"):
        resolve_device("gpu")


def test_auto_prefers_cuda_then_mps_and_workers_take_gpus_in_turn(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert [worker_device("auto", i) for i in range(3)] == [
        torch.device("cuda", 0), torch.device("cuda", 1), torch.device("cuda", 0)]
    assert worker_device("cuda:1", 0) == torch.device("cuda", 1)  # one GPU named: every worker
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")


def test_a_config_asking_for_an_absent_gpu_is_refused_before_training(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="`train.device` is 'cuda:0'"):
        load_config(None, ["train.device=cuda:0"])
    with pytest.raises(ConfigError, match=r"`train.precision` must be one of \['fp32', 'bf16', "
                                          r"'fp16'\]"):
        load_config(None, ["train.precision=fp8"])
    with pytest.raises(ConfigError, match="`train.grad_accum_steps` must be between 1 and"):
        load_config(None, ["train.batch_size=4", "train.grad_accum_steps=5"])


def test_server_device_is_named_in_the_config_and_checked_where_the_server_runs(monkeypatch):
    """`server.device`: a bad name fails the config; an absent GPU fails the server (not the
    nodes that share the config); the CPU aggregation gives states on the CPU."""
    with pytest.raises(ConfigError, match=r"`server.device` must be one of"):
        load_config(None, ["server.device=tpu"])
    cfg = load_config(None, ["server.device=cuda:3", "methods=[glora]"])  # a node may load this
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"`server.device` is 'cuda:3', but this machine has no"):
        FederatedServer(cfg, "glora", None)
    assert FederatedServer(load_config(None, ["server.device=auto"]), "glora", None).device == \
        torch.device("cpu")


# -- precision and memory ---------------------------------------------------------------------
def test_micro_batches_cover_the_batch_in_order():
    idx = torch.arange(10)
    assert [p.tolist() for p in micro_batches(idx, 3)] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert len(micro_batches(idx[:2], 4)) == 2  # never an empty part


@pytest.fixture(scope="module")
def still_cache(tiny_model_dir: str) -> ModelCache:
    """A cache whose backbone has no dropout: micro-batches draw dropout masks in another order,
    so only without dropout is an accumulated step the very same step."""
    cache = ModelCache(tiny_model_dir, num_labels=2, alpha=8.0)
    for module in cache.plain.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return cache


def test_gradient_accumulation_equals_one_step_on_the_whole_batch(still_cache: ModelCache,
                                                                   sentiment):
    cache = still_cache
    whole = train_client(cache, make_task(sentiment))
    for k in (2, 4):
        split = train_client(cache, make_task(sentiment, grad_accum_steps=k))
        assert max_difference(whole, split) < 1e-5, k
        assert split.train_loss == pytest.approx(whole.train_loss, rel=1e-5)
    assert max_difference(whole, train_client(cache, make_task(sentiment, lr=2e-2))) > 1e-3


def test_gradient_checkpointing_gives_the_same_training(cache: ModelCache, sentiment):
    plain = train_client(cache, make_task(sentiment))
    checkpointed = train_client(cache, make_task(sentiment, gradient_checkpointing=True))
    assert max_difference(plain, checkpointed) < 1e-5
    assert checkpointed.train_loss == pytest.approx(plain.train_loss, rel=1e-5)
    base = cache.adapter(4).model.get_base_model()
    assert not (base.is_activation_checkpointing if hasattr(base, "is_activation_checkpointing")
                else base.is_gradient_checkpointing)


def test_bf16_autocast_trains_to_the_fp32_loss(cache: ModelCache, sentiment):
    """Measured: over 20 steps the bf16 run's mean loss is within 2% of the fp32 run's; the
    adapter it returns is float32."""
    fp32 = train_client(cache, make_task(sentiment, steps=20))
    bf16 = train_client(cache, make_task(sentiment, steps=20, precision="bf16"))
    assert bf16.train_loss == pytest.approx(fp32.train_loss, rel=0.02)
    assert bf16.train_loss < train_client(cache, make_task(sentiment, steps=1)).train_loss
    assert all(t.dtype == torch.float32 for t in bf16.adapter.values())
    with pytest.raises(ValueError, match=r"`precision` must be one of \['fp32', 'bf16', 'fp16'\]"):
        make_task(sentiment, precision="fp8")


def test_a_bf16_base_halves_the_frozen_weights_and_trains_to_the_fp32_loss(
        tiny_model_dir: str, cache: ModelCache, sentiment) -> None:
    """`model.dtype: bf16`: the frozen weights take half the bytes, the trained parameters and
    the optimizer's state stay float32, and 20 steps reach the fp32 base's loss within 3%."""
    half = ModelCache(tiny_model_dir, num_labels=2, alpha=8.0, dtype="bf16")
    # Execute
    fp32 = train_client(cache, make_task(sentiment, steps=20))
    bf16 = train_client(half, make_task(sentiment, steps=20, precision="bf16"))
    # Assert: memory of the frozen weights, dtypes of what trains
    def backbone(c: ModelCache) -> dict[str, torch.Tensor]:  # without the adapters' parameters
        return {n: p for n, p in c.plain.named_parameters()
                if "lora_" not in n and "modules_to_save" not in n}

    frozen, full = backbone(half), backbone(cache)
    assert sum(p.nbytes for p in frozen.values()) * 2 == sum(p.nbytes for p in full.values())
    adapter = half.adapter(4)
    assert all(p.dtype == torch.float32 for p in [*adapter.lora.values(), *adapter.head.values()])
    assert all(m.weight.dtype == torch.bfloat16 for m in adapter.base_layers.values())
    assert bf16.train_loss == pytest.approx(fp32.train_loss, rel=0.03)
    assert all(t.dtype == torch.float32 for t in [*bf16.adapter.values(), *bf16.head.values()])
    # Assert: a base delta is added in float32 and rounded once
    layer = next(iter(half.layers))
    delta = torch.full(half.layers[layer], 1e-3, dtype=torch.float64)
    half.load_base(adapter.base_layers, {layer: delta})
    w0 = half._w0[layer]
    assert torch.equal(adapter.base_layers[layer].weight, (w0.float() + 1e-3).bfloat16())
    with pytest.raises(ConfigError, match=r"`model.dtype: bf16` needs `train.precision: bf16`"):
        load_config(None, ["model.dtype=bf16"])


def test_dynamic_padding_gives_the_fixed_padding_predictions(cache: ModelCache, sentiment):
    model = cache.global_model({}, None)
    with torch.inference_mode():
        fixed = model(**{n: t for n, t in zip(("input_ids", "attention_mask"),
                                               sentiment[:2])}).logits
    inputs, _ = batch_inputs(sentiment, torch.arange(len(sentiment[0])))
    assert inputs["input_ids"].shape[1] < sentiment[0].shape[1]  # shorter than max_length
    assert torch.allclose(logits(model, sentiment, batch_size=7), fixed, atol=1e-5)
