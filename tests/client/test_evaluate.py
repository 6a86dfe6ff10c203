"""The global model W0 + delta with the aggregated head, its predictions and metrics."""

from __future__ import annotations

import pytest
import torch

from glora.contract import TrainTask
from glora.global_model import LORA_A, LORA_B
from glora.tasks.classification import logits, score, to_predictions
from glora.training.cache import PEFT_PREFIX, ModelCache, copy_into
from glora.training.train import train_client

QUERY0 = "base_model.model.bert.encoder.layer.0.attention.self.query"


@pytest.fixture(scope="module")
def trained(cache: ModelCache, sentiment):
    task = TrainTask(client_id=0, round=0, rank=4, seed=0, adapter=None, init_seed=1, head=None,
                     base={}, frozen=(), data=sentiment, steps=5, batch_size=8, lr=3e-2)
    return train_client(cache, task)


def test_global_model_matches_the_client_peft_model(cache: ModelCache, sentiment, trained):
    adapter = cache.adapter(4)
    copy_into(adapter.lora, trained.adapter, "adapter")
    copy_into(adapter.head, trained.head, "head")
    expected = logits(adapter.model, sentiment, batch_size=16)
    s = cache.scaling(4)
    deltas = {p: s * trained.adapter[p + LORA_B] @ trained.adapter[p + LORA_A]
              for p in cache.layers}
    got = logits(cache.global_model(deltas, trained.head), sentiment, batch_size=7)
    assert torch.allclose(got, expected, atol=1e-5)


def test_the_global_model_and_the_clients_share_one_backbone(cache: ModelCache, sentiment,
                                                            trained):
    """The adapters live on the backbone itself; the global model is it with them switched off,
    and a client task that follows trains with them on."""
    adapter = cache.adapter(4)
    assert adapter.model.get_base_model() is cache.plain
    plain = logits(cache.global_model({}, None), sentiment)
    copy_into(adapter.lora, trained.adapter, "adapter")
    assert torch.equal(logits(cache.global_model({}, None), sentiment), plain)  # adapters off
    again = cache.adapter(4)
    assert not torch.allclose(logits(again.model, sentiment), plain, atol=1e-4)  # and on again


def test_a_delta_acts_as_W0_plus_delta(cache: ModelCache, sentiment):
    delta = 0.5 * torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    manual = cache.fresh_base()
    with torch.no_grad():
        manual.get_submodule(QUERY0.removeprefix(PEFT_PREFIX)).weight += delta
    expected = logits(manual, sentiment)
    assert torch.allclose(logits(cache.global_model({QUERY0: delta}, None), sentiment), expected,
                          atol=1e-6)
    assert not torch.allclose(logits(cache.global_model({}, None), sentiment), expected, atol=1e-3)


def test_evaluate_reports_named_or_custom_metrics_and_loss(cache: ModelCache, sentiment, trained):
    head = trained.head
    model = cache.global_model({}, head)
    preds = to_predictions(logits(model, sentiment))
    scores = score(model, sentiment, ("accuracy",), batch_size=10)
    assert scores["accuracy"] == pytest.approx(float((preds == sentiment[-1]).float().mean()))
    out = logits(cache.global_model({}, head), sentiment)
    expected_loss = torch.nn.functional.cross_entropy(out, sentiment[-1])
    assert scores["loss"] == pytest.approx(float(expected_loss))
    custom = score(model, sentiment, lambda p, y: {"ones": float(p.sum())})
    assert custom == {"ones": float(preds.sum()), "loss": pytest.approx(scores["loss"])}


def test_regression_predicts_values(tiny_model_dir: str, sentiment):
    cache = ModelCache(tiny_model_dir, num_labels=1)
    data = (*sentiment[:2], sentiment[-1].float())
    model = cache.global_model({}, None)
    scores = score(model, data, lambda p, y: {"n": float(len(p))})
    preds = to_predictions(logits(model, data))
    assert preds.shape == (48,) and preds.dtype == torch.float32
    assert scores["loss"] == pytest.approx(float(((preds - data[-1]) ** 2).mean()))
