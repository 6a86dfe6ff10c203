"""Exporting a global model as a PEFT adapter folder that reproduces it."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from glora.tasks.classification import logits
from glora.training.export import export_adapter, factor_delta
from glora.tasks.classification import load_classifier
from glora.training.cache import PEFT_PREFIX, ModelCache

LAYER = "base_model.model.bert.encoder.layer.{}.attention.self.{}"


@pytest.fixture(scope="module")
def cache(tiny_model_dir: str) -> ModelCache:
    return ModelCache(tiny_model_dir, num_labels=3)


def low_rank(rank: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(32, rank, generator=g) @ torch.randn(rank, 32, generator=g)


def test_exported_adapter_loads_and_reproduces_the_global_model(cache, sentiment, tmp_path,
                                                                tiny_model_dir):
    deltas = {LAYER.format(0, "query"): low_rank(3, 0), LAYER.format(0, "value"): low_rank(5, 1),
              LAYER.format(1, "query"): low_rank(3, 2)}  # layer 1 value: no update
    g = torch.Generator().manual_seed(3)
    head = {k: torch.randn(v.shape, generator=g) for k, v in cache.head_init.items()}
    ranks = export_adapter(cache, deltas, head, tmp_path / "adapter",
                           metadata={"method": "glora", "rounds": 4})
    assert ranks == {LAYER.format(0, "query"): 3, LAYER.format(0, "value"): 5,
                     LAYER.format(1, "query"): 3, LAYER.format(1, "value"): 1}

    expected = logits(cache.global_model(deltas, head), sentiment)
    loaded = PeftModel.from_pretrained(load_classifier(tiny_model_dir, 3, seed=9),
                                       tmp_path / "adapter")
    assert torch.allclose(logits(loaded, sentiment), expected, atol=1e-5)

    info = json.loads((tmp_path / "adapter" / "glora.json").read_text())
    assert info["method"] == "glora" and info["rounds"] == 4 and info["num_labels"] == 3
    assert info["ranks"][LAYER.format(0, "value").removeprefix(PEFT_PREFIX)] == 5
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 3 and config["base_model_name_or_path"] == tiny_model_dir
    assert "PeftModel.from_pretrained" in (tmp_path / "adapter" / "README.md").read_text()


def test_factor_delta_finds_the_numerical_rank():
    delta = low_rank(4, 5)
    B, A = factor_delta(delta)
    assert B.shape == (32, 4) and A.shape == (4, 32)
    assert torch.allclose(B @ A, delta, atol=1e-5)
    B, A = factor_delta(torch.zeros(8, 6))
    assert B.shape == (8, 1) and float(B.abs().max()) == 0


def test_deltas_for_unknown_layers_or_shapes_are_named(cache, tmp_path):
    with pytest.raises(ValueError, match=r"unexpected \['bert.query'\]"):
        export_adapter(cache, {"bert.query": torch.zeros(32, 32)}, None, tmp_path)
    msg = rf"delta `{LAYER.format(0, 'query')}` has shape \(32, 31\)"
    with pytest.raises(ValueError, match=msg):
        export_adapter(cache, {LAYER.format(0, "query"): torch.zeros(32, 31)}, None, tmp_path)
